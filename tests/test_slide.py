"""wsi_seg.stages.slide: reading by microns per pixel on real OpenSlide slides.

Synthetic slides (written once per session, see synth_fixtures.py) give exact pyramids:
``p2.svs`` has levels x1, x2, x4 and ``p4.svs`` levels x1, x4, both at 0.5 µm/px.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator, Mapping
from pathlib import Path

import cv2
import numpy as np
import openslide
import pytest
from PIL import Image
from synth_fixtures import blank_slide, synthetic

from wsi_seg.core.errors import SlideError
from wsi_seg.stages.slide import (
    LevelChoice,
    Slide,
    check_mpp,
    choose_level,
    find_slides,
    open_slide,
)


@pytest.fixture(scope="session")
def p2(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return synthetic(tmp_path_factory, "p2.svs")


@pytest.fixture(scope="session")
def p4(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return synthetic(tmp_path_factory, "p4.svs")


@pytest.fixture()
def s2(p2: Path) -> Iterator[Slide]:
    with open_slide(p2) as s:
        yield s


@pytest.fixture()
def s4(p4: Path) -> Iterator[Slide]:
    with open_slide(p4) as s:
        yield s


def raw_level(path: Path, level: int, xl: int, yl: int, w: int, h: int) -> np.ndarray:
    """Pixels of a level straight from OpenSlide (level coordinates, inside the slide)."""
    with openslide.OpenSlide(str(path)) as osr:
        d = osr.level_downsamples[level]
        rgba = np.asarray(osr.read_region((round(xl * d), round(yl * d)), level, (w, h)))
    assert rgba[..., 3].min() == 255
    return rgba[..., :3]


# -- level choice -------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("downsamples", "f", "level", "scale"),
    [
        ((1.0, 2.0, 4.0), 1.0, 0, 1.0),  # native
        ((1.0, 2.0, 4.0), 2.0, 1, 1.0),  # exactly a level: pure crop
        ((1.0, 2.0, 4.0), 3.0, 1, 1.5),  # between levels: the finer one, resampled
        ((1.0, 2.0, 4.0), 8.0, 2, 2.0),  # coarser than the coarsest: integer box from it
        ((1.0, 2.0, 4.0), 3.999, 2, 1.0),  # within tolerance of a level counts as that level
        ((1.0, 4.0, 16.0), 2.0, 0, 2.0),  # 4x pyramid: x2 comes from level 0
        ((1.0, 4.0, 16.0), 6.0, 1, 1.5),
        ((1.0, 4.0, 16.0), 15.99, 2, 1.0),
        ((1.0, 4.0002), 4.0, 1, 1.0),  # a real slide's 4.0002 is level 1
        ((1.0, 2.0), 0.97, 0, 0.97),  # slight upsampling (scanner rounding) is allowed
    ],
)
def test_choose_level(downsamples: tuple[float, ...], f: float, level: int, scale: float) -> None:
    choice = choose_level(downsamples, f)
    assert choice.level == level
    assert choice.downsample == downsamples[level]
    assert choice.scale == pytest.approx(scale, rel=1e-3)


def test_choose_level_is_coarsest_not_coarser_than_request() -> None:
    rng = np.random.default_rng(0)
    for downsamples in ((1.0, 2.0, 4.0, 8.0), (1.0, 4.0, 16.0)):
        for f in rng.uniform(1.0, 40.0, 200):
            c = choose_level(downsamples, float(f))
            ok = [d for d in downsamples if d <= f * 1.001]
            assert c.downsample == max(ok)
            assert c.scale >= 1.0 - 1e-9


def test_choose_level_refuses_upsampling() -> None:
    with pytest.raises(ValueError, match="coarser than requested"):
        choose_level((1.0, 2.0), 0.9)


def test_slide_level_choice_2x_and_4x(s2: Slide, s4: Slide) -> None:
    assert s2.level_downsamples == (1.0, 2.0, 4.0)
    assert s4.level_downsamples == (1.0, 4.0)
    assert s2.choose_level(0.5) == LevelChoice(0, 1.0, 1.0)
    assert s2.choose_level(1.0) == LevelChoice(1, 2.0, 1.0)
    assert s2.choose_level(2.0) == LevelChoice(2, 4.0, 1.0)
    assert s2.choose_level(1.5) == LevelChoice(1, 2.0, 1.5)
    assert s4.choose_level(1.0) == LevelChoice(0, 1.0, 2.0)
    assert s4.choose_level(2.0) == LevelChoice(1, 4.0, 1.0)
    assert s4.choose_level(3.0) == LevelChoice(1, 4.0, 1.5)
    with pytest.raises(SlideError, match=r"cannot serve 0\.25"):
        s2.choose_level(0.25)
    assert s2.size_w(0.5) == (3000, 2000)
    assert s2.size_w(1.0) == (1500, 1000)
    assert s2.size_w(0.75) == (2000, 1333)
    assert s4.size_w(2.0) == (600, 400)


# -- the three read paths -----------------------------------------------------------------------
@pytest.mark.parametrize(("which", "level"), [("p2", 0), ("p2", 1), ("p2", 2), ("p4", 0),
                                              ("p4", 1)])
def test_read_at_a_levels_mpp_is_that_levels_pixels(
    which: str, level: int, request: pytest.FixtureRequest
) -> None:
    path: Path = request.getfixturevalue(which)
    with open_slide(path) as s:
        d = s.level_downsamples[level]
        lw, lh = s.level_dimensions[level]
        xw, yw, w, h = lw // 3, lh // 4, min(300, lw // 2), min(200, lh // 2)
        got = s.read_w(xw, yw, w, h, mpp=0.5 * d)
        # Level-0 coordinates give the same pixels through read_x0.
        via_x0 = s.read_x0(xw * d, yw * d, w * d, h * d, mpp=0.5 * d)
    want = raw_level(path, level, xw, yw, w, h)
    assert got.shape == (h, w, 3) and got.dtype == np.uint8
    np.testing.assert_array_equal(got, want)
    np.testing.assert_array_equal(via_x0, want)


@pytest.mark.parametrize(("which", "mpp", "level", "k"), [("p4", 1.0, 0, 2), ("p2", 4.0, 2, 2)])
def test_integer_factor_is_box_mean_of_the_level(
    which: str, mpp: float, level: int, k: int, request: pytest.FixtureRequest
) -> None:
    path: Path = request.getfixturevalue(which)
    with open_slide(path) as s:
        choice = s.choose_level(mpp)
        assert (choice.level, choice.scale) == (level, float(k))
        got = s.read_w(20, 10, 120, 80, mpp)
    # Working pixel (10, 20) starts at level pixel (10 k, 20 k).
    src = raw_level(path, level, 20 * k, 10 * k, 120 * k, 80 * k).astype(np.float64)
    want = src.reshape(80, k, 120, k, 3).mean(axis=(1, 3))
    assert np.abs(got - want).max() <= 1.0


@pytest.mark.parametrize(("which", "mpp"), [("p2", 0.5), ("p2", 0.75), ("p2", 1.5), ("p2", 4.0),
                                            ("p4", 1.0), ("p4", 3.0), ("p4", 0.8)])
def test_working_pixels_depend_only_on_position(
    which: str, mpp: float, request: pytest.FixtureRequest
) -> None:
    """What makes blocks equal one pass: a pixel reads the same whatever region holds it."""
    path: Path = request.getfixturevalue(which)
    with open_slide(path) as s:
        w_px, h_px = s.size_w(mpp)
        big = s.read_w(0, 0, w_px, h_px, mpp)
        for xw, yw, w, h in ((37, 11, 53, 29), (w_px - 40, h_px - 30, 40, 30),
                             (w_px // 2, h_px // 3, 64, 64)):
            np.testing.assert_array_equal(s.read_w(xw, yw, w, h, mpp),
                                          big[yw:yw + h, xw:xw + w], err_msg=f"{xw},{yw}")


@pytest.mark.parametrize(("which", "mpp"), [("p2", 0.75), ("p4", 3.0), ("p4", 0.8)])
def test_fractional_resample_matches_area_reference(
    which: str, mpp: float, request: pytest.FixtureRequest
) -> None:
    path: Path = request.getfixturevalue(which)
    with open_slide(path) as s:
        choice = s.choose_level(mpp)
        assert choice.scale not in (1.0, 2.0, 4.0) and choice.scale > 1
        w_px, h_px = s.size_w(mpp)
        got = s.read_w(0, 0, w_px, h_px, mpp).astype(np.float32)
        lw, lh = s.level_dimensions[choice.level]
    level = raw_level(path, choice.level, 0, 0, lw, lh)
    ref = cv2.resize(level, (w_px, h_px), interpolation=cv2.INTER_AREA).astype(np.float32)
    # Same picture, not shifted: the mean error is far below that of a one-pixel shift.
    err = np.abs(got - ref).mean()
    shifted = np.abs(got[:, 1:] - ref[:, :-1]).mean()
    assert err < 4.0 and err < 0.6 * shifted, (err, shifted)


def random_cuts(rng: np.random.Generator, n: int, pieces: int) -> list[int]:
    """Sorted cut points 0 = c0 < c1 < ... = n, at most ``pieces`` pieces of random sizes."""
    inner = rng.choice(np.arange(1, n), size=min(pieces - 1, n - 1), replace=False)
    return [0, *sorted(int(c) for c in inner), n]


def assert_pieces_equal_one_read(s: Slide, xw: int, yw: int, w: int, h: int, mpp: float,
                                 seed: int) -> None:
    """One read of a region equals the same region read as many random sub-regions."""
    whole = s.read_w(xw, yw, w, h, mpp)
    rng = np.random.default_rng(seed)
    cx, cy = random_cuts(rng, w, 7), random_cuts(rng, h, 5)
    pieces = np.empty_like(whole)
    for y0, y1 in itertools.pairwise(cy):
        for x0, x1 in itertools.pairwise(cx):
            pieces[y0:y1, x0:x1] = s.read_w(xw + x0, yw + y0, x1 - x0, y1 - y0, mpp)
    np.testing.assert_array_equal(pieces, whole, err_msg=f"{xw},{yw} at {mpp}")


@pytest.mark.parametrize(("which", "mpp"), [("p2", 0.75), ("p2", 1.98), ("p2", 0.6789),
                                            ("p4", 0.8), ("p4", 1.9), ("p4", 3.3)])
def test_fractional_reads_are_position_exact(which: str, mpp: float,
                                             request: pytest.FixtureRequest) -> None:
    path: Path = request.getfixturevalue(which)
    with open_slide(path) as s:
        assert s.choose_level(mpp).scale not in (1.0, 2.0, 4.0)
        w_px, h_px = s.size_w(mpp)
        for i, (xw, yw) in enumerate(((0, 0), (w_px // 3 + 7, h_px // 5 + 3), (-11, -5),
                                      (w_px - 150, h_px - 90))):
            assert_pieces_equal_one_read(s, xw, yw, 190, 130, mpp, seed=i)


def test_read_tiles_join_without_seams(s2: Slide, monkeypatch: pytest.MonkeyPatch) -> None:
    """read_w splits big regions into tiles of TILE_SRC_PX source pixels: no trace of them."""
    import wsi_seg.stages.slide_levels as slide_mod

    for mpp in (0.5, 1.0, 0.75, 1.98):
        whole = s2.read_w(-5, -3, 700, 500, mpp)
        monkeypatch.setattr(slide_mod, "TILE_SRC_PX", 61)
        np.testing.assert_array_equal(s2.read_w(-5, -3, 700, 500, mpp), whole, err_msg=str(mpp))
        monkeypatch.undo()


@pytest.mark.parametrize("mpp", [0.5, 1.0, 0.75, 1.98])
def test_threaded_reads_equal_one_thread(s2: Slide, monkeypatch: pytest.MonkeyPatch,
                                         mpp: float) -> None:
    import wsi_seg.stages.slide_levels as slide_mod

    monkeypatch.setattr(slide_mod, "TILE_SRC_PX", 150)  # dozens of tiles per read
    one = s2.read_w(-7, 5, 640, 410, mpp, threads=1)
    for n in (2, 4, 16):
        np.testing.assert_array_equal(s2.read_w(-7, 5, 640, 410, mpp, threads=n), one)
    # The unaligned read_x0 path tiles and threads the same way.
    x0 = s2.read_x0(101.3, 61.7, 900, 500, mpp, threads=1)
    np.testing.assert_array_equal(s2.read_x0(101.3, 61.7, 900, 500, mpp, threads=8), x0)


@pytest.mark.parametrize("mpp", [0.5, 1.0, 0.75, 1.98])
def test_rows_read_in_bands_equal_one_read(s2: Slide, monkeypatch: pytest.MonkeyPatch,
                                           mpp: float) -> None:
    """read_w_rows fills the region band by band, on demand, with read_w's very pixels."""
    import wsi_seg.stages.slide_levels as slide_mod

    monkeypatch.setattr(slide_mod, "TILE_SRC_PX", 150)  # many bands per region
    whole = s2.read_w(-7, 5, 640, 410, mpp)
    rows = s2.read_w_rows(-7, 5, 640, 410, mpp)
    ready = []
    for want in (1, 60, 61, 200, 10_000):
        rows.ensure(want)
        ready.append(rows.rows_ready)
        assert rows.rows_ready >= min(want, 410)
        np.testing.assert_array_equal(rows.image[: rows.rows_ready], whole[: rows.rows_ready])
    assert ready[0] < 410 and ready[-1] == 410  # the first rows came before the rest was read
    assert rows.read_s > 0


def test_many_callers_share_one_handle(s4: Slide, monkeypatch: pytest.MonkeyPatch) -> None:
    """Dask task threads reading one slide at once, each read threaded too: same pixels."""
    import threading

    import wsi_seg.stages.slide_levels as slide_mod

    monkeypatch.setattr(slide_mod, "TILE_SRC_PX", 200)
    boxes = [(37 * i, 23 * i, 300, 260, mpp) for i in range(8) for mpp in (0.8, 1.0)]
    want = [s4.read_w(*b, threads=1) for b in boxes]
    got: dict[int, np.ndarray] = {}

    def reader(i: int) -> None:
        got[i] = s4.read_w(*boxes[i], threads=4)

    threads = [threading.Thread(target=reader, args=(i,)) for i in range(len(boxes))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
        assert not t.is_alive(), "deadlock"
    for i, w in enumerate(want):
        np.testing.assert_array_equal(got[i], w)


class WrappedSlide(openslide.AbstractSlide):
    """A real OpenSlide slide behind the AbstractSlide interface; subclasses change one part."""

    def __init__(self, path: Path) -> None:
        self._osr = openslide.OpenSlide(str(path))

    @classmethod
    def detect_format(cls, filename: object) -> str | None:
        return None

    def close(self) -> None:
        self._osr.close()

    @property
    def level_count(self) -> int:
        return self._osr.level_count

    @property
    def level_dimensions(self) -> tuple[tuple[int, int], ...]:
        return self._osr.level_dimensions

    @property
    def level_downsamples(self) -> tuple[float, ...]:
        return self._osr.level_downsamples

    @property
    def properties(self) -> Mapping[str, str]:
        return self._osr.properties

    @property
    def associated_images(self) -> Mapping[str, Image.Image]:
        return self._osr.associated_images

    def get_best_level_for_downsample(self, downsample: float) -> int:
        return self._osr.get_best_level_for_downsample(downsample)

    def read_region(self, location: tuple[int, int], level: int, size: tuple[int, int]
                    ) -> Image.Image:
        return self._osr.read_region(location, level, size)


class FailingSlide(WrappedSlide):
    """Reads of level pixels right of x = 500 fail, as a damaged tile would."""

    @property
    def associated_images(self) -> Mapping[str, Image.Image]:
        return {}

    def read_region(self, location: tuple[int, int], level: int, size: tuple[int, int]
                    ) -> Image.Image:
        if location[0] + size[0] > 500:
            raise openslide.OpenSlideError("Not a JPEG file")
        return self._osr.read_region(location, level, size)


def test_a_failing_tile_fails_the_threaded_read(p2: Path, monkeypatch: pytest.MonkeyPatch
                                                ) -> None:
    import wsi_seg.stages.slide_levels as slide_mod

    monkeypatch.setattr(slide_mod, "TILE_SRC_PX", 128)
    with Slide(p2, FailingSlide(p2), 0.5) as s:
        assert s.read_w(0, 0, 400, 300, 0.5, threads=4).shape == (300, 400, 3)
        with pytest.raises(SlideError, match="cannot read pixels"):
            s.read_w(0, 0, 1000, 700, 0.5, threads=4)


class NoiseSlide(openslide.AbstractSlide):
    """A one-level slide of 2**31 px per side whose pixels are a function of their position.

    Lets reads at coordinates in the tens of millions be checked (no real slide is that big):
    there a float32 holds positions only to a few pixels, so region-relative maps matter.
    """

    SIZE = 2**31

    @classmethod
    def detect_format(cls, filename: object) -> str | None:
        return None

    def close(self) -> None:
        pass

    @property
    def level_count(self) -> int:
        return 1

    @property
    def level_dimensions(self) -> tuple[tuple[int, int], ...]:
        return ((self.SIZE, self.SIZE),)

    @property
    def level_downsamples(self) -> tuple[float, ...]:
        return (1.0,)

    @property
    def properties(self) -> Mapping[str, str]:
        return {}

    @property
    def associated_images(self) -> Mapping[str, Image.Image]:
        return {}

    def get_best_level_for_downsample(self, downsample: float) -> int:
        return 0

    @staticmethod
    def pixels(x0: int, y0: int, w: int, h: int) -> np.ndarray:
        """RGB of level-0 pixels ``[x0, x0 + w) x [y0, y0 + h)``: a hash of (x, y, channel)."""
        y, x = np.mgrid[y0:y0 + h, x0:x0 + w].astype(np.uint64)
        c = np.arange(3, dtype=np.uint64)
        v = (x[..., None] * np.uint64(0x9E3779B1) + y[..., None] * np.uint64(0x85EBCA77)
             + c * np.uint64(0xC2B2AE3D))
        v ^= v >> np.uint64(15)
        v *= np.uint64(0x2C1B3C6D)
        v ^= v >> np.uint64(12)
        return (v & np.uint64(255)).astype(np.uint8)

    def read_region(self, location: tuple[int, int], level: int, size: tuple[int, int]
                    ) -> Image.Image:
        rgb = self.pixels(location[0], location[1], size[0], size[1])
        return Image.fromarray(np.dstack([rgb, np.full(rgb.shape[:2], 255, np.uint8)]))


@pytest.mark.parametrize("mpp", [0.3, 0.9876, 1.3])
@pytest.mark.parametrize("xw", [1_001, 12_345, 10_000_003, 333_333_331])
def test_position_exact_at_huge_coordinates(mpp: float, xw: int) -> None:
    """Bit-exact sub-region reads, and the right pixels, tens of millions of pixels in."""
    s = Slide(Path("noise"), NoiseSlide(), 0.25)
    f = mpp / 0.25
    yw = xw // 3 + 17
    assert_pieces_equal_one_read(s, xw, yw, 97, 61, mpp, seed=xw % 1000)
    got = s.read_w(xw, yw, 97, 61, mpp).astype(np.float64)
    # Reference: blur a padded source as the reader does, then float64 bilinear at the
    # positions rounded to 1/32 px, computed from integers (exact at any magnitude).
    ux = np.floor(((xw + np.arange(97) + 0.5) * f - 0.5) * 32 + 0.5).astype(np.int64)
    vy = np.floor(((yw + np.arange(61) + 0.5) * f - 0.5) * 32 + 0.5).astype(np.int64)
    pad = 20
    x0, y0 = int(ux[0] // 32) - pad, int(vy[0] // 32) - pad
    src = NoiseSlide.pixels(x0, y0, int(ux[-1] // 32) - x0 + pad, int(vy[-1] // 32) - y0 + pad)
    sigma = 0.5 * np.sqrt(f * f - 1)
    src = cv2.GaussianBlur(src, (0, 0), sigmaX=sigma, sigmaY=sigma).astype(np.float64)
    ix, tx = ux // 32 - x0, (ux % 32)[None, :, None] / 32
    iy, ty = vy // 32 - y0, (vy % 32)[:, None, None] / 32
    top = src[iy][:, ix] * (1 - tx) + src[iy][:, ix + 1] * tx
    bottom = src[iy + 1][:, ix] * (1 - tx) + src[iy + 1][:, ix + 1] * tx
    want = top * (1 - ty) + bottom * ty
    assert np.abs(got - want).max() <= 1.0


def test_read_x0_unaligned_origin(s2: Slide) -> None:
    # 1 µm/px: two level-0 px per working px; x0 = 101 sits half-way into working pixel 50.
    out = s2.read_x0(101, 61, 400, 300, mpp=1.0)
    assert out.shape == (150, 200, 3)
    ref = s2.read_w(50, 30, 201, 151, mpp=1.0).astype(np.float32)
    half = (ref[:-1, :-1] + ref[1:, 1:] + ref[:-1, 1:] + ref[1:, :-1]) / 4
    assert np.abs(out - half).mean() < 4.0


# -- padding ------------------------------------------------------------------------------------
@pytest.mark.parametrize("mpp", [0.5, 1.0, 0.75, 3.0, 4.0, 1.2])
def test_padding_at_edges_is_white(s2: Slide, mpp: float) -> None:
    """Working pixels whose footprint lies outside the slide are exactly white (255)."""
    f = mpp / 0.5
    w_px, h_px = s2.size_w(mpp)
    tl = s2.read_w(-16, -8, 64, 48, mpp)
    assert (tl[:8] == 255).all() and (tl[:, :16] == 255).all()
    assert (tl[8:, 16:] != 255).any()
    # Inside, a pixel is what a read without padding gives (position-exact reads).
    np.testing.assert_array_equal(tl[8:, 16:], s2.read_w(0, 0, 48, 40, mpp))
    # Past the bottom-right corner: rows/columns starting at or past the edge are white.
    xw, yw = w_px - 24, h_px - 20
    br = s2.read_w(xw, yw, 64, 48, mpp)
    out_c = np.flatnonzero((xw + np.arange(64)) * f >= 3000)
    out_r = np.flatnonzero((yw + np.arange(48)) * f >= 2000)
    assert out_c[0] <= 25 and out_r[0] <= 21
    assert (br[:, out_c] == 255).all() and (br[out_r] == 255).all()
    assert (br[:out_r[0], :out_c[0]] != 255).any()
    np.testing.assert_array_equal(br[:20, :24], s2.read_w(xw, yw, 24, 20, mpp))


@pytest.mark.parametrize("mpp", [0.5, 1.0, 0.75, 3.0])
@pytest.mark.parametrize("xy", [(10**6, 0), (0, 10**6), (-5000, -5000), (-10**7, 10**7)])
def test_fully_outside_read_is_white(s2: Slide, s4: Slide, mpp: float, xy: tuple[int, int]
                                     ) -> None:
    for s in (s2, s4):
        out = s.read_w(xy[0], xy[1], 33, 17, mpp)
        assert out.shape == (17, 33, 3)
        assert (out == 255).all()


def test_empty_region_is_an_error(s2: Slide) -> None:
    with pytest.raises(ValueError):
        s2.read_w(0, 0, 0, 10, 1.0)


def test_thumbnail(s2: Slide) -> None:
    thumb, scale = s2.thumbnail(512)
    assert max(thumb.shape[:2]) <= 512 and max(thumb.shape[:2]) >= 510
    assert scale == pytest.approx(3000 / 512)
    np.testing.assert_array_equal(thumb, s2.read_w(0, 0, thumb.shape[1], thumb.shape[0],
                                                    0.5 * scale))
    # A thumbnail never upsamples: max_px beyond the slide gives level 0.
    big, scale1 = s2.thumbnail(10_000)
    assert scale1 == 1.0 and big.shape == (2000, 3000, 3)


# -- bounds ---------------------------------------------------------------------------------------
class BoundedSlide(WrappedSlide):
    """A real OpenSlide slide that reports ``openslide.bounds-*`` properties.

    OpenSlide sets bounds only for formats with sparse tile maps (MIRAX, Hamamatsu VMS, Leica
    SCN, Olympus VSI, Ventana BIF, ...), whose multi-file or XML layouts tifffile cannot write
    in a test. So the pixels come from a real synthetic SVS through OpenSlide, and this wrapper
    adds only the properties such a vendor would set (the scanned rectangle, in level-0 pixels).
    """

    def __init__(self, path: Path, bounds: tuple[int, int, int, int]) -> None:
        super().__init__(path)
        x, y, w, h = bounds
        self._props = dict(self._osr.properties)
        self._props.update({
            openslide.PROPERTY_NAME_BOUNDS_X: str(x), openslide.PROPERTY_NAME_BOUNDS_Y: str(y),
            openslide.PROPERTY_NAME_BOUNDS_WIDTH: str(w),
            openslide.PROPERTY_NAME_BOUNDS_HEIGHT: str(h),
        })

    @property
    def properties(self) -> Mapping[str, str]:
        return self._props


@pytest.mark.parametrize("mpp", [0.5, 1.0, 2.0, 0.75])
def test_bounds_offsets(p2: Path, mpp: float) -> None:
    # Level-0 x, y, w, h; offsets divisible by 4 and by 1.5 so that every level and every tested
    # resolution puts the bounds' corner on a pixel edge of the plain slide.
    bounds = (480, 240, 1600, 1200)
    with open_slide(p2) as plain, Slide(p2, BoundedSlide(p2, bounds), 0.5) as s:
        assert s.bounds_x0 == bounds
        assert (s.origin_x0, s.origin_y0) == (480, 240)
        f = mpp / 0.5
        assert s.size_w(mpp) == (int(1600 / f), int(1200 / f))
        # Working pixel 0 is the bounds' corner: the same as reading the plain slide there.
        ox, oy = round(480 / f), round(240 / f)
        np.testing.assert_array_equal(s.read_w(0, 0, 100, 80, mpp),
                                      plain.read_w(ox, oy, 100, 80, mpp))
        np.testing.assert_array_equal(s.read_w(40, 30, 100, 80, mpp),
                                      plain.read_w(ox + 40, oy + 30, 100, 80, mpp))
        # read_x0 stays in level-0 coordinates of the whole slide.
        np.testing.assert_array_equal(s.read_x0(480, 240, 100 * f, 80 * f, mpp),
                                      s.read_w(0, 0, 100, 80, mpp))
        thumb, scale = s.thumbnail(400)
        assert thumb.shape[:2] == (300, 400) and scale == 4.0
        np.testing.assert_array_equal(thumb, plain.read_w(120, 60, 400, 300, 2.0))


def test_bounds_tissue_and_info_use_the_offset(p2: Path) -> None:
    from wsi_seg.cli.info import describe
    from wsi_seg.stages.tissue import find_tissue

    bounds = (480, 240, 1600, 1200)
    with open_slide(p2) as plain, Slide(p2, BoundedSlide(p2, bounds), 0.5) as s:
        t = find_tissue(s)
        assert (t.origin_x0, t.origin_y0) == (480, 240)
        full = find_tissue(plain)
        # Every tissue polygon lies inside the bounds, and agrees with the plain slide's tissue
        # clipped to them.
        from shapely.geometry import box
        from shapely.ops import unary_union
        inside = unary_union(t.polygons)
        frame = box(480, 240, 480 + 1600, 240 + 1200)
        assert inside.difference(frame.buffer(40)).area == 0
        ref = unary_union(full.polygons).intersection(frame)
        assert inside.symmetric_difference(ref).area < 0.15 * ref.area
        d = describe(s, t, 1.0, 256, 0.25, 1024, 512)
        assert d["bounds_x0"] == list(bounds)
        assert d["plan"]["working_size_px"] == [800, 600]


# -- opening and errors -----------------------------------------------------------------------
def test_synthetic_svs_metadata(s2: Slide, p2: Path) -> None:
    assert s2.vendor == "aperio"
    assert s2.mpp == pytest.approx(0.5)
    assert s2.objective_power == 20.0
    assert s2.dimensions == (3000, 2000)
    assert s2.level_dimensions == ((3000, 2000), (1500, 1000), (750, 500))
    assert s2.stem == "p2"
    assert s2.bounds_x0 == (0, 0, 3000, 2000)
    assert "p2.svs" in repr(s2)


def test_mpp_override_and_plausibility(p2: Path) -> None:
    with open_slide(p2, mpp=0.25) as s:
        assert s.mpp == 0.25
        assert s.size_w(0.5) == (1500, 1000)
    for bad in (0.0, 0.01, 25.0, float("nan"), -1.0):
        with pytest.raises(SlideError, match=r"--mpp .* outside the plausible range") as e:
            open_slide(p2, mpp=bad)
        assert str(p2) in str(e.value) and "\n" not in str(e.value)
    assert check_mpp(0.05, "x") == 0.05 and check_mpp(20, "x") == 20


def test_implausible_slide_mpp_needs_override(tmp_path: Path, p2: Path) -> None:
    # The synthetic SVS with its Aperio "MPP = 0.5000" rewritten in place (same length).
    data = p2.read_bytes()
    assert data.count(b"MPP = 0.5000") == 4  # 3 levels and the thumbnail page
    odd = tmp_path / "odd.svs"
    odd.write_bytes(data.replace(b"MPP = 0.5000", b"MPP = 40.000"))
    with pytest.raises(SlideError, match=r"slide MPP 40 .*pass the right value with --mpp"):
        open_slide(odd)
    with open_slide(odd, mpp=0.5) as s:
        assert s.mpp == 0.5


def one_line_error(path: Path, **kw: float) -> str:
    with pytest.raises(SlideError) as e:
        open_slide(path, **kw)
    msg = str(e.value)
    assert msg.startswith(f"{path}: ") and "\n" not in msg
    assert e.value.path == path
    return msg


def test_bad_files(tmp_path: Path, p2: Path) -> None:
    assert "no such file" in one_line_error(tmp_path / "missing.svs")
    assert "directory" in one_line_error(tmp_path)
    empty = tmp_path / "empty.svs"
    empty.touch()
    assert "empty" in one_line_error(empty)
    text = tmp_path / "notes.svs"
    text.write_text("this is not a slide\n" * 50)
    assert "not a slide OpenSlide can open" in one_line_error(text)
    data = p2.read_bytes()
    for frac in (0.3, 0.8, 0.995):
        cut = tmp_path / f"cut{frac}.svs"
        cut.write_bytes(data[: int(len(data) * frac)])
        msg = one_line_error(cut)
        assert "truncated" in msg or "Short read" in msg, msg


def test_plain_image_is_a_one_level_slide(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    rgb = rng.integers(0, 255, (120, 160, 3), dtype=np.uint8)
    png = tmp_path / "photo.png"
    Image.fromarray(rgb).save(png)
    assert "--mpp" in one_line_error(png)
    with open_slide(png, mpp=2.0) as s:
        assert s.level_count == 1 and s.dimensions == (160, 120)
        np.testing.assert_array_equal(s.read_w(0, 0, 160, 120, 2.0), rgb)
        assert s.read_w(0, 0, 80, 60, 4.0).shape == (60, 80, 3)


def test_find_slides(tmp_path: Path) -> None:
    for name in ("b.svs", "a.tif", "c.ndpi", "notes.txt", ".hidden.svs"):
        (tmp_path / name).write_bytes(b"x")
    (tmp_path / "sub.svs").mkdir()
    found = find_slides([tmp_path, tmp_path / "b.svs", tmp_path / "notes.txt"])
    assert [p.name for p in found] == ["a.tif", "b.svs", "c.ndpi", "notes.txt"]
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(SlideError, match="no slides found") as e:
        find_slides([empty])
    assert e.value.path == empty
    with pytest.raises(SlideError, match="no such file or directory"):
        find_slides([tmp_path / "nope"])


def test_blank_slide_opens(tmp_path_factory: pytest.TempPathFactory) -> None:
    with open_slide(blank_slide(tmp_path_factory)) as s:
        assert s.vendor == "generic-tiff" and s.level_count == 3
        assert s.mpp == pytest.approx(0.5)


# -- real slides ------------------------------------------------------------------------------
def test_real_cmu1(real_slides: Path) -> None:
    with open_slide(real_slides / "CMU-1-Small-Region.svs") as s:
        assert s.vendor == "aperio"
        assert s.dimensions == (2220, 2967) and s.level_count == 1
        assert s.mpp == pytest.approx(0.499, abs=1e-3)
        assert s.objective_power == 20
        assert s.associated_images == ("label", "macro", "thumbnail")
        out = s.read_w(0, 0, 300, 200, mpp=1.0)
        assert out.shape == (200, 300, 3)


def test_real_4x_pyramid_level_pixels(real_slides: Path) -> None:
    path = real_slides / "1065626.svs"
    with open_slide(path) as s:
        assert s.level_count == 2 and s.level_downsamples[1] == pytest.approx(4.0, abs=1e-3)
        assert s.mpp == pytest.approx(0.5026, abs=1e-4)
        level_mpp = s.mpp * s.level_downsamples[1]
        assert s.choose_level(level_mpp).level == 1 and s.choose_level(level_mpp).scale == 1.0
        got = s.read_w(1000, 900, 256, 200, level_mpp)
        # 1 µm/px lies between the levels: level 0 resampled by ~1.99.
        c = s.choose_level(1.0)
        assert c.level == 0 and c.scale == pytest.approx(1 / 0.5026, rel=1e-3)
    np.testing.assert_array_equal(got, raw_level(path, 1, 1000, 900, 256, 200))


def test_real_slide_without_mpp(real_slides: Path) -> None:
    path = real_slides / "tcga-cr-7395-01a-01-ts1.svs"
    msg = one_line_error(path)
    assert "no MPP" in msg and "--mpp" in msg
    with open_slide(path, mpp=0.5) as s:
        assert s.level_count == 2 and s.objective_power is None
        assert s.choose_level(1.0) == LevelChoice(1, s.level_downsamples[1], 1.0)


def test_real_dicom_opens_and_asks_for_its_missing_mpp(real_slides: Path) -> None:
    """OpenSlide refuses it (no ImageType) and wsidicom too (no ImageType, no pixel spacing):
    the lenient DICOM reader reads it; it states no µm/px, so --mpp supplies one
    (tests/test_dicom.py runs it end to end)."""
    msg = one_line_error(real_slides / "tcga-xk-aaju-ts1-small.dcm")
    assert "no MPP metadata" in msg
