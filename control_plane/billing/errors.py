"""Every error billing raises, as one tree (httpx `_exceptions.py` style, STYLE 10).

BillingError
├── InvalidRequestError (ValueError)  a parameter is malformed (period not YYYY-MM, an
│   │                                 empty counterparty, a bad filter); nothing was stored
│   └── PeriodNotEndedError           the month has not ended yet: invoices cover whole
│                                     months, generate them once the period is over
├── InvoiceNotFoundError (LookupError) no invoice with that id
├── InvoiceConflictError              the document's state does not allow the call: a credit
│   │                                 note or a corrected invoice to mark paid, an invoice paid
│   │                                 already with other data, a paid invoice to correct
│   └── SettlementRefusedError        the payment listener (credit) refused to settle the
│                                     invoice's trades; the invoice was not marked paid
└── BillingStoreError                 persistence failed; the call issued nothing (numbers
                                      are allocated in the same transaction, so none is lost)
"""

from __future__ import annotations

__all__ = [
    "BillingError",
    "BillingStoreError",
    "InvalidRequestError",
    "InvoiceConflictError",
    "InvoiceNotFoundError",
    "PeriodNotEndedError",
    "SettlementRefusedError",
]


class BillingError(Exception):
    """Base of every error billing raises."""


class InvalidRequestError(BillingError, ValueError):
    """A parameter is malformed; the message says which, what was given and what is allowed."""


class PeriodNotEndedError(InvalidRequestError):
    """The billing period has not ended yet."""


class InvoiceNotFoundError(BillingError, LookupError):
    """No invoice with that id."""


class InvoiceConflictError(BillingError):
    """The document's state does not allow the call; the message says why and what to do."""


class SettlementRefusedError(InvoiceConflictError):
    """The payment listener refused to settle the invoice's trades (nothing was marked paid)."""


class BillingStoreError(BillingError):
    """The billing store failed; nothing of the call was stored."""
