"""Billing's API models (wire types, apart from the domain types in models.py, STYLE 3).

Amounts are decimal strings in EUR with two decimals ("1234.56", "-0.10"), never floats.
"""

from __future__ import annotations

from datetime import date, datetime
from decimal import Decimal
from enum import StrEnum
from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field, PlainSerializer

from control_plane.billing.models import (
    GenerateResult,
    Invoice,
    InvoiceKind,
    InvoiceLine,
    InvoiceStats,
    InvoiceStatus,
    Party,
    PaymentFilter,
    Settlement,
)


def _plain(value: Decimal) -> str:
    return format(value, "f")


DecimalOut = Annotated[Decimal, PlainSerializer(_plain, return_type=str, when_used="json")]


class GenerateRequest(BaseModel):
    """Generate a month's invoices: all counterparties, or one."""

    model_config = ConfigDict(extra="forbid")

    period: str = Field(pattern=r"^\d{4}-\d{2}$", examples=["2026-10"], description="YYYY-MM")
    counterparty: str | None = Field(
        default=None, min_length=1, max_length=64, description="only this counterparty"
    )
    correction: bool = Field(
        default=False,
        description="reverse the current invoices with credit notes and issue new ones from "
        "the trades as they are now (false: existing invoices are returned as they are)",
    )


class PaidRequest(BaseModel):
    """An invoice's payment as received."""

    model_config = ConfigDict(extra="forbid")

    paid_on: date = Field(description="the day the payment was received (YYYY-MM-DD)")
    reference: str | None = Field(
        default=None, min_length=1, max_length=128, description="the bank reference"
    )


class StatusFilter(StrEnum):
    """`status` of the invoice list: a document status, or a payment state."""

    ISSUED = "issued"
    CORRECTED = "corrected"
    PAID = "paid"
    UNPAID = "unpaid"

    @property
    def document(self) -> InvoiceStatus | None:
        return InvoiceStatus(self.value) if self.value in set(InvoiceStatus) else None

    @property
    def payment(self) -> PaymentFilter | None:
        return PaymentFilter(self.value) if self.value in set(PaymentFilter) else None


class PartyPublic(BaseModel):
    name: str
    address: list[str]
    vat_id: str | None
    email: str | None

    @classmethod
    def of(cls, party: Party) -> PartyPublic:
        return cls(
            name=party.name, address=list(party.address), vat_id=party.vat_id, email=party.email
        )


class LinePublic(BaseModel):
    line_no: int
    delivery_day: date
    market: str
    product: str
    side: str = Field(description="the counterparty's side: BUY is charged, SELL credited")
    description: str
    trade_count: int
    energy_mwh: DecimalOut
    avg_price_eur_per_mwh: DecimalOut
    amount_eur: DecimalOut

    @classmethod
    def of(cls, line: InvoiceLine) -> LinePublic:
        return cls(
            line_no=line.line_no,
            delivery_day=line.delivery_day,
            market=line.market,
            product=line.product,
            side=line.side.value,
            description=line.description,
            trade_count=line.trade_count,
            energy_mwh=line.energy_mwh,
            avg_price_eur_per_mwh=line.avg_price_eur_per_mwh,
            amount_eur=line.amount_eur,
        )


class InvoicePublic(BaseModel):
    """An invoice or credit note; its PDF is at `pdf_url`."""

    id: int
    number: str
    kind: InvoiceKind
    status: InvoiceStatus
    period: str
    counterparty: str
    issuer: PartyPublic
    recipient: PartyPublic
    issue_date: date
    due_date: date
    issued_at: datetime
    currency: str
    vat_rate_pct: DecimalOut
    net_eur: DecimalOut
    vat_eur: DecimalOut
    gross_eur: DecimalOut
    payment_terms: str
    trade_count: int
    corrects_invoice_id: int | None
    replaces_invoice_id: int | None
    note: str | None
    settlement: Settlement | None = Field(
        description="payment: marked paid; offset: a credit note and the invoice it reverses; "
        "null: open"
    )
    paid_on: date | None
    paid_reference: str | None = Field(
        description="the bank reference (payment) or the other document's number (offset)"
    )
    pdf_url: str
    lines: list[LinePublic] | None = Field(
        default=None, description="the line items (in the detail and generate answers)"
    )

    @classmethod
    def of(cls, invoice: Invoice, *, with_lines: bool = True) -> InvoicePublic:
        return cls(
            id=invoice.invoice_id,
            number=invoice.number,
            kind=invoice.kind,
            status=invoice.status,
            period=str(invoice.period),
            counterparty=invoice.counterparty,
            issuer=PartyPublic.of(invoice.issuer),
            recipient=PartyPublic.of(invoice.recipient),
            issue_date=invoice.issue_date,
            due_date=invoice.due_date,
            issued_at=invoice.issued_at,
            currency=invoice.currency,
            vat_rate_pct=invoice.vat_rate_pct,
            net_eur=invoice.net_eur,
            vat_eur=invoice.vat_eur,
            gross_eur=invoice.gross_eur,
            payment_terms=invoice.payment_terms,
            trade_count=invoice.trade_count,
            corrects_invoice_id=invoice.corrects_invoice_id,
            replaces_invoice_id=invoice.replaces_invoice_id,
            note=invoice.note,
            settlement=invoice.settlement,
            paid_on=invoice.paid_on,
            paid_reference=invoice.paid_reference,
            pdf_url=f"/api/billing/invoice/{invoice.invoice_id}",
            lines=[LinePublic.of(line) for line in invoice.lines] if with_lines else None,
        )


class GenerateResponse(BaseModel):
    period: str
    invoices: list[InvoicePublic] = Field(description="the period's current invoices")
    issued: list[str] = Field(description="numbers issued by this call (credit notes too)")
    outdated: list[str] = Field(
        description="current invoices whose trades changed since issue: generate with "
        "correction to replace them"
    )
    warnings: list[str]

    @classmethod
    def of(cls, result: GenerateResult) -> GenerateResponse:
        return cls(
            period=str(result.period),
            invoices=[InvoicePublic.of(i) for i in result.invoices],
            issued=[i.number for i in result.issued],
            outdated=list(result.outdated),
            warnings=list(result.warnings),
        )


class StatsPublic(BaseModel):
    """Over every document matching the filters (not only the page)."""

    count: int
    total_net_eur: DecimalOut
    total_vat_eur: DecimalOut
    total_gross_eur: DecimalOut
    unpaid_count: int = Field(description="current invoices not marked paid")
    total_unpaid_gross_eur: DecimalOut = Field(
        description="their gross total (what is still to be received; negative: to be paid)"
    )
    last_invoice: InvoicePublic | None

    @classmethod
    def of(cls, stats: InvoiceStats) -> StatsPublic:
        return cls(
            count=stats.count,
            total_net_eur=stats.net_eur,
            total_vat_eur=stats.vat_eur,
            total_gross_eur=stats.gross_eur,
            unpaid_count=stats.unpaid_count,
            total_unpaid_gross_eur=stats.unpaid_gross_eur,
            last_invoice=None
            if stats.last is None
            else InvoicePublic.of(stats.last, with_lines=False),
        )


class InvoiceList(BaseModel):
    invoices: list[InvoicePublic]
    next_cursor: int | None = Field(description="pass as `cursor` for the next, older page")
    stats: StatsPublic
