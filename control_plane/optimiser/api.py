"""The optimiser's HTTP routes: plan a site, list and read plans, dispatch one.

Only translation here (STYLE item 10). Planning and dispatching steer batteries and money:
trader; reading plans: viewer.
"""

from __future__ import annotations

from typing import Annotated, cast

from fastapi import APIRouter, Depends, HTTPException, Query, Request, status

from control_plane.auth.deps import require
from control_plane.auth.models import Role
from control_plane.fleet.models import UnknownSiteError
from control_plane.market.models import MarketDataError

from .model import InvalidProblemError, OptimiserError
from .schemas import OptimiseCreate, PlanPublic, PlanSummaryPublic, plan_public, summary_of
from .service import (
    AlreadyDispatchedError,
    NoPricesError,
    OptimiseRequest,
    OptimiserService,
    SiteNotReadyError,
    UnknownPlanError,
)

router = APIRouter(prefix="/api/optimise", tags=["optimiser"])

VIEWER = [Depends(require(Role.VIEWER))]
TRADER = [Depends(require(Role.TRADER))]


def get_optimiser(request: Request) -> OptimiserService:
    return cast(OptimiserService, request.app.state.optimiser)


OptimiserDep = Annotated[OptimiserService, Depends(get_optimiser)]


def _http(exc: Exception) -> HTTPException:
    if isinstance(exc, UnknownSiteError | UnknownPlanError):
        return HTTPException(status.HTTP_404_NOT_FOUND, str(exc))
    if isinstance(exc, InvalidProblemError | MarketDataError):
        return HTTPException(status.HTTP_422_UNPROCESSABLE_CONTENT, str(exc))
    if isinstance(exc, SiteNotReadyError | NoPricesError | AlreadyDispatchedError):
        return HTTPException(status.HTTP_409_CONFLICT, str(exc))
    return HTTPException(status.HTTP_500_INTERNAL_SERVER_ERROR, f"optimiser: {exc}")


@router.post("", status_code=status.HTTP_201_CREATED, dependencies=TRADER)
async def create_plan(body: OptimiseCreate, optimiser: OptimiserDep) -> PlanPublic:
    """Plan the site's battery: charge/discharge per interval, SoC, expected revenue, the
    schedule to dispatch and the orders it implies (proposed, not placed)."""
    request = OptimiseRequest(
        site_id=body.site_id,
        zone=body.zone,
        horizon_hours=body.horizon_hours,
        price_source=body.price_source,
        start=body.start,
        end_soc_pct=body.end_soc_pct,
        battery=body.battery,
        market=body.market,
        portfolio=body.portfolio,
    )
    try:
        stored = await optimiser.optimise(request)
    except (OptimiserError, UnknownSiteError, MarketDataError) as exc:
        raise _http(exc) from None
    return plan_public(stored)


@router.get("", dependencies=VIEWER)
async def list_plans(
    optimiser: OptimiserDep,
    site: Annotated[str | None, Query(max_length=63, description="only this site's")] = None,
) -> list[PlanSummaryPublic]:
    """Plans kept in memory (newest first; the newest 50 per site)."""
    return [summary_of(p) for p in optimiser.plans(site_id=site)]


@router.get("/{plan_id}", dependencies=VIEWER)
async def get_plan(plan_id: str, optimiser: OptimiserDep) -> PlanPublic:
    try:
        return plan_public(optimiser.get(plan_id))
    except UnknownPlanError as exc:
        raise _http(exc) from None


@router.post("/{plan_id}/dispatch", dependencies=TRADER)
async def dispatch_plan(plan_id: str, optimiser: OptimiserDep) -> PlanPublic:
    """Push the plan's schedule to its site (stored by the fleet, sent when it is connected)."""
    try:
        return plan_public(await optimiser.dispatch(plan_id))
    except (OptimiserError, UnknownSiteError) as exc:
        raise _http(exc) from None
