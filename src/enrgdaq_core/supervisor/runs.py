"""Run numbers and the record of each run, kept in the output directory beside the data.

`out/runs.json` lists every run (number, start and stop times, node, how it ended: `stopped`
by `daq up`, or `aborted` when `daq up` died and its children stopped by themselves; empty
while it runs); each run also gets
`out/runNNNNNN/` with `run.json` and `configs/`, a byte-for-byte copy of every TOML that made
it. The number is the one stores put in file names (`{run}`, zero-padded to 6 like the
directory), so `file_path = "run{run}/sensor.csv"` puts the data beside its record.
"""

from __future__ import annotations

import json
import shutil
import time
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

from enrgdaq_core import timefmt
from enrgdaq_core.atomic import atomic_write
from enrgdaq_core.config import ConfigError, ConfigIssue


def run_dir_name(run: int) -> str:
    return f"run{run:06d}"


def _iso(ns: int) -> str:
    return timefmt.iso(ns) if ns else ""


def _write_json(path: Path, data: Any) -> None:
    """Whole or not at all: a crash mid-write leaves the previous version."""
    atomic_write(path, json.dumps(data, indent=2) + "\n")


@dataclass
class RunRecord:
    run: int
    start_ns: int
    stop_ns: int = 0
    node: str = ""
    config_dir: str = ""  # where the configs came from (the `daq up` directory)
    path: str = ""  # the run's directory (run.json, configs/)
    start: str = ""
    stop: str = ""
    ended: str = ""  # "" while running, then "stopped" or "aborted"

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> RunRecord:
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in names})

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["start"] = _iso(self.start_ns)
        out["stop"] = _iso(self.stop_ns)
        return out


class RunBook:
    """The runs file of one output directory."""

    def __init__(self, out_dir: Path, runs_file: str = "runs.json", snapshot: bool = True) -> None:
        self.out_dir = out_dir
        self.path = out_dir / runs_file
        self.snapshot = snapshot

    def records(self) -> list[dict[str, Any]]:
        if not self.path.exists():
            return []
        try:
            data = json.loads(self.path.read_text())
            runs = data["runs"]
            if not isinstance(runs, list):
                raise TypeError("runs is not a list")
            return runs
        except (ValueError, KeyError, TypeError) as exc:
            raise ConfigError(
                [
                    ConfigIssue(
                        str(self.path), "runs", f"unreadable runs file ({exc}); fix or move it"
                    )
                ]
            ) from None

    def last(self) -> int:
        return max((int(r.get("run", 0)) for r in self.records()), default=0)

    def next_number(self, first: int = 0) -> int:
        """`first` if given (and not used yet), else one after the last recorded run."""
        last = self.last()
        if first:
            if first <= last:
                raise ConfigError(
                    [
                        ConfigIssue(
                            str(self.path),
                            "run.first",
                            f"run {first} is not after the last recorded run ({last})",
                        )
                    ]
                )
            return first
        return last + 1

    def snapshot_configs(self, run: int, files: list[Path]) -> Path:
        """Copy the run's configs to `runNNNNNN/configs/` (before its stores start: the raw
        store embeds that directory in its file headers)."""
        configs = self.out_dir / run_dir_name(run) / "configs"
        configs.mkdir(parents=True, exist_ok=True)
        for f in files:
            shutil.copyfile(f, configs / f.name)
        return configs

    def begin(self, run: int, *, node: str = "", config_dir: Path | None = None) -> RunRecord:
        """Record the start of `run` (runs.json and runNNNNNN/run.json)."""
        record = RunRecord(
            run=run,
            start_ns=time.time_ns(),
            node=node,
            config_dir=str(config_dir or ""),
            path=str(self.out_dir / run_dir_name(run)),
        )
        self._save(record)
        return record

    def end(self, record: RunRecord, how: str = "stopped") -> None:
        record.stop_ns = time.time_ns()
        record.ended = how
        self._save(record)

    def abort_open(self) -> list[int]:
        """End every run still open as `aborted` (its `daq up` died); their numbers."""
        ended = []
        for data in self.records():
            if not data.get("stop_ns"):
                record = RunRecord.from_dict(data)
                self.end(record, "aborted")
                ended.append(record.run)
        return ended

    def _save(self, record: RunRecord) -> None:
        runs = [r for r in self.records() if int(r.get("run", 0)) != record.run]
        runs.append(record.to_dict())
        runs.sort(key=lambda r: int(r.get("run", 0)))
        _write_json(self.path, {"runs": runs})
        _write_json(Path(record.path) / "run.json", record.to_dict())
