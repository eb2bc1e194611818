"""Billing on a real store (SQLite and PostgreSQL): totals, idempotency, corrections, numbering
under concurrent requests, filters and statistics."""

from __future__ import annotations

import random
import threading
from concurrent.futures import ThreadPoolExecutor
from datetime import date, timedelta
from decimal import ROUND_HALF_UP, Decimal

import pytest
from prometheus_client import CollectorRegistry

from control_plane.billing.errors import (
    InvalidRequestError,
    InvoiceNotFoundError,
    PeriodNotEndedError,
)
from control_plane.billing.models import (
    Invoice,
    InvoiceFilter,
    InvoiceKind,
    InvoiceStatus,
    Period,
)
from control_plane.billing.service import BillingMetrics, BillingService
from control_plane.billing.store import BillingStore
from control_plane.exchange.models import Trade

from .conftest import OCT_START, Clock, FakeTrades, config


def _cents(value: Decimal) -> Decimal:
    return value.quantize(Decimal("0.01"), ROUND_HALF_UP)


def _signed_value(trade: Trade, counterparty: str) -> Decimal:
    value = Decimal(0)
    if trade.buy_counterparty == counterparty:
        value += trade.value_eur
    if trade.sell_counterparty == counterparty:
        value -= trade.value_eur
    return value


def _involves(trade: Trade, counterparty: str) -> bool:
    return counterparty in (trade.buy_counterparty, trade.sell_counterparty)


def _random_october(trades: FakeTrades, *, n: int, names: list[str], seed: int) -> None:
    rng = random.Random(seed)
    for _ in range(n):
        buyer, seller = rng.sample(names, 2)
        start = OCT_START + timedelta(minutes=15 * rng.randrange(31 * 96 - 4))
        minutes = 60 if rng.random() < 0.2 else 15
        start -= timedelta(minutes=start.minute % minutes)
        start = max(start, OCT_START)
        trades.add(
            buyer=buyer,
            seller=seller,
            quantity_mw=str(Decimal(rng.randrange(1, 25_000)) / 1000),
            price=str(Decimal(rng.randrange(-50_000, 400_000)) / 1000),
            start=start,
            minutes=minutes,
            market=rng.choice(["epex_at", "epex_de_lu"]),
        )


def test_totals_equal_the_sum_of_the_trades_to_the_cent(
    service: BillingService, billing_store: BillingStore, trades: FakeTrades
) -> None:
    names = ["acme", "beta", "gamma", "delta"]
    _random_october(trades, n=400, names=names, seed=7)
    result = service.generate(period="2026-10")
    assert [i.counterparty for i in result.invoices] == sorted(names)
    for issued in result.invoices:
        stored = billing_store.get(issued.invoice_id)
        assert stored == issued  # the store round-trips every amount exactly
        mine = [t for t in trades.trades if _involves(t, issued.counterparty)]
        exact = sum((_signed_value(t, issued.counterparty) for t in mine), Decimal(0))
        assert issued.net_eur == _cents(exact)
        assert sum(line.amount_eur for line in issued.lines) == issued.net_eur
        assert issued.vat_eur == _cents(issued.net_eur * Decimal(20) / 100)
        assert issued.gross_eur == issued.net_eur + issued.vat_eur
        assert issued.trade_count == len(mine)
        assert sum(line.trade_count for line in issued.lines) == len(mine)
        assert sum(line.energy_wh for line in issued.lines) == sum(
            int(t.energy_mwh * 1_000_000) for t in mine
        )
        for line in issued.lines:  # each line within a cent of its exact value
            group = [
                t
                for t in mine
                if t.market == line.market
                and t.delivery.minutes == line.product_minutes
                and t.delivery.start.astimezone(service.config.zone).date() == line.delivery_day
                and (t.buy_counterparty if line.side == "BUY" else t.sell_counterparty)
                == issued.counterparty
            ]
            value = sum((t.value_eur for t in group), Decimal(0))
            assert len(group) == line.trade_count
            assert abs(line.amount_eur - (value if line.side == "BUY" else -value)) < Decimal(
                "0.01"
            )
    assert result.warnings == (
        "no recipient data for delta, gamma: invoiced under the counterparty id; add them to "
        "the billing_recipients setting (name, address, vat_id) and correct the invoices",
    )
    assert result.invoices[0].recipient.name == "ACME Storage AG"
    assert result.invoices[2].recipient.name == "delta"


def test_a_simple_invoice_by_hand(service: BillingService, trades: FakeTrades) -> None:
    # 1.5 MW x 0.25 h x 80.005 = 30.001875 ; 2 MW x 1 h x 41.1 = 82.2 (sold: credited)
    trades.add(buyer="acme", seller="beta", quantity_mw="1.5", price="80.005", start=OCT_START)
    trades.add(
        buyer="beta",
        seller="acme",
        quantity_mw="2",
        price="41.1",
        start=OCT_START + timedelta(days=1),
        minutes=60,
    )
    acme = service.generate(period="2026-10", counterparty="acme").invoices[0]
    assert [(ln.delivery_day, ln.product, ln.side, ln.amount_eur) for ln in acme.lines] == [
        (date(2026, 10, 1), "PT15M", "BUY", Decimal("30.00")),
        (date(2026, 10, 2), "PT60M", "SELL", Decimal("-82.20")),
    ]
    assert acme.net_eur == Decimal("-52.20")  # 30.001875 - 82.2 = -52.198125
    assert acme.vat_eur == Decimal("-10.44")
    assert acme.gross_eur == Decimal("-62.64")
    assert acme.lines[0].energy_mwh == Decimal("0.375")
    assert acme.lines[0].avg_price_eur_per_mwh == Decimal("80.005")
    assert acme.number == "PHO-2026-000001"
    assert acme.issue_date == date(2026, 11, 2)
    assert acme.due_date == date(2026, 11, 16)
    assert "by 2026-11-16" in acme.payment_terms


def test_the_period_is_the_local_month(service: BillingService, trades: FakeTrades) -> None:
    trades.add(buyer="acme", seller="beta", quantity_mw="1", price="10", start=OCT_START)
    before = OCT_START - timedelta(minutes=15)  # 2026-09-30 23:45 Vienna: September
    trades.add(buyer="acme", seller="beta", quantity_mw="1", price="10", start=before)
    last = OCT_START + timedelta(days=31, hours=1) - timedelta(minutes=15)  # DST ended 25 Oct
    trades.add(buyer="acme", seller="beta", quantity_mw="1", price="10", start=last)
    november = last + timedelta(minutes=15)  # 2026-11-01 00:00 Vienna (CET)
    trades.add(buyer="acme", seller="beta", quantity_mw="1", price="10", start=november)
    invoice = service.generate(period="2026-10", counterparty="acme").invoices[0]
    assert invoice.trade_count == 2
    assert [line.delivery_day for line in invoice.lines] == [date(2026, 10, 1), date(2026, 10, 31)]


def test_regeneration_is_idempotent(
    service: BillingService,
    billing_store: BillingStore,
    trades: FakeTrades,
    registry: CollectorRegistry,
) -> None:
    _random_october(trades, n=50, names=["acme", "beta", "gamma"], seed=1)
    first = service.generate(period="2026-10")
    assert len(first.issued) == 3
    again = service.generate(period="2026-10")
    assert again.issued == ()
    assert again.invoices == first.invoices
    assert again.outdated == ()
    assert billing_store.numbers() == ["PHO-2026-000001", "PHO-2026-000002", "PHO-2026-000003"]
    assert registry.get_sample_value("pho_bo_invoices_total", {"kind": "invoice"}) == 3


def test_correction_issues_a_credit_note_and_a_new_invoice(
    service: BillingService,
    billing_store: BillingStore,
    trades: FakeTrades,
    registry: CollectorRegistry,
) -> None:
    trades.add(buyer="acme", seller="beta", quantity_mw="1", price="100", start=OCT_START)
    first = {i.counterparty: i for i in service.generate(period="2026-10").invoices}
    late = OCT_START + timedelta(days=3)
    trades.add(buyer="acme", seller="gamma", quantity_mw="2", price="50", start=late)
    stale = service.generate(period="2026-10")
    assert stale.outdated == (first["acme"].number,)  # acme's trades changed; beta's did not
    assert [i.number for i in stale.issued] == ["PHO-2026-000003"]  # gamma's first invoice

    fixed = service.generate(period="2026-10", counterparty="acme", correction=True)
    credit, replacement = fixed.issued
    assert credit.kind is InvoiceKind.CREDIT_NOTE
    assert credit.number == "PHO-2026-000004"
    assert credit.corrects_invoice_id == first["acme"].invoice_id
    assert credit.net_eur == -first["acme"].net_eur == Decimal("-25.00")
    assert credit.gross_eur == -first["acme"].gross_eur
    assert [ln.amount_eur for ln in credit.lines] == [-ln.amount_eur for ln in first["acme"].lines]
    assert replacement.number == "PHO-2026-000005"
    assert replacement.replaces_invoice_id == first["acme"].invoice_id
    assert replacement.net_eur == Decimal("50.00")  # 25 + 25
    assert fixed.invoices == (replacement,)
    assert fixed.outdated == ()
    old = billing_store.get(first["acme"].invoice_id)
    assert old is not None and old.status is InvoiceStatus.CORRECTED
    assert billing_store.numbers() == [f"PHO-2026-{n:06d}" for n in range(1, 6)]
    assert registry.get_sample_value("pho_bo_invoices_total", {"kind": "credit_note"}) == 1
    # and the corrected state is what a plain regeneration returns now
    assert service.generate(period="2026-10", counterparty="acme").invoices == (replacement,)


def test_correction_without_trades_left_only_reverses(
    service: BillingService, trades: FakeTrades
) -> None:
    trades.add(buyer="acme", seller="beta", quantity_mw="1", price="100", start=OCT_START)
    service.generate(period="2026-10")
    trades.trades.clear()  # e.g. the trades were booked to the wrong month
    fixed = service.generate(period="2026-10", correction=True)
    assert [i.kind for i in fixed.issued] == [InvoiceKind.CREDIT_NOTE] * 2
    assert fixed.invoices == ()


def test_a_month_without_trades_issues_nothing(service: BillingService) -> None:
    result = service.generate(period="2026-10")
    assert result.invoices == () and result.issued == ()


def test_bad_requests_say_what_is_wrong(service: BillingService, clock: Clock) -> None:
    with pytest.raises(InvalidRequestError, match="give it as YYYY-MM"):
        service.generate(period="2026-13")
    with pytest.raises(InvalidRequestError, match="give it as YYYY-MM"):
        service.generate(period="10/2026")
    with pytest.raises(PeriodNotEndedError, match=r"2026-11 has not ended yet .*2026-12-01 00:00"):
        service.generate(period="2026-11")
    with pytest.raises(InvalidRequestError, match="counterparty"):
        service.generate(period="2026-10", counterparty="  ")
    with pytest.raises(InvoiceNotFoundError, match="no invoice with id 99"):
        service.invoice(99)
    with pytest.raises(InvalidRequestError, match="after issued_to"):
        service.list_invoices(
            InvoiceFilter(issued_from=date(2026, 2, 1), issued_to=date(2026, 1, 1))
        )


def test_numbering_is_gapless_under_concurrent_requests(
    billing_store: BillingStore, trades: FakeTrades, clock: Clock
) -> None:
    names = [f"cp{i:02d}" for i in range(12)]
    _random_october(trades, n=120, names=names, seed=3)
    barrier = threading.Barrier(8)
    services = [
        BillingService(store=billing_store, trades=trades, config=config(), clock=clock)
        for _ in range(8)
    ]

    def work(worker: int) -> list[Invoice]:
        service = services[worker]
        barrier.wait()
        issued: list[Invoice] = []
        for step in range(5):  # overlapping counterparties: the same one from several threads
            name = names[(worker + step) % len(names)]
            issued += service.generate(period="2026-10", counterparty=name).issued
        issued += service.generate(period="2026-10").issued
        barrier.wait()  # every invoice exists: now corrections race with regenerations
        if worker % 2 == 0:
            issued += service.generate(
                period="2026-10", counterparty=names[worker], correction=True
            ).issued
        else:
            issued += service.generate(period="2026-10").issued
        return issued

    with ThreadPoolExecutor(8) as pool:
        issued = [doc for docs in pool.map(work, range(8)) for doc in docs]
    numbers = billing_store.numbers()
    assert sorted(numbers) == [f"PHO-2026-{n:06d}" for n in range(1, len(numbers) + 1)]
    assert sorted(d.number for d in issued) == sorted(numbers)  # nothing issued twice
    current = billing_store.current(Period(2026, 10))
    assert sorted(i.counterparty for i in current) == names  # exactly one current each
    credit_notes = [d for d in issued if d.kind is InvoiceKind.CREDIT_NOTE]
    assert len(credit_notes) == 4  # the four even workers corrected once each
    assert len(numbers) == len(names) + 2 * len(credit_notes)


def test_list_filters_and_statistics(
    service: BillingService, trades: FakeTrades, clock: Clock
) -> None:
    trades.add(buyer="acme", seller="beta", quantity_mw="1", price="100", start=OCT_START)
    service.generate(period="2026-10")
    clock.now += timedelta(days=40)
    november = OCT_START + timedelta(days=31, hours=1)  # 2026-11-01 00:00 Vienna
    trades.add(buyer="acme", seller="beta", quantity_mw="4", price="10", start=november)
    service.generate(period="2026-11")
    service.generate(period="2026-11", counterparty="beta", correction=True)

    page, stats = service.list_invoices(InvoiceFilter())
    assert [i.number for i in page] == [f"PHO-2026-{n:06d}" for n in (6, 5, 4, 3, 2, 1)]
    assert stats.count == 6
    assert stats.net_eur == Decimal("0.00")  # acme +25 +10, beta -25 -10, +10 reversed, -10
    assert stats.last is not None and stats.last.number == "PHO-2026-000006"
    page, stats = service.list_invoices(InvoiceFilter(counterparty="acme"))
    assert [(i.period, i.net_eur) for i in page] == [
        (Period(2026, 11), Decimal("10.00")),
        (Period(2026, 10), Decimal("25.00")),
    ]
    assert stats.count == 2 and stats.net_eur == Decimal("35.00")
    assert stats.gross_eur == Decimal("42.00")
    page, stats = service.list_invoices(InvoiceFilter(kind=InvoiceKind.CREDIT_NOTE))
    assert [i.counterparty for i in page] == ["beta"] and stats.net_eur == Decimal("10.00")
    page, _ = service.list_invoices(
        InvoiceFilter(period=Period(2026, 11), status=InvoiceStatus.ISSUED)
    )
    assert [i.number for i in page] == ["PHO-2026-000006", "PHO-2026-000005", "PHO-2026-000003"]
    page, _ = service.list_invoices(InvoiceFilter(), limit=2, before_id=page[1].invoice_id)
    assert [i.number for i in page] == ["PHO-2026-000004", "PHO-2026-000003"]
    page, stats = service.list_invoices(InvoiceFilter(issued_to=date(2026, 11, 30)))
    assert stats.count == 2 and {i.period for i in page} == {Period(2026, 10)}


def test_numbers_use_the_configured_prefix(
    billing_store: BillingStore, trades: FakeTrades, clock: Clock
) -> None:
    registry = CollectorRegistry()
    service = BillingService(
        store=billing_store,
        trades=trades,
        config=config(number_prefix="INV"),
        clock=clock,
        metrics=BillingMetrics(registry),
    )
    trades.add(buyer="acme", seller="beta", quantity_mw="1", price="1", start=OCT_START)
    assert registry.get_sample_value("pho_bo_invoices_total", {"kind": "invoice"}) == 0
    assert [i.number[:8] for i in service.generate(period="2026-10").invoices] == ["INV-2026"] * 2
    assert registry.get_sample_value("pho_bo_invoices_total", {"kind": "invoice"}) == 2
