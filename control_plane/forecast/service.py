"""The Forecast API's jobs: day-ahead and intraday forecasts of price, load, solar and wind. No
FastAPI here (api.py translates).

A job is submitted (`ForecastService.start`: validated at once, then `queued`), runs off the
event loop in a worker thread (`asyncio.to_thread`) with at most `max_running` at a time
(`running`), and ends `done` with a result or `failed` with an error text that says what was
missing. Jobs live in memory only: a finished job is kept for `ttl` (default 24 h) and at most
`max_jobs` finished jobs are kept (oldest dropped first); at most `max_pending` jobs may be
queued or running (`TooManyJobsError` beyond). A restart forgets them: a forecast is cheap to
ask for again, and its inputs (the price history) are in the store.

What a job forecasts:

- **dayahead**: the next local delivery day of the zone after the origin (96 quarter-hours;
  92/100 on DST days);
- **intraday**: the 12 hours from the origin (48 quarter-hours).

The origin is the request's (else now), floored to the hour. The price history is
`PriceHistory.prices(zone, origin - lookback, origin)`: what was delivered before the origin.
The models are hourly (models.py); each hour's P10/P50/P90 is repeated for its four
quarter-hours. If the history ends before the origin (a feed that lags), the forecast runs from
its end, up to `max_staleness` (default 48 h); older is a failure naming the latest price.

Metrics (spec names; the `zone` label added): `pho_forecast_jobs_total{type}` per submitted
job, and per `horizon` (`24h` = dayahead, `12h` = intraday) the P50 of the first interval of
the latest finished job: `pho_forecast_price_eur_mwh`, `pho_forecast_load_mw`,
`pho_forecast_solar_mw`, `pho_forecast_wind_mw`.

Errors:

    ForecastError
    ├── UnknownJobError (KeyError)           no job with that id (or it expired)
    ├── ForecastRequestError (ValueError)    a request that cannot run (zone, quantities)
    └── TooManyJobsError                     max_pending jobs already queued or running
"""

from __future__ import annotations

import asyncio
import logging
import secrets
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from typing import Final, Protocol

from prometheus_client import CollectorRegistry, Counter, Gauge

from control_plane.market.models import (
    MarketDataError,
    PricePoint,
    Resolution,
    UnknownZoneError,
    zone,
)

from .backtest import target_window
from .models import (
    HOUR,
    ZONE_PROFILES,
    Band,
    InsufficientHistoryError,
    PriceModel,
    default_price_model,
    hourly_from_points,
    load_forecast,
    solar_forecast,
    wind_forecast,
)

__all__ = [
    "QUANTITIES",
    "ForecastError",
    "ForecastMetrics",
    "ForecastRequest",
    "ForecastRequestError",
    "ForecastService",
    "Interval",
    "Job",
    "JobState",
    "PriceHistory",
    "QuantityForecast",
    "TooManyJobsError",
    "UnknownJobError",
    "create_forecast_service",
]

log = logging.getLogger(__name__)

QUANTITIES: Final = ("price", "load", "solar", "wind")
KINDS: Final = {"dayahead": "24h", "intraday": "12h"}
"""Job type -> the horizon label of the metrics (the spec's)."""
QUARTER: Final = timedelta(minutes=15)


class PriceHistory(Protocol):
    """Prices of a zone, oldest first (the feed's price store implements it)."""

    def prices(
        self, zone: str, start: datetime, end: datetime, resolution: Resolution | None = None
    ) -> list[PricePoint]: ...


class NoPriceHistory:
    """The history of a plane without a price feed: none, so every job fails saying so."""

    def prices(
        self, zone: str, start: datetime, end: datetime, resolution: Resolution | None = None
    ) -> list[PricePoint]:
        return []


class ForecastError(Exception):
    """Base of the forecast service's errors."""


class UnknownJobError(ForecastError, KeyError):
    def __init__(self, job_id: str) -> None:
        self.job_id = job_id
        super().__init__(job_id)

    def __str__(self) -> str:
        return f"no forecast job {self.job_id!r} (unknown, or expired: results are kept 24 h)"


class ForecastRequestError(ForecastError, ValueError):
    """A request that cannot run; the message says what to change."""


class TooManyJobsError(ForecastError):
    def __init__(self, limit: int) -> None:
        super().__init__(
            f"{limit} forecast jobs are already queued or running; retry when they finish"
        )


class JobState(StrEnum):
    QUEUED = "queued"
    RUNNING = "running"
    DONE = "done"
    FAILED = "failed"


@dataclass(frozen=True, slots=True, kw_only=True)
class ForecastRequest:
    kind: str
    """`dayahead` or `intraday`."""
    zone: str
    quantities: tuple[str, ...] = QUANTITIES
    origin: datetime | None = None


@dataclass(frozen=True, slots=True)
class Interval:
    start: datetime
    p10: float
    p50: float
    p90: float


@dataclass(frozen=True, slots=True, kw_only=True)
class QuantityForecast:
    quantity: str
    unit: str
    model: str
    resolution: Resolution
    intervals: list[Interval]
    training_start: datetime | None
    training_end: datetime | None
    notes: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True, kw_only=True)
class Job:
    job_id: str
    request: ForecastRequest
    state: JobState
    created_at: datetime
    origin: datetime
    started_at: datetime | None = None
    finished_at: datetime | None = None
    result: tuple[QuantityForecast, ...] = ()
    error: str | None = None


class ForecastMetrics:
    """The spec's forecast metrics in the app's registry."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.jobs = Counter(
            "pho_forecast_jobs_total", "Forecast jobs submitted", ["type"], registry=registry
        )
        labels = ["horizon", "zone"]
        self.latest = {
            "price": Gauge(
                "pho_forecast_price_eur_mwh",
                "Price forecast P50 of the next interval, latest job, EUR/MWh",
                labels,
                registry=registry,
            ),
            "load": Gauge(
                "pho_forecast_load_mw",
                "Load forecast P50 of the next interval, latest job, MW",
                labels,
                registry=registry,
            ),
            "solar": Gauge(
                "pho_forecast_solar_mw",
                "Solar forecast P50 of the next interval, latest job, MW",
                labels,
                registry=registry,
            ),
            "wind": Gauge(
                "pho_forecast_wind_mw",
                "Wind forecast P50 of the next interval, latest job, MW",
                labels,
                registry=registry,
            ),
        }

    def finished(self, job: Job) -> None:
        horizon = KINDS[job.request.kind]
        for forecast in job.result:
            if forecast.intervals:
                self.latest[forecast.quantity].labels(horizon, job.request.zone).set(
                    forecast.intervals[0].p50
                )


def _utc_now() -> datetime:
    return datetime.now(UTC)


@dataclass(eq=False)
class ForecastService:
    """Submit, run and look up forecast jobs (module docs)."""

    history: PriceHistory
    metrics: ForecastMetrics | None = None
    clock: Callable[[], datetime] = _utc_now
    price_model: PriceModel = field(default_factory=default_price_model)
    max_running: int = 2
    max_pending: int = 50
    max_jobs: int = 1000
    ttl: timedelta = timedelta(hours=24)
    lookback: timedelta = timedelta(days=84)
    max_staleness: timedelta = timedelta(hours=48)
    _jobs: OrderedDict[str, Job] = field(default_factory=OrderedDict, init=False)
    _tasks: set[asyncio.Task[Job]] = field(default_factory=set, init=False)
    _slots: asyncio.Semaphore | None = field(default=None, init=False)

    # -- jobs -----------------------------------------------------------------------------

    def submit(self, request: ForecastRequest) -> Job:
        """Validate `request` and register it as a queued job (`start` also runs it)."""
        if request.kind not in KINDS:
            raise ForecastRequestError(
                f"unknown forecast type {request.kind!r}; use {' or '.join(KINDS)}"
            )
        try:
            found = zone(request.zone)
        except UnknownZoneError as exc:
            raise ForecastRequestError(str(exc)) from None
        quantities = tuple(dict.fromkeys(request.quantities))
        unknown = [q for q in quantities if q not in QUANTITIES]
        if unknown or not quantities:
            raise ForecastRequestError(
                f"unknown quantities {unknown or '(none given)'}; "
                f"use any of {', '.join(QUANTITIES)}"
            )
        physical = [q for q in quantities if q != "price"]
        if physical and found.code not in ZONE_PROFILES:
            raise ForecastRequestError(
                f"no load/solar/wind profile for zone {found.code}; ask for price only, or "
                f"use one of {', '.join(ZONE_PROFILES)}"
            )
        self._prune()
        active = sum(j.state in (JobState.QUEUED, JobState.RUNNING) for j in self._jobs.values())
        if active >= self.max_pending:
            raise TooManyJobsError(self.max_pending)
        now = self.clock()
        origin = (request.origin or now).astimezone(UTC).replace(minute=0, second=0, microsecond=0)
        job = Job(
            job_id=secrets.token_hex(8),
            request=replace(request, zone=found.code, quantities=quantities),
            state=JobState.QUEUED,
            created_at=now,
            origin=origin,
        )
        self._jobs[job.job_id] = job
        if self.metrics is not None:
            self.metrics.jobs.labels(request.kind).inc()
        return job

    async def start(self, request: ForecastRequest) -> Job:
        """Submit `request` and run it in the background; the queued job."""
        job = self.submit(request)
        task = asyncio.create_task(self.run(job.job_id), name=f"forecast-{job.job_id}")
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return job

    async def run(self, job_id: str) -> Job:
        """Run a queued job to `done` or `failed` (at most `max_running` at once)."""
        if self._slots is None:
            self._slots = asyncio.Semaphore(self.max_running)
        async with self._slots:
            job = self._update(job_id, state=JobState.RUNNING, started_at=self.clock())
            try:
                result = await asyncio.to_thread(self.compute, job.request, job.origin)
            except (ForecastError, MarketDataError, ValueError) as exc:
                job = self._update(
                    job_id, state=JobState.FAILED, error=str(exc), finished_at=self.clock()
                )
            except Exception as exc:
                log.exception("forecast job %s failed", job_id)
                job = self._update(
                    job_id,
                    state=JobState.FAILED,
                    error=f"internal error ({type(exc).__name__}); see the plane's log",
                    finished_at=self.clock(),
                )
            else:
                job = self._update(
                    job_id, state=JobState.DONE, result=result, finished_at=self.clock()
                )
                if self.metrics is not None:
                    self.metrics.finished(job)
            return job

    def status(self, job_id: str) -> Job:
        self._prune()
        try:
            return self._jobs[job_id]
        except KeyError:
            raise UnknownJobError(job_id) from None

    async def close(self) -> None:
        """Cancel the jobs still queued or running (on shutdown)."""
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    def _update(self, job_id: str, **changes: object) -> Job:
        job = replace(self._jobs[job_id], **changes)  # type: ignore[arg-type]
        self._jobs[job_id] = job
        return job

    def _prune(self) -> None:
        now = self.clock()
        finished = [j for j in self._jobs.values() if j.finished_at is not None]
        expired = {j.job_id for j in finished if now - j.finished_at >= self.ttl}  # type: ignore[operator]
        excess = len(finished) - len(expired) - self.max_jobs
        for j in finished:
            if excess <= 0:
                break
            if j.job_id not in expired:
                expired.add(j.job_id)
                excess -= 1
        for job_id in expired:
            del self._jobs[job_id]

    # -- the forecast itself (sync, in a worker thread) ------------------------------------

    def compute(self, request: ForecastRequest, origin: datetime) -> tuple[QuantityForecast, ...]:
        """The forecasts of `request` from `origin` (on the hour, UTC)."""
        found = zone(request.zone)
        start, end = target_window(origin, request.kind, found.timezone)
        results = []
        if "price" in request.quantities:
            results.append(self._price(found.code, found.timezone, origin, start, end))
        profile = ZONE_PROFILES.get(found.code)
        hours = (end - start) // HOUR
        note = (
            "profile, not a weather forecast: the plane has no weather or load feed "
            "(control_plane/forecast/models.py)"
        )
        for quantity in ("load", "solar", "wind"):
            if quantity not in request.quantities or profile is None:
                continue
            if quantity == "load":
                band = load_forecast(profile, start, hours, timezone=found.timezone)
            elif quantity == "solar":
                band = solar_forecast(profile, start, hours)
            else:
                band = wind_forecast(profile, start, hours, timezone=found.timezone)
            results.append(_quarters(band, 0, (note,)))
        return tuple(results)

    def _price(
        self, code: str, timezone: str, origin: datetime, start: datetime, end: datetime
    ) -> QuantityForecast:
        need = self.price_model.min_history_h
        points = self.history.prices(code, origin - self.lookback, origin)
        points = [p for p in points if p.start < origin]  # a history that returns more
        if not points:
            raise ForecastRequestError(
                f"no prices of zone {code} in the {self.lookback / HOUR / 24:g} days before "
                f"{origin:%Y-%m-%dT%H:%MZ}; the {self.price_model.name} price model needs at "
                f"least {need} hours ({need / 24:g} days): is the price feed running for {code}?"
            )
        series = hourly_from_points(points, timezone=timezone)
        if origin - series.end > self.max_staleness:
            raise ForecastRequestError(
                f"the latest price of zone {code} is for {series.end - HOUR:%Y-%m-%dT%H:%MZ}, "
                f"more than {self.max_staleness / HOUR:g} h before the origin "
                f"{origin:%Y-%m-%dT%H:%MZ}: is the price feed running?"
            )
        if len(series) < need:
            raise InsufficientHistoryError(
                f"the {self.price_model.name} price model for zone {code}", len(series), need
            )
        steps = (end - series.end) // HOUR
        band = self.price_model.forecast(series, steps)
        notes: tuple[str, ...] = ()
        if series.filled:
            notes += (f"{series.filled} missing hours in the history were filled",)
        if series.end < origin:
            notes += (f"the history ends {series.end:%Y-%m-%dT%H:%MZ}, before the origin",)
        return _quarters(band, (start - series.end) // HOUR, notes)


def _quarters(band: Band, skip: int, notes: tuple[str, ...]) -> QuantityForecast:
    """The band from hour `skip` on, each hour repeated for its four quarter-hours."""
    intervals: list[Interval] = []
    for i in range(skip, band.hours):
        hour = band.start + i * HOUR
        p10, p50, p90 = float(band.p10[i]), float(band.p50[i]), float(band.p90[i])
        intervals.extend(Interval(hour + q * QUARTER, p10, p50, p90) for q in range(4))
    return QuantityForecast(
        quantity=band.quantity,
        unit=band.unit,
        model=band.model,
        resolution=Resolution.PT15M,
        intervals=intervals,
        training_start=band.training_start,
        training_end=band.training_end,
        notes=notes + band.notes,
    )


def create_forecast_service(
    *,
    history: PriceHistory | None,
    registry: CollectorRegistry,
    clock: Callable[[], datetime] = _utc_now,
    max_running: int = 2,
) -> ForecastService:
    """The service the app keeps in `app.state.forecast`; `history` None = no price feed yet
    (every price forecast fails saying there are no prices)."""
    return ForecastService(
        history=history if history is not None else NoPriceHistory(),
        metrics=ForecastMetrics(registry),
        clock=clock,
        max_running=max_running,
    )


def quantities_or_all(values: Sequence[str] | None) -> tuple[str, ...]:
    return tuple(values) if values else QUANTITIES
