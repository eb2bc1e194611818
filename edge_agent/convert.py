"""EdgeLink protobuf <-> the agent's domain types: the only module that builds or reads `bess.v1`.

STYLE 3: servicers and the uplink move messages, this module translates them. Rules:

* **Time**: the agent works in Unix seconds (float), the wire in `*_unix_ms` (int64):
  `to_unix_ms` rounds to the nearest millisecond, and `to_unix_ms(from_unix_ms(ms)) == ms` for
  every millisecond within +-285 years of 1970.
* **Telemetry**: a quantity the snapshot does not hold, or holds only as *stale*, is left absent
  (proto3 `optional` unset = "not measured"). A stale value is not a measurement at the
  sample's time, and sending it would let the plane bill, forecast and plan on a number that
  is no longer true; the plane sees the gap instead, and `status` says OFFLINE when neither
  SoC nor power is fresh.
* **Outbox payloads** are messages with `seq` = 0: the seq belongs to the outbox row (it is
  assigned on append and can be renumbered by `Outbox.reconcile`), and is set from the row
  when the message is built for the wire (`telemetry_batch_message`, `event_message`).
* **Plane -> agent**: `schedule_from_proto`, `command_from_proto`, `config_from_proto` either
  return a domain value or raise `InvalidMessageError`, whose `reason` is the `AckReason` the
  agent answers with. Nothing here applies anything; the uplink's handlers do.
* **Enums** travel as lower-case names in the domain ("over_temperature", "charging"), like
  `Quantity` and `GuardReason`; an unknown name maps to the proto's *_UNSPECIFIED and keeps
  the name in `details`, and an unknown proto value (from a newer peer) maps to UNSPECIFIED.

The small domain types the link needs and no other module owns yet (commands, config patch,
acks, hello and heartbeat contents, alarm changes) are defined at the top. They hold no
protobuf and may move to a `models.py` when other modules grow around them.

Errors:

    InvalidMessageError (ValueError)   a plane message the agent refuses; .reason says why
"""

from __future__ import annotations

import logging
import math
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from typing import TYPE_CHECKING, Protocol, TypeVar

from google.protobuf.message import DecodeError

from bess.v1 import edgelink_pb2 as pb

from .guard import GuardEvent, GuardLimits, GuardReason
from .outbox import OutboxRow, StreamStats
from .readings import Quantity
from .schedule_store import (
    RejectReason,
    SaveOutcome,
    SaveResult,
    Schedule,
    ScheduleError,
    ScheduleInterval,
    ScheduleSource,
)

if TYPE_CHECKING:
    from google.protobuf.internal.enum_type_wrapper import _EnumTypeWrapper

log = logging.getLogger(__name__)

_V = TypeVar("_V", bound=int)

MS_PER_S = 1000
IDLE_BAND_KW = 0.1
"""|active power| at or below this counts as IDLE when the status is derived from power."""

_CONFIG_KEY = re.compile(r"[a-z][a-z0-9_]*(\.[a-z][a-z0-9_]*)*")


# -- domain types of the link -------------------------------------------------------------


class AckReason(StrEnum):
    """Why the agent refuses a Schedule, Command or ConfigUpdate (EdgeLink RejectReason)."""

    MALFORMED = "malformed"
    WRONG_SITE = "wrong_site"
    STALE_VERSION = "stale_version"
    EXPIRED = "expired"
    UNSUPPORTED = "unsupported"
    OUT_OF_RANGE = "out_of_range"
    INTERNAL = "internal"


@dataclass(frozen=True, slots=True)
class Ack:
    """The agent's answer to a plane message: accepted, or rejected with a reason."""

    accepted: bool
    reason: AckReason | None = None
    detail: str = ""

    @classmethod
    def ok(cls, detail: str = "") -> Ack:
        return cls(True, None, detail)

    @classmethod
    def reject(cls, reason: AckReason, detail: str) -> Ack:
        return cls(False, reason, detail)


class InvalidMessageError(ValueError):
    """A plane message the agent cannot accept as sent; `reason` goes into the ack."""

    def __init__(self, reason: AckReason, detail: str) -> None:
        super().__init__(detail)
        self.reason = reason
        self.detail = detail

    def ack(self) -> Ack:
        return Ack.reject(self.reason, self.detail)


@dataclass(frozen=True, slots=True, kw_only=True)
class CommandMeta:
    """What every command carries besides its action."""

    command_id: str
    issued_at: float  # Unix s
    expires_at: float | None  # Unix s; None = never expires
    issued_by: str = ""


@dataclass(frozen=True, slots=True, kw_only=True)
class SetLimitsCommand:
    """Narrow the operating limits; None leaves a limit unchanged (kW are magnitudes)."""

    meta: CommandMeta
    min_soc_pct: float | None = None
    max_soc_pct: float | None = None
    max_charge_kw: float | None = None
    max_discharge_kw: float | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class StopCommand:
    """Hold 0 kW until a Resume."""

    meta: CommandMeta
    reason: str = ""


@dataclass(frozen=True, slots=True, kw_only=True)
class ResumeCommand:
    """Lift a Stop."""

    meta: CommandMeta


Command = SetLimitsCommand | StopCommand | ResumeCommand


@dataclass(frozen=True, slots=True)
class ConfigPatch:
    """A ConfigUpdate: dotted setting paths -> raw strings, parsed by the settings model."""

    version: int
    values: Mapping[str, str]


@dataclass(frozen=True, slots=True, kw_only=True)
class HelloInfo:
    """What the agent says about itself when a session opens (the outbox adds the seqs)."""

    site_id: str
    agent_version: str
    capabilities: frozenset[str] = frozenset()  # "modbus", "mqtt", "schedules", ...
    limits: GuardLimits | None = None  # ratings and the limits enforced now
    last_schedule_version: int = 0
    config_version: int = 0


@dataclass(frozen=True, slots=True, kw_only=True)
class HeartbeatInfo:
    """The control state a Heartbeat reports."""

    setpoint_kw: float = 0.0  # applied now, after the guard
    schedule_version: int = 0
    scheduled_kw: float | None = None  # asked for by the schedule now; None = no interval


@dataclass(frozen=True, slots=True, kw_only=True)
class WelcomeInfo:
    """The plane's answer to Hello."""

    plane_version: str
    server_time: float  # Unix s
    last_stored_seq: int
    last_stored_event_seq: int
    expected_schedule_version: int
    heartbeat_interval_s: int  # 0 = agent default
    session_id: str
    max_batch_samples: int  # 0 = agent default
    max_unacked_batches: int  # 0 = agent default


@dataclass(frozen=True, slots=True, kw_only=True)
class AlarmChange:
    """A normalised device alarm appeared or went away."""

    at: float  # Unix s
    alarm: str  # EdgeLink Alarm name in lower case without prefix: "over_temperature"
    raised: bool
    message: str = ""
    source: str = ""  # "modbus", "mqtt", "rest", "simulated"
    details: Mapping[str, str] = field(default_factory=dict)


class SnapshotLike(Protocol):
    """What the converter reads of `coordinator.Snapshot`."""

    def value(self, quantity: Quantity) -> float | None: ...
    def is_stale(self, quantity: Quantity) -> bool: ...
    def source(self, quantity: Quantity) -> str | None: ...


# -- time ---------------------------------------------------------------------------------


def to_unix_ms(t: float) -> int:
    """Unix seconds -> milliseconds since the epoch, rounded to the nearest millisecond."""
    if isinstance(t, bool) or not isinstance(t, int | float) or not math.isfinite(t):
        raise ValueError(f"a time must be a finite number of Unix seconds, got {t!r}")
    return round(t * MS_PER_S)


def from_unix_ms(ms: int) -> float:
    """Milliseconds since the epoch -> Unix seconds."""
    return ms / MS_PER_S


# -- enums by name ------------------------------------------------------------------------


def _enum_value(enum: _EnumTypeWrapper[_V], prefix: str, name: str | None) -> _V:
    """Proto enum number of a lower-case domain name; 0 (UNSPECIFIED) when unknown."""
    if name:
        try:
            return enum.Value(f"{prefix}{name.upper()}")
        except ValueError:
            pass
    return enum.Value(f"{prefix}UNSPECIFIED")


def _enum_name(enum: _EnumTypeWrapper[_V], prefix: str, value: _V) -> str | None:
    """Lower-case domain name of a proto enum number; None for UNSPECIFIED or unknown."""
    try:
        full = enum.Name(value)
    except ValueError:
        return None
    name = full.removeprefix(prefix).lower()
    return None if name == "unspecified" else name


def telemetry_source(name: str | None) -> pb.TelemetrySource.ValueType:
    """A reading's source ("modbus", "mqtt:broker1", "hil") -> TelemetrySource number."""
    if not name:
        return pb.TELEMETRY_SOURCE_UNSPECIFIED
    kind = re.split(r"[:/.@ ]", name.lower(), maxsplit=1)[0]
    if kind in {"hil", "sim", "simulator", "fake"}:
        kind = "simulated"
    return _enum_value(pb.TelemetrySource, "TELEMETRY_SOURCE_", kind)


# -- telemetry ----------------------------------------------------------------------------

_OPTIONAL_QUANTITIES: tuple[Quantity, ...] = (
    Quantity.SOC_PCT,
    Quantity.ACTIVE_POWER_KW,
    Quantity.REACTIVE_POWER_KVAR,
    Quantity.VOLTAGE_V,
    Quantity.TEMPERATURE_C,
    Quantity.GRID_FREQUENCY_HZ,
    Quantity.SETPOINT_KW,
    Quantity.SOH_PCT,
    Quantity.ENERGY_CHARGED_TOTAL_KWH,
    Quantity.ENERGY_DISCHARGED_TOTAL_KWH,
)
"""Quantities whose value names a TelemetrySample `optional double` field."""


def sample_from_values(
    values: Mapping[Quantity, float],
    *,
    at: float,
    source: str | None = None,
    status: str | None = None,
    alarms: Iterable[str] = (),
    applied_setpoint_kw: float | None = None,
) -> pb.TelemetrySample:
    """A TelemetrySample (seq 0) of the values given; quantities not given stay absent.

    `status` is a BatteryStatus name ("charging", "stopped", ...); None derives it from the
    values: OFFLINE without SoC and power, else CHARGING / DISCHARGING / IDLE by the power sign
    (`IDLE_BAND_KW`). `applied_setpoint_kw` (after the guard) wins over a SETPOINT_KW read back
    from the device. Non-finite values are left absent (never sent as NaN).
    """
    sample = pb.TelemetrySample(timestamp_unix_ms=to_unix_ms(at))
    for quantity in _OPTIONAL_QUANTITIES:
        value = values.get(quantity)
        if value is not None and math.isfinite(value):
            setattr(sample, quantity.value, float(value))
    if applied_setpoint_kw is not None and math.isfinite(applied_setpoint_kw):
        sample.setpoint_kw = float(applied_setpoint_kw)
    bits = values.get(Quantity.ALARM_BITS)
    if bits is not None and math.isfinite(bits) and 0 <= bits < 2**64:
        sample.vendor_alarm_bits = int(bits)
    sample.status = (
        _enum_value(pb.BatteryStatus, "BATTERY_STATUS_", status)
        if status is not None
        else _derived_status(values)
    )
    sample.alarms.extend(
        number for number in (_enum_value(pb.Alarm, "ALARM_", a) for a in alarms) if number
    )
    sample.source = telemetry_source(source)
    return sample


def _derived_status(values: Mapping[Quantity, float]) -> pb.BatteryStatus.ValueType:
    power = values.get(Quantity.ACTIVE_POWER_KW)
    if power is None or not math.isfinite(power):
        return (
            pb.BATTERY_STATUS_OFFLINE
            if values.get(Quantity.SOC_PCT) is None
            else pb.BATTERY_STATUS_UNSPECIFIED
        )
    if power > IDLE_BAND_KW:
        return pb.BATTERY_STATUS_DISCHARGING
    if power < -IDLE_BAND_KW:
        return pb.BATTERY_STATUS_CHARGING
    return pb.BATTERY_STATUS_IDLE


def sample_from_snapshot(
    snapshot: SnapshotLike,
    *,
    at: float,
    status: str | None = None,
    alarms: Iterable[str] = (),
    applied_setpoint_kw: float | None = None,
) -> pb.TelemetrySample:
    """A TelemetrySample of the snapshot's *fresh* values; missing or stale ones stay absent.

    `at` is the snapshot's time (`Snapshot.taken_at`). The sample's source is that of the SoC
    reading, else of the power reading (the quantities the plane trades on).
    """
    values: dict[Quantity, float] = {}
    for quantity in (*_OPTIONAL_QUANTITIES, Quantity.ALARM_BITS):
        value = snapshot.value(quantity)
        if value is not None and not snapshot.is_stale(quantity):
            values[quantity] = value
    source = next(
        (
            snapshot.source(q)
            for q in (Quantity.SOC_PCT, Quantity.ACTIVE_POWER_KW)
            if q in values and snapshot.source(q)
        ),
        None,
    )
    return sample_from_values(
        values,
        at=at,
        source=source,
        status=status,
        alarms=alarms,
        applied_setpoint_kw=applied_setpoint_kw,
    )


def outbox_row(message: pb.TelemetrySample | pb.Event) -> tuple[float, bytes]:
    """(timestamp s, payload) for `Outbox.append`: the message without its seq."""
    if message.seq:
        message = type(message).FromString(message.SerializeToString())
        message.seq = 0
    return from_unix_ms(message.timestamp_unix_ms), message.SerializeToString()


def telemetry_batch_message(rows: Sequence[OutboxRow]) -> pb.AgentMessage:
    """One TelemetryBatch of outbox rows, each sample numbered with its row's seq.

    A payload that does not decode (it cannot come from this agent's own encoder; disk
    corruption) is sent as a sample carrying only seq and timestamp, so the seq sequence stays
    gap-free and the row can be acked; the error is logged.
    """
    message = pb.AgentMessage()
    samples = message.telemetry_batch.samples
    for row in rows:
        sample = samples.add()
        try:
            sample.MergeFromString(row.payload)
        except DecodeError:
            log.error(
                "outbox telemetry seq %d: payload of %d bytes does not decode; sending the "
                "seq with its timestamp only",
                row.seq,
                len(row.payload),
            )
            sample.Clear()
            sample.timestamp_unix_ms = to_unix_ms(row.timestamp)
        sample.seq = row.seq
    return message


def event_message(row: OutboxRow) -> pb.AgentMessage:
    """One Event of an outbox row, numbered with the row's seq (see telemetry_batch_message)."""
    message = pb.AgentMessage()
    event = message.event
    try:
        event.MergeFromString(row.payload)
    except DecodeError:
        log.error("outbox event seq %d: payload does not decode; sending a stub", row.seq)
        event.Clear()
        event.timestamp_unix_ms = to_unix_ms(row.timestamp)
        event.severity = pb.EVENT_SEVERITY_WARNING
        event.code = "agent.event_unreadable"
        event.message = "the agent could not read this event back from its outbox"
    event.seq = row.seq
    return message


# -- events -------------------------------------------------------------------------------

_GUARD_PRIORITY: tuple[str, ...] = (
    "temperature_stop",
    "stale_telemetry",
    "invalid_setpoint",
    "command_stop",
    "soc_floor",
    "soc_ceiling",
    "temperature_derate",
    "power_limit",
    "ramp_limit",
)
"""Which reason an Event names when several act at once (its one `guard_reason` field)."""
_GUARD_HARD_ZERO = frozenset({"temperature_stop", "stale_telemetry", "invalid_setpoint"})


def _ordered_reasons(reasons: Iterable[GuardReason]) -> list[str]:
    names = {r.value for r in reasons}
    rank = {name: i for i, name in enumerate(_GUARD_PRIORITY)}
    return sorted(names, key=lambda n: (rank.get(n, len(rank)), n))


def event_from_guard(event: GuardEvent, *, released: Iterable[GuardReason] = ()) -> pb.Event:
    """GUARD_INTERVENTION (reasons active) or GUARD_RELEASED (none); seq 0.

    The Event's single `guard_reason` is the most severe active reason (hard zeros first);
    all of them are listed in `details["reasons"]`. For a release, pass the reasons that were
    active before as `released`. A reason the contract has no value for (INVALID_SETPOINT)
    is sent as UNSPECIFIED and named in `code`.
    """
    names = _ordered_reasons(event.reasons)
    out = pb.Event(
        timestamp_unix_ms=to_unix_ms(event.at),
        message=event.message,
        requested_kw=event.requested_kw if math.isfinite(event.requested_kw) else 0.0,
        applied_kw=event.applied_kw,
    )
    if names:
        out.kind = pb.EVENT_KIND_GUARD_INTERVENTION
        out.severity = (
            pb.EVENT_SEVERITY_WARNING if names[0] in _GUARD_HARD_ZERO else pb.EVENT_SEVERITY_INFO
        )
        out.guard_reason = _enum_value(pb.GuardReason, "GUARD_REASON_", names[0])
        out.code = f"guard.{names[0]}"
        out.details["reasons"] = ",".join(names)
        if not math.isfinite(event.requested_kw):
            out.ClearField("requested_kw")
            out.details["requested_kw"] = repr(event.requested_kw)
    else:
        gone = _ordered_reasons(released)
        out.kind = pb.EVENT_KIND_GUARD_RELEASED
        out.severity = pb.EVENT_SEVERITY_INFO
        out.code = "guard.released"
        if gone:
            out.guard_reason = _enum_value(pb.GuardReason, "GUARD_REASON_", gone[0])
            out.details["reasons"] = ",".join(gone)
    return out


_CRITICAL_ALARMS = frozenset({"fire", "emergency_stop"})


def event_from_alarm(change: AlarmChange) -> pb.Event:
    """ALARM_RAISED / ALARM_CLEARED; seq 0. An alarm name the contract lacks is kept in details."""
    number = _enum_value(pb.Alarm, "ALARM_", change.alarm)
    if change.raised:
        severity = (
            pb.EVENT_SEVERITY_CRITICAL
            if change.alarm in _CRITICAL_ALARMS
            else pb.EVENT_SEVERITY_WARNING
        )
    else:
        severity = pb.EVENT_SEVERITY_INFO
    out = pb.Event(
        timestamp_unix_ms=to_unix_ms(change.at),
        kind=pb.EVENT_KIND_ALARM_RAISED if change.raised else pb.EVENT_KIND_ALARM_CLEARED,
        severity=severity,
        code=f"alarm.{change.alarm}.{'raised' if change.raised else 'cleared'}",
        message=change.message
        or f"alarm {change.alarm.replace('_', ' ')} {'raised' if change.raised else 'cleared'}",
        alarm=number,
        source=telemetry_source(change.source),
    )
    out.details.update(change.details)
    if not number:
        out.details["alarm"] = change.alarm
    return out


def agent_event(
    kind: str,
    *,
    at: float,
    message: str,
    code: str = "",
    severity: str = "info",
    schedule_version: int = 0,
    command_id: str = "",
    config_version: int = 0,
    source: str | None = None,
    details: Mapping[str, str] | None = None,
) -> pb.Event:
    """Any other Event by its EventKind name ("schedule_started", "clock_skew", ...); seq 0."""
    number = _enum_value(pb.EventKind, "EVENT_KIND_", kind)
    if not number:
        raise ValueError(f"unknown event kind {kind!r}")
    out = pb.Event(
        timestamp_unix_ms=to_unix_ms(at),
        kind=number,
        severity=_enum_value(pb.EventSeverity, "EVENT_SEVERITY_", severity),
        code=code or f"agent.{kind}",
        message=message,
        schedule_version=schedule_version,
        command_id=command_id,
        config_version=config_version,
        source=telemetry_source(source),
    )
    out.details.update(details or {})
    return out


# -- session ------------------------------------------------------------------------------


def hello_message(
    info: HelloInfo,
    *,
    telemetry: StreamStats,
    events: StreamStats,
    now: float,
) -> pb.AgentMessage:
    """Hello with the outbox position of both streams (from `Outbox.stats`)."""
    hello = pb.Hello(
        site_id=info.site_id,
        agent_version=info.agent_version,
        capabilities=sorted(
            number
            for number in (_enum_value(pb.Capability, "CAPABILITY_", c) for c in info.capabilities)
            if number
        ),
        last_schedule_version=info.last_schedule_version,
        oldest_unacked_seq=telemetry.oldest_unacked_seq,
        last_assigned_seq=telemetry.last_seq,
        oldest_unacked_event_seq=events.oldest_unacked_seq,
        last_assigned_event_seq=events.last_seq,
        agent_time_unix_ms=to_unix_ms(now),
        config_version=info.config_version,
    )
    limits = info.limits
    if limits is not None:
        hello.ratings.capacity_kwh = limits.capacity_kwh
        hello.ratings.max_charge_kw = limits.max_charge_kw
        hello.ratings.max_discharge_kw = limits.max_discharge_kw
        hello.effective_limits.min_soc_pct = limits.min_soc_pct
        hello.effective_limits.max_soc_pct = limits.max_soc_pct
        hello.effective_limits.max_charge_kw = limits.charge_kw
        hello.effective_limits.max_discharge_kw = limits.discharge_kw
    return pb.AgentMessage(hello=hello)


def welcome_from_proto(welcome: pb.Welcome) -> WelcomeInfo:
    return WelcomeInfo(
        plane_version=welcome.plane_version,
        server_time=from_unix_ms(welcome.server_time_unix_ms),
        last_stored_seq=welcome.last_stored_seq,
        last_stored_event_seq=welcome.last_stored_event_seq,
        expected_schedule_version=welcome.expected_schedule_version,
        heartbeat_interval_s=welcome.heartbeat_interval_s,
        session_id=welcome.session_id,
        max_batch_samples=welcome.max_batch_samples,
        max_unacked_batches=welcome.max_unacked_batches,
    )


def heartbeat_message(
    info: HeartbeatInfo, *, now: float, pending_samples: int, pending_events: int
) -> pb.AgentMessage:
    heartbeat = pb.Heartbeat(
        timestamp_unix_ms=to_unix_ms(now),
        setpoint_kw=info.setpoint_kw,
        schedule_version=info.schedule_version,
        outbox_pending_samples=pending_samples,
        outbox_pending_events=pending_events,
    )
    if info.scheduled_kw is not None and math.isfinite(info.scheduled_kw):
        heartbeat.scheduled_kw = info.scheduled_kw
    return pb.AgentMessage(heartbeat=heartbeat)


# -- schedules ----------------------------------------------------------------------------


def schedule_from_proto(message: pb.Schedule, *, limits: GuardLimits | None = None) -> Schedule:
    """The domain Schedule (ms -> s) of a plane Schedule, or InvalidMessageError.

    MALFORMED: missing site, version or interval length, bad validity, unaligned, overlapping
    or out-of-order intervals, non-finite power. OUT_OF_RANGE (with `limits`): an interval
    beyond the battery's *ratings*; a value merely beyond the configured limits is accepted
    and clamped by the guard (EdgeLink RejectReason).
    """
    where = f"schedule v{message.version}"
    if not message.site_id:
        raise InvalidMessageError(AckReason.MALFORMED, f"{where}: site_id is missing")
    if message.version == 0:
        raise InvalidMessageError(AckReason.MALFORMED, "schedule: version is missing (0)")
    if message.interval_minutes == 0:
        raise InvalidMessageError(AckReason.MALFORMED, f"{where}: interval_minutes is missing")
    intervals = tuple(
        ScheduleInterval(from_unix_ms(i.start_unix_ms), i.power_kw) for i in message.intervals
    )
    try:
        schedule = Schedule(
            site_id=message.site_id,
            version=message.version,
            created_at=from_unix_ms(message.created_unix_ms),
            valid_from=from_unix_ms(message.valid_from_unix_ms),
            valid_until=from_unix_ms(message.valid_until_unix_ms),
            intervals=intervals,
            interval_s=message.interval_minutes * 60,
            source=ScheduleSource.PLANE,
            origin=message.origin,
        )
    except ScheduleError as exc:
        raise InvalidMessageError(AckReason.MALFORMED, f"{where}: {exc}") from None
    if limits is not None:
        for n, interval in enumerate(schedule.intervals):
            if not -limits.max_charge_kw <= interval.power_kw <= limits.max_discharge_kw:
                raise InvalidMessageError(
                    AckReason.OUT_OF_RANGE,
                    f"{where}: interval {n} asks for {interval.power_kw:g} kW, beyond the "
                    f"battery's ratings (charge {limits.max_charge_kw:g} kW, discharge "
                    f"{limits.max_discharge_kw:g} kW)",
                )
    return schedule


def schedule_to_proto(schedule: Schedule) -> pb.Schedule:
    """The wire form of a domain Schedule (for the plane side and tests)."""
    return pb.Schedule(
        site_id=schedule.site_id,
        version=schedule.version,
        created_unix_ms=to_unix_ms(schedule.created_at),
        valid_from_unix_ms=to_unix_ms(schedule.valid_from),
        valid_until_unix_ms=to_unix_ms(schedule.valid_until),
        interval_minutes=schedule.interval_s // 60,
        intervals=[
            pb.ScheduleInterval(start_unix_ms=to_unix_ms(i.start), power_kw=i.power_kw)
            for i in schedule.intervals
        ],
        origin=schedule.origin,
    )


_STORE_REASONS: Mapping[RejectReason, AckReason] = {
    RejectReason.MALFORMED: AckReason.MALFORMED,
    RejectReason.WRONG_SITE: AckReason.WRONG_SITE,
    RejectReason.STALE_VERSION: AckReason.STALE_VERSION,
    # Same version, different content: the version is not newer than the one held, which is
    # what STALE_VERSION tells the plane ("send a new version"); the detail says the rest.
    RejectReason.VERSION_CONFLICT: AckReason.STALE_VERSION,
    RejectReason.EXPIRED: AckReason.EXPIRED,
}


def ack_from_save_result(result: SaveResult) -> Ack:
    """ScheduleStore.save's answer as an Ack: DUPLICATE is ACCEPTED again (same answer)."""
    if result.outcome in (SaveOutcome.ACCEPTED, SaveOutcome.DUPLICATE):
        return Ack.ok(result.detail)
    reason = _STORE_REASONS.get(result.reason, AckReason.INTERNAL) if result.reason else None
    return Ack.reject(reason or AckReason.INTERNAL, result.detail)


def _ack_fields(
    ack: Ack,
) -> tuple[pb.AckStatus.ValueType, pb.RejectReason.ValueType, str]:
    if ack.accepted:
        return pb.ACK_STATUS_ACCEPTED, pb.REJECT_REASON_UNSPECIFIED, ack.detail
    reason = _enum_value(pb.RejectReason, "REJECT_REASON_", ack.reason or AckReason.INTERNAL)
    return pb.ACK_STATUS_REJECTED, reason, ack.detail


def schedule_ack_message(version: int, ack: Ack) -> pb.AgentMessage:
    status, reason, detail = _ack_fields(ack)
    return pb.AgentMessage(
        schedule_ack=pb.ScheduleAck(
            version=version, status=status, reject_reason=reason, detail=detail
        )
    )


def command_ack_message(command_id: str, ack: Ack) -> pb.AgentMessage:
    status, reason, detail = _ack_fields(ack)
    return pb.AgentMessage(
        command_ack=pb.CommandAck(
            command_id=command_id, status=status, reject_reason=reason, detail=detail
        )
    )


def config_ack_message(config_version: int, ack: Ack) -> pb.AgentMessage:
    status, reason, detail = _ack_fields(ack)
    return pb.AgentMessage(
        config_ack=pb.ConfigAck(
            config_version=config_version, status=status, reject_reason=reason, detail=detail
        )
    )


def ack_from_proto(
    status: pb.AckStatus.ValueType, reject_reason: pb.RejectReason.ValueType, detail: str
) -> Ack:
    """An ack as the plane reads it (tests, and the plane side)."""
    if status == pb.ACK_STATUS_ACCEPTED:
        return Ack.ok(detail)
    name = _enum_name(pb.RejectReason, "REJECT_REASON_", reject_reason)
    return Ack.reject(AckReason(name) if name else AckReason.INTERNAL, detail)


# -- commands and config ------------------------------------------------------------------


def command_from_proto(message: pb.Command, *, now: float) -> Command:
    """The domain command, or InvalidMessageError (MALFORMED, EXPIRED, UNSUPPORTED,
    OUT_OF_RANGE)."""
    if not message.command_id:
        raise InvalidMessageError(AckReason.MALFORMED, "command: command_id is missing")
    where = f"command {message.command_id}"
    meta = CommandMeta(
        command_id=message.command_id,
        issued_at=from_unix_ms(message.issued_unix_ms),
        expires_at=from_unix_ms(message.expires_unix_ms) if message.expires_unix_ms else None,
        issued_by=message.issued_by,
    )
    if meta.expires_at is not None and meta.expires_at <= now:
        raise InvalidMessageError(
            AckReason.EXPIRED,
            f"{where}: expired {now - meta.expires_at:.1f} s before it arrived",
        )
    action = message.WhichOneof("action")
    if action == "stop":
        return StopCommand(meta=meta, reason=message.stop.reason)
    if action == "resume":
        return ResumeCommand(meta=meta)
    if action == "set_limits":
        return _set_limits(message.set_limits, meta, where)
    # A newer plane's action arrives as an unknown field: no action this agent knows.
    raise InvalidMessageError(AckReason.UNSUPPORTED, f"{where}: no action this agent supports")


def _set_limits(limits: pb.SetLimits, meta: CommandMeta, where: str) -> SetLimitsCommand:
    given: dict[str, float | None] = {
        "min_soc_pct": limits.min_soc_pct if limits.HasField("min_soc_pct") else None,
        "max_soc_pct": limits.max_soc_pct if limits.HasField("max_soc_pct") else None,
        "max_charge_kw": limits.max_charge_kw if limits.HasField("max_charge_kw") else None,
        "max_discharge_kw": (
            limits.max_discharge_kw if limits.HasField("max_discharge_kw") else None
        ),
    }
    values: dict[str, float | None] = {}
    for name, value in given.items():
        if value is not None:
            if not math.isfinite(value):
                raise InvalidMessageError(AckReason.MALFORMED, f"{where}: {name} is {value!r}")
            if name.endswith("_pct") and not 0.0 <= value <= 100.0:
                raise InvalidMessageError(
                    AckReason.OUT_OF_RANGE, f"{where}: {name} {value:g} is outside 0 to 100"
                )
            if name.endswith("_kw") and value < 0:
                raise InvalidMessageError(
                    AckReason.OUT_OF_RANGE,
                    f"{where}: {name} {value:g} is negative (limits are magnitudes)",
                )
        values[name] = value
    low, high = values["min_soc_pct"], values["max_soc_pct"]
    if low is not None and high is not None and low >= high:
        raise InvalidMessageError(
            AckReason.OUT_OF_RANGE,
            f"{where}: min_soc_pct {low:g} must be below max_soc_pct {high:g}",
        )
    return SetLimitsCommand(
        meta=meta,
        min_soc_pct=values["min_soc_pct"],
        max_soc_pct=values["max_soc_pct"],
        max_charge_kw=values["max_charge_kw"],
        max_discharge_kw=values["max_discharge_kw"],
    )


def command_to_proto(command: Command) -> pb.Command:
    """The wire form of a domain command (for the plane side and tests)."""
    meta = command.meta
    out = pb.Command(
        command_id=meta.command_id,
        issued_unix_ms=to_unix_ms(meta.issued_at),
        expires_unix_ms=to_unix_ms(meta.expires_at) if meta.expires_at is not None else 0,
        issued_by=meta.issued_by,
    )
    if isinstance(command, StopCommand):
        out.stop.reason = command.reason
    elif isinstance(command, ResumeCommand):
        out.resume.SetInParent()
    else:
        out.set_limits.SetInParent()
        for name in ("min_soc_pct", "max_soc_pct", "max_charge_kw", "max_discharge_kw"):
            value = getattr(command, name)
            if value is not None:
                setattr(out.set_limits, name, value)
    return out


def config_from_proto(message: pb.ConfigUpdate) -> ConfigPatch:
    """The patch of a ConfigUpdate, or InvalidMessageError (MALFORMED)."""
    if message.config_version == 0:
        raise InvalidMessageError(AckReason.MALFORMED, "config update: config_version is 0")
    bad = sorted(key for key in message.values if not _CONFIG_KEY.fullmatch(key))
    if bad:
        raise InvalidMessageError(
            AckReason.MALFORMED,
            f"config v{message.config_version}: keys must be dotted lower_snake_case setting "
            f"paths, got {bad}",
        )
    return ConfigPatch(version=message.config_version, values=dict(message.values))
