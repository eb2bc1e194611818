"""The Forecast API's routes (spec paths): start a day-ahead or intraday job, read its status.

Only translation here: the body becomes a `ForecastRequest`, service errors become HTTP
answers (422 a request that cannot run, 429 too many jobs queued, 404 an unknown or expired
job). Roles: starting a job is `trader` - it costs CPU, and the access audit wants a role above
viewer for every call that changes state (a job is state); reading a job is `viewer`, so a
dashboard with a read-only key can poll results.
"""

from __future__ import annotations

from typing import Annotated, cast

from fastapi import APIRouter, Depends, HTTPException, Request, status

from control_plane.auth.deps import require
from control_plane.auth.models import Role

from .schemas import ForecastCreate, JobAccepted, JobPublic, job_public
from .service import (
    ForecastRequest,
    ForecastRequestError,
    ForecastService,
    TooManyJobsError,
    UnknownJobError,
    quantities_or_all,
)

router = APIRouter(tags=["forecast"])


def get_forecast(request: Request) -> ForecastService:
    return cast(ForecastService, request.app.state.forecast)


ForecastDep = Annotated[ForecastService, Depends(get_forecast)]


async def _start(service: ForecastService, kind: str, body: ForecastCreate) -> JobAccepted:
    try:
        job = await service.start(
            ForecastRequest(
                kind=kind,
                zone=body.zone,
                quantities=quantities_or_all(body.quantities),
                origin=body.origin,
            )
        )
    except ForecastRequestError as exc:
        raise HTTPException(status.HTTP_422_UNPROCESSABLE_CONTENT, str(exc)) from None
    except TooManyJobsError as exc:
        raise HTTPException(
            status.HTTP_429_TOO_MANY_REQUESTS, str(exc), headers={"Retry-After": "10"}
        ) from None
    return JobAccepted(
        job_id=job.job_id, state=job.state.value, status_url=f"/api/forecast/status/{job.job_id}"
    )


@router.post(
    "/api/forecast/dayahead",
    status_code=status.HTTP_202_ACCEPTED,
    dependencies=[Depends(require(Role.TRADER))],
)
async def dayahead(body: ForecastCreate, service: ForecastDep) -> JobAccepted:
    """Start a forecast of the next local delivery day (96 quarter-hours) after the origin."""
    return await _start(service, "dayahead", body)


@router.post(
    "/api/forecast/intraday",
    status_code=status.HTTP_202_ACCEPTED,
    dependencies=[Depends(require(Role.TRADER))],
)
async def intraday(body: ForecastCreate, service: ForecastDep) -> JobAccepted:
    """Start a forecast of the 12 hours (48 quarter-hours) from the origin."""
    return await _start(service, "intraday", body)


@router.get("/api/forecast/status/{job_id}", dependencies=[Depends(require(Role.VIEWER))])
async def job_status(job_id: str, service: ForecastDep) -> JobPublic:
    """State (queued, running, done, failed) and, when done, the forecasts; error when failed."""
    try:
        return job_public(service.status(job_id))
    except UnknownJobError as exc:
        raise HTTPException(status.HTTP_404_NOT_FOUND, str(exc)) from None
