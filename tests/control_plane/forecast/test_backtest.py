"""The rolling-origin back-test: origins, target windows, scores, and no look-ahead."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from zoneinfo import ZoneInfo

import numpy as np
import pytest

from control_plane.cli import main
from control_plane.forecast.backtest import origins, run_backtest, target_window
from control_plane.forecast.models import Band, HourlySeries, RidgePrice, SeasonalNaive

from .conftest import HOUR, T0, noisy, weekly_pattern

BRUSSELS = ZoneInfo("Europe/Brussels")
SHARED = Path(__file__).resolve().parents[4] / "shared" / "data" / "be_dayahead_2022_2023.csv"
if not SHARED.exists():
    SHARED = Path("/work/shared/data/be_dayahead_2022_2023.csv")


def test_origins_are_noon_local_after_the_warm_up() -> None:
    series = HourlySeries(datetime(2022, 3, 1, tzinfo=UTC), np.zeros(24 * 60), "Europe/Brussels")
    found = origins(series, warmup_days=20)
    assert found[0].astimezone(BRUSSELS) == datetime(2022, 3, 21, 12, tzinfo=BRUSSELS)
    assert all(o.astimezone(BRUSSELS).hour == 12 for o in found)
    assert {o.hour for o in found} == {11, 10}  # CET then CEST, in UTC
    assert found[-1] < series.end


@pytest.mark.parametrize(
    ("day", "hours"), [((2022, 3, 26), 23), ((2022, 10, 29), 25), ((2022, 6, 1), 24)]
)
def test_the_dayahead_window_is_the_next_local_day(day: tuple[int, int, int], hours: int) -> None:
    origin = datetime(*day, 12, tzinfo=BRUSSELS).astimezone(UTC)
    start, end = target_window(origin, "dayahead", "Europe/Brussels")
    assert start.astimezone(BRUSSELS).hour == 0 and start - origin == 12 * HOUR
    assert (end - start) // HOUR == hours
    assert target_window(origin, "intraday", "Europe/Brussels") == (origin, origin + 12 * HOUR)


def test_seasonal_naive_scores_zero_on_a_weekly_periodic_series() -> None:
    series = HourlySeries(T0, weekly_pattern(24 * 70), "Europe/Brussels")
    rows = run_backtest(series, [SeasonalNaive(168)])
    assert [r.horizon for r in rows] == ["dayahead", "intraday"]
    for r in rows:
        assert r.mae == 0 and r.rmse == 0 and r.coverage_p10_p90 == 1.0
        assert r.forecasts >= 40


@dataclass
class Spy:
    """A model that checks what it is given and records its forecasts."""

    inner: RidgePrice | SeasonalNaive
    origins: list[datetime]
    seen: list[datetime] = field(default_factory=list)
    forecasts: dict[datetime, np.ndarray] = field(default_factory=dict)

    @property
    def name(self) -> str:
        return self.inner.name

    @property
    def min_history_h(self) -> int:
        return self.inner.min_history_h

    def forecast(self, history: HourlySeries, steps: int) -> Band:
        assert history.end in self.origins  # the slice ends at an origin, never later
        self.seen.append(history.end)
        band = self.inner.forecast(history, steps)
        self.forecasts.setdefault(history.end, band.p50)
        return band


def test_no_model_sees_a_price_delivered_after_its_origin() -> None:
    clean = HourlySeries(T0, noisy(24 * 70), "Europe/Brussels")
    cut = 24 * 55
    poisoned_values = clean.values.copy()
    poisoned_values[cut:] = 1e6  # the future: a model that peeks gives itself away
    poisoned = HourlySeries(T0, poisoned_values, "Europe/Brussels")
    runs = []
    for series in (clean, poisoned):
        expected = origins(series)
        spies = [Spy(RidgePrice(), expected), Spy(SeasonalNaive(24), expected)]
        run_backtest(series, spies)
        assert sorted(set(spies[0].seen)) == expected
        runs.append(spies)
    checked = 0
    for clean_spy, poisoned_spy in zip(*runs, strict=True):
        for origin, p50 in clean_spy.forecasts.items():
            if origin <= clean.time(cut):  # history entirely before the poison
                np.testing.assert_array_equal(p50, poisoned_spy.forecasts[origin])
                checked += 1
    assert checked > 40


@pytest.mark.skipif(not SHARED.exists(), reason=f"shared data not found at {SHARED}")
def test_the_cli_prints_the_table_for_the_belgian_file(capsys, tmp_path: Path) -> None:
    # the first 90 days of the file keep this fast; the full run is bench/forecast_backtest.py
    lines = SHARED.read_text().splitlines()[: 1 + 24 * 90]
    short = tmp_path / "be.csv"
    short.write_text("\n".join(lines) + "\n")
    assert main(["forecast", "backtest", "--prices", str(short), "--zone", "BE"]) == 0
    out = capsys.readouterr().out
    table = {
        (parts[0], parts[1]): float(parts[4])
        for parts in (line.split() for line in out.splitlines())
        if len(parts) == 7 and parts[0] in ("dayahead", "intraday")
    }
    assert set(table) == {
        (h, m)
        for h in ("dayahead", "intraday")
        for m in ("seasonal_naive_168h", "seasonal_naive_24h", "ridge")
    }
    assert table[("dayahead", "ridge")] < table[("dayahead", "seasonal_naive_168h")]


def test_the_cli_names_a_missing_file(capsys) -> None:
    assert main(["forecast", "backtest", "--prices", "/nonexistent/prices.csv"]) == 1
    assert "/nonexistent/prices.csv" in capsys.readouterr().err
