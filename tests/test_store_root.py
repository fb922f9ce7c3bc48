"""`daq store root` as a real process, read back with uproot: values, types, baskets, crashes."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import threading
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pytest
import uproot

from _store_data import (
    SAMPLES,
    SCHEMA,
    chunks,
    envelopes,
    expected_columns,
    run_store,
    sample_table,
    source,
    start_feeder,
    write_stream,
)
from conftest import Procs, wait_for
from enrgdaq_core.broker_client import wait_for_subscriptions
from enrgdaq_core.envelope import Source
from enrgdaq_core.transport import BrokerAddress, Publisher

pytestmark = pytest.mark.e2e


def check_tree(tree: Any, start: int, rows: int) -> None:
    """Every value and type of rows start.. in one tree, as uproot gives them back."""
    assert tree.num_entries == rows
    assert json.loads(tree.title) == [[f.name, str(f.type)] for f in SCHEMA]
    assert [b for b in tree.keys(recursive=False) if b != "nvwave"] == SCHEMA.names
    got = tree.arrays(library="np")
    exp = expected_columns(start, rows)
    for name in ("i64", "i16", "u32", "f64", "f32", "flag", "ts"):
        assert got[name].dtype == exp[name].dtype, name
        np.testing.assert_array_equal(got[name], exp[name])
    assert tree["ts"].typename == "int64_t"  # ns since 1970 UTC
    assert tree["label"].typename == "char*"
    assert got["label"].tolist() == exp["label"]
    assert tree["wave"].typename == f"int16_t[{SAMPLES}]"
    assert got["wave"].dtype == np.int16
    np.testing.assert_array_equal(got["wave"], exp["wave"])
    assert tree["vwave"].typename == "float[]"
    np.testing.assert_array_equal(got["nvwave"], [len(v) for v in exp["vwave"]])
    for g, w in zip(got["vwave"], exp["vwave"], strict=True):
        assert g.dtype == np.float32
        np.testing.assert_array_equal(g, w)


def test_values_types_and_compression(procs: Procs, tmp_path: Path) -> None:
    src = source("src1", "root", file_path="run.root")
    tables = [sample_table(s, n) for s, n in chunks(500, [1, 7, 60, 1, 200])]
    run_store(
        procs, "root", write_stream(tmp_path / "in.daq", envelopes(src, tables)),
        "--flush-rows", "200",
    )  # fmt: skip
    with uproot.open(tmp_path / "run.root") as f:
        assert f.keys(cycle=False) == ["src1"]  # the writing mark is gone after a clean close
        assert f.file.compression == uproot.ZSTD(5)
        check_tree(f["src1"], 0, 500)
        # flush at >= 200 rows: 269 rows (1+7+60+1+200), then 231 at end of stream: 2 baskets
        assert {f["src1"][b].num_baskets for b in SCHEMA.names} == {2}


@pytest.mark.parametrize(("kind", "level"), [("ZLIB", 1), ("LZ4", 2), ("NONE", 0)])
def test_compression_option(procs: Procs, tmp_path: Path, kind: str, level: int) -> None:
    src = source("c", "root", file_path="c.root", compression_type=kind, compression_level=level)
    stream = write_stream(tmp_path / "in.daq", envelopes(src, [sample_table(0, 50)]))
    run_store(procs, "root", stream, "-O", "tree_name=events")
    with uproot.open(tmp_path / "c.root") as f:
        expected = None if kind == "NONE" else getattr(uproot, kind)(level)
        assert f.file.compression == expected
        check_tree(f["events"], 0, 50)


def test_broker_small_messages_make_big_baskets(
    procs: Procs, broker: BrokerAddress, tmp_path: Path
) -> None:
    store = procs.start(
        "store", "root", "--from", "data.fast", "--broker", broker.base, "-o", "fast.root",
        "--exit-on-eos",
    )  # fmt: skip
    assert wait_for_subscriptions(broker, ["data.fast"], timeout=20)
    pub = Publisher(broker)
    assert pub.wait_ready(10)
    src = Source("fast", store={"root": {}})
    for i in range(2000):
        pub.send(src.table(sample_table(i, 1)))
    pub.send(src.end_of_stream())
    assert store.wait(30) == 0, store.stderr.read().decode()
    pub.close()
    with uproot.open(tmp_path / "fast.root") as f:
        check_tree(f["fast"], 0, 2000)
        baskets = f["fast"]["i64"].num_baskets
    assert baskets <= 5  # 2000 one-row messages, one basket per write of many rows


def _entries(path: Path, tree: str) -> int:
    try:
        with uproot.open(path) as f:
            return f[tree].num_entries if tree in f.keys(cycle=False) else 0
    except Exception:  # caught between two writes of the metadata
        return 0


def test_kill9_mid_write_then_restart(procs: Procs, tmp_path: Path) -> None:
    path = tmp_path / "k.root"
    src = source("k", "root", file_path="k.root")
    store = procs.start(
        "store", "root", "-i", "-", "--flush-rows", "100", "--flush-seconds", "0.05",
        stdin=subprocess.PIPE,
    )  # fmt: skip
    stop = threading.Event()
    thread = start_feeder(store.stdin, src, stop)
    wait_for(lambda: path.exists() and _entries(path, "k") >= 1000, 30, what="entries")
    os.killpg(store.pid, signal.SIGKILL)  # mid-stream: the feeder is still sending
    store.wait(10)
    stop.set()
    thread.join(10)
    with contextlib.suppress(BrokenPipeError):
        store.stdin.close()
    with uproot.open(path) as f:
        assert "enrgdaq_writing" in f.keys(cycle=False)  # the crash is visible
        n = f["k"].num_entries
        assert n >= 1000
        check_tree(f["k"], 0, n)
    before = path.read_bytes()

    # The next start leaves the crashed file alone and writes the next part.
    more = write_stream(tmp_path / "more.daq", envelopes(src, [sample_table(70_000, 30)]))
    run_store(procs, "root", more)
    assert path.read_bytes() == before
    with uproot.open(tmp_path / "k_part001.root") as f:
        check_tree(f["k"], 70_000, 30)


def test_restart_appends_to_the_tree(procs: Procs, tmp_path: Path) -> None:
    src = source("r", "root", file_path="r.root")
    for start in (0, 100, 200):
        stream = write_stream(tmp_path / "in.daq", envelopes(src, [sample_table(start, 100)]))
        run_store(procs, "root", stream)
    with uproot.open(tmp_path / "r.root") as f:
        assert f.keys(cycle=False) == ["r"]
        check_tree(f["r"], 0, 300)
        assert f["r"]["i64"].num_baskets == 3
    assert not (tmp_path / "r_part001.root").exists()


def test_schema_changes_make_tree_versions(procs: Procs, tmp_path: Path) -> None:
    src = source("s", "root", file_path="s.root")
    added = sample_table(100, 100).append_column("extra", pa.array(np.arange(100)))
    retyped = sample_table(200, 100)
    retyped = retyped.set_column(0, "i64", retyped["i64"].cast(pa.float64()))
    tables = [sample_table(0, 100), added, retyped, sample_table(300, 100)]
    run_store(procs, "root", write_stream(tmp_path / "in.daq", envelopes(src, tables)))
    with uproot.open(tmp_path / "s.root") as f:
        assert sorted(f.keys(cycle=False)) == ["s", "s_v2", "s_v3", "s_v4"]
        check_tree(f["s"], 0, 100)
        assert f["s_v2"]["extra"].array(library="np").tolist() == list(range(100))
        assert f["s_v3"]["i64"].typename == "double"
        np.testing.assert_array_equal(
            f["s_v3"]["i64"].array(library="np"), expected_columns(200, 100)["i64"]
        )
        check_tree(f["s_v4"], 300, 100)


def test_two_sources_one_file_and_overwrite(procs: Procs, tmp_path: Path) -> None:
    def once(start: int, *store_args: str) -> None:
        one = source("one", "root", file_path="both.root")
        two = source("two", "root", file_path="both.root")
        envs = []
        for s, n in chunks(200, [20]):
            envs += [one.table(sample_table(start + s, n)), two.table(sample_table(start + s, n))]
        stream = write_stream(tmp_path / "in.daq", envs)
        run_store(procs, "root", stream, "--flush-rows", "50", *store_args)

    once(0)
    once(1000, "-O", 'overwrite_sources=["one", "two"]')  # what daq up passes
    with uproot.open(tmp_path / "both.root") as f:
        assert sorted(f.keys(cycle=False)) == ["one", "two"]
        check_tree(f["one"], 1000, 200)
        check_tree(f["two"], 1000, 200)


def test_crash_ordering_hook_is_in_place(tmp_path: Path) -> None:
    """The hook that orders uproot's in-place writes is installed on every tree written, with
    the uproot this project pins (pyproject.toml bounds it to TESTED_UPROOT)."""
    import tomllib

    from enrgdaq_core.envelope import Source
    from enrgdaq_core.stores.options import build_backend
    from enrgdaq_core.stores.root import TESTED_UPROOT, crash_ordering_problem
    from enrgdaq_core.stores.runner import StoreRunner

    assert crash_ordering_problem() is None, crash_ordering_problem()
    pyproject = tomllib.loads((Path(__file__).parents[1] / "pyproject.toml").read_text())
    deps = pyproject["project"]["dependencies"]
    assert f"uproot{TESTED_UPROOT}" in [d.replace(" ", "") for d in deps]

    backend, _ = build_backend("root", flags={"out_dir": str(tmp_path), "flush_rows": 1})
    runner = StoreRunner(backend, name="t")
    src = Source("s1", store={"root": {}})
    runner.handle(src.table(sample_table(0, 5)))
    runner.handle(src.table(sample_table(5, 5)))
    (slot,) = runner._slots.values()
    tree = slot.writer.handle.file[slot.writer.tree_name]  # type: ignore[union-attr]
    cascading = tree._cascading
    assert cascading._enrgdaq_ordered is True
    assert cascading.write_updates.__qualname__.startswith("_crash_ordered.")
    assert backend.stats()["crash_ordering"] is True
    runner.handle(src.end_of_stream())
    with uproot.open(tmp_path / "s1.root") as f:
        assert f["s1"].num_entries == 10


def test_missing_crash_ordering_hook_warns_loudly(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """An uproot whose internal Tree.write_updates changed: the store says so at start and in
    its stats, instead of silently losing the crash ordering."""
    from uproot.writing._cascadetree import Tree

    from enrgdaq_core.stores.options import build_backend
    from enrgdaq_core.stores.root import crash_ordering_problem

    monkeypatch.delattr(Tree, "write_updates")
    assert "write_updates" in (crash_ordering_problem() or "")
    with caplog.at_level("WARNING", logger="enrgdaq.store.root"):
        backend, _ = build_backend("root", flags={"out_dir": str(tmp_path)})
    assert "crash-safe write ordering is OFF" in caplog.text
    assert backend.stats()["crash_ordering"] is False
