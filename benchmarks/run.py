"""Run the benchmark suite: `python benchmarks/run.py [NAME...] [--reps N] [--quick]`.

Each benchmark prints its table and writes benchmarks/results/<name>.json. Not tests: nothing
here fails on a slow machine, except a run that loses or corrupts data, which is a bug.
"""

from __future__ import annotations

import argparse
import importlib
import signal
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _harness import write_result  # noqa: E402

BENCHMARKS = {
    "throughput": "throughput",
    "latency": "latency",
    "import_time": "import_time",
}


def _interrupt(signum: int, _frame: object) -> None:
    raise KeyboardInterrupt(f"signal {signum}")  # unwinds, so every started process is killed


def main() -> int:
    signal.signal(signal.SIGTERM, _interrupt)
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("names", nargs="*", metavar="NAME", help=f"any of {', '.join(BENCHMARKS)}")
    ap.add_argument("--reps", type=int, default=None, help="repetitions (default per benchmark)")
    ap.add_argument("--quick", action="store_true", help="small counts: a smoke run, not figures")
    args = ap.parse_args()
    unknown = [n for n in args.names if n not in BENCHMARKS]
    if unknown:
        ap.error(f"unknown benchmark {', '.join(unknown)} (known: {', '.join(BENCHMARKS)})")
    failed = []
    for name in args.names or list(BENCHMARKS):
        module = importlib.import_module(BENCHMARKS[name])
        print(f"== {name}", flush=True)
        kwargs = {"quick": args.quick}
        if args.reps is not None:
            kwargs["reps"] = args.reps
        result = module.run(**kwargs)
        path = write_result(name, result)
        print(f"-> {path}")
        if result.get("failed"):
            failed.append(name)
    if failed:
        print(f"failed checks: {', '.join(failed)}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
