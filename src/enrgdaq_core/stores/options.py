"""Building a backend from flags and store TOML files, through the one config loader."""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Any

from enrgdaq_core.config import ConfigError, ConfigIssue, convert, read_toml
from enrgdaq_core.stores import SEED_STORE_TYPES, backend_class, process_refusal
from enrgdaq_core.stores.base import Backend


def parse_assignments(items: list[str], origin: str = "-O") -> dict[str, Any]:
    """`key=value` pairs; values are TOML (`9`, `true`, `"x"`), bare words are strings."""
    out: dict[str, Any] = {}
    for item in items:
        key, sep, value = item.partition("=")
        key = key.strip()
        if not sep or not key:
            raise ConfigError([ConfigIssue(origin, item, "expected KEY=VALUE")])
        try:
            out[key] = tomllib.loads(f"v = {value}")["v"]
        except tomllib.TOMLDecodeError:
            out[key] = value
    return out


def build_backend(
    name: str,
    *,
    config_file: Path | None = None,
    config: dict[str, Any] | None = None,
    assignments: dict[str, Any] | None = None,
    flags: dict[str, Any] | None = None,
) -> tuple[Backend, dict[str, Any]]:
    """The backend of a store process with its options, and the per-source settings overrides
    from the flags. In-process backends (memory) are refused: build those directly.

    A key given with -O goes to the store options if the backend has it there, else to the
    per-source settings (`[store_config.<backend>]` keys); anything else is an error.
    `config` is the content of `config_file` when the caller has read it already.
    """
    refusal = process_refusal(name)  # unknown, or in-process only (memory)
    if refusal is not None:
        raise ConfigError([ConfigIssue("daq store", "BACKEND", refusal)])
    cls = backend_class(name)
    data: dict[str, Any] = {}
    origin = "command line"
    if config_file is not None:
        data = dict(config) if config is not None else read_toml(config_file)
        origin = str(config_file)
        seed = data.get("daq_job_type")
        if seed and SEED_STORE_TYPES.get(seed, name) != name:
            raise ConfigError(
                [ConfigIssue(origin, "daq_job_type", f"{seed!r} is not a {name} store")]
            )
    option_fields = set(cls.Options.__struct_fields__)
    setting_fields = set(cls.Settings.__struct_fields__)
    overrides: dict[str, Any] = {}
    issues: list[ConfigIssue] = []
    for key, value in (assignments or {}).items():
        if key in option_fields:
            data[key] = value
        elif key in setting_fields:
            overrides[key] = value
        else:
            known = ", ".join(sorted(option_fields | setting_fields))
            issues.append(
                ConfigIssue("-O", key, f"unknown key for {name} (expected one of: {known})")
            )
    for key, value in (flags or {}).items():
        if value is not None:
            data[key] = value
    if issues:
        raise ConfigError(issues)
    options = convert(data, cls.Options, origin)
    if overrides:
        convert(overrides, cls.Settings, "-O")  # the same checks as the sources' configs
    backend = cls(options)
    # check() may then refuse at start what the server cannot do (a missing Redis module)
    backend.overrides = dict(overrides)  # type: ignore[attr-defined]
    return backend, overrides
