"""The examples in every `--help` work as printed: each one is on one line of an 80-column
terminal (none split by rewrapping), and every config file or directory they name exists in
the repository (run from its root). Data files (`run42.raw`) are the reader's own."""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import typer

from enrgdaq_cli.main import app

ROOT = Path(__file__).resolve().parent.parent
OUTPUT_FLAGS = {"-o", "--output", ">", "2>"}


def _commands(cmd: Any = None, path: tuple[str, ...] = ()) -> list[tuple[tuple[str, ...], Any]]:
    """(path after `daq`, click command) of every visible command, the root included."""
    cmd = cmd or typer.main.get_command(app)
    out = [(path, cmd)]
    for name, sub in sorted(getattr(cmd, "commands", {}).items()):
        if not sub.hidden:
            out += _commands(sub, (*path, name))
    return out


def _examples(help_text: str) -> list[str]:
    """The example command lines of a help text (after `Example:` or `Examples:`)."""
    _, found, rest = help_text.partition("Example")
    if not found:
        return []
    rest = re.sub(r"^s?:", "", rest)
    return [ln.strip() for ln in rest.splitlines() if ln.strip().startswith("daq ")]


COMMANDS = _commands()
EXAMPLES = [(path, ex) for path, cmd in COMMANDS for ex in _examples(cmd.help or "")]


def test_there_are_examples_to_check() -> None:
    assert len(EXAMPLES) > 30
    assert (("store",), "daq store csv --from data.sensor1 -o sensor.csv") in EXAMPLES


def _config_paths(example: str) -> list[str]:
    """Config files (*.toml) and `daq up` directories an example reads, in order, without
    those an earlier part of the same example writes (`daq job new x -o x.toml && ...`)."""
    tokens = shlex.split(example, comments=True)
    made: set[str] = set()
    need: list[str] = []
    for i, tok in enumerate(tokens):
        before = tokens[i - 1] if i else ""
        if before in OUTPUT_FLAGS:
            made.add(tok)
        elif tok in made or tok.startswith("-"):
            continue
        elif tok.endswith(".toml") or (tokens[i - 2 : i] == ["daq", "up"]):
            need.append(tok)
    return need


@pytest.mark.parametrize(("path", "example"), EXAMPLES, ids=[e for _, e in EXAMPLES])
def test_help_example_config_paths_exist(path: tuple[str, ...], example: str) -> None:
    missing = [p for p in _config_paths(example) if not (ROOT / p).exists()]
    assert not missing, f"`daq {' '.join(path)} --help` example {example!r} names {missing}"


def test_help_examples_are_whole_lines_at_80_columns() -> None:
    """Real `daq ... --help` processes in an 80-column terminal (COLUMNS=80)."""
    env = {**os.environ, "COLUMNS": "80"}
    procs = {
        path: subprocess.Popen(
            [sys.executable, "-m", "enrgdaq_cli.main", *path, "--help"],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=env,
            text=True,
        )
        for path, cmd in COMMANDS
        if _examples(cmd.help or "")
    }
    broken = []
    for path, p in procs.items():
        out, err = p.communicate(timeout=120)
        assert p.returncode == 0, err
        lines = [ln.strip() for ln in out.splitlines()]
        for example in _examples(next(c.help for q, c in COMMANDS if q == path)):
            if not any(example in ln for ln in lines):
                broken.append(f"daq {' '.join(path)} --help: {example!r}")
    assert not broken, "split across lines:\n" + "\n".join(broken)
