"""The internal exchange: order books per market and delivery period, matched by price and
time, persisted atomically (SQLite by default, PostgreSQL for scale-out).

Modules: `models` (domain types), `book` (the pure in-memory book), `service` (the matching
engine, `Exchange`), `store` (persistence), `exposure` (positions and PnL), `errors` (the
error tree), `policy` (policy.yaml), `checks` (the pre-trade checks it configures),
`metrics` (Prometheus).
"""

from control_plane.exchange.errors import (
    ExchangeError,
    InvalidDeliveryError,
    InvalidFieldError,
    InvalidPriceError,
    InvalidQuantityError,
    OrderExpiredError,
    OrderNotFoundError,
    OrderNotOpenError,
    OrderValidationError,
    StoreConflictError,
    StoreError,
    UnknownMarketError,
)
from control_plane.exchange.models import (
    DeliveryPeriod,
    Market,
    MarketRegistry,
    NewOrder,
    Order,
    OrderState,
    PlacedOrder,
    PricingRule,
    Side,
    Trade,
    hourly_as_quarters,
)

__all__ = [
    "DeliveryPeriod",
    "ExchangeError",
    "InvalidDeliveryError",
    "InvalidFieldError",
    "InvalidPriceError",
    "InvalidQuantityError",
    "Market",
    "MarketRegistry",
    "NewOrder",
    "Order",
    "OrderExpiredError",
    "OrderNotFoundError",
    "OrderNotOpenError",
    "OrderState",
    "OrderValidationError",
    "PlacedOrder",
    "PricingRule",
    "Side",
    "StoreConflictError",
    "StoreError",
    "Trade",
    "UnknownMarketError",
    "hourly_as_quarters",
]
