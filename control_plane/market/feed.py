"""The scheduled market feed: every `UPDATE_INTERVAL` seconds, each configured source's prices
of each configured zone into the store, with a status per (source, zone) the API shows.

Per run and (source, zone) the feed asks for the window [00:00 local of yesterday, 00:00 local
of the day after tomorrow): yesterday for late revisions, today, and tomorrow once the
day-ahead auction has published it. The store keeps what changed (`PriceStore.upsert`).

Outcomes of one fetch:

- `ok`: points stored (inserted / revised / unchanged counted); the next run after the interval;
- `no_data` (`NoDataError`, e.g. nothing published yet): not an error, same interval;
- `error` (`SourceError`, `DocumentError`, a store failure, a timeout, any exception of the
  source): the text goes into the status, the next try backs off: interval x 2^(n-1) after n
  failures in a row, at most `max_backoff_s`; a `SourceError` that says a retry will not help
  (`retryable=False`, e.g. a refused token) waits the maximum at once.

Sources run concurrently, zones of one source one after the other (the ENTSO-E client paces
its own requests); one source's failure never stops the others or the loop. Logging follows
STYLE 7: the first error of a (source, zone) loudly, repeats quietly, the recovery once.

The clock and the sleep are injected, so tests step time instead of waiting.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime, time, timedelta
from typing import TYPE_CHECKING, Final, Literal
from zoneinfo import ZoneInfo

from prometheus_client import CollectorRegistry, Counter, Gauge

from .models import NoDataError, SourceError, Zone, zone
from .sources import PriceSource, build_sources
from .store import PriceStore, UpsertResult

if TYPE_CHECKING:
    from sqlalchemy.engine import Engine

    from control_plane.config import PlaneSettings

__all__ = [
    "UPDATE_INTERVAL_S",
    "FeedMetrics",
    "FeedStatus",
    "MarketFeed",
    "feed_window",
    "open_market",
]

log = logging.getLogger(__name__)

UPDATE_INTERVAL_S: Final = 300
MAX_BACKOFF_S: Final = 3600.0
FETCH_TIMEOUT_S: Final = 300.0

Outcome = Literal["ok", "no_data", "error"]


def utc_now() -> datetime:
    return datetime.now(UTC)


@dataclass(frozen=True, slots=True, kw_only=True)
class FeedStatus:
    """What the feed knows about one (source, zone)."""

    source: str
    zone: str
    state: Literal["pending", "ok", "no_data", "error"] = "pending"
    last_attempt: datetime | None = None
    last_success: datetime | None = None
    """The last fetch the source answered (with prices or with 'no data')."""
    last_error: str | None = None
    last_error_at: datetime | None = None
    consecutive_failures: int = 0
    points_fetched: int = 0
    """Points the last successful fetch returned."""
    last_result: UpsertResult | None = None
    stored_points: int = 0
    """Intervals of this source and zone in the store after the last fetch."""
    next_run: datetime | None = None


class FeedMetrics:
    """`bess_plane_market_fetch_total{source,zone,outcome}` and the last success time."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.fetches = Counter(
            "bess_plane_market_fetch_total",
            "Market-feed fetches per source, zone and outcome (ok, no_data, error)",
            ["source", "zone", "outcome"],
            registry=registry,
        )
        self.last_success = Gauge(
            "bess_plane_market_last_success_timestamp_seconds",
            "Unix time of the last fetch the source answered, per source and zone",
            ["source", "zone"],
            registry=registry,
        )


def feed_window(zone_: Zone, now: datetime) -> tuple[datetime, datetime]:
    """[00:00 local yesterday, 00:00 local the day after tomorrow) in UTC (DST-correct)."""
    tz = ZoneInfo(zone_.timezone)
    today = now.astimezone(tz).date()
    start = datetime.combine(today - timedelta(days=1), time(0), tzinfo=tz)
    end = datetime.combine(today + timedelta(days=2), time(0), tzinfo=tz)
    return start.astimezone(UTC), end.astimezone(UTC)


class MarketFeed:
    """Polls the sources for the zones into the store; `run()` is the background loop."""

    def __init__(
        self,
        *,
        sources: Sequence[PriceSource],
        store: PriceStore,
        zones: Sequence[str],
        interval_s: float = UPDATE_INTERVAL_S,
        clock: Callable[[], datetime] = utc_now,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        metrics: FeedMetrics | None = None,
        max_backoff_s: float = MAX_BACKOFF_S,
        fetch_timeout_s: float = FETCH_TIMEOUT_S,
    ) -> None:
        if interval_s <= 0:
            raise ValueError(f"interval_s must be positive, got {interval_s}")
        names = [s.name for s in sources]
        if len(set(names)) != len(names):
            raise ValueError(f"source names must be unique, got {names}")
        self.sources = list(sources)
        self.store = store
        self.zones = [zone(code) for code in zones]
        self.interval_s = float(interval_s)
        self.max_backoff_s = max(float(max_backoff_s), self.interval_s)
        self.fetch_timeout_s = fetch_timeout_s
        self._clock = clock
        self._sleep = sleep
        self._metrics = metrics
        self._status: dict[tuple[str, str], FeedStatus] = {
            (s.name, z.code): FeedStatus(source=s.name, zone=z.code)
            for s in self.sources
            for z in self.zones
        }

    def now(self) -> datetime:
        """The feed's clock (UTC): what 'today' means for its windows and the price APIs."""
        return self._clock()

    def status(self) -> list[FeedStatus]:
        """One entry per (source, zone), in configuration order."""
        return list(self._status.values())

    def next_run(self) -> datetime | None:
        """When the next (source, zone) is due (None: nothing to poll or due now)."""
        due = [s.next_run for s in self._status.values()]
        if not due or any(d is None for d in due):
            return None
        return min(d for d in due if d is not None)

    async def run_once(self) -> None:
        """Fetch every (source, zone) that is due now."""
        now = self._clock()
        await asyncio.gather(*(self._run_source(source, now) for source in self.sources))

    async def run(self) -> None:
        """Run until cancelled: fetch what is due, sleep until the next one is."""
        if not self.sources:
            log.info("market feed: no price sources configured; prices come from imports only")
            return
        log.info(
            "market feed: %s for %s every %g s",
            ", ".join(s.name for s in self.sources),
            ", ".join(z.code for z in self.zones),
            self.interval_s,
        )
        while True:
            await self.run_once()
            due = self.next_run()
            wait = 0.0 if due is None else (due - self._clock()).total_seconds()
            await self._sleep(min(max(wait, 1.0), self.max_backoff_s))

    @contextlib.asynccontextmanager
    async def running(self) -> AsyncIterator[MarketFeed]:
        """The loop as a background task for the block's duration (the app's lifespan)."""
        task = asyncio.create_task(self.run(), name="market-feed")
        try:
            yield self
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
            await self.aclose()

    async def aclose(self) -> None:
        """Close the sources that hold connections (the HTTP clients)."""
        for source in self.sources:
            close = getattr(source, "aclose", None)
            if close is not None:
                try:
                    await close()
                except Exception:  # closing one must not keep the others open
                    log.exception("market feed: closing source %s failed", source.name)

    async def fetch_range(
        self, zone_code: str, start: datetime, end: datetime
    ) -> dict[str, UpsertResult | Exception]:
        """Fetch [start, end) of a zone from every source now (the CLI's `prices fetch`):
        per source the stored counts or the error; the schedule is not touched."""
        target = zone(zone_code)
        results: dict[str, UpsertResult | Exception] = {}
        for source in self.sources:
            try:
                points = await asyncio.wait_for(
                    source.fetch(target, start, end), self.fetch_timeout_s
                )
                results[source.name] = await asyncio.to_thread(
                    self.store.upsert, points, self._clock()
                )
            except Exception as exc:  # reported per source to the caller
                results[source.name] = exc
        return results

    async def _run_source(self, source: PriceSource, now: datetime) -> None:
        for zone_ in self.zones:
            status = self._status[(source.name, zone_.code)]
            if status.next_run is not None and status.next_run > now:
                continue
            await self._fetch(source, zone_, status)

    async def _fetch(self, source: PriceSource, zone_: Zone, status: FeedStatus) -> None:
        started = self._clock()
        start, end = feed_window(zone_, started)
        outcome: Outcome
        try:
            points = await asyncio.wait_for(source.fetch(zone_, start, end), self.fetch_timeout_s)
            result = await asyncio.to_thread(self.store.upsert, points, started)
            stored = await asyncio.to_thread(self.store.count, zone_.code, source.name)
        except NoDataError as exc:
            outcome = "no_data"
            log.info("market feed: %s %s: no data yet (%s)", source.name, zone_.code, exc)
            status = replace(
                status,
                state="no_data",
                last_success=started,
                consecutive_failures=0,
                points_fetched=0,
                last_result=None,
            )
            self._recovered(source, zone_, status)
            status = replace(status, next_run=started + timedelta(seconds=self.interval_s))
        except Exception as exc:  # one source's failure never stops the feed
            outcome = "error"
            status = self._failed(source, zone_, status, started, exc)
        else:
            outcome = "ok"
            self._recovered(source, zone_, status)
            status = replace(
                status,
                state="ok",
                last_success=started,
                consecutive_failures=0,
                points_fetched=len(points),
                last_result=result,
                stored_points=stored,
                next_run=started + timedelta(seconds=self.interval_s),
            )
            log.debug(
                "market feed: %s %s: %d points (%d new, %d revised, %d unchanged)",
                source.name,
                zone_.code,
                len(points),
                *result,
            )
        status = replace(status, last_attempt=started)
        self._status[(source.name, zone_.code)] = status
        if self._metrics is not None:
            self._metrics.fetches.labels(source.name, zone_.code, outcome).inc()
            if status.last_success == started:
                self._metrics.last_success.labels(source.name, zone_.code).set(started.timestamp())

    def _failed(
        self, source: PriceSource, zone_: Zone, status: FeedStatus, now: datetime, exc: Exception
    ) -> FeedStatus:
        failures = status.consecutive_failures + 1
        text = _describe(exc)
        if isinstance(exc, SourceError) and not exc.retryable:
            delay = self.max_backoff_s
        else:
            delay = min(self.interval_s * 2 ** (failures - 1), self.max_backoff_s)
        if failures == 1:
            log.error(
                "market feed: %s %s failed: %s (next try in %g s)",
                source.name,
                zone_.code,
                text,
                delay,
                exc_info=not isinstance(exc, SourceError | ValueError | TimeoutError),
            )
        else:
            log.debug(
                "market feed: %s %s failed again (%d): %s", source.name, zone_.code, failures, text
            )
        return replace(
            status,
            state="error",
            last_error=text,
            last_error_at=now,
            consecutive_failures=failures,
            next_run=now + timedelta(seconds=delay),
        )

    @staticmethod
    def _recovered(source: PriceSource, zone_: Zone, status: FeedStatus) -> None:
        if status.consecutive_failures:
            log.warning(
                "market feed: %s %s answers again after %d failed fetches",
                source.name,
                zone_.code,
                status.consecutive_failures,
            )


def _describe(exc: Exception) -> str:
    if isinstance(exc, TimeoutError):
        return "the source did not answer in time"
    text = str(exc) or type(exc).__name__
    return text if isinstance(exc, ValueError | SourceError) else f"{type(exc).__name__}: {text}"


def open_market(
    engine: Engine,
    settings: PlaneSettings,
    *,
    clock: Callable[[], datetime] = utc_now,
    metrics: FeedMetrics | None = None,
    sources: Sequence[PriceSource] | None = None,
) -> tuple[PriceStore, MarketFeed]:
    """The price store (migrated) on the shared engine and the feed the settings describe
    (`sources` overrides `market_sources`). Blocking: call it in a worker thread."""
    store = PriceStore(engine, priority=settings.market_source_priority)
    applied = store.migrate()
    if applied:
        log.info("market: price store migrated to version %d", applied[-1])
    feed = MarketFeed(
        sources=build_sources(settings) if sources is None else sources,
        store=store,
        zones=settings.market_zones,
        interval_s=settings.update_interval_s,
        clock=clock,
        metrics=metrics,
    )
    return store, feed
