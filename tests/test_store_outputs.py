"""Outputs are checked at start: a file store (and `daq up`, at --check and at start) refuses a
path it could not write with one line naming the store, the path and the reason, before it
reads a single row, instead of warning per retry and losing the rows at shutdown."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from _store_data import envelopes, sample_table, source, write_stream
from conftest import Procs, write

pytestmark = pytest.mark.e2e

FILE_BACKENDS = ["csv", "root", "hdf5", "raw"]
EXT = {"csv": ".csv", "root": ".root", "hdf5": ".h5", "raw": ".raw"}


@pytest.fixture
def read_only(tmp_path: Path) -> Iterator[Path]:
    """A directory nobody may create files in: mode 0555, or immutable for root (who ignores
    modes), as a read-only mount would be."""
    d = tmp_path / "ro"
    d.mkdir()
    if os.geteuid() == 0:
        if subprocess.run(["chattr", "+i", str(d)], capture_output=True).returncode != 0:
            pytest.skip("running as root without chattr +i: no directory is read-only")
        try:
            yield d
        finally:
            subprocess.run(["chattr", "-i", str(d)], check=True)
    else:
        d.chmod(0o555)
        try:
            yield d
        finally:
            d.chmod(0o755)


def _reason() -> str:
    return "Operation not permitted" if os.geteuid() == 0 else "Permission denied"


def _stream(tmp_path: Path, backend: str) -> Path:
    src = source("src1", backend)
    return write_stream(tmp_path / "in.daq", envelopes(src, [sample_table(0, 50)]))


def _refused(p: subprocess.CompletedProcess, expected: str) -> None:
    err = p.stderr.decode()
    assert p.returncode == 2, err
    assert err.splitlines() == [expected], err


@pytest.mark.parametrize("backend", FILE_BACKENDS)
def test_store_refuses_a_read_only_directory(
    procs: Procs, tmp_path: Path, read_only: Path, backend: str
) -> None:
    target = read_only / f"x{EXT[backend]}"
    p = procs.run("store", backend, "-i", str(_stream(tmp_path, backend)), "-o", str(target))
    _refused(
        p,
        f"daq: config error: -o: store-{backend} cannot write {target}: "
        f"cannot create files in {read_only} ({_reason()})",
    )
    assert list(read_only.iterdir()) == []


@pytest.mark.parametrize("backend", ["csv", "raw"])
def test_store_refuses_a_path_under_a_file(procs: Procs, tmp_path: Path, backend: str) -> None:
    afile = write(tmp_path / "notes.txt", "not a directory\n")
    target = afile / f"x{EXT[backend]}"
    p = procs.run("store", backend, "-i", str(_stream(tmp_path, backend)), "-o", str(target))
    _refused(
        p,
        f"daq: config error: -o: store-{backend} cannot write {target}: {afile} is not a directory",
    )
    assert afile.read_text() == "not a directory\n"


@pytest.mark.parametrize("backend", ["hdf5", "root"])
def test_store_refuses_a_drive_that_is_not_there(
    procs: Procs, tmp_path: Path, read_only: Path, backend: str
) -> None:
    """`/media/usb/run.h5` with nothing mounted: the directory cannot be made."""
    target = read_only / "usb" / "data" / f"run{EXT[backend]}"
    p = procs.run("store", backend, "-i", str(_stream(tmp_path, backend)), "-o", str(target))
    _refused(
        p,
        f"daq: config error: -o: store-{backend} cannot write {target}: "
        f"cannot create files in {read_only} ({_reason()})",
    )


def test_store_refuses_an_unwritable_out_dir(procs: Procs, tmp_path: Path, read_only: Path) -> None:
    """Without -o the messages name the files; out_dir (where they go) is checked at start."""
    out = read_only / "out"
    p = procs.run("store", "csv", "-i", str(_stream(tmp_path, "csv")), "--out-dir", str(out))
    _refused(
        p,
        f"daq: config error: out_dir: store-csv cannot write {out}: "
        f"cannot create files in {read_only} ({_reason()})",
    )


def test_store_checks_the_directory_before_a_placeholder(
    procs: Procs, tmp_path: Path, read_only: Path
) -> None:
    template = read_only / "{source}" / "data.csv"
    p = procs.run("store", "csv", "-i", str(_stream(tmp_path, "csv")), "-o", str(template))
    assert p.returncode == 2, p.stderr.decode()
    assert f"cannot create files in {read_only}" in p.stderr.decode()
    # ...and a writable one with a placeholder stores as before
    ok = tmp_path / "w" / "{source}" / "data.csv"
    p = procs.run("store", "csv", "-i", str(_stream(tmp_path, "csv")), "-o", str(ok))
    assert p.returncode == 0, p.stderr.decode()
    assert (tmp_path / "w" / "src1" / "data.csv").read_text().count("\n") == 51


SENSOR = """daq_job_type = "sensor"
name = "sensor1"
interval_seconds = 0.1
[store_config.csv]
file_path = "{csv}"
[store_config.raw]
file_path = "{raw}"
"""


@pytest.mark.parametrize("check", [True, False], ids=["check", "start"])
def test_up_refuses_unwritable_outputs_before_starting(
    procs: Procs, tmp_path: Path, read_only: Path, runtime_dir: Path, check: bool
) -> None:
    afile = write(tmp_path / "notes.txt", "x\n")
    cfg = tmp_path / "cfg"
    cfg.mkdir()
    csv, raw = read_only / "sensor1.csv", afile / "sensor1.raw"
    write(cfg / "sensor.toml", SENSOR.format(csv=csv, raw=raw))
    p = procs.run("up", str(cfg), "--no-tty", *(["--check"] if check else []), timeout=60)
    err = p.stderr.decode()
    assert p.returncode == 2, err
    assert err.splitlines() == [
        f"daq up: 2 problems in {cfg}; nothing started",
        f"daq: config error: {cfg}/sensor.toml: store_config.csv.file_path: store-csv cannot "
        f"write {csv}: cannot create files in {read_only} ({_reason()})",
        f"daq: config error: {cfg}/sensor.toml: store_config.raw.file_path: store-raw cannot "
        f"write {raw}: {afile} is not a directory",
    ], err
    assert not (tmp_path / "out").exists()  # nothing started: not even the log directory
    assert not list(runtime_dir.glob("broker*"))


def test_up_refuses_an_unwritable_out_dir(procs: Procs, tmp_path: Path, read_only: Path) -> None:
    cfg = tmp_path / "cfg"
    cfg.mkdir()
    write(cfg / "sensor.toml", 'daq_job_type = "sensor"\n[store_config.csv]\n')
    out = read_only / "out"
    p = procs.run("up", str(cfg), "--check", "--out-dir", str(out))
    assert p.returncode == 2
    assert p.stderr.decode().splitlines()[-1] == (
        f"daq: config error: --out-dir: daq up cannot write {out}: "
        f"cannot create files in {read_only} ({_reason()})"
    )
