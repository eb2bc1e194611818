"""Domain types of the internal exchange: markets, delivery periods, orders and trades.

**Numbers.** Quantities are MW and prices EUR/MWh, both as `Decimal` at a fixed scale: orders at
0.001 MW (1 kW) and 0.01 EUR/MWh (the exchange tick), trade prices at 0.001 EUR/MWh (the spec's
mean of two limits is exact at 0.005). Why not float: a fill subtracts quantities again and
again, and in binary floating point 0.1 + 0.2 != 0.3, so an order could end with 1e-17 MW left
and never reach FILLED; sums of price x energy (exposure, PnL) would depend on the order of
addition, so a book rebuilt after a restart could differ in the last bit from the one before.
At a fixed scale `+`, `-` and `x` of Decimals are exact; the store keeps them as integers (kW,
milli-EUR/MWh), so SQLite and PostgreSQL round-trip them bit for bit. The cost (Decimal is C in
CPython, a few hundred ns per operation) is small next to one commit.

**Time.** UTC inside, timezone-aware always (DESIGN 8). A delivery period is a 15-minute product
(PT15M) or a one-hour block (PT60M); an hourly order can also be placed as its four quarters
(`hourly_as_quarters`). A block trades only against blocks of the same hour: it has its own book.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from decimal import Decimal, InvalidOperation
from enum import StrEnum
from typing import Any, Final

from control_plane.exchange.errors import InvalidDeliveryError, UnknownMarketError

QUANTITY_STEP_MW: Final = Decimal("0.001")
"""Order quantities are whole kW."""
PRICE_STEP_EUR_PER_MWH: Final = Decimal("0.01")
"""Limit prices are whole cents per MWh (the exchange tick)."""
TRADE_PRICE_STEP_EUR_PER_MWH: Final = Decimal("0.001")
"""Trade prices: the mean of two limits at 0.01 is exact at 0.005."""
MAX_QUANTITY_LIMIT_MW: Final = Decimal(1_000_000)
"""No market may allow more per order: keeps kW far inside a 64-bit integer column."""
QUARTER_MINUTES: Final = 15
BLOCK_MINUTES: Final = 60
PRODUCT_MINUTES: Final = frozenset({QUARTER_MINUTES, BLOCK_MINUTES})

Number = Decimal | int | float | str
"""A quantity or price as a caller hands it in; validated into a Decimal at the fixed scale."""

_MARKET_ID = re.compile(r"[a-z][a-z0-9_]{0,31}")
_PRODUCT_ID = re.compile(r"(\d{4}-\d{2}-\d{2}T\d{2}:\d{2})Z/PT(15|60)M")


class Side(StrEnum):
    """BUY takes energy from the market (the battery charges); SELL delivers it (discharges)."""

    BUY = "BUY"
    SELL = "SELL"

    @property
    def opposite(self) -> Side:
        return Side.SELL if self is Side.BUY else Side.BUY


class OrderState(StrEnum):
    """Life cycle: ACCEPTED -> PARTIALLY_FILLED -> FILLED; open ones may become CANCELLED, or
    EXPIRED when their product reaches gate closure (what was filled before stays traded)."""

    ACCEPTED = "ACCEPTED"
    PARTIALLY_FILLED = "PARTIALLY_FILLED"
    FILLED = "FILLED"
    CANCELLED = "CANCELLED"
    REJECTED = "REJECTED"
    EXPIRED = "EXPIRED"

    @property
    def is_open(self) -> bool:
        """True while the order rests in its book and can still trade."""
        return self in _OPEN_STATES


_OPEN_STATES: Final = frozenset({OrderState.ACCEPTED, OrderState.PARTIALLY_FILLED})


class PricingRule(StrEnum):
    """How a match is priced (DESIGN 6)."""

    MIDPOINT = "midpoint"
    """The spec's rule and the default: the mean of the buy and the sell limit."""
    RESTING = "resting"
    """The exchange-standard rule: the price of the order that was in the book first."""


@dataclass(frozen=True, slots=True, order=True)
class DeliveryPeriod:
    """A tradable product: [start, start + minutes) in UTC, a quarter-hour or an hour block."""

    start: datetime
    minutes: int = QUARTER_MINUTES

    def __post_init__(self) -> None:
        start = self.start
        if not isinstance(start, datetime) or start.tzinfo is None:
            raise InvalidDeliveryError(
                field="delivery.start",
                value=start,
                allowed="a timezone-aware datetime",
                problem="delivery start must carry a timezone (UTC inside, DESIGN 8)",
            )
        if self.minutes not in PRODUCT_MINUTES:
            raise InvalidDeliveryError(
                field="delivery.minutes",
                value=self.minutes,
                allowed="15 (quarter-hour) or 60 (hour block)",
                problem="unknown product length",
            )
        start = start.astimezone(UTC)
        if start.second or start.microsecond or start.minute % self.minutes:
            raise InvalidDeliveryError(
                field="delivery.start",
                value=start.isoformat(),
                allowed=f"a UTC time on a {self.minutes}-minute boundary",
                problem="delivery start is not aligned to its product",
            )
        object.__setattr__(self, "start", start)

    @classmethod
    def quarter(cls, start: datetime) -> DeliveryPeriod:
        """The 15-minute product starting at `start`."""
        return cls(start, QUARTER_MINUTES)

    @classmethod
    def hour_block(cls, start: datetime) -> DeliveryPeriod:
        """The one-hour block product starting at `start` (a full UTC hour)."""
        return cls(start, BLOCK_MINUTES)

    @classmethod
    def parse(cls, product_id: str) -> DeliveryPeriod:
        """The period named by `product_id`, e.g. ``2025-11-03T10:00Z/PT15M``."""
        match = _PRODUCT_ID.fullmatch(product_id)
        if match is None:
            raise InvalidDeliveryError(
                field="delivery",
                value=product_id,
                allowed="YYYY-MM-DDTHH:MMZ/PT15M or .../PT60M",
                problem="not a product id",
            )
        start = datetime.fromisoformat(match[1]).replace(tzinfo=UTC)
        return cls(start, int(match[2]))

    @property
    def end(self) -> datetime:
        return self.start + timedelta(minutes=self.minutes)

    @property
    def duration_h(self) -> Decimal:
        """0.25 or 1: MW x duration_h = MWh."""
        return Decimal(self.minutes) / 60

    @property
    def is_block(self) -> bool:
        return self.minutes == BLOCK_MINUTES

    @property
    def product_id(self) -> str:
        return f"{self.start:%Y-%m-%dT%H:%M}Z/PT{self.minutes}M"

    def quarters(self) -> tuple[DeliveryPeriod, ...]:
        """The quarter-hours this period delivers in (itself for a quarter, four for a block)."""
        return tuple(
            DeliveryPeriod(self.start + timedelta(minutes=m), QUARTER_MINUTES)
            for m in range(0, self.minutes, QUARTER_MINUTES)
        )

    def __str__(self) -> str:
        return self.product_id


@dataclass(frozen=True, slots=True)
class Market:
    """One venue the exchange runs books for, with its validation limits (from config)."""

    market_id: str
    price_min_eur_per_mwh: Decimal = Decimal(-500)
    price_max_eur_per_mwh: Decimal = Decimal(4000)
    max_quantity_mw: Decimal = Decimal(10_000)
    gate_closure: timedelta = timedelta(0)
    """Trading in a product stops this long before its delivery starts."""
    product_minutes: frozenset[int] = PRODUCT_MINUTES

    def __post_init__(self) -> None:
        problems: list[str] = []
        if not isinstance(self.market_id, str) or not _MARKET_ID.fullmatch(self.market_id):
            problems.append("market_id must match [a-z][a-z0-9_]{0,31}")
        for name in ("price_min_eur_per_mwh", "price_max_eur_per_mwh", "max_quantity_mw"):
            value = _config_decimal(getattr(self, name), name, problems)
            object.__setattr__(self, name, value)
        low, high = self.price_min_eur_per_mwh, self.price_max_eur_per_mwh
        if not problems:
            if low >= high:
                problems.append(f"price_min_eur_per_mwh {low} must be below the max {high}")
            if low != low.quantize(PRICE_STEP_EUR_PER_MWH) or high != high.quantize(
                PRICE_STEP_EUR_PER_MWH
            ):
                problems.append("price bounds must be whole cents per MWh")
            if not 0 < self.max_quantity_mw <= MAX_QUANTITY_LIMIT_MW:
                problems.append(f"max_quantity_mw must be in (0, {MAX_QUANTITY_LIMIT_MW}]")
        if self.gate_closure < timedelta(0):
            problems.append("gate_closure must not be negative")
        if not self.product_minutes or not set(self.product_minutes) <= PRODUCT_MINUTES:
            problems.append("product_minutes must be a non-empty subset of {15, 60}")
        if problems:
            raise ValueError(f"market {self.market_id!r}: " + "; ".join(problems))
        object.__setattr__(self, "product_minutes", frozenset(self.product_minutes))

    @classmethod
    def from_mapping(cls, market_id: str, config: Mapping[str, Any]) -> Market:
        """A market from its config block (YAML keys = field names; gate closure in minutes)."""
        known = {
            "price_min_eur_per_mwh",
            "price_max_eur_per_mwh",
            "max_quantity_mw",
            "gate_closure_min",
            "product_minutes",
        }
        unknown = sorted(set(config) - known)
        if unknown:
            raise ValueError(
                f"market {market_id!r}: unknown keys {unknown}, known: {sorted(known)}"
            )
        kwargs: dict[str, Any] = {
            k: config[k]
            for k in ("price_min_eur_per_mwh", "price_max_eur_per_mwh", "max_quantity_mw")
            if k in config
        }
        if "gate_closure_min" in config:
            kwargs["gate_closure"] = timedelta(minutes=float(config["gate_closure_min"]))
        if "product_minutes" in config:
            kwargs["product_minutes"] = frozenset(int(m) for m in config["product_minutes"])
        return cls(market_id, **kwargs)


def _config_decimal(value: object, name: str, problems: list[str]) -> Decimal:
    if isinstance(value, bool) or not isinstance(value, Decimal | int | float | str):
        problems.append(f"{name} must be a number, got {value!r}")
        return Decimal(0)
    try:
        result = Decimal(repr(value)) if isinstance(value, float) else Decimal(value)
    except InvalidOperation:
        problems.append(f"{name} must be a number, got {value!r}")
        return Decimal(0)
    if not result.is_finite():
        problems.append(f"{name} must be finite, got {value!r}")
        return Decimal(0)
    return result


DEFAULT_MARKET_IDS: Final = ("epex_at", "epex_de_lu")


class MarketRegistry:
    """The markets the exchange knows; anything else is refused with the list of known ids."""

    def __init__(self, markets: Iterable[Market]) -> None:
        self._markets: dict[str, Market] = {}
        for market in markets:
            if market.market_id in self._markets:
                raise ValueError(f"market {market.market_id!r} is configured twice")
            self._markets[market.market_id] = market
        if not self._markets:
            raise ValueError("the market registry needs at least one market")

    @classmethod
    def default(cls) -> MarketRegistry:
        """EPEX Austria and Germany-Luxembourg with the harmonised bounds (DESIGN 7)."""
        return cls(Market(market_id) for market_id in DEFAULT_MARKET_IDS)

    @classmethod
    def from_mapping(cls, config: Mapping[str, Mapping[str, Any]]) -> MarketRegistry:
        """From config: ``{"epex_at": {"price_min_eur_per_mwh": -500, ...}, ...}``."""
        return cls(Market.from_mapping(market_id, block) for market_id, block in config.items())

    def get(self, market_id: str) -> Market:
        try:
            return self._markets[market_id]
        except (KeyError, TypeError):
            raise UnknownMarketError(
                field="market",
                value=market_id,
                allowed=", ".join(sorted(self._markets)),
                problem="unknown market",
            ) from None

    def __contains__(self, market_id: object) -> bool:
        return market_id in self._markets

    def __iter__(self) -> Iterator[Market]:
        return iter(self._markets.values())

    def __len__(self) -> int:
        return len(self._markets)


@dataclass(frozen=True, slots=True, kw_only=True)
class NewOrder:
    """An order as submitted, before validation (quantity and price as the caller gave them)."""

    side: Side
    quantity_mw: Number
    limit_price_eur_per_mwh: Number
    market: str
    delivery: DeliveryPeriod
    portfolio: str
    counterparty: str
    site: str | None = None


def hourly_as_quarters(order: NewOrder) -> tuple[NewOrder, ...]:
    """An hour-block order as four quarter-hour orders of the same MW and limit.

    Each quarter then matches in its own book, so the hour may end up partly filled; place it
    as a block (`DeliveryPeriod.hour_block`) when it must trade all or nothing per match.
    """
    if not order.delivery.is_block:
        raise InvalidDeliveryError(
            field="delivery.minutes",
            value=order.delivery.minutes,
            allowed="60",
            problem="only an hour block splits into quarters",
        )
    return tuple(replace(order, delivery=q) for q in order.delivery.quarters())


@dataclass(frozen=True, slots=True, kw_only=True)
class Order:
    """A validated order with its current fill state; `order_id` also gives time priority."""

    order_id: int
    side: Side
    quantity_mw: Decimal
    limit_price_eur_per_mwh: Decimal
    market: str
    delivery: DeliveryPeriod
    portfolio: str
    counterparty: str
    site: str | None
    state: OrderState
    filled_mw: Decimal
    created_at: datetime
    updated_at: datetime
    reject_reason: str | None = None

    @property
    def remaining_mw(self) -> Decimal:
        return self.quantity_mw - self.filled_mw

    @property
    def is_open(self) -> bool:
        return self.state.is_open

    @property
    def book_key(self) -> BookKey:
        return BookKey(self.market, self.delivery)


@dataclass(frozen=True, slots=True, order=True)
class BookKey:
    """One order book: a market and a delivery period."""

    market: str
    delivery: DeliveryPeriod

    def __str__(self) -> str:
        return f"{self.market}:{self.delivery.product_id}"


@dataclass(frozen=True, slots=True, kw_only=True)
class Trade:
    """One match between a buy and a sell order of the same book."""

    trade_id: int
    market: str
    delivery: DeliveryPeriod
    buy_order_id: int
    sell_order_id: int
    buy_portfolio: str
    sell_portfolio: str
    buy_counterparty: str
    sell_counterparty: str
    quantity_mw: Decimal
    price_eur_per_mwh: Decimal
    aggressor: Side
    """The side of the incoming order; the other one was resting in the book."""
    executed_at: datetime

    @property
    def energy_mwh(self) -> Decimal:
        return self.quantity_mw * self.delivery.duration_h

    @property
    def value_eur(self) -> Decimal:
        return self.energy_mwh * self.price_eur_per_mwh


@dataclass(frozen=True, slots=True)
class PlacedOrder:
    """What a placement did: the order as it ended, its trades, the resting orders it hit."""

    order: Order
    trades: tuple[Trade, ...] = ()
    counter_orders: tuple[Order, ...] = field(default=())
    """The resting orders this order traded with, in their state after the trades."""
