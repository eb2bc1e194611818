"""Billing's logic: generate a period's invoices, correct them, list them, render their PDFs.

`generate(period=..., counterparty=None, correction=False)`:

1. Reads the period's trades from the exchange's store (`TradeSource`, the `SqlOrderStore`):
   delivery start in the month (billing time zone). The month must have ended, so its trades
   are final (the exchange refuses orders for past deliveries).
2. In one issuing transaction (billing/store.py: the billing lock, gapless numbers):
   - without `correction`, a counterparty that already has a current invoice for the period
     keeps it (returned as it is: regeneration is idempotent); one without gets a new invoice;
   - with `correction`, each current invoice is reversed by a credit note (its lines with the
     amounts negated, `corrects_invoice_id` = the invoice), marked `corrected`, and a new
     invoice from the trades as they are now is issued (`replaces_invoice_id` = the old one).
3. Counts issued documents in `pho_bo_invoices_total{kind}` after the commit.

`mark_paid(invoice_id=..., paid_on=..., reference=None)`: an issued, current invoice is paid.
1. Checks it: a credit note (settled by offset at the correction), a corrected invoice or one
   paid already with another date or reference is refused (`InvoiceConflictError`); the same
   date and reference again return it unchanged (idempotent, the listener is not called again).
2. Calls the payment listener (`on_paid`, the app wires `CreditService.settle_trades`) with the
   invoice's counterparty, its trade ids (billing/store.py keeps them per invoice), `paid_on`
   and the invoice number as the reference. It runs before the payment is recorded and outside
   the billing lock (on SQLite both write the same file): if it refuses, nothing is marked paid;
   if recording fails after it, a retry repeats the call, which settles idempotently per
   reference.
3. Records the payment under the billing lock, re-checking the invoice (a concurrent correction
   wins: the call is refused).
Invoices issued before trade ids were stored get them from the exchange: the period's trades of
the counterparty, accepted only when their fingerprint equals the invoice's trades digest.

A correction reverses an unpaid invoice: the credit note and the invoice are settled against
each other (offset). A paid invoice is not corrected (its trades are settled in credit): the
call is refused and names it.

A current invoice whose trades changed since it was issued (their fingerprint differs) is
named in `GenerateResult.outdated`: correct it. A counterparty without recipient data in the
settings (`billing_recipients`) is invoiced under its id and named in `warnings`.

Blocking (SQL, PDF rendering): the API runs it in a worker thread.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import replace
from datetime import date, datetime
from typing import Protocol

from prometheus_client import CollectorRegistry, Counter
from sqlalchemy.engine import Engine

from control_plane.billing.errors import (
    InvalidRequestError,
    InvoiceConflictError,
    InvoiceNotFoundError,
    PeriodNotEndedError,
)
from control_plane.billing.models import (
    BillingConfig,
    GenerateResult,
    Invoice,
    InvoiceDraft,
    InvoiceFilter,
    InvoiceKind,
    InvoiceStats,
    InvoiceStatus,
    Party,
    Period,
    Settlement,
    draft_invoice,
    due_date,
    trades_by_counterparty,
)
from control_plane.billing.pdf import render_invoice
from control_plane.billing.store import BillingStore, Issuing, NewInvoice
from control_plane.config import BillingParty, PlaneSettings
from control_plane.exchange.models import Trade
from control_plane.exchange.store import SqlOrderStore

log = logging.getLogger(__name__)

MAX_COUNTERPARTY_CHARS = 64
MAX_REFERENCE_CHARS = 128


class TradeSource(Protocol):
    """The trades billing reads: the exchange's `SqlOrderStore` satisfies it."""

    def list_trades(
        self, *, delivery_from: datetime | None = None, delivery_to: datetime | None = None
    ) -> list[Trade]: ...


class PaymentListener(Protocol):
    """Told when an invoice is paid; settles its trades (the app wires the credit service).

    Raises `SettlementRefusedError` when it refuses (nothing is then marked paid) and
    `BillingStoreError` when its store fails.
    """

    def __call__(
        self,
        *,
        counterparty: str,
        trade_ids: Sequence[int],
        settled_on: date,
        reference_text: str,
    ) -> object: ...


class BillingMetrics:
    """`pho_bo_invoices_total{kind}`: documents issued by this process (invoice, credit_note)."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.invoices = Counter(
            "pho_bo_invoices",
            "Invoices and credit notes issued (back office)",
            ["kind"],
            registry=registry,
        )
        for kind in InvoiceKind:
            self.invoices.labels(kind.value)

    def issued(self, documents: Sequence[Invoice]) -> None:
        for doc in documents:
            self.invoices.labels(doc.kind.value).inc()


class BillingService:
    """Invoices from the exchange's trades; every method blocks (run it in a worker thread)."""

    def __init__(
        self,
        *,
        store: BillingStore,
        trades: TradeSource,
        config: BillingConfig,
        clock: Callable[[], datetime],
        metrics: BillingMetrics | None = None,
        on_paid: PaymentListener | None = None,
    ) -> None:
        self._store = store
        self._trades = trades
        self._config = config
        self._clock = clock
        self._metrics = metrics
        self.on_paid = on_paid
        """Settles a paid invoice's trades; None: payments are only recorded in billing."""

    @property
    def config(self) -> BillingConfig:
        return self._config

    def generate(
        self, *, period: str | Period, counterparty: str | None = None, correction: bool = False
    ) -> GenerateResult:
        """The period's invoices (one per counterparty), issuing what is missing; see module."""
        month = period if isinstance(period, Period) else Period.parse(period)
        if counterparty is not None:
            counterparty = _counterparty(counterparty)
        tz = self._config.zone
        start, end = month.bounds_utc(tz)
        now = self._clock()
        if now < end:
            raise PeriodNotEndedError(
                f"period {month} has not ended yet (it ends {end.astimezone(tz):%Y-%m-%d %H:%M} "
                f"{self._config.timezone}): invoices cover whole months, generate them after"
            )
        trades = self._trades.list_trades(delivery_from=start, delivery_to=end)
        by_counterparty = trades_by_counterparty(trades)
        names = sorted(by_counterparty) if counterparty is None else [counterparty]
        drafts: dict[str, InvoiceDraft] = {}
        for name in names:
            draft = draft_invoice(
                counterparty=name,
                trades=by_counterparty.get(name, ()),
                vat_rate_pct=self._config.vat_rate_pct,
                tz=tz,
            )
            if draft is not None:
                drafts[name] = draft
        issued: list[Invoice] = []
        with self._store.issuing() as tx:
            existing = {inv.counterparty: inv for inv in tx.current(month, counterparty)}
            paid = [inv for inv in existing.values() if inv.settlement is not None]
            if correction and paid:
                shown = ", ".join(
                    f"{inv.number} of {inv.counterparty} (paid on {inv.paid_on})" for inv in paid
                )
                raise InvoiceConflictError(
                    f"not corrected: {shown} is paid and its trades are settled; a paid invoice "
                    "is not corrected automatically. Correct the other counterparties one by "
                    "one (counterparty=...) and settle any difference with the counterparty "
                    "directly (a payment on account in credit)"
                )
            for name in sorted(set(drafts) | (set(existing) if correction else set())):
                old = existing.get(name)
                if old is not None and not correction:
                    continue
                if old is not None:
                    note = self._credit_note(tx, old, now)
                    tx.mark_corrected(old.invoice_id)
                    issued.append(tx.offset(note, old)[0])
                draft = drafts.get(name)
                if draft is not None:
                    new = self._invoice(tx, month, draft, now, replaces=old)
                    issued.append(new)
                    existing[name] = new
                else:
                    del existing[name]
        if self._metrics is not None:
            self._metrics.issued(issued)
        for doc in issued:
            log.info(
                "billing: issued %s %s for %s, period %s, gross %s %s",
                doc.kind.value,
                doc.number,
                doc.counterparty,
                doc.period,
                doc.gross_eur,
                doc.currency,
            )
        current = tuple(existing[name] for name in sorted(existing))
        outdated = tuple(
            inv.number
            for inv in current
            if inv.trades_digest != (d.trades_digest if (d := drafts.get(inv.counterparty)) else "")
        )
        missing = sorted(n for n in drafts if n not in self._config.recipients)
        warnings = []
        if missing:
            shown = ", ".join(missing[:10]) + (
                f" and {len(missing) - 10} more" if len(missing) > 10 else ""
            )
            warnings.append(
                f"no recipient data for {shown}: invoiced under the counterparty id; add them to "
                "the billing_recipients setting (name, address, vat_id) and correct the invoices"
            )
        return GenerateResult(
            period=month,
            invoices=current,
            issued=tuple(issued),
            outdated=outdated,
            warnings=tuple(warnings),
        )

    def _note(self, text: str | None) -> str | None:
        """The document's note: `text` and the configured VAT note (e.g. reverse charge)."""
        parts = [p for p in (text, self._config.vat_note) if p]
        return " ".join(parts) or None

    def _recipient(self, counterparty: str) -> Party:
        return self._config.recipients.get(counterparty) or Party(name=counterparty)

    def _invoice(
        self,
        tx: Issuing,
        period: Period,
        draft: InvoiceDraft,
        now: datetime,
        *,
        replaces: Invoice | None,
    ) -> Invoice:
        issue = now.astimezone(self._config.zone).date()
        due = due_date(issue, self._config.payment_days)
        return tx.insert(
            number_prefix=self._config.number_prefix,
            new=NewInvoice(
                kind=InvoiceKind.INVOICE,
                period=period,
                counterparty=draft.counterparty,
                issuer=self._config.issuer,
                recipient=self._recipient(draft.counterparty),
                issue_date=issue,
                due_date=due,
                issued_at=now,
                vat_rate_pct=self._config.vat_rate_pct,
                net_eur=draft.net_eur,
                vat_eur=draft.vat_eur,
                gross_eur=draft.gross_eur,
                payment_terms=self._config.payment_terms(due),
                lines=draft.lines,
                trade_count=draft.trade_count,
                trades_digest=draft.trades_digest,
                trade_ids=draft.trade_ids,
                replaces_invoice_id=None if replaces is None else replaces.invoice_id,
                note=self._note(
                    None if replaces is None else f"Replaces invoice {replaces.number}."
                ),
            ),
        )

    def _credit_note(self, tx: Issuing, original: Invoice, now: datetime) -> Invoice:
        issue = now.astimezone(self._config.zone).date()
        return tx.insert(
            number_prefix=self._config.number_prefix,
            new=NewInvoice(
                kind=InvoiceKind.CREDIT_NOTE,
                period=original.period,
                counterparty=original.counterparty,
                issuer=original.issuer,
                recipient=original.recipient,
                issue_date=issue,
                due_date=issue,
                issued_at=now,
                vat_rate_pct=original.vat_rate_pct,
                net_eur=-original.net_eur,
                vat_eur=-original.vat_eur,
                gross_eur=-original.gross_eur,
                payment_terms=f"Offset against invoice {original.number}.",
                lines=tuple(replace(line, amount_eur=-line.amount_eur) for line in original.lines),
                trade_count=original.trade_count,
                trades_digest=original.trades_digest,
                trade_ids=tx.trade_ids(original.invoice_id),
                corrects_invoice_id=original.invoice_id,
                note=self._note(
                    f"Reverses invoice {original.number} of {original.issue_date.isoformat()} "
                    "in full."
                ),
            ),
        )

    def invoice(self, invoice_id: int) -> Invoice:
        found = self._store.get(invoice_id)
        if found is None:
            raise InvoiceNotFoundError(f"no invoice with id {invoice_id}")
        return found

    def mark_paid(self, *, invoice_id: int, paid_on: date, reference: str | None = None) -> Invoice:
        """Mark an issued, current invoice paid and settle its trades; see the module."""
        reference = _reference(reference)
        found = self.invoice(invoice_id)
        today = self._clock().astimezone(self._config.zone).date()
        if self._already_paid(found, paid_on, reference):
            return found
        if paid_on > today:
            raise InvalidRequestError(
                f"paid_on {paid_on} is in the future (today is {today} in "
                f"{self._config.timezone}): give the date the payment was received"
            )
        if paid_on < found.issue_date:
            raise InvalidRequestError(
                f"paid_on {paid_on} is before invoice {found.number} was issued "
                f"({found.issue_date}): give the date the payment was received"
            )
        trade_ids = self._trade_ids_of(found)
        if self.on_paid is not None and trade_ids:
            self.on_paid(
                counterparty=found.counterparty,
                trade_ids=trade_ids,
                settled_on=paid_on,
                reference_text=found.number,
            )
        with self._store.issuing() as tx:
            now = tx.get(invoice_id)
            if now is None:  # pragma: no cover - documents are never deleted
                raise InvoiceNotFoundError(f"no invoice with id {invoice_id}")
            if self._already_paid(now, paid_on, reference):
                return now
            tx.mark_paid(
                invoice_id, paid_on=paid_on, reference=reference, recorded_at=self._clock()
            )
        log.info(
            "billing: invoice %s of %s marked paid on %s (%d trades settled)",
            found.number,
            found.counterparty,
            paid_on,
            len(trade_ids) if self.on_paid is not None else 0,
        )
        return replace(
            now, settlement=Settlement.PAYMENT, paid_on=paid_on, paid_reference=reference
        )

    def _already_paid(self, invoice: Invoice, paid_on: date, reference: str | None) -> bool:
        """True when `invoice` is paid with exactly this data; refuses every other settled state."""
        if invoice.kind is InvoiceKind.CREDIT_NOTE:
            raise InvoiceConflictError(
                f"{invoice.number} is a credit note: it is settled by offset against the "
                "invoice it reverses when the correction is made; mark the replacement "
                "invoice paid instead"
            )
        if invoice.status is InvoiceStatus.CORRECTED:
            raise InvoiceConflictError(
                f"invoice {invoice.number} was corrected (reversed by a credit note): mark its "
                "replacement invoice paid instead"
            )
        if invoice.settlement is None:
            return False
        if invoice.paid_on == paid_on and invoice.paid_reference == reference:
            return True
        raise InvoiceConflictError(
            f"invoice {invoice.number} is already paid (paid_on {invoice.paid_on}, reference "
            f"{invoice.paid_reference!r}): a payment is recorded once; this call gave paid_on "
            f"{paid_on}, reference {reference!r}"
        )

    def _trade_ids_of(self, invoice: Invoice) -> tuple[int, ...]:
        """The invoice's stored trade ids; recovered from the exchange for older invoices."""
        stored = self._store.trade_ids(invoice.invoice_id)
        if stored or invoice.trade_count == 0:
            return stored
        start, end = invoice.period.bounds_utc(self._config.zone)
        trades = self._trades.list_trades(delivery_from=start, delivery_to=end)
        draft = draft_invoice(
            counterparty=invoice.counterparty,
            trades=trades_by_counterparty(trades).get(invoice.counterparty, ()),
            vat_rate_pct=invoice.vat_rate_pct,
            tz=self._config.zone,
        )
        if draft is None or draft.trades_digest != invoice.trades_digest:
            raise InvoiceConflictError(
                f"invoice {invoice.number} was issued before billing kept trade ids, and the "
                f"exchange's trades of {invoice.counterparty} in {invoice.period} changed since: "
                "its trades cannot be told; correct it (generate with correction) and mark the "
                "replacement invoice paid"
            )
        self._store.store_trade_ids(invoice.invoice_id, draft.trade_ids)
        return draft.trade_ids

    def pdf(self, invoice_id: int) -> tuple[Invoice, bytes]:
        """The invoice and its PDF (rendered from the stored snapshot, deterministic)."""
        found = self.invoice(invoice_id)
        return found, render_invoice(found)

    def list_invoices(
        self, where: InvoiceFilter, *, limit: int = 100, before_id: int | None = None
    ) -> tuple[list[Invoice], InvoiceStats]:
        """A page of matching documents (newest first) and the statistics of all of them."""
        if where.counterparty is not None:
            where = replace(where, counterparty=_counterparty(where.counterparty))
        if where.issued_from and where.issued_to and where.issued_from > where.issued_to:
            raise InvalidRequestError(
                f"issued_from {where.issued_from} is after issued_to {where.issued_to}"
            )
        page = self._store.list_invoices(where, limit=limit, before_id=before_id)
        return page, self._store.stats(where)


def _reference(value: str | None) -> str | None:
    if value is None:
        return None
    stripped = value.strip()
    if (
        not stripped
        or len(stripped) > MAX_REFERENCE_CHARS
        or any(ord(c) < 32 or ord(c) == 127 for c in stripped)
    ):
        raise InvalidRequestError(
            f"reference={value!r}: give the payment's bank reference as 1-"
            f"{MAX_REFERENCE_CHARS} characters without control codes, or leave it out"
        )
    return stripped


def _counterparty(name: str) -> str:
    stripped = name.strip()
    if not stripped or len(stripped) > MAX_COUNTERPARTY_CHARS:
        raise InvalidRequestError(
            f"counterparty={name!r}: give the counterparty id as traded (1-"
            f"{MAX_COUNTERPARTY_CHARS} characters)"
        )
    return stripped


def billing_config(settings: PlaneSettings) -> BillingConfig:
    """The billing configuration from the plane's settings (`billing_*`)."""

    def party(p: BillingParty) -> Party:
        return Party(
            name=p.name,
            address=tuple(p.address),
            vat_id=p.vat_id,
            iban=p.iban,
            bic=p.bic,
            email=p.email,
        )

    return BillingConfig(
        issuer=party(settings.billing_issuer),
        vat_rate_pct=settings.billing_vat_rate_pct,
        payment_days=settings.billing_payment_days,
        number_prefix=settings.billing_number_prefix,
        timezone=settings.billing_timezone,
        recipients={cp: party(p) for cp, p in settings.billing_recipients.items()},
        vat_note=settings.billing_vat_note,
    )


def open_billing(
    engine: Engine,
    settings: PlaneSettings,
    *,
    clock: Callable[[], datetime],
    metrics: BillingMetrics | None = None,
    on_paid: PaymentListener | None = None,
) -> BillingService:
    """Migrate the billing tables on the shared engine; the service reads the exchange's trades."""
    config = billing_config(settings)
    store = BillingStore(engine)
    applied = store.migrate()
    if applied:
        log.info("billing: store migrated to version %d", applied[-1])
    return BillingService(
        store=store,
        trades=SqlOrderStore(engine),
        config=config,
        clock=clock,
        metrics=metrics,
        on_paid=on_paid,
    )
