"""The scheduled feed with fake sources, a real SQLite store and a stepped clock: windows,
status, error isolation, NoDataError, backoff, metrics, the loop."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry

from control_plane import db
from control_plane.market.feed import FeedMetrics, MarketFeed, feed_window
from control_plane.market.models import (
    DocumentError,
    NoDataError,
    PricePoint,
    Resolution,
    SourceError,
    Zone,
    zone,
)
from control_plane.market.store import PriceStore, UpsertResult

NOW = datetime(2025, 3, 30, 10, 0, tzinfo=UTC)  # the day Vienna springs forward


@dataclass
class Clock:
    now: datetime = NOW

    def __call__(self) -> datetime:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += timedelta(seconds=seconds)


@dataclass
class FakeSource:
    """Answers with `price` per hour of the window, or raises what `fail` gives."""

    name: str
    price: float = 50.0
    fail: Callable[[], Exception] | None = None
    calls: list[tuple[str, datetime, datetime]] = field(default_factory=list)

    async def fetch(self, zone: Zone, start: datetime, end: datetime) -> list[PricePoint]:
        self.calls.append((zone.code, start, end))
        if self.fail is not None:
            raise self.fail()
        hours = int((end - start) / timedelta(hours=1))
        return [
            PricePoint(
                zone=zone.code,
                start=start + timedelta(hours=h),
                resolution=Resolution.PT60M,
                price_eur_per_mwh=self.price,
                source=self.name,
            )
            for h in range(hours)
        ]


@pytest.fixture
def store(tmp_path: Path) -> PriceStore:
    s = PriceStore(db.create_engine(database_url=None, sqlite_path=tmp_path / "p.sqlite3"))
    s.migrate()
    return s


def make_feed(
    store: PriceStore, *sources: FakeSource, zones: tuple[str, ...] = ("AT",), **kw: object
) -> tuple[MarketFeed, Clock, CollectorRegistry]:
    clock = Clock()
    registry = CollectorRegistry()
    feed = MarketFeed(
        sources=sources,
        store=store,
        zones=zones,
        interval_s=300,
        clock=clock,
        metrics=FeedMetrics(registry),
        **kw,  # type: ignore[arg-type]
    )
    return feed, clock, registry


def test_the_window_is_yesterday_to_tomorrow_in_local_days_across_dst() -> None:
    start, end = feed_window(zone("AT"), NOW)
    assert start == datetime(2025, 3, 28, 23, 0, tzinfo=UTC)  # 29 Mar 00:00 CET
    assert end == datetime(2025, 3, 31, 22, 0, tzinfo=UTC)  # 1 Apr 00:00 CEST
    assert (end - start) == timedelta(hours=71)  # 24 + 23 (the short day) + 24
    late = datetime(2025, 3, 30, 23, 30, tzinfo=UTC)  # already 31 Mar in Vienna
    assert feed_window(zone("AT"), late)[0] == datetime(2025, 3, 29, 23, 0, tzinfo=UTC)


async def test_a_run_stores_prices_and_keeps_a_status(store: PriceStore) -> None:
    source = FakeSource("entsoe")
    feed, clock, registry = make_feed(store, source, zones=("AT", "DE_LU"))
    assert [s.state for s in feed.status()] == ["pending", "pending"]
    await feed.run_once()
    assert [c[0] for c in source.calls] == ["AT", "DE_LU"]
    at = feed.status()[0]
    assert (at.source, at.zone, at.state) == ("entsoe", "AT", "ok")
    assert at.last_attempt == at.last_success == NOW
    assert at.last_error is None
    assert (at.points_fetched, at.last_result, at.stored_points) == (
        71,
        UpsertResult(71, 0, 0),
        71,
    )
    assert at.next_run == NOW + timedelta(seconds=300)
    assert len(store.prices("DE_LU", NOW - timedelta(days=2), NOW + timedelta(days=2))) == 71
    await feed.run_once()  # nothing is due yet
    assert len(source.calls) == 2
    clock.advance(300)
    await feed.run_once()
    assert len(source.calls) == 4
    assert feed.status()[0].last_result == UpsertResult(0, 0, 71)
    labels = {"source": "entsoe", "zone": "AT"}
    assert (
        registry.get_sample_value("bess_plane_market_fetch_total", {**labels, "outcome": "ok"})
        == 2.0
    )
    assert (
        registry.get_sample_value("bess_plane_market_last_success_timestamp_seconds", labels)
        == clock.now.timestamp()
    )


async def test_a_failing_source_does_not_stop_the_others_and_backs_off(
    store: PriceStore,
) -> None:
    broken = FakeSource("entsoe", fail=lambda: SourceError("HTTP 503 from ENTSO-E", retryable=True))
    good = FakeSource("awattar", price=42.0)
    feed, clock, registry = make_feed(store, broken, good)
    await feed.run_once()
    bad, ok = feed.status()
    assert ok.state == "ok" and ok.stored_points == 71
    assert bad.state == "error"
    assert bad.last_error == "HTTP 503 from ENTSO-E"
    assert (bad.last_error_at, bad.last_success, bad.consecutive_failures) == (NOW, None, 1)
    assert bad.next_run == NOW + timedelta(seconds=300)
    clock.advance(300)
    await feed.run_once()
    assert feed.status()[0].consecutive_failures == 2
    assert feed.status()[0].next_run == clock.now + timedelta(seconds=600)  # doubled
    for _ in range(6):
        clock.now = feed.status()[0].next_run  # type: ignore[assignment]
        await feed.run_once()
    assert feed.status()[0].next_run == clock.now + timedelta(seconds=3600)  # capped
    assert (
        registry.get_sample_value(
            "bess_plane_market_fetch_total", {"source": "entsoe", "zone": "AT", "outcome": "error"}
        )
        == 8.0
    )
    broken.fail = None  # the source recovers
    clock.now = feed.status()[0].next_run  # type: ignore[assignment]
    await feed.run_once()
    recovered = feed.status()[0]
    assert (recovered.state, recovered.consecutive_failures) == ("ok", 0)
    assert recovered.last_error == "HTTP 503 from ENTSO-E"  # kept, with its time, for the desk
    assert recovered.next_run == clock.now + timedelta(seconds=300)
    # The awattar prices were stored all along; entsoe now has its own too.
    assert store.count("AT", "awattar") == 71 and store.count("AT", "entsoe") > 0


async def test_a_refused_request_waits_the_maximum_at_once(store: PriceStore) -> None:
    refused = FakeSource("entsoe", fail=lambda: SourceError("401: invalid token", retryable=False))
    feed, _, _ = make_feed(store, refused, max_backoff_s=7200)
    await feed.run_once()
    assert feed.status()[0].next_run == NOW + timedelta(seconds=7200)


async def test_no_data_is_not_an_error(store: PriceStore) -> None:
    empty = FakeSource("entsoe", fail=lambda: NoDataError("No matching data found"))
    feed, _, registry = make_feed(store, empty)
    await feed.run_once()
    status = feed.status()[0]
    assert status.state == "no_data"
    assert (status.last_error, status.consecutive_failures, status.last_success) == (None, 0, NOW)
    assert status.next_run == NOW + timedelta(seconds=300)
    assert (
        registry.get_sample_value(
            "bess_plane_market_fetch_total",
            {"source": "entsoe", "zone": "AT", "outcome": "no_data"},
        )
        == 1.0
    )


async def test_unexpected_errors_and_timeouts_are_errors_with_their_text(
    store: PriceStore,
) -> None:
    crashing = FakeSource("entsoe", fail=lambda: RuntimeError("boom"))
    unreadable = FakeSource("awattar", fail=lambda: DocumentError("awattar.json", "no data key"))
    feed, _, _ = make_feed(store, crashing, unreadable)
    await feed.run_once()
    assert [s.last_error for s in feed.status()] == [
        "RuntimeError: boom",
        "awattar.json: no data key",
    ]

    class Hanging(FakeSource):
        async def fetch(self, zone: Zone, start: datetime, end: datetime) -> list[PricePoint]:
            await asyncio.Event().wait()
            raise AssertionError("unreachable")

    slow_feed, _, _ = make_feed(store, Hanging("entsoe"), fetch_timeout_s=0.01)
    await slow_feed.run_once()
    assert slow_feed.status()[0].last_error == "the source did not answer in time"


async def test_the_loop_sleeps_until_the_next_run_and_stops_when_cancelled(
    store: PriceStore,
) -> None:
    source = FakeSource("entsoe")
    clock = Clock()
    slept: list[float] = []

    async def sleep(seconds: float) -> None:
        slept.append(seconds)
        clock.advance(seconds)
        if len(slept) == 3:
            raise asyncio.CancelledError

    feed = MarketFeed(sources=[source], store=store, zones=["AT"], clock=clock, sleep=sleep)
    with pytest.raises(asyncio.CancelledError):
        await feed.run()
    assert slept == [300.0, 300.0, 300.0]
    assert len(source.calls) == 3


async def test_without_sources_the_loop_ends_and_running_exits_cleanly(
    store: PriceStore,
) -> None:
    feed = MarketFeed(sources=[], store=store, zones=["AT"])
    await feed.run()
    async with feed.running():
        pass
    assert feed.status() == []


async def test_fetch_range_reports_per_source(store: PriceStore) -> None:
    good = FakeSource("awattar")
    bad = FakeSource("entsoe", fail=lambda: SourceError("timeout", retryable=True))
    feed, _, _ = make_feed(store, bad, good)
    start = datetime(2025, 1, 1, tzinfo=UTC)
    results = await feed.fetch_range("AT", start, start + timedelta(days=1))
    assert results["awattar"] == UpsertResult(24, 0, 0)
    assert isinstance(results["entsoe"], SourceError)
    assert [s.state for s in feed.status()] == ["pending", "pending"]  # the schedule untouched


def test_bad_configuration_is_refused(store: PriceStore) -> None:
    with pytest.raises(ValueError, match="unique"):
        MarketFeed(sources=[FakeSource("x"), FakeSource("x")], store=store, zones=["AT"])
    with pytest.raises(ValueError, match="interval_s"):
        MarketFeed(sources=[], store=store, zones=["AT"], interval_s=0)
    with pytest.raises(ValueError, match="unknown bidding zone"):
        MarketFeed(sources=[], store=store, zones=["XX"])
