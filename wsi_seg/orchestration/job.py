"""One slide's job, prepared on the client: its configuration, plan and work directory.

:func:`prepare_slide` (cheap) opens the slide, finds tissue, plans blocks and creates (or
reopens, to resume) the slide's work directory ``OUT/.<name>.partial/``. The job it returns
holds only small picklable values (paths, frozen dataclasses), never a model or a slide
handle, so it travels to the workers with every task.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from wsi_seg import __version__
from wsi_seg.core.errors import WsiSegError
from wsi_seg.core.files import (
    decode_json,
    read_output_text,
    write_json_atomic,
    write_json_output,
)
from wsi_seg.core.locations import (
    OutputLocation,
    SlideLocation,
    SlideURL,
    output_location,
    slide_location,
    url_scheme,
)
from wsi_seg.core.naming import (
    REPORT,
    TRUTH_PATTERNS,
    class_map_problem,
    not_blank,
    slide_identity,
    slide_stem,
    truth_pattern_problem,
)
from wsi_seg.core.params import (
    ConfigError,
    Limits,
    Rule,
    check_params,
    coerce_paths,
    coerce_tuples,
    param,
)
from wsi_seg.core.storage import StorageOptions
from wsi_seg.stages.blend import BLEND_MODES, BlendSpec, blend_mode
from wsi_seg.stages.card import ModelCard, bundled_model_path, read_card, sha256_file
from wsi_seg.stages.infer import InferConfig, served_card
from wsi_seg.stages.mosaic import MosaicClass, MosaicGeometry, create_mosaic
from wsi_seg.stages.slide import MPP_RANGE_UM, MissingMppError, Slide, open_slide
from wsi_seg.stages.tiling import Block, BlockPlan, plan_blocks, step_for
from wsi_seg.stages.tissue import TissueConfig, TissueMask, find_tissue

PARTIAL_SUFFIX = ".partial"
#: Windows a block hands the predictor at a time when the batch size is left to the device.
CHUNK_WINDOWS = 64
#: Folder of a work directory holding one completion marker per finished block.
MARKERS = "blocks"


@dataclass(frozen=True)
class RunConfig:
    """Everything that decides a run's outputs, plus how to execute it.

    Attributes:
        out_dir: output folder (``OUT``), or a prefix in an object store
            (``s3://bucket/results``; a ``Path`` that prints as one is taken for it).
        model_path: ``MODEL.keras`` with its card; None for the bundled demo UNet.
        slide_mpp: level-0 µm/px overriding every slide's metadata.
        missing_mpp: level-0 µm/px for the slides whose metadata has none (the others keep
            theirs).
        overlap: window overlap fraction (MONAI's step rule).
        stride_px: window step in working pixels, overriding ``overlap`` (patch models).
        blend: ``gaussian``, ``hann`` or ``constant``; None: gaussian for a UNet, constant
            (box footprint) for a patch classifier.
        sigma_scale: Gaussian sigma as a fraction of the window.
        block_px, chunk_px: block and mosaic chunk edges, working pixels.
        infer: model execution (batch size, device, mixed precision, threads).
        threshold: tumour probability threshold; None: the model card's.
        min_area_um2: smallest tumour region kept in the GeoJSON, µm².
        simplify_um: polygon simplification tolerance, µm.
        vectorize_level: mosaic pyramid level traced into polygons (0 = working MPP).
        truth: ground-truth file, or a folder searched for the slide's truth file.
        truth_patterns: file names tried in a truth folder, in order; ``{stem}`` is the
            slide's output name, then its stem (:func:`naming.truth_candidates`), ``{name}`` its
            file name.
        truth_classes: class names counted as tumour (None: the reader's default set).
        class_map: ``TRUTH_CLASS=MODEL_CLASS`` renamings of truth classes for a multi-class
            model's per-class scores (:func:`~wsi_seg.evaluation.annotations.read_class_truths`).
        tissue: tissue detection settings.
        overwrite: redo finished slides.
        storage: how s3:// slides and results are reached (endpoint, region, profile,
            anonymous): applied to this process and the run's workers for the run, and never
            written to ``run.json``; credentials are never among them.
    """

    out_dir: OutputLocation = param(rule=Rule("path"))  # noqa: RUF009 (a field())
    model_path: Path | None = param(None, Rule("path"))  # noqa: RUF009
    slide_mpp: float | None = param(None, Rule("float", Limits(*MPP_RANGE_UM)))
    missing_mpp: float | None = param(None, Rule("float", Limits(*MPP_RANGE_UM)))
    overlap: float = param(0.25, Rule("float", Limits(0, 1, hi_open=True)))
    stride_px: int | None = param(None, Rule("int", Limits(1, 16384)))
    blend: str | None = param(None, Rule("str", choices=BLEND_MODES))
    sigma_scale: float = param(0.125, Rule("float", Limits(0, 10, lo_open=True)))
    block_px: int = param(4096, Rule("int", Limits(16, 65536)))
    chunk_px: int = param(1024, Rule("int", Limits(16, 16384)))
    infer: InferConfig = field(default_factory=InferConfig)
    threshold: float | None = param(None, Rule("float", Limits(0, 1, lo_open=True)))
    min_area_um2: float = param(1000.0, Rule("float", Limits(0, 1e12)))
    simplify_um: float = param(1.0, Rule("float", Limits(0, 10_000)))
    vectorize_level: int = param(0, Rule("int", Limits(0, 32)))
    truth: Path | None = param(None, Rule("path"))  # noqa: RUF009
    truth_patterns: tuple[str, ...] = param(TRUTH_PATTERNS,
                                            Rule("strs", check=truth_pattern_problem))
    truth_classes: tuple[str, ...] | None = param(None, Rule("strs", check=not_blank))
    class_map: tuple[str, ...] | None = param(None, Rule("strs", check=class_map_problem))
    tissue: TissueConfig = field(default_factory=TissueConfig)
    overwrite: bool = param(False, Rule("bool"))
    storage: StorageOptions = field(default_factory=StorageOptions)

    def __post_init__(self) -> None:
        if isinstance(self.out_dir, str) and url_scheme(self.out_dir) is not None:
            # Read whole, before a Path folds it ("s3://" would become the folder "s3:").
            self._out_location(self.out_dir)
        if isinstance(self.out_dir, SlideURL):  # checked as the path it is typed as
            object.__setattr__(self, "out_dir", str(self.out_dir))
        coerce_paths(self, "out_dir", "model_path", "truth")
        coerce_tuples(self, "truth_patterns", "truth_classes", "class_map")
        check_params(self)
        object.__setattr__(self, "out_dir", self._out_location(self.out_dir))
        for name, kind in (("infer", InferConfig), ("tissue", TissueConfig),
                           ("storage", StorageOptions)):
            if not isinstance(getattr(self, name), kind):
                raise ConfigError(f"{{{name}}}: must be of type {kind.__name__}",
                                  {name: getattr(self, name)})
        if self.block_px % self.chunk_px:
            raise ConfigError("{block_px} must be a multiple of {chunk_px} (blocks write "
                              "whole mosaic chunks)",
                              {"block_px": self.block_px, "chunk_px": self.chunk_px})
        if self.slide_mpp is not None and self.missing_mpp is not None:
            raise ConfigError("{slide_mpp} and {missing_mpp} both say what a slide's µm/px "
                              "is: give one (slide_mpp for every slide, missing_mpp only "
                              "where the metadata has none)",
                              {"slide_mpp": self.slide_mpp, "missing_mpp": self.missing_mpp})

    def _out_location(self, raw: Any) -> OutputLocation:
        try:
            return output_location(raw)
        except WsiSegError as exc:
            raise ConfigError(f"{{out_dir}}: {exc.cause}", {"out_dir": raw}) from None

    def resolved_model(self) -> Path:
        return self.model_path if self.model_path is not None else bundled_model_path("unet")


def check_model_fit(config: RunConfig) -> None:
    """``infer.tile_px`` must fit the model (its fixed input, or a multiple of its
    downsampling), and ``stride_px`` must not exceed the window (the pixels between windows
    would never be predicted). Reads only the model's card; raises ModelError or ConfigError.
    """
    if config.infer.tile_px is None and config.stride_px is None:
        return
    model = config.resolved_model()
    size = served_card(read_card(model), config.infer, model).window_px
    if config.stride_px is not None and config.stride_px > size:
        raise ConfigError(f"{{stride_px}} is larger than the model's {size} px window: the "
                          "pixels between windows would never be predicted",
                          {"stride_px": config.stride_px})


@dataclass(frozen=True)
class BlockTask:
    """One block and its windows (top-left corners in working pixels, and which are
    predicted): everything a worker needs besides cached handles."""

    block: Block
    starts_y: np.ndarray
    starts_x: np.ndarray
    keep: np.ndarray


@dataclass(frozen=True)
class BlockContext:
    """The slide-level facts a block task needs: small, so every task can carry it.

    ``slide_mpp`` is the user's level-0 µm/px override (None: the slide's metadata); ``mpp``
    the working µm/px; ``block_px`` the block edge in working pixels.
    """

    slide_path: SlideLocation
    slide_mpp: float | None
    stem: str
    work_dir: OutputLocation
    mpp: float
    spec: BlendSpec
    model_path: Path
    block_px: int

    @property
    def mosaic_path(self) -> OutputLocation:
        return self.work_dir / "mask.zarr"


@dataclass(frozen=True)
class SlideFacts:
    """What the client learns of a slide while preparing it (areas in mm² and µm²)."""

    slide_mpp: float
    tissue_fraction: float
    tissue_mm2: float
    tissue_polygons: tuple[Any, ...]
    tissue_note: str
    slide_area_um2: float
    slide_size_x0: tuple[int, int]


@dataclass(frozen=True)
class SlideJob:
    """A prepared slide: where it goes, how it is read, and the blocks still to do.

    ``slide_mpp`` is the slide's level-0 µm/px, ``mpp`` the working (model) µm/px; areas are
    mm² (tissue) and µm² (the slide's bounds); ``slide_size_x0`` is level-0 (width, height).
    """

    slide_path: SlideLocation
    stem: str
    final_dir: OutputLocation
    work_dir: OutputLocation  # in a store: final_dir itself (written in place, no rename)
    slide_mpp: float
    mpp: float
    geom: MosaicGeometry
    spec: BlendSpec
    model_path: Path
    card: ModelCard
    model_sha256: str
    tasks: tuple[BlockTask, ...]
    n_blocks: int
    n_blocks_done: int
    n_tiles: int
    n_tile_predictions: int
    tissue_fraction: float
    tissue_mm2: float
    tissue_polygons: tuple[Any, ...]
    slide_identity: dict[str, Any]
    tissue_note: str
    slide_area_um2: float
    config_digest: str
    block_px: int
    slide_size_x0: tuple[int, int]
    #: The level-0 µm/px every reader of this slide is told (None: its metadata's): the run's
    #: ``slide_mpp``, or its ``missing_mpp`` for a slide whose metadata has none.
    mpp_override: float | None = None

    @property
    def mosaic_path(self) -> OutputLocation:
        return self.work_dir / "mask.zarr"

    @property
    def tiles_todo(self) -> int:
        """Tiles the remaining blocks own (counted as the report counts tiles)."""
        return sum(t.block.n_owned for t in self.tasks)

    def context(self) -> BlockContext:
        return BlockContext(self.slide_path, self.mpp_override, self.stem, self.work_dir,
                            self.mpp, self.spec, self.model_path, self.block_px)


def final_dir_for(out_dir: OutputLocation, slide_path: SlideLocation, name: str | None = None
                  ) -> OutputLocation:
    """A slide's output folder: ``OUT/<name>``, the name from :func:`naming.output_names`
    (the slide's stem when no other slide of the run shares it)."""
    return out_dir / (name or slide_stem(slide_path))


class OutputTaken(WsiSegError):
    """The output folder a slide would use holds another slide's results."""


def finished_report(out_dir: OutputLocation, slide_path: SlideLocation,
                    name: str | None = None) -> dict[str, Any] | None:
    """The ``report.json`` of this slide's final outputs when they exist for this very file
    (outputs only ever appear complete; in a store, ``report.json`` is written last and so is
    the completion marker, asked first), else None. Raises :class:`OutputTaken` when the
    folder holds another slide's."""
    report = final_dir_for(out_dir, slide_path, name) / REPORT
    try:
        text = read_output_text(report)
        if text is None:
            return None
        done = decode_json(text, str(report))
        same_file = slide_location(done["slide"]).resolve() == slide_path.resolve()
    except (OSError, WsiSegError, KeyError, TypeError):
        return None  # an unreadable report is redone
    if not same_file:
        raise OutputTaken(f"{report.parent} already holds the results of {done['slide']}; "
                          "use another --out, or --overwrite to replace them", slide_path)
    # A file replaced since (another scan under the same name) is redone.
    return done if done.get("slide_identity") == slide_identity(slide_path) else None


def is_finished(out_dir: OutputLocation, slide_path: SlideLocation,
                name: str | None = None) -> bool:
    """Whether this slide's final outputs exist, for this very file (see
    :func:`finished_report`, whose :class:`OutputTaken` it raises)."""
    return finished_report(out_dir, slide_path, name) is not None


def finished_names(out_dir: OutputLocation) -> list[str]:
    """The slides' output folders under ``out_dir`` that are finished (hold ``report.json``),
    sorted: the listing. Outputs in a store are written in place, so this asks each folder
    for its completion marker rather than trusting that the folder exists."""
    if isinstance(out_dir, SlideURL):
        from wsi_seg.stages.result_store import finished_names as store_finished

        return store_finished(out_dir, REPORT)
    if not out_dir.is_dir():
        return []
    return sorted(p.name for p in out_dir.iterdir()
                  if not p.name.startswith(".") and (p / REPORT).is_file())


def check_writable(out_dir: OutputLocation) -> None:
    """Create ``out_dir`` and prove it is writable, or raise a one-line error (a prefix in a
    store: list its bucket, write and remove a probe object)."""
    if isinstance(out_dir, SlideURL):
        from wsi_seg.stages import result_store

        result_store.check_writable(out_dir)
        return
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise WsiSegError(f"output folder is not writable ({exc.strerror or exc})",
                          out_dir) from None
    if (problem := out_dir_problem(out_dir)) is not None:
        raise WsiSegError(f"output folder {problem}", out_dir)


def folder_identity(path: OutputLocation) -> tuple[int, int] | None:
    """``(st_dev, st_ino)`` of ``path``: which folder it is, not just its name (None for a
    prefix in a store, which has no identity beyond its name)."""
    if isinstance(path, SlideURL):
        return None
    try:
        st = path.stat()
    except OSError:
        return None
    return st.st_dev, st.st_ino


def out_dir_problem(out_dir: OutputLocation, identity: tuple[int, int] | None = None
                    ) -> str | None:
    """Why ``out_dir`` cannot take outputs now (``was deleted``, ``is not a folder``, ``is not
    writable (Read-only file system)``), or None: a probe file is made and removed.
    ``identity`` (:func:`folder_identity` at the run's start) tells a folder deleted and made
    again (by a write in flight that creates its parents) from the run's own. A prefix in a
    store cannot be deleted as a folder is (a write fails on its own, in one line): None."""
    if isinstance(out_dir, SlideURL):
        return None
    now = folder_identity(out_dir)
    if now is None or (identity is not None and now != identity):
        return "was deleted"
    if not out_dir.is_dir():
        return "is not a folder"
    probe = out_dir / f".wsi-seg-write-test-{os.getpid()}"
    try:
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as exc:
        # The folder can go between the stat above and the probe: ENOENT then means deleted.
        now = folder_identity(out_dir)
        if now is None or (identity is not None and now != identity):
            return "was deleted"
        return f"is not writable ({exc.strerror or exc})"
    return None


def _digest(data: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(data, sort_keys=True, default=str).encode()).hexdigest()[:16]


@dataclass(frozen=True)
class _Model:
    """The model a run uses, read once per slide: its file, card and hash."""

    path: Path
    card: ModelCard
    sha256: str


@dataclass(frozen=True)
class _Layout:
    """A slide's windows, blocks and mosaic at the model's µm/px (sizes in working px)."""

    spec: BlendSpec
    plan: BlockPlan
    geom: MosaicGeometry
    provenance: dict[str, Any]


def _layout(slide: Slide, tissue: TissueMask, model: _Model, config: RunConfig) -> _Layout:
    """Window spacing and blending, the block plan over tissue, and the mosaic's geometry
    and provenance (what the mosaic records about how it was made)."""
    card, mpp = model.card, model.card.mpp
    w_px, h_px = slide.size_w(mpp)
    f = slide.level0_px_per_px(mpp)
    roi = card.window_px
    step = config.stride_px or step_for(roi, config.overlap)
    try:
        blend = blend_mode(card.kind, config.blend)
    except ValueError as exc:
        raise WsiSegError(str(exc)) from None
    spec = BlendSpec(roi, step, blend, config.sigma_scale,
                     config.infer.batch_size or CHUNK_WINDOWS, card.n_maps)
    plan = plan_blocks(w_px, h_px, roi, step, config.block_px, config.chunk_px,
                       tissue.keep_windows(f))
    geom = MosaicGeometry(h_px, w_px, mpp, float(slide.origin_x0), float(slide.origin_y0),
                          f, config.chunk_px)
    provenance = {
        "wsi_seg_version": __version__,
        "slide": slide.path.name,
        "slide_mpp": slide.mpp,
        "model": {"sha256": model.sha256, "card": card.to_dict()},
        "mpp": mpp,
        "tile_px": roi,
        "step_px": step,
        "overlap": 1 - step / roi,
        "blend": blend,
        "sigma_scale": config.sigma_scale,
        "block_px": config.block_px,
        "origin_x0": geom.origin_x0,
        "origin_y0": geom.origin_y0,
        "level0_px_per_px": f,
        "value": "tumour probability * 255 (uint8)",
    }
    return _Layout(spec, plan, geom, provenance)


def _facts(slide: Slide, tissue: TissueMask) -> SlideFacts:
    _, _, bw, bh = slide.bounds_x0
    return SlideFacts(
        slide_mpp=slide.mpp, tissue_fraction=tissue.fraction, tissue_mm2=tissue.area_mm2,
        tissue_polygons=tuple(tissue.polygons),
        tissue_note=tissue.note() if tissue.n_dropped or tissue.empty else "",
        slide_area_um2=bw * bh * slide.mpp * slide.mpp, slide_size_x0=slide.dimensions)


def prepare_slide(slide_path: SlideLocation, config: RunConfig, name: str | None = None
                  ) -> SlideJob:
    """Open, find tissue, plan and create (or reopen, to resume) the slide's work directory.

    ``name`` is the slide's output folder name (:func:`naming.output_names`; its stem by
    default). A work directory is resumed only if the configuration and the slide file's
    identity (size, modification time, a hash of its head) are unchanged.

    Raises WsiSegError (one line, naming the file) for anything wrong with the slide or model.
    """
    identity = slide_identity(slide_path)
    model_path = config.resolved_model()
    model = _Model(model_path, served_card(read_card(model_path), config.infer, model_path),
                   sha256_file(model_path))
    override = mpp_override(slide_path, config)
    with open_slide(slide_path, mpp=override) as slide:
        slide.choose_level(model.card.mpp)  # a model the slide cannot serve fails here
        tissue = find_tissue(slide, config.tissue)
        layout = _layout(slide, tissue, model, config)
        facts = _facts(slide, tissue)
    # The slide's identity is in the digest, so a replaced file never resumes from another
    # file's blocks (it is kept out of the mosaic's own metadata: a copy of a slide gives
    # the same bytes).
    digest = _digest({"provenance": layout.provenance, "tissue": asdict(config.tissue),
                      "slide_size": facts.slide_size_x0, "batch": config.infer.batch_size,
                      "slide_identity": identity})
    stem = name or slide_stem(slide_path)
    work_dir = work_dir_for(config.out_dir, stem)
    classes = mosaic_classes(model.card)
    done = (_open_store_work_dir(work_dir, digest, layout.geom, layout.provenance, classes)
            if isinstance(work_dir, SlideURL) else
            _open_work_dir(work_dir, digest, layout.geom, layout.provenance, classes))
    plan = layout.plan
    tasks = tuple(BlockTask(b, *plan.windows_of(b)) for b in plan.blocks if b.key not in done)
    return SlideJob(
        slide_path=slide_path, stem=stem, final_dir=final_dir_for(config.out_dir, slide_path,
                                                                  stem),
        work_dir=work_dir, slide_mpp=facts.slide_mpp, mpp=model.card.mpp, geom=layout.geom,
        spec=layout.spec, model_path=model.path, card=model.card, model_sha256=model.sha256,
        tasks=tasks, n_blocks=len(plan.blocks), n_blocks_done=len(plan.blocks) - len(tasks),
        n_tiles=plan.n_tiles, n_tile_predictions=plan.n_tile_predictions,
        tissue_fraction=facts.tissue_fraction, tissue_mm2=facts.tissue_mm2,
        tissue_polygons=facts.tissue_polygons, slide_identity=identity,
        tissue_note=facts.tissue_note, slide_area_um2=facts.slide_area_um2,
        config_digest=digest, block_px=config.block_px, slide_size_x0=facts.slide_size_x0,
        mpp_override=override,
    )


def work_dir_for(out_dir: OutputLocation, stem: str) -> OutputLocation:
    """Where a slide's work happens: ``OUT/.<stem>.partial`` on local disk (renamed to
    ``OUT/<stem>`` when finished); in a store, which cannot rename, ``OUT/<stem>`` itself
    (finished once its ``report.json``, written last, is there)."""
    if isinstance(out_dir, SlideURL):
        return out_dir / stem
    return out_dir / f".{stem}{PARTIAL_SUFFIX}"


def mpp_override(slide_path: SlideLocation, config: RunConfig) -> float | None:
    """The level-0 µm/px to open ``slide_path`` with: ``slide_mpp`` for every slide, else
    ``missing_mpp`` where the slide's metadata has none (None: the metadata's own)."""
    if config.slide_mpp is not None or config.missing_mpp is None:
        return config.slide_mpp
    try:
        with open_slide(slide_path):
            return None
    except MissingMppError:
        return config.missing_mpp


#: Suffix of the temporary zarr's LocalStore writes each chunk to before renaming it
#: (``<key>.<uuid>.partial``); not to be confused with the work folder's own suffix.
ZARR_TEMP_SUFFIX = ".partial"


def _drop_stray_temporaries(work_dir: Path) -> None:
    """Remove what a run killed mid-write left half-written in a work folder it resumes.

    Zarr writes each chunk to a temporary and renames it into place; a block marker is written
    through a hidden temporary (:mod:`wsi_seg.core.files`). A kill in between leaves the
    temporary behind. Its block has no marker and is redone (rewriting its chunks whole), so the
    temporary is garbage: a chunk one would be published inside ``mask.zarr``, a marker one
    must not count as a finished block.
    """
    for tmp in (work_dir / "mask.zarr").rglob(f"*{ZARR_TEMP_SUFFIX}"):
        if tmp.is_file():
            tmp.unlink(missing_ok=True)
    for tmp in (work_dir / MARKERS).glob(".*"):
        tmp.unlink(missing_ok=True)


def mosaic_classes(card: ModelCard) -> tuple[MosaicClass, ...]:
    """The class image's channels for a model that keeps class maps (none otherwise)."""
    if not card.class_maps:
        return ()
    return tuple(MosaicClass(card.class_names[i], card.color_of(i))
                 for i in range(card.n_outputs))


def _open_work_dir(work_dir: Path, digest: str, geom: MosaicGeometry,
                   provenance: dict[str, Any], classes: tuple[MosaicClass, ...]) -> set[str]:
    """Reuse a matching work directory (returning its finished blocks) or start a fresh one."""
    stamp = work_dir / "config.json"
    if stamp.is_file():
        try:
            same = decode_json(stamp.read_text(encoding="utf-8"), stamp).get("digest") == digest
        except (OSError, WsiSegError, AttributeError):
            same = False
        if same and (work_dir / "mask.zarr" / "zarr.json").is_file():
            _drop_stray_temporaries(work_dir)
            markers = work_dir / MARKERS
            return {p.stem for p in markers.glob("*.json")} if markers.is_dir() else set()
    if work_dir.exists():
        shutil.rmtree(work_dir)
    work_dir.mkdir(parents=True)
    (work_dir / MARKERS).mkdir()
    create_mosaic(work_dir / "mask.zarr", geom, provenance=provenance, classes=classes)
    write_json_atomic(stamp, {"digest": digest})
    return set()


def _open_store_work_dir(work_dir: SlideURL, digest: str, geom: MosaicGeometry,
                         provenance: dict[str, Any], classes: tuple[MosaicClass, ...]
                         ) -> set[str]:
    """:func:`_open_work_dir` for a slide written in place in a store: resume when the stamp
    matches (its block markers are the finished blocks; a PUT is atomic, so no temporaries
    are left to clear), else clear the prefix, ``report.json`` first, and start afresh.

    The stamp is written after the empty mosaic, so a prefix with a stamp always has a
    mosaic; the markers are only ever written after their block's chunks.
    """
    from wsi_seg.stages import result_store

    stamp = work_dir / "config.json"
    # The marker first: a finished slide asked to be redone is cleared, whatever else it holds.
    finished = read_output_text(work_dir / REPORT) is not None
    text = None if finished else read_output_text(stamp)
    try:
        same = text is not None and decode_json(text, str(stamp)).get("digest") == digest
    except (WsiSegError, AttributeError):
        same = False
    if same:
        return {n.removesuffix(".json") for n in result_store.names_under(work_dir / MARKERS)
                if n.endswith(".json")}
    result_store.clear_prefix(work_dir, REPORT)
    create_mosaic(work_dir / "mask.zarr", geom, provenance=provenance, classes=classes)
    write_json_output(stamp, {"digest": digest})
    return set()
