"""Stats figures without processes: latency percentiles, loss accounting, the monitor's view,
the watch table's width, the Prometheus text, the history file and its plot."""

from __future__ import annotations

import math
import random
import subprocess
import sys
import time
from pathlib import Path

import pytest

from enrgdaq_core.alert_wire import Alert
from enrgdaq_core.envelope import Header, Kind, Source
from enrgdaq_core.monitor import Monitor, sort_pieces
from enrgdaq_core.stats import LatencyHistogram, Meter, SequenceTracker, StatsReport

BUCKET = 1 + 2**-LatencyHistogram.SUB_BITS  # relative width of one bucket, at most


def _header(seq: int, sent_ns: int, source: str = "s", epoch: int = 1) -> Header:
    return Header(kind=Kind.TABLE, source=source, seq=seq, time_ns=sent_ns, epoch=epoch, rows=1)


def _nearest_rank(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[max(1, math.ceil(q * len(ordered))) - 1]


# -- latency ------------------------------------------------------------------------------------


def test_meter_latency_from_injected_delays() -> None:
    """Messages stamped 1..100 ms before they are received: p50 ~ 50 ms, p99 ~ 99 ms, max 100."""
    meter = Meter("store-x", "store")
    now = 1_700_000_000_000_000_000
    delays_ms = list(range(1, 101))
    random.Random(1).shuffle(delays_ms)
    for seq, d in enumerate(delays_ms):
        meter.received(_header(seq, now - d * 1_000_000), 10, now_ns=now)
    report = meter.report()
    assert report.latency_max_ms == pytest.approx(100.0)
    assert report.latency_p50_ms == pytest.approx(50.0, rel=BUCKET - 1)
    assert report.latency_p99_ms == pytest.approx(99.0, rel=BUCKET - 1)
    # the next interval starts empty: figures are per interval, not since the start
    later = meter.report()
    assert later.latency_p50_ms is None
    # count and sum are since the start (a Prometheus summary's _count and _sum), exact
    assert (report.latency_count, report.latency_sum_ms) == (100, 5050.0)
    assert (later.latency_count, later.latency_sum_ms) == (100, 5050.0)
    meter.received(_header(100, now - 2_500_000), 10, now_ns=now)
    assert (meter.report().latency_count, meter.report().latency_sum_ms) == (101, 5052.5)


def test_constant_delay_is_exact() -> None:
    meter = Meter("m", "monitor")
    now = 2_000_000_000_000_000_000
    for seq in range(50):
        meter.received(_header(seq, now - 7_300_000), 1, now_ns=now)  # 7.3 ms each
    r = meter.report()
    assert (r.latency_p50_ms, r.latency_p99_ms, r.latency_max_ms) == (7.3, 7.3, 7.3)


def test_percentiles_within_one_bucket_of_the_truth() -> None:
    """Across six decades the estimate is within one bucket (3.1%) of the exact nearest-rank
    value (the first version returned the bucket's upper edge: always high, up to 12%)."""
    rng = random.Random(7)
    for _ in range(20):
        values = [10 ** rng.uniform(-5, 1) for _ in range(rng.randint(1, 2000))]
        h = LatencyHistogram()
        for v in values:
            h.add(v)
        for q in (0.01, 0.5, 0.9, 0.99, 0.999):
            exact = _nearest_rank(values, q)
            got = h.percentile(q)
            assert got is not None
            assert exact / BUCKET <= got <= exact * BUCKET, (q, exact, got)
        assert h.percentile(1.0) == pytest.approx(max(values), abs=1e-9)  # exact to the ns
        assert h.percentile(0.0) == pytest.approx(min(values), abs=1e-9)


def test_histogram_edges() -> None:
    h = LatencyHistogram()
    assert h.percentile(0.5) is None
    h.add(0.0)  # clocks can disagree: negative delays are clamped to 0 by the Meter
    h.add(0.0)
    assert h.percentile(0.5) == 0.0
    h.reset()
    h.add(5000.0)  # beyond the last edge (1000 s): still counted, max exact
    assert h.percentile(0.99) == 5000.0


def test_latency_skipped_without_send_time() -> None:
    meter = Meter("m", "monitor")
    meter.received(_header(0, 0), 1)
    assert meter.report().latency_p50_ms is None


# -- loss ---------------------------------------------------------------------------------------


def test_sequence_gaps_counted_exactly_per_source() -> None:
    meter = Meter("st", "store")
    now = time.time_ns()
    received_a = [0, 1, 2, 5, 6, 10]  # missed 3, 4, 7, 8, 9
    received_b = [3, 4, 9]  # joined late at 3 (not a loss), missed 5..8
    for seq in received_a:
        meter.received(_header(seq, now, "a"), 1, now_ns=now)
    for seq in received_b:
        meter.received(_header(seq, now, "b"), 1, now_ns=now)
    report = meter.report()
    assert report.lost == 5 + 4
    assert report.extra["lost_by_source"] == {"a": 5, "b": 4}


def test_restarted_source_is_not_a_loss_but_its_missed_start_is() -> None:
    tracker = SequenceTracker()
    for seq in range(3):
        tracker.observe(_header(seq, 1, "a", epoch=1))
    tracker.observe(_header(0, 1, "a", epoch=2))  # restarted: new epoch from 0
    assert tracker.total_lost == 0
    tracker.observe(_header(4, 1, "a", epoch=3))  # restarted again, first 4 missed
    assert tracker.total_lost == 4


def test_restarts_come_from_the_supervisor(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DAQ_RESTARTS", "3")
    assert Meter("j", "job").report().restarts == 3


# -- the monitor's view ---------------------------------------------------------------------------


class Clock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


def _report(piece: str, role: str = "job", **kw: object) -> StatsReport:
    kw.setdefault("node", "n1")
    kw.setdefault("pid", 100)
    return StatsReport(piece=piece, role=role, **kw)  # type: ignore[arg-type]


def test_monitor_marks_stale_never_drops() -> None:
    clock = Clock()
    mon = Monitor(stale_after=3.0, clock=clock)
    mon.add_report(_report("sensor1", rate_out=50.0))
    mon.add_report(_report("store-csv", "store", rate_in=50.0))
    clock.t += 2.0
    mon.add_report(_report("store-csv", "store", rate_in=50.0))
    assert [v.status(clock.t, 3.0) for v in mon.pieces()] == ["ok", "ok"]
    clock.t += 2.0  # sensor1 silent for 4 s
    status = {v.piece: v.status(clock.t, 3.0) for v in mon.pieces()}
    assert status == {"sensor1": "stale", "store-csv": "ok"}
    clock.t += 3600.0
    assert {v.piece for v in mon.pieces()} == {"sensor1", "store-csv"}
    assert mon.totals().by_status["stale"] == 2


def test_monitor_restart_lossy_stopped_and_alerts() -> None:
    clock = Clock()
    mon = Monitor(clock=clock)
    mon.add_report(_report("j", pid=1))
    mon.add_report(_report("j", pid=2))  # a new process under the same name
    view = mon.get("n1", "j")
    assert view is not None and view.restarts == 1
    mon.add_report(_report("j", pid=2, restarts=4))  # the supervisor's count wins when higher
    assert view.restarts == 4
    mon.add_report(_report("j", pid=2, lost=3))
    assert view.status(clock.t) == "lossy"
    clock.t += 60
    mon.add_report(_report("j", pid=2, lost=3))
    assert view.status(clock.t) == "ok"
    alert = Alert(
        job="a", name="slow", condition="rate_below", state="raised", node="n1", piece="j"
    )
    mon.add_alert(alert)
    assert view.status(clock.t) == "alert" and mon.alerts() == [alert]
    cleared = Alert(job="a", name="slow", condition="rate_below", state="cleared", node="n1",
                    piece="j")  # fmt: skip
    mon.add_alert(cleared)
    assert mon.alerts() == [] and view.status(clock.t) == "ok"
    mon.add_report(_report("j", pid=2, extra={"final": True}))
    assert view.status(clock.t) == "stopped"


def test_monitor_observes_envelopes_and_counts_missed_reports() -> None:
    mon = Monitor()
    src = Source("sensor1", topic="stats.sensor1")
    envs = [src.control(Kind.STATS, src.topic, _report("sensor1", msgs_out=i)) for i in range(5)]
    for env in envs[:2] + envs[4:]:  # the monitor endpoint dropped two reports
        mon.observe(env)
    assert mon.missed_reports == 2
    view = mon.get("n1", "sensor1")
    assert view is not None and view.report.msgs_out == 4 and view.reports == 3


def test_monitor_known_pieces_from_broker_topics() -> None:
    mon = Monitor()
    broker = _report(
        "broker", "broker", extra={"topics": {"stats.dead": [3, 100], "data.x": [1, 1]}}
    )
    mon.add_report(broker)
    assert mon.add_known(mon.known_from_broker()) == ["dead"]
    dead = [v for v in mon.pieces() if v.piece == "dead"][0]
    assert dead.status(mon.clock()) == "stale" and not dead.reported
    mon.add_report(_report("dead"))  # it reports after all: the placeholder goes
    assert [v.piece for v in mon.pieces()].count("dead") == 1


def test_sorting() -> None:
    views = []
    mon = Monitor()
    for name, role, rate, lost in (
        ("b", "job", 5, 0),
        ("a", "store", 50, 2),
        ("broker", "broker", 9, 0),
    ):
        views.append(mon.add_report(_report(name, role, rate_out=rate, rate_in=rate, lost=lost)))
    now = mon.clock()
    assert [v.piece for v in sort_pieces(views, "name", now)] == ["broker", "b", "a"]
    assert [v.piece for v in sort_pieces(views, "rate", now)] == ["a", "broker", "b"]
    assert [v.piece for v in sort_pieces(views, "lost", now)][0] == "a"
    with pytest.raises(ValueError):
        sort_pieces(views, "colour", now)


# -- the watch table ------------------------------------------------------------------------------


def _render(monitor: Monitor, width: int = 80) -> tuple[str, str]:
    from rich.console import Console

    from enrgdaq_core.render import stats_view

    console = Console(width=width, record=True, force_terminal=True, color_system="standard")
    console.print(
        stats_view(monitor, broker="ipc:///tmp/some/long/runtime/dir/broker", hint="q quits")
    )
    return console.export_text(styles=False, clear=False), console.export_text(styles=True)


def test_watch_view_fits_80_columns_and_colours_bad_rows() -> None:
    clock = Clock()
    mon = Monitor(stale_after=2.0, clock=clock)
    mon.add_report(_report("a-very-long-piece-name-for-a-digitizer-board-7", rate_out=123456.0,
                           mb_out=987.6, latency_p50_ms=0.0042, latency_p99_ms=12345.6))  # fmt: skip
    mon.add_report(_report("store-root", "store", node="other-node-with-a-long-name",
                           rate_in=9.5e6, lost=123456789, restarts=12))  # fmt: skip
    mon.add_report(_report("quiet"))
    clock.t += 5
    mon.add_report(
        _report("store-root", "store", node="other-node-with-a-long-name", lost=123456790)
    )
    mon.add_alert(Alert(job="alerts", name="digitizer slow", condition="rate_below",
                        state="raised", node="n1", piece="quiet", severity="error",
                        message="rate 0/s, below 5/s; this text is long enough to need cropping"))  # fmt: skip
    plain, styled = _render(mon)
    lines = plain.splitlines()
    assert max(len(line) for line in lines) <= 80, plain
    assert any("stale" in line and "quiet" in line for line in lines)
    assert any("lossy" in line for line in lines)
    assert any(line.startswith("! error") for line in lines)
    stale_line = next(line for line in styled.splitlines() if "quiet" in line and "stale" in line)
    assert "\x1b[33m" in stale_line or "\x1b[1;33m" in stale_line  # yellow
    lossy_line = next(line for line in styled.splitlines() if "lossy" in line)
    assert "\x1b[31m" in lossy_line or "\x1b[1;31m" in lossy_line  # red


def test_compact_numbers_fit_their_columns() -> None:
    from enrgdaq_core.render import compact

    for v in (0, 0.001, 0.0329, 1, 7.25, 99.9, 123, 9999, 12345, 1e6, 4.56e6, 7.8e9, 1e12, -3.5):
        assert len(compact(v)) <= 5, (v, compact(v))
    assert compact(None) == "-"
    assert compact(12345) == "12.3k"


# -- Prometheus text ------------------------------------------------------------------------------


def test_prometheus_text_parses_with_labels() -> None:
    from prometheus_client.parser import text_string_to_metric_families

    from enrgdaq_core.prometheus import METRICS, scrape_text

    clock = Clock()
    mon = Monitor(stale_after=3.0, clock=clock)
    mon.add_report(_report("sensor1", msgs_out=500, rate_out=50.0, mb_out=0.02))
    mon.add_report(_report("store-csv", "store", msgs_in=480, lost=20, queue=7,
                           latency_p50_ms=1.5, latency_p99_ms=9.0, latency_max_ms=12.0,
                           extra={"lost_by_source": {"sensor1": 20}, "flush_ms": 3.0}))  # fmt: skip
    mon.add_report(_report("broker", "broker", extra={"topics": {"data.sensor1": [500, 1000]}}))
    mon.add_report(_report("store-root", "store", latency_p50_ms=1.5, latency_p99_ms=9.0,
                           latency_max_ms=12.0, latency_count=40, latency_sum_ms=100.0))  # fmt: skip
    mon.add_alert(Alert(job="al", name="lossy", condition="lost_above", state="raised",
                        node="n1", piece="store-csv"))  # fmt: skip
    clock.t += 10
    mon.add_report(_report("store-csv", "store", msgs_in=980, lost=20,
                           extra={"lost_by_source": {"sensor1": 20}}))  # fmt: skip
    samples = {}
    for fam in text_string_to_metric_families(scrape_text(mon)):
        for s in fam.samples:
            samples[(s.name, tuple(sorted(s.labels.items())))] = s.value
    n1 = ("node", "n1")
    assert samples[("daq_messages_out_total", (n1, ("piece", "sensor1")))] == 500
    assert (
        samples[("daq_lost_messages_total", (n1, ("piece", "store-csv"), ("source", "sensor1")))]
        == 20
    )
    assert samples[("daq_piece_up", (n1, ("piece", "sensor1"), ("role", "job")))] == 0  # stale
    assert samples[("daq_piece_up", (n1, ("piece", "store-csv"), ("role", "store")))] == 1
    assert samples[("daq_broker_topic_messages_total",
                    (n1, ("piece", "broker"), ("topic", "data.sensor1")))] == 500  # fmt: skip
    assert samples[("daq_alert_active", (("alert", "lossy"), ("job", "al"), n1,
                                         ("piece", "store-csv"), ("severity", "warning")))] == 1  # fmt: skip
    root = (n1, ("piece", "store-root"))
    assert samples[("daq_latency_seconds", (*root, ("quantile", "0.99")))] == 0.009
    assert samples[("daq_latency_seconds", (*root, ("quantile", "1")))] == 0.012
    assert samples[("daq_latency_seconds_sum", root)] == 0.1
    assert samples[("daq_latency_seconds_count", root)] == 40
    names = {name for name, _ in samples}
    declared = {m.name for m in METRICS}
    summaries = {
        f"{m.name}{end}" for m in METRICS if m.type == "summary" for end in ("_sum", "_count")
    }
    assert names <= declared | summaries | {n.removesuffix("_total") + "_created" for n in declared}


def test_every_metric_and_alert_key_is_documented() -> None:
    from enrgdaq_core.alerts import AlertRule, WebhookConfig
    from enrgdaq_core.jobs.alerts import AlertsConfig
    from enrgdaq_core.prometheus import METRICS
    from enrgdaq_core.stats_history import COLUMNS

    doc = (Path(__file__).parent.parent / "docs" / "metrics.md").read_text()
    missing = [m.name for m in METRICS if f"`{m.name}`" not in doc]
    missing += [f for f in StatsReport.__struct_fields__ if f"`{f}`" not in doc]
    missing += [f for f in AlertRule.__struct_fields__ if f"`{f}`" not in doc]
    missing += [f for f in WebhookConfig.__struct_fields__ if f"`{f}`" not in doc]
    missing += [
        f
        for f in ("hold_off_seconds", "stale_after_seconds")
        if f not in AlertsConfig.__struct_fields__ or f"`{f}`" not in doc
    ]
    missing += [c for c in COLUMNS if f"`{c}`" not in doc]
    assert not missing, f"undocumented in docs/metrics.md: {missing}"


def test_parse_listen() -> None:
    from enrgdaq_core.prometheus import parse_listen

    assert parse_listen(":9464") == ("", 9464)
    assert parse_listen("9464") == ("", 9464)
    assert parse_listen("127.0.0.1:0") == ("127.0.0.1", 0)
    assert parse_listen("[::1]:9000") == ("::1", 9000)
    for bad in ("localhost", "1.2.3.4:x", ":99999"):
        with pytest.raises(ValueError):
            parse_listen(bad)


# -- history and plot -----------------------------------------------------------------------------


def _history(path: Path, rows: int = 30) -> None:
    from enrgdaq_core.stats_history import StatsRecorder

    rec = StatsRecorder(path)
    t0 = 1_700_000_000_000_000_000
    for i in range(rows):
        t = t0 + i * 1_000_000_000
        rec.write(_report("sensor1", time_ns=t, rate_out=50.0 + i % 3, msgs_out=50 * i))
        rec.write(_report("store-csv", "store", time_ns=t, rate_in=49.0, lost=i // 10,
                          latency_p50_ms=1.0 + i / 10, latency_p99_ms=5.0 + i / 5))  # fmt: skip
    rec.close()


def test_history_round_trip_and_torn_tail(tmp_path: Path) -> None:
    from enrgdaq_core.stats_history import read_history

    path = tmp_path / "stats.csv"
    _history(path, rows=10)
    with path.open("a") as f:
        f.write("2024-01-01T00:00:00+00:00,n1,sensor1,job")  # cut short by a crash
    series = {s.piece: s for s in read_history(path)}
    assert set(series) == {"sensor1", "store-csv"}
    assert len(series["sensor1"].time) == 10
    assert series["sensor1"].rate()[:3] == [50.0, 51.0, 52.0]
    assert series["store-csv"].column("lost")[-1] == 0.0
    assert series["store-csv"].column("latency_p50_ms")[0] == 1.0


def test_plot_writes_a_png(tmp_path: Path) -> None:
    from enrgdaq_core.plot import plot_history

    hist = tmp_path / "stats.csv"
    _history(hist)
    out = plot_history(hist, tmp_path / "rates.png", title="run 1")
    data = out.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 10_000


def test_plot_breaks_lines_across_idle_gaps(tmp_path: Path) -> None:
    """Two runs an hour apart are two line pieces, not one slope across the idle hour."""
    import re

    from enrgdaq_core.plot import plot_history
    from enrgdaq_core.stats_history import StatsRecorder

    hist = tmp_path / "stats.csv"
    rec = StatsRecorder(hist)
    t0 = 1_700_000_000_000_000_000
    for start in (0, 3600):  # two runs of 20 reports a second apart, an hour between them
        for i in range(20):
            t = t0 + (start + i) * 1_000_000_000
            rec.write(_report("sensor1", time_ns=t, rate_out=50.0 + i % 3, msgs_out=50 * i))
    rec.close()
    svg = plot_history(hist, tmp_path / "rates.svg").read_text()
    # the throughput line of sensor1 (C0, #1f77b4): its path moves to a new start once
    paths = re.findall(r'<path d="([^"]+)"[^>]*style="[^"]*stroke: #1f77b4', svg)
    drawn = max(paths, key=len)
    assert drawn.count("M") == 2, drawn[:200]
    assert drawn.count("L") == 38  # 40 points: 19 segments in each run, none between


def test_stats_modules_do_not_import_pyarrow() -> None:
    code = (
        "import sys\n"
        "import enrgdaq_cli.main, enrgdaq_cli.stats, enrgdaq_core.monitor, enrgdaq_core.alerts\n"
        "import enrgdaq_core.prometheus, enrgdaq_core.render, enrgdaq_core.stats_history\n"
        "import enrgdaq_core.jobs.alerts\n"
        "from enrgdaq_core.monitor import Monitor\n"
        "from enrgdaq_core.prometheus import scrape_text\n"
        "scrape_text(Monitor())\n"
        "bad = sorted(m for m in ('pyarrow', 'uproot', 'h5py', 'matplotlib') if m in sys.modules)\n"
        "print(','.join(bad))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == ""
