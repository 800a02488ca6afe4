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
import tomllib
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from wsi_seg.core.errors import WsiSegError
from wsi_seg.core.files import check_regular
from wsi_seg.core.locations import url_scheme
from wsi_seg.core.naming import TRUTH_PATTERNS
from wsi_seg.core.params import Kind, Limits, Rule, field_of, rule_of
from wsi_seg.core.storage import CREDENTIALS_REFUSED, credential_key
from wsi_seg.stages.backends import BACKENDS
from wsi_seg.stages.card import BUNDLED
from wsi_seg.stages.tissue import MIN_AREA_SLIDE_FRACTION

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
    "cluster": "SLURM cluster",
    "storage": "object storage (s3://)",
}

_EXPECTED: dict[Kind, str] = {
    "int": "an integer",
    "float": "a number",
    "str": "a string",
    "bool": "true or false",
    "path": "a path (a string)",
    "strs": "a string or a list of strings",
}


_SMALL_SLIDE = f"{MIN_AREA_SLIDE_FRACTION:.0%}"  # minimum areas shrink to this share of a slide



def _model_spec(value: str) -> str | None:
    if value.startswith("bundled:") and value.split(":", 1)[1] not in BUNDLED:
        return f"must be a model file or one of {', '.join(f'bundled:{k}' for k in BUNDLED)}"
    return None


#: An option's default when it is the default of the configuration field it fills.
FROM_FIELD: Any = object()


def _config_types() -> dict[str, type]:
    """The configuration type of each ``target`` part."""
    from wsi_seg.core.storage import StorageOptions
    from wsi_seg.orchestration.cluster import ClusterConfig
    from wsi_seg.orchestration.job import RunConfig
    from wsi_seg.stages.infer import InferConfig
    from wsi_seg.stages.tissue import TissueConfig

    return {"run": RunConfig, "infer": InferConfig, "cluster": ClusterConfig,
            "tissue": TissueConfig, "storage": StorageOptions}


@dataclass(frozen=True)
class Option:
    """One option of ``wsi-seg run``.

    An option that fills a configuration field (``target``) takes that field's default and
    rule (:func:`wsi_seg.core.params.param`): the library's types hold them, once.

    Attributes:
        name: the key in :data:`DEFAULTS` and resolved options; the flag is ``--name`` with
            dashes.
        kind: value type (``strs``: repeatable, a list in TOML).
        section: TOML section ("" for the top level).
        help: what the option does, with units.
        target: ``part.field`` it fills (``run``: RunConfig, ``infer``: InferConfig,
            ``cluster``: ClusterConfig, ``tissue``: TissueConfig, ``storage``:
            StorageOptions), or None.
        default: built-in default (:data:`FROM_FIELD`: the target field's; None: decided
            later, see ``default_text``).
        rule: what a value (a list item for ``strs``) must be; the target field's unless given.
        default_text: how a None default is decided, for ``--help``.
        toml_key: key within ``section`` when not ``name``.
        metavar: placeholder in ``--help``.
        unset: the configuration field's value when the option is None.
        toml_only: set in a --config file only, never by a flag (the command line is
            recorded in ``run.json``; where a store is and how to sign in to it is not).
    """

    name: str
    kind: Kind
    section: str
    help: str
    target: str | None = None
    default: Any = FROM_FIELD
    rule: Rule | None = None
    default_text: str | None = None
    toml_key: str | None = None
    metavar: str | None = None
    unset: Any = None
    toml_only: bool = False

    def __post_init__(self) -> None:
        if self.target is None:
            if self.default is FROM_FIELD:
                object.__setattr__(self, "default", None)
            return
        part, name = self.target.split(".")
        f = field_of(_config_types()[part], name)
        if self.default is FROM_FIELD:
            object.__setattr__(self, "default", f.default)
        if self.rule is None:
            object.__setattr__(self, "rule", rule_of(f))

    @property
    def limits(self) -> Limits | None:
        return self.rule.limits if self.rule is not None else None

    @property
    def choices(self) -> tuple[str, ...] | None:
        return self.rule.choices if self.rule is not None else None

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
        if self.rule is not None:
            return self.rule.problem(value)
        if self.kind == "path" and not str(value).strip():
            return "must not be empty"
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
            # A URL stays the text typed, for the location type to read whole (a Path folds
            # "s3://" into "s3:", a local folder).
            return value if url_scheme(str(value)) is not None else Path(value)
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
    Option("out", "path", "", "output folder (required)", "run.out_dir", default=None,
           metavar="OUT"),
    Option("overwrite", "bool", "", "redo finished slides", "run.overwrite"),
    Option("quiet", "bool", "", "no progress, errors only", default=False),
    # -- model and resolution
    Option("model", "str", "model", "MODEL.keras with its MODEL.json card, or "
           "bundled:unet / bundled:patch", "run.model_path", rule=Rule("str", check=_model_spec),
           default_text="bundled:unet", metavar="MODEL"),
    Option("mpp", "float", "model", "level-0 µm/px of every slide, overriding (or "
           "supplying) its metadata", "run.slide_mpp", default_text="the slide's metadata",
           metavar="UM_PER_PX"),
    Option("missing_mpp", "float", "model", "level-0 µm/px of the slides whose metadata has "
           "none (the others keep theirs)", "run.missing_mpp", default_text="none: such a "
           "slide fails", metavar="UM_PER_PX"),
    Option("tile", "int", "model", "window edge in working pixels: for a model of "
           "undefined input size (fully convolutional), any multiple of its downsampling; "
           "otherwise it must equal the model's input size", "infer.tile_px",
           default_text="the model's", metavar="PX"),
    Option("overlap", "float", "model", "window overlap, a fraction of the window",
           "run.overlap", metavar="FRACTION"),
    Option("stride", "int", "model", "window step in working pixels, overriding "
           "--overlap (e.g. 25 for 50 px patches); at most the window", "run.stride_px",
           default_text="from --overlap", metavar="PX"),
    Option("blend", "str", "model", "window weighting", "run.blend",
           default_text="gaussian for a UNet, constant for a patch model"),
    Option("sigma_scale", "float", "model", "gaussian sigma as a fraction of the "
           "window (MONAI)", "run.sigma_scale", metavar="FRACTION"),
    # -- blocks and mosaic
    Option("block", "int", "blocks", "block edge in working pixels, a multiple of "
           "--chunk", "run.block_px", metavar="PX"),
    Option("chunk", "int", "blocks", "mosaic chunk edge in pixels", "run.chunk_px",
           metavar="PX"),
    # -- device
    Option("batch_size", "int", "device", "tiles per model call; each worker's "
           "predictor packs tiles from many blocks into batches of this fixed size",
           "infer.batch_size", default_text="16 on a CPU, 128 on a GPU", metavar="N"),
    Option("precision", "str", "device",
           "what the model computes in: float32 (today's results), bfloat16 (a CPU with "
           "bfloat16 units, e.g. AMX or AVX512-BF16, or a GPU), float16 (a GPU), auto "
           "(float16 on a GPU, bfloat16 where the CPU has it, else float32); reduced "
           "precision keeps float32 weights and outputs, falls back to float32 (logged) "
           "where the device lacks it, and is never used for a card that says float32",
           "infer.precision"),
    Option("mixed_precision", "bool", "device",
           "float16 compute on a GPU (ignored on a CPU); the same as --precision float16",
           "infer.mixed_precision"),
    Option("device", "str", "device", "where the model runs: auto (a GPU when one is "
           "visible), gpu (required) or cpu", "infer.device"),
    Option("backend", "str", "device", "Keras backend of the local workers: the same "
           ".keras model runs on each; an existing cluster uses its workers' own "
           "KERAS_BACKEND. tensorflow and jax are tested; torch is NOT (no test runs it: "
           "it is there for sites that have only PyTorch, and ran the bundled UNet ~15x "
           "slower than tensorflow on a CPU)", rule=Rule("str", choices=BACKENDS),
           default_text="$KERAS_BACKEND, else tensorflow"),
    Option("tf_threads", "int", "device", "TensorFlow intra-op threads per worker",
           "infer.threads", default_text="cores / workers", metavar="N"),
    # -- tissue detection
    Option("tissue_view_mpp", "float", "tissue", "resolution of the view tissue is "
           "found on, µm/px (coarser for slides too big for --tissue-max-view-px)",
           "tissue.view_mpp", toml_key="view_mpp", metavar="UM_PER_PX"),
    Option("tissue_max_view_px", "int", "tissue", "longest side of the tissue view, "
           "pixels (bounds its memory)", "tissue.max_view_px", toml_key="max_view_px",
           metavar="PX"),
    Option("tissue_od_floor", "float", "tissue", "lowest optical-density threshold "
           "between glass and tissue", "tissue.od_floor", toml_key="od_floor", metavar="OD"),
    Option("tissue_close_um", "float", "tissue", "closing diameter joining nearby "
           "tissue, µm", "tissue.close_um", toml_key="close_um", metavar="UM"),
    Option("tissue_open_um", "float", "tissue", "opening diameter removing specks, µm",
           "tissue.open_um", toml_key="open_um", metavar="UM"),
    Option("tissue_min_area_um2", "float", "tissue", "smallest tissue piece kept, "
           f"µm² (at most {_SMALL_SLIDE} of a small slide's area)", "tissue.min_area_um2",
           toml_key="min_area_um2", metavar="UM2"),
    # -- polygons
    Option("threshold", "float", "polygons", "tumour probability at or above which a "
           "pixel is tumour", "run.threshold", default_text="the model card's", metavar="P"),
    Option("min_area_um2", "float", "polygons", "smallest tumour region kept, µm² "
           f"(at most {_SMALL_SLIDE} of a small slide's area)", "run.min_area_um2",
           metavar="UM2"),
    Option("simplify_um", "float", "polygons", "polygon simplification tolerance, µm",
           "run.simplify_um", metavar="UM"),
    Option("vectorize_level", "int", "polygons", "mosaic pyramid level traced into "
           "polygons (0 = the model's µm/px, each level halves it)", "run.vectorize_level",
           metavar="LEVEL"),
    # -- scores
    Option("truth", "path", "scores", "ground-truth file, or a folder of truth files "
           "named by --truth-pattern, to score each slide against", "run.truth",
           metavar="PATH"),
    Option("truth_class", "strs", "scores", "annotation class counted as tumour "
           "(repeatable)", "run.truth_classes",
           default_text="tumor, tumour, carcinoma, metastasis, ...", metavar="NAME"),
    Option("class_map", "strs", "scores", "for per-class scores of a multi-class "
           "model: a truth class name and the model class it means (repeatable), e.g. "
           "'Tumour epithelium=Tumor'; names equal without case need no entry",
           "run.class_map", default_text="none", metavar="TRUTH=MODEL"),
    Option("truth_pattern", "strs", "scores", "file name of a slide's truth in a "
           "--truth folder, tried in order (repeatable); {stem} is the slide's output name, "
           "then its stem, {name} its file name, e.g. '{stem}.truth.geojson'",
           "run.truth_patterns", default=None, default_text=", ".join(TRUTH_PATTERNS),
           metavar="PATTERN", unset=TRUTH_PATTERNS),
    # -- scheduling
    Option("scheduler", "str", "scheduling", "tcp://HOST:PORT of an existing Dask "
           "cluster, or 'threads' to run in this process", "cluster.scheduler",
           default_text="a local cluster of worker processes", metavar="ADDRESS"),
    Option("workers", "int", "scheduling", "local worker processes", "cluster.workers",
           default_text="one per GPU, else cores / 2", metavar="N"),
    Option("threads_per_worker", "int", "scheduling", "task threads per worker",
           "cluster.threads_per_worker", default_text="2; on a GPU, cores per GPU",
           metavar="N"),
    Option("gpu_resource", "bool", "scheduling", "run block tasks only on workers "
           "declaring the GPU resource", "cluster.gpu_resource",
           default_text="when this machine has GPUs, or SLURM jobs ask for GPUs"),
    Option("scheduler_file", "path", "scheduling", "dask scheduler file (JSON, as "
           "`dask scheduler --scheduler-file` and SLURM/MPI launchers write it) of an "
           "existing cluster, instead of --scheduler", "cluster.scheduler_file",
           default_text="--scheduler, else $DASK_SCHEDULER_ADDRESS, else a local cluster",
           metavar="JSON"),
    Option("worker_timeout_s", "float", "scheduling", "seconds an existing or SLURM "
           "cluster may take to show its first worker before the run stops (a busy SLURM "
           "queue may need more)", "cluster.worker_timeout_s", metavar="SECONDS"),
    # -- SLURM cluster
    Option("cluster", "str", "cluster", "where workers come from: local (this machine, or "
           "--scheduler) or slurm (SLURM jobs through dask-jobqueue, the scheduler in this "
           "process; pip install 'wsi-seg[slurm]')", "cluster.kind", toml_key="kind"),
    Option("slurm_queue", "str", "cluster", "SLURM partition of the worker jobs "
           "(sbatch --partition)", "cluster.slurm_queue", toml_key="queue",
           default_text="the partition SLURM defaults to", metavar="PARTITION"),
    Option("slurm_account", "str", "cluster", "SLURM account charged (sbatch --account)",
           "cluster.slurm_account", toml_key="account", default_text="yours by default",
           metavar="ACCOUNT"),
    Option("slurm_walltime", "str", "cluster", "time limit of each worker job (sbatch "
           "--time: MINUTES, HH:MM:SS or D-HH:MM:SS); a job that reaches it loses only its "
           "in-flight blocks and another job takes its place", "cluster.slurm_walltime",
           toml_key="walltime", metavar="TIME"),
    Option("slurm_cores", "int", "cluster", "CPU cores of each worker job "
           "(sbatch --cpus-per-task), shared by its workers", "cluster.slurm_cores",
           toml_key="cores", metavar="N"),
    Option("slurm_memory", "str", "cluster", "memory of each worker job (sbatch --mem), "
           "e.g. 16GB", "cluster.slurm_memory", toml_key="memory", metavar="SIZE"),
    Option("slurm_gpus", "int", "cluster", "GPUs of each worker job (sbatch "
           "--gres=gpu:N): one worker per GPU, each pinned to its card, blocks only on them",
           "cluster.slurm_gpus", toml_key="gpus", metavar="N"),
    Option("slurm_jobs", "int", "cluster", "most worker jobs at once; the cluster adapts "
           "between one and this many to the blocks waiting", "cluster.slurm_jobs",
           toml_key="jobs", metavar="N"),
    Option("slurm_prologue", "strs", "cluster", "shell line run in each worker job before "
           "its workers start, e.g. 'module load cuda' or 'source venv/bin/activate' "
           "(repeatable)", "cluster.slurm_prologue", toml_key="prologue",
           default=None, default_text="none", metavar="LINE", unset=()),
    Option("slurm_interface", "str", "cluster", "network interface the scheduler and "
           "workers talk on, e.g. ib0", "cluster.slurm_interface", toml_key="interface",
           default_text="the login node's default route", metavar="IFACE"),
    Option("slurm_log_dir", "path", "cluster", "folder for the worker jobs' logs",
           "cluster.slurm_log_dir", toml_key="log_dir",
           default_text="SLURM's: slurm-JOBID.out in the current folder", metavar="DIR"),
    # -- object storage: in the TOML only (no flags), never in run.json; credentials are
    # refused there (load_toml), they come from the environment or AWS's files
    Option("storage_endpoint_url", "str", "storage", "URL of the S3 API, e.g. "
           "http://127.0.0.1:9000 for MinIO", "storage.endpoint_url",
           toml_key="endpoint_url", toml_only=True,
           default_text="$AWS_ENDPOINT_URL, ~/.aws/config, else AWS"),
    Option("storage_region", "str", "storage", "the buckets' region, e.g. eu-west-1",
           "storage.region", toml_key="region", toml_only=True,
           default_text="$AWS_DEFAULT_REGION or the profile's"),
    Option("storage_profile", "str", "storage", "AWS profile whose credentials and "
           "settings are used (~/.aws/credentials, ~/.aws/config)", "storage.profile",
           toml_key="profile", toml_only=True, default_text="$AWS_PROFILE, else the default"),
    Option("storage_anon", "bool", "storage", "unsigned requests, for public buckets "
           "(no credentials looked for)", "storage.anon", toml_key="anon", toml_only=True),
)

BY_NAME: dict[str, Option] = {o.name: o for o in OPTIONS}
#: Built-in defaults; a --config TOML file overrides these and command-line flags override both.
DEFAULTS: dict[str, Any] = {o.name: o.default for o in OPTIONS}


# -- command line ---------------------------------------------------------------------------


def argument_type(kind: Kind, limits: Limits | None = None) -> Callable[[str], Any]:
    """An argparse ``type`` converting and checking one value, for commands other than
    ``run`` (``score --level``), with the same messages as the run options."""
    return Option("value", kind, "", "", rule=Rule(kind, limits)).parse


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Every option as a flag, grouped by TOML section. Absent flags stay absent (SUPPRESS),
    so the TOML file and the defaults can fill them."""
    groups = {s: parser.add_argument_group(
        title if not s else f"{title} ([{s}] in --config)",
        description=_toml_only_text(s)) for s, title in SECTIONS.items()}
    for o in OPTIONS:
        if o.toml_only:
            continue
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


def _toml_only_text(section: str) -> str | None:
    """The help of a section whose options have no flags: each key and what it does."""
    only = [o for o in OPTIONS if o.section == section and o.toml_only]
    if not only:
        return None
    import textwrap

    lines = ["in a --config file only (no flags; never written to run.json); credentials",
             "are refused there: they come from the environment or AWS's files"]
    for o in only:
        value = "true" if o.kind == "bool" else '"..."'
        lines += textwrap.wrap(f"{o.key} = {value}: {o.help_text().replace('%%', '%')}",
                               88, initial_indent="  ", subsequent_indent="      ")
    return "\n".join(lines)


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


def _refuse_credentials(path: Path, data: dict[str, Any], where: str = "") -> None:
    """A key anywhere in the file that names a credential (``secret``, ``key``, ``token``,
    ``aws_secret_access_key``, ...) and is no option: one line naming it, never its value."""
    for key, value in data.items():
        place = f"{where}.{key}" if where else key
        known = _by_place().get((where, key.replace("-", "_"))) is not None
        if not known and credential_key(key):
            shown = f"[{where}] {key}" if where else key
            raise WsiSegError(f"{shown}: {CREDENTIALS_REFUSED}", path)
        if isinstance(value, dict):
            _refuse_credentials(path, value, place)


def load_toml(path: Path) -> dict[str, Any]:
    """Options from a TOML file, keyed by option name; every key and value checked.

    Keys sit in their own section (``[blocks] block = 2048``), with ``-`` or ``_``; a key in
    another section, an unknown key or section, or a value of the wrong type or range is a
    one-line WsiSegError naming the file, the key and what it must be. A credential
    (``[storage] secret``, ``aws_secret_access_key``, ... in any table) is refused first,
    in one line that never shows its value.
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
    _refuse_credentials(path, data)
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
    # The rules between configuration fields live in the types (RunConfig.__post_init__);
    # the command line rewrites their refusal in its own words (cli.run.in_option_words).
    if opts["out"] is None:
        raise WsiSegError("--out is required (the output folder)")
