"""Credit service against the real exchange and store (SQLite and PostgreSQL): exposure follows
trades and settlements, PFE of open orders, the pre-trade check at the limit, alerts once per
crossing, master data and settlement validation."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from datetime import date, timedelta
from decimal import Decimal

import pytest
from prometheus_client import CollectorRegistry
from sqlalchemy.engine import Engine

from control_plane.credit.models import (
    CounterpartyExistsError,
    CounterpartyNotFoundError,
    CreditAlert,
    InvalidCreditInputError,
    SettlementConflictError,
)
from control_plane.credit.service import CreditMetrics, CreditService
from control_plane.credit.store import CreditStore
from control_plane.exchange.models import DeliveryPeriod, MarketRegistry, OrderState
from control_plane.exchange.service import Exchange
from control_plane.exchange.store import SqlOrderStore

from ..exchange.conftest import SteppedClock, order


@dataclass
class Desk:
    credit: CreditService
    exchange: Exchange
    clock: SteppedClock
    alerts: list[CreditAlert]
    registry: CollectorRegistry

    def sample(self, name: str, **labels: str) -> float | None:
        return self.registry.get_sample_value(name, labels)


def make_desk(engine: Engine, *, addon_pct: str = "0", require: bool = False) -> Desk:
    clock = SteppedClock()
    orders = SqlOrderStore(engine)
    orders.migrate()
    alerts: list[CreditAlert] = []
    registry = CollectorRegistry()
    credit = CreditService(
        store=CreditStore(engine),
        trades=orders,
        clock=clock,
        addon_pct=Decimal(addon_pct),
        require_counterparty=require,
        metrics=CreditMetrics(registry),
        on_alert=alerts.append,
    )
    credit.open()
    exchange = Exchange(
        store=orders, markets=MarketRegistry.default(), clock=clock, pre_trade_checks=[credit.check]
    )
    return Desk(credit, exchange, clock, alerts, registry)


@pytest.fixture
def desk(engine: Engine) -> Iterator[Desk]:
    yield make_desk(engine)


def d(text: str) -> Decimal:
    return Decimal(text)


def test_exposure_follows_trades_and_settlements(engine: Engine) -> None:
    desk = make_desk(engine, addon_pct="10")
    desk.exchange.place_order(order=order("SELL", "2", "50", counterparty="CP-B"))
    placed = desk.exchange.place_order(order=order("BUY", "2", "60", counterparty="CP-A"))
    (trade,) = placed.trades
    # midpoint price 55: 2 MW x 0.25 h x 55 = 27.50 EUR, owed by the buyer CP-A to the operator
    a = desk.credit.exposure("CP-A")
    assert (a.receivable_eur, a.payable_eur, a.current_eur) == (d("27.5"), 0, d("27.5"))
    assert a.addon_eur == d("2.75")  # 10 % of the undelivered trade's notional
    assert a.exposure_eur == d("30.25") and a.unsettled_trades == 1
    b = desk.credit.exposure("CP-B")
    assert (b.receivable_eur, b.payable_eur, b.current_eur) == (0, d("27.5"), 0)
    assert b.exposure_eur == d("2.75")

    settled = desk.credit.record_settlement(
        counterparty="CP-A",
        trade_ids=[trade.trade_id],
        settled_on=date(2025, 11, 30),
        recorded_by="test",
    )
    assert settled.amount_eur == d("27.50") and settled.kind == "trades"
    a = desk.credit.exposure("CP-A")
    assert (a.receivable_eur, a.current_eur, a.unsettled_trades) == (0, 0, 0)
    assert a.exposure_eur == d("2.75")  # delivery still ahead: replacement risk remains
    # CP-B's leg is its own: still payable to it
    assert desk.credit.exposure("CP-B").payable_eur == d("27.5")

    desk.clock.advance(timedelta(hours=3))  # after delivery: no add-on any more
    assert desk.credit.exposure("CP-A").exposure_eur == 0

    # a second trade, then a payment on account that covers part of it
    desk.exchange.place_order(
        order=order("SELL", "4", "100", counterparty="CP-B", delivery=_later(desk))
    )
    desk.exchange.place_order(
        order=order("BUY", "4", "100", counterparty="CP-A", delivery=_later(desk))
    )
    assert desk.credit.exposure("CP-A").current_eur == d("100")
    desk.credit.record_settlement(
        counterparty="CP-A", amount_eur="40.00", settled_on=date(2025, 11, 3), recorded_by="t"
    )
    a = desk.credit.exposure("CP-A")
    assert (a.paid_on_account_eur, a.current_eur) == (d("40.00"), d("60.00"))


def _later(desk: Desk) -> DeliveryPeriod:
    return DeliveryPeriod.quarter(desk.clock.now + timedelta(hours=2))


def test_pfe_of_open_orders(engine: Engine) -> None:
    desk = make_desk(engine, addon_pct="10")
    desk.exchange.place_order(order=order("BUY", "4", "100", counterparty="CP-A"))
    desk.exchange.place_order(order=order("SELL", "2", "300", counterparty="CP-A"))
    desk.exchange.place_order(
        order=order("SELL", "1", "-40", counterparty="CP-C", market="epex_de_lu")
    )
    a = desk.credit.exposure("CP-A")
    # BUY: 4 x 0.25 x 100 = 100 owed at worst; the open SELL adds nothing but its add-on
    assert a.open_orders == 2 and a.open_orders_eur == d("100")
    assert a.addon_eur == d("25.0")  # 10 % of (100 + 150)
    assert a.current_eur == 0 and a.exposure_eur == d("125.0")
    # a sell at a negative price: the seller pays for delivering, 1 x 0.25 x 40 = 10
    c = desk.credit.exposure("CP-C")
    assert c.open_orders_eur == d("10") and c.addon_eur == d("1.0")


def test_pre_trade_check_rejects_exactly_above_the_limit(desk: Desk) -> None:
    desk.credit.create_counterparty(counterparty="CP-A", name="Alpha GmbH", limit_eur="100.00")
    at_limit = desk.exchange.place_order(order=order("BUY", "4", "100", counterparty="CP-A"))
    assert at_limit.order.state is OrderState.ACCEPTED  # exposure 100.00 = limit: passes
    over = desk.exchange.place_order(order=order("BUY", "0.001", "0.04", counterparty="CP-A"))
    assert over.order.state is OrderState.REJECTED
    reason = over.order.reject_reason or ""
    assert reason.startswith("credit: counterparty CP-A would reach 100.00 EUR")
    assert "over its limit of 100.00 EUR by 0.00 EUR" in reason  # 0.00001 EUR, shown in cents
    assert "now 100.00 EUR" in reason
    assert desk.sample("bess_plane_credit_rejections_total", counterparty="CP-A") == 1
    # a sell at a positive price adds nothing (no add-on here): it passes
    sell = desk.exchange.place_order(order=order("SELL", "1", "500", counterparty="CP-A"))
    assert sell.order.state is OrderState.ACCEPTED
    # counterparties without master data are not limited
    free = desk.exchange.place_order(order=order("BUY", "100", "100", counterparty="CP-Z"))
    assert free.order.state is OrderState.ACCEPTED


def test_pre_trade_check_counts_the_add_on(engine: Engine) -> None:
    desk = make_desk(engine, addon_pct="10")
    desk.credit.set_limit(counterparty="CP-A", limit_eur="110")
    ok = desk.exchange.place_order(order=order("BUY", "4", "100", counterparty="CP-A"))
    assert ok.order.state is OrderState.ACCEPTED  # 100 + 10 % add-on = 110 = limit
    no = desk.exchange.place_order(order=order("SELL", "1", "4", counterparty="CP-A"))
    assert no.order.state is OrderState.REJECTED  # the add-on of a sell: 0.10 EUR over
    assert "by 0.10 EUR" in (no.order.reject_reason or "")


def test_require_counterparty_rejects_unknown(engine: Engine) -> None:
    desk = make_desk(engine, require=True)
    placed = desk.exchange.place_order(order=order("BUY", "1", "50", counterparty="nobody"))
    assert placed.order.state is OrderState.REJECTED
    assert "no credit master data" in (placed.order.reject_reason or "")


def test_alerts_fire_once_per_crossing(desk: Desk) -> None:
    desk.credit.create_counterparty(counterparty="CP-A", limit_eur="100")
    first = desk.exchange.place_order(order=order("BUY", "3", "100", counterparty="CP-A"))
    desk.credit.refresh()
    assert [(a.counterparty_id, a.threshold_pct) for a in desk.alerts] == [("CP-A", 75)]
    assert desk.alerts[0].utilisation_pct == 75
    desk.credit.refresh()
    desk.credit.refresh()
    assert len(desk.alerts) == 1  # still above 75 %: no second alert
    assert desk.sample("pho_credit_exposure_eur", counterparty="CP-A") == 75.0
    assert desk.sample("bess_plane_credit_utilization_pct", counterparty="CP-A") == 75.0

    desk.exchange.cancel_order(order_id=first.order.order_id)
    desk.credit.refresh()
    assert len(desk.alerts) == 1  # falling below re-arms, silently
    desk.exchange.place_order(order=order("BUY", "3.6", "100", counterparty="CP-A"))
    desk.credit.refresh()
    assert [a.threshold_pct for a in desk.alerts[1:]] == [75, 90]
    assert (
        desk.sample("bess_plane_credit_alerts_total", counterparty="CP-A", threshold_pct="75") == 2
    )
    # per-counterparty thresholds win over the defaults
    desk.credit.update_counterparty(counterparty="CP-A", alert_thresholds_pct=[50, 95])
    assert [a.threshold_pct for a in desk.alerts[3:]] == [50]  # 90 % >= 50, < 95


def test_settle_trades_for_billing_is_idempotent(desk: Desk) -> None:
    desk.exchange.place_order(order=order("SELL", "1", "80", counterparty="CP-B"))
    (trade,) = desk.exchange.place_order(order=order("BUY", "1", "80", counterparty="CP-A")).trades
    paid = desk.credit.settle_trades(
        counterparty="CP-A",
        trade_ids=[trade.trade_id],
        settled_on=date(2025, 12, 10),
        reference_text="INV-2025-0001",
    )
    again = desk.credit.settle_trades(
        counterparty="CP-A",
        trade_ids=[trade.trade_id],
        settled_on=date(2025, 12, 10),
        reference_text="INV-2025-0001",
    )
    assert again.settlement_id == paid.settlement_id and paid.recorded_by == "billing"
    with pytest.raises(SettlementConflictError, match="settled already"):
        desk.credit.settle_trades(
            counterparty="CP-A",
            trade_ids=[trade.trade_id],
            settled_on=date(2025, 12, 10),
            reference_text="INV-2025-0002",
        )
    with pytest.raises(SettlementConflictError, match="not trades of counterparty 'CP-C'"):
        desk.credit.record_settlement(
            counterparty="CP-C",
            trade_ids=[trade.trade_id],
            settled_on=date(2025, 12, 1),
            recorded_by="t",
        )
    with pytest.raises(SettlementConflictError, match=r"\[999\]"):
        desk.credit.record_settlement(
            counterparty="CP-A", trade_ids=[999], settled_on=date(2025, 12, 1), recorded_by="t"
        )
    listed = desk.credit.settlements(counterparty="CP-A")
    assert [s.trade_ids for s in listed] == [(trade.trade_id,)]
    assert listed[0].reference == "INV-2025-0001"


def test_master_data_and_validation(desk: Desk) -> None:
    cp = desk.credit.create_counterparty(
        counterparty=" CP-A ", name="Alpha GmbH", limit_eur=250000, alert_thresholds_pct=[90, 75]
    )
    assert cp.counterparty_id == "CP-A" and cp.alert_thresholds_pct == (75, 90)
    with pytest.raises(CounterpartyExistsError, match="PUT /api/credit/counterparties/CP-A"):
        desk.credit.create_counterparty(counterparty="CP-A")
    updated = desk.credit.update_counterparty(counterparty="CP-A", limit_eur=None)
    assert updated.limit_eur is None and updated.name == "Alpha GmbH"
    assert desk.credit.counterparty("CP-A").limit_eur is None
    for kwargs, field in (
        ({"limit_eur": "-5"}, "limit_eur"),
        ({"limit_eur": "0"}, "limit_eur"),
        ({"limit_eur": "1.005"}, "limit_eur"),
        ({"limit_eur": float("nan")}, "limit_eur"),
        ({"alert_thresholds_pct": [0]}, "alert_thresholds_pct"),
        ({"alert_thresholds_pct": []}, "alert_thresholds_pct"),
        ({"name": ""}, "name"),
    ):
        with pytest.raises(InvalidCreditInputError) as info:
            desk.credit.create_counterparty(counterparty="CP-X", **kwargs)  # type: ignore[arg-type]
        assert info.value.field == field
    with pytest.raises(InvalidCreditInputError, match="either trade_ids"):
        desk.credit.record_settlement(
            counterparty="CP-A", settled_on=date(2025, 1, 1), recorded_by="t"
        )
    with pytest.raises(InvalidCreditInputError, match="0 EUR"):
        desk.credit.record_settlement(
            counterparty="CP-A", amount_eur=0, settled_on=date(2025, 1, 1), recorded_by="t"
        )
    desk.credit.delete_counterparty("CP-A")
    with pytest.raises(CounterpartyNotFoundError):
        desk.credit.counterparty("CP-A")
    with pytest.raises(CounterpartyNotFoundError):
        desk.credit.delete_counterparty("CP-A")


def test_ledger_catches_up_across_pages(desk: Desk, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("control_plane.credit.service._PAGE", 3)

    def trade_pair() -> None:
        desk.exchange.place_order(order=order("SELL", "1", "40", counterparty="CP-B"))
        desk.exchange.place_order(order=order("BUY", "1", "40", counterparty="CP-A"))

    trade_pair()
    assert desk.credit.exposure("CP-A").unsettled_trades == 1
    for _ in range(7):  # more new trades than one page holds
        trade_pair()
    a = desk.credit.exposure("CP-A")
    assert a.unsettled_trades == 8 and a.receivable_eur == 8 * d("10")
    assert desk.credit.exposure("CP-B").payable_eur == d("80")
