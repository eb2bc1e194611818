"""Persisted power schedules, so a restarted agent continues the current interval.

Rules (kept small on purpose):

* Each source - "plane", "file", "cli" - has its own version space. Within a source versions
  only grow: a version below the highest one held is rejected as stale; the same version again
  is a duplicate (same answer as before, EdgeLink delivers at least once) if identical, and a
  conflict (rejected) if not. The plane's numbers are never touched by local schedules.
* Precedence between sources: cli > file > plane. A local schedule is an operator override on
  site: while it is in force it wins; at its valid_until (or `cancel`) the plane's schedule
  applies again. The plane learns of it from the agent's events.
* Within a source, a newer version replaces the older ones from its valid_from on (EdgeLink:
  "replaces the held schedule as a whole"): the current schedule of a source is its highest
  version whose valid_from has passed, and only while now < its valid_until - an older version
  never resurfaces after a newer one ends. Outside every interval the agent holds 0 kW.

`ScheduleStore` is synchronous and single-threaded (one SQLite connection). `current()` is
served from memory; `save()` commits once (WAL, synchronous=FULL) and happens at most every
few minutes, so both may run on the event loop.
"""

from __future__ import annotations

import bisect
import json
import logging
import math
import sqlite3
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from enum import StrEnum
from pathlib import Path
from types import TracebackType
from typing import Any, Literal, NamedTuple, Self

import sqlite_utils

log = logging.getLogger(__name__)

SCHEMA_VERSION = 1
"""Version of the on-disk layout this module writes; a newer file is refused."""

DEFAULT_INTERVAL_S = 900
DEFAULT_RETAIN = 200
"""Finished or rejected schedules kept for history; the newest per source is always kept."""

_SCHEMA_KEY = "schedule_store.schema_version"


class ScheduleSource(StrEnum):
    """Who produced a schedule; also its version space and its precedence."""

    PLANE = "plane"
    FILE = "file"
    CLI = "cli"


PRECEDENCE: tuple[ScheduleSource, ...] = (
    ScheduleSource.CLI,
    ScheduleSource.FILE,
    ScheduleSource.PLANE,
)
"""Highest first: a local schedule in force overrides the plane's."""


class ScheduleStatus(StrEnum):
    """Where a schedule stands at a given time."""

    RECEIVED = "received"  # accepted, valid_from still ahead
    ACTIVE = "active"  # the one current() returns
    OVERRIDDEN = "overridden"  # in force for its source, but a higher-precedence source wins
    SUPERSEDED = "superseded"  # a newer version of its source took over
    EXPIRED = "expired"  # valid_until has passed
    CANCELLED = "cancelled"  # withdrawn by an operator
    REJECTED = "rejected"  # never accepted; see the reason


class RejectReason(StrEnum):
    """Why save() refused a schedule (the EdgeLink converter maps these to RejectReason)."""

    MALFORMED = "malformed"
    WRONG_SITE = "wrong_site"
    STALE_VERSION = "stale_version"
    VERSION_CONFLICT = "version_conflict"
    EXPIRED = "expired"


class ScheduleError(ValueError):
    """A schedule that fails validation; the message says which field and why."""


class ScheduleStoreError(Exception):
    """The store file cannot be used (newer schema, not SQLite) or SQLite failed."""


class ScheduleInterval(NamedTuple):
    """One interval [start, start + interval_s) at a constant power (+ = discharge)."""

    start: float
    power_kw: float


def _iso(t: float) -> str:
    try:
        return datetime.fromtimestamp(t, UTC).isoformat().replace("+00:00", "Z")
    except (OverflowError, OSError, ValueError):
        return repr(t)


def _finite(name: str, value: float) -> None:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise ScheduleError(f"{name} must be a finite number, got {value!r}")


@dataclass(frozen=True, slots=True, kw_only=True)
class Schedule:
    """A site's power plan; times are Unix seconds (UTC), intervals sorted and aligned."""

    site_id: str
    version: int
    created_at: float
    valid_from: float
    valid_until: float
    intervals: tuple[ScheduleInterval, ...]
    interval_s: int = DEFAULT_INTERVAL_S
    source: ScheduleSource = ScheduleSource.PLANE
    origin: str = ""  # optimiser run id or operator, for audit
    _starts: tuple[float, ...] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if not isinstance(self.site_id, str) or not self.site_id:
            raise ScheduleError("site_id must be a non-empty string")
        if isinstance(self.version, bool) or not isinstance(self.version, int) or self.version < 1:
            raise ScheduleError(f"version must be an integer >= 1, got {self.version!r}")
        if (
            isinstance(self.interval_s, bool)
            or not isinstance(self.interval_s, int)
            or self.interval_s < 1
        ):
            raise ScheduleError(f"interval_s must be an integer >= 1, got {self.interval_s!r}")
        try:
            source = ScheduleSource(self.source)
        except ValueError:
            choices = ", ".join(s.value for s in ScheduleSource)
            raise ScheduleError(f"source must be one of {choices}, got {self.source!r}") from None
        for name in ("created_at", "valid_from", "valid_until"):
            _finite(name, getattr(self, name))
        if not self.valid_from < self.valid_until:
            raise ScheduleError(
                f"valid_from {_iso(self.valid_from)} must be before valid_until "
                f"{_iso(self.valid_until)}"
            )
        intervals = tuple(self._checked_intervals(self.intervals))
        object.__setattr__(self, "source", source)
        object.__setattr__(self, "intervals", intervals)
        object.__setattr__(self, "_starts", tuple(i.start for i in intervals))

    def _checked_intervals(self, raw: Iterable[Any]) -> Iterator[ScheduleInterval]:
        previous_end = -math.inf
        for n, item in enumerate(raw):
            try:
                start, power_kw = item
            except (TypeError, ValueError):
                raise ScheduleError(f"interval {n} must be a (start, power_kw) pair") from None
            _finite(f"interval {n} start", start)
            _finite(f"interval {n} power_kw", power_kw)
            where = f"interval {n} ({_iso(start)})"
            if start % self.interval_s:
                raise ScheduleError(f"{where} is not aligned to {self.interval_s} s in UTC")
            if start < previous_end:
                raise ScheduleError(f"{where} overlaps the previous one or is out of order")
            end = start + self.interval_s
            if start < self.valid_from or end > self.valid_until:
                raise ScheduleError(
                    f"{where} lies outside the validity {_iso(self.valid_from)} .. "
                    f"{_iso(self.valid_until)}"
                )
            previous_end = end
            yield ScheduleInterval(float(start), float(power_kw))

    def is_valid_at(self, t: float) -> bool:
        """True when valid_from <= t < valid_until."""
        return self.valid_from <= t < self.valid_until

    def setpoint_at(self, t: float) -> float | None:
        """Requested power in kW at t; None outside the validity or between intervals."""
        if not self.is_valid_at(t):
            return None
        i = bisect.bisect_right(self._starts, t) - 1
        if i >= 0 and t < self._starts[i] + self.interval_s:
            return self.intervals[i].power_kw
        return None


class SaveOutcome(StrEnum):
    """What save() did."""

    ACCEPTED = "accepted"
    DUPLICATE = "duplicate"  # already held, identical: ack as accepted again
    REJECTED = "rejected"


@dataclass(frozen=True, slots=True)
class SaveResult:
    """Answer of save(), enough for a ScheduleAck."""

    outcome: SaveOutcome
    reason: RejectReason | None = None
    detail: str = ""

    @property
    def accepted(self) -> bool:
        """True when the schedule is held (newly or already)."""
        return self.outcome is not SaveOutcome.REJECTED


@dataclass(frozen=True, slots=True)
class ScheduleRecord:
    """One history entry: an accepted schedule or a rejection, with its status at a time."""

    source: ScheduleSource
    version: int
    received_at: float
    status: ScheduleStatus
    schedule: Schedule | None = None  # None for a rejection
    reason: RejectReason | None = None
    detail: str = ""


@dataclass(slots=True)
class _Held:
    schedule: Schedule
    received_at: float
    cancelled_at: float | None = None
    cancel_reason: str = ""


class ScheduleStore:
    """Accepted schedules (and rejections, for audit) of one site in SQLite."""

    def __init__(
        self,
        path: str | Path,
        *,
        site_id: str,
        synchronous: Literal["EXTRA", "FULL", "NORMAL"] = "FULL",
        retain: int = DEFAULT_RETAIN,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if synchronous not in ("EXTRA", "FULL", "NORMAL"):
            raise ValueError(f"synchronous must be EXTRA, FULL or NORMAL, got {synchronous!r}")
        if retain < 1:
            raise ValueError(f"retain must be >= 1, got {retain}")
        self.path = Path(path)
        self.site_id = site_id
        self._retain = retain
        self._clock = clock
        try:
            conn = sqlite3.connect(self.path, isolation_level=None)
        except sqlite3.Error as exc:
            raise ScheduleStoreError(f"cannot open schedule store {self.path}: {exc}") from exc
        try:
            conn.execute("PRAGMA journal_mode = WAL")
            conn.execute(f"PRAGMA synchronous = {synchronous}")  # validated above
            conn.execute("PRAGMA busy_timeout = 5000")
            self._open_schema(conn)
            self._held = self._load(conn)
            self._data_version = self._version_of(conn)
        except sqlite3.DatabaseError as exc:
            conn.close()
            raise ScheduleStoreError(f"{self.path} is not a usable schedule store: {exc}") from exc
        except BaseException:
            conn.close()
            raise
        self._conn: sqlite3.Connection | None = conn

    # -- lifecycle -------------------------------------------------------------------------

    def close(self) -> None:
        """Close the connection. Idempotent."""
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

    # -- writes ----------------------------------------------------------------------------

    def save(self, schedule: Schedule, *, now: float | None = None) -> SaveResult:
        """Accept a schedule durably, or say why not (duplicates answer as before)."""
        now = self._clock() if now is None else now
        source, version = schedule.source, schedule.version
        if schedule.site_id != self.site_id:
            return self._reject(
                schedule,
                RejectReason.WRONG_SITE,
                f"schedule is for site {schedule.site_id!r}, this agent is {self.site_id!r}",
                now,
            )
        held = self._held.get((source, version))
        if held is not None:
            if held.schedule == schedule:
                return SaveResult(SaveOutcome.DUPLICATE, detail=f"{source} v{version} already held")
            return self._reject(
                schedule,
                RejectReason.VERSION_CONFLICT,
                f"{source} v{version} is already held with different content; "
                "a changed schedule needs a new version",
                now,
            )
        latest = self.latest_version(source)
        if version < latest:
            return self._reject(
                schedule,
                RejectReason.STALE_VERSION,
                f"{source} v{version} is older than v{latest} already held",
                now,
            )
        if schedule.valid_until <= now:
            return self._reject(
                schedule,
                RejectReason.EXPIRED,
                f"valid_until {_iso(schedule.valid_until)} has passed",
                now,
            )
        with self._transaction() as conn:
            conn.execute(
                "INSERT INTO schedules (source, version, site_id, created_at, valid_from, "
                "valid_until, interval_s, intervals, origin, received_at) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    source.value,
                    version,
                    schedule.site_id,
                    schedule.created_at,
                    schedule.valid_from,
                    schedule.valid_until,
                    schedule.interval_s,
                    json.dumps([list(i) for i in schedule.intervals]),
                    schedule.origin,
                    now,
                ),
            )
            pruned = self._prune(conn, now)
        self._held[(source, version)] = _Held(schedule, received_at=now)
        for key in pruned:
            del self._held[key]
        log.info(
            "schedule %s v%d accepted: %d intervals, valid %s .. %s",
            source,
            version,
            len(schedule.intervals),
            _iso(schedule.valid_from),
            _iso(schedule.valid_until),
        )
        return SaveResult(SaveOutcome.ACCEPTED)

    def record_rejection(
        self,
        *,
        source: ScheduleSource,
        version: int,
        reason: RejectReason,
        detail: str,
        site_id: str = "",
        now: float | None = None,
    ) -> SaveResult:
        """Log a schedule refused before it became a `Schedule` (malformed message or file)."""
        now = self._clock() if now is None else now
        log.warning("schedule %s v%d rejected (%s): %s", source, version, reason, detail)
        with self._transaction() as conn:
            conn.execute(
                "INSERT INTO schedule_rejections (source, version, site_id, received_at, "
                "reason, detail) VALUES (?, ?, ?, ?, ?, ?)",
                (ScheduleSource(source).value, version, site_id, now, reason.value, detail),
            )
            self._prune(conn, now)
        return SaveResult(SaveOutcome.REJECTED, reason, detail)

    def cancel(
        self,
        version: int,
        *,
        source: ScheduleSource,
        reason: str,
        now: float | None = None,
    ) -> bool:
        """Withdraw a held schedule (an operator ending a local override); False if not held."""
        now = self._clock() if now is None else now
        held = self._held.get((source, version))
        if held is None or held.cancelled_at is not None:
            return False
        with self._transaction() as conn:
            conn.execute(
                "UPDATE schedules SET cancelled_at = ?, cancel_reason = ? "
                "WHERE source = ? AND version = ?",
                (now, reason, source.value, version),
            )
        held.cancelled_at, held.cancel_reason = now, reason
        log.warning("schedule %s v%d cancelled: %s", source, version, reason)
        return True

    # -- reads -----------------------------------------------------------------------------

    def refresh(self) -> bool:
        """Reload if another process (``bess-edge schedule set``) committed to the file.

        ``PRAGMA data_version`` changes only on other connections' commits, so this costs one
        cheap query when nothing changed. Returns whether it reloaded.
        """
        conn = self._conn
        if conn is None:
            return False
        version = self._version_of(conn)
        if version == self._data_version:
            return False
        self._held = self._load(conn)
        self._data_version = version
        log.info("schedule store reloaded: changed by another process")
        return True

    @staticmethod
    def _version_of(conn: sqlite3.Connection) -> int:
        return int(conn.execute("PRAGMA data_version").fetchone()[0])

    def current(self, now: float | None = None) -> Schedule | None:
        """The schedule in force at now (precedence cli > file > plane); None = hold 0 kW."""
        now = self._clock() if now is None else now
        self.refresh()
        for source in PRECEDENCE:
            held = self._in_force(source, now)
            if held is not None:
                return held.schedule
        return None

    def get(
        self, version: int, *, source: ScheduleSource = ScheduleSource.PLANE
    ) -> Schedule | None:
        """An accepted schedule by version, None if not held (never, or pruned)."""
        held = self._held.get((source, version))
        return held.schedule if held else None

    def latest_version(self, source: ScheduleSource = ScheduleSource.PLANE) -> int:
        """Highest version held from source; 0 = none (Hello.last_schedule_version for plane)."""
        return max((v for s, v in self._held if s == source), default=0)

    def next_version(self, source: ScheduleSource) -> int:
        """The version a new local (file, cli) schedule should carry."""
        return self.latest_version(source) + 1

    def status(
        self,
        version: int,
        *,
        source: ScheduleSource = ScheduleSource.PLANE,
        now: float | None = None,
    ) -> ScheduleStatus | None:
        """Status of an accepted schedule at now; None if not held."""
        held = self._held.get((source, version))
        if held is None:
            return None
        return self._status(held, self._clock() if now is None else now)

    def history(self, limit: int = 50, *, now: float | None = None) -> list[ScheduleRecord]:
        """Newest first: accepted schedules and rejections, with their status at now."""
        now = self._clock() if now is None else now
        records = [
            ScheduleRecord(
                source=h.schedule.source,
                version=h.schedule.version,
                received_at=h.received_at,
                status=self._status(h, now),
                schedule=h.schedule,
                detail=h.cancel_reason,
            )
            for h in self._held.values()
        ]
        rows = self._require_open().execute(
            "SELECT source, version, received_at, reason, detail FROM schedule_rejections "
            "ORDER BY received_at DESC, id DESC LIMIT ?",
            (limit,),
        )
        records += [
            ScheduleRecord(
                source=ScheduleSource(source),
                version=version,
                received_at=received_at,
                status=ScheduleStatus.REJECTED,
                reason=RejectReason(reason),
                detail=detail,
            )
            for source, version, received_at, reason, detail in rows
        ]
        records.sort(key=lambda r: r.received_at, reverse=True)
        return records[:limit]

    # -- internals -------------------------------------------------------------------------

    def _in_force(self, source: ScheduleSource, now: float) -> _Held | None:
        """The source's highest started version, if now is still inside its validity."""
        started = [
            h
            for (s, _), h in self._held.items()
            if s == source and h.cancelled_at is None and h.schedule.valid_from <= now
        ]
        if not started:
            return None
        newest = max(started, key=lambda h: h.schedule.version)
        return newest if now < newest.schedule.valid_until else None

    def _status(self, held: _Held, now: float) -> ScheduleStatus:
        s = held.schedule
        if held.cancelled_at is not None:
            return ScheduleStatus.CANCELLED
        # A newer version starting no later than this one (or already started) replaces it.
        horizon = max(now, s.valid_from)
        for (source, version), other in self._held.items():
            if (
                source == s.source
                and version > s.version
                and other.cancelled_at is None
                and other.schedule.valid_from <= horizon
            ):
                return ScheduleStatus.SUPERSEDED
        if now >= s.valid_until:
            return ScheduleStatus.EXPIRED
        if now < s.valid_from:
            return ScheduleStatus.RECEIVED
        return ScheduleStatus.ACTIVE if self.current(now) is s else ScheduleStatus.OVERRIDDEN

    def _reject(
        self, schedule: Schedule, reason: RejectReason, detail: str, now: float
    ) -> SaveResult:
        return self.record_rejection(
            source=schedule.source,
            version=schedule.version,
            reason=reason,
            detail=detail,
            site_id=schedule.site_id,
            now=now,
        )

    def _prune(self, conn: sqlite3.Connection, now: float) -> list[tuple[ScheduleSource, int]]:
        """Delete finished schedules and rejections beyond `retain`, oldest first."""
        newest = {source: self.latest_version(source) for source in ScheduleSource}
        finished = sorted(
            (
                h
                for h in self._held.values()
                if h.schedule.version != newest[h.schedule.source]
                and self._status(h, now)
                in (ScheduleStatus.EXPIRED, ScheduleStatus.SUPERSEDED, ScheduleStatus.CANCELLED)
            ),
            key=lambda h: h.received_at,
        )
        excess = max(0, len(finished) - self._retain)
        gone = [(h.schedule.source, h.schedule.version) for h in finished[:excess]]
        conn.executemany(
            "DELETE FROM schedules WHERE source = ? AND version = ?",
            [(source.value, version) for source, version in gone],
        )
        conn.execute(
            "DELETE FROM schedule_rejections WHERE id NOT IN "
            "(SELECT id FROM schedule_rejections ORDER BY received_at DESC, id DESC LIMIT ?)",
            (self._retain,),
        )
        return gone

    def _require_open(self) -> sqlite3.Connection:
        if self._conn is None:
            raise ScheduleStoreError(f"schedule store {self.path} is closed")
        return self._conn

    @contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        conn = self._require_open()
        try:
            conn.execute("BEGIN IMMEDIATE")
            yield conn
            conn.execute("COMMIT")
        except BaseException as exc:
            if conn.in_transaction:
                try:
                    conn.execute("ROLLBACK")
                except sqlite3.Error:
                    log.exception("schedule store %s: rollback failed", self.path)
            if isinstance(exc, sqlite3.Error):
                raise ScheduleStoreError(f"schedule store {self.path}: {exc}") from exc
            raise

    def _open_schema(self, conn: sqlite3.Connection) -> None:
        # Idempotent steps, version written last: a crash while creating is repaired on reopen.
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
            raise ScheduleStoreError(
                f"{self.path} has schedule store schema version {found}, this agent supports up "
                f"to {SCHEMA_VERSION}: it was written by a newer agent. Upgrade the agent."
            )
        db.table("schedules").create(
            {
                "source": str,
                "version": int,
                "site_id": str,
                "created_at": float,
                "valid_from": float,
                "valid_until": float,
                "interval_s": int,
                "intervals": str,  # JSON [[start, power_kw], ...]; floats round-trip exactly
                "origin": str,
                "received_at": float,
                "cancelled_at": float,
                "cancel_reason": str,
            },
            pk=("source", "version"),
            not_null={
                "site_id",
                "created_at",
                "valid_from",
                "valid_until",
                "interval_s",
                "intervals",
                "origin",
                "received_at",
            },
            strict=True,
            if_not_exists=True,
        )
        rejections = db.table("schedule_rejections")
        rejections.create(
            {
                "id": int,
                "source": str,
                "version": int,
                "site_id": str,
                "received_at": float,
                "reason": str,
                "detail": str,
            },
            pk="id",
            not_null={"source", "version", "site_id", "received_at", "reason", "detail"},
            strict=True,
            if_not_exists=True,
        )
        rejections.create_index(["received_at"], if_not_exists=True)
        if found != SCHEMA_VERSION:
            conn.execute(
                "INSERT INTO meta (key, value) VALUES (?, ?) "
                "ON CONFLICT (key) DO UPDATE SET value = excluded.value",
                (_SCHEMA_KEY, SCHEMA_VERSION),
            )

    def _load(self, conn: sqlite3.Connection) -> dict[tuple[ScheduleSource, int], _Held]:
        held: dict[tuple[ScheduleSource, int], _Held] = {}
        for row in conn.execute(
            "SELECT source, version, site_id, created_at, valid_from, valid_until, interval_s, "
            "intervals, origin, received_at, cancelled_at, cancel_reason FROM schedules"
        ):
            try:
                schedule = self._row_to_schedule(row)
            except ValueError as exc:  # ScheduleError: the row was edited by hand
                raise ScheduleStoreError(
                    f"{self.path}: stored schedule {row[0]} v{row[1]} is invalid: {exc}"
                ) from exc
            held[(schedule.source, schedule.version)] = _Held(
                schedule, row[9], row[10], row[11] or ""
            )
        return held

    @staticmethod
    def _row_to_schedule(row: tuple[Any, ...]) -> Schedule:
        return Schedule(
            site_id=row[2],
            version=row[1],
            created_at=row[3],
            valid_from=row[4],
            valid_until=row[5],
            interval_s=row[6],
            intervals=tuple(ScheduleInterval(s, p) for s, p in json.loads(row[7])),
            origin=row[8],
            source=ScheduleSource(row[0]),
        )
