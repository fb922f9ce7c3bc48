"""Replay rate: `daq replay FILE` into /dev/null and into stores, beside `cat FILE` doing the same.

Three run files (tiny raw messages, 1-row tables, 64 kB raw blocks) are written in a temporary
directory with the raw store's writer, then read while in the page cache:

- `cat FILE > /dev/null` and `daq replay FILE -o - > /dev/null`: the carrier alone;
- `cat FILE | daq store B` and `daq replay FILE | daq store B`: the same store fed by a plain
  copy of the bytes and by replay, so the difference is what replay costs in a real pipeline.

MB/s are bytes of run file per second of wall time (whole processes, start-up included), and
for replay also its own figure from its summary line (reading and writing only). Standalone:
`python benchmarks/bench_replay.py [--quick] [--reps N]` writes benchmarks/results/replay.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
DAQ = [sys.executable, "-m", "enrgdaq_cli.main"]
REPS = 3
SUMMARY = re.compile(rb"replayed (\d+) message\(s\).*?\(([\d.]+) MB read, ([\d.]+) MB/s")


class BenchError(RuntimeError):
    """A run that did not deliver what it should: its figures are not reported."""


class _Procs:
    """The processes of one run, each killed by its own pid at the end, in a private dir."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.env = dict(os.environ, DAQ_RUNTIME_DIR=str(workdir))
        self.env.pop("DAQ_BROKER", None)
        self.started: list[subprocess.Popen] = []


@contextmanager
def processes() -> Iterator[_Procs]:
    procs = _Procs(Path(tempfile.mkdtemp(prefix="daqb-replay-", dir="/tmp")))
    try:
        yield procs
    finally:
        for p in procs.started:
            if p.poll() is None:
                try:
                    os.killpg(p.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                p.wait(10)
        shutil.rmtree(procs.workdir, ignore_errors=True)


def median(values: Sequence[float]) -> float:
    return statistics.median(values)


def print_table(title: str, headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> None:
    def fmt(v: Any) -> str:
        if isinstance(v, float):
            return f"{v:,.3g}" if abs(v) < 100 else f"{v:,.0f}"
        return str(v)

    cells = [[fmt(c) for c in row] for row in rows]
    widths = [max([len(h), *(len(r[i]) for r in cells)]) for i, h in enumerate(headers)]
    print(f"\n{title}")
    print("  ".join(h.rjust(w) for h, w in zip(headers, widths, strict=True)))
    print("  ".join("-" * w for w in widths))
    for r in cells:
        print("  ".join(c.rjust(w) for c, w in zip(r, widths, strict=True)))


def write_result(name: str, data: dict[str, Any]) -> Path:
    path = HERE / "results" / f"{name}.json"
    path.parent.mkdir(exist_ok=True)
    machine = {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpus": os.cpu_count(),
    }
    payload = {
        "benchmark": name,
        "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "machine": machine,
        **data,
    }
    path.write_text(json.dumps(payload, indent=2) + "\n")
    return path


def _make_file(path: Path, kind: str, n: int) -> int:
    """A run file of n messages of one kind; returns its size."""
    import pyarrow as pa

    from enrgdaq_core.envelope import Envelope, Header, Kind
    from enrgdaq_core.runfile import RunFileWriter, run_meta
    from enrgdaq_core.tables import encode_table

    t0 = time.time_ns()
    store = {"csv": {"file_path": "out_{source}.csv"}, "raw": {"file_path": "out_{source}.raw"}}
    if kind == "tiny":
        h = Header(kind=Kind.RAW, source="tiny", epoch=t0, run=1, store=store)
        payload: bytes = b"\x01" * 16
    elif kind == "rows":
        h = Header(kind=Kind.TABLE, source="rows", epoch=t0, run=1, rows=1, store=store)
        table = pa.table(
            {
                "timestamp": pa.array([t0], pa.timestamp("ns", tz="UTC")),
                **{f"ch{i}": pa.array([20.0 + i / 7]) for i in range(4)},
            }
        )
        payload = encode_table(table)
    else:
        h = Header(kind=Kind.RAW, source="blocks", epoch=t0, run=1, store=store)
        payload = bytes(range(256)) * 256  # 64 kB
    env = Envelope(f"data.{h.source}", h, payload)
    w = RunFileWriter(path, run_meta(run=1, run_start_ns=t0))
    for i in range(n):
        h.seq = i
        h.time_ns = t0 + i * 1000
        w.write(env)
    w.close()
    return path.stat().st_size


def _wall(procs: Any, args: list[list[str]], what: str) -> tuple[float, bytes]:
    """Run a pipeline of commands (stdout of each into the next, last into /dev/null)."""
    started: list[subprocess.Popen] = []
    t = time.perf_counter()
    prev = None
    for i, cmd in enumerate(args):
        last = i == len(args) - 1
        p = subprocess.Popen(
            cmd,
            stdin=prev,
            stdout=subprocess.DEVNULL if last else subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=procs.env,
            cwd=procs.workdir,
            start_new_session=True,
        )
        if prev is not None:
            prev.close()
        prev = p.stdout
        procs.started.append(p)
        started.append(p)
    errs = []
    for p in started:
        _, err = p.communicate(timeout=600)
        errs.append(err)
        if p.returncode != 0:
            raise BenchError(f"{what}: {p.args} exited {p.returncode}: {err.decode()[-1500:]}")
    return time.perf_counter() - t, b"".join(errs)


def run(reps: int = REPS, quick: bool = False) -> dict[str, Any]:
    files = {"tiny": 1_000_000, "rows": 200_000, "blocks": 3_000}
    if quick:
        files = {k: max(v // 50, 20) for k, v in files.items()}
        reps = 1
    stores = {"tiny": ["raw"], "rows": ["raw", "csv"], "blocks": ["raw"]}
    results: list[dict[str, Any]] = []
    with processes() as procs:
        for kind, n in files.items():
            path = procs.workdir / f"{kind}.raw"
            size = _make_file(path, kind, n)
            path.read_bytes()  # into the page cache
            mb = size / 1e6
            cat = ["cat", str(path)]
            replay = [*DAQ, "replay", str(path), "-o", "-", "--no-progress"]
            rows = []
            t_cat = median([_wall(procs, [cat], "cat")[0] for _ in range(reps)])
            walls, inner = [], []
            for _ in range(reps):
                t, err = _wall(procs, [replay], "replay")
                m = SUMMARY.search(err)
                if m is None or int(m[1]) != n:
                    raise BenchError(
                        f"replay of {kind} did not report {n} messages: {err[-500:]!r}"
                    )
                walls.append(t)
                inner.append(float(m[3]))
            rows.append(("/dev/null", t_cat, median(walls), median(inner)))
            for backend in stores[kind]:
                store = [*DAQ, "store", backend, "--out-dir", f"out_{backend}"]
                t_s_cat, t_s_rep = [], []
                for _ in range(reps):
                    t_s_cat.append(_wall(procs, [cat, store], f"cat | store {backend}")[0])
                    t_s_rep.append(_wall(procs, [replay, store], f"replay | store {backend}")[0])
                    for f in (procs.workdir / f"out_{backend}").glob("*"):
                        f.unlink()
                rows.append((f"store {backend}", median(t_s_cat), median(t_s_rep), None))
            for consumer, tc, tr, inner_rate in rows:
                results.append(
                    {
                        "file": kind,
                        "messages": n,
                        "file_mb": mb,
                        "into": consumer,
                        "cat_s": tc,
                        "replay_s": tr,
                        "cat_mb_s": mb / tc,
                        "replay_mb_s": mb / tr,
                        "replay_inner_mb_s": inner_rate,
                        "replay_vs_cat": tc / tr,
                    }
                )
    print_table(
        f"replay vs cat (median of {reps}; MB of run file per second of wall time)",
        ["file", "msgs", "MB", "into", "cat MB/s", "replay MB/s", "replay own MB/s", "replay/cat"],
        [
            [
                r["file"],
                r["messages"],
                r["file_mb"],
                r["into"],
                r["cat_mb_s"],
                r["replay_mb_s"],
                r["replay_inner_mb_s"] if r["replay_inner_mb_s"] is not None else "-",
                r["replay_vs_cat"],
            ]
            for r in results
        ],
    )
    # other work on the machine moves these figures: say how busy it was
    return {
        "reps": reps,
        "quick": quick,
        "load_average_after": os.getloadavg(),
        "results": results,
        "failed": False,
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--reps", type=int, default=REPS)
    ap.add_argument("--quick", action="store_true", help="small files: a smoke run, not figures")
    args = ap.parse_args()
    result = run(args.reps, args.quick)
    print(f"-> {write_result('replay', result)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
