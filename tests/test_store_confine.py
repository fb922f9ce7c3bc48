"""Header store settings are confined: a message cannot make a store write outside its
out_dir or truncate a file (docs/stores.md, "Header settings are confined")."""

from __future__ import annotations

import subprocess
import time
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pytest

from conftest import Procs
from enrgdaq_core.envelope import Envelope, Header, Kind, Source
from enrgdaq_core.runfile import RunFileWriter, run_meta
from enrgdaq_core.stores.options import build_backend, parse_assignments
from enrgdaq_core.stores.paths import parts
from enrgdaq_core.stores.runner import StoreRunner
from enrgdaq_core.tables import encode_table

FORGED = ["../x.csv", "a/../../x.csv", "ABS"]  # ABS: an absolute path outside out_dir


def _forged(tmp_path: Path, template: str) -> str:
    return str(tmp_path / "abs.csv") if template == "ABS" else template


def _evil_run(path: Path, store: dict[str, dict[str, object]], *, sources: list[str]) -> None:
    """A raw run file whose headers carry `store` settings: 5 rows from each source."""
    t0 = time.time_ns()
    w = RunFileWriter(path, run_meta(run=1, run_start_ns=t0))
    for source in sources:
        for i in range(5):
            h = Header(
                kind=Kind.TABLE, source=source, seq=i, time_ns=t0 + i, epoch=t0, rows=1, store=store
            )
            w.write(Envelope(f"data.{source}", h, encode_table(pa.table({"i": [i]}))))
        w.write(Envelope(f"data.{source}", Header(kind=Kind.EOS, source=source, seq=5, epoch=t0)))
    w.close()


def _replay_into_store(procs: Procs, raw: Path, *store_args: str, cwd: Path | None = None) -> str:
    """`daq replay RAW | daq store csv ARGS` as real processes; the store's stderr."""
    replay = procs.start("replay", str(raw), stdout=subprocess.PIPE)
    store = procs.start("store", "csv", *store_args, stdin=replay.stdout, cwd=cwd or procs.cwd)
    replay.stdout.close()  # the store holds the pipe now
    _, err = store.communicate(timeout=60)
    assert replay.wait(30) == 0 and store.returncode == 0, err.decode()
    return err.decode()


def _files(root: Path) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*") if p.is_file()}


@pytest.mark.e2e
@pytest.mark.parametrize("template", FORGED)
def test_replayed_forged_paths_stay_inside_out_dir(
    procs: Procs, tmp_path: Path, template: str
) -> None:
    """`daq replay evil.raw | daq store csv`: a header's path that leaves out_dir is refused,
    and the rows go to the source's default file in out_dir (nothing is lost)."""
    work = tmp_path / "work"
    (work / "out").mkdir(parents=True)
    raw = tmp_path / "evil.raw"
    forged = _forged(tmp_path, template)
    _evil_run(raw, {"csv": {"file_path": forged}}, sources=["s1", "s2"])
    err = _replay_into_store(procs, raw, "--out-dir", "out", cwd=work)
    written = {f for f in _files(tmp_path) if not f.startswith("evil.raw")}  # and its index
    assert written == {"work/out/s1.csv", "work/out/s2.csv"}, "a file outside out_dir"
    for source in ("s1", "s2"):
        assert pd.read_csv(work / "out" / f"{source}.csv")["i"].tolist() == [0, 1, 2, 3, 4]
        assert err.count(f"refused file_path {forged!r} from {source}") == 1, err


@pytest.mark.e2e
def test_overwrite_from_a_header_does_not_truncate(procs: Procs, tmp_path: Path) -> None:
    """`overwrite = true` in a replayed header leaves an existing file as it was; the store's
    own `-O overwrite_sources` (what `daq up` passes from the sources' configs) truncates."""
    out = tmp_path / "out"
    out.mkdir()
    victim = out / "victim.csv"
    victim.write_text("i\n100\n101\n")
    raw = tmp_path / "evil.raw"
    _evil_run(raw, {"csv": {"file_path": "victim.csv", "overwrite": True}}, sources=["s"])
    _replay_into_store(procs, raw, "--out-dir", str(out))
    assert victim.read_text() == "i\n100\n101\n"
    assert [pd.read_csv(p)["i"].tolist() for p in parts(victim)] == [[100, 101], [0, 1, 2, 3, 4]]
    _replay_into_store(procs, raw, "--out-dir", str(out), "-O", 'overwrite_sources=["s"]')
    assert pd.read_csv(victim)["i"].tolist() == [0, 1, 2, 3, 4]


@pytest.mark.e2e
def test_store_own_settings_may_leave_out_dir(procs: Procs, tmp_path: Path) -> None:
    """`allow_outside_out_dir` (the store's own option) lets headers name any path."""
    out = tmp_path / "out"
    out.mkdir()
    raw = tmp_path / "evil.raw"
    _evil_run(raw, {"csv": {"file_path": "../elsewhere.csv"}}, sources=["s"])
    _replay_into_store(procs, raw, "--out-dir", str(out), "-O", "allow_outside_out_dir=true")
    assert pd.read_csv(tmp_path / "elsewhere.csv")["i"].tolist() == [0, 1, 2, 3, 4]


def _runner(out: Path, **options: object) -> StoreRunner:
    be, overrides = build_backend("csv", assignments={"out_dir": str(out), **options})
    return StoreRunner(be, name="t", settings_override=overrides)


def _send(runner: StoreRunner, source: str, template: str, n: int = 3) -> None:
    src = Source(source, store={"csv": {"file_path": template}})
    for i in range(n):
        runner.handle(src.table(pa.table({"i": [i]})))
    runner.handle(src.end_of_stream())


def test_refused_messages_are_counted(tmp_path: Path) -> None:
    out = tmp_path / "out"
    runner = _runner(out)
    _send(runner, "s", "../x.csv")
    _send(runner, "ok", "{source}_{run}.csv")
    runner.report()
    assert runner.meter.extra["refused_paths"] == 3
    assert sorted(p.name for p in out.iterdir()) == ["ok_000000.csv", "s.csv"]


def test_symlink_out_of_out_dir_is_refused(tmp_path: Path) -> None:
    out, elsewhere = tmp_path / "out", tmp_path / "elsewhere"
    out.mkdir()
    elsewhere.mkdir()
    (out / "link").symlink_to(elsewhere)
    runner = _runner(out)
    _send(runner, "s", "link/x.csv")
    assert list(elsewhere.iterdir()) == [] and (out / "s.csv").is_file()
    assert runner.refused_paths == 3


def test_format_strings_in_a_header_are_plain_text(tmp_path: Path) -> None:
    """`{0}`, `{run:>99999999}` or `{source.__class__}` in a header's file_path are kept as
    written: a template from a message is data, never a format string (that could crash the
    store or fill its memory)."""
    out = tmp_path / "out"
    runner = _runner(out)
    for template in ("{0}.csv", "{run:>99999999}.csv", "{source.__class__}.csv"):
        _send(runner, "s", template, n=1)
    names = sorted(p.name for p in out.iterdir())
    assert names == ["{0}.csv", "{run:>99999999}.csv", "{source.__class__}.csv"]


def test_daq_up_tells_stores_which_sources_overwrite(tmp_path: Path) -> None:
    """A seed config's `overwrite = true` still works under `daq up`: the supervisor, which
    read the (trusted) configs, passes the store `overwrite_sources`; a header cannot."""
    from enrgdaq_core.supervisor.plan import load_plan

    d = tmp_path / "configs"
    d.mkdir()
    (d / "pc_metrics.toml").write_text(
        'daq_job_type = "test"\n[store_config.csv]\nfile_path = "m.csv"\noverwrite = true\n'
    )
    (d / "other.toml").write_text('daq_job_type = "test"\n[store_config.csv]\n[store_config.raw]\n')
    plan = load_plan(d)
    csv, raw = (s.argv for s in plan.stores)
    assert csv[csv.index("-O") + 1] == 'overwrite_sources=["pc_metrics"]'
    assert "-O" not in raw
    be, _ = build_backend("csv", assignments=parse_assignments([csv[csv.index("-O") + 1]]))
    assert be.options.overwrite_sources == ["pc_metrics"]
