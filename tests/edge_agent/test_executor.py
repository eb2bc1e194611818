"""The schedule executor with fakes: a fake clock, a fake device, a real guard and store.

Time is simulated throughout: ticks are called at chosen instants (time leaps included) and
``run`` gets a sleep that only moves the fake clock.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Literal

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from edge_agent.executor import (
    Executor,
    ExecutorConfigError,
    ExecutorEvent,
    ExecutorEventKind,
    ExecutorSettings,
    ExecutorStatus,
    FallbackCause,
    SetpointSource,
    check_revert_timeout,
)
from edge_agent.guard import GuardEvent, GuardLimits, GuardReason, SafetyGuard
from edge_agent.readings import Quantity, Reading
from edge_agent.schedule_store import Schedule, ScheduleInterval, ScheduleSource, ScheduleStore

T0 = 1_767_225_600.0  # 2026-01-01T00:00:00Z, a quarter-hour boundary
Q = 900.0
SITE = "site-test-01"
K = ExecutorEventKind
PLANE, CLI = ScheduleSource.PLANE, ScheduleSource.CLI


# -- fakes ------------------------------------------------------------------------------------


class FakeClock:
    def __init__(self, t: float = T0) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t

    def at(self, offset_s: float) -> float:
        self.t = T0 + offset_s
        return self.t


class FakeSnapshot:
    """Quacks like ``coordinator.Snapshot`` for what the executor reads."""

    def __init__(self, readings: dict[Quantity, Reading], stale: set[Quantity]) -> None:
        self._readings = readings
        self._stale = stale

    def reading(self, quantity: Quantity) -> Reading | None:
        return self._readings.get(quantity)

    def is_stale(self, quantity: Quantity) -> bool:
        return quantity not in self._readings or quantity in self._stale


class FakeDevice:
    """A battery inverter: takes writes, reports SoC/power/readback, may fail, lag or revert."""

    name = "fake"

    def __init__(
        self,
        clock: FakeClock,
        *,
        soc_pct: float = 50.0,
        revert_timeout_s: float | None = 60.0,
        ramp_kw_per_s: float | None = None,
    ) -> None:
        self.clock = clock
        self.soc_pct = soc_pct
        self.revert_timeout_s = revert_timeout_s
        self.ramp_kw_per_s = ramp_kw_per_s
        self.setpoint_kw = 0.0
        self.power_kw = 0.0
        self.follows = True  # False: the inverter ignores its setpoint (power stays put)
        self.readback_kw: float | None = None  # what SETPOINT_KW reports instead of the truth
        self.fail_next = 0  # the next n writes raise
        self.hang = False  # writes never complete
        self.attempts = 0
        self.writes: list[tuple[float, float]] = []
        self.stale: set[Quantity] = set()
        self.snapshot_error: Exception | None = None
        self._updated = clock()
        self.reverted_at: list[float] = []

    async def write_power_kw(self, power_kw: float) -> None:
        self.attempts += 1
        if self.hang:
            await asyncio.Event().wait()
        if self.fail_next:
            self.fail_next -= 1
            raise ConnectionError("connection reset by peer")
        self._update()
        self.writes.append((self.clock(), power_kw))
        self.setpoint_kw = power_kw

    def _update(self) -> None:
        now = self.clock()
        if (
            self.revert_timeout_s
            and self.writes
            and self.setpoint_kw != 0.0
            and now - self.writes[-1][0] > self.revert_timeout_s
        ):
            self.reverted_at.append(now)
            self.setpoint_kw = 0.0
        if self.follows:
            if self.ramp_kw_per_s is None:
                self.power_kw = self.setpoint_kw
            else:
                step = self.ramp_kw_per_s * (now - self._updated)
                delta = max(-step, min(step, self.setpoint_kw - self.power_kw))
                self.power_kw += delta
        self._updated = now

    def snapshot(self, now: float) -> FakeSnapshot:
        if self.snapshot_error is not None:
            raise self.snapshot_error
        self._update()
        readback = self.setpoint_kw if self.readback_kw is None else self.readback_kw
        values = {
            Quantity.SOC_PCT: self.soc_pct,
            Quantity.ACTIVE_POWER_KW: self.power_kw,
            Quantity.SETPOINT_KW: readback,
        }
        readings = {q: Reading(q, v, now, "fake") for q, v in values.items()}
        return FakeSnapshot(readings, self.stale)

    def last_kw(self) -> float | None:
        return self.writes[-1][1] if self.writes else None


def plan(
    *powers: float | None,
    start: float = T0,
    version: int = 1,
    source: ScheduleSource = PLANE,
    valid_until: float | None = None,
) -> Schedule:
    """Consecutive quarter-hours from start (None = no interval there)."""
    return Schedule(
        site_id=SITE,
        version=version,
        created_at=start - 3600,
        valid_from=start,
        valid_until=start + len(powers) * Q if valid_until is None else valid_until,
        intervals=tuple(
            ScheduleInterval(start + i * Q, p) for i, p in enumerate(powers) if p is not None
        ),
        source=source,
    )


LIMITS = GuardLimits(capacity_kwh=200.0, max_charge_kw=100.0, max_discharge_kw=100.0)


class Rig:
    """An executor with its fakes; ``tick(offset)`` ticks at T0 + offset."""

    def __init__(
        self,
        path: Path,
        *,
        device: FakeDevice | None = None,
        clock: FakeClock | None = None,
        silent_for: Callable[[], float | None] = lambda: None,
        synchronous: Literal["FULL", "NORMAL"] = "FULL",
        **overrides: object,
    ) -> None:
        self.clock = clock or FakeClock()
        self.device = device or FakeDevice(self.clock)
        self.store = ScheduleStore(path, site_id=SITE, clock=self.clock, synchronous=synchronous)
        self.guard = SafetyGuard(LIMITS)
        self.settings = ExecutorSettings(**overrides)  # type: ignore[arg-type]
        self.sleeps: list[float] = []
        self.executor = Executor(
            self.settings,
            guard=self.guard,
            controller=self.device,
            store=self.store,
            snapshot_fn=self.device.snapshot,
            clock=self.clock,
            plane_silent_for_s=silent_for,
            sleep=self._sleep,
        )

    async def _sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.clock.t += seconds
        await asyncio.sleep(0)  # let the test look in between, as a real sleep would

    def save(self, schedule: Schedule) -> None:
        assert self.store.save(schedule, now=T0 - 3600).accepted

    async def tick(self, offset_s: float) -> ExecutorStatus:
        self.clock.at(offset_s)
        return await self.executor.tick()

    def events(self) -> list[ExecutorEvent]:
        return [e for e in self.executor.drain_events() if isinstance(e, ExecutorEvent)]

    def kinds(self) -> list[ExecutorEventKind]:
        return [e.kind for e in self.events()]


@pytest.fixture
def rig_path(tmp_path: Path) -> Path:
    return tmp_path / "schedules.sqlite"


@pytest.fixture
def rig(rig_path: Path) -> Iterator[Rig]:
    r = Rig(rig_path)
    yield r
    r.store.close()


# -- schedule setpoints -----------------------------------------------------------------------


async def test_interval_setpoints_apply_at_their_boundaries(rig: Rig) -> None:
    rig.device.revert_timeout_s = None  # the table leaps far beyond any revert timeout
    rig.save(plan(40.0, -30.0, 10.0, start=T0 + Q))
    table = [
        # offset, applied kW, source
        (0, 0.0, SetpointSource.FALLBACK),  # before valid_from
        (899, 0.0, SetpointSource.FALLBACK),
        (900, 40.0, SetpointSource.SCHEDULE),
        (1799, 40.0, SetpointSource.SCHEDULE),
        (1800, -30.0, SetpointSource.SCHEDULE),
        (2699.5, -30.0, SetpointSource.SCHEDULE),
        (2700, 10.0, SetpointSource.SCHEDULE),
        (3599, 10.0, SetpointSource.SCHEDULE),
        (3600, 0.0, SetpointSource.FALLBACK),  # valid_until
    ]
    for offset, kw, source in table:
        status = await rig.tick(offset)
        assert (status.applied_kw, status.source) == (kw, source), offset
        assert rig.device.last_kw() == kw, offset
    # Every change was written at the tick on the boundary itself.
    changes = [
        (t - T0, kw) for (_, prev), (t, kw) in itertools.pairwise(rig.device.writes) if kw != prev
    ]
    assert changes == [(900, 40.0), (1800, -30.0), (2700, 10.0), (3600, 0.0)]
    assert rig.kinds() == [
        K.FALLBACK_ENGAGED,  # no schedule yet at start
        K.SCHEDULE_STARTED,
        K.FALLBACK_RELEASED,
        K.SCHEDULE_ENDED,
        K.FALLBACK_ENGAGED,
    ]
    status = rig.executor.status()
    assert status.schedule_version is None and status.fallback_cause is FallbackCause.NO_SCHEDULE


async def test_status_names_the_schedule_and_the_write(rig: Rig) -> None:
    rig.save(plan(25.0, version=7))
    status = await rig.tick(60)
    assert status.source is SetpointSource.SCHEDULE
    assert (status.schedule_source, status.schedule_version) == (PLANE, 7)
    assert (status.requested_kw, status.applied_kw, status.reasons) == (25.0, 25.0, frozenset())
    assert (status.last_written_kw, status.last_write_at, status.write_ok) == (25.0, T0 + 60, True)
    assert status.fallback_cause is None and not status.deviating
    assert status.ticks_total == status.writes_total == 1


async def test_a_restarted_executor_continues_the_current_interval(rig_path: Path) -> None:
    first = Rig(rig_path)
    first.save(plan(40.0, -30.0))
    assert (await first.tick(100)).applied_kw == 40.0
    first.store.close()

    second = Rig(rig_path)  # a new process: new store on the same file, new executor
    try:
        status = await second.tick(450)
        assert (status.applied_kw, status.source) == (40.0, SetpointSource.SCHEDULE)
        assert status.schedule_version == 1
        assert second.device.writes == [(T0 + 450, 40.0)]
        assert (await second.tick(900)).applied_kw == -30.0
    finally:
        second.store.close()


# -- refresh and the revert timeout -----------------------------------------------------------


async def test_refresh_keeps_the_setpoint_alive_within_a_third_of_the_revert_timeout(
    rig_path: Path,
) -> None:
    clock = FakeClock()
    device = FakeDevice(clock, revert_timeout_s=30.0)
    rig = Rig(rig_path, device=device, clock=clock, refresh_interval_s=20.0)
    rig.save(plan(50.0, 50.0))
    assert rig.executor.refresh_interval_s == 10.0  # min(20, 30 / 3)
    for second in range(0, 121):
        await rig.tick(second)
    times = [t - T0 for t, _ in device.writes]
    assert times == [float(s) for s in range(0, 121, 10)]  # not 121 writes, and never late
    # Time leaps: a stalled loop writes on its first tick back, whatever the value.
    await rig.tick(146)
    await rig.tick(147)
    await rig.tick(170)
    assert [t - T0 for t, _ in device.writes[-3:]] == [120.0, 146.0, 170.0]
    # A clock stepping back writes too (the elapsed time is unknown).
    await rig.tick(100)
    assert device.writes[-1][0] == T0 + 100
    assert device.reverted_at == []


async def test_without_a_known_revert_timeout_the_configured_refresh_applies(
    rig_path: Path,
) -> None:
    clock = FakeClock()
    device = FakeDevice(clock, revert_timeout_s=None)
    rig = Rig(rig_path, device=device, clock=clock, refresh_interval_s=10.0)
    assert rig.executor.refresh_interval_s == 10.0
    # The controller learns the device's timeout after connecting: the executor follows it.
    device.revert_timeout_s = 15.0
    await rig.tick(0)
    assert rig.executor.refresh_interval_s == 5.0
    assert rig.executor.status().refresh_interval_s == 5.0


async def test_a_revert_timeout_learnt_too_late_is_refreshed_on_every_tick(
    rig_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    clock = FakeClock()
    device = FakeDevice(clock, revert_timeout_s=None)
    rig = Rig(rig_path, device=device, clock=clock, refresh_interval_s=10.0)
    device.revert_timeout_s = 8.0  # configured 10 s would let it revert: cannot refuse now
    with caplog.at_level(logging.ERROR, logger="edge_agent.executor"):
        await rig.tick(0)
    assert rig.executor.refresh_interval_s == rig.settings.tick_interval_s
    assert "revert timeout (8 s)" in caplog.text


async def test_run_ticks_on_the_injected_sleep_and_survives_a_broken_device(
    rig_path: Path,
) -> None:
    rig = Rig(rig_path, tick_interval_s=1.0, refresh_interval_s=5.0)
    rig.save(plan(30.0))
    rig.device.fail_next = 3

    async def stop_after(n: int) -> None:
        while len(rig.sleeps) < n:
            await asyncio.sleep(0)

    task = asyncio.create_task(rig.executor.run())
    await asyncio.wait_for(stop_after(30), timeout=5)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert set(rig.sleeps) == {1.0}
    status = rig.executor.status()
    assert status.write_failures_total == 3
    assert [t - T0 for t, _ in rig.device.writes][:3] == [3.0, 8.0, 13.0]


@given(
    gaps=st.lists(st.floats(min_value=0.01, max_value=1.0), min_size=1, max_size=120),
    revert=st.sampled_from([3.0, 10.0, 60.0]),
)
@settings(
    max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
def test_ticks_at_most_one_interval_apart_never_let_the_device_revert(
    tmp_path: Path, gaps: list[float], revert: float
) -> None:
    async def scenario(path: Path) -> None:
        clock = FakeClock()
        device = FakeDevice(clock, revert_timeout_s=revert)
        rig = Rig(
            path, device=device, clock=clock, synchronous="NORMAL", refresh_interval_s=revert / 2
        )
        try:
            rig.save(plan(60.0))
            offset = 0.0
            for gap in gaps:
                await rig.tick(offset)
                offset += gap
            times = [*(t for t, _ in device.writes), clock.t]
            assert max(b - a for a, b in itertools.pairwise(times)) < revert
            assert device.reverted_at == []
        finally:
            rig.store.close()

    with tempfile.TemporaryDirectory(dir=tmp_path) as tmp:
        asyncio.run(scenario(Path(tmp) / "schedules.sqlite"))


# -- configuration ----------------------------------------------------------------------------


def test_a_refresh_at_or_beyond_the_revert_timeout_is_refused(rig_path: Path) -> None:
    clock = FakeClock()
    with pytest.raises(ExecutorConfigError, match=r"refresh_interval_s \(60 s\).*revert timeout"):
        Rig(rig_path, device=FakeDevice(clock, revert_timeout_s=60.0), refresh_interval_s=60.0)
    with pytest.raises(ExecutorConfigError, match="at most 30 s"):
        check_revert_timeout(ExecutorSettings(refresh_interval_s=120.0), 90.0)
    # Below the timeout it is accepted, capped at a third of it.
    assert check_revert_timeout(ExecutorSettings(refresh_interval_s=59.0), 60.0) == 20.0
    assert check_revert_timeout(ExecutorSettings(refresh_interval_s=5.0), 60.0) == 5.0
    assert check_revert_timeout(ExecutorSettings(refresh_interval_s=5.0), None) == 5.0


def test_ticks_too_slow_for_the_revert_timeout_are_refused() -> None:
    slow = ExecutorSettings(tick_interval_s=40.0, refresh_interval_s=40.0)
    with pytest.raises(ExecutorConfigError, match=r"tick_interval_s \(40 s\) is too slow"):
        check_revert_timeout(slow, 60.0)
    assert check_revert_timeout(slow, 120.0) == 40.0


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"tick_interval_s": 5.0, "refresh_interval_s": 2.0}, "must not exceed"),
        ({"fallback_policy": "hold_last_for_s"}, "needs hold_last_for_s > 0"),
        ({"fallback_policy": "hold"}, "fallback_policy"),
        ({"deviation_tolerance_kw": -1.0}, "deviation_tolerance_kw"),
        ({"refresh_interval_s": float("inf")}, "refresh_interval_s"),
        ({"plane_silence_timeout_s": 0}, "plane_silence_timeout_s"),
        ({"refresh_s": 3}, "refresh_s"),  # typo: extra fields are refused
    ],
)
def test_contradicting_settings_are_refused(overrides: dict[str, object], message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        ExecutorSettings(**overrides)  # type: ignore[arg-type]


# -- fallback ---------------------------------------------------------------------------------


async def test_fallback_after_the_validity_ends_and_between_intervals(rig_path: Path) -> None:
    rig = Rig(rig_path, fallback_kw=-5.0)
    rig.save(plan(40.0, None, 20.0))
    table = [
        (0, 40.0, None),
        (900, -5.0, FallbackCause.BETWEEN_INTERVALS),
        (1800, 20.0, None),
        (2700, -5.0, FallbackCause.NO_SCHEDULE),
    ]
    for offset, kw, cause in table:
        status = await rig.tick(offset)
        assert (status.applied_kw, status.fallback_cause) == (kw, cause), offset
    events = rig.events()
    assert [(e.kind, e.fallback_cause) for e in events] == [
        (K.SCHEDULE_STARTED, None),
        (K.FALLBACK_ENGAGED, FallbackCause.BETWEEN_INTERVALS),
        (K.FALLBACK_RELEASED, FallbackCause.BETWEEN_INTERVALS),
        (K.SCHEDULE_ENDED, None),
        (K.FALLBACK_ENGAGED, FallbackCause.NO_SCHEDULE),
    ]
    assert events[-1].setpoint_kw == -5.0 and "no schedule in force" in events[-1].message
    rig.store.close()


async def test_plane_silence_falls_back_and_recovers(rig_path: Path) -> None:
    silent: list[float | None] = [None]
    rig = Rig(rig_path, silent_for=lambda: silent[0], plane_silence_timeout_s=300.0)
    rig.save(plan(40.0, 40.0))
    table = [
        (0, None, 40.0, None),
        (60, 300.0, 40.0, None),  # at the limit: not yet
        (61, 301.0, 0.0, FallbackCause.PLANE_SILENT),
        (500, 740.0, 0.0, FallbackCause.PLANE_SILENT),
        (501, None, 40.0, None),  # the plane is back
    ]
    for offset, silence, kw, cause in table:
        silent[0] = silence
        status = await rig.tick(offset)
        assert (status.applied_kw, status.fallback_cause) == (kw, cause), offset
    assert rig.kinds() == [K.SCHEDULE_STARTED, K.FALLBACK_ENGAGED, K.FALLBACK_RELEASED]
    rig.store.close()


async def test_plane_silence_leaves_a_local_schedule_running(rig_path: Path) -> None:
    rig = Rig(rig_path, silent_for=lambda: 10_000.0, plane_silence_timeout_s=300.0)
    rig.save(plan(40.0))
    assert (await rig.tick(0)).fallback_cause is FallbackCause.PLANE_SILENT
    rig.save(plan(-25.0, source=CLI))  # an operator's schedule on site wins, link or not
    status = await rig.tick(10)
    assert (status.applied_kw, status.source, status.schedule_source) == (
        -25.0,
        SetpointSource.SCHEDULE,
        CLI,
    )
    rig.store.close()


async def test_an_uplink_that_cannot_answer_counts_as_silent(rig_path: Path) -> None:
    def broken() -> float | None:
        raise RuntimeError("uplink gone")

    rig = Rig(rig_path, silent_for=broken)
    rig.save(plan(40.0))
    status = await rig.tick(0)
    assert (status.applied_kw, status.fallback_cause) == (0.0, FallbackCause.PLANE_SILENT)
    rig.store.close()


async def test_hold_last_keeps_the_last_scheduled_value_then_goes_to_the_fallback(
    rig_path: Path,
) -> None:
    rig = Rig(rig_path, fallback_policy="hold_last_for_s", hold_last_for_s=120.0)
    rig.save(plan(35.0, None, 20.0))
    table = [
        # offset, applied, source, holding the last value
        (899, 35.0, SetpointSource.SCHEDULE, False),
        (900, 35.0, SetpointSource.FALLBACK, True),  # gap: keep 35 kW ...
        (1018.9, 35.0, SetpointSource.FALLBACK, True),
        (1019, 0.0, SetpointSource.FALLBACK, False),  # ... until 120 s after the last value
        (1800, 20.0, SetpointSource.SCHEDULE, False),
        (2699, 20.0, SetpointSource.SCHEDULE, False),
        (2700, 20.0, SetpointSource.FALLBACK, True),  # validity ended: the same
        (2818, 20.0, SetpointSource.FALLBACK, True),
        (2819, 0.0, SetpointSource.FALLBACK, False),
    ]
    for offset, kw, source, holding in table:
        status = await rig.tick(offset)
        assert (status.applied_kw, status.source, status.fallback_holding_last) == (
            kw,
            source,
            holding,
        ), offset
    rig.store.close()


async def test_a_fresh_start_without_schedule_holds_nothing(rig_path: Path) -> None:
    rig = Rig(rig_path, fallback_policy="hold_last_for_s", hold_last_for_s=600.0)
    status = await rig.tick(0)
    assert (status.applied_kw, status.fallback_holding_last) == (0.0, False)
    rig.store.close()


# -- commands ---------------------------------------------------------------------------------


async def test_a_command_overrides_the_schedule_until_it_expires(rig: Rig) -> None:
    rig.device.revert_timeout_s = None  # the ticks leap
    rig.save(plan(40.0, 40.0))
    await rig.tick(0)
    rig.executor.set_command(-20.0, duration_s=300.0, origin="cli:technician", now=T0 + 10)
    status = await rig.tick(10)
    assert (status.applied_kw, status.source) == (-20.0, SetpointSource.COMMAND)
    assert status.command is not None and status.command.until == T0 + 310
    assert (await rig.tick(309)).applied_kw == -20.0
    status = await rig.tick(310)
    assert (status.applied_kw, status.source, status.command) == (
        40.0,
        SetpointSource.SCHEDULE,
        None,
    )
    assert rig.kinds() == [K.SCHEDULE_STARTED, K.COMMAND_STARTED, K.COMMAND_ENDED]


async def test_a_command_beats_the_fallback_and_still_passes_the_guard(rig: Rig) -> None:
    await rig.tick(0)  # no schedule: fallback
    rig.executor.set_command(500.0, duration_s=60.0, origin="plane", now=T0)
    status = await rig.tick(1)
    assert (status.requested_kw, status.applied_kw) == (500.0, 100.0)
    assert status.reasons == {GuardReason.POWER_LIMIT}
    assert rig.executor.clear_command(reason="done", now=T0 + 2)
    assert not rig.executor.clear_command(reason="again", now=T0 + 2)
    assert (await rig.tick(2)).source is SetpointSource.FALLBACK
    assert rig.kinds() == [
        K.FALLBACK_ENGAGED,
        K.COMMAND_STARTED,
        K.FALLBACK_RELEASED,
        K.COMMAND_ENDED,
        K.FALLBACK_ENGAGED,
    ]


@pytest.mark.parametrize(
    ("power_kw", "duration_s"), [(float("nan"), 60.0), (10.0, 0.0), (10.0, 5 * 3600.0)]
)
def test_impossible_commands_are_refused(rig: Rig, power_kw: float, duration_s: float) -> None:
    with pytest.raises(ValueError, match="must be"):
        rig.executor.set_command(power_kw, duration_s=duration_s, origin="cli")
    assert rig.executor.status().command is None


# -- the guard --------------------------------------------------------------------------------


async def test_guard_interventions_pass_through(rig: Rig) -> None:
    rig.save(plan(50.0, -50.0))
    rig.device.soc_pct = 14.0  # below the 15 % floor
    status = await rig.tick(0)
    assert (status.requested_kw, status.applied_kw) == (50.0, 0.0)
    assert status.reasons == {GuardReason.SOC_FLOOR}
    assert "floor" in status.guard_detail
    assert rig.device.last_kw() == 0.0
    assert (await rig.tick(900)).applied_kw == -50.0  # charging at the floor is fine
    events = rig.executor.drain_events()
    guard_events = [e for e in events if isinstance(e, GuardEvent)]
    assert [e.reasons for e in guard_events] == [{GuardReason.SOC_FLOOR}, frozenset()]
    assert [e.at for e in events] == sorted(e.at for e in events)


async def test_stale_or_missing_telemetry_holds_zero(rig: Rig) -> None:
    rig.save(plan(50.0))
    rig.device.stale = {Quantity.SOC_PCT}  # e.g. the poll fails: flagged stale, young
    status = await rig.tick(0)
    assert (status.applied_kw, status.reasons) == (0.0, frozenset({GuardReason.STALE_TELEMETRY}))
    rig.device.stale = set()
    rig.device.snapshot_error = RuntimeError("coordinator exploded")
    status = await rig.tick(1)  # does not raise
    assert (status.applied_kw, status.reasons) == (0.0, frozenset({GuardReason.STALE_TELEMETRY}))
    rig.device.snapshot_error = None
    assert (await rig.tick(2)).applied_kw == 50.0


async def test_a_guard_stop_holds_zero_until_resumed(rig: Rig) -> None:
    rig.save(plan(50.0))
    rig.guard.stop(reason="technician on site", now=T0)
    status = await rig.tick(0)
    assert (status.applied_kw, status.reasons) == (0.0, frozenset({GuardReason.COMMAND_STOP}))
    rig.guard.resume(now=T0 + 5)
    assert (await rig.tick(5)).applied_kw == 50.0


# -- write failures ---------------------------------------------------------------------------


async def test_write_failures_are_retried_counted_and_logged_once(
    rig: Rig, caplog: pytest.LogCaptureFixture
) -> None:
    rig.save(plan(30.0))
    rig.device.fail_next = 3
    with caplog.at_level(logging.DEBUG, logger="edge_agent.executor"):
        for second in range(5):
            status = await rig.tick(second)
    assert rig.device.attempts == 4  # three failures retried on every tick, then the refresh waits
    assert rig.device.writes == [(T0 + 3, 30.0)]
    assert (status.write_failures_total, status.writes_total, status.write_ok) == (3, 1, True)
    assert status.last_write_at == T0 + 3
    failed = [
        r for r in caplog.records if r.name == "edge_agent.executor" and "failed" in r.getMessage()
    ]
    assert [r.levelno for r in failed] == [logging.ERROR, logging.DEBUG, logging.DEBUG]
    assert "connection reset by peer" in failed[0].getMessage()
    events = [e for e in rig.events() if e.kind in (K.WRITE_FAILED, K.WRITE_RECOVERED)]
    assert [(e.kind, e.at - T0) for e in events] == [(K.WRITE_FAILED, 0), (K.WRITE_RECOVERED, 3)]
    assert "after 3 failures" in events[1].message


async def test_a_write_that_never_answers_times_out(rig_path: Path) -> None:
    rig = Rig(rig_path, write_timeout_s=0.01)
    rig.save(plan(30.0))
    rig.device.hang = True
    status = await rig.tick(0)
    assert (status.write_ok, status.write_failures_total) == (False, 1)
    assert "no answer within 0.01 s" in rig.events()[-1].message
    rig.device.hang = False
    assert (await rig.tick(1)).write_ok
    rig.store.close()


# -- read-back --------------------------------------------------------------------------------


async def test_a_deviation_is_reported_after_the_grace_period_once_and_cleared(
    rig_path: Path,
) -> None:
    rig = Rig(rig_path, settle_s=5.0, deviation_grace_s=30.0, deviation_tolerance_kw=2.0)
    rig.save(plan(50.0))
    rig.device.follows = False  # the inverter stays at 0 kW
    for second in range(0, 35):
        status = await rig.tick(second)
    assert not status.deviating  # settled at 5 s, deviating since 5 s: grace ends at 35 s
    status = await rig.tick(35)
    assert status.deviating and status.deviation_kw == -50.0
    for second in range(36, 60):
        await rig.tick(second)
    rig.device.follows = True
    status = await rig.tick(60)
    assert not status.deviating and status.deviation_events_total == 1
    events = [e for e in rig.events() if e.kind in (K.DEVIATION, K.DEVIATION_CLEARED)]
    assert [(e.kind, e.at - T0) for e in events] == [(K.DEVIATION, 35), (K.DEVIATION_CLEARED, 60)]
    assert (events[0].setpoint_kw, events[0].measured_kw) == (50.0, 0.0)
    rig.store.close()


async def test_a_short_deviation_within_grace_is_not_reported(rig_path: Path) -> None:
    rig = Rig(rig_path, settle_s=0.0, deviation_grace_s=10.0)
    rig.save(plan(50.0))
    await rig.tick(0)
    rig.device.follows = False
    rig.device.power_kw = 20.0
    for second in range(1, 10):
        await rig.tick(second)
    rig.device.follows = True
    for second in range(10, 30):
        status = await rig.tick(second)
    assert status.deviation_events_total == 0
    assert K.DEVIATION not in rig.kinds()
    rig.store.close()


async def test_tolerance_is_the_larger_of_kw_and_percent(rig_path: Path) -> None:
    rig = Rig(
        rig_path,
        settle_s=0.0,
        deviation_grace_s=0.0,
        deviation_tolerance_kw=2.0,
        deviation_tolerance_pct=5.0,
    )
    rig.save(plan(80.0))  # 5 % of 80 kW = 4 kW > 2 kW
    await rig.tick(0)
    rig.device.follows = False
    rig.device.power_kw = 76.5
    assert not (await rig.tick(1)).deviating
    rig.device.power_kw = 75.5
    assert (await rig.tick(2)).deviating
    rig.store.close()


async def test_the_ramp_is_allowed_for_before_judging(rig_path: Path) -> None:
    clock = FakeClock()
    device = FakeDevice(clock, ramp_kw_per_s=1.0)  # 50 s to reach 50 kW
    rig = Rig(
        rig_path,
        device=device,
        clock=clock,
        settle_s=2.0,
        deviation_grace_s=10.0,
        device_ramp_kw_per_s=1.0,
    )
    rig.save(plan(50.0))
    for second in range(0, 120):
        status = await rig.tick(second)
    assert status.deviation_events_total == 0
    # Without the ramp allowance the same device is reported while it ramps.
    clock2 = FakeClock()
    device2 = FakeDevice(clock2, ramp_kw_per_s=1.0)
    rig2 = Rig(
        rig_path.with_name("other.sqlite"),
        device=device2,
        clock=clock2,
        settle_s=2.0,
        deviation_grace_s=10.0,
    )
    rig2.save(plan(50.0))
    for second in range(0, 120):
        status = await rig2.tick(second)
    assert status.deviation_events_total == 1 and not status.deviating
    rig.store.close()
    rig2.store.close()


async def test_a_setpoint_readback_that_differs_is_reported_once(rig: Rig) -> None:
    rig.save(plan(40.0))
    await rig.tick(0)  # readings from the same instant as the write do not count
    rig.device.readback_kw = 0.0  # e.g. reverted, or someone else writes the register
    for second in range(1, 5):
        status = await rig.tick(second)
    assert status.setpoint_mismatch and status.setpoint_mismatch_events_total == 1
    # The mismatch made the executor write once more at once, not on every tick.
    assert [t - T0 for t, _ in rig.device.writes] == [0, 2]
    rig.device.readback_kw = 40.04  # register resolution: within tolerance
    status = await rig.tick(5)
    assert not status.setpoint_mismatch
    events = [e for e in rig.events() if e.kind.value.startswith("setpoint_mismatch")]
    assert [(e.kind, e.at - T0, e.measured_kw) for e in events] == [
        (K.SETPOINT_MISMATCH, 1, 0.0),
        (K.SETPOINT_MISMATCH_CLEARED, 5, 40.04),
    ]


async def test_a_broken_store_runs_the_fallback_without_raising(
    rig: Rig, monkeypatch: pytest.MonkeyPatch
) -> None:
    rig.save(plan(40.0))

    def broken(now: float | None = None) -> Schedule | None:
        raise RuntimeError("disk gone")

    monkeypatch.setattr(rig.store, "current", broken)
    status = await rig.tick(0)
    assert (status.applied_kw, status.fallback_cause) == (0.0, FallbackCause.NO_SCHEDULE)
