"""Parameters of the configuration types: each one's rule lives on its dataclass field.

A configuration field declared with :func:`param` carries its :class:`Rule` (the numbers or
strings it admits) in the field's metadata. The type checks itself in ``__post_init__`` with
:func:`check_params`, so ``RunConfig(block_px=1000)`` fails at once, in one line that names the
parameter, whether it was built by the command line or in a notebook. The command-line option
table (:mod:`wsi_seg.orchestration.options`) reads the same rule and default from the field, so
a rule and a default exist once.

Example::

    >>> from dataclasses import dataclass
    >>> @dataclass(frozen=True)
    ... class Grid:
    ...     edge_px: int = param(256, Rule("int", Limits(8, 4096)))
    ...     def __post_init__(self) -> None:
    ...         check_params(self)
    >>> Grid(edge_px=4).edge_px
    Traceback (most recent call last):
    ...
    wsi_seg.core.params.ConfigError: edge_px = 4: must be 8 <= x <= 4096
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import MISSING, Field, dataclass, field, fields
from pathlib import Path
from typing import Any, Literal

from wsi_seg.core.errors import WsiSegError

Kind = Literal["int", "float", "str", "bool", "path", "strs"]

_EXPECTED: dict[Kind, str] = {
    "int": "an integer",
    "float": "a number",
    "str": "a string",
    "bool": "true or false",
    "path": "a path",
    "strs": "a list of strings",
}


@dataclass(frozen=True)
class Limits:
    """The numbers a parameter admits: an interval whose ends may be open or absent."""

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


AT_LEAST_0 = Limits(lo=0)
POSITIVE = Limits(lo=0, lo_open=True)


@dataclass(frozen=True)
class Rule:
    """What one parameter admits: its kind, and the numbers, strings or further rule (for a
    ``strs`` parameter, applied to each item). ``check`` returns what is wrong, or None."""

    kind: Kind
    limits: Limits | None = None
    choices: tuple[str, ...] | None = None
    check: Callable[[Any], str | None] | None = None

    def type_ok(self, value: Any) -> bool:
        """Whether ``value`` has this kind's type (an int is a number; a bool is neither)."""
        if self.kind == "bool":
            return isinstance(value, bool)
        if isinstance(value, bool):
            return False
        if self.kind == "int":
            return isinstance(value, int)
        if self.kind == "float":
            return isinstance(value, int | float)
        if self.kind == "path":
            return isinstance(value, str | Path)
        if self.kind == "strs":
            return isinstance(value, tuple | list) and all(isinstance(v, str) for v in value)
        return isinstance(value, str)

    def problem(self, value: Any) -> str | None:
        """What is wrong with a value of the right type (one item of a ``strs``), or None."""
        if self.limits is not None and not self.limits.admits(value):
            return f"must be {self.limits.text()}"
        if self.choices is not None and value not in self.choices:
            return f"must be one of {', '.join(self.choices)}"
        if self.kind == "path" and not str(value).strip():
            return "must not be empty"
        if self.check is not None:
            return self.check(value)
        return None

    def trouble(self, value: Any) -> str | None:
        """Type, then rule (each item of a ``strs``): what is wrong with ``value``, or None."""
        if not self.type_ok(value):
            return f"must be {_EXPECTED[self.kind]}, got {type(value).__name__}"
        for item in (value if self.kind == "strs" else [value]):
            found = self.problem(item)
            if found:
                return found
        return None


def param(default: Any = MISSING, rule: Rule | None = None) -> Any:
    """A dataclass field holding ``default`` (a tuple or None: immutable) and its rule."""
    meta = {"rule": rule} if rule is not None else {}
    return field(default=default, metadata=meta)


def rule_of(f: Field[Any]) -> Rule | None:
    """The rule a field was declared with (:func:`param`), if any."""
    rule = f.metadata.get("rule")
    return rule if isinstance(rule, Rule) else None


def field_of(cls: type, name: str) -> Field[Any]:
    """The dataclass field ``name`` of ``cls`` (KeyError when there is none)."""
    for f in fields(cls):
        if f.name == name:
            return f
    raise KeyError(f"{cls.__name__} has no field {name!r}")


def _shown(value: Any) -> str:
    if isinstance(value, Path):
        return repr(str(value))
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


class ConfigError(WsiSegError):
    """A configuration value (or two that disagree) refused, in one line naming parameters.

    ``template`` writes each parameter as ``{name}``; ``values`` holds their values. The
    library's own line shows ``name = value``; the command line rewrites the same template with
    its flags (:meth:`render`), so both say the same thing in their own words.
    """

    def __init__(self, template: str, values: Mapping[str, Any]) -> None:
        self.template = template
        self.values = dict(values)
        super().__init__(self.render({k: f"{k} = {_shown(v)}" for k, v in self.values.items()}))

    def render(self, names: Mapping[str, str]) -> str:
        """The message with each ``{parameter}`` replaced by ``names[parameter]``."""
        return self.template.format_map({k: names.get(k, k) for k in self.values})


def coerce_paths(obj: Any, *names: str) -> None:
    """Turn ``str`` values of the named fields into :class:`Path` (a notebook passes strings);
    for frozen dataclasses, in ``__post_init__``."""
    for name in names:
        value = getattr(obj, name)
        if isinstance(value, str):
            object.__setattr__(obj, name, Path(value))


def coerce_tuples(obj: Any, *names: str) -> None:
    """Turn list values (or one string) of the named fields into tuples, so the frozen type
    stays hashable and a lone ``"tumor"`` is not read letter by letter."""
    for name in names:
        value = getattr(obj, name)
        if isinstance(value, str):
            object.__setattr__(obj, name, (value,))
        elif isinstance(value, list):
            object.__setattr__(obj, name, tuple(value))


def check_params(obj: Any) -> None:
    """Check every field declared with a rule; None passes where the field's default is None
    (None means "decide later"). Raises :class:`ConfigError` naming the first bad one."""
    for f in fields(obj):
        rule = rule_of(f)
        value = getattr(obj, f.name)
        if rule is None or (value is None and f.default is None):
            continue
        found = rule.trouble(value)
        if found:
            raise ConfigError(f"{{{f.name}}}: {found}", {f.name: value})
