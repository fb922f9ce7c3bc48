"""Bad messages are counted, each apart from loss (issue 15): undecodable, duplicates, sequence
jumps, out-of-epoch messages; and the broker's subscription table counts only real subscribers.

Unit tests drive the sequence tracker, the store runner, the tap loop and the monitor in-process;
the end-to-end ones start real `daq` processes and read `daq stats --json`.
"""

from __future__ import annotations

import json
import subprocess
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import msgspec
import pandas as pd
import pytest
import zmq

from _store_data import ListInput, broker_store, sample_table, source, stream_bytes, subscribers
from conftest import Procs, wait_for
from enrgdaq_core.envelope import Envelope, Header, Kind, Source, encode_header, topic_frame
from enrgdaq_core.monitor import Monitor
from enrgdaq_core.signals import StopFlag
from enrgdaq_core.stats import (
    DUPLICATE,
    JUMP_LIMIT,
    MAX_HOLES,
    Meter,
    SequenceTracker,
    StatsReport,
)
from enrgdaq_core.stores.memory import MemoryBackend
from enrgdaq_core.stores.runner import StoreRunner
from enrgdaq_core.stream import StreamReader
from enrgdaq_core.tap import TapResult, tap
from enrgdaq_core.transport import BrokerAddress, Subscriber

FORGED = 1_004_817  # the forged sequence number of the issue


def _h(seq: int, epoch: int = 1, source: str = "a", time_ns: int = 0) -> Header:
    return Header(kind=Kind.TABLE, source=source, seq=seq, epoch=epoch, time_ns=time_ns, rows=1)


def _observe(tracker: SequenceTracker, seqs: list[int] | range, epoch: int = 1) -> list[int]:
    return [tracker.observe(_h(s, epoch)) for s in seqs]


# -- the sequence tracker -----------------------------------------------------------------------


def test_a_repeated_sequence_number_is_a_duplicate_not_a_loss() -> None:
    t = SequenceTracker()
    assert _observe(t, range(5)) == [0] * 5
    assert _observe(t, range(5)) == [DUPLICATE] * 5
    assert t.duplicates == {"a": 5} and t.lost == {} and t.jumps == {}


def test_a_forged_jump_is_one_jump_and_the_real_sequence_goes_on() -> None:
    t = SequenceTracker()
    _observe(t, range(100))
    assert t.observe(_h(FORGED)) == 0
    assert t.lost == {} and t.jumps == {"a": 1}
    # the source's next real messages: no loss, no duplicates
    assert _observe(t, range(100, 200)) == [0] * 100
    assert t.lost == {} and t.duplicates == {} and t.jumps == {"a": 1}
    assert t.position("a") == (1, 199) and t.expected == {"a": 200}


def test_a_real_gap_beyond_the_limit_is_lost_once_the_source_continues() -> None:
    """A monitor that fell far behind: the first message after the gap is a jump until the
    next one confirms the gap; then it is loss, exactly, and no jump."""
    t = SequenceTracker()
    _observe(t, range(10))
    far = 10 + JUMP_LIMIT + 500
    assert t.observe(_h(far)) == 0 and t.jumps == {"a": 1} and t.lost == {}
    assert t.observe(_h(far + 1)) == far - 10
    assert t.lost == {"a": far - 10} and t.jumps == {}
    assert t.received["a"] + t.lost["a"] == far + 2


def test_a_gap_within_the_limit_is_lost_at_once_and_a_late_message_takes_it_back() -> None:
    t = SequenceTracker()
    assert _observe(t, [0, 1, 2, 6, 7]) == [0, 0, 0, 3, 0]
    assert t.lost == {"a": 3}
    assert t.observe(_h(4)) == 0  # late, not a duplicate: kept, one less lost
    assert t.lost == {"a": 2} and t.duplicates == {}
    assert t.observe(_h(4)) == DUPLICATE


def test_a_forged_first_message_does_not_make_the_real_ones_duplicates() -> None:
    t = SequenceTracker()
    t.observe(_h(FORGED))
    assert _observe(t, range(50)) == [0] * 50
    assert t.duplicates == {} and t.lost == {} and t.jumps == {"a": 1}
    assert t.position("a") == (1, 49)


def test_an_older_epoch_is_out_of_epoch_not_a_restart() -> None:
    t = SequenceTracker()
    _observe(t, range(3), epoch=1)
    _observe(t, range(3), epoch=2)  # restarted
    assert t.observe(_h(3, epoch=1)) == 0  # a delayed message of the old process
    assert t.out_of_epoch == {"a": 1} and t.epochs == {"a": 2}
    assert _observe(t, range(3, 6), epoch=2) == [0, 0, 0]  # the current epoch goes on
    assert t.lost == {} and t.duplicates == {}
    assert t.observe(_h(1, epoch=1)) == DUPLICATE  # earlier epochs still know their numbers
    assert t.observe(_h(1, epoch=2)) == DUPLICATE


def test_a_restart_counts_only_the_missed_start_of_the_new_epoch() -> None:
    t = SequenceTracker()
    _observe(t, range(3), epoch=1)
    assert t.observe(_h(0, epoch=2)) == 0 and t.total_lost == 0
    assert t.observe(_h(4, epoch=3)) == 4 and t.total_lost == 4


def test_a_bogus_new_epoch_is_undone_when_the_old_one_keeps_sending() -> None:
    """One forged message with a newer epoch, then the real source sends on, stamped after
    that epoch began: the old process lives, so the new epoch was no restart."""
    now = time.time_ns()
    t = SequenceTracker()
    for s in range(10):
        t.observe(_h(s, epoch=now - 10**9, time_ns=now))
    t.observe(_h(0, epoch=now))  # forged: a "restart"
    for s in range(10, 20):
        assert t.observe(_h(s, epoch=now - 10**9, time_ns=now + 1)) == 0
    assert t.epochs == {"a": now - 10**9}
    assert t.out_of_epoch == {} and t.lost == {} and t.jumps == {"a": 1}


def test_an_epoch_ahead_of_the_clock_is_no_restart() -> None:
    t = SequenceTracker()
    _observe(t, range(5))
    assert t.observe(_h(0, epoch=time.time_ns() + 10 * 86_400 * 10**9)) == 0
    assert t.out_of_epoch == {"a": 1} and t.epochs == {"a": 1}
    assert _observe(t, range(5, 8)) == [0, 0, 0] and t.lost == {}


def test_a_resumed_mark_vouches_for_the_numbers_below_it_unless_contradicted() -> None:
    t = SequenceTracker()
    t.resume("a", 1, 99)  # a restarted store: the last process wrote up to 99
    assert t.observe(_h(50)) == DUPLICATE
    assert t.observe(_h(103)) == 3 and t.lost == {"a": 3}
    forged = SequenceTracker()
    forged.resume("a", 1, FORGED)  # a mark written after a forged number
    assert _observe(forged, range(5)) == [0] * 5
    assert forged.duplicates == {} and forged.lost == {} and forged.position("a") == (1, 4)


def test_many_gaps_stay_counted_when_old_ones_are_forgotten() -> None:
    t = SequenceTracker()
    seqs = [s for s in range(3 * MAX_HOLES * 3) if s % 3 == 0]  # a gap of 2 before each
    _observe(t, seqs)
    assert t.lost == {"a": 2 * (len(seqs) - 1)} and t.jumps == {}
    assert t.received["a"] + t.lost["a"] == seqs[-1] + 1


def test_meter_reports_every_count_apart() -> None:
    m = Meter("st", "store")
    for s in [0, 1, 1, 2, FORGED, 3]:
        m.received(_h(s), 1)
    m.undecodable = 4
    r = m.report()
    assert (r.lost, r.duplicates, r.jumps, r.undecodable) == (0, 1, 1, 4)
    assert r.extra["duplicates_by_source"] == {"a": 1} and r.extra["jumps_by_source"] == {"a": 1}
    old = msgspec.msgpack.decode(msgspec.msgpack.encode(r))  # an older reader: a plain map
    assert old["duplicates"] == 1
    assert msgspec.msgpack.decode(b"\x82\xa5piece\xa1x\xa4role\xa3job", type=StatsReport).jumps == 0


# -- the store runner ---------------------------------------------------------------------------


def _with_seq(env: Envelope, seq: int, payload: bytes | None = None) -> Envelope:
    """`env` with another sequence number (a forged header), and maybe another payload."""
    header = msgspec.structs.replace(env.header, seq=seq)
    return Envelope(env.topic, header, env.payload if payload is None else payload)


def test_the_store_writes_a_duplicate_once_and_reports_the_input_undecodable() -> None:
    src = Source("s")
    envs = [src.table(sample_table(i, 1)) for i in range(5)]
    backend = MemoryBackend()
    result = StoreRunner(backend, name="m").run(ListInput(envs + envs, undecodable=7), StopFlag())
    assert backend.table("s")["i64"].to_pylist() == sample_table(0, 5)["i64"].to_pylist()
    assert result.meter.sequences.duplicates == {"s": 5}
    report = result.meter.report()
    assert report.duplicates == 5 and report.undecodable == 7 and report.lost == 0


def test_the_state_file_never_holds_a_forged_number(tmp_path: Path) -> None:
    src = Source("s")
    envs = [src.table(sample_table(i, 1)) for i in range(10)]
    forged = _with_seq(envs[5], FORGED)
    state = tmp_path / "state.json"
    backend = MemoryBackend()
    runner = StoreRunner(backend, name="m", state_file=state)
    runner.run(ListInput([*envs[:5], forged, *envs[5:]]), StopFlag())
    assert json.loads(state.read_text())["written"]["s"] == [src.epoch, 9]
    assert len(backend.table("s")) == 11  # the forged message is data too: kept, counted
    assert runner.meter.sequences.jumps == {"s": 1} and runner.meter.sequences.lost == {}
    # the next process of the store goes on from 9: the real 10 is no duplicate, no loss
    again = StoreRunner(MemoryBackend(), name="m", state_file=state)
    again.run(ListInput([src.table(sample_table(10, 1))]), StopFlag())
    seqs = again.meter.sequences
    assert seqs.lost == {} and seqs.duplicates == {} and seqs.jumps == {}


def test_a_stream_skips_and_counts_an_intact_record_that_does_not_decode() -> None:
    import io
    import struct
    import zlib

    src = Source("s")
    good = [src.table(sample_table(i, 1)) for i in range(3)]
    topic = b"data.s\x00"
    body = struct.pack("<HI", len(topic), 3) + topic + b"\xc1\xc1\xc1" + b"payload"
    bad = b"\x1eREC" + struct.pack("<II", len(body), zlib.crc32(body)) + body
    data = stream_bytes(good[:2]) + bad + stream_bytes(good[2:], header=False)
    reader = StreamReader(io.BytesIO(data), skip_undecodable=True)
    assert [r.envelope.header.seq for r in reader] == [0, 1, 2] and reader.undecodable == 1
    with pytest.raises(Exception, match="undecodable record"):
        list(StreamReader(io.BytesIO(data)))  # a checking tool still hears about it


def test_a_stream_that_ends_damaged_counts_the_damaged_record() -> None:
    import io

    from enrgdaq_core.channels import StreamInput

    src = Source("s")
    data = stream_bytes([src.table(sample_table(i, 1)) for i in range(3)])
    backend = MemoryBackend()
    result = StoreRunner(backend, name="m").run(StreamInput(io.BytesIO(data[:-5])), StopFlag())
    assert result.damage is not None and len(backend.table("s")) == 2
    report = result.meter.report()
    assert report.undecodable == 1 and "truncated record" in report.extra["input_damage"]


# -- the tap and the monitor --------------------------------------------------------------------


def test_tap_counts_every_kind_of_bad_message() -> None:
    class Inp:
        undecodable = 3

        def __init__(self, envs: list[Envelope]) -> None:
            self.envs = envs

        def recv(self, timeout: float | None = None) -> Envelope | None:
            return self.envs.pop(0) if self.envs else None

    src = Source("t")
    envs = [src.raw(b"x") for _ in range(3)]
    got: list[int] = []
    items = [*envs, envs[1], _with_seq(envs[0], FORGED)]
    result = tap(Inp(items), lambda e, g: got.append(g), stop=threading.Event(), count=5)
    assert got == [0, 0, 0, DUPLICATE, 0]
    assert result == TapResult(seen=5, undecodable=3, duplicates=1, jumps=1)
    assert result.problems() == {"undecodable": 3, "duplicates": 1, "jumps": 1}


def test_monitor_json_shows_every_count_even_at_zero_and_sums_them() -> None:
    mon = Monitor()
    mon.add_report(StatsReport(piece="store-a", role="store", undecodable=1100, duplicates=5))
    mon.add_report(StatsReport(piece="store-b", role="store", jumps=1))
    snap = mon.snapshot()
    a, b = snap["pieces"]
    assert (a["undecodable"], a["duplicates"], a["jumps"], a["lost"]) == (1100, 5, 0, 0)
    assert b["jumps"] == 1 and b["out_of_epoch"] == 0
    totals = snap["totals"]
    assert (totals["undecodable"], totals["duplicates"], totals["jumps"]) == (1100, 5, 1)


def test_the_watch_table_shows_bad_messages(monkeypatch: pytest.MonkeyPatch) -> None:
    from rich.console import Console

    from enrgdaq_core.render import stats_view

    mon = Monitor()
    mon.add_report(StatsReport(piece="store-a", role="store", undecodable=1100, duplicates=5))
    console = Console(width=120, record=True)
    console.print(stats_view(mon, width=120))
    text = console.export_text()
    assert "bad: undecodable 1100  duplicates 5" in text
    header = next(line for line in text.splitlines() if "lost" in line and "rst" in line)
    assert "bad" in header.split()
    narrow = Console(width=80, record=True)
    narrow.print(stats_view(mon, width=80))
    assert all(len(line) <= 80 for line in narrow.export_text().splitlines())


# -- real processes -----------------------------------------------------------------------------


def _stats_json(procs: Procs, broker: BrokerAddress) -> dict[str, Any]:
    p = procs.run("stats", "--json", "--broker", broker.base, "--wait", "1.5", timeout=60)
    assert p.returncode == 0, p.stderr.decode()
    return json.loads(p.stdout)


def _piece(
    procs: Procs,
    broker: BrokerAddress,
    name: str,
    until: Callable[[dict[str, Any]], bool],
    timeout: float = 60,
) -> dict[str, Any]:
    """The piece's entry of `daq stats --json` once `until` holds for it."""
    seen: dict[str, Any] = {}

    def ready() -> bool:
        for p in _stats_json(procs, broker)["pieces"]:
            if p["piece"] == name:
                seen.clear()
                seen.update(p)
                return until(p)
        return False

    wait_for(ready, timeout, interval=0.2, what=f"{name} in daq stats --json (last: {seen})")
    return seen


def _raw_publisher(broker: BrokerAddress) -> tuple[zmq.Context, zmq.Socket]:
    """A bare pyzmq XPUB on the broker's `in`, once the broker has subscribed to it."""
    ctx = zmq.Context()
    sock = ctx.socket(zmq.XPUB)
    sock.setsockopt(zmq.XPUB_NODROP, 1)
    sock.linger = 5000
    sock.connect(broker.inbound)
    assert sock.poll(10_000), "the broker never subscribed"
    assert sock.recv()[:1] == b"\x01"
    return ctx, sock


def _daq_command() -> str:
    import shlex

    from conftest import DAQ

    return " ".join(shlex.quote(a) for a in DAQ)


@pytest.mark.e2e
def test_a_run_fed_twice_stores_each_row_once_and_reports_the_duplicates(
    procs: Procs, broker: BrokerAddress, tmp_path: Path
) -> None:
    """`cat s.bin s.bin | daq store csv`: five rows, not ten; the duplicates (five tables and
    the end-of-stream) show in `daq stats --json` and in the store's last log line."""
    src = source("dup", "csv", file_path="dup.csv")
    (tmp_path / "s.bin").write_bytes(
        stream_bytes([*(src.table(sample_table(i, 1)) for i in range(5)), src.end_of_stream()])
    )
    # `cat ... -` keeps the pipe open until its own stdin closes: time to ask `daq stats`
    pipeline = subprocess.Popen(
        f"cat s.bin s.bin - | exec {_daq_command()} store csv --broker {broker.base}",
        shell=True,
        cwd=tmp_path,
        env=procs.env,
        stdin=subprocess.PIPE,
        stderr=subprocess.PIPE,
        start_new_session=True,
    )
    procs.started.append(pipeline)
    piece = _piece(procs, broker, "store-csv", lambda p: p["msgs_in"] >= 12)
    assert piece["duplicates"] == 6 and piece["lost"] == 0 and piece["undecodable"] == 0
    assert piece["extra"]["duplicates_by_source"] == {"dup": 6}
    _, err = pipeline.communicate(timeout=60)  # closes cat's stdin: the store sees the end
    assert pipeline.returncode == 0, err.decode()
    assert "6 duplicates (not stored again)" in err.decode()
    assert pd.read_csv(tmp_path / "dup.csv")["i64"].tolist() == list(
        sample_table(0, 5)["i64"].to_pylist()
    )


@pytest.mark.e2e
def test_undecodable_messages_at_a_store_show_in_daq_stats_json(
    procs: Procs, broker: BrokerAddress, tmp_path: Path
) -> None:
    """1100 garbage ZeroMQ messages on a store's topic: `undecodable 1100` in its stats, and the
    good message after them is stored (a bad message costs nothing but itself)."""
    store = broker_store(procs, broker, "csv", ["g"], "--name", "store-g")
    wait_for(lambda: subscribers(broker, "data.g$") >= 1, 30, what="the store's subscription")
    ctx, sock = _raw_publisher(broker)
    try:
        topic = topic_frame("data.g")
        for i in range(1000):  # a topic, then a header that is no msgpack map
            sock.send_multipart([topic, b"\xc1garbage %d" % i, b"payload"])
        for _ in range(50):  # a wrong frame count
            sock.send_multipart([topic, b"two frames"])
        for _ in range(50):  # a newer header version than ours
            header = msgspec.msgpack.encode({"v": 99, "kind": "table", "source": "g"})
            sock.send_multipart([topic, header, b""])
        piece = _piece(procs, broker, "store-g", lambda p: p["undecodable"] >= 1100)
        assert piece["undecodable"] == 1100 and piece["extra"]["bad_messages"] == 1100
        src = source("g", "csv", file_path="g.csv")
        for env in (src.table(sample_table(0, 3)), src.end_of_stream()):
            sock.send_multipart(env.frames())
        assert store.wait(60) == 0, store.stderr.read().decode()
    finally:
        sock.close()
        ctx.term()
    assert pd.read_csv(tmp_path / "g.csv")["i64"].tolist() == sample_table(0, 3)["i64"].to_pylist()


@pytest.mark.e2e
def test_a_forged_sequence_number_is_a_jump_not_a_million_lost(
    procs: Procs, broker: BrokerAddress, tmp_path: Path
) -> None:
    """One message with seq 1,004,817 among 20 real ones: `lost 0, jumps 1` in `daq stats
    --json`, the real ones after it are neither lost nor duplicates, and the store's state
    file holds the real position, not the forged one."""
    src = source("fj", "csv", file_path="fj.csv")
    real = [src.table(sample_table(i, 1)) for i in range(20)]
    other = source("fj", "csv", file_path="fj.csv")  # its payload; src's numbers stay as sent
    forged = _with_seq(real[5], FORGED, bytes(other.table(sample_table(100, 1)).payload))
    state = tmp_path / "fj.state"
    store = procs.start(
        "store", "csv", "-i", "-", "--broker", broker.base, "--state", str(state),
        stdin=subprocess.PIPE,
    )  # fmt: skip
    assert store.stdin is not None
    store.stdin.write(stream_bytes([*real[:10], forged, *real[10:], src.end_of_stream()]))
    store.stdin.flush()
    piece = _piece(procs, broker, "store-csv", lambda p: p["msgs_in"] >= 22)
    assert piece["lost"] == 0 and piece["jumps"] == 1 and piece["duplicates"] == 0
    store.stdin.close()
    assert store.wait(60) == 0, store.stderr.read().decode()
    rows = pd.read_csv(tmp_path / "fj.csv")["i64"].tolist()
    assert len(rows) == 21  # the forged message is kept: it may be data
    assert json.loads(state.read_text())["written"]["fj"] == [src.epoch, 20]  # the eos


@pytest.mark.e2e
def test_the_broker_subscription_table_ignores_forged_frames(
    procs: Procs, broker: BrokerAddress
) -> None:
    """One-frame messages on `in` neither add nor cancel subscriptions; they and other
    malformed messages are counted as bad in the broker's stats."""
    from enrgdaq_core.broker_client import query, wait_for_subscriptions

    real = Subscriber(broker, ["data.real"])
    ctx, sock = _raw_publisher(broker)
    try:
        wait_for(lambda: subscribers(broker, "data.real$") == 1, 30, what="the real subscriber")
        for _ in range(3):
            sock.send(b"\x01data.forged\x00")  # "subscribe", sent as data
        sock.send(b"\x00data.real\x00")  # "cancel" the real one
        sock.send(b"\x01")  # "subscribe to everything"
        sock.send_multipart([b"data.x\x00", b"h"])  # two frames
        sock.send_multipart([b"\xff\xfe\x00", encode_header(_h(0)), b""])  # a topic, not UTF-8
        sock.send_multipart([b"no terminator", encode_header(_h(0)), b""])

        # the broker counts in order: once this one shows, it has seen all of the above
        sock.send_multipart(Source("marker").raw(b"").frames())
        wait_for(
            lambda: "data.marker" in query(broker, "counters")["topics"],
            30,
            what="the broker to count the marker",
        )
        assert query(broker, "subscriptions")["subscribers"] == {"data.real$": 1}
        assert query(broker, "counters")["bad"] == {
            "one_frame": 5,
            "frames": 1,
            "topic": 2,
            "out": 0,
        }
        assert not wait_for_subscriptions(broker, ["data.forged"], timeout=1.0)
        piece = _piece(procs, broker, "broker", lambda p: p["undecodable"] >= 8)
        assert piece["undecodable"] == 8 and piece["extra"]["bad"]["one_frame"] == 5
    finally:
        sock.close()
        ctx.term()
        real.close()
