"""What the server stores (MySQL, Redis) share: one lazy connection, and a commit record.

The connection is opened on first use, dropped on a loss (logged once per distinct error, not
once per retry) and opened again on the next write; connects and losses are counted for the
stats report. Each writer records (writer id, batch number) in the same transaction as its
rows, so a retry after a lost reply first asks whether its batch was applied and skips those
rows instead of storing them twice.
"""

from __future__ import annotations

import logging
import uuid
from typing import TYPE_CHECKING, Any

from enrgdaq_core.stores.base import StoreOptions, TableBackend, TableWriter

if TYPE_CHECKING:
    import pyarrow as pa


class ServerBackend(TableBackend):
    """A backend behind one server connection (subclasses say how to connect)."""

    label = ""  # the server's name in log lines: "MySQL", "Redis"
    log: logging.Logger

    def __init__(self, options: StoreOptions) -> None:
        super().__init__(options)
        self._conn: Any = None
        self.connected = False
        self.connects = 0
        self.reconnects = 0
        self.connection_errors = 0
        self.transactions = 0
        self.duplicates_avoided = 0
        self._last_error = ""

    @property
    def where(self) -> str:
        o: Any = self.options
        return f"{o.host}:{o.port}"

    def _connect(self) -> Any:
        raise NotImplementedError

    def _on_connect(self) -> None:
        """Called after each new connection (per-connection state starts over)."""

    def connection(self) -> Any:
        if self._conn is None:
            self._conn = self._connect()
            self.connects += 1
            if self.connects > 1:
                self.reconnects += 1
                self.log.info("reconnected to %s at %s", self.label, self.where)
            self.connected = True
            self._on_connect()
        return self._conn

    def current(self) -> Any:
        return self._conn

    def _checked(self, conn: Any) -> None:
        """`check()` connected: that connection is the first one."""
        self._conn = conn
        self.connects = 1
        self.connected = True

    def lost(self, exc: BaseException) -> None:
        if self.connected or str(exc) != self._last_error:
            self.log.warning("%s at %s: %s", self.label, self.where, exc)
        self._last_error = str(exc)
        self.connection_errors += 1
        self.connected = False
        self.close()

    def close(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            try:
                conn.close()
            except Exception:  # noqa: BLE001 - it is closing (or already broken) anyway
                pass

    def connection_stats(self) -> dict[str, Any]:
        """The first figures of `stats()`: where, whether connected, how often it was not."""
        return {
            "server": self.where,
            "connected": self.connected,
            "reconnects": self.reconnects,
            "connection_errors": self.connection_errors,
            "transactions": self.transactions,
        }


class ServerWriter(TableWriter):
    """A writer whose batches carry a commit record (subclasses read and delete it)."""

    def __init__(self, backend: ServerBackend) -> None:
        self.backend = backend
        self.id = uuid.uuid4().hex
        self.batch = 0
        self._inflight: tuple[int, int] | None = None  # (batch, rows) of an unconfirmed commit

    def _recorded_batch(self, conn: Any) -> int | None:
        """The batch number the server holds in this writer's commit record."""
        raise NotImplementedError

    def _forget(self, conn: Any) -> None:
        """Delete this writer's commit record."""
        raise NotImplementedError

    def _forget_failed(self, exc: Exception) -> bool:
        """Whether an error while deleting the record only means the connection is lost."""
        return True

    def _unapplied(self, conn: Any, table: pa.Table) -> pa.Table | None:
        """After a lost reply: the rows of `table` the server has not stored yet (None: none).

        The retry starts with the same rows, so if the server holds the batch we sent, its
        rows are the first ones of `table`.
        """
        if self._inflight is None:
            return table
        batch, rows = self._inflight
        got = self._recorded_batch(conn)
        self._inflight = None
        if got == batch:  # it was applied before the reply was lost: skip those rows
            self.backend.duplicates_avoided += rows
            self._applied_before()
            table = table.slice(min(rows, table.num_rows))
        return table if table.num_rows else None

    def _applied_before(self) -> None:
        """Called when a retried batch turns out to be stored already."""

    def _next_batch(self, rows: int) -> int:
        """Number the batch about to be sent; it is unconfirmed until `_committed()`."""
        self.batch += 1
        self._inflight = (self.batch, rows)
        return self.batch

    def _committed(self) -> None:
        self._inflight = None
        self.backend.transactions += 1

    def close(self) -> None:
        conn = self.backend.current()
        if conn is None or self._inflight is not None:
            return  # keep the commit record: a retry by this writer still needs it
        try:
            self._forget(conn)
        except Exception as exc:  # noqa: BLE001 - only housekeeping
            if not self._forget_failed(exc):
                raise
            self.backend.lost(exc)
