"""Billing test helpers: trades as data, a fake trade source, the service on a real store."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest
from prometheus_client import CollectorRegistry
from sqlalchemy.engine import Engine

from control_plane.billing.models import BillingConfig, Party
from control_plane.billing.service import BillingMetrics, BillingService
from control_plane.billing.store import BillingStore
from control_plane.exchange.models import DeliveryPeriod, Side, Trade

OCT_START = datetime(2026, 9, 30, 22, 0, tzinfo=UTC)  # 2026-10-01 00:00 Europe/Vienna (CEST)
AFTER_OCTOBER = datetime(2026, 11, 2, 9, 0, tzinfo=UTC)
ISSUER = Party(
    "Phoenyra Energy Trading GmbH",
    ("Opernring 1", "1010 Wien", "Austria"),
    vat_id="ATU12345678",
    iban="AT611904300234573201",
    bic="BKAUATWW",
)
RECIPIENTS = {
    "acme": Party("ACME Storage AG", ("Hauptstrasse 5", "4020 Linz"), vat_id="ATU87654321"),
    "beta": Party("Beta Flex GmbH", ("Ring 9", "8010 Graz")),
}


@dataclass
class FakeTrades:
    """The exchange's trade store as a list (what `TradeSource` needs)."""

    trades: list[Trade] = field(default_factory=list)

    def list_trades(
        self, *, delivery_from: datetime | None = None, delivery_to: datetime | None = None
    ) -> list[Trade]:
        return [
            t
            for t in self.trades
            if (delivery_from is None or t.delivery.start >= delivery_from)
            and (delivery_to is None or t.delivery.start < delivery_to)
        ]

    def add(
        self,
        *,
        buyer: str,
        seller: str,
        quantity_mw: str,
        price: str,
        start: datetime,
        minutes: int = 15,
        market: str = "epex_at",
    ) -> Trade:
        trade = Trade(
            trade_id=len(self.trades) + 1,
            market=market,
            delivery=DeliveryPeriod(start, minutes),
            buy_order_id=2 * len(self.trades) + 1,
            sell_order_id=2 * len(self.trades) + 2,
            buy_portfolio="pf-buy",
            sell_portfolio="pf-sell",
            buy_counterparty=buyer,
            sell_counterparty=seller,
            quantity_mw=Decimal(quantity_mw),
            price_eur_per_mwh=Decimal(price),
            aggressor=Side.BUY,
            executed_at=start - timedelta(hours=1),
        )
        self.trades.append(trade)
        return trade


@dataclass
class Clock:
    now: datetime = AFTER_OCTOBER

    def __call__(self) -> datetime:
        return self.now


def config(**changes: object) -> BillingConfig:
    values: dict[str, object] = {"issuer": ISSUER, "recipients": RECIPIENTS}
    values.update(changes)
    return BillingConfig(**values)  # type: ignore[arg-type]


@pytest.fixture
def trades() -> FakeTrades:
    return FakeTrades()


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def registry() -> CollectorRegistry:
    return CollectorRegistry()


@pytest.fixture
def billing_store(engine: Engine) -> Iterator[BillingStore]:
    store = BillingStore(engine)
    store.migrate()
    yield store


@pytest.fixture
def service(
    billing_store: BillingStore, trades: FakeTrades, clock: Clock, registry: CollectorRegistry
) -> BillingService:
    return BillingService(
        store=billing_store,
        trades=trades,
        config=config(),
        clock=clock,
        metrics=BillingMetrics(registry),
    )
