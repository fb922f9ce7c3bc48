"""The one config loader: strict TOML for every command.

Errors name the file, the key and what was expected, and all of a file's errors are collected
before anything starts (the supervisor reports a whole directory at once).
"""

from __future__ import annotations

import difflib
import math
import tomllib
import typing
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import msgspec
import msgspec.inspect as mi

__all__ = [
    "ConfigError",
    "ConfigIssue",
    "check",
    "convert",
    "load",
    "read_toml",
    "to_toml_dict",
    "unknown_key_message",
    "validation_issue",
    "wrong_type_message",
]

_T = TypeVar("_T")


@dataclass(frozen=True, slots=True)
class ConfigIssue:
    """One problem in a config file: the file, the dotted key, and what was expected."""

    file: str
    key: str  # dotted path; "" for the file as a whole
    message: str

    def __str__(self) -> str:
        where = f"{self.file}: {self.key}: " if self.key else f"{self.file}: "
        return where + self.message


class ConfigError(Exception):
    """Every problem of a config (or of a whole directory), reported together."""

    def __init__(self, issues: list[ConfigIssue]) -> None:
        self.issues = issues
        super().__init__("\n".join(str(i) for i in issues))


def read_toml(path: str | Path) -> dict[str, Any]:
    """A TOML file as a dict; ConfigError naming the file if it is missing or invalid."""
    path = Path(path)
    try:
        with path.open("rb") as f:
            return tomllib.load(f)
    except FileNotFoundError:
        raise ConfigError([ConfigIssue(str(path), "", "file not found")]) from None
    except IsADirectoryError:
        raise ConfigError(
            [ConfigIssue(str(path), "", "is a directory, expected a TOML file")]
        ) from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError([ConfigIssue(str(path), "", f"invalid TOML: {exc}")]) from None


def _describe(t: mi.Type) -> str:
    match t:
        case mi.IntType():
            return "an integer" + _bounds(t)
        case mi.FloatType():
            return "a number" + _bounds(t)
        case mi.BoolType():
            return "true or false"
        case mi.StrType():
            return "a string"
        case mi.ListType() | mi.TupleType() | mi.VarTupleType() | mi.SetType():
            inner = getattr(t, "item_type", None)
            return "a list" + (f" of {_plural(_describe(inner))}" if inner is not None else "")
        case mi.DictType():
            return "a table"
        case mi.StructType() | mi.TypedDictType() | mi.DataclassType():
            return "a table"
        case mi.LiteralType():
            return "one of " + ", ".join(repr(v) for v in t.values)
        case mi.EnumType():
            return "one of " + ", ".join(repr(m.value) for m in t.cls)
        case mi.NoneType():
            return "nothing"
        case mi.UnionType():
            kinds = [_describe(x) for x in t.types if not isinstance(x, mi.NoneType)]
            return " or ".join(kinds)
        case mi.AnyType():
            return "any value"
    return str(t)


def _bounds(t: mi.IntType | mi.FloatType) -> str:
    bounds = ((">=", t.ge), (">", t.gt), ("<=", t.le), ("<", t.lt))
    shown = " and ".join(f"{op} {_number(v)}" for op, v in bounds if v is not None)
    return f" {shown}" if shown else ""


def _number(value: float) -> str:
    """`604800`, not `604800.0`; `0.5` as it is."""
    return str(int(value)) if float(value).is_integer() else repr(value)


def _within(value: float, t: mi.IntType | mi.FloatType) -> bool:
    return not (
        (t.ge is not None and value < t.ge)
        or (t.gt is not None and value <= t.gt)
        or (t.le is not None and value > t.le)
        or (t.lt is not None and value >= t.lt)
    )


def _plural(desc: str) -> str:
    for article in ("an ", "a "):
        if desc.startswith(article):
            word = desc[len(article) :]
            return word + "s" if not word.endswith("s") else word
    return desc


def _toml_kind(value: Any) -> str:
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int):
        return "an integer"
    if isinstance(value, float):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "a list"
    if isinstance(value, Mapping):
        return "a table"
    return type(value).__name__


def _show(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def wrong_type_message(expected: str, value: Any) -> str:
    """`expected a string, got an integer (3)`: the one wording for a value of the wrong type."""
    return f"expected {expected}, got {_toml_kind(value)} ({_show(value)})"


def unknown_key_message(key: str, known: list[str] | set[str]) -> str:
    """`unknown key, did you mean 'channels'? (expected one of: ...)` for a misspelt key."""
    close = difflib.get_close_matches(key, sorted(known), n=1, cutoff=0.75)
    hint = f", did you mean {close[0]!r}?" if close else ""
    return f"unknown key{hint} (expected one of: {', '.join(sorted(known))})"


def _check(value: Any, t: mi.Type, key: str, issues: list[tuple[str, str]]) -> None:
    def wrong() -> None:
        issues.append((key, wrong_type_message(_describe(t), value)))

    match t:
        case mi.AnyType():
            return
        case mi.BoolType():
            if not isinstance(value, bool):
                wrong()
        case mi.IntType() | mi.FloatType():
            number = int | float if isinstance(t, mi.FloatType) else int
            if isinstance(value, bool) or not isinstance(value, number):
                wrong()
            elif not math.isfinite(value):  # TOML's nan and inf: never a meaningful setting
                issues.append((key, f"expected a finite number{_bounds(t)}, got {value}"))
            elif not _within(value, t):
                issues.append((key, f"expected {_describe(t)}, got {value}"))
        case mi.StrType():
            if not isinstance(value, str):
                wrong()
            elif "\x00" in value:  # a NUL would end a topic, a path or a C string early
                issues.append((key, f"expected a string without NUL bytes, got {_show(value)}"))
        case mi.LiteralType():
            if value not in t.values:
                wrong()
        case mi.EnumType():
            if value not in {m.value for m in t.cls}:
                wrong()
        case mi.ListType() | mi.VarTupleType() | mi.SetType():
            if not isinstance(value, list):
                wrong()
            else:
                for i, item in enumerate(value):
                    _check(item, t.item_type, f"{key}[{i}]", issues)
        case mi.DictType():
            if not isinstance(value, Mapping):
                wrong()
            else:
                for k, v in value.items():
                    _check(v, t.value_type, f"{key}.{k}" if key else str(k), issues)
        case mi.StructType():
            if not isinstance(value, Mapping):
                wrong()
            else:
                _check_struct(value, t, key, issues)
        case mi.UnionType():
            if value is None and any(isinstance(x, mi.NoneType) for x in t.types):
                return
            candidates = [x for x in t.types if not isinstance(x, mi.NoneType)]
            best: list[tuple[str, str]] | None = None
            for candidate in candidates:
                sub: list[tuple[str, str]] = []
                _check(value, candidate, key, sub)
                if not sub:
                    return
                if best is None or (
                    isinstance(value, Mapping) and isinstance(candidate, mi.StructType)
                ):
                    best = sub
            if len(candidates) == 1 or isinstance(value, Mapping):
                issues.extend(best or [])
            else:
                wrong()
        case _:
            return


def _check_struct(
    value: Mapping[str, Any], t: mi.StructType, prefix: str, issues: list[tuple[str, str]]
) -> None:
    fields = {f.encode_name: f for f in t.fields}
    for k, v in value.items():
        key = f"{prefix}.{k}" if prefix else k
        field = fields.get(k)
        if field is None:
            issues.append((key, unknown_key_message(k, set(fields))))
            continue
        _check(v, field.type, key, issues)
    for name, field in fields.items():
        if field.required and name not in value:
            key = f"{prefix}.{name}" if prefix else name
            issues.append((key, f"missing required key ({_describe(field.type)})"))


def check(data: Mapping[str, Any], type_: type, file: str | Path) -> list[ConfigIssue]:
    """Every problem of `data` against the struct `type_`, in file order."""
    issues: list[tuple[str, str]] = []
    _check_struct(data, typing.cast(mi.StructType, mi.type_info(type_)), "", issues)
    return [ConfigIssue(str(file), k, m) for k, m in issues]


def convert(data: Mapping[str, Any], type_: type[_T], file: str | Path) -> _T:
    """`data` as a `type_`, or ConfigError with every problem found."""
    issues = check(data, type_, file)
    if issues:
        raise ConfigError(issues)
    try:
        return msgspec.convert(data, type_, strict=False)
    except msgspec.ValidationError as exc:  # a struct's own check (__post_init__), or the like
        raise ConfigError([validation_issue(exc, file)]) from None


def validation_issue(exc: msgspec.ValidationError, file: str | Path) -> ConfigIssue:
    """msgspec's `message - at `$.a.b[0]`` as an issue with the key `a.b[0]`."""
    text = str(exc)
    message, sep, where = text.rpartition(" - at `$")
    if not sep or not where.endswith("`"):
        return ConfigIssue(str(file), "", text)
    return ConfigIssue(str(file), where[:-1].lstrip("."), message)


def load(path: str | Path, type_: type[_T]) -> _T:
    """Read `path` and validate it as `type_` (ConfigError listing every problem)."""
    return convert(read_toml(path), type_, path)


def to_toml_dict(obj: msgspec.Struct) -> dict[str, Any]:
    """A struct as TOML-ready builtins (None values dropped: TOML has no null)."""

    def strip(v: Any) -> Any:
        if isinstance(v, dict):
            return {k: strip(x) for k, x in v.items() if x is not None}
        if isinstance(v, list):
            return [strip(x) for x in v]
        return v

    return strip(msgspec.to_builtins(obj))
