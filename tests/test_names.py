"""Names of sources, pieces, nodes and tags: one safe character set, checked by the config
loader, by every command that takes one, and when a header is decoded."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import DAQ, write
from enrgdaq_core.config import ConfigError
from enrgdaq_core.envelope import EnvelopeError, Header, Kind, decode_header, encode_header
from enrgdaq_core.jobs import load_job
from enrgdaq_core.names import BadName, check_name, check_tag, check_topic, host_node

REPO = Path(__file__).resolve().parents[1]
EXAMPLES = Path("/work/shared/enrgdaq-examples")  # ENRGDAQ's own configs, where present

GOOD = ["sensor1", "pc_metrics", "store-csv", "digi1", "host.example.org", "A", "_x", "a" * 64]
BAD = ["", ".x", "-x", "x.", "..", "a*", "a\x00b", "a/b", "a b", "a" * 65, "ä", "a\nb", "x:y"]


@pytest.mark.parametrize("name", GOOD)
def test_names_in_use_are_valid(name: str) -> None:
    assert check_name("source", name) == name


@pytest.mark.parametrize("name", BAD)
def test_unsafe_names_are_refused_with_one_line(name: str) -> None:
    with pytest.raises(BadName) as exc:
        check_name("source", name)
    assert "\n" not in str(exc.value) and "source name" in str(exc.value)


def test_every_config_in_the_repository_and_enrgdaq_examples_has_a_valid_name() -> None:
    """The configs people already have keep loading: their names (or file stems) fit."""
    files = sorted((REPO / "configs").rglob("*.toml")) + sorted(EXAMPLES.glob("*.toml"))
    assert files
    for path in files:
        check_name("source", path.stem)


def test_tags_and_topics() -> None:
    assert check_tag("") == "" and check_tag("calib-2") == "calib-2"
    with pytest.raises(BadName):
        check_tag("../up")
    for ok in ("", "*", "data.", "data.sensor1", "data.sen*", "stats."):
        assert check_topic(ok) == ok
    for bad in ("data.a\x00", "data.*.x", "da*ta", "data/x"):
        with pytest.raises(BadName):
            check_topic(bad)


def test_host_names_become_valid_node_names() -> None:
    assert host_node("lab-pc.example.org") == "lab-pc.example.org"
    assert host_node("-weird host!.") == "weird_host_"
    assert host_node("") == "localhost" and host_node("...") == "localhost"
    assert check_name("node", host_node("x" * 300 + "\x00")) == "x" * 64


@pytest.mark.parametrize("source", ["../../x", "a\x00b", "sensor*"])
def test_a_header_with_a_bad_source_is_undecodable(source: str) -> None:
    """A forged header never reaches a store's file names or routing: it does not decode."""
    frame = encode_header(Header(kind=Kind.TABLE, source=source))
    with pytest.raises(EnvelopeError, match="source name"):
        decode_header(frame)
    tagged = encode_header(Header(kind=Kind.TABLE, source="s", tag="../t"))
    with pytest.raises(EnvelopeError, match="tag name"):
        decode_header(tagged)


def _issues(path: Path) -> list[str]:
    with pytest.raises(ConfigError) as exc:
        load_job(path)
    return [str(i) for i in exc.value.issues]


def test_the_loader_refuses_nul_and_star_names(tmp_path: Path) -> None:
    nul = write(tmp_path / "n.toml", 'daq_job_type = "test"\nname = "a\\u0000b"\n')
    assert _issues(nul) == [f"{nul}: name: expected a string without NUL bytes, got 'a\\x00b'"]
    star = write(tmp_path / "s.toml", 'daq_job_type = "test"\nname = "sensor*"\n')
    assert _issues(star) == [
        f"{star}: name: bad source name 'sensor*': expected 1-64 of A-Z a-z 0-9 _ . -, "
        "not starting with . or - nor ending with ."
    ]
    stem = write(tmp_path / "my sensor.toml", 'daq_job_type = "test"\n')
    assert _issues(stem) == [
        f"{stem}: bad source name 'my sensor': expected 1-64 of A-Z a-z 0-9 _ . -, "
        "not starting with . or - nor ending with . (the file's name gives it; set `name`)"
    ]
    tag = write(tmp_path / "t.toml", 'daq_job_type = "test"\ntag = "a/b"\n')
    assert _issues(tag)[0].startswith(f"{tag}: tag: bad tag name 'a/b'")
    assert load_job(stem, name="ok").name == "ok"


def _daq(
    *args: str, env: dict[str, str] | None = None, cwd: Path | None = None
) -> subprocess.CompletedProcess:
    return subprocess.run(
        [*DAQ, *args],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, **(env or {})},
        cwd=cwd,
        stdin=subprocess.DEVNULL,
    )


def _one_line(result: subprocess.CompletedProcess, *expected: str) -> None:
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    for text in expected:
        assert text in lines[0], lines[0]


@pytest.mark.e2e
@pytest.mark.parametrize("name", ["a\\u0000b", "sensor*"])
def test_up_check_refuses_nul_and_star_names(tmp_path: Path, name: str) -> None:
    d = tmp_path / "configs"
    d.mkdir()
    write(d / "s.toml", f'daq_job_type = "sensor"\nname = "{name}"\n[store_config.csv]\n')
    result = _daq("up", str(d), "--check")
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr
    lines = result.stderr.strip().splitlines()
    assert lines[0] == f"daq up: 1 problem in {d}; nothing started"
    assert len(lines) == 2 and lines[1].startswith(f"daq: config error: {d}/s.toml: name: ")


@pytest.mark.e2e
def test_commands_refuse_bad_names_with_one_line(tmp_path: Path) -> None:
    cfg = write(tmp_path / "s.toml", 'daq_job_type = "test"\n')
    _one_line(_daq("job", "run", str(cfg), "--name", "a*", "-o", "-"), "--name", "'a*'")
    _one_line(_daq("store", "csv", "--name", "../x", "-i", "-"), "--name", "'../x'")
    _one_line(_daq("store", "csv", "--from", "data.a\x01*b"), "--from", "bad topic")
    _one_line(_daq("broker", "--name", "b*"), "--name")
    _one_line(_daq("tap", "data.*.x", "--count", "1"), "bad topic")
    _one_line(_daq("ctl", "stop", "x*"), "JOB", "'x*'")
    _one_line(_daq("ctl", "logs", ".hidden"), "JOB")
    _one_line(_daq("replay", str(cfg), "--source", "a/b"), "--source")


@pytest.mark.e2e
@pytest.mark.parametrize("node", ["bad node", "x*", "-x"])
def test_a_bad_daq_node_is_refused_with_one_line(tmp_path: Path, node: str) -> None:
    cfg = write(tmp_path / "s.toml", 'daq_job_type = "test"\n')
    result = _daq("job", "run", str(cfg), "--count", "1", "-o", "-", env={"DAQ_NODE": node})
    _one_line(result, "DAQ_NODE", "node name")
    d = tmp_path / "configs"
    d.mkdir()
    write(d / "s.toml", 'daq_job_type = "sensor"\n[store_config.csv]\n')
    _one_line(_daq("up", str(d), "--check", env={"DAQ_NODE": node}), "DAQ_NODE")


@pytest.mark.e2e
def test_a_bad_node_in_supervisor_toml_is_a_config_error(tmp_path: Path) -> None:
    d = tmp_path / "configs"
    d.mkdir()
    write(d / "s.toml", 'daq_job_type = "sensor"\n[store_config.csv]\n')
    write(d / "supervisor.toml", 'node = "lab 1"\n')
    result = _daq("up", str(d), "--check")
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert f"{d}/supervisor.toml: node: bad node name 'lab 1'" in result.stderr


def test_a_host_name_outside_the_set_does_not_crash(monkeypatch: pytest.MonkeyPatch) -> None:
    """No DAQ_NODE and an odd host name: the node is the sanitized host name."""
    code = (
        "import socket; socket.gethostname = lambda: 'lab pc*'\n"
        "from enrgdaq_core.envelope import Source, node_name\n"
        "print(node_name(), Source('s').raw(b'x').header.node)\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "DAQ_NODE"}
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=60
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["lab_pc_", "lab_pc_"]
