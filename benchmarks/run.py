"""Run the benchmark suite: `python benchmarks/run.py [NAME...] [--reps N] [--quick]`.

Each benchmark prints its tables and writes benchmarks/results/<name>.json. The spine's
benchmarks (throughput, latency, import_time) run in this process; every `bench_<name>.py`
beside this file is a standalone script and runs as its own process. Not tests: nothing here
fails on a slow machine, except a run that loses or corrupts data, or a broken hard rule
(`daq --help` loading pyarrow), which exit non-zero.
"""

from __future__ import annotations

import argparse
import importlib
import signal
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from _harness import write_result  # noqa: E402

IN_PROCESS = ("throughput", "latency", "import_time")
# standalone scripts whose repetitions flag is not --reps
_REPS_FLAG = {"stores_files": "--repeat", "stores_servers": "--repeat"}


def standalone() -> dict[str, Path]:
    return {p.stem.removeprefix("bench_"): p for p in sorted(HERE.glob("bench_*.py"))}


def _interrupt(signum: int, _frame: object) -> None:
    raise KeyboardInterrupt(f"signal {signum}")  # unwinds, so every started process is killed


def main() -> int:
    signal.signal(signal.SIGTERM, _interrupt)
    scripts = standalone()
    known = [*IN_PROCESS, *scripts]
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("names", nargs="*", metavar="NAME", help=f"any of {', '.join(known)}")
    ap.add_argument("--reps", type=int, default=None, help="repetitions (default per benchmark)")
    ap.add_argument("--quick", action="store_true", help="small counts: a smoke run, not figures")
    args = ap.parse_args()
    unknown = [n for n in args.names if n not in known]
    if unknown:
        ap.error(f"unknown benchmark {', '.join(unknown)} (known: {', '.join(known)})")
    failed = []
    for name in args.names or known:
        print(f"== {name}", flush=True)
        if name in scripts:
            cmd = [sys.executable, str(scripts[name])]
            if args.quick:
                cmd.append("--quick")
            if args.reps is not None:
                cmd += [_REPS_FLAG.get(name, "--reps"), str(args.reps)]
            if subprocess.run(cmd, cwd=HERE.parent).returncode != 0:
                failed.append(name)
            continue
        module = importlib.import_module(name)
        kwargs: dict[str, object] = {"quick": args.quick}
        if args.reps is not None:
            kwargs["reps"] = args.reps
        result = module.run(**kwargs)
        print(f"-> {write_result(name, result)}")
        if result.get("failed"):
            failed.append(name)
    if failed:
        print(f"failed: {', '.join(failed)}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
