"""Reading the Keras models users bring, and saying what they are.

Users train models elsewhere; ``wsi-seg model import`` turns them into a ``.keras`` archive with
its card. This module does the two steps before that, each refusing bad input with one
:class:`~wsi_seg.core.errors.ModelError` line that names the file and says what to change:

* :func:`read_model` reads a Keras 3 ``.keras`` archive, a Keras 2 full-model HDF5 file
  (``model.save("m.h5")`` from tf-keras), or a Keras 2 architecture JSON (``model.to_json()``)
  with its weights (``model.save_weights("w.h5")``). The architecture is scanned by
  :func:`unsafe_parts` before Keras deserialises anything: only standard Keras classes and
  classes keras-hub registered are allowed (:func:`allowed_class`), so a model file can never
  make us run code it carries or names.
* :func:`inspect_model` says how the graph can be served: input side and channels, output
  channels, dense mask or one score per tile, the final activation, and the multiple of which
  an undefined (``None x None``) input side must be.

Keras 2 files need three repairs before Keras 3 can rebuild them (:func:`_keras2_compat`),
each of which makes ``keras.saving.load_model`` fail on files real tf-keras writes: some layers
carry Keras 2-only arguments (``groups=1`` on every transposed and depthwise convolution,
keras-team/keras#19441); tf-keras' ``to_json`` tags layers with a ``module``, which sends them
past the Keras 2 fix-ups of Keras 3's legacy loader (``axis=[3]`` lists, for one); and Keras 2
numbers the calls of a nested model (a pretrained encoder used as a layer) from 1, Keras 3
from 0.
"""

from __future__ import annotations

import functools
import importlib
import inspect
import math
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from wsi_seg.core.errors import ModelError
from wsi_seg.core.files import decode_json, read_capped, size_text
from wsi_seg.stages.card import MAX_ARCHIVE_BYTES, MAX_CONFIG_BYTES, _archive_config

if TYPE_CHECKING:
    import h5py
    import keras

H5_SUFFIXES = (".h5", ".hdf5")
# A Keras 2 .h5 holds its weights uncompressed as written by Keras, so the .keras ceiling
# (4 GiB of weights plus configs) fits it too.
MAX_H5_BYTES = MAX_ARCHIVE_BYTES
# Weight values a file may declare beyond what the architecture holds: 2x (Keras 2 layers may
# keep a little extra state) plus a floor for tiny models. More than this is a file for another
# model, or a dataset declared huge and compressed to nothing (a decompression bomb), refused
# before Keras reads (and allocates) it.
WEIGHTS_SLACK_FACTOR = 2
WEIGHTS_SLACK_VALUES = 1_000_000

WHAT_TO_BRING = ("a Keras 3 .keras archive, a Keras 2 model saved with model.save('m.h5'), "
                 "or a Keras 2 architecture .json (model.to_json()) with --weights W.h5")
REBUILD_HINT = "rebuild it from standard Keras layers (or keras-hub)"

# Keras 2 arguments Keras 3 refuses, by layer class. Keras 2 writes each of them whatever the
# layer was built with, and its layers ignore them: tf-keras' transposed and depthwise
# convolutions take no `groups` (the base class writes groups=1), its separable convolutions
# build depthwise and pointwise kernels and never the base class' `kernel_*`, and spatial
# dropout draws its own noise shape and has no weights to train.
_SEPARABLE_ONLY = ("groups", "kernel_initializer", "kernel_regularizer", "kernel_constraint")
_KERAS2_ONLY_ARGS: dict[str, tuple[str, ...]] = {
    **{f"Conv{d}DTranspose": ("groups",) for d in (1, 2, 3)},
    **{f"DepthwiseConv{d}D": ("groups",) for d in (1, 2)},
    **{f"SeparableConv{d}D": _SEPARABLE_ONLY for d in (1, 2)},
    **{f"SpatialDropout{d}D": ("trainable", "noise_shape") for d in (1, 2, 3)},
}

# Keras 3's serialisation tags for plain data (tensors in a graph, arrays, bytes, slices):
# nothing to import or run. `__lambda__` (Python bytecode) is deliberately not among them.
_DATA_TAGS = frozenset({"__keras_tensor__", "__tensor__", "__numpy__", "__bytes__",
                        "__ellipsis__", "__slice__"})
# Classes of keras.layers that run code or load graphs from outside the file.
_CODE_LAYERS = {
    "Lambda": "a Lambda layer",
    "TFSMLayer": "a TFSMLayer (a TensorFlow SavedModel loaded from another path)",
    "JaxLayer": "a JaxLayer (wraps arbitrary JAX functions)",
    "FlaxLayer": "a FlaxLayer (wraps an arbitrary Flax module)",
    "TorchModuleWrapper": "a TorchModuleWrapper (unpickles a torch module)",
}
# Model classes of a config that are not exported from keras.layers.
_MODEL_CLASSES = frozenset({"Functional", "Sequential", "Model", "InputLayer"})
_NESTED_MODELS = frozenset({"Functional", "Sequential", "Model"})
# Public Keras modules whose classes a model config may name.
_CLASS_MODULES = ("layers", "initializers", "regularizers", "constraints", "dtype_policies")
_ACTIVATION_NOT_FUNCTIONS = frozenset({"get", "serialize", "deserialize"})
_HUB_PREFIX = "keras_hub>"


# ------------------------------------------------------------------------------- reading

def read_model(src: Path, weights: Path | None = None) -> keras.Model:
    """Read a model a user brings, by its suffix, with safe mode on and uncompiled.

    Args:
        src: ``M.keras`` (Keras 3 archive), ``M.h5`` / ``M.hdf5`` (Keras 2 full model) or
            ``M.json`` (Keras 2 architecture, needs ``weights``).
        weights: ``W.h5``, the Keras 2 ``save_weights`` file for an architecture JSON (a
            ``.weights.h5`` in the Keras 3 layout is read too); only with a ``.json``.

    Raises:
        ModelError: one line naming the file: not a file of these kinds, truncated, over a size
            ceiling, holding classes outside the allow-list, or weights that do not fit.
    """
    src = Path(src)
    _check_file(src, "model file")
    suffix = src.suffix.lower()
    if suffix == ".json":
        if weights is None:
            raise ModelError("architecture JSON needs --weights W.h5 (the file "
                             "model.save_weights('w.h5') wrote in Keras 2)", src)
        weights = Path(weights)
        _check_file(weights, "weights file")
        return _read_keras2_json(src, weights)
    if weights is not None:
        raise ModelError(f"--weights is only for an architecture .json; a {suffix or 'bare'} "
                         "model file holds its own weights (drop --weights)", src)
    if suffix == ".keras":
        return _read_keras3(src)
    if suffix in H5_SUFFIXES:
        return _read_keras2_h5(src)
    raise ModelError(f"unknown model file type {suffix or '(no suffix)'!r}: expected "
                     f"{WHAT_TO_BRING}", src)


def _check_file(path: Path, what: str) -> None:
    if not path.exists():
        raise ModelError(f"no such {what}", path)
    if not path.is_file():
        raise ModelError(f"{what} is not a file", path)


def _first_line(exc: BaseException) -> str:
    """A library's error as one short line (its message can run to pages of config)."""
    text = str(exc).strip()
    first = text.splitlines()[0] if text else type(exc).__name__
    return first[:300]


def _read_keras3(src: Path) -> keras.Model:
    """A Keras 3 archive: the member and bomb checks of the card loader, the scan, then Keras."""
    config = _archive_config(src)
    _refuse_unsafe(config, src)
    import keras

    try:
        return keras.saving.load_model(src, safe_mode=True, compile=False)
    except Exception as exc:  # Keras raises ValueError/TypeError/OSError variants
        raise ModelError(f"Keras cannot load it safely: {_first_line(exc)}", src) from None


def _read_keras2_h5(src: Path) -> keras.Model:
    """A Keras 2 full-model HDF5: its ``model_config`` attribute, scanned, then rebuilt and
    given the weights in its ``model_weights`` group.

    ``keras.saving.load_model`` reads Keras 2 ``.h5`` files, but it deserialises the config
    straight from the file, so it fails on what :func:`_keras2_compat` repairs (every
    ``Conv2DTranspose`` tf-keras writes carries ``groups=1``; every nested model is numbered
    from 1). We take its two steps ourselves, on the repaired config: rebuild with Keras 3's
    legacy deserialiser and load the weights with its legacy reader, the two it uses.
    """
    with _open_h5(src, MAX_H5_BYTES, "Keras 2 model saved with model.save('m.h5')") as f:
        config = _h5_model_config(f, src)
        _refuse_unsafe(config, src)
        model = _build_keras2(config, src)
        group = f.get("model_weights")
        if group is None or not hasattr(group, "visititems"):
            raise ModelError("HDF5 model has no model_weights group: save it again with "
                             "model.save('m.h5') in Keras 2", src)
        _load_keras2_weights(model, group, src, "the weights stored in it do not fit its "
                             "architecture (a damaged file: save it again)")
    return model


def _read_keras2_json(src: Path, weights: Path) -> keras.Model:
    """A Keras 2 architecture JSON plus a weights HDF5."""
    raw = read_capped(src, MAX_CONFIG_BYTES, ModelError, "architecture JSON")
    config = decode_json(raw, src, ModelError, "architecture JSON")
    _check_config_object(config, src)
    if "module" in config:  # Keras 3's to_json tags the model itself; Keras 2's does not
        raise ModelError("this is a Keras 3 architecture JSON: bring the model as a .keras "
                         "archive instead (model.save('m.keras'))", src)
    _refuse_unsafe(config, src)
    model = _build_keras2(config, src)
    with _open_h5(weights, MAX_H5_BYTES, "Keras 2 weights file saved with "
                  "model.save_weights('w.h5')") as f:
        _load_keras2_weights(model, f, weights,
                             f"the weights do not fit the architecture in {src.name} "
                             "(pass the weights saved from that same model)")
    return model


@contextmanager
def _open_h5(path: Path, max_bytes: int, expected: str) -> Iterator[h5py.File]:
    """``path`` opened read-only as HDF5; ModelError (saying ``expected``) if it is not one,
    is truncated or damaged, or is larger than ``max_bytes``."""
    import h5py

    size = path.stat().st_size
    if size > max_bytes:
        raise ModelError(f"file is {size_text(size)}, more than the {size_text(max_bytes)} "
                         "allowed", path)
    if not h5py.is_hdf5(path):
        raise ModelError(f"not an HDF5 file: expected a {expected}", path)
    try:
        f = h5py.File(path, "r")
    except OSError as exc:  # h5py reports truncation and corruption as OSError
        raise ModelError(f"truncated or damaged HDF5 file ({_first_line(exc)}): expected "
                         f"a complete {expected}", path) from None
    with f:
        yield f


def _h5_model_config(f: h5py.File, path: Path) -> dict[str, Any]:
    """The architecture JSON in a Keras 2 ``.h5`` (root attribute ``model_config``), parsed.

    A fixed-length attribute is measured before it is read. A variable-length one (what h5py
    writes for a Python str, as tf-keras does) cannot be measured first, but HDF5 stores
    attributes uncompressed, so it can hold no more than the file size, itself capped.
    """
    if "model_config" not in f.attrs:
        if "layer_names" in f.attrs:
            raise ModelError("this is a weights-only file (model.save_weights), not a model: "
                             "pass the architecture .json as the model and this file as "
                             "--weights, or save the whole model with model.save('m.h5')",
                             path)
        raise ModelError("HDF5 file holds no Keras model_config: expected a Keras 2 model "
                         "saved with model.save('m.h5')", path)
    stored = f.attrs.get_id("model_config").get_storage_size()
    if stored > MAX_CONFIG_BYTES:
        raise ModelError(f"model_config is {size_text(stored)}, more than the "
                         f"{size_text(MAX_CONFIG_BYTES)} allowed", path)
    try:
        raw = f.attrs["model_config"]
    except (OSError, RuntimeError) as exc:  # a damaged attribute heap
        raise ModelError(f"damaged model_config ({_first_line(exc)})", path) from None
    if hasattr(raw, "tobytes") and not isinstance(raw, bytes | str):  # a numpy string scalar
        raw = raw.tobytes()
    if not isinstance(raw, bytes | str):
        raise ModelError("model_config is not text: expected a Keras 2 model saved with "
                         "model.save('m.h5')", path)
    if len(raw) > MAX_CONFIG_BYTES:
        raise ModelError(f"model_config is more than the {size_text(MAX_CONFIG_BYTES)} "
                         "allowed", path)
    config = decode_json(raw, path, ModelError, "model_config in the HDF5 file")
    _check_config_object(config, path)
    return config


def _check_config_object(config: Any, path: Path) -> None:
    """ModelError unless ``config`` looks like a serialised Keras model."""
    if not (isinstance(config, dict) and isinstance(config.get("class_name"), str)
            and isinstance(config.get("config"), dict)):
        raise ModelError("not a Keras model config (expected an object with class_name "
                         "and config, as model.to_json() writes)", path)


def _refuse_unsafe(config: Any, path: Path) -> None:
    unsafe = unsafe_parts(config)
    if unsafe:
        raise ModelError(f"refused: the model holds {', '.join(unsafe)}, which would run code "
                         f"from outside the file on load; {REBUILD_HINT}", path)


def _keras2_compat(config: dict[str, Any]) -> dict[str, Any]:
    """Repair a Keras 2 config, in place, so Keras 3's legacy deserialiser can rebuild it.

    Every model config in it (the top one and nested ones) gets three repairs:

    * arguments of :data:`_KERAS2_ONLY_ARGS` are dropped (Keras 2 wrote and ignored them);
    * layer entries lose ``module`` and ``registered_name``: tf-keras' ``to_json`` writes them
      (its ``.h5`` does not), and Keras 3 sends a layer that has a ``module`` to its Keras 3
      deserialiser, which lacks the legacy path's Keras 2 fix-ups (``axis=[3]`` becomes 3,
      ``batch_input_shape`` becomes ``batch_shape``), so both Keras 2 formats take one path;
    * calls of nested models are renumbered (:func:`_renumber_nested_calls`).

    Runs after :func:`unsafe_parts`, which sees the config as the file wrote it.
    """
    stack: list[Any] = [config]
    while stack:  # a stack, not recursion: configs can nest deeply
        node = stack.pop()
        if isinstance(node, dict):
            inner = node.get("config")
            if isinstance(inner, dict):
                for arg in _KERAS2_ONLY_ARGS.get(str(node.get("class_name")), ()):
                    inner.pop(arg, None)
                layers = inner.get("layers")
                if isinstance(layers, list):
                    for layer in layers:
                        if isinstance(layer, dict):
                            layer.pop("module", None)
                            layer.pop("registered_name", None)
                    _renumber_nested_calls(inner, layers)
            stack.extend(node.values())
        elif isinstance(node, list):
            stack.extend(node)
    return config


def _renumber_nested_calls(inner: dict[str, Any], layers: list[Any]) -> None:
    """Shift references to calls of nested models down by one, in place.

    Keras 2 numbers a nested model's calls from 1 (node 0 was the model's own construction on
    its Input), Keras 3 from 0, and its legacy loader does not convert: any Keras 2 model that
    calls another (a pretrained encoder used as a layer) fails there with "the graph ... has
    loops or disconnected nodes". ``output_layers`` / ``input_layers`` entries that name a
    nested ``Functional`` are left alone, since Keras 3 shifts those itself (its Sequential is
    no Functional, so those are shifted here).
    """
    kinds = {layer.get("name"): layer.get("class_name") for layer in layers
             if isinstance(layer, dict)}
    nested = {name for name, kind in kinds.items() if kind in _NESTED_MODELS}
    if not nested:
        return
    for layer in layers:
        nodes = layer.get("inbound_nodes") if isinstance(layer, dict) else None
        for node in nodes if isinstance(nodes, list) else ():
            for ref in node if isinstance(node, list) else ():
                _shift_ref(ref, nested)
    sequential = {name for name in nested if kinds[name] == "Sequential"}
    for key in ("input_layers", "output_layers"):
        refs = inner.get(key)
        for ref in refs if isinstance(refs, list) else ():
            _shift_ref(ref, sequential)


def _shift_ref(ref: Any, names: set[Any]) -> None:
    """``[layer_name, node_index, tensor_index, ...]`` with node_index one lower, when it names
    one of ``names`` and is not already 0."""
    if (isinstance(ref, list) and len(ref) >= 3 and ref[0] in names
            and isinstance(ref[1], int) and ref[1] > 0):
        ref[1] -= 1


def _build_keras2(config: dict[str, Any], path: Path) -> keras.Model:
    """A Keras 3 model rebuilt from a scanned Keras 2 config (weights not loaded yet).

    Keras 3's public ``keras.models.model_from_json`` uses its Keras 3 deserialiser, which
    cannot find a Keras 2 top-level ``Functional`` (no ``module``); the legacy one that
    ``keras.saving.load_model`` uses for ``.h5`` files can, so we call that, in safe mode.
    """
    import keras
    from keras.src.legacy.saving import saving_utils
    from keras.src.saving import serialization_lib

    try:
        with serialization_lib.SafeModeScope(True):
            model = saving_utils.model_from_config(_keras2_compat(config))
    except Exception as exc:  # Keras raises ValueError/TypeError/KeyError variants
        raise ModelError(f"Keras 3 cannot rebuild this Keras 2 architecture: "
                         f"{_first_line(exc)}", path) from None
    if not isinstance(model, keras.Model):
        raise ModelError(f"the architecture is a {type(model).__name__}, not a model: "
                         f"expected {WHAT_TO_BRING}", path)
    return model


def _load_keras2_weights(model: keras.Model, group: h5py.Group, path: Path,
                         misfit: str) -> None:
    """Load a Keras 2 weights HDF5 (``save_weights`` file, or a full model's
    ``model_weights`` group) into ``model``; ModelError saying ``misfit`` if they differ.

    ``Model.load_weights`` picks its reader from the file name: ``.h5`` gets the Keras 2
    reader, ``.weights.h5`` the Keras 3 one. Keras 2 files are told by their content instead
    (a ``layer_names`` attribute) and given to that Keras 2 reader directly, on the group
    already opened and measured; a Keras 3 layout (what tf-keras writes to ``.weights.h5``)
    goes to ``load_weights``.
    """
    from keras.src.legacy.saving import legacy_h5_format

    _check_weight_sizes(group, model, path)
    if "layer_names" in group.attrs:
        load = functools.partial(legacy_h5_format.load_weights_from_hdf5_group, group, model)
    elif path.name.lower().endswith(".weights.h5") and "layers" in group:
        load = functools.partial(model.load_weights, path)
    else:
        raise ModelError("not a Keras weights file (no layer_names): expected the file "
                         "model.save_weights('w.h5') wrote in Keras 2", path)
    try:
        load()
    except Exception as exc:  # mismatches are ValueError; a damaged file OSError/KeyError
        raise ModelError(f"{misfit}: {_first_line(exc)}", path) from None


def _check_weight_sizes(group: h5py.Group, model: keras.Model, path: Path) -> None:
    """ModelError unless the datasets under ``group`` are numeric and declare no more values
    than the model holds (with slack), checked from their shapes before any is read."""
    import h5py

    declared = 0
    odd: list[str] = []

    def visit(name: str, obj: object) -> None:
        nonlocal declared
        if isinstance(obj, h5py.Dataset):
            if obj.dtype.kind not in "biuf":
                odd.append(name)
            declared += int(obj.size or 0)

    group.visititems(visit)
    if odd:
        raise ModelError(f"weights file holds non-numeric dataset {odd[0]!r}: expected the "
                         "file model.save_weights('w.h5') wrote in Keras 2", path)
    expected = sum(math.prod(w.shape) for w in model.weights)
    if declared > WEIGHTS_SLACK_FACTOR * expected + WEIGHTS_SLACK_VALUES:
        raise ModelError(f"weights file declares {declared:,} values, far more than the "
                         f"{expected:,} of the architecture: pass the weights saved from this "
                         "same model", path)


# ------------------------------------------------------------------------------- safety scan

def unsafe_parts(config: Any, *, resolve: bool = True) -> list[str]:
    """Everything in a model config (its compile config excluded) that is not allowed.

    Every serialised object (a dict with a ``class_name``) must name a class
    :func:`allowed_class` accepts, a Keras activation function, or a Keras data tag (a tensor
    in the graph, an array). Anything else would make Keras import a module or run code the
    file names: custom classes, ``Lambda`` layers (Python bytecode), wrappers of outside code.

    ``resolve=False`` is the same rule without looking class and function names up in Keras
    (which imports Keras, and so TensorFlow: seconds): objects of Keras' own modules, and
    ``keras_hub>`` registrations from keras-hub's, pass on their names alone. A client checks
    a model file that way before any worker starts; the process that loads the model runs the
    whole rule first (:func:`wsi_seg.stages.card.load_model`).

    Returns:
        Human-readable descriptions, sorted and without repeats; empty when the config is clean.
    """
    found: set[str] = set()
    stack = [config]
    while stack:  # a stack, not recursion: a deeply nested config would overflow a recursive walk
        node = stack.pop()
        if isinstance(node, dict):
            if "class_name" in node:
                problem = _object_problem(node, resolve)
                if problem:
                    found.add(problem)
            stack.extend(v for k, v in node.items() if k != "compile_config")
        elif isinstance(node, list):
            stack.extend(node)
    return sorted(found)


def _object_problem(node: dict[str, Any], resolve: bool = True) -> str | None:
    """Why one serialised object is not allowed, or None (``resolve``: see
    :func:`unsafe_parts`)."""
    cls, module, registered = (node.get("class_name"), node.get("module"),
                               node.get("registered_name"))
    if not isinstance(cls, str) or not isinstance(module, str | None):
        return f"a malformed object entry (class_name {cls!r})"
    if cls in _DATA_TAGS:
        return None
    if cls == "__lambda__":
        return "a Python lambda"
    if cls in _CODE_LAYERS:
        return _CODE_LAYERS[cls]
    if cls == "function":
        if not resolve and _is_keras_module(module) and isinstance(node.get("config"), str):
            return None
        return _function_problem(node.get("config"), module)
    if not isinstance(registered, str | None):
        return f"a malformed object entry (registered_name {registered!r})"
    if not resolve and _plausible_class(cls, module, registered):
        return None
    if allowed_class(cls, module, registered):
        return None
    if registered and registered.startswith(_HUB_PREFIX) and not _keras_hub_available():
        return f"keras-hub class {registered!r} (keras-hub is not installed: pip install keras-hub)"
    where = f" from module {module!r}" if module else ""
    return f"custom class {registered or cls!r}{where}"


def _function_problem(name: Any, module: str | None) -> str | None:
    """Keras 3 writes a function-valued argument as ``{"class_name": "function", "config":
    NAME}``: allowed when it is one of Keras' activations."""
    if isinstance(name, str) and _is_keras_module(module) and name in _activation_names():
        return None
    where = f" from module {module!r}" if module else ""
    return f"custom function {name!r}{where}"


def _plausible_class(class_name: str, module: str | None, registered_name: str | None) -> bool:
    """:func:`allowed_class` on names alone (no import): Keras' own module and no other
    registration, or a ``keras_hub>`` registration of keras-hub's module."""
    if registered_name not in (None, class_name):
        return (str(registered_name).startswith(_HUB_PREFIX) and module is not None
                and (module == "keras_hub" or module.startswith("keras_hub.")))
    return _is_keras_module(module)


def allowed_class(class_name: str, module: str | None, registered_name: str | None) -> bool:
    """Whether a config may name this class: a standard Keras layer, model, initializer,
    regularizer, constraint or dtype policy, or a class keras-hub registered.

    Args:
        class_name: the entry's ``class_name`` (``"Conv2D"``, ``"GlorotUniform"``).
        module: its ``module`` (Keras 3 and recent Keras 2 write ``"keras.layers"``,
            ``"keras.src..."``, ``"keras_hub.src..."``; older Keras 2 configs none).
        registered_name: its ``registered_name``: None or the class name itself for Keras'
            own classes, ``"package>Name"`` for registered ones (``"keras_hub>ResNetBackbone"``).

    Classes are resolved by name through Keras 3's public modules, never imported from the
    named module; keras-hub (optional) is imported only when a config names one of its classes.
    """
    if registered_name not in (None, class_name):
        return _is_keras_hub_class(str(registered_name), module)
    if not _is_keras_module(module):
        return False
    return class_name in _standard_classes()


def _is_keras_module(module: str | None) -> bool:
    """No module (older Keras 2 configs) or one of Keras' own."""
    return module is None or module == "keras" or module.startswith("keras.")


@functools.cache
def _standard_classes() -> frozenset[str]:
    """Class names exported by Keras 3's public modeling modules, less code-running layers."""
    import keras

    names = set(_MODEL_CLASSES)
    for mod_name in _CLASS_MODULES:
        mod = getattr(keras, mod_name)
        names.update(n for n in dir(mod) if not n.startswith("_")
                     and inspect.isclass(getattr(mod, n)))
    return frozenset(names - set(_CODE_LAYERS))


@functools.cache
def _activation_names() -> frozenset[str]:
    import keras

    mod = keras.activations
    return frozenset(n for n in dir(mod) if not n.startswith("_")
                     and n not in _ACTIVATION_NOT_FUNCTIONS and callable(getattr(mod, n)))


@functools.cache
def _keras_hub_available() -> bool:
    """Import keras-hub (which registers its classes with Keras) if it is installed."""
    try:
        importlib.import_module("keras_hub")
    except ImportError:
        return False
    return True


def _is_keras_hub_class(registered_name: str, module: str | None) -> bool:
    """A ``keras_hub>Name`` that keras-hub itself registered: the registry's class must be
    defined in keras-hub, so a class some other code registered under that package name (or
    a module that is not keras-hub's) is still refused."""
    if not registered_name.startswith(_HUB_PREFIX) or not _keras_hub_available():
        return False
    if module is not None and not (module == "keras_hub" or module.startswith("keras_hub.")):
        return False
    import keras

    obj = keras.saving.get_registered_object(registered_name)
    return inspect.isclass(obj) and obj.__module__.startswith("keras_hub.")


# ------------------------------------------------------------------------------- inspection

@dataclass(frozen=True)
class ModelShape:
    """What a model's graph says about serving it.

    Attributes:
        input_size_px: side of the square input tile, pixels; None when the model takes any
            side (a ``None x None`` input), then a multiple of ``size_multiple_px``.
        channels: input channels, 1 or 3 (channels last).
        out_channels: output channels (classes, or 1 for a tumour probability).
        spatial: True for a dense mask ``(n, h, w, out_channels)`` of the input's size, False
            for one score vector per tile ``(n, out_channels)``.
        activation: the final activation: ``"sigmoid"``, ``"softmax"``, ``"linear"`` (logits),
            or None when the last layers do not tell.
        size_multiple_px: for an undefined input, the smallest power of two (1..256), pixels,
            whose multiples the model maps to a same-size output; 1 for a fixed input.
    """

    input_size_px: int | None
    channels: int
    out_channels: int
    spatial: bool
    activation: str | None
    size_multiple_px: int


# Sides tried for an undefined input: m * k for these k and powers of two m. Two odd k, so a
# model that only works at multiples of 2m is never taken for one that works at multiples of m.
_PROBE_FACTORS = (5, 7)
_MAX_MULTIPLE_PX = 256
# Layers after the one that applies the final activation that keep its meaning (values in
# [0, 1], or rows summing to 1): moving, cropping or interpolating values, or nothing at all.
_PASS_THROUGH = ("Reshape", "Flatten", "Permute", "Cropping2D", "UpSampling2D", "Resizing",
                 "Dropout", "SpatialDropout2D", "GaussianDropout", "Identity")
_ACTIVATIONS = ("sigmoid", "softmax", "linear")


def inspect_model(model: keras.Model, path: Path | None = None) -> ModelShape:
    """Describe ``model`` for serving by wsi-seg, refusing what it cannot serve.

    Shapes come from the graph (symbolic shape computation for an undefined input side, never a
    forward pass), so this costs milliseconds.

    Args:
        model: a built Keras 3 model, as :func:`read_model` returns.
        path: the file it came from, named in errors.

    Raises:
        ModelError: one line: not one input and one output, an input that is not a square
            ``(n, h, w, 1 or 3)`` tile, an output that is neither ``(n, C)`` nor
            ``(n, h, w, C)``, or a spatial output of another size than the input.
    """
    in_shape, out_shape = _io_shapes(model, path)
    side, channels = in_shape[1], in_shape[3]
    spatial = len(out_shape) == 4
    out_channels = out_shape[-1]
    if side is None:
        multiple = _size_multiple(model, channels, spatial, path)
    else:
        _check_fixed_size(model, side, channels, spatial, path)
        multiple = 1
    return ModelShape(input_size_px=side, channels=channels, out_channels=out_channels,
                      spatial=spatial, activation=_final_activation(model),
                      size_multiple_px=multiple)


def _io_shapes(model: keras.Model, path: Path | None) -> tuple[tuple[Any, ...], tuple[Any, ...]]:
    """The one input's and one output's shapes, batch first; every problem in one line."""
    try:
        inputs, outputs = list(model.inputs), list(model.outputs)
    except (AttributeError, TypeError, ValueError):
        raise ModelError("model has no defined inputs and outputs: build it on an Input "
                         "before saving it", path) from None
    problems = []
    if len(inputs) != 1:
        problems.append(f"model has {len(inputs)} inputs; wsi-seg feeds one image tile, so "
                        "give it a single input")
    if len(outputs) != 1:
        problems.append(f"model has {len(outputs)} outputs; keep only the mask or score output")
    if problems:
        raise ModelError("; ".join(problems), path)
    in_shape, out_shape = tuple(inputs[0].shape), tuple(outputs[0].shape)
    problems = _input_problems(inputs[0], in_shape) + _output_problems(out_shape)
    if problems:
        raise ModelError("; ".join(problems), path)
    return in_shape, out_shape


def _shape_text(shape: tuple[Any, ...]) -> str:
    return "(" + ", ".join("n" if s is None else str(s) for s in shape) + ")"


def _input_problems(tensor: Any, shape: tuple[Any, ...]) -> list[str]:
    """What is wrong with the input for wsi-seg's ``(n, side, side, 1 or 3)`` tiles."""
    if getattr(tensor, "ragged", False) or getattr(tensor, "sparse", False):
        return ["model input is ragged or sparse; wsi-seg feeds dense (n, h, w, c) tiles"]
    if len(shape) != 4:
        return [f"model input {_shape_text(shape)} is not an image batch; wsi-seg feeds "
                "(n, h, w, c) tiles"]
    problems = []
    h, w, c = shape[1:]
    if (h is None) != (w is None):
        problems.append(f"model input {_shape_text(shape)} fixes one side only; fix both "
                        "(square) or neither")
    elif h != w:
        problems.append(f"model input {h}x{w} is not square; wsi-seg feeds square tiles, "
                        "so rebuild it with a square input")
    if c not in (1, 3):
        problems.append(f"model input has {'undefined' if c is None else c} channels; "
                        "wsi-seg feeds 1 (grey) or 3 (RGB) channels last")
    return problems


def _output_problems(shape: tuple[Any, ...]) -> list[str]:
    if len(shape) not in (2, 4):
        return [f"model output {_shape_text(shape)} is neither a mask (n, h, w, C) nor "
                "scores (n, C)"]
    if shape[-1] is None:
        return [f"model output {_shape_text(shape)} has undefined channels; end it with a "
                "layer of fixed width"]
    return []


def _size_mismatch(out_h: Any, out_w: Any, side: int) -> str:
    return (f"spatial output {out_h}x{out_w} is not the input size {side}x{side}; wsi-seg "
            "needs a same-size mask")


def _check_fixed_size(model: keras.Model, side: int, channels: int, spatial: bool,
                      path: Path | None) -> None:
    """ModelError unless the model really runs on its own ``side x side`` input (traced, see
    :func:`_symbolic_output`) and a mask comes out at that same size."""
    out, why = _symbolic_output(model, side, channels)
    if out is None:
        raise ModelError(f"model cannot run on its declared {side}x{side} input ({why}); "
                         "rebuild it so that it predicts at that size", path)
    if spatial and tuple(out[1:3]) != (side, side):
        raise ModelError(_size_mismatch(out[1], out[2], side), path)


def _size_multiple(model: keras.Model, channels: int, spatial: bool, path: Path | None) -> int:
    """Smallest power of two m (1..256, pixels) such that sides m*5 and m*7 both give an
    output (of the same side, for a mask), computed symbolically."""
    mismatch: str | None = None
    multiple = 1
    while multiple <= _MAX_MULTIPLE_PX:
        fits = True
        for factor in _PROBE_FACTORS:
            side = multiple * factor
            out, _ = _symbolic_output(model, side, channels)
            if out is None:
                fits = False
            elif spatial and tuple(out[1:3]) != (side, side):
                mismatch = _size_mismatch(out[1], out[2], side)
                fits = False
        if fits:
            return multiple
        multiple *= 2
    if mismatch:
        raise ModelError(mismatch, path)
    raise ModelError(f"model gives no output for any input side m*k (m a power of two up to "
                     f"{_MAX_MULTIPLE_PX}, k in {_PROBE_FACTORS}); rebuild it with a fixed "
                     "input size", path)


def _symbolic_output(model: keras.Model, side: int,
                     channels: int) -> tuple[tuple[Any, ...] | None, str]:
    """The output shape for one ``side x side`` tile, or None and why the graph refuses it.

    Traced with the backend's symbolic shape computation (a TensorFlow graph or
    ``jax.eval_shape``: shapes only, no values computed). ``model.compute_output_spec`` is not
    enough: it chains the layers' own shape rules, and ``Concatenate``'s does not compare the
    non-concatenated sides, so a UNet whose skip sides differ (5 px pooled to 2 and upsampled to
    4, beside 5) would pass there and fail on the first real tile.
    """
    import keras
    from keras.src import backend

    try:
        spec = backend.compute_output_spec(model, keras.KerasTensor((1, side, side, channels)))
    except Exception as exc:  # any layer's shape error (ValueError, TypeError, TF's own errors)
        return None, _first_line(exc)
    if isinstance(spec, list | tuple) and len(spec) == 1:
        spec = spec[0]
    shape = getattr(spec, "shape", None)
    if shape is None:
        return None, f"output is a {type(spec).__name__}, not one tensor"
    return tuple(shape), ""


def _final_activation(model: keras.Model) -> str | None:
    """``"sigmoid"``, ``"softmax"`` or ``"linear"`` as the last layers apply it, else None.

    Walks back from the output through nested models and :data:`_PASS_THROUGH` layers to the
    layer that computes the values. Keras has no public graph walk, so this reads the
    ``_keras_history`` / ``_inbound_nodes`` links its own functional code uses.
    """
    tensor = model.outputs[0]
    for _ in range(1000):  # bounded: a malformed graph must not loop
        history = getattr(tensor, "_keras_history", None)
        if history is None:
            return None
        op = history.operation
        name = type(op).__name__
        outputs = getattr(op, "outputs", None)
        if outputs and hasattr(op, "layers"):  # a nested model: continue at its own output
            tensor = outputs[history.tensor_index]
            continue
        if name == "Softmax":
            return "softmax"
        activation = _activation_name(getattr(op, "activation", None))
        if name in _PASS_THROUGH or (name == "Activation" and activation == "linear"):
            inputs = op._inbound_nodes[history.node_index].input_tensors
            if len(inputs) != 1:
                return None
            tensor = inputs[0]
            continue
        return activation
    return None


def _activation_name(fn: Any) -> str | None:
    name = getattr(fn, "__name__", None)
    return name if name in _ACTIVATIONS else None


__all__ = ["ModelShape", "allowed_class", "inspect_model", "read_model", "unsafe_parts"]
