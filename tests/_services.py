"""MariaDB and Redis for the store tests: connect or skip (with how to start them), restart.

With DAQ_REQUIRE_SERVICES=1 (CI) a missing service fails the test instead of skipping it.
Each test gets unique table / key names and drops them afterwards, since other test runs may
use the same servers at the same time.
"""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from _store_data import stream_bytes, write_stream
from conftest import Procs, wait_for

__all__ = ["stream_bytes", "write_stream"]  # with the helpers below: what store tests import

MYSQL = {"host": "127.0.0.1", "port": 3306, "user": "root", "password": "", "database": "test"}
REDIS = {"host": "127.0.0.1", "port": 6379}

MYSQL_HOWTO = (
    "MariaDB is not reachable at 127.0.0.1:3306 (root, empty password, database `test`). "
    "Start it with `systemctl start mariadb`, or without systemd "
    "`start-stop-daemon --start --oknodo --background --exec /usr/sbin/mariadbd`; then "
    "`mariadb -e 'CREATE DATABASE IF NOT EXISTS test'`. Set DAQ_REQUIRE_SERVICES=1 to make "
    "this a failure instead of a skip."
)
REDIS_HOWTO = (
    "Redis is not reachable at 127.0.0.1:6379. Start it with `systemctl start redis-server`, "
    'or `redis-server --daemonize yes --bind 127.0.0.1 --port 6379 --save "" '
    "--appendonly no`. Set DAQ_REQUIRE_SERVICES=1 to make this a failure instead of a skip."
)


def required() -> bool:
    return os.environ.get("DAQ_REQUIRE_SERVICES") == "1"


def unavailable(message: str) -> None:
    if required():
        pytest.fail(message, pytrace=False)
    pytest.skip(message)


def unique(prefix: str) -> str:
    return f"{prefix}_{uuid.uuid4().hex[:10]}"


def port_open(host: str, port: int, timeout: float = 0.5) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def wait_until(predicate: Any, timeout: float, what: str, interval: float = 0.1) -> Any:
    return wait_for(predicate, timeout, interval, what)


# -- MariaDB -------------------------------------------------------------------------------


def mysql_connect() -> Any:
    import pymysql

    return pymysql.connect(**MYSQL, autocommit=True, connect_timeout=3, charset="utf8mb4")


def mysql_or_skip() -> Any:
    try:
        return mysql_connect()
    except Exception as exc:  # noqa: BLE001 - any failure means: not usable here
        unavailable(f"{MYSQL_HOWTO} ({exc})")


@pytest.fixture
def mysql() -> Iterator[Any]:
    conn = mysql_or_skip()
    yield conn
    with contextlib.suppress(Exception):
        conn.close()


@pytest.fixture
def mysql_table(mysql: Any) -> Iterator[str]:
    """A unique table name, dropped (with its `__*` siblings) after the test."""
    name = unique("t_daq")
    yield name
    try:
        conn = mysql_connect()
    except Exception:  # noqa: BLE001 - server down after a failed restart: nothing to drop
        return
    with conn.cursor() as cur:
        cur.execute(
            "SELECT TABLE_NAME FROM information_schema.TABLES WHERE TABLE_SCHEMA = DATABASE() "
            "AND TABLE_NAME LIKE %s",
            (name + "%",),
        )
        for (table,) in cur.fetchall():
            cur.execute(f"DROP TABLE IF EXISTS `{table}`")
    conn.close()


def query(conn: Any, sql: str, args: Any = None) -> list[tuple]:
    with conn.cursor() as cur:
        cur.execute(sql, args)
        return list(cur.fetchall())


def table_count(table: str) -> int:
    try:
        conn = mysql_connect()
    except Exception:  # noqa: BLE001 - server restarting
        return -1
    try:
        return query(conn, f"SELECT COUNT(*) FROM `{table}`")[0][0]
    except Exception:  # noqa: BLE001 - table not created yet
        return 0
    finally:
        conn.close()


def _mariadbd_pids() -> list[int]:
    out = subprocess.run(["pgrep", "-x", "mariadbd"], capture_output=True, text=True)
    return [int(p) for p in out.stdout.split()]


def mariadb_stop(timeout: float = 30.0) -> None:
    pids = _mariadbd_pids()
    subprocess.run(
        ["mariadb-admin", "-h", "127.0.0.1", "-uroot", "--connect-timeout=5", "shutdown"],
        capture_output=True,
        timeout=timeout,
    )
    wait_until(
        lambda: not port_open("127.0.0.1", 3306) and not set(pids) & set(_mariadbd_pids()),
        timeout,
        "MariaDB to stop",
    )


def mariadb_start(timeout: float = 60.0) -> None:
    if not port_open("127.0.0.1", 3306):
        subprocess.run(
            [
                "start-stop-daemon",
                "--start",
                "--oknodo",
                "--background",
                "--exec",
                "/usr/sbin/mariadbd",
            ],
            capture_output=True,
            timeout=30,
        )

    def up() -> bool:
        try:
            mysql_connect().close()
            return True
        except Exception:  # noqa: BLE001
            return False

    wait_until(up, timeout, "MariaDB to accept connections", interval=0.2)


@contextlib.contextmanager
def mariadb_down() -> Iterator[None]:
    """MariaDB stopped inside the block; always started again, even when the test fails."""
    try:
        mariadb_stop()
        yield
    finally:
        mariadb_start()


# -- Redis ---------------------------------------------------------------------------------


def redis_connect() -> Any:
    import redis

    return redis.Redis(**REDIS, socket_connect_timeout=3, socket_timeout=10)


def redis_or_skip() -> Any:
    try:
        client = redis_connect()
        client.ping()
        return client
    except Exception as exc:  # noqa: BLE001
        unavailable(f"{REDIS_HOWTO} ({exc})")


@pytest.fixture
def redis_client() -> Iterator[Any]:
    client = redis_or_skip()
    yield client
    with contextlib.suppress(Exception):
        client.close()


@pytest.fixture
def redis_key(redis_client: Any) -> Iterator[str]:
    """A unique key prefix; every key starting with it is deleted after the test."""
    key = unique("k_daq")
    yield key
    try:
        client = redis_connect()
        keys = list(client.scan_iter(match=key + "*", count=1000))
        if keys:
            client.delete(*keys)
        client.close()
    except Exception:  # noqa: BLE001 - server down after a failed restart
        pass


@contextlib.contextmanager
def redis_down() -> Iterator[None]:
    """Redis stopped inside the block, then started again with its data (SHUTDOWN SAVE).

    The server comes back from the dump it wrote, so keys of other tests survive; the dump
    file is removed once loaded. Always restarted, even when the test fails.
    """
    client = redis_connect()
    conf = client.config_get("dir")
    conf.update(client.config_get("dbfilename"))
    directory, dbfile = conf.get("dir", "/tmp"), conf.get("dbfilename", "dump.rdb")
    dump = Path(directory) / dbfile
    try:
        subprocess.run(["redis-cli", "-p", "6379", "shutdown", "save"], capture_output=True)
        wait_until(lambda: not port_open("127.0.0.1", 6379), 30, "Redis to stop")
        yield
    finally:
        if not port_open("127.0.0.1", 6379):
            subprocess.run(
                [
                    "redis-server",
                    "--daemonize",
                    "yes",
                    "--bind",
                    "127.0.0.1",
                    "--port",
                    "6379",
                    "--save",
                    "",
                    "--appendonly",
                    "no",
                    "--dir",
                    directory,
                    "--dbfilename",
                    dbfile,
                ],
                capture_output=True,
                timeout=30,
            )

        def up() -> bool:
            try:
                return bool(redis_connect().ping())
            except Exception:  # noqa: BLE001
                return False

        wait_until(up, 30, "Redis to accept connections")
        with contextlib.suppress(OSError):
            dump.unlink()  # loaded: a later plain restart must not bring back old data


# -- feeding stores -----------------------------------------------------------------------


def store_stdin(
    procs: Procs, backend: str, stream: Path, *args: str
) -> subprocess.CompletedProcess:
    """`daq store BACKEND --exit-on-eos` fed a stream file; it must exit 0."""
    with stream.open("rb") as f:
        p = procs.run("store", backend, "--exit-on-eos", *args, stdin=f, timeout=60)
    assert p.returncode == 0, p.stderr.decode()
    return p


def start_store(
    procs: Procs, backend: str, broker: Any, sources: list[str], *args: str
) -> subprocess.Popen:
    """`daq store BACKEND` on the broker, taking `data.<source>` of each source."""
    froms = [a for s in sources for a in ("--from", f"data.{s}")]
    return procs.start("store", backend, *froms, "--broker", broker.base, "--exit-on-eos", *args)


def publisher(broker: Any, sources: list[str]) -> Any:
    """A Publisher on the broker once a store subscribed to every source's data topic."""
    from enrgdaq_core.broker_client import wait_for_subscriptions
    from enrgdaq_core.transport import Publisher

    assert wait_for_subscriptions(broker, [f"data.{s}" for s in sources], timeout=30)
    pub = Publisher(broker)
    assert pub.wait_ready(10)
    return pub


def down_at_start(procs: Procs, backend: str, *options: str) -> str:
    """`daq store BACKEND` with its server unreachable: exit 1; returns what it said."""
    from enrgdaq_core.envelope import Source

    src = Source("x", store={backend: {}})
    p = procs.run("store", backend, *options, input=stream_bytes([src.end_of_stream()]))
    err = p.stderr.decode()
    assert p.returncode == 1, err
    return err


class StatsWatch:
    """The latest stats report of one piece, read from the broker's monitor endpoint."""

    def __init__(self, address: Any, piece: str) -> None:
        from enrgdaq_core.transport import Subscriber

        self.sub = Subscriber(address, [f"stats.{piece}"], mode="monitor")
        self.latest: dict[str, Any] = {}

    def poll(self, timeout: float = 0.2) -> dict[str, Any]:
        from enrgdaq_core.envelope import decode_body

        env = self.sub.recv(timeout)
        while env is not None:
            self.latest = decode_body(env.payload)
            env = self.sub.recv(0)
        return self.latest

    def wait(self, predicate: Any, timeout: float, what: str) -> dict[str, Any]:
        def check() -> dict[str, Any] | None:
            report = self.poll()
            return report if report and predicate(report.get("extra", {})) else None

        return wait_until(check, timeout, what, interval=0.0)

    def close(self) -> None:
        self.sub.close()
