"""The optimiser as a plane service: plan a site from its live state and stored prices, keep the
plans, dispatch one as the site's schedule.

`OptimiserService.optimise` reads the site's ratings and latest SoC (`SiteStates`, the fleet's
view the exchange uses too), the prices of the horizon (`PriceHistory`: the stored day-ahead
prices, or a `Forecaster` over the history before the start), the site's positions (its filled
orders on the internal exchange, `CommittedEnergy`), builds a `Problem` and solves it in a worker
thread. `dispatch` pushes the plan's schedule to the site through the fleet
(`submit_schedule`); the fleet stores it and sends it when the site is connected.

Plans are kept **in memory** (the newest `keep_per_site` per site): they are cheap to recompute
and go stale within hours; what matters afterwards, the dispatched schedule and the placed
orders, is stored by the fleet (origin `optimiser:<plan_id>`) and the exchange.

**Orders.** A plan with `market` and `portfolio` proposes orders; they are placed on the
exchange (`OrderPlacer`, the `Exchange`) only when a trader submits them (`submit_orders`) or,
if the desk enabled auto-submission for the portfolio (`set_auto_submit`, a persistent switch
in `store.py`, off unless turned on), when the plan is dispatched. A plan's orders are
submitted **at most once**: the `Submission` is attached to the plan under the lock before the
first order is placed, so a second call (or a dispatch racing a trader) is refused with who
submitted them and when. Orders are placed one by one, in the plan's order, each in a worker
thread (the engine blocks on its commit); each outcome is kept on the plan:

- placed (ACCEPTED, PARTIALLY_FILLED, FILLED) or refused by a pre-trade check (REJECTED with
  its reason; stored by the exchange like any order): a result, the next order follows;
- malformed for the exchange now (`OrderValidationError`, typically a delivery period that
  has passed the gate closure since the plan was made): result NOT_PLACED with the reason,
  nothing stored, the next order follows;
- the store failed or anything unexpected: the submission **stops** there, keeps what was
  placed so far and the error, and `SubmissionFailedError` reports both. The failed order may
  or may not have been committed (a commit can fail after the database applied it), so the
  rest is never placed automatically: the desk checks `GET /api/orders` and places by hand.

Every placement is handed to `on_placed` (the app publishes its events on the WebSocket hub);
a failing callback is logged and does not stop the submission.

Errors (besides the model's `InvalidProblemError` for bad overrides):

    OptimiserError
     +-- UnknownSiteError (fleet's, re-raised)   the site never connected
     +-- SiteNotReadyError                       ratings or a fresh SoC reading missing
     +-- NoPricesError                           no complete prices for the horizon
     +-- UnknownPlanError                        no plan with that id (or it was dropped)
     +-- AlreadyDispatchedError                  the plan was dispatched before
     +-- NoOrdersError                           the plan has no market/portfolio, so no orders
     +-- AlreadySubmittedError                   the plan's orders were submitted before
     +-- SubmissionUnavailableError              no exchange / switch store in this plane
     +-- InvalidPortfolioError                   a switch for an empty or overlong portfolio
     +-- SubmissionFailedError                   the store failed midway; `.submission` says
                                                 what was placed before
"""

from __future__ import annotations

import asyncio
import logging
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
from control_plane.exchange.errors import OrderValidationError
from control_plane.exchange.errors import StoreError as ExchangeStoreError
from control_plane.exchange.models import NewOrder, PlacedOrder, Side
from control_plane.fleet.models import NewSchedule, ScheduleRecord, UnknownSiteError
from control_plane.market.models import PricePoint, Resolution

from .backtest import Forecaster, NotEnoughHistoryError, PriceHistory, seasonal_naive
from .model import Battery, InvalidProblemError, OptimiserError, Plan, Problem, optimise
from .store import MAX_PORTFOLIO_LENGTH, AutoSubmitSwitch

__all__ = [
    "AUTO_SUBMITTER",
    "AlreadyDispatchedError",
    "AlreadySubmittedError",
    "AutoSubmitSwitches",
    "BatteryDefaults",
    "InvalidPortfolioError",
    "NoOrdersError",
    "NoPricesError",
    "OptimiseRequest",
    "OptimiserService",
    "OrderPlacer",
    "SiteNotReadyError",
    "StoredPlan",
    "Submission",
    "SubmissionFailedError",
    "SubmissionUnavailableError",
    "SubmittedOrder",
    "UnknownPlanError",
]

log = logging.getLogger(__name__)

AUTO_SUBMITTER = "auto-submit"
"""`submitted_by` of the orders placed because the portfolio auto-submits."""
NOT_PLACED = "NOT_PLACED"
"""The state of a proposed order the exchange refused as malformed (nothing stored)."""

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


class NoOrdersError(OptimiserError):
    pass


class AlreadySubmittedError(OptimiserError):
    pass


class SubmissionUnavailableError(OptimiserError):
    pass


class InvalidPortfolioError(OptimiserError):
    pass


class SubmissionFailedError(OptimiserError):
    """The submission stopped at an error; `submission` holds what was placed before it."""

    def __init__(self, message: str, *, submission: Submission) -> None:
        super().__init__(message)
        self.submission = submission


class ScheduleSink(Protocol):
    """Where a plan's schedule goes (the fleet service)."""

    async def submit_schedule(self, *, site_id: str, new: NewSchedule) -> ScheduleRecord: ...


class OrderPlacer(Protocol):
    """Where proposed orders are placed (the exchange; blocking, run in a worker thread)."""

    def place_order(self, *, order: NewOrder) -> PlacedOrder: ...


class AutoSubmitSwitches(Protocol):
    """The persistent per-portfolio switches (`store.AutoSubmitStore`; blocking)."""

    def set(self, switch: AutoSubmitSwitch) -> None: ...

    def get(self, portfolio: str) -> AutoSubmitSwitch | None: ...

    def list(self) -> list[AutoSubmitSwitch]: ...


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


@dataclass(frozen=True, slots=True, kw_only=True)
class SubmittedOrder:
    """What became of one proposed order."""

    proposed: NewOrder
    order_id: int | None
    """The exchange's id; None when it was NOT_PLACED (malformed for the exchange)."""
    state: str
    """The order's state after placement (`OrderState` value) or NOT_PLACED."""
    filled_mw: Decimal
    reject_reason: str | None = None
    """Why a pre-trade check REJECTED it, or why it was NOT_PLACED."""


@dataclass(slots=True, kw_only=True)
class Submission:
    """The one submission of a plan's proposed orders (filled in while it runs)."""

    submitted_at: datetime
    submitted_by: str
    results: list[SubmittedOrder] = field(default_factory=list)
    finished: bool = False
    error: str | None = None
    """Why the submission stopped before the last order (None: every order was tried)."""

    @property
    def complete(self) -> bool:
        """Every proposed order was tried (placed, rejected or not placed)."""
        return self.finished and self.error is None


@dataclass(slots=True, kw_only=True)
class StoredPlan:
    plan_id: str
    site_id: str
    created_at: datetime
    request: OptimiseRequest
    plan: Plan
    orders: list[NewOrder]
    dispatched: ScheduleRecord | None = None
    submission: Submission | None = None

    @property
    def portfolio(self) -> str | None:
        """The portfolio of the proposed orders (None: the plan proposes none)."""
        if self.request.market and self.request.portfolio:
            return self.request.portfolio
        return None


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
        orders: OrderPlacer | None = None,
        on_placed: Callable[[PlacedOrder], None] | None = None,
        switches: AutoSubmitSwitches | None = None,
        grid_limit_kw: Callable[[str, datetime, datetime], float | None] | None = None,
    ) -> None:
        """`forecast_history_days`: how much price history `forecaster` gets (seasonal-naive
        needs a week; the ridge model `forecasting.HISTORY_DAYS`). Without `orders` plans
        only propose orders; without `switches` no portfolio auto-submits."""
        self._sites = sites
        self._prices = prices
        self._schedules = schedules
        self._committed = committed
        self._clock = clock
        self._forecaster = forecaster
        self._history_days = forecast_history_days
        self._defaults = defaults or BatteryDefaults()
        self._keep = keep_per_site
        self._orders = orders
        self._on_placed = on_placed
        self._switches = switches
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
        """Push the plan's schedule to its site (once); then, if its portfolio auto-submits
        and its orders were not submitted yet, submit them as `AUTO_SUBMITTER`.

        The schedule is pushed whatever happens to the orders: a failed auto-submission is
        logged and kept on the plan (`submission.error`), not raised, because the dispatch it
        follows did happen and cannot be repeated.
        """
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
        portfolio = stored.portfolio
        if portfolio is None or self._orders is None or stored.submission is not None:
            return stored
        if not await self.auto_submits(portfolio):
            return stored
        log.info(
            "plan %s dispatched: auto-submitting its orders (portfolio %s)", plan_id, portfolio
        )
        try:
            await self.submit_orders(plan_id, submitted_by=AUTO_SUBMITTER)
        except AlreadySubmittedError:
            pass  # a trader submitted them in the meantime: placed once, as wanted
        except SubmissionFailedError as exc:
            log.error("plan %s: auto-submission failed: %s", plan_id, exc)
        return stored

    # -- orders ----------------------------------------------------------------------------

    async def submit_orders(self, plan_id: str, *, submitted_by: str) -> StoredPlan:
        """Place the plan's proposed orders on the exchange, once, in order (module docstring).

        Raises NoOrdersError, AlreadySubmittedError, SubmissionUnavailableError before placing
        anything, SubmissionFailedError when it stopped midway.
        """
        stored = self.get(plan_id)
        if stored.portfolio is None:
            raise NoOrdersError(
                f"plan {plan_id} proposes no orders: the plan needs `market` and `portfolio` in "
                "its request (POST /api/optimise); make a new plan with both"
            )
        placer = self._orders
        if placer is None:
            raise SubmissionUnavailableError(
                "this plane has no exchange to place orders on; the proposed orders can only "
                "be read"
            )
        submission = Submission(submitted_at=self._clock(), submitted_by=submitted_by)
        with self._lock:
            done = stored.submission
            if done is None:
                stored.submission = submission
        if done is not None:
            raise AlreadySubmittedError(_already(plan_id, done))
        for proposed in stored.orders:
            try:
                placed = await asyncio.to_thread(placer.place_order, order=proposed)
            except OrderValidationError as exc:
                submission.results.append(
                    SubmittedOrder(
                        proposed=proposed,
                        order_id=None,
                        state=NOT_PLACED,
                        filled_mw=Decimal(0),
                        reject_reason=str(exc),
                    )
                )
                continue
            except Exception as exc:
                kind = "the exchange's store" if isinstance(exc, ExchangeStoreError) else "error"
                submission.error = f"{kind}: {exc}" if str(exc) else f"{kind}: {type(exc).__name__}"
                submission.finished = True
                if not isinstance(exc, ExchangeStoreError):
                    log.exception("plan %s: placing an order failed", plan_id)
                raise SubmissionFailedError(
                    _failure(plan_id, submission, proposed, len(stored.orders)),
                    submission=submission,
                ) from exc
            except BaseException:  # cancelled (the plane is stopping): the order may be placed
                submission.error = "interrupted while placing an order; it may have been placed"
                submission.finished = True
                raise
            order = placed.order
            submission.results.append(
                SubmittedOrder(
                    proposed=proposed,
                    order_id=order.order_id,
                    state=order.state.value,
                    filled_mw=order.filled_mw,
                    reject_reason=order.reject_reason,
                )
            )
            self._publish(placed)
        submission.finished = True
        log.info(
            "plan %s: %d orders submitted by %s", plan_id, len(submission.results), submitted_by
        )
        return stored

    def _publish(self, placed: PlacedOrder) -> None:
        if self._on_placed is None:
            return
        try:
            self._on_placed(placed)
        except Exception:  # events are a view: never let them stop the placements
            log.exception("publishing the events of order %d failed", placed.order.order_id)

    # -- auto-submission switches ----------------------------------------------------------

    async def set_auto_submit(self, portfolio: str, *, enabled: bool, by: str) -> AutoSubmitSwitch:
        """Turn auto-submission of `portfolio`'s proposed orders on or off (persistent)."""
        switches = self._need_switches()
        name = portfolio.strip()
        if not name or len(name) > MAX_PORTFOLIO_LENGTH or not name.isprintable():
            raise InvalidPortfolioError(
                f"portfolio {portfolio!r} is not a portfolio name: 1 to {MAX_PORTFOLIO_LENGTH} "
                "printable characters, as in the orders"
            )
        switch = AutoSubmitSwitch(
            portfolio=name, enabled=enabled, updated_at=self._clock(), updated_by=by
        )
        await asyncio.to_thread(switches.set, switch)
        log.info("auto-submission of portfolio %s %s by %s", name, "ON" if enabled else "off", by)
        return switch

    async def auto_submit(self) -> list[AutoSubmitSwitch]:
        """Every switch ever set (on or off), by portfolio."""
        if self._switches is None:
            return []
        return await asyncio.to_thread(self._switches.list)

    async def auto_submits(self, portfolio: str) -> bool:
        """Whether `portfolio`'s orders are placed when its plans are dispatched."""
        if self._switches is None:
            return False
        switch = await asyncio.to_thread(self._switches.get, portfolio)
        return switch is not None and switch.enabled

    def _need_switches(self) -> AutoSubmitSwitches:
        if self._switches is None:
            raise SubmissionUnavailableError(
                "this plane keeps no auto-submission switches (no store configured)"
            )
        return self._switches

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


def _already(plan_id: str, done: Submission) -> str:
    when = done.submitted_at.isoformat()
    if not done.finished:
        return (
            f"the orders of plan {plan_id} are being submitted (since {when}, by "
            f"{done.submitted_by}); a plan's orders are placed once"
        )
    placed = sum(1 for r in done.results if r.order_id is not None)
    outcome = "" if done.error is None else f", stopped early: {done.error}"
    return (
        f"the orders of plan {plan_id} were submitted at {when} by {done.submitted_by} "
        f"({placed} placed{outcome}); a plan's orders are placed once: make a new plan, or place "
        "orders by hand with POST /api/orders"
    )


def _failure(plan_id: str, submission: Submission, failed: NewOrder, total: int) -> str:
    ids = [str(r.order_id) for r in submission.results if r.order_id is not None]
    placed = f"order ids {', '.join(ids)}" if ids else "no order"
    return (
        f"submitting the orders of plan {plan_id} stopped at order {len(submission.results) + 1} "
        f"of {total} ({failed.side.value} {failed.quantity_mw} MW for "
        f"{failed.delivery.start.isoformat()}): {submission.error}. Placed before it: {placed}. "
        "The failed order may or may not be stored and the rest was not placed; the plan is "
        "marked submitted so nothing is placed twice: check GET /api/orders and place the rest "
        "by hand"
    )


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
