"""The grid service: frequency per area, load, tie-line flows, congestion and constraints.

No FastAPI here (STYLE item 1); api.py translates. Pieces:

- **Frequency** (`frequency.FrequencyMonitor`): fed on the event loop by the fleet's
  telemetry events (`observe_telemetry`, non-blocking, in memory) and, at `open` and on every
  `state()` call, from the fleet store's latest samples (so a restart or a reading that
  bypassed the live stream is caught up). Level changes become alerts: the `grid.alert`
  event (through `on_alert`), a log line (warning; error for alarm) and the counter
  `pho_grid_alerts_total{area,level}`; the gauge `pho_grid_freq_hz{area}` follows the area's
  frequency.
- **Load and tie-line flows** from a `GridDataSource` (sources.py): ENTSO-E A65 / A11 when a
  token is set, otherwise none, and the state says "no source" instead of a number. Answers
  are cached for `refresh` (the API is rate limited); a failure is shown with its reason and
  retried on the next refresh. `pho_grid_load_mw{area}` follows the load.
- **Congestion index** per area: the share of the area's battery power (each site's larger
  converter rating) withheld by the constraints active now; 0 = none withheld, 1 = every
  site fully constrained, None when no site of the area has reported ratings.
- **Constraints** (store.py) with validity windows. `limits(site, start, end)` answers which
  active power limits apply to a site in a window (its own and its area's); the exchange's
  pre-trade check (checks.py) and the optimiser (`limit_kw`) use it.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge
from sqlalchemy.engine import Engine

from control_plane.config import PlaneSettings
from control_plane.fleet.models import NewSchedule, ScheduleInterval
from control_plane.fleet.store import FleetStore, ratings_of
from control_plane.market.models import MarketDataError, NoDataError, UnknownZoneError, zone

from .frequency import Alert, FrequencyMonitor
from .models import (
    AreaFrequency,
    Constraint,
    ConstraintKind,
    ConstraintSpec,
    FrequencyBands,
    FrequencyExcursion,
    Level,
    NoGridSourceError,
    TieLine,
    utc_now,
)
from .sources import EntsoeGridSource, GridDataSource, NoGridSource, latest_window
from .store import GridStore

log = logging.getLogger(__name__)

AlertSink = Callable[[str, Mapping[str, Any]], None]
"""Gets ("grid.alert", data) for every alert; must not block (the app's event hub)."""

NO_SOURCE = "no source"


class GridMetrics:
    """The grid's Prometheus metrics (the spec's `pho_grid_*` names), in the app's registry."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.freq_hz = Gauge(
            "pho_grid_freq_hz",
            "Grid frequency per area: median of the sites' fresh measurements",
            ["area"],
            registry=registry,
        )
        self.load_mw = Gauge(
            "pho_grid_load_mw",
            "Actual total load per area (bidding zone)",
            ["area"],
            registry=registry,
        )
        self.alerts = Counter(
            "pho_grid_alerts",
            "Grid frequency alerts by area and level (normal = cleared)",
            ["area", "level"],
            registry=registry,
        )


@dataclass(frozen=True, slots=True, kw_only=True)
class GridConfig:
    bands: FrequencyBands = field(default_factory=FrequencyBands)
    site_areas: Mapping[str, str] = field(default_factory=dict)
    default_area: str = "default"
    stale_after: timedelta = timedelta(seconds=60)
    tie_lines: tuple[TieLine, ...] = ()
    refresh: timedelta = timedelta(minutes=15)


@dataclass(frozen=True, slots=True, kw_only=True)
class Reading:
    """A load or flow figure, or why there is none (`status`: ok, no source, no data, error)."""

    status: str
    source: str
    value_mw: float | None = None
    at: datetime | None = None
    minutes: int | None = None
    detail: str = ""


@dataclass(frozen=True, slots=True, kw_only=True)
class AreaState:
    frequency: AreaFrequency
    alert_level: Level
    load: Reading
    congestion_index: float | None
    active_constraints: tuple[Constraint, ...]


@dataclass(frozen=True, slots=True, kw_only=True)
class TieLineState:
    line: TieLine
    flow: Reading


@dataclass(frozen=True, slots=True, kw_only=True)
class GridState:
    as_of: datetime
    bands: FrequencyBands
    source: str
    areas: tuple[AreaState, ...]
    tie_lines: tuple[TieLineState, ...]
    excursions: tuple[FrequencyExcursion, ...]


@dataclass(frozen=True, slots=True)
class ActiveLimit:
    constraint: Constraint
    limit_kw: Decimal


class GridService:
    def __init__(
        self,
        *,
        store: GridStore,
        fleet_store: FleetStore,
        config: GridConfig,
        source: GridDataSource | None = None,
        metrics: GridMetrics | None = None,
        clock: Callable[[], datetime] = utc_now,
        on_alert: AlertSink | None = None,
    ) -> None:
        self.store = store
        self.fleet_store = fleet_store
        self.config = config
        self.source: GridDataSource = source or NoGridSource(
            "no load/flow source: set ENTSOE_TOKEN for ENTSO-E actual load (A65) and physical "
            "flows (A11)"
        )
        self.metrics = metrics
        self.clock = clock
        self.on_alert = on_alert
        self.monitor = FrequencyMonitor(
            bands=config.bands,
            area_of=config.site_areas,
            default_area=config.default_area,
            stale_after=config.stale_after,
        )
        self._cache: dict[str, tuple[datetime, Reading]] = {}
        self._refresh_lock = asyncio.Lock()

    # -- lifecycle ---------------------------------------------------------------------

    async def open(self) -> None:
        applied = await asyncio.to_thread(self.store.migrate)
        if applied:
            log.info("grid: store migrated to version %d", applied[-1])
        await self._catch_up()

    async def close(self) -> None:
        await self.source.aclose()

    # -- frequency ---------------------------------------------------------------------

    def observe_telemetry(self, data: Mapping[str, Any]) -> None:
        """A fleet `telemetry` event (on the event loop): take its grid frequency."""
        at = data.get("timestamp")
        hz = data.get("grid_frequency_hz")
        if not isinstance(at, datetime) or not isinstance(hz, int | float):
            return
        self._raise(self.monitor.observe(str(data["site_id"]), at, float(hz), now=self.clock()))

    async def _catch_up(self) -> None:
        latest = await asyncio.to_thread(self.fleet_store.latest_samples)
        now = self.clock()
        for site_id, sample in latest.items():
            self._raise(
                self.monitor.observe(site_id, sample.timestamp, sample.grid_frequency_hz, now=now)
            )

    def _raise(self, alerts: Sequence[Alert]) -> None:
        for alert in alerts:
            if alert.level is Level.ALARM:
                log.error("grid alarm: %s", alert.message)
            elif alert.level is Level.WARN:
                log.warning("grid warning: %s", alert.message)
            else:
                log.info("grid: %s", alert.message)
            if self.metrics is not None:
                self.metrics.alerts.labels(alert.area, alert.level.value).inc()
            if self.on_alert is not None:
                try:
                    self.on_alert("grid.alert", alert.as_event())
                except Exception:  # the live stream is a view; the monitor must go on
                    log.exception("grid: publishing an alert failed")

    # -- state -------------------------------------------------------------------------

    async def state(self) -> GridState:
        await self._catch_up()
        now = self.clock()
        constraints = await asyncio.to_thread(self.store.list, start=now, end=now + _INSTANT)
        ratings = await asyncio.to_thread(self._ratings)
        areas = (
            self.monitor.known_areas()
            | {self.monitor.area(s) for s in ratings}
            | {c.spec.area for c in constraints if c.spec.area}
        )
        area_states = []
        for area in sorted(areas):
            freq = self.monitor.frequency(area, now=now)
            self._raise(self.monitor.evaluate(area, now=now))
            load = await self._load(area, now)
            mine = tuple(c for c in constraints if self._applies_to_area(c, area))
            area_states.append(
                AreaState(
                    frequency=freq,
                    alert_level=self.monitor.level(area),
                    load=load,
                    congestion_index=self._congestion(area, mine, ratings),
                    active_constraints=mine,
                )
            )
            if self.metrics is not None:
                if freq.frequency_hz is not None:
                    self.metrics.freq_hz.labels(area).set(freq.frequency_hz)
                if load.value_mw is not None:
                    self.metrics.load_mw.labels(area).set(load.value_mw)
        lines = []
        for line in self.config.tie_lines:
            lines.append(TieLineState(line=line, flow=await self._flow(line, now)))
        return GridState(
            as_of=now,
            bands=self.config.bands,
            source=self.source.name,
            areas=tuple(area_states),
            tie_lines=tuple(lines),
            excursions=tuple(self.monitor.excursions()),
        )

    def _ratings(self) -> dict[str, float]:
        rated: dict[str, float] = {}
        for row in self.fleet_store.site_rows():
            r = ratings_of(row)
            if r is not None and max(r.max_charge_kw, r.max_discharge_kw) > 0:
                rated[row["site_id"]] = max(r.max_charge_kw, r.max_discharge_kw)
        return rated

    def _applies_to_area(self, c: Constraint, area: str) -> bool:
        if c.spec.area is not None:
            return c.spec.area == area
        return c.spec.site_id is not None and self.monitor.area(c.spec.site_id) == area

    def _congestion(
        self, area: str, active: Sequence[Constraint], ratings: Mapping[str, float]
    ) -> float | None:
        sites = {s: kw for s, kw in ratings.items() if self.monitor.area(s) == area}
        total = sum(sites.values())
        if total <= 0:
            return None
        withheld = 0.0
        for site_id, rated in sites.items():
            limits = [
                float(c.spec.effective_limit_kw)
                for c in active
                if c.spec.effective_limit_kw is not None
                and (c.spec.site_id == site_id or c.spec.area == area)
            ]
            if limits:
                withheld += rated - min(rated, min(limits))
        return round(withheld / total, 4)

    async def _load(self, area: str, now: datetime) -> Reading:
        try:
            code = zone(area).code
        except UnknownZoneError:
            return Reading(
                status=NO_SOURCE,
                source=self.source.name,
                detail=f"area {area!r} is not a bidding zone, so there is no zone load for it",
            )

        async def fetch() -> Reading:
            start, end = latest_window(now)
            points = await self.source.load(code, start, end)
            done = [p for p in points if p.start + timedelta(minutes=p.minutes) <= now] or points
            if not done:
                raise NoDataError(f"no actual load for {code} in the last hours")
            last = done[-1]
            return Reading(
                status="ok",
                source=self.source.name,
                value_mw=last.load_mw,
                at=last.start,
                minutes=last.minutes,
            )

        return await self._cached(f"load:{code}", now, fetch)

    async def _flow(self, line: TieLine, now: datetime) -> Reading:
        async def fetch() -> Reading:
            start, end = latest_window(now)
            forward = {p.start: p for p in await self.source.flows(line.a, line.b, start, end)}
            back = {p.start: p for p in await self.source.flows(line.b, line.a, start, end)}
            both = sorted(set(forward) & set(back))
            done = [t for t in both if t + timedelta(minutes=forward[t].minutes) <= now] or both
            if not done:
                raise NoDataError(f"no physical flows for {line.label} in the last hours")
            at = done[-1]
            return Reading(
                status="ok",
                source=self.source.name,
                value_mw=forward[at].flow_mw - back[at].flow_mw,
                at=at,
                minutes=forward[at].minutes,
            )

        return await self._cached(f"flow:{line.label}", now, fetch)

    async def _cached(self, key: str, now: datetime, fetch: Callable[[], Any]) -> Reading:
        async with self._refresh_lock:
            held = self._cache.get(key)
            if held is not None and now - held[0] < self.config.refresh:
                return held[1]
            try:
                reading: Reading = await fetch()
            except NoGridSourceError as exc:
                reading = Reading(status=NO_SOURCE, source=self.source.name, detail=str(exc))
            except NoDataError as exc:
                reading = Reading(status="no data", source=self.source.name, detail=str(exc))
            except (MarketDataError, ValueError) as exc:
                log.warning("grid: %s failed: %s", key, exc)
                reading = Reading(status="error", source=self.source.name, detail=str(exc))
            self._cache[key] = (now, reading)
            return reading

    # -- constraints -------------------------------------------------------------------

    async def add_constraint(self, spec: ConstraintSpec) -> Constraint:
        created = await asyncio.to_thread(self.store.add, spec, now=self.clock())
        log.info("grid: added %s", created.describe())
        return created

    async def replace_constraint(self, constraint_id: int, spec: ConstraintSpec) -> Constraint:
        updated = await asyncio.to_thread(self.store.replace, constraint_id, spec, now=self.clock())
        log.info("grid: updated %s", updated.describe())
        return updated

    async def delete_constraint(self, constraint_id: int) -> Constraint:
        deleted = await asyncio.to_thread(self.store.delete, constraint_id)
        log.info("grid: deleted %s", deleted.describe())
        return deleted

    async def get_constraint(self, constraint_id: int) -> Constraint:
        return await asyncio.to_thread(self.store.get, constraint_id)

    async def constraints(
        self,
        *,
        active_at: datetime | None = None,
        start: datetime | None = None,
        end: datetime | None = None,
        site_id: str | None = None,
        area: str | None = None,
        kind: ConstraintKind | None = None,
    ) -> list[Constraint]:
        if active_at is not None:
            start, end = active_at, active_at + _INSTANT
        site_ids = [site_id] if site_id is not None else None
        areas: list[str] | None = None
        if area is not None:
            areas = [area]
        elif site_id is not None:
            areas = [self.monitor.area(site_id)]  # the site's area constraints apply too
        return await asyncio.to_thread(
            self.store.list, start=start, end=end, site_ids=site_ids, areas=areas, kind=kind
        )

    def limits(self, site_id: str, start: datetime, end: datetime) -> list[ActiveLimit]:
        """The power limits on `site_id` active somewhere in [start, end) (blocking)."""
        found = self.store.list(
            start=start, end=end, site_ids=[site_id], areas=[self.monitor.area(site_id)]
        )
        return [
            ActiveLimit(c, c.spec.effective_limit_kw)
            for c in found
            if c.spec.effective_limit_kw is not None
        ]

    def schedule_problem(self, site_id: str, new: NewSchedule) -> str | None:
        """Why `new` breaks an active constraint on `site_id`, or None (the fleet's
        `schedule_check`, blocking): every interval's |power| must stay within the tightest
        limit active during it. The reason names the first interval over it, the constraint,
        the excess and how many intervals are over."""
        limits = self.limits(site_id, new.valid_from, new.valid_until)
        if not limits:
            return None
        step = timedelta(minutes=new.interval_minutes)
        over: list[tuple[ScheduleInterval, ActiveLimit]] = []
        for interval in new.intervals:
            start, end = interval.start, interval.start + step
            active = [
                a
                for a in limits
                if a.constraint.spec.valid_from < end
                and (a.constraint.spec.valid_to is None or a.constraint.spec.valid_to > start)
            ]
            if not active:
                continue
            tightest = min(active, key=lambda a: a.limit_kw)
            if Decimal(str(abs(interval.power_kw))) > tightest.limit_kw:
                over.append((interval, tightest))
        if not over:
            return None
        interval, limit = over[0]
        asked = Decimal(str(abs(interval.power_kw)))
        more = f" (and {len(over) - 1} more intervals)" if len(over) > 1 else ""
        return (
            f"grid: the schedule asks {_kw(asked)} kW at {interval.start:%Y-%m-%dT%H:%MZ} but "
            f"{limit.constraint.describe()} allows site {site_id} {_kw(limit.limit_kw)} kW; "
            f"over by {_kw(asked - limit.limit_kw)} kW{more}"
        )

    def limit_kw(self, site_id: str, start: datetime, end: datetime) -> float | None:
        """The tightest limit on `site_id` anywhere in [start, end) (the optimiser's
        `grid_limit_kw`); None = no constraint limits it (blocking)."""
        limits = self.limits(site_id, start, end)
        return float(min(a.limit_kw for a in limits)) if limits else None


_INSTANT = timedelta(milliseconds=1)


def _kw(value: Decimal) -> str:
    """300, 300.5: no exponent, no trailing zeros."""
    return f"{value.normalize():f}"


def open_grid(
    engine: Engine,
    fleet_store: FleetStore,
    settings: PlaneSettings,
    *,
    clock: Callable[[], datetime] = utc_now,
    metrics: GridMetrics | None = None,
    on_alert: AlertSink | None = None,
    source: GridDataSource | None = None,
) -> GridService:
    """The grid service from the plane's settings (call `open()` next): ENTSO-E load and
    flows when `ENTSOE_TOKEN` is set, otherwise no source."""
    if source is None and settings.entsoe_token is not None:
        source = EntsoeGridSource(settings.entsoe_token.get_secret_value())
    (n_low, n_high), (a_low, a_high) = settings.grid_normal_band_hz, settings.grid_alarm_band_hz
    config = GridConfig(
        bands=FrequencyBands(
            warn_low_hz=n_low, warn_high_hz=n_high, alarm_low_hz=a_low, alarm_high_hz=a_high
        ),
        site_areas=settings.grid_site_areas,
        default_area=settings.grid_area_default,
        stale_after=timedelta(seconds=settings.grid_stale_after_s),
        tie_lines=tuple(
            TieLine(a=a, b=b)
            for a, _, b in (line.partition(">") for line in settings.grid_tie_lines)
        ),
        refresh=timedelta(seconds=settings.grid_refresh_s),
    )
    return GridService(
        store=GridStore(engine),
        fleet_store=fleet_store,
        config=config,
        source=source,
        metrics=metrics,
        clock=clock,
        on_alert=on_alert,
    )
