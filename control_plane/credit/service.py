"""Counterparty exposure, settlements, utilisation alerts and the pre-trade credit check.

The operator runs the exchange as the central counterparty of every trade: the buyer owes it
the trade's value, it owes the seller. Per counterparty X, in EUR:

- **owed** by X on one trade leg = value (MW x h x price) for X's buy legs, - value for its
  sell legs (a negative price turns them round). A trade between two orders of X nets to 0.
- **receivable** / **payable** = the sums of X's *unsettled* legs with owed > 0 / < 0. A leg is
  settled when a settlement covers it: recorded by an admin (`POST /api/credit/settlements`)
  or by billing when X's invoice is paid (`CreditService.settle_trades`).
- **paid on account** = the sum of X's amount settlements (> 0 X paid, < 0 it was paid).
- **current exposure** = max(0, receivable - payable - paid on account): what the operator
  loses if X defaults now. Receivables and payables net (close-out netting, as under the EFET
  master agreement).
- **PFE** (potential future exposure) = open-order worst case + price-move add-on:
  - worst case of an open order = max(0, what X would owe if its remaining MW fill at its
    limit): remaining MWh x limit for a BUY (a buy fills at or below its limit), -remaining
    MWh x limit for a SELL (a sell fills at or above it, so only a negative limit can make X
    owe). Open sells never reduce exposure: they may not fill.
  - add-on = `credit_pfe_addon_pct` (default 10 %) of the notional |MWh x price| of X's open
    orders (remaining MW at their limit) and of its trade legs not yet delivered (delivery end
    after now, settled or not): if X defaults before delivery, the position must be replaced
    at a price that may have moved that much.
- **exposure** = current + PFE; **utilisation** = exposure / limit x 100.

**Pre-trade check** (`CreditCheck`, run by the exchange under its lock): an order of X is
rejected when X has a limit and exposure + the order's worst case + its add-on > limit. At
exactly the limit it passes (Decimal arithmetic, no rounding). X without master data is not
checked, unless `credit_require_counterparty` is set (then it is rejected).

**Alerts**: each threshold (default 75 % and 90 %, per counterparty configurable) fires once
when utilisation rises to or above it (event `credit.alert`, a warning in the log, the counter
`bess_plane_credit_alerts_total`) and re-arms when utilisation falls below it again. The state
is in memory: after a restart a counterparty still above a threshold alerts once more.
`refresh()` evaluates every counterparty (the app runs it every `credit_refresh_interval_s`
and after each credit write).

**Trades** are read from the exchange's `OrderStore` (committed trades): an in-memory ledger
catches up by trade id (`last_ids`), so a check costs one id probe plus the new trades, and one
query of the open orders.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, replace
from datetime import UTC, date, datetime
from decimal import Decimal
from typing import Final, Protocol

from prometheus_client import CollectorRegistry, Counter, Gauge

from control_plane.exchange.models import Order, OrderState, Side, Trade

from .models import (
    CENT,
    Counterparty,
    CounterpartyNotFoundError,
    CreditAlert,
    Exposure,
    InvalidCreditInputError,
    Settlement,
    SettlementConflictError,
    counterparty_id,
    eur,
    reference,
    thresholds,
)
from .store import CreditStore

__all__ = [
    "DEFAULT_THRESHOLDS_PCT",
    "CreditCheck",
    "CreditMetrics",
    "CreditService",
    "TradeSource",
]

log = logging.getLogger(__name__)

DEFAULT_THRESHOLDS_PCT: Final = (Decimal(75), Decimal(90))
_ZERO: Final = Decimal(0)
_PAGE: Final = 1000
_OPEN: Final = (OrderState.ACCEPTED, OrderState.PARTIALLY_FILLED)
MAX_NAME_LENGTH: Final = 200
MAX_NOTE_LENGTH: Final = 2000


class TradeSource(Protocol):
    """The exchange's committed trades and orders (`SqlOrderStore`, `MemoryOrderStore`)."""

    def last_ids(self) -> tuple[int, int]: ...

    def list_trades(
        self, *, limit: int | None = None, before_id: int | None = None
    ) -> list[Trade]: ...

    def list_orders(
        self, *, counterparty: str | None = None, states: Iterable[OrderState] | None = None
    ) -> list[Order]: ...


class CreditMetrics:
    """`pho_credit_exposure_eur{counterparty}` (spec) plus utilisation and alert counts."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.exposure = Gauge(
            "pho_credit_exposure_eur",
            "Credit exposure per counterparty: current + potential future exposure, EUR",
            ["counterparty"],
            registry=registry,
        )
        self.utilisation = Gauge(
            "bess_plane_credit_utilization_pct",
            "Credit exposure in % of the counterparty's limit (only counterparties with one)",
            ["counterparty"],
            registry=registry,
        )
        self.alerts = Counter(
            "bess_plane_credit_alerts_total",
            "Credit utilisation alerts: the counterparty rose to or above the threshold",
            ["counterparty", "threshold_pct"],
            registry=registry,
        )
        self.rejections = Counter(
            "bess_plane_credit_rejections_total",
            "Orders the pre-trade credit check rejected",
            ["counterparty"],
            registry=registry,
        )


@dataclass(slots=True)
class _Leg:
    owed: Decimal
    delivery_end: datetime


@dataclass(slots=True)
class _Ledger:
    """Per counterparty: trade id -> its leg (owed summed over both sides for a self-trade)."""

    legs: dict[str, dict[int, _Leg]] = field(default_factory=dict)
    last_trade_id: int = 0

    def add(self, trade: Trade) -> None:
        value = trade.value_eur
        end = trade.delivery.end
        for cp, owed in ((trade.buy_counterparty, value), (trade.sell_counterparty, -value)):
            legs = self.legs.setdefault(cp, {})
            leg = legs.get(trade.trade_id)
            if leg is None:
                legs[trade.trade_id] = _Leg(owed, end)
            else:
                leg.owed += owed
        self.last_trade_id = max(self.last_trade_id, trade.trade_id)


def _worst_case(order: Order) -> tuple[Decimal, Decimal]:
    """(worst-case owed >= 0, notional >= 0) of an order's remaining quantity at its limit."""
    value = order.remaining_mw * order.delivery.duration_h * order.limit_price_eur_per_mwh
    owed = value if order.side is Side.BUY else -value
    return max(owed, _ZERO), abs(value)


class CreditService:
    """Master data, settlements and exposures of every counterparty. Thread-safe."""

    def __init__(
        self,
        *,
        store: CreditStore,
        trades: TradeSource,
        clock: Callable[[], datetime],
        addon_pct: Decimal = Decimal(10),
        default_thresholds_pct: Iterable[Decimal] = DEFAULT_THRESHOLDS_PCT,
        require_counterparty: bool = False,
        metrics: CreditMetrics | None = None,
        on_alert: Callable[[CreditAlert], None] | None = None,
    ) -> None:
        if not _ZERO <= Decimal(addon_pct) <= 100:
            raise ValueError(f"credit_pfe_addon_pct must be in [0, 100], got {addon_pct}")
        self._store = store
        self._trades = trades
        self._clock = clock
        self._addon = Decimal(addon_pct) / 100
        self._defaults = thresholds(list(default_thresholds_pct), "credit_alert_thresholds_pct")
        self.require_counterparty = require_counterparty
        self._metrics = metrics
        self._on_alert = on_alert
        self._lock = threading.RLock()
        self._ledger = _Ledger()
        self._settled: set[tuple[int, str]] = set()
        self._paid: dict[str, Decimal] = {}
        self._settled_version = -1
        self._masters: dict[str, Counterparty] | None = None
        self._crossed: dict[str, set[Decimal]] = {}
        self.check = CreditCheck(self)

    @property
    def addon_pct(self) -> Decimal:
        return self._addon * 100

    @property
    def default_thresholds_pct(self) -> tuple[Decimal, ...]:
        return self._defaults

    def open(self) -> list[int]:
        """Migrate the credit tables (the versions applied now)."""
        return self._store.migrate()

    # -- master data ----------------------------------------------------------------------

    def counterparties(self) -> list[Counterparty]:
        return list(self._master_data().values())

    def counterparty(self, cp_id: str) -> Counterparty:
        found = self._master_data().get(counterparty_id(cp_id))
        if found is None:
            raise CounterpartyNotFoundError(
                f"no counterparty {cp_id!r}: create it with POST /api/credit/counterparties"
            )
        return found

    def create_counterparty(
        self,
        *,
        counterparty: str,
        name: str | None = None,
        limit_eur: object = None,
        alert_thresholds_pct: Iterable[object] | None = None,
    ) -> Counterparty:
        now = self._now()
        cp = Counterparty(
            counterparty_id=counterparty_id(counterparty),
            name=_name(name if name is not None else counterparty),
            limit_eur=None if limit_eur is None else eur(limit_eur, "limit_eur", positive=True),
            alert_thresholds_pct=None
            if alert_thresholds_pct is None
            else thresholds(alert_thresholds_pct),
            created_at=now,
            updated_at=now,
        )
        self._store.insert_counterparty(cp)
        log.info("credit: counterparty %s created (limit %s EUR)", cp.counterparty_id, cp.limit_eur)
        self._changed()
        return cp

    _KEEP: Final = object()

    def update_counterparty(
        self,
        *,
        counterparty: str,
        name: object = _KEEP,
        limit_eur: object = _KEEP,
        alert_thresholds_pct: object = _KEEP,
    ) -> Counterparty:
        """Change the given fields (None for limit/thresholds: no limit / the default)."""
        with self._lock:
            old = self.counterparty(counterparty)
            new = replace(
                old,
                name=old.name if name is self._KEEP else _name(name),
                limit_eur=old.limit_eur
                if limit_eur is self._KEEP
                else (None if limit_eur is None else eur(limit_eur, "limit_eur", positive=True)),
                alert_thresholds_pct=old.alert_thresholds_pct
                if alert_thresholds_pct is self._KEEP
                else (None if alert_thresholds_pct is None else thresholds(alert_thresholds_pct)),
                updated_at=self._now(),
            )
            self._store.update_counterparty(new)
            self._changed()
        log.info(
            "credit: counterparty %s updated (limit %s EUR)", new.counterparty_id, new.limit_eur
        )
        return new

    def set_limit(self, *, counterparty: str, limit_eur: object) -> Counterparty:
        """The spec's `POST /api/credit/limit`: set (or create with) a limit."""
        with self._lock:
            cp_id = counterparty_id(counterparty)
            if cp_id in self._master_data():
                return self.update_counterparty(counterparty=cp_id, limit_eur=limit_eur)
            if limit_eur is None:
                raise InvalidCreditInputError("limit_eur", "is required to create a counterparty")
            return self.create_counterparty(counterparty=cp_id, limit_eur=limit_eur)

    def delete_counterparty(self, cp_id: str) -> None:
        """Remove the master data (its trades and settlements stay; it is then unlimited)."""
        cp_id = counterparty_id(cp_id)
        if not self._store.delete_counterparty(cp_id):
            raise CounterpartyNotFoundError(f"no counterparty {cp_id!r}")
        log.info("credit: counterparty %s deleted", cp_id)
        with self._lock:
            self._crossed.pop(cp_id, None)
            if self._metrics is not None:
                try:
                    self._metrics.utilisation.remove(cp_id)
                except KeyError:
                    pass  # it never had a limit
        self._changed()

    # -- settlements ----------------------------------------------------------------------

    def record_settlement(
        self,
        *,
        counterparty: str,
        trade_ids: Iterable[int] = (),
        amount_eur: object = None,
        settled_on: date,
        reference_text: str | None = None,
        note: str | None = None,
        recorded_by: str,
    ) -> Settlement:
        """Record trades of a counterparty as settled, or a payment on account (exactly one)."""
        cp_id = counterparty_id(counterparty)
        ids = sorted(set(trade_ids))
        if bool(ids) == (amount_eur is not None):
            raise InvalidCreditInputError(
                "trade_ids",
                "give either trade_ids (settle those trades) or amount_eur (a payment on "
                "account), not both and not neither",
            )
        if not isinstance(settled_on, date):
            raise InvalidCreditInputError("settled_on", "must be a date (YYYY-MM-DD)")
        ref = reference(reference_text)
        if note is not None and (not isinstance(note, str) or len(note) > MAX_NOTE_LENGTH):
            raise InvalidCreditInputError(
                "note", f"must be text of at most {MAX_NOTE_LENGTH} chars"
            )
        if ids:
            if any(isinstance(t, bool) or not isinstance(t, int) or t <= 0 for t in ids):
                raise InvalidCreditInputError("trade_ids", "must be positive trade ids")
            with self._lock:
                self._sync_trades()
                legs = self._ledger.legs.get(cp_id, {})
                missing = [t for t in ids if t not in legs]
                if missing:
                    raise SettlementConflictError(
                        f"trades {missing} are not trades of counterparty {cp_id!r} (unknown "
                        "trade id, or the counterparty is on neither side)"
                    )
                amount = sum((legs[t].owed for t in ids), _ZERO).quantize(CENT)
        else:
            amount = eur(amount_eur, "amount_eur", signed=True)
            if amount == 0:
                raise InvalidCreditInputError("amount_eur", "a payment of 0 EUR settles nothing")
        settlement = self._store.add_settlement(
            counterparty_id=cp_id,
            trade_ids=ids,
            amount_eur=amount,
            settled_on=settled_on,
            reference=ref,
            note=note,
            recorded_at=self._now(),
            recorded_by=recorded_by,
        )
        log.info(
            "credit: settlement %d for %s recorded by %s (%s, %s EUR)",
            settlement.settlement_id,
            cp_id,
            recorded_by,
            f"{len(ids)} trades" if ids else "on account",
            amount,
        )
        self._changed()
        return settlement

    def settle_trades(
        self,
        *,
        counterparty: str,
        trade_ids: Iterable[int],
        settled_on: date,
        reference_text: str,
        recorded_by: str = "billing",
    ) -> Settlement:
        """For billing: the invoice `reference_text` of `counterparty` over `trade_ids` is paid.

        Idempotent per reference: when these legs are already settled by one settlement with
        the same reference (the invoice marked paid twice), that settlement is returned.
        """
        cp_id = counterparty_id(counterparty)
        ids = sorted(set(trade_ids))
        done = self._store.settled_by(cp_id, ids)
        if ids and len(done) == len(ids) and len(set(done.values())) == 1:
            existing = self._store.get_settlement(next(iter(done.values())))
            if (
                existing is not None
                and existing.reference == reference(reference_text)
                and list(existing.trade_ids) == ids
            ):
                return existing
        return self.record_settlement(
            counterparty=cp_id,
            trade_ids=ids,
            settled_on=settled_on,
            reference_text=reference_text,
            recorded_by=recorded_by,
        )

    def settlements(
        self, *, counterparty: str | None = None, limit: int | None = None
    ) -> list[Settlement]:
        cp_id = None if counterparty is None else counterparty_id(counterparty)
        return self._store.list_settlements(counterparty_id=cp_id, limit=limit)

    # -- exposure -------------------------------------------------------------------------

    def exposures(self) -> list[Exposure]:
        """Every counterparty with master data, trades or open orders, sorted by id."""
        with self._lock:
            return self._exposures(None)

    def exposure(self, cp_id: str) -> Exposure:
        with self._lock:
            return self._exposures(counterparty_id(cp_id))[0]

    def refresh(self) -> list[Exposure]:
        """Recompute every exposure, update the gauges, fire alerts for new crossings."""
        with self._lock:
            found = self._exposures(None)
            alerts = [a for e in found for a in self._evaluate(e)]
        for alert in alerts:
            self._alert(alert)
        return found

    def _exposures(self, only: str | None) -> list[Exposure]:
        self._sync_trades()
        self._sync_settlements()
        masters = self._master_data()
        now = self._now()
        open_orders: dict[str, list[Order]] = {}
        # One counterparty (the pre-trade check, on every placement): only its open orders.
        for order in self._trades.list_orders(counterparty=only, states=_OPEN):
            open_orders.setdefault(order.counterparty, []).append(order)
        names = (
            {only}
            if only is not None
            else set(masters) | set(self._ledger.legs) | set(open_orders) | set(self._paid)
        )
        return [
            self._one(cp, masters.get(cp), open_orders.get(cp, []), now) for cp in sorted(names)
        ]

    def _one(
        self, cp: str, master: Counterparty | None, orders: list[Order], now: datetime
    ) -> Exposure:
        receivable = payable = addon_base = _ZERO
        unsettled = 0
        for trade_id, leg in self._ledger.legs.get(cp, {}).items():
            if leg.delivery_end > now:
                addon_base += abs(leg.owed)
            if (trade_id, cp) in self._settled:
                continue
            unsettled += 1
            if leg.owed > 0:
                receivable += leg.owed
            else:
                payable -= leg.owed
        worst = _ZERO
        for order in orders:
            owed, notional = _worst_case(order)
            worst += owed
            addon_base += notional
        paid = self._paid.get(cp, _ZERO)
        return Exposure(
            counterparty_id=cp,
            name=None if master is None else master.name,
            limit_eur=None if master is None else master.limit_eur,
            receivable_eur=receivable,
            payable_eur=payable,
            paid_on_account_eur=paid,
            current_eur=max(receivable - payable - paid, _ZERO),
            open_orders_eur=worst,
            addon_eur=addon_base * self._addon,
            unsettled_trades=unsettled,
            open_orders=len(orders),
            as_of=now,
        )

    def _evaluate(self, exposure: Exposure) -> list[CreditAlert]:
        cp = exposure.counterparty_id
        if self._metrics is not None:
            self._metrics.exposure.labels(cp).set(float(exposure.exposure_eur))
        util = exposure.utilisation_pct
        if util is None or exposure.limit_eur is None:
            self._crossed.pop(cp, None)
            return []
        if self._metrics is not None:
            self._metrics.utilisation.labels(cp).set(float(util))
        master = self._master_data().get(cp)
        levels = (master.alert_thresholds_pct if master else None) or self._defaults
        crossed = self._crossed.setdefault(cp, set())
        crossed &= set(levels)  # thresholds changed: forget the ones that are gone
        alerts = []
        for level in levels:
            if util >= level and level not in crossed:
                crossed.add(level)
                alerts.append(
                    CreditAlert(
                        counterparty_id=cp,
                        threshold_pct=level,
                        utilisation_pct=util,
                        exposure_eur=exposure.exposure_eur,
                        limit_eur=exposure.limit_eur,
                        at=exposure.as_of,
                    )
                )
            elif util < level and level in crossed:
                crossed.discard(level)
                log.info("credit: %s back below %s %% of its limit (%.2f %%)", cp, level, util)
        return alerts

    def _alert(self, alert: CreditAlert) -> None:
        log.warning(
            "credit alert: counterparty %s at %.2f %% of its limit (threshold %s %%): exposure "
            "%s EUR, limit %s EUR",
            alert.counterparty_id,
            alert.utilisation_pct,
            alert.threshold_pct,
            alert.exposure_eur.quantize(CENT),
            alert.limit_eur,
        )
        if self._metrics is not None:
            self._metrics.alerts.labels(alert.counterparty_id, str(alert.threshold_pct)).inc()
        if self._on_alert is not None:
            try:
                self._on_alert(alert)
            except Exception:
                log.exception("credit: publishing the alert failed")

    # -- pre-trade ------------------------------------------------------------------------

    def pre_trade_reason(self, order: Order) -> str | None:
        """Why `order` (validated, nothing filled) must be rejected for credit, or None."""
        cp = order.counterparty
        with self._lock:
            master = self._master_data().get(cp)
            if master is None:
                if self.require_counterparty:
                    return (
                        f"credit: counterparty {cp!r} has no credit master data and the plane "
                        "requires it (credit_require_counterparty): an admin must create it "
                        "with a limit (POST /api/credit/counterparties)"
                    )
                return None
            if master.limit_eur is None:
                return None
            before = self._exposures(cp)[0]
        owed, notional = _worst_case(order)
        added = owed + notional * self._addon
        after = before.exposure_eur + added
        if after <= master.limit_eur:
            return None
        if self._metrics is not None:
            self._metrics.rejections.labels(cp).inc()
        return (
            f"credit: counterparty {cp} would reach {_money(after)} EUR exposure, over its limit "
            f"of {_money(master.limit_eur)} EUR by {_money(after - master.limit_eur)} EUR "
            f"(now {_money(before.exposure_eur)} EUR = current {_money(before.current_eur)} + "
            f"PFE {_money(before.pfe_eur)}; this order adds {_money(added)} = worst-case fill "
            f"{_money(owed)} + {self.addon_pct.normalize():f} % add-on "
            f"{_money(notional * self._addon)})"
        )

    # -- internals ------------------------------------------------------------------------

    def _now(self) -> datetime:
        return self._clock().astimezone(UTC)

    def _master_data(self) -> dict[str, Counterparty]:
        with self._lock:
            if self._masters is None:
                self._masters = {c.counterparty_id: c for c in self._store.list_counterparties()}
            return self._masters

    def _changed(self) -> None:
        """After a credit write: reload master data and settlements, re-evaluate alerts."""
        with self._lock:
            self._masters = None
            self._settled_version = -1
        self.refresh()

    def _sync_settlements(self) -> None:
        version = self._store.version()
        if version != self._settled_version:
            self._settled = self._store.settled_legs()
            self._paid = self._store.paid_on_account()
            self._settled_version = version

    def _sync_trades(self) -> None:
        """Add the trades committed since the last call (by id; the exchange's ids have no
        gaps and a placement's trades commit together)."""
        _, newest = self._trades.last_ids()
        if newest <= self._ledger.last_trade_id:
            return
        fresh: list[Trade] = []
        before: int | None = None
        while True:
            page = self._trades.list_trades(limit=_PAGE, before_id=before)
            new = [t for t in page if t.trade_id > self._ledger.last_trade_id]
            fresh.extend(new)
            if len(new) < len(page) or len(page) < _PAGE:
                break
            before = page[0].trade_id
        for trade in sorted(fresh, key=lambda t: t.trade_id):
            self._ledger.add(trade)


class CreditCheck:
    """The exchange's pre-trade credit check (see the module docstring)."""

    name = "credit"

    def __init__(self, service: CreditService) -> None:
        self._service = service

    def __call__(self, order: Order) -> str | None:
        return self._service.pre_trade_reason(order)


def _name(value: object) -> str:
    if not isinstance(value, str) or not value.strip() or len(value.strip()) > MAX_NAME_LENGTH:
        raise InvalidCreditInputError("name", f"must be 1 to {MAX_NAME_LENGTH} characters")
    if not value.strip().isprintable():
        raise InvalidCreditInputError("name", "must not contain control characters")
    return value.strip()


def _money(value: Decimal) -> str:
    return f"{value.quantize(CENT) + 0:,.2f}"
