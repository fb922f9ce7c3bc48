"""HDF5 files read back with `h5dump` (Debian's hdf5-tools, HDF5 1.10): the oldest reader the
hdf5 store promises. Its text output is parsed into values the tests compare one by one.

A missing h5dump fails the test (it is installed by .ci/run), it never skips.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from _store_data import expected_columns

# -e: escape quotes in strings; -y: no indices; -w 0: no wrapping; -m: every float digit
_ARGS = ["-e", "-y", "-w", "0", "-m", "%.17g"]
_STRING = re.compile(r'"((?:[^"\\]|\\.)*)"')
_ESCAPE = re.compile(r"\\([0-7]+|.)")
_SIMPLE_ESCAPES = {"n": "\n", "t": "\t", "r": "\r", "b": "\b", "f": "\f", "a": "\a"}
_DIMS = re.compile(r"DATASPACE\s+SIMPLE\s*\{\s*\(\s*([\d,\s]+)\)")


def _tool(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        pytest.fail(f"{name} not found: install Debian's hdf5-tools (.ci/run does)")
    return path


def h5dump() -> str:
    return _tool("h5dump")


def h5clear_status(path: Path) -> None:
    """`h5clear -s`: what the docs tell a user to run on a file left by a crash."""
    p = subprocess.run([_tool("h5clear"), "-s", str(path)], capture_output=True, timeout=60)
    assert p.returncode == 0, p.stderr.decode()


def h5dump_version() -> str:
    out = subprocess.run([h5dump(), "--version"], capture_output=True, text=True, timeout=30)
    return out.stdout.strip()


def _unescape(literal: str) -> str:
    """A C string literal as h5dump -e prints it (h5dump 1.10 prints each byte of a UTF-8
    character as an octal escape of the sign-extended char: `\\37777777702` is 0xC2)."""
    out = bytearray()
    pos = 0
    for m in _ESCAPE.finditer(literal):
        out += literal[pos : m.start()].encode()
        code = m.group(1)
        if code[0] in "01234567":
            out.append(int(code, 8) & 0xFF)
        else:
            out += _SIMPLE_ESCAPES.get(code, code).encode()
        pos = m.end()
    out += literal[pos:].encode()
    return out.decode("utf-8")


def _number(token: str) -> Any:
    token = token.strip()
    if token in ("TRUE", "FALSE"):
        return token == "TRUE"
    try:
        return int(token)
    except ValueError:
        return float(token)


def _values(datatype: str, data: str) -> list[Any]:
    if "H5T_VLEN" in datatype:
        return [
            [_number(t) for t in body.split(",") if t.strip()]
            for body in re.findall(r"\(([^()]*)\)", data)
        ]
    if "H5T_STRING" in datatype:
        return [_unescape(s) for s in _STRING.findall(data)]
    return [_number(t) for t in data.split(",") if t.strip()]


def _blocks(text: str) -> dict[str, tuple[str, list[int], str]]:
    """{object path: (datatype lines, dims, data text)} of every DATASET/ATTRIBUTE printed."""
    out: dict[str, tuple[str, list[int], str]] = {}
    name = ""
    datatype: list[str] = []
    dims: list[int] = []
    data: list[str] | None = None
    for line in text.splitlines():
        s = line.strip()
        head = re.match(r'(DATASET|ATTRIBUTE) "([^"]+)" \{$', s)
        if head and data is None:
            name, datatype, dims = head.group(2), [], []
            continue
        if data is not None:
            if s == "}":
                out.setdefault(name, ("\n".join(datatype), dims, " ".join(data)))
                data = None
            else:
                data.append(s)
        elif s == "DATA {":
            data = []
        elif s.startswith("DATASPACE"):
            m = _DIMS.match(s)
            dims = [int(d) for d in m.group(1).split(",")] if m else []
        else:
            datatype.append(s)
    return out


def read_group(path: Path, group: str, columns: list[str]) -> tuple[int, dict[str, Any]]:
    """(the group's `rows` attribute, {column: values}) as h5dump prints them; 2-D datasets
    come back as lists of rows."""
    args = [h5dump(), *_ARGS, "-a", f"/{group}/rows"]
    for c in columns:
        args += ["-d", f"/{group}/{c}"]
    p = subprocess.run([*args, str(path)], capture_output=True, timeout=60)
    assert p.returncode == 0, (h5dump_version(), p.stdout[-2000:], p.stderr.decode())
    blocks = _blocks(p.stdout.decode("utf-8", "replace"))
    _, _, rows_text = blocks["rows"]
    rows = int(rows_text)
    values: dict[str, Any] = {}
    for c in columns:
        datatype, dims, data = blocks[f"/{group}/{c}"]
        got = _values(datatype, data)
        if len(dims) == 2:
            width = dims[1]
            got = [got[i : i + width] for i in range(0, len(got), width)]
        assert len(got) == dims[0], (c, len(got), dims)
        values[c] = got
    return rows, values


def check_group(path: Path, group: str, start: int, rows: int) -> None:
    """Every value of the store's sample rows start..start+rows-1 in `group`, read by h5dump."""
    exp = expected_columns(start, rows)
    n, got = read_group(path, group, list(exp))
    assert n == rows
    for name, want in exp.items():
        have = got[name][:n]
        assert len(have) == rows, name
        if name == "label":
            assert have == want
        elif name == "vwave":
            for h, w in zip(have, want, strict=True):
                np.testing.assert_array_equal(np.array(h, dtype=np.float32), w)
        else:
            np.testing.assert_array_equal(np.array(have, dtype=want.dtype), want, err_msg=name)
