"""The fuzz suite's worker: `python tests/_fuzz_worker.py TARGET EXAMPLES LAST_INPUT_FILE`.

Runs one target of fuzz_targets.py over EXAMPLES hypothesis examples (derandomized: the same
inputs on every run). Run by test_fuzz.py in a subprocess, so that a crash (SIGSEGV, SIGABRT)
or a hang ends this process and not pytest: before each example the input is written to
LAST_INPUT_FILE, which the test reports when the process dies. A watchdog (faulthandler)
ends an example that takes longer than WATCHDOG_SECONDS, and the address space is capped, so
a decoder that would grow without bound fails with MemoryError instead of swapping.
"""

from __future__ import annotations

import faulthandler
import os
import resource
import sys
import tempfile
from pathlib import Path
from typing import Any

import pyarrow as pa
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

sys.path.insert(0, str(Path(__file__).parent))

import fuzz_targets as ft  # noqa: E402
from arrow_strategies import headers, tables  # noqa: E402
from enrgdaq_core.envelope import Envelope, Kind  # noqa: E402
from enrgdaq_core.tables import decode_table, encode_table  # noqa: E402

WATCHDOG_SECONDS = 60
MEMORY_LIMIT = 6 << 30

_last: Path


def _record(target: str, value: Any) -> None:
    """Note the input about to run (the report if this process dies on it), arm the watchdog."""
    _last.write_text(f"{target}\n{ft.describe(value)}\n")
    faulthandler.dump_traceback_later(WATCHDOG_SECONDS, exit=True)


moves = st.lists(
    st.tuples(st.integers(0, 5), st.integers(0, 1 << 20), st.integers(0, 1 << 16)),
    min_size=1,
    max_size=4,
)
lies = st.lists(st.tuples(st.integers(0, 255), st.integers(0, 63)), min_size=1, max_size=3)
PAYLOADS = ft.seed_payloads()


@st.composite
def lying_payloads(draw: st.DrawFn) -> bytes:
    """A seed payload whose length fields lie, and/or with bytes changed."""
    data = PAYLOADS[draw(st.sampled_from(sorted(PAYLOADS)))]
    if draw(st.booleans()):
        data = ft.length_lies(data, draw(lies))
    if draw(st.booleans()) or data in PAYLOADS.values():
        data = ft.mutate(data, draw(moves))
    return data


# -- valid tables of odd types ------------------------------------------------------------

_PRIMITIVES: list[tuple[pa.DataType, st.SearchStrategy[Any]]] = [
    (pa.null(), st.none()),
    (pa.bool_(), st.booleans()),
    (pa.int8(), st.integers(-128, 127)),
    (pa.uint64(), st.integers(0, 2**64 - 1)),
    (pa.float16(), st.none()),
    (pa.float64(), st.floats()),
    (
        pa.decimal128(38, 10),
        st.decimals(
            allow_nan=False, allow_infinity=False, places=10, min_value=-(10**27), max_value=10**27
        ),
    ),
    (
        pa.decimal256(76, 0),
        st.integers(-(10**70), 10**70).map(lambda v: __import__("decimal").Decimal(v)),
    ),
    (pa.date64(), st.none()),
    (pa.time32("s"), st.integers(0, 86399)),
    (pa.timestamp("s", tz="Asia/Kolkata"), st.integers(-(2**40), 2**40)),
    (pa.timestamp("ns", tz="+05:30"), st.integers(-(2**62), 2**62)),
    (pa.duration("ns"), st.integers(-(2**62), 2**62)),
    (pa.month_day_nano_interval(), st.none()),
    (pa.string(), st.text(max_size=8)),
    (pa.large_binary(), st.binary(max_size=8)),
    (pa.binary(0), st.just(b"")),
    (pa.binary(3), st.binary(min_size=3, max_size=3)),
    (pa.string_view(), st.text(max_size=20)),
    (pa.binary_view(), st.binary(max_size=20)),
]


def _primitive(draw: st.DrawFn, n: int) -> pa.Array:
    type_, values = draw(st.sampled_from(_PRIMITIVES))
    data = draw(st.lists(st.none() | values, min_size=n, max_size=n))
    return pa.array(data, type_)


def _offsets(draw: st.DrawFn, n: int, child: int) -> pa.Array:
    cuts = sorted(
        draw(st.lists(st.integers(0, child), min_size=max(0, n - 1), max_size=max(0, n - 1)))
    )
    return pa.array([0, *cuts, child] if n else [0], pa.int32())


def _array(draw: st.DrawFn, n: int, depth: int) -> pa.Array:
    """A valid array of length n: a primitive, or a nested/encoded one built from children
    (a combination pyarrow cannot build is replaced by a primitive)."""
    try:
        return _nested(draw, n, depth)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError, pa.ArrowTypeError):
        return _primitive(draw, n)


def _nested(draw: st.DrawFn, n: int, depth: int) -> pa.Array:
    kind = draw(
        st.sampled_from(
            ["primitive"] * 3
            + (
                []
                if depth > 3
                else [
                    "list",
                    "large_list",
                    "fixed",
                    "struct",
                    "map",
                    "dictionary",
                    "ree",
                    "list_view",
                    "union",
                    "extension",
                    "empty_struct",
                ]
            )
        )
    )
    if kind == "primitive":
        return _primitive(draw, n)
    if kind == "empty_struct":
        return (
            pa.StructArray.from_arrays([], names=[])
            if n == 0
            else pa.array([{}] * n, pa.struct([]))
        )
    if kind in ("list", "large_list", "list_view"):
        child_len = draw(st.integers(0, 8))
        child = _array(draw, child_len, depth + 1)
        offsets = _offsets(draw, n, child_len)
        if kind == "large_list":
            return pa.LargeListArray.from_arrays(offsets.cast(pa.int64()), child)
        lst = pa.ListArray.from_arrays(offsets, child)
        return lst.cast(pa.list_view(child.type)) if kind == "list_view" else lst
    if kind == "fixed":
        width = draw(st.integers(0, 3))
        if width == 0:
            return pa.array([[]] * n, pa.list_(_primitive(draw, 0).type, 0))
        return pa.FixedSizeListArray.from_arrays(_array(draw, n * width, depth + 1), width)
    if kind == "struct":
        k = draw(st.integers(1, 3))
        children = [_array(draw, n, depth + 1) for _ in range(k)]
        names = draw(st.lists(st.text(max_size=4), min_size=k, max_size=k))
        return pa.StructArray.from_arrays(children, names=names)
    if kind == "map":
        child_len = draw(st.integers(0, 6))
        keys = pa.array([f"k{i}" for i in range(child_len)])
        return pa.MapArray.from_arrays(
            _offsets(draw, n, child_len), keys, _array(draw, child_len, depth + 1)
        )
    if kind == "dictionary":
        size = draw(st.integers(1, 4))
        dictionary = _array(draw, size, depth + 1)
        idx = draw(st.lists(st.none() | st.integers(0, size - 1), min_size=n, max_size=n))
        return pa.DictionaryArray.from_arrays(pa.array(idx, pa.int8()), dictionary)
    if kind == "ree":
        values = _array(draw, n, depth + 1) if n else _primitive(draw, 0)
        if n == 0:
            return pa.RunEndEncodedArray.from_arrays(pa.array([], pa.int32()), values)
        return pa.RunEndEncodedArray.from_arrays(pa.array(range(1, n + 1), pa.int32()), values)
    if kind == "union":
        a, b = _array(draw, n, depth + 1), _array(draw, n, depth + 1)
        types = pa.array(draw(st.lists(st.integers(0, 1), min_size=n, max_size=n)), pa.int8())
        return pa.UnionArray.from_sparse(types, [a, b])
    storage = pa.array(
        draw(st.lists(st.none() | st.binary(min_size=16, max_size=16), min_size=n, max_size=n)),
        pa.binary(16),
    )
    return pa.ExtensionArray.from_storage(pa.uuid(), storage)


@st.composite
def odd_tables(draw: st.DrawFn) -> pa.Table:
    n = draw(st.integers(0, 6))
    k = draw(st.integers(1, 3))
    columns = [_array(draw, n, 0) for _ in range(k)]
    return pa.table(columns, names=[f"c{i}" for i in range(k)])


# -- the targets ----------------------------------------------------------------------------


def _settings(examples: int) -> Any:
    return settings(
        max_examples=examples,
        deadline=None,
        derandomize=True,
        database=None,
        suppress_health_check=list(HealthCheck),
        print_blob=True,
    )


def run(target: str, examples: int, tmp: Path) -> None:
    s = _settings(examples)
    if target == "payloads":
        from ipc_mutations import forged_payloads, good_table

        decode_table(encode_table(good_table(0, 3)))  # the fast path for the forged ones
        for name, data in forged_payloads(3, 3).items():
            _record(f"payloads (forged: {name})", data)
            ft.payload(data)

        @s
        @given(lying_payloads())
        def payloads(data: bytes) -> None:
            _record(target, data)
            ft.payload(data)

        payloads()
    elif target == "tables":
        writers = ft.Writers(tmp / "stores")

        @s
        @given(st.one_of(odd_tables(), tables(max_rows=4)))
        def tables_(table: pa.Table) -> None:
            data = encode_table(table)
            _record(target, data)
            decoded = ft.payload(data)
            if decoded is not None:
                writers.write(data)

        tables_()
        writers.close()
    elif target == "streams":
        seed = ft.seed_stream()
        envs = ft.seed_envelopes()

        @s
        @given(st.data())
        def streams(data: st.DataObject) -> None:
            if data.draw(st.booleans()):  # CRC-valid records whose payloads lie
                import io

                from enrgdaq_core.stream import StreamWriter

                buf = io.BytesIO()
                w = StreamWriter(buf)
                for env in envs:
                    if env.kind is Kind.TABLE and data.draw(st.booleans()):
                        env = Envelope(env.topic, env.header, data.draw(lying_payloads()))
                    w.write(env)
                raw = buf.getvalue()
            else:
                raw = ft.mutate(seed, data.draw(moves))
            _record(target, raw)
            ft.stream(raw)

        streams()
    elif target == "frames":
        seeds = [e.frames() for e in ft.seed_envelopes()]

        @s
        @given(st.data())
        def frames(data: st.DataObject) -> None:
            parts = [bytes(p) for p in data.draw(st.sampled_from(seeds))]
            which = data.draw(st.integers(0, 3))
            if which == 3:
                h = data.draw(headers)
                parts[1] = Envelope("t", h).frames()[1]
            else:
                parts[which] = ft.mutate(parts[which] or b"\x00", data.draw(moves))
            if data.draw(st.integers(0, 9)) == 0:
                parts = parts[: data.draw(st.integers(0, 4))]
            _record(target, parts)
            ft.frames(parts)

        frames()
    elif target == "run_files":
        good, index = ft.seed_run_file(tmp / "seed.raw")
        path = tmp / "fuzz.raw"

        @s
        @given(st.data())
        def run_files(data: st.DataObject) -> None:
            raw, idx = good, index
            if data.draw(st.booleans()):
                raw = ft.mutate(raw, data.draw(moves))
            choice = data.draw(st.integers(0, 2))
            idx = (
                None if choice == 0 else (idx if choice == 1 else ft.mutate(idx, data.draw(moves)))
            )
            _record(target, [raw, idx or b""])
            ft.run_file(raw, idx, path)

        run_files()
    else:
        raise SystemExit(f"unknown target {target!r}")
    faulthandler.cancel_dump_traceback_later()


def main() -> None:
    global _last
    target, examples, last = sys.argv[1], int(sys.argv[2]), Path(sys.argv[3])
    _last = last
    faulthandler.enable()
    soft, hard = resource.getrlimit(resource.RLIMIT_AS)
    limit = MEMORY_LIMIT if hard == resource.RLIM_INFINITY else min(MEMORY_LIMIT, hard)
    resource.setrlimit(resource.RLIMIT_AS, (limit, hard))
    with tempfile.TemporaryDirectory(prefix="daq-fuzz-") as tmp:
        run(target, examples, Path(tmp))
    os.unlink(last)
    print(f"{target}: {examples} examples, no crash")


if __name__ == "__main__":
    main()
