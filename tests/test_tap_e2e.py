"""`daq tap` as a newcomer meets it, real processes: text lines into a pipe with --text, lines
that show values, and a mistyped topic answered with the topics the broker carries."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest

from conftest import Procs, wait_for, write
from enrgdaq_core.broker_client import query
from enrgdaq_core.transport import BrokerAddress

pytestmark = pytest.mark.e2e

SENSOR = 'daq_job_type = "sensor"\nname = "sensor1"\ninterval_seconds = 0.05\nchannels = 2\n'
DIGI = (
    'daq_job_type = "digitizer"\nname = "digi1"\ninterval_seconds = 0.05\nevent_rate = 40.0\n'
    "channels = 2\nsamples = 64\n"
)


def _publishing(procs: Procs, broker: BrokerAddress, tmp_path: Path, text: str, name: str):
    cfg = write(tmp_path / f"{name}.toml", text)
    job = procs.start("job", "run", str(cfg), "-o", "broker", "--broker", broker.base)
    wait_for(
        lambda: f"data.{name}" in query(broker, timeout=2.0)["topics"], 30, what=f"{name} data"
    )
    return job


def test_tap_text_into_a_pipe_shows_values(
    procs: Procs, broker: BrokerAddress, tmp_path: Path
) -> None:
    sensor = _publishing(procs, broker, tmp_path, SENSOR, "sensor1")
    digi = _publishing(procs, broker, tmp_path, DIGI, "digi1")
    args = ("--broker", broker.base, "--text", "--count", "3")
    p = procs.run("tap", "data.sensor1", *args)
    assert p.returncode == 0, p.stderr.decode()
    lines = p.stdout.decode().splitlines()
    assert len(lines) == 3
    for line in lines:
        assert re.fullmatch(
            r"\S+ data\.sensor1 table src=sensor1 seq=\d+ rows=1 cols=3 bytes=\d+ lat=\S+ \| "
            r"timestamp=\d\d:\d\d:\d\d\.\d{3} ch0=[-\d.e+]+ ch1=[-\d.e+]+",
            line,
        ), line
    p = procs.run("tap", "data.digi1", *args)
    assert p.returncode == 0, p.stderr.decode()
    for line in p.stdout.decode().splitlines():
        values = line.split(" | ", 1)[1]
        # waveforms as their first samples and their length, the line bounded
        assert re.search(r"ch0=\[(-?\d+,){4}\.\.\.\]\(64\)", values), line
        assert len(values) <= 120
    assert procs.stop(sensor) == 0 and procs.stop(digi) == 0


def test_tap_text_and_stream_are_one_choice(procs: Procs, broker: BrokerAddress) -> None:
    p = procs.run("tap", "--broker", broker.base, "--text", "-o", "-", "--count", "1")
    assert p.returncode == 2
    assert p.stderr.decode().splitlines() == [
        "daq: error: --text and -o - ask for different outputs: choose one"
    ]


def test_a_mistyped_topic_names_the_topics_on_the_broker(
    procs: Procs, broker: BrokerAddress, tmp_path: Path
) -> None:
    job = _publishing(procs, broker, tmp_path, SENSOR, "sensor1")
    err = tmp_path / "tap.err"
    with err.open("wb") as f:
        tap = procs.start(
            "tap", "data.sensr1", "--broker", broker.base, stdout=subprocess.PIPE, stderr=f
        )
    hint = wait_for(lambda: err.read_text(), 30, what="the tap's hint")
    assert re.fullmatch(
        r"tap: nothing on data\.sensr1 after 3 s; topics on the broker: data\.sensor1"
        r"( \(and stats\. of \d+ pieces?\))?; did you mean data\.sensor1\?\n",
        hint,
    ), hint
    # said once: still one line after two more quiet periods (the broker is asked meanwhile)
    n = query(broker, timeout=2.0)["topics"]["data.sensor1"][0]
    wait_for(
        lambda: query(broker, timeout=2.0)["topics"]["data.sensor1"][0] >= n + 120,
        60,
        what="six more seconds of sensor1",
    )
    assert procs.stop(tap) == 0
    assert err.read_text() == hint
    assert procs.stop(job) == 0


def test_a_quiet_topic_that_exists_gets_no_hint(
    procs: Procs, broker: BrokerAddress, tmp_path: Path
) -> None:
    job = _publishing(procs, broker, tmp_path, SENSOR, "sensor1")
    assert procs.stop(job) == 0  # data.sensor1 has been carried, and is quiet now
    p = procs.run("tap", "data.sensor1", "--broker", broker.base, "--timeout", "4", "--text")
    assert p.returncode == 0
    assert p.stderr.decode() == ""
