"""A directory of TOML files -> a validated plan of the processes that make the system.

Every `*.toml` in the directory is loaded through the one config loader before anything
starts, and every problem of every file is collected, so a person fixes them all in one go:

- `supervisor.toml` (optional): this supervisor's settings (`SupervisorConfig`).
- a file whose `daq_job_type` is a seed store type (`DAQJobStoreCSV`, ...): the options of
  that backend's store process (`daq store BACKEND --config FILE`).
- any other file: one source job (`daq job run FILE`).

The plan holds one broker, one store process per backend that some source sends to (it
subscribes to exactly those sources), and one process per source.
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Literal

import msgspec

from enrgdaq_core.config import ConfigError, ConfigIssue, convert, read_toml
from enrgdaq_core.transport import AddressError, BrokerAddress

SUPERVISOR_FILE = "supervisor.toml"
RESERVED_NAMES = ("broker", "supervisor")
STORE_PREFIX = "store-"
STATE_DIR = ".state"  # in out_dir: what each store wrote last, kept across its restarts

Role = Literal["broker", "store", "job"]
RestartPolicy = Literal["always", "on-failure", "never"]
Positive = Annotated[float, msgspec.Meta(gt=0)]
NonNegative = Annotated[float, msgspec.Meta(ge=0)]


class RestartSettings(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """When and how fast dead or hung children are restarted."""

    initial_delay: NonNegative = 0.5  # seconds before the first restart
    max_delay: Positive = 30.0  # the backoff doubles up to this
    reset_after: Positive = 60.0  # a child that ran this long healthy starts again at initial
    heartbeat_timeout: NonNegative = 30.0  # no stats report for this long: hung, restart; 0 off
    start_timeout: Positive = 60.0  # the first report may take this long after a start


class StatsSettings(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    file: str = "stats.csv"  # relative to out_dir; "" writes none
    remote_file: str = "stats_remote.csv"
    interval: Positive = 5.0  # seconds between rewrites
    history: str = "stats_history.csv"  # every report appended (`daq stats plot`); "" none
    prometheus: str = ""  # [HOST]:PORT to serve /metrics on; "" serves none


class RunSettings(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    first: Annotated[int, msgspec.Meta(ge=0)] = 0  # 0: one after the last recorded run
    runs_file: str = "runs.json"  # relative to out_dir
    snapshot: bool = True  # copy every config of the run to out_dir/runNNNNNN/configs


class SupervisorConfig(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """`supervisor.toml`: every key optional; no file at all works."""

    node: str = ""  # default: DAQ_NODE or the host name
    broker: str = ""  # default: DAQ_BROKER or ipc in the per-user runtime dir
    control: str = ""  # default: a local ipc socket beside the broker's (see control.py)
    out_dir: str = "out"  # relative to the working directory of `daq up`
    log_dir: str = "logs"  # relative to out_dir: one <piece>.log per child
    log_max_mb: Positive = 50.0  # a log file this big is moved to <piece>.log.1
    shutdown_timeout: Positive = 15.0  # per step of the ordered shutdown, then SIGKILL
    store_start_timeout: Positive = 30.0  # sources wait this long for their stores to subscribe
    restart: RestartSettings = msgspec.field(default_factory=RestartSettings)
    stats: StatsSettings = msgspec.field(default_factory=StatsSettings)
    run: RunSettings = msgspec.field(default_factory=RunSettings)

    def __post_init__(self) -> None:
        if self.node:
            from enrgdaq_core.names import check_name

            try:
                check_name("node", self.node)
            except ValueError as exc:
                raise ValueError(f"node: {exc}") from None


def daq_command() -> list[str]:
    """How a child `daq` is started: this interpreter, so no PATH lookup is needed.

    `-P`: not from the working directory. `python -m` puts the working directory first on
    `sys.path`, so a `typer.py` lying in the directory `daq up` was started in would run in
    every child; PYTHONPATH and the user site still apply (a lab's job package is found as
    before). The one place a child interpreter is named (docs/security.md).
    """
    return [sys.executable, "-P", "-m", "enrgdaq_cli.main"]


@dataclass
class ChildSpec:
    """One process of the plan: the same command a person would type."""

    name: str  # the piece name: stats.<name>, logs/<name>.log, `daq ctl restart <name>`
    role: Role
    argv: list[str]  # without the run number (jobs get `--run N` when started)
    restart: RestartPolicy = "always"
    config: Path | None = None
    backend: str = ""  # stores: csv, root, ...
    topics: tuple[str, ...] = ()  # stores: what they subscribe to; jobs: what they publish
    stores: tuple[str, ...] = ()  # jobs: the store pieces that take their data
    interval: float = 0.0  # jobs: seconds between steps (a report comes at most that often)
    snapshot: bool = False  # raw store: embed the run's config snapshot (`-O snapshot=DIR`)

    @property
    def daq_args(self) -> list[str]:
        """The arguments after `daq` (what a person would type), without the interpreter."""
        return self.argv[len(daq_command()) :]


@dataclass
class Plan:
    directory: Path
    config: SupervisorConfig
    config_file: Path | None
    address: BrokerAddress
    control: str
    out_dir: Path
    node: str
    broker: ChildSpec
    stores: list[ChildSpec]
    sources: list[ChildSpec]
    files: list[Path]  # every TOML of the directory (the run's config snapshot)
    warnings: list[str] = field(default_factory=list)

    @property
    def children(self) -> list[ChildSpec]:
        return [self.broker, *self.stores, *self.sources]

    def child(self, name: str) -> ChildSpec | None:
        return next((c for c in self.children if c.name == name), None)

    @property
    def log_dir(self) -> Path:
        return self.out_dir / self.config.log_dir

    def out_path(self, name: str) -> Path | None:
        """A file setting resolved against out_dir; None when the setting is empty."""
        return (self.out_dir / name) if name else None


def store_piece(backend: str) -> str:
    return f"{STORE_PREFIX}{backend}"


def _store_type(data: dict[str, Any]) -> str | None:
    from enrgdaq_core.stores import SEED_STORE_TYPES

    value = data.get("daq_job_type")
    if isinstance(value, str):
        if value in SEED_STORE_TYPES:
            return SEED_STORE_TYPES[value]
        if value.startswith("DAQJobStore"):
            return ""  # a store type we do not have: reported by the caller
    return None


@dataclass
class _File:
    """One TOML of the directory, read once and classified; nothing checked yet."""

    path: Path
    data: dict[str, Any]  # its content: checked, then consulted again for the argv
    backend: str | None = None  # a store config: its backend; None: a source job
    issues: list[ConfigIssue] = field(default_factory=list)  # why it cannot be used at all


@dataclass
class _Configs:
    """The directory's configs once validated: sources, store files, and who sends where."""

    jobs: list[tuple[Path, Any]] = field(default_factory=list)  # (file, Job)
    store_files: dict[str, _File] = field(default_factory=dict)  # backend -> its store TOML
    targets: dict[str, list[str]] = field(default_factory=dict)  # backend -> its sources
    first_user: dict[str, Path] = field(default_factory=dict)  # backend -> first source file


def load_plan(
    directory: str | Path,
    *,
    broker: str | None = None,
    out_dir: str | None = None,
    control: str | None = None,
    import_jobs: bool = True,
) -> Plan:
    """Validate everything in `directory`; ConfigError carries every problem of every file.

    Three steps: read and classify every file (once), validate all of it (collecting every
    issue, in file order), then build the process specs. `import_jobs=False` (`daq up
    --check`): a custom job type's module is not imported (its code does not run), only the
    keys every job has are checked in its file, and the plan warns about it.
    """
    directory = Path(directory)
    files = _toml_files(directory)
    issues: list[ConfigIssue] = []
    if out_dir is not None and "\x00" in out_dir:
        issues.append(ConfigIssue("--out-dir", "", "expected a path without NUL bytes"))
    sup, sup_file = _read_supervisor(directory, issues)
    address = _broker_address(broker, sup, sup_file or directory, issues)
    configs = _validate_files(_classify(files), issues, import_jobs=import_jobs)
    if not configs.jobs and not issues:
        issues.append(ConfigIssue(str(directory), "", _no_jobs(directory)))
    _route(configs, issues)
    for backend in sorted(set(configs.targets) - set(configs.store_files)):
        issues.extend(_check_store(backend, None, origin=configs.first_user[backend]))
    _check_prometheus(sup, sup_file or directory, issues)
    if not issues:
        issues.extend(_check_outputs(configs, _out_dir(out_dir, sup), sup_file, out_dir))
    if issues:
        raise ConfigError(issues)
    assert address is not None
    return _build(directory, files, sup, sup_file, address, configs, out_dir, control)


# -- read and classify ---------------------------------------------------------------------


def _toml_files(directory: Path) -> list[Path]:
    """Every `*.toml` of the directory, sorted; a missing directory is the only issue."""
    if not directory.exists():
        raise ConfigError([ConfigIssue(str(directory), "", "no such directory")])
    if not directory.is_dir():
        raise ConfigError([ConfigIssue(str(directory), "", "is not a directory")])
    return sorted(p for p in directory.glob("*.toml") if p.is_file())


def _no_jobs(directory: Path) -> str:
    """What to say for a directory without jobs: where job configs are, if they are below it
    (`daq up configs/` when they live in configs/examples)."""
    found: list[str] = []
    for sub in sorted(p for p in [*directory.glob("*/"), *directory.glob("*/*/")] if p.is_dir()):
        for path in sorted(sub.glob("*.toml")):
            try:
                if "daq_job_type" in read_toml(path):
                    found.append(str(sub))
                    break
            except ConfigError:
                continue
    message = "no source job configs (*.toml with daq_job_type) in this directory"
    if found:
        message += f"; did you mean {' or '.join(found[:3])}?"
    return message


def _read_supervisor(
    directory: Path, issues: list[ConfigIssue]
) -> tuple[SupervisorConfig, Path | None]:
    """`supervisor.toml` if there is one (its defaults if not, or if it is invalid)."""
    sup_file = directory / SUPERVISOR_FILE
    if not sup_file.is_file():
        return SupervisorConfig(), None
    try:
        return convert(read_toml(sup_file), SupervisorConfig, sup_file), sup_file
    except ConfigError as exc:
        issues.extend(exc.issues)
        return SupervisorConfig(), sup_file


def _broker_address(
    broker: str | None, sup: SupervisorConfig, where: Path, issues: list[ConfigIssue]
) -> BrokerAddress | None:
    """The broker's address: --broker, else supervisor.toml's, else the default."""
    try:
        return BrokerAddress.parse(broker or sup.broker or None)
    except AddressError as exc:
        issues.append(
            ConfigIssue("--broker" if broker else str(where), "" if broker else "broker", str(exc))
        )
        return None


def _classify(files: list[Path]) -> list[_File]:
    """Read every config but supervisor.toml once: a store config (by its seed store type) or
    a source job; a file that is neither usable carries its issues."""
    from enrgdaq_core.stores import SEED_STORE_TYPES

    out: list[_File] = []
    store_files: dict[str, Path] = {}
    for path in files:
        if path.name == SUPERVISOR_FILE:
            continue
        try:
            data = read_toml(path)
        except ConfigError as exc:
            out.append(_File(path, {}, issues=list(exc.issues)))
            continue
        backend = _store_type(data)
        if backend == "":
            known = ", ".join(SEED_STORE_TYPES)
            message = f"unknown store type {data['daq_job_type']!r} (known: {known})"
            out.append(_File(path, data, issues=[ConfigIssue(str(path), "daq_job_type", message)]))
        elif backend is not None and backend in store_files:
            message = f"a second {backend} store config (the first is {store_files[backend]})"
            out.append(_File(path, data, issues=[ConfigIssue(str(path), "daq_job_type", message)]))
        else:
            if backend is not None:
                store_files[backend] = path
            out.append(_File(path, data, backend))
    return out


# -- validate ------------------------------------------------------------------------------


def _validate_files(
    files: list[_File], issues: list[ConfigIssue], *, import_jobs: bool = True
) -> _Configs:
    """Check each file in order: a store as its process will build it, a job by loading it."""
    from enrgdaq_core.jobs import load_job

    configs = _Configs()
    for f in files:
        if f.issues:
            issues.extend(f.issues)
        elif f.backend is not None:
            configs.store_files[f.backend] = f
            issues.extend(_check_store(f.backend, f.path, data=f.data))
        else:
            try:
                job = load_job(f.path, data=f.data, import_custom=import_jobs)
                configs.jobs.append((f.path, job))
            except ConfigError as exc:
                issues.extend(exc.issues)
    return configs


def _route(configs: _Configs, issues: list[ConfigIssue]) -> None:
    """Unique, unreserved source names; which backends each source sends to."""
    from enrgdaq_core.stores import process_refusal

    names: dict[str, Path] = {}
    for path, job in configs.jobs:
        key = "name" if job.config.name else ""
        if job.name in RESERVED_NAMES or job.name.startswith(STORE_PREFIX):
            issues.append(
                ConfigIssue(
                    str(path),
                    key,
                    f"source name {job.name!r} is reserved (broker, supervisor, store-*)",
                )
            )
        elif job.name in names:
            issues.append(
                ConfigIssue(
                    str(path),
                    key,
                    f"source name {job.name!r} is already used by {names[job.name]}",
                )
            )
        names[job.name] = path
        for backend in job.config.store_config.backends():
            refusal = process_refusal(backend)  # in-process only (memory)
            if refusal is not None:
                issues.append(ConfigIssue(str(path), f"store_config.{backend}", refusal))
                continue
            configs.targets.setdefault(backend, []).append(job.name)
            configs.first_user.setdefault(backend, path)


def _check_prometheus(sup: SupervisorConfig, where: Path, issues: list[ConfigIssue]) -> None:
    if not sup.stats.prometheus:
        return
    from enrgdaq_core.prometheus import parse_listen

    try:
        parse_listen(sup.stats.prometheus)
    except ValueError as exc:
        issues.append(ConfigIssue(str(where), "stats.prometheus", str(exc)))


def _check_store(
    backend: str,
    path: Path | None,
    origin: Path | None = None,
    *,
    data: dict[str, Any] | None = None,
) -> list[ConfigIssue]:
    """Build the backend as its store process will, and check that its server is there.

    `data` is the store TOML at `path` as already read (not read again).
    """
    from enrgdaq_core.stores.options import build_backend

    where = str(path or origin or "")
    key = "" if path is not None else f"store_config.{backend}"
    try:
        be, _ = build_backend(backend, config_file=path, config=data)
    except ConfigError as exc:
        return list(exc.issues)
    except Exception as exc:  # the backend module cannot load (a library missing)
        return [ConfigIssue(where, key, f"the {backend} store cannot load: {exc}")]
    try:
        be.check()
    except Exception as exc:  # StoreUnavailable: the message names host, port, how to start
        return [ConfigIssue(where, key, str(exc))]
    finally:
        try:
            be.close()
        except Exception:
            pass
    return []


def _out_dir(given: str | None, sup: SupervisorConfig) -> Path:
    return Path(given or sup.out_dir).expanduser().resolve()


def _check_outputs(
    configs: _Configs, out: Path, sup_file: Path | None, given: str | None
) -> list[ConfigIssue]:
    """Every file a file store would open first, and out_dir, checked before anything starts:
    one issue per path that cannot be written, naming the store, the path and the reason."""
    from enrgdaq_core.stores.options import build_backend
    from enrgdaq_core.stores.outputs import output_problem, source_output

    problem = output_problem(out, directory=True)
    if problem is not None:
        where = ("--out-dir", "") if given else (str(sup_file or "supervisor.toml"), "out_dir")
        return [ConfigIssue(*where, f"daq up cannot write {out}: {problem}")]
    issues: list[ConfigIssue] = []
    backends: dict[str, Any] = {}
    for path, job in configs.jobs:
        for name in job.config.store_config.backends():
            if name not in backends:
                f = configs.store_files.get(name)
                own = f.data if f is not None else {}
                flags = {} if "out_dir" in own else {"out_dir": str(out)}  # as _store_specs
                cfg = f.path if f is not None else None
                backends[name], _ = build_backend(name, config_file=cfg, config=own, flags=flags)
            backend = backends[name]
            if not backend.extension:
                continue
            settings = getattr(job.config.store_config, name)
            target = source_output(backend, settings, source=job.name, tag=job.config.tag)
            problem = output_problem(target)
            if problem is not None:
                message = f"{store_piece(name)} cannot write {target}: {problem}"
                issues.append(ConfigIssue(str(path), f"store_config.{name}.file_path", message))
    return issues


# -- build ---------------------------------------------------------------------------------


def _build(
    directory: Path,
    files: list[Path],
    sup: SupervisorConfig,
    sup_file: Path | None,
    address: BrokerAddress,
    configs: _Configs,
    out_dir: str | None,
    control: str | None,
) -> Plan:
    """The plan of a valid directory: the broker, the stores some source sends to, sources."""
    from enrgdaq_core.envelope import node_name
    from enrgdaq_core.jobs import UncheckedJob
    from enrgdaq_core.supervisor.control import default_endpoint

    out = _out_dir(out_dir, sup)
    daq = daq_command()
    warnings = [
        f"{path}: job type {job.config.daq_job_type!r} not imported, so only the keys every "
        "job has were checked (--import-jobs imports it, running its code)"
        for path, job in configs.jobs
        if isinstance(job, UncheckedJob)
    ]
    broker_spec = ChildSpec(
        "broker", "broker", [*daq, "broker", "--broker", address.base, "--name", "broker"]
    )
    return Plan(
        directory=directory,
        config=sup,
        config_file=sup_file,
        address=address,
        control=control or sup.control or default_endpoint(address),
        out_dir=out,
        node=sup.node or node_name(),
        broker=broker_spec,
        stores=_store_specs(daq, address, out, configs, warnings),
        sources=[_source_spec(daq, address, path, job) for path, job in configs.jobs],
        files=files,
        warnings=warnings,
    )


def _store_specs(
    daq: list[str], address: BrokerAddress, out: Path, configs: _Configs, warnings: list[str]
) -> list[ChildSpec]:
    """One store process per backend some source sends to; a store file nobody uses warns."""
    stores: list[ChildSpec] = []
    for backend in sorted(set(configs.targets) | set(configs.store_files)):
        sources = configs.targets.get(backend, [])
        store_file = configs.store_files.get(backend)
        cfg = store_file.path if store_file is not None else None
        if not sources:
            warnings.append(f"{cfg}: no source sends to the {backend} store; not started")
            continue
        piece = store_piece(backend)
        argv = [*daq, "store", backend, "--name", piece, "--broker", address.base]
        for src in sources:
            argv += ["--from", f"data.{src}"]
        if cfg is not None:
            argv += ["--config", str(cfg.resolve())]
        own = store_file.data if store_file is not None else {}
        if "out_dir" not in own:
            argv += ["--out-dir", str(out)]
        overwrite = _overwrite_sources(configs, backend)
        if overwrite and "overwrite_sources" not in own:
            # a message's `overwrite` is never honoured: the store is told which of its
            # sources' own (trusted) configs ask for it
            argv += ["-O", "overwrite_sources=" + json.dumps(overwrite)]
        argv += ["--state", str(out / STATE_DIR / f"{piece}.json")]
        stores.append(
            ChildSpec(
                piece,
                "store",
                argv,
                config=cfg,
                backend=backend,
                topics=tuple(f"data.{s}" for s in sources),
                snapshot=backend == "raw" and "snapshot" not in own,
            )
        )
    return stores


def _overwrite_sources(configs: _Configs, backend: str) -> list[str]:
    """The sources whose `[store_config.<backend>]` says `overwrite = true`."""
    return [
        job.name
        for _, job in configs.jobs
        if getattr(getattr(job.config.store_config, backend, None), "overwrite", False)
    ]


def _source_spec(daq: list[str], address: BrokerAddress, path: Path, job: Any) -> ChildSpec:
    """One source job: `daq job run FILE` publishing to the broker."""
    argv = [
        *daq,
        "job",
        "run",
        str(path.resolve()),
        "--name",
        job.name,
        "-o",
        "broker",
        "--broker",
        address.base,
    ]
    return ChildSpec(
        job.name,
        "job",
        argv,
        restart=job.config.restart,
        config=path,
        topics=(f"data.{job.name}",),
        stores=tuple(store_piece(b) for b in job.config.store_config.backends()),
        interval=job.interval,
    )
