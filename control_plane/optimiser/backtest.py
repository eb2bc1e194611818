"""Rolling day-ahead back-test of the optimiser over a price history.

For each delivery day D (local days of the zone: 23, 24 or 25 hours), at the day-ahead gate on
D-1 the desk knows the prices delivered before D (D-1's were published the day before), plans
the horizon starting at D's local midnight (`horizon_hours`: 24 = the day, 36 = the day plus the
next morning, so the plan does not empty the battery at midnight for lack of a future) and
executes the day's part of it; the SoC at the end of the day carries over to the next plan.

Two runs side by side:

- **perfect foresight**: plans with the actual prices (the upper bound of what the battery can
  earn with this optimiser);
- **forecast**: plans with a forecast made from the history before D, and is paid the actual
  prices for the executed plan.

The forecast is pluggable: any `Forecaster`, a callable `(history, origin, horizon) -> prices`
(history: the points before `origin`, oldest first; `horizon`: the number of intervals wanted).
`seasonal_naive` (same interval one week earlier) is the local baseline; the forecast service
plugs in its models the same way. Days the forecaster has too little history for
(`NotEnoughHistoryError`) or with missing prices are skipped and counted.
"""

from __future__ import annotations

import bisect
import math
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, date, datetime, time, timedelta
from typing import Literal, Protocol
from zoneinfo import ZoneInfo

from control_plane.market.models import PricePoint, Resolution, zone

from .model import Battery, InvalidProblemError, Plan, Problem, optimise

__all__ = [
    "BacktestResult",
    "DayResult",
    "Forecaster",
    "InMemoryPriceHistory",
    "NotEnoughHistoryError",
    "PriceHistory",
    "parse_battery",
    "run_backtest",
    "seasonal_naive",
]


class PriceHistory(Protocol):
    """Stored prices of a zone (the feed's store implements it; same shape as its Protocol)."""

    def prices(
        self,
        zone: str,
        start: datetime,
        end: datetime,
        resolution: Resolution | None = None,
    ) -> list[PricePoint]:
        """Points with start in [start, end), oldest first."""
        ...


class InMemoryPriceHistory:
    """`PriceHistory` over a list of points (a CSV file's, or a test's)."""

    def __init__(self, points: Iterable[PricePoint]) -> None:
        self._points = sorted(points, key=lambda p: (p.zone, p.resolution, p.start))

    def prices(
        self,
        zone: str,
        start: datetime,
        end: datetime,
        resolution: Resolution | None = None,
    ) -> list[PricePoint]:
        return [
            p
            for p in self._points
            if p.zone == zone
            and start <= p.start < end
            and (resolution is None or p.resolution == resolution)
        ]


class NotEnoughHistoryError(ValueError):
    """The forecaster cannot forecast from this little history."""


Forecaster = Callable[[Sequence[PricePoint], datetime, int], list[float]]
"""(history before origin, oldest first; origin; number of intervals) -> prices EUR/MWh."""


def seasonal_naive(history: Sequence[PricePoint], origin: datetime, horizon: int) -> list[float]:
    """Each interval's price one week earlier (the weekly profile: weekdays differ from
    weekends); where that lies at or after `origin` (horizons over a week), the forecast's own
    value a week earlier."""
    if not history:
        raise NotEnoughHistoryError("seasonal-naive needs at least one week of history")
    step = history[-1].resolution.delta
    week = timedelta(days=7)
    recent = history[-(int(week / step) + horizon) :]  # all a week back can reach
    by_start = {p.start: p.price_eur_per_mwh for p in recent}
    out: list[float] = []
    for i in range(horizon):
        at = origin + i * step - week
        if at >= origin:
            out.append(out[i - int(week / step)])
            continue
        price = by_start.get(at)
        if price is None:
            raise NotEnoughHistoryError(
                f"seasonal-naive needs the price of {at.isoformat()} (one week before "
                f"{(origin + i * step).isoformat()})"
            )
        out.append(price)
    return out


@dataclass(frozen=True, slots=True)
class DayResult:
    day: date
    perfect_eur: float
    """Revenue minus degradation, perfect foresight."""
    forecast_eur: float
    """Revenue minus degradation at the actual prices, planned with the forecast."""
    perfect_cycles: float
    forecast_cycles: float
    relaxed: int
    """Relaxed constraints in that day's two plans (0 on a healthy run)."""


@dataclass(slots=True)
class BacktestResult:
    zone: str
    battery: Battery
    horizon_hours: int
    days: list[DayResult] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    """One line per day left out, with the reason."""
    solve_seconds: float = 0.0

    @property
    def perfect_eur(self) -> float:
        return sum(d.perfect_eur for d in self.days)

    @property
    def forecast_eur(self) -> float:
        return sum(d.forecast_eur for d in self.days)

    @property
    def ratio(self) -> float:
        """Forecast over perfect-foresight revenue (NaN when perfect earns nothing)."""
        return self.forecast_eur / self.perfect_eur if self.perfect_eur > 0 else math.nan

    def cycles_per_day(self, run: Literal["perfect", "forecast"]) -> float:
        if not self.days:
            return 0.0
        total = sum(d.perfect_cycles if run == "perfect" else d.forecast_cycles for d in self.days)
        return total / len(self.days)

    def summary(self) -> str:
        lines = [
            f"zone {self.zone}, {len(self.days)} days, horizon {self.horizon_hours} h, "
            f"{self.battery.capacity_kwh:g} kWh / {self.battery.max_discharge_kw:g} kW",
            f"perfect foresight  {self.perfect_eur:14,.2f} EUR  "
            f"{self.cycles_per_day('perfect'):.2f} cycles/day",
            f"forecast           {self.forecast_eur:14,.2f} EUR  "
            f"{self.cycles_per_day('forecast'):.2f} cycles/day",
            f"ratio              {self.ratio:14.3f}",
        ]
        if self.skipped:
            lines.append(f"skipped {len(self.skipped)} day(s): first: {self.skipped[0]}")
        relaxed = sum(d.relaxed for d in self.days)
        if relaxed:
            lines.append(f"{relaxed} relaxed constraint(s) in the plans")
        return "\n".join(lines)


def run_backtest(
    *,
    history: PriceHistory,
    zone_code: str,
    battery: Battery,
    start: date | None = None,
    end: date | None = None,
    horizon_hours: int = 24,
    initial_soc_pct: float = 50.0,
    end_soc_pct: float | None = None,
    forecaster: Forecaster = seasonal_naive,
    resolution: Resolution | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> BacktestResult:
    """Back-test the delivery days [start, end) (local days; default: the whole history)."""
    if not 24 <= horizon_hours <= 24 * 7:
        raise InvalidProblemError(f"horizon_hours must be 24..168, got {horizon_hours}")
    z = zone(zone_code)
    tz = ZoneInfo(z.timezone)
    everything = _all(history, z.code, resolution)
    if not everything:
        raise InvalidProblemError(f"no prices for zone {z.code} in the history")
    res = everything[0].resolution
    if res not in (Resolution.PT15M, Resolution.PT60M):
        raise InvalidProblemError(f"the optimiser plans 15 or 60 min intervals, not {res}")
    minutes: Literal[15, 60] = 15 if res is Resolution.PT15M else 60
    first_day = everything[0].start.astimezone(tz).date()
    last_day = (everything[-1].end - timedelta(seconds=1)).astimezone(tz).date()
    day = max(start, first_day) if start else first_day
    stop = min(end, last_day + timedelta(days=1)) if end else last_day + timedelta(days=1)
    by_start = {p.start: p for p in everything}
    point_starts = [p.start for p in everything]
    result = BacktestResult(zone=z.code, battery=battery, horizon_hours=horizon_hours)
    soc = {"perfect": initial_soc_pct, "forecast": initial_soc_pct}
    total = max(0, (stop - day).days)
    done = 0
    while day < stop:
        origin = _local_midnight(day, tz)
        day_end = _local_midnight(day + timedelta(days=1), tz)
        horizon_end = day_end + timedelta(hours=horizon_hours - 24)
        n_day = int((day_end - origin) / res.delta)
        n = int((horizon_end - origin) / res.delta)
        starts = [origin + i * res.delta for i in range(n)]
        actual_points = [by_start.get(s) for s in starts]
        if any(p is None for p in actual_points[:n_day]):
            result.skipped.append(f"{day}: prices missing in the history")
        else:
            # Beyond the history's end the horizon shrinks to what is known.
            known = [p for p in actual_points if p is not None]
            n = len(known) if len(known) < n else n
            actual = [p.price_eur_per_mwh for p in known[:n]]
            past = everything[: bisect.bisect_left(point_starts, origin)]
            try:
                predicted = forecaster(past, origin, n)
            except NotEnoughHistoryError as exc:
                result.skipped.append(f"{day}: {exc}")
                predicted = None
            if predicted is not None:
                if len(predicted) != n:
                    raise InvalidProblemError(
                        f"forecaster returned {len(predicted)} prices for {n} intervals"
                    )
                base = Problem(
                    battery=battery,
                    start=origin,
                    interval_minutes=minutes,
                    prices_eur_per_mwh=actual,
                    initial_soc_pct=soc["perfect"],
                    end_soc_pct=end_soc_pct,
                )
                perfect = optimise(base)
                planned = optimise(
                    replace(base, prices_eur_per_mwh=predicted, initial_soc_pct=soc["forecast"])
                )
                p_eur, p_cyc, soc["perfect"] = _execute(perfect, actual, n_day)
                f_eur, f_cyc, soc["forecast"] = _execute(planned, actual, n_day)
                result.solve_seconds += perfect.solve_seconds + planned.solve_seconds
                result.days.append(
                    DayResult(
                        day=day,
                        perfect_eur=p_eur,
                        forecast_eur=f_eur,
                        perfect_cycles=p_cyc,
                        forecast_cycles=f_cyc,
                        relaxed=len(perfect.relaxed) + len(planned.relaxed),
                    )
                )
        day += timedelta(days=1)
        done += 1
        if progress is not None:
            progress(done, total)
    return result


def _execute(plan: Plan, actual: Sequence[float], n_day: int) -> tuple[float, float, float]:
    """(revenue - degradation at the actual prices, cycles, SoC %) of the plan's first day."""
    b = plan.problem.battery
    h = plan.problem.hours
    c, d = plan.charge_kw[:n_day], plan.discharge_kw[:n_day]
    revenue = sum(p * (dk - ck) * h / 1000.0 for p, ck, dk in zip(actual, c, d, strict=False))
    degradation = b.degradation_eur_per_mwh * h / 1000.0 * (sum(c) + sum(d))
    cycles = h * sum(d) / b.discharge_efficiency / b.capacity_kwh
    soc = min(100.0, max(0.0, plan.soc_pct[n_day - 1]))
    return revenue - degradation, cycles, soc


def _all(history: PriceHistory, zone_code: str, resolution: Resolution | None) -> list[PricePoint]:
    points = history.prices(
        zone_code, datetime(1970, 1, 1, tzinfo=UTC), datetime(9999, 1, 1, tzinfo=UTC), resolution
    )
    resolutions = {p.resolution for p in points}
    if len(resolutions) > 1:
        raise InvalidProblemError(
            f"the history of {zone_code} holds several resolutions "
            f"({', '.join(sorted(resolutions))}); choose one (--resolution)"
        )
    return points


def _local_midnight(day: date, tz: ZoneInfo) -> datetime:
    return datetime.combine(day, time(0), tzinfo=tz).astimezone(UTC)


# -- the battery as a command-line string ----------------------------------------------------

_BATTERY_KEYS = {
    "capacity_kwh": "capacity_kwh",
    "power_kw": None,  # both directions
    "max_charge_kw": "max_charge_kw",
    "max_discharge_kw": "max_discharge_kw",
    "min_soc_pct": "min_soc_pct",
    "max_soc_pct": "max_soc_pct",
    "efficiency": None,  # both directions, each way
    "charge_efficiency": "charge_efficiency",
    "discharge_efficiency": "discharge_efficiency",
    "grid_limit_kw": "grid_limit_kw",
    "degradation_eur_per_mwh": "degradation_eur_per_mwh",
    "max_cycles_per_day": "max_cycles_per_day",
}


def parse_battery(text: str) -> Battery:
    """`capacity_kwh=1000,power_kw=500,efficiency=0.95,...` -> Battery (keys: see above)."""
    values: dict[str, float] = {}
    for part in (p.strip() for p in text.split(",")):
        if not part:
            continue
        key, sep, raw = part.partition("=")
        key = key.strip()
        if not sep or key not in _BATTERY_KEYS:
            raise InvalidProblemError(
                f"battery: {part!r} is not key=value with a known key; known: "
                f"{', '.join(_BATTERY_KEYS)}"
            )
        try:
            values[key] = float(raw)
        except ValueError:
            raise InvalidProblemError(f"battery: {key} must be a number, got {raw!r}") from None
    kwargs: dict[str, float] = {}
    if "power_kw" in values:
        kwargs["max_charge_kw"] = kwargs["max_discharge_kw"] = values.pop("power_kw")
    if "efficiency" in values:
        kwargs["charge_efficiency"] = kwargs["discharge_efficiency"] = values.pop("efficiency")
    kwargs.update(values)
    missing = [k for k in ("capacity_kwh", "max_charge_kw", "max_discharge_kw") if k not in kwargs]
    if missing:
        raise InvalidProblemError(
            f"battery: missing {', '.join(missing)} (power_kw sets both charge and discharge)"
        )
    return Battery(**kwargs)
