"""The schedule executor: each control tick decides the battery's power and makes the device do it.

Per tick (``Executor.tick``), with the injected clock's ``now``:

1. **Requested setpoint**, highest source first:

   * ``command`` - an operator or plane override set with ``set_command`` (a manual setpoint
     with an expiry, e.g. from the CLI); it ends at its expiry or with ``clear_command``;
   * ``schedule`` - ``ScheduleStore.current(now).setpoint_at(now)``;
   * ``fallback`` - everything else, see below.

2. **Guard**: every request passes through ``SafetyGuard.apply`` with the coordinator's latest
   SoC, power and temperature; the guard's output (``applied_kw``) is what the battery gets.

3. **Write** via ``BatteryController.write_power_kw`` when the applied value changed, when the
   previous write failed, and at least every refresh interval: ``min(refresh_interval_s,
   revert_timeout_s / 3)``, the revert timeout being the device's (``controller.revert_timeout_s``),
   after which it would fall back to 0 kW by itself (DESIGN decision 9). A failed write is counted,
   logged loudly once and quietly while it repeats, and retried on the next tick; nothing raises
   out of ``tick`` or ``run``.

4. **Read-back**: once the device had time to settle (``settle_s`` plus the ramp time), its
   measured active power is compared with the last written setpoint; a deviation beyond the
   tolerance that lasts ``deviation_grace_s`` is one event per episode, with a cleared event at
   its end. The device's own setpoint readback (``Quantity.SETPOINT_KW``) differing from what was
   written is reported the same way, and the setpoint is written once more on the next tick.

Fallback semantics (``ExecutorSettings``): the executor falls back when no command is active and

* ``no_schedule`` - no schedule is in force (none received, its validity ended, or cancelled),
* ``between_intervals`` - the schedule in force has no interval at ``now``,
* ``plane_silent`` - the schedule in force comes from the plane and the plane has been silent for
  more than ``plane_silence_timeout_s`` (``plane_silent_for_s()``); local (file, CLI) schedules
  are operator decisions on site and keep running while the uplink is down.

What it then requests depends on ``fallback_policy``:

* ``zero`` (default): ``fallback_kw`` (default 0 kW) at once;
* ``hold_last_for_s``: the last value the schedule gave, until ``hold_last_for_s`` seconds after
  the schedule last gave one, then ``fallback_kw``. Nothing is held after a command or a restart
  (the held value is not persisted): a restarted agent that finds no interval goes to
  ``fallback_kw``.

Events (``drain_events``): ``ExecutorEvent`` for schedule started/ended, command started/ended,
fallback engaged (again when its cause changes)/released, deviation and its clearing, setpoint
readback mismatch and its clearing, write failure and recovery; plus the guard's ``GuardEvent``.
The agent turns them into EdgeLink events; nothing here knows protobuf.
"""

from __future__ import annotations

import asyncio
import logging
import math
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from enum import StrEnum
from typing import Literal, Protocol

from pydantic import BaseModel, ConfigDict, Field, model_validator

from .guard import GuardEvent, GuardInput, GuardReason, SafetyGuard
from .guard import Reading as GuardReading
from .readings import BatteryController, Quantity, Reading
from .schedule_store import Schedule, ScheduleSource, ScheduleStore

log = logging.getLogger(__name__)

MAX_PENDING_EVENTS = 1024
"""Events are produced on change only; the bound only protects a caller that never drains."""
REVERT_REFRESH_DIVISOR = 3.0
"""The refresh interval is at most a third of the device's revert timeout."""
_TOL_KW = 1e-9  # two written values closer than this are the same setpoint


class ExecutorConfigError(ValueError):
    """Settings that cannot keep the device's setpoint alive (refresh or tick too slow)."""


class SetpointSource(StrEnum):
    """Where the requested setpoint came from."""

    COMMAND = "command"
    SCHEDULE = "schedule"
    FALLBACK = "fallback"


class FallbackCause(StrEnum):
    """Why the executor is in fallback."""

    NO_SCHEDULE = "no_schedule"
    BETWEEN_INTERVALS = "between_intervals"
    PLANE_SILENT = "plane_silent"


class ExecutorEventKind(StrEnum):
    SCHEDULE_STARTED = "schedule_started"
    SCHEDULE_ENDED = "schedule_ended"
    COMMAND_STARTED = "command_started"
    COMMAND_ENDED = "command_ended"
    FALLBACK_ENGAGED = "fallback_engaged"
    FALLBACK_RELEASED = "fallback_released"
    DEVIATION = "deviation"
    DEVIATION_CLEARED = "deviation_cleared"
    SETPOINT_MISMATCH = "setpoint_mismatch"
    SETPOINT_MISMATCH_CLEARED = "setpoint_mismatch_cleared"
    WRITE_FAILED = "write_failed"
    WRITE_RECOVERED = "write_recovered"


@dataclass(frozen=True, kw_only=True)
class ExecutorEvent:
    """Something the operator should learn about; ``message`` is plain language."""

    kind: ExecutorEventKind
    at: float
    message: str
    setpoint_kw: float | None = None  # the setpoint concerned (written or requested)
    measured_kw: float | None = None  # the device's reading, for deviation and mismatch
    schedule_source: ScheduleSource | None = None
    schedule_version: int | None = None
    fallback_cause: FallbackCause | None = None


AnyEvent = ExecutorEvent | GuardEvent


class ExecutorSettings(BaseModel):
    """How the executor runs; contradictions are refused here, device limits by ``Executor``."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    tick_interval_s: float = Field(default=1.0, gt=0, allow_inf_nan=False)
    refresh_interval_s: float = Field(
        default=10.0,
        gt=0,
        allow_inf_nan=False,
        description="Rewrite an unchanged setpoint this often; capped at revert_timeout_s / 3.",
    )
    write_timeout_s: float = Field(default=5.0, gt=0, allow_inf_nan=False)
    fallback_policy: Literal["zero", "hold_last_for_s"] = "zero"
    fallback_kw: float = Field(default=0.0, allow_inf_nan=False)
    hold_last_for_s: float = Field(
        default=0.0,
        ge=0,
        allow_inf_nan=False,
        description="Policy hold_last_for_s: keep the last scheduled value this long.",
    )
    plane_silence_timeout_s: float | None = Field(
        default=900.0,
        gt=0,
        allow_inf_nan=False,
        description="Fall back from a plane schedule after this much silence; None = never.",
    )
    max_command_s: float = Field(
        default=4 * 3600.0,
        gt=0,
        allow_inf_nan=False,
        description="Longest manual setpoint accepted.",
    )
    settle_s: float = Field(
        default=5.0,
        ge=0,
        allow_inf_nan=False,
        description="Device response time after a new setpoint.",
    )
    device_ramp_kw_per_s: float | None = Field(
        default=None,
        gt=0,
        allow_inf_nan=False,
        description="Device ramp rate: |change| / ramp is added to settle_s; None = no ramp.",
    )
    deviation_tolerance_kw: float = Field(default=2.0, ge=0, allow_inf_nan=False)
    deviation_tolerance_pct: float = Field(
        default=5.0,
        ge=0,
        allow_inf_nan=False,
        description="Of |setpoint|; the larger tolerance wins.",
    )
    deviation_grace_s: float = Field(default=30.0, ge=0, allow_inf_nan=False)
    setpoint_readback_tolerance_kw: float = Field(
        default=0.5, ge=0, allow_inf_nan=False, description="Register resolution plus rounding."
    )

    @model_validator(mode="after")
    def _consistent(self) -> ExecutorSettings:
        if self.tick_interval_s > self.refresh_interval_s:
            raise ValueError(
                f"tick_interval_s ({self.tick_interval_s:g} s) must not exceed "
                f"refresh_interval_s ({self.refresh_interval_s:g} s): writes happen on ticks"
            )
        if self.fallback_policy == "hold_last_for_s" and self.hold_last_for_s <= 0:
            raise ValueError(
                "fallback_policy hold_last_for_s needs hold_last_for_s > 0 "
                "(how long to keep the last scheduled value)"
            )
        return self


def check_revert_timeout(settings: ExecutorSettings, revert_timeout_s: float | None) -> float:
    """The effective refresh interval for a device; refuses settings that would let it revert."""
    configured = settings.refresh_interval_s
    if revert_timeout_s is None:
        return configured
    if configured >= revert_timeout_s:
        raise ExecutorConfigError(
            f"refresh_interval_s ({configured:g} s) must be well below the device's revert "
            f"timeout ({revert_timeout_s:g} s), or the battery drops to 0 kW between refreshes; "
            f"leave it at most {revert_timeout_s / REVERT_REFRESH_DIVISOR:g} s"
        )
    refresh = min(configured, revert_timeout_s / REVERT_REFRESH_DIVISOR)
    # Writes only happen on ticks: the real gap is the refresh rounded up to whole ticks.
    gap = math.ceil(refresh / settings.tick_interval_s - 1e-9) * settings.tick_interval_s
    if gap > revert_timeout_s / 2:
        raise ExecutorConfigError(
            f"tick_interval_s ({settings.tick_interval_s:g} s) is too slow for the device's "
            f"revert timeout ({revert_timeout_s:g} s): setpoints would be refreshed only every "
            f"{gap:g} s; tick at most every {revert_timeout_s / 2:g} s"
        )
    return refresh


class TelemetrySnapshot(Protocol):
    """What the executor reads from the coordinator (``coordinator.Snapshot`` satisfies it)."""

    def reading(self, quantity: Quantity) -> Reading | None: ...

    def is_stale(self, quantity: Quantity) -> bool: ...


@dataclass(frozen=True)
class Command:
    """An override setpoint in force until ``until``."""

    power_kw: float
    until: float
    origin: str
    started_at: float


@dataclass(frozen=True, kw_only=True)
class ExecutorStatus:
    """The executor's state after a tick, for metrics and the CLI."""

    at: float | None
    source: SetpointSource | None
    requested_kw: float | None
    applied_kw: float | None
    reasons: frozenset[GuardReason]
    guard_detail: str
    schedule_source: ScheduleSource | None
    schedule_version: int | None
    fallback_cause: FallbackCause | None
    fallback_holding_last: bool
    command: Command | None
    last_written_kw: float | None
    last_write_at: float | None  # last successful write
    write_ok: bool  # the last write attempt succeeded (True before the first)
    refresh_interval_s: float
    deviating: bool
    deviation_kw: float | None  # measured - written at the last judged reading
    setpoint_mismatch: bool
    ticks_total: int
    writes_total: int
    write_failures_total: int
    deviation_events_total: int
    setpoint_mismatch_events_total: int


Clock = Callable[[], float]
Sleep = Callable[[float], Awaitable[None]]


class Executor:
    """Runs the schedule: ``await tick()`` once per control period, or ``await run()``."""

    def __init__(
        self,
        settings: ExecutorSettings,
        *,
        guard: SafetyGuard,
        controller: BatteryController,
        store: ScheduleStore,
        snapshot_fn: Callable[[float], TelemetrySnapshot],
        clock: Clock,
        plane_silent_for_s: Callable[[], float | None] = lambda: None,
        sleep: Sleep = asyncio.sleep,
    ) -> None:
        self.settings = settings
        self._guard = guard
        self._controller = controller
        self._store = store
        self._snapshot_fn = snapshot_fn
        self._clock = clock
        self._plane_silent_for_s = plane_silent_for_s
        self._sleep = sleep
        self._revert_timeout_s = _revert_timeout(controller)
        self._refresh_s = check_revert_timeout(settings, self._revert_timeout_s)
        self._events: deque[ExecutorEvent] = deque(maxlen=MAX_PENDING_EVENTS)
        self._complained: set[str] = set()  # problems logged loudly once until they clear
        # decision
        self._command: Command | None = None
        self._schedule_key: tuple[ScheduleSource, int] | None = None
        self._source: SetpointSource | None = None
        self._fallback_cause: FallbackCause | None = None
        self._holding_last = False
        self._last_scheduled: tuple[float, float] | None = None  # (at, kW)
        self._at: float | None = None
        self._requested_kw: float | None = None
        self._applied_kw: float | None = None
        self._reasons: frozenset[GuardReason] = frozenset()
        self._guard_detail = ""
        # writing
        self._written_kw: float | None = None
        self._write_at: float | None = None
        self._write_ok = True
        self._consecutive_failures = 0
        self._failing_since: float | None = None
        # read-back
        self._settle_until: float | None = None
        self._changed_at: float | None = None
        self._deviating_since: float | None = None
        self._deviating = False
        self._deviation_kw: float | None = None
        self._mismatch = False
        self._rewrite = False  # write once more at once: the readback lost our setpoint
        # counters
        self._ticks = 0
        self._writes = 0
        self._write_failures = 0
        self._deviation_events = 0
        self._mismatch_events = 0

    # -- commands ---------------------------------------------------------------------------

    def set_command(
        self, power_kw: float, *, duration_s: float, origin: str, now: float | None = None
    ) -> Command:
        """Override the schedule with ``power_kw`` for ``duration_s``; the guard still applies."""
        now = self._clock() if now is None else now
        if not _finite(power_kw):
            raise ValueError(f"power_kw must be a finite number, got {power_kw!r}")
        if not _finite(duration_s) or not 0 < duration_s <= self.settings.max_command_s:
            raise ValueError(
                f"duration_s must be > 0 and at most max_command_s "
                f"({self.settings.max_command_s:g} s), got {duration_s!r}"
            )
        command = Command(power_kw, now + duration_s, origin or "unknown", now)
        self._command = command
        log.warning(
            "command from %s: %s for %g s (overrides the schedule)",
            command.origin,
            _describe(power_kw),
            duration_s,
        )
        self._emit(
            ExecutorEventKind.COMMAND_STARTED,
            now,
            f"{command.origin} commands {_describe(power_kw)} for {duration_s:g} s",
            setpoint_kw=power_kw,
        )
        return command

    def clear_command(self, *, reason: str, now: float | None = None) -> bool:
        """End an active command early; False if none was active."""
        if self._command is None:
            return False
        now = self._clock() if now is None else now
        self._end_command(now, f"cleared: {reason}")
        return True

    def _end_command(self, now: float, why: str) -> None:
        command, self._command = self._command, None
        if command is None:
            return
        log.info("command from %s ended (%s)", command.origin, why)
        self._emit(
            ExecutorEventKind.COMMAND_ENDED,
            now,
            f"command from {command.origin} ({_describe(command.power_kw)}) ended: {why}",
            setpoint_kw=command.power_kw,
        )

    # -- the loop ---------------------------------------------------------------------------

    async def run(self) -> None:
        """Tick every ``tick_interval_s`` until cancelled; never raises otherwise."""
        interval = self.settings.tick_interval_s
        while True:
            started = self._clock()
            await self.tick()
            elapsed = self._clock() - started
            # A clock stepping back counts as no time spent; a slow tick shortens the wait.
            await self._sleep(min(interval, max(0.0, interval - elapsed)))

    async def tick(self) -> ExecutorStatus:
        """One decision and, when due, one write; errors are logged and counted, not raised."""
        self._ticks += 1
        try:
            await self._tick()
        except Exception:  # a bug here must not stop the refreshes that keep the battery safe
            if self._first_failure("tick"):
                log.exception("executor tick failed (repeats are logged at debug level)")
            else:
                log.debug("executor tick failed again", exc_info=True)
        else:
            self._recovered("tick", "executor ticks normally again")
        return self.status()

    async def _tick(self) -> None:
        now = self._clock()
        self._at = now
        self._check_refresh()
        requested, source = self._decide(now)
        snapshot = self._snapshot(now)
        telemetry = GuardInput(
            soc_pct=self._guard_reading(snapshot, Quantity.SOC_PCT, now),
            power_kw=self._guard_reading(snapshot, Quantity.ACTIVE_POWER_KW, now),
            temperature_c=self._guard_reading(snapshot, Quantity.TEMPERATURE_C, now),
        )
        decision = self._guard.apply(requested, telemetry, now=now)
        self._source = source
        self._requested_kw = requested
        self._applied_kw = decision.applied_kw
        self._reasons = decision.reasons
        self._guard_detail = decision.detail
        await self._write_if_due(decision.applied_kw, now)
        self._read_back(snapshot, now)

    # -- deciding ---------------------------------------------------------------------------

    def _decide(self, now: float) -> tuple[float, SetpointSource]:
        if self._command is not None and now >= self._command.until:
            self._end_command(now, "expired")
        schedule = self._current_schedule(now)
        if self._command is not None:
            self._set_fallback(None, now, schedule)
            self._last_scheduled = None  # nothing from before a command is held after it
            return self._command.power_kw, SetpointSource.COMMAND
        cause: FallbackCause | None
        value: float | None = None
        if schedule is None:
            cause = FallbackCause.NO_SCHEDULE
        elif schedule.source is ScheduleSource.PLANE and self._plane_silent(now):
            cause = FallbackCause.PLANE_SILENT
        else:
            value = schedule.setpoint_at(now)
            cause = FallbackCause.BETWEEN_INTERVALS if value is None else None
        self._set_fallback(cause, now, schedule)
        if value is not None:
            self._last_scheduled = (now, value)
            return value, SetpointSource.SCHEDULE
        return self._fallback_kw(now), SetpointSource.FALLBACK

    def _fallback_kw(self, now: float) -> float:
        settings = self.settings
        held = self._last_scheduled
        self._holding_last = (
            settings.fallback_policy == "hold_last_for_s"
            and held is not None
            and 0.0 <= now - held[0] < settings.hold_last_for_s
        )
        if self._holding_last and held is not None:
            return held[1]
        return settings.fallback_kw

    def _current_schedule(self, now: float) -> Schedule | None:
        try:
            schedule = self._store.current(now)
        except Exception:  # the store is in memory; if it breaks, run the fallback
            if self._first_failure("store"):
                log.exception("schedule store failed; running the fallback policy")
            schedule = None
        else:
            self._recovered("store", "schedule store answers again")
        key = None if schedule is None else (schedule.source, schedule.version)
        if key != self._schedule_key:
            if self._schedule_key is not None:
                old_source, old_version = self._schedule_key
                log.info("schedule %s v%d ended", old_source, old_version)
                self._emit(
                    ExecutorEventKind.SCHEDULE_ENDED,
                    now,
                    f"schedule {old_source} v{old_version} is no longer in force",
                    schedule_source=old_source,
                    schedule_version=old_version,
                )
            if schedule is not None:
                log.info("schedule %s v%d started", schedule.source, schedule.version)
                self._emit(
                    ExecutorEventKind.SCHEDULE_STARTED,
                    now,
                    f"executing schedule {schedule.source} v{schedule.version}",
                    schedule_source=schedule.source,
                    schedule_version=schedule.version,
                )
            self._schedule_key = key
        return schedule

    def _plane_silent(self, now: float) -> bool:
        timeout = self.settings.plane_silence_timeout_s
        if timeout is None:
            return False
        try:
            silent = self._plane_silent_for_s()
        except Exception:  # an uplink that cannot say counts as silent: the safe side
            if self._first_failure("uplink"):
                log.exception("cannot ask the uplink how long the plane has been silent")
            return True
        self._recovered("uplink", "uplink reports its state again")
        return silent is not None and silent > timeout

    def _set_fallback(
        self, cause: FallbackCause | None, now: float, schedule: Schedule | None
    ) -> None:
        previous = self._fallback_cause
        if cause == previous:
            return
        self._fallback_cause = cause
        source = schedule.source if schedule else None
        version = schedule.version if schedule else None
        if cause is None:
            self._holding_last = False
            log.info("fallback released (was %s)", previous)
            self._emit(
                ExecutorEventKind.FALLBACK_RELEASED,
                now,
                f"fallback released (was {previous}): "
                + ("command in force" if self._command else "schedule in force"),
                schedule_source=source,
                schedule_version=version,
                fallback_cause=previous,
            )
            return
        policy = self.settings.fallback_policy
        target = _describe(self.settings.fallback_kw)
        if policy == "hold_last_for_s":
            hold_s = self.settings.hold_last_for_s
            what = f"holding the last scheduled value up to {hold_s:g} s, then {target}"
        else:
            what = target
        log.warning("fallback engaged (%s): %s", cause, what)
        self._emit(
            ExecutorEventKind.FALLBACK_ENGAGED,
            now,
            f"fallback engaged ({_CAUSE_TEXT[cause]}): {what}",
            setpoint_kw=self.settings.fallback_kw,
            schedule_source=source,
            schedule_version=version,
            fallback_cause=cause,
        )

    # -- telemetry --------------------------------------------------------------------------

    def _snapshot(self, now: float) -> TelemetrySnapshot | None:
        try:
            snapshot = self._snapshot_fn(now)
        except Exception:  # no telemetry: the guard holds 0 kW
            if self._first_failure("snapshot"):
                log.exception("cannot read the telemetry snapshot; the guard holds 0 kW")
            return None
        self._recovered("snapshot", "telemetry snapshot available again")
        return snapshot

    def _guard_reading(
        self, snapshot: TelemetrySnapshot | None, quantity: Quantity, now: float
    ) -> GuardReading | None:
        reading = _fresh_or_stale(snapshot, quantity)
        if reading is None:
            return None
        stale, value = reading
        if stale and now - value.timestamp <= self._guard.limits.stale_after_s:
            # Stale for a reason the guard cannot see (the source's poll fails): missing.
            return None
        return GuardReading(value.value, value.timestamp)

    # -- writing ----------------------------------------------------------------------------

    def _check_refresh(self) -> None:
        """Follow a revert timeout the controller learnt after start (e.g. read at connect)."""
        revert = _revert_timeout(self._controller)
        if revert == self._revert_timeout_s:
            return
        self._revert_timeout_s = revert
        try:
            self._refresh_s = check_revert_timeout(self.settings, revert)
        except ExecutorConfigError as exc:
            # Too late to refuse: refresh as fast as the ticks allow and say so.
            self._refresh_s = self.settings.tick_interval_s
            log.error("%s (refreshing on every tick)", exc)
        else:
            log.info(
                "device revert timeout %s: refreshing the setpoint every %g s",
                "unknown" if revert is None else f"{revert:g} s",
                self._refresh_s,
            )

    async def _write_if_due(self, applied_kw: float, now: float) -> None:
        written, at = self._written_kw, self._write_at
        due = (
            written is None
            or at is None
            or not self._write_ok
            or self._rewrite
            or abs(applied_kw - written) > _TOL_KW
            or not 0.0 <= now - at < self._refresh_s  # a clock stepping back writes too
        )
        if not due:
            return
        try:
            async with asyncio.timeout(self.settings.write_timeout_s):
                await self._controller.write_power_kw(applied_kw)
        except Exception as exc:  # retried next tick; a failing device must not stop the loop
            self._write_failed(applied_kw, now, exc)
            return
        self._writes += 1
        self._rewrite = False
        if not self._write_ok:
            self._write_recovered(now)
        self._write_ok = True
        if written is None or abs(applied_kw - written) > _TOL_KW:
            # Judged from when the write landed: a poll already in flight while we waited for
            # the connection shows the old setpoint and must not count as a mismatch.
            self._new_setpoint(previous=written, new=applied_kw, now=max(now, self._clock()))
        self._written_kw = applied_kw
        self._write_at = now

    def _write_failed(self, kw: float, now: float, exc: Exception) -> None:
        self._write_failures += 1
        self._consecutive_failures += 1
        self._write_ok = False
        problem = _problem(exc, self.settings.write_timeout_s)
        name = getattr(self._controller, "name", type(self._controller).__name__)
        if self._consecutive_failures == 1:
            self._failing_since = now
            log.error(
                "writing %s to %s failed: %s; retrying every tick (repeats at debug level)",
                _describe(kw),
                name,
                problem,
            )
            self._emit(
                ExecutorEventKind.WRITE_FAILED,
                now,
                f"writing {_describe(kw)} to {name} failed: {problem}",
                setpoint_kw=kw,
            )
        else:
            log.debug(
                "writing %s to %s failed again (%d in a row): %s",
                _describe(kw),
                name,
                self._consecutive_failures,
                problem,
            )

    def _write_recovered(self, now: float) -> None:
        since = self._failing_since if self._failing_since is not None else now
        failures, self._consecutive_failures = self._consecutive_failures, 0
        self._failing_since = None
        message = f"setpoint writes succeed again after {failures} failures ({now - since:.1f} s)"
        log.warning("%s", message)
        self._emit(ExecutorEventKind.WRITE_RECOVERED, now, message, setpoint_kw=self._applied_kw)

    def _new_setpoint(self, *, previous: float | None, new: float, now: float) -> None:
        settle = self.settings.settle_s
        ramp = self.settings.device_ramp_kw_per_s
        if ramp is not None:
            settle += abs(new - (previous or 0.0)) / ramp
        self._changed_at = now
        self._settle_until = now + settle
        self._deviating_since = None  # a new setpoint gets a fresh grace period

    # -- read-back --------------------------------------------------------------------------

    def _read_back(self, snapshot: TelemetrySnapshot | None, now: float) -> None:
        written, settle_until = self._written_kw, self._settle_until
        if written is None or settle_until is None:
            return
        settings = self.settings
        changed_at = self._changed_at
        power = _fresh_or_stale(snapshot, Quantity.ACTIVE_POWER_KW)
        if (
            power is not None
            and not power[0]
            and changed_at is not None
            # Only a reading taken after the write, and after the device settled, counts.
            and power[1].timestamp > changed_at
            and power[1].timestamp >= settle_until
        ):
            measured = power[1].value
            deviation = measured - written
            self._deviation_kw = deviation
            tolerance = max(
                settings.deviation_tolerance_kw,
                settings.deviation_tolerance_pct / 100.0 * abs(written),
            )
            if abs(deviation) > tolerance:
                if self._deviating_since is None:
                    self._deviating_since = power[1].timestamp
                if (
                    not self._deviating
                    and now - self._deviating_since >= settings.deviation_grace_s
                ):
                    self._deviating = True
                    self._deviation_events += 1
                    message = (
                        f"battery runs {_describe(measured)} but was set to {_describe(written)} "
                        f"(deviation {deviation:+.1f} kW beyond ±{tolerance:.1f} kW for "
                        f"{now - self._deviating_since:.0f} s)"
                    )
                    log.warning("%s", message)
                    self._emit(
                        ExecutorEventKind.DEVIATION,
                        now,
                        message,
                        setpoint_kw=written,
                        measured_kw=measured,
                    )
            else:
                self._deviating_since = None
                if self._deviating:
                    self._deviating = False
                    message = f"battery follows its setpoint again ({_describe(measured)})"
                    log.info("%s", message)
                    self._emit(
                        ExecutorEventKind.DEVIATION_CLEARED,
                        now,
                        message,
                        setpoint_kw=written,
                        measured_kw=measured,
                    )
        self._check_readback(snapshot, written, now)

    def _check_readback(
        self, snapshot: TelemetrySnapshot | None, written: float, now: float
    ) -> None:
        readback = _fresh_or_stale(snapshot, Quantity.SETPOINT_KW)
        changed_at = self._changed_at
        # Only a reading taken after the write can show it.
        if readback is None or readback[0] or changed_at is None:
            return
        if readback[1].timestamp <= changed_at:
            return
        device_kw = readback[1].value
        if abs(device_kw - written) > self.settings.setpoint_readback_tolerance_kw:
            if not self._mismatch:
                self._mismatch = True
                self._rewrite = True  # e.g. the device reverted: restore it on the next tick
                self._mismatch_events += 1
                message = (
                    f"device reports setpoint {device_kw:.1f} kW, the agent wrote "
                    f"{written:.1f} kW (reverted, clamped or overwritten by someone else?)"
                )
                log.warning("%s", message)
                self._emit(
                    ExecutorEventKind.SETPOINT_MISMATCH,
                    now,
                    message,
                    setpoint_kw=written,
                    measured_kw=device_kw,
                )
        elif self._mismatch:
            self._mismatch = False
            message = f"device setpoint readback matches again ({device_kw:.1f} kW)"
            log.info("%s", message)
            self._emit(
                ExecutorEventKind.SETPOINT_MISMATCH_CLEARED,
                now,
                message,
                setpoint_kw=written,
                measured_kw=device_kw,
            )

    # -- output -----------------------------------------------------------------------------

    def drain_events(self) -> list[AnyEvent]:
        """Executor and guard events since the last drain, oldest first."""
        events: list[AnyEvent] = [*self._guard.drain_events(), *self._events]
        self._events.clear()
        events.sort(key=lambda e: e.at)  # stable: at equal times guard events come first
        return events

    @property
    def refresh_interval_s(self) -> float:
        """The effective refresh interval for the device's revert timeout."""
        return self._refresh_s

    def status(self) -> ExecutorStatus:
        schedule = self._schedule_key
        return ExecutorStatus(
            at=self._at,
            source=self._source,
            requested_kw=self._requested_kw,
            applied_kw=self._applied_kw,
            reasons=self._reasons,
            guard_detail=self._guard_detail,
            schedule_source=schedule[0] if schedule else None,
            schedule_version=schedule[1] if schedule else None,
            fallback_cause=self._fallback_cause,
            fallback_holding_last=self._holding_last and self._source is SetpointSource.FALLBACK,
            command=self._command,
            last_written_kw=self._written_kw,
            last_write_at=self._write_at,
            write_ok=self._write_ok,
            refresh_interval_s=self._refresh_s,
            deviating=self._deviating,
            deviation_kw=self._deviation_kw,
            setpoint_mismatch=self._mismatch,
            ticks_total=self._ticks,
            writes_total=self._writes,
            write_failures_total=self._write_failures,
            deviation_events_total=self._deviation_events,
            setpoint_mismatch_events_total=self._mismatch_events,
        )

    # -- helpers ----------------------------------------------------------------------------

    def _emit(
        self,
        kind: ExecutorEventKind,
        at: float,
        message: str,
        *,
        setpoint_kw: float | None = None,
        measured_kw: float | None = None,
        schedule_source: ScheduleSource | None = None,
        schedule_version: int | None = None,
        fallback_cause: FallbackCause | None = None,
    ) -> None:
        self._events.append(
            ExecutorEvent(
                kind=kind,
                at=at,
                message=message,
                setpoint_kw=setpoint_kw,
                measured_kw=measured_kw,
                schedule_source=schedule_source,
                schedule_version=schedule_version,
                fallback_cause=fallback_cause,
            )
        )

    def _first_failure(self, what: str) -> bool:
        """True the first time ``what`` goes wrong (log loudly), False while it repeats."""
        if what in self._complained:
            return False
        self._complained.add(what)
        return True

    def _recovered(self, what: str, message: str) -> None:
        if what in self._complained:
            self._complained.discard(what)
            log.warning("%s", message)


_CAUSE_TEXT = {
    FallbackCause.NO_SCHEDULE: "no schedule in force",
    FallbackCause.BETWEEN_INTERVALS: "the schedule has no interval now",
    FallbackCause.PLANE_SILENT: "the control plane has been silent too long",
}


def _revert_timeout(controller: BatteryController) -> float | None:
    """The device's revert timeout in s; None when unknown or disabled (0)."""
    value = getattr(controller, "revert_timeout_s", None)
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value) if math.isfinite(value) and value > 0 else None


def _fresh_or_stale(
    snapshot: TelemetrySnapshot | None, quantity: Quantity
) -> tuple[bool, Reading] | None:
    """(stale, reading) for a quantity with a finite value, None when there is none."""
    if snapshot is None:
        return None
    reading = snapshot.reading(quantity)
    if reading is None or not _finite(reading.value) or not _finite(reading.timestamp):
        return None
    return snapshot.is_stale(quantity), reading


def _finite(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def _problem(exc: Exception, timeout_s: float) -> str:
    if isinstance(exc, TimeoutError) and not str(exc):
        return f"no answer within {timeout_s:g} s"
    return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__


def _describe(kw: float) -> str:
    if kw > 0:
        return f"discharge {kw:.1f} kW"
    if kw < 0:
        return f"charge {-kw:.1f} kW"
    return "0 kW"
