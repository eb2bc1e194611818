"""The optimiser as a plane service: plan a site from its live state and stored prices, keep the
plans, dispatch one as the site's schedule.

`OptimiserService.optimise` reads the site's ratings and latest SoC (`SiteStates`, the fleet's
view the exchange uses too), the prices of the horizon (`PriceHistory`: the stored day-ahead
prices, or a `Forecaster` over the history before the start), the site's positions (its filled
orders on the internal exchange, `CommittedEnergy`), builds a `Problem` and solves it in a worker
thread. `dispatch` pushes the plan's schedule to the site through the fleet
(`submit_schedule`); the fleet stores it and sends it when the site is connected.

Plans are kept **in memory** (the newest `keep_per_site` per site): they are cheap to recompute
and go stale within hours; what matters afterwards, the dispatched schedule, is stored by the
fleet (origin `optimiser:<plan_id>`). Orders are proposed, never placed, here.

Errors (besides the model's `InvalidProblemError` for bad overrides):

    OptimiserError
     +-- UnknownSiteError (fleet's, re-raised)   the site never connected
     +-- SiteNotReadyError                       ratings or a fresh SoC reading missing
     +-- NoPricesError                           no complete prices for the horizon
     +-- UnknownPlanError                        no plan with that id (or it was dropped)
     +-- AlreadyDispatchedError                  the plan was dispatched before
"""

from __future__ import annotations

import asyncio
import math
import threading
import uuid
from collections import OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields, replace
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Literal, Protocol

from control_plane.exchange.checks import CommittedEnergy, SiteStates
from control_plane.exchange.models import NewOrder, Side
from control_plane.fleet.models import NewSchedule, ScheduleRecord, UnknownSiteError
from control_plane.market.models import PricePoint, Resolution

from .backtest import Forecaster, NotEnoughHistoryError, PriceHistory, seasonal_naive
from .model import Battery, InvalidProblemError, OptimiserError, Plan, Problem, optimise

__all__ = [
    "AlreadyDispatchedError",
    "BatteryDefaults",
    "NoPricesError",
    "OptimiseRequest",
    "OptimiserService",
    "SiteNotReadyError",
    "StoredPlan",
    "UnknownPlanError",
]

PriceSourceName = Literal["market", "forecast"]
OVERRIDABLE = frozenset(f.name for f in fields(Battery))


class SiteNotReadyError(OptimiserError):
    pass


class NoPricesError(OptimiserError):
    pass


class UnknownPlanError(OptimiserError):
    def __init__(self, plan_id: str) -> None:
        super().__init__(f"no plan {plan_id!r} (unknown, or dropped: plans are kept in memory)")


class AlreadyDispatchedError(OptimiserError):
    pass


class ScheduleSink(Protocol):
    """Where a plan's schedule goes (the fleet service)."""

    async def submit_schedule(self, *, site_id: str, new: NewSchedule) -> ScheduleRecord: ...


@dataclass(frozen=True, slots=True, kw_only=True)
class BatteryDefaults:
    """What the site does not report: limits (DESIGN 5 defaults) and economics."""

    min_soc_pct: float = 15.0
    max_soc_pct: float = 90.0
    charge_efficiency: float = 0.95
    discharge_efficiency: float = 0.95
    degradation_eur_per_mwh: float = 5.0
    max_soc_age: timedelta = timedelta(minutes=15)
    """An older SoC reading is too stale to plan from."""


@dataclass(frozen=True, slots=True, kw_only=True)
class OptimiseRequest:
    site_id: str
    zone: str
    horizon_hours: int = 24
    price_source: PriceSourceName = "market"
    start: datetime | None = None
    """First interval; None = the next quarter-hour (or hour, for hourly prices)."""
    end_soc_pct: float | None = None
    battery: Mapping[str, float | None] = field(default_factory=dict)
    """Overrides of the site's battery (any `Battery` field)."""
    market: str | None = None
    portfolio: str | None = None
    """With `market`: the exchange market and portfolio of the proposed orders."""


@dataclass(slots=True, kw_only=True)
class StoredPlan:
    plan_id: str
    site_id: str
    created_at: datetime
    request: OptimiseRequest
    plan: Plan
    orders: list[NewOrder]
    dispatched: ScheduleRecord | None = None


class OptimiserService:
    def __init__(
        self,
        *,
        sites: SiteStates,
        prices: Callable[[], PriceHistory | None],
        schedules: ScheduleSink,
        committed: CommittedEnergy | None = None,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
        forecaster: Forecaster = seasonal_naive,
        forecast_history_days: int = 8,
        defaults: BatteryDefaults | None = None,
        keep_per_site: int = 50,
        grid_limit_kw: Callable[[str, datetime, datetime], float | None] | None = None,
    ) -> None:
        """`forecast_history_days`: how much price history `forecaster` gets (seasonal-naive
        needs a week; the ridge model `forecasting.HISTORY_DAYS`)."""
        self._sites = sites
        self._prices = prices
        self._schedules = schedules
        self._committed = committed
        self._clock = clock
        self._forecaster = forecaster
        self._history_days = forecast_history_days
        self._defaults = defaults or BatteryDefaults()
        self._keep = keep_per_site
        self._grid_limit_kw = grid_limit_kw  # the tightest grid constraint in a window
        self._plans: OrderedDict[str, StoredPlan] = OrderedDict()
        self._lock = threading.Lock()

    async def optimise(self, request: OptimiseRequest) -> StoredPlan:
        stored = await asyncio.to_thread(self._optimise, request)
        with self._lock:
            self._plans[stored.plan_id] = stored
            mine = [p for p in self._plans.values() if p.site_id == stored.site_id]
            for old in mine[: max(0, len(mine) - self._keep)]:
                del self._plans[old.plan_id]
        return stored

    def plans(self, *, site_id: str | None = None) -> list[StoredPlan]:
        """Newest first."""
        with self._lock:
            found = [p for p in self._plans.values() if site_id is None or p.site_id == site_id]
        return found[::-1]

    def get(self, plan_id: str) -> StoredPlan:
        with self._lock:
            stored = self._plans.get(plan_id)
        if stored is None:
            raise UnknownPlanError(plan_id)
        return stored

    async def dispatch(self, plan_id: str) -> StoredPlan:
        """Push the plan's schedule to its site (once)."""
        stored = self.get(plan_id)
        with self._lock:
            if stored.dispatched is not None:
                raise AlreadyDispatchedError(
                    f"plan {plan_id} was dispatched already as schedule version "
                    f"{stored.dispatched.schedule.version}; make a new plan to change it"
                )
        record = await self._schedules.submit_schedule(
            site_id=stored.site_id, new=stored.plan.to_schedule(origin=f"optimiser:{plan_id}")
        )
        stored.dispatched = record
        return stored

    # -- planning (worker thread) ----------------------------------------------------------

    def _optimise(self, request: OptimiseRequest) -> StoredPlan:
        if not 1 <= request.horizon_hours <= 168:
            raise InvalidProblemError(f"horizon_hours must be 1..168, got {request.horizon_hours}")
        now = self._clock()
        battery, soc = self._battery(request, now)
        start = request.start or now
        prices, resolution, start = self._horizon_prices(request, start)
        minutes: Literal[15, 60] = 15 if resolution is Resolution.PT15M else 60
        end = start + len(prices) * resolution.delta
        limit = self._grid_limit_kw(request.site_id, start, end) if self._grid_limit_kw else None
        if limit is not None and limit <= 0:
            raise SiteNotReadyError(
                f"site {request.site_id} may not exchange power in the horizon (grid "
                "constraint of 0 kW, e.g. maintenance): see /api/grid/constraints"
            )
        if limit is not None and limit < (battery.grid_limit_kw or math.inf):
            battery = replace(battery, grid_limit_kw=limit)
        problem = Problem(
            battery=battery,
            start=start,
            interval_minutes=minutes,
            prices_eur_per_mwh=prices,
            initial_soc_pct=soc,
            end_soc_pct=request.end_soc_pct,
            positions_mw=self._positions(request.site_id, start, end, resolution),
        )
        plan = optimise(problem)
        plan_id = uuid.uuid4().hex
        orders: list[NewOrder] = []
        if request.market and request.portfolio:
            orders = plan.proposed_orders(
                market=request.market, portfolio=request.portfolio, site=request.site_id
            )
        return StoredPlan(
            plan_id=plan_id,
            site_id=request.site_id,
            created_at=now,
            request=request,
            plan=plan,
            orders=orders,
        )

    def _battery(self, request: OptimiseRequest, now: datetime) -> tuple[Battery, float]:
        unknown = sorted(set(request.battery) - OVERRIDABLE)
        if unknown:
            raise InvalidProblemError(
                f"battery overrides {unknown} are not battery fields; known: "
                f"{', '.join(sorted(OVERRIDABLE))}"
            )
        state = self._sites.site_state(request.site_id)
        if state is None:
            raise UnknownSiteError(request.site_id)
        d = self._defaults
        values: dict[str, float | None] = {
            "capacity_kwh": state.capacity_kwh,
            "max_charge_kw": state.max_charge_kw,
            "max_discharge_kw": state.max_discharge_kw,
            "min_soc_pct": d.min_soc_pct,
            "max_soc_pct": d.max_soc_pct,
            "charge_efficiency": d.charge_efficiency,
            "discharge_efficiency": d.discharge_efficiency,
            "degradation_eur_per_mwh": d.degradation_eur_per_mwh,
        }
        values.update(request.battery)
        missing = [
            k for k in ("capacity_kwh", "max_charge_kw", "max_discharge_kw") if not values[k]
        ]
        if missing:
            raise SiteNotReadyError(
                f"site {request.site_id} has not reported {', '.join(missing)} (the agent's "
                "Hello ratings); pass them as battery overrides"
            )
        battery = Battery(**values)  # type: ignore[arg-type]
        if state.soc_pct is None or state.measured_at is None:
            raise SiteNotReadyError(f"site {request.site_id} has no SoC reading yet")
        age = now - state.measured_at
        if age > d.max_soc_age:
            raise SiteNotReadyError(
                f"site {request.site_id}: the latest SoC reading is from "
                f"{state.measured_at.isoformat()} ({age.total_seconds() / 60:.0f} min old, more "
                f"than {d.max_soc_age.total_seconds() / 60:.0f} min): the site is not reporting"
            )
        return battery, min(100.0, max(0.0, state.soc_pct))

    def _horizon_prices(
        self, request: OptimiseRequest, start: datetime
    ) -> tuple[list[float], Resolution, datetime]:
        history = self._prices()
        if history is None:
            raise NoPricesError("no price store is configured in this plane (market feed)")
        horizon = timedelta(hours=request.horizon_hours)
        if request.price_source == "market":
            problems: list[str] = []
            for res in (Resolution.PT15M, Resolution.PT60M):
                s = _ceil(start, res)
                points = _one_per_start(history.prices(request.zone, s, s + horizon, res))
                n = int(horizon / res.delta)
                if _complete(points, s, res, n):
                    return [p.price_eur_per_mwh for p in points], res, s
                last = points[-1].end.isoformat() if points else "none stored"
                problems.append(f"{res}: {len(points)} of {n} intervals (until {last})")
            raise NoPricesError(
                f"no complete day-ahead prices for zone {request.zone} from {start.isoformat()} "
                f"for {request.horizon_hours} h ({'; '.join(problems)}); shorten the horizon "
                "or use price_source forecast"
            )
        past = history.prices(
            request.zone, start - timedelta(days=self._history_days), start + timedelta(hours=1)
        )
        if not past:
            raise NoPricesError(
                f"no price history for zone {request.zone} in the {self._history_days} days before "
                f"{start.isoformat()}: the forecast needs it"
            )
        res = past[-1].resolution
        s = _ceil(start, res)
        before = _one_per_start([p for p in past if p.start < s and p.resolution == res])
        try:
            forecast = self._forecaster(before, s, int(horizon / res.delta))
        except NotEnoughHistoryError as exc:
            raise NoPricesError(f"forecast for zone {request.zone}: {exc}") from None
        return forecast, res, s

    def _positions(
        self, site_id: str, start: datetime, end: datetime, res: Resolution
    ) -> list[float]:
        """Filled MW per interval, + bought (BUY), - sold; an hour averages its quarters."""
        n = int((end - start) / res.delta)
        if self._committed is None:
            return [0.0] * n
        per_quarter: dict[datetime, Decimal] = {}
        for order in self._committed.site_orders(
            site=site_id, delivery_from=start, delivery_to=end
        ):
            signed = order.filled_mw if order.side is Side.BUY else -order.filled_mw
            for quarter in order.delivery.quarters():
                per_quarter[quarter.start] = per_quarter.get(quarter.start, Decimal(0)) + signed
        quarters = res.minutes // 15
        out: list[float] = []
        for i in range(n):
            s = start + i * res.delta
            total = sum(
                (
                    per_quarter.get(s + timedelta(minutes=15 * q), Decimal(0))
                    for q in range(quarters)
                ),
                Decimal(0),
            )
            out.append(float(total) / quarters)
        return out


def _ceil(moment: datetime, res: Resolution) -> datetime:
    seconds = res.minutes * 60
    ts = moment.astimezone(UTC).timestamp()
    return datetime.fromtimestamp(math.ceil(ts / seconds) * seconds, UTC)


def _one_per_start(points: list[PricePoint]) -> list[PricePoint]:
    """One price per interval: the first the store lists (several sources may hold it)."""
    seen: dict[datetime, PricePoint] = {}
    for p in points:
        seen.setdefault(p.start, p)
    return sorted(seen.values(), key=lambda p: p.start)


def _complete(points: list[PricePoint], start: datetime, res: Resolution, n: int) -> bool:
    if len(points) != n:
        return False
    return all(p.start == start + i * res.delta for i, p in enumerate(points))
