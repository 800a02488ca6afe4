"""Slides read in place from a real S3 server (moto's server mode, tests/s3_fixtures.py).

The same synthetic slides on local disk and in the store: the same metadata and pixels, a
directory run with byte-identical mosaics and GeoJSON (in this process and on a cluster of
worker processes that open the slides by URL), a corrupt object that fails alone, wrong
credentials and an ``--out gs://`` refused in one line before any work.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from tests.dask_fixtures import DaskCluster
from tests.s3_fixtures import (
    STORE_RUN_OPTS,
    S3Server,
    local_reference,
    local_slides,
    model,
    s3_env,
    s3_server,
)
from tests.synth_fixtures import synthetic
from wsi_seg.cli import main
from wsi_seg.core.errors import SlideError
from wsi_seg.core.locations import SlideURL, slide_location
from wsi_seg.stages.object_store import fetched, reset_fetched
from wsi_seg.stages.slide import find_slides, open_slide

__all__ = ["local_reference", "local_slides", "model", "s3_env", "s3_server"]  # fixtures

RUN_OPTS = STORE_RUN_OPTS
SLIDE_SEEDS = (11, 12)  # this file's slides (tests.s3_fixtures.local_slides)
BUCKET = "slides"


@pytest.fixture(scope="module")
def uploaded(s3_server: S3Server, local_slides: Path) -> str:
    """The run's slides under ``s3://slides/run/``."""
    s3_server.upload(BUCKET, "run/", sorted(local_slides.glob("s*.*")))
    return f"s3://{BUCKET}/run/"


def outputs(out: Path, stem: str) -> dict[str, bytes]:
    """Every mosaic file and the GeoJSON of one slide's outputs, by relative path."""
    root = out / stem
    files = {str(p.relative_to(root)): p.read_bytes()
             for p in sorted((root / "mask.zarr").rglob("*")) if p.is_file()}
    files["tumor.geojson"] = (root / "tumor.geojson").read_bytes()
    return files


def assert_same_outputs(a: Path, b: Path, stems: tuple[str, ...] = ("s1", "s2")) -> None:
    for stem in stems:
        left, right = outputs(a, stem), outputs(b, stem)
        assert left.keys() == right.keys() and len(left) > 3
        for name in left:
            assert left[name] == right[name], f"{stem}/{name} differs"


def test_location_rule() -> None:
    assert slide_location("s3://b//p/x.svs") == SlideURL("s3://b/p/x.svs")
    assert slide_location(Path("s3://b/p/")) == SlideURL("s3://b/p")  # as a Path prints it
    assert slide_location("slides/x.svs") == Path("slides/x.svs")
    url = SlideURL("s3://b/p/x.svs")
    assert (url.name, url.suffix, url.stem, url.parent.url) == ("x.svs", ".svs", "x", "s3://b/p")
    with pytest.raises(Exception, match="not gs://"):
        slide_location("gs://b/x.svs")


def test_metadata_and_pixels_equal_local_disk(
        s3_env: S3Server, tmp_path_factory: pytest.TempPathFactory) -> None:
    """SVS and generic tiled TIFF: every level, the MPP and pixels at exact, integer and
    fractional scales equal what the same file gives from local disk, bit for bit."""
    files = [synthetic(tmp_path_factory, n) for n in ("p2.svs", "t2.tif")]
    s3_env.upload(BUCKET, "pixels/", files)
    for local in files:
        url = f"s3://{BUCKET}/pixels/{local.name}"
        reset_fetched()
        with open_slide(local) as a, open_slide(url) as b:
            assert isinstance(b.path, SlideURL)
            for attr in ("vendor", "dimensions", "level_dimensions", "level_downsamples", "mpp",
                         "objective_power", "associated_images", "bounds_x0"):
                assert getattr(a, attr) == getattr(b, attr), attr
            for mpp in (a.mpp, 1.0, 1.37, 3.0):
                w, h = a.size_w(mpp)
                assert np.array_equal(a.read_w(0, 0, w, h, mpp), b.read_w(0, 0, w, h, mpp)), \
                    (local.name, mpp)
            x0 = a.read_x0(101.5, 77.25, 300, 200, 0.8)
            assert np.array_equal(x0, b.read_x0(101.5, 77.25, 300, 200, 0.8))
        # Ranged and cached: never more than the file (plus the last block's rounding).
        assert 0 < fetched(url).bytes <= local.stat().st_size


def test_directory_run_is_byte_identical_to_local_disk(
        s3_env: S3Server, uploaded: str, local_reference: Path, model: Path,
        tmp_path: Path) -> None:
    out = tmp_path / "from-store"
    assert main(["run", uploaded, "--out", str(out), "--model", str(model),
                 "--scheduler", "threads", *RUN_OPTS]) == 0
    assert_same_outputs(local_reference, out)
    run_json = (out / "run.json").read_text()
    record = json.loads(run_json)
    assert [s["slide"] for s in record["slides"]] == [f"{uploaded}s1.svs", f"{uploaded}s2.tif"]
    # The key is in this process's environment only, never in the record.
    assert s3_env.secret not in run_json and s3_env.key_id not in run_json
    # A second run finds both finished (the store's identity of each object is unchanged).
    assert main(["run", uploaded, "--out", str(out), "--model", str(model),
                 "--scheduler", "threads", *RUN_OPTS]) == 0
    assert [s["status"] for s in json.loads((out / "run.json").read_text())["slides"]] == \
        ["skipped", "skipped"]


def test_cluster_workers_open_slides_by_url(
        s3_env: S3Server, uploaded: str, local_reference: Path, model: Path,
        tmp_path: Path) -> None:
    """Worker processes of a dask.distributed cluster are given the URL, never a path, and
    read the store themselves (with the key from their own environment)."""
    cluster = DaskCluster(tmp_path)  # started after s3_env: the workers inherit its variables
    try:
        out = tmp_path / "cluster"
        assert main(["run", uploaded, "--out", str(out), "--model", str(model),
                     "--scheduler", cluster.address, *RUN_OPTS]) == 0
    finally:
        cluster.close()
    assert_same_outputs(local_reference, out)


def test_a_corrupt_object_fails_alone(
        s3_env: S3Server, local_slides: Path, model: Path, tmp_path: Path,
        capsys: pytest.CaptureFixture[str]) -> None:
    bad = tmp_path / "bad.svs"
    data = (local_slides / "s1.svs").read_bytes()
    bad.write_bytes(data[: len(data) * 6 // 10])  # truncated mid-pyramid
    s3_env.upload(BUCKET, "mixed/", [local_slides / "s2.tif", bad])
    out = tmp_path / "out"
    rc = main(["run", f"s3://{BUCKET}/mixed/", "--out", str(out), "--model", str(model),
               "--scheduler", "threads", *RUN_OPTS])
    assert rc == 1
    record = json.loads((out / "run.json").read_text())
    assert [s["status"] for s in record["slides"]] == ["failed", "ok"]
    lines = [x for x in capsys.readouterr().err.splitlines() if "error" in x]
    assert len(lines) == 1 and f"s3://{BUCKET}/mixed/bad.svs" in lines[0]
    assert "truncated" in lines[0]


def test_wrong_credentials_fail_in_one_line_before_work(
        s3_env: S3Server, uploaded: str, model: Path, tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    import s3fs

    for key, secret, cause in ((s3_env.key_id, "wrong-secret", "secret key"),
                               ("AKIANOTAKEY", "wrong-secret", "access key")):
        monkeypatch.setenv("AWS_ACCESS_KEY_ID", key)
        monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", secret)
        s3fs.S3FileSystem.clear_instance_cache()
        out = tmp_path / "never"
        rc = main(["run", uploaded, "--out", str(out), "--model", str(model),
                   "--scheduler", "threads", *RUN_OPTS])
        err = capsys.readouterr().err.strip().splitlines()
        assert rc != 0 and len(err) == 1, err
        assert uploaded.rstrip("/") in err[0] and cause in err[0]
        assert secret not in err[0]
        assert not out.exists()  # nothing made: refused before any work


def test_missing_bucket_and_prefix(s3_env: S3Server) -> None:
    with pytest.raises(SlideError, match="no such bucket"):
        find_slides(["s3://no-such-bucket/x/"])
    with pytest.raises(SlideError, match="no such object or prefix"):
        find_slides([f"s3://{BUCKET}/nothing-here/"])


def test_out_url_of_another_scheme_is_refused(model: Path,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    """``--out s3://`` is written to (tests/test_store_outputs.py); a scheme results cannot
    go to is one line, before anything is made."""
    rc = main(["run", "whatever/", "--out", "gs://bucket/results/", "--model", str(model),
               *RUN_OPTS])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and "not gs://" in err[0], err
    assert "gs://bucket/results" in err[0] or "gs:/bucket/results" in err[0]
    assert not Path("gs:").exists()


def test_formats_only_openslide_reads_are_refused(s3_env: S3Server, tmp_path: Path) -> None:
    ndpi = tmp_path / "x.ndpi"
    ndpi.write_bytes(b"\x00" * 4096)  # not TIFF nor DICOM: OpenSlide alone would know
    s3_env.upload(BUCKET, "other/", [ndpi])
    with pytest.raises(SlideError, match="only OpenSlide reads this format") as info:
        open_slide(f"s3://{BUCKET}/other/x.ndpi")
    assert "\n" not in str(info.value)


def test_info_describes_a_slide_in_the_store(
        s3_env: S3Server, uploaded: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["info", f"{uploaded}s1.svs", "--json"]) == 0
    described = json.loads(capsys.readouterr().out.splitlines()[0])
    assert described["path"] == f"{uploaded}s1.svs"
    assert described["vendor"] == "aperio"


def test_local_copy_of_store_slide_is_untouched(local_slides: Path, tmp_path: Path) -> None:
    """Local runs keep their Path: nothing in the location rule turns a path into a URL."""
    copy = tmp_path / "s3:"  # a folder that merely looks like a scheme stays a path
    copy.mkdir()
    shutil.copy(local_slides / "s2.tif", copy / "s2.tif")
    found = find_slides([copy])
    assert found == [copy / "s2.tif"] and isinstance(found[0], Path)


def test_dicom_series_in_the_store_reads_as_on_local_disk(
        s3_env: S3Server, tmp_path_factory: pytest.TempPathFactory, tmp_path: Path) -> None:
    """A DICOM series (one object per level) opens by any one of its objects; wsidicom reads
    it over fsspec, and its pixels equal those of the same files on local disk (read by
    wsidicom there too, so the readers compared are the same)."""
    from tests.dicom_fixtures import svs_levels, write_dicom_series

    svs = synthetic(tmp_path_factory, "p2.svs")
    files = write_dicom_series(svs_levels(svs), tmp_path / "series", 0.5)
    s3_env.upload(BUCKET, "dicom/", files)
    url = f"s3://{BUCKET}/dicom/{files[0].name}"
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("WSI_SEG_DICOM_READER", "wsidicom")
        with open_slide(files[0]) as a, open_slide(url) as b:
            assert a.level_dimensions == b.level_dimensions and a.mpp == b.mpp
            for mpp in (a.mpp, 1.0, 2.0):
                w, h = a.size_w(mpp)
                assert np.array_equal(a.read_w(0, 0, w, h, mpp), b.read_w(0, 0, w, h, mpp))
    # Listed by its prefix, the series is one slide: its largest level's object.
    assert find_slides([f"s3://{BUCKET}/dicom/"]) == [SlideURL(url)]


def test_score_reads_its_slide_from_the_store(
        s3_env: S3Server, uploaded: str, local_slides: Path, local_reference: Path,
        capsys: pytest.CaptureFixture[str]) -> None:
    """`wsi-seg score ... --slide s3://...` scores as against the same slide on local disk,
    the same-slide check included (the run's records name the local file; the object's size
    and head are the same bytes)."""
    pred = local_reference / "s1" / "mask.zarr"
    truth = local_slides / "s1.tumor.geojson"
    scores = []
    for slide in (str(local_slides / "s1.svs"), f"{uploaded}s1.svs"):
        assert main(["score", str(pred), str(truth), "--slide", slide, "--json"]) == 0
        scores.append(json.loads(capsys.readouterr().out))
    assert scores[1]["slide"] == f"{uploaded}s1.svs"
    local, remote = ({k: v for k, v in s.items() if k != "slide"} for s in scores)
    assert local == remote and local["tp"] > 0  # a small test model: the counts, not quality
    # Another slide's object is refused as the local file would be.
    rc = main(["score", str(pred), str(truth), "--slide", f"{uploaded}s2.tif"])
    err = capsys.readouterr().err
    assert rc == 2 and err.startswith("wsi-seg: error: ") and "another slide" in err, err
