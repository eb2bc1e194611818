"""Forecast models: exact on structure they model, ordered quantiles, honest errors."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import numpy as np
import pytest

from control_plane.forecast.models import (
    ZONE_PROFILES,
    HourlySeries,
    InsufficientHistoryError,
    RidgePrice,
    SeasonalNaive,
    _ridge_fit,
    _ridge_predict,
    hourly_from_points,
    load_forecast,
    local_calendar,
    solar_forecast,
    wind_forecast,
)
from control_plane.market.models import PricePoint, Resolution

from .conftest import HOUR, T0, noisy, points, weekly_pattern


def test_seasonal_naive_forecasts_a_weekly_periodic_series_exactly() -> None:
    values = weekly_pattern(24 * 60)
    history = HourlySeries(T0, values[: 24 * 50])
    band = SeasonalNaive(168).forecast(history, 36)
    expected = values[24 * 50 : 24 * 50 + 36]
    np.testing.assert_allclose(band.p50, expected)
    np.testing.assert_allclose(band.p10, expected)  # zero residuals: a band of width 0
    np.testing.assert_allclose(band.p90, expected)
    assert band.start == history.end


def test_seasonal_naive_24h_uses_the_latest_known_day_beyond_one_day_ahead() -> None:
    values = np.arange(24 * 30, dtype=float)
    history = HourlySeries(T0, values[: 24 * 20 + 12])  # origin at 12:00
    band = SeasonalNaive(24).forecast(history, 36)
    n = len(history)
    # the first 24 h after the origin: 24 h back; after that 48 h back (24 h back is unknown)
    np.testing.assert_allclose(band.p50[:24], values[n - 24 : n])
    np.testing.assert_allclose(band.p50[24:], values[n - 24 : n - 12])


def test_ridge_fit_recovers_a_known_linear_relation() -> None:
    rng = np.random.default_rng(3)
    x = rng.normal(size=(500, 4)) * [1, 10, 0.1, 5]
    y = x @ np.array([2.0, -0.5, 30.0, 1.5]) + 7.0
    fitted = _ridge_fit(x, y, alpha=1e-9)
    coef, _, scale, _ = fitted
    np.testing.assert_allclose(coef / scale, [2.0, -0.5, 30.0, 1.5], rtol=1e-6)
    np.testing.assert_allclose(_ridge_predict(x[:5], *fitted), y[:5], rtol=1e-6)


def test_ridge_beats_seasonal_naive_on_a_noisy_daily_series() -> None:
    values = noisy(24 * 120)
    errors = {"naive": [], "ridge": []}
    for day in range(80, 110):
        history = HourlySeries(T0, values[: 24 * day + 12])
        actual = values[24 * day + 12 : 24 * day + 48]
        for name, model in (("naive", SeasonalNaive(24)), ("ridge", RidgePrice())):
            errors[name].append(np.abs(model.forecast(history, 36).p50 - actual))
    naive, ridge = (float(np.mean(errors[k])) for k in ("naive", "ridge"))
    assert ridge < 0.85 * naive, (ridge, naive)


@pytest.mark.parametrize("model", [SeasonalNaive(24), SeasonalNaive(168), RidgePrice()])
def test_quantiles_are_ordered_and_not_degenerate_on_noise(model) -> None:
    history = HourlySeries(T0, noisy(24 * 90), "Europe/Brussels")
    band = model.forecast(history, 36)
    assert np.all(band.p10 <= band.p50) and np.all(band.p50 <= band.p90)
    assert np.mean(band.p90 - band.p10) > 5  # noise sd 8: an 80 % band is ~20 wide
    assert band.training_end == history.end
    assert band.training_start is not None and band.training_start < history.end


@pytest.mark.parametrize(
    ("model", "need"), [(RidgePrice(), 504), (SeasonalNaive(168), 192), (SeasonalNaive(24), 48)]
)
def test_too_little_history_says_how_much_is_needed(model, need: int) -> None:
    history = HourlySeries(T0, noisy(need - 1))
    with pytest.raises(InsufficientHistoryError, match=f"at least {need} hours"):
        model.forecast(history, 24)


def test_hourly_from_points_averages_quarters_and_fills_gaps() -> None:
    pts = points([10.0, 20.0, 30.0])
    quarters = [
        PricePoint(
            zone="BE",
            start=T0 + 3 * HOUR + i * timedelta(minutes=15),
            resolution=Resolution.PT15M,
            price_eur_per_mwh=p,
            source="test",
        )
        for i, p in enumerate([40.0, 44.0, 48.0, 52.0])
    ]
    late = points([70.0], start=T0 + 6 * HOUR)  # hours 4 and 5 are missing
    series = hourly_from_points(pts + quarters + late, timezone="Europe/Brussels")
    np.testing.assert_allclose(series.values, [10, 20, 30, 46, 46, 46, 70])
    assert series.filled == 2
    assert series.start == T0 and series.end == T0 + 7 * HOUR


def test_an_hourly_price_wins_over_quarters_of_the_same_hour() -> None:
    quarter = PricePoint(
        zone="BE", start=T0, resolution=Resolution.PT15M, price_eur_per_mwh=99.0, source="t"
    )
    series = hourly_from_points([quarter, *points([10.0])])
    assert series.values.tolist() == [10.0]


def test_before_is_the_history_known_at_the_origin() -> None:
    series = HourlySeries(T0, np.arange(100.0))
    known = series.before(T0 + 40 * HOUR)
    assert known.end == T0 + 40 * HOUR and known.values[-1] == 39.0


@pytest.mark.parametrize(
    "start", [datetime(2022, 3, 25, tzinfo=UTC), datetime(2022, 10, 28, 5, tzinfo=UTC)]
)
def test_local_calendar_matches_zoneinfo_across_dst(start: datetime) -> None:
    tz = ZoneInfo("Europe/Brussels")
    hours, weekdays, months = local_calendar(start, 24 * 5, "Europe/Brussels")
    for i in range(24 * 5):
        local = (start + i * HOUR).astimezone(tz)
        assert (hours[i], weekdays[i], months[i]) == (local.hour, local.weekday(), local.month)


def test_solar_is_zero_at_night_and_peaks_around_noon() -> None:
    be = ZONE_PROFILES["BE"]
    band = solar_forecast(be, datetime(2023, 6, 21, tzinfo=UTC), 24)
    assert band.p50[0] == 0 and band.p50[23] == 0  # 02:00 and 01:00 local
    assert 10 <= int(np.argmax(band.p50)) <= 12  # solar noon ~11:40 UTC at 4.6 E
    assert band.p50.max() < be.solar_capacity_mw
    assert np.all(band.p10 <= band.p50) and np.all(band.p50 <= band.p90)
    winter = solar_forecast(be, datetime(2023, 12, 21, tzinfo=UTC), 24)
    assert winter.p50.max() < 0.5 * band.p50.max()


def test_solar_scales_to_recent_actuals() -> None:
    be = ZONE_PROFILES["BE"]
    start = datetime(2023, 6, 18, tzinfo=UTC)
    clear = solar_forecast(be, start, 72)
    # actuals at exactly 30 % of capacity x clear sky -> a clear-sky index of 0.3
    actuals = HourlySeries(start, clear.p50 / 0.6 * 0.3)
    band = solar_forecast(be, start + 72 * HOUR, 24, actuals=actuals)
    assert band.model == "clear_sky x recent clear-sky index"
    reference = solar_forecast(be, start + 72 * HOUR, 24)
    np.testing.assert_allclose(band.p50, reference.p50 / 0.6 * 0.3, rtol=1e-6)


def test_wind_blends_persistence_into_climatology() -> None:
    be = ZONE_PROFILES["BE"]
    start = datetime(2023, 1, 10, tzinfo=UTC)
    clim = wind_forecast(be, start, 48, timezone="Europe/Brussels")
    actuals = HourlySeries(start - 24 * HOUR, np.full(24, 4000.0))
    band = wind_forecast(be, start, 48, timezone="Europe/Brussels", actuals=actuals)
    assert band.p50[0] > 3000 and abs(band.p50[-1] - clim.p50[-1]) < 10
    for b in (clim, band):
        assert np.all(b.p10 <= b.p50) and np.all(b.p50 <= b.p90) and np.all(b.p10 >= 0)


def test_load_profile_is_lower_at_night_and_on_weekends() -> None:
    be = ZONE_PROFILES["BE"]
    band = load_forecast(be, datetime(2023, 1, 9, tzinfo=UTC), 24 * 7, timezone="Europe/Brussels")
    monday, sunday = band.p50[:24], band.p50[24 * 6 :]
    assert monday[3] < monday[11] and sunday.mean() < monday.mean()
    assert 0.7 * be.mean_load_mw < band.p50.mean() < 1.3 * be.mean_load_mw
    assert np.all(band.p10 < band.p50) and np.all(band.p50 < band.p90)
    week = HourlySeries(datetime(2023, 1, 1, tzinfo=UTC), np.full(24 * 8, 9000.0))
    scaled = load_forecast(be, week.end, 24, timezone="Europe/Brussels", actuals=week)
    np.testing.assert_allclose(scaled.p50, 9000.0)
