"""The Forecast API's request and response models (pydantic); domain types in service.py."""

from __future__ import annotations

from datetime import datetime
from typing import Literal

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field

from .service import Job

Quantity = Literal["price", "load", "solar", "wind"]


class ForecastCreate(BaseModel):
    """`POST /api/forecast/dayahead` and `/intraday`."""

    model_config = ConfigDict(extra="forbid")

    zone: str = Field(
        min_length=2, max_length=32, description="zone code (`AT`, `DE_LU`, `BE`, ...) or EIC"
    )
    quantities: list[Quantity] | None = Field(
        default=None, min_length=1, description="default: price, load, solar, wind"
    )
    origin: AwareDatetime | None = Field(
        default=None,
        description="forecast as of this time (floored to the hour; default now): only prices "
        "delivered before it are used",
    )


class JobAccepted(BaseModel):
    job_id: str
    state: str
    status_url: str


class IntervalPublic(BaseModel):
    start: datetime
    p10: float
    p50: float
    p90: float


class QuantityPublic(BaseModel):
    quantity: str
    unit: str
    model: str
    resolution: str
    training_start: datetime | None
    training_end: datetime | None
    notes: list[str]
    intervals: list[IntervalPublic]


class JobPublic(BaseModel):
    job_id: str
    type: str
    zone: str
    quantities: list[str]
    state: str
    origin: datetime
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    error: str | None
    result: list[QuantityPublic] | None


def job_public(job: Job) -> JobPublic:
    return JobPublic(
        job_id=job.job_id,
        type=job.request.kind,
        zone=job.request.zone,
        quantities=list(job.request.quantities),
        state=job.state.value,
        origin=job.origin,
        created_at=job.created_at,
        started_at=job.started_at,
        finished_at=job.finished_at,
        error=job.error,
        result=None
        if job.state != "done"
        else [
            QuantityPublic(
                quantity=f.quantity,
                unit=f.unit,
                model=f.model,
                resolution=f.resolution.value,
                training_start=f.training_start,
                training_end=f.training_end,
                notes=list(f.notes),
                intervals=[
                    IntervalPublic(start=i.start, p10=i.p10, p50=i.p50, p90=i.p90)
                    for i in f.intervals
                ],
            )
            for f in job.result
        ],
    )
