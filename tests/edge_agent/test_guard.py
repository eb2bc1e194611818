"""The safety guard as tables of steps with time leaps (STYLE 8): each row is one ``apply``."""

from __future__ import annotations

import dataclasses
import itertools
import logging
import math
from collections.abc import Iterable
from typing import NamedTuple

import pytest

from edge_agent.guard import (
    GuardDecision,
    GuardInput,
    GuardLimits,
    GuardReason,
    Reading,
    SafetyGuard,
)

R = GuardReason
NONE: frozenset[GuardReason] = frozenset()
NAN = math.nan
T0 = 1_767_225_600.0  # 2026-01-01T00:00:00Z; rows give seconds after it


def limits(**overrides: object) -> GuardLimits:
    """200 kWh, 100 kW both ways: the taper (300 s) allows 24 kW per % of headroom."""
    base: dict[str, object] = {"capacity_kwh": 200.0, "max_charge_kw": 100.0}
    base["max_discharge_kw"] = 100.0
    base.update(overrides)
    return GuardLimits(**base)  # type: ignore[arg-type]


class Step(NamedTuple):
    """One call: at t (s after T0) request kW with this SoC; expect applied kW and reasons."""

    t: float
    requested_kw: float
    soc: float | None
    expected_kw: float
    reasons: frozenset[GuardReason] = NONE
    temp: float | None = None
    age_s: float = 0.0  # age of every reading at t
    power_kw: float | None = 0.0  # measured power; None = no power reading


def telemetry(step: Step) -> GuardInput:
    stamp = T0 + step.t - step.age_s
    return GuardInput(
        soc_pct=None if step.soc is None else Reading(step.soc, stamp),
        power_kw=None if step.power_kw is None else Reading(step.power_kw, stamp),
        temperature_c=None if step.temp is None else Reading(step.temp, stamp),
    )


def run(guard: SafetyGuard, steps: Iterable[Step]) -> list[GuardDecision]:
    decisions = []
    for row, step in enumerate(steps):
        decision = guard.apply(step.requested_kw, telemetry(step), now=T0 + step.t)
        where = f"row {row} {step}: got {decision}"
        assert decision.applied_kw == pytest.approx(step.expected_kw, abs=1e-6), where
        assert decision.reasons == step.reasons, where
        assert decision.intervened == bool(step.reasons), where
        decisions.append(decision)
    return decisions


class Battery:
    """A simple battery for closed loops: SoC integrates the applied AC power over time leaps."""

    def __init__(self, *, capacity_kwh: float, soc_pct: float, efficiency: float = 1.0) -> None:
        self.capacity_kwh = capacity_kwh
        self.soc_pct = soc_pct
        self.efficiency = efficiency

    def hold(self, power_kw: float, dt_s: float) -> None:
        # Discharge takes more from the cells than reaches AC, charge stores less than it takes.
        ac_kwh = power_kw * dt_s / 3600.0
        stored_kwh = ac_kwh / self.efficiency if power_kw > 0 else ac_kwh * self.efficiency
        self.soc_pct -= stored_kwh / self.capacity_kwh * 100.0


def closed_loop(
    guard: SafetyGuard, battery: Battery, requested_kw: float, dts: Iterable[float]
) -> tuple[list[float], list[float]]:
    """Feed fresh readings of the battery to the guard and hold each output for its dt."""
    t = T0
    socs, outputs = [battery.soc_pct], []
    for dt in dts:
        reading = GuardInput(Reading(battery.soc_pct, t), Reading(0.0, t), Reading(25.0, t))
        applied = guard.apply(requested_kw, reading, now=t).applied_kw
        battery.hold(applied, dt)
        t += dt
        socs.append(battery.soc_pct)
        outputs.append(applied)
    return socs, outputs


# --- pass-through and power limits ----------------------------------------------------------


def test_requests_within_every_limit_pass_unchanged() -> None:
    run(
        SafetyGuard(limits()),
        [
            Step(0, 80.0, 50.0, 80.0),
            Step(1, -100.0, 50.0, -100.0),
            Step(2, 0.0, 15.0, 0.0),  # idle at the floor is no intervention
            Step(3, -40.0, 15.0, -40.0),  # charging at the floor is allowed
            Step(4, 30.0, 90.0, 30.0),  # discharging at the ceiling is allowed
            Step(5, 100.0, 60.0, 100.0, temp=45.0),  # at the warning temperature: no derate yet
        ],
    )


def test_power_limit_the_smaller_of_rating_and_configured_wins() -> None:
    guard = SafetyGuard(limits(discharge_limit_kw=60.0, charge_limit_kw=150.0))
    decisions = run(
        guard,
        [
            Step(0, 80.0, 50.0, 60.0, frozenset({R.POWER_LIMIT})),  # configured 60 < rating
            Step(1, 60.0, 50.0, 60.0),
            Step(2, -120.0, 50.0, -100.0, frozenset({R.POWER_LIMIT})),  # rating 100 < 150
            Step(3, 1e300, 50.0, 60.0, frozenset({R.POWER_LIMIT})),  # huge but finite
            Step(4, -1e300, 50.0, -100.0, frozenset({R.POWER_LIMIT})),
        ],
    )
    assert "discharge limit 60.0 kW (configured)" in decisions[0].detail
    assert "charge limit 100.0 kW (battery rating)" in decisions[2].detail


# --- SoC floor / ceiling with taper and hysteresis ------------------------------------------


def test_discharge_tapers_toward_the_floor_and_stops_at_it() -> None:
    # Taper: 200 kWh * 1 % * 3600 s / 300 s = 24 kW per % above the floor; it bites below
    # 15 + 100 / 24 = 19.17 %.
    run(
        SafetyGuard(limits()),
        [
            Step(0, 100.0, 30.0, 100.0),
            Step(1, 100.0, 20.0, 100.0),
            Step(2, 100.0, 19.0, 96.0, frozenset({R.SOC_FLOOR})),
            Step(3, 100.0, 17.0, 48.0, frozenset({R.SOC_FLOOR})),
            Step(4, 30.0, 16.0, 24.0, frozenset({R.SOC_FLOOR})),
            Step(5, 10.0, 16.0, 10.0),  # below the taper: untouched
            Step(6, 100.0, 15.5, 12.0, frozenset({R.SOC_FLOOR})),
            Step(7, 100.0, 15.0, 0.0, frozenset({R.SOC_FLOOR})),  # at the floor
            Step(8, 100.0, 14.9, 0.0, frozenset({R.SOC_FLOOR})),
            Step(9, -50.0, 14.9, -50.0),  # charging out of it is fine
        ],
    )


def test_charge_tapers_toward_the_ceiling_and_stops_at_it() -> None:
    run(
        SafetyGuard(limits()),
        [
            Step(0, -100.0, 80.0, -100.0),
            Step(1, -100.0, 87.0, -72.0, frozenset({R.SOC_CEILING})),
            Step(2, -100.0, 89.5, -12.0, frozenset({R.SOC_CEILING})),
            Step(3, -100.0, 90.0, 0.0, frozenset({R.SOC_CEILING})),
            Step(4, -100.0, 95.0, 0.0, frozenset({R.SOC_CEILING})),
            Step(5, 70.0, 95.0, 70.0),
        ],
    )


def test_floor_hysteresis_keeps_discharge_blocked_until_soc_rises_above_it() -> None:
    blocked = frozenset({R.SOC_FLOOR})
    decisions = run(
        SafetyGuard(limits(soc_hysteresis_pct=2.0)),
        [
            Step(0, 50.0, 16.0, 24.0, blocked),  # taper only, not latched yet
            Step(1, 50.0, 15.0, 0.0, blocked),  # reaches the floor: latched
            Step(60, 50.0, 15.2, 0.0, blocked),  # noise above the floor: still blocked
            Step(600, -80.0, 16.0, -80.0),  # charging
            Step(601, 50.0, 17.0, 0.0, blocked),  # 17.0 is not above 15 + 2
            Step(602, 50.0, 17.5, 50.0),  # released: taper allows 60 kW
            Step(603, 50.0, 16.0, 24.0, blocked),  # taper again, not the latch
            Step(604, 50.0, 15.0, 0.0, blocked),
        ],
    )
    assert "SoC 15.2 % not yet above floor 15.0 % + hysteresis 2.0 %" in decisions[2].detail


def test_ceiling_hysteresis_keeps_charge_blocked_until_soc_falls_below_it() -> None:
    blocked = frozenset({R.SOC_CEILING})
    run(
        SafetyGuard(limits(soc_hysteresis_pct=3.0)),
        [
            Step(0, -50.0, 90.0, 0.0, blocked),
            Step(10, -50.0, 89.5, 0.0, blocked),
            Step(20, -50.0, 87.0, 0.0, blocked),  # 87.0 is not below 90 - 3
            Step(30, -50.0, 86.9, -50.0),  # taper would allow 74.4 kW
        ],
    )


@pytest.mark.parametrize("efficiency", [1.0, 0.9])
def test_closed_loop_discharge_lands_on_the_floor_without_overshoot(efficiency: float) -> None:
    battery = Battery(capacity_kwh=200.0, soc_pct=50.0, efficiency=efficiency)
    guard = SafetyGuard(limits())
    # One-second ticks with time leaps, every leap within efficiency * taper horizon (270 s).
    dts = [1.0] * 3000 + [60.0, 250.0, 5.0, 270.0] * 20 + [1.0] * 600
    socs, outputs = closed_loop(guard, battery, 100.0, dts)

    assert min(socs) >= 15.0 - 1e-9  # never below the floor (float rounding only)
    assert socs[-1] == pytest.approx(15.0, abs=0.01)  # and it got there
    assert all(b <= a + 1e-12 for a, b in itertools.pairwise(socs))
    # Full power while far away, then ever smaller steps: the output shrinks as SoC falls.
    assert outputs[0] == 100.0
    tapered = [p for p, soc in zip(outputs, socs, strict=False) if soc < 19.0]
    assert tapered and all(b <= a for a, b in itertools.pairwise(tapered))
    assert tapered[-1] < 0.01


@pytest.mark.parametrize("efficiency", [1.0, 0.9])
def test_closed_loop_charge_lands_on_the_ceiling_without_overshoot(efficiency: float) -> None:
    battery = Battery(capacity_kwh=200.0, soc_pct=40.0, efficiency=efficiency)
    guard = SafetyGuard(limits())
    dts = [1.0] * 3000 + [300.0, 120.0, 1.0] * 30  # charge losses allow leaps up to 300 s
    socs, outputs = closed_loop(guard, battery, -100.0, dts)

    assert max(socs) <= 90.0 + 1e-9
    assert socs[-1] == pytest.approx(90.0, abs=0.01)
    assert outputs[0] == -100.0
    assert -0.01 < outputs[-1] <= 0.0


def test_taper_guarantee_needs_refreshes_within_the_horizon() -> None:
    # The documented precondition: a setpoint held for 2 taper horizons removes twice the
    # headroom the guard saw. The agent refreshes every second and the inverter reverts to 0 W
    # when refreshes stop, so this only happens when the agent dies mid-taper.
    battery = Battery(capacity_kwh=200.0, soc_pct=16.0)
    socs, outputs = closed_loop(SafetyGuard(limits()), battery, 100.0, [600.0, 1.0])
    assert outputs == pytest.approx([24.0, 0.0])
    assert socs[1] == pytest.approx(14.0)  # 1 % headroom, overshoot (2 - 1) * 1 %


# --- ramp ----------------------------------------------------------------------------------


def test_ramp_limits_change_per_injected_second_and_time_leaps_allow_more() -> None:
    ramp = frozenset({R.RAMP_LIMIT})
    run(
        SafetyGuard(limits(ramp_kw_per_s=10.0)),
        [
            Step(0.0, 80.0, 50.0, 0.0, ramp),  # first call: continues from the measured 0 kW
            Step(1.0, 80.0, 50.0, 10.0, ramp),
            Step(2.0, 80.0, 50.0, 20.0, ramp),
            Step(2.5, 80.0, 50.0, 25.0, ramp),
            Step(10.0, 80.0, 50.0, 80.0),  # 7.5 s leap allows 75 kW: reaches the request
            Step(11.0, -80.0, 50.0, 70.0, ramp),  # reversal is ramped too
            Step(100.0, -80.0, 50.0, -80.0),  # long leap: anything goes
            Step(100.0, 80.0, 50.0, -80.0, ramp),  # no time passed: no change
            Step(99.0, 80.0, 50.0, -80.0, ramp),  # the clock stepped back: no change either
            Step(101.0, 200.0, 50.0, -60.0, ramp),
            Step(200.0, 200.0, 50.0, 100.0, frozenset({R.POWER_LIMIT})),
        ],
    )


def test_ramp_starts_from_the_measured_power_on_the_first_call() -> None:
    run(
        SafetyGuard(limits(ramp_kw_per_s=5.0)),
        [
            Step(0, 0.0, 50.0, 60.0, frozenset({R.RAMP_LIMIT}), power_kw=60.0),
            Step(1, 0.0, 50.0, 55.0, frozenset({R.RAMP_LIMIT}), power_kw=60.0),
            Step(2, 55.0, 50.0, 55.0, power_kw=55.0),
        ],
    )


def test_safety_limits_override_the_ramp_toward_zero() -> None:
    run(
        SafetyGuard(limits(ramp_kw_per_s=1.0)),
        [
            Step(0, 100.0, 60.0, 100.0, power_kw=100.0),
            Step(1, 100.0, 15.5, 12.0, frozenset({R.SOC_FLOOR})),  # taper: 100 -> 12 at once
            Step(2, 0.0, 15.5, 11.0, frozenset({R.RAMP_LIMIT})),  # the request itself is ramped
            Step(3, 100.0, 15.0, 0.0, frozenset({R.SOC_FLOOR})),
            Step(4, -100.0, 15.0, -1.0, frozenset({R.RAMP_LIMIT})),
            # Derating below the ramped value pulls down at once as well; reported with both.
            Step(200, -100.0, 50.0, -100.0),
            Step(201, -100.0, 50.0, -50.0, frozenset({R.TEMPERATURE_DERATE}), temp=50.0),
            Step(202, 0.0, 50.0, -25.0, frozenset({R.TEMPERATURE_DERATE, R.RAMP_LIMIT}), 52.5),
        ],
    )


# --- temperature ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("temp", "expected_kw", "reasons"),
    [
        (25.0, 100.0, NONE),
        (45.0, 100.0, NONE),  # warning temperature: still 100 %
        (47.5, 75.0, frozenset({R.TEMPERATURE_DERATE})),
        (50.0, 50.0, frozenset({R.TEMPERATURE_DERATE})),  # mid-band: half the power
        (54.0, 10.0, frozenset({R.TEMPERATURE_DERATE})),
        (55.0, 0.0, frozenset({R.TEMPERATURE_STOP})),  # at the stop temperature
        (70.0, 0.0, frozenset({R.TEMPERATURE_STOP})),
    ],
)
def test_temperature_derates_linearly_and_stops(
    temp: float, expected_kw: float, reasons: frozenset[GuardReason]
) -> None:
    run(SafetyGuard(limits()), [Step(0, 100.0, 50.0, expected_kw, reasons, temp=temp)])
    run(SafetyGuard(limits()), [Step(0, -100.0, 50.0, -expected_kw, reasons, temp=temp)])


def test_derating_scales_the_configured_limit_and_ignores_small_requests() -> None:
    run(
        SafetyGuard(limits(discharge_limit_kw=40.0)),
        [
            Step(0, 100.0, 50.0, 20.0, frozenset({R.TEMPERATURE_DERATE}), temp=50.0),
            Step(1, 15.0, 50.0, 15.0, temp=50.0),
            Step(2, 0.0, 50.0, 0.0, frozenset({R.TEMPERATURE_STOP}), temp=56.0),  # stop: always
        ],
    )


# --- telemetry ------------------------------------------------------------------------------


def test_stale_missing_or_invalid_telemetry_means_zero() -> None:
    stale = frozenset({R.STALE_TELEMETRY})
    decisions = run(
        SafetyGuard(limits(stale_after_s=10.0)),
        [
            Step(0, 50.0, 50.0, 50.0, age_s=10.0),  # exactly at the limit: still fresh
            Step(1, 50.0, 50.0, 0.0, stale, age_s=10.5),
            Step(2, 50.0, None, 0.0, stale),
            Step(3, 50.0, 50.0, 0.0, stale, power_kw=None),
            Step(4, 50.0, NAN, 0.0, stale),
            Step(5, 50.0, 150.0, 0.0, stale),  # not a SoC
            Step(6, 50.0, 50.0, 0.0, stale, age_s=-60.0),  # stamped a minute in the future
            Step(7, 50.0, 50.0, 0.0, stale, temp=NAN),  # a sensor that reports must make sense
            Step(8, 0.0, None, 0.0, stale),  # reported even while idle
            Step(9, 50.0, 50.0, 50.0, temp=30.0),  # back (no ramp): straight to the request
        ],
    )
    assert "SoC reading 10.5 s old (limit 10 s)" in decisions[1].detail
    assert "SoC reading missing" in decisions[2].detail
    assert "power reading missing" in decisions[3].detail
    assert "outside 0 to 100 %" in decisions[5].detail


def test_missing_temperature_is_fine_unless_required_or_the_sensor_went_silent() -> None:
    stale = frozenset({R.STALE_TELEMETRY})
    decisions = run(
        SafetyGuard(limits()),
        [
            Step(0, 50.0, 50.0, 50.0, temp=None),  # no sensor at this site
            Step(1, 50.0, 50.0, 50.0, temp=30.0),
            Step(2, 50.0, 50.0, 0.0, stale, temp=None),  # it reported once: must keep reporting
        ],
    )
    assert "temperature reading missing" in decisions[2].detail
    required = SafetyGuard(limits(require_temperature=True))
    decision = run(required, [Step(0, 50.0, 50.0, 0.0, stale)])[0]
    assert "temperature reading missing" in decision.detail


def test_a_non_finite_clock_is_treated_as_stale() -> None:
    guard = SafetyGuard(limits())
    decision = guard.apply(50.0, telemetry(Step(0, 50.0, 50.0, 0.0)), now=NAN)
    assert decision.applied_kw == 0.0
    assert decision.reasons == {R.STALE_TELEMETRY}


# --- commands and invalid requests ----------------------------------------------------------


def test_stop_holds_zero_until_resume_then_ramps_up_from_zero() -> None:
    guard = SafetyGuard(limits(ramp_kw_per_s=20.0))
    run(guard, [Step(0, 50.0, 50.0, 50.0, power_kw=50.0)])
    guard.stop(reason="technician on site", now=T0 + 0.5)
    assert guard.stop_reason == "technician on site"
    stopped = frozenset({R.COMMAND_STOP})
    decisions = run(
        guard,
        [
            Step(1, 50.0, 50.0, 0.0, stopped),  # at once, not ramped
            Step(2, 0.0, 50.0, 0.0, stopped),  # reported while idle too
            Step(3, 50.0, None, 0.0, stopped | {R.STALE_TELEMETRY}),
        ],
    )
    assert decisions[0].detail == "discharge 50.0 kW limited to 0.0 kW: " + (
        "stopped by command: technician on site"
    )
    guard.resume(now=T0 + 3.5)
    guard.resume(now=T0 + 3.6)  # idempotent
    assert guard.stop_reason is None
    run(
        guard,
        [
            Step(4, 50.0, 50.0, 20.0, frozenset({R.RAMP_LIMIT})),
            Step(5, 50.0, 50.0, 40.0, frozenset({R.RAMP_LIMIT})),
            Step(6, 50.0, 50.0, 50.0),
        ],
    )


@pytest.mark.parametrize("requested", [math.nan, math.inf, -math.inf])
def test_non_finite_request_means_zero(requested: float) -> None:
    guard = SafetyGuard(limits(ramp_kw_per_s=1.0))
    run(guard, [Step(0, 30.0, 50.0, 30.0, power_kw=30.0)])
    decision = run(guard, [Step(1, requested, 50.0, 0.0, frozenset({R.INVALID_SETPOINT}))])[0]
    assert "is not a finite number" in decision.detail


# --- events, counters, logging --------------------------------------------------------------


def test_events_are_emitted_on_change_only_with_their_reason() -> None:
    guard = SafetyGuard(limits())
    steps = [Step(t, 50.0, 50.0, 50.0) for t in range(3)]  # nothing to report
    steps += [Step(t, 150.0, 50.0, 100.0, frozenset({R.POWER_LIMIT})) for t in range(3, 8)]
    steps += [Step(8, 80.0, 14.9, 0.0, frozenset({R.SOC_FLOOR}))]
    steps += [Step(t, 80.0, 14.8, 0.0, frozenset({R.SOC_FLOOR})) for t in range(9, 20)]
    steps += [Step(t, -20.0, 14.8, -20.0) for t in range(20, 25)]
    run(guard, steps)

    events = guard.drain_events()
    assert [(e.at - T0, e.reasons) for e in events] == [
        (3, {R.POWER_LIMIT}),
        (8, {R.SOC_FLOOR}),
        (20, NONE),
    ]
    assert events[0].message == (
        "discharge 150.0 kW limited to 100.0 kW: discharge limit 100.0 kW (battery rating)"
    )
    assert events[1].message == (
        "discharge 80.0 kW limited to 0.0 kW: SoC 14.9 % at or below floor 15.0 %"
    )
    assert (events[1].requested_kw, events[1].applied_kw) == (80.0, 0.0)
    assert events[2].cleared
    assert events[2].message == "guard released: applying charge 20.0 kW as requested"
    assert guard.drain_events() == []  # drained


def test_counters_count_every_clamped_call_per_reason() -> None:
    guard = SafetyGuard(limits())
    run(
        guard,
        [Step(t, 150.0, 50.0, 100.0, frozenset({R.POWER_LIMIT})) for t in range(4)]
        + [Step(4, 50.0, 50.0, 50.0)]
        + [Step(5, 50.0, None, 0.0, frozenset({R.STALE_TELEMETRY}))]
        + [Step(6, 150.0, 50.0, 50.0, frozenset({R.TEMPERATURE_DERATE}), temp=50.0)],
    )
    assert dict(guard.counters) == {
        **dict.fromkeys(GuardReason, 0),
        R.POWER_LIMIT: 4,
        R.STALE_TELEMETRY: 1,
        R.TEMPERATURE_DERATE: 1,
    }
    with pytest.raises(TypeError):
        guard.counters[R.POWER_LIMIT] = 0  # type: ignore[index]


def test_an_intervention_is_logged_once_when_it_starts_and_when_it_clears(
    caplog: pytest.LogCaptureFixture,
) -> None:
    guard = SafetyGuard(limits())
    with caplog.at_level(logging.INFO, logger="edge_agent.guard"):
        run(guard, [Step(t, 150.0, 50.0, 100.0, frozenset({R.POWER_LIMIT})) for t in range(50)])
        run(guard, [Step(t, 50.0, 50.0, 50.0) for t in range(50, 60)])
    messages = [r.getMessage() for r in caplog.records]
    assert messages == [
        "guard: discharge 150.0 kW limited to 100.0 kW: discharge limit 100.0 kW (battery rating)",
        "guard: guard released: applying discharge 50.0 kW as requested",
    ]
    assert caplog.records[0].levelno == logging.WARNING


# --- limits ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"min_soc_pct": 90.0, "max_soc_pct": 15.0}, "min_soc_pct (90.0) must be below max_soc_"),
        ({"min_soc_pct": 50.0, "max_soc_pct": 50.0}, "must be below max_soc_pct (50.0)"),
        ({"max_soc_pct": 101.0}, "both within 0 to 100"),
        ({"min_soc_pct": -1.0}, "both within 0 to 100"),
        ({"max_charge_kw": -5.0}, "max_charge_kw must be >= 0 (got -5.0)"),
        ({"max_discharge_kw": -1.0}, "max_discharge_kw must be >= 0 (got -1.0)"),
        ({"discharge_limit_kw": -1.0}, "discharge_limit_kw must be >= 0 (got -1.0)"),
        ({"capacity_kwh": 0.0}, "capacity_kwh must be > 0 (got 0.0)"),
        ({"temp_warning_c": 55.0}, "temp_warning_c (55.0) must be below temp_stop_c (55.0)"),
        ({"temp_warning_c": 60.0, "temp_stop_c": 50.0}, "temp_warning_c (60.0) must be below"),
        ({"taper_horizon_s": 0.0}, "taper_horizon_s must be > 0 (got 0.0)"),
        ({"stale_after_s": -1.0}, "stale_after_s must be > 0 (got -1.0)"),
        ({"ramp_kw_per_s": -2.0}, "ramp_kw_per_s must be >= 0 (got -2.0)"),
        ({"soc_hysteresis_pct": -0.5}, "soc_hysteresis_pct must be >= 0 (got -0.5)"),
        ({"soc_hysteresis_pct": 75.0}, "soc_hysteresis_pct (75.0) must be smaller than"),
        ({"max_soc_pct": math.nan}, "max_soc_pct must be a finite number (got nan)"),
        ({"max_charge_kw": math.inf}, "max_charge_kw must be a finite number (got inf)"),
    ],
)
def test_limits_refuse_contradictions_naming_fields_and_values(
    overrides: dict[str, object], message: str
) -> None:
    with pytest.raises(ValueError, match="invalid guard limits") as raised:
        limits(**overrides)
    assert message in str(raised.value)


def test_limits_report_every_problem_at_once_and_replace_revalidates() -> None:
    with pytest.raises(ValueError) as raised:
        limits(capacity_kwh=-1.0, max_charge_kw=-1.0, temp_warning_c=99.0)
    assert str(raised.value).count(";") == 2
    with pytest.raises(ValueError, match="min_soc_pct"):
        dataclasses.replace(limits(), min_soc_pct=95.0)


def test_limits_defaults_and_effective_power() -> None:
    default = limits()
    assert (default.min_soc_pct, default.max_soc_pct) == (15.0, 90.0)
    assert (default.temp_warning_c, default.temp_stop_c, default.ramp_kw_per_s) == (45, 55, 0)
    narrowed = limits(charge_limit_kw=30.0, discharge_limit_kw=500.0)
    assert (narrowed.charge_kw, narrowed.discharge_kw) == (30.0, 100.0)


def test_update_limits_takes_effect_on_the_next_call() -> None:
    guard = SafetyGuard(limits())
    run(guard, [Step(0, 80.0, 15.0, 0.0, frozenset({R.SOC_FLOOR}))])  # latched at the floor
    guard.update_limits(limits(min_soc_pct=10.0, discharge_limit_kw=30.0))
    decisions = run(
        guard,
        [
            # The old latch is gone; the new floor's taper allows 5 % * 24 kW = 120 kW.
            Step(1, 80.0, 15.0, 30.0, frozenset({R.POWER_LIMIT})),
            Step(2, 80.0, 10.5, 12.0, frozenset({R.SOC_FLOOR})),
        ],
    )
    assert "(configured)" in decisions[0].detail
    assert guard.limits.min_soc_pct == 10.0
    with pytest.raises(TypeError):
        guard.update_limits({"min_soc_pct": 10.0})  # type: ignore[arg-type]


def test_reason_values_match_the_edgelink_contract() -> None:
    from bess.v1 import edgelink_pb2

    wire = {name.removeprefix("GUARD_REASON_") for name in edgelink_pb2.GuardReason.keys()}
    local = {reason.name for reason in GuardReason} - {"INVALID_SETPOINT"}
    assert local <= wire
    assert all(reason.value == reason.name.lower() for reason in GuardReason)
