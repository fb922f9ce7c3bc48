"""What the transport's fast paths must still get right (their speed is in benchmarks/):
zero-copy never sends a buffer the job may reuse, the broker republishes to monitors exactly
what they subscribed to (also after they come and go), receive timeouts behave, and large
tables encode to the same bytes on both paths."""

from __future__ import annotations

import pyarrow as pa
import pytest

from conftest import wait_for
from enrgdaq_core.broker_client import wait_for_subscriptions
from enrgdaq_core.envelope import Envelope, Kind, Source
from enrgdaq_core.tables import decode_table, encode_table, encode_table_view
from enrgdaq_core.transport import BrokerAddress, Publisher, Subscriber

pytestmark = pytest.mark.e2e


def _recv(sub: Subscriber, timeout: float = 10) -> Envelope:
    env = sub.recv(timeout)
    assert env is not None, f"nothing within {timeout} s"
    return env


def test_reused_buffer_is_sent_as_it_was_at_send_time(broker: BrokerAddress) -> None:
    """A job that fills one bytearray per event: each message carries its own event's bytes,
    though the buffer is overwritten right after send() (large payloads go zero-copy only
    when immutable)."""
    sub = Subscriber(broker, ["data.reuse"])
    pub = Publisher(broker)
    src = Source("reuse")
    buf = bytearray(200_000)
    try:
        assert pub.wait_ready(10) and wait_for_subscriptions(broker, ["data.reuse"])
        for event in range(5):
            buf[:] = bytes([event]) * len(buf)
            pub.send(src.raw(buf))
        pub.send(src.raw(memoryview(buf)))  # a writable view of it, the same rule
        buf[:] = b"\xff" * len(buf)
        got = [bytes(_recv(sub).payload) for _ in range(6)]
        assert got == [bytes([e]) * len(buf) for e in range(5)] + [bytes([4]) * len(buf)]
    finally:
        sub.close()
        pub.close(linger=0)


def test_monitor_gets_what_it_subscribed_to_also_after_monitors_come_and_go(
    broker: BrokerAddress,
) -> None:
    pub = Publisher(broker)
    a, b = Source("hp-a"), Source("hp-b")
    assert pub.wait_ready(10)

    def joined(sub: Subscriber, src: Source) -> bool:
        # a monitor's subscription reaches the broker's counter within ~0.1 s: send until seen
        pub.send(src.raw(b"ping"))
        env = sub.recv(0.1)
        return env is not None and env.topic == src.topic

    for _round in range(2):  # the second monitor subscribes after the first one left
        mon = Subscriber(broker, ["data.hp-a"], mode="monitor")
        try:
            wait_for(lambda mon=mon: joined(mon, a), 15, interval=0, what="monitor feed")
            while mon.recv(0.2) is not None:  # drain the pings
                pass
            pub.send(b.raw(b"not for this monitor"))
            pub.send(a.raw(b"for it"))
            env = _recv(mon)
            assert (env.topic, bytes(env.payload)) == ("data.hp-a", b"for it")
            assert mon.recv(0.3) is None and mon.undecodable == 0
        finally:
            mon.close()
    everything = Subscriber(broker, [""], mode="monitor")
    try:
        wait_for(lambda: joined(everything, b), 15, interval=0, what="catch-all monitor")
    finally:
        everything.close()
        pub.close(linger=0)


def test_receive_timeouts_and_blocking_receive_mix(broker: BrokerAddress) -> None:
    sub = Subscriber(broker, ["data.hp-t"])
    pub = Publisher(broker)
    src = Source("hp-t")
    try:
        assert pub.wait_ready(10) and wait_for_subscriptions(broker, ["data.hp-t"])
        assert sub.recv(0) is None
        assert sub.recv(0.05) is None
        pub.send(src.raw(b"one"))
        assert bytes(sub.recv(None).payload) == b"one"  # type: ignore[union-attr]
        pub.send(src.end_of_stream())
        assert _recv(sub, 5).kind is Kind.EOS
        assert sub.recv(0.01) is None
    finally:
        sub.close()
        pub.close(linger=0)


def test_large_table_view_is_readonly_and_same_bytes() -> None:
    import numpy as np

    samples = np.arange(4 * 1024 * 64, dtype=np.int16)
    waves = pa.FixedSizeListArray.from_arrays(pa.array(samples), 1024)
    table = pa.table({"ch0": waves, "n": pa.array(np.arange(len(waves)))})
    view = encode_table_view(table)
    assert isinstance(view, memoryview) and view.readonly
    assert bytes(view) == encode_table(table)
    assert decode_table(view).equals(table)
    small = pa.table({"x": [1, 2]})
    assert encode_table_view(small) == encode_table(small)
