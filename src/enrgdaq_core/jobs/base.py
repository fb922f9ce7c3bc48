"""What a source job is: a typed config and a `step()` that returns data.

A lab writes one subclass (config struct + step) and no glue: the runtime (`runtime.py`)
stamps, publishes, paces, reports and stops it.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING, Any, ClassVar, Literal

import msgspec

from enrgdaq_core.store_config import StoreConfig

if TYPE_CHECKING:
    from enrgdaq_core.transport import BrokerAddress


class RemoteConfig(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """Accepted for configs written for the seed system; bridges use it across hosts."""

    remote_topic: str | None = "DAQ"
    remote_disable: bool | None = False
    drop_remote_messages: bool | None = False


class JobConfig(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    daq_job_type: str
    name: str = ""  # default: the config file's stem
    interval_seconds: float = msgspec.field(default=1.0)
    tag: str = ""
    verbosity: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    restart: Literal["always", "on-failure", "never"] = "always"
    store_config: StoreConfig = msgspec.field(default_factory=StoreConfig)
    remote_config: RemoteConfig = msgspec.field(default_factory=RemoteConfig)
    daq_job_unique_id: str | None = None


Output = "pa.Table | pa.RecordBatch | bytes | memoryview"


class Job:
    """Base class of source jobs. Subclasses set `type_name`, `Config` and implement `step`."""

    type_name: ClassVar[str] = ""  # its `daq_job_type`; the registry of built-ins reads it
    aliases: ClassVar[tuple[str, ...]] = ()  # other names it answers to (the seed's classes)
    description: ClassVar[str] = ""
    Config: ClassVar[type[JobConfig]] = JobConfig
    broker: BrokerAddress | None = None  # set by `daq job run`: for jobs that also subscribe

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
        """Produce this interval's data: a table, a record batch, bytes, a list of them, or None."""
        raise NotImplementedError

    def stop(self) -> None:
        """Release what `start` took: called once, also after a failed step."""


def as_outputs(result: Any) -> Iterable[Any]:
    if result is None:
        return ()
    if isinstance(result, list | tuple):
        return result
    return (result,)
