"""Every error the exchange raises, as one tree (httpx `_exceptions.py` style, STYLE 10).

    ExchangeError
    ├── OrderValidationError (ValueError)  the request is malformed; nothing was stored
    │   ├── UnknownMarketError             `market` is not in the registry
    │   ├── InvalidQuantityError           not a number, not finite, <= 0, above the market's
    │   │                                  maximum, or finer than 0.001 MW
    │   ├── InvalidPriceError              not a number, not finite, outside the market's bounds,
    │   │                                  or finer than 0.01 EUR/MWh
    │   ├── InvalidDeliveryError           naive or misaligned start, a product the market does
    │   │                                  not list, or past the market's gate closure
    │   └── InvalidFieldError              side, portfolio, counterparty, site
    ├── OrderNotFoundError (LookupError)   no order with that id
    ├── OrderNotOpenError                  cancel of an order that is FILLED/CANCELLED/REJECTED
    │   └── OrderExpiredError              ... or EXPIRED: its product passed gate closure
    └── StoreError                         persistence failed (unreachable, cannot migrate, a
        │                                  newer schema); the call stored nothing and the
        │                                  in-memory books are as they were before it
        └── StoreConflictError             a row changed under the engine: a second writer

Validation errors carry `field`, `value` and `allowed` so the API can answer 422 with all three.
A well-formed order that a pre-trade check refuses is *not* an error: it is stored as REJECTED
with the check's reason and returned like any other placement.
"""

from __future__ import annotations

from datetime import datetime

__all__ = [
    "ExchangeError",
    "InvalidDeliveryError",
    "InvalidFieldError",
    "InvalidPriceError",
    "InvalidQuantityError",
    "OrderExpiredError",
    "OrderNotFoundError",
    "OrderNotOpenError",
    "OrderValidationError",
    "StoreConflictError",
    "StoreError",
    "UnknownMarketError",
]


class ExchangeError(Exception):
    """Base of every error the exchange raises."""


class OrderValidationError(ExchangeError, ValueError):
    """A field of a new order is invalid; `field`, `value` and `allowed` say which and why."""

    def __init__(self, *, field: str, value: object, allowed: str, problem: str) -> None:
        self.field = field
        self.value = value
        self.allowed = allowed
        self.problem = problem
        super().__init__(f"{field}={value!r}: {problem} (allowed: {allowed})")


class UnknownMarketError(OrderValidationError):
    """The market id is not in the registry."""


class InvalidQuantityError(OrderValidationError):
    """The quantity is not a positive, finite number of MW within the market's maximum."""


class InvalidPriceError(OrderValidationError):
    """The limit price is not finite or outside the market's configured bounds."""


class InvalidDeliveryError(OrderValidationError):
    """The delivery period is malformed, not offered by the market, or no longer tradable."""


class InvalidFieldError(OrderValidationError):
    """Side, portfolio, counterparty or site is missing or malformed."""


class OrderNotFoundError(ExchangeError, LookupError):
    """No order with that id."""

    def __init__(self, order_id: int) -> None:
        self.order_id = order_id
        super().__init__(f"no order with id {order_id}")


class OrderNotOpenError(ExchangeError):
    """The order cannot be cancelled: it is no longer in the book."""

    def __init__(self, order_id: int, state: str) -> None:
        self.order_id = order_id
        self.state = state
        super().__init__(f"order {order_id} is {state}, only open orders can be cancelled")


class OrderExpiredError(OrderNotOpenError):
    """The order cannot be cancelled: it expired when its product reached gate closure."""

    def __init__(self, order_id: int, *, gate_closure_at: datetime, delivery: str) -> None:
        self.gate_closure_at = gate_closure_at
        self.delivery = delivery
        ExchangeError.__init__(
            self,
            f"order {order_id} expired at gate closure {gate_closure_at.isoformat()} of "
            f"delivery {delivery}: it no longer rests in the book and cannot be cancelled "
            "(what it traded before stays traded)",
        )
        self.order_id = order_id
        self.state = "EXPIRED"


class StoreError(ExchangeError):
    """Persistence failed; nothing of the call was stored and the books are unchanged."""


class StoreConflictError(StoreError):
    """A row was not in the state the engine expected: another writer touched the store."""
