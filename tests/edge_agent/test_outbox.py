"""The store-and-forward outbox: seqs, acks, bounds, schema and a state machine of it all."""

from __future__ import annotations

import logging
import math
import shutil
import sqlite3
import tempfile
import threading
from pathlib import Path

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule

from edge_agent.outbox import (
    AckBeyondLastSeqError,
    AsyncOutbox,
    Outbox,
    OutboxClosedError,
    OutboxRow,
    OutboxSchemaError,
    OutboxStorageError,
    StreamLimits,
    UnknownStreamError,
)

T0 = 1_767_225_600.0  # 2026-01-01T00:00:00Z
TELEMETRY = "telemetry"


class Clock:
    """Injected wall clock, moved by hand."""

    def __init__(self, now: float = T0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def rows(n: int, ts: float = T0, tag: bytes = b"p") -> list[tuple[float, bytes]]:
    return [(ts + i, tag + str(i).encode()) for i in range(n)]


def all_seqs(outbox: Outbox, stream: str = TELEMETRY) -> list[int]:
    return [r.seq for r in outbox.pending(stream, limit=1_000_000)]


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def path(tmp_path: Path) -> Path:
    return tmp_path / "outbox.sqlite"


def test_seqs_start_at_1_grow_and_are_never_reused_across_reopen(path: Path, clock: Clock) -> None:
    with Outbox(path, clock=clock) as outbox:
        assert outbox.last_seq(TELEMETRY) == 0
        assert outbox.append(TELEMETRY, rows(3)) == [1, 2, 3]
        assert outbox.append(TELEMETRY, rows(2)) == [4, 5]
        assert outbox.append(TELEMETRY, []) == []
        assert outbox.ack(TELEMETRY, 5) == 5
        assert outbox.depth(TELEMETRY) == 0
    with Outbox(path, clock=clock) as outbox:
        # Everything acked and deleted: the counter, not max(seq), decides.
        assert outbox.last_seq(TELEMETRY) == 5
        assert outbox.oldest_unacked_seq(TELEMETRY) == 0
        assert outbox.append(TELEMETRY, rows(1)) == [6]


def test_streams_have_independent_sequence_spaces(path: Path, clock: Clock) -> None:
    with Outbox(path, clock=clock) as outbox:
        assert outbox.append(TELEMETRY, rows(3)) == [1, 2, 3]
        assert outbox.append("events", rows(1)) == [1]
        outbox.ack("events", 1)
        assert outbox.depth(TELEMETRY) == 3
        assert outbox.stream_names == ("events", TELEMETRY)


def test_custom_streams_and_unknown_stream(path: Path, clock: Clock) -> None:
    with Outbox(path, stream_names=("samples",), clock=clock) as outbox:
        assert outbox.append("samples", rows(1)) == [1]
        with pytest.raises(UnknownStreamError, match="no stream 'nope'"):
            outbox.append("nope", rows(1))
    with pytest.raises(ValueError, match="stream name"):
        Outbox(path, stream_names=("Bad Name; DROP",))


def test_pending_is_in_seq_order_from_after_seq_up_to_limit(path: Path, clock: Clock) -> None:
    with Outbox(path, clock=clock) as outbox:
        outbox.append(TELEMETRY, rows(5, tag=b"a"))
        outbox.append(TELEMETRY, rows(5, ts=T0 - 100, tag=b"b"))  # older stamps, later seqs
        got = outbox.pending(TELEMETRY, limit=4)
        assert got == [OutboxRow(i + 1, T0 + i, b"a%d" % i) for i in range(4)]
        assert [r.seq for r in outbox.pending(TELEMETRY, after_seq=4, limit=3)] == [5, 6, 7]
        assert [r.seq for r in outbox.pending(TELEMETRY, after_seq=8, limit=100)] == [9, 10]
        assert outbox.pending(TELEMETRY, after_seq=10, limit=100) == []
        assert outbox.pending(TELEMETRY, limit=0) == []
        # Reading is not consuming: a resend after reconnect sees the same rows.
        assert all_seqs(outbox) == list(range(1, 11))


def test_ack_is_cumulative_and_a_lower_ack_is_a_no_op(path: Path, clock: Clock) -> None:
    with Outbox(path, clock=clock) as outbox:
        outbox.append(TELEMETRY, rows(10))
        assert outbox.ack(TELEMETRY, 4) == 4
        assert outbox.oldest_unacked_seq(TELEMETRY) == 5
        assert outbox.ack(TELEMETRY, 2) == 0
        assert outbox.ack(TELEMETRY, 4) == 0
        assert outbox.ack(TELEMETRY, 0) == 0
        assert all_seqs(outbox) == list(range(5, 11))
        assert outbox.ack(TELEMETRY, 10) == 6
        assert outbox.depth(TELEMETRY) == 0
        assert outbox.oldest_unacked_seq(TELEMETRY) == 0
        assert outbox.stats()[TELEMETRY].acked_seq == 10
    with Outbox(path, clock=clock) as outbox:
        assert outbox.ack(TELEMETRY, 7) == 0
        assert outbox.stats()[TELEMETRY].acked_seq == 10


def test_ack_beyond_last_assigned_seq_is_refused_and_logged(
    path: Path, clock: Clock, caplog: pytest.LogCaptureFixture
) -> None:
    with Outbox(path, clock=clock) as outbox:
        outbox.append(TELEMETRY, rows(3))
        with caplog.at_level(logging.ERROR, logger="edge_agent.outbox"):
            with pytest.raises(AckBeyondLastSeqError, match="beyond the last assigned seq 3"):
                outbox.ack(TELEMETRY, 4)
        assert "acked through seq 4" in caplog.text
        assert isinstance(AckBeyondLastSeqError("x"), ValueError)
        assert all_seqs(outbox) == [1, 2, 3]
        with pytest.raises(ValueError, match=">= 0"):
            outbox.ack(TELEMETRY, -1)


def test_row_bound_drops_oldest_counts_and_logs_them(
    path: Path, clock: Clock, caplog: pytest.LogCaptureFixture
) -> None:
    with Outbox(path, max_rows=5, clock=clock) as outbox:
        outbox.append(TELEMETRY, rows(4))
        with caplog.at_level(logging.WARNING, logger="edge_agent.outbox"):
            assert outbox.append(TELEMETRY, rows(4)) == [5, 6, 7, 8]
        assert all_seqs(outbox) == [4, 5, 6, 7, 8]
        assert outbox.dropped_total(TELEMETRY) == 3
        assert "dropped 3 oldest unacked rows (seq 1..3) over bound max_rows=5" in caplog.text
        # One batch larger than the bound keeps its newest rows; every other seq is counted.
        assert outbox.append(TELEMETRY, rows(12)) == list(range(9, 21))
        assert all_seqs(outbox) == list(range(16, 21))
        assert outbox.dropped_total(TELEMETRY) == 15
    with Outbox(path, max_rows=5, clock=clock) as outbox:
        assert outbox.dropped_total(TELEMETRY) == 15
        assert outbox.oldest_unacked_seq(TELEMETRY) == 16
        assert outbox.append(TELEMETRY, rows(1)) == [21]


def test_age_bound_drops_old_prefix_on_enforce_and_append(path: Path, clock: Clock) -> None:
    with Outbox(path, max_age_s=60, clock=clock) as outbox:
        outbox.append(TELEMETRY, [(T0 + i * 10, b"x") for i in range(10)])  # T0 .. T0+90
        assert outbox.oldest_age_s(TELEMETRY) == 0.0  # T0 is now, later stamps are future
        assert outbox.oldest_age_s(TELEMETRY, now=T0 + 100) == 100
        assert outbox.enforce_bounds(now=T0 + 100) == {"events": 0, TELEMETRY: 4}
        assert all_seqs(outbox) == list(range(5, 11))  # T0+40 .. T0+90 are within 60 s
        assert outbox.enforce_bounds(now=T0 + 100) == {"events": 0, TELEMETRY: 0}
        clock.now = T0 + 145
        outbox.append(TELEMETRY, [(T0 + 145, b"y")])  # append enforces with the clock
        assert all_seqs(outbox) == [10, 11]
        assert outbox.dropped_total(TELEMETRY) == 4 + 5
        assert outbox.stats()[TELEMETRY].oldest_age_s == 55


def test_age_bound_drops_only_a_prefix_so_held_seqs_stay_contiguous(
    path: Path, clock: Clock
) -> None:
    with Outbox(path, max_age_s=60, clock=clock) as outbox:
        # A clock step back: seq 3 carries an old stamp behind a fresh seq 2.
        outbox.append(TELEMETRY, [(T0 - 100, b"old"), (T0, b"fresh"), (T0 - 100, b"stepped")])
        assert all_seqs(outbox) == [2, 3]
        assert outbox.enforce_bounds(now=T0 + 30) == {"events": 0, TELEMETRY: 0}
        assert outbox.dropped_total(TELEMETRY) == 1


def test_per_stream_limits(path: Path, clock: Clock) -> None:
    limits = {"events": StreamLimits(max_rows=100, max_age_s=None)}
    with Outbox(path, max_rows=2, max_age_s=10, limits=limits, clock=clock) as outbox:
        outbox.append(TELEMETRY, rows(5, ts=T0 - 1000))
        outbox.append("events", rows(5, ts=T0 - 1000))
        assert outbox.depth(TELEMETRY) == 0
        assert outbox.depth("events") == 5
    with pytest.raises(ValueError, match="max_rows"):
        StreamLimits(max_rows=0)


def test_failed_batch_stores_nothing_and_assigns_nothing(path: Path, clock: Clock) -> None:
    with Outbox(path, clock=clock) as outbox:
        outbox.append(TELEMETRY, rows(2))
        bad: list[tuple[float, bytes]] = [(T0, b"ok"), (T0, "not bytes")]  # type: ignore[list-item]
        with pytest.raises(OutboxStorageError):
            outbox.append(TELEMETRY, bad)
        with pytest.raises(ValueError, match="finite"):
            outbox.append(TELEMETRY, [(T0, b"ok"), (math.nan, b"x")])
        assert all_seqs(outbox) == [1, 2]
        assert outbox.append(TELEMETRY, rows(1)) == [3]


def test_reconcile_acks_or_renumbers_after_a_lost_outbox(path: Path, clock: Clock) -> None:
    with Outbox(path, clock=clock) as outbox:
        outbox.append(TELEMETRY, rows(5))
        outbox.reconcile(TELEMETRY, 2)  # Welcome.last_stored_seq = 2: an ack
        assert all_seqs(outbox) == [3, 4, 5]
        # The plane stored through 100 while this outbox only reached 5: it was replaced.
        outbox.reconcile(TELEMETRY, 100)
        assert outbox.pending(TELEMETRY, limit=10) == [
            OutboxRow(101, T0 + 2, b"p2"),
            OutboxRow(102, T0 + 3, b"p3"),
            OutboxRow(103, T0 + 4, b"p4"),
        ]
        assert outbox.last_seq(TELEMETRY) == 103
        assert outbox.append(TELEMETRY, rows(1)) == [104]
    with Outbox(path, clock=clock) as outbox:
        assert all_seqs(outbox) == [101, 102, 103, 104]
        assert outbox.oldest_unacked_seq(TELEMETRY) == 101


def test_newer_schema_is_refused_with_a_clear_error(path: Path) -> None:
    Outbox(path).close()
    with sqlite3.connect(path) as conn:
        conn.execute("UPDATE meta SET value = 99 WHERE key = 'outbox.schema_version'")
    conn.close()
    with pytest.raises(OutboxSchemaError, match=r"schema version 99.*supports up to 1.*newer"):
        Outbox(path)


def test_a_file_that_is_not_sqlite_is_refused(path: Path) -> None:
    path.write_bytes(b"certainly not a database" * 100)
    with pytest.raises(OutboxSchemaError, match="not a usable outbox"):
        Outbox(path)


def test_a_missing_directory_is_a_storage_error(tmp_path: Path) -> None:
    with pytest.raises(OutboxStorageError, match=r"cannot open outbox .*directory exist"):
        Outbox(tmp_path / "missing" / "outbox.sqlite")


def test_wal_and_synchronous_full_by_default_normal_on_request(tmp_path: Path) -> None:
    for synchronous, level in (("FULL", 2), ("NORMAL", 1)):
        with Outbox(tmp_path / f"{synchronous}.sqlite", synchronous=synchronous) as outbox:  # type: ignore[arg-type]
            conn = outbox._require_open()
            assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
            assert conn.execute("PRAGMA synchronous").fetchone()[0] == level
    with Outbox(tmp_path / "default.sqlite") as outbox:
        assert outbox._require_open().execute("PRAGMA synchronous").fetchone()[0] == 2
    with pytest.raises(ValueError, match="synchronous"):
        Outbox(tmp_path / "off.sqlite", synchronous="OFF")  # type: ignore[arg-type]


def test_close_is_idempotent_and_final(path: Path) -> None:
    outbox = Outbox(path)
    outbox.close()
    outbox.close()
    assert outbox.closed
    with pytest.raises(OutboxClosedError):
        outbox.append(TELEMETRY, rows(1))


def test_hand_edited_counters_never_lead_to_a_reused_seq(path: Path, clock: Clock) -> None:
    with Outbox(path, clock=clock) as outbox:
        outbox.append(TELEMETRY, rows(3))
        outbox.append("events", rows(3))
        outbox.ack("events", 3)
    with sqlite3.connect(path) as conn:
        conn.execute("UPDATE streams SET last_seq = 1")
    conn.close()
    with Outbox(path, clock=clock) as outbox:
        assert outbox.append(TELEMETRY, rows(1)) == [4]
        assert outbox.append("events", rows(1)) == [4]
        assert all_seqs(outbox, "events") == [4]


async def test_async_outbox_runs_every_call_on_one_worker_thread(path: Path, clock: Clock) -> None:
    threads: set[int] = set()

    def factory() -> Outbox:
        threads.add(threading.get_ident())
        return Outbox(path, clock=clock)

    async with AsyncOutbox(factory) as outbox:
        assert await outbox.append(TELEMETRY, rows(3)) == [1, 2, 3]
        assert [r.seq for r in await outbox.pending(TELEMETRY, limit=2)] == [1, 2]
        assert await outbox.ack(TELEMETRY, 2) == 1 + 1
        await outbox.reconcile("events", 0)
        assert await outbox.enforce_bounds() == {"events": 0, TELEMETRY: 0}
        stats = await outbox.stats()
        assert (stats[TELEMETRY].depth, stats[TELEMETRY].last_seq) == (1, 3)
        assert await outbox._run(lambda _: threading.get_ident()) in threads
    assert threading.get_ident() not in threads
    with pytest.raises(OutboxClosedError):
        await outbox.append(TELEMETRY, rows(1))
    with Outbox(path) as reopened:
        assert all_seqs(reopened) == [3]


# -- the whole contract as a state machine -------------------------------------------------

STREAMS = (TELEMETRY, "events")
MAX_ROWS = 7
MAX_AGE_S = 50.0


class OutboxMachine(RuleBasedStateMachine):
    """Random appends, in-order deliveries, resends, reopens, clock leaps and bound checks.

    Every seq assigned is delivered exactly once in order, still held, or counted as dropped;
    a plain list, bounded the same way, says which rows must still be held.
    """

    def __init__(self) -> None:
        super().__init__()
        self.dir = Path(tempfile.mkdtemp(prefix="outbox-sm-"))
        self.clock = Clock()
        self.outbox = self._open()
        self.assigned: dict[str, int] = dict.fromkeys(STREAMS, 0)
        self.delivered: dict[str, list[int]] = {s: [] for s in STREAMS}
        self.model: dict[str, list[tuple[int, float]]] = {s: [] for s in STREAMS}

    def _bound(self, stream: str) -> None:
        """The bounds on the model: oldest rows over max_rows, then a prefix of stale ones."""
        held = self.model[stream]
        del held[: max(0, len(held) - MAX_ROWS)]
        while held and held[0][1] < self.clock.now - MAX_AGE_S:
            del held[0]

    def _open(self) -> Outbox:
        # NORMAL keeps the test fast; durability at FULL is the crash test's job.
        return Outbox(
            self.dir / "o.sqlite",
            max_rows=MAX_ROWS,
            max_age_s=MAX_AGE_S,
            synchronous="NORMAL",
            clock=self.clock,
        )

    @rule(stream=st.sampled_from(STREAMS), n=st.integers(0, 10), age=st.floats(0, 80))
    def append(self, stream: str, n: int, age: float) -> None:
        batch = rows(n, ts=self.clock.now - age)
        seqs = self.outbox.append(stream, batch)
        assert seqs == list(range(self.assigned[stream] + 1, self.assigned[stream] + n + 1))
        self.assigned[stream] += n
        self.model[stream] += [(seq, ts) for seq, (ts, _) in zip(seqs, batch, strict=True)]
        if n:  # an empty append is a no-op: it writes nothing, so it enforces nothing
            self._bound(stream)

    @rule(stream=st.sampled_from(STREAMS), k=st.integers(1, 10))
    def deliver_and_ack(self, stream: str, k: int) -> None:
        got = self.outbox.pending(stream, limit=k)
        self.delivered[stream] += [r.seq for r in got]
        del self.model[stream][: len(got)]
        if got:
            assert self.outbox.ack(stream, got[-1].seq) == len(got)

    @rule(stream=st.sampled_from(STREAMS), k=st.integers(1, 10))
    def send_but_lose_the_ack(self, stream: str, k: int) -> None:
        self.outbox.pending(stream, limit=k)

    @rule(stream=st.sampled_from(STREAMS))
    def stale_ack(self, stream: str) -> None:
        if self.delivered[stream]:
            assert self.outbox.ack(stream, self.delivered[stream][-1]) == 0

    @rule(stream=st.sampled_from(STREAMS), beyond=st.integers(1, 3))
    def ack_beyond_last(self, stream: str, beyond: int) -> None:
        try:
            self.outbox.ack(stream, self.assigned[stream] + beyond)
        except AckBeyondLastSeqError:
            return
        raise AssertionError("ack beyond the last seq was accepted")

    @rule(dt=st.floats(0, 40))
    def clock_leap(self, dt: float) -> None:
        self.clock.now += dt

    @rule()
    def enforce_bounds(self) -> None:
        dropped = self.outbox.enforce_bounds()
        for stream in STREAMS:
            before = len(self.model[stream])
            self._bound(stream)
            assert dropped[stream] == before - len(self.model[stream])

    @rule()
    def reopen(self) -> None:
        self.outbox.close()
        self.outbox = self._open()

    @invariant()
    def every_seq_is_delivered_held_or_counted_as_dropped(self) -> None:
        for stream in STREAMS:
            rows_held = self.outbox.pending(stream, limit=1_000_000)
            assert [(r.seq, r.timestamp) for r in rows_held] == self.model[stream]
            held = [r.seq for r in rows_held]
            delivered = self.delivered[stream]
            assert self.outbox.last_seq(stream) == self.assigned[stream]
            assert len(held) == self.outbox.depth(stream) <= MAX_ROWS
            if held:
                assert held == list(range(held[0], self.assigned[stream] + 1))
                assert self.outbox.oldest_unacked_seq(stream) == held[0]
            assert delivered == sorted(set(delivered))  # in order, each once
            dropped = set(range(1, self.assigned[stream] + 1)) - set(delivered) - set(held)
            assert not set(delivered) & set(held)
            assert len(dropped) == self.outbox.dropped_total(stream)
            # Drops take the oldest rows only: nothing dropped is newer than a held row.
            assert not held or max(dropped, default=0) < held[0]

    def teardown(self) -> None:
        try:
            self.outbox.close()
        finally:
            shutil.rmtree(self.dir, ignore_errors=True)


OutboxMachine.TestCase.settings = settings(
    max_examples=30,
    stateful_step_count=30,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
TestOutboxMachine = OutboxMachine.TestCase
