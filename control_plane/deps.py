"""FastAPI dependencies as `Annotated` aliases, resolved from `app.state` (lifespan-filled)."""

from __future__ import annotations

from typing import Annotated, cast

from fastapi import Depends, Request
from starlette.requests import HTTPConnection

from .config import PlaneSettings
from .events import EventHub
from .exchange.service import Exchange
from .fleet.service import FleetService
from .market.feed import MarketFeed
from .market.store import PriceStore


def get_settings(request: Request) -> PlaneSettings:
    return cast(PlaneSettings, request.app.state.settings)


def get_fleet(request: Request) -> FleetService:
    return cast(FleetService, request.app.state.fleet)


def get_exchange(request: Request) -> Exchange:
    return cast(Exchange, request.app.state.exchange)


def get_price_store(request: Request) -> PriceStore:
    return cast(PriceStore, request.app.state.prices)


def get_market_feed(request: Request) -> MarketFeed:
    return cast(MarketFeed, request.app.state.market_feed)


def get_event_hub(connection: HTTPConnection) -> EventHub:
    # HTTPConnection, not Request: the WebSocket route depends on it too.
    return cast(EventHub, connection.app.state.events)


SettingsDep = Annotated[PlaneSettings, Depends(get_settings)]
FleetDep = Annotated[FleetService, Depends(get_fleet)]
ExchangeDep = Annotated[Exchange, Depends(get_exchange)]
EventHubDep = Annotated[EventHub, Depends(get_event_hub)]
PriceStoreDep = Annotated[PriceStore, Depends(get_price_store)]
MarketFeedDep = Annotated[MarketFeed, Depends(get_market_feed)]
