"""Exchange API models (HTTP in/out), built from and into the domain types of `models.py`.

Numbers: quantities and prices are `Decimal` end to end. In a request they may be JSON numbers
or decimal strings ("12.5"); NaN and Infinity are refused (422). In a response they are decimal
strings ("12.500"), so no client parser turns 0.1 MW into 0.1000000000000000055.

Prices: `limit_price` is EUR/MWh unless `price_unit` says `ct/kWh` or `EUR/kWh` (DESIGN 7); the
conversion to EUR/MWh happens here, exactly (x10, x1000), before the engine validates it.
"""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal
from enum import StrEnum
from typing import Annotated, Any, Literal

from pydantic import AwareDatetime, BaseModel, BeforeValidator, ConfigDict, Field, PlainSerializer

from control_plane.market.service import ExternalFigures

from .exposure import DeliveryPosition, PortfolioExposure
from .models import (
    BLOCK_MINUTES,
    QUARTER_MINUTES,
    DeliveryPeriod,
    NewOrder,
    Order,
    PlacedOrder,
    Side,
    Trade,
)

_IN = ConfigDict(extra="forbid")

MAX_NUMBER_CHARS = 40
"""A quantity or price string longer than this is refused before it is parsed."""


class PriceUnit(StrEnum):
    """Units a limit price may be given in; stored and matched in EUR/MWh."""

    EUR_PER_MWH = "EUR/MWh"
    CT_PER_KWH = "ct/kWh"
    EUR_PER_KWH = "EUR/kWh"

    @property
    def to_eur_per_mwh(self) -> Decimal:
        return _UNIT_FACTORS[self]


_UNIT_FACTORS = {
    PriceUnit.EUR_PER_MWH: Decimal(1),
    PriceUnit.CT_PER_KWH: Decimal(10),
    PriceUnit.EUR_PER_KWH: Decimal(1000),
}


def _upper(value: object) -> object:
    return value.strip().upper() if isinstance(value, str) else value


def _number(value: object) -> object:
    if isinstance(value, str):
        if len(value) > MAX_NUMBER_CHARS:
            raise ValueError(f"a number of at most {MAX_NUMBER_CHARS} characters")
        return value.strip()
    return value


def _plain(value: Decimal) -> str:
    return format(value, "f")


DecimalOut = Annotated[Decimal, PlainSerializer(_plain, return_type=str, when_used="json")]
"""A response number: a plain decimal string ("0.00000000", never "0E-8")."""

SideIn = Annotated[Side, BeforeValidator(_upper)]
DecimalIn = Annotated[Decimal, BeforeValidator(_number), Field(allow_inf_nan=False)]
Name = Annotated[str, Field(min_length=1, max_length=64)]
Product = Literal["PT15M", "PT60M"]


class DeliveryIn(BaseModel):
    """A delivery period: its start (ISO 8601 with an offset) and the product length."""

    model_config = _IN

    start: AwareDatetime = Field(description="start of the quarter-hour or hour, with offset")
    product: Product = Field(
        default="PT15M", description="PT15M (quarter-hour) or PT60M (hour block)"
    )

    def to_domain(self) -> DeliveryPeriod:
        minutes = QUARTER_MINUTES if self.product == "PT15M" else BLOCK_MINUTES
        return DeliveryPeriod(self.start.astimezone(UTC), minutes)


class OrderCreate(BaseModel):
    """A new limit order. BUY = the battery charges (takes energy), SELL = it discharges."""

    model_config = _IN

    side: SideIn = Field(description="BUY or SELL (any case)")
    quantity_mw: DecimalIn = Field(description="MW, > 0, in steps of 0.001 (1 kW)")
    limit_price: DecimalIn = Field(description="limit price in `price_unit` (EUR/MWh by default)")
    price_unit: PriceUnit = PriceUnit.EUR_PER_MWH
    market: Name = Field(description="e.g. epex_at")
    delivery: DeliveryIn
    split_hour: bool = Field(
        default=False,
        description="with product PT60M: place the hour as its four quarter-hour orders "
        "(each matches in its own book) instead of one hour block",
    )
    portfolio: Name
    counterparty: Name
    site: Name | None = None

    def limit_price_eur_per_mwh(self) -> Decimal:
        return self.limit_price * self.price_unit.to_eur_per_mwh

    def to_domain(self) -> NewOrder:
        return NewOrder(
            side=self.side,
            quantity_mw=self.quantity_mw,
            limit_price_eur_per_mwh=self.limit_price_eur_per_mwh(),
            market=self.market,
            delivery=self.delivery.to_domain(),
            portfolio=self.portfolio,
            counterparty=self.counterparty,
            site=self.site,
        )


class DeliveryPublic(BaseModel):
    product_id: str = Field(description="e.g. 2025-11-03T10:00Z/PT15M")
    start: datetime
    end: datetime
    product: Product

    @classmethod
    def of(cls, d: DeliveryPeriod) -> DeliveryPublic:
        return cls(
            product_id=d.product_id,
            start=d.start,
            end=d.end,
            product="PT15M" if d.minutes == QUARTER_MINUTES else "PT60M",
        )


class OrderPublic(BaseModel):
    order_id: int
    side: Side
    state: str = Field(
        description="ACCEPTED, PARTIALLY_FILLED, FILLED, CANCELLED, REJECTED or EXPIRED"
    )
    quantity_mw: DecimalOut
    filled_mw: DecimalOut
    remaining_mw: DecimalOut = Field(description="still tradable: 0 once the order is closed")
    limit_price_eur_per_mwh: DecimalOut
    market: str
    delivery: DeliveryPublic
    portfolio: str
    counterparty: str
    site: str | None
    reject_reason: str | None
    created_at: datetime
    updated_at: datetime

    @classmethod
    def of(cls, o: Order) -> OrderPublic:
        return cls(
            order_id=o.order_id,
            side=o.side,
            state=o.state.value,
            quantity_mw=o.quantity_mw,
            filled_mw=o.filled_mw,
            remaining_mw=o.remaining_mw if o.is_open else Decimal(0).quantize(o.quantity_mw),
            limit_price_eur_per_mwh=o.limit_price_eur_per_mwh,
            market=o.market,
            delivery=DeliveryPublic.of(o.delivery),
            portfolio=o.portfolio,
            counterparty=o.counterparty,
            site=o.site,
            reject_reason=o.reject_reason,
            created_at=o.created_at,
            updated_at=o.updated_at,
        )


class TradePublic(BaseModel):
    trade_id: int
    market: str
    delivery: DeliveryPublic
    buy_order_id: int
    sell_order_id: int
    buy_portfolio: str
    sell_portfolio: str
    buy_counterparty: str
    sell_counterparty: str
    quantity_mw: DecimalOut
    energy_mwh: DecimalOut
    price_eur_per_mwh: DecimalOut
    value_eur: DecimalOut
    aggressor: Side
    executed_at: datetime

    @classmethod
    def of(cls, t: Trade) -> TradePublic:
        return cls(
            trade_id=t.trade_id,
            market=t.market,
            delivery=DeliveryPublic.of(t.delivery),
            buy_order_id=t.buy_order_id,
            sell_order_id=t.sell_order_id,
            buy_portfolio=t.buy_portfolio,
            sell_portfolio=t.sell_portfolio,
            buy_counterparty=t.buy_counterparty,
            sell_counterparty=t.sell_counterparty,
            quantity_mw=t.quantity_mw,
            energy_mwh=t.energy_mwh,
            price_eur_per_mwh=t.price_eur_per_mwh,
            value_eur=t.value_eur,
            aggressor=t.aggressor,
            executed_at=t.executed_at,
        )


class PlacementPublic(BaseModel):
    """One placed order as it ended (a REJECTED one carries `reject_reason`) and its trades."""

    order: OrderPublic
    trades: list[TradePublic]

    @classmethod
    def of(cls, p: PlacedOrder) -> PlacementPublic:
        return cls(order=OrderPublic.of(p.order), trades=[TradePublic.of(t) for t in p.trades])


class SplitPlacementPublic(BaseModel):
    """An hour placed as its four quarter-hour orders (`split_hour`), in delivery order."""

    placements: list[PlacementPublic]


class OrderPage(BaseModel):
    """Newest first; pass `next_cursor` as `cursor` for the next (older) page, null at the end."""

    items: list[OrderPublic]
    next_cursor: int | None


class TradePage(BaseModel):
    """Newest first; pass `next_cursor` as `cursor` for the next (older) page, null at the end."""

    items: list[TradePublic]
    next_cursor: int | None


class BookLevelPublic(BaseModel):
    price_eur_per_mwh: DecimalOut
    quantity_mw: DecimalOut
    orders: int


class OrderBookPublic(BaseModel):
    market: str
    delivery: DeliveryPublic
    best_bid_eur_per_mwh: DecimalOut | None
    best_ask_eur_per_mwh: DecimalOut | None
    bids: list[BookLevelPublic] = Field(description="best (highest) price first")
    asks: list[BookLevelPublic] = Field(description="best (lowest) price first")


class PositionPublic(BaseModel):
    market: str
    delivery: DeliveryPublic
    bought_mwh: DecimalOut
    sold_mwh: DecimalOut
    net_energy_mwh: DecimalOut
    cost_eur: DecimalOut
    proceeds_eur: DecimalOut
    net_cash_eur: DecimalOut
    realised_pnl_eur: DecimalOut
    open_value_eur: DecimalOut

    @classmethod
    def of(cls, p: DeliveryPosition) -> PositionPublic:
        return cls(
            market=p.market,
            delivery=DeliveryPublic.of(p.delivery),
            bought_mwh=p.bought_mwh,
            sold_mwh=p.sold_mwh,
            net_energy_mwh=p.net_energy_mwh,
            cost_eur=p.cost_eur,
            proceeds_eur=p.proceeds_eur,
            net_cash_eur=p.net_cash_eur,
            realised_pnl_eur=p.realised_pnl_eur,
            open_value_eur=p.open_value_eur,
        )


class ExposurePublic(BaseModel):
    """Net energy > 0: the portfolio takes energy (charge); < 0: it delivers (discharge)."""

    portfolio: str
    bought_mwh: DecimalOut
    sold_mwh: DecimalOut
    net_energy_mwh: DecimalOut
    open_energy_mwh: DecimalOut = Field(description="sum of |net| over quarter-hours")
    net_cash_eur: DecimalOut
    realised_pnl_eur: DecimalOut
    open_value_eur: DecimalOut
    positions: list[PositionPublic] | None = Field(
        description="per market and delivery quarter-hour (with per_delivery=true)"
    )

    @classmethod
    def of(cls, e: PortfolioExposure, *, per_delivery: bool) -> ExposurePublic:
        return cls(
            portfolio=e.portfolio,
            bought_mwh=e.bought_mwh,
            sold_mwh=e.sold_mwh,
            net_energy_mwh=e.net_energy_mwh,
            open_energy_mwh=e.open_energy_mwh,
            net_cash_eur=e.net_cash_eur,
            realised_pnl_eur=e.realised_pnl_eur,
            open_value_eur=e.open_value_eur,
            positions=[PositionPublic.of(p) for p in e.positions] if per_delivery else None,
        )


class MarketQuotePublic(BaseModel):
    market: str
    delivery: DeliveryPublic
    best_bid_eur_per_mwh: DecimalOut | None
    best_ask_eur_per_mwh: DecimalOut | None
    last_price_eur_per_mwh: DecimalOut | None = Field(description="of the newest trade today")
    vwap_eur_per_mwh: DecimalOut | None = Field(description="volume-weighted, today's trades")
    volume_mwh: DecimalOut = Field(description="energy traded today")
    trades: int


class ExternalPricePublic(BaseModel):
    """Day-ahead figures of a market's bidding zone from the price store."""

    market: str
    zone: str
    source: str | None = Field(description="source of the mark price (else of the newest point)")
    sources: list[str] = Field(description="sources of the points the figures use")
    mark_price_eur_per_mwh: float | None = Field(description="price of the interval now")
    mark_start: datetime | None
    mark_resolution: str | None
    ema_eur_per_mwh: float | None = Field(description="EMA, alpha 0.2, of the points up to now")
    vwap_eur_per_mwh: float | None = Field(description="over the last 96 points up to now")
    vwap_weighting: str | None = Field(
        description="volume (this exchange's traded MWh per interval) or equal (no trades)"
    )
    vwap_weighted_points: int
    vwap_volume_mwh: float
    points: int = Field(description="points the figures were computed over")
    note: str

    @classmethod
    def of(cls, market: str, f: ExternalFigures) -> ExternalPricePublic:
        if f.points == 0:
            note = (
                f"no day-ahead prices of {f.zone} stored up to now: the market feed has not "
                "fetched any (GET /api/market/status) and none were imported"
            )
        elif f.mark is None:
            note = f"no stored price of {f.zone} covers the current interval; EMA/VWAP are older"
        else:
            note = f"day-ahead prices of {f.zone} from the price store"
        if any(s.startswith("demo:") for s in f.sources):
            note += "; demo: prices are synthetic (demo data), not market data"
        mark = f.mark
        return cls(
            market=market,
            zone=f.zone,
            source=f.source,
            sources=f.sources,
            mark_price_eur_per_mwh=None if mark is None else mark.price_eur_per_mwh,
            mark_start=None if mark is None else mark.start,
            mark_resolution=None if mark is None else mark.resolution.value,
            ema_eur_per_mwh=f.ema_eur_per_mwh,
            vwap_eur_per_mwh=None if f.vwap is None else f.vwap.price_eur_per_mwh,
            vwap_weighting=None if f.vwap is None else f.vwap.weighting,
            vwap_weighted_points=0 if f.vwap is None else f.vwap.weighted_points,
            vwap_volume_mwh=0.0 if f.vwap is None else f.vwap.volume_mwh,
            points=f.points,
            note=note,
        )


class MarketDataPublic(BaseModel):
    generated_at: datetime
    source: str = Field(description="where the quotes come from (internal_exchange)")
    note: str
    trading_day_start: datetime = Field(description="'today' starts here (00:00 UTC)")
    markets: list[str]
    quotes: list[MarketQuotePublic]
    external: list[ExternalPricePublic] = Field(
        default_factory=list, description="day-ahead figures per market with a bidding zone"
    )


def dump(model: BaseModel) -> dict[str, Any]:
    """A response model as JSON-ready data (for the event stream)."""
    return model.model_dump(mode="json")
