"""Known input for the store tests: tables whose every value the test can recompute, stream
files and pipes that carry them to a real `daq store`, and comparisons against what comes back.
"""

from __future__ import annotations

import json
import subprocess
import threading
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np
import pyarrow as pa

from conftest import Procs
from enrgdaq_core.broker_client import query
from enrgdaq_core.envelope import Envelope, Source
from enrgdaq_core.stream import StreamReader, StreamWriter
from enrgdaq_core.transport import BrokerAddress

SAMPLES = 8
T0_NS = 1_764_000_000_123_456_789  # 2025-11-24T16:00:00.123456789Z

SCHEMA = pa.schema(
    [
        ("i64", pa.int64()),
        ("i16", pa.int16()),
        ("u32", pa.uint32()),
        ("f64", pa.float64()),
        ("f32", pa.float32()),
        ("flag", pa.bool_()),
        ("label", pa.string()),
        ("ts", pa.timestamp("ns", tz="UTC")),
        ("wave", pa.list_(pa.int16(), SAMPLES)),
        ("vwave", pa.list_(pa.float32())),
    ]
)


def expected_columns(start: int, rows: int) -> dict[str, Any]:
    """The values of rows start..start+rows-1, as numpy arrays / Python lists."""
    i = np.arange(start, start + rows, dtype=np.int64)
    return {
        "i64": i * 1_000_003 - 7_000_000_000,
        "i16": ((i * 37) % 65536 - 32768).astype(np.int16),
        "u32": (i * 7 + 4_000_000_000 % (2**32)).astype(np.uint32),
        "f64": np.where(i % 97 == 5, np.nan, i / 7.0 + 0.1),
        "f32": (i * 0.25 + 0.1).astype(np.float32),
        "flag": i % 3 == 0,
        "label": [f'ev{k}, "µ"' for k in i.tolist()],
        "ts": T0_NS + i * 1_000_003,
        "wave": ((i[:, None] + np.arange(SAMPLES)) % 1000 - 500).astype(np.int16),
        "vwave": [
            (k + np.arange(k % 5, dtype=np.float32) * 0.5).astype(np.float32) for k in i.tolist()
        ],
    }


def sample_table(start: int, rows: int) -> pa.Table:
    cols = expected_columns(start, rows)
    wave = pa.FixedSizeListArray.from_arrays(pa.array(cols["wave"].ravel()), SAMPLES)
    arrays = [
        pa.array(cols["i64"]),
        pa.array(cols["i16"]),
        pa.array(cols["u32"]),
        pa.array(cols["f64"]),
        pa.array(cols["f32"]),
        pa.array(cols["flag"]),
        pa.array(cols["label"]),
        pa.array(cols["ts"]).cast(pa.timestamp("ns", tz="UTC")),
        wave,
        pa.array([v.tolist() for v in cols["vwave"]], pa.list_(pa.float32())),
    ]
    return pa.Table.from_arrays(arrays, schema=SCHEMA)


def chunks(total: int, sizes: Sequence[int]) -> list[tuple[int, int]]:
    """(start, rows) pieces covering 0..total, cycling through `sizes`."""
    out, start, k = [], 0, 0
    while start < total:
        n = min(sizes[k % len(sizes)], total - start)
        out.append((start, n))
        start += n
        k += 1
    return out


def envelopes(source: Source, tables: Iterable[pa.Table], *, eos: bool = True) -> list[Envelope]:
    envs = [source.table(t) for t in tables]
    if eos:
        envs.append(source.end_of_stream())
    return envs


def write_stream(path: Path, envs: Iterable[Envelope]) -> Path:
    with open(path, "wb") as f:
        w = StreamWriter(f)
        for env in envs:
            w.write(env)
    return path


def stream_bytes(envs: Iterable[Envelope], *, header: bool = True) -> bytes:
    import io

    buf = io.BytesIO()
    w = StreamWriter(buf, header=header)
    for env in envs:
        w.write(env)
    return buf.getvalue()


def source(name: str = "src1", backend: str = "csv", **settings: Any) -> Source:
    return Source(name, store={backend: settings})


def run_store(procs: Procs, backend: str, stream: Path, *args: str) -> subprocess.CompletedProcess:
    p = procs.run("store", backend, "-i", str(stream), *args, timeout=60)
    assert p.returncode == 0, p.stderr.decode()
    return p


def broker_store(
    procs: Procs, broker: BrokerAddress, backend: str, sources: Sequence[str], *args: str
) -> subprocess.Popen:
    """A real `daq store BACKEND` on the broker for `sources` (exact names), exiting once each
    has sent end-of-stream, also when one ends before the next starts."""
    topics = [a for s in sources for a in ("--from", f"data.{s}")]
    return procs.start("store", backend, "--broker", broker.base, *topics, *args, "--exit-on-eos")


def subscribers(broker: BrokerAddress, topic: str) -> int:
    """How many lossless consumers the broker sees on `topic` (`data.x$` is exactly data.x)."""
    try:
        return int(query(broker, "subscriptions", timeout=1.0)["subscribers"].get(topic, 0))
    except TimeoutError:
        return 0


def feed(pipe: BinaryIO, data: bytes) -> None:
    pipe.write(data)
    pipe.flush()


def read_stream(path: Path) -> list[Envelope]:
    with open(path, "rb") as f:
        return [r.envelope for r in StreamReader(f)]


def as_json_list(values: Any) -> list[Any]:
    return json.loads(values)


def start_feeder(
    pipe: BinaryIO, src: Source, stop: threading.Event, start: int = 0
) -> threading.Thread:
    """Feed a store's stdin with small tables (1 to 9 rows) until `stop`, for kill -9 tests."""

    def run() -> None:
        pos = start
        try:
            feed(pipe, stream_bytes([]))  # the stream's file header
            while not stop.is_set():
                n = 1 + pos % 9
                feed(pipe, stream_bytes([src.table(sample_table(pos, n))], header=False))
                pos += n
                stop.wait(0.001)
        except OSError:  # the store was killed: its pipe is gone
            pass

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread


class ListInput:
    """An input that hands out these envelopes, then ends (a runner fed in-process); it says
    how many messages it could not decode, as a Subscriber does."""

    damage = None

    def __init__(self, envs: list[Envelope], undecodable: int = 0) -> None:
        self.envs = list(envs)
        self.undecodable = undecodable

    def recv(self, timeout: float | None = None) -> Envelope | None:
        from enrgdaq_core.channels import EndOfInput

        if not self.envs:
            raise EndOfInput
        return self.envs.pop(0)

    def close(self) -> None:
        pass
