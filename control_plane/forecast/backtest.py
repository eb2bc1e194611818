"""Rolling-origin back-test of the price models.

Origins: every day at 12:00 local time (the day-ahead gate) after a warm-up (default 28
days). At each origin each model gets `series.before(origin)` - the prices of deliveries
that started before the origin, nothing later (`run_backtest` checks the slice ends at the
origin) - and forecasts:

- **day-ahead**: the next local delivery day (24 hours; 23/25 on DST days), i.e. lead times
  12 h to 36 h;
- **intraday**: the 12 hours from the origin.

Scores per model and horizon over every forecast hour: MAE and RMSE of P50 (EUR/MWh), and the
P10-P90 coverage (share of actual prices inside [P10, P90]; 80 % if calibrated). Forecasts
whose target hours run past the end of the file are skipped.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from zoneinfo import ZoneInfo

import numpy as np

from .models import HOUR, Floats, HourlySeries, PriceModel, RidgePrice, SeasonalNaive

__all__ = [
    "HORIZONS",
    "BacktestRow",
    "default_models",
    "format_table",
    "origins",
    "run_backtest",
    "target_window",
]

HORIZONS = ("dayahead", "intraday")


def default_models() -> list[PriceModel]:
    return [SeasonalNaive(168), SeasonalNaive(24), RidgePrice()]


@dataclass(frozen=True, slots=True)
class BacktestRow:
    model: str
    horizon: str
    forecasts: int
    hours: int
    mae: float
    rmse: float
    coverage_p10_p90: float


def origins(series: HourlySeries, *, warmup_days: int = 28, hour_local: int = 12) -> list[datetime]:
    """Every day's `hour_local`:00 local time with `warmup_days` of history before it."""
    tz = ZoneInfo(series.timezone)
    first = series.start + timedelta(days=warmup_days)
    day = first.astimezone(tz).date()
    found: list[datetime] = []
    while True:
        local = datetime(day.year, day.month, day.day, hour_local, tzinfo=tz)
        origin = local.astimezone(series.start.tzinfo)
        if origin >= series.end:
            return found
        if origin >= first:
            found.append(origin)
        day += timedelta(days=1)


def target_window(origin: datetime, horizon: str, timezone: str) -> tuple[datetime, datetime]:
    """[start, end) of what a forecast at `origin` is for (UTC)."""
    if horizon == "intraday":
        return origin, origin + 12 * HOUR
    if horizon != "dayahead":
        raise ValueError(f"unknown horizon {horizon!r}; use one of {', '.join(HORIZONS)}")
    tz = ZoneInfo(timezone)
    local = origin.astimezone(tz)
    next_day = (local + timedelta(days=1)).date()
    start = datetime(next_day.year, next_day.month, next_day.day, tzinfo=tz)
    after = next_day + timedelta(days=1)
    end = datetime(after.year, after.month, after.day, tzinfo=tz)
    return start.astimezone(origin.tzinfo), end.astimezone(origin.tzinfo)


def run_backtest(
    series: HourlySeries,
    models: Sequence[PriceModel] | None = None,
    *,
    warmup_days: int = 28,
    horizons: Sequence[str] = HORIZONS,
    progress: Callable[[int, int], None] | None = None,
) -> list[BacktestRow]:
    """MAE, RMSE and P10-P90 coverage of each model and horizon (module docs)."""
    models = list(models) if models is not None else default_models()
    starts = origins(series, warmup_days=warmup_days)
    errors: dict[tuple[str, str], list[Floats]] = {}
    inside: dict[tuple[str, str], list[Floats]] = {}
    counts: dict[tuple[str, str], int] = {}
    for done, origin in enumerate(starts):
        history = series.before(origin)
        if history.end != origin:  # the one guarantee the scores rest on
            raise AssertionError(f"history ends {history.end}, not at the origin {origin}")
        for horizon in horizons:
            start, end = target_window(origin, horizon, series.timezone)
            if end > series.end:
                continue
            skip = (start - origin) // HOUR
            steps = (end - origin) // HOUR
            actual = series.window(start, steps - skip)
            for model in models:
                band = model.forecast(history, steps)
                key = (model.name, horizon)
                errors.setdefault(key, []).append(band.p50[skip:] - actual)
                inside.setdefault(key, []).append(
                    ((band.p10[skip:] <= actual) & (actual <= band.p90[skip:])).astype(float)
                )
                counts[key] = counts.get(key, 0) + 1
        if progress is not None:
            progress(done + 1, len(starts))
    rows = []
    for horizon in horizons:
        for model in models:
            key = (model.name, horizon)
            if key not in errors:
                continue
            e = np.concatenate(errors[key])
            rows.append(
                BacktestRow(
                    model=model.name,
                    horizon=horizon,
                    forecasts=counts[key],
                    hours=len(e),
                    mae=float(np.abs(e).mean()),
                    rmse=float(np.sqrt((e**2).mean())),
                    coverage_p10_p90=float(np.concatenate(inside[key]).mean()),
                )
            )
    return rows


def format_table(rows: Sequence[BacktestRow]) -> str:
    lines = [
        f"{'horizon':<9} {'model':<20} {'origins':>7} {'hours':>6} {'MAE':>8} {'RMSE':>8} "
        f"{'P10-P90':>8}",
    ]
    for r in rows:
        lines.append(
            f"{r.horizon:<9} {r.model:<20} {r.forecasts:>7} {r.hours:>6} {r.mae:>8.2f} "
            f"{r.rmse:>8.2f} {r.coverage_p10_p90:>7.1%}"
        )
    return "\n".join(lines)


def timed_backtest(
    series: HourlySeries, models: Sequence[PriceModel] | None = None, **options: object
) -> tuple[list[BacktestRow], float]:
    """`run_backtest` and its wall time in seconds."""
    started = time.perf_counter()
    rows = run_backtest(series, models, **options)  # type: ignore[arg-type]
    return rows, time.perf_counter() - started
