"""Redis (redis-py): the seed's list-per-column layout, RedisTimeSeries, or a plain stream.

Layouts (`[store_config.redis] layout`, see docs/stores.md):
- `lists` (the seed's): for each column `RPUSH <key>.<column> v1 v2 ...`; with
  `key_expiration_days` the keys get a `:YYYY-MM-DD` suffix and expire that many days later.
- `timeseries` (`use_timeseries = true`): RedisTimeSeries `TS.MADD` into `<key>.<column>`,
  timestamps from the `timestamp` column; needs the module on the server.
- `stream`: one Redis stream `<key>` per source, one entry per row, entry ids = row time in
  ms, so any client range-queries by time with `XRANGE <key> <from-ms> <to-ms>` on a plain
  Redis (what Grafana's Redis data source does with XRANGE).

Every flush is one MULTI/EXEC pipeline that also sets `daq:commit:<writer>` to the batch
number, so a retry after a lost reply can tell whether its batch was applied (no duplicates).
"""

from __future__ import annotations

import datetime as _dt
import json
import logging
from typing import TYPE_CHECKING, Any

from enrgdaq_core import timefmt
from enrgdaq_core.store_config import RedisStoreConfig
from enrgdaq_core.stores._server import ServerBackend, ServerWriter
from enrgdaq_core.stores.base import (
    Destination,
    StoreOptions,
    StoreUnavailable,
    TableWriter,
    TransientError,
)

if TYPE_CHECKING:
    import pyarrow as pa

log = logging.getLogger("enrgdaq.store.redis")

COMMIT_PREFIX = "daq:commit:"
COMMIT_TTL = 7 * 86400
START_HELP = (
    "start it with `systemctl start redis-server` (or `redis-server --daemonize yes`), "
    "or point the store at your server with -O host=... -O port=..."
)
MODULE_HELP = (
    "the RedisTimeSeries module (TS.* commands) is not loaded on this server: load it "
    "(`loadmodule /path/to/redistimeseries.so` in redis.conf, or use Redis Stack / Redis 8), "
    'or use the portable layout on plain Redis: layout = "stream" (one stream per source, '
    "entry ids = time in ms, range queries with XRANGE key FROM_MS TO_MS)"
)
_TS_NS = {"s": 1_000_000_000, "ms": 1_000_000, "us": 1_000, "ns": 1}


class RedisOptions(StoreOptions):
    """Where the server is (the seed's DAQJobStoreRedis keys)."""

    host: str = "127.0.0.1"
    port: int = 6379
    db: int = 0
    password: str | None = None
    connect_timeout: float = 5.0
    socket_timeout: float = 60.0  # a command taking longer counts as a lost connection


def layout_of(settings: RedisStoreConfig) -> str:
    if settings.layout:
        return settings.layout
    return "timeseries" if settings.use_timeseries else "lists"


# -- values --------------------------------------------------------------------------------


def encode_column(arr: pa.Array | pa.ChunkedArray) -> list[bytes | None]:
    """One column as Redis values (None for nulls), exact and human-readable.

    Integers and decimals as decimal text, floats as the shortest text that reads back to the
    same double (`nan`, `inf` included), booleans as 1/0, timestamps as integers in their
    unit, dates as ISO text, strings as UTF-8, binary as is, lists and structs as JSON.
    """
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.types as pt

    t = arr.type
    if pt.is_dictionary(t):
        arr = (
            arr.cast(t.value_type) if isinstance(arr, pa.ChunkedArray) else arr.dictionary_decode()
        )
        t = arr.type
    if pt.is_null(t):
        return [None] * len(arr)
    if pt.is_binary(t) or pt.is_large_binary(t) or pt.is_fixed_size_binary(t):
        return arr.to_pylist()
    if pt.is_floating(t) and t != pa.float64():
        arr = pc.cast(arr, pa.float64())  # exact widening, shortest text of the double
    elif pt.is_boolean(t):
        arr = pc.cast(arr, pa.int8())
    elif pt.is_timestamp(t) or pt.is_time(t) or pt.is_duration(t):
        arr = pc.cast(arr, pa.int64())
    elif not (
        pt.is_integer(t)
        or pt.is_floating(t)
        or pt.is_decimal(t)
        or pt.is_string(t)
        or pt.is_large_string(t)
        or pt.is_date(t)
    ):
        return [
            None if v is None else json.dumps(v, default=str, separators=(",", ":")).encode()
            for v in arr.to_pylist()
        ]
    return pc.cast(pc.cast(arr, pa.string()), pa.binary()).to_pylist()


def row_times_ms(table: pa.Table, column: str) -> list[int] | None:
    """Each row's time in ms since the epoch, or None when the table has no such column.

    Arrow timestamps in any unit; integers are ms (the seed's convention); floats are
    seconds (Python's time.time()).
    """
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.types as pt

    if column not in table.column_names:
        return None
    col = table.column(column)
    t = col.type
    if pt.is_timestamp(t):
        import numpy as np

        if col.null_count:
            return None
        ints = np.asarray(pc.cast(col, pa.int64()), dtype=np.int64)
        ns = _TS_NS[t.unit]
        values = (
            ints * (ns // 1_000_000) if ns > 1_000_000 else ints // (1_000_000 // ns)
        ).tolist()
    elif pt.is_integer(t):
        values = col.to_pylist()
    elif pt.is_floating(t):
        values = [None if v is None else int(v * 1000) for v in col.to_pylist()]
    else:
        return None
    if any(v is None for v in values):
        return None
    return values


# -- writer ----------------------------------------------------------------------------------


class RedisWriter(ServerWriter):
    backend: RedisBackend

    def __init__(self, backend: RedisBackend, dest: Destination, key: str, layout: str) -> None:
        super().__init__(backend)
        self.dest = dest
        self.settings: RedisStoreConfig = dest.settings
        self.key = key
        self.layout = layout
        self._last_id: tuple[int, int] | None = None  # stream: last entry id (ms, seq)
        self._series: set[str] = set()  # timeseries keys known to exist
        self._pending_id: tuple[int, int] | None = None  # stream: last id of this batch
        days = self.settings.key_expiration_days
        self.expire_seconds = int(days * 86400) if days else 0

    # -- per layout ----------------------------------------------------------------------

    def _lists(self, pipe: Any, table: pa.Table) -> None:
        suffix = ""
        if self.expire_seconds:
            suffix = ":" + timefmt.date()
        for name in table.column_names:
            values = [b"" if v is None else v for v in encode_column(table.column(name))]
            item_key = f"{self.key}.{name}{suffix}"
            pipe.rpush(item_key, *values)
            if self.expire_seconds:
                pipe.expire(item_key, self.expire_seconds, nx=True)

    def _stream(self, conn: Any, pipe: Any, table: pa.Table) -> None:
        times = row_times_ms(table, self.settings.timestamp_column)
        columns = [
            (name.encode(), encode_column(table.column(name))) for name in table.column_names
        ]
        if times is None:
            ids: list[Any] = ["*"] * table.num_rows  # no row time: the server's clock
        else:
            if self._last_id is None:
                self._last_id = self._read_last_id(conn)
            last_ms, last_seq = self._last_id
            ids = []
            for ms in times:
                if ms > last_ms:
                    last_ms, last_seq = ms, 0
                else:
                    if ms < last_ms:
                        self.backend.reordered_rows += 1
                    last_seq += 1
                ids.append(f"{last_ms}-{last_seq}")
            self._pending_id = (last_ms, last_seq)
        key = self.key.encode()
        command = pipe.execute_command  # XADD as raw arguments: no per-row dict
        if not any(v is None for _, values in columns for v in values):
            names = [name for name, _ in columns]
            for entry_id, row in zip(ids, zip(*(v for _, v in columns), strict=True), strict=True):
                args: list[Any] = [b"XADD", key, entry_id]
                for name, value in zip(names, row, strict=True):
                    args += (name, value)
                command(*args)
        else:
            for i, entry_id in enumerate(ids):
                args = [b"XADD", key, entry_id]
                for name, values in columns:
                    if values[i] is not None:
                        args += (name, values[i])
                command(*(args if len(args) > 3 else [*args, b"_", b""]))
        if self.expire_seconds:
            now_ms = int(_dt.datetime.now(_dt.UTC).timestamp() * 1000)
            pipe.xtrim(self.key, minid=now_ms - self.expire_seconds * 1000, approximate=False)
            pipe.expire(self.key, self.expire_seconds)

    def _read_last_id(self, conn: Any) -> tuple[int, int]:
        import redis

        try:
            info = conn.xinfo_stream(self.key)
        except redis.ResponseError:
            return (0, 0)  # no such key yet
        last = info["last-generated-id"]
        last = last.decode() if isinstance(last, bytes) else str(last)
        ms, _, seq = last.partition("-")
        return (int(ms), int(seq or 0))

    def _timeseries(self, conn: Any, pipe: Any, table: pa.Table) -> None:
        import pyarrow.types as pt

        tcol = self.settings.timestamp_column
        times = row_times_ms(table, tcol)
        if times is None:
            now_ms = int(_dt.datetime.now(_dt.UTC).timestamp() * 1000)
            times = [now_ms] * table.num_rows
        # one sample per ms per series (DUPLICATE_POLICY LAST): say how many were overwritten
        self.backend.samples_overwritten += len(times) - len(set(times))
        samples: list[Any] = []
        for name in table.column_names:
            if name == tcol:
                continue
            col = table.column(name)
            t = col.type
            if not (pt.is_integer(t) or pt.is_floating(t) or pt.is_boolean(t)):
                self.backend.skip_column(self.key, name, t)
                continue
            series = f"{self.key}.{name}"
            if series not in self._series:
                self._create_series(conn, series, name)
            for ms, value in zip(times, encode_column(col), strict=True):
                if value is None or value in (b"nan", b"-nan"):
                    self.backend.nulled_values += 1
                    continue
                samples += (series, ms, value)
        if samples:
            pipe.execute_command("TS.MADD", *samples)

    def _create_series(self, conn: Any, series: str, column: str) -> None:
        import redis

        args: list[Any] = ["TS.CREATE", series, "DUPLICATE_POLICY", "LAST"]
        if self.expire_seconds:
            args += ["RETENTION", self.expire_seconds * 1000]
        args += ["LABELS", "key", self.settings.key or self.dest.source, "column", column]
        if self.dest.tag:
            args += ["tag", self.dest.tag]
        try:
            conn.execute_command(*args)
        except redis.ResponseError as exc:
            if "already exists" not in str(exc).lower():
                raise
        self._series.add(series)

    # -- TableWriter -------------------------------------------------------------------------

    def write(self, table: pa.Table) -> None:
        import redis

        backend = self.backend
        if table.num_columns and table.column(0).num_chunks > 1:
            table = table.combine_chunks()  # many 1-row messages: one pass, not one per column
        self._pending_id: tuple[int, int] | None = None
        try:
            conn = backend.connection()
            unapplied = self._unapplied(conn, table)
            if unapplied is None:
                return
            table = unapplied
            if self.layout == "timeseries" and not backend.has_timeseries(conn):
                # A setting the server cannot serve, not an outage: holding the rows would
                # stall every other source behind this one. The runner counts them as
                # rejected and logs this reason.
                backend.no_module_rows += table.num_rows
                raise ValueError(f"Redis at {backend.where}: {MODULE_HELP}")
            pipe = conn.pipeline(transaction=True)
            if self.layout == "lists":
                self._lists(pipe, table)
            elif self.layout == "stream":
                self._stream(conn, pipe, table)
            else:
                self._timeseries(conn, pipe, table)
            batch = self._next_batch(table.num_rows)
            pipe.set(COMMIT_PREFIX + self.id, batch, ex=COMMIT_TTL)
            backend.before_exec(pipe)
            results = pipe.execute(raise_on_error=False)
            self._committed()
            if self._pending_id is not None:
                self._last_id = self._pending_id
            refused = [r for r in results if isinstance(r, Exception)]
            if refused:
                # EXEC does not roll back: the other commands were applied. Say what was not.
                self._last_id = None
                backend.refuse(self.key, len(refused), refused[0])
        except (redis.ConnectionError, redis.TimeoutError, OSError) as exc:
            self._last_id = None
            backend.lost(exc)
            raise TransientError(f"Redis {backend.where}: {exc}") from exc
        except redis.ResponseError as exc:
            # The transaction was refused before running (EXECABORT): nothing was applied.
            self._inflight = None
            self._last_id = None
            raise ValueError(f"Redis refused the batch for {self.key}: {exc}") from exc

    # -- commit record ---------------------------------------------------------------------

    def _recorded_batch(self, conn: Any) -> int | None:
        got = conn.get(COMMIT_PREFIX + self.id)
        return None if got is None else int(got)

    def _applied_before(self) -> None:
        self._last_id = None  # re-read from the server

    def _forget(self, conn: Any) -> None:
        conn.delete(COMMIT_PREFIX + self.id)


class RedisBackend(ServerBackend):
    name = "redis"
    label = "Redis"
    log = log
    Options = RedisOptions
    Settings = RedisStoreConfig
    default_flush_rows = 10_000
    default_flush_seconds = 1.0

    def __init__(self, options: StoreOptions) -> None:
        super().__init__(options)
        self.options: RedisOptions = options  # type: ignore[assignment]
        self._module: bool | None = None
        self.reordered_rows = 0
        self.nulled_values = 0
        self.refused_commands = 0
        self.no_module_rows = 0
        self.samples_overwritten = 0
        self._skipped: set[tuple[str, str]] = set()

    def _connect(self) -> Any:
        import redis
        from redis.backoff import NoBackoff
        from redis.retry import Retry

        o = self.options
        conn = redis.Redis(
            host=o.host,
            port=o.port,
            db=o.db,
            password=o.password or None,
            socket_connect_timeout=o.connect_timeout,
            socket_timeout=o.socket_timeout,
            # no silent retries inside redis-py: a re-sent MULTI/EXEC could apply twice; the
            # store retries itself, after checking its commit record
            retry=Retry(NoBackoff(), 0),
        )
        conn.ping()
        return conn

    def _on_connect(self) -> None:
        self._module = None  # probe the new server for the module again

    def has_timeseries(self, conn: Any) -> bool:
        """Whether the server knows TS.* (probed once per connection)."""
        import redis

        if self._module is None:
            try:
                conn.execute_command("TS.INFO", "daq:probe:no-such-series")
                self._module = True
            except redis.ResponseError as exc:
                self._module = "unknown command" not in str(exc).lower()
        return self._module

    def skip_column(self, key: str, column: str, arrow_type: Any) -> None:
        if (key, column) not in self._skipped:
            self._skipped.add((key, column))
            log.warning(
                "%s: column %s (%s) is not numeric: RedisTimeSeries holds numbers only, "
                'it is not stored (use layout = "stream" or "lists" for it)',
                key,
                column,
                arrow_type,
            )

    def refuse(self, key: str, commands: int, exc: BaseException) -> None:
        self.refused_commands += commands
        log.error("%s: Redis refused %d command(s) of a batch: %s", key, commands, exc)

    def before_exec(self, pipe: Any) -> None:
        """Test hook: called right before each EXEC."""

    # -- Backend -----------------------------------------------------------------------------

    def check(self) -> None:
        import redis

        try:
            conn = self._connect()
        except redis.AuthenticationError as exc:
            raise StoreUnavailable(
                f"Redis at {self.where} refused the password: {exc} (set -O password=...)"
            ) from None
        except (redis.ConnectionError, redis.TimeoutError, OSError) as exc:
            raise StoreUnavailable(
                f"cannot reach Redis at {self.where} ({exc}): {START_HELP}"
            ) from None
        except redis.ResponseError as exc:
            raise StoreUnavailable(f"Redis at {self.where}: {exc}") from None
        self._checked(conn)
        wanted = dict(getattr(self, "overrides", {}) or {})
        if (
            wanted
            and (
                wanted.get("layout") == "timeseries"
                or (not wanted.get("layout") and wanted.get("use_timeseries"))
            )
            and not self.has_timeseries(self._conn)
        ):
            raise StoreUnavailable(f"Redis at {self.where}: {MODULE_HELP}")

    def open(self, dest: Destination, schema: pa.Schema | None) -> TableWriter:
        settings: RedisStoreConfig = dest.settings
        key = dest.name or settings.key or dest.source
        key = key.replace("{source}", dest.source).replace("{run}", str(dest.run))
        layout = layout_of(settings)
        if dest.tag and not dest.name:
            key = f"{key}{dest.tag}"  # the seed's key + tag
        return RedisWriter(self, dest, key, layout)

    def stats(self) -> dict[str, Any]:
        return {
            **self.connection_stats(),
            "duplicates_avoided": self.duplicates_avoided,
            "reordered_rows": self.reordered_rows,
            "nulled_values": self.nulled_values,
            "refused_commands": self.refused_commands,
            "rows_without_timeseries_module": self.no_module_rows,
            "timeseries_columns_skipped": len(self._skipped),
            "timeseries_samples_overwritten": self.samples_overwritten,
        }
