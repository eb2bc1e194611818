"""The invoice PDF: its text (read back with pypdf) has the number, the parties, every line
item and the totals; many lines flow over pages; the bytes are deterministic."""

from __future__ import annotations

import io
from datetime import UTC, date, datetime
from decimal import Decimal

import pypdf

from control_plane.billing.models import (
    Invoice,
    InvoiceKind,
    InvoiceLine,
    InvoiceStatus,
    Period,
)
from control_plane.billing.pdf import format_eur, format_mwh, render_invoice
from control_plane.exchange.models import Side

from .conftest import ISSUER, RECIPIENTS


def _invoice(n_lines: int, **changes: object) -> Invoice:
    lines = tuple(
        InvoiceLine(
            line_no=i + 1,
            delivery_day=date(2026, 10, 1 + i % 31),
            market="epex_at" if i % 3 else "epex_de_lu",
            product_minutes=15 if i % 4 else 60,
            side=Side.BUY if i % 2 else Side.SELL,
            trade_count=i + 1,
            energy_wh=250 * (i + 7),
            avg_price_eur_per_mwh=Decimal("87.355") + i,
            amount_eur=(Decimal(1000 + 37 * i) / 100) * (1 if i % 2 else -1),
        )
        for i in range(n_lines)
    )
    net = sum((line.amount_eur for line in lines), Decimal("0.00"))
    vat = (net * Decimal("0.2")).quantize(Decimal("0.01"))
    values: dict[str, object] = {
        "invoice_id": 7,
        "number": "PHO-2026-000042",
        "kind": InvoiceKind.INVOICE,
        "status": InvoiceStatus.ISSUED,
        "period": Period(2026, 10),
        "counterparty": "acme",
        "issuer": ISSUER,
        "recipient": RECIPIENTS["acme"],
        "issue_date": date(2026, 11, 2),
        "due_date": date(2026, 11, 16),
        "issued_at": datetime(2026, 11, 2, 9, tzinfo=UTC),
        "currency": "EUR",
        "vat_rate_pct": Decimal(20),
        "net_eur": net,
        "vat_eur": vat,
        "gross_eur": net + vat,
        "payment_terms": "Payable within 14 days of the invoice date, by 2026-11-16.",
        "lines": lines,
        "trade_count": sum(line.trade_count for line in lines),
        "trades_digest": "x",
    }
    values.update(changes)
    return Invoice(**values)  # type: ignore[arg-type]


def _text(pdf: bytes) -> tuple[str, int]:
    reader = pypdf.PdfReader(io.BytesIO(pdf))
    return "\n".join(page.extract_text() for page in reader.pages), len(reader.pages)


def test_the_pdf_text_has_number_parties_lines_and_totals() -> None:
    invoice = _invoice(4)
    assert invoice.gross_eur > 0  # the counterparty pays: the payment terms are printed
    pdf = render_invoice(invoice)
    assert pdf.startswith(b"%PDF-") and pdf.rstrip().endswith(b"%%EOF")
    text, pages = _text(pdf)
    assert pages == 1
    for expected in (
        "Invoice PHO-2026-000042",
        "Phoenyra Energy Trading GmbH",
        "ATU12345678",
        "ACME Storage AG",
        "Hauptstrasse 5",
        "2026-11-02",
        "2026-11-16",
        "2026-10",
        "IBAN AT611904300234573201",
        "by 2026-11-16",
        f"Net amount {format_eur(invoice.net_eur)} EUR",
        f"VAT 20 % {format_eur(invoice.vat_eur)} EUR",
        f"Total amount {format_eur(invoice.gross_eur)} EUR",
    ):
        assert expected in " ".join(text.split()), expected
    lines_text = text.splitlines()
    for line in invoice.lines:
        # one table row: its cells appear in order in the extracted text
        cells = [
            str(line.line_no),
            line.delivery_day.isoformat(),
            f"{line.market} {line.product}",
            "bought" if line.side is Side.BUY else "sold",
            str(line.trade_count),
            format_mwh(line.energy_mwh),
            f"{line.avg_price_eur_per_mwh:,.3f}",
            format_eur(line.amount_eur),
        ]
        joined = " ".join(lines_text)
        assert " ".join(cells) in joined, cells


def test_many_lines_flow_over_pages_with_every_line() -> None:
    invoice = _invoice(120)
    text, pages = _text(render_invoice(invoice))
    assert pages >= 3
    assert text.count("Amount EUR") == pages  # the table header repeats on every page
    flat = " ".join(text.split())
    for line in invoice.lines:
        assert f"{line.delivery_day.isoformat()} {line.market} {line.product}" in flat
        assert format_eur(line.amount_eur) in flat
    assert f"Total amount {format_eur(invoice.gross_eur)} EUR" in flat
    assert f"Page {pages}" in flat


def test_a_credit_note_and_a_credit_balance_say_so() -> None:
    credit = _invoice(
        2,
        kind=InvoiceKind.CREDIT_NOTE,
        number="PHO-2026-000043",
        note="Reverses invoice PHO-2026-000042 of 2026-11-02 in full.",
    )
    flat = " ".join(_text(render_invoice(credit))[0].split())
    assert "Credit note PHO-2026-000043" in flat
    assert "Reverses invoice PHO-2026-000042" in flat
    owed = _invoice(1)  # one SELL line: the counterparty is owed money
    assert owed.gross_eur < 0
    flat = " ".join(_text(render_invoice(owed))[0].split())
    assert f"we will pay {format_eur(-owed.gross_eur)} EUR" in flat


def test_rendering_is_deterministic_and_escapes_markup() -> None:
    invoice = _invoice(3, counterparty="a<b>&c")
    assert render_invoice(invoice) == render_invoice(invoice)
    party = RECIPIENTS["acme"].__class__(name="Smith & <Sons>", address=("1 <Road>",))
    flat = " ".join(_text(render_invoice(_invoice(1, recipient=party)))[0].split())
    assert "Smith & <Sons>" in flat and "1 <Road>" in flat


def test_number_formats() -> None:
    assert format_eur(Decimal("-1234567.5")) == "-1,234,567.50"
    assert format_eur(Decimal("0.1")) == "0.10"
    assert format_mwh(Decimal("0.00025")) == "0.00025"
    assert format_mwh(Decimal("12")) == "12.000"
    assert format_mwh(Decimal("1234.5")) == "1,234.500"
