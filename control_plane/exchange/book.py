"""The in-memory order book of one (market, delivery period): price-time priority, pure.

No I/O, no clock, no locking: the service owns the books and serialises access to them.

Matching is two-phase so that a failed commit leaves the book as it was: `plan` walks the
opposite side best-first and returns the fills an incoming order would make, changing nothing;
the service builds the trades, commits them with the order, and only then calls `apply` with
the orders in their new state.

Structure, per side: the price levels' sort keys in a list kept sorted with `bisect`, best level
last (bids by price, asks by negated price), and per level an `OrderedDict` order id -> `Order`
in arrival order (order ids grow with time, so arrival order is time priority, also after a
rebuild from the store). Costs, for L price levels and n orders: the best level O(1); a new
level O(log L) to find its place plus a pointer `memmove` to insert; adding to an existing
level, a fill, a cancel O(1); exhausting the best level O(1) (it is the list's tail).

Why not `heapq`: the plan has to walk the levels best-first without removing them, and a heap
can only be walked in order by popping it. Why not `sortedcontainers.SortedList`: it is a list
of bisect-sorted lists with a load factor of 1 000, so for the at most a few hundred price
levels of a quarter-hour book it *is* one bisect-sorted list; the structure is the same and the
plane gains no dependency.
"""

from __future__ import annotations

import bisect
from collections import OrderedDict
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from decimal import Decimal

from control_plane.exchange.models import (
    TRADE_PRICE_STEP_EUR_PER_MWH,
    BookKey,
    Order,
    PricingRule,
    Side,
)

__all__ = ["BookEntry", "BookSnapshot", "Fill", "OrderBook", "trade_price"]


@dataclass(frozen=True, slots=True)
class Fill:
    """One planned match of an incoming order against a resting one."""

    resting: Order
    quantity_mw: Decimal
    price_eur_per_mwh: Decimal


@dataclass(frozen=True, slots=True)
class BookEntry:
    """A resting order as the book holds it."""

    order_id: int
    price_eur_per_mwh: Decimal
    remaining_mw: Decimal


@dataclass(frozen=True, slots=True)
class BookSnapshot:
    """Both sides in priority order (best price first, then oldest first)."""

    key: BookKey
    bids: tuple[BookEntry, ...]
    asks: tuple[BookEntry, ...]

    @property
    def best_bid_eur_per_mwh(self) -> Decimal | None:
        return self.bids[0].price_eur_per_mwh if self.bids else None

    @property
    def best_ask_eur_per_mwh(self) -> Decimal | None:
        return self.asks[0].price_eur_per_mwh if self.asks else None

    @property
    def is_crossed(self) -> bool:
        """True if a bid meets an ask: matching should have traded them."""
        bid, ask = self.best_bid_eur_per_mwh, self.best_ask_eur_per_mwh
        return bid is not None and ask is not None and bid >= ask


def trade_price(*, buy: Order, sell: Order, resting: Order, rule: PricingRule) -> Decimal:
    """The price of a match between `buy` and `sell` under `rule` (DESIGN 6)."""
    if rule is PricingRule.MIDPOINT:
        mean = (buy.limit_price_eur_per_mwh + sell.limit_price_eur_per_mwh) / 2
        return mean.quantize(TRADE_PRICE_STEP_EUR_PER_MWH)
    return resting.limit_price_eur_per_mwh.quantize(TRADE_PRICE_STEP_EUR_PER_MWH)


def _crosses(incoming: Order, resting_price: Decimal) -> bool:
    if incoming.side is Side.BUY:
        return resting_price <= incoming.limit_price_eur_per_mwh
    return resting_price >= incoming.limit_price_eur_per_mwh


class _BookSide:
    """The price levels of one side, best last."""

    __slots__ = ("_keys", "_levels", "side")

    def __init__(self, side: Side) -> None:
        self.side = side
        self._keys: list[Decimal] = []
        self._levels: dict[Decimal, OrderedDict[int, Order]] = {}

    def _sort_key(self, price: Decimal) -> Decimal:
        return price if self.side is Side.BUY else -price

    def _price(self, sort_key: Decimal) -> Decimal:
        return sort_key if self.side is Side.BUY else -sort_key

    def levels(self) -> Iterator[tuple[Decimal, OrderedDict[int, Order]]]:
        """(price, orders in time priority), best level first."""
        for sort_key in reversed(self._keys):
            price = self._price(sort_key)
            yield price, self._levels[price]

    def best_price(self) -> Decimal | None:
        return self._price(self._keys[-1]) if self._keys else None

    def add(self, order: Order) -> None:
        price = order.limit_price_eur_per_mwh
        level = self._levels.get(price)
        if level is None:
            level = self._levels[price] = OrderedDict()
            bisect.insort(self._keys, self._sort_key(price))
        level[order.order_id] = order

    def replace(self, order: Order) -> None:
        """Store the order's new state; it keeps its place in the queue."""
        self._levels[order.limit_price_eur_per_mwh][order.order_id] = order

    def remove(self, order: Order) -> None:
        price = order.limit_price_eur_per_mwh
        level = self._levels[price]
        del level[order.order_id]
        if not level:
            del self._levels[price]
            sort_key = self._sort_key(price)
            if self._keys[-1] == sort_key:  # the usual case: the best level was used up
                self._keys.pop()
            else:
                del self._keys[bisect.bisect_left(self._keys, sort_key)]


class OrderBook:
    """Open orders of one market and delivery period, matched by price, then time."""

    __slots__ = ("_asks", "_bids", "_orders", "key")

    def __init__(self, key: BookKey) -> None:
        self.key = key
        self._bids = _BookSide(Side.BUY)
        self._asks = _BookSide(Side.SELL)
        self._orders: dict[int, Order] = {}

    def _side(self, side: Side) -> _BookSide:
        return self._bids if side is Side.BUY else self._asks

    def __len__(self) -> int:
        return len(self._orders)

    def __contains__(self, order_id: object) -> bool:
        return order_id in self._orders

    def get(self, order_id: int) -> Order | None:
        return self._orders.get(order_id)

    def orders(self) -> Iterator[Order]:
        """Every resting order, in no particular order."""
        return iter(self._orders.values())

    @property
    def best_bid_eur_per_mwh(self) -> Decimal | None:
        return self._bids.best_price()

    @property
    def best_ask_eur_per_mwh(self) -> Decimal | None:
        return self._asks.best_price()

    def plan(self, incoming: Order, *, pricing: PricingRule) -> list[Fill]:
        """The fills `incoming` would make against the opposite side, best first; no change.

        For a BUY: asks with price <= its limit, lowest price first, oldest first within a
        price; for a SELL: bids with price >= its limit, highest first. Each fill is
        min(what is left of the incoming order, what the resting order has left).
        """
        self._check_key(incoming)
        remaining = incoming.remaining_mw
        fills: list[Fill] = []
        if remaining <= 0:
            return fills
        for price, level in self._side(incoming.side.opposite).levels():
            if not _crosses(incoming, price):
                break
            for resting in level.values():
                quantity = min(remaining, resting.remaining_mw)
                buy, sell = (
                    (incoming, resting) if incoming.side is Side.BUY else (resting, incoming)
                )
                fills.append(
                    Fill(
                        resting=resting,
                        quantity_mw=quantity,
                        price_eur_per_mwh=trade_price(
                            buy=buy, sell=sell, resting=resting, rule=pricing
                        ),
                    )
                )
                remaining -= quantity
                if remaining == 0:
                    return fills
        return fills

    def apply(self, *, incoming: Order, counter_orders: Iterable[Order]) -> None:
        """Take in a committed placement: resting orders' new states, then the incoming order.

        A counter order that is no longer open leaves the book; a partly filled one keeps its
        place. The incoming order rests if it is still open.
        """
        for order in counter_orders:
            current = self._orders.get(order.order_id)
            if current is None:
                raise KeyError(f"order {order.order_id} is not in book {self.key}")
            if order.is_open:
                self._orders[order.order_id] = order
                self._side(order.side).replace(order)
            else:
                self.remove(order.order_id)
        if incoming.is_open:
            self.add(incoming)

    def add(self, order: Order) -> None:
        """Rest an open order in the book (a new remainder, or a rebuild from the store)."""
        self._check_key(order)
        if not order.is_open or order.remaining_mw <= 0:
            raise ValueError(f"order {order.order_id} is {order.state}, only open orders rest")
        if order.order_id in self._orders:
            raise ValueError(f"order {order.order_id} is already in book {self.key}")
        self._orders[order.order_id] = order
        self._side(order.side).add(order)

    def remove(self, order_id: int) -> Order:
        """Take an order out of the book (cancel, or filled); KeyError if it is not there."""
        order = self._orders.pop(order_id)
        self._side(order.side).remove(order)
        return order

    def snapshot(self) -> BookSnapshot:
        """Both sides in priority order, for display and for comparing books."""

        def entries(side: _BookSide) -> tuple[BookEntry, ...]:
            return tuple(
                BookEntry(order.order_id, price, order.remaining_mw)
                for price, level in side.levels()
                for order in level.values()
            )

        return BookSnapshot(self.key, entries(self._bids), entries(self._asks))

    def _check_key(self, order: Order) -> None:
        if order.market != self.key.market or order.delivery != self.key.delivery:
            raise ValueError(f"order {order.order_id} belongs to {order.book_key}, not {self.key}")
