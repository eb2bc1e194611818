"""Domain types of billing and the pure arithmetic of an invoice.

**Who invoices whom.** The plane's exchange is the central counterparty of every trade it
matches, so its operator (the *issuer*, from settings) settles each counterparty once a month:
energy the counterparty **bought** is charged (a positive line), energy it **sold** is credited
(a negative line). One invoice per counterparty and period; its net total is what the
counterparty owes (negative: what it is owed). A counterparty that is both buyer and seller of
one trade (a self-match) gets both lines, netting to zero.

**Period.** `YYYY-MM` in the billing time zone (default Europe/Vienna, DESIGN 8: local time at
the edges): the trades whose delivery starts in [local month start, next month start). Line
items are per local delivery day, market, product (PT15M / PT60M) and side.

**Money.** Decimal end to end, never float. A trade's value (MW x hours x EUR/MWh at the
exchange's fixed scales) is exact. The net total is the exact sum of the period's trade values
rounded half-up to the cent, so it equals the sum of the trades to the cent. Line amounts are
rounded so that they add up to that total (largest-remainder method: every line is its exact
value floored to the cent, and the cents left over go to the lines with the largest remainders),
each within one cent of its exact value. VAT is the net total x the configured rate, rounded
half-up to the cent; gross = net + VAT. The store keeps cents as integers.

**Payment.** An issued, current invoice is marked paid by an admin (`paid_on`, an optional bank
reference): billing then asks its payment listener (the app wires the credit service) to settle
exactly the invoice's trades, by the invoice number. A credit note is never paid: it is settled
together with the invoice it reverses, by offset, when the correction is made (both get
`settlement` = offset, `paid_on` = the credit note's issue date, the other's number as the
reference). A paid invoice is not corrected (its trades are settled in credit already).
*Unpaid* = a current invoice (kind invoice, status issued) not marked paid: the open receivable
or payable.

**Numbers.** `<prefix>-<year>-<nnnnnn>`, one gapless series per issue year, shared by invoices
and credit notes (billing/store.py allocates them in the transaction that stores the invoice).
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from decimal import ROUND_FLOOR, ROUND_HALF_UP, Decimal
from enum import StrEnum
from typing import Final
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from control_plane.billing.errors import InvalidRequestError
from control_plane.exchange.models import Side, Trade

CENT: Final = Decimal("0.01")
AVG_PRICE_STEP: Final = Decimal("0.001")
CURRENCY: Final = "EUR"
_PERIOD = re.compile(r"(\d{4})-(\d{2})")
_PREFIX = re.compile(r"[A-Z0-9]{1,12}")


class InvoiceKind(StrEnum):
    INVOICE = "invoice"
    CREDIT_NOTE = "credit_note"
    """Reverses an invoice in full (a correction): its lines with the amounts negated."""


class InvoiceStatus(StrEnum):
    ISSUED = "issued"
    """The current document (an invoice not corrected, or any credit note)."""
    CORRECTED = "corrected"
    """An invoice reversed by a credit note; its replacement names it in `replaces_invoice_id`."""


class Settlement(StrEnum):
    """How a document was settled."""

    PAYMENT = "payment"
    """An invoice marked paid (`POST /api/billing/invoice/{id}/paid`)."""
    OFFSET = "offset"
    """A credit note and the invoice it reverses, against each other, at the correction."""


class PaymentFilter(StrEnum):
    PAID = "paid"
    """Marked paid (settlement = payment)."""
    UNPAID = "unpaid"
    """A current invoice not marked paid."""


@dataclass(frozen=True, slots=True)
class Period:
    """A billing month in the billing time zone."""

    year: int
    month: int

    @classmethod
    def parse(cls, text: object) -> Period:
        match = _PERIOD.fullmatch(text) if isinstance(text, str) else None
        if match is None or not 1 <= int(match[2]) <= 12 or int(match[1]) < 2000:
            raise InvalidRequestError(
                f"period={text!r} is not a month: give it as YYYY-MM, e.g. 2026-10"
            )
        return cls(int(match[1]), int(match[2]))

    def __str__(self) -> str:
        return f"{self.year:04d}-{self.month:02d}"

    @property
    def first_day(self) -> date:
        return date(self.year, self.month, 1)

    @property
    def next(self) -> Period:
        return Period(self.year + self.month // 12, self.month % 12 + 1)

    def bounds_utc(self, tz: ZoneInfo) -> tuple[datetime, datetime]:
        """[start, end) of the month at local midnight, in UTC."""
        start = datetime.combine(self.first_day, datetime.min.time(), tzinfo=tz)
        end = datetime.combine(self.next.first_day, datetime.min.time(), tzinfo=tz)
        return start.astimezone(UTC), end.astimezone(UTC)


@dataclass(frozen=True, slots=True)
class Party:
    """An issuer or recipient as printed on the invoice (a snapshot, kept with the invoice)."""

    name: str
    address: tuple[str, ...] = ()
    vat_id: str | None = None
    iban: str | None = None
    bic: str | None = None
    email: str | None = None

    def to_json(self) -> dict[str, object]:
        return {
            "name": self.name,
            "address": list(self.address),
            "vat_id": self.vat_id,
            "iban": self.iban,
            "bic": self.bic,
            "email": self.email,
        }

    @classmethod
    def from_json(cls, data: Mapping[str, object]) -> Party:
        def text(key: str) -> str | None:
            value = data.get(key)
            return None if value is None else str(value)

        address = data.get("address") or ()
        return cls(
            name=str(data["name"]),
            address=tuple(str(a) for a in address) if isinstance(address, list | tuple) else (),
            vat_id=text("vat_id"),
            iban=text("iban"),
            bic=text("bic"),
            email=text("email"),
        )


@dataclass(frozen=True, slots=True, kw_only=True)
class BillingConfig:
    """What every invoice takes from settings: issuer, VAT, terms, numbering, recipients."""

    issuer: Party
    vat_rate_pct: Decimal = Decimal(20)
    payment_days: int = 14
    number_prefix: str = "PHO"
    timezone: str = "Europe/Vienna"
    recipients: Mapping[str, Party] = field(default_factory=dict)
    vat_note: str | None = None
    """Printed under the totals, e.g. a reverse-charge notice when the rate is 0."""

    def __post_init__(self) -> None:
        problems = []
        if not Decimal(0) <= self.vat_rate_pct <= Decimal(100):
            problems.append(f"vat_rate_pct {self.vat_rate_pct} must be in [0, 100]")
        elif self.vat_rate_pct != self.vat_rate_pct.quantize(Decimal("0.001")):
            problems.append(f"vat_rate_pct {self.vat_rate_pct} has more than 3 decimals")
        if not 0 <= self.payment_days <= 365:
            problems.append(f"payment_days {self.payment_days} must be in [0, 365]")
        if not _PREFIX.fullmatch(self.number_prefix):
            problems.append(
                f"number_prefix {self.number_prefix!r} must be 1-12 upper-case letters/digits"
            )
        try:
            ZoneInfo(self.timezone)
        except (ZoneInfoNotFoundError, ValueError):
            problems.append(f"timezone {self.timezone!r} is not an IANA zone (Europe/Vienna)")
        if not self.issuer.name.strip():
            problems.append("the issuer needs a name")
        if problems:
            raise ValueError("billing settings: " + "; ".join(problems))

    @property
    def zone(self) -> ZoneInfo:
        return ZoneInfo(self.timezone)

    def payment_terms(self, due: date) -> str:
        if self.payment_days == 0:
            return f"Payable immediately, by {due.isoformat()}, without deduction."
        return (
            f"Payable within {self.payment_days} days of the invoice date, by "
            f"{due.isoformat()}, without deduction."
        )


@dataclass(frozen=True, slots=True, kw_only=True)
class InvoiceLine:
    """One line item: a counterparty's trades of one delivery day, market, product and side."""

    line_no: int
    delivery_day: date
    market: str
    product_minutes: int
    side: Side
    """The counterparty's side: BUY is charged (amount > 0), SELL is credited (amount < 0)."""
    trade_count: int
    energy_wh: int
    avg_price_eur_per_mwh: Decimal
    amount_eur: Decimal

    @property
    def energy_mwh(self) -> Decimal:
        return Decimal(self.energy_wh) / 1_000_000

    @property
    def product(self) -> str:
        return f"PT{self.product_minutes}M"

    @property
    def description(self) -> str:
        what = "energy bought" if self.side is Side.BUY else "energy sold"
        return f"{self.market} {self.product} {what}"


@dataclass(frozen=True, slots=True, kw_only=True)
class InvoiceDraft:
    """An invoice's content before it has a number."""

    counterparty: str
    lines: tuple[InvoiceLine, ...]
    net_eur: Decimal
    vat_eur: Decimal
    gross_eur: Decimal
    trade_count: int
    trades_digest: str
    """Fingerprint of the trades billed: a regeneration tells when they changed since."""
    trade_ids: tuple[int, ...] = ()
    """The trades billed, ascending (stored with the invoice: payment settles exactly these)."""


@dataclass(frozen=True, slots=True, kw_only=True)
class Invoice:
    """An issued invoice or credit note, as stored."""

    invoice_id: int
    number: str
    kind: InvoiceKind
    status: InvoiceStatus
    period: Period
    counterparty: str
    issuer: Party
    recipient: Party
    issue_date: date
    due_date: date
    issued_at: datetime
    currency: str
    vat_rate_pct: Decimal
    net_eur: Decimal
    vat_eur: Decimal
    gross_eur: Decimal
    payment_terms: str
    lines: tuple[InvoiceLine, ...]
    trade_count: int
    trades_digest: str
    corrects_invoice_id: int | None = None
    """A credit note: the invoice it reverses."""
    replaces_invoice_id: int | None = None
    """An invoice issued by a correction: the corrected one."""
    note: str | None = None
    settlement: Settlement | None = None
    """None: open (an unpaid current invoice; or a document issued before payments existed)."""
    paid_on: date | None = None
    paid_reference: str | None = None
    """The bank reference given when marked paid; for an offset, the other document's number."""

    @property
    def unpaid(self) -> bool:
        return (
            self.kind is InvoiceKind.INVOICE
            and self.status is InvoiceStatus.ISSUED
            and self.settlement is None
        )


@dataclass(frozen=True, slots=True)
class InvoiceStats:
    count: int
    net_eur: Decimal
    vat_eur: Decimal
    gross_eur: Decimal
    last: Invoice | None
    unpaid_count: int = 0
    unpaid_gross_eur: Decimal = Decimal("0.00")
    """Gross total of the unpaid current invoices among the matches (negative: payable)."""


@dataclass(frozen=True, slots=True)
class InvoiceFilter:
    period: Period | None = None
    counterparty: str | None = None
    kind: InvoiceKind | None = None
    status: InvoiceStatus | None = None
    issued_from: date | None = None
    issued_to: date | None = None
    """Issue date in [issued_from, issued_to]."""
    payment: PaymentFilter | None = None


@dataclass(frozen=True, slots=True)
class GenerateResult:
    """What a generate call left: the period's current invoices and what it issued now."""

    period: Period
    invoices: tuple[Invoice, ...]
    issued: tuple[Invoice, ...]
    outdated: tuple[str, ...]
    """Numbers of current invoices whose trades changed since they were issued (correct them)."""
    warnings: tuple[str, ...]


# -- arithmetic -----------------------------------------------------------------------------


def trades_by_counterparty(trades: Iterable[Trade]) -> dict[str, list[Trade]]:
    """Each counterparty's trades (a self-match is listed once)."""
    found: dict[str, list[Trade]] = {}
    for trade in trades:
        found.setdefault(trade.buy_counterparty, []).append(trade)
        if trade.sell_counterparty != trade.buy_counterparty:
            found.setdefault(trade.sell_counterparty, []).append(trade)
    return found


def draft_invoice(
    *, counterparty: str, trades: Sequence[Trade], vat_rate_pct: Decimal, tz: ZoneInfo
) -> InvoiceDraft | None:
    """The counterparty's invoice over `trades` (a period's trades); None if it has none."""
    groups: dict[tuple[date, str, int, Side], list[Trade]] = {}
    digest = hashlib.sha256()
    count = 0
    ids: list[int] = []
    for trade in sorted(trades, key=lambda t: t.trade_id):
        sides = []
        if trade.buy_counterparty == counterparty:
            sides.append(Side.BUY)
        if trade.sell_counterparty == counterparty:
            sides.append(Side.SELL)
        if not sides:
            continue
        count += 1
        ids.append(trade.trade_id)
        digest.update(f"{trade.trade_id}:{trade.quantity_mw}:{trade.price_eur_per_mwh};".encode())
        day = trade.delivery.start.astimezone(tz).date()
        for side in sides:
            key = (day, trade.market, trade.delivery.minutes, side)
            groups.setdefault(key, []).append(trade)
    if not groups:
        return None
    keys = sorted(groups)
    exact = []
    for key in keys:
        value = sum((t.value_eur for t in groups[key]), Decimal(0))
        exact.append(value if key[3] is Side.BUY else -value)
    amounts = allocate_cents(exact)
    lines = []
    for line_no, (key, amount) in enumerate(zip(keys, amounts, strict=True), start=1):
        day, market, minutes, side = key
        group = groups[key]
        energy_mwh = sum((t.energy_mwh for t in group), Decimal(0))
        value = sum((t.value_eur for t in group), Decimal(0))
        avg = (value / energy_mwh).quantize(AVG_PRICE_STEP, ROUND_HALF_UP)
        lines.append(
            InvoiceLine(
                line_no=line_no,
                delivery_day=day,
                market=market,
                product_minutes=minutes,
                side=side,
                trade_count=len(group),
                energy_wh=int(energy_mwh * 1_000_000),
                avg_price_eur_per_mwh=avg,
                amount_eur=amount,
            )
        )
    net = sum(amounts, Decimal("0.00"))
    vat = vat_of(net, vat_rate_pct)
    return InvoiceDraft(
        counterparty=counterparty,
        lines=tuple(lines),
        net_eur=net,
        vat_eur=vat,
        gross_eur=net + vat,
        trade_count=count,
        trades_digest=digest.hexdigest()[:32],
        trade_ids=tuple(ids),
    )


def round_cents(value: Decimal) -> Decimal:
    """Half-up (commercial rounding, away from zero at .5) to the cent."""
    return value.quantize(CENT, ROUND_HALF_UP)


def vat_of(net: Decimal, rate_pct: Decimal) -> Decimal:
    return round_cents(net * rate_pct / 100)


def allocate_cents(exact: Sequence[Decimal]) -> list[Decimal]:
    """Cent amounts, each within a cent of its exact value, adding up to the rounded sum."""
    total = int(round_cents(sum(exact, Decimal(0))) / CENT)
    floors = [int((v / CENT).to_integral_value(ROUND_FLOOR)) for v in exact]
    left = total - sum(floors)  # 0 <= left <= len(exact)
    remainders = sorted(range(len(exact)), key=lambda i: (-(exact[i] / CENT - floors[i]), i))
    for i in remainders[:left]:
        floors[i] += 1
    return [Decimal(c) * CENT for c in floors]


def due_date(issue: date, payment_days: int) -> date:
    return issue + timedelta(days=payment_days)
