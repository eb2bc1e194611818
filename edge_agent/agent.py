"""The agent process: every part wired together, started in order and stopped safely.

``Agent`` is an async context manager (STYLE item 6): entering opens the stores, the sources,
the executor, the uplink and the metrics endpoint on an ``AsyncExitStack``; its tasks run in
one ``asyncio.TaskGroup``. Leaving writes 0 kW to the battery (a clean stop leaves it idle
instead of waiting for the device's revert timeout), records an AGENT_STOPPING event and gives
the uplink a few seconds to flush the outbox. Whatever is not acknowledged stays in the SQLite
outbox for the next start.

Every step of leaving is bounded in time (``STOP_STEP_TIMEOUT_S`` each, the flush its own
``FLUSH_TIMEOUT_S``): a step that overruns is logged and skipped, the next one still runs. The
tasks of the TaskGroup each run under a supervisor that, when cancelled, cancels its task
(again and again, a library may swallow a cancel) and gives up on it after
``STOP_STEP_TIMEOUT_S``, so the TaskGroup's exit cannot wait forever either.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import time
from collections.abc import Awaitable, Callable, Coroutine
from contextlib import AsyncExitStack
from dataclasses import dataclass, replace
from pathlib import Path
from types import TracebackType
from typing import Any, Self

from bess.v1 import edgelink_pb2 as pb

from . import __version__, convert
from .config import SiteConfig
from .convert import Ack, AckReason, ConfigPatch
from .coordinator import Coordinator, CoordinatorUpdate
from .executor import Executor, ExecutorEvent, ExecutorEventKind
from .guard import GuardEvent, GuardLimits, GuardReason, SafetyGuard
from .metrics import AgentMetrics
from .modbus_source import ModbusSource
from .mqtt_source import MqttSource
from .outbox import AsyncOutbox, Outbox
from .rest_ingest import RestIngestServer
from .schedule_store import SaveResult, Schedule, ScheduleSource, ScheduleStore
from .tasks import cancel_and_wait
from .uplink import EVENTS, TELEMETRY, Uplink, UplinkState

log = logging.getLogger(__name__)

Clock = Callable[[], float]

SAMPLE_LEAD_SHARE = 0.1
"""How long before a sample is due the sampler watches for a fresh reading (share of the
telemetry interval): the oldest a reading taken into a sample can be when polls keep pace."""
SAMPLE_WAIT_SHARE = 0.85
"""How long after its due time a sample waits for a reading, as a share of the interval."""
STOP_STEP_TIMEOUT_S = 3.0
"""Each step of leaving the agent (a task ending, the 0 kW write, an outbox write) at most."""
FLUSH_TIMEOUT_S = 3.0
"""How long leaving waits for the plane to acknowledge what is in the outbox."""

# ExecutorEvent kinds -> EdgeLink EventKind names and severities.
_EXECUTOR_EVENTS: dict[ExecutorEventKind, tuple[str, str]] = {
    ExecutorEventKind.SCHEDULE_STARTED: ("schedule_started", "info"),
    ExecutorEventKind.SCHEDULE_ENDED: ("schedule_expired", "info"),
    ExecutorEventKind.COMMAND_STARTED: ("command_applied", "info"),
    ExecutorEventKind.COMMAND_ENDED: ("command_ended", "info"),
    ExecutorEventKind.FALLBACK_ENGAGED: ("fallback_engaged", "warning"),
    ExecutorEventKind.FALLBACK_RELEASED: ("fallback_released", "info"),
    ExecutorEventKind.DEVIATION: ("setpoint_deviation", "warning"),
    ExecutorEventKind.DEVIATION_CLEARED: ("setpoint_deviation_cleared", "info"),
    ExecutorEventKind.SETPOINT_MISMATCH: ("setpoint_deviation", "warning"),
    ExecutorEventKind.SETPOINT_MISMATCH_CLEARED: ("setpoint_deviation_cleared", "info"),
    ExecutorEventKind.WRITE_FAILED: ("device_write_failed", "error"),
    ExecutorEventKind.WRITE_RECOVERED: ("device_write_recovered", "info"),
}


@dataclass
class ControlState:
    """What the plane or a technician told the agent that must survive a restart: a stop
    order stays in force until resumed, and limits set by command stay set."""

    stopped_reason: str | None = None
    limits: dict[str, float] | None = None  # SetLimits overrides of the configured limits

    @classmethod
    def load(cls, path: Path) -> ControlState:
        try:
            raw = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return cls()
        except (OSError, ValueError) as exc:
            # A damaged file must not start the battery: stay stopped until an operator acts.
            log.error("control state %s unreadable (%s): starting STOPPED", path, exc)
            return cls(stopped_reason=f"control state file unreadable: {exc}")
        return cls(stopped_reason=raw.get("stopped_reason"), limits=raw.get("limits"))

    def save(self, path: Path) -> None:
        tmp = path.with_suffix(".tmp")
        data = {"stopped_reason": self.stopped_reason, "limits": self.limits}
        with open(tmp, "w", encoding="utf-8") as fh:
            json.dump(data, fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)


async def _supervised(coro: Coroutine[Any, Any, None], name: str) -> None:
    """Run ``coro`` as a task of its own and follow it: its result or error is ours. Cancelled,
    it cancels that task and waits for it at most STOP_STEP_TIMEOUT_S (repeating the cancel),
    then gives up on it: a task that swallowed its cancellation (a library bug) is logged and
    left behind instead of keeping the agent's TaskGroup, and so the agent, from stopping."""
    task = asyncio.create_task(coro, name=name)
    try:
        await asyncio.wait({task})
    except asyncio.CancelledError:
        await cancel_and_wait([task], STOP_STEP_TIMEOUT_S, f"agent task {name}")
        if task.done() and not task.cancelled() and task.exception() is not None:
            log.error("agent task %s failed while stopping", name, exc_info=task.exception())
        raise
    return task.result()


class _NoController:
    """Monitoring-only site (no Modbus device to command): setpoints go nowhere."""

    name = "none"
    revert_timeout_s: float | None = None

    async def write_power_kw(self, power_kw: float) -> None:
        return None


class Agent:
    def __init__(self, config: SiteConfig, *, clock: Clock = time.time) -> None:
        self.config = config
        self.clock = clock
        self._stack = AsyncExitStack()
        self._tasks: asyncio.TaskGroup | None = None
        self._last_guard_reasons: frozenset[GuardReason] = frozenset()
        self._source_failing: dict[str, bool] = {}
        self._pending: list[pb.Event] = []
        self._task_handles: list[asyncio.Task[None]] = []
        self.metrics_port: int | None = None
        self.modbus: ModbusSource | None = None
        self.mqtt: MqttSource | None = None
        self.rest: RestIngestServer | None = None
        self.uplink: Uplink | None = None

    # -- lifecycle ---------------------------------------------------------------------------

    async def __aenter__(self) -> Self:
        try:
            await self._start()
        except BaseException:
            await self._stack.aclose()
            raise
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self._stack.aclose()

    async def _start(self) -> None:
        cfg = self.config
        data_dir = cfg.storage.data_dir
        data_dir.mkdir(parents=True, exist_ok=True)
        self._state_path = data_dir / "control_state.json"
        self.control = ControlState.load(self._state_path)

        storage = cfg.storage
        self.outbox = AsyncOutbox(
            lambda: Outbox(
                storage.outbox_path,
                max_rows=storage.outbox_max_rows,
                max_age_s=storage.outbox_max_age_s,
                synchronous=storage.synchronous,
                clock=self.clock,
            )
        )
        await self.outbox.open()
        self._stack.push_async_callback(self._bounded, "closing the outbox", self.outbox.aclose)
        self.schedules = ScheduleStore(
            storage.schedules_path,
            site_id=cfg.site_id,
            synchronous=storage.synchronous,
            clock=self.clock,
        )
        self._stack.callback(self.schedules.close)

        src = cfg.sources
        self.coordinator = Coordinator(
            self.clock,
            priorities={q: list(order) for q, order in src.priorities.items()},
            stale_after_s=src.stale_after_s,
        )
        # Set when a source delivers readings (all sources feed the coordinator on the loop's
        # thread): the sampler takes its sample right after one (see _sampler).
        self._fresh = asyncio.Event()
        self._stack.callback(
            self.coordinator.subscribe(
                lambda update: self._fresh.set() if update.readings else None
            )
        )
        limits = cfg.guard_limits()
        if self.control.limits:
            overrides: dict[str, Any] = dict(self.control.limits)
            try:
                limits = replace(limits, **overrides)
            except (TypeError, ValueError) as exc:
                log.error(
                    "stored limits from a SetLimits command refused (%s): using the file's", exc
                )
        self.guard = SafetyGuard(limits)
        if self.control.stopped_reason:
            self.guard.stop(reason=self.control.stopped_reason, now=self.clock())
            log.warning("starting STOPPED: %s (resume from the plane)", self.control.stopped_reason)

        if src.modbus is not None:
            self.modbus = await self._stack.enter_async_context(
                ModbusSource(src.modbus, clock=self.clock)
            )
        if src.mqtt.enabled:
            self.mqtt = await self._stack.enter_async_context(
                MqttSource(src.mqtt, self.coordinator, site_id=cfg.site_id, clock=self.clock)
            )
        if src.rest.enabled:
            self.rest = await self._stack.enter_async_context(
                RestIngestServer(src.rest, self.coordinator, clock=self.clock)
            )

        controller = self.modbus if self.modbus is not None else _NoController()
        self.executor = Executor(
            cfg.executor,
            guard=self.guard,
            controller=controller,
            store=self.schedules,
            snapshot_fn=self.coordinator.snapshot,
            clock=self.clock,
            plane_silent_for_s=self._plane_silent_for_s,
        )

        if cfg.uplink is not None:
            self.uplink = Uplink(
                cfg.uplink,
                outbox=self.outbox,
                hello=self._hello,
                on_schedule=self._on_schedule,
                on_command=self._on_command,
                on_config=self._on_config,
                heartbeat=self._heartbeat,
                wall_clock=self.clock,
            )

        self.metrics = AgentMetrics(self)
        if cfg.metrics.enabled:
            self.metrics_port = self.metrics.serve(cfg.metrics.host, cfg.metrics.port)
            self._stack.callback(self.metrics.shutdown)

        await self._record(
            convert.agent_event(
                "agent_started",
                at=self.clock(),
                message=f"bess-edge {__version__} started for site {cfg.site_id}",
            )
        )
        if self.modbus is not None:
            # One poll before the control loop starts, so its first tick sees readings
            # instead of reporting them missing (a failed poll is fine: the guard holds 0 kW).
            await self.coordinator.poll(self.modbus, timeout_s=5.0)
        # Closing runs in reverse: tasks cancelled, then the battery set to 0 kW and the last
        # events flushed while the uplink still runs, then the uplink and the stores close.
        if self.uplink is not None:
            await self._stack.enter_async_context(self.uplink)
        self._stack.push_async_callback(self._stop_safely)
        self._tasks = await self._stack.enter_async_context(asyncio.TaskGroup())
        self._stack.push_async_callback(self._cancel_tasks)
        self._spawn(self._tasks)

    def _spawn(self, tg: asyncio.TaskGroup) -> None:
        modbus = self.config.sources.modbus
        if self.modbus is not None and modbus is not None:
            interval = modbus.poll_interval_s
            poller = self.coordinator.run_poller(
                self.modbus,
                interval_s=interval,
                # The source bounds each request itself; the poll deadline is the backstop and
                # must not beat it (a silent device then reads "no answer within 1 s reading
                # ..." and counts towards its reconnect, instead of an anonymous timeout).
                timeout_s=max(interval, self.modbus.poll_timeout_s),
            )
            self._spawn_one(tg, poller, "modbus-poller")
        self._spawn_one(tg, self.executor.run(), "executor")
        self._spawn_one(tg, self._sampler(), "sampler")

    def _spawn_one(self, tg: asyncio.TaskGroup, coro: Coroutine[Any, Any, None], name: str) -> None:
        self._task_handles.append(tg.create_task(_supervised(coro, name), name=name))

    async def _cancel_tasks(self) -> None:
        # A TaskGroup has no cancel(): cancelling its children lets it exit cleanly. Each
        # child ends within STOP_STEP_TIMEOUT_S of this (see _supervised).
        for task in self._task_handles:
            task.cancel()

    async def _bounded(self, what: str, step: Callable[[], Awaitable[object]]) -> bool:
        """One step of leaving, within STOP_STEP_TIMEOUT_S; False (logged) if it failed."""
        try:
            async with asyncio.timeout(STOP_STEP_TIMEOUT_S):
                await step()
        except TimeoutError:
            log.error("stopping: %s took longer than %g s; skipped", what, STOP_STEP_TIMEOUT_S)
            return False
        except Exception:  # one failed step must not keep the others from running
            log.exception("stopping: %s failed", what)
            return False
        return True

    async def _stop_safely(self) -> None:
        """Leave the battery idle and the outbox flushed as far as the plane allows."""
        now = self.clock()
        if self.modbus is not None:
            modbus = self.modbus
            try:
                async with asyncio.timeout(STOP_STEP_TIMEOUT_S):
                    await modbus.write_power_kw(0.0)
                log.info("stopping: battery set to 0 kW")
            except Exception as exc:  # the device's revert timeout remains the backstop
                log.warning(
                    "stopping: could not write 0 kW (%s); the device's revert timeout "
                    "will bring it to 0 kW",
                    f"no answer within {STOP_STEP_TIMEOUT_S:g} s"
                    if isinstance(exc, TimeoutError)
                    else exc,
                )
        await self._bounded("recording the last events", self._drain_events)
        await self._bounded(
            "recording agent_stopping",
            lambda: self._record(
                convert.agent_event("agent_stopping", at=now, message="bess-edge stopping")
            ),
        )
        if self.uplink is not None and self.uplink.state is UplinkState.CONNECTED:
            with contextlib.suppress(Exception):
                # flush bounds itself; the outer timeout is the backstop.
                async with asyncio.timeout(FLUSH_TIMEOUT_S + 1.0):
                    await self.uplink.flush(timeout_s=FLUSH_TIMEOUT_S)

    async def wait(self, stop: asyncio.Event | None = None) -> None:
        """Run until ``stop`` is set (or forever)."""
        await (stop.wait() if stop is not None else asyncio.Event().wait())

    # -- loops -------------------------------------------------------------------------------

    def _on_update(self, update: CoordinatorUpdate) -> None:
        if update.readings:
            self._fresh.set()

    async def _sampler(self) -> None:
        """Every telemetry interval: a sample into the outbox, events into the outbox.

        Sampling on its own clock took whatever the last poll had read, on average half a poll
        interval old and up to a whole one. So a sample waits for a reading: from
        `SAMPLE_LEAD_SHARE` of the interval before it is due, the sampler watches for readings;
        one that arrives before the due time is sampled at the due time (it is at most that
        lead old), one after it is sampled at once; with none by `SAMPLE_WAIT_SHARE` of the
        interval after the due time, the sample is taken with what there is. The due times
        stay one interval apart, so the cadence never drifts, and a source that delivers
        nothing costs a delay, never a sample.
        """
        interval = self.config.telemetry.interval_s
        loop = asyncio.get_running_loop()
        next_due = loop.time()
        while True:
            watch_from = next_due - interval * SAMPLE_LEAD_SHARE
            if (ahead := watch_from - loop.time()) > 0:
                await asyncio.sleep(ahead)
            self._fresh.clear()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout_at(next_due + interval * SAMPLE_WAIT_SHARE):
                    await self._fresh.wait()
            if (early := next_due - loop.time()) > 0:
                await asyncio.sleep(early)
            try:
                await self._sample_once()
            except Exception:  # never let bookkeeping stop the control loop
                log.exception("telemetry sampling failed")
            next_due += interval
            if next_due < loop.time():  # fell behind (slow disk): skip, don't burst
                next_due = loop.time()

    async def _sample_once(self) -> None:
        now = self.clock()
        snapshot = self.coordinator.snapshot(now)
        status = self.executor.status()
        stopped = self.guard.stop_reason is not None
        sample = convert.sample_from_snapshot(
            snapshot,
            at=now,
            status="stopped" if stopped else None,
            applied_setpoint_kw=status.applied_kw,
        )
        await self.outbox.append(TELEMETRY, [convert.outbox_row(sample)])
        self._check_sources(now)
        await self._drain_events()
        if self.uplink is not None:
            self.uplink.notify()
        await self.metrics.refresh(snapshot=snapshot, executor=status)

    def _check_sources(self, now: float) -> None:
        if self.modbus is None:
            return
        health = self.coordinator.health(self.modbus.name)
        was = self._source_failing.get(self.modbus.name, False)
        if health.failing != was:
            self._source_failing[self.modbus.name] = health.failing
            kind = "source_lost" if health.failing else "source_recovered"
            message = (
                f"Modbus source stopped answering: {health.last_error}"
                if health.failing
                else "Modbus source answers again"
            )
            self._pending.append(
                convert.agent_event(
                    kind,
                    at=now,
                    message=message,
                    severity="warning" if health.failing else "info",
                    source="modbus",
                )
            )

    async def _drain_events(self) -> None:
        events: list[pb.Event] = list(self._pending)
        self._pending = []
        for event in self.executor.drain_events():
            events.append(self._to_proto(event))
        if events:
            await self._append_events(events)

    async def _append_events(self, events: list[pb.Event]) -> None:
        """Into the outbox even if the caller is cancelled meanwhile (the agent stopping): once
        drained from the executor these events exist nowhere else, and cancelling the await
        would also cancel an append still queued behind other work on the outbox's thread."""
        rows = [convert.outbox_row(e) for e in events]
        await asyncio.shield(self.outbox.append(EVENTS, rows))

    def _to_proto(self, event: ExecutorEvent | GuardEvent) -> pb.Event:
        if isinstance(event, GuardEvent):
            released = self._last_guard_reasons
            self._last_guard_reasons = event.reasons
            return convert.event_from_guard(event, released=released)
        kind, severity = _EXECUTOR_EVENTS[event.kind]
        details: dict[str, str] = {"executor_event": event.kind.value}
        if event.fallback_cause is not None:
            details["cause"] = event.fallback_cause.value
        if event.measured_kw is not None:
            details["measured_kw"] = f"{event.measured_kw:.3f}"
        out = convert.agent_event(
            kind,
            at=event.at,
            message=event.message,
            severity=severity,
            schedule_version=event.schedule_version or 0,
            details=details,
        )
        if event.setpoint_kw is not None:
            out.requested_kw = event.setpoint_kw
        if event.measured_kw is not None:
            out.applied_kw = event.measured_kw
        return out

    async def _record(self, event: pb.Event) -> None:
        await self._append_events([event])

    # -- uplink callbacks --------------------------------------------------------------------

    def _plane_silent_for_s(self) -> float | None:
        if self.uplink is None:
            return None  # standalone site: no plane to be silent
        state = self.uplink.state
        if state is UplinkState.CONNECTED:
            return None
        return self.uplink.silent_for_s

    def _hello(self) -> convert.HelloInfo:
        caps = {"schedules", "commands", "config"}
        if self.modbus is not None:
            caps.add("modbus")
        if self.mqtt is not None:
            caps.add("mqtt")
        if self.rest is not None:
            caps.add("rest")
        return convert.HelloInfo(
            site_id=self.config.site_id,
            agent_version=__version__,
            capabilities=frozenset(caps),
            limits=self.guard.limits,
            last_schedule_version=self.schedules.latest_version(ScheduleSource.PLANE),
        )

    def _heartbeat(self) -> convert.HeartbeatInfo:
        status = self.executor.status()
        scheduled: float | None = None
        current = self.schedules.current(self.clock())
        if current is not None:
            scheduled = current.setpoint_at(self.clock())
        return convert.HeartbeatInfo(
            setpoint_kw=status.applied_kw or 0.0,
            schedule_version=status.schedule_version or 0,
            scheduled_kw=scheduled,
        )

    async def _on_schedule(self, schedule: Schedule) -> SaveResult:
        result = self.schedules.save(schedule, now=self.clock())
        log.info("schedule v%d from the plane: %s", schedule.version, result.outcome.value)
        return result

    async def _on_command(self, command: Any) -> Ack:
        now = self.clock()
        if isinstance(command, convert.StopCommand):
            self.guard.stop(reason=command.reason or "stop from the plane", now=now)
            self.control.stopped_reason = command.reason or "stop from the plane"
            self.control.save(self._state_path)
            log.warning("STOP from the plane: %s", self.control.stopped_reason)
            return Ack.ok("stopped")
        if isinstance(command, convert.ResumeCommand):
            self.guard.resume(now=now)
            self.control.stopped_reason = None
            self.control.save(self._state_path)
            log.warning("RESUME from the plane")
            return Ack.ok("resumed")
        if isinstance(command, convert.SetLimitsCommand):
            changes, problem = self._narrowing(command)
            if problem:
                return Ack.reject(AckReason.OUT_OF_RANGE, problem)
            try:
                patch: dict[str, Any] = dict(changes)
                limits: GuardLimits = replace(self.guard.limits, **patch)
                self.guard.update_limits(limits)
            except (TypeError, ValueError) as exc:
                return Ack.reject(AckReason.OUT_OF_RANGE, str(exc))
            self.control.limits = {**(self.control.limits or {}), **changes}
            self.control.save(self._state_path)
            log.warning("limits changed by the plane: %s", changes)
            return Ack.ok("limits updated")
        return Ack.reject(AckReason.UNSUPPORTED, f"unknown command {type(command).__name__}")

    def _narrowing(self, command: convert.SetLimitsCommand) -> tuple[dict[str, float], str]:
        """The guard fields a SetLimits changes, or why it is refused: the plane may narrow the
        site file's limits, never widen them (safety lives on the edge)."""
        site = self.config.guard_limits()
        changes: dict[str, float] = {}
        if command.min_soc_pct is not None:
            if command.min_soc_pct < site.min_soc_pct:
                return {}, (
                    f"min_soc_pct {command.min_soc_pct:g} is below the site's floor "
                    f"{site.min_soc_pct:g}; the plane may only narrow the limits"
                )
            changes["min_soc_pct"] = command.min_soc_pct
        if command.max_soc_pct is not None:
            if command.max_soc_pct > site.max_soc_pct:
                return {}, (
                    f"max_soc_pct {command.max_soc_pct:g} is above the site's ceiling "
                    f"{site.max_soc_pct:g}; the plane may only narrow the limits"
                )
            changes["max_soc_pct"] = command.max_soc_pct
        for wanted, field, effective in (
            (command.max_charge_kw, "charge_limit_kw", site.charge_kw),
            (command.max_discharge_kw, "discharge_limit_kw", site.discharge_kw),
        ):
            if wanted is None:
                continue
            if wanted > effective:
                return {}, (
                    f"{field} {wanted:g} kW is above the site's limit {effective:g} kW; "
                    "the plane may only narrow the limits"
                )
            changes[field] = wanted
        return changes, ""

    async def _on_config(self, patch: ConfigPatch) -> Ack:
        # Configuration is the site file's business (reviewed, versioned on site); the plane may
        # not rewrite it remotely yet. Refuse explicitly instead of half-applying.
        keys = ", ".join(sorted(patch.values)) or "(none)"
        return Ack.reject(
            AckReason.UNSUPPORTED,
            f"remote configuration is not supported by this agent (keys: {keys}); "
            "change the site file and restart",
        )


async def run_agent(config: SiteConfig, *, stop: asyncio.Event | None = None) -> int:
    """Run the agent until ``stop`` is set; returns the process exit code."""
    async with Agent(config) as agent:
        log.info(
            "bess-edge %s running for site %s (metrics %s)",
            __version__,
            config.site_id,
            f"http://{config.metrics.host}:{agent.metrics_port}/metrics"
            if agent.metrics_port
            else "off",
        )
        await agent.wait(stop)
    return 0
