"""Job types: built-ins, the seed's names as aliases, custom classes by import path or plugin.

`daq_job_type` may be a built-in name (`sensor`), a seed alias (`DAQJobTest`), an import path
(`my_pkg.jobs:MyJob`), or a name registered by a package under the `enrgdaq.jobs` entry points.

Resolving an import path or an entry point imports a module that is not the project's, and
importing runs its code; `load_job(..., import_custom=False)` (`daq up --check`) leaves it
unimported and checks only the keys every job has (docs/security.md).
"""

from __future__ import annotations

import difflib
import functools
import importlib
from importlib.metadata import entry_points
from pathlib import Path
from typing import Any

import msgspec

from enrgdaq_core.config import (
    ConfigError,
    ConfigIssue,
    convert,
    read_toml,
    wrong_type_message,
)
from enrgdaq_core.jobs.base import Job, JobConfig
from enrgdaq_core.names import BadName, check_name, check_tag

# The built-in job types, in the order `daq job list` shows them: type_name -> class. A name
# here must be its class's own `type_name` (tests check it); the seed's names a type answers
# to are the class's `aliases`. Keyed by name so that resolving one type imports only its
# module (`daq job run` starts fast, `daq --help` imports none).
_BUILTINS = {
    "sensor": "enrgdaq_core.jobs.sensor:SensorJob",
    "digitizer": "enrgdaq_core.jobs.digitizer:DigitizerJob",
    "metrics": "enrgdaq_core.jobs.metrics:MetricsJob",
    "test": "enrgdaq_core.jobs.test_job:TestJob",
    "alerts": "enrgdaq_core.jobs.alerts:AlertsJob",
}


@functools.cache
def _aliases() -> dict[str, str]:
    """A seed name (`DAQJobTest`) -> the built-in type it stands for, from the classes' own
    `aliases` (imports every built-in job module: only for a name that is not a built-in)."""
    return {alias: name for name in _BUILTINS for alias in _load(_BUILTINS[name]).aliases}


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
    return list(_BUILTINS) + sorted(n for n in _plugins() if n not in _BUILTINS)


def resolve(type_name: str) -> type[Job]:
    """The Job class for a `daq_job_type` value; LookupError says what is known."""
    name = type_name
    if name not in _BUILTINS and ":" not in name:
        name = _aliases().get(name, name)
    if name in _BUILTINS:
        return _load(_BUILTINS[name])
    plugin = _plugins().get(name)
    if plugin is not None:
        try:
            cls = plugin.load()
        except (ImportError, AttributeError) as exc:
            raise LookupError(f"entry point {name!r} cannot load: {exc}") from None
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


class UncheckedJob(Job):
    """Stands for a job whose type was not imported (`daq up --check` without
    `--import-jobs`): its config holds the keys every job has (name, interval, store_config,
    restart), its own keys were not checked, and it cannot run."""

    type_name = "(not imported)"


def is_custom(type_name: str) -> bool:
    """Does resolving this type import a module that is not the project's (an import path,
    an entry point)? Answered from names and package metadata only, nothing imported."""
    if type_name in _BUILTINS:
        return False
    return ":" in type_name or type_name in _plugins()


def load_job(
    path: str | Path,
    *,
    name: str | None = None,
    data: dict[str, Any] | None = None,
    import_custom: bool = True,
) -> Job:
    """Read, validate and instantiate the job of one TOML file (ConfigError on any problem).

    `data`: the file's content when the caller has read it already (`daq up` reads each
    file once); `path` then only names it in errors and gives the default name.
    `import_custom=False`: a custom type (`is_custom`) is not imported (its module's code does
    not run); the job is then an `UncheckedJob` with only the common keys checked.
    """
    path = Path(path)
    if data is None:
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
    if not import_custom and is_custom(type_name):
        # the keys every job has, checked as strictly as ever; the type's own left alone
        keys = {f.encode_name for f in msgspec.structs.fields(JobConfig)}
        common = convert({k: v for k, v in data.items() if k in keys}, JobConfig, path)
        return UncheckedJob(common, _source_name(path, name, common))
    try:
        cls = resolve(type_name)
    except LookupError as exc:
        raise ConfigError([ConfigIssue(str(path), "daq_job_type", str(exc))]) from None
    config = convert(data, cls.Config, path)
    return cls(config, _source_name(path, name, config))


def _source_name(path: Path, name: str | None, config: Any) -> str:
    """The job's source name (--name, `name`, else the file's stem), and its tag, checked
    against the names rule (enrgdaq_core.names): both end up in topics and file names."""
    issues: list[ConfigIssue] = []
    chosen = name or config.name or path.stem
    where = "--name" if name else ("name" if config.name else "")
    try:
        check_name("source", chosen)
    except BadName as exc:
        hint = "" if where else " (the file's name gives it; set `name`)"
        issues.append(ConfigIssue(str(path), where, f"{exc}{hint}"))
    try:
        check_tag(config.tag)
    except BadName as exc:
        issues.append(ConfigIssue(str(path), "tag", str(exc)))
    if issues:
        raise ConfigError(issues)
    return chosen


__all__ = ["UncheckedJob", "is_custom", "load_job", "names", "resolve"]
