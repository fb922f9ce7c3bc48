"""`daq up` feeds the metrics tools: its stats history draws with `daq stats plot`, and
`[stats] prometheus` serves /metrics from the supervisor's own monitor. Real processes."""

from __future__ import annotations

import shutil
import socket
import subprocess
import urllib.request
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from _supervision import TEST_JOB, Up, config_dir
from conftest import Procs, wait_for
from enrgdaq_core.config import ConfigError
from enrgdaq_core.stats_history import read_history
from enrgdaq_core.supervisor.plan import load_plan

pytestmark = [pytest.mark.e2e]


def _config_dir(tmp_path: Path, stats: str = "") -> Path:
    """One test job into a csv store; `stats` is appended to the [stats] table."""
    return config_dir(tmp_path, {"test.toml": TEST_JOB}, stats)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_history_file_draws_a_plot(procs: Procs, runtime_dir: Path, tmp_path: Path) -> None:
    u = Up(procs, _config_dir(tmp_path), runtime_dir)
    try:
        u.wait_flowing()
        history = u.out / "stats_history.csv"

        def job_rows() -> int:
            series = {s.piece: s for s in read_history(history)}
            return len(series["test"].time) if "test" in series else 0

        wait_for(lambda: job_rows() >= 3, 30, interval=0.2, what="3 history rows of the job")
        assert u.stop() == 0
    finally:
        u.finish()
    series = {s.piece: s for s in read_history(history)}
    assert {"broker", "store-csv", "test", "supervisor"} <= set(series)
    sent = series["test"].column("msgs_out")
    assert sent == sorted(sent) and sent[-1]  # counters only grow, and the job sent data
    assert series["store-csv"].role == "store" and series["store-csv"].column("rows_out")[-1]
    png = tmp_path / "x.png"
    p = procs.run("stats", "plot", str(history), "-o", str(png))
    assert p.returncode == 0, p.stderr.decode()
    data = png.read_bytes()
    assert data.startswith(b"\x89PNG\r\n\x1a\n") and len(data) > 1000


def test_prometheus_metrics_from_the_supervisor(
    procs: Procs, runtime_dir: Path, tmp_path: Path
) -> None:
    port = _free_port()
    stats = f'history = ""\nprometheus = "127.0.0.1:{port}"\n'
    u = Up(procs, _config_dir(tmp_path, stats), runtime_dir)
    try:
        u.wait_flowing()

        def scrape() -> dict[str, list]:
            url = f"http://127.0.0.1:{port}/metrics"
            with urllib.request.urlopen(url, timeout=5) as r:
                assert r.status == 200
                text = r.read().decode()
            return {f.name: f.samples for f in text_string_to_metric_families(text)}

        def job_sent() -> dict[str, list] | None:
            fams = scrape()
            sent = [s for s in fams["daq_messages_out"] if s.labels["piece"] == "test"]
            return fams if sent and sent[0].value > 0 else None

        fams = wait_for(job_sent, 30, interval=0.2, what="the job's figures at /metrics")
        up = {s.labels["piece"]: s for s in fams["daq_piece_up"]}
        assert {"broker", "store-csv", "test", "supervisor"} <= set(up)
        assert up["test"].value == 1 and up["test"].labels["role"] == "job"
        assert up["test"].labels["node"] == up["supervisor"].labels["node"]
        assert u.stop() == 0
    finally:
        u.finish()
    assert not (u.out / "stats_history.csv").exists()  # history = "" writes none


def _scrape(port: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as r:
        assert r.status == 200
        return r.read().decode()


def _promtool_check(text: str) -> subprocess.CompletedProcess:
    """Prometheus's own linter on an exposition; missing promtool fails (.ci/run installs it)."""
    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.fail("promtool not found: install Debian's prometheus package (.ci/run does)")
    return subprocess.run(
        [promtool, "check", "metrics"], input=text, capture_output=True, text=True, timeout=60
    )


def test_metrics_pass_promtool_once_stores_report_latency(
    procs: Procs, runtime_dir: Path, tmp_path: Path
) -> None:
    port = _free_port()
    stats = f'history = ""\nprometheus = "127.0.0.1:{port}"\n'
    u = Up(procs, _config_dir(tmp_path, stats), runtime_dir)
    try:
        u.wait_flowing()

        def with_latency() -> str | None:
            text = _scrape(port)
            fams = {f.name: f.samples for f in text_string_to_metric_families(text)}
            store = [
                s
                for s in fams.get("daq_latency_seconds", [])
                if s.labels.get("piece") == "store-csv" and s.labels.get("quantile") == "0.99"
            ]
            return text if store else None

        text = wait_for(with_latency, 30, interval=0.2, what="the store's latency at /metrics")
        check = _promtool_check(text)
        assert check.returncode == 0 and not (check.stdout + check.stderr).strip(), (
            check.stdout + check.stderr
        )
        assert u.stop() == 0
    finally:
        u.finish()


def test_bad_prometheus_address_is_a_config_error(tmp_path: Path) -> None:
    d = _config_dir(tmp_path, 'prometheus = "127.0.0.1:http"\n')
    with pytest.raises(ConfigError) as err:
        load_plan(d)
    assert [(i.key, i.file) for i in err.value.issues] == [
        ("stats.prometheus", str(d / "supervisor.toml"))
    ]
