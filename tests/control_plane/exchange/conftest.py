"""Fixtures of the exchange tests: a stepping clock, order builders, and the two stores.

PostgreSQL comes from tests/control_plane/conftest.py: a uniquely named database on
127.0.0.1:5432 for the session (dropped at the end), a schema of its own per test; the
PostgreSQL cases are skipped, saying why, when no server answers there.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from control_plane.exchange.models import DeliveryPeriod, MarketRegistry, NewOrder, Number, Side
from control_plane.exchange.service import Exchange
from control_plane.exchange.store import OrderStore, SqlOrderStore

PG_HOST = "127.0.0.1"
PG_PORT = 5432
PG_USER = "postgres"

T0 = datetime(2025, 11, 3, 8, 0, tzinfo=UTC)
"""The tests' 'now': a Monday morning."""
DELIVERY = DeliveryPeriod.quarter(T0 + timedelta(hours=2))
"""10:00-10:15 UTC, two hours ahead of T0."""
MARKET = "epex_at"


@dataclass
class SteppedClock:
    """An injected clock that moves only when told to."""

    now: datetime = field(default=T0)

    def __call__(self) -> datetime:
        return self.now

    def advance(self, delta: timedelta) -> None:
        self.now += delta


def order(
    side: Side | str,
    quantity_mw: Number,
    price: Number,
    *,
    portfolio: str = "pf-a",
    counterparty: str = "desk",
    market: str = MARKET,
    delivery: DeliveryPeriod = DELIVERY,
    site: str | None = None,
) -> NewOrder:
    """A new order with test defaults."""
    return NewOrder(
        side=Side(side),
        quantity_mw=quantity_mw,
        limit_price_eur_per_mwh=price,
        market=market,
        delivery=delivery,
        portfolio=portfolio,
        counterparty=counterparty,
        site=site,
    )


def d(value: str | int) -> Decimal:
    return Decimal(value)


@pytest.fixture
def clock() -> SteppedClock:
    return SteppedClock()


# -- stores ---------------------------------------------------------------------------------


@pytest.fixture(params=["sqlite", "postgresql"])
def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """An empty database: a SQLite file, then a schema of its own in the session's PostgreSQL
    database (`postgres_schema_dsn` from tests/control_plane/conftest.py)."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'exchange.sqlite3'}"
    dsn: str = request.getfixturevalue("postgres_schema_dsn")
    return dsn


@pytest.fixture
def sql_store(store_url: str) -> Iterator[SqlOrderStore]:
    store = SqlOrderStore.open(store_url)
    try:
        yield store
    finally:
        store.close()


@pytest.fixture
def make_exchange(clock: SteppedClock) -> Callable[..., Exchange]:
    """Build an exchange on a store, with this test's clock and the default markets."""

    def make(store: OrderStore, **kwargs: Any) -> Exchange:
        kwargs.setdefault("markets", MarketRegistry.default())
        kwargs.setdefault("clock", clock)
        return Exchange(store=store, **kwargs)

    return make
