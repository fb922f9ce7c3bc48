"""docs/extending.md's job type is code a lab copies: its module, config and test must run."""

from __future__ import annotations

import re
import sys
from pathlib import Path

import pytest

from enrgdaq_core.jobs import load_job, resolve

EXTENDING = Path(__file__).resolve().parent.parent / "docs" / "extending.md"


def _blocks(language: str) -> list[str]:
    """Every fenced block of `language` in the doc (indented ones included), dedented."""
    found = []
    for m in re.finditer(rf"^( *)```{language}\n(.*?)^\1```", EXTENDING.read_text(), re.M | re.S):
        indent = len(m.group(1))
        found.append("".join(line[indent:] + "\n" for line in m.group(2).splitlines()))
    return found


def _block(language: str, marker: str) -> str:
    (block,) = [b for b in _blocks(language) if marker in b]
    return block


@pytest.fixture
def mylab(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The doc's `mylab/jobs.py`, importable as `mylab.jobs`."""
    pkg = tmp_path / "src" / "mylab"
    pkg.mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "jobs.py").write_text(_block("python", "class ThermometerJob(Job)"))
    monkeypatch.syspath_prepend(str(pkg.parent))
    yield pkg
    for name in ("mylab.jobs", "mylab"):
        sys.modules.pop(name, None)


def test_the_doc_job_loads_from_its_toml_and_steps(mylab: Path, tmp_path: Path) -> None:
    cfg = tmp_path / "thermo.toml"
    cfg.write_text(_block("toml", "daq_job_type = "))
    job = load_job(cfg)
    assert type(job) is resolve("mylab.jobs:ThermometerJob")
    assert (job.name, job.config.channels, job.config.store_config.backends()) == (
        "thermo",
        3,
        ["csv"],
    )
    job.start()
    try:
        batch = job.step()
    finally:
        job.stop()
    assert batch.schema.names == ["timestamp", "t0", "t1", "t2"] and batch.num_rows == 1
    assert not job.device.open


def test_the_doc_test_of_the_job_passes(mylab: Path, tmp_path: Path) -> None:
    namespace: dict = {}
    exec(compile(_block("python", "def test_thermometer"), str(EXTENDING), "exec"), namespace)
    namespace["test_thermometer"](tmp_path)


def test_the_doc_config_is_checked_before_anything_starts(mylab: Path, tmp_path: Path) -> None:
    from enrgdaq_core.config import ConfigError

    cfg = tmp_path / "thermo.toml"
    cfg.write_text(_block("toml", "daq_job_type = ").replace("channels = 3", "channels = 9"))
    with pytest.raises(ConfigError, match="channels"):
        load_job(cfg)


def test_the_doc_subcommand_sketch_keeps_the_cli_rules() -> None:
    """The `daq topics` example would pass tests/test_cli_layout.py: no zmq, no other
    subcommand, the core imported inside the function."""
    import ast

    tree = ast.parse(_block("python", "def topics("))
    top = {n.module for n in tree.body if isinstance(n, ast.ImportFrom)}
    assert top <= {"__future__", "enrgdaq_cli._common"}
    assert not any(
        isinstance(n, ast.Import) and any(a.name.startswith("zmq") for a in n.names)
        for n in ast.walk(tree)
    )
