"""Random order/cancel/restart sequences against a naive reference matcher (hypothesis).

After every step: no book is crossed; no order is filled beyond its quantity; each order's
filled MW equals the MW of its trades, and the buy side's fills equal the sell side's (traded
quantity is conserved); the engine's trades and books equal the reference's, which sorts the
opposite side afresh for every order (price, then arrival) instead of keeping a book. A
restart rule closes the store, reopens it and builds a new engine: the books, orders and
trades must come back exactly.
"""

from __future__ import annotations

import shutil
import tempfile
from dataclasses import dataclass, field
from datetime import timedelta
from decimal import Decimal
from pathlib import Path

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
)

from control_plane.exchange.book import BookEntry
from control_plane.exchange.errors import OrderNotOpenError
from control_plane.exchange.models import (
    BookKey,
    DeliveryPeriod,
    MarketRegistry,
    Order,
    OrderState,
    PricingRule,
    Side,
    Trade,
)
from control_plane.exchange.service import Exchange
from control_plane.exchange.store import MemoryOrderStore, OrderStore, SqlOrderStore

from .conftest import DELIVERY, MARKET, SteppedClock, order

DELIVERIES = (DELIVERY, DeliveryPeriod.hour_block(DELIVERY.start + timedelta(hours=1)))
PRICES = st.one_of(
    st.integers(45, 55).map(Decimal),
    st.sampled_from([Decimal("49.99"), Decimal("50.01"), Decimal(-500), Decimal(4000)]),
)
QUANTITIES = st.sampled_from(
    [Decimal("0.001"), Decimal("0.5"), Decimal(1), Decimal("1.5"), Decimal(2), Decimal("3.333")]
)


@dataclass
class RefOrder:
    order_id: int
    side: Side
    price: Decimal
    quantity: Decimal
    key: int
    filled: Decimal = Decimal(0)
    cancelled: bool = False

    @property
    def open(self) -> bool:
        return not self.cancelled and self.filled < self.quantity


@dataclass
class Reference:
    """The matching rules written the obvious way: sort the candidates for every order."""

    pricing: PricingRule
    orders: dict[int, RefOrder] = field(default_factory=dict)

    def place(self, new: RefOrder) -> list[tuple[int, int, Decimal, Decimal]]:
        def crosses(o: RefOrder) -> bool:
            return o.price <= new.price if new.side is Side.BUY else o.price >= new.price

        sign = 1 if new.side is Side.BUY else -1
        candidates = sorted(
            (
                o
                for o in self.orders.values()
                if o.open and o.key == new.key and o.side is not new.side and crosses(o)
            ),
            key=lambda o: (sign * o.price, o.order_id),
        )
        trades = []
        for resting in candidates:
            quantity = min(new.quantity - new.filled, resting.quantity - resting.filled)
            if quantity == 0:
                break
            buy, sell = (new, resting) if new.side is Side.BUY else (resting, new)
            price = (
                (buy.price + sell.price) / 2
                if self.pricing is PricingRule.MIDPOINT
                else resting.price
            )
            trades.append((buy.order_id, sell.order_id, quantity, price))
            new.filled += quantity
            resting.filled += quantity
        self.orders[new.order_id] = new
        return trades

    def book(self, key: int, side: Side) -> list[tuple[int, Decimal, Decimal]]:
        sign = -1 if side is Side.BUY else 1
        resting = sorted(
            (o for o in self.orders.values() if o.open and o.key == key and o.side is side),
            key=lambda o: (sign * o.price, o.order_id),
        )
        return [(o.order_id, o.price, o.quantity - o.filled) for o in resting]


class ExchangeMachine(RuleBasedStateMachine):
    """The engine on a real SQLite file (synchronous=OFF: the test is about logic, not fsync)."""

    store_kind = "sqlite"

    def __init__(self) -> None:
        super().__init__()
        self.tmp = Path(tempfile.mkdtemp(prefix="exchange-sm-"))
        self.url = f"sqlite:///{self.tmp / 'exchange.sqlite3'}"
        self.clock = SteppedClock()
        self.store: OrderStore = self._open_store()
        self.exchange: Exchange | None = None
        self.reference: Reference | None = None
        self.orders: dict[int, Order] = {}
        self.trades: list[Trade] = []
        self.steps_since_restart = 0

    def _open_store(self) -> OrderStore:
        return SqlOrderStore.open(self.url, synchronous="OFF")

    def _engine(self) -> Exchange:
        assert self.exchange is not None
        return self.exchange

    @initialize(pricing=st.sampled_from(PricingRule))
    def start(self, pricing: PricingRule) -> None:
        self.reference = Reference(pricing)
        self.exchange = Exchange(
            store=self.store,
            markets=MarketRegistry.default(),
            clock=self.clock,
            pricing=pricing,
        )

    @rule(
        side=st.sampled_from(Side),
        price=PRICES,
        quantity=QUANTITIES,
        key=st.sampled_from(range(len(DELIVERIES))),
        portfolio=st.sampled_from(["a", "b"]),
    )
    def place(
        self, side: Side, price: Decimal, quantity: Decimal, key: int, portfolio: str
    ) -> None:
        assert self.reference is not None
        self.clock.advance(timedelta(milliseconds=1))
        placed = self._engine().place_order(
            order=order(side, quantity, price, delivery=DELIVERIES[key], portfolio=portfolio)
        )
        new = placed.order
        expected = self.reference.place(RefOrder(new.order_id, side, price, quantity, key))
        got = [
            (t.buy_order_id, t.sell_order_id, t.quantity_mw, t.price_eur_per_mwh)
            for t in placed.trades
        ]
        assert got == expected
        assert new.filled_mw == sum((t[2] for t in expected), Decimal(0))
        assert new.state is (
            OrderState.FILLED
            if new.filled_mw == quantity
            else OrderState.PARTIALLY_FILLED
            if new.filled_mw
            else OrderState.ACCEPTED
        )
        for o in (new, *placed.counter_orders):
            self.orders[o.order_id] = o
        self.trades.extend(placed.trades)
        self.steps_since_restart += 1

    @precondition(lambda self: bool(self.orders))
    @rule(data=st.data())
    def cancel(self, data: st.DataObject) -> None:
        assert self.reference is not None
        order_id = data.draw(st.sampled_from(sorted(self.orders)), label="order_id")
        ref = self.reference.orders[order_id]
        if ref.open:
            cancelled = self._engine().cancel_order(order_id=order_id)
            assert cancelled.state is OrderState.CANCELLED
            assert cancelled.filled_mw == ref.filled
            ref.cancelled = True
            self.orders[order_id] = cancelled
        else:
            with pytest.raises(OrderNotOpenError):
                self._engine().cancel_order(order_id=order_id)

    # Reopening costs ~20 ms (a new engine compiles every statement again): not every step.
    @precondition(lambda self: self.steps_since_restart >= 4)
    @rule()
    def restart(self) -> None:
        """Close everything, reopen the store, build a new engine: nothing may change."""
        self.steps_since_restart = 0
        before = self._books()
        exchange = self._engine()
        self.store.close()
        self.store = self._open_store()
        self.exchange = Exchange(
            store=self.store,
            markets=MarketRegistry.default(),
            clock=self.clock,
            pricing=exchange.pricing,
        )
        assert self._books() == before
        assert self.store.list_trades() == self.trades
        stored = {o.order_id: o for o in self.store.list_orders()}
        assert stored == self.orders

    def _books(self) -> dict[BookKey, tuple[tuple[BookEntry, ...], tuple[BookEntry, ...]]]:
        engine = self._engine()
        return {
            key: (snap.bids, snap.asks)
            for key in engine.book_keys()
            for snap in [engine.book(market=key.market, delivery=key.delivery)]
        }

    @invariant()
    def books_are_never_crossed_and_match_the_reference(self) -> None:
        if self.exchange is None or self.reference is None:
            return
        for key, delivery in enumerate(DELIVERIES):
            snapshot = self.exchange.book(market=MARKET, delivery=delivery)
            assert not snapshot.is_crossed
            for entries, side in ((snapshot.bids, Side.BUY), (snapshot.asks, Side.SELL)):
                got = [(e.order_id, e.price_eur_per_mwh, e.remaining_mw) for e in entries]
                assert got == self.reference.book(key, side)

    @invariant()
    def fills_are_bounded_and_quantity_is_conserved(self) -> None:
        traded: dict[int, Decimal] = {}
        for t in self.trades:
            assert t.quantity_mw > 0
            traded[t.buy_order_id] = traded.get(t.buy_order_id, Decimal(0)) + t.quantity_mw
            traded[t.sell_order_id] = traded.get(t.sell_order_id, Decimal(0)) + t.quantity_mw
        for o in self.orders.values():
            assert 0 <= o.filled_mw <= o.quantity_mw
            assert o.filled_mw == traded.get(o.order_id, Decimal(0))
        total = sum((t.quantity_mw for t in self.trades), Decimal(0))
        for side in Side:
            assert (
                sum((o.filled_mw for o in self.orders.values() if o.side is side), Decimal(0))
                == total
            )
        assert len({t.trade_id for t in self.trades}) == len(self.trades)

    def teardown(self) -> None:
        self.store.close()
        shutil.rmtree(self.tmp, ignore_errors=True)


class MemoryExchangeMachine(ExchangeMachine):
    """The same rules on the in-memory store (a restart is a new engine on the same object)."""

    store_kind = "memory"

    def _open_store(self) -> OrderStore:
        if getattr(self, "memory", None) is None:
            self.memory = MemoryOrderStore()
        return self.memory


MACHINE_SETTINGS = settings(
    max_examples=25,
    stateful_step_count=30,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)

TestExchangeOnSqlite = ExchangeMachine.TestCase
TestExchangeOnSqlite.settings = MACHINE_SETTINGS
TestExchangeInMemory = MemoryExchangeMachine.TestCase
TestExchangeInMemory.settings = settings(MACHINE_SETTINGS, max_examples=80, stateful_step_count=40)
