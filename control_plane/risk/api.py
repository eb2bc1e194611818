"""The risk service's HTTP routes. Only translation here (STYLE item 10).

Reading positions, limits and the report: viewer; computing VaR (a POST, up to a million Monte Carlo
paths of CPU): trader; setting and deleting limits: admin.
"""

from __future__ import annotations

import asyncio
from typing import Annotated, Literal, cast

from fastapi import APIRouter, Depends, HTTPException, Path, Query, Request, status

from control_plane.auth.deps import AdminDep, TraderDep, ViewerDep

from .models import InvalidRiskRequestError, NoHistoryError, UnknownLimitError
from .report import DEFAULT_PATHS, build_report
from .schemas import (
    LimitPublic,
    LimitsPublic,
    LimitUpdate,
    PositionsPublic,
    RiskReportPublic,
    VarCreate,
    VarPublic,
    limit_public,
    positions_public,
    report_public,
    var_public,
)
from .service import RiskService

router = APIRouter(prefix="/api/risk", tags=["risk"])

PortfolioPath = Annotated[str, Path(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_.:-]+$")]


def get_risk(request: Request) -> RiskService:
    return cast(RiskService, request.app.state.risk)


RiskDep = Annotated[RiskService, Depends(get_risk)]


@router.post("/var", response_model=VarPublic)
async def value_at_risk(body: VarCreate, risk: RiskDep, _: TraderDep) -> VarPublic:
    """VaR and expected shortfall of a portfolio's open positions (historical or Monte Carlo);
    the inputs are echoed in the result."""
    try:
        result = await asyncio.to_thread(risk.var, body.to_request())
    except InvalidRiskRequestError as exc:
        raise HTTPException(status.HTTP_422_UNPROCESSABLE_ENTITY, str(exc)) from None
    except NoHistoryError as exc:
        raise HTTPException(status.HTTP_409_CONFLICT, str(exc)) from None
    return var_public(result)


@router.get("/positions/{portfolio}", response_model=PositionsPublic)
async def positions(portfolio: PortfolioPath, risk: RiskDep, _: ViewerDep) -> PositionsPublic:
    """Open positions per delivery quarter (trades + scheduled dispatch), marked."""
    return positions_public(await asyncio.to_thread(risk.positions, portfolio))


@router.get("/limits", response_model=LimitsPublic)
async def limits(risk: RiskDep, _: ViewerDep) -> LimitsPublic:
    """Every limit with its utilisation now (evaluating raises any due alerts)."""
    statuses = await asyncio.to_thread(risk.evaluate)
    stored = await asyncio.to_thread(risk.limits_store.list)
    s = risk.settings
    return LimitsPublic(
        limit_level=s.limit_level,
        limit_horizon_days=s.limit_horizon_days,
        alert_thresholds_pct=list(s.alert_thresholds_pct),
        limits=[limit_public(limit, statuses) for limit in stored],
    )


@router.put("/limits/{portfolio}", response_model=LimitPublic)
async def put_limit(
    portfolio: PortfolioPath, body: LimitUpdate, risk: RiskDep, principal: AdminDep
) -> LimitPublic:
    """Create or replace a portfolio's VaR and/or PnL limit (admin)."""
    try:
        limit = await asyncio.to_thread(
            lambda: risk.set_limit(
                portfolio,
                var_limit_eur=body.var_limit_eur,
                pnl_limit_eur=body.pnl_limit_eur,
                hard=body.hard,
                by=principal.name,
            )
        )
    except InvalidRiskRequestError as exc:
        raise HTTPException(status.HTTP_422_UNPROCESSABLE_ENTITY, str(exc)) from None
    return limit_public(limit, [])


@router.delete("/limits/{portfolio}", status_code=status.HTTP_204_NO_CONTENT)
async def delete_limit(portfolio: PortfolioPath, risk: RiskDep, _: AdminDep) -> None:
    """Remove a portfolio's limit (admin)."""
    try:
        await asyncio.to_thread(risk.delete_limit, portfolio)
    except UnknownLimitError as exc:
        raise HTTPException(status.HTTP_404_NOT_FOUND, str(exc)) from None


@router.get("/report/{portfolio}", response_model=RiskReportPublic)
async def report(
    portfolio: PortfolioPath,
    risk: RiskDep,
    _: ViewerDep,
    report_format: Annotated[
        Literal["json"], Query(alias="format", description="json (the only format; no PDF)")
    ] = "json",
    window_days: Annotated[
        int | None, Query(ge=20, le=1000, description="default: risk_window_days")
    ] = None,
    paths: Annotated[int, Query(ge=1_000, le=200_000, description="Monte Carlo paths")] = (
        DEFAULT_PATHS
    ),
    seed: Annotated[int, Query(ge=0, description="Monte Carlo seed")] = 0,
) -> RiskReportPublic:
    """The desk's risk report of a portfolio: positions, VaR/ES (historical and Monte Carlo),
    limits with utilisation and alert state, and the Kupiec back-test over the stored prices."""
    try:
        built = await asyncio.to_thread(
            lambda: build_report(
                service=risk, portfolio=portfolio, window_days=window_days, paths=paths, seed=seed
            )
        )
    except InvalidRiskRequestError as exc:
        raise HTTPException(status.HTTP_422_UNPROCESSABLE_ENTITY, str(exc)) from None
    return report_public(built, risk.settings)
