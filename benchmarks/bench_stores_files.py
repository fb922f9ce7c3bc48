"""CSV, ROOT and HDF5 stores beside the bare library writing the same batches.

    python benchmarks/bench_stores_files.py [--quick] [--repeat N]

Cases: a high-rate stream of 1-row messages (sensor-like: a ns timestamp and three doubles),
100k-row messages of the same shape, and digitizer-like messages of 1,000 events with four
1024-sample int16 waveforms (fixed-size lists). Per backend and case:

- ours, store loop: the whole store as `daq store` runs it (StoreRunner reading the stream
  file, decoding every envelope, batching, writing, flushing), timed in-process so interpreter
  start-up is not counted;
- ours, backend only: our TableWriter given the already-decoded batches the runner would hand it
  (the cost of the backend layer itself: conversions, bookkeeping, crash-safety marks);
- bare: the library alone on the same decoded batches with the same settings and durability
  (pyarrow.csv.write_csv + flush; uproot extend with ZSTD 5; h5py resize + write + flush in
  SWMR mode with gzip/shuffle and the same chunking);
- bare, one write per message (1-row case): what a store that does not batch would do.

Batches are the store's defaults: messages are merged until 10,000 rows (CSV, HDF5) or
100,000 rows (ROOT), or 64 MB of payload; the bare library gets exactly these batches. Target: ours >= 80% of bare. The store loop
with a backend that discards rows is timed too: the ceiling set by reading and decoding.
Writes benchmarks/results/stores_files.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from _store_loop import run_null_store

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"
T0 = 1_700_000_000_000_000_000
FLUSH_ROWS = {"csv": 10_000, "hdf5": 10_000, "root": 100_000}
EXT = {"csv": ".csv", "root": ".root", "hdf5": ".h5"}


def sensor_table(start: int, n: int) -> pa.Table:
    rng = np.random.default_rng(start)
    i = np.arange(start, start + n, dtype=np.int64)
    return pa.table(
        {
            "timestamp": pa.array(T0 + i * 1_000_000, pa.int64()).cast(
                pa.timestamp("ns", tz="UTC")
            ),
            "ch0": rng.normal(20.0, 0.1, n),
            "ch1": rng.normal(5.0, 0.01, n),
            "ch2": rng.normal(-3.0, 1.0, n),
        }
    )


def waveform_table(start: int, n: int, samples: int = 1024, channels: int = 4) -> pa.Table:
    rng = np.random.default_rng(start)
    cols: dict[str, Any] = {
        "event": pa.array(np.arange(start, start + n, dtype=np.uint64)),
        "timestamp": pa.array(T0 + np.arange(start, start + n) * 1000, pa.int64()).cast(
            pa.timestamp("ns", tz="UTC")
        ),
    }
    for ch in range(channels):
        waves = (1000 + rng.normal(0, 5, (n, samples))).astype(np.int16)
        cols[f"ch{ch}"] = pa.FixedSizeListArray.from_arrays(pa.array(waves.ravel()), samples)
    return pa.table(cols)


def make_stream(
    path: Path, make: Callable[[int, int], pa.Table], sizes: list[int], store: dict
) -> tuple[list[pa.Table], int]:
    from enrgdaq_core.envelope import Source
    from enrgdaq_core.stream import StreamWriter

    src = Source("benchsrc", store=store)
    tables, payload, start = [], 0, 0
    with path.open("wb") as f:
        w = StreamWriter(f)
        for n in sizes:
            t = make(start, n)
            start += n
            env = src.table(t)
            payload += env.nbytes
            w.write(env)
            tables.append(t)
        w.write(src.end_of_stream())
    return tables, payload


def batches(tables: list[pa.Table], flush_rows: int, flush_bytes: int = 64 << 20) -> list[pa.Table]:
    """The batches the store writes: consecutive messages merged until flush_rows rows or
    flush_bytes of payload (the runner's defaults)."""
    out, group, rows, nbytes = [], [], 0, 0
    for t in tables:
        group.append(t)
        rows += t.num_rows
        nbytes += t.nbytes
        if rows >= flush_rows or nbytes >= flush_bytes:
            out.append(pa.concat_tables(group).combine_chunks())
            group, rows, nbytes = [], 0, 0
    if group:
        out.append(pa.concat_tables(group).combine_chunks())
    return out


# -- ours ------------------------------------------------------------------------------------


def run_store(backend: str, stream: Path, out: Path) -> float:
    """Seconds for the store loop to read, decode, batch and write the whole stream."""
    from enrgdaq_core.channels import StreamInput
    from enrgdaq_core.signals import StopFlag
    from enrgdaq_core.stores.options import build_backend
    from enrgdaq_core.stores.runner import StoreRunner

    be, overrides = build_backend(backend)
    runner = StoreRunner(be, name=f"bench-{backend}", settings_override=overrides,
                         destination=str(out))  # fmt: skip
    with stream.open("rb") as f:
        t0 = time.perf_counter()
        result = runner.run(StreamInput(f), StopFlag(), exit_on_eos=True)
        elapsed = time.perf_counter() - t0
    if result.failed_rows or runner.rejected_rows or runner.bad_messages:
        raise RuntimeError(f"{backend}: rows not written")
    return elapsed


def run_writer(backend: str, work: list[pa.Table], out: Path) -> float:
    """Seconds for our TableWriter alone to write the decoded batches (open to close)."""
    from enrgdaq_core.stores import backend_class
    from enrgdaq_core.stores.base import Destination, StoreOptions

    cls = backend_class(backend)
    be = cls(StoreOptions())
    dest = Destination(source="benchsrc", settings=cls.Settings(), path=out)
    t0 = time.perf_counter()
    w = be.open(dest, work[0].schema)
    for batch in work:
        w.write(batch)
        w.flush()
    w.close()
    be.close()
    return time.perf_counter() - t0


# -- bare libraries --------------------------------------------------------------------------


def bare_csv(work: list[pa.Table], out: Path) -> float:
    import pyarrow.csv as pacsv

    t0 = time.perf_counter()
    with open(out, "ab") as f:
        for k, batch in enumerate(work):
            pacsv.write_csv(batch, f, pacsv.WriteOptions(include_header=k == 0))
            f.flush()
    return time.perf_counter() - t0


def _numpy_columns(batch: pa.Table) -> dict[str, np.ndarray]:
    out = {}
    for name, col in zip(batch.column_names, batch.columns, strict=True):
        arr = col.combine_chunks()
        if pa.types.is_timestamp(arr.type):
            out[name] = arr.view(pa.int64()).to_numpy()
        elif pa.types.is_fixed_size_list(arr.type):
            size = arr.type.list_size
            out[name] = arr.values.to_numpy().reshape(len(arr), size)
        else:
            out[name] = arr.to_numpy()
    return out


def bare_root(work: list[pa.Table], out: Path) -> float:
    import uproot

    t0 = time.perf_counter()
    f = uproot.recreate(out, compression=uproot.ZSTD(5))
    first = _numpy_columns(work[0])
    f.mktree("benchsrc", {k: np.dtype((v.dtype, v.shape[1:])) for k, v in first.items()})
    for batch in work:
        f["benchsrc"].extend(_numpy_columns(batch))
    f.close()
    return time.perf_counter() - t0


def bare_hdf5(work: list[pa.Table], out: Path) -> float:
    import h5py

    t0 = time.perf_counter()
    f = h5py.File(out, "w", libver="latest", rdcc_nbytes=64 << 20)
    g = f.create_group("benchsrc")
    first = _numpy_columns(work[0])
    rows0 = work[0].num_rows
    dss = {}
    for name, v in first.items():
        row = v.dtype.itemsize * int(np.prod(v.shape[1:], dtype=int))
        high = max(1, min(32768, (256 << 10) // row))
        low = max(1, min(high, (16 << 10) // row))
        chunk = max(low, min(high, 1 << max(0, rows0 - 1).bit_length()))
        dss[name] = g.create_dataset(
            name,
            shape=(0, *v.shape[1:]),
            maxshape=(None, *v.shape[1:]),
            chunks=(chunk, *v.shape[1:]),
            dtype=v.dtype,
            compression="gzip",
            shuffle=True,
        )
    f.swmr_mode = True
    n = 0
    for batch in work:
        cols = _numpy_columns(batch)
        for name, ds in dss.items():
            ds.resize(n + batch.num_rows, axis=0)
            ds[n:] = cols[name]
        n += batch.num_rows
        f.flush()
    f.close()
    return time.perf_counter() - t0


BARE = {"csv": bare_csv, "root": bare_root, "hdf5": bare_hdf5}


def check(backend: str, out: Path, rows: int) -> None:
    """The file holds every row: a benchmark that lost data reports nothing."""
    if backend == "csv":
        import pyarrow.csv as pacsv

        got = pacsv.read_csv(out).num_rows
    elif backend == "root":
        import uproot

        with uproot.open(out) as f:
            got = f["benchsrc"].num_entries
    else:
        import h5py

        with h5py.File(out, "r") as f:
            got = next(iter(f["benchsrc"].values())).shape[0]
    if got != rows:
        raise RuntimeError(f"{backend}: {out} holds {got} rows, expected {rows}")


# -- driver ----------------------------------------------------------------------------------


def timed(fn: Callable[[Path], float], tmp: Path, backend: str, rows: int, tag: str) -> float:
    out = tmp / f"{tag}{EXT[backend]}"
    try:
        elapsed = fn(out)
        check(backend, out, rows)
        return elapsed
    finally:
        out.unlink(missing_ok=True)


def measure(
    backend: str,
    case: str,
    rows: int,
    payload: int,
    sides: dict[str, Callable[[Path], float]],
    tmp: Path,
    repeat: int,
) -> dict[str, Any]:
    times: dict[str, list[float]] = {k: [] for k in sides}
    for k in range(repeat):  # rotate the order, so drift of a shared machine hits all sides
        order = list(sides)
        order = order[k % len(order) :] + order[: k % len(order)]
        for side in order:
            times[side].append(timed(sides[side], tmp, backend, rows, f"{side}{k}"))
    med = {k: statistics.median(v) for k, v in times.items()}
    res: dict[str, Any] = {"backend": backend, "case": case, "rows": rows,
                           "payload_mb": round(payload / 1e6, 3)}  # fmt: skip
    for side, t in med.items():
        res[f"{side}_rows_s"] = round(rows / t)
        res[f"{side}_mb_s"] = round(payload / t / 1e6, 2)
        res[f"{side}_s"] = [round(x, 3) for x in times[side]]
    res["ratio"] = round(med["bare"] / med["ours"], 3)  # the store loop vs the bare library
    res["ratio_backend_only"] = round(med["bare"] / med["writer"], 3)
    print(
        f"{backend:<5} {case:<26} ours {res['ours_rows_s']:>10,} rows/s "
        f"{res['ours_mb_s']:>7.1f} MB/s | backend only {res['writer_rows_s']:>10,} | "
        f"bare {res['bare_rows_s']:>10,} rows/s {res['bare_mb_s']:>7.1f} MB/s | "
        f"ours/bare {res['ratio']:.2f} (backend only {res['ratio_backend_only']:.2f})",
        flush=True,
    )
    return res


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="smaller runs (a smoke test)")
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--backends", default="csv,root,hdf5")
    ap.add_argument("--out", type=Path, default=RESULTS / "stores_files.json")
    args = ap.parse_args()

    # import every library before timing: the first side to run must not pay for it
    import awkward  # noqa: F401
    import h5py  # noqa: F401
    import pyarrow.csv  # noqa: F401
    import uproot  # noqa: F401
    import zstandard  # noqa: F401

    import enrgdaq_core.stores.csv  # noqa: F401
    import enrgdaq_core.stores.hdf5  # noqa: F401
    import enrgdaq_core.stores.root  # noqa: F401

    small = 2_000 if args.quick else 20_000
    cases = [
        ("1-row messages", sensor_table, [1] * small),
        ("100k-row messages", sensor_table, [20_000] * 2 if args.quick else [100_000] * 30),
        ("waveforms, 1000-event msgs", waveform_table, [1000] * (2 if args.quick else 10)),
    ]
    results: list[dict[str, Any]] = []
    context: dict[str, Any] = {"store_loop_without_backend_rows_s": {}}
    tmp = Path(tempfile.mkdtemp(prefix="daq-bench-files-"))
    try:
        for case, make, sizes in cases:
            stream = tmp / "in.daq"
            msgs, payload = make_stream(stream, make, sizes, {})
            rows = sum(sizes)
            for backend in args.backends.split(","):
                if backend == "csv" and make is waveform_table:
                    continue  # Arrow's CSV writer (the bare side) cannot write list columns
                work = batches(msgs, FLUSH_ROWS[backend])
                sides: dict[str, Callable[[Path], float]] = {
                    "ours": lambda out, b=backend, s=stream: run_store(b, s, out),
                    "writer": lambda out, b=backend, w=work: run_writer(b, w, out),
                    "bare": lambda out, b=backend, w=work: BARE[b](w, out),
                }
                res = measure(backend, case, rows, payload, sides, tmp, args.repeat)
                if sizes[0] == 1:  # what not batching costs, on a tenth of the messages
                    few = msgs[: max(1, len(msgs) // 10)]
                    t = timed(lambda out, b=backend, f=few: BARE[b](f, out), tmp, backend,
                              len(few), "permsg")  # fmt: skip
                    res["bare_one_write_per_message_rows_s"] = round(len(few) / t)
                results.append(res)
            t_null = statistics.median(run_null_store(stream, "csv") for _ in range(args.repeat))
            context["store_loop_without_backend_rows_s"][case] = round(rows / t_null)
            print(f"{'(store loop, no backend)':<11} {case:<26} {round(rows / t_null):>10,} rows/s")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)

    out = {
        "benchmark": "stores_files",
        "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "machine": {
            "python": platform.python_version(),
            "cpus": os.cpu_count(),
            "platform": platform.platform(),
        },
        "quick": args.quick,
        "repeat": args.repeat,
        "target_ratio": 0.8,
        "flush_rows": FLUSH_ROWS,
        "results": results,
        "context": context,
        "below_target": [f"{r['backend']}, {r['case']}" for r in results if r["ratio"] < 0.8],
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(out, indent=2) + "\n")
    print("ratios (ours/bare, store loop | backend only):")
    for r in results:
        print(
            f"  {r['backend']:<5} {r['case']:<26} {r['ratio']:.2f} | {r['ratio_backend_only']:.2f}"
        )
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
