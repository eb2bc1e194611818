"""Battery physics: a BESS behind its inverter, as data plus one pure ``step`` function.

Sign convention (the same as the EdgeLink contract): active power ``+`` = discharge (export to
the grid), ``-`` = charge. Power values are AC-side kW at the inverter terminals.

Energy bookkeeping per step of ``dt`` seconds at AC power ``P``::

    discharge (P > 0): stored energy falls by  P * dt / discharge_efficiency
    charge    (P < 0): stored energy rises by |P| * dt * charge_efficiency
    self-discharge:    stored energy decays by exp(-k * dt), k from %/day

The BMS never lets stored energy leave [0, capacity]: a step that would cross a bound is
truncated so the battery lands exactly on it, the inverter power drops to 0 and an alarm is
raised. Temperature follows a first-order model: it relaxes to ambient + rise_per_kw * |P|
with the thermal time constant, plus any extra heat (temperature runaway fault).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from enum import StrEnum

SECONDS_PER_HOUR = 3600.0
SECONDS_PER_DAY = 86_400.0
BMS_BAND_FRACTION = 1e-4  # within 0.01 % of full/empty the BMS counts the battery as full/empty


class Alarm(StrEnum):
    """BMS/inverter alarms the simulator can raise (mirrored into SunSpec ``Evt1`` bits)."""

    SOC_FULL = "soc_full"  # charge requested at 100 % SoC
    SOC_EMPTY = "soc_empty"  # discharge requested at 0 % SoC
    OVER_TEMPERATURE = "over_temperature"  # above the trip temperature: inverter stops
    TEMPERATURE_WARNING = "temperature_warning"  # above the warning temperature
    SETPOINT_REVERTED = "setpoint_reverted"  # no setpoint refresh within the revert timeout
    FREQUENCY_DEVIATION = "frequency_deviation"  # grid frequency outside 49.8 … 50.2 Hz


class BatteryStatus(StrEnum):
    IDLE = "idle"
    CHARGING = "charging"
    DISCHARGING = "discharging"
    FAULT = "fault"


@dataclass(frozen=True)
class BatterySpec:
    """Nameplate and behaviour of the simulated battery. All fields have safe defaults."""

    capacity_kwh: float = 200.0
    max_charge_kw: float = 100.0
    max_discharge_kw: float = 100.0
    charge_efficiency: float = 0.95  # AC -> stored
    discharge_efficiency: float = 0.95  # stored -> AC; round trip 0.95 * 0.95 ~ 0.90
    self_discharge_pct_per_day: float = 0.1  # of the stored energy
    ramp_kw_per_s: float = 50.0  # 0 = no ramp limit
    ambient_c: float = 25.0
    thermal_time_constant_s: float = 1800.0
    temp_rise_c_per_kw: float = 0.15  # steady-state rise above ambient per kW of |P|
    temp_warning_c: float = 45.0
    temp_trip_c: float = 55.0
    temp_trip_hysteresis_c: float = 5.0
    revert_timeout_s: float = 60.0  # 0 = never revert
    nominal_voltage_v: float = 800.0
    voltage_span_v: float = 100.0  # DC voltage rises from nominal-span/2 at 0 % to +span/2
    soh_pct: float = 98.0

    def __post_init__(self) -> None:
        problems = []
        for name in (
            "capacity_kwh",
            "max_charge_kw",
            "max_discharge_kw",
            "thermal_time_constant_s",
        ):
            if not getattr(self, name) > 0:
                problems.append(f"{name} must be > 0 (got {getattr(self, name)!r})")
        for name in ("charge_efficiency", "discharge_efficiency"):
            if not 0 < getattr(self, name) <= 1:
                problems.append(f"{name} must be in (0, 1] (got {getattr(self, name)!r})")
        for name in ("self_discharge_pct_per_day", "ramp_kw_per_s", "revert_timeout_s"):
            if getattr(self, name) < 0:
                problems.append(f"{name} must be >= 0 (got {getattr(self, name)!r})")
        if not self.temp_warning_c < self.temp_trip_c:
            problems.append(
                f"temp_warning_c ({self.temp_warning_c}) must be below temp_trip_c "
                f"({self.temp_trip_c})"
            )
        if problems:
            raise ValueError("invalid battery spec: " + "; ".join(problems))

    @property
    def round_trip_efficiency(self) -> float:
        return self.charge_efficiency * self.discharge_efficiency


@dataclass(frozen=True)
class BatteryState:
    """Everything that changes over time. Replaced, never mutated, by ``step``."""

    timestamp: float  # Unix seconds of this state
    energy_kwh: float  # stored (DC-side) energy
    power_kw: float = 0.0  # actual AC power, + = discharge
    setpoint_kw: float = 0.0  # last commanded AC power, + = discharge
    setpoint_written_at: float | None = None  # when the controller last refreshed it
    temperature_c: float = 25.0
    extra_heat_c_per_s: float = 0.0  # temperature runaway: heating independent of power
    alarms: frozenset[Alarm] = frozenset()
    # Lifetime AC energy counters (what a revenue meter at the inverter would count).
    charged_kwh: float = 0.0
    discharged_kwh: float = 0.0
    self_discharged_kwh: float = 0.0

    def soc_pct(self, spec: BatterySpec) -> float:
        return 100.0 * self.energy_kwh / spec.capacity_kwh


@dataclass(frozen=True)
class StepResult:
    state: BatteryState
    raised: frozenset[Alarm] = field(default_factory=frozenset)
    cleared: frozenset[Alarm] = field(default_factory=frozenset)


def initial_state(
    spec: BatterySpec, *, soc_pct: float, timestamp: float, temperature_c: float | None = None
) -> BatteryState:
    if not 0.0 <= soc_pct <= 100.0:
        raise ValueError(f"initial soc_pct must be within 0..100 (got {soc_pct})")
    return BatteryState(
        timestamp=timestamp,
        energy_kwh=spec.capacity_kwh * soc_pct / 100.0,
        temperature_c=spec.ambient_c if temperature_c is None else temperature_c,
    )


def write_setpoint(state: BatteryState, setpoint_kw: float, *, at: float) -> BatteryState:
    """The controller commands an AC power; clipped to the inverter's rating at ``step``."""
    if not math.isfinite(setpoint_kw):
        raise ValueError(f"setpoint must be a finite number of kW (got {setpoint_kw!r})")
    return replace(
        state,
        setpoint_kw=setpoint_kw,
        setpoint_written_at=at,
        alarms=state.alarms - {Alarm.SETPOINT_REVERTED},
    )


def _ramp(current: float, target: float, max_delta: float | None) -> float:
    if max_delta is None:
        return target
    return current + max(-max_delta, min(max_delta, target - current))


def step(spec: BatterySpec, state: BatteryState, dt_s: float) -> StepResult:
    """Advance the battery by ``dt_s`` seconds under its current setpoint."""
    if dt_s < 0:
        raise ValueError(f"dt_s must be >= 0 (got {dt_s})")
    now = state.timestamp + dt_s
    alarms = set(state.alarms)
    setpoint = state.setpoint_kw

    # Revert timeout: an inverter whose controller went silent falls back to 0 kW.
    if (
        spec.revert_timeout_s > 0
        and state.setpoint_written_at is not None
        and setpoint != 0.0
        and now - state.setpoint_written_at > spec.revert_timeout_s
    ):
        setpoint = 0.0
        alarms.add(Alarm.SETPOINT_REVERTED)

    # Inverter rating, then the BMS: no charge when full, no discharge when empty, no power
    # at all above the trip temperature.
    target = max(-spec.max_charge_kw, min(spec.max_discharge_kw, setpoint))
    if alarms & {Alarm.OVER_TEMPERATURE}:
        target = 0.0
    # The first approach runs into the bound (the step is truncated to land on it exactly); once
    # there, a small band keeps self-discharge from restarting the charger every step.
    band = spec.capacity_kwh * BMS_BAND_FRACTION
    full_at = spec.capacity_kwh - (band if Alarm.SOC_FULL in alarms else 0.0)
    empty_at = band if Alarm.SOC_EMPTY in alarms else 0.0
    if target < 0 and state.energy_kwh >= full_at:
        target = 0.0
        alarms.add(Alarm.SOC_FULL)
    elif target > 0 and state.energy_kwh <= empty_at:
        target = 0.0
        alarms.add(Alarm.SOC_EMPTY)
    # The alarm stays while the controller keeps asking for the blocked direction (judged on
    # its setpoint: the BMS-clamped target is 0 exactly while the alarm is meant to show).
    if setpoint >= 0:
        alarms.discard(Alarm.SOC_FULL)
    if setpoint <= 0:
        alarms.discard(Alarm.SOC_EMPTY)

    ramp = spec.ramp_kw_per_s * dt_s if spec.ramp_kw_per_s > 0 else None
    power = _ramp(state.power_kw, target, ramp) if dt_s > 0 else state.power_kw

    # Energy: the AC power is held for the whole step (explicit Euler on piecewise-constant P).
    hours = dt_s / SECONDS_PER_HOUR
    energy = state.energy_kwh
    # Self-discharge first (exponential decay of the stored energy), so that a step the BMS
    # truncates lands exactly on full or empty.
    lost = 0.0
    if spec.self_discharge_pct_per_day > 0 and dt_s > 0:
        k = -math.log(1.0 - spec.self_discharge_pct_per_day / 100.0) / SECONDS_PER_DAY
        lost = energy * (1.0 - math.exp(-k * dt_s))
        energy -= lost
    charged = discharged = 0.0
    if power > 0:
        needed = power * hours / spec.discharge_efficiency
        if needed > energy:  # lands on empty: deliver only what is left
            needed = energy
            alarms.add(Alarm.SOC_EMPTY)
            power_out = 0.0
        else:
            power_out = power
        discharged = needed * spec.discharge_efficiency
        energy -= needed
        power = power_out
    elif power < 0:
        stored = -power * hours * spec.charge_efficiency
        room = spec.capacity_kwh - energy
        if stored > room:  # lands on full
            stored = room
            alarms.add(Alarm.SOC_FULL)
            power_out = 0.0
        else:
            power_out = power
        charged = stored / spec.charge_efficiency
        energy += stored
        power = power_out

    energy = min(spec.capacity_kwh, max(0.0, energy))

    # Thermal: first-order lag towards the steady state for the power held in this step.
    steady = spec.ambient_c + spec.temp_rise_c_per_kw * abs(power)
    temperature = state.temperature_c
    if dt_s > 0:
        a = math.exp(-dt_s / spec.thermal_time_constant_s)
        temperature = steady + (temperature - steady) * a + state.extra_heat_c_per_s * dt_s
    if temperature >= spec.temp_trip_c:
        alarms.add(Alarm.OVER_TEMPERATURE)
    elif temperature < spec.temp_trip_c - spec.temp_trip_hysteresis_c:
        alarms.discard(Alarm.OVER_TEMPERATURE)
    if temperature >= spec.temp_warning_c:
        alarms.add(Alarm.TEMPERATURE_WARNING)
    else:
        alarms.discard(Alarm.TEMPERATURE_WARNING)

    new = replace(
        state,
        timestamp=now,
        energy_kwh=energy,
        power_kw=power,
        setpoint_kw=setpoint,
        temperature_c=temperature,
        alarms=frozenset(alarms),
        charged_kwh=state.charged_kwh + charged,
        discharged_kwh=state.discharged_kwh + discharged,
        self_discharged_kwh=state.self_discharged_kwh + lost,
    )
    before = state.alarms
    return StepResult(
        state=new,
        raised=frozenset(new.alarms - before),
        cleared=frozenset(before - new.alarms),
    )


def status_of(state: BatteryState) -> BatteryStatus:
    if Alarm.OVER_TEMPERATURE in state.alarms:
        return BatteryStatus.FAULT
    if state.power_kw > 0:
        return BatteryStatus.DISCHARGING
    if state.power_kw < 0:
        return BatteryStatus.CHARGING
    return BatteryStatus.IDLE


def dc_voltage_v(spec: BatterySpec, state: BatteryState) -> float:
    """A simple open-circuit-voltage curve: linear in SoC around the nominal voltage."""
    soc = state.soc_pct(spec) / 100.0
    return spec.nominal_voltage_v + spec.voltage_span_v * (soc - 0.5)
