"""Fleet domain types: sites, telemetry, events, schedules and the session's messages.

No protobuf, FastAPI or SQL here (STYLE item 3): `convert.py` maps these to and from the
EdgeLink wire format, `schemas.py` to and from the HTTP API, `store.py` to rows. Time is an
aware UTC `datetime`; power sign as on the wire: + = discharge, - = charge. Enum-like fields of
the wire (status, alarms, severity, kind, ...) are lower-case names, e.g. "charging",
"over_temperature"; an unknown value is "unspecified".
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from enum import StrEnum

SITE_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,62}")
"""A site id (Hello.site_id, certificates, URLs): 1-63 letters, digits, '.', '_' or '-'."""
SITE_ID_RULE = "1-63 letters, digits, '.', '_' or '-', starting with a letter or digit"

SCHEDULE_INTERVAL_MINUTES = 15
"""PT15M: the delivery period of the market; the only schedule resolution accepted so far."""


def utc_now() -> datetime:
    return datetime.now(UTC)


class FleetError(Exception):
    """Base of the fleet service's errors (translated to HTTP or gRPC status at the edge).

    FleetError
     +-- UnknownSiteError        no site with that id has ever said hello
     +-- InvalidScheduleError    a schedule that breaks a rule; the message says which
     +-- InvalidCommandError     a command that breaks a rule; the message says which
    """


class UnknownSiteError(FleetError):
    def __init__(self, site_id: str) -> None:
        super().__init__(f"unknown site {site_id!r}: it has never connected to this plane")
        self.site_id = site_id


class InvalidScheduleError(FleetError, ValueError):
    pass


class ScheduleRefusedError(FleetError):
    """A well-formed schedule breaks an operating constraint (e.g. a grid capacity limit)."""


class InvalidCommandError(FleetError, ValueError):
    pass


@dataclass(frozen=True, slots=True)
class Ratings:
    capacity_kwh: float
    max_charge_kw: float
    max_discharge_kw: float


@dataclass(frozen=True, slots=True)
class Hello:
    site_id: str
    agent_version: str
    capabilities: tuple[str, ...] = ()
    last_schedule_version: int = 0
    ratings: Ratings | None = None
    agent_time: datetime | None = None


@dataclass(frozen=True, slots=True)
class Welcome:
    session_id: str
    plane_version: str
    server_time: datetime
    last_stored_seq: int
    last_stored_event_seq: int
    expected_schedule_version: int
    heartbeat_interval_s: int


@dataclass(frozen=True, slots=True)
class Heartbeat:
    timestamp: datetime
    setpoint_kw: float
    schedule_version: int
    outbox_pending_samples: int
    outbox_pending_events: int
    scheduled_kw: float | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class TelemetrySample:
    """One reading of a site's battery; `seq` is the per-site sequence number (dedup key)."""

    seq: int
    timestamp: datetime
    soc_pct: float | None = None
    active_power_kw: float | None = None
    reactive_power_kvar: float | None = None
    voltage_v: float | None = None
    temperature_c: float | None = None
    grid_frequency_hz: float | None = None
    status: str = "unspecified"
    alarms: tuple[str, ...] = ()
    source: str = "unspecified"
    setpoint_kw: float | None = None
    soh_pct: float | None = None
    vendor_alarm_bits: int | None = None
    energy_charged_total_kwh: float | None = None
    energy_discharged_total_kwh: float | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class Event:
    """A discrete occurrence on the edge (alarm, guard intervention, ...), per-site seq."""

    seq: int
    timestamp: datetime
    severity: str = "unspecified"
    kind: str = "unspecified"
    code: str = ""
    message: str = ""
    requested_kw: float | None = None
    applied_kw: float | None = None
    guard_reason: str = "unspecified"
    alarm: str = "unspecified"
    source: str = "unspecified"
    schedule_version: int = 0
    command_id: str = ""
    config_version: int = 0
    details: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class IngestResult:
    """What one TelemetryBatch (or event) did to the store."""

    stored: int  # new rows
    duplicates: int  # rows already stored (a resend)
    acked_through: int  # highest seq durably stored for the site: the cumulative ack


# -- schedules -------------------------------------------------------------------------------


class ScheduleStatus(StrEnum):
    PENDING = "pending"  # stored, the site is offline: sent when it connects
    SENT = "sent"  # pushed to the agent, no answer yet (re-sent after a reconnect)
    ACKNOWLEDGED = "acknowledged"  # the agent accepted it
    REJECTED = "rejected"  # the agent refused it (detail says why); not re-sent
    SUPERSEDED = "superseded"  # a newer version replaced it before its end
    EXPIRED = "expired"  # its validity ended (derived when read)


@dataclass(frozen=True, slots=True)
class ScheduleInterval:
    start: datetime
    power_kw: float


@dataclass(frozen=True, slots=True, kw_only=True)
class NewSchedule:
    """A schedule as an operator or the optimiser submits it; the plane assigns the version."""

    valid_from: datetime
    valid_until: datetime
    intervals: tuple[ScheduleInterval, ...]
    interval_minutes: int = SCHEDULE_INTERVAL_MINUTES
    origin: str = ""

    def __post_init__(self) -> None:
        check_schedule(self)


@dataclass(frozen=True, slots=True, kw_only=True)
class Schedule:
    site_id: str
    version: int
    created_at: datetime
    valid_from: datetime
    valid_until: datetime
    interval_minutes: int
    intervals: tuple[ScheduleInterval, ...]
    origin: str = ""


@dataclass(frozen=True, slots=True, kw_only=True)
class ScheduleRecord:
    """A schedule and where its delivery stands."""

    schedule: Schedule
    status: ScheduleStatus
    sent_at: datetime | None = None
    answered_at: datetime | None = None
    detail: str = ""

    def status_at(self, now: datetime) -> ScheduleStatus:
        """The status with expiry applied (a held schedule past its validity is expired)."""
        if self.status in (ScheduleStatus.SUPERSEDED, ScheduleStatus.REJECTED):
            return self.status
        if now >= self.schedule.valid_until:
            return ScheduleStatus.EXPIRED
        return self.status


@dataclass(frozen=True, slots=True)
class ScheduleAnswer:
    """The agent's ScheduleAck."""

    version: int
    accepted: bool
    reason: str = ""
    detail: str = ""


def check_schedule(new: NewSchedule) -> None:
    """Raise InvalidScheduleError naming the first broken rule."""
    if new.interval_minutes != SCHEDULE_INTERVAL_MINUTES:
        raise InvalidScheduleError(
            f"interval_minutes must be {SCHEDULE_INTERVAL_MINUTES} (PT15M delivery periods), "
            f"got {new.interval_minutes}"
        )
    for name in ("valid_from", "valid_until"):
        if getattr(new, name).tzinfo is None:
            raise InvalidScheduleError(f"{name} needs a time zone (UTC offset)")
    if not new.valid_from < new.valid_until:
        raise InvalidScheduleError(
            f"valid_from {new.valid_from.isoformat()} must be before valid_until "
            f"{new.valid_until.isoformat()}"
        )
    if not new.intervals:
        raise InvalidScheduleError("a schedule needs at least one interval")
    step = timedelta(minutes=new.interval_minutes)
    previous_end: datetime | None = None
    for n, interval in enumerate(new.intervals):
        start = interval.start
        where = f"interval {n} ({start.isoformat()})"
        if start.tzinfo is None:
            raise InvalidScheduleError(f"{where}: start needs a time zone (UTC offset)")
        if not math.isfinite(interval.power_kw):
            raise InvalidScheduleError(f"{where}: power_kw must be a finite number")
        if start.timestamp() % step.total_seconds() != 0:
            raise InvalidScheduleError(
                f"{where} is not aligned to {new.interval_minutes} minutes in UTC"
            )
        if previous_end is not None and start < previous_end:
            raise InvalidScheduleError(f"{where} overlaps the previous one or is out of order")
        if start < new.valid_from or start + step > new.valid_until:
            raise InvalidScheduleError(
                f"{where} lies outside the validity {new.valid_from.isoformat()} .. "
                f"{new.valid_until.isoformat()}"
            )
        previous_end = start + step


# -- commands --------------------------------------------------------------------------------


class CommandKind(StrEnum):
    SET_LIMITS = "set_limits"
    STOP = "stop"
    RESUME = "resume"


class CommandStatus(StrEnum):
    PENDING = "pending"  # stored, the site is offline: sent when it connects
    SENT = "sent"  # pushed to the agent, no answer yet (re-sent after a reconnect)
    ACKNOWLEDGED = "acknowledged"  # the agent applied it
    REJECTED = "rejected"  # the agent refused it (detail says why); not re-sent
    EXPIRED = "expired"  # unanswered at its expiry (or the agent said it arrived too late)


OPEN_COMMAND_STATUSES = (CommandStatus.PENDING, CommandStatus.SENT)


@dataclass(frozen=True, slots=True, kw_only=True)
class SetLimitsAction:
    """Narrow the agent's limits; None leaves that limit as it is (the agent never widens)."""

    min_soc_pct: float | None = None
    max_soc_pct: float | None = None
    max_charge_kw: float | None = None
    max_discharge_kw: float | None = None

    @property
    def kind(self) -> CommandKind:
        return CommandKind.SET_LIMITS


@dataclass(frozen=True, slots=True, kw_only=True)
class StopAction:
    """Hold the battery at 0 kW until Resume."""

    reason: str = ""

    @property
    def kind(self) -> CommandKind:
        return CommandKind.STOP


@dataclass(frozen=True, slots=True, kw_only=True)
class ResumeAction:
    """Lift a Stop."""

    @property
    def kind(self) -> CommandKind:
        return CommandKind.RESUME


CommandAction = SetLimitsAction | StopAction | ResumeAction


@dataclass(frozen=True, slots=True, kw_only=True)
class NewCommand:
    """A command as an operator submits it; the plane assigns id and issue time."""

    action: CommandAction
    expires_at: datetime | None = None  # None: never expires
    issued_by: str = ""

    def __post_init__(self) -> None:
        check_command(self)


@dataclass(frozen=True, slots=True, kw_only=True)
class Command:
    command_id: str  # UUID; the agent applies each id at most once
    site_id: str
    action: CommandAction
    issued_by: str
    issued_at: datetime
    expires_at: datetime | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class CommandRecord:
    """A command and where its delivery stands."""

    command: Command
    status: CommandStatus
    sent_at: datetime | None = None
    answered_at: datetime | None = None
    detail: str = ""

    def status_at(self, now: datetime) -> CommandStatus:
        """The status with expiry applied (an unanswered command past its expiry)."""
        expires = self.command.expires_at
        if self.status in OPEN_COMMAND_STATUSES and expires is not None and now >= expires:
            return CommandStatus.EXPIRED
        return self.status


@dataclass(frozen=True, slots=True)
class CommandAnswer:
    """The agent's CommandAck."""

    command_id: str
    accepted: bool
    reason: str = ""
    detail: str = ""


MAX_STOP_REASON = 200


def check_command(new: NewCommand) -> None:
    """Raise InvalidCommandError naming the first broken rule."""
    if new.expires_at is not None and new.expires_at.tzinfo is None:
        raise InvalidCommandError("expires_at needs a time zone (UTC offset)")
    action = new.action
    if isinstance(action, StopAction) and len(action.reason) > MAX_STOP_REASON:
        raise InvalidCommandError(f"stop.reason is longer than {MAX_STOP_REASON} characters")
    if not isinstance(action, SetLimitsAction):
        return
    given = {
        name: value
        for name in ("min_soc_pct", "max_soc_pct", "max_charge_kw", "max_discharge_kw")
        if (value := getattr(action, name)) is not None
    }
    if not given:
        raise InvalidCommandError(
            "set_limits needs at least one of min_soc_pct, max_soc_pct, max_charge_kw, "
            "max_discharge_kw"
        )
    for name, value in given.items():
        if not math.isfinite(value):
            raise InvalidCommandError(f"set_limits.{name} must be a finite number")
        if name.endswith("_pct") and not 0.0 <= value <= 100.0:
            raise InvalidCommandError(f"set_limits.{name} {value:g} is outside 0 to 100")
        if name.endswith("_kw") and value < 0:
            raise InvalidCommandError(
                f"set_limits.{name} {value:g} is negative (limits are magnitudes, >= 0)"
            )
    low, high = action.min_soc_pct, action.max_soc_pct
    if low is not None and high is not None and low >= high:
        raise InvalidCommandError(
            f"set_limits.min_soc_pct {low:g} must be below max_soc_pct {high:g}"
        )


# -- sites -----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class Site:
    site_id: str
    agent_version: str
    capabilities: tuple[str, ...]
    ratings: Ratings | None
    registered_at: datetime
    last_seen: datetime | None
    connected: bool
    session_id: str = ""
    last_heartbeat: Heartbeat | None = None


@dataclass(frozen=True, slots=True)
class SiteStatus:
    site: Site
    latest: TelemetrySample | None


@dataclass(frozen=True, slots=True)
class FleetTotals:
    sites: int
    sites_connected: int
    active_power_kw: float
    capacity_kwh: float
    stored_energy_kwh: float  # sum over sites with capacity and a SoC reading
    average_soc_pct: float | None


# -- the session's outbound messages (plane -> agent), built by the service -------------------


@dataclass(frozen=True, slots=True)
class TelemetryAckOut:
    acked_through_seq: int


@dataclass(frozen=True, slots=True)
class EventAckOut:
    acked_through_seq: int


@dataclass(frozen=True, slots=True)
class ScheduleOut:
    schedule: Schedule


@dataclass(frozen=True, slots=True)
class CommandOut:
    command: Command


class EndReason(StrEnum):
    REPLACED = "replaced"  # a newer session of the site took over (ABORTED)
    DRAINING = "draining"  # the plane shuts down (UNAVAILABLE)
    PROTOCOL = "protocol"  # the agent broke the session protocol (FAILED_PRECONDITION)
    UNAVAILABLE = "unavailable"  # the store failed: nothing acked, the agent resends later
    CLOSED = "closed"  # the agent half-closed or the stream broke: end quietly


@dataclass(frozen=True, slots=True)
class SessionEnd:
    reason: EndReason
    detail: str


Outbound = TelemetryAckOut | EventAckOut | ScheduleOut | CommandOut | SessionEnd
