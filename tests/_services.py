"""MariaDB and Redis for the store tests: connect or skip (with how to start them);
private servers of our own for the fault tests (never stop the machine's).

With DAQ_REQUIRE_SERVICES=1 (CI) a missing service fails the test instead of skipping it.
Each test gets unique table / key names and drops them afterwards, since other test runs may
use the same servers at the same time.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import tempfile
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


def mysql_connect(port: int | None = None) -> Any:
    """The machine's server, or a private one on `port`."""
    import pymysql

    params = MYSQL if port is None else {**MYSQL, "port": port}
    return pymysql.connect(**params, autocommit=True, connect_timeout=3, charset="utf8mb4")


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


def table_count(table: str, port: int | None = None) -> int:
    try:
        conn = mysql_connect(port)
    except Exception:  # noqa: BLE001 - server restarting
        return -1
    try:
        return query(conn, f"SELECT COUNT(*) FROM `{table}`")[0][0]
    except Exception:  # noqa: BLE001 - table not created yet
        return 0
    finally:
        conn.close()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _binary(name: str, *dirs: str) -> str:
    """The path of a server binary, or fail/skip the test (like a missing service)."""
    found = shutil.which(name) or next(
        (str(Path(d) / name) for d in dirs if (Path(d) / name).is_file()), None
    )
    if found is None:
        unavailable(f"`{name}` is not installed: the fault tests run a private {name}.")
    return str(found)


class _PrivateServer:
    """A server process of our own in a temp dir, so fault tests never touch the machine's."""

    what = "server"

    def __init__(self) -> None:
        self.dir = Path(tempfile.mkdtemp(prefix="daq-svc-"))
        self.port = _free_port()
        self.proc: subprocess.Popen | None = None

    def command(self) -> list[str]:
        raise NotImplementedError

    def ready(self) -> bool:
        raise NotImplementedError

    def start(self, timeout: float = 60.0) -> None:
        """Start (again) on the same dir and port; wait until it accepts connections."""
        log = (self.dir / "server.log").open("ab")
        self.proc = subprocess.Popen(self.command(), stdout=log, stderr=log)
        log.close()

        def up() -> bool:
            if self.proc is not None and self.proc.poll() is not None:
                tail = (self.dir / "server.log").read_text(errors="replace")[-2000:]
                pytest.fail(f"private {self.what} exited at start:\n{tail}", pytrace=False)
            return self.ready()

        wait_until(up, timeout, f"private {self.what} on 127.0.0.1:{self.port}", interval=0.1)

    def stop(self, timeout: float = 30.0) -> None:
        """SIGTERM (a clean shutdown that keeps the data) and wait for the exit."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(timeout)
        self.proc = None

    def close(self) -> None:
        """Kill whatever still runs and remove the temp dir."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)
        self.proc = None
        shutil.rmtree(self.dir, ignore_errors=True)


class PrivateMariaDB(_PrivateServer):
    """`mariadbd` on a free port: root with empty password over tcp, database `test`."""

    what = "mariadbd"

    def __init__(self) -> None:
        super().__init__()
        self.mariadbd = _binary("mariadbd", "/usr/sbin")
        self.data = self.dir / "data"
        install = subprocess.run(
            [
                _binary("mariadb-install-db", "/usr/bin"),
                "--no-defaults",
                f"--datadir={self.data}",
                "--auth-root-authentication-method=normal",
                "--skip-test-db",
                "--user=root",
            ],
            capture_output=True,
            text=True,
            timeout=120,
        )
        if install.returncode != 0:
            pytest.fail(f"mariadb-install-db failed:\n{install.stderr[-2000:]}", pytrace=False)

    def command(self) -> list[str]:
        return [
            self.mariadbd,
            "--no-defaults",
            f"--datadir={self.data}",
            f"--socket={self.dir / 'sock'}",
            f"--port={self.port}",
            "--bind-address=127.0.0.1",
            f"--pid-file={self.dir / 'pid'}",
            "--user=root",
            "--skip-log-bin",
        ]

    def ready(self) -> bool:
        import pymysql

        try:
            conn = pymysql.connect(
                unix_socket=str(self.dir / "sock"), user="root", password="", connect_timeout=2
            )
        except Exception:  # noqa: BLE001 - not up yet
            return False
        with conn.cursor() as cur:  # tcp from 127.0.0.1 as root, empty password
            cur.execute("CREATE DATABASE IF NOT EXISTS test")
            cur.execute("CREATE USER IF NOT EXISTS 'root'@'127.0.0.1' IDENTIFIED BY ''")
            cur.execute("GRANT ALL ON *.* TO 'root'@'127.0.0.1'")
        conn.close()
        return True

    def options(self) -> list[str]:
        """The `daq store mysql` options that point it here."""
        return ["-O", "host=127.0.0.1", "-O", f"port={self.port}"]


@contextlib.contextmanager
def private_mariadb() -> Iterator[PrivateMariaDB]:
    """A started private MariaDB; always killed and its temp dir removed afterwards."""
    server = PrivateMariaDB()
    try:
        server.start()
        yield server
    finally:
        server.close()


# -- Redis ---------------------------------------------------------------------------------


def redis_connect(port: int | None = None) -> Any:
    """The machine's server, or a private one on `port`."""
    import redis

    params = REDIS if port is None else {**REDIS, "port": port}
    return redis.Redis(**params, socket_connect_timeout=3, socket_timeout=10)


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


class PrivateRedis(_PrivateServer):
    """`redis-server` on a free port; a stop saves its dump, a start loads it again."""

    what = "redis-server"

    def __init__(self) -> None:
        super().__init__()
        self.binary = _binary("redis-server", "/usr/bin")

    def command(self) -> list[str]:
        return [
            self.binary,
            "--port",
            str(self.port),
            "--bind",
            "127.0.0.1",
            "--dir",
            str(self.dir),
            "--dbfilename",
            "dump.rdb",
            "--save",
            "",
            "--appendonly",
            "no",
        ]

    def ready(self) -> bool:
        try:
            return bool(redis_connect(self.port).ping())
        except Exception:  # noqa: BLE001 - not up yet
            return False

    def stop(self, timeout: float = 30.0) -> None:
        """SHUTDOWN SAVE, so the next start has every key written before."""
        if self.proc is not None and self.proc.poll() is None:
            with contextlib.suppress(Exception):  # the connection drops as it exits
                redis_connect(self.port).shutdown(save=True)
            self.proc.wait(timeout)
        self.proc = None

    def options(self) -> list[str]:
        """The `daq store redis` options that point it here."""
        return ["-O", "host=127.0.0.1", "-O", f"port={self.port}"]


@contextlib.contextmanager
def private_redis() -> Iterator[PrivateRedis]:
    """A started private Redis; always killed and its temp dir removed afterwards."""
    server = PrivateRedis()
    try:
        server.start()
        yield server
    finally:
        server.close()


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
