"""Properties of the safety guard over random limits, battery states and schedules."""

from __future__ import annotations

import math
from dataclasses import dataclass

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from edge_agent.guard import (
    GuardDecision,
    GuardInput,
    GuardLimits,
    GuardReason,
    Reading,
    SafetyGuard,
)

T0 = 1_767_225_600.0
PROPERTY_SETTINGS = settings(
    max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)
# kW comparisons: the guard's arithmetic on values up to ~1e4 kW is exact to ~1e-12 kW.
KW_EPS = 1e-6
# Closed loop, in SoC percentage points. The taper allows (soc - floor) / 100 * capacity / tau,
# so a step held for dt <= eta * tau removes at most dt / (eta * tau) <= 1 of the headroom left:
# an explicit Euler step of an exponential decay no longer than its time constant, which never
# crosses zero. The discretisation error is therefore exactly zero and eps only has to cover
# float rounding of a few operations on values <= 100 (~1e-13).
SOC_EPS = 1e-9
# Reasons that may pull the output toward 0 kW faster than the ramp: everything but the ramp
# itself and the power limits (constant here, and the previous output was already within them).
RAMP_CAN_BE_OVERRIDDEN_BY = frozenset(GuardReason) - {
    GuardReason.RAMP_LIMIT,
    GuardReason.POWER_LIMIT,
}
HARD_ZERO = frozenset(
    {
        GuardReason.STALE_TELEMETRY,
        GuardReason.COMMAND_STOP,
        GuardReason.TEMPERATURE_STOP,
        GuardReason.INVALID_SETPOINT,
    }
)

EXTREME_REQUESTS = st.sampled_from(
    [math.nan, math.inf, -math.inf, 1e308, -1e308, 0.0, -0.0, 5e-324, -5e-324]
)
REQUESTS = st.one_of(st.floats(-3000.0, 3000.0), EXTREME_REQUESTS)
LEAPS = st.floats(0.0, 3600.0)


@st.composite
def guard_limits(draw: st.DrawFn) -> GuardLimits:
    min_soc = draw(st.floats(0.0, 50.0))
    max_soc = draw(st.floats(min_soc + 5.0, 100.0))
    warning = draw(st.floats(-10.0, 60.0))
    optional_kw = st.none() | st.floats(0.0, 2000.0)
    return GuardLimits(
        capacity_kwh=draw(st.floats(1.0, 10_000.0)),
        max_charge_kw=draw(st.floats(0.0, 2000.0)),
        max_discharge_kw=draw(st.floats(0.0, 2000.0)),
        charge_limit_kw=draw(optional_kw),
        discharge_limit_kw=draw(optional_kw),
        min_soc_pct=min_soc,
        max_soc_pct=max_soc,
        soc_hysteresis_pct=draw(st.floats(0.0, min(5.0, (max_soc - min_soc) / 2))),
        taper_horizon_s=draw(st.floats(10.0, 3600.0)),
        ramp_kw_per_s=draw(st.sampled_from([0.0]) | st.floats(0.01, 200.0)),
        temp_warning_c=warning,
        temp_stop_c=warning + draw(st.floats(0.5, 30.0)),
        stale_after_s=draw(st.floats(1.0, 60.0)),
        require_temperature=draw(st.booleans()),
    )


def pick(draw: st.DrawFn, *weights: int) -> int:
    """Index of a weighted choice; shrinks toward 0. (Strategies are built once per schedule:
    building them per tick costs more than the guard itself.)"""
    chosen = draw(st.integers(0, sum(weights) - 1))
    for index, weight in enumerate(weights):
        if chosen < weight:
            return index
        chosen -= weight
    raise AssertionError("unreachable")


DRIFT = st.floats(-0.5, 0.5)
BAD_SOCS = st.sampled_from([None, math.nan, -1.0, 100.5])
SHORT_DT = st.floats(0.0, 2.0)
MEDIUM_DT = st.floats(0.0, 60.0)


@dataclass(frozen=True)
class Tick:
    """One call in an open-loop schedule: time leap, request, the readings, a command."""

    dt_s: float
    requested_kw: float
    soc_pct: float | None
    soc_age_s: float
    power_age_s: float | None  # None = no power reading
    temperature_c: float | None
    command: str | None  # "stop", "resume" or None, issued before the call


@st.composite
def ticks(draw: st.DrawFn, limits: GuardLimits) -> list[Tick]:
    """Mostly usable readings near the limits, persistent requests, some faults and leaps."""
    stale = limits.stale_after_s
    fresh_age = st.floats(0.0, stale)
    any_age = st.floats(-3 * stale, 3 * stale)
    floor, ceiling = limits.min_soc_pct, limits.max_soc_pct
    band = limits.soc_hysteresis_pct + 1.0
    near_floor = st.floats(max(floor - 1.0, 0.0), min(floor + band, 100.0))
    near_ceiling = st.floats(max(ceiling - band, 0.0), min(ceiling + 1.0, 100.0))
    temps = st.floats(limits.temp_warning_c - 5.0, limits.temp_stop_c + 2.0)
    derating = st.floats(limits.temp_warning_c, limits.temp_stop_c)
    soc_choices = (near_floor, near_ceiling, st.floats(0.0, 100.0), BAD_SOCS)
    schedule: list[Tick] = []
    soc: float | None = 50.0
    requested_kw = 0.0
    for _ in range(draw(st.integers(1, 25))):
        kind = pick(draw, 3, 3, 3, 2, 1)
        if kind == 0:  # a random walk, so that latches are entered and left
            base = soc if soc is not None and math.isfinite(soc) else 50.0
            soc = min(max(base + draw(DRIFT), 0.0), 100.0)
        else:
            soc = draw(soc_choices[kind - 1])
        if pick(draw, 1, 1) == 1:  # else the schedule holds its setpoint
            requested_kw = draw(REQUESTS)
        power_kind = pick(draw, 9, 1, 1)
        temp_kind = pick(draw, 3, 3, 3, 1)  # derating band, around it, no sensor, broken
        temperature_c = (
            draw((derating, temps)[temp_kind]) if temp_kind < 2 else (None, math.nan)[temp_kind - 2]
        )
        schedule.append(
            Tick(
                dt_s=draw((SHORT_DT, MEDIUM_DT, LEAPS)[pick(draw, 6, 3, 1)]),
                requested_kw=requested_kw,
                soc_pct=soc,
                soc_age_s=draw((fresh_age, any_age)[pick(draw, 9, 1)]),
                power_age_s=None if power_kind == 2 else draw((fresh_age, any_age)[power_kind]),
                temperature_c=temperature_c,
                command=(None, "stop", "resume")[pick(draw, 30, 1, 3)],
            )
        )
    return schedule


def reading(value: float | None, now: float, age_s: float) -> Reading | None:
    return None if value is None else Reading(value, now - age_s)


def usable(reading: Reading | None, now: float, stale_after_s: float) -> bool:
    # The age as the guard computes it: timestamps near 1.8e9 s carry ~2e-7 s of rounding.
    return (
        reading is not None
        and math.isfinite(reading.value)
        and abs(now - reading.timestamp) <= stale_after_s
    )


@given(data=st.data())
@PROPERTY_SETTINGS
def test_open_loop_output_never_violates_a_limit(data: st.DataObject) -> None:
    limits = data.draw(guard_limits(), label="limits")
    schedule = data.draw(ticks(limits), label="schedule")
    guard = SafetyGuard(limits)
    now = T0
    stopped = False
    floor_latched = ceiling_latched = False
    temperature_seen = False
    previous: GuardDecision | None = None
    decisions: list[GuardDecision] = []

    for tick in schedule:
        now += tick.dt_s
        if tick.command == "stop":
            guard.stop(reason="test", now=now)
            stopped = True
        elif tick.command == "resume":
            guard.resume(now=now)
            stopped = False
        telemetry = GuardInput(
            soc_pct=reading(tick.soc_pct, now, tick.soc_age_s),
            power_kw=None if tick.power_age_s is None else Reading(0.0, now - tick.power_age_s),
            temperature_c=reading(tick.temperature_c, now, tick.soc_age_s),
        )
        decision = guard.apply(tick.requested_kw, telemetry, now=now)
        out = decision.applied_kw
        decisions.append(decision)

        # The model of the inputs the guard may trust.
        soc_ok = (
            usable(telemetry.soc_pct, now, limits.stale_after_s)
            and tick.soc_pct is not None
            and 0.0 <= tick.soc_pct <= 100.0
        )
        power_ok = usable(telemetry.power_kw, now, limits.stale_after_s)
        temperature_seen |= tick.temperature_c is not None
        temp_ok = usable(telemetry.temperature_c, now, limits.stale_after_s)
        temp_missing_ok = not temperature_seen and not limits.require_temperature
        soc = tick.soc_pct if soc_ok else None
        if soc is not None:
            floor_latched = soc <= limits.min_soc_pct or (
                floor_latched and soc <= limits.min_soc_pct + limits.soc_hysteresis_pct
            )
            ceiling_latched = soc >= limits.max_soc_pct or (
                ceiling_latched and soc >= limits.max_soc_pct - limits.soc_hysteresis_pct
            )

        assert math.isfinite(out)
        # Power limits: the smaller of rating and configured limit, both directions.
        assert -limits.charge_kw - KW_EPS <= out <= limits.discharge_kw + KW_EPS
        # Hard zero: stale, missing, non-finite, stopped, too hot, nonsense request.
        hot = (
            temp_ok and tick.temperature_c is not None and tick.temperature_c >= limits.temp_stop_c
        )
        must_be_zero = (
            not soc_ok
            or not power_ok
            or not (temp_ok or temp_missing_ok)
            or stopped
            or hot
            or not math.isfinite(tick.requested_kw)
        )
        if must_be_zero:
            assert out == 0.0, decision
            assert decision.reasons & HARD_ZERO, decision
        else:
            assert not decision.reasons & HARD_ZERO, decision
            assert soc is not None
            # SoC: no discharge at/below the floor, none until above floor + hysteresis after
            # touching it; the same for charge at the ceiling.
            if soc <= limits.min_soc_pct or floor_latched:
                assert out <= 0.0, decision
            if soc >= limits.max_soc_pct or ceiling_latched:
                assert out >= 0.0, decision
            # Taper: never more than the headroom spread over the taper horizon.
            per_pct_kw = limits.capacity_kwh / 100 * 3600 / limits.taper_horizon_s
            assert out <= max(0.0, soc - limits.min_soc_pct) * per_pct_kw + KW_EPS
            assert -out <= max(0.0, limits.max_soc_pct - soc) * per_pct_kw + KW_EPS
            # Temperature derate: linear between warning and stop.
            if temp_ok and tick.temperature_c is not None:
                over = tick.temperature_c - limits.temp_warning_c
                factor = 1.0 - max(0.0, over) / (limits.temp_stop_c - limits.temp_warning_c)
                assert out <= factor * limits.discharge_kw + KW_EPS
                assert -out <= factor * limits.charge_kw + KW_EPS
            # Whatever the guard changed, it said why; a request it passed has no reason (the
            # standing hard-zero conditions, reported even for 0 kW, are ruled out here).
            if abs(out - tick.requested_kw) > KW_EPS:
                assert decision.reasons, decision
            elif out == tick.requested_kw:
                assert not decision.reasons, decision

        # Ramp: within ramp * dt of the previous output, unless a safety reason forced a move,
        # and then only toward 0 kW (never through it, never away from it).
        if limits.ramp_kw_per_s > 0 and previous is not None:
            before = previous.applied_kw
            # The injected time between calls, computed as the guard does (timestamps ~1.8e9 s
            # carry ~2e-7 s of rounding that tick.dt_s would not).
            allowed = limits.ramp_kw_per_s * (now - previous.at)
            eps = KW_EPS + 1e-12 * max(abs(before), allowed)
            if abs(out - before) > allowed + eps:
                assert abs(out) < abs(before) and out * before >= 0.0, (decision, previous)
                # Said why, unless a safety bound cut straight to the request itself (a request
                # the guard passes unchanged carries no reason).
                passed = abs(out - tick.requested_kw) <= KW_EPS
                assert decision.reasons & RAMP_CAN_BE_OVERRIDDEN_BY or passed, (
                    decision,
                    previous,
                )
        previous = decision

    # Events: exactly one per change of the reason set (starting from "no intervention").
    changes = []
    active: frozenset[GuardReason] = frozenset()
    for decision in decisions:
        if decision.reasons != active:
            changes.append((decision.at, decision.reasons))
            active = decision.reasons
    events = guard.drain_events()
    assert [(e.at, e.reasons) for e in events] == changes
    assert all(e.message for e in events)
    # Counters: every clamped call, per reason.
    expected = {r: sum(r in d.reasons for d in decisions) for r in GuardReason}
    assert dict(guard.counters) == expected


ClosedLoopCase = tuple[GuardLimits, float, float, float, list[tuple[float, float, float]]]


@st.composite
def closed_loop_case(draw: st.DrawFn) -> ClosedLoopCase:
    limits = draw(guard_limits())
    floor, ceiling = limits.min_soc_pct, limits.max_soc_pct
    start_socs = (
        st.floats(floor, ceiling),
        st.floats(floor, min(floor + 3.0, ceiling)),
        st.floats(max(ceiling - 3.0, floor), ceiling),
    )
    start_soc = draw(start_socs[pick(draw, 1, 1, 1)])
    discharge_efficiency = draw(st.floats(0.8, 1.0))
    charge_efficiency = draw(st.floats(0.8, 1.0))
    # Hold times up to the documented refresh bound eta * tau, short ticks as well.
    longest = discharge_efficiency * limits.taper_horizon_s
    dts = st.floats(0.001, 1.0) | st.floats(0.0, 1.0).map(lambda f: max(f * longest, 1e-3))
    temps = st.floats(limits.temp_warning_c - 20, limits.temp_stop_c + 5)
    steps = []
    requested_kw = draw(REQUESTS)
    for _ in range(draw(st.integers(1, 40))):
        # Schedules hold a setpoint for a while, which is what drives a battery into a limit.
        if pick(draw, 3, 1) == 1:
            requested_kw = draw(REQUESTS)
        steps.append((draw(dts), requested_kw, draw(temps)))
    return limits, start_soc, discharge_efficiency, charge_efficiency, steps


@given(case=closed_loop_case())
@PROPERTY_SETTINGS
def test_closed_loop_soc_never_leaves_floor_and_ceiling(case: ClosedLoopCase) -> None:
    limits, soc, discharge_efficiency, charge_efficiency, steps = case
    guard = SafetyGuard(limits)
    now = T0
    for dt_s, requested_kw, temperature_c in steps:
        telemetry = GuardInput(Reading(soc, now), Reading(0.0, now), Reading(temperature_c, now))
        out = guard.apply(requested_kw, telemetry, now=now).applied_kw
        # Battery: the output is held for dt; losses make discharge drain and charge fill less.
        ac_kwh = out * dt_s / 3600.0
        stored = ac_kwh / discharge_efficiency if out > 0 else ac_kwh * charge_efficiency
        soc -= stored / limits.capacity_kwh * 100.0
        now += dt_s
        assert limits.min_soc_pct - SOC_EPS <= soc <= limits.max_soc_pct + SOC_EPS, (
            out,
            dt_s,
            soc,
        )
