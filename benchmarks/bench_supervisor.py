"""The supervisor: time from `daq up` to the first stored row, and its CPU use at idle.

- start: `daq up DIR` with one sensor into a CSV store; the clock runs from the moment the
  process is started until a data row is in the CSV file (polled every 5 ms). Twice: with the
  store's default flush period (what a user sees) and with a 50 ms flush (the start-up alone:
  broker, store, subscription check, source).
- idle: `daq up configs/examples` (4 sources at their shipped rates, 4 stores, the broker)
  left running; the supervisor's own CPU time (all its threads: the loop, log readers) over
  a window after start-up, as a share of one core. Target: under 1 %.

Standalone: `python benchmarks/bench_supervisor.py [--quick] [--reps N]`; writes
benchmarks/results/supervisor.json.
"""

from __future__ import annotations

import argparse
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _harness import DAQ, BenchError, median, print_table, processes, write_result  # noqa: E402

EXAMPLES = Path(__file__).resolve().parent.parent / "configs" / "examples"
REPS = 3

SENSOR = """
daq_job_type = "sensor"
name = "sensor1"
interval_seconds = 0.01
channels = 4

[store_config.csv]
file_path = "sensor1.csv"
{flush}
"""


def _up(procs: Any, directory: Path) -> subprocess.Popen:
    log = open(procs.workdir / "up.log", "ab")  # noqa: SIM115 - closed with the process
    p = subprocess.Popen(
        [*DAQ, "up", str(directory), "--no-tty"],
        env=procs.env,
        cwd=procs.workdir,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    procs.started.append(p)
    return p


def _stop(p: subprocess.Popen, procs: Any) -> None:
    p.send_signal(signal.SIGINT)
    try:
        rc = p.wait(60)
    except subprocess.TimeoutExpired:
        raise BenchError("daq up did not stop in 60 s") from None
    if rc != 0:
        tail = (procs.workdir / "up.log").read_text(errors="replace")[-2000:]
        raise BenchError(f"daq up exited {rc}:\n{tail}")


def time_to_first_row(flush_seconds: float | None) -> float:
    with processes() as procs:
        cfg = procs.workdir / "cfg"
        cfg.mkdir()
        flush = f"flush_seconds = {flush_seconds}" if flush_seconds else ""
        (cfg / "sensor.toml").write_text(SENSOR.format(flush=flush))
        target = procs.workdir / "out" / "sensor1.csv"
        t0 = time.perf_counter()
        p = _up(procs, cfg)
        deadline = t0 + 60
        while True:
            if p.poll() is not None:
                raise BenchError(f"daq up exited {p.returncode}")
            try:
                if target.read_bytes().count(b"\n") >= 2:  # header + one row
                    break
            except FileNotFoundError:
                pass
            if time.perf_counter() > deadline:
                raise BenchError("no row stored within 60 s")
            time.sleep(0.005)
        elapsed = time.perf_counter() - t0
        _stop(p, procs)
        return elapsed


def idle_cpu(settle: float, window: float) -> dict[str, float]:
    import psutil

    with processes() as procs:
        cfg = procs.workdir / "examples"
        shutil.copytree(EXAMPLES, cfg)
        p = _up(procs, cfg)
        time.sleep(settle)
        if p.poll() is not None:
            raise BenchError(f"daq up exited {p.returncode}")
        me = psutil.Process(p.pid)
        children = me.children()
        t = me.cpu_times()
        c0 = t.user + t.system
        w0 = time.perf_counter()
        time.sleep(window)
        t = me.cpu_times()
        c1 = t.user + t.system
        w1 = time.perf_counter()
        kids = 0.0
        for child in children:
            try:
                kt = child.cpu_times()
                kids += kt.user + kt.system
            except psutil.NoSuchProcess:
                pass
        _stop(p, procs)
        return {
            "supervisor_cpu_percent": (c1 - c0) / (w1 - w0) * 100,
            "children": len(children),
            "window_s": round(w1 - w0, 2),
        }


def run(quick: bool = False, reps: int = REPS) -> dict[str, Any]:
    reps = 1 if quick else reps
    default = [time_to_first_row(None) for _ in range(reps)]
    fast = [time_to_first_row(0.05) for _ in range(reps)]
    idle = idle_cpu(settle=5.0 if quick else 10.0, window=5.0 if quick else 30.0)
    rows = [
        ["up -> first row (default flush)", median(default), min(default), max(default)],
        ["up -> first row (50 ms flush)", median(fast), min(fast), max(fast)],
    ]
    print_table("daq up start-up (s)", ["case", "median", "min", "max"], rows)
    print_table(
        "daq up at idle (configs/examples running)",
        ["children", "window s", "supervisor CPU % of one core", "target"],
        [[idle["children"], idle["window_s"], idle["supervisor_cpu_percent"], "< 1"]],
    )
    return {
        "reps": reps,
        "first_row_s": {"default_flush": default, "flush_50ms": fast},
        "first_row_median_s": {"default_flush": median(default), "flush_50ms": median(fast)},
        "idle": idle,
        "targets": {"idle_cpu_percent_below": 1.0},
        "met": {"idle_cpu": idle["supervisor_cpu_percent"] < 1.0},
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="one repetition, short idle window")
    ap.add_argument("--reps", type=int, default=REPS)
    args = ap.parse_args()
    result = run(quick=args.quick, reps=args.reps)
    print(f"-> {write_result('supervisor', result)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
