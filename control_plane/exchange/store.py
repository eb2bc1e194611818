"""Durable orders and trades: SQLAlchemy Core on SQLite (WAL, embedded default) or PostgreSQL.

One transaction per placement: the incoming order, the trades it made and the resting orders'
new fills commit together or not at all, so after a crash the store holds every acknowledged
placement whole and nothing of an unacknowledged one; `load_open_orders()` then rebuilds the
books exactly (time priority is the order id, which the store keeps).

Each update of a resting order is conditional on the state the engine believes it has
(`filled_kw` before the trade, still open); a row in another state means a second writer and
fails the whole transaction with `StoreConflictError`. The engine is meant to be the single
writer (DESIGN.md scale-out: "the matching engine as a single writer per market"); the check
turns a deployment mistake into a refused placement instead of a double fill.

Numbers are integers on disk, so both backends round-trip them exactly: quantities in kW
(0.001 MW), prices in milli-euro per MWh (0.001 EUR/MWh). Times are UTC.

Tables `exchange_orders` and `exchange_trades` (prefixed: the plane's services share one
database). Schema changes are migrations: an ordered list run at open by the plane's shared
runner (`control_plane.db.migrate`, service "exchange", recorded in `schema_migrations`), each
in its own transaction. A migration never changes after it has shipped; a new column is a new
migration (and migration 1 then gets a frozen copy of the tables it created).

Engines come from the plane's `control_plane.db.create_engine` (the app passes its one engine
to every store), or from `create_engine(url)` here for standalone use: `sqlite:///path/to/file`
or `postgresql+psycopg://user@host:5432/db` (`postgresql://` is accepted too). SQLite runs in
WAL with real transactions (the driver's legacy BEGIN handling is off, so DDL and reads are
transactional too). Standalone, `synchronous` defaults to FULL: a trade acknowledged to a
trader then survives a power loss too; `NORMAL` (the shared engine's setting) survives a
process crash.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from contextlib import AbstractContextManager
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any, Literal, Protocol

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Dialect, Engine

from control_plane import db
from control_plane.db import Migration
from control_plane.exchange.errors import StoreConflictError, StoreError
from control_plane.exchange.models import (
    BLOCK_MINUTES,
    PRICE_STEP_EUR_PER_MWH,
    QUANTITY_STEP_MW,
    QUARTER_MINUTES,
    TRADE_PRICE_STEP_EUR_PER_MWH,
    DeliveryPeriod,
    Order,
    OrderState,
    PlacedOrder,
    Side,
    Trade,
)

__all__ = [
    "MIGRATIONS",
    "MemoryOrderStore",
    "Migration",
    "OrderStore",
    "SqlOrderStore",
    "Synchronous",
    "create_engine",
    "migrate",
]

Synchronous = Literal["OFF", "NORMAL", "FULL", "EXTRA"]
"""SQLite durability: FULL survives a power loss with the last commit, NORMAL a process crash."""

SERVICE = "exchange"
"""This service's name in the shared `schema_migrations` table."""
_OPEN_STATES = (OrderState.ACCEPTED.value, OrderState.PARTIALLY_FILLED.value)


class OrderStore(Protocol):
    """What the matching engine needs from persistence; `StoreError` on any failure."""

    def load_open_orders(self) -> list[Order]:
        """Every ACCEPTED or PARTIALLY_FILLED order, oldest (lowest id) first."""
        ...

    def last_ids(self) -> tuple[int, int]:
        """The highest order id and trade id ever stored (0 when none)."""
        ...

    def commit_placement(self, placed: PlacedOrder) -> None:
        """Store the new order, its trades and the counter orders' new state, atomically."""
        ...

    def commit_cancel(self, order: Order) -> None:
        """Store an open order's cancellation (`order` in its CANCELLED state)."""
        ...

    def commit_expiry(self, expired: Sequence[Order]) -> None:
        """Store open orders' expiry at gate closure (each in its EXPIRED state, filled part
        unchanged), all in one transaction; `StoreConflictError` if any is no longer open."""
        ...

    def get_order(self, order_id: int) -> Order | None: ...

    def list_orders(
        self,
        *,
        portfolio: str | None = None,
        counterparty: str | None = None,
        states: Iterable[OrderState] | None = None,
        limit: int | None = None,
        market: str | None = None,
        side: Side | None = None,
        delivery_from: datetime | None = None,
        delivery_to: datetime | None = None,
        before_id: int | None = None,
    ) -> list[Order]:
        """Orders, newest first; delivery start in [delivery_from, delivery_to), id < before_id."""
        ...

    def list_trades(
        self,
        *,
        portfolio: str | None = None,
        market: str | None = None,
        delivery: DeliveryPeriod | None = None,
        limit: int | None = None,
        delivery_from: datetime | None = None,
        delivery_to: datetime | None = None,
        since: datetime | None = None,
        before_id: int | None = None,
    ) -> list[Trade]:
        """Trades in execution order (oldest first); `limit` keeps the newest.

        Delivery start in [delivery_from, delivery_to), executed at or after `since`, trade id
        below `before_id` (the cursor of a newest-first page).
        """
        ...

    def site_orders(
        self, *, site: str, delivery_from: datetime, delivery_to: datetime
    ) -> list[Order]:
        """The site's orders that commit it: open, or (partly) filled; oldest first.

        Only orders delivering in [delivery_from, delivery_to) (an hour block overlapping the
        window counts); a cancelled order counts with what it traded before the cancel.
        """
        ...

    def close(self) -> None: ...


def _commits_site(order: Order, site: str, start: datetime, end: datetime) -> bool:
    return (
        order.site == site
        and (order.is_open or order.filled_mw > 0)
        and order.delivery.start < end
        and order.delivery.end > start
    )


def _traded_in(placed: PlacedOrder, order_id: int) -> Decimal:
    return sum(
        (t.quantity_mw for t in placed.trades if order_id in (t.buy_order_id, t.sell_order_id)),
        Decimal(0),
    )


def _in_range(moment: datetime, start: datetime | None, end: datetime | None) -> bool:
    return (start is None or moment >= start) and (end is None or moment < end)


# -- in memory ------------------------------------------------------------------------------


class MemoryOrderStore:
    """The store without durability: for unit tests and the in-memory benchmark.

    Same contract as `SqlOrderStore`, including the conflict check, so a service can be
    tested against either; a new `Exchange` on the same object sees what the last one stored.
    """

    def __init__(self) -> None:
        self._orders: dict[int, Order] = {}
        self._trades: list[Trade] = []

    def load_open_orders(self) -> list[Order]:
        return sorted((o for o in self._orders.values() if o.is_open), key=lambda o: o.order_id)

    def last_ids(self) -> tuple[int, int]:
        return max(self._orders, default=0), max((t.trade_id for t in self._trades), default=0)

    def commit_placement(self, placed: PlacedOrder) -> None:
        if placed.order.order_id in self._orders:
            raise StoreConflictError(f"order {placed.order.order_id} exists already")
        for counter in placed.counter_orders:
            before = self._orders.get(counter.order_id)
            expected = counter.filled_mw - _traded_in(placed, counter.order_id)
            if before is None or not before.is_open or before.filled_mw != expected:
                raise StoreConflictError(f"order {counter.order_id} changed under the engine")
        self._orders[placed.order.order_id] = placed.order
        for counter in placed.counter_orders:
            self._orders[counter.order_id] = counter
        self._trades.extend(placed.trades)

    def commit_cancel(self, order: Order) -> None:
        before = self._orders.get(order.order_id)
        if before is None or not before.is_open or before.filled_mw != order.filled_mw:
            raise StoreConflictError(f"order {order.order_id} changed under the engine")
        self._orders[order.order_id] = order

    def commit_expiry(self, expired: Sequence[Order]) -> None:
        for order in expired:
            before = self._orders.get(order.order_id)
            if before is None or not before.is_open or before.filled_mw != order.filled_mw:
                raise StoreConflictError(f"order {order.order_id} changed under the engine")
        for order in expired:
            self._orders[order.order_id] = order

    def get_order(self, order_id: int) -> Order | None:
        return self._orders.get(order_id)

    def list_orders(
        self,
        *,
        portfolio: str | None = None,
        counterparty: str | None = None,
        states: Iterable[OrderState] | None = None,
        limit: int | None = None,
        market: str | None = None,
        side: Side | None = None,
        delivery_from: datetime | None = None,
        delivery_to: datetime | None = None,
        before_id: int | None = None,
    ) -> list[Order]:
        wanted = None if states is None else set(states)
        found = [
            o
            for o in sorted(self._orders.values(), key=lambda o: -o.order_id)
            if (portfolio is None or o.portfolio == portfolio)
            and (counterparty is None or o.counterparty == counterparty)
            and (wanted is None or o.state in wanted)
            and (market is None or o.market == market)
            and (side is None or o.side is side)
            and _in_range(o.delivery.start, delivery_from, delivery_to)
            and (before_id is None or o.order_id < before_id)
        ]
        return found if limit is None else found[:limit]

    def list_trades(
        self,
        *,
        portfolio: str | None = None,
        market: str | None = None,
        delivery: DeliveryPeriod | None = None,
        limit: int | None = None,
        delivery_from: datetime | None = None,
        delivery_to: datetime | None = None,
        since: datetime | None = None,
        before_id: int | None = None,
    ) -> list[Trade]:
        found = [
            t
            for t in self._trades
            if (portfolio is None or portfolio in (t.buy_portfolio, t.sell_portfolio))
            and (market is None or t.market == market)
            and (delivery is None or t.delivery == delivery)
            and _in_range(t.delivery.start, delivery_from, delivery_to)
            and (since is None or t.executed_at >= since)
            and (before_id is None or t.trade_id < before_id)
        ]
        if limit is None:
            return found
        return found[-limit:] if limit > 0 else []

    def site_orders(
        self, *, site: str, delivery_from: datetime, delivery_to: datetime
    ) -> list[Order]:
        return sorted(
            (
                o
                for o in self._orders.values()
                if _commits_site(o, site, delivery_from, delivery_to)
            ),
            key=lambda o: o.order_id,
        )

    def close(self) -> None:
        pass


# -- SQL schema -----------------------------------------------------------------------------


_V1_STATE_CHECK = "state IN ('ACCEPTED', 'PARTIALLY_FILLED', 'FILLED', 'CANCELLED', 'REJECTED')"
_V4_STATE_CHECK = (
    "state IN ('ACCEPTED', 'PARTIALLY_FILLED', 'FILLED', 'CANCELLED', 'REJECTED', 'EXPIRED')"
)


class UtcDateTime(sa.types.TypeDecorator[datetime]):
    """Aware UTC datetimes on both backends (SQLite: naive UTC text; PostgreSQL: timestamptz)."""

    impl = sa.DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError(f"naive datetime {value!r}: the exchange stores UTC-aware times")
        value = value.astimezone(UTC)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


metadata = sa.MetaData()
"""The tables as the latest migration leaves them (what the store's queries use)."""

orders = sa.Table(
    "exchange_orders",
    metadata,
    sa.Column("order_id", sa.BigInteger, primary_key=True, autoincrement=False),
    sa.Column("market", sa.String(32), nullable=False),
    sa.Column("delivery_start", UtcDateTime, nullable=False),
    sa.Column("delivery_minutes", sa.SmallInteger, nullable=False),
    sa.Column("side", sa.String(4), nullable=False),
    sa.Column("quantity_kw", sa.BigInteger, nullable=False),
    sa.Column("limit_price_meur_per_mwh", sa.BigInteger, nullable=False),
    sa.Column("portfolio", sa.String(64), nullable=False),
    sa.Column("counterparty", sa.String(64), nullable=False),
    sa.Column("site", sa.String(64), nullable=True),
    sa.Column("state", sa.String(16), nullable=False),
    sa.Column("filled_kw", sa.BigInteger, nullable=False),
    sa.Column("reject_reason", sa.Text, nullable=True),
    sa.Column("created_at", UtcDateTime, nullable=False),
    sa.Column("updated_at", UtcDateTime, nullable=False),
    sa.CheckConstraint("side IN ('BUY', 'SELL')", name="ck_exchange_orders_side"),
    sa.CheckConstraint(_V4_STATE_CHECK, name="ck_exchange_orders_state"),
    sa.CheckConstraint("quantity_kw > 0", name="ck_exchange_orders_quantity"),
    sa.CheckConstraint(
        "filled_kw >= 0 AND filled_kw <= quantity_kw", name="ck_exchange_orders_filled"
    ),
    sa.CheckConstraint("delivery_minutes IN (15, 60)", name="ck_exchange_orders_product"),
)

trades = sa.Table(
    "exchange_trades",
    metadata,
    sa.Column("trade_id", sa.BigInteger, primary_key=True, autoincrement=False),
    sa.Column("market", sa.String(32), nullable=False),
    sa.Column("delivery_start", UtcDateTime, nullable=False),
    sa.Column("delivery_minutes", sa.SmallInteger, nullable=False),
    sa.Column(
        "buy_order_id", sa.BigInteger, sa.ForeignKey("exchange_orders.order_id"), nullable=False
    ),
    sa.Column(
        "sell_order_id", sa.BigInteger, sa.ForeignKey("exchange_orders.order_id"), nullable=False
    ),
    sa.Column("buy_portfolio", sa.String(64), nullable=False),
    sa.Column("sell_portfolio", sa.String(64), nullable=False),
    sa.Column("buy_counterparty", sa.String(64), nullable=False),
    sa.Column("sell_counterparty", sa.String(64), nullable=False),
    sa.Column("quantity_kw", sa.BigInteger, nullable=False),
    sa.Column("price_meur_per_mwh", sa.BigInteger, nullable=False),
    sa.Column("aggressor", sa.String(4), nullable=False),
    sa.Column("executed_at", UtcDateTime, nullable=False),
    sa.CheckConstraint("quantity_kw > 0", name="ck_exchange_trades_quantity"),
    sa.CheckConstraint("aggressor IN ('BUY', 'SELL')", name="ck_exchange_trades_aggressor"),
)


# Migration 1's tables exactly as it shipped (a frozen copy: the live tables above have
# changed since, migration 4 widened the state check).
_v1_metadata = sa.MetaData()

_v1_orders = sa.Table(
    "exchange_orders",
    _v1_metadata,
    sa.Column("order_id", sa.BigInteger, primary_key=True, autoincrement=False),
    sa.Column("market", sa.String(32), nullable=False),
    sa.Column("delivery_start", UtcDateTime, nullable=False),
    sa.Column("delivery_minutes", sa.SmallInteger, nullable=False),
    sa.Column("side", sa.String(4), nullable=False),
    sa.Column("quantity_kw", sa.BigInteger, nullable=False),
    sa.Column("limit_price_meur_per_mwh", sa.BigInteger, nullable=False),
    sa.Column("portfolio", sa.String(64), nullable=False),
    sa.Column("counterparty", sa.String(64), nullable=False),
    sa.Column("site", sa.String(64), nullable=True),
    sa.Column("state", sa.String(16), nullable=False),
    sa.Column("filled_kw", sa.BigInteger, nullable=False),
    sa.Column("reject_reason", sa.Text, nullable=True),
    sa.Column("created_at", UtcDateTime, nullable=False),
    sa.Column("updated_at", UtcDateTime, nullable=False),
    sa.CheckConstraint("side IN ('BUY', 'SELL')", name="ck_exchange_orders_side"),
    sa.CheckConstraint(_V1_STATE_CHECK, name="ck_exchange_orders_state"),
    sa.CheckConstraint("quantity_kw > 0", name="ck_exchange_orders_quantity"),
    sa.CheckConstraint(
        "filled_kw >= 0 AND filled_kw <= quantity_kw", name="ck_exchange_orders_filled"
    ),
    sa.CheckConstraint("delivery_minutes IN (15, 60)", name="ck_exchange_orders_product"),
)

_v1_trades = sa.Table(
    "exchange_trades",
    _v1_metadata,
    sa.Column("trade_id", sa.BigInteger, primary_key=True, autoincrement=False),
    sa.Column("market", sa.String(32), nullable=False),
    sa.Column("delivery_start", UtcDateTime, nullable=False),
    sa.Column("delivery_minutes", sa.SmallInteger, nullable=False),
    sa.Column(
        "buy_order_id", sa.BigInteger, sa.ForeignKey("exchange_orders.order_id"), nullable=False
    ),
    sa.Column(
        "sell_order_id", sa.BigInteger, sa.ForeignKey("exchange_orders.order_id"), nullable=False
    ),
    sa.Column("buy_portfolio", sa.String(64), nullable=False),
    sa.Column("sell_portfolio", sa.String(64), nullable=False),
    sa.Column("buy_counterparty", sa.String(64), nullable=False),
    sa.Column("sell_counterparty", sa.String(64), nullable=False),
    sa.Column("quantity_kw", sa.BigInteger, nullable=False),
    sa.Column("price_meur_per_mwh", sa.BigInteger, nullable=False),
    sa.Column("aggressor", sa.String(4), nullable=False),
    sa.Column("executed_at", UtcDateTime, nullable=False),
    sa.CheckConstraint("quantity_kw > 0", name="ck_exchange_trades_quantity"),
    sa.CheckConstraint("aggressor IN ('BUY', 'SELL')", name="ck_exchange_trades_aggressor"),
)


def _v1_tables(conn: Connection) -> None:
    _v1_metadata.create_all(conn, checkfirst=False)


def _v2_indexes(conn: Connection) -> None:
    # Plain SQL, not sa.Index on the tables above: an Index built from their columns would
    # attach itself to them, and migration 1 would then create it too.
    for statement in (
        # load_open_orders at every start, and order lists per state or portfolio
        "CREATE INDEX ix_exchange_orders_state ON exchange_orders (state, order_id)",
        "CREATE INDEX ix_exchange_orders_portfolio ON exchange_orders (portfolio, order_id)",
        # exposure per portfolio, trades per order and per book
        "CREATE INDEX ix_exchange_trades_buy_portfolio"
        " ON exchange_trades (buy_portfolio, trade_id)",
        "CREATE INDEX ix_exchange_trades_sell_portfolio"
        " ON exchange_trades (sell_portfolio, trade_id)",
        "CREATE INDEX ix_exchange_trades_buy_order ON exchange_trades (buy_order_id)",
        "CREATE INDEX ix_exchange_trades_sell_order ON exchange_trades (sell_order_id)",
        "CREATE INDEX ix_exchange_trades_book ON exchange_trades (market, delivery_start)",
    ):
        conn.execute(sa.text(statement))


def _v3_site_index(conn: Connection) -> None:
    # the SoC feasibility check: a site's orders for the quarters up to a delivery period
    conn.execute(
        sa.text("CREATE INDEX ix_exchange_orders_site ON exchange_orders (site, delivery_start)")
    )


def _v4_expired_state(conn: Connection) -> None:
    """Allow the state EXPIRED (resting orders whose product reached gate closure)."""
    if conn.dialect.name == "postgresql":
        conn.execute(
            sa.text("ALTER TABLE exchange_orders DROP CONSTRAINT ck_exchange_orders_state")
        )
        conn.execute(
            sa.text(
                "ALTER TABLE exchange_orders ADD CONSTRAINT ck_exchange_orders_state"
                f" CHECK ({_V4_STATE_CHECK})"
            )
        )
        return
    # SQLite cannot alter a CHECK constraint: the table is rebuilt from its own CREATE
    # statement with the wider check. Foreign keys are on and cannot be switched off inside
    # the migration's transaction, and dropping a referenced table would break the trades'
    # references; so both tables move aside (renaming the orders table rewrites the trades'
    # reference to follow it), both are created afresh, copied, and the old ones dropped,
    # children first. Their indexes go with the old tables and are created again.
    names = ("exchange_orders", "exchange_trades")
    schema = {
        row.name: row.sql
        for row in conn.execute(
            sa.text(
                "SELECT type, name, sql FROM sqlite_master"
                " WHERE tbl_name IN ('exchange_orders', 'exchange_trades') AND sql IS NOT NULL"
            )
        )
    }
    create_orders = schema["exchange_orders"]
    if create_orders.count(_V1_STATE_CHECK) != 1:
        raise StoreError(
            "exchange migration 4: exchange_orders does not carry the expected state check "
            f"{_V1_STATE_CHECK!r}; the schema was changed by hand, restore it or migrate it "
            "manually"
        )
    creates = {
        "exchange_orders": create_orders.replace(_V1_STATE_CHECK, _V4_STATE_CHECK),
        "exchange_trades": schema["exchange_trades"],
    }
    indexes = [sql for name, sql in schema.items() if name not in names]
    for name in names:
        conn.execute(sa.text(f"ALTER TABLE {name} RENAME TO {name}_v3"))
    for name in names:
        conn.execute(sa.text(creates[name]))
        # the two fixed table names above, no input
        conn.execute(sa.text(f"INSERT INTO {name} SELECT * FROM {name}_v3"))  # noqa: S608
    for name in reversed(names):
        conn.execute(sa.text(f"DROP TABLE {name}_v3"))
    for sql in indexes:
        conn.execute(sa.text(sql))


MIGRATIONS: tuple[Migration, ...] = (
    Migration(1, "orders and trades", _v1_tables),
    Migration(2, "indexes: open orders, portfolios, trades per order and book", _v2_indexes),
    Migration(3, "index: orders per site and delivery (SoC feasibility)", _v3_site_index),
    Migration(4, "order state EXPIRED (gate closure)", _v4_expired_state),
)


# -- engine and migrations ------------------------------------------------------------------


def create_engine(url: str, *, synchronous: Synchronous = "FULL") -> Engine:
    """A plane engine (`control_plane.db`) for `sqlite:///file` or a PostgreSQL DSN."""
    try:
        parsed = sa.make_url(url)
    except sa.exc.ArgumentError as exc:
        raise StoreError(f"not a database URL: {exc}") from None
    if parsed.drivername.startswith(("postgresql", "postgres")):
        try:
            return db.create_engine(database_url=url, sqlite_path=Path())
        except db.StoreError as exc:
            raise StoreError(str(exc)) from exc
    if parsed.drivername not in ("sqlite", "sqlite+pysqlite"):
        raise StoreError(
            f"unsupported database {parsed.drivername!r}: use sqlite:///path or postgresql://"
        )
    if synchronous not in ("OFF", "NORMAL", "FULL", "EXTRA"):
        raise StoreError(f"synchronous must be OFF, NORMAL, FULL or EXTRA, got {synchronous!r}")
    if parsed.database in (None, "", ":memory:"):
        raise StoreError("the exchange needs a SQLite file (sqlite:///path), not :memory:")
    try:
        engine = db.create_engine(database_url=None, sqlite_path=Path(parsed.database))
    except db.StoreError as exc:
        raise StoreError(str(exc)) from exc

    @sa.event.listens_for(engine, "connect")
    def _synchronous(dbapi_connection: Any, _record: Any) -> None:
        # Runs after the plane's own pragmas (listeners run in the order they were added).
        dbapi_connection.execute(f"PRAGMA synchronous = {synchronous}")

    return engine


def migrate(engine: Engine, migrations: Sequence[Migration] = MIGRATIONS) -> list[int]:
    """Apply the exchange migrations the database lacks; the versions applied now."""
    try:
        return db.migrate(engine, SERVICE, migrations)
    except db.StoreError as exc:
        raise StoreError(str(exc)) from exc


# -- SQL store ------------------------------------------------------------------------------

# The write path's statements, built once: SQLAlchemy then reuses their cache keys and
# compiled forms instead of rebuilding them for every placement.
_INSERT_ORDER = orders.insert()
_INSERT_TRADE = trades.insert()
_UPDATE_OPEN = (
    orders.update()
    .where(
        orders.c.order_id == sa.bindparam("b_order_id"),
        orders.c.filled_kw == sa.bindparam("b_filled_before_kw"),
        sa.or_(*(orders.c.state == state for state in _OPEN_STATES)),
    )
    .values(
        filled_kw=sa.bindparam("b_filled_kw"),
        state=sa.bindparam("b_state"),
        updated_at=sa.bindparam("b_updated_at"),
    )
)


def _to_units(value: Decimal, step: Decimal) -> int:
    units = value / step
    if units != units.to_integral_value():
        raise ValueError(f"{value} is not a multiple of {step}")
    return int(units)


def _from_units(units: int, step: Decimal) -> Decimal:
    return (Decimal(units) * step).quantize(step)


def _order_row(order: Order) -> dict[str, Any]:
    return {
        "order_id": order.order_id,
        "market": order.market,
        "delivery_start": order.delivery.start,
        "delivery_minutes": order.delivery.minutes,
        "side": order.side.value,
        "quantity_kw": _to_units(order.quantity_mw, QUANTITY_STEP_MW),
        "limit_price_meur_per_mwh": _to_units(
            order.limit_price_eur_per_mwh, TRADE_PRICE_STEP_EUR_PER_MWH
        ),
        "portfolio": order.portfolio,
        "counterparty": order.counterparty,
        "site": order.site,
        "state": order.state.value,
        "filled_kw": _to_units(order.filled_mw, QUANTITY_STEP_MW),
        "reject_reason": order.reject_reason,
        "created_at": order.created_at,
        "updated_at": order.updated_at,
    }


def _trade_row(trade: Trade) -> dict[str, Any]:
    return {
        "trade_id": trade.trade_id,
        "market": trade.market,
        "delivery_start": trade.delivery.start,
        "delivery_minutes": trade.delivery.minutes,
        "buy_order_id": trade.buy_order_id,
        "sell_order_id": trade.sell_order_id,
        "buy_portfolio": trade.buy_portfolio,
        "sell_portfolio": trade.sell_portfolio,
        "buy_counterparty": trade.buy_counterparty,
        "sell_counterparty": trade.sell_counterparty,
        "quantity_kw": _to_units(trade.quantity_mw, QUANTITY_STEP_MW),
        "price_meur_per_mwh": _to_units(trade.price_eur_per_mwh, TRADE_PRICE_STEP_EUR_PER_MWH),
        "aggressor": trade.aggressor.value,
        "executed_at": trade.executed_at,
    }


def _order_from_row(row: sa.Row[Any]) -> Order:
    return Order(
        order_id=row.order_id,
        side=Side(row.side),
        quantity_mw=_from_units(row.quantity_kw, QUANTITY_STEP_MW),
        limit_price_eur_per_mwh=_from_units(
            row.limit_price_meur_per_mwh, TRADE_PRICE_STEP_EUR_PER_MWH
        ).quantize(PRICE_STEP_EUR_PER_MWH),
        market=row.market,
        delivery=DeliveryPeriod(row.delivery_start, row.delivery_minutes),
        portfolio=row.portfolio,
        counterparty=row.counterparty,
        site=row.site,
        state=OrderState(row.state),
        filled_mw=_from_units(row.filled_kw, QUANTITY_STEP_MW),
        created_at=row.created_at,
        updated_at=row.updated_at,
        reject_reason=row.reject_reason,
    )


def _trade_from_row(row: sa.Row[Any]) -> Trade:
    return Trade(
        trade_id=row.trade_id,
        market=row.market,
        delivery=DeliveryPeriod(row.delivery_start, row.delivery_minutes),
        buy_order_id=row.buy_order_id,
        sell_order_id=row.sell_order_id,
        buy_portfolio=row.buy_portfolio,
        sell_portfolio=row.sell_portfolio,
        buy_counterparty=row.buy_counterparty,
        sell_counterparty=row.sell_counterparty,
        quantity_mw=_from_units(row.quantity_kw, QUANTITY_STEP_MW),
        price_eur_per_mwh=_from_units(row.price_meur_per_mwh, TRADE_PRICE_STEP_EUR_PER_MWH),
        aggressor=Side(row.aggressor),
        executed_at=row.executed_at,
    )


class SqlOrderStore:
    """Orders and trades in SQLite or PostgreSQL; every method is one transaction.

    Thread-safe as far as SQLAlchemy's pool is (one connection per call); the exchange's lock
    makes it the single writer.
    """

    def __init__(self, engine: Engine) -> None:
        """Wrap an engine from `control_plane.db` or `create_engine`; see `migrate`/`open`."""
        self._engine = engine

    @classmethod
    def open(
        cls,
        url: str,
        *,
        synchronous: Synchronous = "FULL",
        migrations: Sequence[Migration] = MIGRATIONS,
    ) -> SqlOrderStore:
        """Connect to `url` and bring its schema up to date."""
        engine = create_engine(url, synchronous=synchronous)
        store = cls(engine)
        try:
            store.migrate(migrations)
        except BaseException:
            engine.dispose()
            raise
        return store

    def migrate(self, migrations: Sequence[Migration] = MIGRATIONS) -> list[int]:
        """Bring the exchange tables up to date (`StoreError` if that fails)."""
        return migrate(self._engine, migrations)

    @property
    def engine(self) -> Engine:
        return self._engine

    def close(self) -> None:
        self._engine.dispose()

    def __enter__(self) -> SqlOrderStore:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def load_open_orders(self) -> list[Order]:
        query = (
            sa.select(orders).where(orders.c.state.in_(_OPEN_STATES)).order_by(orders.c.order_id)
        )
        with self._read() as conn:
            return [_order_from_row(row) for row in conn.execute(query)]

    def last_ids(self) -> tuple[int, int]:
        with self._read() as conn:
            order_id = conn.scalar(sa.select(sa.func.max(orders.c.order_id)))
            trade_id = conn.scalar(sa.select(sa.func.max(trades.c.trade_id)))
        return int(order_id or 0), int(trade_id or 0)

    def commit_placement(self, placed: PlacedOrder) -> None:
        order_row = _order_row(placed.order)
        trade_rows = [_trade_row(t) for t in placed.trades]
        updates = [
            (
                counter,
                _to_units(
                    counter.filled_mw - _traded_in(placed, counter.order_id), QUANTITY_STEP_MW
                ),
            )
            for counter in placed.counter_orders
        ]
        with self._write() as conn:
            conn.execute(_INSERT_ORDER, order_row)
            if trade_rows:
                conn.execute(_INSERT_TRADE, trade_rows)
            for counter, filled_before_kw in updates:
                self._update_open(conn, counter, filled_before_kw=filled_before_kw)

    def commit_cancel(self, order: Order) -> None:
        with self._write() as conn:
            self._update_open(
                conn, order, filled_before_kw=_to_units(order.filled_mw, QUANTITY_STEP_MW)
            )

    def commit_expiry(self, expired: Sequence[Order]) -> None:
        if not expired:
            return
        with self._write() as conn:
            for order in expired:
                self._update_open(
                    conn, order, filled_before_kw=_to_units(order.filled_mw, QUANTITY_STEP_MW)
                )

    def _update_open(self, conn: Connection, order: Order, *, filled_before_kw: int) -> None:
        result = conn.execute(
            _UPDATE_OPEN,
            {
                "b_order_id": order.order_id,
                "b_filled_before_kw": filled_before_kw,
                "b_filled_kw": _to_units(order.filled_mw, QUANTITY_STEP_MW),
                "b_state": order.state.value,
                "b_updated_at": order.updated_at,
            },
        )
        if result.rowcount != 1:
            raise StoreConflictError(
                f"order {order.order_id} is not open with {filled_before_kw} kW filled in the "
                "store: another writer changed it (the engine must be the single writer)"
            )

    def get_order(self, order_id: int) -> Order | None:
        with self._read() as conn:
            row = conn.execute(sa.select(orders).where(orders.c.order_id == order_id)).first()
        return None if row is None else _order_from_row(row)

    def list_orders(
        self,
        *,
        portfolio: str | None = None,
        counterparty: str | None = None,
        states: Iterable[OrderState] | None = None,
        limit: int | None = None,
        market: str | None = None,
        side: Side | None = None,
        delivery_from: datetime | None = None,
        delivery_to: datetime | None = None,
        before_id: int | None = None,
    ) -> list[Order]:
        query = sa.select(orders).order_by(orders.c.order_id.desc())
        if portfolio is not None:
            query = query.where(orders.c.portfolio == portfolio)
        if counterparty is not None:
            query = query.where(orders.c.counterparty == counterparty)
        if states is not None:
            query = query.where(orders.c.state.in_([s.value for s in states]))
        if market is not None:
            query = query.where(orders.c.market == market)
        if side is not None:
            query = query.where(orders.c.side == side.value)
        if delivery_from is not None:
            query = query.where(orders.c.delivery_start >= delivery_from)
        if delivery_to is not None:
            query = query.where(orders.c.delivery_start < delivery_to)
        if before_id is not None:
            query = query.where(orders.c.order_id < before_id)
        if limit is not None:
            query = query.limit(limit)
        with self._read() as conn:
            return [_order_from_row(row) for row in conn.execute(query)]

    def list_trades(
        self,
        *,
        portfolio: str | None = None,
        market: str | None = None,
        delivery: DeliveryPeriod | None = None,
        limit: int | None = None,
        delivery_from: datetime | None = None,
        delivery_to: datetime | None = None,
        since: datetime | None = None,
        before_id: int | None = None,
    ) -> list[Trade]:
        query = sa.select(trades).order_by(trades.c.trade_id.desc())
        if delivery_from is not None:
            query = query.where(trades.c.delivery_start >= delivery_from)
        if delivery_to is not None:
            query = query.where(trades.c.delivery_start < delivery_to)
        if since is not None:
            query = query.where(trades.c.executed_at >= since)
        if before_id is not None:
            query = query.where(trades.c.trade_id < before_id)
        if portfolio is not None:
            query = query.where(
                sa.or_(trades.c.buy_portfolio == portfolio, trades.c.sell_portfolio == portfolio)
            )
        if market is not None:
            query = query.where(trades.c.market == market)
        if delivery is not None:
            query = query.where(
                trades.c.delivery_start == delivery.start,
                trades.c.delivery_minutes == delivery.minutes,
            )
        if limit is not None:
            query = query.limit(limit)
        with self._read() as conn:
            found = [_trade_from_row(row) for row in conn.execute(query)]
        found.reverse()
        return found

    def site_orders(
        self, *, site: str, delivery_from: datetime, delivery_to: datetime
    ) -> list[Order]:
        # an hour block starting up to 45 min before the window still delivers in it
        earliest = delivery_from - timedelta(minutes=BLOCK_MINUTES - QUARTER_MINUTES)
        query = (
            sa.select(orders)
            .where(
                orders.c.site == site,
                orders.c.delivery_start >= earliest,
                orders.c.delivery_start < delivery_to,
                sa.or_(orders.c.state.in_(_OPEN_STATES), orders.c.filled_kw > 0),
            )
            .order_by(orders.c.order_id)
        )
        with self._read() as conn:
            found = [_order_from_row(row) for row in conn.execute(query)]
        return [o for o in found if _commits_site(o, site, delivery_from, delivery_to)]

    def _read(self) -> AbstractContextManager[Connection]:
        return _transaction(self._engine)

    def _write(self) -> AbstractContextManager[Connection]:
        return _transaction(db.for_writes(self._engine))


def _transaction(engine: Engine) -> AbstractContextManager[Connection]:
    """One transaction; SQLAlchemy's errors become `StoreError` (after the rollback)."""
    return db.transaction(engine, StoreError, "exchange store")
