# ruff: noqa: F811 - the service fixtures are imported from _services
"""`daq store mysql` against a real MariaDB: every value and type read back with SQL."""

from __future__ import annotations

import datetime as dt
import decimal
import json
import signal
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pytest

from _services import (
    PrivateMariaDB,
    StatsWatch,
    down_at_start,
    mysql,  # noqa: F401 - fixture
    mysql_connect,
    mysql_table,  # noqa: F401 - fixture
    private_mariadb,
    publisher,
    query,
    start_store,
    store_stdin,
    stream_bytes,
    table_count,
    wait_until,
    write_stream,
)
from conftest import Procs, write
from enrgdaq_core.envelope import Source
from enrgdaq_core.transport import BrokerAddress

pytestmark = [pytest.mark.e2e, pytest.mark.services]

T0 = 1_700_000_000_123_456_789  # ns


def _columns(conn: Any, table: str) -> dict[str, tuple[str, str]]:
    rows = query(
        conn,
        "SELECT COLUMN_NAME, COLUMN_TYPE, COLUMN_COMMENT FROM information_schema.COLUMNS "
        "WHERE TABLE_SCHEMA = DATABASE() AND TABLE_NAME = %s ORDER BY ORDINAL_POSITION",
        (table,),
    )
    return {name: (sql, comment) for name, sql, comment in rows}


def _store(procs: Procs, stream: Path, *args: str) -> subprocess.CompletedProcess:
    return store_stdin(procs, "mysql", stream, *args)


def _typed_table(start: int, n: int) -> pa.Table:
    i = np.arange(start, start + n)
    wave = (np.arange(n * 4, dtype=np.int16).reshape(n, 4) + start).astype(np.int16)
    return pa.table(
        {
            "timestamp": pa.array(T0 + i, pa.int64()).cast(pa.timestamp("ns", tz="UTC")),
            "t_us": pa.array(1_600_000_000_000_000 + i * 7, pa.int64()).cast(pa.timestamp("us")),
            "i8": pa.array((i % 256) - 128, pa.int8()),
            "u16": pa.array(i * 3 % 65536, pa.uint16()),
            "i64": pa.array(-(2**62) + i, pa.int64()),
            "u64": pa.array([2**64 - 1 - int(x) for x in i], pa.uint64()),
            "f32": pa.array(i / 3.0, pa.float32()),
            "f64": pa.array([x / 7.0 if x % 5 else None for x in i], pa.float64()),
            "flag": pa.array([bool(x % 2) for x in i]),
            "text": pa.array([f"r{x} it's \\ \u00fc\u00f1\u00ee \x00 end" for x in i]),
            "raw": pa.array([bytes([x % 256, 0, 255]) for x in i], pa.binary()),
            "day": pa.array([dt.date(2024, 1, 1) + dt.timedelta(days=int(x)) for x in i]),
            "price": pa.array([decimal.Decimal(f"{x}.25") for x in i], pa.decimal128(10, 2)),
            "wave": pa.FixedSizeListArray.from_arrays(pa.array(wave.ravel()), 4),
            "vlist": pa.array([[x * 0.5] * (x % 3) for x in i], pa.list_(pa.float64())),
            "meta": pa.array([{"k": int(x), "s": f"v{x}"} for x in i]),
        }
    )


def test_types_round_trip_from_stdin(procs: Procs, tmp_path: Path, mysql: Any, mysql_table: str):
    src = Source("sensor_types", store={"mysql": {"table_name": "ignored_by_flag"}})
    tables = [_typed_table(0, 1), _typed_table(1, 5), _typed_table(6, 30)]
    stream = write_stream(
        tmp_path / "in.raw", [src.table(t) for t in tables] + [src.end_of_stream()]
    )
    _store(procs, stream, "--table", mysql_table)

    cols = _columns(mysql, mysql_table)
    assert {k: v[0] for k, v in cols.items()} == {
        "timestamp": "bigint(20)",
        "t_us": "datetime(6)",
        "i8": "tinyint(4)",
        "u16": "smallint(5) unsigned",
        "i64": "bigint(20)",
        "u64": "bigint(20) unsigned",
        "f32": "double",
        "f64": "double",
        "flag": "tinyint(1)",
        "text": "longtext",
        "raw": "longblob",
        "day": "date",
        "price": "decimal(10,2)",
        "wave": "longblob",
        "vlist": "longblob",
        "meta": "longtext",
    }
    assert cols["timestamp"][1] == "arrow:timestamp[ns, tz=UTC]"
    assert cols["wave"][1] == "arrow:fixed_size_list<item: int16>[4]"

    names = list(cols)
    got = query(mysql, f"SELECT * FROM `{mysql_table}` ORDER BY i64")
    want = pa.concat_tables(tables)
    assert len(got) == want.num_rows == 36
    for r, row in enumerate(got):
        rec = dict(zip(names, row, strict=True))
        exp = {k: v[r] for k, v in want.to_pydict().items()}
        assert rec["timestamp"] == T0 + r and isinstance(rec["timestamp"], int)
        assert rec["t_us"] == exp["t_us"] and isinstance(rec["t_us"], dt.datetime)
        for k in ("i8", "u16", "i64", "u64"):
            assert rec[k] == exp[k] and type(rec[k]) is int, k
        assert rec["f32"] == float(np.float32(r / 3.0))  # exact widening of the float32
        assert rec["f64"] == exp["f64"]  # None where null
        assert rec["flag"] == int(exp["flag"])
        assert rec["text"] == exp["text"] and "\x00" in rec["text"]
        assert rec["raw"] == exp["raw"]
        assert rec["day"] == exp["day"]
        assert rec["price"] == exp["price"] and isinstance(rec["price"], decimal.Decimal)
        assert np.frombuffer(rec["wave"], "<i2").tolist() == exp["wave"]
        assert np.frombuffer(rec["vlist"], "<f8").tolist() == exp["vlist"]
        assert json.loads(rec["meta"]) == exp["meta"]


def test_seed_config_header_table_and_unstorable_values(
    procs: Procs, tmp_path: Path, mysql: Any, mysql_table: str
):
    """A seed-style store TOML loads as is; the table comes from the source's header;
    NaN/inf (which MySQL cannot hold) become NULL and are counted, never a crash."""
    cfg = write(
        tmp_path / "store_mysql.toml",
        'daq_job_type = "DAQJobStoreMySQL"\nhost = "127.0.0.1"\nuser = "root"\n'
        'password = ""\ndatabase = "test"\nport = 3306\n',
    )
    src = Source("seedlike", store={"mysql": {"table_name": mysql_table}})
    table = pa.table(
        {"timestamp": pa.array([1, 2, 3, 4], pa.int64()), "v": [1.5, float("nan"), -np.inf, 2.0]}
    )
    stream = write_stream(tmp_path / "in.raw", [src.table(table), src.end_of_stream()])
    p = _store(procs, stream, "--config", str(cfg))
    got = query(mysql, f"SELECT timestamp, v FROM `{mysql_table}` ORDER BY timestamp")
    assert got == [(1, 1.5), (2, None), (3, None), (4, 2.0)]
    assert b"stored as NULL" in p.stderr


def test_schema_changes_mid_stream(procs: Procs, tmp_path: Path, mysql: Any, mysql_table: str):
    """Columns added -> ALTER TABLE ADD COLUMN; a compatible narrower type -> same column;
    an incompatible type -> a new column `<name>__<type>`; nothing mixed, nothing lost."""
    src = Source("evolving", store={"mysql": {"table_name": mysql_table}})
    a = pa.table({"n": pa.array([0, 1], pa.int32()), "a": pa.array([10, 11], pa.int32())})
    b = pa.table(
        {
            "n": pa.array([2], pa.int32()),
            "a": pa.array([12], pa.int32()),
            "c": pa.array(["new"]),
        }
    )
    c = pa.table({"n": pa.array([3], pa.int32()), "a": pa.array([-5], pa.int16())})  # fits INT
    d = pa.table({"n": pa.array([4], pa.int32()), "a": pa.array(["text now"])})  # type change
    e = pa.table({"n": pa.array([5], pa.int32()), "a": pa.array([2**40], pa.int64())})  # wider
    f = pa.table({"n": pa.array([6], pa.int32()), "a": pa.array(["again"]), "c": ["x"]})
    envs = [src.table(t) for t in (a, b, c, d, e, f)] + [src.end_of_stream()]
    stream = write_stream(tmp_path / "in.raw", envs)
    p = _store(procs, stream, "--flush-rows", "1")  # one flush per message: every change seen

    cols = _columns(mysql, mysql_table)
    assert {k: v[0] for k, v in cols.items()} == {
        "n": "int(11)",
        "a": "int(11)",
        "c": "longtext",
        "a__string": "longtext",
        "a__int64": "bigint(20)",
    }
    got = query(mysql, f"SELECT n, a, c, a__string, a__int64 FROM `{mysql_table}` ORDER BY n")
    assert got == [
        (0, 10, None, None, None),
        (1, 11, None, None, None),
        (2, 12, "new", None, None),
        (3, -5, None, None, None),
        (4, None, None, "text now", None),
        (5, None, None, None, 2**40),
        (6, None, "x", "again", None),
    ]
    assert b"now arrives as string" in p.stderr


def test_from_broker_with_stats(procs: Procs, broker: BrokerAddress, mysql: Any, mysql_table: str):
    """`daq store mysql --from data.X`: rows published to the broker land; stats show it."""
    store = start_store(
        procs, "mysql", broker, ["brk"], "--flush-seconds", "0.1", "--name", "store-mysql-brk"
    )
    stats = StatsWatch(broker, "store-mysql-brk")
    try:
        pub = publisher(broker, ["brk"])
        src = Source("brk", store={"mysql": {"table_name": mysql_table}})
        sent = []
        for k in range(20):
            t = pa.table(
                {
                    "timestamp": pa.array([T0 + k * 1000], pa.int64()).cast(
                        pa.timestamp("ns", tz="UTC")
                    ),
                    "ch0": [k * 0.25],
                    "ch1": pa.array([k], pa.int16()),
                }
            )
            sent.append((T0 + k * 1000, k * 0.25, k))
            pub.send(src.table(t))
        report = stats.wait(
            lambda x: x.get("transactions", 0) >= 1 and x.get("connected"), 30, "mysql stats"
        )
        assert report["extra"]["server"] == "127.0.0.1:3306"
        pub.send(src.end_of_stream())
        pub.close()
        assert store.wait(30) == 0, store.stderr.read().decode()
    finally:
        stats.close()
    got = query(mysql, f"SELECT timestamp, ch0, ch1 FROM `{mysql_table}` ORDER BY timestamp")
    assert got == sent


@pytest.fixture
def mariadb() -> Iterator[PrivateMariaDB]:
    """A private MariaDB for a test that stops and starts it."""
    with private_mariadb() as server:
        yield server


def test_server_restart_mid_run_loses_nothing(
    procs: Procs, broker: BrokerAddress, mariadb: PrivateMariaDB, mysql_table: str
):
    """MariaDB stops mid-run: rows are kept and retried (stats show it), the store
    reconnects, and every row is in the table exactly once. Source `a` ends while the
    server is down (its last rows wait in the store); source `b` goes on after the restart.
    A private server of the test's own, so the machine's MariaDB is never stopped.
    """
    from enrgdaq_core.transport import Publisher

    store = start_store(
        procs,
        "mysql",
        broker,
        ["rsta", "rstb"],
        "--flush-seconds",
        "0.1",
        "--name",
        "store-mysql-rst",
        *mariadb.options(),
    )
    stats = StatsWatch(broker, "store-mysql-rst")
    settings = {"mysql": {"table_name": mysql_table}}
    a, b = Source("rsta", store=settings), Source("rstb", store=settings)
    sent: list[int] = []

    def send(pub: Publisher, src: Source, ks: range) -> None:
        for k in ks:
            pub.send(src.table(pa.table({"k": pa.array([k], pa.int64()), "v": [k / 8]})))
            sent.append(k)

    try:
        pub = publisher(broker, ["rsta", "rstb"])
        send(pub, a, range(0, 40))
        send(pub, b, range(1000, 1020))
        wait_until(lambda: table_count(mysql_table, mariadb.port) == 60, 30, "first rows in MySQL")
        mariadb.stop()
        send(pub, a, range(40, 80))  # kept by the store while the server is down
        send(pub, b, range(1020, 1040))
        pub.send(a.end_of_stream())  # `a` ends with rows still waiting
        stats.wait(
            lambda x: not x.get("connected") and x.get("retries", 0) >= 1,
            30,
            "the store to see the server gone and retry",
        )
        mariadb.start()
        send(pub, b, range(1040, 1070))  # after the restart
        pub.send(b.end_of_stream())
        pub.close()
        assert store.wait(60) == 0, store.stderr.read().decode()
        report = stats.poll(1.0)
    finally:
        stats.close()
    conn = mysql_connect(mariadb.port)
    got = query(conn, f"SELECT k, v FROM `{mysql_table}` ORDER BY k")
    conn.close()
    assert got == [(k, k / 8) for k in sorted(sent)]  # none lost, none twice
    assert len(sent) == 150
    if report:  # the final report (telemetry may drop it; the retries were seen above)
        assert report["extra"]["reconnects"] >= 1


def test_commit_reply_lost_is_not_written_twice(mysql: Any, mysql_table: str):
    """The server applies a commit but the reply is lost: the retry must not duplicate.

    In-process (the failure is injected between the commit and its reply, which cannot be
    timed from outside); the runner retries exactly like this after a TransientError.
    """
    import pymysql

    from enrgdaq_core.store_config import MySQLStoreConfig
    from enrgdaq_core.stores.base import Destination, TransientError
    from enrgdaq_core.stores.mysql import MySQLBackend, MySQLOptions

    class LosesFirstReply(MySQLBackend):
        failed = False

        def before_commit(self, conn: Any) -> None:
            if not self.failed:
                self.failed = True
                conn.commit()  # applied on the server...
                raise pymysql.err.OperationalError(2013, "Lost connection (injected)")

    backend = LosesFirstReply(MySQLOptions())
    backend.check()
    dest = Destination(source="s", settings=MySQLStoreConfig(), name=mysql_table)
    writer = backend.open(dest, None)
    first = pa.table({"k": pa.array(range(10), pa.int64())})
    with pytest.raises(TransientError):
        writer.write(first)
    assert table_count(mysql_table) == 10  # ...the rows are there
    # the runner retries with the same rows first, plus what arrived meanwhile
    writer.write(pa.concat_tables([first, pa.table({"k": pa.array(range(10, 15), pa.int64())})]))
    writer.close()
    backend.close()
    assert query(mysql, f"SELECT k FROM `{mysql_table}` ORDER BY k") == [(k,) for k in range(15)]
    assert backend.stats()["duplicates_avoided"] == 10


def test_server_down_at_start_says_where_and_how(procs: Procs, tmp_path: Path):
    err = down_at_start(procs, "mysql", "-O", "port=1", "-O", "host=127.0.0.1")
    assert "127.0.0.1:1" in err
    assert "start-stop-daemon --start --oknodo --background --exec /usr/sbin/mariadbd" in err
    assert "systemctl start mariadb" in err


def test_kill9_keeps_committed_rows(procs: Procs, mysql: Any, mysql_table: str):
    """kill -9 mid-write: every committed flush is in the table, whole, and readable."""
    store = procs.start(
        "store",
        "mysql",
        "-i",
        "-",
        "--table",
        mysql_table,
        "--flush-rows",
        "10",
        stdin=subprocess.PIPE,
    )
    src = Source("k9")

    def send(ks: range) -> None:
        envs = [src.table(pa.table({"k": pa.array([k], pa.int64())})) for k in ks]
        store.stdin.write(stream_bytes(envs, header=False))
        store.stdin.flush()

    store.stdin.write(stream_bytes([]))  # the stream's file header
    send(range(100))
    wait_until(lambda: table_count(mysql_table) >= 100, 30, "rows before the kill")
    send(range(100, 155))
    store.send_signal(signal.SIGKILL)
    store.wait(10)
    got = [k for (k,) in query(mysql, f"SELECT k FROM `{mysql_table}` ORDER BY k")]
    assert got == list(range(len(got)))  # a prefix: whole flushes, nothing torn or twice
    assert 100 <= len(got) <= 155


def test_datetime_and_json_options(procs: Procs, tmp_path: Path, mysql: Any, mysql_table: str):
    """`timestamp_type = "datetime"` stores ns timestamps as DATETIME(6) (to the µs, by
    choice); `list_type = "json"` stores lists as JSON text."""
    src = Source("opts", store={"mysql": {"table_name": mysql_table}})
    table = pa.table(
        {
            "timestamp": pa.array([T0, None], pa.int64()).cast(pa.timestamp("ns", tz="UTC")),
            "wave": pa.array([[1, 2], [None, 3]], pa.list_(pa.int32())),
        }
    )
    stream = write_stream(tmp_path / "in.raw", [src.table(table), src.end_of_stream()])
    _store(procs, stream, "-O", "timestamp_type=datetime", "-O", "list_type=json")
    cols = _columns(mysql, mysql_table)
    assert cols["timestamp"][0] == "datetime(6)" and cols["wave"][0] == "longtext"
    got = query(mysql, f"SELECT timestamp, wave FROM `{mysql_table}` ORDER BY wave")
    stamp = dt.datetime(2023, 11, 14, 22, 13, 20, 123456)
    assert got == [(stamp, "[1,2]"), (None, "[null,3]")]


def test_refused_row_is_counted_and_the_rest_stored(
    procs: Procs, tmp_path: Path, mysql: Any, mysql_table: str
):
    """A value the server refuses (a date past DATETIME's year 9999): that row is logged and
    counted, the other rows of the same flush are stored."""
    src = Source("refuse", store={"mysql": {"table_name": mysql_table}})
    us = [1_600_000_000_000_000, 300_000_000_000_000_000, 1_600_000_000_000_001]
    table = pa.table({"k": [0, 1, 2], "t": pa.array(us, pa.int64()).cast(pa.timestamp("us"))})
    stream = write_stream(tmp_path / "in.raw", [src.table(table), src.end_of_stream()])
    p = _store(procs, stream)
    assert b"1 row(s) refused by the server" in p.stderr
    got = query(mysql, f"SELECT k, t FROM `{mysql_table}` ORDER BY k")
    base = dt.datetime(2020, 9, 13, 12, 26, 40)
    assert got == [(0, base), (2, base + dt.timedelta(microseconds=1))]
