"""Synthetic day-ahead prices for demos without internet: the average daily shape of a real
price file (`bess-plane prices demo` takes the last year of e.g. the shared Belgian 2022-2023
file), laid over today and tomorrow of a zone.

The points are labelled so nobody takes them for market data: source `demo:shape-of-<file>`
(which the store ranks below every real source) and a flag on every point. Quarter-hours
interpolate linearly between the hourly means, so the curve has no steps at the full hour.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from datetime import datetime, time, timedelta
from zoneinfo import ZoneInfo

from .models import PricePoint, Resolution, zone

__all__ = ["DEMO_FLAG", "demo_prices", "hourly_shape"]

DEMO_FLAG = "synthetic demo price, not market data"


def hourly_shape(points: Sequence[PricePoint], timezone: str) -> list[float]:
    """Mean price per local hour of day (0..23) of `points` in `timezone`."""
    if not points:
        raise ValueError("the shape needs at least one price")
    tz = ZoneInfo(timezone)
    sums: dict[int, list[float]] = defaultdict(list)
    for p in points:
        sums[p.start.astimezone(tz).hour].append(p.price_eur_per_mwh)
    missing = [h for h in range(24) if h not in sums]
    if missing:
        raise ValueError(f"the shape has no prices for local hours {missing}")
    return [sum(sums[h]) / len(sums[h]) for h in range(24)]


def demo_prices(
    shape: Sequence[float], *, zone_code: str, now: datetime, label: str, days: int = 2
) -> list[PricePoint]:
    """Quarter-hour prices of `zone_code` from today 00:00 local for `days` days (DST-correct:
    23 or 25 hours on the change days), source `demo:<label>`."""
    if len(shape) != 24:
        raise ValueError(f"a daily shape has 24 hourly values, got {len(shape)}")
    if days < 1:
        raise ValueError(f"days must be at least 1, got {days}")
    target = zone(zone_code)
    tz = ZoneInfo(target.timezone)
    today = now.astimezone(tz).date()
    start = datetime.combine(today, time(0), tzinfo=tz).astimezone(ZoneInfo("UTC"))
    end = datetime.combine(today + timedelta(days=days), time(0), tzinfo=tz).astimezone(
        ZoneInfo("UTC")
    )
    points = []
    moment = start
    while moment < end:
        local = moment.astimezone(tz)
        hour, quarter = local.hour, local.minute // 15
        price = shape[hour] + (shape[(hour + 1) % 24] - shape[hour]) * quarter / 4
        points.append(
            PricePoint(
                zone=target.code,
                start=moment,
                resolution=Resolution.PT15M,
                price_eur_per_mwh=round(price, 2),
                source=f"demo:{label}",
                flag=DEMO_FLAG,
            )
        )
        moment += Resolution.PT15M.delta
    return points
