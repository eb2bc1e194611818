"""The coordinator with a fake clock and fake sources: priorities, staleness, failures."""

from __future__ import annotations

import asyncio
import logging
import math

import pytest

from edge_agent.coordinator import (
    COUNTER_LABELS,
    Coordinator,
    CoordinatorUpdate,
    Snapshot,
)
from edge_agent.readings import Quantity, Reading, ReadingSink

Q = Quantity
T0 = 1_767_225_600.0  # 2026-01-01T00:00:00Z


class FakeClock:
    def __init__(self, now: float = T0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


class FakeReader:
    """A polled source that returns queued readings or raises queued errors."""

    def __init__(self, name: str = "modbus") -> None:
        self.name = name
        self.results: list[list[Reading] | Exception] = []
        self.hang = False

    async def read(self) -> list[Reading]:
        if self.hang:
            await asyncio.sleep(3600)
        result = self.results.pop(0)
        if isinstance(result, Exception):
            raise result
        return result


def r(q: Quantity, value: float, t: float, source: str) -> Reading:
    return Reading(quantity=q, value=value, timestamp=T0 + t, source=source)


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def coord(clock: FakeClock) -> Coordinator:
    return Coordinator(clock, stale_after_s={Q.SOC_PCT: 10.0, Q.TEMPERATURE_C: 60.0})


def test_is_a_reading_sink(coord: Coordinator) -> None:
    sink: ReadingSink = coord
    sink.ingest([])
    assert coord.snapshot().entries == {}


def test_empty_snapshot_reports_missing_as_stale(coord: Coordinator) -> None:
    snap = coord.snapshot()
    assert snap.value(Q.SOC_PCT) is None
    assert snap.age_s(Q.SOC_PCT) is None
    assert snap.source(Q.SOC_PCT) is None
    assert snap.is_stale(Q.SOC_PCT)
    assert Q.SOC_PCT not in snap


def test_default_priority_modbus_over_mqtt_over_rest(coord: Coordinator, clock: FakeClock) -> None:
    coord.ingest([r(Q.SOC_PCT, 50.0, 0, "rest"), r(Q.SOC_PCT, 51.0, 0, "mqtt")])
    assert coord.snapshot().source(Q.SOC_PCT) == "mqtt"
    coord.ingest([r(Q.SOC_PCT, 52.0, -1, "modbus")])  # older but fresh: priority wins
    snap = coord.snapshot()
    assert (snap.source(Q.SOC_PCT), snap.value(Q.SOC_PCT)) == ("modbus", 52.0)
    assert snap.age_s(Q.SOC_PCT) == 1.0
    assert not snap.is_stale(Q.SOC_PCT)


def test_unknown_sources_rank_below_listed_ones_by_name(clock: FakeClock) -> None:
    coord = Coordinator(clock)
    coord.ingest([r(Q.SOC_PCT, 1.0, 0, "zeta"), r(Q.SOC_PCT, 2.0, 0, "alpha")])
    assert coord.snapshot().source(Q.SOC_PCT) == "alpha"
    coord.ingest([r(Q.SOC_PCT, 3.0, 0, "rest")])
    assert coord.snapshot().source(Q.SOC_PCT) == "rest"


def test_priorities_per_quantity(clock: FakeClock) -> None:
    coord = Coordinator(clock, priorities={Q.TEMPERATURE_C: ["mqtt", "modbus"]})
    assert coord.priority(Q.TEMPERATURE_C) == ("mqtt", "modbus")
    assert coord.priority(Q.SOC_PCT) == ("modbus", "mqtt", "rest")
    coord.ingest(
        [
            r(Q.TEMPERATURE_C, 25.0, 0, "modbus"),
            r(Q.TEMPERATURE_C, 26.0, 0, "mqtt"),
            r(Q.SOC_PCT, 40.0, 0, "modbus"),
            r(Q.SOC_PCT, 41.0, 0, "mqtt"),
        ]
    )
    snap = coord.snapshot()
    assert snap.source(Q.TEMPERATURE_C) == "mqtt"
    assert snap.source(Q.SOC_PCT) == "modbus"


@pytest.mark.parametrize(
    ("quantity", "age_s", "stale"),
    [
        (Q.SOC_PCT, 10.0, False),  # exactly at the limit is still fresh
        (Q.SOC_PCT, 10.001, True),
        (Q.TEMPERATURE_C, 59.0, False),  # its own, longer threshold
        (Q.TEMPERATURE_C, 61.0, True),
        (Q.ACTIVE_POWER_KW, 10.0, False),  # not listed: the default (10 s)
        (Q.ACTIVE_POWER_KW, 11.0, True),
        (Q.SOC_PCT, -5.0, False),  # a little in the future: clocks differ slightly
        (Q.SOC_PCT, -11.0, True),  # far in the future: a clock went wrong
    ],
)
def test_staleness_thresholds(
    coord: Coordinator, clock: FakeClock, quantity: Quantity, age_s: float, stale: bool
) -> None:
    coord.ingest([r(quantity, 20.0, 0, "modbus")])
    clock.advance(age_s)
    snap = coord.snapshot()
    assert snap.is_stale(quantity) is stale
    assert snap.age_s(quantity) == pytest.approx(age_s)
    assert snap.value(quantity) == 20.0  # a stale value is still reported, flagged


def test_single_stale_after_for_every_quantity(clock: FakeClock) -> None:
    coord = Coordinator(clock, stale_after_s=2.0)
    assert coord.stale_after_s(Q.SOC_PCT) == coord.stale_after_s(Q.VOLTAGE_V) == 2.0
    coord.ingest([r(Q.VOLTAGE_V, 800.0, 0, "modbus")])
    clock.advance(3)
    assert coord.snapshot().is_stale(Q.VOLTAGE_V)


def test_falls_back_to_lower_priority_and_back(coord: Coordinator, clock: FakeClock) -> None:
    coord.ingest([r(Q.SOC_PCT, 50.0, 0, "modbus"), r(Q.SOC_PCT, 49.0, 0, "mqtt")])
    clock.advance(8)
    coord.ingest([r(Q.SOC_PCT, 48.0, 8, "mqtt")])  # only MQTT keeps delivering
    assert coord.snapshot().source(Q.SOC_PCT) == "modbus"  # 8 s old: still fresh
    clock.advance(4)
    snap = coord.snapshot()  # Modbus 12 s old -> stale; MQTT 4 s old
    assert (snap.source(Q.SOC_PCT), snap.value(Q.SOC_PCT)) == ("mqtt", 48.0)
    assert not snap.is_stale(Q.SOC_PCT)
    coord.ingest([r(Q.SOC_PCT, 47.0, 12, "modbus")])
    assert coord.snapshot().source(Q.SOC_PCT) == "modbus"


def test_all_stale_gives_the_freshest_flagged(coord: Coordinator, clock: FakeClock) -> None:
    coord.ingest([r(Q.SOC_PCT, 50.0, 0, "modbus"), r(Q.SOC_PCT, 49.0, 5, "rest")])
    clock.advance(30)
    snap = coord.snapshot()
    assert (snap.source(Q.SOC_PCT), snap.value(Q.SOC_PCT)) == ("rest", 49.0)
    assert snap.is_stale(Q.SOC_PCT)
    assert snap.age_s(Q.SOC_PCT) == 25.0
    assert snap.fresh_values() == {}


def test_snapshot_at_explicit_time(coord: Coordinator) -> None:
    coord.ingest([r(Q.SOC_PCT, 50.0, 0, "modbus")])
    assert not coord.snapshot(T0 + 5).is_stale(Q.SOC_PCT)
    assert coord.snapshot(T0 + 50).is_stale(Q.SOC_PCT)
    assert coord.snapshot(T0 + 5).taken_at == T0 + 5


def test_older_reading_does_not_replace_newer(coord: Coordinator, clock: FakeClock) -> None:
    seen: list[CoordinatorUpdate] = []
    coord.subscribe(seen.append)
    coord.ingest([r(Q.SOC_PCT, 50.0, 0, "rest"), r(Q.SOC_PCT, 40.0, -30, "rest")])
    assert coord.snapshot().value(Q.SOC_PCT) == 50.0
    assert coord.latest(Q.SOC_PCT, "rest") == r(Q.SOC_PCT, 50.0, 0, "rest")
    assert len(seen[0].readings) == 2  # both go to the uplink as history
    counters = coord.counters()
    assert counters["readings_out_of_order_total"] == {("rest", "soc_pct"): 1}
    assert counters["readings_accepted_total"] == {("rest", "soc_pct"): 2}


async def test_poll_ingests_and_counts(coord: Coordinator) -> None:
    reader = FakeReader()
    reader.results.append(
        [r(Q.SOC_PCT, 55.0, 0, "modbus"), r(Q.ACTIVE_POWER_KW, -3.0, 0, "modbus")]
    )
    assert await coord.poll(reader) is True
    snap = coord.snapshot()
    assert snap.value(Q.SOC_PCT) == 55.0
    assert snap.value(Q.ACTIVE_POWER_KW) == -3.0
    assert coord.counters()["polls_total"] == {("modbus",): 1}
    assert coord.health("modbus").last_success_at == T0


async def test_poll_failures_do_not_raise_and_mark_source_stale(
    coord: Coordinator, clock: FakeClock, caplog: pytest.LogCaptureFixture
) -> None:
    reader = FakeReader()
    reader.results += [
        [r(Q.SOC_PCT, 55.0, 0, "modbus")],
        ConnectionResetError("connection reset by peer"),
        TimeoutError(),
        OSError("no route to host"),
        [r(Q.SOC_PCT, 56.0, 3, "modbus")],
    ]
    coord.ingest([r(Q.SOC_PCT, 54.0, 0, "mqtt")])
    assert await coord.poll(reader)
    assert coord.snapshot().source(Q.SOC_PCT) == "modbus"

    caplog.set_level(logging.DEBUG, logger="edge_agent.coordinator")
    clock.advance(1)
    assert await coord.poll(reader) is False
    snap = coord.snapshot()  # Modbus reading only 1 s old, but its source failed: fall back
    assert (snap.source(Q.SOC_PCT), snap.is_stale(Q.SOC_PCT)) == ("mqtt", False)
    assert coord.health("modbus").failing

    clock.advance(1)
    assert await coord.poll(reader) is False
    clock.advance(1)
    assert await coord.poll(reader) is False
    errors = [rec for rec in caplog.records if rec.levelno >= logging.ERROR]
    assert len(errors) == 1, "first failure loud, repeats quiet"
    assert "modbus poll failed" in errors[0].getMessage()
    assert "connection reset by peer" in errors[0].getMessage()
    health = coord.health("modbus")
    assert (health.consecutive_failures, health.last_error) == (3, "OSError: no route to host")

    caplog.clear()
    assert await coord.poll(reader) is True
    assert coord.snapshot().source(Q.SOC_PCT) == "modbus"
    recovered = [rec for rec in caplog.records if "succeeds again" in rec.getMessage()]
    assert len(recovered) == 1
    assert "after 3 failed polls" in recovered[0].getMessage()
    assert not coord.health("modbus").failing
    assert coord.counters()["poll_failures_total"] == {("modbus",): 3}


async def test_all_sources_failed_keeps_value_flagged_stale(coord: Coordinator) -> None:
    reader = FakeReader()
    reader.results += [[r(Q.SOC_PCT, 55.0, 0, "modbus")], RuntimeError("boom")]
    await coord.poll(reader)
    await coord.poll(reader)
    snap = coord.snapshot()
    assert (snap.value(Q.SOC_PCT), snap.is_stale(Q.SOC_PCT)) == (55.0, True)


async def test_poll_timeout(coord: Coordinator) -> None:
    reader = FakeReader()
    reader.hang = True
    assert await coord.poll(reader, timeout_s=0.01) is False
    assert coord.health("modbus").last_error == "no answer within 0.01 s"


async def test_poll_cancellation_propagates(coord: Coordinator) -> None:
    reader = FakeReader()
    reader.hang = True
    task = asyncio.create_task(coord.poll(reader))
    await asyncio.sleep(0)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task


async def test_run_poller_keeps_polling_through_failures(coord: Coordinator) -> None:
    reader = FakeReader()
    reader.results += [RuntimeError("down"), RuntimeError("down")]
    reader.results += [[r(Q.SOC_PCT, 50.0, 0, "modbus")] for _ in range(100)]
    polled = asyncio.Event()
    coord.subscribe(lambda u: polled.set() if u.readings else None)
    task = asyncio.create_task(coord.run_poller(reader, interval_s=0.001))
    await asyncio.wait_for(polled.wait(), 1.0)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert coord.counters()["poll_failures_total"] == {("modbus",): 2}


async def test_run_poller_stops_even_if_a_reader_swallowed_the_cancellation(
    coord: Coordinator,
) -> None:
    """A reader whose library loses a cancel (pymodbus' wait_for on Python < 3.12) and answers
    instead: the poller was told to stop, so it stops after that poll."""

    class DeafReader:
        name = "modbus"
        polls = 0

        async def read(self) -> list[Reading]:
            self.polls += 1
            try:
                await asyncio.sleep(3600)
            except asyncio.CancelledError:
                pass  # swallowed, and answered as if nothing happened
            return [r(Q.SOC_PCT, 50.0, 0, "modbus")]

    reader = DeafReader()
    task = asyncio.create_task(coord.run_poller(reader, interval_s=0.001, timeout_s=60.0))
    await asyncio.sleep(0.01)
    task.cancel()
    await asyncio.wait({task}, timeout=1.0)
    assert task.cancelled(), "the poller kept polling after it was cancelled"
    assert reader.polls == 1


@pytest.mark.parametrize(
    ("reading", "why"),
    [
        (r(Q.SOC_PCT, 120.0, 0, "mqtt"), "outside the plausible range 0 … 100"),
        (r(Q.SOC_PCT, math.nan, 0, "mqtt"), "not a number"),
        (r(Q.ACTIVE_POWER_KW, math.inf, 0, "mqtt"), "not a number"),
        (r(Q.TEMPERATURE_C, -273.0, 0, "mqtt"), "outside the plausible range"),
        (Reading(Q.SOC_PCT, 50.0, math.nan, "mqtt"), "no valid timestamp"),
    ],
)
def test_implausible_refused_counted_logged_once(
    coord: Coordinator, caplog: pytest.LogCaptureFixture, reading: Reading, why: str
) -> None:
    caplog.set_level(logging.INFO, logger="edge_agent.coordinator")
    for _ in range(3):
        coord.ingest([reading])
    assert reading.quantity not in coord.snapshot()
    key = (reading.source, reading.quantity.value)
    assert coord.counters()["readings_refused_total"] == {key: 3}
    warnings = [rec for rec in caplog.records if rec.levelno == logging.WARNING]
    assert len(warnings) == 1
    assert why in warnings[0].getMessage()

    caplog.clear()
    good = Reading(reading.quantity, 42.0, T0, reading.source)
    coord.ingest([good, good])
    coord.ingest([reading])  # bad again after recovery: logged again
    messages = [rec.getMessage() for rec in caplog.records]
    assert sum("plausible" in m and "again" in m for m in messages) == 1
    assert sum(why in m for m in messages) == 1
    assert coord.snapshot().value(reading.quantity) == 42.0


def test_refusal_logged_once_per_source_and_quantity(
    coord: Coordinator, caplog: pytest.LogCaptureFixture
) -> None:
    coord.ingest(
        [
            r(Q.SOC_PCT, 101.0, 0, "mqtt"),
            r(Q.SOC_PCT, 102.0, 0, "mqtt"),
            r(Q.SOC_PCT, 101.0, 0, "rest"),
            r(Q.SOH_PCT, 101.0, 0, "mqtt"),
        ]
    )
    assert len([rec for rec in caplog.records if rec.levelno == logging.WARNING]) == 3
    assert coord.counters()["readings_refused_total"] == {
        ("mqtt", "soc_pct"): 2,
        ("rest", "soc_pct"): 1,
        ("mqtt", "soh_pct"): 1,
    }


def test_implausible_does_not_displace_good_value(coord: Coordinator) -> None:
    coord.ingest([r(Q.SOC_PCT, 60.0, 0, "modbus")])
    coord.ingest([r(Q.SOC_PCT, 160.0, 1, "modbus")])
    assert coord.snapshot().value(Q.SOC_PCT) == 60.0


async def test_listeners_get_accepted_readings_and_snapshot(
    coord: Coordinator, caplog: pytest.LogCaptureFixture
) -> None:
    updates: list[CoordinatorUpdate] = []
    unsubscribe = coord.subscribe(updates.append)

    def broken(update: CoordinatorUpdate) -> None:
        raise RuntimeError("listener bug")

    coord.subscribe(broken)
    coord.ingest([r(Q.SOC_PCT, 50.0, 0, "rest"), r(Q.SOC_PCT, 500.0, 0, "rest")])
    assert [u.readings for u in updates] == [(r(Q.SOC_PCT, 50.0, 0, "rest"),)]
    assert isinstance(updates[0].snapshot, Snapshot)
    assert updates[0].snapshot.value(Q.SOC_PCT) == 50.0

    coord.ingest([r(Q.SOC_PCT, 500.0, 0, "rest")])  # nothing accepted: nobody told
    assert len(updates) == 1

    reader = FakeReader()
    reader.results.append(RuntimeError("down"))
    await coord.poll(reader)  # a failed poll changes staleness: listeners hear of it
    assert len(updates) == 2
    assert updates[1].readings == ()

    unsubscribe()
    unsubscribe()  # twice is harmless
    coord.ingest([r(Q.SOC_PCT, 51.0, 1, "rest")])
    assert len(updates) == 2
    assert coord.counters()["listener_errors_total"] == {(): 3}
    assert len([rec for rec in caplog.records if "listener" in rec.getMessage()]) == 1


def test_counters_match_labels(coord: Coordinator) -> None:
    coord.ingest([r(Q.SOC_PCT, 50.0, 0, "rest")])
    counters = coord.counters()
    assert set(counters) == set(COUNTER_LABELS)
    for name, values in counters.items():
        for labels in values:
            assert len(labels) == len(COUNTER_LABELS[name])


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"stale_after_s": 0.0}, "stale_after_s must be a finite number of seconds > 0"),
        ({"stale_after_s": {Q.SOC_PCT: math.inf}}, "stale_after_s[soc_pct]"),
        ({"priorities": {Q.SOC_PCT: ["mqtt", "mqtt"]}}, "more than once"),
        ({"default_priority": "modbus"}, "list of source names"),
    ],
)
def test_refuses_bad_configuration(
    clock: FakeClock, kwargs: dict[str, object], message: str
) -> None:
    with pytest.raises((ValueError, TypeError), match=message.replace("[", r"\[")):
        Coordinator(clock, **kwargs)  # type: ignore[arg-type]


def test_never_reads_the_wall_clock(coord: Coordinator, clock: FakeClock) -> None:
    clock.now = 0.0  # a clock at 1970: ages are computed from it, not from time.time()
    coord.ingest([Reading(Q.SOC_PCT, 50.0, 0.0, "rest")])
    assert coord.snapshot().age_s(Q.SOC_PCT) == 0.0
