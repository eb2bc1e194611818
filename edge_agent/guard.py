"""The agent's local safety guard: every setpoint passes through it before it reaches the battery.

Pure and clocked (STYLE 8, after OpenEMS's SoC-limit controller): no I/O besides logging, no
clock reads, the caller injects ``now``. Sign convention: ``+`` = discharge, ``-`` = charge, kW at
the AC side.

Rules, in the order they act on a requested setpoint:

1. **Hard zero** (the output is 0 kW at once, no ramp): a non-finite request, a Stop command,
   stale / missing / non-finite SoC or power telemetry (or temperature, once a sensor has reported
   or when ``require_temperature``), temperature at or above ``temp_stop_c``.
2. **Ramp** (``ramp_kw_per_s`` > 0): the request is moved at most ``ramp * dt`` from the previous
   output, ``dt`` being the injected time since the previous call (a time leap allows a big
   change). The first call ramps from the measured battery power.
3. **Safety envelope**, which always wins over the ramp (so the output may fall toward 0 faster
   than the ramp, never rise faster): power limits (battery rating and configured limit, the
   smaller wins), temperature derating (linear from 100 % at ``temp_warning_c`` to 0 at
   ``temp_stop_c``), SoC floor and ceiling with taper and hysteresis.

SoC taper: the discharge the guard allows is the energy above the floor spread over the taper
horizon ``tau``::

    P_max_discharge = (soc - floor) / 100 * capacity_kwh * 3600 / tau_s      (and the same
    P_max_charge    = (ceiling - soc) / 100 * capacity_kwh * 3600 / tau_s     toward the ceiling)

A setpoint held for ``dt`` seconds therefore removes at most the fraction ``dt / tau`` of the
headroom left (``dt / (tau * eta)`` with a discharge efficiency ``eta``), so the battery
approaches the limit exponentially at ever smaller power and, as long as the setpoint is refreshed
within ``eta * tau`` (the agent refreshes every second, the inverter reverts to 0 W when refreshes
stop), never crosses it. The band where the taper bites is ``P_rated * tau / capacity``; with the
default 300 s a 1C battery tapers over the last 8.3 % of SoC. Hysteresis: once the SoC reads at or
below the floor, discharge stays blocked until it rises above floor + ``soc_hysteresis_pct``
(likewise at the ceiling), so readings jittering around the limit do not toggle the battery.

Reasons: a hard-zero condition is reported whenever it is active, even for a 0 kW request (the
guard is holding the battery); a limit or the ramp only when it changed the request, and then the
rules the output sits on. Every intervention is counted per reason on every call; an event (and
one log line) is produced only when the set of active reasons changes or clears.
"""

from __future__ import annotations

import logging
import math
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass, fields
from enum import StrEnum
from types import MappingProxyType
from typing import NamedTuple

logger = logging.getLogger(__name__)

SECONDS_PER_HOUR = 3600.0
# Two kW values closer than this are equal for reporting (reasons), never for the clamping itself.
_TOL_KW = 1e-9
# Events are produced on change only; the bound only protects a caller that never drains them.
MAX_PENDING_EVENTS = 1024


class GuardReason(StrEnum):
    """Why the guard changed (or holds) a setpoint; values match the EdgeLink ``GuardReason``."""

    SOC_FLOOR = "soc_floor"
    SOC_CEILING = "soc_ceiling"
    POWER_LIMIT = "power_limit"
    RAMP_LIMIT = "ramp_limit"
    TEMPERATURE_DERATE = "temperature_derate"
    TEMPERATURE_STOP = "temperature_stop"
    STALE_TELEMETRY = "stale_telemetry"
    COMMAND_STOP = "command_stop"
    INVALID_SETPOINT = "invalid_setpoint"


_REASON_ORDER = {reason: index for index, reason in enumerate(GuardReason)}


@dataclass(frozen=True, kw_only=True)
class GuardLimits:
    """What the guard enforces; contradictions are refused at construction (and on ``replace``)."""

    capacity_kwh: float
    max_charge_kw: float  # battery rating, magnitude
    max_discharge_kw: float  # battery rating, magnitude
    charge_limit_kw: float | None = None  # configured limit, magnitude; None = the rating
    discharge_limit_kw: float | None = None  # configured limit, magnitude; None = the rating
    min_soc_pct: float = 15.0
    max_soc_pct: float = 90.0
    soc_hysteresis_pct: float = 2.0
    taper_horizon_s: float = 300.0
    ramp_kw_per_s: float = 0.0  # 0 = no ramp limit
    temp_warning_c: float = 45.0
    temp_stop_c: float = 55.0
    stale_after_s: float = 10.0
    require_temperature: bool = False  # True: a missing temperature reading stops the battery

    def __post_init__(self) -> None:
        problems = _limit_problems(self)
        if problems:
            raise ValueError("invalid guard limits: " + "; ".join(problems))

    @property
    def discharge_kw(self) -> float:
        """Effective discharge limit: the smaller of rating and configured limit."""
        if self.discharge_limit_kw is None:
            return self.max_discharge_kw
        return min(self.max_discharge_kw, self.discharge_limit_kw)

    @property
    def charge_kw(self) -> float:
        """Effective charge limit (magnitude): the smaller of rating and configured limit."""
        if self.charge_limit_kw is None:
            return self.max_charge_kw
        return min(self.max_charge_kw, self.charge_limit_kw)


def _limit_problems(limits: GuardLimits) -> list[str]:
    problems: list[str] = []
    for f in fields(limits):
        value = getattr(limits, f.name)
        if isinstance(value, bool) or value is None:
            continue
        if not isinstance(value, int | float) or not math.isfinite(value):
            problems.append(f"{f.name} must be a finite number (got {value!r})")
    if problems:  # comparisons with NaN or strings would only add noise
        return problems

    def at_least(name: str, floor: float, *, strict: bool = False) -> None:
        value = getattr(limits, name)
        if value is None:
            return
        if value < floor or (strict and value == floor):
            problems.append(f"{name} must be {'>' if strict else '>='} {floor:g} (got {value!r})")

    at_least("capacity_kwh", 0.0, strict=True)
    for name in ("max_charge_kw", "max_discharge_kw", "charge_limit_kw", "discharge_limit_kw"):
        at_least(name, 0.0)
    at_least("soc_hysteresis_pct", 0.0)
    at_least("ramp_kw_per_s", 0.0)
    at_least("taper_horizon_s", 0.0, strict=True)
    at_least("stale_after_s", 0.0, strict=True)
    if not 0.0 <= limits.min_soc_pct < limits.max_soc_pct <= 100.0:
        problems.append(
            f"min_soc_pct ({limits.min_soc_pct!r}) must be below max_soc_pct "
            f"({limits.max_soc_pct!r}), both within 0 to 100"
        )
    elif limits.soc_hysteresis_pct >= limits.max_soc_pct - limits.min_soc_pct:
        # Otherwise a battery stopped at the floor could only be released above the ceiling.
        problems.append(
            f"soc_hysteresis_pct ({limits.soc_hysteresis_pct!r}) must be smaller than "
            f"max_soc_pct - min_soc_pct ({limits.max_soc_pct!r} - {limits.min_soc_pct!r})"
        )
    if not limits.temp_warning_c < limits.temp_stop_c:
        problems.append(
            f"temp_warning_c ({limits.temp_warning_c!r}) must be below temp_stop_c "
            f"({limits.temp_stop_c!r})"
        )
    return problems


@dataclass(frozen=True)
class Reading:
    """One telemetry value and when it was measured (Unix seconds)."""

    value: float
    timestamp: float


@dataclass(frozen=True)
class GuardInput:
    """The latest readings the guard judges a setpoint against; None = never received."""

    soc_pct: Reading | None
    power_kw: Reading | None
    temperature_c: Reading | None = None


@dataclass(frozen=True)
class GuardDecision:
    """What the guard did with one requested setpoint."""

    requested_kw: float
    applied_kw: float
    reasons: frozenset[GuardReason]
    at: float
    detail: str = ""  # plain-language explanation; empty when the guard did not intervene

    @property
    def intervened(self) -> bool:
        return bool(self.reasons)


@dataclass(frozen=True)
class GuardEvent:
    """The set of active reasons changed; an empty set means the guard released the setpoint."""

    at: float
    reasons: frozenset[GuardReason]
    requested_kw: float
    applied_kw: float
    message: str

    @property
    def cleared(self) -> bool:
        return not self.reasons


class _Bound(NamedTuple):
    """One envelope rule: the output must lie within [lower_kw, upper_kw] (lower <= 0 <= upper)."""

    reason: GuardReason
    lower_kw: float
    upper_kw: float
    lower_note: str
    upper_note: str


class SafetyGuard:
    """Clamps setpoints to the battery's safe envelope; a state machine driven by ``apply``."""

    def __init__(self, limits: GuardLimits) -> None:
        self._limits = limits
        self._floor_latched = False
        self._ceiling_latched = False
        self._stop_reason: str | None = None
        self._temperature_seen = False  # a sensor that reported once must keep reporting
        self._last_applied_kw = 0.0
        self._last_at: float | None = None
        self._active: frozenset[GuardReason] = frozenset()
        self._events: deque[GuardEvent] = deque(maxlen=MAX_PENDING_EVENTS)
        self._counters: dict[GuardReason, int] = dict.fromkeys(GuardReason, 0)
        self._counters_view = MappingProxyType(self._counters)

    @property
    def limits(self) -> GuardLimits:
        return self._limits

    @property
    def counters(self) -> Mapping[GuardReason, int]:
        """Calls clamped per reason since start (a live, read-only view)."""
        return self._counters_view

    @property
    def active_reasons(self) -> frozenset[GuardReason]:
        return self._active

    @property
    def stop_reason(self) -> str | None:
        """Why a Stop command holds the battery at 0 kW; None when not stopped."""
        return self._stop_reason

    def stop(self, *, reason: str, now: float) -> None:
        """Hold 0 kW from the next ``apply`` until ``resume``."""
        self._stop_reason = reason or "no reason given"
        logger.warning("guard: stop command at %.3f: %s", now, self._stop_reason)

    def resume(self, *, now: float) -> None:
        """Lift a Stop; the output ramps up from 0 kW again."""
        if self._stop_reason is None:
            return
        logger.info("guard: resume at %.3f (was stopped: %s)", now, self._stop_reason)
        self._stop_reason = None

    def update_limits(self, limits: GuardLimits) -> None:
        """Enforce new limits from the next ``apply`` (validated by ``GuardLimits`` itself)."""
        if not isinstance(limits, GuardLimits):
            raise TypeError(f"limits must be GuardLimits, got {type(limits).__name__}")
        changes = [
            f"{f.name} {getattr(self._limits, f.name)!r} -> {getattr(limits, f.name)!r}"
            for f in fields(limits)
            if getattr(self._limits, f.name) != getattr(limits, f.name)
        ]
        self._limits = limits
        # The latches belong to the old floor/ceiling; the next reading re-latches if needed.
        self._floor_latched = False
        self._ceiling_latched = False
        if changes:
            logger.info("guard: limits updated: %s", ", ".join(changes))

    def drain_events(self) -> list[GuardEvent]:
        """Events produced since the last drain, oldest first."""
        events = list(self._events)
        self._events.clear()
        return events

    def apply(self, requested_kw: float, telemetry: GuardInput, *, now: float) -> GuardDecision:
        """Clamp ``requested_kw`` to what is safe at ``now``."""
        limits = self._limits
        notes: dict[GuardReason, str] = {}

        # Hard-zero conditions first; they are reported whenever active, whatever the request.
        if not _finite(requested_kw):
            notes[GuardReason.INVALID_SETPOINT] = (
                f"requested setpoint {requested_kw!r} kW is not a finite number"
            )
        if self._stop_reason is not None:
            notes[GuardReason.COMMAND_STOP] = f"stopped by command: {self._stop_reason}"
        stale: list[str] = []
        soc: float | None = None
        temperature: float | None = None
        if not _finite(now):
            stale.append(f"agent clock value {now!r} is not finite")
        else:
            soc_problem = _reading_problem("SoC", telemetry.soc_pct, now, limits.stale_after_s)
            if soc_problem is None and telemetry.soc_pct is not None:
                if 0.0 <= telemetry.soc_pct.value <= 100.0:
                    soc = telemetry.soc_pct.value
                else:
                    soc_problem = f"SoC reading {telemetry.soc_pct.value!r} % outside 0 to 100 %"
            power_problem = _reading_problem("power", telemetry.power_kw, now, limits.stale_after_s)
            temp_problem: str | None = None
            self._temperature_seen |= telemetry.temperature_c is not None
            if self._temperature_seen or limits.require_temperature:
                temp_problem = _reading_problem(
                    "temperature", telemetry.temperature_c, now, limits.stale_after_s
                )
                if temp_problem is None and telemetry.temperature_c is not None:
                    temperature = telemetry.temperature_c.value
            stale.extend(p for p in (soc_problem, power_problem, temp_problem) if p is not None)
        if stale:
            notes[GuardReason.STALE_TELEMETRY] = ", ".join(stale)
        if soc is not None:
            self._update_latches(soc)
        if temperature is not None and temperature >= limits.temp_stop_c:
            notes[GuardReason.TEMPERATURE_STOP] = (
                f"temperature {temperature:.1f} °C at or above stop {limits.temp_stop_c:.1f} °C"
            )

        if notes or soc is None or telemetry.power_kw is None:  # (None implies a note already)
            applied = 0.0
        else:
            applied = self._clamp(
                requested_kw, soc, temperature, telemetry.power_kw.value, now, notes
            )

        if _finite(now):
            self._last_at = now
        self._last_applied_kw = applied
        reasons = frozenset(notes)
        for reason in reasons:
            self._counters[reason] += 1
        detail = _message(requested_kw, applied, notes) if notes else ""
        decision = GuardDecision(
            requested_kw=requested_kw, applied_kw=applied, reasons=reasons, at=now, detail=detail
        )
        if reasons != self._active:
            self._emit(decision)
        return decision

    def _update_latches(self, soc: float) -> None:
        limits = self._limits
        if soc <= limits.min_soc_pct:
            if not self._floor_latched:
                logger.info("guard: SoC %.2f %% reached floor %.1f %%", soc, limits.min_soc_pct)
            self._floor_latched = True
        elif soc > limits.min_soc_pct + limits.soc_hysteresis_pct:
            self._floor_latched = False
        if soc >= limits.max_soc_pct:
            if not self._ceiling_latched:
                logger.info("guard: SoC %.2f %% reached ceiling %.1f %%", soc, limits.max_soc_pct)
            self._ceiling_latched = True
        elif soc < limits.max_soc_pct - limits.soc_hysteresis_pct:
            self._ceiling_latched = False

    def _bounds(self, soc: float, temperature: float | None) -> list[_Bound]:
        limits = self._limits
        charge_kw, discharge_kw = limits.charge_kw, limits.discharge_kw
        bounds = [
            _Bound(
                GuardReason.POWER_LIMIT,
                -charge_kw,
                discharge_kw,
                f"charge limit {charge_kw:.1f} kW ({_source(charge_kw, limits.max_charge_kw)})",
                f"discharge limit {discharge_kw:.1f} kW "
                f"({_source(discharge_kw, limits.max_discharge_kw)})",
            )
        ]
        per_pct_kw = limits.capacity_kwh / 100.0 * SECONDS_PER_HOUR / limits.taper_horizon_s
        floor, ceiling, hysteresis = (
            limits.min_soc_pct,
            limits.max_soc_pct,
            limits.soc_hysteresis_pct,
        )
        if self._floor_latched:
            upper = 0.0
            if soc <= floor:
                note = f"SoC {soc:.1f} % at or below floor {floor:.1f} %"
            else:
                note = (
                    f"SoC {soc:.1f} % not yet above floor {floor:.1f} % + hysteresis "
                    f"{hysteresis:.1f} % since it reached the floor"
                )
        else:
            upper = (soc - floor) * per_pct_kw
            note = f"SoC {soc:.1f} % near floor {floor:.1f} % (taper allows {upper:.1f} kW)"
        bounds.append(_Bound(GuardReason.SOC_FLOOR, -math.inf, upper, "", note))
        if self._ceiling_latched:
            lower = 0.0
            if soc >= ceiling:
                note = f"SoC {soc:.1f} % at or above ceiling {ceiling:.1f} %"
            else:
                note = (
                    f"SoC {soc:.1f} % not yet below ceiling {ceiling:.1f} % - hysteresis "
                    f"{hysteresis:.1f} % since it reached the ceiling"
                )
        else:
            lower = -(ceiling - soc) * per_pct_kw
            note = f"SoC {soc:.1f} % near ceiling {ceiling:.1f} % (taper allows {-lower:.1f} kW)"
        bounds.append(_Bound(GuardReason.SOC_CEILING, lower, math.inf, note, ""))
        if temperature is not None and temperature > limits.temp_warning_c:
            # Only above the warning temperature, so that a factor of 1 is never reported.
            factor = (limits.temp_stop_c - temperature) / (
                limits.temp_stop_c - limits.temp_warning_c
            )
            note = (
                f"temperature {temperature:.1f} °C above warning {limits.temp_warning_c:.1f} °C "
                f"(stop at {limits.temp_stop_c:.1f} °C): power derated to {factor * 100:.0f} %"
            )
            bounds.append(
                _Bound(
                    GuardReason.TEMPERATURE_DERATE,
                    -factor * charge_kw,
                    factor * discharge_kw,
                    note,
                    note,
                )
            )
        return bounds

    def _clamp(
        self,
        requested_kw: float,
        soc: float,
        temperature: float | None,
        measured_kw: float,
        now: float,
        notes: dict[GuardReason, str],
    ) -> float:
        bounds = self._bounds(soc, temperature)
        lower = max(b.lower_kw for b in bounds)
        upper = min(b.upper_kw for b in bounds)

        wish = requested_kw
        ramp = self._limits.ramp_kw_per_s
        if self._last_at is None:
            # No previous output yet: continue from what the battery does now.
            reference, dt = measured_kw, 0.0
        else:
            # A clock stepping back allows no change for one call instead of a negative window.
            reference, dt = self._last_applied_kw, max(0.0, now - self._last_at)
        step = ramp * dt
        if ramp > 0:
            wish = _clip(requested_kw, reference - step, reference + step)
        # Safety wins over the ramp: the envelope always contains 0, so a violated ramp can only
        # mean a faster move toward 0 kW, never away from it.
        applied = _clip(wish, lower, upper) + 0.0  # + 0.0 turns -0.0 into 0.0

        if abs(applied - requested_kw) <= _TOL_KW:
            return applied  # the request passed: nothing to report, whatever bound it touched
        if ramp > 0 and abs(applied - _clip(requested_kw, lower, upper)) > _TOL_KW:
            notes[GuardReason.RAMP_LIMIT] = (
                f"ramp limit {ramp:g} kW/s allows {step:.1f} kW change in {dt:.1f} s "
                f"from {reference:.1f} kW"
            )
        for bound in bounds:
            # A rule is reported when the output sits on its bound and the request, or the
            # ramped request, lay beyond it.
            if (
                max(requested_kw, wish) > bound.upper_kw + _TOL_KW
                and applied >= bound.upper_kw - _TOL_KW
            ):
                notes[bound.reason] = bound.upper_note
            elif (
                min(requested_kw, wish) < bound.lower_kw - _TOL_KW
                and applied <= bound.lower_kw + _TOL_KW
            ):
                notes[bound.reason] = bound.lower_note
        return applied

    def _emit(self, decision: GuardDecision) -> None:
        if decision.reasons:
            message = decision.detail
            logger.warning("guard: %s", message)
        else:
            message = f"guard released: applying {_describe(decision.applied_kw)} as requested"
            logger.info("guard: %s", message)
        self._active = decision.reasons
        self._events.append(
            GuardEvent(
                at=decision.at,
                reasons=decision.reasons,
                requested_kw=decision.requested_kw,
                applied_kw=decision.applied_kw,
                message=message,
            )
        )


def _finite(value: object) -> bool:
    return isinstance(value, int | float) and math.isfinite(value)


def _clip(value: float, lower: float, upper: float) -> float:
    return max(lower, min(upper, value))


def _reading_problem(
    name: str, reading: Reading | None, now: float, stale_after_s: float
) -> str | None:
    if reading is None:
        return f"{name} reading missing"
    if not _finite(reading.value):
        return f"{name} reading {reading.value!r} is not a finite number"
    if not _finite(reading.timestamp):
        return f"{name} reading has no valid timestamp ({reading.timestamp!r})"
    age = now - reading.timestamp
    if age > stale_after_s:
        return f"{name} reading {age:.1f} s old (limit {stale_after_s:g} s)"
    if age < -stale_after_s:
        # A reading from the future means a clock went wrong; its value cannot be placed in time.
        return f"{name} reading stamped {-age:.1f} s in the future"
    return None


def _source(effective_kw: float, rating_kw: float) -> str:
    return "battery rating" if effective_kw == rating_kw else "configured"


def _describe(kw: float) -> str:
    if kw > 0:
        return f"discharge {kw:.1f} kW"
    if kw < 0:
        return f"charge {-kw:.1f} kW"
    return f"{kw:.1f} kW"


def _message(requested_kw: float, applied_kw: float, notes: Mapping[GuardReason, str]) -> str:
    why = "; ".join(notes[reason] for reason in sorted(notes, key=_REASON_ORDER.__getitem__))
    if not _finite(requested_kw):
        return f"setpoint {requested_kw!r} kW replaced by {_describe(applied_kw)}: {why}"
    if requested_kw == applied_kw:
        return f"holding {_describe(applied_kw)}: {why}"
    if requested_kw * applied_kw < 0:  # the ramp can hold the opposite direction for a while
        return f"{_describe(requested_kw)} limited to {_describe(applied_kw)}: {why}"
    return f"{_describe(requested_kw)} limited to {abs(applied_kw):.1f} kW: {why}"
