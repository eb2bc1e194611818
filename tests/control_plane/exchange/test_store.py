"""The durable store, on SQLite and on PostgreSQL: round trips, restart, atomicity, migrations."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Any

import pytest
import sqlalchemy as sa

from control_plane import db
from control_plane.exchange.errors import StoreConflictError, StoreError
from control_plane.exchange.models import DeliveryPeriod, OrderState, PlacedOrder, Side
from control_plane.exchange.service import Exchange
from control_plane.exchange.store import (
    MIGRATIONS,
    MemoryOrderStore,
    Migration,
    SqlOrderStore,
    create_engine,
    migrate,
    orders,
    trades,
)

from .conftest import DELIVERY, MARKET, T0, SteppedClock, order

MakeExchange = Callable[..., Exchange]
BLOCK = DeliveryPeriod.hour_block(DELIVERY.start + timedelta(hours=1))


def _scenario(exchange: Exchange, clock: SteppedClock) -> list[PlacedOrder]:
    """Orders that exercise every column: partial fills, a block, a site, a rejection."""
    placed = []
    for new in (
        order(Side.SELL, "2", "49.99", portfolio="mkt", counterparty="cp-a"),
        order(Side.SELL, "1.5", "50", portfolio="mkt", site="site-7"),
        order(Side.BUY, "0.75", "-12.34", portfolio="bess"),
        order(Side.BUY, "2.5", "50", portfolio="bess"),  # 2 @ 49.995, 0.5 @ 50
        order(Side.SELL, "3", "120", portfolio="bess", delivery=BLOCK),
        order(Side.BUY, "1", "4000", portfolio="mkt", delivery=BLOCK),  # 1 @ 2060
        order(Side.BUY, "9999", "50", portfolio="rejected-by-check"),
    ):
        placed.append(exchange.place_order(order=new))
        clock.advance(timedelta(seconds=1))
    return placed


def _reject_huge(candidate: Any) -> str | None:
    return "quantity above the site's 5 MW" if candidate.quantity_mw > 5 else None


def test_everything_round_trips_and_a_restart_rebuilds_the_books(
    sql_store: SqlOrderStore, store_url: str, clock: SteppedClock, make_exchange: MakeExchange
) -> None:
    exchange = make_exchange(sql_store, pre_trade_checks=[_reject_huge])
    placed = _scenario(exchange, clock)
    assert [len(p.trades) for p in placed] == [0, 0, 0, 2, 0, 1, 0]
    assert placed[3].trades[0].price_eur_per_mwh == Decimal("49.995")
    assert placed[-1].order.state is OrderState.REJECTED
    books = {
        key: exchange.book(market=key.market, delivery=key.delivery) for key in exchange.book_keys()
    }
    current = {
        o.order_id: exchange.get_order(order_id=o.order_id) for p in placed for o in [p.order]
    }
    trades = [t for p in placed for t in p.trades]

    sql_store.close()
    with SqlOrderStore.open(store_url) as reopened:
        assert [t for t in reopened.list_trades()] == trades
        for order_id, expected in current.items():
            assert reopened.get_order(order_id) == expected
        restarted = make_exchange(reopened)
        assert restarted.book_keys() == sorted(books)
        for key, snapshot in books.items():
            assert restarted.book(market=key.market, delivery=key.delivery) == snapshot
        assert [o.order_id for o in restarted.open_orders()] == [
            o.order_id for o in exchange.open_orders()
        ]
        # ids continue after the restart, time priority kept: the older 50 ask fills first
        nxt = restarted.place_order(order=order(Side.BUY, "1", "50", portfolio="bess"))
        assert nxt.order.order_id == len(placed) + 1
        assert nxt.trades[0].trade_id == len(trades) + 1
        assert nxt.trades[0].sell_order_id == placed[1].order.order_id


def test_queries(
    sql_store: SqlOrderStore, clock: SteppedClock, make_exchange: MakeExchange
) -> None:
    exchange = make_exchange(sql_store, pre_trade_checks=[_reject_huge])
    placed = _scenario(exchange, clock)
    ids = [p.order.order_id for p in placed]
    assert [o.order_id for o in sql_store.list_orders()] == ids[::-1]
    assert [o.order_id for o in sql_store.list_orders(limit=2)] == ids[:-3:-1]
    assert [o.order_id for o in sql_store.list_orders(portfolio="bess")] == [5, 4, 3]
    assert [o.order_id for o in sql_store.list_orders(states=[OrderState.REJECTED])] == [7]
    open_ids = [o.order_id for o in sql_store.load_open_orders()]
    assert open_ids == [o.order_id for o in exchange.open_orders()] == [2, 3, 5]
    assert [t.trade_id for t in sql_store.list_trades(portfolio="bess")] == [1, 2, 3]
    assert [t.trade_id for t in sql_store.list_trades(portfolio="mkt", limit=2)] == [2, 3]
    assert [t.trade_id for t in sql_store.list_trades(delivery=BLOCK)] == [3]
    assert sql_store.list_trades(market="epex_de_lu") == []
    assert sql_store.last_ids() == (7, 3)
    assert sql_store.get_order(99) is None
    exposure = exchange.exposure(portfolio="bess")
    assert exposure.realised_pnl_eur == Decimal(0)
    assert exposure.net_energy_mwh == Decimal("0.625") - Decimal(1)  # 2.5 MW x 1/4 h, 1 MW x 1 h


@contextmanager
def _fail_on(engine: sa.Engine, prefix: str) -> Iterator[list[str]]:
    """Raise inside the transaction when a statement starting with `prefix` is sent."""
    seen: list[str] = []

    def before(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        words = statement.split()
        if words[0] in ("INSERT", "UPDATE"):
            seen.append(f"{words[0]} {words[2] if words[0] == 'INSERT' else words[1]}")
        if statement.startswith(prefix):
            raise RuntimeError(f"injected failure before: {prefix}")

    sa.event.listen(engine, "before_cursor_execute", before)
    try:
        yield seen
    finally:
        sa.event.remove(engine, "before_cursor_execute", before)


def test_failure_after_the_trade_insert_rolls_back_the_whole_placement(
    sql_store: SqlOrderStore, clock: SteppedClock, make_exchange: MakeExchange
) -> None:
    exchange = make_exchange(sql_store)
    first = exchange.place_order(order=order(Side.SELL, "1", "50")).order
    second = exchange.place_order(order=order(Side.SELL, "2", "51")).order
    book_before = exchange.book(market=MARKET, delivery=DELIVERY)
    with (
        _fail_on(sql_store.engine, "UPDATE exchange_orders") as seen,
        pytest.raises(StoreError, match="injected failure"),
    ):
        exchange.place_order(order=order(Side.BUY, "2", "55"))
    assert seen[:2] == [
        "INSERT exchange_orders",
        "INSERT exchange_trades",
    ]  # the trades were sent, then it failed
    assert sql_store.list_trades() == []
    assert sql_store.last_ids() == (2, 0)
    assert sql_store.get_order(first.order_id) == first
    assert sql_store.get_order(second.order_id) == second
    assert exchange.book(market=MARKET, delivery=DELIVERY) == book_before
    # the engine carries on: same ids, the same match
    placed = exchange.place_order(order=order(Side.BUY, "2", "55"))
    assert placed.order.order_id == 3
    assert [(t.trade_id, t.sell_order_id, t.quantity_mw) for t in placed.trades] == [
        (1, 1, Decimal(1)),
        (2, 2, Decimal(1)),
    ]
    assert len(sql_store.list_trades()) == 2


def test_second_writer_is_detected_not_double_filled(
    sql_store: SqlOrderStore, make_exchange: MakeExchange
) -> None:
    engine_a = make_exchange(sql_store)
    resting = engine_a.place_order(order=order(Side.SELL, "1", "50")).order
    engine_b = make_exchange(sql_store)  # a misdeployed second engine on the same store
    engine_b.cancel_order(order_id=resting.order_id)
    with pytest.raises(StoreConflictError, match="single writer"):
        engine_a.place_order(order=order(Side.BUY, "1", "50"))
    assert sql_store.list_trades() == []
    stored = sql_store.get_order(resting.order_id)
    assert stored is not None
    assert stored.state is OrderState.CANCELLED
    # A reloads from the store and sees the cancel: the buy now rests
    placed = engine_a.place_order(order=order(Side.BUY, "1", "50"))
    assert placed.trades == ()
    assert placed.order.order_id == 2


def test_database_constraints_back_the_invariants(sql_store: SqlOrderStore) -> None:
    row = {
        "order_id": 1,
        "market": MARKET,
        "delivery_start": DELIVERY.start,
        "delivery_minutes": 15,
        "side": "BUY",
        "quantity_kw": 1000,
        "limit_price_meur_per_mwh": 50_000,
        "portfolio": "p",
        "counterparty": "c",
        "state": "ACCEPTED",
        "filled_kw": 1001,
        "created_at": T0,
        "updated_at": T0,
    }
    for bad in (
        {"filled_kw": 1001},
        {"side": "HOLD"},
        {"delivery_minutes": 30},
        {"quantity_kw": 0},
    ):
        with pytest.raises(sa.exc.IntegrityError), sql_store.engine.begin() as conn:
            conn.execute(orders.insert(), {**row, "filled_kw": 0, **bad})
    with pytest.raises(sa.exc.StatementError, match="naive"), sql_store.engine.begin() as conn:
        conn.execute(
            orders.insert(),
            {**row, "filled_kw": 0, "created_at": datetime(2025, 1, 1)},
        )


def test_migrations_run_once_and_upgrade_an_old_store(
    store_url: str, clock: SteppedClock, make_exchange: MakeExchange
) -> None:
    with SqlOrderStore.open(store_url, migrations=MIGRATIONS[:1]) as old:
        make_exchange(old).place_order(order=order(Side.SELL, "1", "50"))
    engine = create_engine(store_url)
    try:
        assert migrate(engine) == [2, 3, 4]
        assert migrate(engine) == []
        inspector = sa.inspect(engine)
        indexes = {ix["name"] for ix in inspector.get_indexes(orders.name)}
        assert {
            "ix_exchange_orders_state",
            "ix_exchange_orders_portfolio",
            "ix_exchange_orders_site",
        } <= indexes
        with engine.connect() as conn:
            versions = conn.scalars(
                sa.select(db.schema_migrations.c.version)
                .where(db.schema_migrations.c.service == "exchange")
                .order_by(db.schema_migrations.c.version)
            ).all()
        assert versions == [1, 2, 3, 4]
        # the schema the migrations built is the one the store's queries expect
        for table in (orders, trades):
            columns = {c["name"]: c for c in inspector.get_columns(table.name)}
            assert set(columns) == {c.name for c in table.columns}
            for column in table.columns:
                assert columns[column.name]["nullable"] == column.nullable, column.name
    finally:
        engine.dispose()
    with SqlOrderStore.open(store_url) as upgraded:
        assert [o.order_id for o in upgraded.load_open_orders()] == [1]


def test_newer_schema_is_refused(store_url: str) -> None:
    with SqlOrderStore.open(store_url) as store, store.engine.begin() as conn:
        conn.execute(
            db.schema_migrations.insert().values(
                service="exchange", version=99, name="from the future", applied_unix_ms=0
            )
        )
    with pytest.raises(StoreError, match="schema version 99"):
        SqlOrderStore.open(store_url)


def test_sqlite_runs_wal_with_full_sync_by_default(tmp_path: Any) -> None:
    url = f"sqlite:///{tmp_path / 'x.sqlite3'}"
    with SqlOrderStore.open(url) as store, store.engine.connect() as conn:
        assert conn.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
        assert conn.exec_driver_sql("PRAGMA synchronous").scalar() == 2  # FULL
        assert conn.exec_driver_sql("PRAGMA foreign_keys").scalar() == 1
    with SqlOrderStore.open(url, synchronous="NORMAL") as store, store.engine.connect() as conn:
        assert conn.exec_driver_sql("PRAGMA synchronous").scalar() == 1


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("sqlite://", "not :memory:"),
        ("sqlite:///:memory:", "not :memory:"),
        ("mysql://root@localhost/x", "unsupported database"),
        ("not a url", "not a database URL"),
        ("postgresql+psycopg://postgres@127.0.0.1:1/none", "failed"),
    ],
)
def test_unusable_urls_give_a_store_error(url: str, message: str) -> None:
    with pytest.raises(StoreError, match=message):
        SqlOrderStore.open(url)


def test_a_failing_migration_leaves_nothing_behind(store_url: str) -> None:
    def broken(conn: sa.Connection) -> None:
        conn.execute(sa.text("CREATE TABLE half_done (x INTEGER)"))
        conn.execute(sa.text("CREATE INDEX ix_half ON no_such_table (x)"))

    engine = create_engine(store_url)
    try:
        with pytest.raises(StoreError, match="migrating"):
            migrate(engine, [*MIGRATIONS, Migration(len(MIGRATIONS) + 1, "broken", broken)])
        # each migration is one transaction: the shipped ones stayed, nothing of the broken one
        inspector = sa.inspect(engine)
        assert not inspector.has_table("half_done")
        assert inspector.has_table(orders.name)
        assert migrate(engine) == []
    finally:
        engine.dispose()


def test_site_orders_are_the_committing_ones_of_the_window(
    sql_store: SqlOrderStore, clock: SteppedClock, make_exchange: MakeExchange
) -> None:
    exchange = make_exchange(sql_store)
    before = DeliveryPeriod.quarter(DELIVERY.start - timedelta(minutes=15))
    after = DeliveryPeriod.quarter(DELIVERY.end)
    block = DeliveryPeriod.hour_block(DELIVERY.start - timedelta(hours=1))  # 09:00-10:00
    placed = [
        exchange.place_order(order=new)
        for new in (
            order(Side.BUY, "1", "10", site="s1", delivery=before),  # 1 open
            order(Side.BUY, "1", "10", site="s2", delivery=before),  # 2 other site
            order(Side.BUY, "1", "10", site="s1", delivery=after),  # 3 after the window
            order(Side.SELL, "0.5", "5", site="s1"),  # 4 filled by 5
            order(Side.BUY, "0.5", "20", portfolio="mm"),  # 5 no site
            order(Side.SELL, "1", "900", site="s1"),  # 6 cancelled unfilled
            order(Side.SELL, "1", "100", site="s1", delivery=block),  # 7 block overlapping
        )
    ]
    exchange.cancel_order(order_id=placed[5].order.order_id)
    found = sql_store.site_orders(site="s1", delivery_from=before.start, delivery_to=DELIVERY.end)
    assert [o.order_id for o in found] == [1, 4, 7]
    assert found[1].filled_mw == Decimal("0.5")
    # the window's start is exclusive of a block that ended before it
    later = sql_store.site_orders(site="s1", delivery_from=DELIVERY.start, delivery_to=after.end)
    assert [o.order_id for o in later] == [3, 4]
    memory = MemoryOrderStore()
    replica = make_exchange(memory)
    for p in placed:
        replica.place_order(order=_as_new(p.order))
    replica.cancel_order(order_id=6)
    assert (
        memory.site_orders(site="s1", delivery_from=before.start, delivery_to=DELIVERY.end) == found
    )
    assert (
        exchange.site_orders(site="s1", delivery_from=before.start, delivery_to=DELIVERY.end)
        == found
    )


def _as_new(o: Any) -> Any:
    return order(
        o.side,
        o.quantity_mw,
        o.limit_price_eur_per_mwh,
        portfolio=o.portfolio,
        counterparty=o.counterparty,
        site=o.site,
        delivery=o.delivery,
    )


def test_order_and_trade_queries_filter_and_page(
    sql_store: SqlOrderStore, clock: SteppedClock, make_exchange: MakeExchange
) -> None:
    """The list filters of the HTTP API, on SQLite and PostgreSQL."""
    _check_queries(sql_store, make_exchange, clock)


def test_the_memory_store_filters_and_pages_alike(
    clock: SteppedClock, make_exchange: MakeExchange
) -> None:
    _check_queries(MemoryOrderStore(), make_exchange, clock)


def _check_queries(store: Any, make_exchange: MakeExchange, clock: SteppedClock) -> None:
    exchange = make_exchange(store)
    later = DeliveryPeriod.quarter(DELIVERY.start + timedelta(minutes=15))
    exchange.place_order(order=order(Side.SELL, "1", "40", portfolio="s"))  # 1 FILLED
    exchange.place_order(order=order(Side.BUY, "1", "40"))  # 2 FILLED, trade 1
    clock.advance(timedelta(minutes=1))
    exchange.place_order(order=order(Side.SELL, "1", "40", portfolio="s", delivery=later))  # 3
    exchange.place_order(order=order(Side.BUY, "1", "41", delivery=later))  # 4, trade 2
    exchange.place_order(order=order(Side.BUY, "1", "30", market="epex_de_lu"))  # 5 open
    exchange.cancel_order(order_id=5)
    exchange.place_order(order=order(Side.BUY, "2", "30"))  # 6 open

    def ids(**kwargs: Any) -> list[int]:
        return [o.order_id for o in store.list_orders(**kwargs)]

    assert ids() == [6, 5, 4, 3, 2, 1]
    assert ids(states=[OrderState.ACCEPTED, OrderState.PARTIALLY_FILLED]) == [6]
    assert ids(market="epex_de_lu") == [5]
    assert ids(side=Side.SELL) == [3, 1]
    assert ids(delivery_from=later.start) == [4, 3]
    assert ids(delivery_to=later.start) == [6, 5, 2, 1]
    assert ids(before_id=5, limit=2) == [4, 3]
    assert ids(portfolio="s", before_id=3) == [1]

    def trade_ids(**kwargs: Any) -> list[int]:
        return [t.trade_id for t in store.list_trades(**kwargs)]

    assert trade_ids() == [1, 2]
    assert trade_ids(since=T0 + timedelta(seconds=30)) == [2]
    assert trade_ids(delivery_from=later.start) == [2]
    assert trade_ids(delivery_to=later.start) == [1]
    assert trade_ids(before_id=2) == [1]
    assert trade_ids(limit=1) == [2]
    assert trade_ids(portfolio="s", before_id=3, limit=1) == [2]
    cancelled = [OrderState.CANCELLED]
    assert exchange.orders(states=cancelled) == store.list_orders(states=cancelled)
    assert exchange.now() == clock.now
