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
from datetime import date, datetime, time, timedelta
from zoneinfo import ZoneInfo

from .models import PricePoint, Resolution, zone

__all__ = ["DEMO_FLAG", "demo_prices", "hourly_shape", "replayed_prices"]

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


def replayed_prices(
    source: Sequence[PricePoint],
    *,
    source_timezone: str,
    zone_code: str,
    now: datetime,
    label: str,
    past_days: int,
    days: int = 2,
) -> list[PricePoint]:
    """Real day curves of `source`, replayed onto `zone_code`'s calendar: quarter-hours from
    `past_days` local days before today until the end of today + `days` - 1, source
    `demo:<label>`, every point flagged.

    Each target day takes the hourly prices of one source day (local hour to local hour,
    quarter-hours interpolated as in `demo_prices`); the source days are the last ones of the
    file, shifted so that weekdays match (a Monday gets a Monday). A local hour a source day
    lacks (the spring-forward hour) takes the hour before. Forecasts and back-tests then see
    real day-to-day variation, not one repeated shape.
    """
    if past_days < 0 or days < 1:
        raise ValueError(f"past_days must be >= 0 and days >= 1, got {past_days}, {days}")
    src_tz = ZoneInfo(source_timezone)
    hourly: dict[tuple[date, int], float] = {}
    for p in source:
        local = p.start.astimezone(src_tz)
        if p.resolution is Resolution.PT60M or local.minute == 0:
            hourly.setdefault((local.date(), local.hour), p.price_eur_per_mwh)
    source_days = sorted({day for day, _ in hourly})
    total = past_days + days
    if len(source_days) < total + 7:
        raise ValueError(
            f"the source has {len(source_days)} days of prices; replaying {total} days needs "
            f"at least {total + 7}"
        )
    target = zone(zone_code)
    tz = ZoneInfo(target.timezone)
    first_target = now.astimezone(tz).date() - timedelta(days=past_days)
    last_target = first_target + timedelta(days=total - 1)
    last_source = source_days[-1]
    while last_source.weekday() != last_target.weekday():
        last_source -= timedelta(days=1)
    offset = last_target - last_source
    points = []
    for i in range(total):
        day = first_target + timedelta(days=i)
        src_day = day - offset

        def price(hour: int, src_day: date = src_day) -> float:
            for h in (hour, hour - 1, hour + 1):
                if (src_day, h % 24) in hourly:
                    return hourly[(src_day, h % 24)]
            raise ValueError(f"the source has no prices on {src_day}")

        moment = datetime.combine(day, time(0), tzinfo=tz).astimezone(ZoneInfo("UTC"))
        end = datetime.combine(day + timedelta(days=1), time(0), tzinfo=tz).astimezone(
            ZoneInfo("UTC")
        )
        while moment < end:
            local = moment.astimezone(tz)
            hour, quarter = local.hour, local.minute // 15
            here = price(hour)
            value = here + (price(hour + 1) - here) * quarter / 4 if hour < 23 else here
            points.append(
                PricePoint(
                    zone=target.code,
                    start=moment,
                    resolution=Resolution.PT15M,
                    price_eur_per_mwh=round(value, 2),
                    source=f"demo:{label}",
                    flag=DEMO_FLAG,
                )
            )
            moment += Resolution.PT15M.delta
    return points
