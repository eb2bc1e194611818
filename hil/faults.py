"""Fault injection: what can go wrong between a battery and the agent that controls it.

Faults are data (``Fault``) held in a ``FaultBoard``; the physics, the Modbus server and the
MQTT publisher each look at the board for the faults that concern them. A fault is active from
``start`` (Unix s, simulated time; ``None`` = now) for ``duration_s`` (``None`` = until cleared).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any


class FaultKind(StrEnum):
    # Communication faults (Modbus server / MQTT publisher)
    DROP_CONNECTIONS = "drop_connections"  # close every open client connection, once
    REFUSE_CONNECTIONS = "refuse_connections"  # stop listening: connects are refused
    NO_RESPONSE = "no_response"  # accept requests but never answer (client times out)
    MODBUS_EXCEPTION = "modbus_exception"  # answer every request with exception `code`
    # Measurement faults (what is reported, not what happens)
    FREEZE = "freeze"  # reported values stop changing (`quantities`, default all)
    OUT_OF_RANGE = "out_of_range"  # report an impossible `value` for `quantity`
    # Physical faults
    FREQUENCY_EVENT = "frequency_event"  # grid frequency goes to `hz`
    TEMPERATURE_RUNAWAY = "temperature_runaway"  # extra heating of `c_per_s` °C/s


# Parameters each kind accepts, with defaults; anything else is refused with a clear message.
FAULT_PARAMS: dict[FaultKind, dict[str, Any]] = {
    FaultKind.DROP_CONNECTIONS: {},
    FaultKind.REFUSE_CONNECTIONS: {},
    FaultKind.NO_RESPONSE: {},
    FaultKind.MODBUS_EXCEPTION: {"code": 4},  # 4 = server device failure
    FaultKind.FREEZE: {"quantities": None},
    FaultKind.OUT_OF_RANGE: {"quantity": "soc_pct", "value": 250.0},
    FaultKind.FREQUENCY_EVENT: {"hz": 49.8},
    FaultKind.TEMPERATURE_RUNAWAY: {"c_per_s": 0.05},
}


@dataclass(frozen=True)
class Fault:
    kind: FaultKind
    start: float | None = None
    duration_s: float | None = None
    params: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        allowed = FAULT_PARAMS[self.kind]
        unknown = set(self.params) - set(allowed)
        if unknown:
            raise ValueError(
                f"fault {self.kind.value!r} does not take {sorted(unknown)}; "
                f"it takes {sorted(allowed) or 'no parameters'}"
            )
        if self.duration_s is not None and self.duration_s <= 0:
            raise ValueError(f"fault duration_s must be > 0 (got {self.duration_s})")

    def param(self, name: str) -> Any:
        return self.params.get(name, FAULT_PARAMS[self.kind][name])

    def active(self, t: float) -> bool:
        start = self.start if self.start is not None else float("-inf")
        end = float("inf") if self.duration_s is None else start + self.duration_s
        return start <= t < end

    @classmethod
    def parse(cls, kind: str, **kwargs: Any) -> Fault:
        try:
            fault_kind = FaultKind(kind)
        except ValueError:
            choices = ", ".join(k.value for k in FaultKind)
            raise ValueError(f"unknown fault {kind!r}; choose one of: {choices}") from None
        start = kwargs.pop("start", None)
        duration = kwargs.pop("duration_s", None)
        return cls(
            kind=fault_kind,
            start=None if start is None else float(start),
            duration_s=None if duration is None else float(duration),
            params=kwargs,
        )


class FaultBoard:
    """The faults injected into one simulator, scripted or live."""

    def __init__(self) -> None:
        self._faults: list[Fault] = []
        self.version = 0  # bumped on every change so servers can react once

    def inject(self, fault: Fault) -> None:
        self._faults.append(fault)
        self.version += 1

    def clear(self, kind: FaultKind | None = None) -> int:
        before = len(self._faults)
        self._faults = [f for f in self._faults if kind is not None and f.kind != kind]
        self.version += 1
        return before - len(self._faults)

    def active(self, kind: FaultKind, t: float) -> Fault | None:
        for fault in reversed(self._faults):
            if fault.kind == kind and fault.active(t):
                return fault
        return None

    def all(self) -> list[Fault]:
        return list(self._faults)
