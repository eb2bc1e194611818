"""FleetStore and the migrations runner against SQLite and a real PostgreSQL."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
import sqlalchemy as sa
from sqlalchemy.engine import Engine

from control_plane import db
from control_plane.fleet.models import (
    Event,
    Hello,
    NewSchedule,
    Ratings,
    ScheduleAnswer,
    ScheduleInterval,
    ScheduleStatus,
    TelemetrySample,
)
from control_plane.fleet.store import API, FleetStore

T0 = datetime(2025, 3, 30, 0, 0, tzinfo=UTC)  # the spring DST night in Europe
SITE = "site-a"


def _samples(seqs: range | list[int], *, soc: float = 50.0) -> list[TelemetrySample]:
    return [
        TelemetrySample(
            seq=s,
            timestamp=T0 + timedelta(seconds=s),
            soc_pct=soc,
            active_power_kw=-10.5,
            status="charging",
            alarms=("soc_high",),
            source="modbus",
            vendor_alarm_bits=2**64 - 1,
        )
        for s in seqs
    ]


@pytest.fixture
def store(engine: Engine) -> FleetStore:
    s = FleetStore(engine)
    assert s.migrate() == [1, 2]
    s.register(
        Hello(SITE, "1.2.3", ("modbus",), ratings=Ratings(200, 100, 100)),
        session_id="s1",
        now=T0,
    )
    return s


def test_migrations_run_once_and_refuse_a_newer_store(store: FleetStore, engine: Engine) -> None:
    assert store.migrate() == []  # already applied
    with engine.begin() as conn:
        conn.execute(
            db.schema_migrations.insert().values(
                service="fleet", version=99, name="from the future", applied_unix_ms=0
            )
        )
    with pytest.raises(db.StoreError, match="schema version 99"):
        store.migrate()


def test_migration_versions_must_be_contiguous(engine: Engine) -> None:
    with pytest.raises(db.StoreError, match=r"1\.\.n"):
        db.migrate(engine, "x", [db.Migration(2, "two", lambda conn: None)])


def test_failed_migration_leaves_nothing_behind(engine: Engine) -> None:
    def broken(conn: sa.Connection) -> None:
        conn.execute(sa.text("CREATE TABLE half_done (x INTEGER)"))
        raise sa.exc.OperationalError("boom", {}, Exception("boom"))

    with pytest.raises(db.StoreError):
        db.migrate(engine, "broken", [db.Migration(1, "broken", broken)])
    assert "half_done" not in sa.inspect(engine).get_table_names()


def test_ingest_is_idempotent_by_site_and_seq(store: FleetStore) -> None:
    first = store.ingest_samples(SITE, _samples(range(1, 11)), now=T0)
    assert (first.stored, first.duplicates, first.acked_through) == (10, 0, 10)
    # A resend overlapping what is stored, with a repeat inside the batch itself.
    again = store.ingest_samples(SITE, _samples([*range(5, 16), 15], soc=99.0), now=T0)
    assert (again.stored, again.duplicates, again.acked_through) == (5, 7, 15)
    assert store.sample_seqs(SITE) == list(range(1, 16))
    kept = store.samples(SITE, limit=100)
    assert [s.soc_pct for s in kept[:10]] == [50.0] * 10  # first arrival wins
    assert kept[0].vendor_alarm_bits == 2**64 - 1
    assert kept[0].alarms == ("soc_high",)
    assert kept[0].timestamp == T0 + timedelta(seconds=1)
    assert store.last_seqs(SITE) == (15, 0)
    assert store.last_seqs("other-site") == (0, 0)


def test_api_stream_does_not_move_the_agents_resume_point(store: FleetStore) -> None:
    store.ingest_samples(SITE, _samples(range(1, 4)), now=T0)
    store.ingest_samples(SITE, _samples([100]), now=T0, stream=API)
    assert store.last_seqs(SITE) == (3, 0)
    assert store.next_api_seq(SITE) == 101


def test_history_range_and_latest(store: FleetStore) -> None:
    store.ingest_samples(SITE, _samples(range(1, 61)), now=T0)
    window = store.samples(
        SITE, start=T0 + timedelta(seconds=10), end=T0 + timedelta(seconds=20), limit=100
    )
    assert [s.seq for s in window] == list(range(10, 20))
    assert [s.seq for s in store.samples(SITE, limit=5)] == [1, 2, 3, 4, 5]
    assert store.latest_samples()[SITE].seq == 60


def test_events_are_idempotent(store: FleetStore) -> None:
    event = Event(seq=1, timestamp=T0, severity="warning", kind="alarm_raised", details={"a": "b"})
    assert store.ingest_events(SITE, [event], now=T0).stored == 1
    again = store.ingest_events(SITE, [event], now=T0)
    assert (again.stored, again.duplicates, again.acked_through) == (0, 1, 1)
    assert store.events(SITE)[0].details == {"a": "b"}


def _new(hours: int = 1, kw: float = 40.0) -> NewSchedule:
    return NewSchedule(
        valid_from=T0,
        valid_until=T0 + timedelta(hours=hours),
        intervals=(ScheduleInterval(T0, kw),),
    )


def test_schedule_versions_supersede_and_answers(store: FleetStore) -> None:
    now = T0 - timedelta(minutes=5)
    one = store.add_schedule(SITE, _new(), now=now)
    assert (one.schedule.version, one.status) == (1, ScheduleStatus.PENDING)
    store.mark_sent(SITE, 1, now=now)
    assert store.answer(SITE, ScheduleAnswer(1, True), now=now)
    assert not store.answer(SITE, ScheduleAnswer(1, True), now=now)  # a repeat changes nothing
    two = store.add_schedule(SITE, _new(kw=-20.0), now=now)
    assert two.schedule.version == 2
    records = store.schedules(SITE)
    assert [(r.schedule.version, r.status) for r in records] == [
        (2, ScheduleStatus.PENDING),
        (1, ScheduleStatus.SUPERSEDED),
    ]
    assert records[0].schedule.intervals == (ScheduleInterval(T0, -20.0),)
    store.mark_sent(SITE, 2, now=now)
    store.answer(SITE, ScheduleAnswer(2, False, "out_of_range", "too much"), now=now)
    latest = store.latest_schedule(SITE)
    assert latest is not None
    assert latest.status is ScheduleStatus.REJECTED
    assert latest.detail == "out_of_range: too much"
    assert latest.status_at(T0 + timedelta(days=1)) is ScheduleStatus.REJECTED
    three = store.add_schedule(SITE, _new(), now=now)
    assert three.status_at(T0 + timedelta(hours=2)) is ScheduleStatus.EXPIRED
