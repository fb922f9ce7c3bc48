"""File names of file stores: placeholders, dates, rotation parts that sort in time order."""

from __future__ import annotations

import string
import time
from pathlib import Path


class _Fields(dict):
    def __missing__(self, key: str) -> str:
        return "{" + key + "}"


def parse_period(text: str) -> float:
    """`30s`, `15m`, `1h`, `1d` -> seconds; empty -> 0 (never)."""
    text = text.strip()
    if not text:
        return 0.0
    units = {"s": 1, "m": 60, "h": 3600, "d": 86400}
    unit = text[-1].lower()
    number = text[:-1] if unit in units else text
    try:
        value = float(number) * units.get(unit, 1)
    except ValueError:
        raise ValueError(f"expected a period like 30s, 15m, 1h or 1d, got {text!r}") from None
    if value <= 0:
        raise ValueError(f"expected a positive period, got {text!r}")
    return value


def file_path(
    template: str,
    *,
    source: str,
    extension: str,
    out_dir: str = "",
    run: int = 0,
    tag: str = "",
    add_date: bool = False,
    rotating: bool = False,
    now: float | None = None,
) -> Path:
    """The file for one source.

    Placeholders `{source}`, `{run}` (zero-padded to 6), `{tag}`, `{date}` are filled; with
    `add_date` the date goes before the extension (`sensor_2026-11-25.csv`); a rotating store
    adds the opening time (`sensor_20261125T143000.csv`), so parts sort in time order.
    """
    now = time.time() if now is None else now
    template = template or f"{{source}}{extension}"
    fields = _Fields(
        source=source,
        run=f"{run:06d}",
        tag=tag,
        date=time.strftime("%Y-%m-%d", time.localtime(now)),
    )
    name = string.Formatter().vformat(template, (), fields)
    path = Path(name)
    if tag and "{tag}" not in template:
        path = path.with_name(f"{path.stem}_{tag}{path.suffix}")
    if add_date and "{date}" not in template:
        path = path.with_name(f"{path.stem}_{fields['date']}{path.suffix}")
    if rotating:
        stamp = time.strftime("%Y%m%dT%H%M%S", time.localtime(now))
        path = path.with_name(f"{path.stem}_{stamp}{path.suffix}")
    if not path.suffix and extension:
        path = path.with_suffix(extension)
    if out_dir and not path.is_absolute():
        path = Path(out_dir) / path
    return path


def unique(path: Path) -> Path:
    """`path`, or `stem.1.ext`, `stem.2.ext`... if it exists (a new file must not clobber one)."""
    if not path.exists():
        return path
    n = 1
    while True:
        candidate = path.with_name(f"{path.stem}.{n}{path.suffix}")
        if not candidate.exists():
            return candidate
        n += 1
