"""The optimiser's HTTP shapes: `OptimiseCreate` in, `PlanPublic` out, the auto-submission
switches (STYLE item 3)."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field

from control_plane.exchange.models import OrderState
from control_plane.fleet.models import SITE_ID

from .service import StoredPlan, Submission
from .store import AutoSubmitSwitch


class OptimiseCreate(BaseModel):
    """Plan a site's battery over the next hours."""

    model_config = ConfigDict(extra="forbid")

    site_id: str = Field(pattern=SITE_ID.pattern, max_length=63)
    zone: str = Field(min_length=2, max_length=32, description="bidding zone code, e.g. AT, BE")
    horizon_hours: int = Field(default=24, ge=1, le=168)
    price_source: Literal["market", "forecast"] = Field(
        default="market",
        description="market: the stored day-ahead prices (all of the horizon must be "
        "published); forecast: a forecast from the prices before the start",
    )
    start: AwareDatetime | None = Field(
        default=None, description="first interval; default: the next quarter-hour (or hour)"
    )
    end_soc_pct: float | None = Field(default=None, ge=0, le=100)
    battery: dict[str, float | None] = Field(
        default_factory=dict,
        description="overrides of the site's battery: capacity_kwh, max_charge_kw, "
        "max_discharge_kw, min_soc_pct, max_soc_pct, charge_efficiency, discharge_efficiency, "
        "grid_limit_kw, degradation_eur_per_mwh, max_cycles_per_day",
    )
    market: str | None = Field(default=None, max_length=32, description="for proposed orders")
    portfolio: str | None = Field(default=None, max_length=64, description="for proposed orders")


class RelaxationPublic(BaseModel):
    constraint: str
    first: datetime
    intervals: int
    max_amount: float
    unit: str
    message: str


class PlanIntervalPublic(BaseModel):
    start: datetime
    price_eur_per_mwh: float
    power_kw: float = Field(description="+ = discharge, - = charge (EdgeLink sign)")
    soc_pct: float = Field(description="at the end of the interval")
    position_mw: float = Field(description="already traded: + bought, - sold")
    trade_kw: float = Field(description="additional trade: + sell, - buy")


class ScheduleIntervalOut(BaseModel):
    start: datetime
    power_kw: float


class ScheduleOut(BaseModel):
    """The body `POST /api/sites/{id}/schedules` takes."""

    valid_from: datetime
    valid_until: datetime
    interval_minutes: int
    intervals: list[ScheduleIntervalOut]
    origin: str


class DeliveryOut(BaseModel):
    start: datetime
    product: str


class ProposedOrderPublic(BaseModel):
    """The body `POST /api/orders` takes (proposed: not placed)."""

    side: str
    quantity_mw: str
    limit_price: str
    market: str
    delivery: DeliveryOut
    portfolio: str
    counterparty: str
    site: str | None


class SubmittedOrderPublic(BaseModel):
    """What became of one proposed order."""

    side: str
    quantity_mw: str
    limit_price: str
    delivery: DeliveryOut
    order_id: int | None = Field(description="the exchange's id (GET /api/orders/{id})")
    state: str = Field(
        description="ACCEPTED, PARTIALLY_FILLED, FILLED, REJECTED (a pre-trade check refused "
        "it: reject_reason) or NOT_PLACED (malformed for the exchange now, e.g. past the gate "
        "closure: reject_reason; nothing stored)"
    )
    filled_mw: str
    reject_reason: str | None


class SubmissionSummaryPublic(BaseModel):
    submitted_at: datetime
    submitted_by: str = Field(description="the API key's name, or auto-submit")
    complete: bool = Field(description="every proposed order was tried")
    error: str | None = Field(description="why the submission stopped early")
    placed: int = Field(description="orders the exchange stored (including REJECTED)")
    rejected: int
    not_placed: int


class SubmissionPublic(SubmissionSummaryPublic):
    results: list[SubmittedOrderPublic] = Field(description="in the order they were placed")


class AutoSubmitPublic(BaseModel):
    portfolio: str
    enabled: bool
    updated_at: datetime
    updated_by: str

    @classmethod
    def of(cls, switch: AutoSubmitSwitch) -> AutoSubmitPublic:
        return cls(
            portfolio=switch.portfolio,
            enabled=switch.enabled,
            updated_at=switch.updated_at,
            updated_by=switch.updated_by,
        )


class AutoSubmitUpdate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    enabled: bool = Field(
        description="true: a dispatched plan's proposed orders are placed at once"
    )


class DispatchPublic(BaseModel):
    schedule_version: int
    status: str


class PlanSummaryPublic(BaseModel):
    plan_id: str
    site_id: str
    created_at: datetime
    zone: str
    price_source: str
    start: datetime
    end: datetime
    expected_revenue_eur: float
    objective_eur: float
    relaxed: int
    dispatched: DispatchPublic | None
    portfolio: str | None = Field(description="of the proposed orders (null: none proposed)")
    auto_submit: bool = Field(
        description="the portfolio auto-submits: dispatching places the proposed orders"
    )
    orders_submitted: SubmissionSummaryPublic | None = Field(
        description="null: the proposed orders were not submitted"
    )


class PlanPublic(PlanSummaryPublic):
    interval_minutes: int
    initial_soc_pct: float
    degradation_cost_eur: float
    cycles: float
    milp: bool
    solve_seconds: float
    relaxations: list[RelaxationPublic]
    intervals: list[PlanIntervalPublic]
    schedule: ScheduleOut
    proposed_orders: list[ProposedOrderPublic]
    orders_submitted: SubmissionPublic | None = Field(
        description="null: the proposed orders were not submitted"
    )


def summary_of(stored: StoredPlan, *, auto_submit: bool) -> PlanSummaryPublic:
    """`auto_submit`: whether the plan's portfolio auto-submits (the service's switch)."""
    return PlanSummaryPublic(
        **_summary_fields(stored, auto_submit=auto_submit),
        orders_submitted=None if stored.submission is None else _counts(stored.submission),
    )


def _counts(submission: Submission) -> SubmissionSummaryPublic:
    results = submission.results
    return SubmissionSummaryPublic(
        submitted_at=submission.submitted_at,
        submitted_by=submission.submitted_by,
        complete=submission.complete,
        error=submission.error,
        placed=sum(1 for r in results if r.order_id is not None),
        rejected=sum(1 for r in results if r.state == OrderState.REJECTED.value),
        not_placed=sum(1 for r in results if r.order_id is None),
    )


def submission_public(submission: Submission) -> SubmissionPublic:
    return SubmissionPublic(
        **_counts(submission).model_dump(),
        results=[
            SubmittedOrderPublic(
                side=r.proposed.side.value,
                quantity_mw=str(r.proposed.quantity_mw),
                limit_price=str(r.proposed.limit_price_eur_per_mwh),
                delivery=DeliveryOut(
                    start=r.proposed.delivery.start, product=f"PT{r.proposed.delivery.minutes}M"
                ),
                order_id=r.order_id,
                state=r.state,
                filled_mw=str(r.filled_mw),
                reject_reason=r.reject_reason,
            )
            for r in submission.results
        ],
    )


def _summary_fields(stored: StoredPlan, *, auto_submit: bool) -> dict[str, Any]:
    plan = stored.plan
    d = stored.dispatched
    return {
        "plan_id": stored.plan_id,
        "site_id": stored.site_id,
        "created_at": stored.created_at,
        "zone": stored.request.zone,
        "price_source": stored.request.price_source,
        "start": plan.problem.start,
        "end": plan.problem.end,
        "expected_revenue_eur": round(plan.revenue_eur, 2),
        "objective_eur": round(plan.objective_eur, 2),
        "relaxed": len(plan.relaxed),
        "dispatched": None
        if d is None
        else DispatchPublic(schedule_version=d.schedule.version, status=d.status.value),
        "portfolio": stored.portfolio,
        "auto_submit": auto_submit and stored.portfolio is not None,
    }


def plan_public(stored: StoredPlan, *, auto_submit: bool) -> PlanPublic:
    """`auto_submit`: whether the plan's portfolio auto-submits (the service's switch)."""
    plan = stored.plan
    problem = plan.problem
    schedule = plan.to_schedule(origin=f"optimiser:{stored.plan_id}")
    return PlanPublic(
        **_summary_fields(stored, auto_submit=auto_submit),
        orders_submitted=None
        if stored.submission is None
        else submission_public(stored.submission),
        interval_minutes=problem.interval_minutes,
        initial_soc_pct=problem.initial_soc_pct,
        degradation_cost_eur=round(plan.degradation_cost_eur, 2),
        cycles=round(plan.cycles, 4),
        milp=plan.milp,
        solve_seconds=round(plan.solve_seconds, 4),
        relaxations=[
            RelaxationPublic(
                constraint=r.constraint,
                first=r.first,
                intervals=r.intervals,
                max_amount=r.max_amount,
                unit=r.unit,
                message=r.message,
            )
            for r in plan.relaxed
        ],
        intervals=[
            PlanIntervalPublic(
                start=start,
                price_eur_per_mwh=price,
                power_kw=power,
                soc_pct=soc,
                position_mw=float(position),
                trade_kw=trade,
            )
            for start, price, power, soc, position, trade in zip(
                plan.starts,
                problem.prices_eur_per_mwh,
                plan.power_kw,
                plan.soc_pct,
                problem.positions(),
                plan.trade_kw,
                strict=True,
            )
        ],
        schedule=ScheduleOut(
            valid_from=schedule.valid_from,
            valid_until=schedule.valid_until,
            interval_minutes=schedule.interval_minutes,
            intervals=[
                ScheduleIntervalOut(start=i.start, power_kw=i.power_kw) for i in schedule.intervals
            ],
            origin=schedule.origin,
        ),
        proposed_orders=[
            ProposedOrderPublic(
                side=o.side.value,
                quantity_mw=str(o.quantity_mw),
                limit_price=str(o.limit_price_eur_per_mwh),
                market=o.market,
                delivery=DeliveryOut(start=o.delivery.start, product=f"PT{o.delivery.minutes}M"),
                portfolio=o.portfolio,
                counterparty=o.counterparty,
                site=o.site,
            )
            for o in stored.orders
        ],
    )
