"""The pub/sub hub: a C zmq proxy (XSUB in, XPUB out) with a counting, monitoring side path.

The data path never enters Python: pyzmq's `monitored_queue` forwards in C (without the GIL),
and XPUB_NODROP turns a full consumer queue into backpressure. Every message is also handed to
the proxy's capture socket, behind a frame that says which side it came from; a Python thread
reads that copy to count messages and bytes per topic, to track subscriptions, and to
republish on the monitor endpoint, where a slow monitor loses messages, never the data. Only
what some monitor subscribed to is republished (the monitor socket is an XPUB that drops like
a PUB, so the broker can see what monitors want).

The side matters: a subscription is a one-frame message starting with 0 or 1 that comes from the
`out` side (a lossless consumer). `zmq.proxy` captures both directions alike, so a one-frame
message a peer published on `in` looked the same and added or cancelled entries in the
subscription table the supervisor's start gate reads. Now only the `out` side's count; what is
malformed (on `in`: not three frames, or a topic frame that is not UTF-8 ending in NUL; on
`out`: not a subscription) is counted in `bad` and ignored (not counted per topic, not
republished). The broker still forwards it, as it forwards every payload undecoded: consumers
skip and count it as undecodable.

Telemetry (stats, alerts, logs) does not pass the proxy: pieces send it to the `tel` endpoint,
which the counting thread reads beside the capture. A lossless consumer that stops reading
blocks the whole data path (backpressure, by design), and with it everything that passes the
proxy; the heartbeats must still arrive, or the supervisor could not tell the stalled store
from the pieces it holds back and `daq stats` would show nothing. The counting thread counts
telemetry, republishes it to the monitors that asked, and forwards it into the data path (a
dropping PUB into the proxy's `in`) for lossless consumers of alerts or logs: while the data
path is blocked those copies are dropped, never waited for. Their capture copies are neither
counted nor republished again (a telemetry topic arriving on `in` is not a heartbeat).
"""

from __future__ import annotations

import contextlib
import os
import socket
import threading
import time
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any

import zmq
from zmq.devices import monitored_queue

from enrgdaq_core.broker_client import QUERIES, ClaimRequest
from enrgdaq_core.envelope import TOPIC_END, Kind, Source
from enrgdaq_core.reqrep import Server
from enrgdaq_core.stats import ProcessSampler, StatsReport
from enrgdaq_core.transport import (
    _NOBLOCK,
    DATA_HWM,
    MONITOR_HWM,
    TELEMETRY_TOPICS,
    BrokerAddress,
    CurveKeys,
    TelemetryPublisher,
    _recv,
    _recv_parts,
    _send_parts,
    make_socket,
)

__all__ = [
    "BAD_REASONS",
    "Broker",
    "BrokerState",
    "TopicCounter",
    "topic_prefix",
]

_CAPTURE = "inproc://enrgdaq-broker-capture"
_INJECT = "inproc://enrgdaq-broker-telemetry"  # the telemetry relay's way into the data path
_TELEMETRY_BURST = 100  # telemetry messages relayed per turn, before data is read again
_CLAIM_SILENCE = 10.0  # s: a remote source's claim lapses once its topics are quiet this long
_COUNTER_PAUSE = 0.001  # s the counter lets messages gather once it has drained its queue
_FROM_IN = b"i"  # capture side frame: published by a source on `in`
_FROM_OUT = b"o"  # from `out`: a lossless consumer's (un)subscription
BAD_REASONS = ("one_frame", "frames", "topic", "out")
"""Why the broker counted a message as bad: a one-frame message on `in` (what a forged
subscription looks like), another frame count than three on `in`, a topic frame that is not
UTF-8 ending in NUL, a message from the `out` side that is not a subscription."""


def topic_prefix(topic: bytes) -> str:
    """The counting key: the class and piece of a topic (`data.sensor1`)."""
    return topic.rstrip(TOPIC_END).decode(errors="replace")


@dataclass
class TopicCounter:
    """Messages and payload bytes seen on one topic."""

    messages: int = 0
    bytes: int = 0


@dataclass
class BrokerState:
    """The counters and subscriptions the control endpoint reports (shared by threads)."""

    started: float = field(default_factory=time.time)
    counters: dict[str, TopicCounter] = field(default_factory=dict)
    subscriptions: dict[bytes, int] = field(default_factory=lambda: defaultdict(int))
    monitor_dropped: int = 0
    # malformed messages by reason (BAD_REASONS; every key exists, so counting never grows
    # the dict that snapshot() iterates)
    bad: dict[str, int] = field(default_factory=lambda: dict.fromkeys(BAD_REASONS, 0))
    lock: threading.Lock = field(default_factory=threading.Lock)

    def snapshot(self) -> dict[str, Any]:
        with self.lock:
            return {
                "uptime_s": time.time() - self.started,
                "started": self.started,
                "topics": {k: [c.messages, c.bytes] for k, c in self.counters.items()},
                "subscriptions": [
                    s.decode(errors="replace").rstrip("\x00")
                    + ("" if not s.endswith(TOPIC_END) else "$")
                    for s, n in self.subscriptions.items()
                    if n > 0
                ],
                "monitor_dropped": self.monitor_dropped,
                "bad": dict(self.bad),
                # how many lossless consumers hold each subscription (the supervisor waits
                # until every store that takes a source's data has subscribed)
                "subscribers": {
                    s.decode(errors="replace").rstrip("\x00")
                    + ("" if not s.endswith(TOPIC_END) else "$"): n
                    for s, n in self.subscriptions.items()
                    if n > 0
                },
            }


class Broker:
    """Owns the four endpoints; `run()` blocks until `stop()` (from a signal handler or thread)."""

    def __init__(
        self,
        address: BrokerAddress,
        *,
        name: str = "broker",
        hwm: int = DATA_HWM,
        stats_interval: float = 1.0,
        keys: CurveKeys | None = None,
    ) -> None:
        self.address = address
        self.name = name
        self.hwm = hwm
        self.stats_interval = stats_interval
        self.keys = keys
        self.state = BrokerState()
        self._ctx = zmq.Context()
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._claims: dict[str, _Claim] = {}  # source name -> who publishes it (control thread)

    def _socket(self, kind: int, endpoint: str, **options: int) -> zmq.Socket:
        """Bind one endpoint; an ipc socket file already there was left by a broker that
        died (a bind would fail on it), so it is replaced."""
        return make_socket(
            kind,
            endpoint,
            bind=True,
            keys=self.keys,
            ctx=self._ctx,
            replace_stale=True,
            **options,
        )

    def bind(self) -> None:
        """Bind every endpoint now, so a caller can report where we listen before `run()`."""
        address = self.address
        self._xsub = self._socket(zmq.XSUB, address.inbound, rcvhwm=self.hwm)
        self._xsub.bind(_INJECT)
        self._xpub = self._socket(
            zmq.XPUB,
            address.outbound,
            xpub_nodrop=1,
            sndhwm=self.hwm,
            xpub_verboser=1,  # every (un)subscribe, for counting
        )
        # The counter must see everything, so the proxy blocks when it falls `hwm` messages
        # behind (backpressure, like every other queue) rather than queueing without bound:
        # an unbounded capture queue let the broker's memory grow with the backlog.
        self._capture = self._socket(zmq.PAIR, _CAPTURE, sndhwm=self.hwm)
        # no XPUB_NODROP: a slow monitor drops, as PUB
        self._monitor = self._socket(zmq.XPUB, address.monitor, sndhwm=MONITOR_HWM)
        self._telemetry = self._socket(zmq.SUB, address.telemetry, rcvhwm=MONITOR_HWM)
        self._telemetry.subscribe(b"")
        snapshot = self._snapshot
        self._control = Server(
            address.control,
            {**dict.fromkeys(QUERIES, snapshot), ClaimRequest: self._claim},
            keys=self.keys,
            ctx=self._ctx,
            replace_stale=True,
        )
        # Take everything from every source: the monitor endpoint and the counters see all
        # traffic even when no lossless consumer asked for it.
        self._xsub.send(b"\x01")

    def run(self) -> None:
        if not hasattr(self, "_xsub"):
            self.bind()
        counter = threading.Thread(target=self._count, name="broker-counter", daemon=True)
        control = threading.Thread(target=self._serve_control, name="broker-control", daemon=True)
        stats = threading.Thread(target=self._publish_stats, name="broker-stats", daemon=True)
        proxy = threading.Thread(target=self._proxy, name="broker-proxy", daemon=True)
        self._threads = [counter, control, stats, proxy]
        for t in self._threads:
            t.start()
        self._stop.wait()
        self._shutdown()

    def stop(self) -> None:
        self._stop.set()

    def _proxy(self) -> None:
        try:
            monitored_queue(self._xsub, self._xpub, self._capture, _FROM_IN, _FROM_OUT)
        except zmq.ContextTerminated:
            pass
        except zmq.ZMQError:
            if not self._stop.is_set():
                raise
        finally:
            # Each thread closes the sockets it uses (zmq sockets are not thread-safe);
            # closing them from the main thread while in use here could hang ctx.term().
            for sock in (self._xsub, self._xpub, self._capture):
                sock.close(linger=0)

    def _count(self) -> None:
        # Every message passes through here, so this loop is kept to frame-level work: parts
        # arrive as zero-copy frames (a 4 MB payload is neither copied in nor out again), each
        # topic frame maps to its counter without a decode, the pyzmq calls are the plain ones
        # (see transport._recv_parts), and a message is republished only when a monitor asked
        # for its topic (`daq stats --watch` takes stats.*, not every data message).
        # rcvtimeo: when idle, wake up to see monitors (un)subscribe
        sock = make_socket(zmq.PAIR, _CAPTURE, ctx=self._ctx, rcvhwm=self.hwm)
        # telemetry into the data path, for lossless consumers: a PUB drops when it is blocked
        inject = make_socket(zmq.PUB, _INJECT, ctx=self._ctx, sndhwm=MONITOR_HWM, linger=0)
        telemetry = self._telemetry
        poller = zmq.Poller()
        poller.register(sock, zmq.POLLIN)
        poller.register(telemetry, zmq.POLLIN)
        state = self.state
        bad = state.bad
        routes: dict[bytes, _Route] = {}
        tel_routes: dict[bytes, _Route] = {}
        monitor = self._monitor
        watched: set[bytes] = set()  # prefixes some monitor subscribed to
        recv = _recv
        route_for = self._route
        seen = 0
        try:
            while True:
                try:
                    part = recv(sock, _NOBLOCK, False)
                except zmq.Again:
                    # Drained: let the next messages gather for a moment and take them in one
                    # go, one wake-up per batch instead of a thread switch per message (which
                    # cost the proxy thread as much as the counting did, and competed with it
                    # for the CPU while a message was in flight).
                    if _monitor_subscriptions(monitor, watched):
                        _rewatch(routes, watched)
                        _rewatch(tel_routes, watched)
                    self._relay_telemetry(telemetry, inject, tel_routes, watched)
                    time.sleep(_COUNTER_PAUSE)
                    # when idle, wake up to see monitors (un)subscribe
                    if not poller.poll(100):
                        continue
                    try:
                        part = recv(sock, _NOBLOCK, False)
                    except zmq.Again:
                        continue  # telemetry: relayed on the next turn
                side = part.bytes  # the side frame monitored_queue puts first
                parts = []
                while part.more:
                    part = recv(sock, 0, False)
                    parts.append(part)
                if side == _FROM_OUT:
                    first = parts[0].bytes if len(parts) == 1 else b""
                    if first[:1] in (b"\x00", b"\x01"):
                        with state.lock:
                            subs = state.subscriptions
                            n = subs[first[1:]] + (1 if first[0] == 1 else -1)
                            subs[first[1:]] = max(0, n)  # a stray cancel never goes below 0
                    else:
                        bad["out"] += 1
                    continue
                if len(parts) != 3:
                    bad["one_frame" if len(parts) == 1 else "frames"] += 1
                    continue
                first = parts[0].bytes
                route = routes.get(first)
                if route is None:
                    route = route_for(routes, first, watched, relayed=False)
                c = route.counter
                if c is None:
                    bad["topic"] += 1
                    continue
                c.messages += 1
                c.bytes += sum(map(len, parts))
                if route.watched:
                    try:
                        _send_parts(monitor, parts, _NOBLOCK)
                    except zmq.Again:
                        state.monitor_dropped += 1
                seen += 1
                if not seen & 255:
                    if _monitor_subscriptions(monitor, watched):
                        _rewatch(routes, watched)
                        _rewatch(tel_routes, watched)
                    self._relay_telemetry(telemetry, inject, tel_routes, watched)
        except zmq.ContextTerminated:
            pass
        finally:
            for s in (sock, inject, telemetry, monitor):
                s.close(linger=0)

    def _route(
        self, routes: dict[bytes, _Route], first: bytes, watched: set[bytes], *, relayed: bool
    ) -> _Route:
        """The route of a topic frame not seen before (`relayed`: it came on `tel`).

        A telemetry topic from the data path is the relay's own copy (or no heartbeat):
        neither counted nor republished; any other topic on `tel` is counted bad.
        """
        if len(routes) > 65536:
            routes.clear()
        if not _valid_topic(first) or (relayed and not first.startswith(TELEMETRY_TOPICS)):
            route = routes[first] = _Route(None, False)
            return route
        if not relayed and first.startswith(TELEMETRY_TOPICS):
            route = routes[first] = _Route(_UNCOUNTED, False)
            return route
        key = topic_prefix(first)
        state = self.state
        with state.lock:  # snapshot() iterates the dict under this lock
            c = state.counters.get(key)
            if c is None:
                c = state.counters[key] = TopicCounter()
        route = routes[first] = _Route(c, _matches(first, watched))
        return route

    def _relay_telemetry(
        self,
        telemetry: zmq.Socket,
        inject: zmq.Socket,
        routes: dict[bytes, _Route],
        watched: set[bytes],
    ) -> None:
        """What arrived on `tel` (at most a burst): counted, to the monitors that asked, and
        into the data path for lossless consumers (dropped there while it is blocked)."""
        state = self.state
        for _ in range(_TELEMETRY_BURST):
            try:
                parts = _recv_parts(telemetry, _NOBLOCK)
            except zmq.Again:
                return
            if len(parts) != 3:
                state.bad["one_frame" if len(parts) == 1 else "frames"] += 1
                continue
            first = parts[0].bytes
            route = routes.get(first)
            if route is None:
                route = self._route(routes, first, watched, relayed=True)
            c = route.counter
            if c is None:
                state.bad["topic"] += 1
                continue
            c.messages += 1
            c.bytes += sum(map(len, parts))
            frames = [p.bytes for p in parts]  # small; sent twice
            if route.watched:
                try:
                    _send_parts(self._monitor, frames, _NOBLOCK)
                except zmq.Again:
                    state.monitor_dropped += 1
            _send_parts(inject, frames, _NOBLOCK)  # a PUB: drops when full, never waits

    def _snapshot(self, req: dict[str, Any]) -> dict[str, Any]:
        return self.state.snapshot()

    def _claim(self, req: ClaimRequest) -> dict[str, Any]:
        """Grant a source name unless a live claim of another process holds it.

        Live: on this host, the holder's pid still runs (a source restarted after a kill -9
        gets its name back at once); on another host, its data or stats reached us in the
        last `_CLAIM_SILENCE` seconds.
        """
        now = time.monotonic()
        held = self._claims.get(req.source)
        other = held is not None and (held.host, held.pid) != (req.host, req.pid)
        if held is not None and other and self._alive(req.source, held, now):
            return {"granted": False, "holder": {"node": held.node, "pid": held.pid}}
        self._claims[req.source] = _Claim(
            req.node, req.host, req.pid, self._claim_count(req.source), now
        )
        return {"granted": True}

    def _claim_count(self, source: str) -> int:
        state = self.state
        with state.lock:
            return sum(
                state.counters[t].messages
                for t in (f"data.{source}", f"stats.{source}")
                if t in state.counters
            )

    def _alive(self, source: str, claim: _Claim, now: float) -> bool:
        if claim.host == socket.gethostname():
            try:
                os.kill(claim.pid, 0)
            except ProcessLookupError:
                return False
            except PermissionError:
                pass  # another user's process: it exists
            return True
        count = self._claim_count(source)
        if count != claim.count:
            claim.count, claim.changed = count, now
        return now - claim.changed < _CLAIM_SILENCE

    def _serve_control(self) -> None:
        try:
            self._control.serve(self._stop.is_set)
        finally:
            self._control.close()

    def _publish_stats(self) -> None:
        pub = TelemetryPublisher(self.address, ctx=self._ctx)
        source = Source(self.name, topic=f"stats.{self.name}")
        sampler = ProcessSampler()
        last = {}
        last_t = time.monotonic()
        try:
            while not self._stop.wait(self.stats_interval):
                snap = self.state.snapshot()
                now = time.monotonic()
                dt = max(now - last_t, 1e-9)
                msgs = sum(v[0] for k, v in snap["topics"].items() if not k.startswith("stats."))
                nbytes = sum(v[1] for k, v in snap["topics"].items() if not k.startswith("stats."))
                report = StatsReport(
                    piece=self.name,
                    role="broker",
                    undecodable=sum(snap["bad"].values()),
                    msgs_in=msgs,
                    msgs_out=msgs,
                    bytes_in=nbytes,
                    bytes_out=nbytes,
                    rate_in=(msgs - last.get("m", 0)) / dt,
                    rate_out=(msgs - last.get("m", 0)) / dt,
                    mb_in=(nbytes - last.get("b", 0)) / dt / 1e6,
                    extra={
                        "topics": snap["topics"],
                        "subscriptions": snap["subscriptions"],
                        "monitor_dropped": snap["monitor_dropped"],
                        "bad": snap["bad"],
                    },
                    **sampler.sample(),
                )
                last = {"m": msgs, "b": nbytes}
                last_t = now
                pub.send(source.control(Kind.STATS, source.topic, report))
        except zmq.ContextTerminated:
            pass
        finally:
            pub.close()

    def _shutdown(self) -> None:
        self._ctx.term()  # wakes every thread with ETERM; each closes its own sockets
        for endpoint in self.address.endpoints:
            if endpoint.startswith("ipc://"):
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(endpoint[len("ipc://") :])


@dataclass
class _Claim:
    """Who holds a source name: its node, host and pid, and (for a holder on another host)
    the message count of its topics when last seen changing."""

    node: str
    host: str
    pid: int
    count: int
    changed: float


class _Route:
    """The counter of one topic frame (None: not a topic, counted bad), and whether a monitor
    subscribed to that topic."""

    __slots__ = ("counter", "watched")

    def __init__(self, counter: TopicCounter | None, watched: bool) -> None:
        self.counter = counter
        self.watched = watched


_UNCOUNTED = TopicCounter()
"""The counter of what is neither counted nor republished (telemetry on the data path)."""


def _rewatch(routes: dict[bytes, _Route], watched: set[bytes]) -> None:
    """After monitors (un)subscribed: which routes are republished now."""
    for topic, route in routes.items():
        c = route.counter
        route.watched = c is not None and c is not _UNCOUNTED and _matches(topic, watched)


def _valid_topic(frame: bytes) -> bool:
    """A topic frame as `envelope.topic_frame` writes it: UTF-8 text ending in TOPIC_END."""
    if not frame.endswith(TOPIC_END):
        return False
    try:
        frame.decode()
    except UnicodeDecodeError:
        return False
    return True


def _matches(topic: bytes, prefixes: set[bytes]) -> bool:
    return any(topic.startswith(p) for p in prefixes)


def _monitor_subscriptions(monitor: zmq.Socket, watched: set[bytes]) -> bool:
    """Apply the (un)subscriptions monitors sent since the last call; True if any changed.

    The XPUB reports a prefix when its first monitor subscribes and when its last one leaves
    (or disconnects), so a set of prefixes is exact.
    """
    changed = False
    while True:
        try:
            msg = _recv(monitor, _NOBLOCK)
        except zmq.Again:
            return changed
        if msg[:1] == b"\x01":
            watched.add(msg[1:])
            changed = True
        elif msg[:1] == b"\x00":
            watched.discard(msg[1:])
            changed = True
