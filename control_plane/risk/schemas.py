"""The risk API's wire models (pydantic); amounts as decimal strings in EUR."""

from __future__ import annotations

from datetime import date, datetime
from decimal import Decimal
from typing import Annotated

from pydantic import BaseModel, Field

from .models import (
    LimitStatus,
    Method,
    PortfolioPositions,
    RiskLimit,
    VarRequest,
    VarResult,
)
from .report import (
    SIGNIFICANCE,
    AlertState,
    BacktestSection,
    ProfileKind,
    RiskReport,
    VarSection,
    verdict,
)
from .service import RiskSettings
from .var import LEVELS, Kupiec

Portfolio = Annotated[str, Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_.:-]+$")]


class VarCreate(BaseModel):
    portfolio: Portfolio
    method: Method = Method.HISTORICAL
    horizon_days: int = Field(default=1, ge=1, le=30)
    window_days: int = Field(default=250, ge=20, le=1000)
    paths: int = Field(default=10_000, ge=1_000, le=1_000_000, description="Monte Carlo only")
    seed: int = Field(default=0, ge=0, description="Monte Carlo seed: same seed, same figures")
    levels: list[float] = Field(default=[0.95, 0.99, 0.995], min_length=1, max_length=10)

    def to_request(self) -> VarRequest:
        return VarRequest(
            portfolio=self.portfolio,
            method=self.method,
            horizon_days=self.horizon_days,
            window_days=self.window_days,
            paths=self.paths,
            seed=self.seed,
            levels=tuple(self.levels),
        )


class FigurePublic(BaseModel):
    level: float
    var_eur: Decimal
    es_eur: Decimal


class KupiecPublic(BaseModel):
    level: float
    observations: int
    exceptions: int
    expected_exceptions: float
    lr_statistic: float
    p_value: float
    accepted_at_5pct: bool


def kupiec_public(k: Kupiec) -> KupiecPublic:
    return KupiecPublic(
        level=k.level,
        observations=k.observations,
        exceptions=k.exceptions,
        expected_exceptions=k.expected_exceptions,
        lr_statistic=k.lr_statistic,
        p_value=k.p_value,
        accepted_at_5pct=k.accepted(),
    )


class VarPublic(BaseModel):
    inputs: VarCreate
    """The request as served, defaults filled in."""
    as_of: datetime
    zones: list[str]
    positions: int
    net_mwh: Decimal
    scenarios: int
    history_from: datetime | None
    history_to: datetime | None
    figures: list[FigurePublic]
    seconds: float


def var_public(result: VarResult) -> VarPublic:
    r = result.request
    return VarPublic(
        inputs=VarCreate(
            portfolio=r.portfolio,
            method=r.method,
            horizon_days=r.horizon_days,
            window_days=r.window_days,
            paths=r.paths,
            seed=r.seed,
            levels=list(r.levels),
        ),
        as_of=result.as_of,
        zones=list(result.zones),
        positions=result.positions,
        net_mwh=result.net_mwh,
        scenarios=result.scenarios,
        history_from=result.history_from,
        history_to=result.history_to,
        figures=[
            FigurePublic(level=f.level, var_eur=f.var_eur, es_eur=f.es_eur) for f in result.figures
        ],
        seconds=round(result.seconds, 4),
    )


class PositionPublic(BaseModel):
    market: str
    zone: str | None
    delivery: str
    traded_mwh: Decimal
    scheduled_mwh: Decimal
    net_mwh: Decimal
    net_cash_eur: Decimal
    mark_eur_per_mwh: Decimal | None
    mark_source: str
    mtm_pnl_eur: Decimal | None


class PositionsPublic(BaseModel):
    portfolio: str
    as_of: datetime
    net_mwh: Decimal
    mtm_pnl_eur: Decimal
    unmarked: int
    lines: list[PositionPublic]


def positions_public(p: PortfolioPositions) -> PositionsPublic:
    return PositionsPublic(
        portfolio=p.portfolio,
        as_of=p.as_of,
        net_mwh=p.net_mwh,
        mtm_pnl_eur=p.mtm_pnl_eur,
        unmarked=p.unmarked,
        lines=[
            PositionPublic(
                market=line.market,
                zone=line.zone,
                delivery=line.delivery.product_id,
                traded_mwh=line.traded_mwh,
                scheduled_mwh=line.scheduled_mwh,
                net_mwh=line.net_mwh,
                net_cash_eur=line.net_cash_eur,
                mark_eur_per_mwh=line.mark_eur_per_mwh,
                mark_source=line.mark_source,
                mtm_pnl_eur=line.mtm_pnl_eur,
            )
            for line in p.lines
        ],
    )


class LimitUpdate(BaseModel):
    var_limit_eur: Decimal | None = Field(default=None, gt=0, max_digits=15, decimal_places=2)
    pnl_limit_eur: Decimal | None = Field(default=None, gt=0, max_digits=15, decimal_places=2)
    hard: bool = Field(default=True, description="the exchange rejects orders that breach it")


class UtilisationPublic(BaseModel):
    limit: str
    limit_eur: Decimal
    value_eur: Decimal
    utilisation_pct: Decimal
    breached: bool


class LimitPublic(BaseModel):
    portfolio: str
    var_limit_eur: Decimal | None
    pnl_limit_eur: Decimal | None
    hard: bool
    updated_at: datetime
    updated_by: str
    utilisation: list[UtilisationPublic] = []


def limit_public(limit: RiskLimit, statuses: list[LimitStatus]) -> LimitPublic:
    return LimitPublic(
        portfolio=limit.portfolio,
        var_limit_eur=limit.var_limit_eur,
        pnl_limit_eur=limit.pnl_limit_eur,
        hard=limit.hard,
        updated_at=limit.updated_at,
        updated_by=limit.updated_by,
        utilisation=[
            UtilisationPublic(
                limit=s.kind.value,
                limit_eur=s.limit_eur,
                value_eur=s.value_eur,
                utilisation_pct=s.utilisation_pct,
                breached=s.breached,
            )
            for s in statuses
            if s.portfolio == limit.portfolio
        ],
    )


class LimitsPublic(BaseModel):
    limit_level: float
    limit_horizon_days: int
    alert_thresholds_pct: list[float]
    limits: list[LimitPublic]


# -- the risk report (risk/report.py) -------------------------------------------------------


class ReportInputs(BaseModel):
    window_days: int
    horizon_days: int
    levels: list[float]
    monte_carlo_paths: int
    monte_carlo_seed: int
    limit_level: float
    limit_horizon_days: int
    alert_thresholds_pct: list[float]
    backtest_days: int
    """How far back the back-test reads the price store."""
    significance: float


class PositionSummaryPublic(BaseModel):
    as_of: datetime
    quarters: int
    zones: list[str]
    long_mwh: Decimal
    short_mwh: Decimal
    net_mwh: Decimal
    net_cash_eur: Decimal
    mtm_pnl_eur: Decimal
    unmarked: int
    first_delivery: datetime | None
    last_delivery: datetime | None


class VarSectionPublic(BaseModel):
    method: Method
    available: bool
    unavailable_reason: str | None
    zones: list[str]
    scenarios: int
    history_from: datetime | None
    history_to: datetime | None
    figures: list[FigurePublic]
    seconds: float


class LimitLinePublic(UtilisationPublic):
    hard: bool
    alert_state: AlertState
    alert_threshold_pct: float
    """The highest alert threshold reached and alerted, 0 = none."""


class ReportLimitsPublic(BaseModel):
    configured: bool
    var_limit_eur: Decimal | None
    pnl_limit_eur: Decimal | None
    hard: bool | None
    lines: list[LimitLinePublic]
    unavailable_reason: str | None
    """Why the VaR limit could not be evaluated (too little history)."""


class BacktestLevelPublic(KupiecPublic):
    exception_rate: float
    verdict: str


class BacktestPublic(BaseModel):
    zone: str
    available: bool
    shortfall: str | None
    profile: ProfileKind
    profile_note: str
    profile_mwh: list[float]
    window_days: int
    history_days: int
    history_from: date | None
    history_to: date | None
    changes: int
    needed_changes: int
    first_test_day: date | None
    last_test_day: date | None
    test_days: int
    significance: float
    levels: list[BacktestLevelPublic]


class RiskReportPublic(BaseModel):
    portfolio: str
    generated_at: datetime
    inputs: ReportInputs
    positions: PositionSummaryPublic
    var: list[VarSectionPublic]
    limits: ReportLimitsPublic
    backtest_zones_from: str
    backtest: list[BacktestPublic]
    method_notes: list[str]


def backtest_public(section: BacktestSection) -> BacktestPublic:
    return BacktestPublic(
        zone=section.zone,
        available=section.shortfall is None,
        shortfall=section.shortfall,
        profile=section.profile,
        profile_note=section.profile_note,
        profile_mwh=list(section.profile_mwh),
        window_days=section.window_days,
        history_days=section.history_days,
        history_from=section.history_from,
        history_to=section.history_to,
        changes=section.changes,
        needed_changes=section.needed_changes,
        first_test_day=section.first_test_day,
        last_test_day=section.last_test_day,
        test_days=section.test_days,
        significance=section.significance,
        levels=[
            BacktestLevelPublic(
                **kupiec_public(k).model_dump(),
                exception_rate=k.exception_rate,
                verdict=verdict(k, section.significance),
            )
            for k in section.results
        ],
    )


def _var_section_public(section: VarSection) -> VarSectionPublic:
    r = section.result
    return VarSectionPublic(
        method=section.method,
        available=r is not None,
        unavailable_reason=section.unavailable,
        zones=list(r.zones) if r else [],
        scenarios=r.scenarios if r else 0,
        history_from=r.history_from if r else None,
        history_to=r.history_to if r else None,
        figures=[FigurePublic(level=f.level, var_eur=f.var_eur, es_eur=f.es_eur) for f in r.figures]
        if r
        else [],
        seconds=round(r.seconds, 4) if r else 0.0,
    )


def report_public(report: RiskReport, settings: RiskSettings) -> RiskReportPublic:
    p = report.positions
    limit = report.limit
    return RiskReportPublic(
        portfolio=report.portfolio,
        generated_at=report.generated_at,
        inputs=ReportInputs(
            window_days=report.window_days,
            horizon_days=1,
            levels=list(LEVELS),
            monte_carlo_paths=report.paths,
            monte_carlo_seed=report.seed,
            limit_level=settings.limit_level,
            limit_horizon_days=settings.limit_horizon_days,
            alert_thresholds_pct=list(settings.alert_thresholds_pct),
            backtest_days=settings.backtest_days,
            significance=SIGNIFICANCE,
        ),
        positions=PositionSummaryPublic(
            as_of=p.as_of,
            quarters=p.quarters,
            zones=list(p.zones),
            long_mwh=p.long_mwh,
            short_mwh=p.short_mwh,
            net_mwh=p.net_mwh,
            net_cash_eur=p.net_cash_eur,
            mtm_pnl_eur=p.mtm_pnl_eur,
            unmarked=p.unmarked,
            first_delivery=p.first_delivery,
            last_delivery=p.last_delivery,
        ),
        var=[_var_section_public(s) for s in report.var],
        limits=ReportLimitsPublic(
            configured=limit is not None,
            var_limit_eur=limit.var_limit_eur if limit else None,
            pnl_limit_eur=limit.pnl_limit_eur if limit else None,
            hard=limit.hard if limit else None,
            lines=[
                LimitLinePublic(
                    limit=line.status.kind.value,
                    limit_eur=line.status.limit_eur,
                    value_eur=line.status.value_eur,
                    utilisation_pct=line.status.utilisation_pct,
                    breached=line.status.breached,
                    hard=line.status.hard,
                    alert_state=line.state,
                    alert_threshold_pct=line.threshold_pct,
                )
                for line in report.limit_lines
            ],
            unavailable_reason=report.limit_unavailable,
        ),
        backtest_zones_from=report.backtest_zones_from,
        backtest=[backtest_public(s) for s in report.backtests],
        method_notes=list(report.notes),
    )
