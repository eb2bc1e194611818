"""The optimiser service with fakes (site states, prices, positions, the schedule sink)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest

from control_plane.exchange.checks import MemorySiteStates, SiteState
from control_plane.exchange.models import DeliveryPeriod, Order, OrderState, Side
from control_plane.fleet.models import (
    NewSchedule,
    Schedule,
    ScheduleRecord,
    ScheduleStatus,
    UnknownSiteError,
)
from control_plane.market.models import PricePoint, Resolution
from control_plane.optimiser.backtest import InMemoryPriceHistory
from control_plane.optimiser.model import InvalidProblemError
from control_plane.optimiser.service import (
    AlreadyDispatchedError,
    NoPricesError,
    OptimiseRequest,
    OptimiserService,
    SiteNotReadyError,
    UnknownPlanError,
)

NOW = datetime(2025, 6, 2, 7, 55, tzinfo=UTC)
SITE = "site-1"


def quarter_prices(start: datetime, hours: int, zone: str = "AT") -> list[PricePoint]:
    return [
        PricePoint(
            zone=zone,
            start=start + timedelta(minutes=15 * i),
            resolution=Resolution.PT15M,
            price_eur_per_mwh=20.0 if i < 4 * hours // 2 else 120.0,
            source="test",
        )
        for i in range(4 * hours)
    ]


class Sink:
    def __init__(self) -> None:
        self.got: list[tuple[str, NewSchedule]] = []

    async def submit_schedule(self, *, site_id: str, new: NewSchedule) -> ScheduleRecord:
        self.got.append((site_id, new))
        schedule = Schedule(
            site_id=site_id,
            version=len(self.got),
            created_at=NOW,
            valid_from=new.valid_from,
            valid_until=new.valid_until,
            interval_minutes=new.interval_minutes,
            intervals=new.intervals,
            origin=new.origin,
        )
        return ScheduleRecord(schedule=schedule, status=ScheduleStatus.PENDING)


class Committed:
    def __init__(self, orders: list[Order]) -> None:
        self.orders = orders

    def site_orders(self, *, site, delivery_from, delivery_to):
        return [
            o
            for o in self.orders
            if o.site == site and delivery_from <= o.delivery.start < delivery_to
        ]


def state(**kw) -> SiteState:
    base = dict(
        capacity_kwh=1000.0,
        soc_pct=50.0,
        measured_at=NOW - timedelta(minutes=1),
        max_charge_kw=500.0,
        max_discharge_kw=500.0,
    )
    base.update(kw)
    return SiteState(**base)


def service(*, site_state=None, prices=None, committed=None, sink=None) -> OptimiserService:
    history = InMemoryPriceHistory(
        prices if prices is not None else quarter_prices(datetime(2025, 6, 2, 8, tzinfo=UTC), 24)
    )
    return OptimiserService(
        sites=MemorySiteStates({SITE: site_state or state()}),
        prices=lambda: history,
        schedules=sink or Sink(),
        committed=committed,
        clock=lambda: NOW,
    )


async def test_plans_from_the_sites_state_and_stored_prices():
    svc = service()
    stored = await svc.optimise(
        OptimiseRequest(
            site_id=SITE, zone="AT", horizon_hours=24, market="epex_at", portfolio="desk"
        )
    )
    plan = stored.plan
    assert plan.problem.start == datetime(2025, 6, 2, 8, tzinfo=UTC)  # next quarter-hour
    assert plan.problem.interval_minutes == 15 and plan.problem.n == 96
    assert plan.problem.initial_soc_pct == 50.0
    assert plan.problem.battery.min_soc_pct == 15.0  # DESIGN 5 defaults
    assert plan.revenue_eur > 0
    assert stored.orders and {o.side for o in stored.orders} == {Side.BUY, Side.SELL}
    assert svc.plans(site_id=SITE) == [stored]
    assert svc.get(stored.plan_id) is stored


async def test_dispatch_pushes_the_schedule_once():
    sink = Sink()
    svc = service(sink=sink)
    stored = await svc.optimise(OptimiseRequest(site_id=SITE, zone="AT", horizon_hours=4))
    await svc.dispatch(stored.plan_id)
    assert sink.got[0][0] == SITE
    assert sink.got[0][1].origin == f"optimiser:{stored.plan_id}"
    assert stored.dispatched is not None and stored.dispatched.schedule.version == 1
    with pytest.raises(AlreadyDispatchedError, match="dispatched already as schedule version 1"):
        await svc.dispatch(stored.plan_id)
    with pytest.raises(UnknownPlanError):
        await svc.dispatch("nope")


def filled(order_id, side, mw, delivery, site=SITE) -> Order:
    return Order(
        order_id=order_id,
        side=side,
        quantity_mw=Decimal("1"),
        limit_price_eur_per_mwh=Decimal(10),
        market="epex_at",
        delivery=delivery,
        portfolio="desk",
        counterparty="desk",
        site=site,
        state=OrderState.PARTIALLY_FILLED,
        filled_mw=Decimal(mw),
        created_at=NOW,
        updated_at=NOW,
    )


async def test_positions_from_filled_orders_are_honoured():
    start = datetime(2025, 6, 2, 8, tzinfo=UTC)
    evening = start + timedelta(hours=12)
    committed = Committed(
        [
            # sold 0.3 MW in the first (cheap) quarter: the plan must discharge it
            filled(1, Side.SELL, "0.3", DeliveryPeriod.quarter(start)),
            # bought an hour block in the dear evening: the plan must charge it
            filled(2, Side.BUY, "0.2", DeliveryPeriod.hour_block(evening)),
            filled(3, Side.BUY, "0.5", DeliveryPeriod.quarter(start), site="other"),
        ]
    )
    stored = await service(committed=committed).optimise(
        OptimiseRequest(site_id=SITE, zone="AT", horizon_hours=24)
    )
    plan = stored.plan
    positions = plan.problem.positions()
    assert positions[0] == pytest.approx(-0.3)
    assert list(positions[48:52]) == pytest.approx([0.2] * 4)
    assert plan.power_kw[0] >= 300 - 1e-6
    assert all(p <= -200 + 1e-6 for p in plan.power_kw[48:52])
    assert plan.relaxed == ()


async def test_missing_ratings_stale_soc_and_unknown_site_are_refused():
    with pytest.raises(SiteNotReadyError, match="max_charge_kw"):
        await service(site_state=state(max_charge_kw=None)).optimise(
            OptimiseRequest(site_id=SITE, zone="AT")
        )
    # ... unless the request gives them
    ok = await service(site_state=state(max_charge_kw=None)).optimise(
        OptimiseRequest(site_id=SITE, zone="AT", horizon_hours=2, battery={"max_charge_kw": 100})
    )
    assert ok.plan.problem.battery.max_charge_kw == 100
    with pytest.raises(SiteNotReadyError, match="no SoC reading"):
        await service(site_state=state(soc_pct=None)).optimise(
            OptimiseRequest(site_id=SITE, zone="AT")
        )
    with pytest.raises(SiteNotReadyError, match="60 min old"):
        await service(site_state=state(measured_at=NOW - timedelta(hours=1))).optimise(
            OptimiseRequest(site_id=SITE, zone="AT")
        )
    with pytest.raises(UnknownSiteError):
        await service().optimise(OptimiseRequest(site_id="other", zone="AT"))
    with pytest.raises(InvalidProblemError, match="not battery fields"):
        await service().optimise(OptimiseRequest(site_id=SITE, zone="AT", battery={"size": 1}))


async def test_prices_missing_for_the_horizon_say_how_far_they_go():
    with pytest.raises(NoPricesError, match="PT15M: 96 of 192 intervals"):
        await service().optimise(OptimiseRequest(site_id=SITE, zone="AT", horizon_hours=48))
    with pytest.raises(NoPricesError, match="zone BE"):
        await service().optimise(OptimiseRequest(site_id=SITE, zone="BE"))


async def test_forecast_source_uses_the_history_before_the_start():
    # Ten days of history up to 08:00: the seasonal-naive forecast repeats last week.
    start = datetime(2025, 6, 2, 8, tzinfo=UTC)
    history = quarter_prices(start - timedelta(days=10), 24 * 10)
    svc = service(prices=history)
    stored = await svc.optimise(
        OptimiseRequest(site_id=SITE, zone="AT", horizon_hours=24, price_source="forecast")
    )
    week_ago = [
        p.price_eur_per_mwh
        for p in history
        if start - timedelta(days=7) <= p.start < start - timedelta(days=6)
    ]
    assert list(stored.plan.problem.prices_eur_per_mwh) == week_ago
    with pytest.raises(NoPricesError, match="8 days before"):
        await service(prices=[]).optimise(
            OptimiseRequest(site_id=SITE, zone="AT", price_source="forecast")
        )
