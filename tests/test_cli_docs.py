"""completions/ and man/ are current with the app, the man pages render, completion answers."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "scripts" / "gen_cli_docs.py"
MAN = ROOT / "man"
COMPLETIONS = ROOT / "completions"


def _gen(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, str(SCRIPT), *args],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
    )


def _daq() -> str:
    """The installed `daq` console script: completion scripts call back into it by name."""
    beside = Path(sys.executable).parent / "daq"
    found = str(beside) if beside.is_file() else shutil.which("daq")
    if found is None:
        pytest.fail("no `daq` executable: install the package (pip install -e .)")
    return found


def _complete(shell: str, env: dict[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run(
        [_daq()],
        capture_output=True,
        text=True,
        timeout=30,
        env={**os.environ, "_DAQ_COMPLETE": f"complete_{shell}", **env},
    )


def test_checked_in_files_are_current():
    # Terminal width and a set DAQ_BROKER must not change the output (CI has neither).
    env = {**os.environ, "COLUMNS": "37", "DAQ_BROKER": "tcp://elsewhere:1"}
    result = _gen("--check", env=env)
    assert result.returncode == 0, (
        f"stale generated files, run `python scripts/gen_cli_docs.py`:\n{result.stdout}"
    )


def test_check_lists_changed_missing_and_orphaned_files(tmp_path: Path):
    assert _gen("--root", str(tmp_path)).returncode == 0
    assert _gen("--check", "--root", str(tmp_path)).returncode == 0
    (tmp_path / "man" / "daq-store.1").write_text("edited by hand\n")
    (tmp_path / "completions" / "daq.fish").unlink()
    (tmp_path / "man" / "daq-gone.1").write_text(".TH OLD 1\n")

    result = _gen("--check", "--root", str(tmp_path))
    assert result.returncode == 1
    assert result.stdout.splitlines() == [
        "stale: completions/daq.fish",
        "stale: man/daq-gone.1",
        "stale: man/daq-store.1",
    ]
    assert _gen("--root", str(tmp_path)).returncode == 0
    assert not (tmp_path / "man" / "daq-gone.1").exists()
    assert _gen("--check", "--root", str(tmp_path)).returncode == 0


def test_one_man_page_per_command():
    pages = sorted(p.name for p in MAN.glob("*.1"))
    for name in ("daq.1", "daq-broker.1", "daq-store.1", "daq-job.1", "daq-job-run.1"):
        assert name in pages
    for page in pages:
        text = (MAN / page).read_text()
        assert text.count(".TH ") == 1
        for section in ("NAME", "SYNOPSIS", "OPTIONS", "SEE ALSO"):
            assert f".SH {section}\n" in text, (page, section)


@pytest.mark.skipif(shutil.which("groff") is None, reason="groff is not installed")
def test_man_pages_have_no_roff_warnings():
    for page in sorted(MAN.glob("*.1")):
        result = subprocess.run(
            ["groff", "-man", "-Tutf8", "-ww", "-z", str(page)],
            capture_output=True,
            text=True,
            timeout=30,
        )
        assert result.returncode == 0 and result.stderr == "", (page.name, result.stderr)


@pytest.mark.skipif(shutil.which("man") is None, reason="man is not installed")
def test_man_renders_store_page():
    result = subprocess.run(
        ["man", "-l", str(MAN / "daq-store.1")],
        capture_output=True,
        text=True,
        timeout=30,
        env={**os.environ, "MANWIDTH": "100", "PAGER": "cat"},
    )
    assert result.returncode == 0, result.stderr
    lines = [line.strip() for line in result.stdout.splitlines()]
    assert "daq-store - Store data into csv, root, hdf5, mysql, redis or raw" in lines
    assert "daq store [OPTIONS] {BACKEND}" in lines
    assert "--flush-rows <int>" in lines  # hyphens are real ASCII minus signs
    assert "daq store csv --from data.sensor1 -o sensor.csv" in lines  # examples kept verbatim
    assert "DAQ_BROKER" in lines


def test_daq_answers_bash_completion():
    result = _complete("bash", {"COMP_WORDS": "daq sto", "COMP_CWORD": "1"})
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["store"]


def test_bash_script_completes_in_bash(tmp_path: Path):
    bash = shutil.which("bash")
    assert bash is not None
    probe = tmp_path / "probe.sh"
    probe.write_text(
        'source "$1"\n'
        "complete -p daq\n"
        "ask() { COMP_WORDS=($1); COMP_CWORD=$2; _daq_completion daq;"
        ' echo "${COMPREPLY[*]}"; }\n'
        "ask 'daq sto' 1\n"
        "ask 'daq job r' 2\n"
        "ask 'daq store --flush' 2\n"
    )
    env = {**os.environ, "PATH": f"{Path(_daq()).parent}{os.pathsep}{os.environ['PATH']}"}
    result = subprocess.run(
        [bash, "--norc", "--noprofile", str(probe), str(COMPLETIONS / "daq.bash")],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == [
        "complete -o default -F _daq_completion daq",
        "store",
        "run",
        "--flush-rows --flush-seconds",
    ]


def test_zsh_and_fish_scripts_call_back_into_daq():
    zsh = (COMPLETIONS / "_daq").read_text()
    assert zsh.startswith("#compdef daq\n")
    assert "_DAQ_COMPLETE=complete_zsh" in zsh
    result = _complete("zsh", {"_TYPER_COMPLETE_ARGS": "daq job r"})
    assert result.returncode == 0, result.stderr
    assert '"run":' in result.stdout

    fish = (COMPLETIONS / "daq.fish").read_text()
    assert "_DAQ_COMPLETE=complete_fish" in fish
    result = _complete(
        "fish", {"_TYPER_COMPLETE_ARGS": "daq sto", "_TYPER_COMPLETE_FISH_ACTION": "get-args"}
    )
    assert result.returncode == 0, result.stderr
    assert [line.split("\t")[0] for line in result.stdout.splitlines()] == ["store"]
