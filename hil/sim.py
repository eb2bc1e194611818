"""The simulated battery as one object: physics + clock + grid + faults.

Protocol front-ends (Modbus TCP server, MQTT publisher) only call ``measure()`` to read and
``command_power_kw()`` / ``write_*`` to control; they never touch the physics directly.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import dataclass, fields, replace
from typing import Any

from .clock import Clock
from .faults import Fault, FaultBoard, FaultKind
from .grid import FrequencyEvent, GridFrequency
from .model import (
    Alarm,
    BatterySpec,
    BatteryState,
    BatteryStatus,
    dc_voltage_v,
    initial_state,
    status_of,
    step,
    write_setpoint,
)

log = logging.getLogger(__name__)

FREQ_NORMAL_BAND_HZ = (49.8, 50.2)


@dataclass(frozen=True)
class Measurements:
    """What the battery reports: the values a protocol front-end serves."""

    timestamp: float
    soc_pct: float
    power_kw: float  # + = discharge
    reactive_power_kvar: float
    voltage_v: float
    temperature_c: float
    frequency_hz: float
    setpoint_kw: float
    soh_pct: float
    status: BatteryStatus
    alarms: frozenset[Alarm]
    charged_kwh: float
    discharged_kwh: float


QUANTITIES = tuple(
    f.name for f in fields(Measurements) if f.name not in {"timestamp", "status", "alarms"}
)


class Simulator:
    def __init__(
        self,
        spec: BatterySpec,
        clock: Clock,
        *,
        soc_pct: float = 50.0,
        temperature_c: float | None = None,
        grid: GridFrequency | None = None,
        faults: FaultBoard | None = None,
        max_step_s: float = 1.0,
    ) -> None:
        self.spec = spec
        self.clock = clock
        self.grid = grid or GridFrequency()
        self.faults = faults or FaultBoard()
        self.max_step_s = max_step_s
        now = clock.now()
        self.state: BatteryState = initial_state(
            spec, soc_pct=soc_pct, timestamp=now, temperature_c=temperature_c
        )
        self.frequency_hz = self.grid.step(now, 0.0)
        self.controller_heartbeat = 0  # SunSpec 802 CtrlHb, written by the controller
        self._frozen: Measurements | None = None
        self._listeners: list[Callable[[Measurements], None]] = []
        self._alarm_log: list[tuple[float, str, Alarm]] = []

    # -- time ---------------------------------------------------------------------------
    def advance_to(self, t: float) -> None:
        """Integrate the physics up to simulated time ``t`` in steps of at most max_step_s."""
        while self.state.timestamp < t:
            dt = min(self.max_step_s, t - self.state.timestamp)
            now = self.state.timestamp + dt
            runaway = self.faults.active(FaultKind.TEMPERATURE_RUNAWAY, now)
            heat = float(runaway.param("c_per_s")) if runaway else 0.0
            if heat != self.state.extra_heat_c_per_s:
                self.state = replace(self.state, extra_heat_c_per_s=heat)
            result = step(self.spec, self.state, dt)
            self.state = result.state
            self.frequency_hz = self._frequency(now, dt)
            for alarm in result.raised:
                log.warning("alarm raised: %s at SoC %.2f %%", alarm, self.soc_pct)
                self._alarm_log.append((now, "raised", alarm))
            for alarm in result.cleared:
                log.info("alarm cleared: %s", alarm)
                self._alarm_log.append((now, "cleared", alarm))

    def sync(self) -> None:
        """Bring the physics up to the clock's now."""
        self.advance_to(self.clock.now())

    def _frequency(self, t: float, dt: float) -> float:
        event = self.faults.active(FaultKind.FREQUENCY_EVENT, t)
        hz = self.grid.step(t, dt)
        return float(event.param("hz")) if event else hz

    # -- control ------------------------------------------------------------------------
    def command_power_kw(self, kw: float) -> None:
        """A controller writes an AC power setpoint (+ discharge, - charge)."""
        self.sync()
        self.state = write_setpoint(self.state, kw, at=self.state.timestamp)

    def write_heartbeat(self, value: int) -> None:
        self.sync()
        self.controller_heartbeat = value

    def set_revert_timeout_s(self, seconds: float) -> None:
        """A controller changes the revert timeout (SunSpec ``InOutWRte_RvrtTms``); 0 = never."""
        self.sync()
        self.spec = replace(self.spec, revert_timeout_s=seconds)

    def inject(self, fault: Fault) -> None:
        self.sync()
        if fault.start is None:
            fault = replace(fault, start=self.state.timestamp)
        names: list[str] = []
        if fault.kind is FaultKind.OUT_OF_RANGE:
            names = [str(fault.param("quantity"))]
        elif fault.kind is FaultKind.FREEZE:
            names = list(fault.param("quantities") or [])
        unknown = [n for n in names if n not in QUANTITIES]
        if unknown:
            raise ValueError(f"unknown quantity {unknown}; choose from: {', '.join(QUANTITIES)}")
        if fault.kind is FaultKind.FREEZE and fault.active(self.state.timestamp):
            self._frozen = self._measure_raw()
        self.faults.inject(fault)
        log.warning("fault injected: %s %s", fault.kind.value, fault.params or "")

    def add_frequency_event(self, event: FrequencyEvent) -> None:
        self.grid.add_event(event)

    # -- reading ------------------------------------------------------------------------
    @property
    def soc_pct(self) -> float:
        return self.state.soc_pct(self.spec)

    @property
    def alarm_log(self) -> list[tuple[float, str, Alarm]]:
        return list(self._alarm_log)

    def _measure_raw(self) -> Measurements:
        s = self.state
        alarms = set(s.alarms)
        lo, hi = FREQ_NORMAL_BAND_HZ
        if not lo < self.frequency_hz < hi:  # at the limit counts: a 49.8 Hz dip alarms
            alarms.add(Alarm.FREQUENCY_DEVIATION)
        return Measurements(
            timestamp=s.timestamp,
            soc_pct=s.soc_pct(self.spec),
            power_kw=s.power_kw,
            reactive_power_kvar=0.0,
            voltage_v=dc_voltage_v(self.spec, s),
            temperature_c=s.temperature_c,
            frequency_hz=self.frequency_hz,
            setpoint_kw=s.setpoint_kw,
            soh_pct=self.spec.soh_pct,
            status=status_of(s),
            alarms=frozenset(alarms),
            charged_kwh=s.charged_kwh,
            discharged_kwh=s.discharged_kwh,
        )

    def measure(self) -> Measurements:
        """The values as the battery reports them, measurement faults applied."""
        self.sync()
        m = self._measure_raw()
        now = m.timestamp
        freeze = self.faults.active(FaultKind.FREEZE, now)
        if freeze:
            if self._frozen is None:  # a scheduled freeze freezes what it finds at its start
                self._frozen = m
            names = freeze.param("quantities") or QUANTITIES
            m = replace(m, **{n: getattr(self._frozen, n) for n in names})
        else:
            self._frozen = None
        bad = self.faults.active(FaultKind.OUT_OF_RANGE, now)
        if bad:
            quantity = str(bad.param("quantity"))
            overrides: dict[str, Any] = {quantity: float(bad.param("value"))}
            m = replace(m, **overrides)
        return m

    # -- running ------------------------------------------------------------------------
    def subscribe(self, listener: Callable[[Measurements], None]) -> None:
        """Call ``listener`` with fresh measurements after every tick of ``run``."""
        self._listeners.append(listener)

    async def run(self, tick_s: float = 0.1) -> None:
        """Follow the clock in real time (``tick_s`` real seconds per tick) until cancelled."""
        while True:
            self.sync()
            if self._listeners:
                m = self.measure()
                for listener in self._listeners:
                    try:
                        listener(m)
                    except Exception:  # a broken front-end must not stop the battery
                        log.exception("measurement listener %r failed", listener)
            await asyncio.sleep(tick_s)
