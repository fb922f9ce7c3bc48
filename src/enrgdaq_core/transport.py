"""ZeroMQ transport: where the broker lives, and the sockets every piece opens to reach it.

One broker address names five endpoints, so users pass one value (`--broker`, `DAQ_BROKER`):

    ipc://DIR/broker   ->  DIR/broker.in  .out  .mon  .ctl  .tel
    tcp://HOST:PORT    ->  PORT (in)  PORT+1 (out)  PORT+2 (mon)  PORT+3 (ctl)  PORT+4 (tel)

`in` takes what sources publish (XSUB); `out` serves lossless consumers (XPUB, no drop: a slow
store slows the source); `mon` serves monitors (fed by the proxy's capture: drops, never
stalls anyone); `ctl` answers questions about the broker (REP: subscriptions, counters);
`tel` takes every piece's telemetry (stats, alerts, logs: SUB), apart from the data path so
that a lossless consumer that stalls the data path cannot silence every heartbeat.
"""

from __future__ import annotations

import contextlib
import os
import stat
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Literal
from urllib.parse import urlsplit

import zmq

from enrgdaq_core.backoff import Backoff
from enrgdaq_core.envelope import (
    Envelope,
    EnvelopeError,
    encode_header,
    subscription,
    topic_frame,
)

__all__ = [
    "DATA_HWM",
    "DEFAULT_TCP_PORT",
    "MONITOR_HWM",
    "TELEMETRY_TOPICS",
    "ZERO_COPY_ABOVE",
    "AddressError",
    "BrokerAddress",
    "CurveKeys",
    "Mode",
    "Publisher",
    "SOURCE_QUEUE_MB",
    "RuntimeDirError",
    "Subscriber",
    "TelemetryPublisher",
    "context",
    "make_socket",
    "runtime_dir",
]

DEFAULT_TCP_PORT = 5550
DATA_HWM = 1000  # messages queued per peer before backpressure (lossless) or drops (monitor)
MONITOR_HWM = 1000
TELEMETRY_TOPICS = (b"stats.", b"alert.", b"log.")
"""Topic frames (prefixes) of telemetry: what `TelemetryPublisher` sends to the broker's `tel`
endpoint. The broker republishes them to monitors from there, and forwards them on `out` too
(for lossless consumers of alerts or logs) while the data path moves."""
SOURCE_QUEUE_MB = 64.0
"""What a source holds, in MiB of messages, while the broker is away (`channels.BrokerOutput`):
the default of the job config key `broker_queue_mb` and of `daq job run --broker-queue-mb`."""

Mode = Literal["lossless", "monitor"]
"""A consumer's kind: `lossless` (the broker's `out`: backpressure, never loss) or `monitor`
(`mon`: may miss messages, never slows anyone; it counts what it missed)."""

ZERO_COPY_ABOVE = zmq.COPY_THRESHOLD
"""Immutable payloads from this size are handed to ZeroMQ without a copy (pyzmq's own threshold:
below it, tracking a zero-copy buffer costs more than copying it)."""


def _zero_copy(payload: bytes | memoryview) -> bool:
    """Large and immutable: ZeroMQ reads a zero-copy buffer after send() returns, so a
    bytearray or writable view the job reuses for its next event would go out corrupted."""
    if len(payload) < ZERO_COPY_ABOVE:
        return False
    return isinstance(payload, bytes) or (isinstance(payload, memoryview) and payload.readonly)


# The per-message path calls pyzmq's Cython socket methods with plain int flags. The
# `zmq.Socket` conveniences (send_multipart, recv_multipart, enum flags, the `rcvmore` option)
# cost several microseconds per message, more than libzmq itself spends on a small message
# (measured in benchmarks/). Behaviour is the same: the wrappers end in these calls.
_send = zmq.backend.Socket.send
_recv = zmq.backend.Socket.recv
_SNDMORE = int(zmq.SNDMORE)
_NOBLOCK = int(zmq.NOBLOCK)


def _recv_parts(sock: zmq.Socket, flags: int = 0) -> list[zmq.Frame]:
    """Every part of one message as zero-copy frames (`zmq.Again` if none, with NOBLOCK)."""
    part = _recv(sock, flags, False)
    parts = [part]
    while part.more:
        part = _recv(sock, 0, False)
        parts.append(part)
    return parts


def _send_parts(sock: zmq.Socket, parts: list, flags: int = 0) -> None:
    """Send a multipart message; frames already received are forwarded without a copy."""
    last = len(parts) - 1
    for i, part in enumerate(parts):
        _send(sock, part, flags | _SNDMORE if i < last else flags, False)


class RuntimeDirError(Exception):
    """The runtime directory is not private to this user: someone else could reach, or stand
    in for, the broker and supervisor sockets in it. Its message is the one line to show."""


def runtime_dir() -> Path:
    """Per-user directory for ipc sockets (DAQ_RUNTIME_DIR overrides).

    Whoever can write in it can bind the broker's and `daq up`'s sockets there first, so it
    is used only if it is a real directory (not a symlink) owned by this user with mode 0700;
    RuntimeDirError otherwise. A missing one is created so (mkdir is atomic: if another user
    created it first, the check refuses theirs).
    """
    explicit = os.environ.get("DAQ_RUNTIME_DIR")
    if explicit:
        path = Path(explicit)
    elif os.environ.get("XDG_RUNTIME_DIR"):
        path = Path(os.environ["XDG_RUNTIME_DIR"]) / "enrgdaq"
    else:
        path = Path(tempfile.gettempdir()) / f"enrgdaq-{os.getuid()}"
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        os.mkdir(path, 0o700)
    except FileExistsError:
        pass  # checked below, whoever made it
    except OSError as exc:
        raise RuntimeDirError(
            f"cannot create the runtime directory {path}: {exc.strerror or exc}"
        ) from None
    else:
        os.chmod(path, 0o700)  # ours, just made: the umask may have taken bits away
    refusal = _runtime_dir_refusal(path, os.lstat(path), os.getuid())
    if refusal is not None:
        raise RuntimeDirError(refusal)
    return path


def _runtime_dir_refusal(path: Path, st: os.stat_result, uid: int) -> str | None:
    """Why `path` (its lstat `st`) may not be the runtime directory of user `uid`; None: fine."""
    fix = "or set DAQ_RUNTIME_DIR to a directory of yours with mode 0700"
    if stat.S_ISLNK(st.st_mode):
        return f"runtime directory {path} is a symlink; remove it {fix}"
    if not stat.S_ISDIR(st.st_mode):
        return f"runtime directory {path} is not a directory; remove it {fix}"
    if st.st_uid != uid:
        return (
            f"runtime directory {path} belongs to uid {st.st_uid}, not to you (uid {uid}); "
            f"remove it (another user may have made it) {fix}"
        )
    mode = stat.S_IMODE(st.st_mode)
    if mode != 0o700:
        return f"runtime directory {path} has mode {mode:04o}, not 0700; chmod 700 it {fix}"
    return None


class AddressError(ValueError):
    """A broker address that is neither `ipc://PATH` nor `tcp://HOST:PORT`."""


@dataclass(frozen=True, slots=True)
class BrokerAddress:
    """The five endpoints of one broker, derived from the one address users give.

    Make it with `BrokerAddress.parse(...)`: `base` is the address as given (normalised),
    `inbound`/`outbound`/`monitor`/`control`/`telemetry` the endpoints of the module docstring.
    """

    base: str
    inbound: str
    outbound: str
    monitor: str
    control: str
    telemetry: str

    @property
    def endpoints(self) -> tuple[str, ...]:
        """Every endpoint the broker binds."""
        return (self.inbound, self.outbound, self.monitor, self.control, self.telemetry)

    @classmethod
    def parse(cls, address: str | None = None) -> BrokerAddress:
        """From an explicit address, else DAQ_BROKER, else the per-user ipc default."""
        address = address or os.environ.get("DAQ_BROKER") or f"ipc://{runtime_dir()}/broker"
        if address.startswith("ipc://"):
            base = address[len("ipc://") :]
            if not base:
                raise AddressError(f"broker address {address!r}: ipc:// needs a path")
            return cls(address, *(f"ipc://{base}.{s}" for s in ("in", "out", "mon", "ctl", "tel")))
        if address.startswith("tcp://"):
            parts = urlsplit(address)
            try:
                port = parts.port or DEFAULT_TCP_PORT
            except ValueError:
                raise AddressError(f"broker address {address!r}: bad port") from None
            host = parts.hostname or "127.0.0.1"
            if ":" in host:
                host = f"[{host}]"
            eps = [f"tcp://{host}:{port + i}" for i in range(5)]
            return cls(f"tcp://{host}:{port}", *eps)
        raise AddressError(f"broker address {address!r}: expected ipc://PATH or tcp://HOST:PORT")


@dataclass(frozen=True, slots=True)
class CurveKeys:
    """CURVE keys for tcp endpoints: a server (broker) has its secret; clients know its public.

    Reserved for several-host setups: every socket is made by `make_socket`, so keys apply
    everywhere at once when configured.
    """

    public: bytes
    secret: bytes
    server_public: bytes | None = None


def _secure(sock: zmq.Socket, endpoint: str, keys: CurveKeys | None, *, server: bool) -> None:
    if keys is None or not endpoint.startswith("tcp://"):
        return
    sock.curve_publickey = keys.public
    sock.curve_secretkey = keys.secret
    if server:
        sock.curve_server = True
    else:
        if keys.server_public is None:
            raise AddressError("CURVE client needs the broker's public key")
        sock.curve_serverkey = keys.server_public


def context() -> zmq.Context:
    """The process's shared zmq context (sockets use it unless given their own `ctx`)."""
    return zmq.Context.instance()


def make_socket(
    kind: int,
    endpoint: str,
    *,
    bind: bool = False,
    keys: CurveKeys | None = None,
    server: bool | None = None,
    ctx: zmq.Context | None = None,
    replace_stale: bool = False,
    **options: int,
) -> zmq.Socket:
    """Every zmq socket of the project is made here: create, CURVE, options, bind or connect.

    One place so that security settings reach every socket at once (CURVE keys apply to tcp
    endpoints; on ipc and inproc they do nothing). `options` are socket options by their
    pyzmq attribute name (`sndhwm=1000`, `linger=0`, `xpub_nodrop=1`), set before the
    bind/connect so that they apply to it. `server` is the CURVE role, the binding side by
    default. `replace_stale` removes an ipc socket file left by a dead owner before binding
    (a bind would fail on it); the caller decides that it is stale.
    """
    sock = (ctx or context()).socket(kind)
    try:
        for name, value in options.items():
            setattr(sock, name, value)
        _secure(sock, endpoint, keys, server=bind if server is None else server)
        if bind:
            if replace_stale and endpoint.startswith("ipc://"):
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(endpoint[len("ipc://") :])
            sock.bind(endpoint)
        else:
            sock.connect(endpoint)
    except BaseException:
        sock.close(linger=0)
        raise
    return sock


class Publisher:
    """The lossless data path of a source: XPUB connected to the broker's `in`.

    XPUB rather than PUB so the source can see the broker's subscription and wait for it
    before its first message (a PUB would silently drop what it sends before the link is up).
    With XPUB_NODROP a full queue blocks the sender: backpressure, never loss.

    Call `wait_ready()` before the first `send` (`channels.BrokerOutput` does, and also
    waits at close until the broker has counted every message: use it rather than a bare
    Publisher for a source that must lose nothing at its end).

    Parameters
    ----------
    address:
        The broker; the socket connects to its `inbound` endpoint.
    hwm:
        Messages queued before `send` blocks (the send high-water mark).
    keys:
        CURVE keys for tcp endpoints (client side); None: no encryption.
    ctx:
        The zmq context; default the process's shared one.
    """

    def __init__(
        self,
        address: BrokerAddress,
        *,
        hwm: int = DATA_HWM,
        keys: CurveKeys | None = None,
        ctx: zmq.Context | None = None,
    ) -> None:
        self.address = address
        self._sock = make_socket(
            zmq.XPUB, address.inbound, keys=keys, ctx=ctx, xpub_nodrop=1, sndhwm=hwm, linger=-1
        )
        self._subscribed = False
        self._topics: dict[str, bytes] = {}

    def wait_ready(self, timeout: float | None = 10.0) -> bool:
        """Block until the broker has subscribed (the link is up), or the timeout passes."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while not self._subscribed:
            left = None if deadline is None else max(0.0, deadline - time.monotonic())
            if left is not None and left <= 0:
                return False
            if self._sock.poll(int(left * 1000) if left is not None else -1, zmq.POLLIN):
                self._drain()
        return True

    def _drain(self) -> None:
        while True:
            try:
                msg = self._sock.recv(zmq.NOBLOCK)
            except zmq.Again:
                return
            if msg[:1] == b"\x01":
                self._subscribed = True

    def link_events(self) -> zmq.Socket:
        """A PAIR socket that receives this socket's link events (the broker connection lost,
        a handshake with it done): ZeroMQ's socket monitor. Read it on one thread only; stop
        it with `stop_link_events()` before `close()`."""
        return self._sock.get_monitor_socket(zmq.EVENT_DISCONNECTED | zmq.EVENT_HANDSHAKE_SUCCEEDED)

    def stop_link_events(self) -> None:
        with contextlib.suppress(zmq.ZMQError):
            self._sock.disable_monitor()

    hold: Callable[[], bool] | None = None
    """Set by the owner (`channels.BrokerOutput`): while it returns True, a send waiting on
    backpressure stops waiting and returns False, so the owner keeps the message (a queue
    that is full because the broker died will not drain)."""

    interrupt: Callable[[], bool] | None = None
    """Set by the owner (the job runtime's stop flag): once it returns True, a send stuck on
    backpressure gives up after `interrupt_grace` seconds instead of blocking forever (a
    broker that died with our queue full would otherwise make SIGTERM useless)."""
    interrupt_grace = 10.0
    on_wait: Callable[[], None] | None = None
    """Set by the owner: called while a send waits on backpressure (every few ms; the callee
    keeps its own pace). The job runtime sends its heartbeat from here, so a source held back
    by a stalled store stays judged alive by its own heartbeat, not hung."""
    gave_up: str | None = None  # why sending stopped for good (then every send raises it)

    def send(self, env: Envelope, *, timeout: float | None = None) -> bool:
        """Send; blocks under backpressure (up to `timeout`, or while `hold` says, then False).

        XPUB reports POLLOUT even when full, so waiting is a NOBLOCK retry loop on the first
        frame; the other frames never block once the first is in (libzmq counts whole messages
        against the high-water mark).
        """
        sock = self._sock
        topic = self._topics.get(env.topic)
        if topic is None:
            if len(self._topics) > 1024:
                self._topics.clear()
            topic = self._topics[env.topic] = topic_frame(env.topic)
        payload = env.payload
        if self.gave_up is not None:
            raise ConnectionError(self.gave_up)
        try:
            _send(sock, topic, _SNDMORE | _NOBLOCK)
        except zmq.Again:
            if not self._wait_and_send(topic, timeout):
                return False
        _send(sock, encode_header(env.header), _SNDMORE)
        _send(sock, payload, 0, not _zero_copy(payload))
        return True

    def _wait_and_send(self, topic: bytes, timeout: float | None) -> bool:
        start = time.monotonic()
        stop_seen: float | None = None
        backoff = Backoff(0.0001, 0.01)  # quick to resume, cheap when the wait is long
        while True:
            time.sleep(backoff.next_delay())
            try:
                _send(self._sock, topic, _SNDMORE | _NOBLOCK)
                return True
            except zmq.Again:
                pass
            if self.on_wait is not None:
                self.on_wait()
            now = time.monotonic()
            if timeout is not None and now - start >= timeout:
                return False
            if self.hold is not None and self.hold():
                return False
            if self.interrupt is not None and self.interrupt():
                stop_seen = stop_seen or now
                if now - stop_seen >= self.interrupt_grace:
                    raise ConnectionError(self.give_up())

    def give_up(self) -> str:
        """Stop sending for good, after a stop request met a broker that takes nothing: every
        later send raises why. Returns the reason (also used by `BrokerOutput.close`'s drain,
        so both places a stop can wait on the broker end with the same words)."""
        self.gave_up = (
            f"broker at {self.address.inbound} took nothing for "
            f"{self.interrupt_grace:g} s after stop was requested (broker gone, "
            "or a lossless consumer stalled); giving up"
        )
        return self.gave_up

    def close(self, linger: float = 5.0) -> None:
        """Close, giving queued messages up to `linger` seconds to leave."""
        self._sock.close(linger=int(linger * 1000))


class TelemetryPublisher:
    """Stats, logs and alerts: PUB to the broker, dropping rather than ever blocking the job.

    A heartbeat must never slow the data path, so a full queue (100 messages) drops the new
    message and counts it in `dropped`; a monitor sees the gap in the sequence. No wait for
    the broker's subscription either: the first reports of a piece may be lost. It goes to the
    broker's `telemetry` endpoint, not through the data path: a store that stops reading
    blocks the data path, and its heartbeat must not be the only one that stops.

    Parameters
    ----------
    address:
        The broker; the socket connects to its `telemetry` endpoint.
    keys:
        CURVE keys for tcp endpoints; None: no encryption.
    ctx:
        The zmq context; default the process's shared one.
    """

    def __init__(
        self,
        address: BrokerAddress,
        *,
        keys: CurveKeys | None = None,
        ctx: zmq.Context | None = None,
    ) -> None:
        self._sock = make_socket(
            zmq.PUB, address.telemetry, keys=keys, ctx=ctx, sndhwm=100, linger=500
        )
        self.dropped = 0

    def send(self, env: Envelope) -> None:
        """Send now or drop (counted in `dropped`); never blocks."""
        try:
            self._sock.send_multipart(env.frames(), zmq.NOBLOCK)
        except zmq.Again:
            self.dropped += 1

    def close(self) -> None:
        """Close, giving queued reports half a second to leave."""
        self._sock.close(linger=500)


class Subscriber:
    """A consumer: lossless on the broker's `out`, or a monitor on `mon` (may miss messages).

    A lossless subscriber that reads slowly slows the sources (backpressure through the
    broker); a monitor never does, and the messages it misses show as sequence gaps (count
    them with `stats.SequenceTracker`).

    Parameters
    ----------
    address:
        The broker.
    topics:
        Topic patterns (`envelope.subscription`): `data.sensor1` exact (never
        `data.sensor10`), `data.` or `data.sensor*` prefixes, `` everything. An empty list
        subscribes to everything.
    mode:
        `lossless` (the broker's `outbound`) or `monitor` (its `monitor` endpoint).
    hwm:
        Messages queued for this subscriber (receive high-water mark); default
        DATA_HWM / MONITOR_HWM.
    keys:
        CURVE keys for tcp endpoints; None: no encryption.
    ctx:
        The zmq context; default the process's shared one.
    """

    def __init__(
        self,
        address: BrokerAddress,
        topics: list[str] | tuple[str, ...] = ("",),
        *,
        mode: Mode = "lossless",
        hwm: int | None = None,
        keys: CurveKeys | None = None,
        ctx: zmq.Context | None = None,
    ) -> None:
        self.mode = mode
        self._sock = make_socket(
            zmq.SUB,
            address.outbound if mode == "lossless" else address.monitor,
            keys=keys,
            ctx=ctx,
            rcvhwm=hwm or (DATA_HWM if mode == "lossless" else MONITOR_HWM),
            linger=0,
        )
        self.prefixes = [subscription(t) for t in topics] or [b""]
        for prefix in self.prefixes:
            self._sock.subscribe(prefix)
        self.undecodable = 0
        self._timeout_ms = -1  # the socket's RCVTIMEO, set by recv() when its timeout changes

    @property
    def socket(self) -> zmq.Socket:
        """The zmq socket, to poll it together with others (a `zmq.Poller`)."""
        return self._sock

    def recv(self, timeout: float | None = None) -> Envelope | None:
        """The next envelope, or None after `timeout` seconds (None: wait for ever; 0: only
        what has arrived).

        A message that does not decode (a garbled header, a wrong frame count, a newer
        header version) is counted in `undecodable` and skipped, never raised: one bad peer
        must not stop a consumer (the wait starts over after one).
        """
        sock = self._sock
        ms = -1 if timeout is None else max(0, int(timeout * 1000))
        if ms != self._timeout_ms:  # the wait happens inside libzmq: no Poller per message
            sock.rcvtimeo = self._timeout_ms = ms
        while True:
            try:
                parts = _recv_parts(sock)
            except zmq.Again:
                return None
            try:
                if len(parts) == 3:
                    return Envelope.from_frames((parts[0].bytes, parts[1].buffer, parts[2].buffer))
                return Envelope.from_frames([p.buffer for p in parts])  # raises: wrong count
            except EnvelopeError:
                self.undecodable += 1

    def close(self) -> None:
        """Close at once (what is queued for us is dropped)."""
        self._sock.close(linger=0)
