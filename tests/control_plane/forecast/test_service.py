"""The forecast jobs: results, failures with clear messages, bounds, metrics."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest
from prometheus_client import CollectorRegistry

from control_plane.forecast.service import (
    ForecastMetrics,
    ForecastRequest,
    ForecastRequestError,
    ForecastService,
    JobState,
    TooManyJobsError,
    UnknownJobError,
    create_forecast_service,
)

from .conftest import HOUR, T0, MemoryHistory, noisy, points

BRUSSELS = ZoneInfo("Europe/Brussels")
DAYS = 60
ORIGIN = T0 + timedelta(days=DAYS) + 11 * HOUR  # 12:00 Brussels (CET)


class Clock:
    def __init__(self, now: datetime = ORIGIN) -> None:
        self.now = now

    def __call__(self) -> datetime:
        return self.now


def service(history: MemoryHistory | None = None, **options) -> ForecastService:
    history = history or MemoryHistory(points(noisy(24 * (DAYS + 5))))
    return ForecastService(history=history, clock=Clock(), **options)


def test_dayahead_gives_96_quarter_hours_of_the_next_local_day() -> None:
    svc = service()
    result = svc.compute(ForecastRequest(kind="dayahead", zone="BE"), ORIGIN)
    assert [f.quantity for f in result] == ["price", "load", "solar", "wind"]
    price = result[0]
    assert price.unit == "EUR/MWh" and price.model == "ridge" and price.resolution == "PT15M"
    assert len(price.intervals) == 96
    assert price.intervals[0].start.astimezone(BRUSSELS) == datetime(2022, 3, 5, 0, tzinfo=BRUSSELS)
    assert price.intervals[1].start - price.intervals[0].start == timedelta(minutes=15)
    assert price.training_end == ORIGIN
    assert price.training_start is not None and price.training_start < ORIGIN
    for forecast in result:
        assert len(forecast.intervals) == 96
        assert all(i.p10 <= i.p50 <= i.p90 for i in forecast.intervals)
        # hourly model: the four quarters of an hour carry the same figures
        first_hour = {(i.p10, i.p50, i.p90) for i in forecast.intervals[:4]}
        assert len(first_hour) == 1
    assert "profile" in result[1].notes[0]


def test_the_history_is_asked_up_to_the_origin_only() -> None:
    history = MemoryHistory(points(noisy(24 * (DAYS + 5))))
    service(history).compute(ForecastRequest(kind="intraday", zone="BE"), ORIGIN)
    assert history.calls == [("BE", ORIGIN - timedelta(days=84), ORIGIN)]


def test_intraday_gives_48_quarter_hours_from_the_origin() -> None:
    result = service().compute(
        ForecastRequest(kind="intraday", zone="BE", quantities=("price",)), ORIGIN
    )
    assert len(result) == 1
    assert len(result[0].intervals) == 48 and result[0].intervals[0].start == ORIGIN


def test_a_dst_day_has_92_quarter_hours() -> None:
    start = datetime(2022, 1, 20, tzinfo=UTC)
    history = MemoryHistory(points(noisy(24 * 70), start=start))
    origin = datetime(2022, 3, 26, 12, tzinfo=BRUSSELS).astimezone(UTC)
    result = service(history).compute(
        ForecastRequest(kind="dayahead", zone="BE", quantities=("price",)), origin
    )
    assert len(result[0].intervals) == 92


def test_a_lagging_history_forecasts_from_its_end_and_says_so() -> None:
    history = MemoryHistory(points(noisy(24 * DAYS)))  # ends 11 hours before ORIGIN
    result = service(history).compute(
        ForecastRequest(kind="intraday", zone="BE", quantities=("price",)), ORIGIN
    )
    assert len(result[0].intervals) == 48 and result[0].intervals[0].start == ORIGIN
    assert any("before the origin" in n for n in result[0].notes)


async def test_too_little_history_fails_the_job_with_how_much_is_needed() -> None:
    svc = service(MemoryHistory(points(noisy(24 * 10), start=ORIGIN - timedelta(days=10))))
    job = svc.submit(ForecastRequest(kind="dayahead", zone="BE"))
    assert job.state is JobState.QUEUED
    done = await svc.run(job.job_id)
    assert done.state is JobState.FAILED
    assert done.error is not None
    assert "needs at least 504 hours (21 days)" in done.error and "got 240 hours" in done.error
    assert svc.status(job.job_id) == done


async def test_no_prices_at_all_fails_naming_the_feed() -> None:
    svc = create_forecast_service(history=None, registry=CollectorRegistry(), clock=Clock())
    job = await svc.run(svc.submit(ForecastRequest(kind="intraday", zone="AT")).job_id)
    assert job.state is JobState.FAILED
    assert job.error is not None and "no prices of zone AT" in job.error
    assert "price feed" in job.error


async def test_stale_history_fails_naming_the_latest_price() -> None:
    history = MemoryHistory(points(noisy(24 * 40)))
    svc = service(history)
    job = await svc.run(svc.submit(ForecastRequest(kind="intraday", zone="BE")).job_id)
    assert job.error is not None and "the latest price of zone BE is for" in job.error


@pytest.mark.parametrize(
    ("request_", "message"),
    [
        (ForecastRequest(kind="dayahead", zone="XX"), "unknown bidding zone 'XX'"),
        (ForecastRequest(kind="weekly", zone="BE"), "unknown forecast type 'weekly'"),
        (ForecastRequest(kind="dayahead", zone="BE", quantities=("hail",)), "hail"),
        (
            ForecastRequest(kind="dayahead", zone="10YGR-HTSO-----Y", quantities=("load",)),
            "no load/solar/wind profile",
        ),
    ],
)
def test_bad_requests_are_refused_at_once(request_: ForecastRequest, message: str) -> None:
    with pytest.raises(ForecastRequestError, match=message):
        service().submit(request_)


def test_an_eic_zone_may_ask_for_price_only() -> None:
    job = service().submit(
        ForecastRequest(kind="dayahead", zone="10YGR-HTSO-----Y", quantities=("price",))
    )
    assert job.request.zone == "10YGR-HTSO-----Y"


def test_at_most_max_pending_jobs_wait() -> None:
    svc = service(max_pending=2)
    svc.submit(ForecastRequest(kind="intraday", zone="BE"))
    svc.submit(ForecastRequest(kind="intraday", zone="BE"))
    with pytest.raises(TooManyJobsError, match="2 forecast jobs are already queued"):
        svc.submit(ForecastRequest(kind="intraday", zone="BE"))


async def test_finished_jobs_expire_after_the_ttl_and_beyond_max_jobs() -> None:
    clock = Clock()
    svc = ForecastService(
        history=MemoryHistory(points(noisy(24 * (DAYS + 5)))), clock=clock, max_jobs=2
    )
    request = ForecastRequest(kind="intraday", zone="BE", quantities=("price",))
    ids = []
    for _ in range(3):
        ids.append((await svc.run(svc.submit(request).job_id)).job_id)
        clock.now += timedelta(minutes=1)
    svc.submit(request)  # pruning happens on submit and status
    with pytest.raises(UnknownJobError):
        svc.status(ids[0])  # the oldest finished job beyond max_jobs
    assert svc.status(ids[2]).state is JobState.DONE
    clock.now += timedelta(hours=24)
    with pytest.raises(UnknownJobError, match="expired"):
        svc.status(ids[2])


async def test_metrics_count_jobs_and_show_the_latest_p50() -> None:
    registry = CollectorRegistry()
    svc = service(metrics=ForecastMetrics(registry))
    job = await svc.run(svc.submit(ForecastRequest(kind="dayahead", zone="BE")).job_id)
    assert job.state is JobState.DONE
    assert registry.get_sample_value("pho_forecast_jobs_total", {"type": "dayahead"}) == 1
    first = {f.quantity: f.intervals[0].p50 for f in job.result}
    for quantity, metric in (
        ("price", "pho_forecast_price_eur_mwh"),
        ("load", "pho_forecast_load_mw"),
        ("solar", "pho_forecast_solar_mw"),
        ("wind", "pho_forecast_wind_mw"),
    ):
        assert (
            registry.get_sample_value(metric, {"horizon": "24h", "zone": "BE"}) == first[quantity]
        )


async def test_start_runs_the_job_in_the_background_and_close_cancels() -> None:
    svc = service()
    job = await svc.start(ForecastRequest(kind="intraday", zone="BE", quantities=("price",)))
    while svc.status(job.job_id).state in (JobState.QUEUED, JobState.RUNNING):
        await asyncio.sleep(0.01)
    assert svc.status(job.job_id).state is JobState.DONE
    await svc.close()
