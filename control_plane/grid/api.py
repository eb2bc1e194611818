"""The grid's HTTP routes: the grid state and the constraints.

Only translation here (STYLE item 10). Reads need viewer; creating, changing and deleting
constraints admin (they stop sites from trading and being scheduled).
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, cast

from fastapi import APIRouter, Depends, HTTPException, Query, Request, status

from control_plane.auth.deps import require
from control_plane.auth.models import Role

from .models import ConstraintKind, InvalidConstraintError, UnknownConstraintError
from .schemas import ConstraintIn, ConstraintPublic, GridStatePublic
from .service import GridService

router = APIRouter(prefix="/api/grid", tags=["grid"])

VIEWER = [Depends(require(Role.VIEWER))]
ADMIN = [Depends(require(Role.ADMIN))]


def get_grid(request: Request) -> GridService:
    return cast(GridService, request.app.state.grid)


GridDep = Annotated[GridService, Depends(get_grid)]


def _http(exc: Exception) -> HTTPException:
    if isinstance(exc, UnknownConstraintError):
        return HTTPException(status.HTTP_404_NOT_FOUND, str(exc))
    if isinstance(exc, InvalidConstraintError):
        return HTTPException(status.HTTP_422_UNPROCESSABLE_CONTENT, str(exc))
    raise exc


def _aware(name: str, at: datetime | None) -> None:
    if at is not None and at.tzinfo is None:
        raise HTTPException(
            status.HTTP_422_UNPROCESSABLE_CONTENT,
            f"{name} needs a UTC offset (e.g. 2025-11-03T08:00:00Z)",
        )


@router.get("/state", dependencies=VIEWER)
async def grid_state(grid: GridDep) -> GridStatePublic:
    """Frequency per area (with alert level and recent excursions), load, tie-line flows,
    congestion index and the constraints active now."""
    return GridStatePublic.of(await grid.state())


@router.get("/constraints", dependencies=VIEWER)
async def list_constraints(
    grid: GridDep,
    active_at: Annotated[
        datetime | None, Query(description="only those in force at this time")
    ] = None,
    start: Annotated[datetime | None, Query(description="window start (inclusive)")] = None,
    end: Annotated[datetime | None, Query(description="window end (exclusive)")] = None,
    site_id: Annotated[
        str | None, Query(max_length=64, description="this site's and its area's")
    ] = None,
    area: Annotated[str | None, Query(max_length=64)] = None,
    kind: ConstraintKind | None = None,
) -> list[ConstraintPublic]:
    """Constraints whose validity window meets the given window (all without one)."""
    for name, at in (("active_at", active_at), ("start", start), ("end", end)):
        _aware(name, at)
    if active_at is not None and (start is not None or end is not None):
        raise HTTPException(
            status.HTTP_422_UNPROCESSABLE_CONTENT, "give active_at or start/end, not both"
        )
    if start is not None and end is not None and not start < end:
        raise HTTPException(status.HTTP_422_UNPROCESSABLE_CONTENT, "start must be before end")
    found = await grid.constraints(
        active_at=active_at, start=start, end=end, site_id=site_id, area=area, kind=kind
    )
    return [ConstraintPublic.of(c) for c in found]


@router.get("/constraints/{constraint_id}", dependencies=VIEWER)
async def get_constraint(constraint_id: int, grid: GridDep) -> ConstraintPublic:
    try:
        return ConstraintPublic.of(await grid.get_constraint(constraint_id))
    except UnknownConstraintError as exc:
        raise _http(exc) from None


@router.post("/constraints", status_code=status.HTTP_201_CREATED, dependencies=ADMIN)
async def create_constraint(body: ConstraintIn, grid: GridDep) -> ConstraintPublic:
    """A redispatch, maintenance or capacity-limit constraint on a site or an area."""
    try:
        return ConstraintPublic.of(await grid.add_constraint(body.to_domain()))
    except InvalidConstraintError as exc:
        raise _http(exc) from None


@router.put("/constraints/{constraint_id}", dependencies=ADMIN)
async def replace_constraint(
    constraint_id: int, body: ConstraintIn, grid: GridDep
) -> ConstraintPublic:
    """Replace a constraint's content (e.g. end it early by setting valid_to)."""
    try:
        return ConstraintPublic.of(await grid.replace_constraint(constraint_id, body.to_domain()))
    except (InvalidConstraintError, UnknownConstraintError) as exc:
        raise _http(exc) from None


@router.delete("/constraints/{constraint_id}", dependencies=ADMIN)
async def delete_constraint(constraint_id: int, grid: GridDep) -> ConstraintPublic:
    """Delete a constraint (entered by mistake); to end one, set its valid_to instead."""
    try:
        return ConstraintPublic.of(await grid.delete_constraint(constraint_id))
    except UnknownConstraintError as exc:
        raise _http(exc) from None
