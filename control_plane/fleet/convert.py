"""EdgeLink protobuf <-> fleet domain types: the only fleet module that builds or reads `bess.v1`.

Rules (the agent's `edge_agent/convert.py` states the same contract from its side):

* Time: `*_unix_ms` on the wire, aware UTC datetimes in the domain.
* proto3 `optional` fields that are absent stay None ("not measured", not 0).
* Enums become lower-case names without their prefix (BATTERY_STATUS_CHARGING -> "charging");
  a value this build does not know (sent by a newer agent) becomes "unspecified".
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from bess.v1 import edgelink_pb2 as pb

from .models import (
    Command,
    CommandAnswer,
    CommandOut,
    Event,
    EventAckOut,
    Heartbeat,
    Hello,
    Outbound,
    Ratings,
    ResumeAction,
    Schedule,
    ScheduleAnswer,
    ScheduleOut,
    SetLimitsAction,
    StopAction,
    TelemetryAckOut,
    TelemetrySample,
    Welcome,
)

if TYPE_CHECKING:
    from google.protobuf.internal.enum_type_wrapper import _EnumTypeWrapper


def to_unix_ms(moment: datetime) -> int:
    return round(moment.timestamp() * 1000)


def from_unix_ms(ms: int) -> datetime:
    return datetime.fromtimestamp(ms / 1000, UTC)


def _name(enum: _EnumTypeWrapper[Any], value: int, prefix: str) -> str:
    try:
        name = str(enum.Name(value))
    except ValueError:  # a value from a newer peer
        return "unspecified"
    return name.removeprefix(prefix).lower()


def _opt(message: Any, name: str) -> float | None:
    return float(getattr(message, name)) if message.HasField(name) else None


def hello_from_proto(message: pb.Hello) -> Hello:
    ratings = None
    if message.HasField("ratings"):
        r = message.ratings
        ratings = Ratings(r.capacity_kwh, r.max_charge_kw, r.max_discharge_kw)
    return Hello(
        site_id=message.site_id,
        agent_version=message.agent_version,
        capabilities=tuple(_name(pb.Capability, c, "CAPABILITY_") for c in message.capabilities),
        last_schedule_version=message.last_schedule_version,
        ratings=ratings,
        agent_time=from_unix_ms(message.agent_time_unix_ms) if message.agent_time_unix_ms else None,
    )


def welcome_message(welcome: Welcome) -> pb.PlaneMessage:
    return pb.PlaneMessage(
        welcome=pb.Welcome(
            plane_version=welcome.plane_version,
            server_time_unix_ms=to_unix_ms(welcome.server_time),
            last_stored_seq=welcome.last_stored_seq,
            last_stored_event_seq=welcome.last_stored_event_seq,
            expected_schedule_version=welcome.expected_schedule_version,
            heartbeat_interval_s=welcome.heartbeat_interval_s,
            session_id=welcome.session_id,
        )
    )


def sample_from_proto(s: pb.TelemetrySample) -> TelemetrySample:
    return TelemetrySample(
        seq=s.seq,
        timestamp=from_unix_ms(s.timestamp_unix_ms),
        soc_pct=_opt(s, "soc_pct"),
        active_power_kw=_opt(s, "active_power_kw"),
        reactive_power_kvar=_opt(s, "reactive_power_kvar"),
        voltage_v=_opt(s, "voltage_v"),
        temperature_c=_opt(s, "temperature_c"),
        grid_frequency_hz=_opt(s, "grid_frequency_hz"),
        status=_name(pb.BatteryStatus, s.status, "BATTERY_STATUS_"),
        alarms=tuple(_name(pb.Alarm, a, "ALARM_") for a in s.alarms),
        source=_name(pb.TelemetrySource, s.source, "TELEMETRY_SOURCE_"),
        setpoint_kw=_opt(s, "setpoint_kw"),
        soh_pct=_opt(s, "soh_pct"),
        vendor_alarm_bits=s.vendor_alarm_bits if s.HasField("vendor_alarm_bits") else None,
        energy_charged_total_kwh=_opt(s, "energy_charged_total_kwh"),
        energy_discharged_total_kwh=_opt(s, "energy_discharged_total_kwh"),
    )


def samples_from_proto(batch: pb.TelemetryBatch) -> list[TelemetrySample]:
    return [sample_from_proto(s) for s in batch.samples]


def event_from_proto(e: pb.Event) -> Event:
    return Event(
        seq=e.seq,
        timestamp=from_unix_ms(e.timestamp_unix_ms),
        severity=_name(pb.EventSeverity, e.severity, "EVENT_SEVERITY_"),
        kind=_name(pb.EventKind, e.kind, "EVENT_KIND_"),
        code=e.code,
        message=e.message,
        requested_kw=_opt(e, "requested_kw"),
        applied_kw=_opt(e, "applied_kw"),
        guard_reason=_name(pb.GuardReason, e.guard_reason, "GUARD_REASON_"),
        alarm=_name(pb.Alarm, e.alarm, "ALARM_"),
        source=_name(pb.TelemetrySource, e.source, "TELEMETRY_SOURCE_"),
        schedule_version=e.schedule_version,
        command_id=e.command_id,
        config_version=e.config_version,
        details=dict(e.details),
    )


def heartbeat_from_proto(h: pb.Heartbeat) -> Heartbeat:
    return Heartbeat(
        timestamp=from_unix_ms(h.timestamp_unix_ms),
        setpoint_kw=h.setpoint_kw,
        schedule_version=h.schedule_version,
        outbox_pending_samples=h.outbox_pending_samples,
        outbox_pending_events=h.outbox_pending_events,
        scheduled_kw=_opt(h, "scheduled_kw"),
    )


def schedule_answer_from_proto(ack: pb.ScheduleAck) -> ScheduleAnswer:
    return ScheduleAnswer(
        version=ack.version,
        accepted=ack.status == pb.ACK_STATUS_ACCEPTED,
        reason=_name(pb.RejectReason, ack.reject_reason, "REJECT_REASON_"),
        detail=ack.detail,
    )


def schedule_to_proto(schedule: Schedule) -> pb.Schedule:
    return pb.Schedule(
        site_id=schedule.site_id,
        version=schedule.version,
        created_unix_ms=to_unix_ms(schedule.created_at),
        valid_from_unix_ms=to_unix_ms(schedule.valid_from),
        valid_until_unix_ms=to_unix_ms(schedule.valid_until),
        interval_minutes=schedule.interval_minutes,
        intervals=[
            pb.ScheduleInterval(start_unix_ms=to_unix_ms(i.start), power_kw=i.power_kw)
            for i in schedule.intervals
        ],
        origin=schedule.origin,
    )


def command_to_proto(command: Command) -> pb.Command:
    out = pb.Command(
        command_id=command.command_id,
        issued_unix_ms=to_unix_ms(command.issued_at),
        expires_unix_ms=to_unix_ms(command.expires_at) if command.expires_at else 0,
        issued_by=command.issued_by,
    )
    action = command.action
    if isinstance(action, SetLimitsAction):
        out.set_limits.SetInParent()
        for name in ("min_soc_pct", "max_soc_pct", "max_charge_kw", "max_discharge_kw"):
            value = getattr(action, name)
            if value is not None:
                setattr(out.set_limits, name, value)
    elif isinstance(action, StopAction):
        out.stop.reason = action.reason
    elif isinstance(action, ResumeAction):
        out.resume.SetInParent()
    return out


def command_answer_from_proto(ack: pb.CommandAck) -> CommandAnswer:
    return CommandAnswer(
        command_id=ack.command_id,
        accepted=ack.status == pb.ACK_STATUS_ACCEPTED,
        reason=_name(pb.RejectReason, ack.reject_reason, "REJECT_REASON_"),
        detail=ack.detail,
    )


def outbound_message(item: Outbound) -> pb.PlaneMessage | None:
    """The wire message of a session's outbound item; None for a SessionEnd (a status)."""
    if isinstance(item, TelemetryAckOut):
        return pb.PlaneMessage(
            telemetry_ack=pb.TelemetryAck(acked_through_seq=item.acked_through_seq)
        )
    if isinstance(item, EventAckOut):
        return pb.PlaneMessage(event_ack=pb.EventAck(acked_through_seq=item.acked_through_seq))
    if isinstance(item, ScheduleOut):
        return pb.PlaneMessage(schedule=schedule_to_proto(item.schedule))
    if isinstance(item, CommandOut):
        return pb.PlaneMessage(command=command_to_proto(item.command))
    return None
