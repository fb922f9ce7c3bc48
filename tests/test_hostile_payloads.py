"""One CRC-valid record whose Arrow payload lies about its lengths costs only that record.

The crash classes of issue 15 (59 process deaths in 200,000 fuzz cases), rebuilt from their
description: a valid stream, then a record whose checksum is right but whose Arrow payload
claims lengths it does not have (negative child lengths, buffers beyond the body, offsets not
monotonic, invalid UTF-8, ...). A real `daq store csv` fed through a pipe, and a run file
replayed into one, must stay alive, store every good row and count the bad message.
"""

from __future__ import annotations

import csv
import json
import subprocess
from pathlib import Path

import pytest

from _store_data import stream_bytes
from conftest import Procs
from enrgdaq_core.envelope import Envelope, Source
from enrgdaq_core.runfile import RunFileWriter, run_meta
from enrgdaq_core.tables import TableError, decode_table, encode_table
from ipc_mutations import CONTENT_LIES, METADATA_LIES, forged_payloads, good_table

# The cases that killed a store (SIGSEGV, SIGABRT in pyarrow) or that it took for data before
# the fix; the others were already refused by pyarrow's IPC reader (checked below anyway).
STORE_KILLERS = [
    "map keys length negative",
    "map values length most negative",
    "struct field length negative",
    "struct field length most negative",
    "map offsets buffer empty",
    "list values null count beyond their length",
    "list offsets buffer too short",
    "list values length negative",
    "list values shorter than the offsets",
    "null count beyond the length",
    "string data shorter than its offsets",
    "offsets not monotonic",
    "invalid utf8",
]
ROWS = 3
GOOD_BEFORE = (0, 3, 6)  # first row of each good message before the bad one
GOOD_AFTER = (12, 15)


def _messages(src: Source, bad: list[bytes]) -> list[Envelope]:
    """Good messages, then each bad payload as a CRC-valid TABLE message, then good ones."""
    envs = [src.table(good_table(start, ROWS)) for start in GOOD_BEFORE]
    for payload in bad:
        template = src.table(good_table(9, ROWS))  # stamps a header (seq, rows) like any other
        envs.append(Envelope(template.topic, template.header, payload))
    envs += [src.table(good_table(start, ROWS)) for start in GOOD_AFTER]
    envs.append(src.end_of_stream())
    return envs


def _check_csv(path: Path) -> None:
    """Every good row, value by value, as the csv module reads them back; nothing else."""
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    keys = [k for start in (*GOOD_BEFORE, *GOOD_AFTER) for k in range(start, start + ROWS)]
    assert len(rows) == len(keys)
    for row, k in zip(rows, keys, strict=True):
        assert int(row["i"]) == k
        assert row["s"] == f"v{k}"
        assert json.loads(row["l"]) == [k, -k]
        assert json.loads(row["m"]) == [[f"k{k}", k]]
        assert json.loads(row["st"]) == {"x": k, "y": f"y{k}"}


def _check_counted(stderr: str, bad: int) -> None:
    assert f"{bad} bad messages" in stderr, stderr
    assert "dropped undecodable message from src1" in stderr, stderr


def test_every_forged_payload_is_refused() -> None:
    decode_table(encode_table(good_table(0, ROWS)))  # the schema is known: the fast path
    forged = forged_payloads(9, ROWS)
    assert set(forged) == {*METADATA_LIES, *CONTENT_LIES}
    for name, payload in forged.items():
        with pytest.raises(TableError):
            decode_table(payload)
            pytest.fail(f"{name}: accepted")


@pytest.mark.e2e
@pytest.mark.parametrize("case", STORE_KILLERS)
def test_store_csv_survives_a_lying_payload(procs: Procs, tmp_path: Path, case: str) -> None:
    src = Source("src1", store={"csv": {"file_path": "out.csv"}})
    data = stream_bytes(_messages(src, [forged_payloads(9, ROWS)[case]]))
    store = procs.run("store", "csv", "-i", "-", input=data, timeout=60)
    stderr = store.stderr.decode()
    assert store.returncode == 0, f"{case}: exit {store.returncode}\n{stderr}"
    _check_csv(tmp_path / "out.csv")
    _check_counted(stderr, 1)


@pytest.mark.e2e
def test_a_run_file_with_lying_payloads_replays_into_a_store(procs: Procs, tmp_path: Path) -> None:
    src = Source("src1", store={"csv": {"file_path": "out.csv"}})
    bad = list(forged_payloads(9, ROWS).values())
    writer = RunFileWriter(tmp_path / "evil.raw", run_meta(run=1, run_start_ns=0))
    for env in _messages(src, bad):
        writer.write(env)
    writer.close()
    replay = procs.start("replay", str(tmp_path / "evil.raw"), stdout=subprocess.PIPE)
    store = procs.run("store", "csv", stdin=replay.stdout, timeout=60)
    replay.stdout.close()
    assert replay.wait(30) == 0, replay.stderr.read().decode()
    stderr = store.stderr.decode()
    assert store.returncode == 0, f"exit {store.returncode}\n{stderr}"
    _check_csv(tmp_path / "out.csv")
    _check_counted(stderr, len(bad))
