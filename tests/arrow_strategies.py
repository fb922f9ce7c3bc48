"""Hypothesis strategies for what travels in envelopes: Arrow tables of every type a store
must handle, and headers with every field set. Shared by the envelope and stream tests."""

from __future__ import annotations

from typing import Any

import pyarrow as pa
from hypothesis import strategies as st

from enrgdaq_core.envelope import Envelope, Header, Kind
from enrgdaq_core.stores import names as store_names

_INT64 = (-(2**63), 2**63 - 1)


def _ints(bits: int, signed: bool) -> st.SearchStrategy[int]:
    if signed:
        return st.integers(-(2 ** (bits - 1)), 2 ** (bits - 1) - 1)
    return st.integers(0, 2**bits - 1)


WAVEFORM_SAMPLES = 8

# Arrow type -> strategy of one (non-null) Python value of that type.
COLUMN_TYPES: dict[str, tuple[pa.DataType, st.SearchStrategy[Any]]] = {
    **{f"int{b}": (getattr(pa, f"int{b}")(), _ints(b, True)) for b in (8, 16, 32, 64)},
    **{f"uint{b}": (getattr(pa, f"uint{b}")(), _ints(b, False)) for b in (8, 16, 32, 64)},
    "float32": (pa.float32(), st.floats(width=32, allow_nan=False)),
    "float64": (pa.float64(), st.floats(allow_nan=False)),
    "bool": (pa.bool_(), st.booleans()),
    "string": (pa.string(), st.text(max_size=20)),
    "binary": (pa.binary(), st.binary(max_size=20)),
    "category": (pa.dictionary(pa.int32(), pa.string()), st.sampled_from(["on", "off", "fault"])),
    "ts_ns": (pa.timestamp("ns"), st.integers(*_INT64)),
    "ts_ns_utc": (pa.timestamp("ns", tz="UTC"), st.integers(*_INT64)),
    "ts_ns_zurich": (pa.timestamp("ns", tz="Europe/Zurich"), st.integers(*_INT64)),
    "list_float": (
        pa.list_(pa.float64()),
        st.lists(st.none() | st.floats(allow_nan=False), max_size=6),
    ),
    "list_int16": (pa.list_(pa.int16()), st.lists(st.none() | _ints(16, True), max_size=6)),
    "waveform_int16": (
        pa.list_(pa.int16(), WAVEFORM_SAMPLES),
        st.lists(_ints(16, True), min_size=WAVEFORM_SAMPLES, max_size=WAVEFORM_SAMPLES),
    ),
    "waveform_float32": (
        pa.list_(pa.float32(), WAVEFORM_SAMPLES),
        st.lists(
            st.floats(width=32, allow_nan=False),
            min_size=WAVEFORM_SAMPLES,
            max_size=WAVEFORM_SAMPLES,
        ),
    ),
}


@st.composite
def tables(draw: st.DrawFn, *, max_rows: int = 12) -> pa.Table:
    """A table with a random subset of the column types, nulls included, in 1-3 batches."""
    names = draw(
        st.lists(st.sampled_from(sorted(COLUMN_TYPES)), min_size=1, max_size=6, unique=True)
    )
    schema = pa.schema([(n, COLUMN_TYPES[n][0]) for n in names])
    batches = []
    for _ in range(draw(st.integers(1, 3))):
        rows = draw(st.integers(0, max_rows))
        columns = []
        for n in names:
            type_, values = COLUMN_TYPES[n]
            data = draw(st.lists(st.none() | values, min_size=rows, max_size=rows))
            columns.append(pa.array(data, type=type_))
        batches.append(pa.RecordBatch.from_arrays(columns, schema=schema))
    return pa.Table.from_batches(batches, schema=schema)


_scalars = st.one_of(
    st.integers(*_INT64), st.booleans(), st.text(max_size=10), st.floats(allow_nan=False)
)

# names as enrgdaq_core.names allows them (a header with another is refused when decoded)
names = st.from_regex(r"[A-Za-z0-9_](?:[A-Za-z0-9_.-]{0,18}[A-Za-z0-9_-])?", fullmatch=True)

headers = st.builds(
    Header,
    kind=st.sampled_from(list(Kind)),
    source=names,
    seq=st.integers(0, 2**64 - 1),
    time_ns=st.integers(0, 2**63 - 1),
    epoch=st.integers(0, 2**63 - 1),
    run=st.integers(0, 2**32),
    tag=st.just("") | names,
    node=st.just("") | names,
    rows=st.integers(0, 2**40),
    store=st.dictionaries(
        st.sampled_from(store_names()),
        st.dictionaries(st.text(min_size=1, max_size=10), _scalars, max_size=4),
        max_size=3,
    ),
)

topics = st.lists(
    st.text(st.characters(blacklist_characters="\x00.*", blacklist_categories=("Cs",)), min_size=1),
    min_size=1,
    max_size=4,
).map(".".join)


@st.composite
def table_envelopes(draw: st.DrawFn) -> tuple[Envelope, pa.Table]:
    from enrgdaq_core.tables import encode_table

    table = draw(tables())
    header = draw(headers)
    header.kind = Kind.TABLE
    header.rows = table.num_rows
    return Envelope(draw(topics), header, encode_table(table)), table


@st.composite
def raw_envelopes(draw: st.DrawFn) -> Envelope:
    header = draw(headers)
    header.kind = Kind.RAW
    return Envelope(draw(topics), header, draw(st.binary(max_size=2000)))
