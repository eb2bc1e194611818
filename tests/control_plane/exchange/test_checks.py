"""Pre-trade checks as tables: SoC feasibility (energy, power, telemetry) and the throttle.

Site s1 by default: 1 MWh, SoC 80 % measured now, 2 MW charge, 3 MW discharge; limits 15 / 90 % and
efficiencies 1, so the numbers are exact: 0.1 MWh headroom (= BUY 0.4 MW for a quarter) and
0.65 MWh above the minimum (= SELL 2.6 MW).
"""

from __future__ import annotations

from dataclasses import replace
from datetime import datetime, timedelta
from typing import Any

import pytest

from control_plane.exchange.checks import (
    MemorySiteStates,
    SiteState,
    SocFeasibility,
    Throttle,
    checks_from_policy,
)
from control_plane.exchange.models import DeliveryPeriod, MarketRegistry, OrderState, Side
from control_plane.exchange.policy import Policy, SocPolicy, ThrottlePolicy, ThrottleRate
from control_plane.exchange.service import Exchange
from control_plane.exchange.store import MemoryOrderStore

from .conftest import DELIVERY, T0, SteppedClock, order

S1 = SiteState(
    capacity_kwh=1000,
    soc_pct=80,
    measured_at=T0,
    max_charge_kw=2000,
    max_discharge_kw=3000,
)
EXACT = SocPolicy(charge_efficiency=1, discharge_efficiency=1)
BEFORE = DeliveryPeriod.quarter(DELIVERY.start - timedelta(minutes=15))
AFTER = DeliveryPeriod.quarter(DELIVERY.end)
BLOCK = DeliveryPeriod.hour_block(DELIVERY.start)


class Plane:
    """An exchange whose only check is SoC feasibility for the sites in `states`."""

    def __init__(self, clock: SteppedClock, soc: SocPolicy = EXACT, **states: SiteState) -> None:
        self.store = MemoryOrderStore()
        self.sites = MemorySiteStates(states or {"s1": S1})
        self.check = SocFeasibility(
            Policy(soc=soc), sites=self.sites, committed=self.store, clock=clock
        )
        self.exchange = Exchange(
            store=self.store,
            markets=MarketRegistry.default(),
            clock=clock,
            pre_trade_checks=[self.check],
        )

    def place(self, side: Side, mw: str, price: str = "50", **kwargs: Any) -> str | None:
        """The reject reason, or None if the order was accepted (and maybe traded)."""
        kwargs.setdefault("site", "s1")
        placed = self.exchange.place_order(order=order(side, mw, price, **kwargs))
        return placed.order.reject_reason

    def fill(self, side: Side, mw: str, *, delivery: DeliveryPeriod = DELIVERY) -> None:
        """An order of s1 that trades at once against a market maker without a site."""
        self.place(side.opposite, mw, portfolio="mm", site=None, delivery=delivery)
        assert self.place(side, mw, delivery=delivery) is None


def _passes(reason: str | None) -> bool:
    return reason is None


LIMITS = {
    # (policy, side, MW, passes)
    "BUY exactly to max SoC": (EXACT, Side.BUY, "0.4", True),
    "BUY 1 kW over max SoC": (EXACT, Side.BUY, "0.401", False),
    "SELL exactly to min SoC": (EXACT, Side.SELL, "2.6", True),
    "SELL 1 kW below min SoC": (EXACT, Side.SELL, "2.601", False),
    # eta_c 0.8: 0.5 MW x 0.25 h x 0.8 = 0.1 MWh stored (dividing would need 0.156)
    "BUY with charge losses": (SocPolicy(charge_efficiency=0.8), Side.BUY, "0.5", True),
    "BUY with charge losses, 1 kW over": (
        SocPolicy(charge_efficiency=0.8),
        Side.BUY,
        "0.501",
        False,
    ),
    # eta_d 0.5: 1.3 MW x 0.25 h / 0.5 = 0.65 MWh taken out (multiplying would be 0.1625)
    "SELL with discharge losses": (SocPolicy(discharge_efficiency=0.5), Side.SELL, "1.3", True),
    "SELL with discharge losses, 1 kW over": (
        SocPolicy(discharge_efficiency=0.5),
        Side.SELL,
        "1.301",
        False,
    ),
    "BUY at a lower max SoC": (EXACT.model_copy(update={"max_pct": 85}), Side.BUY, "0.201", False),
}


@pytest.mark.parametrize(("soc", "side", "mw", "passes"), LIMITS.values(), ids=LIMITS)
def test_energy_limits(
    clock: SteppedClock, soc: SocPolicy, side: Side, mw: str, passes: bool
) -> None:
    reason = Plane(clock, soc).place(side, mw)
    assert _passes(reason) is passes, reason
    if not passes:
        assert reason is not None
        assert reason.startswith(f"soc_feasibility: {side.value} {mw} MW for 0.25 h needs ")


def test_reason_says_which_check_and_by_how_much(clock: SteppedClock) -> None:
    big = replace(S1, capacity_kwh=5000, soc_pct=84.8, max_charge_kw=5000)
    plane = Plane(clock, SocPolicy(), s1=big)
    plane.fill(Side.BUY, "0.126")  # 0.0315 MWh, 0.0299 MWh stored at eta_c 0.95
    # stored 4.24 MWh, committed 0.0315 x 0.95 = 0.029925, room 4.5 - 4.269925 = 0.230075
    assert plane.place(Side.BUY, "2") == (
        "soc_feasibility: BUY 2.000 MW for 0.25 h needs 0.475 MWh of headroom below max SoC "
        "90 % but site s1 has 0.230 MWh (SoC 84.8 % of 5.000 MWh, +0.030 MWh already "
        "committed); short by 244.925 kWh"
    )
    # the power limit answers before the energy: 20 MW against 3 MW discharge, plus the
    # 0.126 MW bought in that quarter, which the discharge nets against
    assert plane.place(Side.SELL, "20") == (
        f"soc_feasibility: SELL 20.000 MW exceeds site s1's free discharge power of 3.126 MW "
        f"in {DELIVERY.product_id} (max discharge 3.000 MW, -0.126 MW already committed); "
        "over by 16874 kW"
    )
    plane.sites.states["s1"] = replace(big, max_discharge_kw=1e5)
    # the filled BUY (0.126 MW) nets with this SELL in the same quarter:
    # (0.126 - 20) x 0.25 / 0.95 = -5.2300 MWh; above min 4.24 + 0.029925 - 0.75 = 3.519925
    assert plane.place(Side.SELL, "20") == (
        "soc_feasibility: SELL 20.000 MW for 0.25 h needs 5.260 MWh above min SoC 15 % but "
        "site s1 has 3.520 MWh (SoC 84.8 % of 5.000 MWh, +0.030 MWh already committed); "
        "short by 1740 kWh"
    )


def test_telemetry_age_limit(clock: SteppedClock) -> None:
    plane = Plane(clock, EXACT)
    plane.sites.states["s1"] = replace(S1, measured_at=T0 - timedelta(seconds=300))
    assert plane.place(Side.BUY, "0.1") is None
    plane.sites.states["s1"] = replace(S1, measured_at=T0 - timedelta(seconds=301))
    assert plane.place(Side.BUY, "0.1") == (
        "soc_feasibility: site s1's SoC reading is 301 s old (limit 300 s, soc.max_telemetry_age_s)"
    )


UNUSABLE = {
    "unknown site": (None, "site s1 is unknown to the plane"),
    "no SoC reading": (replace(S1, soc_pct=None), "site s1 has no SoC reading"),
    "no reading time": (replace(S1, measured_at=None), "site s1 has no SoC reading"),
    "unknown capacity": (replace(S1, capacity_kwh=None), "site s1 has no known capacity"),
    "zero capacity": (replace(S1, capacity_kwh=0), "site s1 has no known capacity"),
    "unknown power": (
        replace(S1, max_charge_kw=None, max_discharge_kw=0),
        "no known max charge power or max discharge power",
    ),
    "naive timestamp": (
        replace(S1, measured_at=datetime(2025, 11, 3, 8)),
        "naive timestamp",
    ),
}


@pytest.mark.parametrize(("state", "message"), UNUSABLE.values(), ids=UNUSABLE)
def test_unusable_site_state_fails_closed(
    clock: SteppedClock, state: SiteState | None, message: str
) -> None:
    plane = Plane(clock)
    if state is None:
        plane.sites.states.clear()
    else:
        plane.sites.states["s1"] = state
    for side in Side:
        reason = plane.place(side, "0.001")
        assert reason is not None
        assert reason.startswith("soc_feasibility: ")
        assert message in reason


def test_order_without_site_is_financial_unless_the_policy_requires_one(
    clock: SteppedClock,
) -> None:
    assert Plane(clock).place(Side.BUY, "100", site=None) is None
    strict = Plane(clock, EXACT.model_copy(update={"require_site": True}))
    reason = strict.place(Side.BUY, "0.1", site=None)
    assert reason is not None
    assert "names no delivering site" in reason
    assert "soc.require_site" in reason


def test_open_orders_of_the_same_direction_count_until_cancelled(clock: SteppedClock) -> None:
    plane = Plane(clock)
    assert plane.place(Side.BUY, "0.2", price="10") is None  # rests: 0.05 MWh
    assert plane.place(Side.BUY, "0.2", price="10") is None  # rests: 0.1 MWh, at the limit
    reason = plane.place(Side.BUY, "0.001", price="10")
    assert reason is not None
    assert "+0.100 MWh already committed" in reason
    first = plane.exchange.open_orders()[0]
    plane.exchange.cancel_order(order_id=first.order_id)
    assert plane.place(Side.BUY, "0.2", price="10") is None


def test_open_orders_of_the_other_direction_do_not_help(clock: SteppedClock) -> None:
    plane = Plane(clock)
    assert plane.place(Side.SELL, "1", price="900") is None  # rests: may never fill
    assert plane.place(Side.BUY, "0.401", price="10") is not None
    assert plane.place(Side.BUY, "0.4", price="10") is None


def test_filled_positions_count_and_net_within_a_quarter(clock: SteppedClock) -> None:
    plane = Plane(clock)
    plane.fill(Side.SELL, "0.4")  # 0.1 MWh out in the order's quarter: room for BUY 0.8
    assert plane.place(Side.BUY, "0.801", price="10") is not None
    assert plane.place(Side.BUY, "0.8", price="10") is None


def test_earlier_quarters_count_later_ones_do_not(clock: SteppedClock) -> None:
    plane = Plane(clock)
    plane.fill(Side.BUY, "0.3", delivery=AFTER)  # after the order's quarter: irrelevant
    plane.fill(Side.BUY, "0.3", delivery=BEFORE)  # 0.075 MWh before: 0.025 MWh left
    assert plane.place(Side.BUY, "0.101", price="10") is not None
    assert plane.place(Side.BUY, "0.1", price="10") is None


def test_cancelled_order_counts_with_what_it_traded(clock: SteppedClock) -> None:
    plane = Plane(clock)
    plane.place(Side.SELL, "0.2", portfolio="mm", site=None)
    assert plane.place(Side.BUY, "0.4", price="60") is None  # 0.2 filled, 0.2 rests
    (rest,) = [o for o in plane.exchange.open_orders() if o.site == "s1"]
    assert rest.state is OrderState.PARTIALLY_FILLED
    assert plane.place(Side.BUY, "0.001", price="10") is not None
    plane.exchange.cancel_order(order_id=rest.order_id)
    assert plane.place(Side.BUY, "0.201", price="10") is not None
    assert plane.place(Side.BUY, "0.2", price="10") is None


def test_power_limit_per_quarter(clock: SteppedClock) -> None:
    low = replace(S1, soc_pct=50, max_charge_kw=500, max_discharge_kw=300)
    plane = Plane(clock, s1=low)
    reason = plane.place(Side.BUY, "0.501")
    assert reason is not None
    assert reason == (
        f"soc_feasibility: BUY 0.501 MW exceeds site s1's free charge power of 0.500 MW in "
        f"{DELIVERY.product_id} (max charge 0.500 MW, 0.000 MW already committed); "
        "over by 1 kW"
    )
    assert plane.place(Side.BUY, "0.3", price="10") is None  # rests in DELIVERY
    assert plane.place(Side.BUY, "0.201", price="10") is not None
    assert plane.place(Side.BUY, "0.2", price="10") is None
    assert plane.place(Side.BUY, "0.5", price="10", delivery=AFTER) is None  # other quarter
    assert plane.place(Side.SELL, "0.301", price="900") is not None
    assert plane.place(Side.SELL, "0.3", price="900") is None


def test_hour_block_counts_in_each_of_its_quarters(clock: SteppedClock) -> None:
    low = replace(S1, soc_pct=20, max_charge_kw=500)
    plane = Plane(clock, s1=low)
    assert plane.place(Side.BUY, "0.2", price="10", delivery=BLOCK) is None
    third = BLOCK.quarters()[2]
    assert plane.place(Side.BUY, "0.301", price="10", delivery=third) is not None
    assert plane.place(Side.BUY, "0.3", price="10", delivery=third) is None
    # and a block's own power is checked against its worst quarter
    reason = plane.place(Side.BUY, "0.1", price="10", delivery=BLOCK)
    assert reason is not None
    assert f"in {BLOCK.quarters()[2].product_id}" in reason


# -- throttle ---------------------------------------------------------------------------------


def _throttled_exchange(clock: SteppedClock) -> Exchange:
    policy = Policy(
        throttle=ThrottlePolicy(
            default=ThrottleRate(orders_per_second=100, burst=1),
            markets={"epex_at": ThrottleRate(orders_per_second=5, burst=2)},
        )
    )
    return Exchange(
        store=MemoryOrderStore(),
        markets=MarketRegistry.default(),
        clock=clock,
        pre_trade_checks=[Throttle(policy, clock)],
    )


def test_throttle_refuses_over_the_burst_and_refills_with_the_clock(clock: SteppedClock) -> None:
    exchange = _throttled_exchange(clock)

    def reason(market: str = "epex_at") -> str | None:
        return exchange.place_order(order=order(Side.BUY, 1, 10, market=market)).order.reject_reason

    assert reason() is None
    assert reason() is None
    assert reason() == "throttle: market epex_at allows 5 orders/s (burst 2); retry in 0.20 s"
    assert reason("epex_de_lu") is None  # its own bucket
    clock.advance(timedelta(milliseconds=120))
    assert reason() == "throttle: market epex_at allows 5 orders/s (burst 2); retry in 0.08 s"
    clock.advance(timedelta(milliseconds=80))
    assert reason() is None
    assert reason() is not None
    clock.advance(timedelta(seconds=60))  # refills to the burst, not beyond
    assert [reason() for _ in range(3)][2] is not None


def test_throttle_ignores_a_clock_that_steps_back(clock: SteppedClock) -> None:
    exchange = _throttled_exchange(clock)
    for _ in range(2):
        exchange.place_order(order=order(Side.BUY, 1, 10))
    clock.advance(timedelta(seconds=-5))
    placed = exchange.place_order(order=order(Side.BUY, 1, 10))
    assert placed.order.reject_reason is not None
    assert placed.order.reject_reason.startswith("throttle: ")


def test_checks_from_policy_throttle_first(clock: SteppedClock) -> None:
    store = MemoryOrderStore()
    checks = checks_from_policy(Policy(), sites=MemorySiteStates(), committed=store, clock=clock)
    assert [getattr(c, "name", None) for c in checks] == ["throttle", "soc_feasibility"]
    exchange = Exchange(
        store=store, markets=MarketRegistry.default(), clock=clock, pre_trade_checks=checks
    )
    placed = exchange.place_order(order=order(Side.BUY, 1, 10, site="nowhere"))
    assert placed.order.state is OrderState.REJECTED
    assert placed.order.reject_reason == (
        "soc_feasibility: site nowhere is unknown to the plane (no state reported)"
    )
    assert exchange.place_order(order=order(Side.BUY, 1, 10)).order.is_open


def test_site_state_times_may_be_in_any_zone(clock: SteppedClock) -> None:
    from zoneinfo import ZoneInfo

    vienna = T0.astimezone(ZoneInfo("Europe/Vienna"))
    plane = Plane(clock, s1=replace(S1, measured_at=vienna))
    assert plane.place(Side.BUY, "0.4") is None
    plane.sites.states["s1"] = replace(S1, measured_at=vienna - timedelta(seconds=301))
    assert plane.place(Side.BUY, "0.1") is not None
