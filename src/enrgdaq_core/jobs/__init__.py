"""Job types: built-ins, the seed's names as aliases, custom classes by import path or plugin.

`daq_job_type` may be a built-in name (`sensor`), a seed alias (`DAQJobTest`), an import path
(`my_pkg.jobs:MyJob`), or a name registered by a package under the `enrgdaq.jobs` entry points.
"""

from __future__ import annotations

import difflib
import functools
import importlib
from importlib.metadata import entry_points
from pathlib import Path
from typing import Any

from enrgdaq_core.config import (
    ConfigError,
    ConfigIssue,
    convert,
    read_toml,
    wrong_type_message,
)
from enrgdaq_core.jobs.base import Job, JobConfig

# The built-in job classes, in the order `daq job list` shows them. Their names, and the seed's
# names they answer to, are the classes' own `type_name` and `aliases`; the classes are
# imported on first use, so importing this package (as `daq --help` does) stays cheap.
_BUILTIN_CLASSES = (
    "enrgdaq_core.jobs.sensor:SensorJob",
    "enrgdaq_core.jobs.digitizer:DigitizerJob",
    "enrgdaq_core.jobs.metrics:MetricsJob",
    "enrgdaq_core.jobs.test_job:TestJob",
    "enrgdaq_core.jobs.alerts:AlertsJob",
)


@functools.cache
def _builtins() -> dict[str, type[Job]]:
    """type_name -> class of every built-in job."""
    classes = [_load(path) for path in _BUILTIN_CLASSES]
    return {cls.type_name: cls for cls in classes}


@functools.cache
def _aliases() -> dict[str, str]:
    """A seed name (`DAQJobTest`) -> the built-in type_name it stands for."""
    return {alias: cls.type_name for cls in _builtins().values() for alias in cls.aliases}


def _load(path: str) -> type[Job]:
    module, _, attr = path.partition(":")
    obj: Any = importlib.import_module(module)
    for part in attr.split("."):
        obj = getattr(obj, part)
    if not (isinstance(obj, type) and issubclass(obj, Job)):
        raise TypeError(f"{path} is not a subclass of enrgdaq_core.jobs.base.Job")
    return obj


def _plugins() -> dict[str, Any]:
    return {ep.name: ep for ep in entry_points(group="enrgdaq.jobs")}


def names() -> list[str]:
    """Every job type name this installation knows (built-ins first, then plugins)."""
    builtins = _builtins()
    return list(builtins) + sorted(n for n in _plugins() if n not in builtins)


def resolve(type_name: str) -> type[Job]:
    """The Job class for a `daq_job_type` value; LookupError says what is known."""
    name = _aliases().get(type_name, type_name)
    builtin = _builtins().get(name)
    if builtin is not None:
        return builtin
    plugin = _plugins().get(name)
    if plugin is not None:
        cls = plugin.load()
        if not (isinstance(cls, type) and issubclass(cls, Job)):
            raise LookupError(f"entry point {name!r} does not name a Job subclass")
        return cls
    if ":" in name:
        try:
            return _load(name)
        except (ImportError, AttributeError) as exc:
            raise LookupError(f"cannot import {name!r}: {exc}") from None
        except TypeError as exc:
            raise LookupError(str(exc)) from None
    choices = names() + sorted(_aliases())
    close = difflib.get_close_matches(type_name, choices, n=1, cutoff=0.75)
    hint = f"did you mean {close[0]!r}? " if close else ""
    raise LookupError(
        f"unknown job type {type_name!r} ({hint}known: {', '.join(choices)}; or module:Class)"
    )


def load_job(path: str | Path, *, name: str | None = None) -> Job:
    """Read, validate and instantiate the job of one TOML file (ConfigError on any problem)."""
    path = Path(path)
    data = read_toml(path)
    type_name = data.get("daq_job_type")
    if type_name is None:
        raise ConfigError(
            [ConfigIssue(str(path), "daq_job_type", "missing required key (a job type name)")]
        )
    if not isinstance(type_name, str):
        raise ConfigError(
            [ConfigIssue(str(path), "daq_job_type", wrong_type_message("a string", type_name))]
        )
    try:
        cls = resolve(type_name)
    except LookupError as exc:
        raise ConfigError([ConfigIssue(str(path), "daq_job_type", str(exc))]) from None
    config = convert(data, cls.Config, path)
    return cls(config, name or config.name or path.stem)


__all__ = ["Job", "JobConfig", "load_job", "names", "resolve"]
