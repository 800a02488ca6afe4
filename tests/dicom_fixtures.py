"""DICOM files for the tests, written with pydicom: a synthetic slide as a multi-file WSI
series (one pyramid level per file, as archives deliver them), and a plain CT image.

The series copies each level of a synthetic SVS (decoded by tifffile) into ``TILED_FULL``
JPEG frames with the attributes the DICOM WSI standard requires (ImageType, pixel spacing,
optical path, dimension organisation), so both OpenSlide and wsidicom read it.
"""

from __future__ import annotations

import math
from pathlib import Path

import imagecodecs
import numpy as np
import pydicom
import tifffile
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.encaps import encapsulate
from pydicom.sequence import Sequence
from pydicom.uid import (
    CTImageStorage,
    ExplicitVRLittleEndian,
    JPEGBaseline8Bit,
    VLWholeSlideMicroscopyImageStorage,
    generate_uid,
)

FRAME_PX = 256
JPEG_QUALITY = 95


def svs_levels(svs: Path) -> list[np.ndarray]:
    """The pyramid levels of a (synthetic) SVS, largest first, as RGB arrays."""
    with tifffile.TiffFile(svs) as tif:
        return [np.asarray(level.asarray()) for level in tif.series[0].levels]


def _code(value: str, scheme: str, meaning: str) -> Dataset:
    item = Dataset()
    item.CodeValue, item.CodingSchemeDesignator, item.CodeMeaning = value, scheme, meaning
    return item


def _frames(image: np.ndarray) -> list[bytes]:
    """Row-major JPEG frames of ``FRAME_PX``, the last ones padded with white."""
    h, w = image.shape[:2]
    out = []
    for y in range(0, h, FRAME_PX):
        for x in range(0, w, FRAME_PX):
            tile = np.full((FRAME_PX, FRAME_PX, 3), 255, np.uint8)
            part = image[y : y + FRAME_PX, x : x + FRAME_PX]
            tile[: part.shape[0], : part.shape[1]] = part
            out.append(bytes(imagecodecs.jpeg8_encode(tile, level=JPEG_QUALITY)))
    return out


def _file_meta(sop_class: str, sop_instance: str, syntax: str) -> FileMetaDataset:
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID = sop_class, sop_instance
    meta.TransferSyntaxUID = syntax
    return meta


def write_dicom_series(levels: list[np.ndarray], folder: Path, mpp: float) -> list[Path]:
    """Write ``levels`` (RGB, largest first; level 0 at ``mpp`` µm/px) as one WSI series in
    ``folder``, one file per level; returns the files."""
    folder.mkdir(parents=True, exist_ok=True)
    study, series, frame_of_ref = generate_uid(), generate_uid(), generate_uid()
    h0, w0 = levels[0].shape[:2]
    paths = []
    for i, image in enumerate(levels):
        h, w = image.shape[:2]
        spacing_mm = mpp * (w0 / w) / 1000
        frames = _frames(image)
        ds = Dataset()
        ds.file_meta = _file_meta(VLWholeSlideMicroscopyImageStorage, generate_uid(),
                                  JPEGBaseline8Bit)
        ds.SOPClassUID, ds.SOPInstanceUID = VLWholeSlideMicroscopyImageStorage, \
            ds.file_meta.MediaStorageSOPInstanceUID
        ds.StudyInstanceUID, ds.SeriesInstanceUID = study, series
        ds.FrameOfReferenceUID, ds.Modality = frame_of_ref, "SM"
        ds.ImageType = (["ORIGINAL", "PRIMARY", "VOLUME", "NONE"] if i == 0
                        else ["DERIVED", "PRIMARY", "VOLUME", "RESAMPLED"])
        ds.PatientName, ds.PatientID, ds.StudyID = "synthetic", "synthetic", "1"
        ds.SeriesNumber, ds.InstanceNumber = 1, i + 1
        ds.ContainerIdentifier = "synthetic"
        ds.IssuerOfTheContainerIdentifierSequence = Sequence()
        ds.ContainerTypeCodeSequence = Sequence([_code("433466003", "SCT",
                                                       "Microscope slide")])
        ds.SpecimenDescriptionSequence = Sequence()
        ds.AcquisitionContextSequence = Sequence()
        ds.Manufacturer = "wsi-seg tests"
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 3, "YBR_FULL_422"
        ds.PlanarConfiguration, ds.BitsAllocated, ds.BitsStored = 0, 8, 8
        ds.HighBit, ds.PixelRepresentation = 7, 0
        ds.LossyImageCompression, ds.LossyImageCompressionMethod = "01", "ISO_10918_1"
        ds.LossyImageCompressionRatio = 10
        ds.Rows = ds.Columns = FRAME_PX
        ds.TotalPixelMatrixColumns, ds.TotalPixelMatrixRows = w, h
        ds.NumberOfFrames = len(frames)
        ds.DimensionOrganizationType = "TILED_FULL"
        ds.TotalPixelMatrixFocalPlanes, ds.NumberOfOpticalPaths = 1, 1
        ds.ImagedVolumeWidth, ds.ImagedVolumeHeight = w0 * mpp / 1000, h0 * mpp / 1000
        ds.ImagedVolumeDepth = 0.001
        ds.ImageOrientationSlide = [0, -1, 0, -1, 0, 0]
        origin = Dataset()
        origin.XOffsetInSlideCoordinateSystem, origin.YOffsetInSlideCoordinateSystem = 20, 40
        ds.TotalPixelMatrixOriginSequence = Sequence([origin])
        ds.SpecimenLabelInImage, ds.FocusMethod, ds.ExtendedDepthOfField = "NO", "AUTO", "NO"
        ds.BurnedInAnnotation, ds.VolumetricProperties = "NO", "VOLUME"
        measures = Dataset()
        measures.PixelSpacing = [spacing_mm, spacing_mm]  # mm: row spacing, column spacing
        measures.SliceThickness, measures.SpacingBetweenSlices = 0.001, 0.001
        shared = Dataset()
        shared.PixelMeasuresSequence = Sequence([measures])
        optical = Dataset()
        optical.OpticalPathIdentifier = "1"
        optical.IlluminationTypeCodeSequence = Sequence([_code("111744", "DCM",
                                                               "Brightfield illumination")])
        optical.IlluminationColorCodeSequence = Sequence([_code("414298005", "SCT",
                                                                "Full Spectrum")])
        ds.SharedFunctionalGroupsSequence = Sequence([shared])
        ds.OpticalPathSequence = Sequence([optical])
        ds.PixelData = encapsulate(frames, has_bot=True)
        ds["PixelData"].is_undefined_length = True
        ds["PixelData"].VR = "OB"
        path = folder / f"level-{i}.dcm"
        ds.save_as(path, enforce_file_format=True)
        paths.append(path)
    return paths


def write_ct_image(path: Path) -> Path:
    """A plain single-frame CT image: DICOM, but no whole-slide image."""
    ds = Dataset()
    ds.file_meta = _file_meta(CTImageStorage, generate_uid(), ExplicitVRLittleEndian)
    ds.SOPClassUID, ds.SOPInstanceUID = CTImageStorage, ds.file_meta.MediaStorageSOPInstanceUID
    ds.StudyInstanceUID, ds.SeriesInstanceUID = generate_uid(), generate_uid()
    ds.Modality, ds.PatientID = "CT", "ct"
    ds.Rows = ds.Columns = 64
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
    ds.PixelData = (np.arange(64 * 64, dtype=np.uint16) % 4096).tobytes()
    ds.save_as(path, enforce_file_format=True)
    return path


def truncate_copy(src: Path, dst: Path, keep_fraction: float = 0.6) -> Path:
    """``dst``: the first ``keep_fraction`` of ``src``'s bytes (a download cut short)."""
    data = src.read_bytes()
    dst.write_bytes(data[: math.floor(len(data) * keep_fraction)])
    return dst


def read_back(path: Path) -> Dataset:
    return pydicom.dcmread(path, stop_before_pixels=True)
