"""The forecast service's price model as the optimiser's Forecaster (hourly model, any
interval length, a history that ends before the origin)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from control_plane.forecast.models import SeasonalNaive
from control_plane.market.models import PricePoint, Resolution
from control_plane.optimiser.backtest import NotEnoughHistoryError
from control_plane.optimiser.forecasting import price_forecaster

T0 = datetime(2025, 1, 6, tzinfo=UTC)


def _daily(hours: int, resolution: Resolution = Resolution.PT15M) -> list[PricePoint]:
    """A price that is the UTC hour of day x 10, every day, in `resolution` intervals."""
    step = resolution.delta
    count = int(timedelta(hours=hours) / step)
    return [
        PricePoint(
            zone="BE",
            start=T0 + i * step,
            resolution=resolution,
            price_eur_per_mwh=10.0 * (T0 + i * step).hour,
            source="test",
        )
        for i in range(count)
    ]


def test_quarter_hours_get_their_hours_forecast() -> None:
    forecast = price_forecaster(SeasonalNaive(period_h=24))
    history = _daily(24 * 30)
    origin = history[-1].end
    prices = forecast(history, origin, 8)  # two hours of quarter-hours
    assert prices == [0.0] * 4 + [10.0] * 4


def test_a_history_that_ends_before_the_origin_skips_the_gap() -> None:
    forecast = price_forecaster(SeasonalNaive(period_h=24))
    history = _daily(24 * 30, Resolution.PT60M)
    origin = history[-1].end + timedelta(hours=3)  # 03:00, three hours unknown
    assert forecast(history, origin, 2) == [30.0, 40.0]


def test_too_little_or_future_history_is_refused() -> None:
    forecast = price_forecaster(SeasonalNaive(period_h=24))
    with pytest.raises(NotEnoughHistoryError, match="needs a price history"):
        forecast([], T0, 4)
    with pytest.raises(NotEnoughHistoryError, match="48"):
        forecast(_daily(24), T0 + timedelta(days=1), 4)
    history = _daily(24 * 30)
    origin = history[-8].start  # the last two hours are after the origin: never used
    assert forecast(history, origin, 8) == forecast(history[:-8], origin, 8)


def test_a_partly_known_hour_before_a_quarter_hour_origin_is_forecast() -> None:
    forecast = price_forecaster(SeasonalNaive(period_h=24))
    history = _daily(24 * 30 + 1)[:-2]  # ends at 00:30, the origin
    origin = history[-1].end
    assert origin.minute == 30
    assert forecast(history, origin, 4) == [0.0, 0.0, 10.0, 10.0]
