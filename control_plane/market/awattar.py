"""aWattar: the public day-ahead price API for Austria and Germany, a second price source.

`GET https://api.awattar.at/v1/marketdata?start=<ms>&end=<ms>` (AT; `api.awattar.de` for
DE-LU) answers, without a token,

    {"object": "list", "url": "/at/v1/marketdata",
     "data": [{"start_timestamp": 1700000000000, "end_timestamp": 1700003600000,
               "marketprice": 95.5, "unit": "Eur/MWh"}, ...]}

with times in Unix milliseconds (UTC) and the EPEX day-ahead price. `parse_awattar` turns it
into price points: the resolution from `end - start` (15 or 60 minutes; anything else is an
error), the price converted to EUR/MWh from its `unit` (`to_eur_per_mwh`), out-of-bounds
prices flagged, and anything unreadable a `DocumentError` naming the entry and the field. An
empty `data` list is `NoDataError`. aWattar does not say which auction a price comes from, so
`sequence` is empty.

`AwattarClient` has the price-source shape (`name`, `fetch(zone, start, end)`) and goes
through the same pacing and retries as ENTSO-E (`fetching.Fetcher`), slower by default: the
public API asks for fair use (about 100 requests a day).
"""

from __future__ import annotations

import asyncio
import json
import math
import random
import time
from collections.abc import Callable, Mapping
from datetime import UTC, datetime, timedelta
from typing import Final

import httpx

from .fetching import Fetcher, FetchingClient, RetrySettings, Sleep
from .models import (
    DEFAULT_PRICE_BOUNDS,
    DocumentError,
    NoDataError,
    PricePoint,
    Resolution,
    SourceError,
    UnitError,
    Zone,
    to_eur_per_mwh,
)

__all__ = ["DEFAULT_URLS", "AwattarClient", "parse_awattar"]

SOURCE: Final = "awattar"
DEFAULT_URLS: Final = {
    "AT": "https://api.awattar.at/v1/marketdata",
    "DE_LU": "https://api.awattar.de/v1/marketdata",
}
_RESOLUTIONS: Final = {15 * 60_000: Resolution.PT15M, 60 * 60_000: Resolution.PT60M}


def _ms(at: datetime) -> int:
    return int(at.timestamp() * 1000)


def parse_awattar(
    data: bytes,
    *,
    zone_code: str,
    document: str,
    bounds: tuple[float, float] = DEFAULT_PRICE_BOUNDS,
) -> list[PricePoint]:
    """The price points of an aWattar `marketdata` answer, oldest first."""
    try:
        payload = json.loads(data)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise DocumentError(document, f"malformed JSON: {exc}") from None
    if not isinstance(payload, dict) or not isinstance(payload.get("data"), list):
        raise DocumentError(document, 'expected an object with a "data" list')
    entries: list[object] = payload["data"]
    if not entries:
        raise NoDataError(f"{document}: aWattar has no prices for the requested range")
    low, high = bounds
    points: list[PricePoint] = []
    for index, entry in enumerate(entries):
        where = f"data[{index}]"
        if not isinstance(entry, dict):
            raise DocumentError(document, f"{where}: expected an object, got {entry!r:.60}")
        fields = {}
        for name in ("start_timestamp", "end_timestamp", "marketprice"):
            value = entry.get(name)
            if isinstance(value, bool) or not isinstance(value, int | float):
                problem = "missing" if value is None else f"not a number: {value!r:.40}"
                raise DocumentError(document, f"{where}.{name}: {problem}")
            fields[name] = value
        unit = entry.get("unit")
        if not isinstance(unit, str):
            raise DocumentError(document, f"{where}.unit: missing")
        try:
            price = to_eur_per_mwh(float(fields["marketprice"]), unit)
        except UnitError as exc:
            raise DocumentError(document, f"{where}.unit: {exc}") from None
        if not math.isfinite(price):
            raise DocumentError(document, f"{where}.marketprice: not finite")
        start_ms = int(fields["start_timestamp"])
        length = int(fields["end_timestamp"]) - start_ms
        resolution = _RESOLUTIONS.get(length)
        if resolution is None:
            raise DocumentError(
                document,
                f"{where}: interval of {length / 60_000:g} minutes; expected 15 or 60",
            )
        start = datetime(1970, 1, 1, tzinfo=UTC) + timedelta(milliseconds=start_ms)
        points.append(
            PricePoint(
                zone=zone_code,
                start=start,
                resolution=resolution,
                price_eur_per_mwh=price,
                source=SOURCE,
                flag=(
                    f"outside plausibility bounds {low:g} .. {high:g} EUR/MWh"
                    if price < low or price > high
                    else ""
                ),
            )
        )
    points.sort(key=lambda p: (p.start, p.resolution.minutes))
    return points


class AwattarClient(FetchingClient):
    """Day-ahead prices for AT and DE-LU from aWattar's public API (no token)."""

    name: str = SOURCE

    def __init__(
        self,
        *,
        urls: Mapping[str, str] | None = None,
        http: httpx.AsyncClient | None = None,
        clock: Callable[[], float] | None = None,
        sleep: Sleep | None = None,
        jitter: Callable[[], float] | None = None,
        retry: RetrySettings | None = None,
        bounds: tuple[float, float] = DEFAULT_PRICE_BOUNDS,
    ) -> None:
        self.urls = dict(DEFAULT_URLS if urls is None else urls)
        self.bounds = bounds
        self._own_http = http is None
        self._http = http or httpx.AsyncClient()
        self._fetcher = Fetcher(
            label="aWattar",
            http=self._http,
            settings=retry or RetrySettings(min_interval_s=2.0, max_attempts=4),
            clock=clock or time.monotonic,
            sleep=sleep or asyncio.sleep,
            jitter=jitter or random.random,
        )

    @property
    def zones(self) -> frozenset[str]:
        """The zone codes this source serves."""
        return frozenset(self.urls)

    async def fetch(self, zone: Zone, start: datetime, end: datetime) -> list[PricePoint]:
        """aWattar's prices of `zone` (AT or DE_LU) for deliveries starting in [start, end)."""
        if start.tzinfo is None or end.tzinfo is None:
            raise ValueError("start and end must be timezone-aware (UTC)")
        if end <= start:
            raise ValueError(f"end {end.isoformat()} must be after start {start.isoformat()}")
        url = self.urls.get(zone.code)
        if url is None:
            raise SourceError(
                f"aWattar publishes prices for {', '.join(sorted(self.urls))} only, not "
                f"{zone.code}; use the ENTSO-E source for that zone",
                retryable=False,
            )
        document = f"aWattar {zone.code} {start:%Y-%m-%dT%H:%MZ} .. {end:%Y-%m-%dT%H:%MZ}"
        response = await self._fetcher.get(url, {"start": str(_ms(start)), "end": str(_ms(end))})
        if response.status_code != 200:
            raise SourceError(
                f"aWattar answered {response.status_code} to {document}: "
                f"{response.text[:300].strip() or 'empty body'}",
                retryable=False,
                status=response.status_code,
            )
        points = parse_awattar(
            response.content, zone_code=zone.code, document=document, bounds=self.bounds
        )
        inside = [p for p in points if start <= p.start < end]
        if not inside:
            raise NoDataError(f"{document}: aWattar's answer holds no prices in the range")
        return inside
