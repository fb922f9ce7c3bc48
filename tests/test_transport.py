"""Transport through a real broker process: lossless backpressure, monitor loss counted exactly,
topics that never leak, and the one-address-four-endpoints scheme."""

from __future__ import annotations

import os
import stat
import threading
import time
from pathlib import Path

import pytest

from conftest import Procs, start_broker, wait_for, write
from enrgdaq_core.broker_client import query, wait_for_subscriptions
from enrgdaq_core.envelope import Envelope, Kind, Source, decode_body
from enrgdaq_core.reqrep import RemoteError
from enrgdaq_core.stats import SequenceTracker, StatsReport
from enrgdaq_core.transport import (
    DEFAULT_TCP_PORT,
    AddressError,
    BrokerAddress,
    Publisher,
    RuntimeDirError,
    Subscriber,
    runtime_dir,
)

pytestmark = pytest.mark.e2e


def published(addr: BrokerAddress, topic: str) -> int:
    """How many messages the broker has forwarded on `topic` (its control endpoint)."""
    return query(addr, "counters")["topics"].get(topic, [0, 0])[0]


def recv_until_eos(sub: Subscriber, source: str, timeout: float = 20) -> list[Envelope]:
    got = []
    while True:
        env = sub.recv(timeout)
        assert env is not None, f"no end-of-stream from {source} after {len(got)} messages"
        got.append(env)
        if env.kind is Kind.EOS and env.header.source == source:
            return got


def test_slow_subscriber_gets_every_message_and_the_job_waits(
    procs: Procs, runtime_dir: Path, tmp_path: Path
) -> None:
    """Backpressure, not loss: a paused consumer stalls the job; once it reads, nothing is
    missing. Small high-water marks keep the buffers far below the message count."""
    total = 3000
    addr, _ = start_broker(procs, f"ipc://{runtime_dir}/b", "--hwm", "20")
    sub = Subscriber(addr, ["data.fast"], hwm=10)
    try:
        assert wait_for_subscriptions(addr, ["data.fast"], timeout=10)
        cfg = write(tmp_path / "fast.toml", 'daq_job_type = "test"\ninterval_seconds = 0.0001\n')
        job = procs.start("job", "run", str(cfg), "-o", "broker", "--broker", addr.base,
                          "--count", str(total))  # fmt: skip

        last = [-1]

        def stalled() -> bool:
            # the broker's counter stops moving while the job is still alive: it is blocked
            n = published(addr, "data.fast")
            still = n == last[0] and n > 0
            last[0] = n
            return still and job.poll() is None

        wait_for(stalled, 30, interval=0.3, what="the job to block on the paused subscriber")
        assert last[0] < total // 2  # the broker holds little: the job is the one waiting
        seqs = []
        while True:
            env = sub.recv(20)
            assert env is not None, f"stream stopped after {len(seqs)} messages"
            if env.kind is Kind.EOS:
                break
            seqs.append(env.header.seq)
            time.sleep(0.0002)  # a slow store
        assert seqs == list(range(total))
        assert job.wait(30) == 0  # --count reached: it exits on its own once all is delivered
    finally:
        sub.close()


def test_slow_monitor_misses_messages_and_counts_exactly(broker: BrokerAddress) -> None:
    """A monitor that falls behind loses messages (nobody waits for it) and knows how many;
    a lossless consumer of the same topic gets them all."""
    monitor = Subscriber(broker, ["data.burst"], mode="monitor", hwm=10)
    lossless = Subscriber(broker, ["data.burst"])
    pub = Publisher(broker)
    src = Source("burst")
    lossless_got: list[int] = []
    reader = threading.Thread(
        target=lambda: lossless_got.extend(e.header.seq for e in recv_until_eos(lossless, "burst")),
        daemon=True,
    )
    try:
        assert pub.wait_ready(10)
        assert wait_for_subscriptions(broker, ["data.burst"], timeout=10)
        reader.start()
        tracker = SequenceTracker()

        def monitor_joined() -> bool:
            # a monitor's subscription is invisible to the broker: send until one arrives
            pub.send(src.raw(b"warm-up"))
            env = monitor.recv(0.2)
            if env is not None:
                tracker.observe(env.header)
            return env is not None

        wait_for(monitor_joined, 15, interval=0, what="the monitor's subscription")
        first = next(iter(tracker.expected.values())) - 1
        burst = 5000
        payload = bytes(1000)
        for _ in range(burst):
            pub.send(src.raw(payload))
        wait_for(lambda: published(broker, "data.burst") >= src.seq, 30, what="the burst")
        while (env := monitor.recv(0.5)) is not None:  # the monitor catches up, late
            tracker.observe(env.header)
        pub.send(src.end_of_stream())
        eos = monitor.recv(10)
        assert eos is not None and eos.kind is Kind.EOS
        tracker.observe(eos.header)

        sent = src.seq - first
        received = tracker.received["burst"]
        assert tracker.lost["burst"] > 0
        assert received + tracker.lost["burst"] == sent
        assert tracker.duplicates == {}
        reader.join(30)
        assert lossless_got == list(range(src.seq))
    finally:
        for s in (monitor, lossless):
            s.close()
        pub.close()


def test_a_subscription_never_delivers_a_longer_topic(broker: BrokerAddress) -> None:
    """`data.sensor1` must not receive `data.sensor10` or `data.sensor1.x` (ZMQ matches
    byte prefixes; the topic terminator prevents it)."""
    names = ["sensor1", "sensor10", "sensor1.x", "sensor"]
    pubs = {n: Publisher(broker) for n in names}
    sources = {n: Source(n) for n in names}
    exact = Subscriber(broker, ["data.sensor1"])
    monitor = Subscriber(broker, ["data.sensor1"], mode="monitor")
    pattern = Subscriber(broker, ["data.sensor1*"])
    everything = Subscriber(broker, ["data."])
    subs = [exact, monitor, pattern, everything]
    try:
        assert all(p.wait_ready(10) for p in pubs.values())
        assert wait_for_subscriptions(broker, ["data.sensor1", "data.sensor1*", "data."])

        def monitor_joined() -> bool:
            pubs["sensor1"].send(sources["sensor1"].raw(b"warm-up"))
            return monitor.recv(0.2) is not None

        wait_for(monitor_joined, 15, interval=0, what="the monitor's subscription")
        for i in range(50):
            for n in names:
                pubs[n].send(sources[n].raw(f"{n} {i}".encode()))
        for n in names[1:]:
            pubs[n].send(sources[n].end_of_stream())
        seen = {e.header.source for e in recv_until_eos(everything, "sensor")}
        assert seen == set(names)  # every other source has gone through the broker by now
        pubs["sensor1"].send(sources["sensor1"].end_of_stream())

        for sub in (exact, monitor):
            got = recv_until_eos(sub, "sensor1")
            assert {e.topic for e in got} == {"data.sensor1"}
            assert {e.header.source for e in got} == {"sensor1"}
        got = recv_until_eos(pattern, "sensor1")
        assert {e.header.source for e in got} == {"sensor1", "sensor10", "sensor1.x"}
    finally:
        for s in subs:
            s.close()
        for p in pubs.values():
            p.close()


def test_broker_reports_counters_and_stats(broker: BrokerAddress) -> None:
    stats = Subscriber(broker, ["stats.broker"], mode="monitor")
    pub = Publisher(broker)
    try:
        assert pub.wait_ready(10)
        src = Source("counted")
        for _ in range(7):
            pub.send(src.raw(b"12345"))
        wait_for(lambda: published(broker, "data.counted") == 7, what="broker counters")
        status = query(broker, "status")
        assert status["topics"]["data.counted"][0] == 7
        assert status["topics"]["data.counted"][1] > 7 * 5
        with pytest.raises(RemoteError, match="unknown command 'reboot'"):
            query(broker, "reboot")

        def report() -> StatsReport | None:
            env = stats.recv(2)
            return None if env is None else decode_body(env.payload, StatsReport)

        rep = wait_for(
            lambda: (r := report()) is not None and r.msgs_in >= 7 and r, 15, what="stats"
        )
        assert rep.piece == "broker" and rep.role == "broker"
        assert rep.extra["topics"]["data.counted"][0] == 7
    finally:
        stats.close()
        pub.close()


def test_output_close_waits_for_the_broker_and_reports_what_it_could_not_confirm(
    procs: Procs, runtime_dir: Path
) -> None:
    """Closing the lossless output waits until the broker has counted every message; when
    the broker is gone it says how many were not confirmed instead of losing them silently."""
    import os
    import signal

    from enrgdaq_core.channels import BrokerOutput

    addr, p = start_broker(procs, f"ipc://{runtime_dir}/b3")
    src = Source("closing")
    out = BrokerOutput(addr, drain_timeout=0.5)
    for _ in range(3):
        out.send(src.raw(b"x"))
    assert out.unconfirmed() in (0, 1, 2, 3)
    wait_for(lambda: out.unconfirmed() == 0, what="the broker to count 3 messages")
    os.killpg(p.pid, signal.SIGKILL)
    p.wait(10)
    # the output notices the broker is gone and holds what it sends (issue 16)
    wait_for(lambda: out.stats()["broker_outages"] == 1, what="the output to see the outage")
    out.send(src.raw(b"y"))
    assert out.stats()["held"] == 1 and out.unconfirmed() == 4
    with pytest.raises(ConnectionError) as exc:
        out.close()
    assert str(exc.value) == (
        f"the broker at {addr.inbound} did not come back: "
        "1 message(s) held while it was away are lost"
    )


def test_publisher_without_a_broker_is_not_ready(runtime_dir: Path) -> None:
    pub = Publisher(BrokerAddress.parse(f"ipc://{runtime_dir}/nobody"))
    try:
        assert pub.wait_ready(0.3) is False
    finally:
        pub.close(linger=0)


def test_broker_stops_on_sigterm_and_removes_its_sockets(procs: Procs, runtime_dir: Path) -> None:
    addr, p = start_broker(procs, f"ipc://{runtime_dir}/b2")
    sockets = list(addr.endpoints)
    assert len(sockets) == 5
    assert all(Path(s[len("ipc://") :]).exists() for s in sockets)
    assert procs.stop(p) == 0
    assert not any(Path(s[len("ipc://") :]).exists() for s in sockets)
    assert b"listening: in " + addr.inbound.encode() in p.stderr.read()


def test_broker_on_a_busy_port_fails_clearly(procs: Procs) -> None:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        p = procs.run("broker", "--broker", f"tcp://127.0.0.1:{port}", timeout=30)
    assert p.returncode == 1
    assert p.stderr.decode().startswith(f"daq: error: cannot bind tcp://127.0.0.1:{port}: ")


def test_address_ipc_names_five_endpoints() -> None:
    a = BrokerAddress.parse("ipc:///run/daq/broker")
    assert (a.base, a.inbound, a.outbound, a.monitor, a.control, a.telemetry) == (
        "ipc:///run/daq/broker",
        "ipc:///run/daq/broker.in",
        "ipc:///run/daq/broker.out",
        "ipc:///run/daq/broker.mon",
        "ipc:///run/daq/broker.ctl",
        "ipc:///run/daq/broker.tel",
    )


def test_address_tcp_uses_five_consecutive_ports() -> None:
    a = BrokerAddress.parse("tcp://10.0.0.5:6000")
    assert [a.inbound, a.outbound, a.monitor, a.control, a.telemetry] == [
        f"tcp://10.0.0.5:{p}" for p in (6000, 6001, 6002, 6003, 6004)
    ]
    d = BrokerAddress.parse("tcp://daq-host")
    assert d.base == f"tcp://daq-host:{DEFAULT_TCP_PORT}"
    v6 = BrokerAddress.parse("tcp://[::1]:7000")
    assert v6.control == "tcp://[::1]:7003"


def test_address_default_and_environment(
    monkeypatch: pytest.MonkeyPatch, runtime_dir: Path
) -> None:
    monkeypatch.delenv("DAQ_BROKER", raising=False)
    monkeypatch.setenv("DAQ_RUNTIME_DIR", str(runtime_dir))
    assert BrokerAddress.parse().base == f"ipc://{runtime_dir}/broker"
    monkeypatch.setenv("DAQ_BROKER", "tcp://h:7000")
    assert BrokerAddress.parse().inbound == "tcp://h:7000"
    assert BrokerAddress.parse("ipc:///x/y").base == "ipc:///x/y"  # explicit wins


@pytest.mark.parametrize(
    ("address", "message"),
    [
        ("ipc://", "broker address 'ipc://': ipc:// needs a path"),
        ("tcp://host:port", "broker address 'tcp://host:port': bad port"),
        ("udp://h:1", "broker address 'udp://h:1': expected ipc://PATH or tcp://HOST:PORT"),
    ],
)
def test_address_errors(address: str, message: str) -> None:
    with pytest.raises(AddressError) as exc:
        BrokerAddress.parse(address)
    assert str(exc.value) == message


def test_bad_broker_flag_is_a_usage_error(procs: Procs) -> None:
    p = procs.run("tap", "--broker", "udp://h:1", "--count", "1")
    assert p.returncode == 2
    assert p.stderr.decode() == (
        "daq: error: broker address 'udp://h:1': expected ipc://PATH or tcp://HOST:PORT\n"
    )


# -- the runtime directory: private to this user, or refused ---------------------------------


def test_runtime_dir_is_created_private(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("DAQ_RUNTIME_DIR", str(tmp_path / "parent" / "rt"))
    path = runtime_dir()
    assert path == tmp_path / "parent" / "rt"
    st = os.lstat(path)
    assert stat.S_ISDIR(st.st_mode) and stat.S_IMODE(st.st_mode) == 0o700
    assert st.st_uid == os.getuid()
    assert runtime_dir() == path  # and used as it is the next time
    monkeypatch.setenv("DAQ_RUNTIME_DIR", str(tmp_path / "parent" / "rt2"))
    old = os.umask(0o777)  # a umask that leaves no bits at all
    try:
        path = runtime_dir()
    finally:
        os.umask(old)
    assert stat.S_IMODE(os.lstat(path).st_mode) == 0o700


def test_runtime_dir_with_group_or_other_bits_is_refused(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    d = tmp_path / "rt"
    d.mkdir()
    os.chmod(d, 0o755)
    monkeypatch.setenv("DAQ_RUNTIME_DIR", str(d))
    with pytest.raises(RuntimeDirError) as exc:
        runtime_dir()
    assert str(exc.value) == (
        f"runtime directory {d} has mode 0755, not 0700; chmod 700 it "
        "or set DAQ_RUNTIME_DIR to a directory of yours with mode 0700"
    )
    with pytest.raises(RuntimeDirError, match="has mode 0755"):
        BrokerAddress.parse()  # the default address lives there
    os.chmod(d, 0o700)
    assert runtime_dir() == d


def test_runtime_dir_of_another_user_is_refused(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """Another local user created `/tmp/enrgdaq-UID` first: their directory, their sockets."""
    d = tmp_path / "rt"
    d.mkdir(mode=0o700)
    me = os.getuid()
    monkeypatch.setenv("DAQ_RUNTIME_DIR", str(d))
    monkeypatch.setattr(os, "getuid", lambda: me + 4242)  # we are someone else now
    with pytest.raises(RuntimeDirError) as exc:
        runtime_dir()
    assert str(exc.value) == (
        f"runtime directory {d} belongs to uid {me}, not to you (uid {me + 4242}); remove it "
        "(another user may have made it) or set DAQ_RUNTIME_DIR to a directory of yours "
        "with mode 0700"
    )


def test_runtime_dir_that_is_a_symlink_is_refused(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """Even a link to a private directory of ours: whoever made the link chose where it goes."""
    target = tmp_path / "private"
    target.mkdir(mode=0o700)
    link = tmp_path / "rt"
    link.symlink_to(target)
    monkeypatch.setenv("DAQ_RUNTIME_DIR", str(link))
    with pytest.raises(RuntimeDirError, match=f"^runtime directory {link} is a symlink; remove"):
        runtime_dir()
    (tmp_path / "file").write_text("")
    monkeypatch.setenv("DAQ_RUNTIME_DIR", str(tmp_path / "file"))
    with pytest.raises(RuntimeDirError, match="is not a directory"):
        runtime_dir()


def test_a_refused_runtime_dir_is_one_error_line(procs: Procs, tmp_path: Path) -> None:
    d = tmp_path / "shared"
    d.mkdir()
    os.chmod(d, 0o777)
    procs.env["DAQ_RUNTIME_DIR"] = str(d)
    for args in (["broker"], ["ctl", "status"], ["stats", "--json"]):
        p = procs.run(*args, timeout=60)
        assert p.returncode == 1, (args, p.stderr.decode())
        assert p.stderr.decode() == (
            f"daq: error: runtime directory {d} has mode 0777, not 0700; chmod 700 it "
            "or set DAQ_RUNTIME_DIR to a directory of yours with mode 0700\n"
        ), args
    assert list(d.iterdir()) == []  # no socket was bound there
