"""The exchange's HTTP routes: orders, trades, order book, exposure, market data, legacy routes.

Only translation here (STYLE 10): requests become domain calls (run in a worker thread: the
engine blocks on its commit), domain errors become HTTP answers, results become the models of
`schemas.py`, and a placement or cancel that committed is published on the event hub.

Answers:

- A well-formed order is stored and answered **201** with its state, also when a pre-trade
  check refused it: state `REJECTED` with `reject_reason` (it has an id and is listed like any
  other order; the engine stores it, so the desk sees what was refused and why).
- A malformed one (`OrderValidationError`: unknown market, quantity <= 0 or above the market's
  maximum, price outside the market's bounds or off the tick, delivery in the past or inside
  the gate closure, ...) is **422** in FastAPI's own shape, ``{"detail": [{"type", "loc",
  "msg", "allowed"}]}``; nothing is stored and the input is not echoed.
- Unknown order id: **404**; cancelling an order that is no longer open: **409** (an order
  that expired at gate closure says so, with the time it closed).
- The store failed (`StoreError`): **503** with `Retry-After`; nothing of the call was stored.

Lists are newest first with keyset pagination: `limit` items and `next_cursor`; pass it back as
`cursor` for the next, older page (items with an id below it). Unlike an offset, a page does
not shift when new orders or trades arrive while a client pages through.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Iterable, Sequence
from datetime import datetime
from typing import Annotated, Any, ParamSpec, TypeVar

from fastapi import APIRouter, Depends, Form, HTTPException, Query, status
from pydantic import AwareDatetime, BaseModel, BeforeValidator, ConfigDict
from sqlalchemy.exc import SQLAlchemyError

from control_plane.auth.deps import require
from control_plane.auth.models import Role
from control_plane.deps import EventHubDep, ExchangeDep, PriceStoreDep
from control_plane.events import EventHub

from .book import BookEntry
from .errors import (
    InvalidDeliveryError,
    InvalidFieldError,
    InvalidPriceError,
    InvalidQuantityError,
    OrderNotFoundError,
    OrderNotOpenError,
    OrderValidationError,
    StoreError,
    UnknownMarketError,
)
from .marketdata import (
    NOTE,
    SOURCE,
    external_market_figures,
    market_quotes,
    trading_day_start,
)
from .models import DeliveryPeriod, Order, OrderState, PlacedOrder, Side, hourly_as_quarters
from .schemas import (
    BookLevelPublic,
    DecimalIn,
    DeliveryIn,
    DeliveryPublic,
    ExposurePublic,
    ExternalPricePublic,
    MarketDataPublic,
    MarketQuotePublic,
    Name,
    OrderBookPublic,
    OrderCreate,
    OrderPage,
    OrderPublic,
    PlacementPublic,
    PriceUnit,
    Product,
    SideIn,
    SplitPlacementPublic,
    TradePage,
    TradePublic,
    dump,
)
from .service import Exchange

log = logging.getLogger(__name__)

_VIEWER = [Depends(require(Role.VIEWER))]
_TRADER = [Depends(require(Role.TRADER))]

router = APIRouter(tags=["exchange"])

_P = ParamSpec("_P")
_R = TypeVar("_R")

RETRY_AFTER_S = "2"
MAX_PAGE = 1000

Cursor = Annotated[
    int | None, Query(ge=1, description="next_cursor of the previous page: items older than it")
]
Limit = Annotated[int, Query(ge=1, le=MAX_PAGE, description="items per page")]
DeliveryFrom = Annotated[
    AwareDatetime | None, Query(description="delivery starts at or after (ISO 8601 with offset)")
]
DeliveryTo = Annotated[
    AwareDatetime | None, Query(description="delivery starts before (ISO 8601 with offset)")
]
MarketQ = Annotated[str | None, Query(max_length=64, description="e.g. epex_at")]
PortfolioQ = Annotated[str | None, Query(max_length=64)]

_ERROR_TYPES: dict[type[OrderValidationError], str] = {
    UnknownMarketError: "unknown_market",
    InvalidQuantityError: "invalid_quantity",
    InvalidPriceError: "invalid_price",
    InvalidDeliveryError: "invalid_delivery",
    InvalidFieldError: "invalid_field",
}

JSON_LOC: dict[str, tuple[str, ...]] = {
    "limit_price_eur_per_mwh": ("limit_price",),
    "delivery": ("delivery",),
    "delivery.start": ("delivery", "start"),
    "delivery.minutes": ("delivery", "product"),
}
"""Engine field names -> where they are in the JSON body (the rest are the same)."""

FORM_LOC: dict[str, tuple[str, ...]] = {
    "limit_price_eur_per_mwh": ("limit_price",),
    "delivery": ("delivery_start",),
    "delivery.start": ("delivery_start",),
    "delivery.minutes": ("product",),
}
"""Engine field names -> the legacy form's field names."""


# -- translation helpers --------------------------------------------------------------------


async def _call(fn: Callable[_P, _R], *args: _P.args, **kwargs: _P.kwargs) -> _R:
    """Run an engine call in a worker thread; a store failure becomes 503."""
    try:
        return await asyncio.to_thread(fn, *args, **kwargs)
    except StoreError as exc:
        log.warning("exchange store unavailable: %s", exc)
        raise _unavailable(str(exc)) from None


def _unavailable(detail: str) -> HTTPException:
    return HTTPException(
        status.HTTP_503_SERVICE_UNAVAILABLE,
        f"the exchange store is unavailable, nothing was stored: {detail}",
        headers={"Retry-After": RETRY_AFTER_S},
    )


def validation_error(
    exc: OrderValidationError,
    *,
    where: str = "body",
    locs: dict[str, tuple[str, ...]] | None = None,
    note: str = "",
) -> HTTPException:
    """422 in FastAPI's shape plus `allowed`, without echoing the input."""
    field_loc = (locs or JSON_LOC).get(exc.field, tuple(exc.field.split(".")))
    entry = {
        "type": _ERROR_TYPES.get(type(exc), "invalid_order"),
        "loc": [where, *field_loc],
        "msg": exc.problem + (note if isinstance(exc, InvalidPriceError) else ""),
        "allowed": exc.allowed,
    }
    return HTTPException(status.HTTP_422_UNPROCESSABLE_CONTENT, [entry])


def _query_error(name: str, msg: str, allowed: str) -> HTTPException:
    return HTTPException(
        status.HTTP_422_UNPROCESSABLE_CONTENT,
        [{"type": "value_error", "loc": ["query", name], "msg": msg, "allowed": allowed}],
    )


def _check_market(exchange: Exchange, market: str | None) -> None:
    if market is None:
        return
    try:
        exchange.markets.get(market)
    except UnknownMarketError as exc:
        raise validation_error(exc, where="query") from None


def _check_range(start: datetime | None, end: datetime | None, names: tuple[str, str]) -> None:
    if start is not None and end is not None and not start < end:
        raise _query_error(names[1], f"must be after {names[0]}", f"a time after {start}")


_STATE_WORDS = "open (ACCEPTED + PARTIALLY_FILLED), all, or a comma list of " + ", ".join(
    s.value for s in OrderState
)


def parse_states(text: str) -> frozenset[OrderState] | None:
    """`open` / `all` / `FILLED,CANCELLED` -> the states (None = all); 422 if unknown."""
    words = [w.strip().upper() for w in text.split(",") if w.strip()]
    if not words:
        raise _query_error("state", "empty", _STATE_WORDS)
    states: set[OrderState] = set()
    for word in words:
        if word == "ALL":
            return None
        if word == "OPEN":
            states.update(s for s in OrderState if s.is_open)
        elif word in OrderState.__members__:
            states.add(OrderState[word])
        else:
            raise _query_error("state", f"unknown state {word[:32]!r}", _STATE_WORDS)
    return frozenset(states)


def placement_events(placed: PlacedOrder) -> list[tuple[str, dict[str, Any]]]:
    """The events of one committed placement, in the order they happened."""
    order = placed.order
    if order.state is OrderState.REJECTED:
        return [("order.rejected", dump(OrderPublic.of(order)))]
    events: list[tuple[str, dict[str, Any]]] = [("order.accepted", dump(OrderPublic.of(order)))]
    events.extend(("trade", dump(TradePublic.of(t))) for t in placed.trades)
    for touched in (order, *placed.counter_orders):
        if touched.state is OrderState.FILLED:
            events.append(("order.filled", dump(OrderPublic.of(touched))))
        elif touched.state is OrderState.PARTIALLY_FILLED:
            events.append(("order.partially_filled", dump(OrderPublic.of(touched))))
    return events


def expiry_events(expired: Iterable[Order]) -> list[tuple[str, dict[str, Any]]]:
    """One `order.expired` event per order that expired at gate closure."""
    return [("order.expired", dump(OrderPublic.of(order))) for order in expired]


def publish_expiries(exchange: Exchange, hub: EventHub) -> list[Order]:
    """The app's periodic sweep (blocking: run it in a worker thread): expire what reached
    gate closure and publish `order.expired` for every order expired since the last sweep."""
    expired = exchange.expire_due()
    hub.publish_many(expiry_events(expired))
    return expired


async def place(
    body: OrderCreate,
    *,
    exchange: Exchange,
    hub: EventHub,
    locs: dict[str, tuple[str, ...]],
) -> PlacementPublic | SplitPlacementPublic:
    """Validate, place (four quarters with `split_hour`), publish; the placements."""
    note = ""  # said on price errors only: the bounds are in EUR/MWh
    if body.price_unit is not PriceUnit.EUR_PER_MWH:
        note = (
            f" ({body.limit_price} {body.price_unit.value} ="
            f" {body.limit_price_eur_per_mwh()} EUR/MWh)"
        )
    try:
        new = body.to_domain()
        orders = hourly_as_quarters(new) if body.split_hour else (new,)
    except OrderValidationError as exc:
        if body.split_hour and exc.field == "delivery.minutes":
            exc.allowed = "PT60M with split_hour (an hour splits into its four quarters)"
        raise validation_error(exc, locs=locs, note=note) from None
    placements: list[PlacedOrder] = []
    for new_order in orders:
        try:
            placed = await asyncio.to_thread(exchange.place_order, order=new_order)
        except OrderValidationError as exc:
            if placements:  # not expected: the first quarter is the strictest check
                log.error("split hour: quarter %s refused after others were placed", new_order)
            raise validation_error(exc, locs=locs, note=note) from None
        except StoreError as exc:
            done = ", ".join(str(p.order.order_id) for p in placements)
            detail = f"{exc}" + (f" (orders {done} of this hour were placed)" if done else "")
            raise _unavailable(detail) from None
        placements.append(placed)
        hub.publish_many(placement_events(placed))
    if body.split_hour:
        return SplitPlacementPublic(placements=[PlacementPublic.of(p) for p in placements])
    return PlacementPublic.of(placements[0])


async def order_page(
    exchange: Exchange,
    *,
    state: str,
    market: str | None,
    portfolio: str | None,
    side: Side | None,
    delivery_from: datetime | None,
    delivery_to: datetime | None,
    cursor: int | None,
    limit: int,
) -> OrderPage:
    states = parse_states(state)
    _check_market(exchange, market)
    _check_range(delivery_from, delivery_to, ("delivery_from", "delivery_to"))
    found = await _call(
        exchange.orders,
        states=states,
        market=market,
        portfolio=portfolio,
        side=side,
        delivery_from=delivery_from,
        delivery_to=delivery_to,
        before_id=cursor,
        limit=limit + 1,
    )
    items = found[:limit]
    more = len(found) > limit
    return OrderPage(
        items=[OrderPublic.of(o) for o in items],
        next_cursor=items[-1].order_id if more else None,
    )


async def trade_page(
    exchange: Exchange,
    *,
    market: str | None,
    portfolio: str | None,
    delivery_from: datetime | None,
    delivery_to: datetime | None,
    since: datetime | None,
    cursor: int | None,
    limit: int,
) -> TradePage:
    _check_market(exchange, market)
    _check_range(delivery_from, delivery_to, ("delivery_from", "delivery_to"))
    found = await _call(
        exchange.trades,
        market=market,
        portfolio=portfolio,
        delivery_from=delivery_from,
        delivery_to=delivery_to,
        since=since,
        before_id=cursor,
        limit=limit + 1,
    )
    found.reverse()  # the store answers oldest first
    items = found[:limit]
    more = len(found) > limit
    return TradePage(
        items=[TradePublic.of(t) for t in items],
        next_cursor=items[-1].trade_id if more else None,
    )


def _levels(entries: Sequence[BookEntry]) -> list[BookLevelPublic]:
    """Entries in priority order -> one level per price, best first."""
    levels: list[BookLevelPublic] = []
    for entry in entries:
        if levels and levels[-1].price_eur_per_mwh == entry.price_eur_per_mwh:
            last = levels[-1]
            last.quantity_mw += entry.remaining_mw
            last.orders += 1
        else:
            levels.append(
                BookLevelPublic(
                    price_eur_per_mwh=entry.price_eur_per_mwh,
                    quantity_mw=entry.remaining_mw,
                    orders=1,
                )
            )
    return levels


# -- /api routes ------------------------------------------------------------------------------

_PLACE_RESPONSES: dict[int | str, dict[str, Any]] = {
    201: {"description": "stored: ACCEPTED/PARTIALLY_FILLED/FILLED, or REJECTED with a reason"},
    422: {"description": "malformed order (detail: type, loc, msg, allowed); nothing stored"},
    503: {"description": "the store failed; nothing stored; retry after Retry-After seconds"},
}


@router.post(
    "/api/orders",
    response_model=PlacementPublic | SplitPlacementPublic,
    status_code=status.HTTP_201_CREATED,
    responses=_PLACE_RESPONSES,
    dependencies=_TRADER,
)
async def post_order(
    body: OrderCreate, exchange: ExchangeDep, hub: EventHubDep
) -> PlacementPublic | SplitPlacementPublic:
    """Place a limit order; it matches at once against the book (price, then time priority).

    Role: trader. A pre-trade check's refusal is not an error: the order is stored as REJECTED
    with `reject_reason` and answered 201.
    """
    return await place(body, exchange=exchange, hub=hub, locs=JSON_LOC)


@router.get(
    "/api/orders",
    response_model=OrderPage,
    dependencies=_VIEWER,
)
async def list_orders(
    exchange: ExchangeDep,
    state: Annotated[str, Query(max_length=200, description=_STATE_WORDS)] = "open",
    market: MarketQ = None,
    portfolio: PortfolioQ = None,
    side: Annotated[SideIn | None, Query(description="BUY or SELL")] = None,
    delivery_from: DeliveryFrom = None,
    delivery_to: DeliveryTo = None,
    cursor: Cursor = None,
    limit: Limit = 100,
) -> OrderPage:
    """Orders, newest first; by default the active ones (ACCEPTED, PARTIALLY_FILLED). Viewer."""
    return await order_page(
        exchange,
        state=state,
        market=market,
        portfolio=portfolio,
        side=side,
        delivery_from=delivery_from,
        delivery_to=delivery_to,
        cursor=cursor,
        limit=limit,
    )


@router.get(
    "/api/orders/{order_id}",
    response_model=OrderPublic,
    dependencies=_VIEWER,
)
async def get_order(order_id: int, exchange: ExchangeDep) -> OrderPublic:
    """One order in its current state. Viewer."""
    try:
        return OrderPublic.of(await _call(exchange.get_order, order_id=order_id))
    except OrderNotFoundError as exc:
        raise HTTPException(status.HTTP_404_NOT_FOUND, str(exc)) from None


@router.delete(
    "/api/orders/{order_id}",
    response_model=OrderPublic,
    responses={404: {"description": "no such order"}, 409: {"description": "not open"}},
    dependencies=_TRADER,
)
async def cancel_order(order_id: int, exchange: ExchangeDep, hub: EventHubDep) -> OrderPublic:
    """Cancel an open order (ACCEPTED or PARTIALLY_FILLED); its CANCELLED state. Trader."""
    try:
        cancelled = await _call(exchange.cancel_order, order_id=order_id)
    except OrderNotFoundError as exc:
        raise HTTPException(status.HTTP_404_NOT_FOUND, str(exc)) from None
    except OrderNotOpenError as exc:
        raise HTTPException(status.HTTP_409_CONFLICT, str(exc)) from None
    public = OrderPublic.of(cancelled)
    hub.publish("order.cancelled", dump(public))
    return public


@router.get(
    "/api/trades",
    response_model=TradePage,
    dependencies=_VIEWER,
)
async def list_trades(
    exchange: ExchangeDep,
    market: MarketQ = None,
    portfolio: Annotated[str | None, Query(max_length=64, description="buyer or seller")] = None,
    delivery_from: DeliveryFrom = None,
    delivery_to: DeliveryTo = None,
    since: Annotated[AwareDatetime | None, Query(description="executed at or after")] = None,
    cursor: Cursor = None,
    limit: Limit = 100,
) -> TradePage:
    """Trades, newest first. Viewer."""
    return await trade_page(
        exchange,
        market=market,
        portfolio=portfolio,
        delivery_from=delivery_from,
        delivery_to=delivery_to,
        since=since,
        cursor=cursor,
        limit=limit,
    )


@router.get(
    "/api/orderbook",
    response_model=OrderBookPublic,
    dependencies=_VIEWER,
)
async def order_book(
    exchange: ExchangeDep,
    market: Annotated[str, Query(max_length=64, description="e.g. epex_at")],
    delivery: Annotated[
        str, Query(max_length=40, description="product id, e.g. 2025-11-03T10:00Z/PT15M")
    ],
) -> OrderBookPublic:
    """Both sides of one book aggregated per price level, best first, and the top. Viewer."""
    try:
        period = DeliveryPeriod.parse(delivery)
        snapshot = await _call(exchange.book, market=market, delivery=period)
    except OrderValidationError as exc:
        raise validation_error(exc, where="query") from None
    return OrderBookPublic(
        market=market,
        delivery=DeliveryPublic.of(period),
        best_bid_eur_per_mwh=snapshot.best_bid_eur_per_mwh,
        best_ask_eur_per_mwh=snapshot.best_ask_eur_per_mwh,
        bids=_levels(snapshot.bids),
        asks=_levels(snapshot.asks),
    )


@router.get(
    "/api/exposure",
    response_model=ExposurePublic,
    dependencies=_VIEWER,
)
async def exposure(
    exchange: ExchangeDep,
    portfolio: Annotated[str, Query(min_length=1, max_length=64)],
    per_delivery: Annotated[
        bool, Query(description="add the positions per market and quarter-hour")
    ] = False,
) -> ExposurePublic:
    """Net energy, open energy, net cash, realised PnL and open value of a portfolio. Viewer."""
    found = await _call(exchange.exposure, portfolio=portfolio)
    return ExposurePublic.of(found, per_delivery=per_delivery)


@router.get(
    "/api/market-data",
    response_model=MarketDataPublic,
    dependencies=_VIEWER,
)
async def market_data(
    exchange: ExchangeDep, prices: PriceStoreDep, market: MarketQ = None
) -> MarketDataPublic:
    """Best bid/ask, last price, VWAP and volume today per market and open period, and the
    day-ahead mark, EMA and VWAP of each market's bidding zone. Viewer.

    `source` says where the quotes come from (this plane's own exchange); each `external`
    entry names its price source. A period nobody quoted, or a zone with no stored prices,
    has no price (none is made up).
    """
    _check_market(exchange, market)
    now = exchange.now()
    quotes = await _call(market_quotes, exchange, now=now, market=market)
    try:
        external = await _call(external_market_figures, exchange, prices, now=now, market=market)
    except SQLAlchemyError as exc:
        log.warning("price store unavailable: %s", exc)
        raise HTTPException(
            status.HTTP_503_SERVICE_UNAVAILABLE,
            "the price store is unavailable; try again shortly",
            headers={"Retry-After": RETRY_AFTER_S},
        ) from None
    return MarketDataPublic(
        generated_at=now,
        source=SOURCE,
        note=NOTE,
        trading_day_start=trading_day_start(now),
        markets=[m.market_id for m in exchange.markets if market is None or m.market_id == market],
        quotes=[
            MarketQuotePublic(
                market=q.key.market,
                delivery=DeliveryPublic.of(q.key.delivery),
                best_bid_eur_per_mwh=q.best_bid_eur_per_mwh,
                best_ask_eur_per_mwh=q.best_ask_eur_per_mwh,
                last_price_eur_per_mwh=q.last_price_eur_per_mwh,
                vwap_eur_per_mwh=q.vwap_eur_per_mwh,
                volume_mwh=q.volume_mwh,
                trades=q.trades,
            )
            for q in quotes
        ],
        external=[ExternalPricePublic.of(market_id, figures) for market_id, figures in external],
    )


# -- legacy routes (spec v2.0: GET /orders, GET /trades, POST /order) --------------------------


def _blank_is_none(value: object) -> object:
    return None if isinstance(value, str) and not value.strip() else value


OptionalName = Annotated[Name | None, BeforeValidator(_blank_is_none)]


class OrderForm(BaseModel):
    """The legacy HTML form: flat fields, same meaning and validation as `OrderCreate`."""

    model_config = ConfigDict(extra="ignore")  # a form also posts its submit button

    side: SideIn
    quantity_mw: DecimalIn
    limit_price: DecimalIn
    price_unit: PriceUnit = PriceUnit.EUR_PER_MWH
    market: Name
    delivery_start: AwareDatetime
    product: Product = "PT15M"
    split_hour: bool = False
    portfolio: Name
    counterparty: Name
    site: OptionalName = None

    def to_create(self) -> OrderCreate:
        return OrderCreate(
            side=self.side,
            quantity_mw=self.quantity_mw,
            limit_price=self.limit_price,
            price_unit=self.price_unit,
            market=self.market,
            delivery=DeliveryIn(start=self.delivery_start, product=self.product),
            split_hour=self.split_hour,
            portfolio=self.portfolio,
            counterparty=self.counterparty,
            site=self.site,
        )


@router.get(
    "/orders",
    response_model=OrderPage,
    deprecated=True,
    tags=["legacy"],
    dependencies=_VIEWER,
)
async def legacy_orders(
    exchange: ExchangeDep,
    state: Annotated[str, Query(max_length=200, description=_STATE_WORDS)] = "all",
    market: MarketQ = None,
    portfolio: PortfolioQ = None,
    cursor: Cursor = None,
    limit: Limit = 100,
) -> OrderPage:
    """All orders (spec v2.0), newest first; use `GET /api/orders?state=all`. Viewer."""
    return await order_page(
        exchange,
        state=state,
        market=market,
        portfolio=portfolio,
        side=None,
        delivery_from=None,
        delivery_to=None,
        cursor=cursor,
        limit=limit,
    )


@router.get(
    "/trades",
    response_model=TradePage,
    deprecated=True,
    tags=["legacy"],
    dependencies=_VIEWER,
)
async def legacy_trades(
    exchange: ExchangeDep,
    market: MarketQ = None,
    portfolio: PortfolioQ = None,
    cursor: Cursor = None,
    limit: Limit = 100,
) -> TradePage:
    """All trades (spec v2.0), newest first; use `GET /api/trades`. Viewer."""
    return await trade_page(
        exchange,
        market=market,
        portfolio=portfolio,
        delivery_from=None,
        delivery_to=None,
        since=None,
        cursor=cursor,
        limit=limit,
    )


@router.post(
    "/order",
    response_model=PlacementPublic | SplitPlacementPublic,
    status_code=status.HTTP_201_CREATED,
    deprecated=True,
    tags=["legacy"],
    responses=_PLACE_RESPONSES,
    dependencies=_TRADER,
)
async def legacy_order_form(
    form: Annotated[OrderForm, Form()], exchange: ExchangeDep, hub: EventHubDep
) -> PlacementPublic | SplitPlacementPublic:
    """An order from an HTML form (application/x-www-form-urlencoded), spec v2.0. Trader.

    Fields: side, quantity_mw, limit_price, price_unit, market, delivery_start (ISO 8601 with
    offset), product (PT15M/PT60M), split_hour, portfolio, counterparty, site. Use
    `POST /api/orders` (JSON) instead.
    """
    return await place(form.to_create(), exchange=exchange, hub=hub, locs=FORM_LOC)
