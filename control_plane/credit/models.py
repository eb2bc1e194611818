"""Domain types of the credit service: counterparties, settlements, exposures and alerts.

Money is `Decimal` EUR throughout. Limits and settlement amounts are whole cents (the store
keeps them as integer cents); exposures are exact sums of trade values (MW x h x EUR/MWh) and
are rounded to cents only when shown.

Errors:

    CreditError (Exception)
    ├── InvalidCreditInputError (ValueError)   a field is missing or out of range
    ├── CounterpartyNotFoundError (LookupError) no master data for that id
    ├── CounterpartyExistsError                 create of an id that exists
    └── SettlementConflictError                 a trade leg is settled already, or unknown
    control_plane.db.StoreError                 the store failed (not a credit error)
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import date, datetime
from decimal import Decimal, InvalidOperation
from typing import Final

__all__ = [
    "CENT",
    "MAX_AMOUNT_EUR",
    "Counterparty",
    "CounterpartyExistsError",
    "CounterpartyNotFoundError",
    "CreditAlert",
    "CreditError",
    "Exposure",
    "InvalidCreditInputError",
    "Settlement",
    "SettlementConflictError",
    "counterparty_id",
    "eur",
    "thresholds",
]

CENT: Final = Decimal("0.01")
MAX_AMOUNT_EUR: Final = Decimal(10) ** 13
"""No limit or payment is larger (10 trillion EUR): keeps cents inside a 64-bit column."""
MAX_ID_LENGTH: Final = 64
"""Same as the exchange's names: the id is what orders carry in `counterparty`."""
MAX_THRESHOLDS: Final = 5
_REFERENCE = re.compile(r"[^\x00-\x1f\x7f]{1,128}")


class CreditError(Exception):
    """Base of the credit service's errors; the message says what was wrong and what to do."""


class InvalidCreditInputError(CreditError, ValueError):
    """A field is missing, malformed or out of range."""

    def __init__(self, field: str, problem: str) -> None:
        super().__init__(f"{field}: {problem}")
        self.field = field
        self.problem = problem


class CounterpartyNotFoundError(CreditError, LookupError):
    """No master data for the counterparty id."""


class CounterpartyExistsError(CreditError):
    """A counterparty with that id exists already (update it instead)."""


class SettlementConflictError(CreditError):
    """A trade leg to settle is settled already, is not the counterparty's, or is unknown."""


def counterparty_id(value: object, field: str = "counterparty") -> str:
    """The id as orders carry it: 1 to 64 printable characters, outer spaces stripped."""
    if not isinstance(value, str):
        raise InvalidCreditInputError(field, "must be a string")
    text = value.strip()
    if not text or len(text) > MAX_ID_LENGTH or not text.isprintable():
        raise InvalidCreditInputError(
            field, f"must be 1 to {MAX_ID_LENGTH} printable characters (the order's counterparty)"
        )
    return text


def eur(value: object, field: str, *, positive: bool = False, signed: bool = False) -> Decimal:
    """An amount in EUR as a Decimal of whole cents; refuses floats' binary noise by rounding
    only when the value is already a multiple of a cent."""
    if isinstance(value, bool) or not isinstance(value, Decimal | int | float | str):
        raise InvalidCreditInputError(field, "must be a number of EUR, e.g. 250000 or '250000.00'")
    try:
        amount = Decimal(repr(value)) if isinstance(value, float) else Decimal(value)
    except InvalidOperation:
        raise InvalidCreditInputError(field, f"{value!r} is not a number") from None
    if not amount.is_finite():
        raise InvalidCreditInputError(field, "must be finite")
    if amount != amount.quantize(CENT, rounding="ROUND_HALF_EVEN"):
        raise InvalidCreditInputError(field, f"{amount} has more than two decimals (whole cents)")
    if abs(amount) >= MAX_AMOUNT_EUR:
        raise InvalidCreditInputError(field, f"must be below {MAX_AMOUNT_EUR:,} EUR in size")
    if positive and amount <= 0:
        raise InvalidCreditInputError(field, f"must be above 0, got {amount}")
    if not signed and amount < 0:
        raise InvalidCreditInputError(field, f"must not be negative, got {amount}")
    return amount.quantize(CENT)


def thresholds(values: object, field: str = "alert_thresholds_pct") -> tuple[Decimal, ...]:
    """Alert thresholds in % of the limit: 1 to 5 distinct values in (0, 1000], sorted."""
    if isinstance(values, str | bytes) or not hasattr(values, "__iter__"):
        raise InvalidCreditInputError(field, "must be a list of percentages, e.g. [75, 90]")
    found: set[Decimal] = set()
    for raw in values:
        if isinstance(raw, bool) or not isinstance(raw, Decimal | int | float | str):
            raise InvalidCreditInputError(field, f"{raw!r} is not a percentage")
        try:
            pct = Decimal(repr(raw)) if isinstance(raw, float) else Decimal(raw)
        except InvalidOperation:
            raise InvalidCreditInputError(field, f"{raw!r} is not a percentage") from None
        if not pct.is_finite() or not 0 < pct <= 1000:
            raise InvalidCreditInputError(field, f"{raw} must be in (0, 1000] %")
        found.add(pct.normalize() + 0)
    if not 1 <= len(found) <= MAX_THRESHOLDS:
        raise InvalidCreditInputError(
            field, f"needs 1 to {MAX_THRESHOLDS} distinct percentages, got {len(found)}"
        )
    return tuple(sorted(found))


def reference(value: object, field: str = "reference") -> str | None:
    """An optional free-text reference (invoice number, bank reference): 1 to 128 chars."""
    if value is None:
        return None
    if not isinstance(value, str) or not _REFERENCE.fullmatch(value.strip()):
        raise InvalidCreditInputError(field, "must be 1 to 128 characters without control codes")
    return value.strip()


@dataclass(frozen=True, slots=True, kw_only=True)
class Counterparty:
    """Master data: the id orders carry, a legal name, a credit limit, alert thresholds."""

    counterparty_id: str
    name: str
    limit_eur: Decimal | None
    """None = no limit: exposure is reported but neither alerted nor checked."""
    alert_thresholds_pct: tuple[Decimal, ...] | None
    """None = the plane's default (`credit_alert_thresholds_pct`)."""
    created_at: datetime
    updated_at: datetime


@dataclass(frozen=True, slots=True, kw_only=True)
class Settlement:
    """Money that changed hands: whole trades of one counterparty, or an amount on account.

    `trade_ids`: the counterparty's legs of those trades are settled (their value no longer
    counts as receivable or payable). `amount_eur`: a payment on account, > 0 when the
    counterparty paid the operator, < 0 when the operator paid it; it reduces what the
    counterparty owes. A trade settlement carries the legs' net value as `amount_eur`.
    """

    settlement_id: int
    counterparty_id: str
    trade_ids: tuple[int, ...]
    amount_eur: Decimal
    settled_on: date
    reference: str | None
    note: str | None
    recorded_at: datetime
    recorded_by: str

    @property
    def kind(self) -> str:
        return "trades" if self.trade_ids else "amount"


@dataclass(frozen=True, slots=True, kw_only=True)
class Exposure:
    """One counterparty's credit exposure at `as_of` (see service.py for the definition)."""

    counterparty_id: str
    name: str | None
    limit_eur: Decimal | None
    receivable_eur: Decimal
    """Unsettled trade legs the counterparty owes (its buys at positive prices, ...)."""
    payable_eur: Decimal
    """Unsettled trade legs owed to the counterparty (its sells at positive prices, ...)."""
    paid_on_account_eur: Decimal
    """Net payments on account from the counterparty (amount settlements)."""
    current_eur: Decimal
    """max(0, receivable - payable - paid on account): what is lost if it defaults today."""
    open_orders_eur: Decimal
    """Worst-case fill value of its open orders (what it would owe if they all fill)."""
    addon_eur: Decimal
    """Price-move add-on on open orders' and undelivered trades' notional."""
    unsettled_trades: int
    open_orders: int
    as_of: datetime

    @property
    def pfe_eur(self) -> Decimal:
        """Potential future exposure: worst-case open-order fills plus the add-on."""
        return self.open_orders_eur + self.addon_eur

    @property
    def exposure_eur(self) -> Decimal:
        return self.current_eur + self.pfe_eur

    @property
    def utilisation_pct(self) -> Decimal | None:
        if self.limit_eur is None:
            return None
        return self.exposure_eur * 100 / self.limit_eur

    @property
    def headroom_eur(self) -> Decimal | None:
        return None if self.limit_eur is None else self.limit_eur - self.exposure_eur


@dataclass(frozen=True, slots=True, kw_only=True)
class CreditAlert:
    """Utilisation of a counterparty rose to or above a threshold (once per crossing)."""

    counterparty_id: str
    threshold_pct: Decimal
    utilisation_pct: Decimal
    exposure_eur: Decimal
    limit_eur: Decimal
    at: datetime

    def as_event(self) -> dict[str, object]:
        return {
            "counterparty": self.counterparty_id,
            "threshold_pct": str(self.threshold_pct),
            "utilisation_pct": str(self.utilisation_pct.quantize(CENT)),
            "exposure_eur": str(self.exposure_eur.quantize(CENT)),
            "limit_eur": str(self.limit_eur),
            "at": self.at.isoformat(),
        }
