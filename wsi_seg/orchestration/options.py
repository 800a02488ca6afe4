"""The options of ``wsi-seg run``: one typed table, the single source of each option's name,
type, default, allowed values, TOML section, help text and configuration field.

The command line (:func:`add_arguments`), TOML files (:func:`load_toml`), the built-in
defaults (:data:`DEFAULTS`) and the checks (:meth:`Option.problem`, :func:`check_together`)
all come from :data:`OPTIONS`, so a rule cannot exist twice and disagree. The dataclass
defaults of :class:`~wsi_seg.orchestration.pipeline.RunConfig`,
:class:`~wsi_seg.stages.infer.InferConfig`,
:class:`~wsi_seg.orchestration.cluster.ClusterConfig` and
:class:`~wsi_seg.stages.tissue.TissueConfig` are the
library's own; a test holds them equal to the table (:attr:`Option.target` names the field).

Every bad value is refused here, before any slide is opened or any folder made, in one line
that names the option (the flag, or the TOML file, section and key) and what it must be.
"""

from __future__ import annotations

import argparse
import math
import tomllib
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from wsi_seg.core.errors import WsiSegError
from wsi_seg.core.files import check_regular
from wsi_seg.core.naming import TRUTH_PATTERNS, class_map_entry
from wsi_seg.stages.backends import BACKENDS
from wsi_seg.stages.blend import BLEND_MODES
from wsi_seg.stages.card import BUNDLED
from wsi_seg.stages.slide import MPP_RANGE_UM
from wsi_seg.stages.tissue import MIN_AREA_SLIDE_FRACTION

Kind = Literal["int", "float", "str", "bool", "path", "strs"]

#: TOML sections in the order ``--help`` shows their groups ("" is the top level of the file).
SECTIONS: dict[str, str] = {
    "": "output",
    "model": "model and resolution",
    "blocks": "blocks and mosaic",
    "device": "device",
    "tissue": "tissue detection",
    "polygons": "polygons",
    "scores": "scores",
    "scheduling": "scheduling",
}

_EXPECTED: dict[Kind, str] = {
    "int": "an integer",
    "float": "a number",
    "str": "a string",
    "bool": "true or false",
    "path": "a path (a string)",
    "strs": "a string or a list of strings",
}


@dataclass(frozen=True)
class Limits:
    """The numbers an option admits: an interval whose ends may be open or absent."""

    lo: float | None = None
    hi: float | None = None
    lo_open: bool = False
    hi_open: bool = False

    def admits(self, value: float) -> bool:
        if not math.isfinite(value):
            return False
        if self.lo is not None and (value <= self.lo if self.lo_open else value < self.lo):
            return False
        return not (self.hi is not None
                    and (value >= self.hi if self.hi_open else value > self.hi))

    def text(self) -> str:
        """``>= 1``, ``> 0``, ``0 <= x < 1``, ``0.05 <= x <= 20``."""
        lo = None if self.lo is None else f"{self.lo:g} {'<' if self.lo_open else '<='}"
        hi = None if self.hi is None else f"{'<' if self.hi_open else '<='} {self.hi:g}"
        if lo and hi:
            return f"{lo} x {hi}"
        if lo:
            return f"{'>' if self.lo_open else '>='} {self.lo:g}"
        return f"x {hi}" if hi else "finite"


_SMALL_SLIDE = f"{MIN_AREA_SLIDE_FRACTION:.0%}"  # minimum areas shrink to this share of a slide

#: The largest --batch-size taken (the predictor also refuses a batch whose buffers would not
#: fit, whatever the option: :data:`wsi_seg.stages.infer.MAX_BATCH_BYTES`).
MAX_BATCH = 16384
AT_LEAST_0 = Limits(lo=0)
POSITIVE = Limits(lo=0, lo_open=True)


def _model_spec(value: str) -> str | None:
    if value.startswith("bundled:") and value.split(":", 1)[1] not in BUNDLED:
        return f"must be a model file or one of {', '.join(f'bundled:{k}' for k in BUNDLED)}"
    return None


def _class_map(value: str) -> str | None:
    try:
        class_map_entry(value)
    except ValueError:
        return "must read TRUTH_CLASS=MODEL_CLASS"
    return None


def _truth_pattern(value: str) -> str | None:
    """A pattern names one file in the truth folder: a placeholder, and no folders."""
    if "{stem}" not in value and "{name}" not in value:
        return "must contain {stem} or {name}"
    if "/" in value or "\\" in value:
        return "must be a file name, without folders"
    try:
        value.format(stem="s", name="s.svs")
    except (KeyError, IndexError, ValueError):
        return "may hold only the placeholders {stem} and {name} (write {{ and }} for braces)"
    return None


def _not_blank(value: str) -> str | None:
    return "must not be empty" if not value.strip() else None


def _scheduler(value: str) -> str | None:
    if not value.strip() or any(c.isspace() for c in value):
        return "must be 'threads' or a scheduler address such as tcp://HOST:8786"
    return None


@dataclass(frozen=True)
class Option:
    """One option of ``wsi-seg run``.

    Attributes:
        name: the key in :data:`DEFAULTS` and resolved options; the flag is ``--name`` with
            dashes.
        kind: value type (``strs``: repeatable, a list in TOML).
        default: built-in default (None: decided later, see ``default_text``).
        section: TOML section ("" for the top level).
        help: what the option does, with units.
        target: ``part.field`` it fills (``run``: RunConfig, ``infer``: InferConfig,
            ``cluster``: ClusterConfig, ``tissue``: TissueConfig), or None.
        limits: numbers admitted (int and float options).
        choices: strings admitted.
        check: further rule for a (converted) value or list item; returns what is wrong.
        default_text: how a None default is decided, for ``--help``.
        toml_key: key within ``section`` when not ``name``.
        metavar: placeholder in ``--help``.
        unset: the configuration field's value when the option is None.
    """

    name: str
    kind: Kind
    default: Any
    section: str
    help: str
    target: str | None = None
    limits: Limits | None = None
    choices: tuple[str, ...] | None = None
    check: Callable[[str], str | None] | None = None
    default_text: str | None = None
    toml_key: str | None = None
    metavar: str | None = None
    unset: Any = None

    @property
    def flag(self) -> str:
        return "--" + self.name.replace("_", "-")

    @property
    def key(self) -> str:
        """The key in its TOML section."""
        return self.toml_key or self.name

    @property
    def where(self) -> str:
        """``[section] key`` (or ``key`` at the top level), as a TOML file spells it."""
        return f"[{self.section}] {self.key}" if self.section else self.key

    def help_text(self) -> str:
        """Help with the admitted values and the default, e.g. ``... (>= 1) [4096]``."""
        text = self.help
        if self.limits is not None:
            text += f" ({self.limits.text()})"
        if self.default_text is not None:
            text += f" [{self.default_text}]"
        elif self.default is not None and self.kind != "bool":
            text += f" [{self.default}]"
        return text.replace("%", "%%")  # argparse formats help with %

    def problem(self, value: Any) -> str | None:
        """What is wrong with a value of the right type (a list item for ``strs``), or None."""
        if self.limits is not None and not self.limits.admits(value):
            return f"must be {self.limits.text()}"
        if self.choices is not None and value not in self.choices:
            return f"must be one of {', '.join(self.choices)}"
        if self.kind == "path" and not str(value).strip():
            return "must not be empty"
        if self.check is not None:
            return self.check(value)
        return None

    def parse(self, text: str) -> Any:
        """A command-line value (one item for ``strs``); ArgumentTypeError names the rule."""
        try:
            value: Any = {"int": int, "float": float}.get(self.kind, str)(text)
        except ValueError:
            raise argparse.ArgumentTypeError(
                f"expected {_EXPECTED[self.kind]}, got {text!r}") from None
        trouble = self.problem(value)
        if trouble:
            raise argparse.ArgumentTypeError(f"{trouble}, got {text!r}")
        return value

    def from_toml(self, value: Any) -> str | None:
        """What is wrong with a TOML value (type first, then the rule), or None."""
        items = [value] if self.kind == "strs" and isinstance(value, str) else value
        if not _toml_type_ok(self.kind, items):
            return f"expected {_EXPECTED[self.kind]}, got {_toml_type(value)}"
        for item in (items if self.kind == "strs" else [value]):
            trouble = self.problem(item)
            if trouble:
                return trouble
        return None

    def config_value(self, value: Any) -> Any:
        """The value as its configuration field holds it."""
        if value is None:
            return self.unset
        if self.kind == "path":
            return Path(value)
        if self.kind == "strs":
            return tuple([value] if isinstance(value, str) else value)
        if self.kind == "float":
            return float(value)
        return value


def _toml_type_ok(kind: Kind, value: Any) -> bool:
    if kind == "strs":
        return isinstance(value, list) and all(isinstance(v, str) for v in value)
    if kind == "int":
        return isinstance(value, int) and not isinstance(value, bool)
    if kind == "float":
        return isinstance(value, int | float) and not isinstance(value, bool)
    if kind == "bool":
        return isinstance(value, bool)
    return isinstance(value, str)


def _toml_type(value: Any) -> str:
    for kind, name in ((bool, "a boolean"), (int, "an integer"), (float, "a decimal number"),
                       (str, "a string"), (list, "a list"), (dict, "a table")):
        if isinstance(value, kind):
            return name
    return "a date or time"


OPTIONS: tuple[Option, ...] = (
    Option("out", "path", None, "", "output folder (required)", "run.out_dir", metavar="OUT"),
    Option("overwrite", "bool", False, "", "redo finished slides", "run.overwrite"),
    Option("quiet", "bool", False, "", "no progress, errors only"),
    # -- model and resolution
    Option("model", "str", None, "model", "MODEL.keras with its MODEL.json card, or "
           "bundled:unet / bundled:patch", "run.model_path", check=_model_spec,
           default_text="bundled:unet", metavar="MODEL"),
    Option("mpp", "float", None, "model", "level-0 µm/px of the slides, overriding (or "
           "supplying) their metadata", "run.slide_mpp",
           Limits(*MPP_RANGE_UM), default_text="the slide's metadata", metavar="UM_PER_PX"),
    Option("tile", "int", None, "model", "window edge in working pixels: for a model of "
           "undefined input size (fully convolutional), any multiple of its downsampling; "
           "otherwise it must equal the model's input size", "infer.tile_px",
           limits=Limits(8, 16384), default_text="the model's", metavar="PX"),
    Option("overlap", "float", 0.25, "model", "window overlap, a fraction of the window",
           "run.overlap", Limits(0, 1, hi_open=True), metavar="FRACTION"),
    Option("stride", "int", None, "model", "window step in working pixels, overriding "
           "--overlap (e.g. 25 for 50 px patches); at most the window", "run.stride_px",
           Limits(1, 16384), default_text="from --overlap", metavar="PX"),
    Option("blend", "str", None, "model", "window weighting", "run.blend",
           choices=BLEND_MODES, default_text="gaussian for a UNet, constant for a patch model"),
    Option("sigma_scale", "float", 0.125, "model", "gaussian sigma as a fraction of the "
           "window (MONAI)", "run.sigma_scale", Limits(0, 10, lo_open=True),
           metavar="FRACTION"),
    # -- blocks and mosaic
    Option("block", "int", 4096, "blocks", "block edge in working pixels, a multiple of "
           "--chunk", "run.block_px", Limits(16, 65536), metavar="PX"),
    Option("chunk", "int", 1024, "blocks", "mosaic chunk edge in pixels", "run.chunk_px",
           Limits(16, 16384), metavar="PX"),
    # -- device
    Option("batch_size", "int", None, "device", "tiles per model call; each worker's "
           "predictor packs tiles from many blocks into batches of this fixed size",
           "infer.batch_size", Limits(1, MAX_BATCH), default_text="16 on a CPU, 128 on a GPU",
           metavar="N"),
    Option("mixed_precision", "bool", False, "device",
           "float16 compute on a GPU (ignored on a CPU)", "infer.mixed_precision"),
    Option("device", "str", "auto", "device", "where the model runs: auto (a GPU when one is "
           "visible), gpu (required) or cpu", "infer.device", choices=("auto", "gpu", "cpu")),
    Option("backend", "str", None, "device", "Keras backend of the local workers: the same "
           ".keras model runs on each; an existing cluster uses its workers' own "
           "KERAS_BACKEND. tensorflow and jax are tested; torch is NOT (no test runs it: "
           "it is there for sites that have only PyTorch, and ran the bundled UNet ~15x "
           "slower than tensorflow on a CPU)", choices=BACKENDS,
           default_text="$KERAS_BACKEND, else tensorflow"),
    Option("tf_threads", "int", None, "device", "TensorFlow intra-op threads per worker",
           "infer.threads", Limits(1, 1024), default_text="cores / workers", metavar="N"),
    # -- tissue detection
    Option("tissue_view_mpp", "float", 8.0, "tissue", "resolution of the view tissue is "
           "found on, µm/px (coarser for slides too big for --tissue-max-view-px)",
           "tissue.view_mpp", Limits(0, 1000, lo_open=True), toml_key="view_mpp",
           metavar="UM_PER_PX"),
    Option("tissue_max_view_px", "int", 2048, "tissue", "longest side of the tissue view, "
           "pixels (bounds its memory)", "tissue.max_view_px", Limits(16, 65536),
           toml_key="max_view_px", metavar="PX"),
    Option("tissue_od_floor", "float", 0.04, "tissue", "lowest optical-density threshold "
           "between glass and tissue", "tissue.od_floor", Limits(0, 5), toml_key="od_floor",
           metavar="OD"),
    Option("tissue_close_um", "float", 48.0, "tissue", "closing diameter joining nearby "
           "tissue, µm", "tissue.close_um", Limits(0, 10_000), toml_key="close_um",
           metavar="UM"),
    Option("tissue_open_um", "float", 16.0, "tissue", "opening diameter removing specks, µm",
           "tissue.open_um", Limits(0, 10_000), toml_key="open_um", metavar="UM"),
    Option("tissue_min_area_um2", "float", 10_000.0, "tissue", "smallest tissue piece kept, "
           f"µm² (at most {_SMALL_SLIDE} of a small slide's area)", "tissue.min_area_um2",
           Limits(0, 1e12), toml_key="min_area_um2", metavar="UM2"),
    # -- polygons
    Option("threshold", "float", None, "polygons", "tumour probability at or above which a "
           "pixel is tumour", "run.threshold", Limits(0, 1, lo_open=True),
           default_text="the model card's", metavar="P"),
    Option("min_area_um2", "float", 1000.0, "polygons", "smallest tumour region kept, µm² "
           f"(at most {_SMALL_SLIDE} of a small slide's area)",
           "run.min_area_um2", Limits(0, 1e12), metavar="UM2"),
    Option("simplify_um", "float", 1.0, "polygons", "polygon simplification tolerance, µm",
           "run.simplify_um", Limits(0, 10_000), metavar="UM"),
    Option("vectorize_level", "int", 0, "polygons", "mosaic pyramid level traced into "
           "polygons (0 = the model's µm/px, each level halves it)", "run.vectorize_level",
           Limits(0, 32), metavar="LEVEL"),
    # -- scores
    Option("truth", "path", None, "scores", "ground-truth file, or a folder of truth files "
           "named by --truth-pattern, to score each slide against", "run.truth",
           metavar="PATH"),
    Option("truth_class", "strs", None, "scores", "annotation class counted as tumour "
           "(repeatable)", "run.truth_classes", check=_not_blank,
           default_text="tumor, tumour, carcinoma, metastasis, ...", metavar="NAME"),
    Option("class_map", "strs", None, "scores", "for per-class scores of a multi-class "
           "model: a truth class name and the model class it means (repeatable), e.g. "
           "'Tumour epithelium=Tumor'; names equal without case need no entry",
           "run.class_map", check=_class_map, default_text="none", metavar="TRUTH=MODEL"),
    Option("truth_pattern", "strs", None, "scores", "file name of a slide's truth in a "
           "--truth folder, tried in order (repeatable); {stem} is the slide's output name, "
           "then its stem, {name} its file name, e.g. '{stem}.truth.geojson'",
           "run.truth_patterns", check=_truth_pattern,
           default_text=", ".join(TRUTH_PATTERNS), metavar="PATTERN", unset=TRUTH_PATTERNS),
    # -- scheduling
    Option("scheduler", "str", None, "scheduling", "tcp://HOST:PORT of an existing Dask "
           "cluster, or 'threads' to run in this process", "cluster.scheduler",
           check=_scheduler, default_text="a local cluster of worker processes",
           metavar="ADDRESS"),
    Option("workers", "int", None, "scheduling", "local worker processes", "cluster.workers",
           Limits(1, 1024), default_text="one per GPU, else cores / 2", metavar="N"),
    Option("threads_per_worker", "int", None, "scheduling", "task threads per worker",
           "cluster.threads_per_worker", Limits(1, 1024),
           default_text="2; on a GPU, cores per GPU", metavar="N"),
    Option("gpu_resource", "bool", None, "scheduling", "run block tasks only on workers "
           "declaring the GPU resource", "cluster.gpu_resource",
           default_text="when this machine has GPUs"),
)

BY_NAME: dict[str, Option] = {o.name: o for o in OPTIONS}
#: Built-in defaults; a --config TOML file overrides these and command-line flags override both.
DEFAULTS: dict[str, Any] = {o.name: o.default for o in OPTIONS}


# -- command line ---------------------------------------------------------------------------


def argument_type(kind: Kind, limits: Limits | None = None) -> Callable[[str], Any]:
    """An argparse ``type`` converting and checking one value, for commands other than
    ``run`` (``score --level``), with the same messages as the run options."""
    return Option("value", kind, None, "", "", limits=limits).parse


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Every option as a flag, grouped by TOML section. Absent flags stay absent (SUPPRESS),
    so the TOML file and the defaults can fill them."""
    groups = {s: parser.add_argument_group(title if not s else f"{title} ([{s}] in --config)")
              for s, title in SECTIONS.items()}
    for o in OPTIONS:
        kwargs: dict[str, Any] = {"default": argparse.SUPPRESS, "help": o.help_text()}
        if o.kind == "bool":
            kwargs["action"] = argparse.BooleanOptionalAction
        else:
            kwargs["type"] = o.parse
            kwargs["metavar"] = o.metavar or ("{" + ",".join(o.choices) + "}" if o.choices
                                             else o.name.upper())
            if o.kind == "strs":
                kwargs["action"] = "append"
        groups[o.section].add_argument(o.flag, dest=o.name, **kwargs)


# -- TOML -----------------------------------------------------------------------------------


def _toml_repr(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _by_place() -> dict[tuple[str, str], Option]:
    return {(o.section, o.key): o for o in OPTIONS}


def _places(key: str) -> list[Option]:
    """The options a misplaced key may mean: those with that key in their own section (tissue
    and polygons both have ``min_area_um2``), else the one with that name."""
    return [o for o in OPTIONS if o.key == key] or [o for o in OPTIONS if o.name == key]


def _check_key(path: Path, section: str, key: str, value: Any) -> Option:
    k = key.replace("-", "_")
    option = _by_place().get((section, k))
    where = f"[{section}] {key}" if section else key
    if option is None:
        here = f"in section [{section}]" if section else "at the top level"
        places = [(f"in section [{o.section}]" if o.section else "at the top level")
                  + (f" as {o.key!r}" if o.key != k else "") for o in _places(k)]
        same = [o for o in _places(k) if o.section == section]
        if same:  # the flag's name used as the key, e.g. tissue_view_mpp in [tissue]
            raise WsiSegError(f"unknown option {key!r} {here}; write it as {same[0].key!r}",
                              path)
        if places:
            raise WsiSegError(f"option {key!r} is {here}; it belongs "
                              f"{' or '.join(places)}", path)
        raise WsiSegError(f"unknown option {key!r} {here}", path)
    trouble = option.from_toml(value)
    if trouble:
        raise WsiSegError(f"{where} = {_toml_repr(value)}: {trouble}", path)
    return option


def load_toml(path: Path) -> dict[str, Any]:
    """Options from a TOML file, keyed by option name; every key and value checked.

    Keys sit in their own section (``[blocks] block = 2048``), with ``-`` or ``_``; a key in
    another section, an unknown key or section, or a value of the wrong type or range is a
    one-line WsiSegError naming the file, the key and what it must be.
    """
    if not path.exists():
        raise WsiSegError("config file not found", path)
    check_regular(path, WsiSegError, "config file")
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise WsiSegError("config file not found", path) from None
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise WsiSegError(f"not a valid TOML file ({exc})", path) from None
    out: dict[str, Any] = {}
    for key, value in data.items():
        if isinstance(value, dict):
            if key not in SECTIONS or not key:
                raise WsiSegError(f"unknown section [{key}] (sections: "
                                  f"{', '.join(s for s in SECTIONS if s)})", path)
            for sub_key, sub_value in value.items():
                out[_check_key(path, key, sub_key, sub_value).name] = sub_value
        else:
            out[_check_key(path, "", key, value).name] = value
    return out


# -- all options together -------------------------------------------------------------------


@dataclass(frozen=True)
class Resolved:
    """Every option's value and where it came from (for messages that name the source).

    ``origins[name]`` is ``"flag"``, ``"default"`` or the TOML file's path.
    """

    values: Mapping[str, Any]
    origins: Mapping[str, str]

    def __getitem__(self, name: str) -> Any:
        return self.values[name]

    def describe(self, name: str) -> str:
        """``--block 1000``, or ``[blocks] block = 1000 in FILE``."""
        o, value, origin = BY_NAME[name], self.values[name], self.origins[name]
        if origin == "flag":
            return f"{o.flag} {value}"
        if origin == "default":
            return f"{o.flag} {value} (the default)"
        return f"{o.where} = {_toml_repr(value)} in {origin}"


def resolve(flags: Mapping[str, Any], config: Path | None) -> Resolved:
    """Defaults, then the TOML file, then the flags given; each value already checked alone,
    then :func:`check_together`."""
    values = dict(DEFAULTS)
    origins = dict.fromkeys(DEFAULTS, "default")
    if config is not None:
        for name, value in load_toml(config).items():
            values[name], origins[name] = value, str(config)
    for name in DEFAULTS:
        if name in flags:
            values[name], origins[name] = flags[name], "flag"
    resolved = Resolved(values, origins)
    check_together(resolved)
    return resolved


def check_together(opts: Resolved) -> None:
    """Rules between options (each option was checked alone when it was read)."""
    if opts["out"] is None:
        raise WsiSegError("--out is required (the output folder)")
    if opts["block"] % opts["chunk"]:
        raise WsiSegError(f"{opts.describe('block')} must be a multiple of "
                          f"{opts.describe('chunk')} (blocks write whole mosaic chunks)")
