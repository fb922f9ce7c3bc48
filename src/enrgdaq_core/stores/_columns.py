"""Arrow columns as the numpy arrays that binary file formats (ROOT, HDF5) take.

One plan per column, made once per schema, says how it is stored: a scalar, a fixed-size
array (waveforms from `fixed_size_list`), a variable-length array (`list`), or a string.
Timestamps become int64 nanoseconds since 1970-01-01 UTC; dictionaries are decoded; binary
becomes a variable-length uint8 array; anything else nested becomes a JSON string. These
formats have no nulls: a null becomes the fill value of its type (NaN, 0, false, "", an
empty array) and is counted, so it never passes silently.
"""

from __future__ import annotations

import base64
import json
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

import numpy as np

if TYPE_CHECKING:
    import pyarrow as pa

Kind = Literal["scalar", "fixed", "jagged", "string"]

TIME_UNITS = "ns since 1970-01-01T00:00:00Z"


@dataclass(frozen=True, slots=True)
class ColumnPlan:
    name: str
    kind: Kind
    dtype: np.dtype  # of one element (float32 for a list<float32> waveform)
    arrow_type: str  # what the source sent, kept in the file as metadata
    width: int = 0  # fixed-size arrays: samples per row
    units: str = ""  # TIME_UNITS for timestamps


def _numeric_dtype(t: pa.DataType) -> np.dtype | None:
    """The numpy dtype a scalar Arrow type is stored as, None if it is not a number."""
    import pyarrow as pa

    if pa.types.is_boolean(t):
        return np.dtype(np.bool_)
    if pa.types.is_integer(t) or pa.types.is_floating(t):
        return np.dtype(t.to_pandas_dtype())
    if pa.types.is_timestamp(t):
        return np.dtype(np.int64)
    if pa.types.is_date32(t) or pa.types.is_time32(t):
        return np.dtype(np.int32)
    if pa.types.is_date64(t) or pa.types.is_time64(t) or pa.types.is_duration(t):
        return np.dtype(np.int64)
    if pa.types.is_decimal(t):
        return np.dtype(np.float64)
    return None


def _value_type(t: pa.DataType) -> pa.DataType:
    import pyarrow as pa

    return t.value_type if pa.types.is_dictionary(t) else t


def plan_column(field: pa.Field) -> ColumnPlan:
    import pyarrow as pa

    t = _value_type(field.type)
    arrow_type = str(field.type)
    scalar = _numeric_dtype(t)
    if scalar is not None:
        units = TIME_UNITS if pa.types.is_timestamp(t) else ""
        return ColumnPlan(field.name, "scalar", scalar, arrow_type, units=units)
    if pa.types.is_string(t) or pa.types.is_large_string(t):
        return ColumnPlan(field.name, "string", np.dtype(object), arrow_type)
    if pa.types.is_binary(t) or pa.types.is_large_binary(t) or pa.types.is_fixed_size_binary(t):
        return ColumnPlan(field.name, "jagged", np.dtype(np.uint8), arrow_type)
    if pa.types.is_fixed_size_list(t) or pa.types.is_list(t) or pa.types.is_large_list(t):
        inner = _numeric_dtype(_value_type(t.value_type))
        if inner is not None:
            if pa.types.is_fixed_size_list(t):
                return ColumnPlan(field.name, "fixed", inner, arrow_type, width=t.list_size)
            return ColumnPlan(field.name, "jagged", inner, arrow_type)
    return ColumnPlan(field.name, "string", np.dtype(object), arrow_type)


def plan_schema(schema: pa.Schema) -> list[ColumnPlan]:
    return [plan_column(f) for f in schema]


def schema_signature(schema: pa.Schema) -> str:
    """A stable text of the column names and types (kept in files to match on reopen)."""
    return json.dumps([[f.name, str(f.type)] for f in schema])


@dataclass(slots=True)
class ColumnData:
    values: Any  # scalar: 1-D; fixed: 2-D (rows, width); string: object array; jagged: flat
    offsets: np.ndarray | None = None  # jagged: int64, rows + 1 entries, starting at 0
    nulls: int = 0  # values replaced by the fill value

    def rows_of_jagged(self) -> list[np.ndarray]:
        assert self.offsets is not None
        return [self.values[a:b] for a, b in zip(self.offsets[:-1], self.offsets[1:], strict=True)]


def _fill(dtype: np.dtype) -> Any:
    if dtype.kind == "f":
        return float("nan")
    if dtype.kind == "b":
        return False
    return 0


def _scalars(arr: pa.Array, dtype: np.dtype) -> tuple[np.ndarray, int]:
    """A scalar (or list-element) array as numpy, nulls filled; (values, how many nulls)."""
    import pyarrow as pa
    import pyarrow.compute as pc

    t = arr.type
    if pa.types.is_dictionary(t):
        arr = arr.dictionary_decode()
        t = arr.type
    if pa.types.is_timestamp(t):
        arr = arr.cast(pa.timestamp("ns", tz=t.tz)).view(pa.int64())
    elif pa.types.is_temporal(t):
        arr = arr.view(pa.int32() if dtype.itemsize == 4 else pa.int64())
    elif pa.types.is_decimal(t):
        arr = arr.cast(pa.float64())
    nulls = arr.null_count
    if nulls:
        arr = pc.fill_null(arr, pa.scalar(_fill(dtype), arr.type))
    values = arr.to_numpy(zero_copy_only=False)
    if values.dtype != dtype:
        values = values.astype(dtype)
    return values, nulls


def json_strings(arr: pa.Array) -> list[str | None]:
    """Each value as JSON text (bytes as base64); the fallback for what has no better form."""

    def default(value: Any) -> Any:
        if isinstance(value, bytes):
            return base64.b64encode(value).decode()
        return str(value)

    return [
        None if v is None else json.dumps(v, default=default, allow_nan=True)
        for v in arr.to_pylist()
    ]


def column_data(plan: ColumnPlan, column: pa.ChunkedArray | pa.Array) -> ColumnData:
    import pyarrow as pa
    import pyarrow.compute as pc

    arr = column.combine_chunks() if isinstance(column, pa.ChunkedArray) else column
    if plan.kind == "scalar":
        values, nulls = _scalars(arr, plan.dtype)
        return ColumnData(values, nulls=nulls)
    if plan.kind == "string":
        if pa.types.is_dictionary(arr.type):
            arr = arr.dictionary_decode()
        if pa.types.is_string(arr.type) or pa.types.is_large_string(arr.type):
            nulls = arr.null_count
            if nulls:
                arr = pc.fill_null(arr, "")
            return ColumnData(arr.to_numpy(zero_copy_only=False), nulls=nulls)
        text = json_strings(arr)
        nulls = sum(v is None for v in text)
        return ColumnData(
            np.array(["" if v is None else v for v in text], dtype=object), nulls=nulls
        )
    if pa.types.is_dictionary(arr.type):
        arr = arr.dictionary_decode()
    if plan.kind == "fixed":
        rows = len(arr)
        flat = arr.values.slice(arr.offset * plan.width, rows * plan.width)
        values, nulls = _scalars(flat, plan.dtype)
        values = values.reshape(rows, plan.width)
        if arr.null_count:
            missing = arr.is_null().to_numpy(zero_copy_only=False)
            values = values.copy()
            values[missing] = _fill(plan.dtype)
            nulls += int(missing.sum())
        return ColumnData(values, nulls=nulls)
    # jagged: lists, and binary as bytes
    if pa.types.is_binary(arr.type) or pa.types.is_large_binary(arr.type):
        lengths = pc.fill_null(pc.binary_length(arr), 0).to_numpy(zero_copy_only=False)
        flat = np.frombuffer(b"".join(v or b"" for v in arr.to_pylist()), dtype=np.uint8)
        nulls = arr.null_count
    elif pa.types.is_fixed_size_binary(arr.type):
        width = arr.type.byte_width
        lengths = np.where(arr.is_null().to_numpy(zero_copy_only=False), 0, width)
        flat = np.frombuffer(b"".join(v or b"" for v in arr.to_pylist()), dtype=np.uint8)
        nulls = arr.null_count
    else:
        lengths = pc.fill_null(pc.list_value_length(arr), 0).to_numpy(zero_copy_only=False)
        flat, nulls = _scalars(pc.list_flatten(arr), plan.dtype)
        nulls += arr.null_count
    offsets = np.zeros(len(lengths) + 1, dtype=np.int64)
    np.cumsum(lengths, out=offsets[1:])
    return ColumnData(flat, offsets=offsets, nulls=nulls)
