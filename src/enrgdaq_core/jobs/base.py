"""What a source job is: a typed config and a `step()` that returns data.

A lab writes one subclass (config struct + step) and no glue: the runtime (`runtime.py`)
stamps, publishes, paces, reports and stops it. docs/extending.md shows a whole job type.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING, Annotated, Any, ClassVar, Literal

import msgspec

from enrgdaq_core.store_config import StoreConfig
from enrgdaq_core.transport import SOURCE_QUEUE_MB

__all__ = ["MAX_INTERVAL", "Interval", "Job", "JobConfig", "Paced", "RemoteConfig", "as_outputs"]

MAX_INTERVAL = 7 * 86400.0
"""The longest `interval_seconds` (a week): longer waits overflow the platform's timers."""
Interval = Annotated[float, msgspec.Meta(ge=0, le=MAX_INTERVAL)]
"""`interval_seconds` of a job whose step may block (0: back to back)."""
Paced = Annotated[float, msgspec.Meta(gt=0, le=MAX_INTERVAL)]
"""`interval_seconds` of a job whose step returns at once: 0 would run it unpaced."""

if TYPE_CHECKING:
    from enrgdaq_core.transport import BrokerAddress

QueueMB = Annotated[float, msgspec.Meta(gt=0, le=1 << 20)]
"""`broker_queue_mb`: MiB a source holds while the broker is away (at most 1 TiB)."""


class RemoteConfig(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """Accepted for configs written for the seed system; bridges use it across hosts."""

    remote_topic: str | None = "DAQ"
    remote_disable: bool | None = False
    drop_remote_messages: bool | None = False


class JobConfig(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """The keys every job's TOML file has; a job type's `Config` subclasses it with its own.

    Strict (unknown keys are errors naming the file and key), so a typo never silently falls
    back to a default. Keys (docs/configuration.md has the full reference):

    - `daq_job_type`: the job type: a built-in (`sensor`), a seed name (`DAQJobTest`), an
      `enrgdaq.jobs` entry point, or `module:Class`.
    - `name`: the source name, in topics (`data.<name>`) and headers; default the file's stem.
    - `interval_seconds`: seconds between the starts of two steps, finite, 0 to one week; 0
      runs steps back to back (a device job whose `step` blocks until its next trigger). A job
      type whose `step` does not block (every built-in one) makes it `Paced` (> 0).
    - `tag`: a label stamped on every message (stores may put it in file names).
    - `verbosity`: the job's log level.
    - `restart`: what `daq up` does when the process exits: always, on-failure, never.
    - `broker_queue_mb`: MiB of messages the job holds while the broker is away, delivered
      when it is back; beyond it messages are dropped and counted (`dropped` in its stats).
    - `store_config`: `[store_config.<backend>]` tables, carried in every header so the
      stores know where this source's data goes.
    - `remote_config`, `daq_job_unique_id`: accepted for seed configs; not used.
    """

    daq_job_type: str
    name: str = ""  # default: the config file's stem
    interval_seconds: Interval = 1.0
    tag: str = ""
    verbosity: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    restart: Literal["always", "on-failure", "never"] = "always"
    broker_queue_mb: QueueMB = SOURCE_QUEUE_MB
    store_config: StoreConfig = msgspec.field(default_factory=StoreConfig)
    remote_config: RemoteConfig = msgspec.field(default_factory=RemoteConfig)
    daq_job_unique_id: str | None = None


class Job:
    """Base class of source jobs. Subclasses set `type_name`, `Config` and implement `step`.

    The runtime calls `start()` once, then `step()` every `interval` seconds until it is told
    to stop, then `stop()` once, also when a step raised; the job never publishes, paces or
    handles signals itself, so the same class runs under `daq job run`, `daq up` and a test
    calling `step()` directly.

    Class attributes:

    - `type_name`: the `daq_job_type` that names it (`daq job list` shows it). A built-in's
      must equal its key in `jobs/__init__.py`; a lab's class is found by `module:Class` or
      its entry point name, and `type_name` is then only shown.
    - `aliases`: other names it answers to (the seed's class names, `DAQJobTest`).
    - `description`: one line for `daq job list` and the head of `daq job new`'s file.
    - `Config`: its config struct, a `JobConfig` subclass; the TOML file is validated
      against it and the instance is `self.config`.
    - `broker`: the broker address (`--broker`), set by `daq job run` before `start()`, for
      a job that also subscribes (the alerts job); None where nobody sets it (a test).

    Parameters
    ----------
    config:
        The validated config (an instance of `Config`).
    name:
        The source name (topic `data.<name>`): `config.name`, else the file's stem.
    """

    type_name: ClassVar[str] = ""
    aliases: ClassVar[tuple[str, ...]] = ()
    description: ClassVar[str] = ""
    Config: ClassVar[type[JobConfig]] = JobConfig
    broker: BrokerAddress | None = None

    def __init__(self, config: JobConfig, name: str) -> None:
        self.config = config
        self.name = name

    @property
    def interval(self) -> float:
        """Seconds between steps; 0 runs steps back to back."""
        return max(0.0, self.config.interval_seconds)

    def start(self) -> None:
        """Open hardware, allocate buffers: called once before the first step."""

    def step(self) -> Any:
        """Produce this interval's data: a table, a record batch, bytes, a list of them, or None.

        A `pyarrow.Table` or `RecordBatch` becomes one TABLE message, `bytes` (or a bytearray,
        a memoryview) one RAW message, a list or tuple one message per item in order, None
        nothing (no data this time). Large `bytes` and read-only memoryviews are sent without
        a copy, so do not change the memory under a view you returned (a bytearray is
        copied). An exception ends the run: the runtime sends end-of-stream, calls `stop()`
        and the process exits non-zero (`daq up` restarts it per `restart`).
        """
        raise NotImplementedError

    def stop(self) -> None:
        """Release what `start` took: called once, also after a failed step."""


def as_outputs(result: Any) -> Iterable[Any]:
    """The messages one `step()` result stands for, in order (see `Job.step`)."""
    if result is None:
        return ()
    if isinstance(result, list | tuple):
        return result
    return (result,)
