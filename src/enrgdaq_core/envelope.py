"""The one envelope: topic + header + payload, identical on a socket, in a pipe and on disk.

Every piece encodes and decodes messages through this module only; `stream` frames the same
three parts as records for pipes and run files. Headers are msgpack (msgspec), never pickle,
so a peer cannot make us run code by sending a message.
"""

from __future__ import annotations

import os
import socket
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from typing import TYPE_CHECKING, Any

import msgspec

from enrgdaq_core.names import BadName, check_name, host_node

if TYPE_CHECKING:
    import pyarrow as pa

__all__ = [
    "DATA_KINDS",
    "HEADER_MAX_BYTES",
    "HEADER_VERSION",
    "TOPIC_END",
    "Envelope",
    "EnvelopeError",
    "Header",
    "Kind",
    "ShmRef",
    "Source",
    "data_topic",
    "decode_body",
    "decode_header",
    "encode_body",
    "encode_header",
    "node_name",
    "parse_topic",
    "subscription",
    "topic_frame",
]

HEADER_VERSION = 1
"""Major header version. A decoder refuses a higher major; unknown fields of the same major are
ignored, so fields can be added without breaking older readers."""

HEADER_MAX_BYTES = 1 << 20
"""The largest header a decoder takes (real ones are ~100 bytes): a larger one is undecodable."""

TOPIC_END = b"\x00"
"""Terminator appended to every topic frame, so a subscription to `data.sensor1` never matches
`data.sensor10` (ZMQ subscriptions are byte prefixes)."""


class Kind(StrEnum):
    """What a message's payload is; a consumer dispatches on it, never on the topic."""

    TABLE = "table"  # payload: one Arrow IPC stream (schema + record batches)
    RAW = "raw"  # payload: opaque bytes
    STATS = "stats"  # payload: msgpack StatsReport (see stats.py)
    LOG = "log"  # payload: msgpack {level, message}
    ALERT = "alert"  # payload: msgpack Alert
    EOS = "eos"  # end of stream: the source stopped on purpose; payload empty
    RUN = "run"  # run boundary: payload msgpack {run, state, time_ns}


DATA_KINDS = frozenset({Kind.TABLE, Kind.RAW})
"""The kinds that carry a source's data (the rest is telemetry and markers)."""


class ShmRef(msgspec.Struct, frozen=True, kw_only=True):
    """Where a large payload lies in a shared-memory ring on this host (payload frame empty)."""

    segment: str
    offset: int
    size: int
    generation: int


class Header(msgspec.Struct, kw_only=True, omit_defaults=True):
    """Who sent a message, when, in which order and where stores should put it (msgpack).

    Fields (docs/wire-format.md is the specification): `v` the major header version; `kind`;
    `source` the sending piece; `seq` its message number, counting every kind from 0 per
    `epoch` (the ns start time of the source process: a new epoch restarts the count, it is
    not loss); `time_ns` the send time; `run`, `tag` as configured; `node` the sending host
    (`DAQ_NODE` or the hostname); `rows` of a table payload; `store` the source's
    `[store_config.<backend>]` settings; `shm` reserved for shared-memory payloads (refused).
    """

    # A factory, not a plain default: omit_defaults would drop `v` from every header, and a
    # newer writer's headers would then look like ours to an older reader.
    v: int = msgspec.field(default_factory=lambda: HEADER_VERSION)
    kind: Kind
    source: str
    seq: int = 0
    time_ns: int = 0
    epoch: int = 0  # start time (ns) of the source process: a new epoch restarts its sequence
    run: int = 0
    tag: str = ""
    node: str = ""
    rows: int = 0
    store: dict[str, dict[str, Any]] = {}
    shm: ShmRef | None = None


class EnvelopeError(ValueError):
    """A message that cannot be decoded: counted and logged by consumers, never fatal."""


_encoder = msgspec.msgpack.Encoder()
_header_decoder = msgspec.msgpack.Decoder(Header)


def encode_header(header: Header) -> bytes:
    """The header frame of a message (msgpack)."""
    return _encoder.encode(header)


def decode_header(data: bytes | memoryview) -> Header:
    """A header frame back as a `Header`; EnvelopeError if it is garbled, from a newer major
    version, larger than HEADER_MAX_BYTES, or points at shared memory (which this version
    cannot read)."""
    if len(data) > HEADER_MAX_BYTES:
        raise EnvelopeError(f"header of {len(data)} bytes exceeds {HEADER_MAX_BYTES}")
    try:
        header = _header_decoder.decode(data)
    except (msgspec.DecodeError, msgspec.ValidationError) as exc:
        raise EnvelopeError(f"undecodable header: {exc}") from None
    except RecursionError:  # store settings nested thousands deep
        raise EnvelopeError("undecodable header: nested too deep") from None
    _check_names(header)
    if header.v > HEADER_VERSION:
        raise EnvelopeError(
            f"header version {header.v} is newer than this reader ({HEADER_VERSION})"
        )
    if header.shm is not None:
        # The payload lies in a shared-memory segment this version cannot map: decoding it
        # would hand on the empty payload frame as the data (docs/wire-format.md, `shm`).
        raise EnvelopeError(
            f"{header.source}: the payload is in shared memory ({header.shm.segment}), "
            "which this reader does not support"
        )
    return header


_good_names: set[str] = set()  # names already checked (a consumer sees a few, many times)


def _check_names(header: Header) -> None:
    """A header's source, tag and node must be names (enrgdaq_core.names): they end up in
    file names and topics, so a forged `../x` or NUL is refused here, once for every reader."""
    for kind, value in (("source", header.source), ("tag", header.tag), ("node", header.node)):
        if value in _good_names or (not value and kind != "source"):
            continue
        try:
            check_name(kind, value)
        except BadName as exc:
            raise EnvelopeError(f"{exc} in a header") from None
        if len(_good_names) >= 4096:
            _good_names.clear()
        _good_names.add(value)


def topic_frame(topic: str) -> bytes:
    """The topic as it goes on the wire: UTF-8 plus the TOPIC_END terminator."""
    return topic.encode() + TOPIC_END


_parsed_topics: dict[bytes, str] = {}  # a consumer sees a few topics, each many times


def parse_topic(frame: bytes | memoryview) -> str:
    """A topic frame back as text; EnvelopeError without its terminator or not UTF-8."""
    raw = bytes(frame)
    topic = _parsed_topics.get(raw)
    if topic is not None:
        return topic
    if not raw.endswith(TOPIC_END):
        raise EnvelopeError(f"topic frame {raw[:40]!r} lacks its terminator")
    try:
        topic = raw[:-1].decode()
    except UnicodeDecodeError:
        raise EnvelopeError(f"topic frame {raw[:40]!r} is not UTF-8") from None
    if len(_parsed_topics) >= 4096:
        _parsed_topics.clear()
    _parsed_topics[raw] = topic
    return topic


def subscription(pattern: str) -> bytes:
    """The ZMQ subscription prefix for a topic pattern.

    `data.sensor1` is exact (terminated); `data.` or `data.sensor*` are prefixes; `` is all.
    """
    if pattern in ("", "*"):
        return b""
    if pattern.endswith("*"):
        return pattern[:-1].encode()
    if pattern.endswith("."):
        return pattern.encode()
    return pattern.encode() + TOPIC_END


def data_topic(source: str) -> str:
    """The topic a source's data goes out on: `data.<source>`."""
    return f"data.{source}"


@dataclass(slots=True)
class Envelope:
    """One message: the same three parts on a socket, in a pipe and in a run file.

    Made by a `Source` (which stamps the header) or decoded by `from_frames`; consumers read
    `kind`, `header` and `payload`, and `table()` for a TABLE message. Replay and bridges
    pass envelopes on unchanged, so nothing downstream can tell a replayed run from a live one.

    Parameters
    ----------
    topic:
        What the message is about: `data.<source>`, `stats.<piece>`, `alert.<job>`.
    header:
        The stamped `Header`.
    payload:
        Arrow IPC stream (TABLE), opaque bytes (RAW), msgpack body (telemetry), or empty.
    """

    topic: str
    header: Header
    payload: bytes | memoryview = b""
    _table: Any = field(default=None, repr=False)

    @property
    def kind(self) -> Kind:
        """The header's kind."""
        return self.header.kind

    @property
    def nbytes(self) -> int:
        """Payload size in bytes (what stats count as bytes)."""
        return len(self.payload)

    def table(self) -> pa.Table:
        """The payload as an Arrow table (decoded once, lazily: pyarrow loads only here)."""
        if self.header.kind is not Kind.TABLE:
            raise EnvelopeError(f"{self.topic}: a {self.header.kind} message has no table")
        if self._table is None:
            from enrgdaq_core.tables import TableError, decode_table

            try:
                self._table = decode_table(self.payload)
            except TableError as exc:
                raise EnvelopeError(str(exc)) from None
        return self._table

    @property
    def new_schema(self) -> bool:
        """Whether `table()` would decode a schema this process has not checked before: the
        riskiest decode (stores write what they hold first). False once decoded or when the
        table was made here."""
        if self._table is not None or self.header.kind is not Kind.TABLE:
            return False
        from enrgdaq_core.tables import familiar

        return not familiar(self.payload)

    def frames(self) -> list[bytes | memoryview]:
        """The three ZeroMQ frames: topic (terminated), header, payload."""
        return [topic_frame(self.topic), encode_header(self.header), self.payload]

    @classmethod
    def from_frames(cls, frames: Sequence[bytes | memoryview]) -> Envelope:
        """Decode three received frames; EnvelopeError when they are not a valid message."""
        if len(frames) != 3:
            raise EnvelopeError(f"expected 3 frames (topic, header, payload), got {len(frames)}")
        return cls(parse_topic(frames[0]), decode_header(frames[1]), frames[2])


_NODE = ""  # node_name(), once it was asked for
_encode_table_view: Any = None  # tables.encode_table_view, bound on the first table sent


def node_name() -> str:
    """This host's name in headers and stats: `DAQ_NODE` (BadName if it is not a valid name),
    else the hostname made into one (`names.host_node`: never fails)."""
    global _NODE
    if not _NODE:
        env = os.environ.get("DAQ_NODE")
        if env:
            try:
                check_name("node", env)
            except BadName as exc:
                raise BadName(f"DAQ_NODE: {exc}") from None
        _NODE = env or host_node(socket.gethostname())
    return _NODE


class Source:
    """Stamps outgoing messages of one source: topic, sequence number, time, run, store settings.

    One instance per publishing piece; the sequence counts every message of the source, whatever
    its kind, so a consumer can tell exactly how many it missed. A job never makes one: the
    runtime stamps what `step()` returns.

    Parameters
    ----------
    name:
        The source name, stamped as `header.source`.
    topic:
        The topic of `table`, `raw` and `end_of_stream` messages; default `data.<name>`.
    run:
        The run number stamped on every message.
    tag:
        The label stamped on every message.
    store:
        `[store_config]` settings per backend, as `StoreConfig.for_header()` gives them.
    """

    def __init__(
        self,
        name: str,
        *,
        topic: str | None = None,
        run: int = 0,
        tag: str = "",
        store: dict[str, dict[str, Any]] | None = None,
    ) -> None:
        self.name = name
        self.topic = topic or data_topic(name)
        self.run = run
        self.tag = tag
        self.store = store or {}
        self.epoch = time.time_ns()
        self.seq = 0
        self.node = node_name()

    def _header(self, kind: Kind, rows: int = 0) -> Header:
        header = Header(
            kind=kind,
            source=self.name,
            seq=self.seq,
            time_ns=time.time_ns(),
            epoch=self.epoch,
            run=self.run,
            tag=self.tag,
            node=self.node,
            rows=rows,
            store=self.store,
        )
        self.seq += 1
        return header

    def table(self, table: pa.Table | pa.RecordBatch) -> Envelope:
        """A TABLE message of `table` (encoded as one Arrow IPC stream, `rows` set)."""
        global _encode_table_view
        if _encode_table_view is None:  # pyarrow loads on first use, not with this module
            from enrgdaq_core.tables import encode_table_view

            _encode_table_view = encode_table_view
        header = self._header(Kind.TABLE, table.num_rows)
        env = Envelope(self.topic, header, _encode_table_view(table))
        env._table = table
        return env

    def raw(self, data: bytes | memoryview) -> Envelope:
        """A RAW message carrying `data` as it is."""
        return Envelope(self.topic, self._header(Kind.RAW), data)

    def end_of_stream(self) -> Envelope:
        """The EOS marker: the source stopped on purpose (stores close its files)."""
        return Envelope(self.topic, self._header(Kind.EOS))

    def control(self, kind: Kind, topic: str, body: object) -> Envelope:
        """A telemetry message (stats, log, alert, run) on its own topic, msgpack body."""
        return Envelope(topic, self._header(kind), _encoder.encode(body))


def encode_body(body: object) -> bytes:
    """A telemetry or control body as msgpack (structs, dicts, lists, numbers, text)."""
    return _encoder.encode(body)


def decode_body(payload: bytes | memoryview, type_: Any = Any) -> Any:
    """A msgpack body back, validated as `type_` (`StatsReport`, `Alert`); EnvelopeError if
    it does not decode or validate."""
    try:
        return msgspec.msgpack.decode(payload, type=type_)
    except (msgspec.DecodeError, msgspec.ValidationError) as exc:
        raise EnvelopeError(f"undecodable body: {exc}") from None
    except RecursionError:
        raise EnvelopeError("undecodable body: nested too deep") from None
