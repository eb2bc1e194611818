"""The optimiser's HTTP routes: plan a site, list and read plans, dispatch one, submit its
proposed orders, and the per-portfolio auto-submission switches.

Only translation here (STYLE item 10). Planning, dispatching and submitting orders steer
batteries and money: trader; reading plans and switches: viewer; turning auto-submission on or
off: admin (automated trading is a risk decision of the desk, not a trader's click).
"""

from __future__ import annotations

from typing import Annotated, cast

from fastapi import APIRouter, Depends, HTTPException, Path, Query, Request, status

from control_plane.auth.deps import AdminDep, TraderDep, require
from control_plane.auth.models import Principal, Role
from control_plane.fleet.models import UnknownSiteError
from control_plane.market.models import MarketDataError

from .model import InvalidProblemError, OptimiserError
from .schemas import (
    AutoSubmitPublic,
    AutoSubmitUpdate,
    OptimiseCreate,
    PlanPublic,
    PlanSummaryPublic,
    plan_public,
    summary_of,
)
from .service import (
    AlreadyDispatchedError,
    AlreadySubmittedError,
    InvalidPortfolioError,
    NoOrdersError,
    NoPricesError,
    OptimiseRequest,
    OptimiserService,
    SiteNotReadyError,
    StoredPlan,
    SubmissionFailedError,
    SubmissionUnavailableError,
    UnknownPlanError,
)
from .store import MAX_PORTFOLIO_LENGTH

router = APIRouter(prefix="/api/optimise", tags=["optimiser"])

VIEWER = [Depends(require(Role.VIEWER))]
TRADER = [Depends(require(Role.TRADER))]


def get_optimiser(request: Request) -> OptimiserService:
    return cast(OptimiserService, request.app.state.optimiser)


OptimiserDep = Annotated[OptimiserService, Depends(get_optimiser)]


def _http(exc: Exception) -> HTTPException:
    if isinstance(exc, UnknownSiteError | UnknownPlanError):
        return HTTPException(status.HTTP_404_NOT_FOUND, str(exc))
    if isinstance(exc, InvalidProblemError | MarketDataError | InvalidPortfolioError):
        return HTTPException(status.HTTP_422_UNPROCESSABLE_CONTENT, str(exc))
    if isinstance(
        exc,
        SiteNotReadyError
        | NoPricesError
        | AlreadyDispatchedError
        | NoOrdersError
        | AlreadySubmittedError
        | SubmissionUnavailableError,
    ):
        return HTTPException(status.HTTP_409_CONFLICT, str(exc))
    if isinstance(exc, SubmissionFailedError):
        # Not retryable as is (the plan is marked submitted): no Retry-After.
        return HTTPException(status.HTTP_503_SERVICE_UNAVAILABLE, str(exc))
    return HTTPException(status.HTTP_500_INTERNAL_SERVER_ERROR, f"optimiser: {exc}")


def _by(principal: Principal) -> str:
    return f"{principal.name} ({principal.via})"


async def _public(optimiser: OptimiserService, stored: StoredPlan) -> PlanPublic:
    portfolio = stored.portfolio
    auto = portfolio is not None and await optimiser.auto_submits(portfolio)
    return plan_public(stored, auto_submit=auto)


@router.post("", status_code=status.HTTP_201_CREATED, dependencies=TRADER)
async def create_plan(body: OptimiseCreate, optimiser: OptimiserDep) -> PlanPublic:
    """Plan the site's battery: charge/discharge per interval, SoC, expected revenue, the
    schedule to dispatch and the orders it implies (proposed, not placed: submit them with
    POST /api/optimise/{plan_id}/orders, or enable auto-submission for the portfolio)."""
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
    return await _public(optimiser, stored)


@router.get("", dependencies=VIEWER)
async def list_plans(
    optimiser: OptimiserDep,
    site: Annotated[str | None, Query(max_length=63, description="only this site's")] = None,
) -> list[PlanSummaryPublic]:
    """Plans kept in memory (newest first; the newest 50 per site)."""
    auto = {s.portfolio for s in await optimiser.auto_submit() if s.enabled}
    return [summary_of(p, auto_submit=p.portfolio in auto) for p in optimiser.plans(site_id=site)]


# Declared before /{plan_id}, which would otherwise take "auto-submit" for a plan id.
@router.get("/auto-submit", dependencies=VIEWER)
async def list_auto_submit(optimiser: OptimiserDep) -> list[AutoSubmitPublic]:
    """The per-portfolio auto-submission switches ever set (on or off, who and when), by
    portfolio; a portfolio not listed does not auto-submit."""
    return [AutoSubmitPublic.of(s) for s in await optimiser.auto_submit()]


@router.put("/auto-submit/{portfolio}")
async def put_auto_submit(
    portfolio: Annotated[str, Path(min_length=1, max_length=MAX_PORTFOLIO_LENGTH)],
    body: AutoSubmitUpdate,
    optimiser: OptimiserDep,
    principal: AdminDep,
) -> AutoSubmitPublic:
    """Turn auto-submission of the portfolio on or off: when on, dispatching a plan of the
    portfolio also places its proposed orders on the exchange, without a trader's review.

    Role: admin. Automated trading is a risk decision (it commits the desk's money with no
    human in the loop), so it is not a trader's switch; the change is recorded with the
    admin key's name.
    """
    try:
        switch = await optimiser.set_auto_submit(portfolio, enabled=body.enabled, by=_by(principal))
    except OptimiserError as exc:
        raise _http(exc) from None
    return AutoSubmitPublic.of(switch)


@router.get("/{plan_id}", dependencies=VIEWER)
async def get_plan(plan_id: str, optimiser: OptimiserDep) -> PlanPublic:
    try:
        stored = optimiser.get(plan_id)
    except UnknownPlanError as exc:
        raise _http(exc) from None
    return await _public(optimiser, stored)


@router.post("/{plan_id}/dispatch", dependencies=TRADER)
async def dispatch_plan(plan_id: str, optimiser: OptimiserDep) -> PlanPublic:
    """Push the plan's schedule to its site (stored by the fleet, sent when it is connected).
    If the plan's portfolio auto-submits, its proposed orders are placed too (see
    `orders_submitted`; a failure there is shown in its `error`, the dispatch stands)."""
    try:
        return await _public(optimiser, await optimiser.dispatch(plan_id))
    except (OptimiserError, UnknownSiteError) as exc:
        raise _http(exc) from None


@router.post("/{plan_id}/orders")
async def submit_orders(plan_id: str, optimiser: OptimiserDep, principal: TraderDep) -> PlanPublic:
    """Place the plan's proposed orders on the exchange, once, in order; the plan with what
    became of each (`orders_submitted.results`: order id, state, fill, reject reason).

    A pre-trade rejection is a result (state REJECTED), as is an order that is no longer
    valid, e.g. past the gate closure (NOT_PLACED). 404 unknown plan; 409 the plan proposes
    no orders (it needs `market` and `portfolio`) or they were submitted already (when, by
    whom); 503 the exchange's store failed midway: the detail lists the orders placed before,
    the rest is not placed and the plan stays marked submitted (check GET /api/orders).
    Role: trader; the submitter recorded is the key's name.
    """
    try:
        stored = await optimiser.submit_orders(plan_id, submitted_by=_by(principal))
    except OptimiserError as exc:
        raise _http(exc) from None
    return await _public(optimiser, stored)
