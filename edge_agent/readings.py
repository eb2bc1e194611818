"""What the agent knows about its battery: readings, their sources and their age.

Every source (Modbus poller, MQTT subscriber, REST ingest) produces ``Reading`` objects; the
``Coordinator`` keeps the latest per quantity with a priority per source, and everybody else
(guard, schedule executor, uplink, metrics) reads its snapshot. Sign convention: active power
``+`` = discharge, ``-`` = charge, kW at the AC side.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from enum import StrEnum
from typing import Protocol, runtime_checkable

log = logging.getLogger(__name__)


class Quantity(StrEnum):
    """The quantities the agent tracks; the values match EdgeLink's TelemetrySample fields."""

    SOC_PCT = "soc_pct"
    ACTIVE_POWER_KW = "active_power_kw"
    REACTIVE_POWER_KVAR = "reactive_power_kvar"
    VOLTAGE_V = "voltage_v"
    TEMPERATURE_C = "temperature_c"
    GRID_FREQUENCY_HZ = "grid_frequency_hz"
    SETPOINT_KW = "setpoint_kw"  # what the device says it was commanded (read back)
    SOH_PCT = "soh_pct"
    ENERGY_CHARGED_TOTAL_KWH = "energy_charged_total_kwh"
    ENERGY_DISCHARGED_TOTAL_KWH = "energy_discharged_total_kwh"
    STATUS_CODE = "status_code"  # device-specific state number, mapped by the source
    ALARM_BITS = "alarm_bits"  # device-specific alarm bit field


# Physical plausibility: a reading outside these bounds is refused (counted, logged once).
PLAUSIBLE: Mapping[Quantity, tuple[float, float]] = {
    Quantity.SOC_PCT: (0.0, 100.0),
    Quantity.SOH_PCT: (0.0, 100.0),
    Quantity.TEMPERATURE_C: (-40.0, 120.0),
    Quantity.GRID_FREQUENCY_HZ: (40.0, 70.0),
    Quantity.VOLTAGE_V: (0.0, 2000.0),
}


@dataclass(frozen=True)
class Reading:
    quantity: Quantity
    value: float
    timestamp: float  # Unix seconds when the value was measured (or received)
    source: str  # e.g. "modbus", "mqtt", "rest"

    def age_s(self, now: float) -> float:
        return max(0.0, now - self.timestamp)


class ReadingError(ValueError):
    """A value that cannot be a real reading (non-finite or outside physical bounds)."""


def check_plausible(reading: Reading) -> Reading:
    if not math.isfinite(reading.value):
        raise ReadingError(f"{reading.quantity.value} from {reading.source} is not a number")
    bounds = PLAUSIBLE.get(reading.quantity)
    if bounds and not bounds[0] <= reading.value <= bounds[1]:
        lo, hi = bounds
        raise ReadingError(
            f"{reading.quantity.value} = {reading.value:g} from {reading.source} is outside "
            f"the plausible range {lo:g} … {hi:g}"
        )
    return reading


@runtime_checkable
class BatteryReader(Protocol):
    """A polled source: the coordinator calls ``read`` once per poll interval."""

    name: str

    async def read(self) -> list[Reading]: ...


@runtime_checkable
class BatteryController(Protocol):
    """Something that can command the battery's AC power (+ discharge, - charge)."""

    name: str

    async def write_power_kw(self, power_kw: float) -> None: ...


class ReadingSink(Protocol):
    """Where push sources (MQTT, REST) deliver readings; the coordinator implements it."""

    def ingest(self, readings: Iterable[Reading]) -> None: ...
