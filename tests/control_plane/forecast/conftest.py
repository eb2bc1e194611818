"""Price histories for the forecast tests: synthetic series with known structure, and an
in-memory `PriceHistory` over price points (the feed's store in production)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from datetime import UTC, datetime, timedelta

import numpy as np

from control_plane.market.models import PricePoint, Resolution

T0 = datetime(2022, 1, 3, tzinfo=UTC)  # a Monday, 00:00 UTC
HOUR = timedelta(hours=1)


def points(values: Sequence[float], start: datetime = T0, zone: str = "BE") -> list[PricePoint]:
    return [
        PricePoint(
            zone=zone,
            start=start + i * HOUR,
            resolution=Resolution.PT60M,
            price_eur_per_mwh=float(v),
            source="test",
        )
        for i, v in enumerate(values)
    ]


def weekly_pattern(hours: int, seed: int = 0) -> np.ndarray:
    """A series that repeats exactly every 168 hours."""
    week = np.random.default_rng(seed).uniform(-20, 200, 168)
    return np.resize(week, hours)


def noisy(hours: int, seed: int = 1) -> np.ndarray:
    """A daily shape plus weekly level plus noise: a price-like series."""
    rng = np.random.default_rng(seed)
    t = np.arange(hours)
    shape = 60 + 30 * np.sin(2 * np.pi * (t % 24) / 24) + 10 * ((t // 24) % 7 < 5)
    return shape + rng.normal(0, 8, hours)


class MemoryHistory:
    """`PriceHistory` over a list of points; records every request."""

    def __init__(self, pts: list[PricePoint], on_call: Callable[[datetime], None] | None = None):
        self.points = pts
        self.calls: list[tuple[str, datetime, datetime]] = []

    def prices(
        self, zone: str, start: datetime, end: datetime, resolution: Resolution | None = None
    ) -> list[PricePoint]:
        self.calls.append((zone, start, end))
        return [
            p
            for p in self.points
            if p.zone == zone
            and start <= p.start < end
            and (resolution is None or p.resolution is resolution)
        ]
