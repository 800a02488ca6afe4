"""Reading the images and masks users train and evaluate on (any size, PNG/JPEG/TIFF/BMP).

Images come back RGB uint8 ``(h, w, 3)``, masks uint8 0/1 ``(h, w)``, whatever the file held.
"""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

from wsi_seg.core.errors import WsiSegError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp")


def image_files(folder: Path) -> dict[str, Path]:
    """The image files of ``folder`` by stem (hidden files skipped); WsiSegError when two
    files share a stem, since masks are matched to images by stem."""
    files: dict[str, Path] = {}
    for p in sorted(folder.iterdir()):
        if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES and not p.name.startswith("."):
            if p.stem in files:
                raise WsiSegError(f"two files with stem {p.stem!r} ({files[p.stem].name})", p)
            files[p.stem] = p
    return files


def read_rgb(path: str | Path) -> np.ndarray:
    """Read an image as RGB uint8 ``(h, w, 3)``; WsiSegError if unreadable."""
    p = Path(path)
    img = cv2.imread(str(p), cv2.IMREAD_UNCHANGED)
    if img is None or img.size == 0:
        raise WsiSegError("cannot read image (corrupt or unsupported format)", p)
    if img.dtype == np.uint16:
        img = (img // 256).astype(np.uint8)  # 16-bit scans: keep the high byte
    elif img.dtype != np.uint8:
        raise WsiSegError(f"unsupported pixel type {img.dtype}; expected 8-bit images", p)
    if img.ndim == 2:
        img = cv2.cvtColor(img, cv2.COLOR_GRAY2RGB)
    elif img.shape[2] == 4:
        img = cv2.cvtColor(img, cv2.COLOR_BGRA2RGB)
    else:
        img = cv2.cvtColor(img, cv2.COLOR_BGR2RGB)
    return np.ascontiguousarray(img)


def read_mask(path: str | Path, mask_threshold: int = 128) -> np.ndarray:
    """Read a mask as uint8 0/1 ``(h, w)``.

    A mask holding only 0 and 1 is taken as is; otherwise pixels ``>= mask_threshold`` are
    tumour (the maximum over channels for a colour mask).
    """
    p = Path(path)
    m = cv2.imread(str(p), cv2.IMREAD_UNCHANGED)
    if m is None or m.size == 0:
        raise WsiSegError("cannot read mask (corrupt or unsupported format)", p)
    if m.ndim == 3:
        m = m[..., :3].max(axis=2)
    if m.dtype == np.uint16:
        m = (m // 256).astype(np.uint8)
    if m.max() <= 1:
        return (m > 0).astype(np.uint8)
    return (m >= mask_threshold).astype(np.uint8)
