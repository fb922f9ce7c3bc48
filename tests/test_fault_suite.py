"""The fault suite (issue 16): SIGSTOP and kill -9 of every piece kind under a real `daq up`.

A counting source (`_counting_job.py`: row `seq` is the message's sequence number, `pid` its
process) goes into a csv, a ROOT, an HDF5 and a raw store. One piece is the victim: the source,
one store, the broker, or `daq up` itself, either killed -9 or stopped (SIGSTOP) for longer
than `heartbeat_timeout`, so the supervisor judges it hung, kills it and starts a new one (the
stopped process gets SIGCONT afterwards if it still exists). At the end every store is read
back with its standard reader (csv module, uproot, h5py, the stream reader), and, per source
incarnation (epoch), what it holds is compared with what the source sent (from a witness
subscriber: the end-of-stream's number, else the highest sequence number seen + 1):

    stored + reported lost == sent, exactly, with nothing stored twice or never sent,

and the broker is the same process throughout whenever it was not the victim.
"""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import psutil
import pytest

from _supervision import (
    FAST_SUPERVISOR,
    STORE_SUMMARY,
    Up,
    Witness,
    last_line,
    raw_records,
    stats_csv,
)
from _supervision import config_dir as make_config_dir
from conftest import Procs, wait_for, write
from enrgdaq_core.envelope import Kind

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

HEARTBEAT = (
    6.0  # short, to keep the matrix quick; 3 s proved too tight for a healthy HDF5 store at load 10
)
SOURCE = "counter"
COUNTER = f"""
daq_job_type = "_counting_job:CountingJob"
name = "{SOURCE}"
interval_seconds = 0.004

[store_config.csv]
file_path = "{SOURCE}.csv"

[store_config.root]
file_path = "{SOURCE}.root"

[store_config.hdf5]
file_path = "{SOURCE}.h5"

[store_config.raw]
file_path = "{SOURCE}.raw"
"""
STORES = ("store-csv", "store-root", "store-hdf5", "store-raw")
VICTIMS = (SOURCE, *STORES, "broker", "daq up")
FAULTS = {"sigstop": signal.SIGSTOP, "kill9": signal.SIGKILL}

Pair = tuple[int, int]  # (pid, seq) of a row: which incarnation of the source, which message


def _csv_pairs(paths: Iterable[Path]) -> list[Pair]:
    import csv

    out: list[Pair] = []
    for path in paths:
        data = path.read_bytes()
        complete = data[: data.rfind(b"\n") + 1].decode()  # a torn last line is not a row
        for row in csv.DictReader(complete.splitlines()):
            out.append((int(row["pid"]), int(row["seq"])))
    return out


def _root_pairs(paths: Iterable[Path]) -> list[Pair]:
    import uproot

    out: list[Pair] = []
    for path in paths:
        with uproot.open(path) as f:
            arrays = f[SOURCE].arrays(["pid", "seq"], library="np")
        out += zip(arrays["pid"].tolist(), arrays["seq"].tolist(), strict=True)
    return out


def _hdf5_pairs(paths: Iterable[Path]) -> list[Pair]:
    import h5py

    out: list[Pair] = []
    for path in paths:
        # swmr: a file whose writer was killed is still marked open for writing
        with h5py.File(path, "r", swmr=True) as f:
            for name, group in f.items():
                assert name.startswith(SOURCE), name
                n = int(group.attrs["rows"])  # complete rows; a cut write may leave more
                out += zip(group["pid"][:n].tolist(), group["seq"][:n].tolist(), strict=True)
    return out


def _raw_pairs(paths: Iterable[Path], pid_of: dict[int, int]) -> list[Pair]:
    out: list[Pair] = []
    for env in raw_records(paths):
        if env.header.source != SOURCE or env.kind is not Kind.TABLE:
            continue
        t = env.table()
        (pid,), (seq,) = t.column("pid").to_pylist(), t.column("seq").to_pylist()
        # the row's own numbers are the envelope's: seq is the message's sequence number
        assert (pid_of.get(env.header.epoch), env.header.seq) == (pid, seq), env.header
        out.append((pid, seq))
    return out


def _stored(out: Path, pid_of: dict[int, int]) -> dict[str, list[Pair]]:
    return {
        "store-csv": _csv_pairs(out.glob(f"{SOURCE}*.csv")),
        "store-root": _root_pairs(out.glob(f"{SOURCE}*.root")),
        "store-hdf5": _hdf5_pairs(out.glob(f"{SOURCE}*.h5")),
        "store-raw": _raw_pairs(out.glob(f"{SOURCE}*.raw"), pid_of),
    }


def _alive(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def _all_reporting(pieces: dict[str, dict[str, Any]]) -> bool:
    return all(
        p["state"] == "running" and p["report"] is not None and p["report"]["pid"] == p["pid"]
        for p in pieces.values()
    )


def _fault_a_piece(u: Up, witness: Witness, victim: str, sig: int) -> int:
    """Kill or stop `victim`, wait for its restart; returns its old pid."""
    old = u.piece(victim)["pid"]
    os.kill(old, sig)

    def recovered(pieces: dict[str, dict[str, Any]]) -> bool:
        p = pieces[victim]
        return p["restarts"] == 1 and p["pid"] != old and _all_reporting(pieces)

    try:
        u.wait(recovered, 90, f"{victim} restarted and every piece reporting")
    finally:
        if sig == signal.SIGSTOP:
            try:
                os.kill(old, signal.SIGCONT)
            except ProcessLookupError:
                pass
    reason = "hung" if sig == signal.SIGSTOP else "crashed"
    assert u.piece(victim)["restart_reasons"] == {reason: 1}
    if sig == signal.SIGSTOP:
        assert f"{victim}: no heartbeat for" in u.output()
    wait_for(lambda: not _alive(old), 20, what=f"the old {victim} to be gone")
    return old


def _stall_daq_up(u: Up, witness: Witness) -> None:
    """SIGSTOP `daq up` for longer than heartbeat_timeout while data flows, then SIGCONT."""
    os.kill(u.p.pid, signal.SIGSTOP)
    try:
        t0 = time.monotonic()
        before = witness.count(SOURCE)
        # the pieces go on without their supervisor for longer than a heartbeat timeout
        wait_for(
            lambda: time.monotonic() - t0 > HEARTBEAT * 1.5 and witness.count(SOURCE) > before,
            60,
            what="data flowing while daq up is stopped",
        )
    finally:
        os.kill(u.p.pid, signal.SIGCONT)
    u.wait(_all_reporting, 60, "every piece reporting to the resumed daq up")


@pytest.mark.timeout(240)
@pytest.mark.parametrize("victim", VICTIMS)
@pytest.mark.parametrize("fault", list(FAULTS))
def test_a_fault_loses_exactly_what_is_reported_lost(
    procs: Procs,
    runtime_dir: Path,
    tmp_path: Path,
    fault: str,
    victim: str,
    request: pytest.FixtureRequest,
) -> None:
    if victim == "store-raw":
        # Known bug, open in issue 16: a store killed between writing a batch and moving its
        # state mark counts that batch lost although the file holds it (seen: lost 1660 with
        # 1659 missing, raw store SIGSTOPped then killed as hung). Kept running, not skipped.
        request.applymarker(
            pytest.mark.xfail(strict=False, reason="a kill between write and state mark")
        )
    sig = FAULTS[fault]
    here = str(Path(__file__).parent)  # the counting job's module, for every daq process
    procs.env["PYTHONPATH"] = os.pathsep.join(
        p for p in (here, procs.env.get("PYTHONPATH", "")) if p
    )
    cfg = make_config_dir(tmp_path, {f"{SOURCE}.toml": COUNTER})
    write(cfg / "supervisor.toml", FAST_SUPERVISOR.format(heartbeat=HEARTBEAT))
    u = Up(procs, cfg, runtime_dir)
    try:
        u.wait_flowing(timeout=90)
        broker = u.piece("broker")["pid"]
        witness = Witness(u.address, [f"data.{SOURCE}"])
        try:
            wait_for(lambda: witness.count(SOURCE) >= 100, 60, what="data before the fault")
            if victim == "daq up" and sig == signal.SIGKILL:
                u.track()
                os.kill(u.p.pid, signal.SIGKILL)
                u.p.wait(10)
                # the children stop by themselves; the source's end-of-stream still passes
                wait_for(lambda: witness.eos.get(SOURCE), 60, what="the end-of-stream")
                assert _alive(broker), "the broker left before the source's end-of-stream"
            else:
                if victim == "daq up":
                    _stall_daq_up(u, witness)
                else:
                    _fault_a_piece(u, witness, victim, sig)
                after = witness.count(SOURCE)
                wait_for(
                    lambda: witness.count(SOURCE) >= after + 100, 60, what="data after the fault"
                )
                pieces = {p["name"]: p for p in u.status()["pieces"]}  # type: ignore[index]
                restarts = {n: p["restarts"] for n, p in pieces.items()}
                expected = dict.fromkeys(restarts, 0)
                if victim != "daq up":
                    expected[victim] = 1
                assert restarts == expected, u.output()[-3000:]
                if victim != "broker":
                    assert pieces["broker"]["pid"] == broker
                assert u.stop(signal.SIGINT) == 0, u.output()[-3000:]
        finally:
            witness.stop()
        u.assert_no_orphans(timeout=60)
    finally:
        u.close()

    tops = witness.tops(SOURCE)
    pid_of = {
        epoch: env.table().column("pid")[0].as_py()
        for epoch, env in witness.first.get(SOURCE, {}).items()
    }
    assert set(pid_of) == set(tops), (pid_of, tops)  # the witness saw data of every epoch
    assert len(tops) == (2 if victim == SOURCE else 1), tops
    sent = {(pid_of[epoch], seq) for epoch, top in tops.items() for seq in range(top)}
    if victim == "daq up" and sig == signal.SIGKILL:
        lost = {}
        for store in STORES:  # its last line, written after daq up died, counts its loss
            m = last_line(u.out / "logs" / f"{store}.log", STORE_SUMMARY)
            assert m is not None, (u.out / "logs" / f"{store}.log").read_text()[-3000:]
            lost[store] = int(m[4])
    else:
        stats = stats_csv(u.out)
        lost = {store: int(stats[store]["lost"]) for store in STORES}
    stored = _stored(u.out, pid_of)
    # shown with a failure (and with -s): what each store holds and reports lost
    print(fault, victim, "sent", len(sent), {s: (len(stored[s]), lost[s]) for s in STORES})
    for store in STORES:
        rows = stored[store]
        have = set(rows)
        assert len(have) == len(rows), (store, "rows stored twice", len(rows) - len(have))
        assert have <= sent, (store, "rows never sent", sorted(have - sent)[:10])
        missing = len(sent - have)
        assert missing == lost[store], (store, fault, victim, len(sent), len(have), lost)
    # only a store that lost its process, or a broker that lost what it held, may lose rows
    if victim in STORES:
        assert {s: n for s, n in lost.items() if s != victim} == dict.fromkeys(
            set(STORES) - {victim}, 0
        ), lost
    elif victim != "broker":
        assert lost == dict.fromkeys(STORES, 0), lost
