"""The grid API's wire models (pydantic); domain types stay in models.py / service.py."""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal

from pydantic import BaseModel, ConfigDict, Field

from .models import Constraint, ConstraintKind, ConstraintSpec, FrequencyExcursion
from .service import AreaState, GridState, Reading, TieLineState


class ConstraintIn(BaseModel):
    """A constraint: exactly one of site_id / area; valid_to absent = until further notice."""

    model_config = ConfigDict(extra="forbid")

    kind: ConstraintKind = Field(description="capacity_limit, maintenance or redispatch")
    site_id: str | None = Field(default=None, max_length=64)
    area: str | None = Field(default=None, max_length=64)
    limit_kw: Decimal | None = Field(
        default=None,
        description="the most the connection may carry, either direction (capacity_limit: "
        "required; maintenance: none, it means 0 kW; redispatch: optional)",
    )
    valid_from: datetime
    valid_to: datetime | None = None
    reason: str = Field(default="", max_length=500)

    def to_domain(self) -> ConstraintSpec:
        return ConstraintSpec(
            kind=self.kind,
            site_id=self.site_id,
            area=self.area,
            limit_kw=self.limit_kw,
            valid_from=self.valid_from,
            valid_to=self.valid_to,
            reason=self.reason,
        )


class ConstraintPublic(BaseModel):
    constraint_id: int
    kind: ConstraintKind
    site_id: str | None
    area: str | None
    limit_kw: Decimal | None
    effective_limit_kw: Decimal | None = Field(description="maintenance: 0; null = no limit")
    valid_from: datetime
    valid_to: datetime | None
    reason: str
    created_at: datetime
    updated_at: datetime

    @classmethod
    def of(cls, c: Constraint) -> ConstraintPublic:
        s = c.spec
        return cls(
            constraint_id=c.constraint_id,
            kind=s.kind,
            site_id=s.site_id,
            area=s.area,
            limit_kw=s.limit_kw,
            effective_limit_kw=s.effective_limit_kw,
            valid_from=s.valid_from,
            valid_to=s.valid_to,
            reason=s.reason,
            created_at=c.created_at,
            updated_at=c.updated_at,
        )


class ReadingPublic(BaseModel):
    status: str = Field(description="ok, no source, no data or error")
    source: str
    value_mw: float | None
    at: datetime | None
    minutes: int | None
    detail: str

    @classmethod
    def of(cls, r: Reading) -> ReadingPublic:
        return cls(
            status=r.status,
            source=r.source,
            value_mw=r.value_mw,
            at=r.at,
            minutes=r.minutes,
            detail=r.detail,
        )


class SiteFrequencyPublic(BaseModel):
    site_id: str
    frequency_hz: float
    measured_at: datetime
    stale: bool


class FrequencyPublic(BaseModel):
    frequency_hz: float | None = Field(description="median of the fresh site readings")
    min_hz: float | None
    max_hz: float | None
    level: str = Field(description="normal, warn, alarm or unknown (no fresh reading)")
    sites: list[SiteFrequencyPublic]


class AreaPublic(BaseModel):
    area: str
    frequency: FrequencyPublic
    alert_level: str
    load: ReadingPublic
    congestion_index: float | None = Field(
        description="share of the area's battery power withheld by active constraints, 0..1"
    )
    active_constraints: list[ConstraintPublic]

    @classmethod
    def of(cls, a: AreaState) -> AreaPublic:
        f = a.frequency
        return cls(
            area=f.area,
            frequency=FrequencyPublic(
                frequency_hz=f.frequency_hz,
                min_hz=f.min_hz,
                max_hz=f.max_hz,
                level=f.level.value,
                sites=[
                    SiteFrequencyPublic(
                        site_id=s.site_id,
                        frequency_hz=s.frequency_hz,
                        measured_at=s.measured_at,
                        stale=s.stale,
                    )
                    for s in f.sites
                ],
            ),
            alert_level=a.alert_level.value,
            load=ReadingPublic.of(a.load),
            congestion_index=a.congestion_index,
            active_constraints=[ConstraintPublic.of(c) for c in a.active_constraints],
        )


class TieLinePublic(BaseModel):
    line: str = Field(description="A>B: positive flow_mw is from A into B (net)")
    from_area: str
    to_area: str
    flow: ReadingPublic

    @classmethod
    def of(cls, t: TieLineState) -> TieLinePublic:
        return cls(
            line=t.line.label, from_area=t.line.a, to_area=t.line.b, flow=ReadingPublic.of(t.flow)
        )


class ExcursionPublic(BaseModel):
    area: str
    level: str
    started_at: datetime
    ended_at: datetime | None
    extreme_hz: float

    @classmethod
    def of(cls, e: FrequencyExcursion) -> ExcursionPublic:
        return cls(
            area=e.area,
            level=e.level.value,
            started_at=e.started_at,
            ended_at=e.ended_at,
            extreme_hz=e.extreme_hz,
        )


class BandsPublic(BaseModel):
    nominal_hz: float
    normal_band_hz: tuple[float, float]
    alarm_band_hz: tuple[float, float]


class GridStatePublic(BaseModel):
    as_of: datetime
    source: str = Field(description="where load and flows come from (none = no source)")
    bands: BandsPublic
    areas: list[AreaPublic]
    tie_lines: list[TieLinePublic]
    frequency_events: list[ExcursionPublic] = Field(
        description="recent excursions outside the normal band, newest first"
    )

    @classmethod
    def of(cls, s: GridState) -> GridStatePublic:
        b = s.bands
        return cls(
            as_of=s.as_of,
            source=s.source,
            bands=BandsPublic(
                nominal_hz=b.nominal_hz,
                normal_band_hz=(b.warn_low_hz, b.warn_high_hz),
                alarm_band_hz=(b.alarm_low_hz, b.alarm_high_hz),
            ),
            areas=[AreaPublic.of(a) for a in s.areas],
            tie_lines=[TieLinePublic.of(t) for t in s.tie_lines],
            frequency_events=[ExcursionPublic.of(e) for e in s.excursions],
        )
