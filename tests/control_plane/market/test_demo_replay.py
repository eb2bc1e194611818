"""Replayed demo prices: real day curves on the zone's calendar, weekdays matched, flagged."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from control_plane.market.demo import DEMO_FLAG, replayed_prices
from control_plane.market.models import PricePoint, Resolution

SOURCE_START = datetime(2023, 1, 1, 23, tzinfo=UTC)  # Mon 2 Jan 2023 00:00 Brussels


def _source(days: int) -> list[PricePoint]:
    """Hourly prices: day number x 100 + local hour (Brussels = UTC+1 in winter)."""
    return [
        PricePoint(
            zone="BE",
            start=SOURCE_START + timedelta(hours=h),
            resolution=Resolution.PT60M,
            price_eur_per_mwh=float((h // 24) * 100 + h % 24),
            source="file:x",
        )
        for h in range(24 * days)
    ]


def test_days_are_replayed_with_matching_weekdays_and_flagged() -> None:
    now = datetime(2026, 11, 26, 12, tzinfo=UTC)  # a Thursday
    points = replayed_prices(
        _source(30),
        source_timezone="Europe/Brussels",
        zone_code="AT",
        now=now,
        label="t",
        past_days=3,
        days=2,
    )
    assert len(points) == 5 * 96
    assert points[0].start == datetime(2026, 11, 22, 23, tzinfo=UTC)  # Mon 23 Nov 00:00 Vienna
    assert {p.flag for p in points} == {DEMO_FLAG} and points[0].source == "demo:t"
    # the last target day (Fri 27 Nov) replays the last source Friday (day 25: 27 Jan 2023)
    last_day = points[-96:]
    assert last_day[0].price_eur_per_mwh == 2500.0  # 00:00 of day 25
    assert last_day[2].price_eur_per_mwh == 2500.5  # 00:30: halfway to 01:00
    # ... and the first (Mon 23 Nov) the Monday four days before it (day 21: 23 Jan 2023)
    assert points[0].price_eur_per_mwh == 2100.0


def test_too_short_a_source_is_refused() -> None:
    with pytest.raises(ValueError, match="needs at least"):
        replayed_prices(
            _source(5),
            source_timezone="Europe/Brussels",
            zone_code="AT",
            now=datetime(2026, 11, 26, tzinfo=UTC),
            label="t",
            past_days=3,
        )
