"""Forecast models: price (seasonal naive, ridge regression), load, solar and wind, each with
P10/P50/P90. Pure: numpy (and pandas for the local calendar), no I/O, no clock.

**The price history** is an `HourlySeries`: one price per UTC hour, no gaps (a gap in the
input is filled from the same hour a week earlier, else the last price, and counted in
`filled`), plus the zone's time zone for the calendar. Prices of 15- or 30-minute products are
averaged to the hour where the hour has no hourly price (`hourly_from_points`). The models are
hourly; 15-minute output repeats each hour's figures per quarter (the service does that).

**Information set.** A forecast's origin is the end of the history it is given: a model sees
`history.values` and nothing else, and the back-test hands it `series.before(origin)`, the
prices of deliveries that started before the origin. That is conservative: at the day-ahead
gate (12:00 local) the prices of the whole current day are in fact already published (the
previous day's auction), so a production forecast could use 12 more hours.

**Price models** (`PriceModel.forecast(history, steps)` -> the next `steps` hours):

- `SeasonalNaive(period_h)`: the price of the same hour `period_h` hours earlier, going back
  further in whole periods until the hour is known (168 = same hour last week; 24 = same hour
  of the latest day known, i.e. yesterday for intraday, the day before for day-ahead at 12:00).
  The back-test picked 24 as the baseline (README "Forecasts": MAE 46 vs 58 EUR/MWh
  day-ahead on the Belgian file; both are reported).
- `RidgePrice`: ridge regression, refitted at each origin on the last `train_days` days of
  the history only. Training rows are "backcasts": one origin per day at the same hour of day
  as the real origin, the same horizon, features built from the prices before that origin
  only. Features of a target hour: the latest known price of the same hour of day, the price a
  week earlier, the mean and the last price of the 24 h before the origin, local hour of day
  and weekday (one-hot) and the hour-of-day one-hots times the 24 h mean (the daily shape
  scales with the price level: 2022's crisis prices). No holiday calendar, and no
  load/solar/wind features: the Belgian price file has none, and the plane has no source of
  them yet (the ones below are profiles, they carry no information a calendar does not).

**Quantiles** are empirical: the model's residuals (actual - point forecast) over the last
`calibration_days` backcast origins (out-of-sample: the seasonal naive by construction, the
ridge refitted without those days), per local hour of day when every hour has at least
`MIN_PER_HOUR` residuals, else pooled. P50 = the point forecast (adding the median residual
made the MAE worse: 46 vs 39 EUR/MWh day-ahead), P10/P90 = point + the 10 %/90 % residual
quantiles, clamped so P10 <= P50 <= P90. The back-test reports their coverage: under 80 %
day-ahead in 2022's volatile months (README "Forecasts").

**Load, solar, wind** (`load_forecast`, `solar_forecast`, `wind_forecast`) are documented
profiles, not weather models: the plane has no weather or load feed. Per zone a
`ZoneProfile` holds a representative location and approximate installed capacities / mean load
(round 2023 figures, to be overridden where better numbers are known):

- solar = capacity x clear-sky index x clear-sky irradiance (Haurwitz model, sun position from
  latitude, longitude, day of year and time) / 1000 W/m2; the clear-sky index is the ratio of
  recent actuals to clear-sky where actuals are given, else central-European climatology
  (P10/P50/P90 = 0.2 / 0.6 / 0.95);
- wind = climatology (capacity x monthly mean capacity factor, P10/P90 from a typical spread),
  blended with persistence of the last actual when actuals are given (weight e^(-lead/6 h));
- load = mean load x a seasonal profile (month, weekday/weekend, local hour of day; a typical
  European shape), P10/P90 = +-8 %; with actuals: the same hour last week, scaled.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Final, Protocol
from zoneinfo import ZoneInfo

import numpy as np
import numpy.typing as npt

from control_plane.market.models import PricePoint, Resolution

__all__ = [
    "HOUR",
    "MIN_PER_HOUR",
    "ZONE_PROFILES",
    "Band",
    "HourlySeries",
    "InsufficientHistoryError",
    "PriceModel",
    "RidgePrice",
    "SeasonalNaive",
    "ZoneProfile",
    "default_price_model",
    "hourly_from_points",
    "load_forecast",
    "local_calendar",
    "solar_forecast",
    "wind_forecast",
]

HOUR: Final = timedelta(hours=1)
MIN_PER_HOUR: Final = 20
"""Residuals per hour of day needed for per-hour quantiles (else pooled)."""

Floats = npt.NDArray[np.float64]
Ints = npt.NDArray[np.int64]


class InsufficientHistoryError(ValueError):
    """Too little price history for a model; says how much it has and needs."""

    def __init__(self, model: str, have_h: int, need_h: int) -> None:
        self.have_h = have_h
        self.need_h = need_h
        super().__init__(
            f"{model} needs at least {need_h} hours ({need_h / 24:g} days) of price history "
            f"before the origin, got {have_h} hours ({have_h / 24:.1f} days)"
        )


@dataclass(frozen=True, slots=True, eq=False)
class HourlySeries:
    """One value per UTC hour from `start`, no gaps; `timezone` is the zone's (calendar)."""

    start: datetime
    values: Floats
    timezone: str = "UTC"
    filled: int = 0
    """Hours missing in the input and filled (see module docs)."""

    def __post_init__(self) -> None:
        if self.start.tzinfo is None or self.start.utcoffset() != timedelta(0):
            raise ValueError(f"HourlySeries.start must be UTC, got {self.start!r}")
        if self.start.minute or self.start.second or self.start.microsecond:
            raise ValueError(f"HourlySeries.start must be on the hour, got {self.start:%H:%M:%S}")
        if self.values.ndim != 1 or not np.all(np.isfinite(self.values)):
            raise ValueError("HourlySeries.values must be a 1-d array of finite numbers")

    def __len__(self) -> int:
        return len(self.values)

    @property
    def end(self) -> datetime:
        """End of the last hour: the origin of a forecast from this history."""
        return self.start + len(self.values) * HOUR

    def time(self, index: int) -> datetime:
        return self.start + index * HOUR

    def index(self, when: datetime) -> int:
        """Hours from `start` to `when` (which must be on the hour)."""
        offset = when.astimezone(UTC) - self.start
        if offset % HOUR:
            raise ValueError(f"{when.isoformat()} is not on the hour")
        return offset // HOUR

    def tail(self, hours: int) -> HourlySeries:
        """The last `hours` hours (all if fewer)."""
        keep = min(hours, len(self.values))
        first = len(self.values) - keep
        return HourlySeries(self.time(first), self.values[first:], self.timezone, self.filled)

    def before(self, origin: datetime) -> HourlySeries:
        """The history known at `origin`: the hours that start before it."""
        n = max(0, min(len(self.values), self.index(origin)))
        return HourlySeries(self.start, self.values[:n], self.timezone, self.filled)

    def window(self, start: datetime, hours: int) -> Floats:
        """`hours` values from `start` (all inside the series)."""
        i = self.index(start)
        if i < 0 or i + hours > len(self.values):
            raise ValueError(f"{hours} h from {start.isoformat()} are not all in the series")
        return self.values[i : i + hours]


def hourly_from_points(points: Iterable[PricePoint], *, timezone: str = "UTC") -> HourlySeries:
    """The points as an hourly series: hourly prices as they are, 15/30-minute ones averaged
    per hour where the hour has no hourly price, gaps filled (counted in `filled`)."""
    hourly: dict[datetime, float] = {}
    finer: dict[datetime, list[float]] = defaultdict(list)
    for p in points:
        hour = p.start.replace(minute=0, second=0, microsecond=0)
        if p.resolution is Resolution.PT60M:
            hourly[hour] = p.price_eur_per_mwh
        else:
            finer[hour].append(p.price_eur_per_mwh)
    for hour, prices in finer.items():
        hourly.setdefault(hour, sum(prices) / len(prices))
    if not hourly:
        raise InsufficientHistoryError("a forecast", 0, 1)
    first = min(hourly)
    n: int = (max(hourly) - first) // HOUR + 1
    values = np.full(n, np.nan)
    for hour, price in hourly.items():
        values[(hour - first) // HOUR] = price
    filled = int(np.isnan(values).sum())
    for gap in np.flatnonzero(np.isnan(values)):  # never the first hour (it has a price)
        week = values[gap - 168] if gap >= 168 else np.nan
        values[gap] = week if np.isfinite(week) else values[gap - 1]
    return HourlySeries(first, values, timezone, filled)


def local_calendar(start: datetime, hours: int, timezone: str) -> tuple[Ints, Ints, Ints]:
    """(local hour of day, weekday 0=Monday, month 1-12) of `hours` UTC hours from `start`."""
    tz = ZoneInfo(timezone)

    def offset_min(i: int) -> int:
        delta = (start + i * HOUR).astimezone(tz).utcoffset()
        return 0 if delta is None else int(delta.total_seconds()) // 60

    offsets = np.empty(hours, dtype=np.int64)
    for day in range(0, hours, 24):  # one look-up per day, per hour only on a DST day
        last = min(day + 23, hours - 1)
        first_offset = offset_min(day)
        if first_offset == offset_min(last):
            offsets[day : last + 1] = first_offset
        else:
            offsets[day : last + 1] = [offset_min(i) for i in range(day, last + 1)]
    epoch_min = int(start.timestamp()) // 60 + 60 * np.arange(hours, dtype=np.int64) + offsets
    days = epoch_min // 1440
    months = days.astype("datetime64[D]").astype("datetime64[M]").astype(np.int64) % 12 + 1
    return (epoch_min // 60) % 24, (days + 3) % 7, months  # 1970-01-01 was a Thursday


@dataclass(frozen=True, slots=True, eq=False)
class Band:
    """A forecast of one quantity: P10/P50/P90 per hour from `start`."""

    quantity: str
    unit: str
    model: str
    start: datetime
    p10: Floats
    p50: Floats
    p90: Floats
    training_start: datetime | None = None
    training_end: datetime | None = None
    notes: tuple[str, ...] = field(default=())

    def __post_init__(self) -> None:
        if not (len(self.p10) == len(self.p50) == len(self.p90)):
            raise ValueError("p10, p50 and p90 must have the same length")

    @property
    def hours(self) -> int:
        return len(self.p50)


# -- prices ---------------------------------------------------------------------------------


class PriceModel(Protocol):
    @property
    def name(self) -> str: ...

    @property
    def min_history_h(self) -> int: ...

    def forecast(self, history: HourlySeries, steps: int) -> Band:
        """The `steps` hours after `history.end`, from `history` alone."""
        ...


def _same_hour_lag(targets: Ints, origin: int, period: int) -> Ints:
    """Index of the latest known value `k * period` hours before each target (k >= 1)."""
    k = (targets - origin) // period + 1
    return targets - k * period


def _quantile_band(
    point: Floats,
    target_hours: Ints,
    residuals: Floats,
    residual_hours: Ints,
) -> tuple[Floats, Floats, Floats]:
    """P10/P50/P90 = point + residual quantiles (per hour of day if every hour has enough)."""
    if len(residuals) == 0:
        return point.copy(), point.copy(), point.copy()
    counts = np.bincount(residual_hours, minlength=24)
    if counts.min() >= MIN_PER_HOUR:
        table = np.empty((24, 3))
        for h in range(24):
            table[h] = np.quantile(residuals[residual_hours == h], (0.1, 0.5, 0.9))
        q = table[target_hours]
    else:
        q = np.tile(np.quantile(residuals, (0.1, 0.5, 0.9)), (len(point), 1))
    return point + np.minimum(q[:, 0], 0.0), point.copy(), point + np.maximum(q[:, 2], 0.0)


@dataclass(frozen=True, slots=True)
class SeasonalNaive:
    """The price `period_h` (x k) hours earlier; residual-quantile bands (module docs)."""

    period_h: int = 24
    calibration_days: int = 28

    @property
    def name(self) -> str:
        return f"seasonal_naive_{self.period_h}h"

    @property
    def min_history_h(self) -> int:
        return self.period_h + 24

    def _point(self, values: Floats, origin: int, steps: int) -> Floats:
        targets = np.arange(origin, origin + steps, dtype=np.int64)
        return values[_same_hour_lag(targets, origin, self.period_h)]

    def forecast(self, history: HourlySeries, steps: int) -> Band:
        if len(history) < self.min_history_h:
            raise InsufficientHistoryError(self.name, len(history), self.min_history_h)
        history = history.tail(24 * (self.calibration_days + 1) + self.period_h)
        n = len(history)
        values = history.values
        point = self._point(values, n, steps)
        hours, _, _ = local_calendar(history.start, n + steps, history.timezone)
        residuals: list[Floats] = []
        residual_hours: list[Ints] = []
        for d in range(1, self.calibration_days + 1):
            o = n - 24 * d
            if o < self.period_h:
                break
            m = min(steps, n - o)
            backcast = self._point(values, o, m)
            residuals.append(values[o : o + m] - backcast)
            residual_hours.append(hours[o : o + m])
        p10, p50, p90 = _quantile_band(
            point,
            hours[n:],
            np.concatenate(residuals) if residuals else np.empty(0),
            np.concatenate(residual_hours) if residual_hours else np.empty(0, np.int64),
        )
        return Band(
            "price",
            "EUR/MWh",
            self.name,
            history.end,
            p10,
            p50,
            p90,
            training_start=history.time(max(0, n - 24 * self.calibration_days - self.period_h)),
            training_end=history.end,
        )


@dataclass(frozen=True, slots=True)
class RidgePrice:
    """Ridge regression on lags and calendar, refitted per origin (module docs)."""

    train_days: int = 56
    min_train_days: int = 7
    alpha: float = 1.0
    calibration_days: int = 14
    name: str = "ridge"

    @property
    def min_history_h(self) -> int:
        # a week-ago lag of the first training origin's horizon, plus min_train_days origins
        return 24 * (14 + self.min_train_days)

    def _features(
        self, values: Floats, origin: int, targets: Ints, hours: Ints, weekdays: Ints
    ) -> Floats:
        """Rows of features for `targets` from values[:origin] (plus the calendar)."""
        day_lag = values[_same_hour_lag(targets, origin, 24)]
        week_lag = values[_same_hour_lag(targets, origin, 168)]
        recent = values[origin - 24 : origin]
        mean24 = np.full(len(targets), recent.mean())
        last = np.full(len(targets), values[origin - 1])
        hour_1h = np.eye(24)[hours[targets]]
        day_1h = np.eye(7)[weekdays[targets]]
        return np.column_stack(
            [day_lag, week_lag, mean24, last, hour_1h, day_1h, hour_1h * mean24[:, None]]
        )

    def forecast(self, history: HourlySeries, steps: int) -> Band:
        if len(history) < self.min_history_h:
            raise InsufficientHistoryError(self.name, len(history), self.min_history_h)
        history = history.tail(24 * (self.train_days + 15))
        n = len(history)
        values = history.values
        hours, weekdays, _ = local_calendar(history.start, n + steps, history.timezone)
        rows: list[Floats] = []
        ys: list[Floats] = []
        tgt_hours: list[Ints] = []
        first_origin = n
        for d in range(1, self.train_days + 1):
            o = n - 24 * d
            if o < 24 * 14:
                break
            first_origin = o
            targets = np.arange(o, min(o + steps, n), dtype=np.int64)
            rows.append(self._features(values, o, targets, hours, weekdays))
            ys.append(values[targets])
            tgt_hours.append(hours[targets])
        x = np.vstack(rows)
        y = np.concatenate(ys)
        coef, x_mean, x_scale, y_mean = _ridge_fit(x, y, self.alpha)
        targets = np.arange(n, n + steps, dtype=np.int64)
        point = _ridge_predict(
            self._features(values, n, targets, hours, weekdays), coef, x_mean, x_scale, y_mean
        )
        # Residuals of the most recent `calibration_days` backcasts (rows are newest first),
        # out-of-sample when there are enough older rows to fit on without them; in-sample
        # residuals are too small (the first version covered 68 %, not 80 %).
        calib_days = min(self.calibration_days, len(rows) - self.min_train_days)
        if calib_days >= self.min_train_days:
            calib = sum(len(r) for r in rows[:calib_days])
            held_out = _ridge_fit(x[calib:], y[calib:], self.alpha)
            residuals = y[:calib] - _ridge_predict(x[:calib], *held_out)
        else:
            calib = len(y)
            residuals = y - _ridge_predict(x, coef, x_mean, x_scale, y_mean)
        p10, p50, p90 = _quantile_band(
            point, hours[n:], residuals, np.concatenate(tgt_hours)[:calib]
        )
        return Band(
            "price",
            "EUR/MWh",
            self.name,
            history.end,
            p10,
            p50,
            p90,
            training_start=history.time(first_origin - 24 * 14),
            training_end=history.end,
        )


def _ridge_fit(x: Floats, y: Floats, alpha: float) -> tuple[Floats, Floats, Floats, float]:
    """Ridge on standardised features with an unpenalised intercept (centred data)."""
    x_mean = x.mean(axis=0)
    x_scale = x.std(axis=0)
    x_scale[x_scale == 0] = 1.0
    z = (x - x_mean) / x_scale
    y_mean = float(y.mean())
    gram = z.T @ z + alpha * np.eye(z.shape[1])
    coef = np.linalg.solve(gram, z.T @ (y - y_mean))
    return coef, x_mean, x_scale, y_mean


def _ridge_predict(
    x: Floats, coef: Floats, x_mean: Floats, x_scale: Floats, y_mean: float
) -> Floats:
    result: Floats = ((x - x_mean) / x_scale) @ coef + y_mean
    return result


def default_price_model() -> PriceModel:
    """The model the service uses (the back-test's best, README "Forecasts")."""
    return RidgePrice()


# -- load, solar, wind ----------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ZoneProfile:
    """A zone's representative location and approximate sizes (round 2023 figures)."""

    latitude: float
    longitude: float
    solar_capacity_mw: float
    wind_capacity_mw: float
    mean_load_mw: float


ZONE_PROFILES: Final[dict[str, ZoneProfile]] = {
    "AT": ZoneProfile(47.6, 14.1, 6_000, 3_900, 7_200),
    "DE_LU": ZoneProfile(51.2, 10.4, 82_000, 69_000, 52_000),
    "CH": ZoneProfile(46.8, 8.2, 6_000, 100, 6_500),
    "IT_NORD": ZoneProfile(45.5, 9.5, 12_000, 300, 18_000),
    "BE": ZoneProfile(50.6, 4.6, 8_000, 5_000, 9_300),
    "NL": ZoneProfile(52.2, 5.5, 23_000, 11_000, 12_500),
    "FR": ZoneProfile(46.6, 2.4, 19_000, 23_000, 51_000),
    "CZ": ZoneProfile(49.8, 15.5, 3_500, 300, 7_000),
    "HU": ZoneProfile(47.2, 19.5, 5_500, 300, 5_000),
    "SI": ZoneProfile(46.1, 14.8, 1_000, 5, 1_500),
    "PL": ZoneProfile(52.0, 19.4, 17_000, 9_500, 19_500),
}
"""Approximate: location = a central point of the zone; capacities and mean load rounded from
public 2023 statistics. A zone not listed gets no load/solar/wind forecast."""


def _hour_starts(start: datetime, hours: int) -> list[datetime]:
    return [start + i * HOUR for i in range(hours)]


def clear_sky_ghi(latitude: float, longitude: float, times: Sequence[datetime]) -> Floats:
    """Clear-sky global horizontal irradiance (W/m2, Haurwitz) at the middle of each hour."""
    result = np.zeros(len(times))
    for i, t in enumerate(times):
        mid = t + HOUR / 2
        day = mid.timetuple().tm_yday
        gamma = 2 * math.pi / 365 * (day - 1 + (mid.hour - 12) / 24)
        decl = (
            0.006918
            - 0.399912 * math.cos(gamma)
            + 0.070257 * math.sin(gamma)
            - 0.006758 * math.cos(2 * gamma)
            + 0.000907 * math.sin(2 * gamma)
        )
        eqtime = 229.18 * (
            0.000075
            + 0.001868 * math.cos(gamma)
            - 0.032077 * math.sin(gamma)
            - 0.014615 * math.cos(2 * gamma)
            - 0.040849 * math.sin(2 * gamma)
        )
        minutes = mid.hour * 60 + mid.minute + eqtime + 4 * longitude
        hour_angle = math.radians(minutes / 4 - 180)
        lat = math.radians(latitude)
        cos_zenith = math.sin(lat) * math.sin(decl) + math.cos(lat) * math.cos(decl) * math.cos(
            hour_angle
        )
        if cos_zenith > 0.01:
            result[i] = 1098 * cos_zenith * math.exp(-0.057 / cos_zenith)
    return result


def solar_forecast(
    profile: ZoneProfile, start: datetime, hours: int, *, actuals: HourlySeries | None = None
) -> Band:
    """Capacity x clear-sky index x clear-sky irradiance (module docs), MW."""
    clear = clear_sky_ghi(profile.latitude, profile.longitude, _hour_starts(start, hours)) / 1000
    index = np.array([0.2, 0.6, 0.95])
    model = "clear_sky x climatological clear-sky index"
    if actuals is not None and len(actuals) >= 24:
        recent = actuals.values[-72:]
        sky = clear_sky_ghi(
            profile.latitude,
            profile.longitude,
            _hour_starts(actuals.end - len(recent) * HOUR, len(recent)),
        )
        lit = sky > 100
        if lit.sum() >= 6:
            ratios = recent[lit] / (profile.solar_capacity_mw * sky[lit] / 1000)
            index = np.clip(np.quantile(ratios, (0.1, 0.5, 0.9)), 0.0, 1.1)
            model = "clear_sky x recent clear-sky index"
    cap = profile.solar_capacity_mw * clear
    return Band("solar", "MW", model, start, cap * index[0], cap * index[1], cap * index[2])


_WIND_CF_BY_MONTH: Final = np.array(
    [0.32, 0.31, 0.28, 0.23, 0.19, 0.17, 0.17, 0.17, 0.20, 0.25, 0.29, 0.32]
)
"""Typical onshore/offshore mix capacity factor per month in north-west Europe."""


def wind_forecast(
    profile: ZoneProfile,
    start: datetime,
    hours: int,
    *,
    timezone: str = "UTC",
    actuals: HourlySeries | None = None,
) -> Band:
    """Monthly climatology, blended with persistence of the last actual (module docs), MW."""
    _, _, months = local_calendar(start, hours, timezone)
    cf = _WIND_CF_BY_MONTH[months - 1]
    cap = profile.wind_capacity_mw
    p50 = cap * cf
    p10 = cap * cf * 0.25
    p90 = np.minimum(cap * cf * 2.0, cap * 0.9)
    model = "monthly climatology"
    if actuals is not None and len(actuals) and actuals.end <= start:
        lead = np.arange(1, hours + 1) + (start - actuals.end) / HOUR
        weight = np.exp(-lead / 6.0)
        last = float(actuals.values[-1])
        p50 = weight * last + (1 - weight) * p50
        p10 = np.minimum(weight * last * 0.8 + (1 - weight) * p10, p50)
        p90 = np.maximum(weight * last * 1.2 + (1 - weight) * p90, p50)
        model = "persistence blended into monthly climatology"
    return Band("wind", "MW", model, start, p10, p50, p90)


_LOAD_BY_HOUR: Final = np.array(
    [
        *(0.82, 0.78, 0.76, 0.75, 0.76, 0.80, 0.90, 1.00, 1.06, 1.08, 1.09, 1.09),
        *(1.08, 1.07, 1.06, 1.05, 1.05, 1.08, 1.12, 1.11, 1.06, 1.00, 0.93, 0.87),
    ]
)
_LOAD_BY_MONTH: Final = np.array(
    [1.12, 1.10, 1.04, 0.96, 0.92, 0.90, 0.90, 0.88, 0.93, 0.99, 1.07, 1.12]
)
_WEEKEND: Final = 0.85


def load_forecast(
    profile: ZoneProfile,
    start: datetime,
    hours: int,
    *,
    timezone: str = "UTC",
    actuals: HourlySeries | None = None,
) -> Band:
    """Mean load x seasonal profile, or the same hour last week scaled (module docs), MW."""
    hour, weekday, month = local_calendar(start, hours, timezone)
    shape = _LOAD_BY_HOUR[hour] * _LOAD_BY_MONTH[month - 1] * np.where(weekday >= 5, _WEEKEND, 1)
    p50 = profile.mean_load_mw * shape / _LOAD_BY_HOUR.mean()
    model = "seasonal profile"
    spread = 0.08
    if actuals is not None and len(actuals) >= 192 and actuals.end <= start:
        lead = (start - actuals.end) // HOUR
        if lead + hours <= 168:
            base = actuals.values[len(actuals) - 168 + lead : len(actuals) - 168 + lead + hours]
            p50 = base * actuals.values[-24:].mean() / actuals.values[-192:-168].mean()
            model = "same hour last week, scaled to the last day"
            spread = 0.05
    return Band("load", "MW", model, start, p50 * (1 - spread), p50, p50 * (1 + spread))
