"""Crash-safe store-and-forward outbox: payloads wait in SQLite until the plane acks them.

DESIGN.md decision 10 ("no data lost"). Each stream ("telemetry", "events", ...) has its own
per-site sequence space: seqs start at 1, grow by one per payload and are never reused, even
after every row is acked and the file is reopened (the counter lives in the `streams` table and
is updated in the transaction that inserts the rows). `append` commits before it returns, so
the caller only ever sends what is durable. The rows held are always a contiguous seq range
(oldest unacked .. last assigned): acks and bound drops both remove a prefix, which lets the
plane compute a gap from `Hello.oldest_unacked_seq` alone.

Threading: `Outbox` is synchronous and owns one `sqlite3` connection; use it from one thread
only. On the event loop use `AsyncOutbox`, which runs every call on one dedicated thread, so a
slow `fsync` of a `synchronous=FULL` commit on an SD card never stalls the loop.

Errors:

    OutboxError
    ├── OutboxSchemaError       the file is not an outbox this agent can open
    ├── UnknownStreamError      a stream name the outbox does not hold
    ├── AckBeyondLastSeqError   an ack above the last assigned seq (a plane bug); also ValueError
    ├── OutboxStorageError      SQLite failed (disk full, I/O error); the call stored nothing
    └── OutboxClosedError       the outbox was closed
"""

from __future__ import annotations

import asyncio
import logging
import math
import re
import sqlite3
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Literal, NamedTuple, Self, TypeVar

import sqlite_utils

log = logging.getLogger(__name__)

SCHEMA_VERSION = 1
"""Version of the on-disk layout this module writes; a newer file is refused."""

DEFAULT_STREAMS = ("telemetry", "events")
DEFAULT_MAX_ROWS = 1_000_000
"""About 11 days of 1 Hz telemetry, ~150 MB of 100-byte samples."""
DEFAULT_MAX_AGE_S = 7 * 86_400.0

Synchronous = Literal["EXTRA", "FULL", "NORMAL"]
"""FULL survives a power loss with the last commit; NORMAL only an application crash."""

_SCHEMA_KEY = "outbox.schema_version"
_STREAM_NAME = re.compile(r"[a-z][a-z0-9_]{0,31}")
_SYNCHRONOUS: frozenset[str] = frozenset({"EXTRA", "FULL", "NORMAL"})
_T = TypeVar("_T")


class OutboxError(Exception):
    """Base of every error the outbox raises."""


class OutboxSchemaError(OutboxError):
    """The file is not an outbox this agent can open (newer schema, not SQLite)."""


class UnknownStreamError(OutboxError):
    """The outbox holds no stream of that name."""


class AckBeyondLastSeqError(OutboxError, ValueError):
    """An ack above the highest seq ever assigned: the plane acked what it cannot have."""


class OutboxStorageError(OutboxError):
    """SQLite could not complete the call (disk full, I/O error); nothing of it was stored."""


class OutboxClosedError(OutboxError):
    """The outbox was used after close()."""


class OutboxRow(NamedTuple):
    """One stored payload."""

    seq: int
    timestamp: float
    payload: bytes


@dataclass(frozen=True, slots=True)
class StreamLimits:
    """Bounds of one stream: the oldest rows beyond them are dropped (and counted)."""

    max_rows: int = DEFAULT_MAX_ROWS
    max_age_s: float | None = DEFAULT_MAX_AGE_S

    def __post_init__(self) -> None:
        if self.max_rows < 1:
            raise ValueError(f"max_rows must be >= 1, got {self.max_rows}")
        if self.max_age_s is not None and not (
            self.max_age_s > 0 and math.isfinite(self.max_age_s)
        ):
            raise ValueError(f"max_age_s must be a positive number or None, got {self.max_age_s}")


@dataclass(frozen=True, slots=True)
class StreamStats:
    """Snapshot of one stream; seqs are 0 when there is none (the EdgeLink convention)."""

    stream: str
    last_seq: int
    acked_seq: int
    oldest_unacked_seq: int
    depth: int
    oldest_age_s: float
    dropped_total: int


@dataclass(slots=True)
class _Stream:
    """In-memory mirror of a `streams` row, changed only after its transaction commits."""

    name: str
    limits: StreamLimits
    last_seq: int
    acked_seq: int
    # Every row with seq <= head_seq is gone (acked or dropped); rows head_seq+1..last_seq exist.
    head_seq: int
    dropped_total: int
    sql_insert: str
    sql_pending: str
    sql_ts_of: str
    sql_first_fresh: str
    sql_delete_through: str

    @classmethod
    def load(cls, name: str, limits: StreamLimits, counters: tuple[int, int, int, int]) -> _Stream:
        # The name matched _STREAM_NAME, so interpolating it into SQL is safe.
        t = f'"outbox_{name}"'
        return cls(
            name=name,
            limits=limits,
            last_seq=counters[0],
            acked_seq=counters[1],
            head_seq=counters[2],
            dropped_total=counters[3],
            sql_insert=f"INSERT INTO {t} (seq, ts, payload) VALUES (?, ?, ?)",  # noqa: S608
            sql_pending=f"SELECT seq, ts, payload FROM {t} WHERE seq > ? ORDER BY seq LIMIT ?",  # noqa: S608
            sql_ts_of=f"SELECT ts FROM {t} WHERE seq = ?",  # noqa: S608
            sql_first_fresh=(
                f"SELECT seq FROM {t} WHERE seq > ? AND ts >= ? ORDER BY seq LIMIT 1"  # noqa: S608
            ),
            sql_delete_through=f"DELETE FROM {t} WHERE seq <= ?",  # noqa: S608
        )

    @property
    def depth(self) -> int:
        return self.last_seq - self.head_seq


@dataclass(frozen=True, slots=True)
class _Drop:
    """Rows a bound check is about to drop: seqs first..last."""

    first: int
    last: int
    reasons: str

    @property
    def count(self) -> int:
        return self.last - self.first + 1


class Outbox:
    """Durable, bounded, per-stream sequenced queue of opaque payloads in one SQLite file.

    Synchronous and single-threaded by design (one connection); see `AsyncOutbox` for asyncio.
    """

    def __init__(
        self,
        path: str | Path,
        *,
        stream_names: Sequence[str] = DEFAULT_STREAMS,
        max_rows: int = DEFAULT_MAX_ROWS,
        max_age_s: float | None = DEFAULT_MAX_AGE_S,
        limits: Mapping[str, StreamLimits] | None = None,
        synchronous: Synchronous = "FULL",
        clock: Callable[[], float] = time.time,
    ) -> None:
        if synchronous not in _SYNCHRONOUS:
            raise ValueError(
                f"synchronous must be one of {sorted(_SYNCHRONOUS)}, got {synchronous!r}"
            )
        for name in [*stream_names, *(limits or {})]:
            if not _STREAM_NAME.fullmatch(name):
                raise ValueError(f"stream name {name!r} must match {_STREAM_NAME.pattern}")
        self.path = Path(path)
        self.synchronous: Synchronous = synchronous
        self._clock = clock
        self._default_limits = StreamLimits(max_rows=max_rows, max_age_s=max_age_s)
        self._limits = dict(limits or {})
        # isolation_level=None: no implicit transactions; every write below is BEGIN..COMMIT.
        try:
            conn = sqlite3.connect(self.path, isolation_level=None)
        except sqlite3.Error as exc:
            raise OutboxStorageError(
                f"cannot open outbox {self.path}: {exc} (does the directory exist, writable?)"
            ) from exc
        try:
            _configure(conn, self.path, synchronous)
            self._streams = self._open_schema(conn, [*stream_names, *self._limits])
        except sqlite3.OperationalError as exc:  # locked, read-only, disk full
            conn.close()
            raise OutboxStorageError(f"cannot open outbox {self.path}: {exc}") from exc
        except sqlite3.DatabaseError as exc:  # "file is not a database", corruption
            conn.close()
            raise OutboxSchemaError(f"{self.path} is not a usable outbox file: {exc}") from exc
        except BaseException:
            conn.close()
            raise
        self._conn: sqlite3.Connection | None = conn

    # -- lifecycle -------------------------------------------------------------------------

    def close(self) -> None:
        """Close the connection; further calls raise OutboxClosedError. Idempotent."""
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    @property
    def closed(self) -> bool:
        """True after close()."""
        return self._conn is None

    @property
    def stream_names(self) -> tuple[str, ...]:
        """Every stream the file holds (the configured ones and any found in it)."""
        return tuple(self._streams)

    # -- writes ----------------------------------------------------------------------------

    def append(self, stream: str, payloads: Sequence[tuple[float, bytes]]) -> list[int]:
        """Store (timestamp, payload) pairs in one transaction; return their seqs once durable."""
        st = self._stream(stream)
        if not payloads:
            return []
        for ts, _ in payloads:
            if not math.isfinite(ts):
                raise ValueError(f"timestamp must be a finite Unix time in s, got {ts!r}")
        first = st.last_seq + 1
        last = st.last_seq + len(payloads)
        rows = [
            (seq, ts, payload)
            for seq, (ts, payload) in zip(range(first, last + 1), payloads, strict=True)
        ]
        now = self._clock()
        with self._transaction() as conn:
            conn.executemany(st.sql_insert, rows)
            conn.execute("UPDATE streams SET last_seq = ? WHERE name = ?", (last, st.name))
            drop = self._drop_over_bounds(conn, st, last_seq=last, now=now)
        st.last_seq = last
        self._apply_drop(st, drop)
        return list(range(first, last + 1))

    def ack(self, stream: str, through_seq: int) -> int:
        """Delete every row with seq <= through_seq (cumulative ack); return how many went.

        An ack at or below an earlier one is a no-op; one above the last assigned seq is a
        plane bug and raises AckBeyondLastSeqError.
        """
        st = self._stream(stream)
        if through_seq < 0:
            raise ValueError(f"through_seq must be >= 0, got {through_seq}")
        if through_seq > st.last_seq:
            log.error(
                "outbox %s: the plane acked through seq %d but the last seq assigned is %d; "
                "ack refused (plane bug or a different site's outbox)",
                st.name,
                through_seq,
                st.last_seq,
            )
            raise AckBeyondLastSeqError(
                f"stream {st.name!r}: ack through seq {through_seq} is beyond the last "
                f"assigned seq {st.last_seq}"
            )
        if through_seq <= st.acked_seq:
            return 0
        deleted = max(0, through_seq - st.head_seq)
        head = max(st.head_seq, through_seq)
        with self._transaction() as conn:
            if deleted:
                conn.execute(st.sql_delete_through, (through_seq,))
            conn.execute(
                "UPDATE streams SET acked_seq = ?, head_seq = ? WHERE name = ?",
                (through_seq, head, st.name),
            )
        st.acked_seq = through_seq
        st.head_seq = head
        return deleted

    def reconcile(self, stream: str, last_stored_seq: int) -> None:
        """Apply the plane's Welcome.last_stored_seq before sending anything in a session.

        Normally an ack. When the plane holds more than this outbox ever assigned, the outbox
        was lost or replaced (reinstall): the rows not yet sent are renumbered to continue at
        last_stored_seq + 1, so the plane does not discard them as duplicates (EdgeLink Hello).
        """
        st = self._stream(stream)
        if last_stored_seq <= st.last_seq:
            self.ack(stream, last_stored_seq)
            return
        shift = last_stored_seq - st.head_seq
        last = st.last_seq + shift
        log.warning(
            "outbox %s: the plane stored through seq %d but this outbox assigned only up to "
            "%d (outbox lost or replaced); renumbering %d unsent rows to %d..%d",
            st.name,
            last_stored_seq,
            st.last_seq,
            st.depth,
            last_stored_seq + 1,
            last,
        )
        table = f'"outbox_{st.name}"'
        with self._transaction() as conn:
            # Two steps: shifting in place would collide with rows not yet moved.
            conn.execute(f"UPDATE {table} SET seq = -seq")  # noqa: S608
            conn.execute(f"UPDATE {table} SET seq = ? - seq", (shift,))  # noqa: S608
            conn.execute(
                "UPDATE streams SET last_seq = ?, acked_seq = ?, head_seq = ? WHERE name = ?",
                (last, last_stored_seq, last_stored_seq, st.name),
            )
        st.last_seq = last
        st.acked_seq = last_stored_seq
        st.head_seq = last_stored_seq

    def enforce_bounds(self, now: float | None = None) -> dict[str, int]:
        """Drop the oldest rows beyond each stream's bounds; return the count dropped per stream."""
        now = self._clock() if now is None else now
        drops: dict[str, _Drop | None] = {}
        with self._transaction() as conn:
            for st in self._streams.values():
                drops[st.name] = self._drop_over_bounds(conn, st, last_seq=st.last_seq, now=now)
        for name, drop in drops.items():
            self._apply_drop(self._streams[name], drop)
        return {name: drop.count if drop else 0 for name, drop in drops.items()}

    # -- reads -----------------------------------------------------------------------------

    def pending(self, stream: str, *, after_seq: int = 0, limit: int) -> list[OutboxRow]:
        """Rows not yet acked with seq > after_seq, in seq order, at most limit of them."""
        st = self._stream(stream)
        if limit < 0:
            raise ValueError(f"limit must be >= 0, got {limit}")
        cursor = self._require_open().execute(st.sql_pending, (after_seq, limit))
        return list(map(OutboxRow._make, cursor))

    def last_seq(self, stream: str) -> int:
        """Highest seq ever assigned; 0 = none yet."""
        return self._stream(stream).last_seq

    def oldest_unacked_seq(self, stream: str) -> int:
        """Lowest seq still held; 0 = stream empty."""
        st = self._stream(stream)
        return st.head_seq + 1 if st.depth else 0

    def depth(self, stream: str) -> int:
        """Rows held (not acked, not dropped)."""
        return self._stream(stream).depth

    def dropped_total(self, stream: str) -> int:
        """Rows dropped by the bounds over the file's whole life."""
        return self._stream(stream).dropped_total

    def oldest_age_s(self, stream: str, now: float | None = None) -> float:
        """Age of the oldest held row by its timestamp; 0.0 when empty or in the future."""
        st = self._stream(stream)
        if not st.depth:
            return 0.0
        now = self._clock() if now is None else now
        row = self._require_open().execute(st.sql_ts_of, (st.head_seq + 1,)).fetchone()
        return max(0.0, now - float(row[0])) if row else 0.0

    def stats(self, now: float | None = None) -> dict[str, StreamStats]:
        """Snapshot of every stream, for heartbeats, metrics and `doctor`."""
        now = self._clock() if now is None else now
        return {
            st.name: StreamStats(
                stream=st.name,
                last_seq=st.last_seq,
                acked_seq=st.acked_seq,
                oldest_unacked_seq=self.oldest_unacked_seq(st.name),
                depth=st.depth,
                oldest_age_s=self.oldest_age_s(st.name, now),
                dropped_total=st.dropped_total,
            )
            for st in self._streams.values()
        }

    # -- internals -------------------------------------------------------------------------

    def _require_open(self) -> sqlite3.Connection:
        if self._conn is None:
            raise OutboxClosedError(f"outbox {self.path} is closed")
        return self._conn

    def _stream(self, name: str) -> _Stream:
        self._require_open()
        try:
            return self._streams[name]
        except KeyError:
            raise UnknownStreamError(
                f"outbox {self.path} has no stream {name!r}; it has {sorted(self._streams)}"
            ) from None

    @contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        conn = self._require_open()
        try:
            # IMMEDIATE takes the write lock up front: no upgrade deadlock with a reader process.
            conn.execute("BEGIN IMMEDIATE")
            yield conn
            conn.execute("COMMIT")
        except BaseException as exc:
            if conn.in_transaction:
                try:
                    conn.execute("ROLLBACK")
                except sqlite3.Error:
                    log.exception("outbox %s: rollback failed", self.path)
            if isinstance(exc, sqlite3.Error):
                raise OutboxStorageError(f"outbox {self.path}: {exc}") from exc
            raise

    def _drop_over_bounds(
        self, conn: sqlite3.Connection, st: _Stream, *, last_seq: int, now: float
    ) -> _Drop | None:
        """Delete the oldest rows beyond the bounds inside the caller's transaction."""
        head = st.head_seq
        through = head
        reasons: list[str] = []
        if last_seq - head > st.limits.max_rows:
            through = last_seq - st.limits.max_rows
            reasons.append(f"max_rows={st.limits.max_rows}")
        if st.limits.max_age_s is not None and through < last_seq:
            cutoff = now - st.limits.max_age_s
            oldest = conn.execute(st.sql_ts_of, (through + 1,)).fetchone()
            if oldest is not None and oldest[0] < cutoff:
                # Drop a prefix only (the held rows stay contiguous), up to the first fresh row.
                fresh = conn.execute(st.sql_first_fresh, (through, cutoff)).fetchone()
                through = fresh[0] - 1 if fresh else last_seq
                reasons.append(f"max_age_s={st.limits.max_age_s:g}")
        if through <= head:
            return None
        conn.execute(st.sql_delete_through, (through,))
        conn.execute(
            "UPDATE streams SET head_seq = ?, dropped_total = dropped_total + ? WHERE name = ?",
            (through, through - head, st.name),
        )
        return _Drop(first=head + 1, last=through, reasons=", ".join(reasons))

    def _apply_drop(self, st: _Stream, drop: _Drop | None) -> None:
        if drop is None:
            return
        st.head_seq = drop.last
        st.dropped_total += drop.count
        log.warning(
            "outbox %s: dropped %d oldest unacked rows (seq %d..%d) over bound %s; "
            "%d dropped in total",
            st.name,
            drop.count,
            drop.first,
            drop.last,
            drop.reasons,
            st.dropped_total,
        )

    def _open_schema(self, conn: sqlite3.Connection, names: Sequence[str]) -> dict[str, _Stream]:
        # Every step is idempotent (IF NOT EXISTS / OR IGNORE), so a crash while creating the
        # file is repaired by the next open; the version is written last.
        db = sqlite_utils.Database(conn, execute_plugins=False)
        db.table("meta").create(
            {"key": str, "value": int},
            pk="key",
            not_null={"value"},
            strict=True,
            if_not_exists=True,
        )
        row = conn.execute("SELECT value FROM meta WHERE key = ?", (_SCHEMA_KEY,)).fetchone()
        found = int(row[0]) if row else 0
        if found > SCHEMA_VERSION:
            raise OutboxSchemaError(
                f"{self.path} has outbox schema version {found}, this agent supports up to "
                f"{SCHEMA_VERSION}: it was written by a newer agent. Upgrade the agent, or move "
                f"the file aside (its unsent rows stay in it)."
            )
        # Migrations from older versions go here, keyed on `found`.
        db.table("streams").create(
            {"name": str, "last_seq": int, "acked_seq": int, "head_seq": int, "dropped_total": int},
            pk="name",
            not_null={"last_seq", "acked_seq", "head_seq", "dropped_total"},
            defaults={"last_seq": 0, "acked_seq": 0, "head_seq": 0, "dropped_total": 0},
            strict=True,
            if_not_exists=True,
        )
        for name in dict.fromkeys(names):
            db.table(f"outbox_{name}").create(
                # seq is INTEGER PRIMARY KEY: the rowid itself, so no extra index to maintain.
                {"seq": int, "ts": float, "payload": bytes},
                pk="seq",
                not_null={"ts", "payload"},
                strict=True,
                if_not_exists=True,
            )
            conn.execute("INSERT OR IGNORE INTO streams (name) VALUES (?)", (name,))
        if found != SCHEMA_VERSION:
            conn.execute(
                "INSERT INTO meta (key, value) VALUES (?, ?) "
                "ON CONFLICT (key) DO UPDATE SET value = excluded.value",
                (_SCHEMA_KEY, SCHEMA_VERSION),
            )
        streams: dict[str, _Stream] = {}
        for name, *counters in conn.execute(
            "SELECT name, last_seq, acked_seq, head_seq, dropped_total FROM streams ORDER BY name"
        ).fetchall():
            limits = self._limits.get(name, self._default_limits)
            st = _Stream.load(name, limits, (counters[0], counters[1], counters[2], counters[3]))
            self._check_counters(conn, st)
            streams[name] = st
        return streams

    def _check_counters(self, conn: sqlite3.Connection, st: _Stream) -> None:
        """Repair counters that disagree with the rows (a hand-edited file), keeping every row."""
        lo, hi = conn.execute(f'SELECT min(seq), max(seq) FROM "outbox_{st.name}"').fetchone()  # noqa: S608
        hi = max(hi or 0, st.head_seq, st.acked_seq)
        if hi > st.last_seq:
            # Never reuse a seq: continue after the highest one present.
            log.error(
                "outbox %s: seq %d used but last_seq is %d; continuing after it",
                st.name,
                hi,
                st.last_seq,
            )
            st.last_seq = hi
            conn.execute("UPDATE streams SET last_seq = ? WHERE name = ?", (hi, st.name))
        if lo is not None and lo <= st.head_seq:
            # Rows thought gone are still there: resend them (the plane ingests idempotently).
            log.error(
                "outbox %s: row seq %d at or below head %d; keeping it", st.name, lo, st.head_seq
            )
            st.head_seq = lo - 1
            st.acked_seq = min(st.acked_seq, st.head_seq)
            conn.execute(
                "UPDATE streams SET head_seq = ?, acked_seq = ? WHERE name = ?",
                (st.head_seq, st.acked_seq, st.name),
            )


def _configure(conn: sqlite3.Connection, path: Path, synchronous: Synchronous) -> None:
    mode = conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]
    if str(mode).lower() != "wal":
        log.warning("outbox %s: journal_mode is %s, not WAL (filesystem without WAL?)", path, mode)
    conn.execute(f"PRAGMA synchronous = {synchronous}")  # validated against _SYNCHRONOUS
    # A reader process (doctor, a backup) may hold the lock briefly; wait instead of failing.
    conn.execute("PRAGMA busy_timeout = 5000")
    # Truncate the WAL after a checkpoint so a backlog burst does not leave a huge -wal file.
    conn.execute("PRAGMA journal_size_limit = 67108864")


class AsyncOutbox:
    """`Outbox` for asyncio: every call runs, in order, on one thread that owns the connection.

    Use as `async with AsyncOutbox(functools.partial(Outbox, path)) as outbox:`. The factory
    runs on that thread too. Cancelling an awaiting task does not cancel a write already
    started: an append still commits (the uplink reads it back with `pending`). A write still
    queued behind another one IS dropped with the cancelled task: callers that must not lose
    it shield the call (`asyncio.shield`), as the agent does for its last events.
    """

    def __init__(self, factory: Callable[[], Outbox]) -> None:
        self._factory = factory
        self._executor: ThreadPoolExecutor | None = None
        self._outbox: Outbox | None = None

    async def open(self) -> None:
        """Open the outbox on its own thread."""
        if self._executor is None:
            self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="outbox")
        loop = asyncio.get_running_loop()
        self._outbox = await loop.run_in_executor(self._executor, self._factory)

    async def aclose(self) -> None:
        """Close the outbox and stop its thread. Idempotent."""
        if self._executor is None:
            return
        if self._outbox is not None:
            await self._run(Outbox.close)
            self._outbox = None
        self._executor.shutdown(wait=False)
        self._executor = None

    async def __aenter__(self) -> Self:
        await self.open()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    async def _run(self, call: Callable[[Outbox], _T]) -> _T:
        outbox, executor = self._outbox, self._executor
        if outbox is None or executor is None:
            raise OutboxClosedError("async outbox is not open")
        return await asyncio.get_running_loop().run_in_executor(executor, call, outbox)

    async def append(self, stream: str, payloads: Sequence[tuple[float, bytes]]) -> list[int]:
        """See `Outbox.append`; do not mutate payloads until it returns."""
        return await self._run(lambda o: o.append(stream, payloads))

    async def ack(self, stream: str, through_seq: int) -> int:
        """See `Outbox.ack`."""
        return await self._run(lambda o: o.ack(stream, through_seq))

    async def reconcile(self, stream: str, last_stored_seq: int) -> None:
        """See `Outbox.reconcile`."""
        await self._run(lambda o: o.reconcile(stream, last_stored_seq))

    async def pending(self, stream: str, *, after_seq: int = 0, limit: int) -> list[OutboxRow]:
        """See `Outbox.pending`."""
        return await self._run(lambda o: o.pending(stream, after_seq=after_seq, limit=limit))

    async def enforce_bounds(self, now: float | None = None) -> dict[str, int]:
        """See `Outbox.enforce_bounds`."""
        return await self._run(lambda o: o.enforce_bounds(now))

    async def stats(self, now: float | None = None) -> dict[str, StreamStats]:
        """See `Outbox.stats`; one call for every counter of every stream."""
        return await self._run(lambda o: o.stats(now))
