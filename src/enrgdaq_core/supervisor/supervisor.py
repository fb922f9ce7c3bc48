"""The main loop of `daq up`: start in order, keep running, stop in order.

Start: the broker; then the stores; a source starts only once every store that takes its data
has subscribed to its topic at the broker (so the ZMQ slow-joiner effect loses nothing); the
run begins with the first source.

Running: one thread polls the stats stream (the broker's monitor endpoint) and the control
socket, reaps children and restarts them per their policy with backoff, and kills and
restarts a child whose heartbeats (its stats reports) stopped: hung, not dead. Each piece is
judged by its own heartbeat, which reaches us apart from the data path (the broker's telemetry
endpoint), so a store that stalls the data path is the one found silent. The broker is judged
by its own liveness: its heartbeat, or else an answer on its control endpoint (a thread of its
own). While the broker itself is down or hung, nobody's heartbeats can arrive, so only the
broker is judged.

Stop (SIGINT/SIGTERM): sources first (SIGTERM: each sends end-of-stream and exits), then the
stores once they have seen every source's end-of-stream (they flush and close), then the
broker. A second signal stops everything at once; a third kills.

Children are spawned from this (main) thread only: PR_SET_PDEATHSIG, which the children use
to notice a kill -9 of the supervisor, fires when the spawning *thread* ends. Without the
supervisor, they stop in the same order by themselves (enrgdaq_core.signals), and the broker,
the last one out, ends the run as aborted (supervisor/orphan.py).
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import zmq

from enrgdaq_core.broker_client import query
from enrgdaq_core.envelope import Kind, Source
from enrgdaq_core.monitor import Monitor, StatsFeed
from enrgdaq_core.reqrep import RemoteError
from enrgdaq_core.stats import ProcessSampler, StatsReport
from enrgdaq_core.stats_history import StatsRecorder
from enrgdaq_core.supervisor import status as status_view
from enrgdaq_core.supervisor.commands import EXPECTED_ERRORS, SupervisorCommands
from enrgdaq_core.supervisor.control import ControlServer
from enrgdaq_core.supervisor.orphan import last_one_out_env
from enrgdaq_core.supervisor.plan import Plan
from enrgdaq_core.supervisor.process import Child, LineSink
from enrgdaq_core.supervisor.runs import RunBook, RunRecord
from enrgdaq_core.transport import TelemetryPublisher

log = logging.getLogger("enrgdaq.supervisor")

POLL_SECONDS = 0.25  # the loop's tick: reaping, restarts and timers are this fine
BROKER_READY_TIMEOUT = 30.0

# Restarts we cause on purpose skip the backoff: they are not failures.
_IMMEDIATE = {"requested"}


_STALL = 2.5  # s between two steps of our loop (a tick is POLL_SECONDS) that mean it stalled
_STALL_GRACE = 2.0  # s after such a stall before any piece is judged: queued reports are read


class Supervisor:
    def __init__(
        self,
        plan: Plan,
        *,
        console: LineSink | None = None,
        on_tick: Callable[[Supervisor], None] | None = None,
        tick_interval: float = 1.0,
    ) -> None:
        self.plan = plan
        cfg = plan.config
        self.children: dict[str, Child] = {
            spec.name: Child(
                spec,
                log_dir=plan.log_dir,
                restart=cfg.restart,
                console=console,
                log_max_bytes=int(cfg.log_max_mb * 1e6),
            )
            for spec in plan.children
        }
        self.broker = self.children[plan.broker.name]
        self.stores = [self.children[s.name] for s in plan.stores]
        self.sources = [self.children[s.name] for s in plan.sources]
        self.monitor = Monitor(stale_after=max(cfg.restart.heartbeat_timeout, 5.0))
        self.runbook = RunBook(plan.out_dir, cfg.run.runs_file, cfg.run.snapshot)
        self.on_tick = on_tick
        self.tick_interval = tick_interval
        self.env = dict(os.environ)
        self.env["DAQ_NODE"] = plan.node
        self.env.pop("DAQ_BROKER", None)  # every child gets --broker explicitly
        self.phase = "starting"
        self.started_at = time.monotonic()
        self.run_number = 0
        self.record: RunRecord | None = None
        self.signals = 0
        self.forced = False
        self.broker_ready_at = 0.0  # monotonic time the current broker answered; 0: not yet
        self._broker_answered = 0.0  # when its control endpoint last answered a liveness check
        self._broker_asked = 0.0
        # No piece is judged before this (monotonic s): set after our own loop stalled (a
        # SIGSTOP, a swapped-out machine), when every report we hold is old through no fault
        # of the pieces, until the queued ones have been read.
        self._judge_from = 0.0
        self._last_step = time.monotonic()
        self.gate_since = 0.0
        self._feed: StatsFeed | None = None
        self._control: ControlServer | None = None
        self._poller = zmq.Poller()
        self._next_stats = 0.0
        self._next_tick = 0.0
        self._next_report = 0.0
        self._telemetry: TelemetryPublisher | None = None
        self._stats_source = Source("supervisor", topic="stats.supervisor")
        self._sampler = ProcessSampler()
        self._deferred: Callable[[], dict[str, Any] | None] | None = None
        self._snapshot_dir: Path | None = None
        self._history: StatsRecorder | None = None
        self._exporter: Any = None  # prometheus.Exporter, while serving /metrics

    # -- public ----------------------------------------------------------------------------

    def request_stop(self) -> None:
        """From a signal handler: the first asks for the ordered stop, later ones force it."""
        self.signals += 1

    def run(self) -> int:
        """Start everything, supervise until asked to stop, stop in order; the exit code."""
        try:
            self._control = ControlServer(
                self.plan.control, SupervisorCommands(self).handlers, expected=EXPECTED_ERRORS
            )
            self._poller.register(self._control.socket, zmq.POLLIN)
            self.run_number = self.runbook.next_number(self.plan.config.run.first)
            self._startup()
            while not self.signals:
                self._step()
            return self._shutdown()
        finally:
            self._close()

    # -- start -----------------------------------------------------------------------------

    def _startup(self) -> None:
        self.plan.out_dir.mkdir(parents=True, exist_ok=True)
        self._open_metrics()
        for w in self.plan.warnings:
            log.warning("%s", w)
        log.info(
            "daq up %s: node %s, broker %s, control %s, out %s, run %d",
            self.plan.directory,
            self.plan.node,
            self.plan.address.base,
            self.plan.control,
            self.plan.out_dir,
            self.run_number,
        )
        self._snapshot()
        # The stores connect while the broker binds (ZMQ connects before a bind are fine):
        # their subscriptions arrive as soon as it listens. Sources wait for those.
        self._start(self.broker)
        self._feed = StatsFeed(self.plan.address, self.monitor)
        self._poller.register(self._feed.socket, zmq.POLLIN)
        self._telemetry = TelemetryPublisher(self.plan.address)
        for child in self.stores:
            self._start(child)
        deadline = time.monotonic() + BROKER_READY_TIMEOUT
        while not self.signals and not self.broker_ready_at:
            if time.monotonic() > deadline:
                raise ConnectionError(
                    f"the broker did not come up at {self.plan.address.base} "
                    f"(see {self.broker.log.path})"
                )
            self._step(0.05)
        self.gate_since = time.monotonic()
        self.phase = "running"

    def _open_metrics(self) -> None:
        """The stats history and the Prometheus exporter: both read the supervisor's monitor."""
        stats = self.plan.config.stats
        history = self.plan.out_path(stats.history)
        if history is not None:
            self._history = StatsRecorder(history)
            self._history.follow(self.monitor)
            log.info("stats history: %s", history)
        if stats.prometheus:
            from enrgdaq_core.prometheus import serve

            try:
                self._exporter = serve(self.monitor, stats.prometheus)
            except OSError as exc:
                raise ConnectionError(
                    f"cannot serve Prometheus metrics on {stats.prometheus}: {exc}"
                ) from None
            log.info("Prometheus metrics at %s", self._exporter.url)

    @property
    def _grace(self) -> float:
        """How long a child may take to act on SIGTERM before SIGKILL."""
        return self.plan.config.shutdown_timeout

    def _snapshot(self) -> None:
        if self.plan.config.run.snapshot:
            self._snapshot_dir = self.runbook.snapshot_configs(self.run_number, self.plan.files)

    def _begin_run(self) -> None:
        self.record = self.runbook.begin(
            self.run_number, node=self.plan.node, config_dir=self.plan.directory.resolve()
        )
        log.info("run %d started", self.run_number)

    def _start(self, child: Child) -> None:
        argv = list(child.spec.argv)
        env = self.env
        if child.spec.role == "job":
            argv += ["--run", str(self.run_number)]
            env = {**env, "DAQ_RUN": str(self.run_number)}
            if self.record is None:
                self._begin_run()
        elif child.spec.snapshot and self._snapshot_dir is not None:
            argv += ["-O", f"snapshot={self._snapshot_dir}"]
        elif child is self.broker:  # the last one out if we die: it ends the run then
            env = {**env, **last_one_out_env(self.plan)}
        child.spawn(argv, env)
        if child is self.broker:
            self.broker_ready_at = self._broker_answered = 0.0

    # -- the loop --------------------------------------------------------------------------

    def _step(self, timeout: float = POLL_SECONDS) -> None:
        try:
            ready = dict(self._poller.poll(int(timeout * 1000)))
        except zmq.ZMQError:
            ready = {}
        if self._feed is not None and self._feed.socket in ready:
            self._feed.poll(0)
        if self._control is not None and self._control.socket in ready and not self._deferred:
            self._serve_control()
        if self._deferred is not None:
            answer = self._deferred()
            if answer is not None:
                self._deferred = None
                assert self._control is not None
                self._control.reply(answer)
        now = time.monotonic()
        if now - self._last_step > _STALL:
            self._judge_from = now + _STALL_GRACE
            log.info(
                "supervisor loop stalled for %.1fs: judging no heartbeat for %gs",
                now - self._last_step,
                _STALL_GRACE,
            )
        self._last_step = now
        self._supervise(now)
        if self.phase == "running":
            self._gate_sources(now)
        if now >= self._next_stats:
            self._next_stats = now + self.plan.config.stats.interval
            status_view.write_stats_files(self)
        if self._telemetry is not None and now >= self._next_report:
            self._next_report = now + 1.0
            self._report()
        if self.on_tick is not None and now >= self._next_tick:
            self._next_tick = now + self.tick_interval
            self.on_tick(self)

    def _supervise(self, now: float) -> None:
        stopping = self.phase in ("stopping", "stopped")
        for child in self.children.values():
            code = child.reap()
            if code is not None:
                self._exited(child, code, stopping)
            elif child.alive and not stopping:
                if child.state == "stopping" and now - child.stop_sent_at > self._grace:
                    log.warning(
                        "%s: ignored SIGTERM for %.0fs; killing it", child.name, self._grace
                    )
                    child.kill()
                self._check_heartbeat(child, now)
            if child.state == "backoff" and not stopping and now >= child.restart_at:
                self._start(child)
        if self.broker.alive and not self.broker_ready_at:
            try:
                query(self.plan.address, "status", timeout=0.2)
                self.broker_ready_at = time.monotonic()
                log.info("broker ready at %s", self.plan.address.base)
            except (TimeoutError, RemoteError):
                pass  # not up yet (or not answering sensibly yet): asked again next step

    def _exited(self, child: Child, code: int, stopping: bool) -> None:
        how = child.last_exit
        if stopping or not child.wanted:
            child.state = "stopped" if (code == 0 or child.kill_reason) else "exited"
            log.info("%s: %s", child.name, how)
            return
        if child.wants_restart(code):
            reason = child.kill_reason or ("exited" if code == 0 else "crashed")
            if reason in _IMMEDIATE:
                child.restart_at = time.monotonic()
                child.pending_reason = reason
                child.state = "backoff"
                delay = 0.0
            else:
                delay = child.schedule_restart(reason)
            log.warning("%s: %s; restarting in %.1fs (%s)", child.name, how, delay, reason)
        else:
            child.state = "exited" if code == 0 else "failed"
            child.wanted = False
            log.warning("%s: %s; not restarted (restart = %r)", child.name, how, child.spec.restart)

    def _report(self) -> None:
        """Our own heartbeat on stats.supervisor: `daq stats` shows the supervisor too."""
        assert self._telemetry is not None
        report = StatsReport(
            piece="supervisor",
            role="supervisor",
            node=self.plan.node,
            restarts=sum(c.restarts for c in self.children.values()),
            extra={
                "phase": self.phase,
                "run": self.run_number,
                "children": {
                    c.name: {"state": c.state, "pid": c.pid, "restarts": c.restarts}
                    for c in self.children.values()
                },
            },
            **self._sampler.sample(),
        )
        src = self._stats_source
        self._telemetry.send(src.control(Kind.STATS, src.topic, report))

    def _check_heartbeat(self, child: Child, now: float) -> None:
        settings = self.plan.config.restart
        if not settings.heartbeat_timeout or child.state != "running" or now < self._judge_from:
            return
        # Without a broker no report can arrive: judge the others only while it works.
        if child is not self.broker and (not self.broker_ready_at or self._broker_stale(now)):
            return
        view = self.monitor.get(self.plan.node, child.name)
        timeout = settings.heartbeat_timeout + child.spec.interval
        if child is self.broker and self.broker_ready_at:
            since = self._broker_seen(now)
        elif view is not None and view.report.pid == child.pid:
            since = view.last_seen
        else:
            since = child.started_at
            timeout = max(timeout, settings.start_timeout)
        if child is not self.broker:
            since = max(since, self.broker_ready_at)
            # A piece's reports pass the broker: its silence counts only up to the broker's
            # last sign of life, so a stalled broker never makes its healthy pieces look hung.
            silent = min(now, self._broker_seen(now)) - since
        else:
            silent = now - since
        if silent > timeout:
            log.warning(
                "%s: no heartbeat for %.1fs (pid %s): hung; killing it",
                child.name,
                silent,
                child.pid,
            )
            child.kill("hung")

    def _broker_stale(self, now: float) -> bool:
        return now - self._broker_seen(now) > 3.0

    def _broker_seen(self, now: float) -> float:
        """When the current broker last showed that it lives: its heartbeat, else an answer
        of its control endpoint (asked at most once a second while the heartbeat is late)."""
        view = self.monitor.get(self.plan.node, self.broker.name)
        seen = max(self.broker_ready_at, self._broker_answered)
        if view is not None and view.report.pid == self.broker.pid:
            seen = max(seen, view.last_seen)
        if now - seen > 2.0 and now - self._broker_asked >= 1.0:
            self._broker_asked = now
            try:
                query(self.plan.address, "status", timeout=0.2)
                self._broker_answered = seen = time.monotonic()
            except (TimeoutError, RemoteError):
                pass
        return seen

    def _gate_sources(self, now: float) -> None:
        """Start each waiting source once every store that takes its data has subscribed."""
        waiting = [c for c in self.sources if c.state == "new"]
        if not waiting or not self.broker_ready_at:
            return
        try:
            subs = query(self.plan.address, "subscriptions", timeout=1.0)
        except (TimeoutError, RemoteError):
            return
        counts: dict[str, int] = subs.get("subscribers") or {
            s: 1 for s in subs.get("subscriptions", [])
        }
        late = now - self.gate_since > self.plan.config.store_start_timeout
        for child in waiting:
            need = len(child.spec.stores)
            have = min(
                (counts.get(f"{t}$", 0) for t in child.spec.topics), default=need
            )  # `$`: an exact (terminated) subscription, as the broker lists it
            if have >= need:
                self._start(child)
            elif late:
                log.warning(
                    "%s: starting although only %d of its %d store(s) subscribed to %s after "
                    "%.0fs: its data to the missing ones is lost until they do",
                    child.name,
                    have,
                    need,
                    ", ".join(child.spec.topics),
                    self.plan.config.store_start_timeout,
                )
                self._start(child)

    # -- stop ------------------------------------------------------------------------------

    def _shutdown(self) -> int:
        self.phase = "stopping"
        log.info("stopping: sources, then stores, then the broker")
        for child in self.children.values():
            child.wanted = False
            if child.state == "backoff":
                child.state = "stopped"
        timeout = self.plan.config.shutdown_timeout
        running = [c for c in self.sources if c.alive]
        self._stop_group(self.sources, timeout)
        sources_done = time.time_ns()
        # only the sources that just ended cleanly sent an end-of-stream to wait for
        ended = {c.name for c in running if c.last_exit == "exit 0"}
        self._drain_stores(sources_done, ended, timeout)
        self._stop_group(self.stores, timeout)
        self._stop_group([self.broker], timeout)
        if self.record is not None:
            self.runbook.end(self.record)
            log.info("run %d stopped", self.record.run)
        self.phase = "stopped"
        status_view.write_stats_files(self)
        if self.on_tick is not None:
            self.on_tick(self)
        if self.forced:
            log.warning("stopped by force: buffered data may be lost")
            return 1
        log.info("all stopped")
        return 0

    def _stop_group(self, group: list[Child], timeout: float) -> None:
        for child in group:
            child.terminate("stop")
        deadline = time.monotonic() + timeout
        while any(c.alive for c in group):
            if self.signals >= 2 and not self.forced:
                self._force()
            if self.signals >= 3:
                for c in self.children.values():
                    c.kill("stop")
            if time.monotonic() > deadline:
                for c in group:
                    if c.alive:
                        log.warning("%s: did not stop in %.0fs; killing it", c.name, timeout)
                        c.kill("stop")
                deadline = time.monotonic() + 5.0
            self._step(0.05)
        self._step(0)

    def _force(self) -> None:
        """Second signal: stop every remaining child at once; a third kills them."""
        self.forced = True
        log.warning("forced stop: signalling every child at once (again to kill)")
        for child in self.children.values():
            child.terminate("stop")

    def _drain_stores(self, since_ns: int, ended: set[str], timeout: float) -> None:
        """Wait until each store reports the end-of-stream of every source in `ended`."""
        pending = {c.name for c in self.stores if c.alive}
        deadline = time.monotonic() + timeout
        while pending and time.monotonic() < deadline and not self.forced:
            for name in list(pending):
                child = self.children[name]
                view = self.monitor.get(self.plan.node, name)
                if not child.alive or (
                    view is not None
                    and view.report.pid == child.pid
                    and view.report.time_ns > since_ns
                    and not set(view.report.extra.get("open_sources", [])) & ended
                ):
                    pending.discard(name)
            if self.signals >= 2:
                self._force()
                break
            self._step(0.05)
        for name in pending:
            log.warning(
                "%s: end-of-stream not confirmed for every source; stopping it anyway", name
            )

    def _close(self) -> None:
        for child in self.children.values():
            if child.alive:
                child.kill("stop")
                if child.proc is not None:
                    child.proc.wait(5)
            child.reap()
            child.close()
        if self._feed is not None:
            self._feed.close()
        if self._telemetry is not None:
            self._telemetry.close()
        if self._control is not None:
            self._control.close()
        if self._exporter is not None:
            self._exporter.close()
        if self._history is not None:
            self._history.close()

    # -- status --------------------------------------------------------------------------

    def status(self) -> dict[str, Any]:
        """The `daq ctl status` reply (built by supervisor/status.py, which owns the view)."""
        return status_view.status(self)

    # -- control ---------------------------------------------------------------------------

    def _serve_control(self) -> None:
        """Answer the waiting `daq ctl` requests (supervisor/commands.py); a deferred one
        (`run next`) is answered by `_step` once `_deferred` returns its reply."""
        assert self._control is not None
        self._control.serve_pending()
