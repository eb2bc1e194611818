"""The spec's derived figures over a price series: mark price, EMA, VWAP. Pure functions.

- **Mark price**: the price of the interval delivering now (start <= now < end); the finest
  resolution wins when several cover now. None when the series has no such interval: an old
  price is never passed off as the current one.
- **EMA** (alpha 0.2, the spec's): over the points delivered up to now, oldest first,
  EMA_1 = p_1 and EMA_k = alpha * p_k + (1 - alpha) * EMA_(k-1).
- **VWAP** over the last 96 points up to now (a day of quarter-hours): weighted by the
  exchange's traded volume (MWh) per interval when at least one of those intervals has trades
  (intervals without trades then weigh nothing), else every point weighs the same. The result
  says which weighting was used and how many points carried weight.

"Up to now" means intervals that have started (start <= now), so tomorrow's day-ahead prices,
known since the auction, do not move today's EMA and VWAP.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Final, Literal

from .models import PricePoint

__all__ = [
    "EMA_ALPHA",
    "VWAP_POINTS",
    "Vwap",
    "ema",
    "mark_price",
    "volume_per_interval",
    "vwap",
]

EMA_ALPHA: Final = 0.2
VWAP_POINTS: Final = 96


@dataclass(frozen=True, slots=True)
class Vwap:
    price_eur_per_mwh: float
    weighting: Literal["volume", "equal"]
    points: int
    """Points in the window."""
    weighted_points: int
    """Points that carried weight (with `volume`: those with trades)."""
    volume_mwh: float
    """Traded volume in the window (0 with `equal`)."""


def _delivered(points: Iterable[PricePoint], now: datetime) -> list[PricePoint]:
    return sorted((p for p in points if p.start <= now), key=lambda p: p.start)


def mark_price(points: Iterable[PricePoint], now: datetime) -> PricePoint | None:
    """The point delivering at `now` (finest resolution first), or None."""
    covering = [p for p in points if p.start <= now < p.end]
    return min(covering, key=lambda p: p.resolution.minutes) if covering else None


def ema(points: Iterable[PricePoint], now: datetime, alpha: float = EMA_ALPHA) -> float | None:
    """The exponential moving average of the prices delivered up to `now`; None if none."""
    if not 0 < alpha <= 1:
        raise ValueError(f"alpha must be in (0, 1], got {alpha}")
    value: float | None = None
    for p in _delivered(points, now):
        price = p.price_eur_per_mwh
        value = price if value is None else alpha * price + (1 - alpha) * value
    return value


def volume_per_interval(
    points: Sequence[PricePoint], trades: Iterable[tuple[datetime, float]]
) -> dict[datetime, float]:
    """Traded MWh per point start: each (delivery start, MWh) trade counts for the point whose
    interval holds its delivery start (a quarter-hour trade inside an hourly price, ...)."""
    ordered = sorted(points, key=lambda p: (p.start, -p.resolution.minutes))
    volumes: dict[datetime, float] = {}
    for delivery, energy_mwh in trades:
        for p in ordered:
            if p.start <= delivery < p.end:
                volumes[p.start] = volumes.get(p.start, 0.0) + energy_mwh
                break
    return volumes


def vwap(
    points: Iterable[PricePoint],
    now: datetime,
    volumes: Mapping[datetime, float] | None = None,
    window: int = VWAP_POINTS,
) -> Vwap | None:
    """VWAP of the last `window` points delivered up to `now` (see the module doc); None if
    there are none. `volumes`: traded MWh per point start (`volume_per_interval`)."""
    if window < 1:
        raise ValueError(f"window must be at least 1, got {window}")
    last = _delivered(points, now)[-window:]
    if not last:
        return None
    weights = [max(0.0, (volumes or {}).get(p.start, 0.0)) for p in last]
    total = sum(weights)
    if total > 0:
        value = sum(w * p.price_eur_per_mwh for w, p in zip(weights, last, strict=True)) / total
        return Vwap(value, "volume", len(last), sum(1 for w in weights if w > 0), total)
    value = sum(p.price_eur_per_mwh for p in last) / len(last)
    return Vwap(value, "equal", len(last), len(last), 0.0)
