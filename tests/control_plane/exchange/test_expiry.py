"""Resting orders expire at gate closure: the sweep, lazy expiry, failures, restart, the store."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import replace
from datetime import timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from prometheus_client import CollectorRegistry

from control_plane.exchange.errors import (
    InvalidDeliveryError,
    OrderExpiredError,
    OrderNotOpenError,
    StoreConflictError,
    StoreError,
)
from control_plane.exchange.metrics import ExchangeMetrics
from control_plane.exchange.models import (
    DeliveryPeriod,
    Market,
    MarketRegistry,
    Order,
    OrderState,
    Side,
)
from control_plane.exchange.service import Exchange
from control_plane.exchange.store import (
    MIGRATIONS,
    MemoryOrderStore,
    OrderStore,
    SqlOrderStore,
    create_engine,
    migrate,
    orders,
    trades,
)

from .conftest import DELIVERY, MARKET, T0, SteppedClock, order

GATE = timedelta(minutes=5)
CLOSES = DELIVERY.start - GATE
"""09:55 UTC: trading in DELIVERY stops."""
LATER = DeliveryPeriod.quarter(DELIVERY.start + timedelta(minutes=15))
BLOCK = DeliveryPeriod.hour_block(DELIVERY.start)


def _markets() -> MarketRegistry:
    return MarketRegistry([Market(MARKET, gate_closure=GATE), Market("epex_de_lu")])


def _exchange(store: OrderStore, clock: SteppedClock, **kwargs: Any) -> Exchange:
    return Exchange(store=store, markets=_markets(), clock=clock, **kwargs)


def _expired_count(registry: CollectorRegistry) -> float | None:
    return registry.get_sample_value(
        "bess_plane_orders_total", {"market": MARKET, "outcome": "expired"}
    )


def test_the_sweep_expires_resting_orders_at_gate_closure_keeping_what_they_filled(
    clock: SteppedClock,
) -> None:
    registry = CollectorRegistry()
    store = MemoryOrderStore()
    exchange = _exchange(store, clock, metrics=ExchangeMetrics(registry))
    sell = exchange.place_order(order=order(Side.SELL, "2", "50")).order
    exchange.place_order(order=order(Side.BUY, "0.5", "60", portfolio="pf-b"))
    bid = exchange.place_order(order=order(Side.BUY, "1", "10")).order
    block = exchange.place_order(order=order(Side.SELL, "1", "70", delivery=BLOCK)).order
    later = exchange.place_order(order=order(Side.BUY, "1", "45", delivery=LATER)).order
    other_market = exchange.place_order(order=order(Side.BUY, "1", "45", market="epex_de_lu"))
    exposure_before = exchange.exposure(portfolio="pf-a")

    clock.now = CLOSES - timedelta(microseconds=1)
    assert exchange.expire_due() == []
    assert len(exchange.open_orders()) == 5

    clock.now = CLOSES
    expired = exchange.expire_due()
    assert [o.order_id for o in expired] == [sell.order_id, bid.order_id, block.order_id]
    assert {o.state for o in expired} == {OrderState.EXPIRED}
    assert {o.updated_at for o in expired} == {CLOSES}
    partly = expired[0]
    assert (partly.filled_mw, partly.quantity_mw) == (Decimal("0.500"), Decimal("2.000"))
    assert store.get_order(sell.order_id) == partly
    # the books of the closed products are gone; the later quarter and the market without a
    # gate closure (its product trades until delivery starts) still rest
    assert exchange.book(market=MARKET, delivery=DELIVERY).bids == ()
    assert exchange.top_of_book(market=MARKET, delivery=BLOCK) == (None, None)
    assert [o.order_id for o in exchange.open_orders()] == [
        later.order_id,
        other_market.order.order_id,
    ]
    assert len(exchange.trades()) == 1  # what was traded stays traded
    assert exchange.exposure(portfolio="pf-a") == exposure_before
    assert _expired_count(registry) == 3
    # a crossing order for the closed product cannot be placed anyway
    with pytest.raises(InvalidDeliveryError, match="gate closure"):
        exchange.place_order(order=order(Side.BUY, "1", "4000"))
    # nothing is due twice
    assert exchange.expire_due() == []
    assert _expired_count(registry) == 3
    # `now` may be passed in: the market without gate closure expires at delivery start
    assert [o.order_id for o in exchange.expire_due(now=DELIVERY.start)] == [
        other_market.order.order_id
    ]


def test_expire_due_refuses_a_naive_now(clock: SteppedClock) -> None:
    exchange = _exchange(MemoryOrderStore(), clock)
    with pytest.raises(ValueError, match="timezone-aware"):
        exchange.expire_due(now=CLOSES.replace(tzinfo=None))


LAZY_CALLS: dict[str, Callable[[Exchange], object]] = {
    "place_order": lambda x: x.place_order(order=order(Side.BUY, "1", "1", delivery=LATER)),
    "cancel_order": lambda x: x.cancel_order(order_id=2),
    "get_order": lambda x: x.get_order(order_id=1),
    "book": lambda x: x.book(market=MARKET, delivery=LATER),
    "top_of_book": lambda x: x.top_of_book(market=MARKET, delivery=LATER),
    "book_keys": lambda x: x.book_keys(),
    "open_orders": lambda x: x.open_orders(),
    "orders": lambda x: x.orders(),
    "site_orders": lambda x: x.site_orders(
        site="s", delivery_from=DELIVERY.start, delivery_to=LATER.end
    ),
}


@pytest.mark.parametrize("call", sorted(LAZY_CALLS))
def test_every_entry_point_expires_what_is_due_before_it_answers(
    call: str, clock: SteppedClock
) -> None:
    store = MemoryOrderStore()
    exchange = _exchange(store, clock)
    exchange.place_order(order=order(Side.SELL, "1", "50"))  # 1: expires
    exchange.place_order(order=order(Side.SELL, "1", "50", delivery=LATER))  # 2: still open
    clock.now = CLOSES
    LAZY_CALLS[call](exchange)
    stored = store.get_order(1)
    assert stored is not None
    assert stored.state is OrderState.EXPIRED
    # the sweep still reports it, once
    assert [o.order_id for o in exchange.expire_due()] == [1]
    assert exchange.expire_due() == []


def test_reads_never_show_an_order_past_gate_closure_and_a_cancel_says_it_expired(
    clock: SteppedClock,
) -> None:
    exchange = _exchange(MemoryOrderStore(), clock)
    resting = exchange.place_order(order=order(Side.SELL, "1", "50", site="s")).order
    clock.now = CLOSES + timedelta(minutes=1)
    assert exchange.open_orders() == []
    assert exchange.book_keys() == []
    assert exchange.orders(states=[OrderState.ACCEPTED]) == []
    assert [o.order_id for o in exchange.orders(states=[OrderState.EXPIRED])] == [1]
    assert exchange.get_order(order_id=1).state is OrderState.EXPIRED
    # an unfilled expired order no longer commits its site (SoC feasibility)
    assert exchange.site_orders(site="s", delivery_from=T0, delivery_to=LATER.end) == []
    with pytest.raises(OrderExpiredError) as caught:
        exchange.cancel_order(order_id=resting.order_id)
    assert isinstance(caught.value, OrderNotOpenError)
    assert str(caught.value).startswith(
        "order 1 expired at gate closure 2025-11-03T09:55:00+00:00 of delivery "
        "2025-11-03T10:00Z/PT15M"
    )


def test_a_partly_filled_expired_order_still_commits_its_site_with_the_filled_part(
    clock: SteppedClock,
) -> None:
    exchange = _exchange(MemoryOrderStore(), clock)
    exchange.place_order(order=order(Side.SELL, "2", "50", site="s"))
    exchange.place_order(order=order(Side.BUY, "0.5", "50"))
    clock.now = CLOSES
    committed = exchange.site_orders(site="s", delivery_from=T0, delivery_to=LATER.end)
    assert [(o.state, o.filled_mw) for o in committed] == [(OrderState.EXPIRED, Decimal("0.500"))]


class FlakyExpiryStore(MemoryOrderStore):
    """Fails the next `fail` expiry commits."""

    def __init__(self) -> None:
        super().__init__()
        self.fail = 0

    def commit_expiry(self, expired: Sequence[Order]) -> None:
        if self.fail:
            self.fail -= 1
            raise StoreError("the database went away")
        super().commit_expiry(expired)


def test_a_failed_expiry_changes_nothing_and_the_next_call_expires(
    clock: SteppedClock,
) -> None:
    registry = CollectorRegistry()
    store = FlakyExpiryStore()
    exchange = _exchange(store, clock, metrics=ExchangeMetrics(registry))
    exchange.place_order(order=order(Side.SELL, "1", "50"))
    clock.now = CLOSES
    store.fail = 1
    with pytest.raises(StoreError, match="went away"):
        exchange.expire_due()
    stored = store.get_order(1)
    assert stored is not None
    assert stored.state is OrderState.ACCEPTED
    assert _expired_count(registry) is None
    assert [o.order_id for o in exchange.expire_due()] == [1]
    assert _expired_count(registry) == 1


def test_an_order_another_writer_changed_is_a_conflict_and_the_engine_reloads(
    clock: SteppedClock,
) -> None:
    store = MemoryOrderStore()
    exchange = _exchange(store, clock)
    exchange.place_order(order=order(Side.SELL, "1", "50"))
    exchange.place_order(order=order(Side.SELL, "1", "51"))
    _exchange(store, clock).cancel_order(order_id=2)  # a misdeployed second engine
    clock.now = CLOSES
    with pytest.raises(StoreConflictError):
        exchange.expire_due()
    assert {o.order_id: o.state for o in store.list_orders()} == {
        1: OrderState.ACCEPTED,  # one transaction: the other order did not expire either
        2: OrderState.CANCELLED,
    }
    assert [o.order_id for o in exchange.expire_due()] == [1]  # reloaded from the store


def test_a_restart_does_not_resurrect_orders_past_gate_closure(
    sql_store: SqlOrderStore, clock: SteppedClock
) -> None:
    first = _exchange(sql_store, clock)
    first.place_order(order=order(Side.SELL, "2", "50"))
    first.place_order(order=order(Side.BUY, "0.5", "50"))
    first.place_order(order=order(Side.SELL, "1", "50", delivery=LATER))
    clock.now = CLOSES  # the plane stops before any sweep ran
    second = _exchange(sql_store, clock)
    assert [o.order_id for o in second.open_orders()] == [3]
    stored = sql_store.get_order(1)
    assert stored is not None
    assert (stored.state, stored.filled_mw) == (OrderState.EXPIRED, Decimal("0.500"))
    assert [o.order_id for o in second.expire_due()] == [1]
    third = _exchange(sql_store, clock)  # and once expired, a reload leaves them out
    assert [o.order_id for o in third.open_orders()] == [3]
    assert third.expire_due() == []
    assert [o.order_id for o in sql_store.load_open_orders()] == [3]


@pytest.fixture(params=["memory", "sqlite", "postgresql"])
def any_store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[OrderStore]:
    """The memory store and the SQL store on both backends: one contract."""
    if request.param == "memory":
        yield MemoryOrderStore()
        return
    url = (
        f"sqlite:///{tmp_path / 'exchange.sqlite3'}"
        if request.param == "sqlite"
        else str(request.getfixturevalue("postgres_schema_dsn"))
    )
    with SqlOrderStore.open(url) as store:
        yield store


def test_commit_expiry_is_conditional_and_atomic(
    any_store: OrderStore, clock: SteppedClock
) -> None:
    exchange = _exchange(any_store, clock)
    one = exchange.place_order(order=order(Side.SELL, "1", "50")).order
    two = exchange.place_order(order=order(Side.SELL, "1", "51")).order
    exchange.cancel_order(order_id=two.order_id)
    late = T0 + timedelta(hours=1)
    expire = [replace(o, state=OrderState.EXPIRED, updated_at=late) for o in (one, two)]
    with pytest.raises(StoreConflictError):
        any_store.commit_expiry(expire)
    assert [o.state for o in any_store.list_orders()] == [
        OrderState.CANCELLED,
        OrderState.ACCEPTED,
    ]
    any_store.commit_expiry([])
    any_store.commit_expiry(expire[:1])
    assert any_store.get_order(1) == expire[0]
    assert any_store.load_open_orders() == []
    assert any_store.list_orders(states=[OrderState.EXPIRED]) == expire[:1]


def test_migration_4_allows_expired_and_keeps_rows_references_and_indexes(
    store_url: str, clock: SteppedClock
) -> None:
    with SqlOrderStore.open(store_url, migrations=MIGRATIONS[:3]) as old:
        exchange = _exchange(old, clock)
        exchange.place_order(order=order(Side.SELL, "2", "50"))
        exchange.place_order(order=order(Side.BUY, "0.5", "50"))
        with pytest.raises(sa.exc.IntegrityError), old.engine.begin() as conn:
            conn.execute(orders.update().values(state="EXPIRED"))
        before = old.list_orders(), old.list_trades()
    engine = create_engine(store_url)
    try:
        inspector = sa.inspect(engine)
        indexes_before = {
            t: {ix["name"] for ix in inspector.get_indexes(t)} for t in (orders.name, trades.name)
        }
        assert migrate(engine) == [4]
        inspector = sa.inspect(engine)
        assert {
            t: {ix["name"] for ix in inspector.get_indexes(t)} for t in (orders.name, trades.name)
        } == indexes_before
        assert {fk["referred_table"] for fk in inspector.get_foreign_keys(trades.name)} == {
            orders.name
        }
        with engine.begin() as conn:  # the references still hold
            conn.execute(orders.update().where(orders.c.order_id == 1).values(state="EXPIRED"))
        with pytest.raises(sa.exc.IntegrityError), engine.begin() as conn:
            conn.execute(trades.update().values(buy_order_id=99))
        with pytest.raises(sa.exc.IntegrityError), engine.begin() as conn:
            conn.execute(orders.update().values(state="LOST"))
    finally:
        engine.dispose()
    with SqlOrderStore.open(store_url) as upgraded:
        assert upgraded.list_trades() == before[1]
        after = upgraded.list_orders()
        assert [o.state for o in after] == [OrderState.FILLED, OrderState.EXPIRED]
        assert after[1] == replace(before[0][1], state=OrderState.EXPIRED)
