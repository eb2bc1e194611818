"""Durable invoices: SQLAlchemy Core on the plane's shared engine (SQLite or PostgreSQL).

**Gapless numbers.** A number is taken from its series row (`billing_number_series`, one per
prefix and issue year) in the same transaction that stores the invoice, so a failed or rolled
back generation gives its numbers back and a committed one has used every number it took:
there is never a hole and never a duplicate (the `number` column is unique on top).

**Serialised issuing.** Every issuing transaction (`BillingStore.issuing()`) first takes the
billing lock: on PostgreSQL the transaction-level advisory lock `BILLING_LOCK_KEY`, on SQLite
the database write lock (`BEGIN IMMEDIATE`, `db.for_writes`). Two concurrent generations of the
same period therefore run one after the other, and the second one sees the first one's invoices
and returns them instead of issuing again (idempotency). A partial unique index allows one
current (`issued`) invoice per period and counterparty as the last line of defence.

Amounts are integer cents on disk, the VAT rate integer milli-percent, energy integer Wh and
average prices integer milli-EUR/MWh: both backends round-trip them exactly. Issuer and
recipient are stored as JSON snapshots, so a PDF rendered later shows what was issued even
after the settings changed.

**Trades and payments** (migration 2, new tables so the shipped `billing_invoices` stays as it
was): `billing_invoice_trades` keeps the trade ids of every document (a credit note those of
the invoice it reverses), so paying an invoice settles exactly the trades it billed, however the
exchange's trades look later. `billing_invoice_payments` holds at most one settlement per
document (primary key): `payment` (marked paid, with the date and the bank reference) or
`offset` (a credit note and the invoice it reverses, recorded in the correcting transaction).
Migration 2 records the offsets of corrections made before it; invoices issued before it have
no stored trade ids (billing/service.py recovers them from the exchange and checks them against
the invoice's trades digest).

Tables `billing_number_series`, `billing_invoices`, `billing_invoice_lines`,
`billing_invoice_trades`, `billing_invoice_payments`; migrations under the service name
"billing" in the shared runner (`control_plane.db.migrate`).
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass, replace
from datetime import date, datetime
from decimal import Decimal
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

from control_plane import db
from control_plane.billing.errors import BillingStoreError
from control_plane.billing.models import (
    AVG_PRICE_STEP,
    CENT,
    CURRENCY,
    Invoice,
    InvoiceFilter,
    InvoiceKind,
    InvoiceLine,
    InvoiceStats,
    InvoiceStatus,
    Party,
    PaymentFilter,
    Period,
    Settlement,
)
from control_plane.db import Migration
from control_plane.exchange.models import Side
from control_plane.exchange.store import UtcDateTime

__all__ = ["BILLING_LOCK_KEY", "MIGRATIONS", "SERVICE", "BillingStore", "Issuing", "NewInvoice"]

SERVICE = "billing"
BILLING_LOCK_KEY = 0x70686F2D62696C6C  # "pho-bill": the advisory lock of issuing transactions
_MILLI_PCT = Decimal("0.001")

metadata = sa.MetaData()
_Id = sa.BigInteger().with_variant(sa.Integer(), "sqlite")  # SQLite autoincrements INTEGER only

series = sa.Table(
    "billing_number_series",
    metadata,
    sa.Column("series", sa.String(32), primary_key=True),
    sa.Column("last_number", sa.BigInteger, nullable=False),
    sa.CheckConstraint("last_number > 0", name="ck_billing_series_positive"),
)

invoices = sa.Table(
    "billing_invoices",
    metadata,
    sa.Column("invoice_id", _Id, primary_key=True, autoincrement=True),
    sa.Column("number", sa.String(40), nullable=False, unique=True),
    sa.Column("kind", sa.String(16), nullable=False),
    sa.Column("status", sa.String(16), nullable=False),
    sa.Column("period", sa.String(7), nullable=False),
    sa.Column("counterparty", sa.String(64), nullable=False),
    sa.Column("issuer_json", sa.Text, nullable=False),
    sa.Column("recipient_json", sa.Text, nullable=False),
    sa.Column("issue_date", sa.Date, nullable=False),
    sa.Column("due_date", sa.Date, nullable=False),
    sa.Column("issued_at", UtcDateTime, nullable=False),
    sa.Column("currency", sa.String(3), nullable=False),
    sa.Column("vat_rate_milli_pct", sa.Integer, nullable=False),
    sa.Column("net_cents", sa.BigInteger, nullable=False),
    sa.Column("vat_cents", sa.BigInteger, nullable=False),
    sa.Column("gross_cents", sa.BigInteger, nullable=False),
    sa.Column("payment_terms", sa.Text, nullable=False),
    sa.Column("trade_count", sa.Integer, nullable=False),
    sa.Column("trades_digest", sa.String(64), nullable=False),
    sa.Column(
        "corrects_invoice_id", _Id, sa.ForeignKey("billing_invoices.invoice_id"), nullable=True
    ),
    sa.Column(
        "replaces_invoice_id", _Id, sa.ForeignKey("billing_invoices.invoice_id"), nullable=True
    ),
    sa.Column("note", sa.Text, nullable=True),
    sa.CheckConstraint("kind IN ('invoice', 'credit_note')", name="ck_billing_invoices_kind"),
    sa.CheckConstraint("status IN ('issued', 'corrected')", name="ck_billing_invoices_status"),
    sa.CheckConstraint("gross_cents = net_cents + vat_cents", name="ck_billing_invoices_sum"),
)

lines = sa.Table(
    "billing_invoice_lines",
    metadata,
    sa.Column("invoice_id", _Id, sa.ForeignKey("billing_invoices.invoice_id"), primary_key=True),
    sa.Column("line_no", sa.Integer, primary_key=True, autoincrement=False),
    sa.Column("delivery_day", sa.Date, nullable=False),
    sa.Column("market", sa.String(32), nullable=False),
    sa.Column("product_minutes", sa.SmallInteger, nullable=False),
    sa.Column("side", sa.String(4), nullable=False),
    sa.Column("trade_count", sa.Integer, nullable=False),
    sa.Column("energy_wh", sa.BigInteger, nullable=False),
    sa.Column("avg_price_meur_per_mwh", sa.BigInteger, nullable=False),
    sa.Column("amount_cents", sa.BigInteger, nullable=False),
    sa.CheckConstraint("side IN ('BUY', 'SELL')", name="ck_billing_lines_side"),
)

invoice_trades = sa.Table(
    "billing_invoice_trades",
    metadata,
    sa.Column("invoice_id", _Id, sa.ForeignKey("billing_invoices.invoice_id"), primary_key=True),
    sa.Column("trade_id", sa.BigInteger, primary_key=True, autoincrement=False),
)

payments = sa.Table(
    "billing_invoice_payments",
    metadata,
    sa.Column("invoice_id", _Id, sa.ForeignKey("billing_invoices.invoice_id"), primary_key=True),
    sa.Column("kind", sa.String(16), nullable=False),
    sa.Column("paid_on", sa.Date, nullable=False),
    sa.Column("reference", sa.String(128), nullable=True),
    sa.Column("recorded_at", UtcDateTime, nullable=False),
    sa.CheckConstraint("kind IN ('payment', 'offset')", name="ck_billing_payments_kind"),
)

_current_index = sa.Index(
    "ux_billing_invoices_current",
    invoices.c.period,
    invoices.c.counterparty,
    unique=True,
    sqlite_where=sa.text("kind = 'invoice' AND status = 'issued'"),
    postgresql_where=sa.text("kind = 'invoice' AND status = 'issued'"),
)
_listing_index = sa.Index("ix_billing_invoices_period", invoices.c.period, invoices.c.counterparty)


def _v1_tables(conn: Connection) -> None:
    metadata.create_all(conn, tables=[series, invoices, lines], checkfirst=False)


def _v2_trades_and_payments(conn: Connection) -> None:
    metadata.create_all(conn, tables=[invoice_trades, payments], checkfirst=False)
    # Corrections made before this version: each credit note and its invoice offset each other.
    original = invoices.alias("original")
    pairs = conn.execute(
        sa.select(
            invoices.c.invoice_id,
            invoices.c.number,
            invoices.c.issue_date,
            invoices.c.issued_at,
            original.c.invoice_id.label("original_id"),
            original.c.number.label("original_number"),
        ).join(original, original.c.invoice_id == invoices.c.corrects_invoice_id)
    ).all()
    for pair in pairs:
        conn.execute(
            payments.insert(),
            [
                _offset_row(pair.invoice_id, pair.issue_date, pair.original_number, pair.issued_at),
                _offset_row(pair.original_id, pair.issue_date, pair.number, pair.issued_at),
            ],
        )


MIGRATIONS: tuple[Migration, ...] = (
    Migration(1, "billing tables", _v1_tables),
    Migration(2, "invoice trade ids and payments", _v2_trades_and_payments),
)


def _offset_row(invoice_id: int, on: date, other_number: str, at: datetime) -> dict[str, Any]:
    return {
        "invoice_id": invoice_id,
        "kind": Settlement.OFFSET.value,
        "paid_on": on,
        "reference": other_number,
        "recorded_at": at,
    }


def _cents(value: Decimal) -> int:
    units = value / CENT
    if units != units.to_integral_value():
        raise ValueError(f"{value} EUR is not whole cents")
    return int(units)


def _eur(cents: int) -> Decimal:
    return Decimal(cents) * CENT


@dataclass(frozen=True, slots=True, kw_only=True)
class NewInvoice:
    """What `Issuing.insert` needs; the store adds the id and the number."""

    kind: InvoiceKind
    period: Period
    counterparty: str
    issuer: Party
    recipient: Party
    issue_date: date
    due_date: date
    issued_at: datetime
    vat_rate_pct: Decimal
    net_eur: Decimal
    vat_eur: Decimal
    gross_eur: Decimal
    payment_terms: str
    lines: tuple[InvoiceLine, ...]
    trade_count: int
    trades_digest: str
    corrects_invoice_id: int | None = None
    replaces_invoice_id: int | None = None
    note: str | None = None
    trade_ids: tuple[int, ...] = ()


class Issuing:
    """One issuing transaction holding the billing lock (from `BillingStore.issuing()`)."""

    def __init__(self, conn: Connection) -> None:
        self._conn = conn

    def current(self, period: Period, counterparty: str | None = None) -> list[Invoice]:
        """The period's current invoices (not corrected), by counterparty."""
        return _current(self._conn, period, counterparty)

    def next_number(self, prefix: str, year: int) -> str:
        """The next number of the series `<prefix>-<year>` (the first is 000001)."""
        name = f"{prefix}-{year:04d}"
        number = self._conn.scalar(
            series.update()
            .where(series.c.series == name)
            .values(last_number=series.c.last_number + 1)
            .returning(series.c.last_number)
        )
        if number is None:
            self._conn.execute(series.insert().values(series=name, last_number=1))
            number = 1
        return f"{name}-{int(number):06d}"

    def insert(self, new: NewInvoice, *, number_prefix: str) -> Invoice:
        """Store `new` under the next number of its prefix and issue year."""
        number = self.next_number(number_prefix, new.issue_date.year)
        invoice_id = self._conn.scalar(
            invoices.insert()
            .values(
                number=number,
                kind=new.kind.value,
                status=InvoiceStatus.ISSUED.value,
                period=str(new.period),
                counterparty=new.counterparty,
                issuer_json=json.dumps(new.issuer.to_json(), sort_keys=True),
                recipient_json=json.dumps(new.recipient.to_json(), sort_keys=True),
                issue_date=new.issue_date,
                due_date=new.due_date,
                issued_at=new.issued_at,
                currency=CURRENCY,
                vat_rate_milli_pct=int(new.vat_rate_pct / _MILLI_PCT),
                net_cents=_cents(new.net_eur),
                vat_cents=_cents(new.vat_eur),
                gross_cents=_cents(new.gross_eur),
                payment_terms=new.payment_terms,
                trade_count=new.trade_count,
                trades_digest=new.trades_digest,
                corrects_invoice_id=new.corrects_invoice_id,
                replaces_invoice_id=new.replaces_invoice_id,
                note=new.note,
            )
            .returning(invoices.c.invoice_id)
        )
        assert invoice_id is not None  # noqa: S101 - RETURNING of an INSERT always has a row
        if new.lines:
            self._conn.execute(
                lines.insert(), [_line_row(int(invoice_id), line) for line in new.lines]
            )
        _insert_trade_ids(self._conn, int(invoice_id), new.trade_ids)
        return Invoice(
            invoice_id=int(invoice_id),
            number=number,
            kind=new.kind,
            status=InvoiceStatus.ISSUED,
            period=new.period,
            counterparty=new.counterparty,
            issuer=new.issuer,
            recipient=new.recipient,
            issue_date=new.issue_date,
            due_date=new.due_date,
            issued_at=new.issued_at,
            currency=CURRENCY,
            vat_rate_pct=new.vat_rate_pct,
            net_eur=new.net_eur,
            vat_eur=new.vat_eur,
            gross_eur=new.gross_eur,
            payment_terms=new.payment_terms,
            lines=new.lines,
            trade_count=new.trade_count,
            trades_digest=new.trades_digest,
            corrects_invoice_id=new.corrects_invoice_id,
            replaces_invoice_id=new.replaces_invoice_id,
            note=new.note,
        )

    def get(self, invoice_id: int) -> Invoice | None:
        """The document as it is now, read under the billing lock."""
        return _get(self._conn, invoice_id)

    def trade_ids(self, invoice_id: int) -> tuple[int, ...]:
        return _trade_ids(self._conn, invoice_id)

    def offset(self, credit_note: Invoice, original: Invoice) -> tuple[Invoice, Invoice]:
        """Record the credit note and the (unpaid) invoice it reverses as settled by offset."""
        self._conn.execute(
            payments.insert(),
            [
                _offset_row(
                    credit_note.invoice_id,
                    credit_note.issue_date,
                    original.number,
                    credit_note.issued_at,
                ),
                _offset_row(
                    original.invoice_id,
                    credit_note.issue_date,
                    credit_note.number,
                    credit_note.issued_at,
                ),
            ],
        )
        return (
            replace(
                credit_note,
                settlement=Settlement.OFFSET,
                paid_on=credit_note.issue_date,
                paid_reference=original.number,
            ),
            replace(
                original,
                settlement=Settlement.OFFSET,
                paid_on=credit_note.issue_date,
                paid_reference=credit_note.number,
            ),
        )

    def mark_paid(
        self, invoice_id: int, *, paid_on: date, reference: str | None, recorded_at: datetime
    ) -> None:
        """Record the payment of a document that has no settlement yet (the caller checked)."""
        self._conn.execute(
            payments.insert().values(
                invoice_id=invoice_id,
                kind=Settlement.PAYMENT.value,
                paid_on=paid_on,
                reference=reference,
                recorded_at=recorded_at,
            )
        )

    def mark_corrected(self, invoice_id: int) -> None:
        result = self._conn.execute(
            invoices.update()
            .where(
                invoices.c.invoice_id == invoice_id,
                invoices.c.status == InvoiceStatus.ISSUED.value,
                invoices.c.kind == InvoiceKind.INVOICE.value,
            )
            .values(status=InvoiceStatus.CORRECTED.value)
        )
        if result.rowcount != 1:
            raise BillingStoreError(f"invoice {invoice_id} is not a current invoice any more")


class BillingStore:
    """Invoices in SQLite or PostgreSQL; every method is one transaction."""

    def __init__(self, engine: Engine) -> None:
        self._engine = engine

    @property
    def engine(self) -> Engine:
        return self._engine

    def migrate(self) -> list[int]:
        """Bring the billing tables up to date (`StoreError` of control_plane.db if it fails)."""
        return db.migrate(self._engine, SERVICE, MIGRATIONS)

    @contextmanager
    def issuing(self) -> Iterator[Issuing]:
        """A write transaction holding the billing lock; commits when the block ends."""
        with _transaction(db.for_writes(self._engine)) as conn:
            if conn.dialect.name == "postgresql":
                conn.execute(sa.select(sa.func.pg_advisory_xact_lock(BILLING_LOCK_KEY)))
            yield Issuing(conn)

    def get(self, invoice_id: int) -> Invoice | None:
        with _transaction(self._engine) as conn:
            return _get(conn, invoice_id)

    def trade_ids(self, invoice_id: int) -> tuple[int, ...]:
        """The trades a document bills, ascending (empty: issued before they were stored)."""
        with _transaction(self._engine) as conn:
            return _trade_ids(conn, invoice_id)

    def store_trade_ids(self, invoice_id: int, trade_ids: Sequence[int]) -> None:
        """Keep the trade ids recovered for a document issued before they were stored."""
        with _transaction(db.for_writes(self._engine)) as conn:
            if not _trade_ids(conn, invoice_id):
                _insert_trade_ids(conn, invoice_id, trade_ids)

    def current(self, period: Period, counterparty: str | None = None) -> list[Invoice]:
        with _transaction(self._engine) as conn:
            return _current(conn, period, counterparty)

    def list_invoices(
        self, where: InvoiceFilter, *, limit: int = 100, before_id: int | None = None
    ) -> list[Invoice]:
        """Matching invoices, newest first, ids below `before_id` (keyset pagination)."""
        query = _filtered(_select(), where).order_by(invoices.c.invoice_id.desc())
        if before_id is not None:
            query = query.where(invoices.c.invoice_id < before_id)
        with _transaction(self._engine) as conn:
            return _with_lines(conn, list(conn.execute(query.limit(limit))))

    def stats(self, where: InvoiceFilter) -> InvoiceStats:
        """Count and sums of every matching document, and the last one issued."""
        totals = _filtered(
            sa.select(
                sa.func.count(),
                sa.func.coalesce(sa.func.sum(invoices.c.net_cents), 0),
                sa.func.coalesce(sa.func.sum(invoices.c.vat_cents), 0),
                sa.func.coalesce(sa.func.sum(invoices.c.gross_cents), 0),
                sa.func.coalesce(sa.func.sum(sa.case((_UNPAID, 1), else_=0)), 0),
                sa.func.coalesce(
                    sa.func.sum(sa.case((_UNPAID, invoices.c.gross_cents), else_=0)), 0
                ),
            ).select_from(_JOINED),
            where,
        )
        last = _filtered(_select(), where).order_by(invoices.c.invoice_id.desc())
        with _transaction(self._engine) as conn:
            count, net, vat, gross, unpaid, unpaid_gross = conn.execute(totals).one()
            row = conn.execute(last.limit(1)).first()
            last_invoice = None if row is None else _with_lines(conn, [row])[0]
        return InvoiceStats(
            count=int(count),
            net_eur=_eur(int(net)),
            vat_eur=_eur(int(vat)),
            gross_eur=_eur(int(gross)),
            last=last_invoice,
            unpaid_count=int(unpaid),
            unpaid_gross_eur=_eur(int(unpaid_gross)),
        )

    def numbers(self) -> list[str]:
        """Every issued number in issue order (for audits and the gaplessness tests)."""
        with _transaction(self._engine) as conn:
            return list(conn.scalars(sa.select(invoices.c.number).order_by(invoices.c.invoice_id)))


def _filtered(query: sa.Select[Any], where: InvoiceFilter) -> sa.Select[Any]:
    if where.period is not None:
        query = query.where(invoices.c.period == str(where.period))
    if where.counterparty is not None:
        query = query.where(invoices.c.counterparty == where.counterparty)
    if where.kind is not None:
        query = query.where(invoices.c.kind == where.kind.value)
    if where.status is not None:
        query = query.where(invoices.c.status == where.status.value)
    if where.issued_from is not None:
        query = query.where(invoices.c.issue_date >= where.issued_from)
    if where.issued_to is not None:
        query = query.where(invoices.c.issue_date <= where.issued_to)
    if where.payment is PaymentFilter.PAID:
        query = query.where(payments.c.kind == Settlement.PAYMENT.value)
    elif where.payment is PaymentFilter.UNPAID:
        query = query.where(_UNPAID)
    return query


_JOINED = invoices.outerjoin(payments, payments.c.invoice_id == invoices.c.invoice_id)
_CURRENT_INVOICE = sa.and_(
    invoices.c.kind == InvoiceKind.INVOICE.value,
    invoices.c.status == InvoiceStatus.ISSUED.value,
)
_UNPAID = sa.and_(_CURRENT_INVOICE, payments.c.invoice_id.is_(None))


def _select() -> sa.Select[Any]:
    """Documents with their settlement (if any)."""
    return sa.select(
        invoices,
        payments.c.kind.label("settlement"),
        payments.c.paid_on,
        payments.c.reference.label("paid_reference"),
    ).select_from(_JOINED)


def _get(conn: Connection, invoice_id: int) -> Invoice | None:
    row = conn.execute(_select().where(invoices.c.invoice_id == invoice_id)).first()
    return None if row is None else _with_lines(conn, [row])[0]


def _trade_ids(conn: Connection, invoice_id: int) -> tuple[int, ...]:
    query = (
        sa.select(invoice_trades.c.trade_id)
        .where(invoice_trades.c.invoice_id == invoice_id)
        .order_by(invoice_trades.c.trade_id)
    )
    return tuple(int(t) for t in conn.scalars(query))


def _insert_trade_ids(conn: Connection, invoice_id: int, trade_ids: Sequence[int]) -> None:
    if trade_ids:
        conn.execute(
            invoice_trades.insert(),
            [{"invoice_id": invoice_id, "trade_id": t} for t in sorted(set(trade_ids))],
        )


def _current(conn: Connection, period: Period, counterparty: str | None) -> list[Invoice]:
    query = _select().where(
        invoices.c.period == str(period),
        invoices.c.kind == InvoiceKind.INVOICE.value,
        invoices.c.status == InvoiceStatus.ISSUED.value,
    )
    if counterparty is not None:
        query = query.where(invoices.c.counterparty == counterparty)
    return _with_lines(conn, list(conn.execute(query.order_by(invoices.c.counterparty))))


def _with_lines(conn: Connection, rows: Sequence[sa.Row[Any]]) -> list[Invoice]:
    if not rows:
        return []
    ids = [row.invoice_id for row in rows]
    by_invoice: dict[int, list[InvoiceLine]] = {i: [] for i in ids}
    for start in range(0, len(ids), 500):  # bounded IN lists
        query = (
            sa.select(lines)
            .where(lines.c.invoice_id.in_(ids[start : start + 500]))
            .order_by(lines.c.invoice_id, lines.c.line_no)
        )
        for line in conn.execute(query):
            by_invoice[line.invoice_id].append(_line_from_row(line))
    return [_invoice_from_row(row, tuple(by_invoice[row.invoice_id])) for row in rows]


def _line_row(invoice_id: int, line: InvoiceLine) -> dict[str, Any]:
    return {
        "invoice_id": invoice_id,
        "line_no": line.line_no,
        "delivery_day": line.delivery_day,
        "market": line.market,
        "product_minutes": line.product_minutes,
        "side": line.side.value,
        "trade_count": line.trade_count,
        "energy_wh": line.energy_wh,
        "avg_price_meur_per_mwh": int(line.avg_price_eur_per_mwh / AVG_PRICE_STEP),
        "amount_cents": _cents(line.amount_eur),
    }


def _line_from_row(row: sa.Row[Any]) -> InvoiceLine:
    return InvoiceLine(
        line_no=row.line_no,
        delivery_day=row.delivery_day,
        market=row.market,
        product_minutes=row.product_minutes,
        side=Side(row.side),
        trade_count=row.trade_count,
        energy_wh=row.energy_wh,
        avg_price_eur_per_mwh=Decimal(row.avg_price_meur_per_mwh) * AVG_PRICE_STEP,
        amount_eur=_eur(row.amount_cents),
    )


def _invoice_from_row(row: sa.Row[Any], invoice_lines: tuple[InvoiceLine, ...]) -> Invoice:
    return Invoice(
        invoice_id=row.invoice_id,
        number=row.number,
        kind=InvoiceKind(row.kind),
        status=InvoiceStatus(row.status),
        period=Period.parse(row.period),
        counterparty=row.counterparty,
        issuer=Party.from_json(json.loads(row.issuer_json)),
        recipient=Party.from_json(json.loads(row.recipient_json)),
        issue_date=row.issue_date,
        due_date=row.due_date,
        issued_at=row.issued_at,
        currency=row.currency,
        vat_rate_pct=Decimal(row.vat_rate_milli_pct) / 1000,
        net_eur=_eur(row.net_cents),
        vat_eur=_eur(row.vat_cents),
        gross_eur=_eur(row.gross_cents),
        payment_terms=row.payment_terms,
        lines=invoice_lines,
        trade_count=row.trade_count,
        trades_digest=row.trades_digest,
        corrects_invoice_id=row.corrects_invoice_id,
        replaces_invoice_id=row.replaces_invoice_id,
        note=row.note,
        settlement=None if row.settlement is None else Settlement(row.settlement),
        paid_on=row.paid_on,
        paid_reference=row.paid_reference,
    )


def _transaction(engine: Engine) -> AbstractContextManager[Connection]:
    """One transaction; SQLAlchemy's errors become `BillingStoreError` (after the rollback)."""
    return db.transaction(engine, BillingStoreError, "billing store")
