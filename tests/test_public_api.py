"""The public API a lab imports: each module's `__all__` names what exists, documented.

`__all__` is the contract (docs/extending.md, the package docstring): a name in it must be
importable from that module, and every class and function in it says what it is for.
"""

from __future__ import annotations

import importlib
import inspect

import pytest

PUBLIC = [
    "enrgdaq_core.alert_wire",
    "enrgdaq_core.atomic",
    "enrgdaq_core.backoff",
    "enrgdaq_core.broker",
    "enrgdaq_core.broker_client",
    "enrgdaq_core.channels",
    "enrgdaq_core.config",
    "enrgdaq_core.envelope",
    "enrgdaq_core.jobs",
    "enrgdaq_core.jobs.base",
    "enrgdaq_core.jobs.runtime",
    "enrgdaq_core.monitor",
    "enrgdaq_core.replay",
    "enrgdaq_core.reqrep",
    "enrgdaq_core.runfile",
    "enrgdaq_core.signals",
    "enrgdaq_core.stats",
    "enrgdaq_core.stats_history",
    "enrgdaq_core.store_config",
    "enrgdaq_core.stores",
    "enrgdaq_core.stores.base",
    "enrgdaq_core.stores.memory",
    "enrgdaq_core.stores.paths",
    "enrgdaq_core.stores.runner",
    "enrgdaq_core.stream",
    "enrgdaq_core.tables",
    "enrgdaq_core.tap",
    "enrgdaq_core.timefmt",
    "enrgdaq_core.transport",
    "enrgdaq_core.watch",
]


@pytest.mark.parametrize("name", PUBLIC)
def test_every_name_in_all_exists_once(name: str) -> None:
    module = importlib.import_module(name)
    names = module.__all__
    assert len(names) == len(set(names)), f"{name}.__all__ lists a name twice"
    missing = [n for n in names if not hasattr(module, n)]
    assert not missing, f"{name}.__all__ names what the module lacks: {missing}"
    private = [n for n in names if n.startswith("_")]
    assert not private, f"{name}.__all__ exports private names: {private}"


@pytest.mark.parametrize("name", PUBLIC)
def test_public_classes_and_functions_are_documented(name: str) -> None:
    module = importlib.import_module(name)
    assert (module.__doc__ or "").strip(), f"{name} has no docstring"
    undocumented = []
    for attr in module.__all__:
        obj = getattr(module, attr)
        if (inspect.isclass(obj) or inspect.isfunction(obj)) and not (obj.__doc__ or "").strip():
            undocumented.append(attr)
    assert not undocumented, f"{name}: no docstring on {undocumented}"


@pytest.mark.parametrize("name", PUBLIC)
def test_what_all_exports_is_defined_there(name: str) -> None:
    """One import path per name: a module exports what it defines, not what it imported
    (a re-export would make two places to import the same thing from)."""
    module = importlib.import_module(name)
    elsewhere = []
    for attr in module.__all__:
        obj = getattr(module, attr)
        home = getattr(obj, "__module__", None)
        if (inspect.isclass(obj) or inspect.isfunction(obj)) and home != name:
            elsewhere.append(f"{attr} (from {home})")
    assert not elsewhere, f"{name}.__all__ re-exports {elsewhere}"


def test_the_package_re_exports_nothing() -> None:
    import enrgdaq_core

    public = [
        n
        for n, v in vars(enrgdaq_core).items()
        if not n.startswith("_") and not inspect.ismodule(v)
    ]
    assert public == [], f"enrgdaq_core re-exports {public}: import from the defining module"
    assert "enrgdaq_core.jobs.base" in (enrgdaq_core.__doc__ or "")


def test_what_a_lab_imports_works_and_is_documented() -> None:
    from enrgdaq_core.envelope import Envelope
    from enrgdaq_core.jobs.base import Job, JobConfig
    from enrgdaq_core.transport import Publisher, Subscriber

    for obj in (Job, JobConfig, Envelope, Publisher, Subscriber):
        assert obj.__doc__ and len(obj.__doc__.strip()) > 40, obj
    for method in (Job.start, Job.step, Job.stop, Subscriber.recv, Publisher.send):
        assert method.__doc__, method
    # the parameters a lab passes are named in the docstrings
    for obj, params in (
        (Job, ("config", "name", "type_name", "aliases", "description", "Config")),
        (Subscriber, ("address", "topics", "mode", "hwm", "keys", "ctx")),
        (Publisher, ("address", "hwm", "keys", "ctx")),
        (JobConfig, ("daq_job_type", "interval_seconds", "store_config", "restart")),
    ):
        missing = [p for p in params if f"{p}" not in obj.__doc__]
        assert not missing, f"{obj.__name__} docstring does not name {missing}"
    assert "undecodable" in Subscriber.recv.__doc__ and "timeout" in Subscriber.recv.__doc__
