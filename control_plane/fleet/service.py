"""The fleet service: agent sessions, idempotent ingest, site status and schedule delivery.

No FastAPI or gRPC here (STYLE item 1): the EdgeLink servicer feeds it domain messages and
sends what it puts in a session's `outbound` queue; the HTTP router calls its queries.

Store calls block, so they run off the event loop: every write goes through one writer thread
(SQLite has one writer anyway, and it keeps a site's batches in arrival order), reads go to the
default thread pool. An ack is queued only after the batch's transaction committed.

Schedules: the plane numbers versions per site. A new one supersedes the older ones still in
force, is pushed at once when the site is connected, and otherwise (or if the ack never came)
after the site's next Hello, until the agent acknowledges or rejects it. A Hello that reports
the version already held counts as its acknowledgement (the ack was lost with the stream).

Commands (SetLimits / Stop / Resume) travel the same way: stored with a UUID, pushed at once to
a connected site and otherwise (or while unanswered) after every Hello, oldest first, until the
agent answers (it applies an id at most once and repeats its answer for a redelivery) or the
command expires. An expired command is never sent again: it is marked expired when a session
would have re-sent it, and reads derive the expiry in between.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import uuid
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from functools import partial
from typing import Any, ParamSpec, TypeVar

from prometheus_client import CollectorRegistry, Counter, Gauge

from .models import (
    CommandAnswer,
    CommandOut,
    CommandRecord,
    CommandStatus,
    EndReason,
    Event,
    EventAckOut,
    FleetTotals,
    Heartbeat,
    Hello,
    IngestResult,
    NewCommand,
    NewSchedule,
    Outbound,
    ScheduleAnswer,
    ScheduleOut,
    ScheduleRecord,
    ScheduleRefusedError,
    ScheduleStatus,
    SessionEnd,
    Site,
    SiteStatus,
    TelemetryAckOut,
    TelemetrySample,
    UnknownSiteError,
    Welcome,
    utc_now,
)
from .store import (
    API,
    FleetStore,
    capabilities_of,
    from_ms,
    heartbeat_of,
    ratings_of,
)

log = logging.getLogger(__name__)

_P = ParamSpec("_P")
_R = TypeVar("_R")

FleetEventSink = Callable[[str, Mapping[str, Any]], None]
"""Told what changed after it is stored: `telemetry` (the newest reading of a batch), `alarm`
(an event of severity warning or worse, or an alarm kind), `site.connected`,
`site.disconnected`; called on the event loop, must not block (the app hands it to the
event hub). Its failures are logged, never raised into ingest."""

ALARM_SEVERITIES = frozenset({"warning", "error", "critical"})

MISSED_HEARTBEATS_OFFLINE = 3
"""A site is offline after this many heartbeat intervals without a word (EdgeLink step 7)."""


class FleetMetrics:
    """The fleet's Prometheus metrics, in the app's registry."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.samples_ingested = Counter(
            "bess_plane_telemetry_samples_ingested_total",
            "Telemetry samples stored (first arrival)",
            ["stream"],
            registry=registry,
        )
        self.samples_duplicate = Counter(
            "bess_plane_telemetry_samples_duplicate_total",
            "Telemetry samples received again and not stored twice",
            registry=registry,
        )
        self.batches = Counter(
            "bess_plane_telemetry_batches_total", "Telemetry batches ingested", registry=registry
        )
        self.events_ingested = Counter(
            "bess_plane_events_ingested_total", "Agent events stored", registry=registry
        )
        self.sessions_opened = Counter(
            "bess_plane_edgelink_sessions_total", "EdgeLink sessions opened", registry=registry
        )
        self.schedules_sent = Counter(
            "bess_plane_schedules_sent_total",
            "Schedule messages pushed to agents",
            registry=registry,
        )
        self.commands = Counter(
            "bess_plane_commands_total",
            "Commands by kind and the status they reached (pending = submitted)",
            ["kind", "status"],
            registry=registry,
        )
        self.sites_connected = Gauge(
            "bess_plane_sites_connected",
            "Sites with an open, live EdgeLink session",
            registry=registry,
        )


@dataclass(eq=False)
class Session:
    """One agent's open EdgeLink stream, as the service sees it."""

    session_id: str
    hello: Hello
    opened_at: datetime
    last_heard: datetime
    outbound: asyncio.Queue[Outbound] = field(default_factory=asyncio.Queue)
    samples_stored: int = 0
    samples_duplicate: int = 0

    @property
    def site_id(self) -> str:
        return self.hello.site_id


class FleetService:
    def __init__(
        self,
        *,
        store: FleetStore,
        metrics: FleetMetrics,
        plane_version: str,
        heartbeat_interval_s: int = 10,
        clock: Callable[[], datetime] = utc_now,
        on_event: FleetEventSink | None = None,
    ) -> None:
        self.store = store
        self.on_event = on_event
        self.schedule_check: Callable[[str, NewSchedule], str | None] | None = None
        """Blocking check of a schedule before it is stored; returns why it is refused."""
        self.metrics = metrics
        self.plane_version = plane_version
        self.heartbeat_interval_s = heartbeat_interval_s
        self.clock = clock
        self._sessions: dict[str, Session] = {}
        self._session_numbers = itertools.count(1)
        self._instance = uuid.uuid4().hex[:8]
        self._writer: ThreadPoolExecutor | None = None
        metrics.sites_connected.set_function(lambda: float(self.connected_count()))

    # -- lifecycle -------------------------------------------------------------------------

    async def open(self) -> None:
        self._writer = ThreadPoolExecutor(max_workers=1, thread_name_prefix="fleet-writer")
        applied = await self._write(self.store.migrate)
        if applied:
            log.info("fleet: store migrated to version %d", applied[-1])

    def drain(self) -> None:
        """Ask every session to end (UNAVAILABLE): the agents reconnect to another replica."""
        for session in list(self._sessions.values()):
            session.outbound.put_nowait(
                SessionEnd(EndReason.DRAINING, "the plane is shutting down")
            )

    async def close(self) -> None:
        self._sessions.clear()
        writer, self._writer = self._writer, None
        if writer is not None:
            # Waits for a transaction in progress: what was committed stays, nothing half-done.
            await asyncio.to_thread(writer.shutdown, wait=True)

    async def _write(self, fn: Callable[_P, _R], *args: _P.args, **kwargs: _P.kwargs) -> _R:
        if self._writer is None:
            raise RuntimeError("the fleet service is not open")
        return await asyncio.get_running_loop().run_in_executor(
            self._writer, partial(fn, *args, **kwargs)
        )

    @staticmethod
    async def _read(fn: Callable[_P, _R], *args: _P.args, **kwargs: _P.kwargs) -> _R:
        return await asyncio.to_thread(fn, *args, **kwargs)

    # -- sessions (called by the EdgeLink servicer) ------------------------------------------

    async def open_session(self, hello: Hello) -> tuple[Session, Welcome, list[Outbound]]:
        """Register the site, replace an older session, and say where the agent resumes.

        Returns what to send right after the Welcome: the schedule, if the agent lacks it, and
        the commands still waiting for an answer, oldest first.
        """
        now = self.clock()
        session_id = f"{self._instance}-{next(self._session_numbers)}"
        await self._write(self.store.register, hello, session_id=session_id, now=now)
        last_seq, last_event_seq = await self._read(self.store.last_seqs, hello.site_id)
        latest = await self._read(self.store.latest_schedule, hello.site_id)
        to_send: ScheduleRecord | None = None
        expected = 0
        if latest is not None and latest.status_at(now) in (
            ScheduleStatus.PENDING,
            ScheduleStatus.SENT,
            ScheduleStatus.ACKNOWLEDGED,
        ):
            expected = latest.schedule.version
            if hello.last_schedule_version < expected:
                to_send = latest
            elif latest.status is not ScheduleStatus.ACKNOWLEDGED:
                # The agent holds it: its ack was lost with the previous stream.
                await self._write(
                    self.store.answer,
                    hello.site_id,
                    ScheduleAnswer(expected, True, detail="held by the agent (reported in Hello)"),
                    now=now,
                )
        to_send_now: list[Outbound] = [] if to_send is None else [ScheduleOut(to_send.schedule)]
        session = Session(session_id=session_id, hello=hello, opened_at=now, last_heard=now)
        previous = self._sessions.get(hello.site_id)
        if previous is not None:
            previous.outbound.put_nowait(
                SessionEnd(EndReason.REPLACED, "replaced by a newer session of this site")
            )
        self._sessions[hello.site_id] = session
        try:
            # Read after registering: a command submitted meanwhile is pushed to this session
            # (perhaps listed here too: sent twice, and the agent answers a repeat alike).
            waiting = await self._open_commands(hello.site_id)
        except BaseException:
            if self._sessions.get(hello.site_id) is session:
                del self._sessions[hello.site_id]
            raise
        to_send_now += [CommandOut(r.command) for r in waiting]
        self.metrics.sessions_opened.inc()
        self._emit(
            "site.connected",
            {"site_id": hello.site_id, "agent_version": hello.agent_version, "at": now},
        )
        welcome = Welcome(
            session_id=session_id,
            plane_version=self.plane_version,
            server_time=now,
            last_stored_seq=last_seq,
            last_stored_event_seq=last_event_seq,
            expected_schedule_version=expected,
            heartbeat_interval_s=self.heartbeat_interval_s,
        )
        log.info(
            "fleet: site %s connected (agent %s, session %s, resume after seq %d)",
            hello.site_id,
            hello.agent_version or "?",
            session_id,
            last_seq,
        )
        return session, welcome, to_send_now

    async def _open_commands(self, site_id: str) -> list[CommandRecord]:
        """The site's unanswered commands, oldest first; expired ones are marked so."""
        now = self.clock()
        records = await self._read(self.store.commands, site_id, open_only=True)
        waiting = []
        for record in reversed(records):
            if record.status_at(now) is CommandStatus.EXPIRED:
                if await self._write(self.store.expire_command, record.command, now=now):
                    self._count_command(record, CommandStatus.EXPIRED)
            else:
                waiting.append(record)
        return waiting

    async def sent(self, session: Session, item: Outbound) -> None:
        """The servicer wrote `item` to the stream: a schedule or command is now 'sent'."""
        now = self.clock()
        if isinstance(item, ScheduleOut):
            self.metrics.schedules_sent.inc()
            await self._write(self.store.mark_sent, session.site_id, item.schedule.version, now=now)
        elif isinstance(item, CommandOut):
            self.metrics.commands.labels(kind=item.command.action.kind, status="sent").inc()
            await self._write(
                self.store.mark_command_sent, session.site_id, item.command.command_id, now=now
            )

    async def close_session(self, session: Session, reason: str) -> None:
        now = self.clock()
        if self._sessions.get(session.site_id) is session:
            del self._sessions[session.site_id]
        if self._writer is not None:
            await self._write(self.store.seen, session.site_id, now=now)
        self._emit("site.disconnected", {"site_id": session.site_id, "reason": reason, "at": now})
        log.info(
            "fleet: site %s session %s ended (%s): %d samples stored, %d duplicates",
            session.site_id,
            session.session_id,
            reason,
            session.samples_stored,
            session.samples_duplicate,
        )

    async def ingest_telemetry(
        self, session: Session, samples: Sequence[TelemetrySample]
    ) -> IngestResult:
        """Store a batch (idempotent by seq), then queue the cumulative ack."""
        now = self.clock()
        session.last_heard = now
        result = await self._write(self.store.ingest_samples, session.site_id, samples, now=now)
        self._count(result, stream="edge")
        session.samples_stored += result.stored
        session.samples_duplicate += result.duplicates
        session.outbound.put_nowait(TelemetryAckOut(result.acked_through))
        if result.stored:
            self._emit_telemetry(session.site_id, samples)
        return result

    async def ingest_event(self, session: Session, event: Event) -> IngestResult:
        now = self.clock()
        session.last_heard = now
        result = await self._write(self.store.ingest_events, session.site_id, [event], now=now)
        self.metrics.events_ingested.inc(result.stored)
        if result.stored and event.severity in ("warning", "error", "critical"):
            log.warning(
                "fleet: site %s %s event %s: %s",
                session.site_id,
                event.severity,
                event.code or event.kind,
                event.message,
            )
        session.outbound.put_nowait(EventAckOut(result.acked_through))
        if result.stored and (event.severity in ALARM_SEVERITIES or event.kind.startswith("alarm")):
            self._emit("alarm", _alarm_data(session.site_id, event))
        return result

    async def heartbeat(self, session: Session, heartbeat: Heartbeat) -> None:
        now = self.clock()
        session.last_heard = now
        await self._write(self.store.seen, session.site_id, now=now, heartbeat=heartbeat)

    def heard(self, session: Session) -> None:
        session.last_heard = self.clock()

    async def schedule_answered(self, session: Session, answer: ScheduleAnswer) -> None:
        session.last_heard = self.clock()
        changed = await self._write(self.store.answer, session.site_id, answer, now=self.clock())
        if changed and not answer.accepted:
            log.warning(
                "fleet: site %s rejected schedule v%d (%s): %s",
                session.site_id,
                answer.version,
                answer.reason,
                answer.detail,
            )

    def _emit(self, event_type: str, data: Mapping[str, Any]) -> None:
        if self.on_event is None:
            return
        try:
            self.on_event(event_type, data)
        except Exception:  # the live stream is a view; ingest must go on
            log.exception("fleet: publishing %s failed", event_type)

    def _emit_telemetry(self, site_id: str, samples: Sequence[TelemetrySample]) -> None:
        if self.on_event is None or not samples:
            return
        newest = max(samples, key=lambda s: s.timestamp)
        self._emit(
            "telemetry",
            {
                "site_id": site_id,
                "timestamp": newest.timestamp,
                "soc_pct": newest.soc_pct,
                "active_power_kw": newest.active_power_kw,
                "temperature_c": newest.temperature_c,
                "status": newest.status,
                "alarms": list(newest.alarms),
                "setpoint_kw": newest.setpoint_kw,
                "grid_frequency_hz": newest.grid_frequency_hz,
            },
        )

    async def command_answered(self, session: Session, answer: CommandAnswer) -> None:
        now = self.clock()
        session.last_heard = now
        status = await self._write(self.store.answer_command, session.site_id, answer, now=now)
        if status is None:
            return  # a repeat, or an id this site never got
        record = await self._read(self.store.command, session.site_id, answer.command_id)
        kind = record.command.action.kind if record is not None else "unknown"
        self.metrics.commands.labels(kind=kind, status=status).inc()
        log_fn = log.info if answer.accepted else log.warning
        log_fn(
            "fleet: site %s %s command %s (%s): %s",
            session.site_id,
            "applied" if answer.accepted else "did not apply",
            answer.command_id,
            kind,
            answer.detail if answer.accepted else f"{answer.reason}: {answer.detail}",
        )

    def _count_command(self, record: CommandRecord, status: CommandStatus) -> None:
        self.metrics.commands.labels(kind=record.command.action.kind, status=status).inc()

    def _count(self, result: IngestResult, *, stream: str) -> None:
        self.metrics.batches.inc()
        self.metrics.samples_ingested.labels(stream=stream).inc(result.stored)
        self.metrics.samples_duplicate.inc(result.duplicates)

    # -- connectivity --------------------------------------------------------------------------

    def _live(self, site_id: str, now: datetime) -> Session | None:
        session = self._sessions.get(site_id)
        limit = timedelta(seconds=MISSED_HEARTBEATS_OFFLINE * self.heartbeat_interval_s)
        if session is None or now - session.last_heard > limit:
            return None
        return session

    def connected_count(self) -> int:
        now = self.clock()
        return sum(1 for site in list(self._sessions) if self._live(site, now) is not None)

    def is_connected(self, site_id: str) -> bool:
        return self._live(site_id, self.clock()) is not None

    # -- queries and commands (called by the HTTP router) ------------------------------------

    async def sites(self) -> list[Site]:
        rows = await self._read(self.store.site_rows)
        now = self.clock()
        result = []
        for row in rows:
            session = self._sessions.get(row["site_id"])
            last_seen = row["last_seen_unix_ms"]
            seen = from_ms(last_seen) if last_seen is not None else None
            if session is not None and (seen is None or session.last_heard > seen):
                seen = session.last_heard
            result.append(
                Site(
                    site_id=row["site_id"],
                    agent_version=row["agent_version"],
                    capabilities=capabilities_of(row),
                    ratings=ratings_of(row),
                    registered_at=from_ms(row["registered_unix_ms"]),
                    last_seen=seen,
                    connected=self._live(row["site_id"], now) is not None,
                    session_id=row["last_session_id"],
                    last_heartbeat=heartbeat_of(row),
                )
            )
        return result

    async def site(self, site_id: str) -> Site:
        for site in await self.sites():
            if site.site_id == site_id:
                return site
        raise UnknownSiteError(site_id)

    async def fleet_status(self) -> tuple[list[SiteStatus], FleetTotals]:
        sites = await self.sites()
        latest = await self._read(self.store.latest_samples)
        statuses = [SiteStatus(site, latest.get(site.site_id)) for site in sites]
        power = sum(
            s.latest.active_power_kw
            for s in statuses
            if s.latest is not None and s.latest.active_power_kw is not None
        )
        capacity = sum(s.site.ratings.capacity_kwh for s in statuses if s.site.ratings)
        with_soc = [s for s in statuses if s.latest is not None and s.latest.soc_pct is not None]
        energy = sum(
            s.site.ratings.capacity_kwh * (s.latest.soc_pct or 0.0) / 100
            for s in with_soc
            if s.site.ratings is not None and s.latest is not None
        )
        socs = [s.latest.soc_pct for s in with_soc if s.latest and s.latest.soc_pct is not None]
        totals = FleetTotals(
            sites=len(statuses),
            sites_connected=sum(1 for s in statuses if s.site.connected),
            active_power_kw=power,
            capacity_kwh=capacity,
            stored_energy_kwh=energy,
            average_soc_pct=sum(socs) / len(socs) if socs else None,
        )
        return statuses, totals

    async def telemetry(
        self,
        *,
        site_id: str,
        start: datetime | None,
        end: datetime | None,
        limit: int,
    ) -> list[TelemetrySample]:
        await self.site(site_id)
        return await self._read(self.store.samples, site_id, start=start, end=end, limit=limit)

    async def events(
        self, *, site_id: str, start: datetime | None, end: datetime | None, limit: int
    ) -> list[Event]:
        await self.site(site_id)
        return await self._read(self.store.events, site_id, start=start, end=end, limit=limit)

    async def ingest_external(
        self, *, site_id: str, samples: Sequence[TelemetrySample]
    ) -> IngestResult:
        """Telemetry posted over HTTP: its own seq space; seq 0 means "assign the next"."""
        now = self.clock()
        result = await self._write(self._ingest_external_sync, site_id, samples, now)
        self._count(result, stream=API)
        if result.stored:
            self._emit_telemetry(site_id, samples)
        return result

    def _ingest_external_sync(
        self, site_id: str, samples: Sequence[TelemetrySample], now: datetime
    ) -> IngestResult:
        # Runs in the writer thread, so assigning seqs cannot race another writer here.
        self.store.ensure_site(site_id, now=now)
        next_seq = self.store.next_api_seq(site_id)
        numbered = []
        for sample in samples:
            if sample.seq == 0:
                sample = _with_seq(sample, next_seq)
            next_seq = max(next_seq, sample.seq + 1)
            numbered.append(sample)
        return self.store.ingest_samples(site_id, numbered, now=now, stream=API)

    async def submit_schedule(self, *, site_id: str, new: NewSchedule) -> ScheduleRecord:
        """Store the next version and push it now if the site is connected.

        `schedule_check` (the grid's constraints, set by the app) runs first: a schedule it
        refuses is not stored (`ScheduleRefusedError` with its reason)."""
        await self.site(site_id)
        if self.schedule_check is not None:
            problem = await self._read(self.schedule_check, site_id, new)
            if problem is not None:
                raise ScheduleRefusedError(problem)
        record = await self._write(self.store.add_schedule, site_id, new, now=self.clock())
        pushed = self._push(site_id, ScheduleOut(record.schedule))
        log.info(
            "fleet: schedule v%d for site %s stored (%d intervals, %s)",
            record.schedule.version,
            site_id,
            len(new.intervals),
            "pushing now" if pushed else "site offline: sent when it connects",
        )
        return record

    def _push(self, site_id: str, item: Outbound) -> bool:
        """Queue `item` on the site's open session; False if it has none (sent on Hello)."""
        session = self._sessions.get(site_id)
        if session is None:
            return False
        session.outbound.put_nowait(item)
        return True

    async def schedules(self, *, site_id: str) -> list[ScheduleRecord]:
        await self.site(site_id)
        return await self._read(self.store.schedules, site_id)

    async def submit_command(self, *, site_id: str, new: NewCommand) -> CommandRecord:
        """Store the command and push it now if the site is connected (else on its Hello)."""
        await self.site(site_id)
        record = await self._write(
            self.store.add_command, site_id, new, command_id=str(uuid.uuid4()), now=self.clock()
        )
        self._count_command(record, CommandStatus.PENDING)
        pushed = self._push(site_id, CommandOut(record.command))
        log.info(
            "fleet: command %s (%s) for site %s by %s stored, %s",
            record.command.command_id,
            new.action.kind,
            site_id,
            new.issued_by or "?",
            "pushing now" if pushed else "site offline: sent when it connects",
        )
        return record

    async def commands(self, *, site_id: str, limit: int = 100) -> list[CommandRecord]:
        """The site's commands, newest first."""
        await self.site(site_id)
        return await self._read(self.store.commands, site_id, limit=limit)


def _alarm_data(site_id: str, event: Event) -> dict[str, Any]:
    return {
        "site_id": site_id,
        "seq": event.seq,
        "timestamp": event.timestamp,
        "severity": event.severity,
        "kind": event.kind,
        "code": event.code,
        "alarm": event.alarm,
        "message": event.message,
    }


def _with_seq(sample: TelemetrySample, seq: int) -> TelemetrySample:
    return replace(sample, seq=seq)
