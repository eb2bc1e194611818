"""Battery physics under a stepped clock: energy, limits, heat, grid, measurement faults.

Pure unit tests - no I/O, no sleeping; a simulated month takes milliseconds.
"""

from __future__ import annotations

import math
import statistics

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from hil.clock import SteppedClock
from hil.faults import Fault, FaultKind
from hil.grid import FrequencyEvent, GridFrequency
from hil.model import (
    Alarm,
    BatterySpec,
    BatteryStatus,
    initial_state,
    step,
    write_setpoint,
)
from hil.sim import Simulator

HOUR = 3600.0
DAY = 86_400.0

# No ramp, no self-discharge, no revert: the textbook battery for bookkeeping checks.
IDEAL = BatterySpec(self_discharge_pct_per_day=0.0, ramp_kw_per_s=0.0, revert_timeout_s=0.0)


def make_sim(
    spec: BatterySpec = IDEAL, *, soc_pct: float = 50.0, max_step_s: float = 1.0, **kw: object
) -> tuple[Simulator, SteppedClock]:
    clock = SteppedClock()
    grid = GridFrequency(seed=1)
    sim = Simulator(spec, clock, soc_pct=soc_pct, grid=grid, max_step_s=max_step_s, **kw)  # type: ignore[arg-type]
    return sim, clock


def run_for(sim: Simulator, clock: SteppedClock, seconds: float) -> None:
    clock.advance(seconds)
    sim.sync()


# -- energy bookkeeping ---------------------------------------------------------------------


def test_charging_stores_ac_energy_times_charge_efficiency() -> None:
    sim, clock = make_sim(soc_pct=20.0)
    e0 = sim.state.energy_kwh
    sim.command_power_kw(-50.0)
    run_for(sim, clock, HOUR)
    assert sim.state.power_kw == -50.0
    assert sim.state.charged_kwh == pytest.approx(50.0)
    assert sim.state.energy_kwh - e0 == pytest.approx(50.0 * 0.95)


def test_discharging_draws_ac_energy_over_discharge_efficiency() -> None:
    sim, clock = make_sim(soc_pct=80.0)
    e0 = sim.state.energy_kwh
    sim.command_power_kw(50.0)
    run_for(sim, clock, HOUR)
    assert sim.state.discharged_kwh == pytest.approx(50.0)
    assert e0 - sim.state.energy_kwh == pytest.approx(50.0 / 0.95)


def test_round_trip_efficiency_is_the_product_of_both_sides() -> None:
    spec = BatterySpec(self_discharge_pct_per_day=0.0, revert_timeout_s=0.0)
    assert spec.round_trip_efficiency == pytest.approx(0.9025)
    sim, clock = make_sim(spec, soc_pct=0.0)
    sim.command_power_kw(-100.0)
    run_for(sim, clock, HOUR)
    sim.command_power_kw(100.0)
    run_for(sim, clock, 2 * HOUR)  # until the BMS stops it at empty
    assert sim.soc_pct == 0.0
    assert sim.state.discharged_kwh / sim.state.charged_kwh == pytest.approx(0.9025, abs=1e-9)


def test_self_discharge_decays_exponentially_over_30_idle_days() -> None:
    spec = BatterySpec(self_discharge_pct_per_day=0.1)
    sim, clock = make_sim(spec, soc_pct=80.0, max_step_s=3600.0)
    e0 = sim.state.energy_kwh
    run_for(sim, clock, 30 * DAY)
    expected = e0 * (1 - 0.001) ** 30
    assert sim.state.energy_kwh == pytest.approx(expected, rel=1e-12)
    assert sim.state.self_discharged_kwh == pytest.approx(e0 - expected, rel=1e-9)
    assert sim.state.power_kw == 0.0
    assert sim.state.charged_kwh == sim.state.discharged_kwh == 0.0


def test_self_discharge_does_not_depend_on_the_step_size() -> None:
    spec = BatterySpec(self_discharge_pct_per_day=2.0)
    state = initial_state(spec, soc_pct=60.0, timestamp=0.0)
    one = step(spec, state, DAY).state
    many = state
    for _ in range(24):
        many = step(spec, many, HOUR).state
    assert one.energy_kwh == pytest.approx(many.energy_kwh, rel=1e-12)


# -- inverter ------------------------------------------------------------------------------


def test_power_rises_at_the_ramp_rate() -> None:
    spec = BatterySpec(ramp_kw_per_s=10.0, revert_timeout_s=0.0)
    sim, clock = make_sim(spec)
    sim.command_power_kw(100.0)
    seen = []
    for _ in range(12):
        run_for(sim, clock, 1.0)
        seen.append(sim.state.power_kw)
    assert seen[:10] == pytest.approx([10.0 * (i + 1) for i in range(10)])
    assert seen[10:] == [100.0, 100.0]
    sim.command_power_kw(-20.0)  # ramps down through zero at the same rate
    run_for(sim, clock, 5.0)
    assert sim.state.power_kw == pytest.approx(50.0)


def test_setpoints_are_clipped_to_the_inverter_rating() -> None:
    spec = BatterySpec(max_charge_kw=80.0, max_discharge_kw=120.0, ramp_kw_per_s=0.0)
    sim, clock = make_sim(spec)
    sim.command_power_kw(500.0)
    run_for(sim, clock, 1.0)
    assert sim.state.power_kw == 120.0
    assert sim.measure().setpoint_kw == 500.0  # the request is reported as written
    sim.command_power_kw(-500.0)
    run_for(sim, clock, 1.0)
    assert sim.state.power_kw == -80.0


def test_a_non_finite_setpoint_is_refused() -> None:
    sim, _ = make_sim()
    with pytest.raises(ValueError, match="finite"):
        sim.command_power_kw(math.nan)


# -- BMS limits -----------------------------------------------------------------------------


def test_charging_into_full_lands_exactly_at_100_and_raises_soc_full() -> None:
    spec = BatterySpec(self_discharge_pct_per_day=0.1, revert_timeout_s=0.0)
    sim, clock = make_sim(spec, soc_pct=99.0)
    sim.command_power_kw(-100.0)
    while Alarm.SOC_FULL not in sim.state.alarms:  # 2 kWh of room at 95 kW: ~76 s
        run_for(sim, clock, 1.0)
    assert sim.state.energy_kwh == spec.capacity_kwh  # the landing step: exactly, not 99.9999
    assert sim.soc_pct == 100.0
    assert sim.state.charged_kwh == pytest.approx(2.0 / 0.95, abs=1e-3)
    assert sim.state.power_kw == 0.0
    m = sim.measure()
    assert Alarm.SOC_FULL in m.alarms
    assert m.status is BatteryStatus.IDLE
    run_for(sim, clock, 600.0)  # the alarm stays while charge is still requested
    assert Alarm.SOC_FULL in sim.state.alarms
    assert sim.soc_pct == pytest.approx(100.0, abs=0.01)
    raised = [a for _, what, a in sim.alarm_log if what == "raised"]
    assert raised == [Alarm.SOC_FULL]  # once, not toggling every step


def test_discharging_into_empty_lands_exactly_at_0_and_raises_soc_empty() -> None:
    sim, clock = make_sim(soc_pct=1.0)
    sim.command_power_kw(100.0)
    run_for(sim, clock, 120.0)
    assert sim.state.energy_kwh == 0.0
    assert sim.state.power_kw == 0.0
    assert Alarm.SOC_EMPTY in sim.measure().alarms
    run_for(sim, clock, 60.0)
    assert Alarm.SOC_EMPTY in sim.state.alarms


def test_limit_alarms_clear_when_the_setpoint_reverses() -> None:
    sim, clock = make_sim(soc_pct=99.99)
    sim.command_power_kw(-50.0)
    run_for(sim, clock, 10.0)
    assert Alarm.SOC_FULL in sim.state.alarms
    sim.command_power_kw(50.0)
    run_for(sim, clock, 1.0)
    assert Alarm.SOC_FULL not in sim.state.alarms
    assert sim.state.power_kw == 50.0

    sim, clock = make_sim(soc_pct=0.01)
    sim.command_power_kw(50.0)
    run_for(sim, clock, 10.0)
    assert Alarm.SOC_EMPTY in sim.state.alarms
    sim.command_power_kw(0.0)
    run_for(sim, clock, 1.0)
    assert Alarm.SOC_EMPTY not in sim.state.alarms


def test_limit_alarm_shows_even_within_the_bms_band() -> None:
    """99.99 % counts as full: the BMS blocks charging and says why."""
    spec = BatterySpec(self_discharge_pct_per_day=0.0)
    state = write_setpoint(initial_state(spec, soc_pct=99.995, timestamp=0.0), -100.0, at=0.0)
    result = step(spec, state, 1.0)
    assert result.state.power_kw == 0.0
    assert Alarm.SOC_FULL in result.raised


# -- revert timeout -------------------------------------------------------------------------


def test_power_reverts_to_zero_when_the_setpoint_is_not_refreshed() -> None:
    spec = BatterySpec(revert_timeout_s=60.0)
    sim, clock = make_sim(spec)
    sim.command_power_kw(-40.0)
    run_for(sim, clock, 60.0)
    assert sim.state.power_kw == -40.0
    assert Alarm.SETPOINT_REVERTED not in sim.state.alarms
    run_for(sim, clock, 2.0)
    assert sim.state.power_kw == 0.0
    assert sim.measure().setpoint_kw == 0.0
    assert Alarm.SETPOINT_REVERTED in sim.state.alarms
    sim.command_power_kw(-10.0)  # a fresh write clears it
    assert Alarm.SETPOINT_REVERTED not in sim.state.alarms


def test_refreshing_the_setpoint_keeps_the_power_up() -> None:
    spec = BatterySpec(revert_timeout_s=60.0)
    sim, clock = make_sim(spec)
    for _ in range(40):  # 20 minutes, a write every 30 s
        sim.command_power_kw(-40.0)
        run_for(sim, clock, 30.0)
    assert sim.state.power_kw == -40.0
    assert Alarm.SETPOINT_REVERTED not in sim.state.alarms


def test_revert_timeout_zero_never_reverts() -> None:
    spec = BatterySpec(revert_timeout_s=0.0)
    sim, clock = make_sim(spec, max_step_s=10.0)
    sim.command_power_kw(10.0)
    run_for(sim, clock, 3 * HOUR)
    assert sim.state.power_kw == 10.0


# -- thermal --------------------------------------------------------------------------------


def test_temperature_follows_a_first_order_lag_towards_ambient_plus_rise() -> None:
    spec = BatterySpec(
        capacity_kwh=2000.0, ramp_kw_per_s=0.0, revert_timeout_s=0.0, thermal_time_constant_s=1800.0
    )
    sim, clock = make_sim(spec)
    sim.command_power_kw(100.0)
    steady = spec.ambient_c + spec.temp_rise_c_per_kw * 100.0  # 40 degC
    run_for(sim, clock, 1800.0)
    assert sim.state.temperature_c == pytest.approx(
        spec.ambient_c + (steady - spec.ambient_c) * (1 - math.exp(-1)), abs=1e-6
    )
    run_for(sim, clock, 5 * 1800.0)
    assert sim.state.temperature_c == pytest.approx(steady, abs=0.15)
    sim.command_power_kw(0.0)
    hot = sim.state.temperature_c
    run_for(sim, clock, 1800.0)
    assert sim.state.temperature_c - spec.ambient_c == pytest.approx(
        (hot - spec.ambient_c) * math.exp(-1), abs=1e-6
    )


def test_over_temperature_trips_the_inverter_with_hysteresis() -> None:
    # 0.5 degC/kW x 100 kW would settle at 75 degC: the pack must trip at 55.
    spec = BatterySpec(temp_rise_c_per_kw=0.5, ramp_kw_per_s=0.0, revert_timeout_s=0.0)
    sim, clock = make_sim(spec, soc_pct=90.0)
    sim.command_power_kw(100.0)
    while Alarm.OVER_TEMPERATURE not in sim.state.alarms:
        run_for(sim, clock, 1.0)
        assert clock.now() < 1_767_225_600.0 + 4 * HOUR
    assert sim.state.temperature_c >= 55.0
    run_for(sim, clock, 1.0)
    m = sim.measure()
    assert m.power_kw == 0.0
    assert m.status is BatteryStatus.FAULT
    assert Alarm.TEMPERATURE_WARNING in m.alarms
    # Cooling: still tripped between 50 and 55 degC ...
    while sim.state.temperature_c >= 50.5:
        run_for(sim, clock, 1.0)
    assert Alarm.OVER_TEMPERATURE in sim.state.alarms
    assert sim.state.power_kw == 0.0
    # ... and back in service below trip - hysteresis.
    while sim.state.temperature_c >= 50.0:
        run_for(sim, clock, 1.0)
    run_for(sim, clock, 1.0)
    assert Alarm.OVER_TEMPERATURE not in sim.state.alarms
    assert sim.state.power_kw == 100.0


def test_temperature_runaway_fault_heats_the_idle_pack_until_it_trips() -> None:
    sim, clock = make_sim(IDEAL)
    sim.inject(Fault(FaultKind.TEMPERATURE_RUNAWAY, params={"c_per_s": 0.1}, duration_s=600))
    run_for(sim, clock, 60.0)
    assert sim.state.temperature_c == pytest.approx(25.0 + 6.0, abs=0.2)
    run_for(sim, clock, 540.0)
    assert Alarm.OVER_TEMPERATURE in sim.state.alarms
    peak = sim.state.temperature_c
    run_for(sim, clock, 600.0)  # fault over: cools towards ambient
    assert sim.state.temperature_c < peak
    assert sim.state.extra_heat_c_per_s == 0.0


# -- grid frequency -------------------------------------------------------------------------


def test_grid_frequency_noise_is_centred_on_nominal_and_seeded() -> None:
    def series(seed: int) -> list[float]:
        grid = GridFrequency(seed=seed, noise_std_hz=0.02)
        return [grid.step(float(t), 1.0) for t in range(20_000)]

    a, b, c = series(3), series(3), series(4)
    assert a == b
    assert a != c
    assert statistics.fmean(a) == pytest.approx(50.0, abs=0.005)
    assert statistics.pstdev(a) == pytest.approx(0.02, rel=0.25)
    assert all(49.8 < f < 50.2 for f in a)


def test_frequency_dip_is_visible_with_a_deviation_alarm() -> None:
    sim, clock = make_sim()
    t0 = clock.now()
    sim.inject(Fault(FaultKind.FREQUENCY_EVENT, start=t0 + 10, duration_s=30, params={"hz": 49.8}))
    run_for(sim, clock, 5.0)
    assert Alarm.FREQUENCY_DEVIATION not in sim.measure().alarms
    run_for(sim, clock, 10.0)
    m = sim.measure()
    assert m.frequency_hz == 49.8
    assert Alarm.FREQUENCY_DEVIATION in m.alarms
    assert Alarm.FREQUENCY_DEVIATION not in sim.state.alarms  # a grid condition, not a BMS one
    run_for(sim, clock, 30.0)
    m = sim.measure()
    assert 49.9 < m.frequency_hz < 50.1
    assert Alarm.FREQUENCY_DEVIATION not in m.alarms


def test_grid_event_overrides_the_noise() -> None:
    sim, clock = make_sim()
    sim.add_frequency_event(FrequencyEvent(start=clock.now() + 1, duration_s=20, hz=50.5))
    run_for(sim, clock, 10.0)
    m = sim.measure()
    assert m.frequency_hz == pytest.approx(50.5, abs=0.01)
    assert Alarm.FREQUENCY_DEVIATION in m.alarms


# -- measurement faults ---------------------------------------------------------------------


def test_freeze_holds_reported_values_while_the_physics_moves_on() -> None:
    sim, clock = make_sim()
    sim.command_power_kw(-100.0)
    run_for(sim, clock, 10.0)
    before = sim.measure()
    sim.inject(Fault(FaultKind.FREEZE, duration_s=600))
    run_for(sim, clock, 300.0)
    frozen = sim.measure()
    assert frozen.soc_pct == before.soc_pct
    assert frozen.charged_kwh == before.charged_kwh
    assert sim.soc_pct > before.soc_pct + 3  # it kept charging
    run_for(sim, clock, 301.0)
    assert sim.measure().soc_pct == sim.soc_pct  # thawed


def test_freeze_of_some_quantities_and_scheduled_freeze() -> None:
    sim, clock = make_sim()
    sim.command_power_kw(-100.0)
    start = clock.now() + 60
    sim.inject(Fault(FaultKind.FREEZE, start=start, params={"quantities": ["soc_pct"]}))
    run_for(sim, clock, 30.0)
    assert sim.measure().soc_pct == sim.soc_pct  # not yet
    run_for(sim, clock, 30.0)
    at_start = sim.measure().soc_pct
    run_for(sim, clock, 120.0)
    m = sim.measure()
    assert m.soc_pct == at_start  # frozen at the fault's start, not at injection
    assert m.charged_kwh == sim.state.charged_kwh  # other quantities still live


def test_out_of_range_reports_the_impossible_value() -> None:
    sim, clock = make_sim()
    sim.inject(Fault(FaultKind.OUT_OF_RANGE, params={"quantity": "soc_pct", "value": 250.0}))
    run_for(sim, clock, 1.0)
    assert sim.measure().soc_pct == 250.0
    assert sim.soc_pct == pytest.approx(50.0, abs=0.01)
    sim.faults.clear(FaultKind.OUT_OF_RANGE)
    assert sim.measure().soc_pct == pytest.approx(50.0, abs=0.01)


@pytest.mark.parametrize(
    "fault",
    [
        Fault(FaultKind.OUT_OF_RANGE, params={"quantity": "soc", "value": 1.0}),
        Fault(FaultKind.FREEZE, params={"quantities": ["soc_pct", "temp"]}),
    ],
)
def test_measurement_fault_on_an_unknown_quantity_is_refused(fault: Fault) -> None:
    sim, _ = make_sim()
    with pytest.raises(ValueError, match=r"unknown quantity .*choose from: soc_pct, power_kw"):
        sim.inject(fault)
    assert sim.faults.all() == []


def test_fault_with_unknown_kind_or_parameter_is_refused() -> None:
    with pytest.raises(ValueError, match="choose one of: drop_connections"):
        Fault.parse("fire")
    with pytest.raises(ValueError, match=r"does not take \['hz'\]; it takes \['code'\]"):
        Fault(FaultKind.MODBUS_EXCEPTION, params={"hz": 1})


# -- spec validation ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"capacity_kwh": 0.0}, r"capacity_kwh must be > 0 \(got 0.0\)"),
        ({"charge_efficiency": 1.2}, r"charge_efficiency must be in \(0, 1\]"),
        ({"ramp_kw_per_s": -1.0}, "ramp_kw_per_s must be >= 0"),
        ({"temp_warning_c": 60.0}, r"temp_warning_c \(60.0\) must be below temp_trip_c"),
    ],
)
def test_battery_spec_refuses_impossible_values(kwargs: dict[str, float], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        BatterySpec(**kwargs)


def test_battery_spec_lists_every_problem_at_once() -> None:
    with pytest.raises(ValueError) as err:
        BatterySpec(capacity_kwh=-1.0, discharge_efficiency=0.0)
    assert "capacity_kwh" in str(err.value)
    assert "discharge_efficiency" in str(err.value)


def test_initial_soc_outside_0_100_is_refused() -> None:
    with pytest.raises(ValueError, match=r"within 0\.\.100"):
        initial_state(BatterySpec(), soc_pct=101.0, timestamp=0.0)


# -- properties -----------------------------------------------------------------------------

segments = st.lists(
    st.tuples(
        st.floats(min_value=-150.0, max_value=150.0, allow_nan=False),
        st.floats(min_value=1.0, max_value=4 * HOUR),
    ),
    min_size=1,
    max_size=12,
)


@settings(max_examples=40, deadline=None)
@given(
    plan=segments,
    soc0=st.floats(min_value=0.0, max_value=100.0),
    eta_c=st.floats(min_value=0.8, max_value=1.0),
    eta_d=st.floats(min_value=0.8, max_value=1.0),
    self_discharge=st.floats(min_value=0.0, max_value=5.0),
)
def test_soc_stays_in_bounds_and_energy_is_conserved(
    plan: list[tuple[float, float]],
    soc0: float,
    eta_c: float,
    eta_d: float,
    self_discharge: float,
) -> None:
    spec = BatterySpec(
        capacity_kwh=100.0,
        charge_efficiency=eta_c,
        discharge_efficiency=eta_d,
        self_discharge_pct_per_day=self_discharge,
        revert_timeout_s=0.0,
    )
    sim, clock = make_sim(spec, soc_pct=soc0, max_step_s=60.0)
    e0 = sim.state.energy_kwh
    for setpoint, seconds in plan:
        sim.command_power_kw(setpoint)
        run_for(sim, clock, seconds)
        s = sim.state
        assert 0.0 <= s.soc_pct(spec) <= 100.0
        assert abs(s.power_kw) <= 100.0
        balance = e0 + eta_c * s.charged_kwh - s.discharged_kwh / eta_d - s.self_discharged_kwh
        assert s.energy_kwh == pytest.approx(balance, abs=1e-6)
