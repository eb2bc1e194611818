"""Schedules: validation, setpoints, version rules, precedence and surviving a restart."""

from __future__ import annotations

import math
import sqlite3
from collections.abc import Iterator
from pathlib import Path

import pytest

from edge_agent.schedule_store import (
    RejectReason,
    SaveOutcome,
    Schedule,
    ScheduleError,
    ScheduleInterval,
    ScheduleSource,
    ScheduleStatus,
    ScheduleStore,
    ScheduleStoreError,
)

T0 = 1_767_225_600.0  # 2026-01-01T00:00:00Z, a quarter-hour boundary
Q = 900.0
SITE = "site-graz-01"
PLANE, FILE, CLI = ScheduleSource.PLANE, ScheduleSource.FILE, ScheduleSource.CLI


def plan(
    version: int,
    powers: list[float],
    *,
    start: float = T0,
    source: ScheduleSource = PLANE,
    site_id: str = SITE,
    valid_from: float | None = None,
    valid_until: float | None = None,
) -> Schedule:
    """Consecutive quarter-hours from start; validity spans them unless given."""
    return Schedule(
        site_id=site_id,
        version=version,
        created_at=start - 3600,
        valid_from=start if valid_from is None else valid_from,
        valid_until=start + len(powers) * Q if valid_until is None else valid_until,
        intervals=tuple(ScheduleInterval(start + i * Q, p) for i, p in enumerate(powers)),
        source=source,
    )


@pytest.fixture
def path(tmp_path: Path) -> Path:
    return tmp_path / "schedules.sqlite"


@pytest.fixture
def store(path: Path) -> Iterator[ScheduleStore]:
    with ScheduleStore(path, site_id=SITE, clock=lambda: T0 - 60) as s:
        yield s


# -- the domain type ----------------------------------------------------------------------


def test_setpoint_at_covers_intervals_half_open_and_none_elsewhere() -> None:
    s = plan(1, [50.0, -20.0, 0.0], valid_until=T0 + 4 * Q)
    assert s.setpoint_at(T0) == 50.0
    assert s.setpoint_at(T0 + Q - 0.001) == 50.0
    assert s.setpoint_at(T0 + Q) == -20.0
    assert s.setpoint_at(T0 + 2 * Q + 5) == 0.0
    assert s.setpoint_at(T0 + 3 * Q + 1) is None  # valid, but no interval
    assert s.setpoint_at(T0 - 1) is None
    assert s.setpoint_at(T0 + 4 * Q) is None


def test_intervals_may_leave_gaps() -> None:
    s = Schedule(
        site_id=SITE,
        version=1,
        created_at=T0,
        valid_from=T0,
        valid_until=T0 + 4 * Q,
        intervals=((T0, 10.0), (T0 + 3 * Q, 30.0)),  # type: ignore[arg-type]
    )
    assert isinstance(s.intervals[0], ScheduleInterval)
    assert [s.setpoint_at(T0 + i * Q) for i in range(4)] == [10.0, None, None, 30.0]


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (
            {"intervals": ((T0 + Q, 1.0), (T0, 1.0))},
            r"interval 1 \(2026-01-01T00:00:00Z\) overlaps",
        ),
        ({"intervals": ((T0, 1.0), (T0, 2.0))}, "interval 1 .* overlaps"),
        ({"intervals": ((T0 + 60, 1.0),)}, "interval 0 .* not aligned to 900 s"),
        ({"intervals": ((T0, math.nan),)}, "interval 0 power_kw must be a finite number"),
        ({"intervals": ((T0, math.inf),)}, "power_kw must be a finite"),
        ({"intervals": ((T0 - Q, 1.0),)}, "interval 0 .* outside the validity"),
        ({"intervals": ((T0 + 4 * Q, 1.0),)}, "outside the validity"),
        ({"intervals": ((T0,),)}, r"interval 0 must be a \(start, power_kw\) pair"),
        ({"valid_until": T0}, "valid_from .* must be before valid_until"),
        ({"valid_from": math.nan}, "valid_from must be a finite number"),
        ({"version": 0}, "version must be an integer >= 1"),
        ({"version": 1.5}, "version must be an integer"),
        ({"interval_s": 0}, "interval_s must be an integer >= 1"),
        ({"site_id": ""}, "site_id must be a non-empty string"),
        ({"source": "email"}, "source must be one of plane, file, cli"),
    ],
)
def test_validation_errors_say_what_is_wrong(change: dict[str, object], message: str) -> None:
    fields: dict[str, object] = {
        "site_id": SITE,
        "version": 1,
        "created_at": T0,
        "valid_from": T0,
        "valid_until": T0 + 4 * Q,
        "intervals": ((T0, 1.0),),
    }
    fields.update(change)
    with pytest.raises(ScheduleError, match=message):
        Schedule(**fields)  # type: ignore[arg-type]
    assert issubclass(ScheduleError, ValueError)


def test_hourly_intervals_align_to_their_own_length() -> None:
    s = Schedule(
        site_id=SITE,
        version=1,
        created_at=T0,
        valid_from=T0,
        valid_until=T0 + 7200,
        interval_s=3600,
        intervals=(ScheduleInterval(T0, 5.0), ScheduleInterval(T0 + 3600, 6.0)),
    )
    assert s.setpoint_at(T0 + 3599) == 5.0
    with pytest.raises(ScheduleError, match="not aligned to 3600 s"):
        Schedule(
            site_id=SITE,
            version=1,
            created_at=T0,
            valid_from=T0,
            valid_until=T0 + 7200,
            interval_s=3600,
            intervals=(ScheduleInterval(T0 + Q, 5.0),),
        )


# -- the store ----------------------------------------------------------------------------


def test_save_current_get_and_restart_mid_interval_gives_the_same_setpoint(path: Path) -> None:
    mid = T0 + Q + 400  # in the middle of the second quarter-hour
    with ScheduleStore(path, site_id=SITE) as store:
        assert store.current(T0) is None
        result = store.save(plan(7, [10.0, 20.0, 30.0]), now=T0 - 60)
        assert result.outcome is SaveOutcome.ACCEPTED and result.accepted
        before = store.current(mid)
        assert before is not None and before.setpoint_at(mid) == 20.0
        assert store.get(7) == plan(7, [10.0, 20.0, 30.0])
        assert store.get(6) is None
    with ScheduleStore(path, site_id=SITE) as store:
        after = store.current(mid)
        assert after == before
        assert after is not None and after.setpoint_at(mid) == 20.0
        assert store.latest_version() == 7
        assert store.status(7, now=mid) is ScheduleStatus.ACTIVE


def test_duplicate_is_answered_as_before_and_a_changed_same_version_is_a_conflict(
    store: ScheduleStore,
) -> None:
    assert store.save(plan(3, [1.0])).outcome is SaveOutcome.ACCEPTED
    again = store.save(plan(3, [1.0]))
    assert again.outcome is SaveOutcome.DUPLICATE and again.accepted
    changed = store.save(plan(3, [2.0]))
    assert changed.outcome is SaveOutcome.REJECTED and not changed.accepted
    assert changed.reason is RejectReason.VERSION_CONFLICT
    assert "needs a new version" in changed.detail
    assert store.get(3) == plan(3, [1.0])


def test_a_lower_version_from_the_same_source_is_stale(store: ScheduleStore) -> None:
    store.save(plan(5, [1.0]))
    stale = store.save(plan(4, [9.0], start=T0 + Q))
    assert stale.reason is RejectReason.STALE_VERSION
    assert stale.detail == "plane v4 is older than v5 already held"
    assert store.get(4) is None
    assert store.save(plan(6, [2.0])).outcome is SaveOutcome.ACCEPTED


def test_wrong_site_and_already_expired_are_rejected(store: ScheduleStore) -> None:
    assert store.save(plan(1, [1.0], site_id="other")).reason is RejectReason.WRONG_SITE
    expired = store.save(plan(2, [1.0]), now=T0 + Q)
    assert expired.reason is RejectReason.EXPIRED
    assert "has passed" in expired.detail
    assert store.latest_version() == 0


def test_newer_version_takes_over_at_its_valid_from_and_the_older_never_resurfaces(
    store: ScheduleStore,
) -> None:
    # v1: today's plan, 8 quarter-hours. v2 from the 3rd quarter-hour, only 2 long.
    store.save(plan(1, [10.0] * 8))
    store.save(plan(2, [20.0, 20.0], start=T0 + 2 * Q))
    assert store.current(T0 + 100) == store.get(1)
    assert store.status(1, now=T0 + 100) is ScheduleStatus.ACTIVE
    assert store.status(2, now=T0 + 100) is ScheduleStatus.RECEIVED
    assert store.current(T0 + 2 * Q) == store.get(2)
    assert store.status(1, now=T0 + 2 * Q) is ScheduleStatus.SUPERSEDED
    # v2 ends: the agent holds 0 kW (None), v1 does not come back.
    assert store.current(T0 + 4 * Q) is None
    assert store.status(2, now=T0 + 4 * Q) is ScheduleStatus.EXPIRED


def test_a_day_ahead_plan_waits_for_its_day(store: ScheduleStore) -> None:
    day = 96 * Q
    store.save(plan(1, [10.0] * 96))
    store.save(plan(2, [20.0] * 96, start=T0 + day))
    assert store.current(T0 + day - 1) == store.get(1)
    assert store.current(T0 + day) == store.get(2)
    assert store.current(T0 + 2 * day) is None
    assert store.status(2, now=T0 + 2 * day) is ScheduleStatus.EXPIRED


def test_a_newer_version_starting_earlier_supersedes_before_it_starts(store: ScheduleStore) -> None:
    store.save(plan(1, [1.0], start=T0 + 4 * Q))
    store.save(plan(2, [2.0], start=T0 + 2 * Q))
    assert store.status(1, now=T0) is ScheduleStatus.SUPERSEDED
    assert store.status(2, now=T0) is ScheduleStatus.RECEIVED
    assert store.current(T0 + 4 * Q) is None


def test_local_schedules_override_the_plane_while_in_force(path: Path) -> None:
    with ScheduleStore(path, site_id=SITE, clock=lambda: T0 - 60) as store:
        store.save(plan(40, [100.0] * 8))
        # The plane's version numbers do not bind local sources, nor the other way round.
        assert store.save(plan(1, [-5.0] * 2, start=T0 + Q, source=CLI)).accepted
        assert store.next_version(CLI) == 2
        assert store.latest_version(PLANE) == 40
        assert store.current(T0).setpoint_at(T0) == 100.0  # type: ignore[union-attr]
        in_override = T0 + Q + 10
        assert store.current(in_override).setpoint_at(in_override) == -5.0  # type: ignore[union-attr]
        assert store.status(40, now=in_override) is ScheduleStatus.OVERRIDDEN
        assert store.status(1, source=CLI, now=in_override) is ScheduleStatus.ACTIVE
        # When the override ends the plane's plan applies again.
        assert store.current(T0 + 3 * Q).setpoint_at(T0 + 3 * Q) == 100.0  # type: ignore[union-attr]
        # A file schedule sits between the two.
        store.save(plan(1, [7.0] * 8, source=FILE))
        assert store.current(in_override).source is CLI  # type: ignore[union-attr]
        assert store.current(T0).source is FILE  # type: ignore[union-attr]
        # An operator ends the overrides early; the plane is back.
        assert store.cancel(1, source=CLI, reason="test done", now=T0)
        assert store.cancel(1, source=FILE, reason="test done", now=T0)
        assert not store.cancel(1, source=FILE, reason="twice", now=T0)
    with ScheduleStore(path, site_id=SITE) as store:
        assert store.current(in_override) == store.get(40)
        assert store.status(1, source=CLI, now=T0) is ScheduleStatus.CANCELLED
        assert store.next_version(CLI) == 2  # a cancelled version is still used


def test_history_lists_accepted_and_rejected_newest_first_and_survives_reopen(path: Path) -> None:
    with ScheduleStore(path, site_id=SITE) as store:
        store.save(plan(1, [1.0]), now=T0 - 300)
        store.save(plan(1, [1.0], site_id="x"), now=T0 - 200)
        store.record_rejection(
            source=PLANE,
            version=2,
            reason=RejectReason.MALFORMED,
            detail="interval 0 not aligned",
            now=T0 - 100,
        )
    with ScheduleStore(path, site_id=SITE) as store:
        history = store.history(now=T0 + 10)
        assert [(h.version, h.status, h.reason) for h in history] == [
            (2, ScheduleStatus.REJECTED, RejectReason.MALFORMED),
            (1, ScheduleStatus.REJECTED, RejectReason.WRONG_SITE),
            (1, ScheduleStatus.ACTIVE, None),
        ]
        assert history[2].schedule == store.get(1)
        assert history[0].detail == "interval 0 not aligned"
        assert len(store.history(limit=1)) == 1


def test_old_finished_schedules_are_pruned_but_the_newest_is_kept(path: Path) -> None:
    with ScheduleStore(path, site_id=SITE, retain=2) as store:
        for v in range(1, 8):
            store.save(plan(v, [float(v)], start=T0 + v * Q), now=T0 + v * Q)
        # 2 finished ones (retain), the newest before the last save, the one saved last.
        assert sorted(h.version for h in store.history(now=T0 + 100 * Q)) == [4, 5, 6, 7]
        assert store.get(1) is None
    with ScheduleStore(path, site_id=SITE) as store:
        assert store.latest_version() == 7
        assert store.save(plan(3, [1.0], start=T0 + 200 * Q)).reason is RejectReason.STALE_VERSION


def test_newer_schema_is_refused(path: Path) -> None:
    ScheduleStore(path, site_id=SITE).close()
    with sqlite3.connect(path) as conn:
        conn.execute("UPDATE meta SET value = 2 WHERE key = 'schedule_store.schema_version'")
    conn.close()
    with pytest.raises(ScheduleStoreError, match=r"schema version 2.*newer agent"):
        ScheduleStore(path, site_id=SITE)


def test_shares_a_file_with_the_outbox(path: Path) -> None:
    from edge_agent.outbox import Outbox

    with Outbox(path) as outbox, ScheduleStore(path, site_id=SITE) as store:
        outbox.append("telemetry", [(T0, b"x")])
        store.save(plan(1, [1.0]), now=T0 - 60)
    with Outbox(path) as outbox, ScheduleStore(path, site_id=SITE) as store:
        assert outbox.last_seq("telemetry") == 1
        assert store.latest_version() == 1


def test_a_running_store_sees_schedules_written_by_another_process(tmp_path) -> None:
    """`bess-edge schedule set` writes through its own connection while the agent runs."""
    path = tmp_path / "schedules.sqlite"
    t0 = 1_767_225_600.0  # a quarter-hour boundary
    agent_side = ScheduleStore(path, site_id="s1", clock=lambda: t0)
    assert agent_side.current(t0) is None
    cli_side = ScheduleStore(path, site_id="s1", clock=lambda: t0)
    cli_schedule = Schedule(
        site_id="s1",
        version=cli_side.next_version(ScheduleSource.CLI),
        created_at=t0,
        valid_from=t0,
        valid_until=t0 + 900,
        interval_s=900,
        intervals=((t0, 25.0),),
        source=ScheduleSource.CLI,
    )
    assert cli_side.save(cli_schedule, now=t0).outcome.value == "accepted"
    cli_side.close()
    current = agent_side.current(t0)
    assert current is not None and current.setpoint_at(t0) == 25.0
    assert not agent_side.refresh()  # nothing new: no reload
    agent_side.close()
