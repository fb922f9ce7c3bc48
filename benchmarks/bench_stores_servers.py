"""MySQL and Redis stores beside the bare client library writing the same batches.

    python benchmarks/bench_stores_servers.py [--quick] [--repeat N]

Cases: a high-rate stream of 1-row messages (sensor-like: a ns timestamp and three doubles),
and 100k-row messages of the same shape. "Ours" is the store's whole loop (StoreRunner reading
the stream file, decoding every envelope, batching, writing) as `daq store` runs it, timed
in-process so interpreter start-up is not counted (the wall time of a real `daq store`
process on the same file is reported beside it). "Bare" is the client library given the
already-decoded Arrow tables in the same batches the store writes (10,000 rows per flush for
1-row messages, one batch per 100k-row message): pymysql `executemany` + commit per batch,
redis-py pipelines (RPUSH per column; XADD per row for the stream layout). Target: ours >=
80% of bare. The same loop with a backend that discards rows is timed too: the
ceiling any backend can reach on that input. Writes benchmarks/results/stores_servers.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from _store_loop import run_null_store

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"
DAQ = [sys.executable, "-m", "enrgdaq_cli.main"]
MYSQL = {"host": "127.0.0.1", "port": 3306, "user": "root", "password": "", "database": "test"}
FLUSH_ROWS = 10_000  # the server stores' default flush size
T0 = 1_700_000_000_000_000_000


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


def make_stream(path: Path, source: str, sizes: list[int], store: dict) -> tuple[list, int]:
    """The stream file a store reads; returns the tables and the payload bytes."""
    from enrgdaq_core.envelope import Source
    from enrgdaq_core.stream import StreamWriter

    src = Source(source, store=store)
    tables, payload, start = [], 0, 0
    with path.open("wb") as f:
        w = StreamWriter(f)
        for n in sizes:
            t = sensor_table(start, n)
            start += n
            env = src.table(t)
            payload += env.nbytes
            w.write(env)
            tables.append(t)
        w.write(src.end_of_stream())
    return tables, payload


def batches(tables: list[pa.Table]) -> list[pa.Table]:
    """The batches the store writes: consecutive messages merged up to FLUSH_ROWS rows."""
    out, group, rows = [], [], 0
    for t in tables:
        group.append(t)
        rows += t.num_rows
        if rows >= FLUSH_ROWS:
            out.append(pa.concat_tables(group))
            group, rows = [], 0
    if group:
        out.append(pa.concat_tables(group))
    return out


# -- ours ------------------------------------------------------------------------------------


def run_store(backend: str, stream: Path, destination: str, assignments: dict) -> float:
    """Seconds for the store loop to read, decode and write the whole stream."""
    from enrgdaq_core.channels import StreamInput
    from enrgdaq_core.signals import StopFlag
    from enrgdaq_core.stores.options import build_backend
    from enrgdaq_core.stores.runner import StoreRunner

    be, overrides = build_backend(backend, assignments=assignments)
    be.check()
    runner = StoreRunner(
        be, name=f"bench-{backend}", settings_override=overrides, destination=destination
    )
    with stream.open("rb") as f:
        t0 = time.perf_counter()
        result = runner.run(StreamInput(f), StopFlag(), exit_on_eos=True)
        elapsed = time.perf_counter() - t0
    if result.failed_rows or runner.rejected_rows:
        raise RuntimeError(f"{backend}: {result.failed_rows} failed rows")
    return elapsed


def run_store_process(backend: str, stream: Path, destination: str, opts: list[str]) -> float:
    with stream.open("rb") as f:
        t0 = time.perf_counter()
        p = subprocess.run(
            [*DAQ, "store", backend, "--exit-on-eos", "-o", destination, *opts],
            stdin=f,
            capture_output=True,
            timeout=600,
        )
        elapsed = time.perf_counter() - t0
    if p.returncode != 0:
        raise RuntimeError(p.stderr.decode()[-2000:])
    return elapsed


# -- bare libraries --------------------------------------------------------------------------


def _rows(t: pa.Table) -> list[tuple]:
    cols = [t.column(0).cast(pa.int64()).to_pylist()]
    cols += [t.column(i).to_pylist() for i in range(1, t.num_columns)]
    return list(zip(*cols, strict=True))


def bare_mysql(table: str, work: list[pa.Table]) -> float:
    import pymysql

    conn = pymysql.connect(**MYSQL, autocommit=False)
    with conn.cursor() as cur:
        cur.execute(
            f"CREATE TABLE IF NOT EXISTS `{table}` (timestamp BIGINT, ch0 DOUBLE, "
            "ch1 DOUBLE, ch2 DOUBLE) ENGINE=InnoDB"
        )
    conn.commit()
    sql = f"INSERT INTO `{table}` (timestamp, ch0, ch1, ch2) VALUES (%s, %s, %s, %s)"
    t0 = time.perf_counter()
    with conn.cursor() as cur:
        for batch in work:
            cur.executemany(sql, _rows(batch))
            conn.commit()
    elapsed = time.perf_counter() - t0
    conn.close()
    return elapsed


def bare_mysql_per_message(table: str, work: list[pa.Table]) -> float:
    """What a store without batching does: one INSERT and commit per message."""
    import pymysql

    conn = pymysql.connect(**MYSQL, autocommit=False)
    with conn.cursor() as cur:
        cur.execute(
            f"CREATE TABLE IF NOT EXISTS `{table}` (timestamp BIGINT, ch0 DOUBLE, "
            "ch1 DOUBLE, ch2 DOUBLE) ENGINE=InnoDB"
        )
    conn.commit()
    sql = f"INSERT INTO `{table}` (timestamp, ch0, ch1, ch2) VALUES (%s, %s, %s, %s)"
    t0 = time.perf_counter()
    with conn.cursor() as cur:
        for t in work:
            cur.executemany(sql, _rows(t))
            conn.commit()
    elapsed = time.perf_counter() - t0
    conn.close()
    return elapsed


def _redis() -> Any:
    import redis

    return redis.Redis(host="127.0.0.1", port=6379)


def bare_redis_lists(key: str, work: list[pa.Table]) -> float:
    r = _redis()
    t0 = time.perf_counter()
    for batch in work:
        pipe = r.pipeline(transaction=False)
        pipe.rpush(f"{key}.timestamp", *batch.column(0).cast(pa.int64()).to_pylist())
        for name in batch.column_names[1:]:
            pipe.rpush(f"{key}.{name}", *batch.column(name).to_pylist())
        pipe.execute()
    elapsed = time.perf_counter() - t0
    r.close()
    return elapsed


def bare_redis_stream(key: str, work: list[pa.Table]) -> float:
    r = _redis()
    t0 = time.perf_counter()
    for batch in work:
        pipe = r.pipeline(transaction=False)
        ts = batch.column(0).cast(pa.int64()).to_pylist()
        cols = [batch.column(i).to_pylist() for i in range(1, batch.num_columns)]
        names = batch.column_names[1:]
        for i, t in enumerate(ts):
            fields = {"timestamp": t}
            for name, col in zip(names, cols, strict=True):
                fields[name] = col[i]
            pipe.xadd(key, fields, id=f"{t // 1_000_000}-0")
        pipe.execute()
    elapsed = time.perf_counter() - t0
    r.close()
    return elapsed


# -- cleanup ---------------------------------------------------------------------------------


def drop_tables(names: list[str]) -> None:
    import pymysql

    conn = pymysql.connect(**MYSQL, autocommit=True)
    with conn.cursor() as cur:
        for name in names:
            cur.execute(f"DROP TABLE IF EXISTS `{name}`")
    conn.close()


def drop_keys(prefix: str) -> None:
    r = _redis()
    keys = list(r.scan_iter(match=prefix + "*", count=1000))
    if keys:
        r.delete(*keys)
    r.close()


# -- driver ----------------------------------------------------------------------------------


def measure(
    name: str,
    rows: int,
    payload: int,
    ours: Callable[[int], float],
    bare: Callable[[int], float],
    repeat: int,
) -> dict[str, Any]:
    ours_t, bare_t = [], []
    for k in range(repeat):  # alternate, so drift of a shared machine hits both sides
        if k % 2:
            bare_t.append(bare(k))
            ours_t.append(ours(k))
        else:
            ours_t.append(ours(k))
            bare_t.append(bare(k))
    o, b = statistics.median(ours_t), statistics.median(bare_t)
    res = {
        "case": name,
        "rows": rows,
        "payload_mb": round(payload / 1e6, 3),
        "ours_rows_s": round(rows / o),
        "bare_rows_s": round(rows / b),
        "ours_mb_s": round(payload / o / 1e6, 2),
        "bare_mb_s": round(payload / b / 1e6, 2),
        "ratio": round(b / o, 3),
        "ours_s": [round(x, 3) for x in ours_t],
        "bare_s": [round(x, 3) for x in bare_t],
    }
    print(
        f"{name:<38} ours {res['ours_rows_s']:>9,} rows/s {res['ours_mb_s']:>7.2f} MB/s | "
        f"bare {res['bare_rows_s']:>9,} rows/s | ours/bare {res['ratio']:.2f}",
        flush=True,
    )
    return res


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="smaller runs (a smoke test)")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--out", type=Path, default=RESULTS / "stores_servers.json")
    args = ap.parse_args()

    small = 2_000 if args.quick else 20_000
    big = [20_000] * 2 if args.quick else [100_000] * 3
    tag = "bench_" + uuid.uuid4().hex[:8]
    tables: list[str] = []
    results: list[dict[str, Any]] = []
    ceilings: dict[str, int] = {}
    tmp = Path(tempfile.mkdtemp(prefix="daq-bench-"))
    try:
        for case, sizes in (("1-row messages", [1] * small), ("100k-row messages", big)):
            short = "msg1" if sizes[0] == 1 else "big"
            stream = tmp / f"{short}.raw"
            msgs, payload = make_stream(stream, "benchsrc", sizes, {})
            work = batches(msgs) if sizes[0] == 1 else msgs
            rows = sum(sizes)

            def mysql_ours(k: int, stream: Path = stream, short: str = short) -> float:
                name = f"{tag}_o{short}{k}"
                tables.append(name)
                return run_store("mysql", stream, name, {})

            def mysql_bare(k: int, work: list = work, short: str = short) -> float:
                name = f"{tag}_b{short}{k}"
                tables.append(name)
                return bare_mysql(name, work)

            results.append(
                {"backend": "mysql"}
                | measure(f"mysql, {case}", rows, payload, mysql_ours, mysql_bare, args.repeat)
            )
            for layout, bare_fn in (("lists", bare_redis_lists), ("stream", bare_redis_stream)):

                def redis_ours(k: int, stream: Path = stream, layout: str = layout) -> float:
                    key = f"{tag}:o:{layout}:{k}:{len(results)}"
                    try:
                        return run_store("redis", stream, key, {"layout": layout})
                    finally:
                        drop_keys(key)

                def redis_bare(k: int, work: list = work, fn: Any = bare_fn) -> float:
                    key = f"{tag}:b:{k}:{len(results)}"
                    try:
                        return fn(key, work)
                    finally:
                        drop_keys(key)

                results.append(
                    {"backend": f"redis ({layout})"}
                    | measure(
                        f"redis {layout}, {case}",
                        rows,
                        payload,
                        redis_ours,
                        redis_bare,
                        args.repeat,
                    )
                )
            drop_tables(tables)
            tables.clear()
            t_null = statistics.median(run_null_store(stream, "mysql") for _ in range(args.repeat))
            ceilings[case] = round(rows / t_null)
            print(f"{'store loop, no backend, ' + case:<38} {ceilings[case]:>14,} rows/s")

        # context: a real `daq store` process (start-up included) and an unbatched store
        stream = tmp / "msg1.raw"
        t_proc = run_store_process("mysql", stream, f"{tag}_proc", [])
        tables.append(f"{tag}_proc")
        few, _ = make_stream(tmp / "few.raw", "benchsrc", [1] * 1000, {})
        t_naive = bare_mysql_per_message(f"{tag}_naive", few)
        tables.append(f"{tag}_naive")
        context = {
            "store_loop_without_backend_rows_s": ceilings,
            "daq_store_process_wall_s_1row": round(t_proc, 3),
            "daq_store_process_rows_s_1row": round(small / t_proc),
            "bare_mysql_commit_per_message_rows_s": round(1000 / t_naive),
        }
        print(
            f"daq store mysql process, {small} 1-row messages: {t_proc:.2f} s wall "
            f"(start-up included); pymysql with a commit per message: "
            f"{context['bare_mysql_commit_per_message_rows_s']:,} rows/s"
        )
    finally:
        drop_tables(tables)
        drop_keys(tag)
        for f in tmp.iterdir():
            f.unlink()
        tmp.rmdir()

    out = {
        "benchmark": "stores_servers",
        "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "machine": {
            "python": platform.python_version(),
            "cpus": os.cpu_count(),
            "platform": platform.platform(),
        },
        "quick": args.quick,
        "repeat": args.repeat,
        "target_ratio": 0.8,
        "results": results,
        "context": context,
        "below_target": [r["case"] for r in results if r["ratio"] < 0.8],
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(out, indent=2) + "\n")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
