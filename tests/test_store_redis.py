# ruff: noqa: F811 - the service fixtures are imported from _services
"""`daq store redis` against a real Redis: every value read back with redis-py."""

from __future__ import annotations

import datetime as dt
import json
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pytest

from _services import (
    PrivateRedis,
    StatsWatch,
    down_at_start,
    private_redis,
    publisher,
    redis_client,  # noqa: F401 - fixture
    redis_connect,
    redis_key,  # noqa: F401 - fixture
    start_store,
    store_stdin,
    stream_bytes,
    wait_until,
    write_stream,
)
from conftest import Procs, write
from enrgdaq_core.envelope import Source
from enrgdaq_core.transport import BrokerAddress

pytestmark = [pytest.mark.e2e, pytest.mark.services]

T0_MS = 1_700_000_000_000


def _store(procs: Procs, stream: Path, *args: str) -> subprocess.CompletedProcess:
    return store_stdin(procs, "redis", stream, *args)


def _table(start: int, n: int) -> pa.Table:
    i = np.arange(start, start + n)
    return pa.table(
        {
            "timestamp": pa.array((T0_MS + i * 250) * 1_000_000 + 7, pa.int64()).cast(
                pa.timestamp("ns", tz="UTC")
            ),
            "i16": pa.array(i - 3, pa.int16()),
            "u64": pa.array([2**64 - 1 - int(x) for x in i], pa.uint64()),
            "f32": pa.array(i / 3.0, pa.float32()),
            "f64": pa.array([x / 7.0 if x % 4 else None for x in i], pa.float64()),
            "flag": pa.array([bool(x % 2) for x in i]),
            "text": pa.array([f'r{x} \u00fc "q" , ;' for x in i]),
            "raw": pa.array([bytes([x % 256, 0, 255]) for x in i], pa.binary()),
            "day": pa.array([dt.date(2024, 1, 1) + dt.timedelta(days=int(x)) for x in i]),
            "wave": pa.array([[int(x), -int(x), 3] for x in i], pa.list_(pa.int16(), 3)),
        }
    )


def _decode(name: str, raw: bytes | None, t: pa.DataType) -> Any:
    """Read one stored value back as the source's Python value (the documented encoding)."""
    if raw is None or (raw == b"" and not pa.types.is_binary(t) and not pa.types.is_string(t)):
        return None
    if pa.types.is_timestamp(t):
        return int(raw)
    if pa.types.is_integer(t):
        return int(raw)
    if pa.types.is_floating(t):
        return float(raw)
    if pa.types.is_boolean(t):
        return raw == b"1"
    if pa.types.is_string(t):
        return raw.decode()
    if pa.types.is_binary(t):
        return raw
    if pa.types.is_date(t):
        return dt.date.fromisoformat(raw.decode())
    return json.loads(raw)


def _expected(table: pa.Table) -> dict[str, list[Any]]:
    out = table.to_pydict()
    ts = table.column("timestamp").cast(pa.int64()).to_pylist()
    out["timestamp"] = ts
    out["f32"] = [float(np.float32(v)) for v in out["f32"]]
    return out


def test_seed_list_layout_round_trip(procs: Procs, tmp_path: Path, redis_client: Any, redis_key):
    """The seed's layout: RPUSH per column to `<key>.<column>`, values read back exactly."""
    src = Source("lists", store={"redis": {"key": redis_key}})
    tables = [_table(0, 1), _table(1, 4), _table(5, 20)]
    stream = write_stream(
        tmp_path / "in.raw", [src.table(t) for t in tables] + [src.end_of_stream()]
    )
    _store(procs, stream)
    want = _expected(pa.concat_tables(tables))
    schema = tables[0].schema
    keys = sorted(k.decode() for k in redis_client.keys(redis_key + ".*"))
    assert keys == sorted(f"{redis_key}.{c}" for c in schema.names)
    for field in schema:
        raw = redis_client.lrange(f"{redis_key}.{field.name}", 0, -1)
        got = [_decode(field.name, v, field.type) for v in raw]
        assert got == want[field.name], field.name
    # f64 nulls are empty strings: row positions stay aligned across the column lists
    assert redis_client.lindex(f"{redis_key}.f64", 0) == b""


def test_seed_config_and_expiration(procs: Procs, tmp_path: Path, redis_client: Any, redis_key):
    """A seed store TOML loads as is; key_expiration_days dates the keys and sets a TTL."""
    cfg = write(
        tmp_path / "store_redis.toml",
        'daq_job_type = "DAQJobStoreRedis"\nhost = "127.0.0.1"\nport = 6379\ndb = 0\n',
    )
    src = Source("exp", store={"redis": {"key": redis_key, "key_expiration_days": 2}})
    table = pa.table({"timestamp": pa.array([T0_MS, T0_MS + 1], pa.int64()), "v": [1, 2]})
    stream = write_stream(tmp_path / "in.raw", [src.table(table), src.end_of_stream()])
    _store(procs, stream, "--config", str(cfg))
    today = dt.datetime.now().strftime("%Y-%m-%d")
    key = f"{redis_key}.v:{today}"
    assert redis_client.lrange(key, 0, -1) == [b"1", b"2"]
    assert 2 * 86400 - 60 <= redis_client.ttl(key) <= 2 * 86400


def test_stream_layout_range_query_by_time(
    procs: Procs, tmp_path: Path, redis_client: Any, redis_key
):
    """The portable time-series layout: XRANGE by time in ms returns exactly those rows."""
    src = Source("st", store={"redis": {"key": redis_key, "layout": "stream"}})
    tables = [_table(0, 3), _table(3, 37)]
    stream = write_stream(
        tmp_path / "in.raw", [src.table(t) for t in tables] + [src.end_of_stream()]
    )
    _store(procs, stream)
    want = _expected(pa.concat_tables(tables))
    schema = tables[0].schema
    entries = redis_client.xrange(redis_key)
    assert len(entries) == 40
    for r, (entry_id, fields) in enumerate(entries):
        assert entry_id == f"{T0_MS + r * 250}-0".encode()
        for field in schema:
            got = _decode(field.name, fields.get(field.name.encode()), field.type)
            assert got == want[field.name][r], (r, field.name)
    # rows 10..19 lie between T0+2500 ms and T0+4750 ms
    window = redis_client.xrange(redis_key, min=T0_MS + 2500, max=T0_MS + 4750)
    assert [int(f[b"i16"]) for _, f in window] == [r - 3 for r in range(10, 20)]
    assert redis_client.xrange(redis_key, min=T0_MS - 1000, max=T0_MS - 1) == []


def test_timeseries_without_module_is_a_clear_error(procs: Procs, tmp_path: Path, redis_key):
    """use_timeseries on a server without RedisTimeSeries: refused at start, naming the
    module and the portable layout; asked only by a source's header: logged, rows kept."""
    redis_connect().ping()
    try:
        redis_connect().execute_command("TS.INFO", "daq:probe:no-such-series")
        pytest.skip("this Redis has the RedisTimeSeries module: the error cannot happen")
    except Exception as exc:  # noqa: BLE001
        if "unknown command" not in str(exc).lower():
            pytest.skip("this Redis has the RedisTimeSeries module: the error cannot happen")
    src = Source("ts", store={"redis": {"key": redis_key}})
    data = stream_bytes([src.end_of_stream()])
    p = procs.run("store", "redis", "-O", "use_timeseries=true", input=data)
    err = p.stderr.decode()
    assert p.returncode == 1, err
    assert "RedisTimeSeries" in err and 'layout = "stream"' in err

    # asked only by a source's header: its rows are rejected with that reason (counted in
    # stats), never silently dropped and never stalling the other sources
    src = Source("ts2", store={"redis": {"key": redis_key, "use_timeseries": True}})
    other = Source("ok", store={"redis": {"key": redis_key + "ok"}})
    table = pa.table({"timestamp": pa.array([T0_MS], pa.int64()), "v": [1.0]})
    data = stream_bytes(
        [src.table(table), other.table(table), src.end_of_stream(), other.end_of_stream()]
    )
    p = procs.run("store", "redis", "--exit-on-eos", input=data, timeout=60)
    err = p.stderr.decode()
    assert "RedisTimeSeries" in err and 'layout = "stream"' in err
    assert "rejected 1 rows from ts2" in err
    assert redis_connect().lrange(redis_key + "ok.v", 0, -1) == [b"1"]


def test_from_broker(procs: Procs, broker: BrokerAddress, redis_client: Any, redis_key):
    store = start_store(procs, "redis", broker, ["rb"])
    pub = publisher(broker, ["rb"])
    src = Source("rb", store={"redis": {"key": redis_key, "layout": "stream"}})
    for k in range(30):
        t = pa.table({"timestamp": pa.array([T0_MS + k], pa.int64()), "v": [k * 0.5]})
        pub.send(src.table(t))
    pub.send(src.end_of_stream())
    pub.close()
    assert store.wait(30) == 0, store.stderr.read().decode()
    entries = redis_client.xrange(redis_key)
    assert [(e, float(f[b"v"])) for e, f in entries] == [
        (f"{T0_MS + k}-0".encode(), k * 0.5) for k in range(30)
    ]


@pytest.fixture
def redis_server() -> Iterator[PrivateRedis]:
    """A private Redis for a test that stops and starts it."""
    with private_redis() as server:
        yield server


def test_server_restart_mid_run_loses_nothing(
    procs: Procs, broker: BrokerAddress, redis_server: PrivateRedis, redis_key
):
    """Redis stops mid-run: rows are kept and retried (visible in stats), written after the
    reconnect, none lost and none twice (the server keeps its data over the restart).
    Source `a` ends while Redis is down; source `b` goes on after the restart.
    A private server of the test's own, so the machine's Redis is never stopped."""
    from enrgdaq_core.transport import Publisher

    store = start_store(
        procs,
        "redis",
        broker,
        ["rra", "rrb"],
        "--flush-seconds",
        "0.1",
        "--name",
        "store-redis-rr",
        *redis_server.options(),
    )
    stats = StatsWatch(broker, "store-redis-rr")
    a = Source("rra", store={"redis": {"key": redis_key + "a"}})
    b = Source("rrb", store={"redis": {"key": redis_key + "b", "layout": "stream"}})

    def send(pub: Publisher, src: Source, ks: range) -> None:
        for k in ks:
            t = pa.table({"timestamp": pa.array([T0_MS + k], pa.int64()), "k": [k]})
            pub.send(src.table(t))

    def count() -> int:
        try:
            client = redis_connect(redis_server.port)
            return client.llen(f"{redis_key}a.k") + client.xlen(f"{redis_key}b")
        except Exception:  # noqa: BLE001 - restarting
            return -1

    try:
        pub = publisher(broker, ["rra", "rrb"])
        send(pub, a, range(0, 40))
        send(pub, b, range(0, 20))
        wait_until(lambda: count() == 60, 30, "first rows in Redis")
        redis_server.stop()
        send(pub, a, range(40, 80))
        send(pub, b, range(20, 40))
        pub.send(a.end_of_stream())
        stats.wait(
            lambda x: not x.get("connected") and x.get("retries", 0) >= 1,
            30,
            "the store to see Redis gone and retry",
        )
        redis_server.start()
        send(pub, b, range(40, 70))
        pub.send(b.end_of_stream())
        pub.close()
        assert store.wait(60) == 0, store.stderr.read().decode()
    finally:
        stats.close()
    client = redis_connect(redis_server.port)
    assert [int(v) for v in client.lrange(f"{redis_key}a.k", 0, -1)] == list(range(80))
    entries = client.xrange(f"{redis_key}b")
    assert [(e, int(f[b"k"])) for e, f in entries] == [
        (f"{T0_MS + k}-0".encode(), k) for k in range(70)
    ]


def test_server_down_at_start_says_where_and_how(procs: Procs):
    err = down_at_start(procs, "redis", "-O", "port=1")
    assert "127.0.0.1:1" in err and "redis-server" in err


def test_exec_reply_lost_is_not_written_twice(redis_client: Any, redis_key):
    """EXEC applied but its reply lost: the retry checks the commit record, no duplicates.

    In-process: the failure is injected right after a real EXEC.
    """
    import redis

    from enrgdaq_core.store_config import RedisStoreConfig
    from enrgdaq_core.stores.base import Destination, TransientError
    from enrgdaq_core.stores.redis import RedisBackend, RedisOptions

    class LosesFirstReply(RedisBackend):
        failed = False

        def before_exec(self, pipe: Any) -> None:
            if not self.failed:
                self.failed = True
                pipe.execute()  # applied on the server...
                raise redis.ConnectionError("connection lost (injected)")

    backend = LosesFirstReply(RedisOptions())
    backend.check()
    for layout in ("lists", "stream"):
        key = f"{redis_key}{layout}"
        settings = RedisStoreConfig(layout=layout)
        writer = backend.open(Destination(source="s", settings=settings, name=key), None)
        first = pa.table({"timestamp": pa.array(range(10), pa.int64()), "k": range(10)})
        backend.failed = False
        with pytest.raises(TransientError):
            writer.write(first)
        more = pa.table({"timestamp": pa.array(range(10, 15), pa.int64()), "k": range(10, 15)})
        writer.write(pa.concat_tables([first, more]))
        writer.close()
        if layout == "lists":
            got = [int(v) for v in redis_client.lrange(f"{key}.k", 0, -1)]
        else:
            got = [int(f[b"k"]) for _, f in redis_client.xrange(key)]
        assert got == list(range(15)), layout
    assert backend.stats()["duplicates_avoided"] == 20
    backend.close()


def test_refused_command_is_reported(procs: Procs, tmp_path: Path, redis_client: Any, redis_key):
    """A key of another type (WRONGTYPE): that column is refused and said so; the other
    columns of the same rows are written (EXEC does not roll back)."""
    redis_client.set(f"{redis_key}.b", "not a list")
    src = Source("wt", store={"redis": {"key": redis_key}})
    table = pa.table({"a": [1, 2], "b": [3, 4]})
    stream = write_stream(tmp_path / "in.raw", [src.table(table), src.end_of_stream()])
    p = _store(procs, stream)
    assert b"Redis refused 1 command(s)" in p.stderr and b"WRONGTYPE" in p.stderr
    assert redis_client.lrange(f"{redis_key}.a", 0, -1) == [b"1", b"2"]
    assert redis_client.get(f"{redis_key}.b") == b"not a list"


def test_timeseries_commands_shape():
    """The RedisTimeSeries layout, checked against the command syntax with a recording
    client: no server with the module is available here (see docs/stores-servers.md)."""
    from enrgdaq_core.store_config import RedisStoreConfig
    from enrgdaq_core.stores.base import Destination
    from enrgdaq_core.stores.redis import RedisBackend, RedisOptions

    calls: list[tuple] = []

    class Pipe:
        def execute_command(self, *args: Any) -> None:
            calls.append(args)

        def set(self, *args: Any, **kw: Any) -> None:
            calls.append(("SET", *args))

        def execute(self, raise_on_error: bool = True) -> list:
            return []

    class Conn:
        def execute_command(self, *args: Any) -> None:
            calls.append(args)

        def pipeline(self, transaction: bool = True) -> Pipe:
            return Pipe()

    backend = RedisBackend(RedisOptions())
    backend._conn, backend._module = Conn(), True
    settings = RedisStoreConfig(key="lab", use_timeseries=True, key_expiration_days=1)
    writer = backend.open(Destination(source="s", settings=settings, tag="A"), None)
    ts = pa.array([T0_MS * 10**6, (T0_MS + 5) * 10**6], pa.int64()).cast(pa.timestamp("ns"))
    writer.write(
        pa.table({"timestamp": ts, "v": [1.5, float("nan")], "n": [3, 4], "s": ["x", "y"]})
    )
    assert calls[0] == (
        "TS.CREATE", "labA.v", "DUPLICATE_POLICY", "LAST", "RETENTION", 86400000,
        "LABELS", "key", "lab", "column", "v", "tag", "A",
    )  # fmt: skip
    assert calls[1][:2] == ("TS.CREATE", "labA.n")
    assert calls[2] == (
        "TS.MADD", "labA.v", T0_MS, b"1.5", "labA.n", T0_MS, b"3", "labA.n", T0_MS + 5, b"4",
    )  # fmt: skip
    stats = backend.stats()
    assert stats["nulled_values"] == 1 and stats["timeseries_columns_skipped"] == 1


def test_stream_retention(procs: Procs, tmp_path: Path, redis_client: Any, redis_key):
    """Stream layout with key_expiration_days: older entries are trimmed, the key expires."""
    import time

    now = int(time.time() * 1000)
    src = Source("ret", store={"redis": {"key": redis_key, "layout": "stream",
                                         "key_expiration_days": 1}})  # fmt: skip
    times = [now - 3 * 86_400_000, now - 2 * 86_400_000, now, now + 1]
    table = pa.table({"timestamp": pa.array(times, pa.int64()), "v": [0, 1, 2, 3]})
    stream = write_stream(tmp_path / "in.raw", [src.table(table), src.end_of_stream()])
    _store(procs, stream)
    assert [int(f[b"v"]) for _, f in redis_client.xrange(redis_key)] == [2, 3]
    assert 86_400 - 60 <= redis_client.ttl(redis_key) <= 86_400
