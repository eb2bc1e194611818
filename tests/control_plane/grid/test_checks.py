"""The pre-trade grid capacity check against a real constraint store and fake commitments."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest

from control_plane.exchange.models import DeliveryPeriod, Order, OrderState, Side
from control_plane.fleet.store import FleetStore
from control_plane.grid.checks import GridCapacity
from control_plane.grid.models import ConstraintKind, ConstraintSpec
from control_plane.grid.service import GridConfig, GridService
from control_plane.grid.store import GridStore

T0 = datetime(2025, 11, 3, 8, 0, tzinfo=UTC)
Q = timedelta(minutes=15)


class Committed:
    def __init__(self, orders: list[Order]) -> None:
        self.orders = orders

    def site_orders(self, *, site, delivery_from, delivery_to):
        return [
            o
            for o in self.orders
            if o.site == site and o.delivery.start < delivery_to and o.delivery.end > delivery_from
        ]


def order(
    order_id, side, mw, delivery, *, filled="0", state=OrderState.PARTIALLY_FILLED, site="s1"
) -> Order:
    return Order(
        order_id=order_id,
        side=side,
        quantity_mw=Decimal(mw),
        limit_price_eur_per_mwh=Decimal(50),
        market="epex_at",
        delivery=delivery,
        portfolio="desk",
        counterparty="desk",
        site=site,
        state=state,
        filled_mw=Decimal(filled),
        created_at=T0,
        updated_at=T0,
    )


@pytest.fixture
def grid(engine) -> GridService:
    store = GridStore(engine)
    store.migrate()
    fleet = FleetStore(engine)
    fleet.migrate()
    return GridService(
        store=store,
        fleet_store=fleet,
        config=GridConfig(site_areas={"s1": "AT", "s2": "AT"}, default_area="AT"),
        clock=lambda: T0,
    )


def limit(grid: GridService, kw: str | None, *, kind=ConstraintKind.CAPACITY_LIMIT, **where):
    target = where or {"site_id": "s1"}
    grid.store.add(
        ConstraintSpec(
            kind=kind,
            limit_kw=None if kw is None else Decimal(kw),
            valid_from=T0,
            valid_to=T0 + 4 * Q,
            **target,
        ),
        now=T0,
    )


def test_exactly_at_the_limit_passes_one_kw_more_is_rejected_with_figures(grid):
    limit(grid, "1000")
    committed = Committed([order(1, Side.BUY, "0.6", DeliveryPeriod.quarter(T0), filled="0.2")])
    check = GridCapacity(grid=grid, committed=committed)
    assert check(order(2, Side.BUY, "0.4", DeliveryPeriod.quarter(T0))) is None
    reason = check(order(2, Side.BUY, "0.401", DeliveryPeriod.quarter(T0)))
    assert reason is not None
    assert reason.startswith("grid_capacity: BUY 0.401 MW for site s1 in 2025-11-03T08:00Z/PT15M")
    assert "1001 kW charging, beyond the 1000 kW allowed by constraint #1 (capacity_limit" in reason
    assert "600 kW already committed); over by 1 kW" in reason
    # other sites, financial orders, and quarters outside the window are not limited
    assert check(order(3, Side.BUY, "5", DeliveryPeriod.quarter(T0), site="s9")) is None
    assert check(order(4, Side.BUY, "5", DeliveryPeriod.quarter(T0), site=None)) is None
    assert check(order(5, Side.BUY, "5", DeliveryPeriod.quarter(T0 + 4 * Q))) is None


def test_net_power_counts_and_an_order_relieving_the_flow_passes(grid):
    limit(grid, "500")
    # 0.5 MW bought and filled: charging at the limit
    committed = Committed(
        [
            order(
                1,
                Side.BUY,
                "0.5",
                DeliveryPeriod.quarter(T0),
                filled="0.5",
                state=OrderState.FILLED,
            )
        ]
    )
    check = GridCapacity(grid=grid, committed=committed)
    assert check(order(2, Side.BUY, "0.001", DeliveryPeriod.quarter(T0))) is not None
    # selling 1 MW turns it into 0.5 MW discharging: within the limit
    assert check(order(3, Side.SELL, "1.0", DeliveryPeriod.quarter(T0))) is None
    reason = check(order(4, Side.SELL, "1.1", DeliveryPeriod.quarter(T0)))
    assert reason is not None and "600 kW discharging" in reason and "over by 100 kW" in reason


def test_hour_block_is_checked_per_quarter_and_area_and_maintenance_apply(grid):
    limit(grid, None, kind=ConstraintKind.MAINTENANCE, area="AT")
    check = GridCapacity(grid=grid, committed=Committed([]))
    reason = check(order(1, Side.SELL, "0.1", DeliveryPeriod.hour_block(T0), site="s2"))
    assert reason is not None
    assert "beyond the 0 kW allowed by constraint #1 (maintenance, area AT" in reason
    # a quarter inside the window is refused, the block after it passes
    assert check(order(2, Side.SELL, "0.1", DeliveryPeriod.quarter(T0 + 3 * Q), site="s2"))
    assert (
        check(order(3, Side.SELL, "0.1", DeliveryPeriod.hour_block(T0 + 4 * Q), site="s2")) is None
    )


def test_optimiser_limit_is_the_tightest_in_the_window(grid):
    limit(grid, "800")
    limit(grid, "300", area="AT")
    assert grid.limit_kw("s1", T0, T0 + Q) == 300.0
    assert grid.limit_kw("s1", T0 + 4 * Q, T0 + 8 * Q) is None
