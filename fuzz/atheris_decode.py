"""atheris (libFuzzer) target: every decoder of enrgdaq on one input, for long fuzz runs.

    pip install atheris
    python fuzz/atheris_decode.py -max_total_time=3600 fuzz/corpus   # one hour
    python fuzz/atheris_decode.py crash-1234abcd                    # re-run one crash

The first input byte chooses what the rest is: an Arrow payload (decode_table and every
store conversion), a byte stream (the pipe reader), three ZeroMQ frames (the envelope
decoder), or a seed payload with its length fields set by the following bytes (the lies of
issue 15, found much faster than by flipping bytes). docs/fuzzing.md has the details.
"""

from __future__ import annotations

import sys
from pathlib import Path

import atheris

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

with atheris.instrument_imports(include=["enrgdaq_core", "fuzz_targets", "ipc_mutations"]):
    import fuzz_targets as ft

SEEDS = list(ft.seed_payloads().values())
STREAM = ft.seed_stream()


def test_one_input(data: bytes) -> None:
    fdp = atheris.FuzzedDataProvider(data)
    kind = fdp.ConsumeIntInRange(0, 4)
    if kind == 0:
        ft.payload(fdp.ConsumeBytes(fdp.remaining_bytes()))
    elif kind == 1:
        ft.stream(fdp.ConsumeBytes(fdp.remaining_bytes()))
    elif kind == 2:
        sizes = [fdp.ConsumeIntInRange(0, 4096) for _ in range(2)]
        parts = [fdp.ConsumeBytes(n) for n in sizes] + [fdp.ConsumeBytes(fdp.remaining_bytes())]
        ft.frames(parts)
    elif kind == 3:
        seed = SEEDS[fdp.ConsumeIntInRange(0, len(SEEDS) - 1)]
        picks = [
            (fdp.ConsumeIntInRange(0, 255), fdp.ConsumeIntInRange(0, 63))
            for _ in range(fdp.ConsumeIntInRange(1, 3))
        ]
        ft.payload(ft.length_lies(seed, picks))
    else:
        moves = [
            (fdp.ConsumeIntInRange(0, 5), fdp.ConsumeInt(4) & 0xFFFFF, fdp.ConsumeInt(2) & 0xFFFF)
            for _ in range(fdp.ConsumeIntInRange(1, 4))
        ]
        ft.stream(ft.mutate(STREAM, moves))


def main() -> None:
    atheris.Setup(sys.argv, test_one_input)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
