"""The registries: one table of store backends that every list derives from, the in-process
memory store, and the job types named by their own classes."""

from __future__ import annotations

import io
import re
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest

from _store_data import expected_columns, sample_table, stream_bytes
from conftest import Procs, write
from enrgdaq_core.config import ConfigError
from enrgdaq_core.envelope import Envelope, Source
from enrgdaq_core.jobs import _BUILTINS, _load, names, resolve
from enrgdaq_core.jobs.base import Job
from enrgdaq_core.store_config import BACKEND_CONFIGS, BACKENDS, StoreConfig
from enrgdaq_core.stores import (
    SEED_STORE_TYPES,
    backend_class,
    process_names,
    process_refusal,
)
from enrgdaq_core.stores import names as store_names
from enrgdaq_core.stores.memory import MemoryBackend, collect
from enrgdaq_core.stores.options import build_backend
from enrgdaq_core.stores.runner import StoreRunner
from enrgdaq_core.stream import StreamReader
from enrgdaq_core.supervisor.plan import load_plan

ROOT = Path(__file__).resolve().parent.parent

# -- store backends: one table -------------------------------------------------------------


def test_backend_names_are_the_same_everywhere() -> None:
    from enrgdaq_cli import store as cli_store

    every = [b.name for b in BACKENDS]
    assert store_names() == every
    assert list(StoreConfig.__struct_fields__) == every
    assert list(BACKEND_CONFIGS) == every
    assert [m.value for m in cli_store.BackendName] == every
    assert process_names() == [b.name for b in BACKENDS if not b.in_process]
    assert set(SEED_STORE_TYPES.values()) <= set(process_names())
    assert len(set(SEED_STORE_TYPES.values())) == len(SEED_STORE_TYPES)
    for spec in BACKENDS:
        cls = backend_class(spec.name)
        assert cls.name == spec.name, f"{cls.__name__}.name is not {spec.name!r}"
        assert cls.Settings is spec.settings is BACKEND_CONFIGS[spec.name]
    # the CLI's help says the same, from the same table
    listed = ", ".join(process_names()[:-1]) + " or " + process_names()[-1]
    assert f"Store data into {listed}." == cli_store.SHORT_HELP
    assert listed in " ".join(cli_store.HELP.split())
    for name in store_names():
        assert name in cli_store.HELP


def test_docs_list_every_backend() -> None:
    config_doc = " ".join((ROOT / "docs" / "configuration.md").read_text().split())
    sentence = re.search(r"Backends: ((?:`\w+`(?:, )?)+)\.", config_doc)
    assert sentence is not None
    assert re.findall(r"`(\w+)`", sentence.group(1)) == store_names()
    title = (ROOT / "docs" / "stores.md").read_text().splitlines()[0]
    assert title == f"# Stores: `daq store {' | '.join(process_names())}`"
    arch = (ROOT / "docs" / "architecture.md").read_text()
    assert f"one store ({', '.join(process_names())})" in arch
    ops = (ROOT / "docs" / "operations.md").read_text()
    seeds = [t.removeprefix("DAQJobStore") for t in SEED_STORE_TYPES]
    listed = f'`daq_job_type = "DAQJobStore{seeds[0]}"` (or ' + ", ".join(
        f"`{t}`" for t in seeds[1:]
    )
    assert listed in ops


def test_store_config_is_the_struct_of_the_table() -> None:
    import msgspec

    cfg = msgspec.convert({"csv": {"add_date": True}, "memory": {}}, StoreConfig)
    assert cfg.backends() == ["csv", "memory"]
    assert cfg.for_header() == {"csv": {"add_date": True}, "memory": {}}
    assert msgspec.to_builtins(StoreConfig()) == {}
    with pytest.raises(msgspec.ValidationError, match="unknown field `parquet`"):
        msgspec.convert({"parquet": {}}, StoreConfig)


def test_in_process_backends_are_refused_by_store_processes(tmp_path: Path) -> None:
    in_process = [b.name for b in BACKENDS if b.in_process]
    assert in_process == ["memory"]
    refusal = process_refusal("memory")
    assert refusal is not None and "tests and notebooks" in refusal
    assert "enrgdaq_core.stores.memory" in refusal
    assert all(process_refusal(n) is None for n in process_names())
    assert process_refusal("parquet") == (
        "unknown store backend 'parquet' (known: " + ", ".join(store_names()) + ")"
    )
    with pytest.raises(ConfigError) as info:
        build_backend("memory")
    assert str(info.value) == f"daq store: BACKEND: {refusal}"
    # daq up: a source that names the memory store is a config error, with the same line
    write(tmp_path / "s.toml", 'daq_job_type = "sensor"\n[store_config.memory]\n')
    with pytest.raises(ConfigError) as info:
        load_plan(tmp_path)
    assert [str(i) for i in info.value.issues] == [
        f"{tmp_path / 's.toml'}: store_config.memory: {refusal}"
    ]


def test_daq_store_memory_says_why_in_one_line(procs: Procs) -> None:
    p = procs.run("store", "memory", "-i", "-", input=b"")
    assert p.returncode == 2
    assert (
        p.stderr.decode() == f"daq: config error: daq store: BACKEND: {process_refusal('memory')}\n"
    )


# -- the memory store ------------------------------------------------------------------------


def _through_a_pipe(envs: list[Envelope]) -> list[Envelope]:
    """The envelopes as a store reads them from a pipe: encoded, framed, decoded again."""
    return [r.envelope for r in StreamReader(io.BytesIO(stream_bytes(envs)))]


def _assert_rows(table: pa.Table, start: int, rows: int) -> None:
    want = expected_columns(start, rows)
    assert table.num_rows == rows
    for name in ("i64", "i16", "u32", "f32", "flag", "label"):
        np.testing.assert_array_equal(np.asarray(table[name].to_pylist()), np.asarray(want[name]))
    np.testing.assert_array_equal(table["f64"].to_numpy(), want["f64"])  # nan == nan here
    assert table["ts"].cast(pa.int64()).to_pylist() == want["ts"].tolist()
    np.testing.assert_array_equal(np.array(table["wave"].to_pylist()), want["wave"])
    for got, exp in zip(table["vwave"].to_pylist(), want["vwave"], strict=True):
        np.testing.assert_array_equal(np.asarray(got, np.float32), exp)


def test_memory_store_keeps_every_value_per_source() -> None:
    a = Source("a", store={"memory": {}})
    b = Source("b")  # an in-process store takes what it is given, named or not
    envs = []
    for start in range(0, 300, 30):
        envs += [a.table(sample_table(start, 30)), b.table(sample_table(1000 + start, 30))]
    envs += [a.end_of_stream(), b.end_of_stream()]
    be = collect(_through_a_pipe(envs))
    assert be.sources() == ["a", "b"]
    _assert_rows(be.table("a"), 0, 300)
    _assert_rows(be.table("b"), 1000, 300)
    assert be.table("a").schema.equals(sample_table(0, 1).schema)
    with pytest.raises(KeyError, match="no rows from source 'c'"):
        be.table("c")


def test_memory_store_with_the_runner_in_process() -> None:
    """Each handled message is readable at once; flush_rows batches; sequence gaps count."""
    be = MemoryBackend()
    runner = StoreRunner(be, name="store-memory")
    src = Source("s")
    runner.handle(src.table(sample_table(0, 5)))
    _assert_rows(be.table("s"), 0, 5)
    src.seq += 2  # two messages this store never sees
    runner.handle(src.table(sample_table(5, 5)))
    _assert_rows(be.table("s"), 0, 10)
    assert runner.meter.sequences.lost == {"s": 2}
    runner.report(final=True)
    assert runner.rows_by_source == {"s": 10}

    batched = MemoryBackend()
    runner = StoreRunner(batched, name="store-memory")
    src = Source("s", store={"memory": {"flush_rows": 10}})
    for i in range(15):
        runner.handle(src.table(sample_table(i, 1)))
    assert batched.table("s").num_rows == 10  # five rows wait for the next batch
    runner.handle(src.end_of_stream())
    _assert_rows(batched.table("s"), 0, 15)


def test_memory_store_versions_runs_and_kinds() -> None:
    src = Source("s")
    envs = [
        src.table(pa.table({"x": [1, 2]})),
        src.table(pa.table({"x": [3], "y": ["new"]})),  # a schema change: a new version
        src.raw(b"not a table"),  # counted as wrong kind, never stored
    ]
    src.run = 2
    envs += [src.table(pa.table({"x": [4], "y": ["run2"]})), src.end_of_stream()]
    be = collect(_through_a_pipe(envs))
    versions = be.tables("s")
    assert [v.column_names for v in versions] == [["x"], ["x", "y"]]
    assert versions[1].to_pydict() == {"x": [3, 4], "y": ["new", "run2"]}  # runs joined
    assert be.table("s").to_pydict() == {"x": [1, 2, 3, 4], "y": [None, None, "new", "run2"]}
    be.clear()
    assert be.sources() == []


def test_memory_store_read_while_a_runner_thread_writes() -> None:
    from enrgdaq_core.signals import StopFlag

    class Feed:
        damage = None

        def __init__(self) -> None:
            self.src = Source("s")
            self.sent = 0

        def recv(self, timeout: float | None = None) -> Envelope | None:
            from enrgdaq_core.channels import EndOfInput

            if self.sent == 200:
                raise EndOfInput
            self.sent += 1
            return self.src.table(pa.table({"i": [self.sent]}))

        def close(self) -> None:
            pass

    be = MemoryBackend()
    t = threading.Thread(target=StoreRunner(be, name="m").run, args=(Feed(), StopFlag()))
    t.start()
    seen = []
    while t.is_alive():
        if "s" in be.sources():
            seen.append(be.table("s").num_rows)
        t.join(0.001)
    seen.append(be.table("s").num_rows)
    assert seen == sorted(seen) and seen[-1] == 200
    assert be.table("s")["i"].to_pylist() == list(range(1, 201))


# -- job types -------------------------------------------------------------------------------


def test_job_types_are_named_by_their_classes() -> None:
    """The table of built-in modules is keyed by the classes' own type_name; aliases come
    from the classes."""
    classes = [_load(path) for path in _BUILTINS.values()]
    type_names = [cls.type_name for cls in classes]
    assert type_names == list(_BUILTINS), "a key of _BUILTINS is not its class's type_name"
    assert names()[: len(classes)] == type_names
    assert type_names == ["sensor", "digitizer", "metrics", "test", "alerts"]
    aliases = [a for cls in classes for a in cls.aliases]
    assert sorted(aliases) == ["DAQJobPCMetrics", "DAQJobTest", "pc_metrics"]
    assert not set(aliases) & set(type_names)
    assert not any(":" in n for n in aliases + type_names)  # never mistaken for an import path
    for cls in classes:
        assert issubclass(cls, Job) and resolve(cls.type_name) is cls
        for alias in cls.aliases:
            assert resolve(alias) is cls
    with pytest.raises(LookupError, match="did you mean 'DAQJobTest'"):
        resolve("DAQJobTst")


def test_job_registry_imports_only_the_module_asked_for() -> None:
    code = (
        "import sys, enrgdaq_core.jobs as j\n"
        "def loaded(): return sorted(m for m in sys.modules if m.startswith('enrgdaq_core.jobs.'))\n"
        "print(loaded()); j.names(); print(loaded()); j.resolve('sensor'); print(loaded())\n"
    )
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert p.returncode == 0, p.stderr
    base, sensor = "'enrgdaq_core.jobs.base'", "'enrgdaq_core.jobs.sensor'"
    assert p.stdout.splitlines() == [f"[{base}]", f"[{base}]", f"[{base}, {sensor}]"]
