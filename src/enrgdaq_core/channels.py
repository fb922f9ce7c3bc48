"""Where a command's envelopes come from and go to: the broker or a byte stream (pipe, file).

Every command (job run, tap, store, replay) takes its input and output through these two
functions, so `daq job run x.toml | daq store csv` and the broker path behave the same.
"""

from __future__ import annotations

import contextlib
import logging
import os
import stat
import sys
import threading
import time
from collections import deque
from collections.abc import Callable
from pathlib import Path
from typing import Any, BinaryIO, Protocol

import zmq

from enrgdaq_core.broker_client import NOTICE_AFTER, START_HINT, waiting_line
from enrgdaq_core.envelope import Envelope
from enrgdaq_core.stream import StreamDamage, StreamError, StreamReader, StreamWriter
from enrgdaq_core.transport import (
    SOURCE_QUEUE_MB,
    BrokerAddress,
    CurveKeys,
    Mode,
    Publisher,
    Subscriber,
)

log = logging.getLogger("enrgdaq.output")

__all__ = [
    "FLUSH_EVERY",
    "RESUBSCRIBE_GRACE",
    "BrokerInput",
    "BrokerOutput",
    "EndOfInput",
    "Input",
    "Output",
    "RunFileOutput",
    "StreamInput",
    "StreamOutput",
    "open_input",
    "open_output",
    "stdin_is_stream",
    "stdout_is_pipe",
    "store_source",
]

log = logging.getLogger("enrgdaq.broker")


class EndOfInput(Exception):
    """The input is finished: EOF of a stream (check `damage` for how it ended)."""


class Output(Protocol):
    """Where a producer's envelopes go (broker, pipe, file): what `run_job` and replay take."""

    def send(self, env: Envelope) -> None:
        """Send one envelope; blocks under backpressure rather than dropping it."""

    def flush(self) -> None:
        """Hand on everything held back (a producer calls it before it waits)."""

    def flush_due(self) -> None:
        """Flush if data has been held back FLUSH_EVERY (a producer calls it after each step)."""

    def close(self) -> None:
        """Deliver the rest and release; may raise ConnectionError when delivery failed."""

    def stats(self) -> dict[str, Any]:
        """The output's own figures for the producer's heartbeat (`extra`): what it holds
        back, what it dropped. Empty where it never holds or drops anything."""


RESUBSCRIBE_GRACE = 10.0
"""Seconds a source waits, once a broker is back, for as many lossless consumers of its topics
as before the outage to subscribe again (a broker forwards what arrives before they have to
nobody); then it delivers what it held anyway."""


class _Link:
    """Whether the broker takes what a source sends: ZeroMQ's link events, on their own thread.

    `holding` turns True when the connection to the broker is lost and back to False once a
    broker has shaken hands again and as many lossless consumers of the topics sent as were
    last seen (the broker's control endpoint, asked every `POLL` seconds while linked) have
    subscribed to it, or RESUBSCRIBE_GRACE has passed. The owner reads the flag on every send:
    a plain attribute, no syscall on the data path.
    """

    POLL = 2.0

    def __init__(
        self,
        publisher: Publisher,
        address: BrokerAddress,
        keys: CurveKeys | None,
        topics: Callable[[], list[str]],
    ) -> None:
        self.holding = False
        self.outages = 0
        self._address = address
        self._keys = keys
        self._topics = topics
        self._known: dict[str, int] = {}  # topic -> its lossless consumers, last seen
        self._events = publisher.link_events()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="broker-link", daemon=True)
        self._thread.start()

    def _consumers(self) -> dict[str, int] | None:
        from enrgdaq_core.broker_client import query, subscribers_of
        from enrgdaq_core.reqrep import RemoteError

        try:
            snap = query(self._address, "subscriptions", timeout=0.5, keys=self._keys)
        except (TimeoutError, RemoteError):
            return None
        return {t: subscribers_of(snap, t) for t in self._topics()}

    def _run(self) -> None:
        from zmq.utils.monitor import recv_monitor_message

        events = self._events
        back: float | None = None  # when a broker shook hands again after an outage
        next_poll = 0.0
        try:
            while not self._stop.is_set():
                if events.poll(200):
                    event = recv_monitor_message(events)["event"]
                    if event == zmq.EVENT_DISCONNECTED:
                        if not self.holding:
                            self.outages += 1
                        self.holding, back = True, None
                    elif event == zmq.EVENT_HANDSHAKE_SUCCEEDED and self.holding:
                        back = time.monotonic()
                    elif event == zmq.EVENT_MONITOR_STOPPED:
                        return
                now = time.monotonic()
                if self.holding:
                    if back is None:
                        continue
                    have = self._consumers()
                    if now - back >= RESUBSCRIBE_GRACE or (
                        have is not None
                        and all(have.get(t, 0) >= n for t, n in self._known.items())
                    ):
                        self._known.update(have or {})
                        self.holding = False
                elif now >= next_poll or len(self._known) != len(self._topics()):
                    have = self._consumers()
                    if have is not None:
                        self._known = have
                    next_poll = now + self.POLL
        finally:
            events.close(linger=0)

    def close(self, publisher: Publisher) -> None:
        self._stop.set()
        publisher.stop_link_events()
        self._thread.join(5)


class Input(Protocol):
    """Where a consumer's envelopes come from (broker, pipe, file): what a store and tap take.

    `damage` is set when a stream ended on a torn or corrupt record (None: a clean end).
    `undecodable` counts the messages (or intact stream records) that did not decode and were
    skipped: the consumer reports it in its stats, it never sees them itself.
    """

    damage: StreamDamage | StreamError | None
    undecodable: int

    def recv(self, timeout: float | None = None) -> Envelope | None:
        """The next envelope, None after `timeout` seconds, EndOfInput at a stream's end."""

    def close(self) -> None:
        """Release the input."""


class BrokerOutput:
    """Publishes to the broker, losslessly, also at the end, and holds what it sends while the
    broker is away.

    While the link to the broker is down (see `_Link`), `send` keeps messages in its own queue,
    up to `queue_mb` MiB; past that bound a message is dropped and counted (`dropped` in the
    job's stats; the stores see the gap and count it lost, exactly). Once a broker is back
    and its consumers have subscribed again, the queue is delivered in order before anything
    new. Messages already handed to ZeroMQ when the broker died are either delivered to the
    new broker before its consumers are back or lost with the old broker: the stores count
    those as lost.

    ZMQ's linger is not enough to end a run without loss: when the broker's inbound queue is
    full (a slow store), the broker stops reading our connection, and if we close it then,
    the broker drops what the kernel still buffers: the tail of the run, end-of-stream
    included. So `close()` first waits until the broker's counters (its control endpoint)
    show every message we sent on each topic, then closes. It gives up after `drain_timeout`
    seconds without progress, or `interrupt_grace` (the publisher's) once a stop was requested.
    """

    DRAIN_TIMEOUT = 30.0  # seconds without progress before `close()` gives up

    def __init__(
        self,
        address: BrokerAddress,
        *,
        wait: float | None = 10.0,
        keys: CurveKeys | None = None,
        drain_timeout: float = DRAIN_TIMEOUT,
        interrupt: Callable[[], bool] | None = None,
        queue_mb: float = SOURCE_QUEUE_MB,
    ) -> None:
        self.address = address
        self.drain_timeout = drain_timeout
        self.sent: dict[str, int] = {}
        self.queue_mb = queue_mb
        self.queue_bytes = int(queue_mb * (1 << 20))
        self.dropped = 0  # sent while the broker was away, beyond queue_bytes
        self._held: deque[Envelope] = deque()
        self._held_bytes = 0
        self._holding_logged = False
        self._ctx = zmq.Context()
        self.publisher = Publisher(address, keys=keys, ctx=self._ctx)
        self.publisher.interrupt = interrupt
        if wait is not None and not self._wait_ready(wait):
            self.publisher.close(linger=0)
            self._ctx.term()
            raise ConnectionError(f"no broker at {address.inbound} after {wait:g} s ({START_HINT})")
        self._broker_start: float | None = None
        self.broker_restarted = False
        baseline = None
        for _ in range(3):
            baseline = self._broker_counts()
            if baseline is not None:
                break
        # Without a baseline, counts already on the broker (an earlier run of this source)
        # would look like confirmations: then close() confirms nothing and says so.
        self._baseline: dict[str, int] | None = baseline
        self._link = _Link(self.publisher, address, keys, lambda: list(self.sent))
        self.publisher.hold = lambda: self._link.holding

    def _wait_ready(self, wait: float) -> bool:
        """Wait for the broker's link, saying at once (after NOTICE_AFTER) that we wait."""
        first = min(wait, NOTICE_AFTER)
        if self.publisher.wait_ready(first):
            return True
        if wait <= first:
            return False
        log.warning(waiting_line(self.address))
        return self.publisher.wait_ready(wait - first)

    def _broker_counts(self) -> dict[str, int] | None:
        from enrgdaq_core.broker_client import query
        from enrgdaq_core.reqrep import RemoteError

        try:
            timeout = min(2.0, max(0.2, self.drain_timeout))
            snap = query(self.address, "counters", timeout=timeout)
            topics = snap["topics"]
            start = float(snap["started"])  # the broker's own clock: a slow reply changes nothing
        except (TimeoutError, RemoteError, KeyError, TypeError, ValueError):
            return None
        if self._broker_start is None:
            self._broker_start = start
        elif start != self._broker_start:
            self.broker_restarted = True
        return {t: int(v[0]) for t, v in topics.items()}

    def send(self, env: Envelope) -> None:
        self.sent[env.topic] = self.sent.get(env.topic, 0) + 1
        if self._held or self._link.holding:  # the broker is away, or what it missed waits
            self._deliver()
            if self._held or self._link.holding:
                self._hold(env)
                return
        if not self.publisher.send(env):  # the broker went away while we waited on it
            self._hold(env)

    def _hold(self, env: Envelope) -> None:
        if not self._holding_logged:
            self._holding_logged = True
            log.warning(
                "the broker at %s is away: holding what we send (up to %g MiB)",
                self.address.inbound,
                self.queue_mb,
            )
        size = env.nbytes
        if self._held_bytes + size > self.queue_bytes:
            if not self.dropped:
                log.error(
                    "%g MiB held while the broker is away: dropping (counted) until it is back",
                    self.queue_mb,
                )
            self.dropped += 1
            return
        self._held.append(env)
        self._held_bytes += size

    def _deliver(self) -> None:
        """Send what was held, in order, while the broker takes it."""
        held = self._held
        if not held or self._link.holding:
            return
        n = len(held)
        while held and not self._link.holding:
            env = held[0]
            if not self.publisher.send(env):
                break
            held.popleft()
            self._held_bytes -= env.nbytes
        if not held:
            self._holding_logged = False
            log.info(
                "the broker at %s is back: delivered %d held message(s)%s",
                self.address.inbound,
                n,
                f"; {self.dropped} dropped beyond the bound so far" if self.dropped else "",
            )

    def flush(self) -> None:
        self._deliver()

    def flush_due(self) -> None:
        self._deliver()

    def stats(self) -> dict[str, Any]:
        return {
            "held": len(self._held),
            "held_mb": round(self._held_bytes / (1 << 20), 3),
            "dropped": self.dropped,
            "broker_outages": self._link.outages,
        }

    def unconfirmed(self) -> int:
        """Messages sent that the broker has not counted yet (all of them if it is silent)."""
        counts = self._broker_counts()
        if counts is None or self._baseline is None:
            return sum(self.sent.values())
        if self.broker_restarted:
            # A restarted broker counts from zero, so nothing can be confirmed against it:
            # what the old one lost shows as a sequence gap at the stores; close with linger.
            return 0
        return sum(
            max(0, self._baseline.get(t, 0) + n - counts.get(t, 0)) for t, n in self.sent.items()
        )

    def _deliver_held(self) -> int:
        """Wait for the broker to come back and take what was held (`drain_timeout`, or
        `interrupt_grace` once a stop was requested); returns how many are still held."""
        publisher = self.publisher
        start = time.monotonic()
        stop_seen: float | None = None
        while self._held:
            self._deliver()
            now = time.monotonic()
            if not self._held or now - start >= self.drain_timeout:
                break
            if publisher.interrupt is not None and publisher.interrupt():
                stop_seen = stop_seen or now
                if now - stop_seen >= publisher.interrupt_grace:
                    break
            time.sleep(0.05)
        return len(self._held)

    def _release(self, linger: float) -> None:
        if self.dropped:
            log.warning(
                "dropped %d message(s) beyond the %g MiB held while the broker was away "
                "(the stores count them lost)",
                self.dropped,
                self.queue_mb,
            )
        self._link.close(self.publisher)
        self.publisher.close(linger=linger)
        self._ctx.term()

    def close(self) -> None:
        """Wait until the broker has every message; ConnectionError if it stops taking them."""
        if self.publisher.gave_up is not None:
            self._release(0)
            raise ConnectionError(f"{self.publisher.gave_up}; messages still queued are lost")
        held = self._deliver_held()
        if held:
            self._release(0)
            raise ConnectionError(
                f"the broker at {self.address.inbound} did not come back: "
                f"{held} message(s) held while it was away are lost"
            )
        publisher = self.publisher
        left = self.unconfirmed() if self.sent else 0
        moved = time.monotonic()  # when the broker last took something (or the drain began)
        stop_seen: float | None = None
        while left:
            now = time.monotonic()
            if now - moved >= self.drain_timeout:
                break
            # After a stop request the drain waits no longer than a blocked send would: a
            # frozen broker must not cost a stopping job `drain_timeout` on top of the grace.
            if publisher.interrupt is not None and publisher.interrupt():
                stop_seen = stop_seen or now
                if now - max(moved, stop_seen) >= publisher.interrupt_grace:
                    why = publisher.give_up()
                    self._release(0)
                    raise ConnectionError(
                        f"{why}; {left} sent message(s) not confirmed, maybe lost"
                    )
            time.sleep(0.02)
            now_left = self.unconfirmed()
            if now_left < left:
                moved = time.monotonic()
            left = now_left
        self._release(0 if left else 1.0)
        if left:
            raise ConnectionError(
                f"the broker at {self.address.inbound} took no message for "
                f"{self.drain_timeout:g} s: {left} sent message(s) not confirmed, maybe lost"
            )


FLUSH_EVERY = 0.1  # seconds: the most a stream output holds data back while it is busy


class StreamOutput:
    """Writes the envelope stream to a pipe or file, holding data back at most FLUSH_EVERY.

    A pipe's reader must not wait for a full buffer: `send` flushes once FLUSH_EVERY has
    passed since the last flush (a busy writer), and a caller about to wait (a paced job,
    an idle tap) calls `flush()` first.
    """

    def __init__(
        self,
        fileobj: BinaryIO,
        meta: dict | None = None,
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.writer = StreamWriter(fileobj, meta)
        self._f = fileobj
        self._clock = clock
        self._flushed = clock()

    def send(self, env: Envelope) -> None:
        self.writer.write(env)
        self.flush_due()

    def flush_due(self) -> None:
        now = self._clock()
        if now - self._flushed >= FLUSH_EVERY:
            self.writer.flush()
            self._flushed = now

    def flush(self) -> None:
        self.writer.flush()
        self._flushed = self._clock()

    def close(self) -> None:
        with contextlib.suppress(BrokenPipeError):
            self._f.flush()

    def stats(self) -> dict[str, Any]:
        return {}


class RunFileOutput:
    """A new run file with its index (`daq replay -o FILE`: a cut of a run is itself a run file).

    FileExistsError if the file exists: a run file written earlier is data.
    """

    def __init__(self, path: str | Path, meta: dict[str, Any]) -> None:
        from enrgdaq_core.runfile import RunFileWriter

        self.writer = RunFileWriter(path, meta)

    def send(self, env: Envelope) -> None:
        self.writer.write(env)

    def flush(self) -> None:
        self.writer.flush()

    def flush_due(self) -> None:
        pass  # a file has no reader waiting: flushed before a wait and at close

    def close(self) -> None:
        self.writer.close()

    def stats(self) -> dict[str, Any]:
        return {}


class BrokerInput:
    """A `Subscriber` as an `Input` (the broker never ends, so `damage` stays None)."""

    def __init__(
        self,
        address: BrokerAddress,
        topics: list[str],
        *,
        mode: Mode = "lossless",
        hwm: int | None = None,
        keys: CurveKeys | None = None,
    ) -> None:
        self.subscriber = Subscriber(address, topics, mode=mode, hwm=hwm, keys=keys)
        self.damage = None

    @property
    def undecodable(self) -> int:
        return self.subscriber.undecodable

    def recv(self, timeout: float | None = None) -> Envelope | None:
        return self.subscriber.recv(timeout)

    def close(self) -> None:
        self.subscriber.close()


_DONE = object()


class StreamInput:
    """Reads a stream on a thread so a consumer can wait with a timeout (to flush, to report).

    The buffer is bounded: a slow consumer stops the thread reading, and the pipe's writer
    blocks, which is the backpressure a pipe should give. A deque and two events rather than
    a queue.Queue: the handoff costs well under a microsecond when both sides are busy, which
    matters for a store taking 1-row messages at tens of kHz.
    """

    def __init__(self, fileobj: BinaryIO, *, depth: int = 256) -> None:
        self.damage: StreamDamage | StreamError | None = None
        self.meta: dict = {}
        self._reader: StreamReader | None = None
        self._items: deque[object] = deque()
        self._depth = depth
        self._has_items = threading.Event()
        self._has_room = threading.Event()
        self._has_room.set()
        self._f = fileobj
        self._thread = threading.Thread(target=self._read, name="stream-input", daemon=True)
        self._thread.start()

    def _put(self, item: object) -> None:
        items = self._items
        items.append(item)
        if not self._has_items.is_set():
            self._has_items.set()
        if len(items) >= self._depth:
            self._has_room.clear()
            if len(items) >= self._depth:  # re-check: the consumer may have drained meanwhile
                self._has_room.wait()

    def _read(self) -> None:
        try:
            reader = self._reader = StreamReader(self._f, skip_undecodable=True)
            self.meta = reader.meta.meta
            for rec in reader:
                self._put(rec.envelope)
        except (StreamDamage, StreamError) as exc:
            self.damage = exc
        except (OSError, ValueError) as exc:
            self.damage = StreamError(f"read failed: {exc}")
        except Exception as exc:  # never let a cut-short input look like a clean end
            self.damage = StreamError(f"read failed: {exc!r}")
        finally:
            self._items.append(_DONE)
            self._has_items.set()

    @property
    def undecodable(self) -> int:
        """Intact records whose envelope did not decode (skipped; damage ends the stream)."""
        return 0 if self._reader is None else self._reader.undecodable

    def recv(self, timeout: float | None = None) -> Envelope | None:
        items = self._items
        try:
            item = items.popleft()
        except IndexError:
            self._has_items.clear()
            if not items and not self._has_items.wait(timeout):  # re-check after clear
                return None
            try:
                item = items.popleft()
            except IndexError:
                return None
        if item is _DONE:
            items.appendleft(_DONE)  # later calls see the end again
            raise EndOfInput
        if len(items) <= self._depth // 2 and not self._has_room.is_set():
            self._has_room.set()
        return item  # type: ignore[return-value]

    def close(self) -> None:
        pass


def stdin_is_stream(fd: int = 0) -> bool:
    """stdin is a pipe, a file or a socket (`... | daq store csv`, `< run.raw`), not a terminal."""
    try:
        mode = os.fstat(fd).st_mode
    except OSError:
        return False
    return stat.S_ISFIFO(mode) or stat.S_ISREG(mode) or stat.S_ISSOCK(mode)


def store_source(given: str | None, *, topics: bool, stdin_fd: int = 0) -> str | None:
    """Where `daq store` reads: `given` (-i), else the broker when topics are named (--from),
    else stdin when it is a stream, else the broker (None)."""
    if given is not None:
        return given
    if topics:
        return None
    return "-" if stdin_is_stream(stdin_fd) else None


def stdout_is_pipe(fd: int | None = None) -> bool:
    """stdout is a pipe or a socket (`| daq store csv`): commands then write the envelope
    stream, not text. A terminal, a file (`> job.log`) or /dev/null is not: a redirect to a
    file is a log, and the stream goes there only when asked (`-o -`)."""
    try:
        mode = os.fstat(sys.stdout.fileno() if fd is None else fd).st_mode
    except (AttributeError, ValueError, OSError):
        return False
    return stat.S_ISFIFO(mode) or stat.S_ISSOCK(mode)


def open_output(
    target: str | None,
    address: BrokerAddress,
    *,
    meta: dict | None = None,
    wait: float | None = 10.0,
    keys: CurveKeys | None = None,
    interrupt: Callable[[], bool] | None = None,
    queue_mb: float = SOURCE_QUEUE_MB,
) -> Output:
    """`-` writes the stream to stdout; None or `broker` publishes to the broker (holding up to
    `queue_mb` MiB while it is away); anything else is a new file (FileExistsError if it
    exists)."""
    if target == "-":
        return StreamOutput(sys.stdout.buffer, meta)
    if target in (None, "broker"):
        return BrokerOutput(address, wait=wait, keys=keys, interrupt=interrupt, queue_mb=queue_mb)
    # "x": never truncate an existing file (a run file written earlier is data)
    return StreamOutput(open(target, "xb"), meta)  # noqa: SIM115 - closed by the caller


def open_input(
    source: str | None,
    address: BrokerAddress,
    topics: list[str],
    *,
    mode: Mode = "lossless",
    hwm: int | None = None,
    keys: CurveKeys | None = None,
    stdin_fd: int = 0,
) -> Input:
    """`-` reads the stream from stdin; None or `broker` subscribes to `topics`; else a file.

    stdin is read through our own file object on a copy of `stdin_fd`: the reader thread may
    still be blocked in read() when the command exits after end-of-stream, and sys.stdin's
    lock must stay free for the interpreter's shutdown.
    """
    if source == "-":
        return StreamInput(open(os.dup(stdin_fd), "rb"))  # noqa: SIM115 - read by its thread
    if source in (None, "broker"):
        return BrokerInput(address, topics, mode=mode, hwm=hwm, keys=keys)
    return StreamInput(open(source, "rb"))  # noqa: SIM115 - read to the end by the thread
