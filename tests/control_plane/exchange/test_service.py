"""The engine around the book: validation, pre-trade checks, cancel, failures of the store."""

from __future__ import annotations

import math
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import pytest

from control_plane.exchange.errors import (
    ExchangeError,
    InvalidDeliveryError,
    InvalidFieldError,
    InvalidPriceError,
    InvalidQuantityError,
    OrderNotFoundError,
    OrderNotOpenError,
    OrderValidationError,
    StoreError,
    UnknownMarketError,
)
from control_plane.exchange.models import (
    DeliveryPeriod,
    Market,
    MarketRegistry,
    NewOrder,
    Order,
    OrderState,
    PlacedOrder,
    Side,
)
from control_plane.exchange.service import Exchange
from control_plane.exchange.store import MemoryOrderStore

from .conftest import DELIVERY, MARKET, T0, SteppedClock, order

PAST = DeliveryPeriod.quarter(T0 - timedelta(minutes=15))
RUNNING = DeliveryPeriod.quarter(T0)


def _with(**changes: Any) -> NewOrder:
    """A valid order (BUY 1 MW at 50) with some fields replaced, invalid ones too."""
    return replace(order(Side.BUY, "1", "50"), **changes)


INVALID = {
    "zero quantity": (_with(quantity_mw=0), InvalidQuantityError, "quantity_mw", "positive"),
    "negative quantity": (_with(quantity_mw="-1"), InvalidQuantityError, "quantity_mw", "positive"),
    "NaN quantity": (_with(quantity_mw=math.nan), InvalidQuantityError, "quantity_mw", "finite"),
    "inf quantity": (_with(quantity_mw=math.inf), InvalidQuantityError, "quantity_mw", "finite"),
    "Decimal NaN": (
        _with(quantity_mw=Decimal("NaN")),
        InvalidQuantityError,
        "quantity_mw",
        "finite",
    ),
    "text quantity": (_with(quantity_mw="lots"), InvalidQuantityError, "quantity_mw", "number"),
    "bool quantity": (_with(quantity_mw=True), InvalidQuantityError, "quantity_mw", "number"),
    "sub-kW quantity": (_with(quantity_mw="0.0005"), InvalidQuantityError, "quantity_mw", "1 kW"),
    "huge quantity": (_with(quantity_mw="1e30"), InvalidQuantityError, "quantity_mw", "maximum"),
    "price below -500": (
        _with(limit_price_eur_per_mwh="-500.01"),
        InvalidPriceError,
        "limit_price_eur_per_mwh",
        "bounds",
    ),
    "price above 4000": (
        _with(limit_price_eur_per_mwh=4000.01),
        InvalidPriceError,
        "limit_price_eur_per_mwh",
        "bounds",
    ),
    "NaN price": (
        _with(limit_price_eur_per_mwh=math.nan),
        InvalidPriceError,
        "limit_price_eur_per_mwh",
        "finite",
    ),
    "-inf price": (
        _with(limit_price_eur_per_mwh=-math.inf),
        InvalidPriceError,
        "limit_price_eur_per_mwh",
        "finite",
    ),
    "sub-cent price": (
        _with(limit_price_eur_per_mwh="50.001"),
        InvalidPriceError,
        "limit_price_eur_per_mwh",
        "tick",
    ),
    "unknown market": (_with(market="nord_pool"), UnknownMarketError, "market", "unknown"),
    "delivery in the past": (
        _with(delivery=PAST),
        InvalidDeliveryError,
        "delivery.start",
        "in the past",
    ),
    "delivery already running": (
        _with(delivery=RUNNING),
        InvalidDeliveryError,
        "delivery.start",
        "started",
    ),
    "not a delivery period": (
        _with(delivery="2025-11-03T10:00Z/PT15M"),
        InvalidDeliveryError,
        "delivery",
        "not a delivery period",
    ),
    "unknown side": (_with(side="HOLD"), InvalidFieldError, "side", "unknown side"),
    "empty portfolio": (_with(portfolio="  "), InvalidFieldError, "portfolio", "invalid"),
    "long counterparty": (_with(counterparty="x" * 65), InvalidFieldError, "counterparty", ""),
    "site with a newline": (_with(site="a\nb"), InvalidFieldError, "site", "invalid"),
}


@pytest.mark.parametrize(("new", "error", "field", "problem"), INVALID.values(), ids=INVALID)
def test_invalid_orders_raise_a_clear_error_and_store_nothing(
    new: NewOrder,
    error: type[OrderValidationError],
    field: str,
    problem: str,
    clock: SteppedClock,
) -> None:
    store = MemoryOrderStore()
    exchange = Exchange(store=store, markets=MarketRegistry.default(), clock=clock)
    with pytest.raises(error) as caught:
        exchange.place_order(order=new)
    assert isinstance(caught.value, ExchangeError)
    assert isinstance(caught.value, ValueError)
    assert caught.value.field == field
    assert problem in caught.value.problem
    assert caught.value.allowed
    assert field in str(caught.value)
    assert store.list_orders() == []
    assert exchange.place_order(order=order(Side.BUY, 1, 50)).order.order_id == 1


def test_error_names_the_allowed_range() -> None:
    exchange = Exchange(
        store=MemoryOrderStore(), markets=MarketRegistry.default(), clock=lambda: T0
    )
    with pytest.raises(InvalidPriceError) as caught:
        exchange.place_order(order=_with(limit_price_eur_per_mwh=5000))
    assert str(caught.value) == (
        "limit_price_eur_per_mwh=5000: outside the price bounds of market epex_at "
        "(allowed: -500 ... 4000 EUR/MWh, in steps of 0.01)"
    )


def test_inputs_are_normalised_to_fixed_scale(clock: SteppedClock) -> None:
    exchange = Exchange(store=MemoryOrderStore(), markets=MarketRegistry.default(), clock=clock)
    placed = exchange.place_order(
        order=_with(quantity_mw=0.1, limit_price_eur_per_mwh=" 49.9 ", side="sell")
    )
    assert placed.order.quantity_mw == Decimal("0.1")
    assert str(placed.order.quantity_mw) == "0.100"
    assert str(placed.order.limit_price_eur_per_mwh) == "49.90"
    assert placed.order.side is Side.SELL
    assert placed.order.state is OrderState.ACCEPTED
    assert placed.order.created_at == T0


def test_bounds_and_gate_closure_come_from_the_market(clock: SteppedClock) -> None:
    markets = MarketRegistry(
        [
            Market(
                "epex_at",
                price_min_eur_per_mwh=Decimal(0),
                price_max_eur_per_mwh=Decimal(1000),
                gate_closure=timedelta(minutes=5),
                product_minutes=frozenset({15}),
            )
        ]
    )
    exchange = Exchange(store=MemoryOrderStore(), markets=markets, clock=clock)
    with pytest.raises(InvalidPriceError, match=r"allowed: 0 \.\.\. 1000"):
        exchange.place_order(order=_with(limit_price_eur_per_mwh=-1))
    with pytest.raises(InvalidDeliveryError, match="does not offer"):
        exchange.place_order(order=_with(delivery=DeliveryPeriod.hour_block(DELIVERY.start)))
    clock.now = DELIVERY.start - timedelta(minutes=5)
    with pytest.raises(InvalidDeliveryError, match="gate closure"):
        exchange.place_order(order=_with())
    clock.now = DELIVERY.start - timedelta(minutes=5, microseconds=1)
    assert exchange.place_order(order=_with()).order.is_open


def test_naive_clock_is_refused() -> None:
    exchange = Exchange(
        store=MemoryOrderStore(),
        markets=MarketRegistry.default(),
        clock=lambda: datetime(2025, 11, 3, 8),
    )
    with pytest.raises(RuntimeError, match="naive"):
        exchange.place_order(order=_with())


# -- pre-trade checks -------------------------------------------------------------------------


def test_pre_trade_check_rejects_and_the_reason_is_stored(clock: SteppedClock) -> None:
    seen: list[Order] = []

    def soc_headroom(candidate: Order) -> str | None:
        seen.append(candidate)
        if candidate.side is Side.BUY and candidate.quantity_mw > 2:
            return "BUY 3 MW needs 0.75 MWh headroom below 90 % SoC, 0.4 MWh left"
        return None

    store = MemoryOrderStore()
    exchange = Exchange(
        store=store,
        markets=MarketRegistry.default(),
        clock=clock,
        pre_trade_checks=[soc_headroom],
    )
    resting = exchange.place_order(order=order(Side.SELL, 5, 40)).order
    placed = exchange.place_order(order=order(Side.BUY, 3, 50))
    assert placed.order.state is OrderState.REJECTED
    assert placed.order.reject_reason == (
        "BUY 3 MW needs 0.75 MWh headroom below 90 % SoC, 0.4 MWh left"
    )
    assert placed.trades == ()
    assert placed.order.filled_mw == 0
    assert store.get_order(placed.order.order_id) == placed.order
    assert exchange.get_order(order_id=resting.order_id).filled_mw == 0
    assert [o.state for o in seen] == [OrderState.ACCEPTED, OrderState.ACCEPTED]
    # the next order gets the next id; the rejected one never rests
    assert exchange.place_order(order=order(Side.BUY, 1, 50)).order.order_id == 3
    assert [o.order_id for o in exchange.open_orders()] == [1]


def test_first_rejecting_check_wins_and_a_raising_check_rejects(clock: SteppedClock) -> None:
    calls: list[str] = []

    def ok(candidate: Order) -> None:
        calls.append("ok")

    def broken(candidate: Order) -> str | None:
        calls.append("broken")
        raise ZeroDivisionError("capacity is 0")

    def never(candidate: Order) -> str:
        calls.append("never")
        return "unreachable"

    exchange = Exchange(
        store=MemoryOrderStore(),
        markets=MarketRegistry.default(),
        clock=clock,
        pre_trade_checks=[ok, broken, never],
    )
    placed = exchange.place_order(order=_with())
    assert placed.order.state is OrderState.REJECTED
    assert placed.order.reject_reason == (
        "pre-trade check broken failed: ZeroDivisionError: capacity is 0"
    )
    assert calls == ["ok", "broken"]


def test_check_may_read_the_engine(clock: SteppedClock) -> None:
    def position_limit(candidate: Order) -> str | None:
        net = exchange.exposure(portfolio=candidate.portfolio).net_energy_mwh
        open_buys = sum(o.remaining_mw for o in exchange.open_orders(portfolio=candidate.portfolio))
        if net + open_buys + candidate.quantity_mw > 3:
            return "position limit 3 MW"
        return None

    exchange = Exchange(
        store=MemoryOrderStore(),
        markets=MarketRegistry.default(),
        clock=clock,
        pre_trade_checks=[position_limit],
    )
    assert exchange.place_order(order=_with(quantity_mw=2)).order.is_open
    assert exchange.place_order(order=_with(quantity_mw=2)).order.reject_reason == (
        "position limit 3 MW"
    )


# -- cancel -----------------------------------------------------------------------------------


def test_cancel_takes_the_order_out_of_the_book(clock: SteppedClock) -> None:
    store = MemoryOrderStore()
    exchange = Exchange(store=store, markets=MarketRegistry.default(), clock=clock)
    first = exchange.place_order(order=order(Side.SELL, 2, 50)).order
    second = exchange.place_order(order=order(Side.SELL, 2, 50)).order
    exchange.place_order(order=order(Side.BUY, 1, 50))
    clock.advance(timedelta(seconds=30))
    cancelled = exchange.cancel_order(order_id=first.order_id)
    assert cancelled.state is OrderState.CANCELLED
    assert cancelled.filled_mw == 1  # the filled part stays traded
    assert cancelled.updated_at == clock.now
    assert store.get_order(first.order_id) == cancelled
    assert [e.order_id for e in exchange.book(market=MARKET, delivery=DELIVERY).asks] == [
        second.order_id
    ]
    trade = exchange.place_order(order=order(Side.BUY, 1, 50)).trades[0]
    assert trade.sell_order_id == second.order_id
    with pytest.raises(OrderNotOpenError, match="CANCELLED"):
        exchange.cancel_order(order_id=first.order_id)
    with pytest.raises(OrderNotFoundError):
        exchange.cancel_order(order_id=999)
    with pytest.raises(OrderNotFoundError):
        exchange.get_order(order_id=999)


def test_filled_and_rejected_orders_cannot_be_cancelled(clock: SteppedClock) -> None:
    exchange = Exchange(
        store=MemoryOrderStore(),
        markets=MarketRegistry.default(),
        clock=clock,
        pre_trade_checks=[lambda o: "no" if o.quantity_mw == 7 else None],
    )
    sell = exchange.place_order(order=order(Side.SELL, 1, 50)).order
    buy = exchange.place_order(order=order(Side.BUY, 1, 50)).order
    rejected = exchange.place_order(order=order(Side.BUY, 7, 50)).order
    for order_id, state in (
        (sell.order_id, "FILLED"),
        (buy.order_id, "FILLED"),
        (rejected.order_id, "REJECTED"),
    ):
        with pytest.raises(OrderNotOpenError, match=state):
            exchange.cancel_order(order_id=order_id)


# -- store failures ---------------------------------------------------------------------------


class FlakyStore(MemoryOrderStore):
    """Fails the next commit: before storing it, or after (a COMMIT whose answer was lost)."""

    def __init__(self) -> None:
        super().__init__()
        self.fail: str | None = None

    def commit_placement(self, placed: PlacedOrder) -> None:
        mode, self.fail = self.fail, None
        if mode == "before":
            raise StoreError("disk I/O error")
        super().commit_placement(placed)
        if mode == "after":
            raise StoreError("connection lost during COMMIT")


def test_failed_commit_leaves_the_book_as_it_was(clock: SteppedClock) -> None:
    store = FlakyStore()
    exchange = Exchange(store=store, markets=MarketRegistry.default(), clock=clock)
    exchange.place_order(order=order(Side.SELL, 1, 50))
    before = exchange.book(market=MARKET, delivery=DELIVERY)
    store.fail = "before"
    with pytest.raises(StoreError, match="disk I/O"):
        exchange.place_order(order=order(Side.BUY, 1, 50))
    assert exchange.book(market=MARKET, delivery=DELIVERY) == before
    placed = exchange.place_order(order=order(Side.BUY, 1, 50))
    assert placed.order.order_id == 2
    assert placed.trades[0].trade_id == 1


def test_commit_that_landed_despite_an_error_is_picked_up(clock: SteppedClock) -> None:
    store = FlakyStore()
    exchange = Exchange(store=store, markets=MarketRegistry.default(), clock=clock)
    exchange.place_order(order=order(Side.SELL, 2, 50))
    store.fail = "after"
    with pytest.raises(StoreError, match="COMMIT"):
        exchange.place_order(order=order(Side.BUY, 1, 50))
    # The store holds the trade: the engine reloads before the next call instead of
    # re-trading the sold MW or reusing ids.
    assert [e.remaining_mw for e in exchange.book(market=MARKET, delivery=DELIVERY).asks] == [
        Decimal(1)
    ]
    placed = exchange.place_order(order=order(Side.BUY, 2, 50))
    assert placed.order.order_id == 3
    assert [t.trade_id for t in placed.trades] == [2]
    assert placed.order.filled_mw == 1
    assert len(store.list_trades()) == 2


def test_exchange_starts_from_what_the_store_holds(clock: SteppedClock) -> None:
    store = MemoryOrderStore()
    first = Exchange(store=store, markets=MarketRegistry.default(), clock=clock)
    for side, mw, price in ((Side.SELL, 2, 51), (Side.SELL, 1, 50), (Side.BUY, 2, 49)):
        first.place_order(order=order(side, mw, price))
    first.place_order(order=order(Side.BUY, "1.5", 50.5))
    second = Exchange(store=store, markets=MarketRegistry.default(), clock=clock)
    assert second.book(market=MARKET, delivery=DELIVERY) == first.book(
        market=MARKET, delivery=DELIVERY
    )
    assert second.place_order(order=order(Side.BUY, 1, 51)).trades[0].trade_id == 2


def test_utc_clock_default() -> None:
    from control_plane.exchange.service import utc_now

    now = utc_now()
    assert now.tzinfo is UTC
