"""Fleet persistence: sites, telemetry, events, schedules and commands in SQLite or PostgreSQL.

Blocking SQLAlchemy Core calls; the service runs them off the event loop. Times are stored as
`*_unix_ms` BIGINT (like the wire: comparable, no time-zone handling per dialect) and become
aware UTC datetimes here. Telemetry and events are keyed by (site_id, seq) and inserted with
`ON CONFLICT DO NOTHING`, one transaction per batch, so a resent batch stores nothing twice and
an ack can follow the commit. Telemetry from the HTTP API lives in its own `stream` ("api"),
so its numbering never moves the agent's resume point.

Schedules and commands share one delivery life cycle (pending -> sent -> acknowledged /
rejected), moved forward by `_advance`: a status change only from the states it may leave, so
a repeated ack or a late "sent" changes nothing.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any, TypeVar

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Connection, Engine, RowMapping

from control_plane import db
from control_plane.db import Migration, migrate

from .models import (
    OPEN_COMMAND_STATUSES,
    Command,
    CommandAction,
    CommandAnswer,
    CommandKind,
    CommandRecord,
    CommandStatus,
    Event,
    Heartbeat,
    Hello,
    IngestResult,
    NewCommand,
    NewSchedule,
    Ratings,
    ResumeAction,
    Schedule,
    ScheduleAnswer,
    ScheduleInterval,
    ScheduleRecord,
    ScheduleStatus,
    SetLimitsAction,
    StopAction,
    TelemetrySample,
)

_T = TypeVar("_T", TelemetrySample, Event)

SERVICE = "fleet"
EDGE = "edge"  # telemetry from the site's agent over EdgeLink
API = "api"  # telemetry posted to the HTTP API

metadata = sa.MetaData()

sites = sa.Table(
    "fleet_sites",
    metadata,
    sa.Column("site_id", sa.String(64), primary_key=True),
    sa.Column("agent_version", sa.String(64), nullable=False, server_default=""),
    sa.Column("capabilities", sa.Text, nullable=False, server_default="[]"),
    sa.Column("capacity_kwh", sa.Float),
    sa.Column("max_charge_kw", sa.Float),
    sa.Column("max_discharge_kw", sa.Float),
    sa.Column("registered_unix_ms", sa.BigInteger, nullable=False),
    sa.Column("last_seen_unix_ms", sa.BigInteger),
    sa.Column("last_session_id", sa.String(64), nullable=False, server_default=""),
    sa.Column("heartbeat", sa.Text),  # JSON of the last Heartbeat
)

telemetry = sa.Table(
    "fleet_telemetry",
    metadata,
    sa.Column("site_id", sa.String(64), primary_key=True),
    sa.Column("stream", sa.String(8), primary_key=True),
    sa.Column("seq", sa.BigInteger, primary_key=True, autoincrement=False),
    sa.Column("timestamp_unix_ms", sa.BigInteger, nullable=False),
    sa.Column("received_unix_ms", sa.BigInteger, nullable=False),
    sa.Column("soc_pct", sa.Float),
    sa.Column("active_power_kw", sa.Float),
    sa.Column("reactive_power_kvar", sa.Float),
    sa.Column("voltage_v", sa.Float),
    sa.Column("temperature_c", sa.Float),
    sa.Column("grid_frequency_hz", sa.Float),
    sa.Column("status", sa.String(32), nullable=False),
    sa.Column("alarms", sa.Text, nullable=False),  # JSON list of names
    sa.Column("source", sa.String(32), nullable=False),
    sa.Column("setpoint_kw", sa.Float),
    sa.Column("soh_pct", sa.Float),
    sa.Column("vendor_alarm_bits", sa.String(20)),  # uint64 does not fit a signed BIGINT
    sa.Column("energy_charged_total_kwh", sa.Float),
    sa.Column("energy_discharged_total_kwh", sa.Float),
    sa.Index("ix_fleet_telemetry_site_time", "site_id", "timestamp_unix_ms"),
)

events = sa.Table(
    "fleet_events",
    metadata,
    sa.Column("site_id", sa.String(64), primary_key=True),
    sa.Column("seq", sa.BigInteger, primary_key=True, autoincrement=False),
    sa.Column("timestamp_unix_ms", sa.BigInteger, nullable=False),
    sa.Column("received_unix_ms", sa.BigInteger, nullable=False),
    sa.Column("severity", sa.String(16), nullable=False),
    sa.Column("kind", sa.String(48), nullable=False),
    sa.Column("code", sa.String(128), nullable=False),
    sa.Column("message", sa.Text, nullable=False),
    sa.Column("requested_kw", sa.Float),
    sa.Column("applied_kw", sa.Float),
    sa.Column("guard_reason", sa.String(48), nullable=False),
    sa.Column("alarm", sa.String(48), nullable=False),
    sa.Column("source", sa.String(32), nullable=False),
    sa.Column("schedule_version", sa.BigInteger, nullable=False),
    sa.Column("command_id", sa.String(64), nullable=False),
    sa.Column("config_version", sa.BigInteger, nullable=False),
    sa.Column("details", sa.Text, nullable=False),  # JSON object
    sa.Index("ix_fleet_events_site_time", "site_id", "timestamp_unix_ms"),
)

schedules = sa.Table(
    "fleet_schedules",
    metadata,
    sa.Column("site_id", sa.String(64), primary_key=True),
    sa.Column("version", sa.BigInteger, primary_key=True, autoincrement=False),
    sa.Column("created_unix_ms", sa.BigInteger, nullable=False),
    sa.Column("valid_from_unix_ms", sa.BigInteger, nullable=False),
    sa.Column("valid_until_unix_ms", sa.BigInteger, nullable=False),
    sa.Column("interval_minutes", sa.Integer, nullable=False),
    sa.Column("intervals", sa.Text, nullable=False),  # JSON [[start_unix_ms, power_kw], ...]
    sa.Column("origin", sa.String(200), nullable=False),
    sa.Column("status", sa.String(16), nullable=False),
    sa.Column("sent_unix_ms", sa.BigInteger),
    sa.Column("answered_unix_ms", sa.BigInteger),
    sa.Column("detail", sa.Text, nullable=False, server_default=""),
)


# Tables of later migrations live in metadata of their own, so `_create_v1` keeps creating
# exactly the v1 schema.
metadata_v2 = sa.MetaData()

commands = sa.Table(
    "fleet_commands",
    metadata_v2,
    sa.Column("command_id", sa.String(36), primary_key=True),  # UUID
    sa.Column("site_id", sa.String(64), nullable=False),
    sa.Column("kind", sa.String(16), nullable=False),
    sa.Column("payload", sa.Text, nullable=False),  # JSON of the action's fields
    sa.Column("issued_by", sa.String(200), nullable=False),
    sa.Column("issued_unix_ms", sa.BigInteger, nullable=False),
    sa.Column("expires_unix_ms", sa.BigInteger),
    sa.Column("status", sa.String(16), nullable=False),
    sa.Column("sent_unix_ms", sa.BigInteger),
    sa.Column("answered_unix_ms", sa.BigInteger),
    sa.Column("detail", sa.Text, nullable=False, server_default=""),
    sa.Index("ix_fleet_commands_site_issued", "site_id", "issued_unix_ms"),
)


def _create_v1(conn: Connection) -> None:
    # Version 1 of the schema is the tables above as first shipped; a later change to them is
    # a new migration (ALTER ...), and this step then keeps a frozen copy of the v1 tables.
    metadata.create_all(conn, checkfirst=True)


def _create_v2(conn: Connection) -> None:
    metadata_v2.create_all(conn, checkfirst=True)


MIGRATIONS: tuple[Migration, ...] = (
    Migration(1, "fleet tables", _create_v1),
    Migration(2, "fleet commands", _create_v2),
)


def to_ms(moment: datetime) -> int:
    return round(moment.timestamp() * 1000)


def from_ms(ms: int) -> datetime:
    return datetime.fromtimestamp(ms / 1000, UTC)


def _opt_ms(ms: int | None) -> datetime | None:
    return None if ms is None else from_ms(ms)


class FleetStore:
    """Blocking persistence of the fleet; every method is one short transaction."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self._writer = db.for_writes(engine)  # BEGIN IMMEDIATE on SQLite: see db.for_writes
        self._dialect = engine.dialect.name
        # Built once: ingest runs per batch, and building a statement costs as much as running
        # a one-row insert (SQLAlchemy caches the compiled form of identical statements).
        self._insert_samples = self._insert(telemetry).on_conflict_do_nothing(
            index_elements=["site_id", "stream", "seq"]
        )
        self._insert_events = self._insert(events).on_conflict_do_nothing(
            index_elements=["site_id", "seq"]
        )

    def migrate(self) -> list[int]:
        return migrate(self.engine, SERVICE, MIGRATIONS)

    def _insert(self, table: sa.Table) -> Any:
        if self._dialect == "postgresql":
            return postgresql.insert(table)
        return sqlite.insert(table)

    # -- sites ---------------------------------------------------------------------------

    def register(self, hello: Hello, *, session_id: str, now: datetime) -> None:
        """Create or update the site a Hello names."""
        values: dict[str, Any] = {
            "agent_version": hello.agent_version,
            "capabilities": json.dumps(list(hello.capabilities)),
            "last_seen_unix_ms": to_ms(now),
            "last_session_id": session_id,
        }
        if hello.ratings is not None:
            values.update(
                capacity_kwh=hello.ratings.capacity_kwh,
                max_charge_kw=hello.ratings.max_charge_kw,
                max_discharge_kw=hello.ratings.max_discharge_kw,
            )
        stmt = self._insert(sites).values(
            site_id=hello.site_id, registered_unix_ms=to_ms(now), **values
        )
        with self._writer.begin() as conn:
            conn.execute(stmt.on_conflict_do_update(index_elements=["site_id"], set_=values))

    def ensure_site(self, site_id: str, *, now: datetime) -> None:
        """Register a site known only from the HTTP API (no agent has said hello yet)."""
        with self._writer.begin() as conn:
            conn.execute(
                self._insert(sites)
                .values(site_id=site_id, registered_unix_ms=to_ms(now))
                .on_conflict_do_nothing(index_elements=["site_id"])
            )

    def seen(self, site_id: str, *, now: datetime, heartbeat: Heartbeat | None = None) -> None:
        values: dict[str, Any] = {"last_seen_unix_ms": to_ms(now)}
        if heartbeat is not None:
            values["heartbeat"] = json.dumps(
                {
                    "timestamp_unix_ms": to_ms(heartbeat.timestamp),
                    "setpoint_kw": heartbeat.setpoint_kw,
                    "schedule_version": heartbeat.schedule_version,
                    "outbox_pending_samples": heartbeat.outbox_pending_samples,
                    "outbox_pending_events": heartbeat.outbox_pending_events,
                    "scheduled_kw": heartbeat.scheduled_kw,
                }
            )
        with self._writer.begin() as conn:
            conn.execute(sites.update().where(sites.c.site_id == site_id).values(**values))

    def site_rows(self, site_id: str | None = None) -> list[RowMapping]:
        query = sa.select(sites).order_by(sites.c.site_id)
        if site_id is not None:
            query = query.where(sites.c.site_id == site_id)
        with self.engine.connect() as conn:
            return list(conn.execute(query).mappings())

    # -- telemetry and events ------------------------------------------------------------

    def last_seqs(self, site_id: str) -> tuple[int, int]:
        """(highest telemetry seq from the agent, highest event seq) stored for the site."""
        with self.engine.connect() as conn:
            return self._last_seq(conn, site_id), self._last_event_seq(conn, site_id)

    @staticmethod
    def _last_seq(conn: Connection, site_id: str, stream: str = EDGE) -> int:
        return int(conn.scalar(_LAST_SEQ, {"site": site_id, "stream": stream}) or 0)

    @staticmethod
    def _last_event_seq(conn: Connection, site_id: str) -> int:
        return int(conn.scalar(_LAST_EVENT_SEQ, {"site": site_id}) or 0)

    def ingest_samples(
        self,
        site_id: str,
        samples: Sequence[TelemetrySample],
        *,
        now: datetime,
        stream: str = EDGE,
    ) -> IngestResult:
        """Store the samples not stored yet, in one transaction; the result after commit."""
        with self._writer.begin() as conn:
            seen = _seen(conn, _SEEN_SAMPLES, samples, site=site_id, stream=stream)
            new = _new_only(samples, seen)
            if new:
                conn.execute(
                    self._insert_samples, [_sample_row(site_id, stream, s, now) for s in new]
                )
            through = self._last_seq(conn, site_id, stream)
        return IngestResult(len(new), len(samples) - len(new), through)

    def ingest_events(self, site_id: str, items: Sequence[Event], *, now: datetime) -> IngestResult:
        with self._writer.begin() as conn:
            new = _new_only(items, _seen(conn, _SEEN_EVENTS, items, site=site_id))
            if new:
                conn.execute(self._insert_events, [_event_row(site_id, e, now) for e in new])
            through = self._last_event_seq(conn, site_id)
        return IngestResult(len(new), len(items) - len(new), through)

    def next_api_seq(self, site_id: str) -> int:
        with self.engine.connect() as conn:
            return self._last_seq(conn, site_id, API) + 1

    def latest_samples(self) -> dict[str, TelemetrySample]:
        """The newest reading (by timestamp, then seq) of every site."""
        newest = (
            sa.select(telemetry.c.site_id, sa.func.max(telemetry.c.timestamp_unix_ms).label("ts"))
            .group_by(telemetry.c.site_id)
            .subquery()
        )
        query = (
            sa.select(telemetry)
            .join(
                newest,
                sa.and_(
                    telemetry.c.site_id == newest.c.site_id,
                    telemetry.c.timestamp_unix_ms == newest.c.ts,
                ),
            )
            .order_by(telemetry.c.site_id, telemetry.c.seq)
        )
        with self.engine.connect() as conn:
            return {row["site_id"]: _sample(row) for row in conn.execute(query).mappings()}

    def latest_sample(self, site_id: str) -> TelemetrySample | None:
        """The newest reading (by timestamp, then seq) of one site; None if it has none."""
        query = (
            sa.select(telemetry)
            .where(telemetry.c.site_id == site_id)
            .order_by(telemetry.c.timestamp_unix_ms.desc(), telemetry.c.seq.desc())
            .limit(1)
        )
        with self.engine.connect() as conn:
            row = conn.execute(query).mappings().first()
        return _sample(row) if row is not None else None

    def samples(
        self,
        site_id: str,
        *,
        start: datetime | None = None,
        end: datetime | None = None,
        limit: int = 1000,
        stream: str | None = None,
    ) -> list[TelemetrySample]:
        """Readings with start <= timestamp < end, oldest first."""
        query = sa.select(telemetry).where(telemetry.c.site_id == site_id)
        if stream is not None:
            query = query.where(telemetry.c.stream == stream)
        if start is not None:
            query = query.where(telemetry.c.timestamp_unix_ms >= to_ms(start))
        if end is not None:
            query = query.where(telemetry.c.timestamp_unix_ms < to_ms(end))
        query = query.order_by(telemetry.c.timestamp_unix_ms, telemetry.c.seq).limit(limit)
        with self.engine.connect() as conn:
            return [_sample(row) for row in conn.execute(query).mappings()]

    def sample_seqs(self, site_id: str, stream: str = EDGE) -> list[int]:
        query = (
            sa.select(telemetry.c.seq)
            .where(telemetry.c.site_id == site_id, telemetry.c.stream == stream)
            .order_by(telemetry.c.seq)
        )
        with self.engine.connect() as conn:
            return list(conn.scalars(query))

    def events(
        self,
        site_id: str,
        *,
        start: datetime | None = None,
        end: datetime | None = None,
        limit: int = 1000,
    ) -> list[Event]:
        query = sa.select(events).where(events.c.site_id == site_id)
        if start is not None:
            query = query.where(events.c.timestamp_unix_ms >= to_ms(start))
        if end is not None:
            query = query.where(events.c.timestamp_unix_ms < to_ms(end))
        query = query.order_by(events.c.timestamp_unix_ms, events.c.seq).limit(limit)
        with self.engine.connect() as conn:
            return [_event(row) for row in conn.execute(query).mappings()]

    # -- schedules -----------------------------------------------------------------------

    def add_schedule(self, site_id: str, new: NewSchedule, *, now: datetime) -> ScheduleRecord:
        """Store the next version; every older one still in force becomes superseded."""
        with self._writer.begin() as conn:
            latest = conn.scalar(
                sa.select(sa.func.max(schedules.c.version)).where(schedules.c.site_id == site_id)
            )
            version = int(latest or 0) + 1
            conn.execute(
                schedules.update()
                .where(
                    schedules.c.site_id == site_id,
                    schedules.c.status.in_(
                        [ScheduleStatus.PENDING, ScheduleStatus.SENT, ScheduleStatus.ACKNOWLEDGED]
                    ),
                    schedules.c.valid_until_unix_ms > to_ms(now),
                )
                .values(status=ScheduleStatus.SUPERSEDED, detail=f"superseded by v{version}")
            )
            schedule = Schedule(
                site_id=site_id,
                version=version,
                created_at=now,
                valid_from=new.valid_from,
                valid_until=new.valid_until,
                interval_minutes=new.interval_minutes,
                intervals=new.intervals,
                origin=new.origin,
            )
            conn.execute(
                schedules.insert().values(
                    site_id=site_id,
                    version=version,
                    created_unix_ms=to_ms(now),
                    valid_from_unix_ms=to_ms(new.valid_from),
                    valid_until_unix_ms=to_ms(new.valid_until),
                    interval_minutes=new.interval_minutes,
                    intervals=json.dumps([[to_ms(i.start), i.power_kw] for i in new.intervals]),
                    origin=new.origin,
                    status=ScheduleStatus.PENDING,
                    detail="",
                )
            )
        return ScheduleRecord(schedule=schedule, status=ScheduleStatus.PENDING)

    def schedules(self, site_id: str, *, limit: int = 100) -> list[ScheduleRecord]:
        """Newest first."""
        query = (
            sa.select(schedules)
            .where(schedules.c.site_id == site_id)
            .order_by(schedules.c.version.desc())
            .limit(limit)
        )
        with self.engine.connect() as conn:
            return [_schedule_record(row) for row in conn.execute(query).mappings()]

    def latest_schedule(self, site_id: str) -> ScheduleRecord | None:
        found = self.schedules(site_id, limit=1)
        return found[0] if found else None

    def mark_sent(self, site_id: str, version: int, *, now: datetime) -> None:
        self._advance(
            schedules,
            [schedules.c.site_id == site_id, schedules.c.version == version],
            status=ScheduleStatus.SENT,
            sent_unix_ms=to_ms(now),
        )

    def answer(self, site_id: str, answer: ScheduleAnswer, *, now: datetime) -> bool:
        """Record the agent's answer; False if no schedule waited for one (a repeat)."""
        status = ScheduleStatus.ACKNOWLEDGED if answer.accepted else ScheduleStatus.REJECTED
        detail = answer.detail if answer.accepted else f"{answer.reason}: {answer.detail}"
        return self._advance(
            schedules,
            [schedules.c.site_id == site_id, schedules.c.version == answer.version],
            status=status,
            answered_unix_ms=to_ms(now),
            detail=detail,
        )

    def _advance(self, table: sa.Table, where: list[Any], **values: Any) -> bool:
        """Move a pending or sent schedule/command on; False if it was in neither state."""
        # Both status enums spell pending and sent the same.
        open_states = [str(s) for s in OPEN_COMMAND_STATUSES]
        with self._writer.begin() as conn:
            result = conn.execute(
                table.update().where(*where, table.c.status.in_(open_states)).values(**values)
            )
            return bool(result.rowcount)

    # -- commands ------------------------------------------------------------------------

    def add_command(
        self, site_id: str, new: NewCommand, *, command_id: str, now: datetime
    ) -> CommandRecord:
        command = Command(
            command_id=command_id,
            site_id=site_id,
            action=new.action,
            issued_by=new.issued_by,
            issued_at=now,
            expires_at=new.expires_at,
        )
        with self._writer.begin() as conn:
            conn.execute(
                commands.insert().values(
                    command_id=command_id,
                    site_id=site_id,
                    kind=new.action.kind,
                    payload=json.dumps(_action_fields(new.action), sort_keys=True),
                    issued_by=new.issued_by,
                    issued_unix_ms=to_ms(now),
                    expires_unix_ms=None if new.expires_at is None else to_ms(new.expires_at),
                    status=CommandStatus.PENDING,
                    detail="",
                )
            )
        return CommandRecord(command=command, status=CommandStatus.PENDING)

    def commands(
        self, site_id: str, *, limit: int = 100, open_only: bool = False
    ) -> list[CommandRecord]:
        """Newest first; `open_only`: pending or sent (not answered, maybe expired)."""
        query = sa.select(commands).where(commands.c.site_id == site_id)
        if open_only:
            query = query.where(commands.c.status.in_(list(OPEN_COMMAND_STATUSES)))
        query = query.order_by(commands.c.issued_unix_ms.desc(), commands.c.command_id).limit(limit)
        with self.engine.connect() as conn:
            return [_command_record(row) for row in conn.execute(query).mappings()]

    def command(self, site_id: str, command_id: str) -> CommandRecord | None:
        query = sa.select(commands).where(
            commands.c.site_id == site_id, commands.c.command_id == command_id
        )
        with self.engine.connect() as conn:
            row = conn.execute(query).mappings().first()
        return None if row is None else _command_record(row)

    def mark_command_sent(self, site_id: str, command_id: str, *, now: datetime) -> None:
        self._advance(
            commands,
            [commands.c.site_id == site_id, commands.c.command_id == command_id],
            status=CommandStatus.SENT,
            sent_unix_ms=to_ms(now),
        )

    def answer_command(
        self, site_id: str, answer: CommandAnswer, *, now: datetime
    ) -> CommandStatus | None:
        """Record the agent's answer; the new status, None if nothing waited for it."""
        if answer.accepted:
            status, detail = CommandStatus.ACKNOWLEDGED, answer.detail
        else:
            expired = answer.reason == "expired"
            status = CommandStatus.EXPIRED if expired else CommandStatus.REJECTED
            detail = f"{answer.reason}: {answer.detail}"
        changed = self._advance(
            commands,
            [commands.c.site_id == site_id, commands.c.command_id == answer.command_id],
            status=status,
            answered_unix_ms=to_ms(now),
            detail=detail,
        )
        return status if changed else None

    def expire_command(self, command: Command, *, now: datetime) -> bool:
        return self._advance(
            commands,
            [commands.c.command_id == command.command_id],
            status=CommandStatus.EXPIRED,
            answered_unix_ms=to_ms(now),
            detail="expired before the agent answered",
        )


# -- rows <-> domain -------------------------------------------------------------------------


_SEEN_SAMPLES = sa.select(telemetry.c.seq).where(
    telemetry.c.site_id == sa.bindparam("site"),
    telemetry.c.stream == sa.bindparam("stream"),
    telemetry.c.seq.in_(sa.bindparam("seqs", expanding=True)),
)
_SEEN_EVENTS = sa.select(events.c.seq).where(
    events.c.site_id == sa.bindparam("site"),
    events.c.seq.in_(sa.bindparam("seqs", expanding=True)),
)
_LAST_SEQ = sa.select(sa.func.max(telemetry.c.seq)).where(
    telemetry.c.site_id == sa.bindparam("site"), telemetry.c.stream == sa.bindparam("stream")
)
_LAST_EVENT_SEQ = sa.select(sa.func.max(events.c.seq)).where(
    events.c.site_id == sa.bindparam("site")
)


def _seen(conn: Connection, query: sa.Select[Any], items: Sequence[Any], **params: str) -> set[int]:
    """The seqs of `items` already stored (one indexed query)."""
    if not items:
        return set()
    return set(conn.scalars(query, {**params, "seqs": sorted({i.seq for i in items})}))


def _new_only(items: Sequence[_T], seen: set[int]) -> list[_T]:
    """The items whose seq is not stored yet, each seq once (a batch may repeat one)."""
    seen = set(seen)
    new: list[_T] = []
    for item in items:
        if item.seq not in seen:
            seen.add(item.seq)
            new.append(item)
    return new


def _sample_row(site_id: str, stream: str, s: TelemetrySample, now: datetime) -> dict[str, Any]:
    return {
        "site_id": site_id,
        "stream": stream,
        "seq": s.seq,
        "timestamp_unix_ms": to_ms(s.timestamp),
        "received_unix_ms": to_ms(now),
        "soc_pct": s.soc_pct,
        "active_power_kw": s.active_power_kw,
        "reactive_power_kvar": s.reactive_power_kvar,
        "voltage_v": s.voltage_v,
        "temperature_c": s.temperature_c,
        "grid_frequency_hz": s.grid_frequency_hz,
        "status": s.status,
        "alarms": json.dumps(list(s.alarms)),
        "source": s.source,
        "setpoint_kw": s.setpoint_kw,
        "soh_pct": s.soh_pct,
        "vendor_alarm_bits": None if s.vendor_alarm_bits is None else str(s.vendor_alarm_bits),
        "energy_charged_total_kwh": s.energy_charged_total_kwh,
        "energy_discharged_total_kwh": s.energy_discharged_total_kwh,
    }


def _sample(row: RowMapping) -> TelemetrySample:
    bits = row["vendor_alarm_bits"]
    return TelemetrySample(
        seq=int(row["seq"]),
        timestamp=from_ms(row["timestamp_unix_ms"]),
        soc_pct=row["soc_pct"],
        active_power_kw=row["active_power_kw"],
        reactive_power_kvar=row["reactive_power_kvar"],
        voltage_v=row["voltage_v"],
        temperature_c=row["temperature_c"],
        grid_frequency_hz=row["grid_frequency_hz"],
        status=row["status"],
        alarms=tuple(json.loads(row["alarms"])),
        source=row["source"],
        setpoint_kw=row["setpoint_kw"],
        soh_pct=row["soh_pct"],
        vendor_alarm_bits=None if bits is None else int(bits),
        energy_charged_total_kwh=row["energy_charged_total_kwh"],
        energy_discharged_total_kwh=row["energy_discharged_total_kwh"],
    )


def _event_row(site_id: str, e: Event, now: datetime) -> dict[str, Any]:
    return {
        "site_id": site_id,
        "seq": e.seq,
        "timestamp_unix_ms": to_ms(e.timestamp),
        "received_unix_ms": to_ms(now),
        "severity": e.severity,
        "kind": e.kind,
        "code": e.code,
        "message": e.message,
        "requested_kw": e.requested_kw,
        "applied_kw": e.applied_kw,
        "guard_reason": e.guard_reason,
        "alarm": e.alarm,
        "source": e.source,
        "schedule_version": e.schedule_version,
        "command_id": e.command_id,
        "config_version": e.config_version,
        "details": json.dumps(e.details, sort_keys=True),
    }


def _event(row: RowMapping) -> Event:
    return Event(
        seq=int(row["seq"]),
        timestamp=from_ms(row["timestamp_unix_ms"]),
        severity=row["severity"],
        kind=row["kind"],
        code=row["code"],
        message=row["message"],
        requested_kw=row["requested_kw"],
        applied_kw=row["applied_kw"],
        guard_reason=row["guard_reason"],
        alarm=row["alarm"],
        source=row["source"],
        schedule_version=int(row["schedule_version"]),
        command_id=row["command_id"],
        config_version=int(row["config_version"]),
        details=dict(json.loads(row["details"])),
    )


def _schedule_record(row: RowMapping) -> ScheduleRecord:
    schedule = Schedule(
        site_id=row["site_id"],
        version=int(row["version"]),
        created_at=from_ms(row["created_unix_ms"]),
        valid_from=from_ms(row["valid_from_unix_ms"]),
        valid_until=from_ms(row["valid_until_unix_ms"]),
        interval_minutes=int(row["interval_minutes"]),
        intervals=tuple(
            ScheduleInterval(from_ms(int(start)), float(kw))
            for start, kw in json.loads(row["intervals"])
        ),
        origin=row["origin"],
    )
    return ScheduleRecord(
        schedule=schedule,
        status=ScheduleStatus(row["status"]),
        sent_at=_opt_ms(row["sent_unix_ms"]),
        answered_at=_opt_ms(row["answered_unix_ms"]),
        detail=row["detail"],
    )


def _action_fields(action: CommandAction) -> dict[str, Any]:
    if isinstance(action, SetLimitsAction):
        return {
            name: getattr(action, name)
            for name in ("min_soc_pct", "max_soc_pct", "max_charge_kw", "max_discharge_kw")
            if getattr(action, name) is not None
        }
    if isinstance(action, StopAction):
        return {"reason": action.reason}
    return {}


def _action(kind: str, fields: dict[str, Any]) -> CommandAction:
    if kind == CommandKind.SET_LIMITS:
        return SetLimitsAction(**fields)
    if kind == CommandKind.STOP:
        return StopAction(**fields)
    return ResumeAction()


def _command_record(row: RowMapping) -> CommandRecord:
    expires = row["expires_unix_ms"]
    command = Command(
        command_id=row["command_id"],
        site_id=row["site_id"],
        action=_action(row["kind"], json.loads(row["payload"])),
        issued_by=row["issued_by"],
        issued_at=from_ms(row["issued_unix_ms"]),
        expires_at=_opt_ms(expires),
    )
    return CommandRecord(
        command=command,
        status=CommandStatus(row["status"]),
        sent_at=_opt_ms(row["sent_unix_ms"]),
        answered_at=_opt_ms(row["answered_unix_ms"]),
        detail=row["detail"],
    )


def ratings_of(row: RowMapping) -> Ratings | None:
    if row["capacity_kwh"] is None:
        return None
    return Ratings(row["capacity_kwh"], row["max_charge_kw"], row["max_discharge_kw"])


def heartbeat_of(row: RowMapping) -> Heartbeat | None:
    raw = row["heartbeat"]
    if not raw:
        return None
    data = json.loads(raw)
    return Heartbeat(
        timestamp=from_ms(data["timestamp_unix_ms"]),
        setpoint_kw=data["setpoint_kw"],
        schedule_version=data["schedule_version"],
        outbox_pending_samples=data["outbox_pending_samples"],
        outbox_pending_events=data["outbox_pending_events"],
        scheduled_kw=data["scheduled_kw"],
    )


def capabilities_of(row: RowMapping) -> tuple[str, ...]:
    return tuple(json.loads(row["capabilities"]))
