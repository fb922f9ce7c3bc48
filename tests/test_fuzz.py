"""The fuzz suite: mutated payloads, tables, streams, frames and run files through every decoder
and every store conversion, each target in a subprocess of its own (`_fuzz_worker.py`).

A crash there (SIGSEGV, SIGABRT), a hang or a MemoryError fails the test with the input that
caused it, instead of killing pytest. The inputs are derandomized, so CI runs the same ones
every time; docs/fuzzing.md says how to run longer (more examples, or atheris).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

WORKER = Path(__file__).parent / "_fuzz_worker.py"

# examples per target: about a minute in all on an idle 2-core machine
EXAMPLES = {
    "payloads": 2000,
    "tables": 250,
    "streams": 600,
    "frames": 1500,
    "run_files": 300,
}


@pytest.mark.timeout(400)
@pytest.mark.parametrize("target", sorted(EXAMPLES))
def test_no_input_crashes_a_decoder(target: str, tmp_path: Path) -> None:
    examples = int(os.environ.get("DAQ_FUZZ_EXAMPLES", EXAMPLES[target]))
    last = tmp_path / "last_input.txt"
    p = subprocess.run(
        [sys.executable, str(WORKER), target, str(examples), str(last)],
        capture_output=True,
        text=True,
        timeout=380,
    )
    if p.returncode == 0:
        assert not last.exists()
        return
    how = (
        f"killed by {signal.Signals(-p.returncode).name}"
        if p.returncode < 0
        else f"exit {p.returncode}"
    )
    reproducer = last.read_text()[:4000] if last.exists() else "(none recorded)"
    pytest.fail(
        f"fuzz target {target}: {how}\nlast input (target, hex):\n{reproducer}\n"
        f"stderr:\n{p.stderr[-4000:]}"
    )
