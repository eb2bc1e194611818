"""What the plane knows about prices now, from its own exchange only. No FastAPI here.

Per market and delivery period that has not ended: best bid and ask of the resting orders, the
last trade price, the VWAP and the volume of today's trades ("today" = since 00:00 UTC). A
period is listed when it has resting orders or traded today. External prices (EPEX via
ENTSO-E) come with the market-data issue; until then `SOURCE` says these are internal
figures, and a period nobody quoted simply has no price: nothing is made up.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal
from typing import Final

from .models import TRADE_PRICE_STEP_EUR_PER_MWH, BookKey, Trade
from .service import Exchange

__all__ = ["NOTE", "SOURCE", "MarketQuote", "market_quotes", "trading_day_start"]

SOURCE: Final = "internal_exchange"
NOTE: Final = (
    "Prices from this plane's own order books and trades. External market prices (EPEX Spot "
    "via ENTSO-E) are not connected yet: they arrive with the market-data integration."
)


@dataclass(frozen=True, slots=True)
class MarketQuote:
    key: BookKey
    best_bid_eur_per_mwh: Decimal | None
    best_ask_eur_per_mwh: Decimal | None
    last_price_eur_per_mwh: Decimal | None
    vwap_eur_per_mwh: Decimal | None
    volume_mwh: Decimal
    trades: int


def trading_day_start(now: datetime) -> datetime:
    """00:00 UTC of `now`'s day."""
    return now.astimezone(UTC).replace(hour=0, minute=0, second=0, microsecond=0)


def market_quotes(
    exchange: Exchange, *, now: datetime, market: str | None = None
) -> list[MarketQuote]:
    """Quotes for every period not yet ended with resting orders or trades today, sorted."""
    if market is not None:
        exchange.markets.get(market)  # UnknownMarketError names the known ones
    traded: dict[BookKey, list[Trade]] = defaultdict(list)
    for trade in exchange.trades(market=market, since=trading_day_start(now)):
        traded[BookKey(trade.market, trade.delivery)].append(trade)
    keys = {k for k in exchange.book_keys() if market is None or k.market == market}
    keys.update(traded)
    quotes = []
    for key in sorted(k for k in keys if k.delivery.end > now):
        bid, ask = exchange.top_of_book(market=key.market, delivery=key.delivery)
        found = traded.get(key, [])
        volume = sum((t.energy_mwh for t in found), Decimal(0))
        value = sum((t.value_eur for t in found), Decimal(0))
        quotes.append(
            MarketQuote(
                key=key,
                best_bid_eur_per_mwh=bid,
                best_ask_eur_per_mwh=ask,
                last_price_eur_per_mwh=found[-1].price_eur_per_mwh if found else None,
                vwap_eur_per_mwh=(value / volume).quantize(TRADE_PRICE_STEP_EUR_PER_MWH)
                if volume
                else None,
                volume_mwh=volume,
                trades=len(found),
            )
        )
    return quotes
