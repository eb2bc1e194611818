"""The uplink against a real grpc.aio server on loopback (tests/edge_agent/fake_plane.py).

Time that would pass in the field (an hour of outage, backoff sleeps) is simulated: samples
carry 1 Hz timestamps, the backoff sleep is injected and short.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import shutil
import subprocess
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import grpc
import pytest

from bess.v1 import edgelink_pb2 as pb
from edge_agent import convert
from edge_agent.convert import Ack, AckReason, HelloInfo
from edge_agent.guard import GuardLimits
from edge_agent.outbox import AsyncOutbox, Outbox
from edge_agent.readings import Quantity
from edge_agent.schedule_store import SaveResult, Schedule, ScheduleStore
from edge_agent.uplink import (
    EVENTS,
    TELEMETRY,
    Uplink,
    UplinkSettings,
    UplinkState,
    server_keepalive_options,
)

from .fake_plane import FakePlane

pytestmark = [pytest.mark.integration, pytest.mark.timeout(30)]

SITE = "site-uplink-001"
T0 = 1_767_225_600.0  # 2026-01-01T00:00:00Z
SITE_KEY = "s3cr3t-site-key-0123456789"  # a test value, sent only to the fake plane
ENV = "BESS_TEST_SITE_KEY"  # name of an environment variable
LIMITS = GuardLimits(capacity_kwh=200.0, max_charge_kw=100.0, max_discharge_kw=100.0)


class FastSleep:
    """Injected backoff sleep: records what the uplink asked for, sleeps a few ms."""

    def __init__(self, real_s: float = 0.005) -> None:
        self.asked: list[float] = []
        self.real_s = real_s

    async def __call__(self, seconds: float) -> None:
        self.asked.append(seconds)
        await asyncio.sleep(self.real_s)


@pytest.fixture
async def outbox(tmp_path: Path) -> AsyncIterator[AsyncOutbox]:
    factory = functools.partial(
        Outbox, tmp_path / "outbox.sqlite", synchronous="NORMAL", max_age_s=None
    )
    async with AsyncOutbox(factory) as box:
        yield box


@pytest.fixture
async def plane() -> AsyncIterator[FakePlane]:
    async with FakePlane() as fake:
        yield fake


def settings_for(plane: FakePlane, **overrides: Any) -> UplinkSettings:
    values: dict[str, Any] = {
        "target": plane.address,
        "batch_max_samples": 500,
        "batch_max_delay_s": 0.02,
        "backoff_initial_s": 0.05,
        "backoff_max_s": 2.0,
        "connect_timeout_s": 2.0,
        "silence_timeout_s": 5.0,
    }
    values.update(overrides)
    return UplinkSettings(**values)


def hello(schedule_version: int = 0) -> Callable[[], HelloInfo]:
    return lambda: HelloInfo(
        site_id=SITE,
        agent_version="0.1.0",
        capabilities=frozenset({"modbus"}),
        limits=LIMITS,
        last_schedule_version=schedule_version,
    )


def make_uplink(plane: FakePlane, outbox: AsyncOutbox, **kwargs: Any) -> Uplink:
    overrides = kwargs.pop("settings", {})
    kwargs.setdefault("hello", hello())
    kwargs.setdefault("sleep", FastSleep())
    kwargs.setdefault("rng", lambda: 1.0)
    return Uplink(settings_for(plane, **overrides), outbox=outbox, **kwargs)


def rows(first_s: float, count: int) -> list[tuple[float, bytes]]:
    """`count` samples at 1 Hz from first_s, as outbox rows."""
    return [
        convert.outbox_row(
            convert.sample_from_values(
                {Quantity.SOC_PCT: 50.0 + (n % 40), Quantity.ACTIVE_POWER_KW: -10.0},
                at=first_s + n,
                source="modbus",
            )
        )
        for n in range(count)
    ]


async def append(outbox: AsyncOutbox, uplink: Uplink | None, first_s: float, count: int) -> None:
    await outbox.append(TELEMETRY, rows(first_s, count))
    if uplink is not None:
        uplink.notify()


async def wait_state(uplink: Uplink, state: UplinkState, timeout: float = 5.0) -> None:
    async with asyncio.timeout(timeout):
        while uplink.state is not state:
            await asyncio.sleep(0.005)


def assert_contract_kept(plane: FakePlane, site: str = SITE) -> None:
    """What EdgeLink promises about seqs on the wire and in the store."""
    stored = plane.stored_seqs(site)
    assert stored == list(range(1, len(stored) + 1)), "stored seqs have a gap"
    assert plane.gaps == []
    for session in plane.sessions_of(site):
        seqs = session.received_seqs
        # In one session the agent sends each seq once, ascending (no resend within a session)...
        assert seqs == sorted(set(seqs)), f"{session.session_id}: {seqs[:20]}..."
        # ...and nothing the plane already had when it said Welcome (the reconcile dropped it).
        if seqs:
            assert seqs[0] == session.welcome.last_stored_seq + 1, session.session_id


# -- the session ----------------------------------------------------------------------------


async def test_hello_welcome_then_samples_arrive_in_order_and_are_deleted_after_ack(
    plane: FakePlane, outbox: AsyncOutbox
) -> None:
    await append(outbox, None, T0, 3)  # before the first connect
    async with make_uplink(plane, outbox) as uplink:
        await wait_state(uplink, UplinkState.CONNECTED)
        await append(outbox, uplink, T0 + 3, 7)
        await plane.wait_for(lambda: len(plane.stored_seqs(SITE)) == 10, what="10 samples")
        assert await uplink.flush(2.0)
        stats = await uplink.stats()

    session = plane.sessions_of(SITE)[0]
    assert session.hello.site_id == SITE
    assert session.hello.oldest_unacked_seq == 1
    assert session.hello.last_assigned_seq == 3
    assert session.hello.ratings.max_discharge_kw == 100.0
    assert session.hello.effective_limits.min_soc_pct == 15.0
    assert set(session.hello.capabilities) == {pb.CAPABILITY_MODBUS, pb.CAPABILITY_EVENTS}
    assert plane.stored_seqs(SITE) == list(range(1, 11))
    sample = plane.sample(SITE, 4)
    assert sample.timestamp_unix_ms == round((T0 + 3) * 1000)
    assert sample.source == pb.TELEMETRY_SOURCE_MODBUS
    assert_contract_kept(plane)
    # Deleted from the outbox only after the plane acked them.
    assert stats.pending_samples == 0
    assert stats.acked_through_seq == 10
    assert stats.samples_sent_total == 10
    assert stats.samples_resent_total == 0
    assert stats.sessions_total == 1
    assert stats.last_ack_at is not None
    assert stats.session_id == session.welcome.session_id
    assert uplink.state is UplinkState.STOPPED


async def test_rows_stay_in_the_outbox_until_acked(plane: FakePlane, outbox: AsyncOutbox) -> None:
    plane.hold_acks = True
    async with make_uplink(plane, outbox) as uplink:
        await wait_state(uplink, UplinkState.CONNECTED)
        await append(outbox, uplink, T0, 5)
        await plane.wait_for(lambda: len(plane.stored_seqs(SITE)) == 5, what="stored")
        await asyncio.sleep(0.05)
        assert (await uplink.stats()).pending_samples == 5  # stored, not acked: kept
        plane.release_acks()
        assert await uplink.flush(2.0)
        assert (await uplink.stats()).pending_samples == 0


async def test_batches_by_count_and_pipelined_window(outbox: AsyncOutbox) -> None:
    async with FakePlane(max_batch_samples=100, max_unacked_batches=3) as plane:
        plane.hold_acks = True
        await append(outbox, None, T0, 1000)
        async with make_uplink(plane, outbox, settings={"batch_max_samples": 250}) as uplink:
            # The plane's smaller batch size and window win; no ack -> 3 batches, then wait.
            await plane.wait_for(lambda: len(plane.stored_seqs(SITE)) == 300, what="3 batches")
            await asyncio.sleep(0.1)
            assert len(plane.stored_seqs(SITE)) == 300
            plane.hold_acks = False
            plane.release_acks()
            await plane.wait_for(lambda: len(plane.stored_seqs(SITE)) == 1000, what="all")
            assert await uplink.flush(2.0)
            stats = await uplink.stats()
    assert stats.batches_sent_total == 10
    assert_contract_kept(plane)


async def test_partial_batch_waits_for_the_batch_delay(
    plane: FakePlane, outbox: AsyncOutbox
) -> None:
    async with make_uplink(plane, outbox, settings={"batch_max_delay_s": 0.3}) as uplink:
        await wait_state(uplink, UplinkState.CONNECTED)
        loop = asyncio.get_running_loop()
        started = loop.time()
        now = time.time()  # fresh samples: an old one would go at once (it waited already)
        await append(outbox, uplink, now, 1)
        await asyncio.sleep(0.1)
        await append(outbox, uplink, now + 0.1, 1)
        await plane.wait_for(lambda: len(plane.stored_seqs(SITE)) == 2, what="both")
        waited = loop.time() - started
    assert 0.25 <= waited < 1.5
    # Both samples travelled in one batch.
    assert [len(s.received_seqs) for s in plane.sessions_of(SITE)] == [2]
    assert plane.sessions_of(SITE)[0].acks_sent == [2]


# -- outages and reconnects --------------------------------------------------------------------


async def test_an_hour_of_outage_arrives_exactly_once_and_in_order(
    plane: FakePlane, outbox: AsyncOutbox
) -> None:
    sleep = FastSleep()
    start = time.time() - 3700  # the outage ended a moment ago
    async with make_uplink(plane, outbox, sleep=sleep, rng=lambda: 0.5) as uplink:
        await wait_state(uplink, UplinkState.CONNECTED)
        await append(outbox, uplink, start, 10)
        await plane.wait_for(lambda: len(plane.stored_seqs(SITE)) == 10, what="first 10")
        assert await uplink.flush(2.0)

        # The plane goes away while 5 samples are stored there but their ack is held back.
        plane.hold_acks = True
        await append(outbox, uplink, start + 10, 5)
        await plane.wait_for(lambda: len(plane.stored_seqs(SITE)) == 15, what="15 stored")
        await plane.stop()
        plane.hold_acks = False

        # One simulated hour at 1 Hz lands in the outbox while the uplink keeps redialling.
        for hour_part in range(6):
            await append(outbox, uplink, start + 15 + 600 * hour_part, 600)
        await plane.wait_for(lambda: len(sleep.asked) >= 8, what="redials")
        assert uplink.state in (UplinkState.BACKOFF, UplinkState.CONNECTING)
        stats = await uplink.stats()
        assert stats.pending_samples == 3605  # the 5 unacked ones are still held
        assert stats.oldest_unacked_age_s > 3600  # wall clock is far past start

        await plane.start()
        await plane.wait_for(
            lambda: len(plane.stored_seqs(SITE)) == 3615, timeout=10, what="everything"
        )
        assert await uplink.flush(5.0)
        stats = await uplink.stats()

    assert_contract_kept(plane)
    assert plane.duplicates == 0  # Welcome said 15: the 5 unacked rows were not sent again
    last = plane.sessions_of(SITE)[-1]
    assert last.welcome.last_stored_seq == 15
    assert last.hello.oldest_unacked_seq == 11
    assert last.hello.last_assigned_seq == 3615
    assert len(last.received_seqs) == 3600
    assert plane.sample(SITE, 3615).timestamp_unix_ms == round((start + 3614) * 1000)
    assert stats.pending_samples == 0
    assert stats.reconnects_total >= 8
    # Full jitter at rng 0.5: half the exponential ceiling, capped at backoff_max_s (2 s).
    assert sleep.asked[:4] == pytest.approx([0.025, 0.05, 0.1, 0.2])
    assert max(sleep.asked) == pytest.approx(1.0)


async def test_unacked_rows_are_resent_to_a_plane_that_lost_them(
    plane: FakePlane, outbox: AsyncOutbox
) -> None:
    """Stored but never acked, then the plane loses its store: the outbox still has them."""
    plane.hold_acks = True
    async with make_uplink(plane, outbox) as uplink:
        await wait_state(uplink, UplinkState.CONNECTED)
        await append(outbox, uplink, T0, 20)
        await plane.wait_for(lambda: len(plane.stored_seqs(SITE)) == 20, what="20 stored")
        await plane.stop()

        amnesiac = FakePlane()  # same port, empty store: Welcome.last_stored_seq = 0
        amnesiac.port = plane.port
        async with amnesiac:
            await append(outbox, uplink, T0 + 20, 5)
            await amnesiac.wait_for(lambda: len(amnesiac.stored_seqs(SITE)) == 25, what="all")
            assert await uplink.flush(2.0)
            stats = await uplink.stats()
    assert stats.samples_resent_total == 20
    assert amnesiac.sessions_of(SITE)[0].received_seqs == list(range(1, 26))
    assert_contract_kept(amnesiac)


async def test_plane_restart_with_its_store_resumes_where_it_left_off(
    outbox: AsyncOutbox, tmp_path: Path
) -> None:
    db = tmp_path / "plane.sqlite"
    first = FakePlane(db_path=db)
    await first.start()
    async with make_uplink(first, outbox) as uplink:
        await wait_state(uplink, UplinkState.CONNECTED)
        await append(outbox, uplink, T0, 20)
        await first.wait_for(lambda: len(first.stored_seqs(SITE)) == 20, what="20 stored")
        await first.stop()
        first.close()
        await append(outbox, uplink, T0 + 20, 30)

        # The restarted plane recovers its store from SQLite on the same port.
        second = FakePlane(db_path=db)
        second.port = first.port
        async with second:
            await second.wait_for(lambda: len(second.stored_seqs(SITE)) == 50, what="all 50")
            assert await uplink.flush(2.0)
            stats = await uplink.stats()
    assert second.sessions_of(SITE)[0].welcome.last_stored_seq == 20
    assert second.sessions_of(SITE)[0].received_seqs == list(range(21, 51))
    assert stats.samples_resent_total == 0
    assert_contract_kept(second)


async def test_a_reinstalled_agent_continues_numbering_after_the_plane(
    plane: FakePlane, outbox: AsyncOutbox, tmp_path: Path
) -> None:
    """The outbox was lost (reinstall): its rows are renumbered, not dropped as duplicates."""
    async with make_uplink(plane, outbox) as uplink:
        await append(outbox, uplink, T0, 20)
        await plane.wait_for(lambda: len(plane.stored_seqs(SITE)) == 20, what="20 stored")
    factory = functools.partial(Outbox, tmp_path / "new-outbox.sqlite", max_age_s=None)
    async with AsyncOutbox(factory) as fresh:
        await append(fresh, None, T0 + 100, 5)  # seqs 1..5 in the new outbox
        async with make_uplink(plane, fresh) as uplink:
            await plane.wait_for(lambda: len(plane.stored_seqs(SITE)) == 25, what="25 stored")
            assert await uplink.flush(2.0)
    second = plane.sessions_of(SITE)[1]
    assert (second.hello.oldest_unacked_seq, second.hello.last_assigned_seq) == (1, 5)
    assert second.received_seqs == [21, 22, 23, 24, 25]
    assert plane.sample(SITE, 21).timestamp_unix_ms == round((T0 + 100) * 1000)
    assert_contract_kept(plane)


async def test_clock_skew_is_reported_once_as_an_event(
    plane: FakePlane, outbox: AsyncOutbox
) -> None:
    async with make_uplink(plane, outbox, wall_clock=lambda: time.time() - 120) as uplink:
        await plane.wait_for(lambda: len(plane.stored_event_seqs(SITE)) == 1, what="event")
        stats = await uplink.stats()
    event = plane.event(SITE, 1)
    assert event.kind == pb.EVENT_KIND_CLOCK_SKEW
    assert event.severity == pb.EVENT_SEVERITY_WARNING
    assert stats.clock_skew_s == pytest.approx(120, abs=5)


async def test_reconnects_and_resumes_after_the_plane_breaks_the_stream(
    plane: FakePlane, outbox: AsyncOutbox
) -> None:
    plane.hold_acks = True
    async with make_uplink(plane, outbox) as uplink:
        await wait_state(uplink, UplinkState.CONNECTED)
        await append(outbox, uplink, T0, 8)
        await plane.wait_for(lambda: len(plane.stored_seqs(SITE)) == 8, what="8 stored")
        plane.hold_acks = False
        await plane.break_stream(SITE)  # a draining replica: UNAVAILABLE
        await append(outbox, uplink, T0 + 8, 4)
        await plane.wait_for(lambda: len(plane.sessions_of(SITE)) == 2, what="2nd session")
        await plane.wait_for(lambda: len(plane.stored_seqs(SITE)) == 12, what="all 12")
        assert await uplink.flush(2.0)
        stats = await uplink.stats()
    first, second = plane.sessions_of(SITE)
    assert first.ended.startswith("UNAVAILABLE")
    assert second.hello.oldest_unacked_seq == 1  # nothing was acked in the first session
    assert second.welcome.last_stored_seq == 8
    assert second.received_seqs == [9, 10, 11, 12]
    assert stats.reconnects_total == 1
    assert stats.sessions_total == 2
    assert_contract_kept(plane)


async def test_a_newer_session_replaces_the_older(plane: FakePlane, outbox: AsyncOutbox) -> None:
    async with make_uplink(plane, outbox) as uplink:
        await wait_state(uplink, UplinkState.CONNECTED)
        await plane.break_stream(SITE, grpc.StatusCode.ABORTED, "replaced")
        await plane.wait_for(lambda: len(plane.sessions_of(SITE)) == 2, what="redial")
        await wait_state(uplink, UplinkState.CONNECTED)
        assert "ABORTED" in (await uplink.stats()).last_error


async def test_silent_plane_sets_state_silent_and_the_session_is_redialled(
    plane: FakePlane, outbox: AsyncOutbox
) -> None:
    plane.hold_acks = True  # the plane takes the data and never answers
    async with make_uplink(plane, outbox, settings={"silence_timeout_s": 0.3}) as uplink:
        await wait_state(uplink, UplinkState.CONNECTED)
        await append(outbox, uplink, T0, 3)
        await wait_state(uplink, UplinkState.SILENT, timeout=3)
        stats = await uplink.stats()
        assert stats.silent_for_s > 0.3
        # The watchdog tears the stuck session down and dials again.
        await plane.wait_for(lambda: len(plane.sessions_of(SITE)) >= 2, what="redial")
        plane.hold_acks = False
        plane.release_acks()
        await wait_state(uplink, UplinkState.CONNECTED)
        assert await uplink.flush(2.0)
        stats = await uplink.stats()
    assert stats.silent_for_s == 0.0
    assert stats.last_error.startswith("PlaneSilentError: no answer from the plane")
    first = plane.sessions_of(SITE)[0]
    assert first.received_seqs == [1, 2, 3]
    assert first.ended in ("cancelled", "closed by the agent")  # the agent hung up
    assert plane.sessions_of(SITE)[1].welcome.last_stored_seq == 3
    assert_contract_kept(plane)


async def test_no_plane_at_all_turns_silent_after_the_timeout(outbox: AsyncOutbox) -> None:
    plane = FakePlane()  # never started: connection refused
    plane.port = 1  # nothing listens on 127.0.0.1:1
    async with make_uplink(plane, outbox, settings={"silence_timeout_s": 0.2}) as uplink:
        await asyncio.sleep(0.05)
        assert uplink.state in (UplinkState.CONNECTING, UplinkState.BACKOFF)
        await wait_state(uplink, UplinkState.SILENT, timeout=3)
        assert "UNAVAILABLE" in (await uplink.stats()).last_error
    plane.close()


# -- plane -> agent --------------------------------------------------------------------------


def plane_schedule(version: int, *, power_kw: float = 50.0, site: str = SITE) -> pb.Schedule:
    start = 1_767_225_600_000 + 86_400_000 * 3650  # far in the future, aligned to 15 min
    return pb.Schedule(
        site_id=site,
        version=version,
        created_unix_ms=start - 60_000,
        valid_from_unix_ms=start,
        valid_until_unix_ms=start + 3_600_000,
        interval_minutes=15,
        intervals=[
            pb.ScheduleInterval(start_unix_ms=start + 900_000 * i, power_kw=power_kw)
            for i in range(4)
        ],
        origin="optimiser-run-7",
    )


async def test_schedule_from_the_plane_goes_to_the_store_and_is_acked(
    plane: FakePlane, outbox: AsyncOutbox, tmp_path: Path
) -> None:
    received: list[Schedule] = []
    with ScheduleStore(tmp_path / "schedules.sqlite", site_id=SITE) as store:

        async def on_schedule(schedule: Schedule) -> SaveResult:
            received.append(schedule)
            return store.save(schedule)

        async with make_uplink(plane, outbox, on_schedule=on_schedule) as uplink:
            await wait_state(uplink, UplinkState.CONNECTED)
            await plane.push_schedule(SITE, plane_schedule(3))
            await plane.push_schedule(SITE, plane_schedule(3))  # redelivered: same answer
            await plane.push_schedule(SITE, plane_schedule(2))  # older
            await plane.push_schedule(SITE, plane_schedule(3, power_kw=10.0))  # changed
            await plane.push_schedule(SITE, plane_schedule(4, site="elsewhere"))
            await plane.push_schedule(SITE, plane_schedule(5, power_kw=1000.0))  # > rating
            await plane.wait_for(lambda: len(plane.schedule_acks) == 6, what="6 acks")
        assert store.latest_version() == 3

    acks = [(a.version, a.status, a.reject_reason) for _, a in plane.schedule_acks]
    assert acks == [
        (3, pb.ACK_STATUS_ACCEPTED, pb.REJECT_REASON_UNSPECIFIED),
        (3, pb.ACK_STATUS_ACCEPTED, pb.REJECT_REASON_UNSPECIFIED),
        (2, pb.ACK_STATUS_REJECTED, pb.REJECT_REASON_STALE_VERSION),
        (3, pb.ACK_STATUS_REJECTED, pb.REJECT_REASON_STALE_VERSION),
        (4, pb.ACK_STATUS_REJECTED, pb.REJECT_REASON_WRONG_SITE),
        (5, pb.ACK_STATUS_REJECTED, pb.REJECT_REASON_OUT_OF_RANGE),
    ]
    assert received[0].valid_from == 1_767_225_600 + 86_400 * 3650
    assert received[0].intervals[1].start == received[0].valid_from + 900
    assert len(received) == 5  # the out-of-range one never reached the store
    capabilities = plane.sessions_of(SITE)[0].hello.capabilities
    assert pb.CAPABILITY_SCHEDULES in capabilities


async def test_expected_schedule_follows_welcome(plane: FakePlane, outbox: AsyncOutbox) -> None:
    plane.expected_schedule[SITE] = plane_schedule(9)
    got: list[int] = []

    async def on_schedule(schedule: Schedule) -> SaveResult:
        got.append(schedule.version)
        return SaveResult(convert.SaveOutcome.ACCEPTED)

    async with make_uplink(plane, outbox, on_schedule=on_schedule, hello=hello(8)):
        await plane.wait_for(lambda: len(plane.schedule_acks) == 1, what="ack")
    assert got == [9]
    assert plane.sessions_of(SITE)[0].welcome.expected_schedule_version == 9


async def test_schedule_without_handler_is_rejected_unsupported(
    plane: FakePlane, outbox: AsyncOutbox
) -> None:
    async with make_uplink(plane, outbox) as uplink:
        await wait_state(uplink, UplinkState.CONNECTED)
        await plane.push_schedule(SITE, plane_schedule(1))
        await plane.wait_for(lambda: len(plane.schedule_acks) == 1, what="ack")
    assert plane.schedule_acks[0][1].reject_reason == pb.REJECT_REASON_UNSUPPORTED


async def test_commands_reach_the_handler_once_and_are_acked(
    plane: FakePlane, outbox: AsyncOutbox
) -> None:
    applied: list[convert.Command] = []

    async def on_command(command: convert.Command) -> Ack:
        applied.append(command)
        if isinstance(command, convert.SetLimitsCommand) and command.max_charge_kw == 1.0:
            raise RuntimeError("modbus write failed")
        return Ack.ok("applied")

    stop = pb.Command(command_id="c-1", issued_unix_ms=1, stop=pb.Stop(reason="grid event"))
    async with make_uplink(plane, outbox, on_command=on_command) as uplink:
        await wait_state(uplink, UplinkState.CONNECTED)
        await plane.push_command(SITE, stop)
        await plane.push_command(SITE, stop)  # redelivered: answered, not applied again
        await plane.push_command(SITE, pb.Command(command_id="c-2", resume=pb.Resume()))
        await plane.push_command(
            SITE, pb.Command(command_id="c-3", set_limits=pb.SetLimits(max_soc_pct=80.0))
        )
        await plane.push_command(
            SITE, pb.Command(command_id="c-4", set_limits=pb.SetLimits(min_soc_pct=-1.0))
        )
        await plane.push_command(SITE, pb.Command(command_id="c-5", expires_unix_ms=1000))
        await plane.push_command(
            SITE, pb.Command(command_id="c-6", set_limits=pb.SetLimits(max_charge_kw=1.0))
        )
        await plane.push_command(
            SITE, pb.Command(command_id="c-6", set_limits=pb.SetLimits(max_charge_kw=1.0))
        )
        await plane.wait_for(lambda: len(plane.command_acks) == 8, what="8 acks")

    answers = [(a.command_id, a.status, a.reject_reason) for _, a in plane.command_acks]
    assert answers == [
        ("c-1", pb.ACK_STATUS_ACCEPTED, pb.REJECT_REASON_UNSPECIFIED),
        ("c-1", pb.ACK_STATUS_ACCEPTED, pb.REJECT_REASON_UNSPECIFIED),
        ("c-2", pb.ACK_STATUS_ACCEPTED, pb.REJECT_REASON_UNSPECIFIED),
        ("c-3", pb.ACK_STATUS_ACCEPTED, pb.REJECT_REASON_UNSPECIFIED),
        ("c-4", pb.ACK_STATUS_REJECTED, pb.REJECT_REASON_OUT_OF_RANGE),
        ("c-5", pb.ACK_STATUS_REJECTED, pb.REJECT_REASON_EXPIRED),
        ("c-6", pb.ACK_STATUS_REJECTED, pb.REJECT_REASON_INTERNAL),
        ("c-6", pb.ACK_STATUS_REJECTED, pb.REJECT_REASON_INTERNAL),  # retried: not remembered
    ]
    assert [type(c).__name__ for c in applied] == [
        "StopCommand",
        "ResumeCommand",
        "SetLimitsCommand",
        "SetLimitsCommand",
        "SetLimitsCommand",
    ]
    assert isinstance(applied[0], convert.StopCommand)
    assert applied[0].reason == "grid event"


async def test_config_update_reaches_the_handler_and_is_acked(
    plane: FakePlane, outbox: AsyncOutbox
) -> None:
    patches: list[convert.ConfigPatch] = []

    async def on_config(patch: convert.ConfigPatch) -> Ack:
        patches.append(patch)
        if "guard.nonsense" in patch.values:
            return Ack.reject(AckReason.MALFORMED, "unknown setting guard.nonsense")
        return Ack.ok()

    async with make_uplink(plane, outbox, on_config=on_config) as uplink:
        await wait_state(uplink, UplinkState.CONNECTED)
        update = pb.ConfigUpdate(config_version=4, values={"guard.ramp_kw_per_s": "5"})
        await plane.push_config(SITE, update)
        await plane.push_config(SITE, update)
        await plane.push_config(
            SITE, pb.ConfigUpdate(config_version=5, values={"guard.nonsense": "1"})
        )
        await plane.push_config(SITE, pb.ConfigUpdate(config_version=6, values={"Bad Key": "1"}))
        await plane.wait_for(lambda: len(plane.config_acks) == 4, what="4 acks")

    answers = [(a.config_version, a.status, a.reject_reason) for _, a in plane.config_acks]
    assert answers == [
        (4, pb.ACK_STATUS_ACCEPTED, pb.REJECT_REASON_UNSPECIFIED),
        (4, pb.ACK_STATUS_ACCEPTED, pb.REJECT_REASON_UNSPECIFIED),
        (5, pb.ACK_STATUS_REJECTED, pb.REJECT_REASON_MALFORMED),
        (6, pb.ACK_STATUS_REJECTED, pb.REJECT_REASON_MALFORMED),
    ]
    assert [p.version for p in patches] == [4, 5]
    assert patches[0].values == {"guard.ramp_kw_per_s": "5"}


# -- events, heartbeats, keepalive, auth -----------------------------------------------------


async def test_events_travel_through_the_outbox_with_their_own_seqs(
    plane: FakePlane, outbox: AsyncOutbox
) -> None:
    events = [
        convert.agent_event("agent_started", at=T0, message="agent 0.1.0 started"),
        convert.event_from_alarm(
            convert.AlarmChange(at=T0 + 1, alarm="over_temperature", raised=True)
        ),
    ]
    await outbox.append(EVENTS, [convert.outbox_row(e) for e in events])
    async with make_uplink(plane, outbox) as uplink:
        await append(outbox, uplink, T0, 2)
        await plane.wait_for(lambda: len(plane.stored_event_seqs(SITE)) == 2, what="events")
        assert await uplink.flush(2.0)
        stats = await uplink.stats()
    assert plane.event(SITE, 2).alarm == pb.ALARM_OVER_TEMPERATURE
    assert plane.event(SITE, 1).kind == pb.EVENT_KIND_AGENT_STARTED
    assert stats.events_acked_through_seq == 2
    assert stats.pending_events == 0


async def test_heartbeats_follow_the_welcome_interval(outbox: AsyncOutbox) -> None:
    async with FakePlane(heartbeat_interval_s=1) as plane:
        info = convert.HeartbeatInfo(setpoint_kw=-20.0, schedule_version=3, scheduled_kw=-25.0)
        await append(outbox, None, T0, 2)
        plane.hold_acks = True
        async with make_uplink(plane, outbox, heartbeat=lambda: info):
            await plane.wait_for(
                lambda: sum(len(s.heartbeats) for s in plane.sessions) >= 2,
                timeout=3,
                what="two heartbeats",
            )
    first = plane.sessions_of(SITE)[0].heartbeats[0]
    assert first.setpoint_kw == -20.0
    assert first.scheduled_kw == -25.0
    assert first.schedule_version == 3
    assert first.outbox_pending_samples == 2


async def test_keepalive_pings_need_the_server_options(tmp_path: Path) -> None:
    """Two agents ping every second; only the plane with server_keepalive_options keeps them.

    Both planes strike at the second early ping (max_ping_strikes 1) to keep the test short;
    gRPC sends keepalive pings at most once a second, so the default plane's GOAWAY
    `too_many_pings` comes after about 3 s.
    """
    fast = {"keepalive_time_s": 1.0, "keepalive_timeout_s": 1.0, "silence_timeout_s": 30.0}
    strict = [("grpc.http2.max_ping_strikes", 1)]
    permissive = server_keepalive_options(UplinkSettings(target="127.0.0.1:1", **fast))
    async with (
        FakePlane(server_options=[*strict, *permissive]) as good,
        FakePlane(server_options=strict) as bad,
        AsyncOutbox(functools.partial(Outbox, tmp_path / "a.sqlite")) as box_a,
        AsyncOutbox(functools.partial(Outbox, tmp_path / "b.sqlite")) as box_b,
        make_uplink(good, box_a, settings=fast),
        make_uplink(bad, box_b, settings=fast) as uplink_b,
    ):
        await bad.wait_for(lambda: len(bad.sessions) >= 2, timeout=8, what="GOAWAY, redial")
        assert "Too many pings" in (await uplink_b.stats()).last_error
        assert len(good.sessions) == 1
        assert good.sessions[0].ended == ""


async def test_token_is_sent_as_bearer_metadata_and_never_logged(
    outbox: AsyncOutbox,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    secret = SITE_KEY
    token_file = tmp_path / "token"
    token_file.write_text(secret + "\n")
    caplog.set_level(logging.DEBUG)
    async with FakePlane(token=secret) as plane:
        async with make_uplink(plane, outbox, settings={"token_file": token_file}) as uplink:
            await wait_state(uplink, UplinkState.CONNECTED)
        assert plane.auth_headers == [f"Bearer {secret}"]

        monkeypatch.setenv(ENV, "wrong-token")
        settings = {"token_env": ENV}
        async with make_uplink(plane, outbox, settings=settings) as uplink:
            await plane.wait_for(lambda: plane.auth_failures >= 2, what="refused twice")
            assert uplink.state is not UplinkState.CONNECTED
            error = (await uplink.stats()).last_error
            # grpc reports its own INTERNAL when the refusal beats the Hello write.
            assert "UNAUTHENTICATED" in error or "before Hello went out" in error, error
    assert secret not in caplog.text
    assert "wrong-token" not in caplog.text
    assert secret not in repr(settings_for(plane, token_file=token_file))


async def test_missing_token_file_is_retried_until_it_appears(
    plane: FakePlane, outbox: AsyncOutbox, tmp_path: Path
) -> None:
    token_file = tmp_path / "token"
    async with make_uplink(plane, outbox, settings={"token_file": token_file}) as uplink:
        await asyncio.sleep(0.1)
        assert "UplinkConfigError" in (await uplink.stats()).last_error
        token_file.write_text("late-token")
        await wait_state(uplink, UplinkState.CONNECTED)


def make_certificates(tmp_path: Path) -> dict[str, Path]:
    """A CA, a plane certificate for plane.test and a site certificate, made with openssl."""
    openssl = shutil.which("openssl")
    if openssl is None:
        pytest.skip("the TLS test needs the openssl command to make its certificates")
    files = {name: tmp_path / name for name in ("ca.pem", "ca.key")}

    def run(*args: str) -> None:
        subprocess.run([openssl, *args], check=True, capture_output=True, cwd=tmp_path)

    ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]
    run("req", "-x509", *ec, "-keyout", "ca.key", "-out", "ca.pem", "-days", "1", "-subj", "/CN=ca")
    for name, cn in (("plane", "plane.test"), ("site", SITE)):
        (tmp_path / f"{name}.ext").write_text(f"subjectAltName=DNS:{cn}\n")
        run("req", *ec, "-keyout", f"{name}.key", "-out", f"{name}.csr", "-subj", f"/CN={cn}")
        run(
            "x509", "-req", "-in", f"{name}.csr", "-CA", "ca.pem", "-CAkey", "ca.key",
            "-CAcreateserial", "-out", f"{name}.pem", "-days", "1", "-extfile", f"{name}.ext",
        )  # fmt: skip
        files[f"{name}.pem"] = tmp_path / f"{name}.pem"
        files[f"{name}.key"] = tmp_path / f"{name}.key"
    return files


async def test_mutual_tls_with_a_server_name_override(outbox: AsyncOutbox, tmp_path: Path) -> None:
    files = make_certificates(tmp_path)
    credentials = grpc.ssl_server_credentials(
        [(files["plane.key"].read_bytes(), files["plane.pem"].read_bytes())],
        root_certificates=files["ca.pem"].read_bytes(),
        require_client_auth=True,
    )
    tls = {
        "enabled": True,
        "ca_file": files["ca.pem"],
        "cert_file": files["site.pem"],
        "key_file": files["site.key"],
        "server_name": "plane.test",  # dialled as 127.0.0.1
    }
    async with FakePlane(server_credentials=credentials) as plane:
        async with make_uplink(plane, outbox, settings={"tls": tls}) as uplink:
            await append(outbox, uplink, T0, 3)
            await plane.wait_for(lambda: len(plane.stored_seqs(SITE)) == 3, what="over TLS")
        assert plane.peer_common_names == [SITE]

        # Without the site certificate the plane refuses the connection.
        anonymous = {"enabled": True, "ca_file": files["ca.pem"], "server_name": "plane.test"}
        async with make_uplink(plane, outbox, settings={"tls": anonymous}) as uplink:
            await asyncio.sleep(0.3)
            assert uplink.state is not UplinkState.CONNECTED
            assert "UNAVAILABLE" in (await uplink.stats()).last_error
        assert len(plane.sessions) == 1


# -- settings ---------------------------------------------------------------------------------


def test_settings_refuse_contradictions() -> None:
    with pytest.raises(ValueError, match="host:port"):
        UplinkSettings(target="plane.example.com")
    with pytest.raises(ValueError, match="clear text"):
        UplinkSettings(target="plane.example.com:443", token_env=ENV)
    with pytest.raises(ValueError, match="go together"):
        UplinkSettings(target="p:1", tls={"enabled": True, "cert_file": "site.pem"})
    with pytest.raises(ValueError, match=r"tls\.enabled is false"):
        UplinkSettings(target="p:1", tls={"ca_file": "ca.pem"})
    with pytest.raises(ValueError, match="not both"):
        UplinkSettings(target="127.0.0.1:1", token_env=ENV, token_file=Path("t"))
    with pytest.raises(ValueError, match="backoff_initial_s"):
        UplinkSettings(target="p:1", backoff_initial_s=10, backoff_max_s=1)
    # Loopback, TLS or an explicit development flag allow a token.
    UplinkSettings(target="127.0.0.1:50051", token_env=ENV)
    UplinkSettings(target="[::1]:50051", token_env=ENV)
    UplinkSettings(target="plane:443", token_env=ENV, tls={"enabled": True})
    UplinkSettings(target="plane:443", token_env=ENV, allow_plaintext_token=True)


def test_keepalive_options_are_consistent_on_both_sides() -> None:
    settings = UplinkSettings(target="plane:443", keepalive_time_s=20, keepalive_timeout_s=5)
    client = dict(settings.channel_options())
    server = dict(server_keepalive_options(settings))
    assert client["grpc.keepalive_time_ms"] == 20_000
    assert client["grpc.keepalive_timeout_ms"] == 5_000
    assert client["grpc.keepalive_permit_without_calls"] == 1
    assert client["grpc.http2.max_pings_without_data"] == 0
    assert server["grpc.http2.min_ping_interval_without_data_ms"] <= 20_000
    assert server["grpc.keepalive_permit_without_calls"] == 1


def test_backoff_is_exponential_full_jitter_and_capped() -> None:
    settings = UplinkSettings(
        target="p:1", backoff_initial_s=1, backoff_max_s=30, backoff_multiplier=2
    )
    box = AsyncOutbox(lambda: Outbox(":memory:"))
    top = Uplink(settings, outbox=box, hello=hello(), rng=lambda: 0.999999)
    assert [round(top.backoff_delay(n), 3) for n in range(7)] == [1, 2, 4, 8, 16, 30, 30]
    assert top.backoff_delay(10_000) == pytest.approx(30, rel=1e-5)  # no overflow, never stops
    bottom = Uplink(settings, outbox=box, hello=hello(), rng=lambda: 0.0)
    assert bottom.backoff_delay(5) == 0.0
