"""`daq replay FILE...`: play raw run files back into a pipe, a broker, a file or a terminal."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from enrgdaq_cli._common import (
    EXIT_USAGE,
    BrokerOpt,
    broker_address,
    checked_name,
    checked_topics,
    errors,
    fail,
)

if TYPE_CHECKING:
    from enrgdaq_core.replay import Progress

HELP = """Play raw run files (written by `daq store raw`) back, headers unchanged.

Writes the envelope stream to stdout when it is a pipe, publishes to a broker with --to
(or an explicit --broker), writes a new run file with -o FILE, and prints one line per
message on a terminal. Several files (the rotated parts of a run) play in the order they
were written. As fast as possible by default; --speed 1 is the recorded pace.

--from / --until (both inclusive) take rec:N (record number from 0), seconds from the first
record (90, 90s, 1.5m), a time of day (14:30:05) or an ISO time (2026-11-25T14:30:05).
With the sidecar index (FILE.idx) they seek instead of reading from the start.

A damaged file plays up to the damage, then the command reports the byte offset and record
and exits 1 (--ignore-damage: go on past it, exit 0).

Examples:

\b
  daq replay run000042.raw | daq store root -o run42.root
  daq replay run000042_*.raw --to tcp://daq1:5550 --speed 1
  daq replay run42.raw --from 10m --until 12m --source digi1 | daq store hdf5
  daq replay run42.raw --from rec:1000000 --count 10
  daq replay --info run42.raw --json
  daq replay run42.raw --loop --count 1000000 --to broker   # soak test
"""


def _human_bytes(n: float) -> str:
    for unit in ("B", "kB", "MB", "GB", "TB"):
        if abs(n) < 1000 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n:.1f} TB"


def _when(ns: int) -> str:
    if not ns:
        return "-"
    from enrgdaq_core.timefmt import stamp

    return stamp(ns, ms=True)


def _print_info(info: dict[str, Any]) -> None:
    echo = typer.echo
    parts = info["parts"]
    echo(f"run {info['run']}   {len(parts)} file(s), {_human_bytes(info['bytes'])}")
    if info["runs_in_headers"] and info["runs_in_headers"] != [info["run"]]:
        echo(f"  runs in headers: {', '.join(map(str, info['runs_in_headers']))}")
    echo(f"  run start  {_when(info['run_start_ns'])}")
    echo(f"  first      {_when(info['first_ns'])}")
    echo(f"  last       {_when(info['last_ns'])}   span {info['duration_s']:.3f} s")
    echo(f"  records    {info['records']}   rows {info['rows']}")
    for d in info["damage"]:  # first: a config snapshot below may run to many lines
        echo(f"damage: {d['path']}: {d['reason']} at byte {d['offset']} (record {d['record']})")
    echo("files:")
    for p in parts:
        meta = p["meta"]
        idx = p["index"]
        index = (
            "no index"
            if idx is None
            else f"index {idx['entries']} blocks"
            + ("" if idx["complete"] else " (incomplete: the tail is scanned)")
        )
        echo(
            f"  {p['path']}  {_human_bytes(p['size'])}  part {meta.get('part', 0)}  "
            f"opened {_when(int(meta.get('created_ns', 0)))}  node {meta.get('node', '-')}  "
            f"{index}"
        )
        known = {"created_ns", "run", "run_start_ns", "node", "part", "format", "writer"}
        for key, value in meta.items():
            if key not in known:
                echo(f"    {key} = {value!r}")
    echo("sources:")
    for name, s in info["sources"].items():
        kinds = ", ".join(f"{k} {n}" for k, n in s["kinds"].items())
        echo(f"  {name}  topic {', '.join(s['topics'])}  node {', '.join(s['nodes']) or '-'}")
        echo(
            f"    messages {s['messages']} ({kinds})  rows {s['rows']}  "
            f"payload {_human_bytes(s['bytes'])}  seq {s['first_seq']}..{s['last_seq']}  "
            f"lost {s['lost']}  epochs {s['epochs']}"
        )
        echo(f"    {_when(s['first_ns'])} .. {_when(s['last_ns'])}")
        for schema in s["schemas"]:
            echo(f"    schema: {schema}")
        if s["store"]:
            echo(f"    store settings: {s['store']}")
    config = info["config"]
    if config is None:
        echo("config snapshot: none")
    else:
        files = config.get("files", {})
        echo(
            f"config snapshot: {config.get('path', '?')} ({len(files)} file(s), "
            f"taken {_when(int(config.get('taken_ns', 0)))})"
        )
        for name, text in files.items():
            echo(f"--- {name}")
            echo(text.rstrip("\n"))


class _Bar:
    """A rich progress bar on stderr: bytes, messages/s, ETA."""

    def __init__(self) -> None:
        from rich.console import Console
        from rich.progress import (
            BarColumn,
            DownloadColumn,
            Progress,
            TextColumn,
            TimeRemainingColumn,
            TransferSpeedColumn,
        )

        self._progress = Progress(
            TextColumn("[bold]replay[/]"),
            BarColumn(),
            DownloadColumn(),
            TransferSpeedColumn(),
            TextColumn("{task.fields[rate]}"),
            TimeRemainingColumn(),
            console=Console(stderr=True),
            transient=False,
        )
        self._task = self._progress.add_task("replay", total=None, rate="")
        self._pass = 0
        self._progress.start()

    def update(self, p: Progress) -> None:
        rate = p.messages / p.elapsed if p.elapsed > 0 else 0.0
        text = f"{p.messages} msgs, {rate:,.0f} msg/s" + (
            f", pass {p.pass_no + 1}" if p.pass_no else ""
        )
        if p.pass_no != self._pass:
            self._pass = p.pass_no
            self._progress.reset(self._task)
        self._progress.update(self._task, completed=p.bytes_done, total=p.bytes_total, rate=text)

    def close(self) -> None:
        self._progress.stop()


def replay(
    ctx: typer.Context,
    files: Annotated[
        list[Path], typer.Argument(help="Run files (rotated parts of a run play in order).")
    ],
    to: Annotated[
        str | None,
        typer.Option(
            "--to",
            help="Publish to this broker (ipc://PATH, tcp://HOST:PORT, or `broker` for the "
            "default one).",
            show_default=False,
        ),
    ] = None,
    output: Annotated[
        str | None,
        typer.Option(
            "-o",
            "--output",
            help="`-`: the stream on stdout; a path: a new run file (with index).",
            show_default=False,
        ),
    ] = None,
    speed: Annotated[
        float,
        typer.Option(help="Pace: 1 = as recorded, 10 = ten times faster, 0 = as fast as possible."),
    ] = 0.0,
    start: Annotated[
        str | None,
        typer.Option(
            "--from", help="First record: rec:N, 90s, 14:30:05, ISO time.", show_default=False
        ),
    ] = None,
    until: Annotated[
        str | None,
        typer.Option(
            "--until", help="Last record (inclusive), same forms as --from.", show_default=False
        ),
    ] = None,
    topics: Annotated[
        list[str] | None,
        typer.Option(
            "--topic",
            help="Only this topic: exact, `prefix.` or `prefix*` (repeat).",
            show_default=False,
        ),
    ] = None,
    sources: Annotated[
        list[str] | None,
        typer.Option("--source", help="Only this source name (repeat).", show_default=False),
    ] = None,
    loop: Annotated[
        bool, typer.Option(help="Play again and again (until --count or Ctrl-C).")
    ] = False,
    count: Annotated[
        int | None, typer.Option(help="Stop after this many messages.", show_default=False)
    ] = None,
    info: Annotated[
        bool, typer.Option("--info", help="Summarise the run instead of playing it.")
    ] = False,
    json_out: Annotated[
        bool, typer.Option("--json", help="With --info: machine-readable.")
    ] = False,
    ignore_damage: Annotated[
        bool, typer.Option(help="Go on past damage (and exit 0); it is still reported.")
    ] = False,
    use_index: Annotated[
        bool, typer.Option("--index/--no-index", help="Seek with the sidecar index when present.")
    ] = True,
    build_index: Annotated[
        bool, typer.Option("--build-index", help="Write FILE.idx for files without one, then exit.")
    ] = False,
    wait_for: Annotated[
        list[str] | None,
        typer.Option(
            "--wait-for",
            help="With --to: wait until a lossless consumer subscribes to TOPIC (repeat).",
            show_default=False,
        ),
    ] = None,
    wait: Annotated[
        float, typer.Option(help="Seconds to wait for the broker and --wait-for.")
    ] = 10.0,
    progress: Annotated[
        bool | None,
        typer.Option(
            "--progress/--no-progress",
            help="Progress bar on stderr [default: when stderr is a terminal].",
            show_default=False,
        ),
    ] = None,
    address: BrokerOpt = None,
) -> None:
    from enrgdaq_core.replay import Replay, Selection, parse_position, run_info
    from enrgdaq_core.runfile import RunFileError
    from enrgdaq_core.runfile import build_index as write_index

    if json_out and not info:
        fail("--json goes with --info", EXIT_USAGE)
    if not speed >= 0:  # nan too
        fail("--speed must be 0 (as fast as possible) or positive", EXIT_USAGE)
    topics = checked_topics(topics, "--topic")
    wait_for = checked_topics(wait_for, "--wait-for")
    for source in sources or []:
        checked_name("source", source, "--source")

    with errors():
        try:
            if build_index:
                for path in files:
                    n, damage = write_index(path)
                    typer.echo(
                        f"{path}: indexed {n} records"
                        + (f" (stopped at {damage})" if damage else ""),
                        err=True,
                    )
                return
            show_progress = sys.stderr.isatty() if progress is None else progress
            if info:
                _info(files, json_out, ignore_damage, show_progress, run_info)
                return
            try:
                selection = Selection(
                    start=parse_position(start) if start else None,
                    until=parse_position(until) if until else None,
                    topics=list(topics or []),
                    sources=list(sources or []),
                )
            except ValueError as exc:
                fail(f"--from/--until: {exc}", EXIT_USAGE)
            rp = Replay(list(files), selection, ignore_damage=ignore_damage, use_index=use_index)
        except RunFileError as exc:
            fail(str(exc), EXIT_USAGE)
        _play(ctx, rp, to, output, address, speed, loop, count, wait_for, wait, show_progress)


def _info(
    files: list[Path], json_out: bool, ignore_damage: bool, show_progress: bool, run_info: Any
) -> None:
    bar = _Bar() if show_progress else None
    try:
        data = run_info(list(files), progress=bar.update if bar else None)
    finally:
        if bar is not None:
            bar.close()
    if json_out:
        import json

        typer.echo(json.dumps(data, indent=2))
    else:
        _print_info(data)
    if data["damage"] and not ignore_damage:
        raise typer.Exit(1)


def _play(
    ctx: typer.Context,
    rp: Any,
    to: str | None,
    output: str | None,
    address: str | None,
    speed: float,
    loop: bool,
    count: int | None,
    wait_for: list[str] | None,
    wait: float,
    show_progress: bool,
) -> None:
    from enrgdaq_core.replay import replay_output
    from enrgdaq_core.signals import stop_on_signals

    # --broker given on the command line means "publish there"; DAQ_BROKER alone does not
    source = ctx.get_parameter_source("address")
    explicit_broker = getattr(source, "name", "") == "COMMANDLINE"
    broker = None
    if to is not None or explicit_broker:
        broker = broker_address(address if to in (None, "broker") else to)
    try:
        out = replay_output(rp, broker=broker, output=output, wait=wait, wait_for=wait_for or ())
    except FileExistsError:
        fail(f"{output} exists (a run file is never overwritten)", EXIT_USAGE)
    lines = out is None
    stop = stop_on_signals()
    bar = _Bar() if show_progress and not lines else None

    on_record = None
    if lines:
        from enrgdaq_core.render import envelope_line

        def on_record(number: int, env: Any) -> None:
            typer.echo(f"#{number} {envelope_line(env, latency=False)}")

    try:
        result = rp.play(
            out,
            speed=speed,
            loop=loop,
            count=count,
            stop=stop,
            on_record=on_record,
            progress=bar.update if bar else None,
        )
    finally:
        if bar is not None:
            bar.close()
    mb = result.bytes_read / 1e6
    rate = mb / result.elapsed if result.elapsed > 0 else 0.0
    summary = (
        f"replayed {result.messages} message(s) from {len(rp.parts)} file(s) "
        f"({mb:.1f} MB read, {rate:.1f} MB/s, {result.elapsed:.2f} s"
        + (f", {result.passes} passes" if result.passes > 1 else "")
        + ")"
    )
    if not lines or sys.stderr.isatty():
        typer.echo(summary, err=True)
    for d in result.damage:
        typer.echo(f"daq: damage: {d}", err=True)
    if result.damage and not rp.ignore_damage:
        fail(
            f"{result.damage[0].path} is damaged at byte {result.damage[0].offset} "
            f"(record {result.damage[0].record}); everything before it was replayed "
            "(--ignore-damage goes on past it)"
        )
