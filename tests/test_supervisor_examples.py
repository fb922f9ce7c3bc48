"""`daq up configs/examples` (a copy with fast intervals): data lands in every configured store,
read back with each format's standard reader, and Ctrl-C stops it with every row stored."""

from __future__ import annotations

import csv
import json
import signal
import tomllib
from pathlib import Path

import pytest
import tomli_w

from _supervision import Up, csv_rows, raw_records, stats_csv
from conftest import Procs
from enrgdaq_core.envelope import Kind

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

EXAMPLES = Path(__file__).resolve().parent.parent / "configs" / "examples"
FAST = {"sensor": 0.05, "DAQJobTest": 0.05, "metrics": 0.2, "digitizer": 0.05}


def _fast_copy(dest: Path) -> dict[str, dict]:
    """The example configs with short intervals; returns each source's settings by name."""
    dest.mkdir()
    sources = {}
    for path in sorted(EXAMPLES.glob("*.toml")):
        data = tomllib.loads(path.read_text())
        if path.name == "supervisor.toml":
            data["stats"] = {**data.get("stats", {}), "interval": 0.5}
        elif data.get("daq_job_type") in FAST:
            data["interval_seconds"] = FAST[data["daq_job_type"]]
            if data["daq_job_type"] == "digitizer":
                data["event_rate"] = 40.0  # two events a step
            sources[data.get("name") or path.stem] = data
        (dest / path.name).write_text(tomli_w.dumps(data))
    return sources


def test_examples_start_store_everywhere_and_stop_losing_nothing(
    procs: Procs, runtime_dir: Path, tmp_path: Path
) -> None:
    cfg = tmp_path / "examples"
    sources = _fast_copy(cfg)
    backends = {b for s in sources.values() for b in s.get("store_config", {})}
    assert {"csv", "raw"} <= backends  # the examples keep exercising several stores
    u = Up(procs, cfg, runtime_dir)
    try:
        u.wait_flowing(timeout=90)
        st = u.status()
        assert st is not None
        names = {p["name"] for p in st["pieces"]}
        assert names == {"broker", *sources, *(f"store-{b}" for b in backends)}
        assert u.stop(signal.SIGINT) == 0
    finally:
        if u.p.poll() is None:
            u.stop(signal.SIGKILL)
        u.assert_no_orphans()
        u.close()

    out = u.out
    stats = stats_csv(out)
    for b in backends:
        assert stats[f"store-{b}"]["lost"] == "0", stats[f"store-{b}"]
    checked = set()
    for name, source in sources.items():
        sent_rows = int(stats[name]["rows_out"])
        sent_msgs = int(stats[name]["message_out_count"])
        assert sent_rows > 0 and sent_msgs > 0
        for backend, settings in source.get("store_config", {}).items():
            stem = Path(settings.get("file_path") or f"{name}").stem
            stored = _read_back(out, backend, stem, name, settings)
            if backend == "raw":
                # whole envelopes: every sequence number from 0, then end-of-stream
                assert [e.header.seq for e in stored] == list(range(sent_msgs + 1))
                assert stored[-1].kind is Kind.EOS
                assert sum(e.header.rows for e in stored) == sent_rows
            else:
                assert stored == sent_rows, (name, backend)
            checked.add(backend)
    assert checked == backends
    # the same rows through two stores, value by value: csv against the raw run file
    raw = raw_records(out.glob("sensor1*.raw"))
    tables = [e.table() for e in raw if e.kind is Kind.TABLE]
    with open(next(out.glob("sensor1*.csv")), newline="") as f:
        rows = list(csv.DictReader(f))
    for ch in ("ch0", "ch1", "ch2", "ch3"):
        from_raw = [v for t in tables for v in t.column(ch).to_pylist()]
        assert [float(r[ch]) for r in rows] == from_raw
    run = json.loads((out / "run000001" / "run.json").read_text())
    assert run["run"] == 1 and run["stop_ns"] > run["start_ns"]
    snapshot = sorted(p.name for p in (out / "run000001" / "configs").iterdir())
    assert snapshot == sorted(p.name for p in cfg.glob("*.toml"))
    with open(out / "stats_remote.csv", newline="") as f:
        (node,) = list(csv.DictReader(f))
    assert node["supervisor"] == st["node"] and int(node["message_out_count"]) > 0


def _read_back(out: Path, backend: str, stem: str, source: str, settings: dict):
    """Rows stored (or, for raw, the envelopes of `source`), with the format's own reader."""
    if backend == "csv":
        return csv_rows(out.glob(f"{stem}*.csv"))
    if backend == "raw":
        return [e for e in raw_records(out.glob(f"{stem}*.raw")) if e.header.source == source]
    if backend == "hdf5":
        import h5py

        total = 0
        for path in out.glob(f"{stem}*.h5"):
            with h5py.File(path, "r") as f:
                group = f[settings.get("dataset_name") or source]
                total += int(group.attrs["rows"])
        return total
    if backend == "root":
        import uproot

        total = 0
        for path in out.glob(f"{stem}*.root"):
            with uproot.open(path) as f:
                total += f[settings.get("tree_name") or source].num_entries
        return total
    raise AssertionError(f"no reader for {backend} in this test: add one")


def test_examples_directory_validates(procs: Procs) -> None:
    p = procs.run("up", str(EXAMPLES), "--check", timeout=60)
    assert p.returncode == 0, p.stderr.decode()
    lines = p.stdout.decode().splitlines()
    assert lines[0] == f"{EXAMPLES}: valid"
    assert any(line.startswith("  store  store-csv: store csv --name store-csv") for line in lines)
    assert not (Path(procs.cwd) / "out").exists()  # --check starts and writes nothing
