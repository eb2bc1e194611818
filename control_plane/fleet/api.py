"""The fleet's HTTP routes: site status, history, schedules, commands and external telemetry.

Only translation here (STYLE item 10): domain errors become HTTP errors, domain values become
the response models of `schemas.py`.

Roles: reads need viewer, schedules (they steer batteries) trader, external telemetry the
narrow `telemetry` role (a data logger's key; technician and admin keys may post it too).
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated

from fastapi import APIRouter, Depends, HTTPException, Query, status

from control_plane.auth.deps import TechnicianDep, require
from control_plane.auth.models import Role
from control_plane.deps import FleetDep

from .models import ScheduleRefusedError, UnknownSiteError, utc_now
from .schemas import (
    CommandCreate,
    CommandPublic,
    EventPublic,
    FleetStatusPublic,
    FleetTotalsPublic,
    ScheduleCreate,
    SchedulePublic,
    SitePublic,
    SiteStatusPublic,
    TelemetryIn,
    TelemetrySamplePublic,
    TelemetryStored,
)
from .service import FleetService

router = APIRouter(tags=["fleet"])

Start = Annotated[datetime | None, Query(description="from this time (inclusive, ISO 8601)")]
End = Annotated[datetime | None, Query(description="until this time (exclusive, ISO 8601)")]
Limit = Annotated[int, Query(ge=1, le=10_000)]

VIEWER = [Depends(require(Role.VIEWER))]
TRADER = [Depends(require(Role.TRADER))]
TELEMETRY = [Depends(require(Role.TELEMETRY))]


def _not_found(exc: UnknownSiteError) -> HTTPException:
    return HTTPException(status.HTTP_404_NOT_FOUND, str(exc))


def _range(start: datetime | None, end: datetime | None) -> None:
    for name, moment in (("start", start), ("end", end)):
        if moment is not None and moment.tzinfo is None:
            raise HTTPException(
                status.HTTP_422_UNPROCESSABLE_CONTENT,
                f"{name} needs a UTC offset (e.g. 2025-01-01T00:00:00Z)",
            )
    if start is not None and end is not None and not start < end:
        raise HTTPException(status.HTTP_422_UNPROCESSABLE_CONTENT, "start must be before end")


async def _fleet_status(fleet: FleetService) -> FleetStatusPublic:
    statuses, totals = await fleet.fleet_status()
    return FleetStatusPublic(
        generated_at=utc_now(),
        totals=FleetTotalsPublic.of(totals),
        sites=[SiteStatusPublic.of(s) for s in statuses],
    )


@router.get("/api/bess/status", response_model=FleetStatusPublic, dependencies=VIEWER)
async def bess_status(fleet: FleetDep) -> FleetStatusPublic:
    """Latest status of every site (SoC, power, temperature, online/offline) and fleet totals."""
    return await _fleet_status(fleet)


@router.get("/api/bess-status", response_model=FleetStatusPublic, dependencies=VIEWER)
async def bess_status_spec(fleet: FleetDep) -> FleetStatusPublic:
    """The spec's name for `/api/bess/status`; same answer."""
    return await _fleet_status(fleet)


@router.get("/api/sites", response_model=list[SitePublic], dependencies=VIEWER)
async def list_sites(fleet: FleetDep) -> list[SitePublic]:
    return [SitePublic.of(s) for s in await fleet.sites()]


@router.get("/api/sites/{site_id}", response_model=SitePublic, dependencies=VIEWER)
async def get_site(site_id: str, fleet: FleetDep) -> SitePublic:
    try:
        return SitePublic.of(await fleet.site(site_id))
    except UnknownSiteError as exc:
        raise _not_found(exc) from None


@router.get(
    "/api/sites/{site_id}/telemetry",
    response_model=list[TelemetrySamplePublic],
    dependencies=VIEWER,
)
async def site_telemetry(
    site_id: str, fleet: FleetDep, start: Start = None, end: End = None, limit: Limit = 1000
) -> list[TelemetrySamplePublic]:
    """Readings with start <= timestamp < end, oldest first, at most `limit`."""
    _range(start, end)
    try:
        samples = await fleet.telemetry(site_id=site_id, start=start, end=end, limit=limit)
    except UnknownSiteError as exc:
        raise _not_found(exc) from None
    return [TelemetrySamplePublic.of(s) for s in samples]


@router.get("/api/sites/{site_id}/events", response_model=list[EventPublic], dependencies=VIEWER)
async def site_events(
    site_id: str, fleet: FleetDep, start: Start = None, end: End = None, limit: Limit = 1000
) -> list[EventPublic]:
    """Alarms and events the site's agent reported, oldest first."""
    _range(start, end)
    try:
        found = await fleet.events(site_id=site_id, start=start, end=end, limit=limit)
    except UnknownSiteError as exc:
        raise _not_found(exc) from None
    return [EventPublic.of(e) for e in found]


@router.post(
    "/api/sites/{site_id}/schedules",
    response_model=SchedulePublic,
    status_code=status.HTTP_201_CREATED,
    dependencies=TRADER,
)
async def post_schedule(site_id: str, body: ScheduleCreate, fleet: FleetDep) -> SchedulePublic:
    """Store the site's next schedule version and push it to the agent (now or on reconnect).

    409 when an interval's power exceeds an active grid constraint on the site (the reason
    names the constraint, the interval and the excess); nothing is stored then."""
    try:
        record = await fleet.submit_schedule(site_id=site_id, new=body.to_domain())
    except UnknownSiteError as exc:
        raise _not_found(exc) from None
    except ScheduleRefusedError as exc:  # a grid constraint: nothing was stored
        raise HTTPException(status.HTTP_409_CONFLICT, str(exc)) from None
    return SchedulePublic.of(record, now=utc_now())


@router.get(
    "/api/sites/{site_id}/schedules", response_model=list[SchedulePublic], dependencies=VIEWER
)
async def list_schedules(site_id: str, fleet: FleetDep) -> list[SchedulePublic]:
    """The site's schedules, newest first, with their delivery status."""
    try:
        records = await fleet.schedules(site_id=site_id)
    except UnknownSiteError as exc:
        raise _not_found(exc) from None
    now = utc_now()
    return [SchedulePublic.of(r, now=now) for r in records]


@router.post(
    "/api/sites/{site_id}/commands",
    response_model=CommandPublic,
    status_code=status.HTTP_202_ACCEPTED,
)
async def post_command(
    site_id: str, body: CommandCreate, fleet: FleetDep, principal: TechnicianDep
) -> CommandPublic:
    """Send set_limits, stop or resume to the site's agent (now, or when it connects).

    202: stored and on its way; follow `status` with GET .../commands (acknowledged or
    rejected once the agent answers, expired if it does not answer in time).
    The issuer recorded (and sent to the agent for its audit log) is the API key's name.
    Role: technician.
    """
    now = utc_now()
    issued_by = f"{principal.name} ({principal.via})"
    try:
        record = await fleet.submit_command(
            site_id=site_id, new=body.to_domain(now=now, issued_by=issued_by)
        )
    except UnknownSiteError as exc:
        raise _not_found(exc) from None
    return CommandPublic.of(record, now=utc_now())


@router.get(
    "/api/sites/{site_id}/commands", response_model=list[CommandPublic], dependencies=VIEWER
)
async def list_commands(site_id: str, fleet: FleetDep, limit: Limit = 100) -> list[CommandPublic]:
    """The site's commands, newest first, with their delivery status."""
    try:
        records = await fleet.commands(site_id=site_id, limit=limit)
    except UnknownSiteError as exc:
        raise _not_found(exc) from None
    now = utc_now()
    return [CommandPublic.of(r, now=now) for r in records]


async def _ingest(body: TelemetryIn, fleet: FleetService) -> TelemetryStored:
    result = await fleet.ingest_external(site_id=body.site_id, samples=[body.to_domain()])
    return TelemetryStored(site_id=body.site_id, stored=result.stored, duplicates=result.duplicates)


@router.post("/api/bess/telemetry", response_model=TelemetryStored, dependencies=TELEMETRY)
async def post_bess_telemetry(body: TelemetryIn, fleet: FleetDep) -> TelemetryStored:
    """External telemetry (spec); a repeated (site_id, seq) is stored once."""
    return await _ingest(body, fleet)


@router.post("/api/telemetry", response_model=TelemetryStored, dependencies=TELEMETRY)
async def post_telemetry(body: TelemetryIn, fleet: FleetDep) -> TelemetryStored:
    """BESS telemetry (spec); same as `/api/bess/telemetry`."""
    return await _ingest(body, fleet)
