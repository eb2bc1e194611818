"""Market logic the APIs share (no FastAPI here): which bidding zone an exchange market trades
in, the external day-ahead figures of a zone, price-file imports and the time-range rules of
price queries.

`EXCHANGE_MARKET_ZONES` is the one place that maps the internal exchange's markets to bidding
zones (epex_at -> AT, epex_de_lu -> DE_LU); a market not in it has no external prices.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Final

from .csv_import import CsvFormat, read_price_csv
from .derived import EMA_ALPHA, VWAP_POINTS, Vwap, ema, mark_price, volume_per_interval, vwap
from .models import DEFAULT_PRICE_BOUNDS, PricePoint, Resolution
from .store import PriceStore, UpsertResult

__all__ = [
    "EXCHANGE_MARKET_ZONES",
    "MAX_QUERY_DAYS",
    "ExternalFigures",
    "ImportSummary",
    "InvalidRangeError",
    "check_range",
    "external_figures",
    "import_price_file",
    "zone_of_market",
]

EXCHANGE_MARKET_ZONES: Final = {"epex_at": "AT", "epex_de_lu": "DE_LU"}
MAX_QUERY_DAYS: Final = 400
"""Longest price query: a year plus margin (8,760 hourly or 35,040 quarter-hourly points)."""


def zone_of_market(market_id: str) -> str | None:
    """The bidding zone of an exchange market, None if it has none."""
    return EXCHANGE_MARKET_ZONES.get(market_id)


class InvalidRangeError(ValueError):
    """A price query's time range cannot be served; the message says why and what to send."""


def check_range(start: datetime, end: datetime, *, max_days: int = MAX_QUERY_DAYS) -> None:
    if start.tzinfo is None or end.tzinfo is None:
        raise InvalidRangeError("start and end need a UTC offset, e.g. 2025-01-01T00:00:00Z")
    if end <= start:
        raise InvalidRangeError(f"end {end.isoformat()} must be after start {start.isoformat()}")
    if end - start > timedelta(days=max_days):
        raise InvalidRangeError(
            f"the range spans {(end - start).days} days, at most {max_days} are served per "
            "request: split it"
        )


@dataclass(frozen=True, slots=True)
class ExternalFigures:
    """A zone's day-ahead figures at `now` from the price store."""

    zone: str
    mark: PricePoint | None
    ema_eur_per_mwh: float | None
    vwap: Vwap | None
    points: int
    """Points the figures were computed over (the last `VWAP_POINTS` delivered)."""
    sources: list[str]
    """The stored sources of those points, priority order as chosen by the store."""

    @property
    def source(self) -> str | None:
        """The mark's source, else the newest point's; None = the store has nothing."""
        if self.mark is not None:
            return self.mark.source
        return self.sources[-1] if self.sources else None


def external_figures(
    *,
    store: PriceStore,
    zone: str,
    now: datetime,
    trades: Iterable[tuple[datetime, float]] = (),
) -> ExternalFigures:
    """Mark, EMA (over the same last 96 points as the VWAP, whose oldest weighs 0.8^95, i.e.
    nothing) and VWAP of `zone` at `now`. `trades`: (delivery quarter start, MWh) of the
    exchange's trades in that market, for the VWAP's volume weighting."""
    lookback = timedelta(minutes=Resolution.PT60M.minutes * VWAP_POINTS)
    series = store.prices(zone, now - lookback, now + timedelta(minutes=1))
    last = [p for p in series if p.start <= now][-VWAP_POINTS:]
    volumes = volume_per_interval(last, trades)
    return ExternalFigures(
        zone=zone,
        mark=mark_price(last, now),
        ema_eur_per_mwh=ema(last, now, EMA_ALPHA),
        vwap=vwap(last, now, volumes),
        points=len(last),
        sources=list(dict.fromkeys(p.source for p in last)),
    )


@dataclass(frozen=True, slots=True)
class ImportSummary:
    zone: str
    source: str
    points: int
    result: UpsertResult
    first: datetime
    last: datetime
    flagged: int
    dropped: list[str]


def import_price_file(
    *,
    store: PriceStore,
    path: Path,
    zone_code: str,
    fmt: CsvFormat,
    now: datetime,
    bounds: tuple[float, float] = DEFAULT_PRICE_BOUNDS,
) -> ImportSummary:
    """Read a price CSV (DocumentError, UnitError, UnknownZoneError if bad) and store it."""
    imported = read_price_csv(path, zone_code=zone_code, fmt=fmt, bounds=bounds)
    points = imported.points
    result = store.upsert(points, now)
    return ImportSummary(
        zone=points[0].zone,
        source=points[0].source,
        points=len(points),
        result=result,
        first=points[0].start,
        last=points[-1].start,
        flagged=sum(1 for p in points if p.flag),
        dropped=imported.dropped,
    )
