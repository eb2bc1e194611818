"""What the plane knows about prices now: its own exchange's quotes and the external day-ahead
figures of each market's bidding zone. No FastAPI here.

Quotes (`SOURCE` = internal_exchange): per market and delivery period that has not ended, best
bid and ask of the resting orders, the last trade price, the VWAP and the volume of today's
trades ("today" = since 00:00 UTC). A period is listed when it has resting orders or traded
today; a period nobody quoted simply has no price: nothing is made up.

External figures (`external_figures`): per market with a bidding zone
(`control_plane.market.service.EXCHANGE_MARKET_ZONES`: epex_at -> AT, epex_de_lu -> DE_LU),
the day-ahead mark price, EMA and VWAP from the price store, with the source they came from
(entsoe, awattar, file:..., demo:...), the VWAP weighted by this exchange's traded volume per
delivery interval where there are trades. An empty store gives empty figures that say so.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Final

from control_plane.market.derived import VWAP_POINTS
from control_plane.market.service import ExternalFigures, external_figures, zone_of_market
from control_plane.market.store import PriceStore

from .models import TRADE_PRICE_STEP_EUR_PER_MWH, BookKey, Trade
from .service import Exchange

__all__ = [
    "NOTE",
    "SOURCE",
    "MarketQuote",
    "external_market_figures",
    "market_quotes",
    "trading_day_start",
]

SOURCE: Final = "internal_exchange"
NOTE: Final = (
    "quotes: prices from this plane's own order books and trades. external: day-ahead mark, "
    "EMA and VWAP per market's bidding zone from the price store; each names its source."
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


def external_market_figures(
    exchange: Exchange, store: PriceStore, *, now: datetime, market: str | None = None
) -> list[tuple[str, ExternalFigures]]:
    """(market, figures) for every market with a bidding zone (all, or `market`)."""
    result = []
    lookback = timedelta(hours=VWAP_POINTS)  # 96 points of the coarsest resolution (hourly)
    for m in exchange.markets:
        zone = zone_of_market(m.market_id)
        if zone is None or (market is not None and m.market_id != market):
            continue
        traded = [
            (quarter.start, float(t.energy_mwh) / len(t.delivery.quarters()))
            for t in exchange.trades(
                market=m.market_id, delivery_from=now - lookback, delivery_to=now + lookback
            )
            for quarter in t.delivery.quarters()
        ]
        result.append(
            (m.market_id, external_figures(store=store, zone=zone, now=now, trades=traded))
        )
    return result
