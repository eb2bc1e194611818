"""The rolling back-test: seasonal-naive forecast, day stepping over DST, SoC carried over,
and the `bess-plane backtest` command on a small file."""

from __future__ import annotations

import json
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import pytest

from control_plane.cli import main
from control_plane.market.models import PricePoint, Resolution
from control_plane.optimiser.backtest import (
    InMemoryPriceHistory,
    NotEnoughHistoryError,
    parse_battery,
    run_backtest,
    seasonal_naive,
)
from control_plane.optimiser.model import InvalidProblemError

BATTERY = parse_battery("capacity_kwh=1000,power_kw=500,efficiency=0.9,min_soc_pct=0")


def weekly_points(start: datetime, days: int, price=None) -> list[PricePoint]:
    """Hourly prices repeating every week: cheap nights, dear evenings, dearer on weekdays."""
    price = price or (
        lambda t: (
            (20 if t.hour < 6 else 100 if 17 <= t.hour < 21 else 60)
            + (10 if t.weekday() < 5 else 0)
        )
    )
    return [
        PricePoint(
            zone="BE",
            start=start + timedelta(hours=i),
            resolution=Resolution.PT60M,
            price_eur_per_mwh=float(price(start + timedelta(hours=i))),
            source="test",
        )
        for i in range(days * 24)
    ]


def test_seasonal_naive_repeats_last_week():
    points = weekly_points(datetime(2023, 5, 1, tzinfo=UTC), 14)
    origin = datetime(2023, 5, 15, tzinfo=UTC)
    got = seasonal_naive(points, origin, 24)
    week_ago = [
        p.price_eur_per_mwh
        for p in points
        if origin - timedelta(days=7) <= p.start < origin - timedelta(days=6)
    ]
    assert got == week_ago
    # A horizon longer than a week repeats its own forecast.
    long = seasonal_naive(points, origin, 24 * 8)
    assert long[24 * 7 : 24 * 8] == long[:24]


def test_seasonal_naive_needs_a_week():
    points = weekly_points(datetime(2023, 5, 1, tzinfo=UTC), 3)
    with pytest.raises(NotEnoughHistoryError, match="one week before"):
        seasonal_naive(points, datetime(2023, 5, 4, tzinfo=UTC), 24)


def test_weekly_prices_forecast_perfectly_so_the_ratio_is_one():
    # Belgian local days; the file starts at local midnight of 1 May.
    start = datetime(2023, 4, 30, 22, tzinfo=UTC)
    history = InMemoryPriceHistory(weekly_points(start, 28))
    result = run_backtest(history=history, zone_code="BE", battery=BATTERY)
    # 28 local days; the first week has no seasonal-naive forecast and is skipped.
    assert len(result.skipped) == 7 and "one week" in result.skipped[0]
    assert len(result.days) == 28 - 7
    assert result.ratio == pytest.approx(1.0)
    assert result.perfect_eur > 0
    for day in result.days:
        assert day.perfect_eur == pytest.approx(day.forecast_eur)
        assert day.relaxed == 0


def test_a_day_is_priced_at_actual_prices_and_carries_the_soc():
    # Two days of history, a forecaster that sees the truth: day 2 charges at 20 overnight
    # and sells at 100 in the evening (analytic: 900 kWh stored, 810 kWh sold), then day 3
    # starts with what day 2 left (empty) and does the same.
    start = datetime(2023, 4, 30, 22, tzinfo=UTC)
    points = weekly_points(
        start, 4, price=lambda t: 20 if t.hour < 4 else 100 if t.hour >= 18 else 50
    )

    def truth(history, origin, horizon):
        return [p.price_eur_per_mwh for p in points if p.start >= origin][:horizon]

    result = run_backtest(
        history=InMemoryPriceHistory(points),
        zone_code="BE",
        battery=BATTERY,
        forecaster=truth,
        initial_soc_pct=0,
    )
    assert [d.day for d in result.days] == [date(2023, 5, d) for d in (1, 2, 3, 4)]
    # Local days: UTC 22:00 .. 22:00; cheap UTC 00-04, dear 18-22 (both inside the local day).
    for day in result.days:
        assert day.perfect_eur == pytest.approx(0.81 * 100 - 1.0 * 20)
        assert day.perfect_cycles == pytest.approx(0.9)
    # Start full: day 1 also sells the 1000 kWh stored (at 100 in the evening, but the
    # discharge power caps the evening at 4 h x 500 kW, so part of it goes at 50 by day);
    # the battery ends empty, so day 2 is the plain cycle again: the SoC carried over.
    full = run_backtest(
        history=InMemoryPriceHistory(points),
        zone_code="BE",
        battery=BATTERY,
        forecaster=truth,
        initial_soc_pct=100,
    )
    assert full.days[0].perfect_eur > result.days[0].perfect_eur + 40
    assert full.days[1].perfect_eur == pytest.approx(result.days[1].perfect_eur)


def test_dst_days_have_23_and_25_hours():
    start = datetime(2023, 3, 18, 23, tzinfo=UTC)  # local midnight, 19 March (CET)
    points = weekly_points(start, 14)
    seen: list[int] = []

    def spy(history, origin, horizon):
        seen.append(horizon)
        return [p.price_eur_per_mwh for p in points if p.start >= origin][:horizon]

    run_backtest(
        history=InMemoryPriceHistory(points), zone_code="BE", battery=BATTERY, forecaster=spy
    )
    # 26 March 2023 (spring forward) has 23 hours.
    assert 23 in seen and seen.count(24) == len(seen) - 1


def test_bad_battery_strings_say_what_is_wrong():
    with pytest.raises(InvalidProblemError, match="known: capacity_kwh, power_kw"):
        parse_battery("capacity_kwh=1000,power=5")
    with pytest.raises(InvalidProblemError, match="missing max_charge_kw, max_discharge_kw"):
        parse_battery("capacity_kwh=1000")
    with pytest.raises(InvalidProblemError, match="capacity_kwh must be a number"):
        parse_battery("capacity_kwh=lots,power_kw=1")
    with pytest.raises(InvalidProblemError, match="charge_efficiency must be in"):
        parse_battery("capacity_kwh=1000,power_kw=500,efficiency=95")


def test_horizon_out_of_range_is_refused():
    points = weekly_points(datetime(2023, 4, 30, 22, tzinfo=UTC), 10)
    with pytest.raises(InvalidProblemError, match=r"horizon_hours must be 24\.\.168"):
        run_backtest(
            history=InMemoryPriceHistory(points), zone_code="BE", battery=BATTERY, horizon_hours=12
        )


def _csv(tmp_path: Path, days: int) -> Path:
    lines = ["time,DAM_price"]
    t = datetime(2023, 5, 1)
    for i in range(days * 24):
        local = t + timedelta(hours=i)
        price = 0.02 if local.hour < 6 else 0.1 if 17 <= local.hour < 21 else 0.06
        lines.append(f"{local:%d%b%Y %H:%M:%S},{price}")
    path = tmp_path / "prices.csv"
    path.write_text("\n".join(lines) + "\n")
    return path


def test_cli_backtest_prints_json(tmp_path, capsys):
    path = _csv(tmp_path, 16)
    code = main(
        [
            "backtest",
            "--prices",
            str(path),
            "--battery",
            "capacity_kwh=1000,power_kw=500",
            "--json",
            "--horizon-hours",
            "36",
        ]
    )
    out, err = capsys.readouterr()
    assert code == 0, err
    result = json.loads(out)
    assert result["days"] == 16 - 7  # the first week has no seasonal-naive forecast
    assert len(result["skipped"]) == 7
    assert result["ratio"] == pytest.approx(1.0)  # daily profile: last week's is right
    assert result["perfect_cycles_per_day"] > 0
    assert "backtest" in err  # the progress lines


def test_cli_backtest_bad_input_exits_2_with_the_reason(tmp_path, capsys):
    code = main(
        [
            "backtest",
            "--prices",
            str(tmp_path / "missing.csv"),
            "--battery",
            "capacity_kwh=1,power_kw=1",
        ]
    )
    assert code == 2
    assert "missing.csv" in capsys.readouterr().err
    code = main(
        [
            "backtest",
            "--prices",
            str(_csv(tmp_path, 9)),
            "--battery",
            "capacity_kwh=1,power_kw=1",
            "--forecast",
            "nope",
        ]
    )
    assert code == 2
    assert "use seasonal-naive or module:function" in capsys.readouterr().err
