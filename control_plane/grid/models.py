"""The grid service's domain types: frequency bands and levels, constraints, load and flows.

Errors (`GridError` and below) are raised by the service and the store and translated to HTTP
in api.py only:

    GridError
    ├── InvalidConstraintError   (ValueError: the input is wrong; says what and how to fix)
    ├── UnknownConstraintError   (no constraint with that id)
    └── NoGridSourceError        (load/flows asked for, no source configured)
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal
from enum import StrEnum
from typing import Final


def utc_now() -> datetime:
    return datetime.now(UTC)


class GridError(Exception):
    """Base of the grid service's errors."""


class InvalidConstraintError(GridError, ValueError):
    pass


class UnknownConstraintError(GridError):
    def __init__(self, constraint_id: int) -> None:
        super().__init__(f"no grid constraint {constraint_id}")
        self.constraint_id = constraint_id


class NoGridSourceError(GridError):
    pass


class Level(StrEnum):
    """Where a frequency lies: inside the normal band, outside it (warn), outside the alarm
    band, or unknown (no fresh measurement)."""

    NORMAL = "normal"
    WARN = "warn"
    ALARM = "alarm"
    UNKNOWN = "unknown"

    @property
    def rank(self) -> int:
        return _RANK[self]


_RANK: Final = {Level.UNKNOWN: -1, Level.NORMAL: 0, Level.WARN: 1, Level.ALARM: 2}


@dataclass(frozen=True, slots=True, kw_only=True)
class FrequencyBands:
    """Normal band [warn_low, warn_high] and alarm band [alarm_low, alarm_high], in Hz.

    A frequency on a band's edge is still inside it (49.8 Hz is normal, 49.79 Hz warns)."""

    nominal_hz: float = 50.0
    warn_low_hz: float = 49.8
    warn_high_hz: float = 50.2
    alarm_low_hz: float = 49.7
    alarm_high_hz: float = 50.3

    def __post_init__(self) -> None:
        values = (
            self.alarm_low_hz,
            self.warn_low_hz,
            self.nominal_hz,
            self.warn_high_hz,
            self.alarm_high_hz,
        )
        if not all(math.isfinite(v) for v in values) or list(values) != sorted(values):
            raise ValueError(
                "frequency bands must satisfy alarm_low <= warn_low <= nominal <= warn_high <= "
                f"alarm_high, got {values}"
            )

    def level(self, hz: float | None) -> Level:
        if hz is None or not math.isfinite(hz):
            return Level.UNKNOWN
        if hz < self.alarm_low_hz or hz > self.alarm_high_hz:
            return Level.ALARM
        if hz < self.warn_low_hz or hz > self.warn_high_hz:
            return Level.WARN
        return Level.NORMAL


@dataclass(frozen=True, slots=True, kw_only=True)
class SiteFrequency:
    site_id: str
    area: str
    frequency_hz: float
    measured_at: datetime
    stale: bool


@dataclass(frozen=True, slots=True, kw_only=True)
class AreaFrequency:
    """An area's frequency: the median of its sites' fresh readings (one faulty meter does not
    move it), with the spread; None when no site of the area reported recently."""

    area: str
    frequency_hz: float | None
    min_hz: float | None
    max_hz: float | None
    level: Level
    sites: tuple[SiteFrequency, ...]

    @property
    def fresh_sites(self) -> int:
        return sum(1 for s in self.sites if not s.stale)


@dataclass(frozen=True, slots=True, kw_only=True)
class FrequencyExcursion:
    """A time an area's frequency spent outside the normal band (open while `ended_at` is
    None); `level` is the worst reached, `extreme_hz` the farthest reading from nominal."""

    area: str
    level: Level
    started_at: datetime
    ended_at: datetime | None
    extreme_hz: float


class ConstraintKind(StrEnum):
    """`capacity_limit`: the connection may carry at most `limit_kw` (either direction);
    `maintenance`: the site may not exchange power at all (0 kW); `redispatch`: a TSO/DSO
    redispatch order, limiting to `limit_kw` when it gives one, otherwise informational."""

    CAPACITY_LIMIT = "capacity_limit"
    MAINTENANCE = "maintenance"
    REDISPATCH = "redispatch"


@dataclass(frozen=True, slots=True, kw_only=True)
class ConstraintSpec:
    """What a constraint says; exactly one of `site_id` / `area` is set."""

    kind: ConstraintKind
    valid_from: datetime
    valid_to: datetime | None
    site_id: str | None = None
    area: str | None = None
    limit_kw: Decimal | None = None
    reason: str = ""

    def __post_init__(self) -> None:
        check_constraint(self)

    @property
    def effective_limit_kw(self) -> Decimal | None:
        """The power the target may exchange while active; None = no power limit."""
        if self.kind is ConstraintKind.MAINTENANCE:
            return Decimal(0)
        return self.limit_kw

    def overlaps(self, start: datetime, end: datetime) -> bool:
        """Whether the validity window [valid_from, valid_to) meets [start, end)."""
        return self.valid_from < end and (self.valid_to is None or start < self.valid_to)


@dataclass(frozen=True, slots=True, kw_only=True)
class Constraint:
    constraint_id: int
    spec: ConstraintSpec
    created_at: datetime
    updated_at: datetime

    def describe(self) -> str:
        s = self.spec
        target = f"site {s.site_id}" if s.site_id else f"area {s.area}"
        until = s.valid_to.isoformat() if s.valid_to else "further notice"
        return (
            f"constraint #{self.constraint_id} ({s.kind.value}, {target}, "
            f"{s.valid_from.isoformat()} until {until})"
        )


MAX_LIMIT_KW: Final = Decimal(10_000_000)  # 10 GW: beyond any one connection


def check_constraint(spec: ConstraintSpec) -> None:
    """Raise `InvalidConstraintError` naming every problem of `spec`."""
    problems: list[str] = []
    if (spec.site_id is None) == (spec.area is None):
        problems.append("give exactly one of site_id (one site) or area (every site in it)")
    for name, value in (("site_id", spec.site_id), ("area", spec.area)):
        if value is not None and not value.strip():
            problems.append(f"{name} must not be blank")
    for name, at in (("valid_from", spec.valid_from), ("valid_to", spec.valid_to)):
        if at is not None and at.tzinfo is None:
            problems.append(f"{name} must carry a timezone (e.g. 2025-11-03T08:00:00Z)")
    if (
        spec.valid_to is not None
        and spec.valid_from.tzinfo is not None
        and spec.valid_to.tzinfo is not None
        and spec.valid_to <= spec.valid_from
    ):
        problems.append(
            f"valid_to {spec.valid_to.isoformat()} must be after valid_from "
            f"{spec.valid_from.isoformat()}"
        )
    limit = spec.limit_kw
    if limit is not None and (not limit.is_finite() or limit < 0 or limit > MAX_LIMIT_KW):
        problems.append(f"limit_kw must be 0 .. {MAX_LIMIT_KW} kW, got {limit}")
    if spec.kind is ConstraintKind.CAPACITY_LIMIT and limit is None:
        problems.append("a capacity_limit needs limit_kw (the most the connection may carry)")
    if spec.kind is ConstraintKind.MAINTENANCE and limit is not None:
        problems.append(
            "a maintenance constraint takes no limit_kw (the site exchanges no power); use "
            "capacity_limit for a partial limit"
        )
    if len(spec.reason) > 500:
        problems.append(f"reason is {len(spec.reason)} characters; at most 500")
    if problems:
        raise InvalidConstraintError("invalid grid constraint: " + "; ".join(problems))


@dataclass(frozen=True, slots=True, kw_only=True)
class LoadPoint:
    """Actual total load of a bidding zone (ENTSO-E A65) over [start, start + resolution)."""

    zone: str
    start: datetime
    minutes: int
    load_mw: float


@dataclass(frozen=True, slots=True, kw_only=True)
class FlowPoint:
    """Physical flow from `from_zone` into `to_zone` (ENTSO-E A11) over an interval, MW >= 0."""

    from_zone: str
    to_zone: str
    start: datetime
    minutes: int
    flow_mw: float


@dataclass(frozen=True, slots=True, kw_only=True)
class TieLine:
    """A border between two bidding zones; flows are reported as `a` -> `b` (net)."""

    a: str
    b: str

    @property
    def label(self) -> str:
        return f"{self.a}>{self.b}"
