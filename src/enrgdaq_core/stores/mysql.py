"""MySQL / MariaDB (pymysql): one table per source, created and grown from the Arrow schema.

Rows become multi-row `INSERT` statements built column-wise with Arrow compute (a batch of
100k rows is a handful of statements, not 100k Python tuples), one transaction per flush. A
commit that fails after the server applied it is not repeated: every transaction also records
(writer id, batch number) in `_daq_commits`, and a retry first asks whether its batch is there.
The type mapping, schema changes and failure behaviour are documented in docs/stores.md.
"""

from __future__ import annotations

import hashlib
import logging
import re
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

from enrgdaq_core.store_config import MySQLStoreConfig
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

log = logging.getLogger("enrgdaq.store.mysql")

COMMITS_TABLE = "_daq_commits"
START_HELP = (
    "start it with `systemctl start mariadb` (or, without systemd, "
    "`start-stop-daemon --start --oknodo --background --exec /usr/sbin/mariadbd`), "
    "or point the store at your server with -O host=... -O port=..."
)
# Server errors that pass: too many connections, shutdown in progress, lock wait timeout,
# deadlock, query interrupted, connection killed, idle client disconnected. Client-side codes
# (2000-2999: cannot connect, server gone away, lost connection) are transient too.
_TRANSIENT_CODES = frozenset({1040, 1053, 1205, 1213, 1317, 1927, 4031})
_IDENT_MAX = 64
_STATEMENT_BYTES = 4 << 20  # below max_allowed_packet (16 MiB by default)
_SLICE_BYTES = 256 << 20  # rows are encoded in slices so one string array stays < 2 GiB


class MySQLOptions(StoreOptions):
    """Where the server is (the seed's DAQJobStoreMySQL keys) and how long to wait for it."""

    host: str = "127.0.0.1"
    port: int = 3306
    user: str = "root"
    password: str = ""
    database: str = "test"
    connect_timeout: float = 5.0
    read_timeout: float = 120.0  # a statement taking longer counts as a lost connection


def _code(exc: BaseException) -> int:
    args = getattr(exc, "args", ())
    return args[0] if args and isinstance(args[0], int) else 0


def _is_transient(exc: BaseException) -> bool:
    import pymysql

    if isinstance(exc, (pymysql.err.InterfaceError, OSError)):
        return True
    if isinstance(exc, (pymysql.err.OperationalError, pymysql.err.InternalError)):
        code = _code(exc)
        return code in _TRANSIENT_CODES or 2000 <= code < 3000 or code == 0
    return False


def quote(name: str) -> str:
    """A backtick-quoted identifier (backticks inside doubled)."""
    return "`" + name.replace("`", "``") + "`"


def table_identifier(name: str) -> str:
    """The seed's rule (anything but letters, digits and `_` becomes `_`), at most 64 chars."""
    clean = re.sub(r"[^A-Za-z0-9_]", "_", name) or "data"
    return _shorten(clean)


def _shorten(name: str) -> str:
    name = name.rstrip(" ") or "_"
    if len(name) <= _IDENT_MAX:
        return name
    digest = hashlib.sha1(name.encode()).hexdigest()[:8]
    return name[: _IDENT_MAX - 9] + "_" + digest


# -- type mapping --------------------------------------------------------------------------

_INT_RANGES = {
    "TINYINT": (-(2**7), 2**7 - 1),
    "SMALLINT": (-(2**15), 2**15 - 1),
    "MEDIUMINT": (-(2**23), 2**23 - 1),
    "INT": (-(2**31), 2**31 - 1),
    "BIGINT": (-(2**63), 2**63 - 1),
}
_INT_SQL = {8: "TINYINT", 16: "SMALLINT", 32: "INT", 64: "BIGINT"}
_TEXT_TYPES = ("tinytext", "text", "mediumtext", "longtext", "varchar", "char", "json")
_BLOB_TYPES = ("tinyblob", "blob", "mediumblob", "longblob", "varbinary", "binary")


@dataclass(frozen=True, slots=True)
class ColumnType:
    """How one Arrow type is stored: the SQL type, how values are encoded, the comment tag."""

    sql: str  # e.g. "BIGINT", "DOUBLE", "DATETIME(6)", "LONGBLOB"
    encode: str  # int, float, bool, text, binary, ts_int, datetime, date, decimal, blob, json
    arrow: str  # str(arrow type): kept in the column comment as "arrow:<type>"
    unit: str = ""  # timestamps/times: s, ms, us, ns
    item: str = ""  # blob lists: numpy dtype of the items ("<i2")

    @property
    def comment(self) -> str:
        """The column comment as an SQL string literal."""
        text = f"arrow:{self.arrow}"[:1024]
        return "'" + text.replace("\\", "\\\\").replace("'", "\\'") + "'"


def column_type(
    t: pa.DataType,
    *,
    timestamps: Literal["auto", "datetime", "bigint"] = "auto",
    lists: Literal["blob", "json"] = "blob",
) -> ColumnType | None:
    """The column for an Arrow type; None for the null type (nothing to store yet)."""
    import pyarrow.types as pt

    if pt.is_dictionary(t):
        return column_type(t.value_type, timestamps=timestamps, lists=lists)
    name = str(t)
    if pt.is_null(t):
        return None
    if pt.is_boolean(t):
        return ColumnType("TINYINT(1)", "bool", name)
    if pt.is_integer(t):
        sql = _INT_SQL[t.bit_width]
        return ColumnType(sql + (" UNSIGNED" if pt.is_unsigned_integer(t) else ""), "int", name)
    if pt.is_floating(t):
        # FLOAT reads back rounded to 6 digits: float32 goes to DOUBLE, exactly widened.
        return ColumnType("DOUBLE", "float", name)
    if pt.is_string(t) or pt.is_large_string(t):
        return ColumnType("LONGTEXT", "text", name)
    if pt.is_binary(t) or pt.is_large_binary(t) or pt.is_fixed_size_binary(t):
        return ColumnType("LONGBLOB", "binary", name)
    if pt.is_timestamp(t):
        exact_datetime = t.unit in ("s", "ms", "us")
        if timestamps == "datetime" or (timestamps == "auto" and exact_datetime):
            return ColumnType("DATETIME(6)", "datetime", name, unit=t.unit)
        return ColumnType("BIGINT", "ts_int", name, unit=t.unit)
    if pt.is_date(t):
        return ColumnType("DATE", "date", name)
    if pt.is_time(t) or pt.is_duration(t):
        return ColumnType("BIGINT", "ts_int", name, unit=t.unit)
    if pt.is_decimal(t) and t.precision <= 65 and t.scale <= 30:
        return ColumnType(f"DECIMAL({t.precision},{t.scale})", "decimal", name)
    if pt.is_list(t) or pt.is_large_list(t) or pt.is_fixed_size_list(t):
        item = t.value_type
        numeric = pt.is_integer(item) or pt.is_floating(item) or pt.is_boolean(item)
        if lists == "blob" and numeric:
            import numpy as np

            dtype = np.dtype("u1" if pt.is_boolean(item) else item.to_pandas_dtype())
            return ColumnType("LONGBLOB", "blob", name, item=dtype.newbyteorder("<").str)
        return ColumnType("LONGTEXT", "json", name)
    return ColumnType("LONGTEXT", "json", name)


@dataclass(slots=True)
class _Existing:
    name: str
    sql: str  # information_schema COLUMN_TYPE, lower case ("bigint(20) unsigned")
    arrow: str  # from the comment, "" when the column was not made by us


def _int_range(sql: str) -> tuple[int, int] | None:
    base = sql.split("(")[0].split()[0].upper()
    if base not in _INT_RANGES:
        return None
    lo, hi = _INT_RANGES[base]
    if "unsigned" in sql.lower():
        return 0, hi * 2 + 1
    return lo, hi


def compatible(existing: _Existing, new: ColumnType) -> bool:
    """Whether values of `new` can go into `existing` exactly, without mixing meanings.

    Same stored meaning is required where the bytes alone do not say it (timestamps, blob
    lists, booleans); plain numbers may go into a column that holds them exactly.
    """
    sql = existing.sql.lower()
    if existing.arrow:
        if existing.arrow == new.arrow:
            return True
        special = ("ts_int", "datetime", "blob", "bool", "json", "date")
        old = column_type_from_comment(existing.arrow)
        if new.encode in special or (old is not None and old.encode in special):
            return False
    if new.encode == "int":
        old_range = _int_range(sql)
        new_range = _int_range(new.sql.lower())
        if old_range is not None and new_range is not None:
            return old_range[0] <= new_range[0] and new_range[1] <= old_range[1]
        if sql.startswith("double") and new_range is not None:
            return new_range[0] >= -(2**53) and new_range[1] <= 2**53
        return False
    if new.encode == "float":
        return sql.startswith("double")
    if new.encode == "bool":
        return sql.startswith("tinyint")
    if new.encode in ("text", "json"):
        return (
            sql.startswith(("mediumtext", "longtext"))
            if existing.arrow
            else sql.startswith(_TEXT_TYPES)
        )
    if new.encode in ("binary", "blob"):
        return sql.startswith("longblob") if existing.arrow else sql.startswith(_BLOB_TYPES)
    if new.encode == "datetime":
        return sql.startswith("datetime") and (sql.endswith("(6)") or new.unit == "s")
    if new.encode == "ts_int":
        return _int_range(sql) == _INT_RANGES["BIGINT"]
    return sql.replace(" ", "") == new.sql.lower().replace(" ", "")


def column_type_from_comment(arrow: str) -> ColumnType | None:
    """The mapping a column made by this store was created with (from `arrow:<type>`)."""
    import pyarrow as pa

    try:
        t = pa.type_for_alias(arrow)
    except ValueError:
        t = None
    if t is not None:
        return column_type(t)
    if arrow.startswith("timestamp"):
        return ColumnType("BIGINT", "ts_int", arrow)
    if arrow.startswith(("list", "fixed_size_list", "large_list")):
        return ColumnType("LONGBLOB", "blob", arrow)
    return None


def _type_suffix(arrow: str) -> str:
    return re.sub(r"[^A-Za-z0-9]+", "_", arrow).strip("_").lower()


# -- value encoding: Arrow arrays -> SQL literal text, column-wise ----------------------------


class _Counters:
    def __init__(self) -> None:
        self.nulled = 0  # values MySQL cannot hold (NaN, inf, null items in blob lists)


def _sql_string(arr: pa.Array) -> pa.Array:
    import pyarrow.compute as pc

    arr = pc.replace_substring(arr, "\\", "\\\\")
    arr = pc.replace_substring(arr, "'", "\\'")
    arr = pc.replace_substring(arr, "\x00", "\\0")
    return pc.binary_join_element_wise("'", arr, "'", "")


def _encode(arr: pa.Array, ct: ColumnType, counters: _Counters) -> pa.Array:
    """SQL literals (string array, nulls kept as nulls) for one column slice."""
    import pyarrow as pa
    import pyarrow.compute as pc

    if pa.types.is_dictionary(arr.type):
        arr = arr.dictionary_decode()
    kind = ct.encode
    if kind == "int" or kind == "decimal":
        return pc.cast(arr, pa.string())
    if kind == "float":
        if arr.type != pa.float64():
            arr = pc.cast(arr, pa.float64())  # exact widening; printed shortest for float64
        finite = pc.is_finite(arr)
        bad = len(arr) - arr.null_count - pc.sum(finite).as_py() if len(arr) else 0
        if bad:
            counters.nulled += bad
            arr = pc.if_else(finite, arr, pa.scalar(None, pa.float64()))
        return pc.cast(arr, pa.string())
    if kind == "bool":
        return pc.cast(pc.cast(arr, pa.int8()), pa.string())
    if kind == "text":
        if arr.type != pa.string():
            arr = pc.cast(arr, pa.string())
        return _sql_string(arr)
    if kind == "ts_int":
        return pc.cast(
            arr.view(pa.int64()) if arr.type.bit_width == 64 else arr.cast(pa.int64()), pa.string()
        )
    if kind == "datetime":
        us = arr.cast(pa.timestamp("us", tz=getattr(arr.type, "tz", None)), safe=False)
        text = pc.strftime(us.cast(pa.timestamp("us")), format="%Y-%m-%d %H:%M:%S")
        return pc.binary_join_element_wise("'", text, "'", "")
    if kind == "date":
        return pc.binary_join_element_wise("'", pc.cast(arr, pa.string()), "'", "")
    if kind == "binary":
        values = [None if v is None else "X'" + v.hex() + "'" for v in arr.to_pylist()]
        return pa.array(values, pa.string())
    if kind == "blob":
        return _encode_blob(arr, ct, counters)
    return _encode_json(arr)


def _encode_blob(arr: pa.Array, ct: ColumnType, counters: _Counters) -> pa.Array:
    """Numeric lists as packed little-endian items (`X'..'`); the dtype is in the comment."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.compute as pc

    n = len(arr)
    flat = pc.list_flatten(arr)  # null lists contribute no items
    lengths = np.asarray(pc.fill_null(pc.list_value_length(arr), 0), dtype=np.int64)
    offsets = np.zeros(n + 1, dtype=np.int64)
    np.cumsum(lengths, out=offsets[1:])
    valid = np.asarray(arr.is_valid())
    if flat.null_count:  # a packed blob cannot say "missing item": the whole list is NULL
        parents = np.asarray(pc.list_parent_indices(arr))
        bad = np.unique(parents[np.asarray(flat.is_null())])
        counters.nulled += len(bad)
        valid[bad] = False
        flat = pc.fill_null(flat, 0)
    values = np.asarray(flat.cast(pa.uint8()) if pa.types.is_boolean(flat.type) else flat)
    data = values.astype(ct.item, copy=False).tobytes()
    isz = np.dtype(ct.item).itemsize
    out: list[str | None] = [None] * n
    for i in np.flatnonzero(valid).tolist():
        out[i] = "X'" + data[offsets[i] * isz : offsets[i + 1] * isz].hex() + "'"
    return pa.array(out, pa.string())


def _encode_json(arr: pa.Array) -> pa.Array:
    import json

    import pyarrow as pa

    def default(v: Any) -> Any:
        if isinstance(v, bytes):
            return v.hex()
        return str(v)

    values = [
        None if v is None else json.dumps(v, default=default, separators=(",", ":"))
        for v in arr.to_pylist()
    ]
    return _sql_string(pa.array(values, pa.string()))


# -- the writer ------------------------------------------------------------------------------


@dataclass(slots=True)
class _Plan:
    """For one Arrow schema: which field goes to which column, encoded how."""

    fields: list[tuple[int, str, ColumnType]]  # (field index, column name, mapping)
    prefix: bytes  # b"INSERT INTO `t` (`a`,`b`) VALUES "


class MySQLWriter(ServerWriter):
    backend: MySQLBackend

    def __init__(self, backend: MySQLBackend, dest: Destination, table: str) -> None:
        super().__init__(backend)
        self.dest = dest
        self.table = table
        self.settings: MySQLStoreConfig = dest.settings
        self._columns: dict[str, _Existing] | None = None  # lower-case name -> column
        self._plans: dict[pa.Schema, _Plan] = {}

    # -- schema ----------------------------------------------------------------------------

    def _load_columns(self, cur: Any) -> None:
        cur.execute(
            "SELECT COLUMN_NAME, COLUMN_TYPE, COLUMN_COMMENT FROM information_schema.COLUMNS "
            "WHERE TABLE_SCHEMA = DATABASE() AND TABLE_NAME = %s ORDER BY ORDINAL_POSITION",
            (self.table,),
        )
        cols: dict[str, _Existing] = {}
        for name, sql, comment in cur.fetchall():
            arrow = comment[6:] if comment.startswith("arrow:") else ""
            cols[name.lower()] = _Existing(name, str(sql).lower(), arrow)
        self._columns = cols

    def _ddl(self, cur: Any, sql: str) -> None:
        try:
            cur.execute(sql)
        except Exception as exc:  # noqa: BLE001 - classified below
            # 1050 table exists, 1060 duplicate column: another writer got there first
            if _is_transient(exc) or _code(exc) not in (1050, 1060):
                raise
        self._load_columns(cur)

    def _plan(self, cur: Any, schema: pa.Schema) -> _Plan:
        plan = self._plans.get(schema)
        if plan is not None:
            return plan
        if self._columns is None:
            self._load_columns(cur)
        assert self._columns is not None
        wanted: list[tuple[int, str, ColumnType]] = []
        used: set[str] = set()
        for i, field in enumerate(schema):
            ct = column_type(
                field.type, timestamps=self.settings.timestamp_type, lists=self.settings.list_type
            )
            if ct is None:
                continue  # a column of nulls only: nothing to store until it has a type
            name = _shorten(field.name or f"column{i}")
            if name.lower() in used:  # MySQL names are case-insensitive: `A` and `a` collide
                name = _shorten(f"{name}__{i}")
            existing = self._columns.get(name.lower())
            if existing is not None and not compatible(existing, ct):
                alt = _shorten(f"{name}__{_type_suffix(ct.arrow)}")
                self.backend.type_conflicts += 1
                log.warning(
                    "%s: column %s is %s (%s) but now arrives as %s: storing it in column %s",
                    self.table,
                    name,
                    existing.sql,
                    existing.arrow or "not made by enrgdaq",
                    ct.arrow,
                    alt,
                )
                name = alt
                existing = self._columns.get(name.lower())
                if existing is not None and not compatible(existing, ct):
                    raise _Unstorable(f"column {name} exists with another type ({existing.sql})")
            used.add(name.lower())
            wanted.append((i, name, ct))
        missing = [(name, ct) for _, name, ct in wanted if name.lower() not in self._columns]
        if not self._columns:
            defs = (
                ", ".join(f"{quote(n)} {ct.sql} NULL COMMENT {ct.comment}" for n, ct in missing)
                or "`_empty` TINYINT NULL"
            )
            self._ddl(
                cur,
                f"CREATE TABLE IF NOT EXISTS {quote(self.table)} ({defs}) "
                "ENGINE=InnoDB DEFAULT CHARSET=utf8mb4",
            )
            self.backend.tables_created += 1
        elif missing:
            adds = ", ".join(
                f"ADD COLUMN {quote(n)} {ct.sql} NULL COMMENT {ct.comment}" for n, ct in missing
            )
            self._ddl(cur, f"ALTER TABLE {quote(self.table)} {adds}")
            self.backend.columns_added += len(missing)
            log.info("%s: added column(s) %s", self.table, ", ".join(n for n, _ in missing))
        names = ",".join(quote(n) for _, n, _ in wanted)
        prefix = f"INSERT INTO {quote(self.table)} ({names}) VALUES ".encode()
        plan = _Plan(wanted, prefix)
        self._plans[schema] = plan
        return plan

    # -- rows ------------------------------------------------------------------------------

    def _statements(self, plan: _Plan, table: pa.Table) -> list[tuple[bytes, pa.Array]]:
        """(statement, row literals) pairs, each statement below _STATEMENT_BYTES."""
        import numpy as np
        import pyarrow as pa
        import pyarrow.compute as pc

        out: list[tuple[bytes, pa.Array]] = []
        if not plan.fields or table.num_rows == 0:
            return out
        est = max(1, table.nbytes // max(1, table.num_rows)) * 3 + 8
        step = max(1, _SLICE_BYTES // est)
        counters = self.backend.counters
        for start in range(0, table.num_rows, step):
            part = table.slice(start, step)
            cols = []
            for i, _, ct in plan.fields:
                col = part.column(i).combine_chunks()
                cols.append(pc.fill_null(_encode(col, ct, counters), "NULL"))
            rows = pc.binary_join_element_wise(
                "(", *[x for c in cols for x in (c, ",")][:-1], "),", ""
            )
            rows = rows.combine_chunks() if isinstance(rows, pa.ChunkedArray) else rows
            offsets = np.frombuffer(rows.buffers()[1], dtype=np.int32)[
                rows.offset : rows.offset + len(rows) + 1
            ]
            data = rows.buffers()[2]
            first = 0
            base = int(offsets[0])
            limit = _STATEMENT_BYTES
            while first < len(rows):
                end = int(np.searchsorted(offsets, offsets[first] + limit, side="right")) - 1
                end = max(end, first + 1)
                end = min(end, len(rows))
                lo, hi = int(offsets[first]) - base, int(offsets[end]) - base
                body = data.slice(base + lo, hi - lo - 1).to_pybytes()  # without the last ","
                out.append((plan.prefix + body, rows.slice(first, end - first)))
                first = end
        return out

    def _insert(self, cur: Any, plan: _Plan, statement: bytes, rows: pa.Array) -> None:
        """Run one statement; a data error falls back to row-by-row in the same transaction."""
        try:
            cur.execute(statement)
            return
        except Exception as exc:  # noqa: BLE001 - classified below
            if _is_transient(exc):
                raise
            if len(rows) == 1:
                raise _Unstorable(str(exc)) from None
            log.warning("%s: batch insert failed (%s); inserting row by row", self.table, exc)
        for value in rows.to_pylist():
            try:
                cur.execute(plan.prefix + value[:-1].encode())
            except Exception as exc:  # noqa: BLE001
                if _is_transient(exc):
                    raise
                self.backend.reject(self.table, 1, exc)

    def write(self, table: pa.Table) -> None:
        backend = self.backend
        if table.num_columns and table.column(0).num_chunks > 1:
            table = table.combine_chunks()  # many 1-row messages: one pass, not one per column
        try:
            conn = backend.connection()
            unapplied = self._unapplied(conn, table)
            if unapplied is None:
                return
            table = unapplied
            with conn.cursor() as cur:
                try:
                    plan = self._plan(cur, table.schema)
                except _Unstorable as exc:
                    backend.reject(self.table, table.num_rows, exc)
                    return
                statements = self._statements(plan, table)
                batch = self._next_batch(table.num_rows)
                conn.begin()
                for statement, rows in statements:
                    try:
                        self._insert(cur, plan, statement, rows)
                    except _Unstorable as exc:
                        backend.reject(self.table, len(rows), exc)
                cur.execute(
                    f"INSERT INTO {COMMITS_TABLE} (writer, dest, source, batch) "
                    "VALUES (%s, %s, %s, %s) ON DUPLICATE KEY UPDATE batch = VALUES(batch), "
                    "updated = NOW(6)",
                    (self.id, self.table, self.dest.source, batch),
                )
                backend.before_commit(conn)
                conn.commit()
                self._committed()
                backend.rows_written += table.num_rows
        except Exception as exc:
            if not _is_transient(exc):
                raise
            self._columns = None
            self._plans.clear()
            backend.lost(exc)
            raise TransientError(f"MySQL {backend.where}: {exc}") from exc

    # -- commit record ---------------------------------------------------------------------

    def _recorded_batch(self, conn: Any) -> int | None:
        with conn.cursor() as cur:
            cur.execute(f"SELECT batch FROM {COMMITS_TABLE} WHERE writer = %s", (self.id,))
            got = cur.fetchone()
        return None if got is None else got[0]

    def _forget(self, conn: Any) -> None:
        with conn.cursor() as cur:
            cur.execute(f"DELETE FROM {COMMITS_TABLE} WHERE writer = %s", (self.id,))
        conn.commit()

    def _forget_failed(self, exc: Exception) -> bool:
        return _is_transient(exc)


class _Unstorable(Exception):
    """Rows the server refuses for a reason that will not pass (logged and counted)."""


class MySQLBackend(ServerBackend):
    name = "mysql"
    label = "MySQL"
    log = log
    Options = MySQLOptions
    Settings = MySQLStoreConfig
    default_flush_rows = 10_000
    default_flush_seconds = 1.0

    def __init__(self, options: StoreOptions) -> None:
        super().__init__(options)
        self.options: MySQLOptions = options  # type: ignore[assignment]
        self.rows_written = 0
        self.refused_rows = 0
        self.type_conflicts = 0
        self.columns_added = 0
        self.tables_created = 0
        self.counters = _Counters()
        self._nulled_logged = 0

    # -- connection --------------------------------------------------------------------------

    def _connect(self) -> Any:
        import pymysql

        o = self.options
        conn = pymysql.connect(
            host=o.host,
            port=o.port,
            user=o.user,
            password=o.password,
            database=o.database,
            charset="utf8mb4",
            autocommit=False,
            connect_timeout=o.connect_timeout,
            read_timeout=o.read_timeout,
            write_timeout=o.read_timeout,
            # strict: a value that does not fit is an error, never silently truncated;
            # backslash escapes on, as the literals are built with them
            sql_mode="STRICT_ALL_TABLES,NO_ENGINE_SUBSTITUTION",
            init_command="SET time_zone = '+00:00'",
        )
        with conn.cursor() as cur:
            cur.execute(
                f"CREATE TABLE IF NOT EXISTS {COMMITS_TABLE} ("
                "writer CHAR(32) NOT NULL PRIMARY KEY, dest VARCHAR(64) NOT NULL, "
                "source VARCHAR(255) NOT NULL, batch BIGINT NOT NULL, "
                "updated DATETIME(6) NOT NULL DEFAULT NOW(6)) ENGINE=InnoDB "
                "COMMENT 'enrgdaq: last committed batch per store writer (no duplicate retries)'"
            )
            # records of stores that were killed long ago
            cur.execute(f"DELETE FROM {COMMITS_TABLE} WHERE updated < NOW(6) - INTERVAL 7 DAY")
        conn.commit()
        return conn

    def before_commit(self, conn: Any) -> None:
        """Test hook: called right before each data commit."""

    def reject(self, table: str, rows: int, exc: BaseException) -> None:
        self.refused_rows += rows
        log.error("%s: %d row(s) refused by the server and not stored: %s", table, rows, exc)

    # -- Backend -----------------------------------------------------------------------------

    def check(self) -> None:
        import pymysql

        o = self.options
        try:
            conn = self._connect()
        except pymysql.MySQLError as exc:
            code = _code(exc)
            if code == 1045:
                raise StoreUnavailable(
                    f"MySQL at {self.where} refused user {o.user!r}: {exc.args[-1]} "
                    "(set -O user=... -O password=...)"
                ) from None
            if code == 1049:
                raise StoreUnavailable(
                    f"MySQL at {self.where} has no database {o.database!r}: create it with "
                    f"`mariadb -e 'CREATE DATABASE {o.database}'` or set -O database=..."
                ) from None
            raise StoreUnavailable(
                f"cannot reach MySQL/MariaDB at {self.where} ({exc.args[-1]}): {START_HELP}"
            ) from None
        except OSError as exc:
            raise StoreUnavailable(
                f"cannot reach MySQL/MariaDB at {self.where} ({exc}): {START_HELP}"
            ) from None
        self._checked(conn)

    def open(self, dest: Destination, schema: pa.Schema | None) -> TableWriter:
        settings: MySQLStoreConfig = dest.settings
        name = dest.name or settings.table_name or dest.source
        name = name.replace("{source}", dest.source).replace("{run}", str(dest.run))
        return MySQLWriter(self, dest, table_identifier(name))

    def stats(self) -> dict[str, Any]:
        nulled = self.counters.nulled
        if nulled > self._nulled_logged:
            log.warning(
                "%d value(s) MySQL cannot hold (NaN, inf, null items in blob lists) stored as NULL",
                nulled - self._nulled_logged,
            )
            self._nulled_logged = nulled
        return {
            **self.connection_stats(),
            "refused_rows": self.refused_rows,
            "duplicates_avoided": self.duplicates_avoided,
            "nulled_values": nulled,
            "type_conflicts": self.type_conflicts,
            "columns_added": self.columns_added,
        }
