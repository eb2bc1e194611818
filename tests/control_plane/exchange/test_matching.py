"""The spec's matching rules as tables: price-time priority, partial fills, the pricing rule.

Each case places some resting orders, then one incoming order, and states the trades (which
resting order, MW, EUR/MWh), the incoming order's end state and what is left in the book.
The engine runs on the in-memory store; persistence has its own tests.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from datetime import timedelta
from decimal import Decimal

import pytest

from control_plane.exchange.book import OrderBook
from control_plane.exchange.models import (
    BookKey,
    DeliveryPeriod,
    MarketRegistry,
    Order,
    OrderState,
    PricingRule,
    Side,
)
from control_plane.exchange.service import Exchange
from control_plane.exchange.store import MemoryOrderStore

from .conftest import DELIVERY, MARKET, T0, SteppedClock, order

B, S = Side.BUY, Side.SELL
MID, REST = PricingRule.MIDPOINT, PricingRule.RESTING
FILLED, PARTIAL, ACCEPTED = OrderState.FILLED, OrderState.PARTIALLY_FILLED, OrderState.ACCEPTED


@dataclass(frozen=True)
class Case:
    resting: list[tuple[Side, str, str]]
    """(side, MW, EUR/MWh) placed in this order, labelled r0, r1, ..."""
    incoming: tuple[Side, str, str]
    trades: list[tuple[int, str, str]]
    """(index of the resting order, MW, EUR/MWh) in execution order."""
    state: OrderState
    book_bids: list[tuple[str, str, str]]
    """(label, price, remaining MW) best first; label r<i> or 'in' for the incoming order."""
    book_asks: list[tuple[str, str, str]]
    pricing: PricingRule = MID


CASES = {
    "no cross: bid below ask, both rest": Case(
        [(S, "1", "51")], (B, "1", "50"), [], ACCEPTED, [("in", "50", "1")], [("r0", "51", "1")]
    ),
    "buy at exactly the ask trades": Case(
        [(S, "1", "50")], (B, "1", "50"), [(0, "1", "50")], FILLED, [], []
    ),
    "buy walks asks lowest price first": Case(
        [(S, "1", "52"), (S, "1", "50"), (S, "1", "51")],
        (B, "2", "55"),
        [(1, "1", "52.5"), (2, "1", "53")],
        FILLED,
        [],
        [("r0", "52", "1")],
    ),
    "sell walks bids highest price first": Case(
        [(B, "1", "48"), (B, "1", "50"), (B, "1", "49")],
        (S, "2", "45"),
        [(1, "1", "47.5"), (2, "1", "47")],
        FILLED,
        [("r0", "48", "1")],
        [],
    ),
    "same price: oldest first (time priority)": Case(
        [(S, "1", "50"), (S, "1", "50"), (S, "1", "50")],
        (B, "1.5", "50"),
        [(0, "1", "50"), (1, "0.5", "50")],
        FILLED,
        [],
        [("r1", "50", "0.5"), ("r2", "50", "1")],
    ),
    "incoming partly filled rests with the remainder": Case(
        [(S, "1", "50")],
        (B, "3", "50"),
        [(0, "1", "50")],
        PARTIAL,
        [("in", "50", "2")],
        [],
    ),
    "resting partly filled keeps its place": Case(
        [(S, "5", "50"), (S, "1", "50")],
        (B, "2", "51"),
        [(0, "2", "50.5")],
        FILLED,
        [],
        [("r0", "50", "3"), ("r1", "50", "1")],
    ),
    "the limit stops the walk": Case(
        [(S, "1", "50"), (S, "1", "55")],
        (B, "2", "52"),
        [(0, "1", "51")],
        PARTIAL,
        [("in", "52", "1")],
        [("r1", "55", "1")],
    ),
    "fill is min(remaining, available), 1 kW steps": Case(
        [(S, "0.001", "50"), (S, "2.5", "50")],
        (B, "1.234", "50"),
        [(0, "0.001", "50"), (1, "1.233", "50")],
        FILLED,
        [],
        [("r1", "50", "1.267")],
    ),
    "midpoint of two cents is exact at half a cent": Case(
        [(S, "1", "49.99")], (B, "1", "50"), [(0, "1", "49.995")], FILLED, [], []
    ),
    "negative prices trade (midpoint)": Case(
        [(S, "1", "-10")], (B, "1", "-5"), [(0, "1", "-7.5")], FILLED, [], []
    ),
    "resting rule: an aggressive buy pays the ask": Case(
        [(S, "1", "50"), (S, "1", "51")],
        (B, "2", "60"),
        [(0, "1", "50"), (1, "1", "51")],
        FILLED,
        [],
        [],
        REST,
    ),
    "resting rule: an aggressive sell gets the bid": Case(
        [(B, "1", "60")], (S, "1", "-500"), [(0, "1", "60")], FILLED, [], [], REST
    ),
    "midpoint rule: an aggressive sell meets the bid half way": Case(
        [(B, "1", "60")], (S, "1", "40"), [(0, "1", "50")], FILLED, [], []
    ),
    "own side orders never match each other": Case(
        [(B, "1", "60"), (B, "1", "61")],
        (B, "1", "62"),
        [],
        ACCEPTED,
        [("in", "62", "1"), ("r1", "61", "1"), ("r0", "60", "1")],
        [],
    ),
}


@pytest.mark.parametrize("case", CASES.values(), ids=CASES.keys())
def test_matching_table(case: Case, clock: SteppedClock) -> None:
    exchange = Exchange(
        store=MemoryOrderStore(),
        markets=MarketRegistry.default(),
        clock=clock,
        pricing=case.pricing,
    )
    labels: dict[int, str] = {}
    resting_ids = []
    for i, (side, mw, price) in enumerate(case.resting):
        placed = exchange.place_order(order=order(side, mw, price))
        assert not placed.trades, "a resting order of the table traded on its own"
        resting_ids.append(placed.order.order_id)
        labels[placed.order.order_id] = f"r{i}"
        clock.advance(timedelta(seconds=1))
    side, mw, price = case.incoming
    placed = exchange.place_order(order=order(side, mw, price))
    labels[placed.order.order_id] = "in"

    got = [
        (
            resting_ids.index(t.sell_order_id if side is B else t.buy_order_id),
            t.quantity_mw,
            t.price_eur_per_mwh,
        )
        for t in placed.trades
    ]
    assert got == [(i, Decimal(mw), Decimal(p)) for i, mw, p in case.trades]
    assert placed.order.state is case.state
    assert placed.order.filled_mw == sum((Decimal(mw) for _, mw, _ in case.trades), Decimal(0))
    for trade in placed.trades:
        assert trade.aggressor is side
        assert trade.executed_at == clock.now
        assert (trade.buy_order_id if side is B else trade.sell_order_id) == placed.order.order_id

    snapshot = exchange.book(market=MARKET, delivery=DELIVERY)
    assert not snapshot.is_crossed
    assert exchange.top_of_book(market=MARKET, delivery=DELIVERY) == (
        snapshot.best_bid_eur_per_mwh,
        snapshot.best_ask_eur_per_mwh,
    )
    for entries, expected in ((snapshot.bids, case.book_bids), (snapshot.asks, case.book_asks)):
        assert [(labels[e.order_id], e.price_eur_per_mwh, e.remaining_mw) for e in entries] == [
            (label, Decimal(p), Decimal(mw)) for label, p, mw in expected
        ]


def test_counter_orders_report_their_new_state(clock: SteppedClock) -> None:
    exchange = Exchange(store=MemoryOrderStore(), markets=MarketRegistry.default(), clock=clock)
    first = exchange.place_order(order=order(S, "2", "50", portfolio="seller")).order
    second = exchange.place_order(order=order(S, "1", "50", portfolio="seller")).order
    clock.advance(timedelta(minutes=1))
    placed = exchange.place_order(order=order(B, "2.5", "50", portfolio="buyer"))
    assert [(o.order_id, o.state, o.filled_mw) for o in placed.counter_orders] == [
        (first.order_id, FILLED, Decimal("2")),
        (second.order_id, PARTIAL, Decimal("0.5")),
    ]
    assert all(o.updated_at == clock.now for o in placed.counter_orders)
    assert exchange.get_order(order_id=second.order_id).filled_mw == Decimal("0.5")
    assert exchange.get_order(order_id=first.order_id).state is FILLED
    trade = placed.trades[0]
    assert (trade.buy_portfolio, trade.sell_portfolio) == ("buyer", "seller")


def test_books_are_per_market_and_delivery_period(clock: SteppedClock) -> None:
    exchange = Exchange(store=MemoryOrderStore(), markets=MarketRegistry.default(), clock=clock)
    later = DeliveryPeriod.quarter(DELIVERY.end)
    block = DeliveryPeriod.hour_block(DELIVERY.start)
    exchange.place_order(order=order(S, "1", "50"))
    for other in (
        order(B, "1", "60", delivery=later),
        order(B, "1", "60", delivery=block),
        order(B, "1", "60", market="epex_de_lu"),
    ):
        assert exchange.place_order(order=other).trades == ()
    assert len(exchange.book_keys()) == 4
    assert exchange.place_order(order=order(B, "1", "60")).order.state is FILLED
    assert BookKey(MARKET, DELIVERY) not in exchange.book_keys()


def test_plan_changes_nothing_and_apply_takes_committed_states() -> None:
    def resting(order_id: int, side: Side, mw: str, price: str) -> Order:
        return Order(
            order_id=order_id,
            side=side,
            quantity_mw=Decimal(mw),
            limit_price_eur_per_mwh=Decimal(price),
            market=MARKET,
            delivery=DELIVERY,
            portfolio="p",
            counterparty="c",
            site=None,
            state=ACCEPTED,
            filled_mw=Decimal(0),
            created_at=T0,
            updated_at=T0,
        )

    book = OrderBook(BookKey(MARKET, DELIVERY))
    for o in (resting(1, S, "1", "50"), resting(2, S, "1", "51"), resting(3, B, "1", "40")):
        book.add(o)
    before = book.snapshot()
    incoming = resting(4, B, "1.5", "55")
    fills = book.plan(incoming, pricing=MID)
    assert [(f.resting.order_id, f.quantity_mw, f.price_eur_per_mwh) for f in fills] == [
        (1, Decimal(1), Decimal("52.5")),
        (2, Decimal("0.5"), Decimal(53)),
    ]
    assert book.snapshot() == before
    done = replace(fills[0].resting, filled_mw=Decimal(1), state=FILLED)
    half = replace(fills[1].resting, filled_mw=Decimal("0.5"), state=PARTIAL)
    book.apply(
        incoming=replace(incoming, filled_mw=Decimal("1.5"), state=FILLED),
        counter_orders=[done, half],
    )
    assert [(e.order_id, e.remaining_mw) for e in book.snapshot().asks] == [(2, Decimal("0.5"))]
    assert book.best_bid_eur_per_mwh == 40
    assert book.best_ask_eur_per_mwh == 51
    with pytest.raises(ValueError, match="already"):
        book.add(resting(3, B, "1", "40"))
    with pytest.raises(ValueError, match="belongs to"):
        book.add(replace(resting(9, B, "1", "40"), market="epex_de_lu"))
    book.remove(3)
    assert book.best_bid_eur_per_mwh is None
    with pytest.raises(KeyError):
        book.remove(3)
