"""enrgdaq core: the library every `daq` command is built on.

Nothing here imports typer or rich (except `render`, used only by the CLI), and nothing
imports pyarrow, uproot or h5py at module load: they are imported where a table is touched.

Where the public pieces live (each name has one import path; nothing is re-exported here;
a module's `__all__` is its public API, docs/extending.md shows them in use):

- `enrgdaq_core.jobs.base`: `Job`, `JobConfig`, the class a lab's job type subclasses;
  `enrgdaq_core.jobs`: `load_job`, `resolve`, `names` (the job type registry);
  `enrgdaq_core.jobs.runtime`: `run_job`, the loop that drives a job.
- `enrgdaq_core.envelope`: `Envelope`, `Header`, `Kind`, `Source`, `EnvelopeError`, the
  message and its codec; `enrgdaq_core.tables`: Arrow IPC payloads.
- `enrgdaq_core.transport`: `BrokerAddress`, `Publisher`, `Subscriber`,
  `TelemetryPublisher`, `make_socket`; `enrgdaq_core.broker`: `Broker`;
  `enrgdaq_core.broker_client`: `query`, `wait_for_subscriptions`;
  `enrgdaq_core.reqrep`: request/reply.
- `enrgdaq_core.channels`: `Input`/`Output` and `open_input`/`open_output` (broker, pipe,
  file); `enrgdaq_core.stream`: `StreamReader`, `StreamWriter` (pipes, files);
  `enrgdaq_core.runfile`: raw run files and their index; `enrgdaq_core.replay`: `Replay`.
- `enrgdaq_core.stores.base`: the store writer protocols and `Backend`;
  `enrgdaq_core.store_config`: `BACKENDS` (the one table of backends) and the
  `[store_config.<backend>]` structs; `enrgdaq_core.stores.runner`: `StoreRunner`;
  `enrgdaq_core.stores.memory`: an in-process store for tests and notebooks.
- `enrgdaq_core.stats`: `StatsReport`, `SequenceTracker`, `Meter`; `enrgdaq_core.monitor`:
  `Monitor`; `enrgdaq_core.stats_history`: `read_history`.
- `enrgdaq_core.config`: `load`, `convert`, `ConfigError` (strict TOML);
  `enrgdaq_core.signals`: `StopFlag`, `stop_on_signals`; `enrgdaq_core.timefmt`: time as text.
"""

__version__ = "0.1.0"
