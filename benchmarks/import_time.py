"""Start-up cost of `daq --help`, and a check that it does not load pyarrow, uproot or h5py.

Wall time of whole `daq --help` processes (median of several), next to a bare interpreter's
start, and the `-X importtime` breakdown: which top-level imports cost the most. The same
check runs on every subcommand's --help (reported; only `daq --help` is a hard rule).
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from _harness import DAQ, median, print_table

FORBIDDEN = ("pyarrow", "uproot", "h5py")
RUNS, QUICK_RUNS = 15, 3


def _daq() -> list[str]:
    script = Path(sys.executable).with_name("daq")
    return [str(script)] if script.exists() else list(DAQ)


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env.pop("PYTHONPROFILEIMPORTTIME", None)
    return env


def _wall(cmd: list[str], runs: int) -> float:
    times = []
    for _ in range(runs):
        t = time.perf_counter()
        subprocess.run(cmd, env=_env(), capture_output=True, check=True, timeout=60)
        times.append(time.perf_counter() - t)
    return median(times)


def importtime(args: list[str]) -> dict[str, tuple[int, int]]:
    """{module: (self us, cumulative us)} of one `python -X importtime -m enrgdaq_cli.main ...`."""
    p = subprocess.run(
        [sys.executable, "-X", "importtime", "-m", "enrgdaq_cli.main", *args],
        env=_env(),
        capture_output=True,
        timeout=60,
    )
    out: dict[str, tuple[int, int]] = {}
    for line in p.stderr.decode(errors="replace").splitlines():
        if not line.startswith("import time:") or "self [us]" in line:
            continue
        self_us, cum_us, name = line[len("import time:") :].split("|", 2)
        out[name[1:].rstrip()] = (int(self_us), int(cum_us))  # keeps the nesting indent
    return out


def forbidden_in(modules: dict[str, tuple[int, int]]) -> list[str]:
    names = {m.strip().split(".")[0] for m in modules}
    return sorted(n for n in names if n in FORBIDDEN)


def subcommands() -> list[list[str]]:
    import typer.main

    from enrgdaq_cli.main import app

    group = typer.main.get_command(app)
    cmds = []
    for name, cmd in sorted(getattr(group, "commands", {}).items()):
        cmds.append([name, "--help"])
        for sub in sorted(getattr(cmd, "commands", {}) or {}):
            cmds.append([name, sub, "--help"])
    return cmds


def run(reps: int = RUNS, quick: bool = False) -> dict[str, Any]:
    runs = QUICK_RUNS if quick else reps
    bare = _wall([sys.executable, "-c", "pass"], runs)
    help_wall = _wall([*_daq(), "--help"], runs)
    modules = importtime(["--help"])
    top = [(m.strip(), c) for m, (_s, c) in modules.items() if not m.startswith(" ")]
    total_us = sum(c for _m, c in top)
    heaviest = sorted(top, key=lambda x: -x[1])[:12]
    bad = forbidden_in(modules)
    print_table(
        f"`daq --help` start-up (median of {runs} runs)",
        ["", "ms"],
        [
            ["python -c pass", bare * 1e3],
            ["daq --help", help_wall * 1e3],
            ["  of which imports (-X importtime)", total_us / 1e3],
        ],
    )
    print_table(
        "heaviest top-level imports of `daq --help`",
        ["module", "cumulative ms"],
        [[m, c / 1e3] for m, c in heaviest],
    )
    sub_bad: dict[str, list[str]] = {}
    for args in subcommands():
        found = forbidden_in(importtime(args))
        if found:
            sub_bad[" ".join(args)] = found
    print(
        f"daq --help imports {', '.join(FORBIDDEN)}: "
        + (f"YES ({', '.join(bad)}) -> FAIL" if bad else "none -> OK")
    )
    for cmd, found in sub_bad.items():
        print(f"  note: `daq {cmd}` imports {', '.join(found)}")
    return {
        "runs": runs,
        "quick": quick,
        "summary": {
            "python_bare_ms": bare * 1e3,
            "daq_help_ms": help_wall * 1e3,
            "daq_help_imports_ms": total_us / 1e3,
            "heaviest_imports_ms": {m: c / 1e3 for m, c in heaviest},
            "forbidden_imported": bad,
            "subcommand_help_forbidden_imported": sub_bad,
        },
        "failed": bool(bad),
    }
