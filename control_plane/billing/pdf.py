"""An invoice as a PDF (reportlab platypus): A4, issuer and recipient, number, dates, period,
the line items, totals, payment terms; page numbers on every page.

Rendered from the stored invoice (its issuer/recipient snapshots), never from current settings,
so the same invoice gives the same document. `invariant` output: no creation timestamp or
random document id, so the bytes are the same on every rendering. Fonts: the PDF standard
Helvetica (every viewer has it, nothing embedded); amounts as plain `1,234.56` in an `EUR`
column, so no glyph outside the standard encoding is needed. The line table repeats its header
on every page when the invoice has many lines.
"""

from __future__ import annotations

import io
from decimal import Decimal
from typing import Any, Final
from xml.sax.saxutils import escape

from reportlab.lib import colors
from reportlab.lib.pagesizes import A4
from reportlab.lib.styles import ParagraphStyle, getSampleStyleSheet
from reportlab.lib.units import mm
from reportlab.pdfgen.canvas import Canvas
from reportlab.platypus import Paragraph, SimpleDocTemplate, Spacer, Table, TableStyle
from reportlab.platypus.doctemplate import BaseDocTemplate

from control_plane.billing.models import Invoice, InvoiceKind, Party
from control_plane.exchange.models import Side

__all__ = ["format_eur", "format_mwh", "render_invoice"]

_MARGIN: Final = 18 * mm


def format_eur(value: Decimal) -> str:
    """`-1,234.56`: thousands separators, two decimals (the value is whole cents already)."""
    return f"{value:,.2f}"


def format_mwh(value: Decimal) -> str:
    """MWh with at least three and at most six decimals (1 kW for 15 min is 0.00025 MWh)."""
    text = f"{value:,.6f}"
    whole, _, frac = text.partition(".")
    frac = frac.rstrip("0").ljust(3, "0")
    return f"{whole}.{frac}"


def _party(party: Party, *, heading: str, style: ParagraphStyle) -> Paragraph:
    rows = [f"<b>{escape(heading)}</b>", f"<b>{escape(party.name)}</b>"]
    rows += [escape(a) for a in party.address]
    if party.vat_id:
        rows.append(f"VAT ID: {escape(party.vat_id)}")
    if party.email:
        rows.append(escape(party.email))
    return Paragraph("<br/>".join(rows), style)


def render_invoice(invoice: Invoice) -> bytes:
    """The invoice or credit note as PDF bytes."""
    styles = getSampleStyleSheet()
    body = ParagraphStyle("body", parent=styles["Normal"], fontName="Helvetica", fontSize=9)
    small = ParagraphStyle("small", parent=body, fontSize=8, leading=10)
    title = ParagraphStyle(
        "title", parent=styles["Title"], fontName="Helvetica-Bold", fontSize=16, alignment=0
    )
    kind = "Credit note" if invoice.kind is InvoiceKind.CREDIT_NOTE else "Invoice"
    buffer = io.BytesIO()
    doc = SimpleDocTemplate(
        buffer,
        pagesize=A4,
        leftMargin=_MARGIN,
        rightMargin=_MARGIN,
        topMargin=_MARGIN,
        bottomMargin=_MARGIN + 6 * mm,
        title=f"{kind} {invoice.number}",
        author=invoice.issuer.name,
        subject=f"{kind} {invoice.number}, period {invoice.period}, {invoice.counterparty}",
        creator="Phoenyra BESS Trade",
        invariant=1,
    )
    width = A4[0] - 2 * _MARGIN
    story: list[Any] = []

    header = Table(
        [
            [
                _party(invoice.issuer, heading="From", style=body),
                _party(invoice.recipient, heading="To", style=body),
            ]
        ],
        colWidths=[width / 2, width / 2],
    )
    header.setStyle(TableStyle([("VALIGN", (0, 0), (-1, -1), "TOP")]))
    story += [header, Spacer(1, 8 * mm), Paragraph(f"{kind} {invoice.number}", title)]

    facts = [
        ["Invoice number", invoice.number],
        ["Invoice date", invoice.issue_date.isoformat()],
        ["Due date", invoice.due_date.isoformat()],
        ["Billing period", str(invoice.period)],
        ["Counterparty", invoice.counterparty],
        ["Trades", str(invoice.trade_count)],
    ]
    facts_table = Table(facts, colWidths=[40 * mm, width - 40 * mm], hAlign="LEFT")
    facts_table.setStyle(
        TableStyle(
            [
                ("FONT", (0, 0), (0, -1), "Helvetica-Bold", 9),
                ("FONT", (1, 0), (1, -1), "Helvetica", 9),
                ("BOTTOMPADDING", (0, 0), (-1, -1), 1),
                ("TOPPADDING", (0, 0), (-1, -1), 1),
            ]
        )
    )
    story += [facts_table, Spacer(1, 6 * mm)]

    head = ["#", "Delivery day", "Product", "Side", "Trades", "Energy MWh", "Avg EUR/MWh",
            "Amount EUR"]  # fmt: skip
    rows: list[list[str]] = [head]
    for line in invoice.lines:
        rows.append(
            [
                str(line.line_no),
                line.delivery_day.isoformat(),
                f"{line.market} {line.product}",
                "bought" if line.side is Side.BUY else "sold",
                str(line.trade_count),
                format_mwh(line.energy_mwh),
                f"{line.avg_price_eur_per_mwh:,.3f}",
                format_eur(line.amount_eur),
            ]
        )
    col = [8 * mm, 22 * mm, 34 * mm, 13 * mm, 13 * mm, 25 * mm, 25 * mm]
    col.append(width - sum(col))
    items = Table(rows, colWidths=col, repeatRows=1)
    items.setStyle(
        TableStyle(
            [
                ("FONT", (0, 0), (-1, 0), "Helvetica-Bold", 8),
                ("FONT", (0, 1), (-1, -1), "Helvetica", 8),
                ("ALIGN", (4, 0), (-1, -1), "RIGHT"),
                ("ALIGN", (0, 0), (0, -1), "RIGHT"),
                ("LINEBELOW", (0, 0), (-1, 0), 0.6, colors.black),
                ("ROWBACKGROUNDS", (0, 1), (-1, -1), [colors.white, colors.HexColor("#f2f4f7")]),
                ("BOTTOMPADDING", (0, 0), (-1, -1), 2),
                ("TOPPADDING", (0, 0), (-1, -1), 2),
            ]
        )
    )
    story += [items, Spacer(1, 4 * mm)]

    totals = Table(
        [
            ["Net amount", f"{format_eur(invoice.net_eur)} {invoice.currency}"],
            [
                f"VAT {invoice.vat_rate_pct} %",
                f"{format_eur(invoice.vat_eur)} {invoice.currency}",
            ],
            ["Total amount", f"{format_eur(invoice.gross_eur)} {invoice.currency}"],
        ],
        colWidths=[40 * mm, 40 * mm],
        hAlign="RIGHT",
    )
    totals.setStyle(
        TableStyle(
            [
                ("FONT", (0, 0), (-1, 1), "Helvetica", 9),
                ("FONT", (0, 2), (-1, 2), "Helvetica-Bold", 10),
                ("ALIGN", (1, 0), (1, -1), "RIGHT"),
                ("LINEABOVE", (0, 2), (-1, 2), 0.8, colors.black),
            ]
        )
    )
    story += [totals, Spacer(1, 6 * mm)]

    if invoice.gross_eur < 0 and invoice.kind is InvoiceKind.INVOICE:
        story.append(Paragraph(
            f"The total is in your favour: we will pay {format_eur(-invoice.gross_eur)} "
            f"{invoice.currency} by the due date.", body))  # fmt: skip
    else:
        story.append(Paragraph(escape(invoice.payment_terms), body))
    if invoice.issuer.iban:
        bank = f"IBAN {escape(invoice.issuer.iban)}"
        if invoice.issuer.bic:
            bank += f", BIC {escape(invoice.issuer.bic)}"
        story.append(Paragraph(f"{bank}; reference {escape(invoice.number)}.", body))
    if invoice.note:
        story.append(Paragraph(escape(invoice.note), body))
    story += [
        Spacer(1, 4 * mm),
        Paragraph(
            "Amounts: energy bought by the counterparty is charged, energy sold is credited "
            "(negative). Line amounts are rounded to the cent so that they add up to the net "
            "amount, the exact sum of the trades rounded half-up.",
            small,
        ),
    ]

    def footer(canvas: Canvas, document: BaseDocTemplate) -> None:
        canvas.saveState()
        canvas.setFont("Helvetica", 7)
        canvas.drawString(_MARGIN, 10 * mm, f"{invoice.issuer.name} - {kind} {invoice.number}")
        canvas.drawRightString(A4[0] - _MARGIN, 10 * mm, f"Page {document.page}")
        canvas.restoreState()

    doc.build(story, onFirstPage=footer, onLaterPages=footer)
    return buffer.getvalue()
