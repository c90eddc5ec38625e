"""Typed records: dataclasses that check and convert their values when they are built.

The package manifest and its pre/post-processing declarations (read by the packager, the control
plane and the agent) and the agent's settings are records. They were pydantic models; pydantic
and the validators it builds cost the agent's serving process 12-15 MB of resident memory, on
devices whose whole budget is 100 MB, for a job this module does with the standard library.

What a record gives, the way pydantic's lax mode did (its messages too, so errors read alike
across the agent and the control plane):

- ``Record.from_dict(data)`` builds a record from plain data (JSON, YAML, environment), refusing
  unknown keys (``Extra inputs are not permitted``) and missing ones (``Field required``);
  building one directly (``Manifest(name=...)``) checks the given values the same way.
- Values are converted where the meaning is plain: ``"9001"`` -> 9001 for an ``int``, ``1`` ->
  1.0 for a ``float``, ``"true"`` / ``"on"`` / ``"1"`` for a ``bool``, a string for a ``Path``,
  a mapping for a nested record; anything else is refused with the field's dotted location.
- Constraints (``ge``, ``gt``, ``le``, ``min_length``) and per-field ``check`` functions come
  from ``field(...)``, whole-record rules from ``_check`` (once every field is valid). Every bad
  field is reported; unknown or missing keys are reported alone, before any value is looked at.
- ``to_dict(json=True)`` is the JSON-ready form (paths as strings, secrets masked).

Field types: ``str``, ``int``, ``float``, ``bool``, ``Path``, ``FilePath``, ``Secret``,
``Literal[...]``, ``list[X]``, ``tuple[X, Y]``, ``dict[str, X]``, ``X | None``, other records and
``Any``; another type is a ``TypeError`` the first time a record holding it is built.
"""

from __future__ import annotations

import dataclasses
import os
import types
import typing
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Annotated, Any, ClassVar, Literal, Self

_MISSING: Any = dataclasses.MISSING
_BAD = object()  # a value that failed its check; the problem is already recorded

Loc = tuple[str | int, ...]


@dataclasses.dataclass(frozen=True)
class Problem:
    """One thing wrong with the input: where (field path), what, and the value found."""

    loc: Loc
    msg: str
    input: Any = None

    @property
    def where(self) -> str:
        return ".".join(str(part) for part in self.loc)

    def under(self, prefix: Loc) -> Problem:
        return Problem((*prefix, *self.loc), self.msg, self.input)

    def line(self, *, with_input: bool = True) -> str:
        text = f"{self.where}: {self.msg}" if self.loc else self.msg
        if with_input and self.input is not None and not isinstance(self.input, Mapping | Record):
            text += f" (got {self.input!r})"
        return text


class SchemaError(ValueError):
    """A record's input is invalid; ``problems`` lists every finding, first one first."""

    def __init__(self, title: str, problems: list[Problem]) -> None:
        self.title = title
        self.problems = list(problems)
        lines = [p.line() for p in self.problems]
        if len(lines) == 1:
            text = f"invalid {title}: {lines[0]}"
        else:
            text = f"{len(lines)} problems in {title}:\n" + "\n".join(f"  {ln}" for ln in lines)
        super().__init__(text)

    def under(self, prefix: Loc) -> list[Problem]:
        return [p.under(prefix) for p in self.problems]


class Secret:
    """A string kept out of reprs, logs and dumped settings (tokens, passwords)."""

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        self._value = value

    def get_secret_value(self) -> str:
        return self._value

    def __repr__(self) -> str:
        return "Secret('**********')"

    def __str__(self) -> str:
        return "**********"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Secret) and other._value == self._value

    def __hash__(self) -> int:
        return hash(self._value)


class _MustBeFile:
    """``Annotated`` marker: the path must name an existing file."""


#: A path that must name an existing file when the record is built.
FilePath = Annotated[Path, _MustBeFile()]


def field(
    default: Any = _MISSING,
    *,
    default_factory: Callable[[], Any] = _MISSING,
    description: str = "",
    ge: float | None = None,
    gt: float | None = None,
    le: float | None = None,
    min_length: int | None = None,
    check: Callable[[Any], Any] | None = None,
) -> Any:
    """A record field: its default, description, constraints and optional ``check`` (a function
    that returns the value or raises ``ValueError`` with a message)."""
    meta = {"description": description, "ge": ge, "gt": gt, "le": le, "min_length": min_length}
    meta["check"] = check
    return dataclasses.field(default=default, default_factory=default_factory, metadata=meta)


def description(cls: type[Record], name: str) -> str:
    """The description of ``cls``'s field ``name`` (documentation and generated tables)."""
    return str(next(f for f in dataclasses.fields(cls) if f.name == name).metadata["description"])


_HINTS: dict[type, dict[str, Any]] = {}


def field_types(cls: type) -> dict[str, Any]:
    """The resolved annotation of each of ``cls``'s fields (cached: resolving is the slow part)."""
    hints = _HINTS.get(cls)
    if hints is None:
        every = typing.get_type_hints(cls, include_extras=True)
        hints = _HINTS[cls] = {f.name: every[f.name] for f in dataclasses.fields(cls)}
    return hints


class Record:
    """Base of every record; subclasses are ``@dataclasses.dataclass(kw_only=True)``.

    ``unknown_keys`` says what ``from_dict`` does with keys that name no field: ``"forbid"``
    (the default) refuses them, ``"ignore"`` drops them.
    """

    unknown_keys: ClassVar[Literal["forbid", "ignore"]] = "forbid"

    def __post_init__(self) -> None:
        problems: list[Problem] = []
        hints = field_types(type(self))
        for f in dataclasses.fields(self):  # type: ignore[arg-type]
            loc: Loc = (f.name,)
            value = _convert(getattr(self, f.name), hints[f.name], loc, problems)
            if value is not _BAD:
                value = _constrain(value, f.metadata, loc, problems)
            if value is not _BAD:
                object.__setattr__(self, f.name, value)
        if not problems:
            try:
                self._check()
            except SchemaError as exc:
                problems.extend(exc.problems)
            except ValueError as exc:
                problems.append(Problem((), str(exc)))
        if problems:
            raise SchemaError(type(self).__name__, problems)

    def _check(self) -> None:
        """Rules over several fields, once each field is valid; raise ``ValueError``."""

    @classmethod
    def _before(cls, data: Mapping[str, Any]) -> None:
        """Checks on the raw mapping before any field (raise ``ValueError``)."""

    @classmethod
    def from_dict(cls, data: Any) -> Self:
        """A record from plain data; ``SchemaError`` names every problem."""
        return _build(cls, data)

    def to_dict(self, *, json: bool = False, exclude_none: bool = False) -> dict[str, Any]:
        """Field values as plain data; ``json=True`` makes it JSON-ready."""
        out: dict[str, Any] = {}
        for f in dataclasses.fields(self):  # type: ignore[arg-type]
            value = getattr(self, f.name)
            if not (exclude_none and value is None):
                out[f.name] = _dump(value, json, exclude_none)
        return out


def _build(cls: type[Any], data: Any) -> Any:
    if isinstance(data, cls):
        return data
    if not isinstance(data, Mapping):
        msg = f"Input should be a valid dictionary or instance of {cls.__name__}"
        raise SchemaError(cls.__name__, [Problem((), msg, data)])
    try:
        cls._before(data)
    except ValueError as exc:
        raise SchemaError(cls.__name__, [Problem((), str(exc))]) from None
    fields = [f for f in dataclasses.fields(cls) if f.init]
    names = {f.name for f in fields}
    problems: list[Problem] = []
    if cls.unknown_keys == "forbid":
        problems += [
            Problem((k,), "Extra inputs are not permitted", v)
            for k, v in data.items()
            if k not in names
        ]
    problems += [
        Problem((f.name,), "Field required")
        for f in fields
        if f.name not in data and f.default is _MISSING and f.default_factory is _MISSING
    ]
    if problems:
        raise SchemaError(cls.__name__, problems)
    return cls(**{k: v for k, v in data.items() if k in names})


def _dump(value: Any, json: bool, exclude_none: bool) -> Any:
    if isinstance(value, Record):
        return value.to_dict(json=json, exclude_none=exclude_none)
    if isinstance(value, dict):
        return {k: _dump(v, json, exclude_none) for k, v in value.items()}
    if isinstance(value, list | tuple):
        items = [_dump(v, json, exclude_none) for v in value]
        return items if json or isinstance(value, list) else tuple(items)
    if json and isinstance(value, Path):
        return str(value)
    if json and isinstance(value, Secret):
        return str(value)
    return value


_TRUE = {"1", "on", "t", "true", "y", "yes"}
_FALSE = {"0", "off", "f", "false", "n", "no"}


def _choices(values: tuple[Any, ...]) -> str:
    shown = [repr(v) for v in values]
    return shown[0] if len(shown) == 1 else ", ".join(shown[:-1]) + " or " + shown[-1]


def _convert(value: Any, tp: Any, loc: Loc, out: list[Problem]) -> Any:
    """``value`` as ``tp``, or ``_BAD`` with the problem appended to ``out``."""

    def bad(msg: str) -> Any:
        out.append(Problem(loc, msg, value))
        return _BAD

    origin = typing.get_origin(tp)
    if origin is Annotated:
        base, *marks = typing.get_args(tp)
        converted = _convert(value, base, loc, out)
        must_be_file = any(isinstance(m, _MustBeFile) for m in marks)
        if converted is not _BAD and must_be_file and not Path(converted).is_file():
            return bad("Path does not point to a file")
        return converted
    if tp is Any or tp is object:
        return value
    if origin in (typing.Union, types.UnionType):
        members = [a for a in typing.get_args(tp) if a is not type(None)]
        if value is None and len(members) < len(typing.get_args(tp)):
            return None
        if len(members) != 1:
            raise TypeError(f"records support X | None unions only, not {tp!r}")
        return _convert(value, members[0], loc, out)
    if tp is type(None):
        return None if value is None else bad("Input should be None")
    if origin is Literal:
        allowed = typing.get_args(tp)
        if any(value == a and type(value) is type(a) for a in allowed):
            return value
        return bad(f"Input should be {_choices(allowed)}")
    if origin is list:
        if not isinstance(value, list | tuple):
            return bad("Input should be a valid list")
        (item,) = typing.get_args(tp)
        items = [_convert(v, item, (*loc, i), out) for i, v in enumerate(value)]
        return _BAD if any(v is _BAD for v in items) else items
    if origin is tuple:
        kinds = typing.get_args(tp)
        if not isinstance(value, list | tuple) or len(value) != len(kinds):
            return bad(f"Input should be a list of {len(kinds)} items")
        pairs = enumerate(zip(value, kinds, strict=True))
        items = [_convert(v, k, (*loc, i), out) for i, (v, k) in pairs]
        return _BAD if any(v is _BAD for v in items) else tuple(items)
    if origin is dict:
        if not isinstance(value, Mapping):
            return bad("Input should be a valid dictionary")
        key_type, item = typing.get_args(tp)
        result = {}
        for k, v in value.items():
            key = _convert(k, key_type, (*loc, k), out)
            result[key] = _convert(v, item, (*loc, k), out)
        return _BAD if any(v is _BAD for v in (*result, *result.values())) else result
    if isinstance(tp, type) and issubclass(tp, Record):
        try:
            return _build(tp, value)
        except SchemaError as exc:
            out.extend(exc.under(loc))
            return _BAD
    return _scalar(value, tp, bad)


def _scalar(value: Any, tp: Any, bad: Callable[[str], Any]) -> Any:
    if tp is str:
        return value if isinstance(value, str) else bad("Input should be a valid string")
    if tp is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, int) and value in (0, 1):
            return bool(value)
        if isinstance(value, str) and value.strip().lower() in _TRUE | _FALSE:
            return value.strip().lower() in _TRUE
        return bad("Input should be a valid boolean")
    if tp is int:
        if isinstance(value, bool):
            return bad("Input should be a valid integer")
        if isinstance(value, int):
            return value
        if isinstance(value, float):
            if value.is_integer():
                return int(value)
            return bad("Input should be a valid integer, got a number with a fractional part")
        if isinstance(value, str):
            try:
                return int(value.strip())
            except ValueError:
                return bad("Input should be a valid integer, unable to parse string as an integer")
        return bad("Input should be a valid integer")
    if tp is float:
        if isinstance(value, int | float) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):
            try:
                return float(value.strip())
            except ValueError:
                return bad("Input should be a valid number, unable to parse string as a number")
        return bad("Input should be a valid number")
    if tp is Path:
        if isinstance(value, str | os.PathLike):
            return Path(value)
        return bad("Input should be a valid path")
    if tp is Secret:
        if isinstance(value, Secret):
            return value
        return Secret(value) if isinstance(value, str) else bad("Input should be a valid string")
    raise TypeError(f"records do not support the type {tp!r}")


def _constrain(value: Any, meta: Mapping[str, Any], loc: Loc, out: list[Problem]) -> Any:
    def bad(msg: str) -> Any:
        out.append(Problem(loc, msg, value))
        return _BAD

    if value is None:
        return value
    if meta.get("ge") is not None and value < meta["ge"]:
        return bad(f"Input should be greater than or equal to {meta['ge']}")
    if meta.get("gt") is not None and value <= meta["gt"]:
        return bad(f"Input should be greater than {meta['gt']}")
    if meta.get("le") is not None and value > meta["le"]:
        return bad(f"Input should be less than or equal to {meta['le']}")
    least = meta.get("min_length")
    if least is not None and len(value) < least:
        if isinstance(value, str):
            return bad(f"String should have at least {least} character{'s' * (least != 1)}")
        return bad(f"List should have at least {least} item{'s' * (least != 1)} after validation")
    check = meta.get("check")
    if check is not None:
        try:
            return check(value)
        except ValueError as exc:
            return bad(str(exc))
    return value
