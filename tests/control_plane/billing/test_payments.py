"""Invoice payments on a real store (SQLite and PostgreSQL): marked paid once, idempotent,
refusals, the payment listener told exactly the invoice's trades, offsets at corrections,
the paid/unpaid filters and statistics, invoices issued before trade ids were stored."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import date, timedelta
from decimal import Decimal

import pytest
import sqlalchemy as sa

from control_plane.billing.errors import (
    InvalidRequestError,
    InvoiceConflictError,
    SettlementRefusedError,
)
from control_plane.billing.models import (
    InvoiceFilter,
    InvoiceKind,
    InvoiceStatus,
    PaymentFilter,
    Settlement,
)
from control_plane.billing.service import BillingService
from control_plane.billing.store import BillingStore, invoice_trades

from .conftest import OCT_START, Clock, FakeTrades, config

PAID_ON = date(2026, 11, 2)


@dataclass
class Listener:
    """A payment listener that records its calls and refuses when told to."""

    calls: list[dict[str, object]] = field(default_factory=list)
    refuse: bool = False

    def __call__(
        self,
        *,
        counterparty: str,
        trade_ids: Sequence[int],
        settled_on: date,
        reference_text: str,
    ) -> object:
        if self.refuse:
            raise SettlementRefusedError("credit refused: trades settled by hand")
        self.calls.append(
            {
                "counterparty": counterparty,
                "trade_ids": list(trade_ids),
                "settled_on": settled_on,
                "reference_text": reference_text,
            }
        )
        return None


@pytest.fixture
def listener(service: BillingService) -> Listener:
    found = Listener()
    service.on_paid = found
    return found


def _october(trades: FakeTrades) -> None:
    trades.add(buyer="acme", seller="beta", quantity_mw="2", price="80", start=OCT_START)
    trades.add(buyer="gamma", seller="beta", quantity_mw="1", price="60", start=OCT_START)
    trades.add(
        buyer="beta",
        seller="acme",
        quantity_mw="1",
        price="40",
        start=OCT_START + timedelta(days=3),
    )
    trades.add(buyer="acme", seller="acme", quantity_mw="1", price="50", start=OCT_START)


def test_paid_once_settles_exactly_the_invoices_trades(
    service: BillingService, trades: FakeTrades, listener: Listener
) -> None:
    _october(trades)
    trades.add(  # November: not on the October invoice
        buyer="acme",
        seller="beta",
        quantity_mw="1",
        price="70",
        start=OCT_START + timedelta(days=32),
    )
    acme = next(i for i in service.generate(period="2026-10").invoices if i.counterparty == "acme")
    assert acme.settlement is None and acme.unpaid

    paid = service.mark_paid(invoice_id=acme.invoice_id, paid_on=PAID_ON, reference=" BANK-1 ")
    assert (paid.settlement, paid.paid_on, paid.paid_reference) == (
        Settlement.PAYMENT,
        PAID_ON,
        "BANK-1",
    )
    assert listener.calls == [
        {
            "counterparty": "acme",
            "trade_ids": [1, 3, 4],
            "settled_on": PAID_ON,
            "reference_text": acme.number,
        }
    ]
    assert service.invoice(acme.invoice_id) == paid

    again = service.mark_paid(invoice_id=acme.invoice_id, paid_on=PAID_ON, reference="BANK-1")
    assert again == paid and len(listener.calls) == 1  # idempotent: not settled twice
    for other_date, other_ref in ((PAID_ON - timedelta(days=1), "BANK-1"), (PAID_ON, None)):
        with pytest.raises(InvoiceConflictError, match="already paid"):
            service.mark_paid(invoice_id=acme.invoice_id, paid_on=other_date, reference=other_ref)
    assert len(listener.calls) == 1


def test_refusals_say_what_is_wrong(
    service: BillingService, trades: FakeTrades, listener: Listener, clock: Clock
) -> None:
    _october(trades)
    acme = next(i for i in service.generate(period="2026-10").invoices if i.counterparty == "acme")
    today = clock.now.date()
    with pytest.raises(InvalidRequestError, match="in the future"):
        service.mark_paid(invoice_id=acme.invoice_id, paid_on=today + timedelta(days=1))
    with pytest.raises(InvalidRequestError, match="before invoice"):
        service.mark_paid(invoice_id=acme.invoice_id, paid_on=acme.issue_date - timedelta(1))
    for bad in ("", "   ", "x" * 129, "a\nb"):
        with pytest.raises(InvalidRequestError, match="reference="):
            service.mark_paid(invoice_id=acme.invoice_id, paid_on=today, reference=bad)
    listener.refuse = True
    with pytest.raises(SettlementRefusedError):
        service.mark_paid(invoice_id=acme.invoice_id, paid_on=today)
    assert service.invoice(acme.invoice_id).settlement is None  # not marked paid
    assert listener.calls == []

    listener.refuse = False
    fixed = service.generate(period="2026-10", counterparty="acme", correction=True)
    note = next(i for i in fixed.issued if i.kind is InvoiceKind.CREDIT_NOTE)
    with pytest.raises(InvoiceConflictError, match="is a credit note"):
        service.mark_paid(invoice_id=note.invoice_id, paid_on=today)
    with pytest.raises(InvoiceConflictError, match="was corrected"):
        service.mark_paid(invoice_id=acme.invoice_id, paid_on=today)
    assert listener.calls == []


def test_a_correction_offsets_the_credit_note_and_its_invoice(
    service: BillingService, trades: FakeTrades, billing_store: BillingStore
) -> None:
    _october(trades)
    first = service.generate(period="2026-10", counterparty="acme").invoices[0]
    fixed = service.generate(period="2026-10", counterparty="acme", correction=True)
    note, replacement = fixed.issued
    assert (note.settlement, note.paid_on, note.paid_reference) == (
        Settlement.OFFSET,
        note.issue_date,
        first.number,
    )
    old = service.invoice(first.invoice_id)
    assert (old.status, old.settlement, old.paid_reference) == (
        InvoiceStatus.CORRECTED,
        Settlement.OFFSET,
        note.number,
    )
    assert service.invoice(note.invoice_id) == note
    assert replacement.settlement is None and replacement.unpaid
    # the credit note keeps the trades of the invoice it reverses; the new one its own
    assert billing_store.trade_ids(note.invoice_id) == billing_store.trade_ids(first.invoice_id)
    assert billing_store.trade_ids(replacement.invoice_id) == (1, 3, 4)


def test_a_paid_invoice_is_not_corrected(
    service: BillingService, trades: FakeTrades, listener: Listener, billing_store: BillingStore
) -> None:
    _october(trades)
    result = service.generate(period="2026-10")
    beta = next(i for i in result.invoices if i.counterparty == "beta")
    service.mark_paid(invoice_id=beta.invoice_id, paid_on=PAID_ON)
    numbers = billing_store.numbers()
    with pytest.raises(InvoiceConflictError, match=f"{beta.number} of beta .* is paid"):
        service.generate(period="2026-10", correction=True)
    assert billing_store.numbers() == numbers  # nothing issued, no number used
    fixed = service.generate(period="2026-10", counterparty="acme", correction=True)
    assert len(fixed.issued) == 2


def test_paid_and_unpaid_filters_and_statistics(
    service: BillingService, trades: FakeTrades, listener: Listener
) -> None:
    _october(trades)
    by_name = {i.counterparty: i for i in service.generate(period="2026-10").invoices}
    service.mark_paid(invoice_id=by_name["gamma"].invoice_id, paid_on=PAID_ON)
    service.generate(period="2026-10", counterparty="acme", correction=True)

    paid, paid_stats = service.list_invoices(InvoiceFilter(payment=PaymentFilter.PAID))
    assert [i.counterparty for i in paid] == ["gamma"]
    assert paid_stats.unpaid_count == 0 and paid_stats.unpaid_gross_eur == 0
    unpaid, stats = service.list_invoices(InvoiceFilter(payment=PaymentFilter.UNPAID))
    assert sorted(i.counterparty for i in unpaid) == ["acme", "beta"]
    assert all(i.kind is InvoiceKind.INVOICE and i.settlement is None for i in unpaid)
    assert stats.unpaid_count == 2
    assert stats.unpaid_gross_eur == sum((i.gross_eur for i in unpaid), Decimal(0))
    everything, all_stats = service.list_invoices(InvoiceFilter())
    assert len(everything) == 5  # 3 invoices, a credit note, a replacement
    assert (all_stats.unpaid_count, all_stats.unpaid_gross_eur) == (2, stats.unpaid_gross_eur)
    _, beta_stats = service.list_invoices(
        InvoiceFilter(counterparty="beta", payment=PaymentFilter.UNPAID)
    )
    assert beta_stats.unpaid_gross_eur == by_name["beta"].gross_eur < 0  # payable to beta


def test_an_invoice_issued_before_trade_ids_were_stored(
    service: BillingService, trades: FakeTrades, listener: Listener, billing_store: BillingStore
) -> None:
    _october(trades)
    by_name = {i.counterparty: i for i in service.generate(period="2026-10").invoices}
    with billing_store.engine.begin() as conn:  # as migration 2 leaves older invoices
        conn.execute(sa.delete(invoice_trades))
    assert billing_store.trade_ids(by_name["acme"].invoice_id) == ()

    service.mark_paid(invoice_id=by_name["acme"].invoice_id, paid_on=PAID_ON)
    assert listener.calls[-1]["trade_ids"] == [1, 3, 4]  # recovered from the exchange
    assert billing_store.trade_ids(by_name["acme"].invoice_id) == (1, 3, 4)  # and kept

    trades.add(buyer="beta", seller="gamma", quantity_mw="1", price="10", start=OCT_START)
    with pytest.raises(InvoiceConflictError, match="trades of beta in 2026-10 changed"):
        service.mark_paid(invoice_id=by_name["beta"].invoice_id, paid_on=PAID_ON)
    assert service.invoice(by_name["beta"].invoice_id).settlement is None


def test_without_a_listener_the_payment_is_only_recorded(
    billing_store: BillingStore, trades: FakeTrades, clock: Clock
) -> None:
    service = BillingService(store=billing_store, trades=trades, config=config(), clock=clock)
    _october(trades)
    acme = service.generate(period="2026-10", counterparty="acme").invoices[0]
    assert service.mark_paid(invoice_id=acme.invoice_id, paid_on=PAID_ON).paid_on == PAID_ON
