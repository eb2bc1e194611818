"""The market API's wire models (pydantic), built from the domain types with `of()`."""

from __future__ import annotations

from datetime import datetime

from pydantic import BaseModel, Field

from .feed import FeedStatus
from .models import PricePoint
from .service import ImportSummary
from .store import PriceRevision


class PricePointPublic(BaseModel):
    start: datetime
    end: datetime
    resolution: str = Field(description="PT15M, PT30M or PT60M")
    price_eur_per_mwh: float
    source: str = Field(description="entsoe, awattar, file:<name>, demo:<name>")
    sequence: str = Field(description="the auction (SDAC, EXAA) where the source says")
    flag: str = Field(description="why the price is suspicious; empty = plausible")

    @classmethod
    def of(cls, p: PricePoint) -> PricePointPublic:
        return cls(
            start=p.start,
            end=p.end,
            resolution=p.resolution.value,
            price_eur_per_mwh=p.price_eur_per_mwh,
            source=p.source,
            sequence=p.sequence,
            flag=p.flag,
        )


class PricesPublic(BaseModel):
    zone: str
    start: datetime
    end: datetime
    resolution: str | None = Field(description="None = the finest stored per stretch of time")
    source: str | None
    count: int
    points: list[PricePointPublic]
    note: str = Field(description="how the points were chosen, or why there are none")


class UpsertPublic(BaseModel):
    inserted: int
    revised: int
    unchanged: int


class FeedStatusPublic(BaseModel):
    source: str
    zone: str
    state: str = Field(description="pending, ok, no_data (nothing published yet) or error")
    last_attempt: datetime | None
    last_success: datetime | None
    last_error: str | None
    last_error_at: datetime | None
    consecutive_failures: int
    points_fetched: int
    last_result: UpsertPublic | None
    stored_points: int
    next_run: datetime | None

    @classmethod
    def of(cls, s: FeedStatus) -> FeedStatusPublic:
        result = s.last_result
        return cls(
            source=s.source,
            zone=s.zone,
            state=s.state,
            last_attempt=s.last_attempt,
            last_success=s.last_success,
            last_error=s.last_error,
            last_error_at=s.last_error_at,
            consecutive_failures=s.consecutive_failures,
            points_fetched=s.points_fetched,
            last_result=None if result is None else UpsertPublic(**result._asdict()),
            stored_points=s.stored_points,
            next_run=s.next_run,
        )


class MarketStatusPublic(BaseModel):
    interval_s: float
    zones: list[str]
    sources: list[str]
    source_priority: list[str]
    feeds: list[FeedStatusPublic]
    note: str


class ImportPublic(BaseModel):
    zone: str
    source: str
    points: int
    inserted: int
    revised: int
    unchanged: int
    first_start: datetime
    last_start: datetime
    flagged: int = Field(description="points outside the plausibility bounds (kept, flagged)")
    dropped: list[str] = Field(description="rows left out on purpose (nonexistent local times)")

    @classmethod
    def of(cls, s: ImportSummary) -> ImportPublic:
        return cls(
            zone=s.zone,
            source=s.source,
            points=s.points,
            inserted=s.result.inserted,
            revised=s.result.revised,
            unchanged=s.result.unchanged,
            first_start=s.first,
            last_start=s.last,
            flagged=s.flagged,
            dropped=s.dropped,
        )


class RevisionPublic(BaseModel):
    source: str
    resolution: str
    sequence: str
    revision: int
    price_eur_per_mwh: float
    flag: str
    valid_from: datetime = Field(description="when this value was fetched")
    valid_to: datetime | None = Field(description="when a newer value replaced it; None = current")

    @classmethod
    def of(cls, r: PriceRevision) -> RevisionPublic:
        return cls(
            source=r.source,
            resolution=r.resolution.value,
            sequence=r.sequence,
            revision=r.revision,
            price_eur_per_mwh=r.price_eur_per_mwh,
            flag=r.flag,
            valid_from=r.valid_from,
            valid_to=r.valid_to,
        )


class HistoryPublic(BaseModel):
    zone: str
    start: datetime
    revisions: list[RevisionPublic]
