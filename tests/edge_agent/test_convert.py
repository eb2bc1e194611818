"""EdgeLink protobuf <-> domain: round trips, absent quantities, ms/s, rejections."""

from __future__ import annotations

import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from bess.v1 import edgelink_pb2 as pb
from edge_agent import convert
from edge_agent.convert import (
    Ack,
    AckReason,
    AlarmChange,
    CommandMeta,
    HeartbeatInfo,
    HelloInfo,
    InvalidMessageError,
    ResumeCommand,
    SetLimitsCommand,
    StopCommand,
)
from edge_agent.coordinator import Coordinator
from edge_agent.guard import GuardEvent, GuardLimits, GuardReason
from edge_agent.outbox import OutboxRow, StreamStats
from edge_agent.readings import Quantity, Reading
from edge_agent.schedule_store import (
    RejectReason,
    SaveOutcome,
    SaveResult,
    Schedule,
    ScheduleInterval,
)

T0 = 1_767_225_600.0  # 2026-01-01T00:00:00Z, aligned to 15 min
LIMITS = GuardLimits(
    capacity_kwh=200.0,
    max_charge_kw=100.0,
    max_discharge_kw=120.0,
    charge_limit_kw=80.0,
    min_soc_pct=10.0,
    max_soc_pct=95.0,
)


# -- time -------------------------------------------------------------------------------------


def test_unix_seconds_and_milliseconds() -> None:
    assert convert.to_unix_ms(T0) == 1_767_225_600_000
    assert convert.to_unix_ms(T0 + 0.0004) == 1_767_225_600_000  # rounds to the nearest ms
    assert convert.to_unix_ms(T0 + 0.0006) == 1_767_225_600_001
    assert convert.to_unix_ms(-1.5) == -1500
    assert convert.from_unix_ms(1_767_225_600_250) == T0 + 0.25
    for bad in (math.nan, math.inf, True):
        with pytest.raises(ValueError, match="finite"):
            convert.to_unix_ms(bad)


@given(st.integers(min_value=-(2**53) // 1000, max_value=2**53 // 1000))
def test_milliseconds_survive_a_round_trip_through_seconds(ms: int) -> None:
    assert convert.to_unix_ms(convert.from_unix_ms(ms)) == ms


# -- telemetry --------------------------------------------------------------------------------


def test_missing_and_stale_quantities_are_absent_not_zero() -> None:
    clock = lambda: T0  # noqa: E731
    coordinator = Coordinator(clock, stale_after_s=10.0)
    coordinator.ingest(
        [
            Reading(Quantity.SOC_PCT, 55.5, T0 - 1, "modbus"),
            Reading(Quantity.ACTIVE_POWER_KW, 0.0, T0 - 1, "modbus"),  # a measured 0
            Reading(Quantity.TEMPERATURE_C, 31.0, T0 - 60, "modbus"),  # stale
            Reading(Quantity.ALARM_BITS, 5.0, T0 - 1, "modbus"),
        ]
    )
    sample = convert.sample_from_snapshot(coordinator.snapshot(T0), at=T0)

    assert sample.seq == 0
    assert sample.timestamp_unix_ms == 1_767_225_600_000
    assert sample.soc_pct == 55.5
    assert sample.HasField("active_power_kw")
    assert sample.active_power_kw == 0.0
    assert not sample.HasField("temperature_c")  # stale: not sent as if fresh
    assert not sample.HasField("voltage_v")  # never measured
    assert not sample.HasField("setpoint_kw")
    assert sample.vendor_alarm_bits == 5
    assert sample.status == pb.BATTERY_STATUS_IDLE
    assert sample.source == pb.TELEMETRY_SOURCE_MODBUS


def test_status_is_derived_from_power_and_offline_without_readings() -> None:
    def status(values: dict[Quantity, float]) -> int:
        return convert.sample_from_values(values, at=T0).status

    assert status({Quantity.SOC_PCT: 50.0, Quantity.ACTIVE_POWER_KW: 20.0}) == (
        pb.BATTERY_STATUS_DISCHARGING
    )
    assert status({Quantity.ACTIVE_POWER_KW: -20.0}) == pb.BATTERY_STATUS_CHARGING
    assert status({Quantity.ACTIVE_POWER_KW: 0.05}) == pb.BATTERY_STATUS_IDLE
    assert status({}) == pb.BATTERY_STATUS_OFFLINE
    assert status({Quantity.SOC_PCT: 50.0}) == pb.BATTERY_STATUS_UNSPECIFIED
    given_status = convert.sample_from_values(
        {Quantity.ACTIVE_POWER_KW: 20.0}, at=T0, status="stopped"
    )
    assert given_status.status == pb.BATTERY_STATUS_STOPPED


def test_sample_options_setpoint_alarms_sources_and_non_finite_values() -> None:
    sample = convert.sample_from_values(
        {
            Quantity.SETPOINT_KW: 30.0,
            Quantity.VOLTAGE_V: math.nan,
            Quantity.ENERGY_CHARGED_TOTAL_KWH: 1234.5,
        },
        at=T0,
        alarms=["over_temperature", "no_such_alarm", "fire"],
        applied_setpoint_kw=25.0,
        source="mqtt:broker-1",
    )
    assert sample.setpoint_kw == 25.0  # after the guard wins over the device's read-back
    assert not sample.HasField("voltage_v")
    assert sample.energy_charged_total_kwh == 1234.5
    assert list(sample.alarms) == [pb.ALARM_OVER_TEMPERATURE, pb.ALARM_FIRE]
    assert sample.source == pb.TELEMETRY_SOURCE_MQTT
    assert convert.telemetry_source("hil") == pb.TELEMETRY_SOURCE_SIMULATED
    assert convert.telemetry_source("carrier-pigeon") == pb.TELEMETRY_SOURCE_UNSPECIFIED
    assert convert.telemetry_source(None) == pb.TELEMETRY_SOURCE_UNSPECIFIED


def test_outbox_rows_carry_no_seq_and_get_the_row_seq_on_the_wire() -> None:
    sample = convert.sample_from_values({Quantity.SOC_PCT: 42.0}, at=T0 + 0.5)
    sample.seq = 99  # whatever the caller left in it, the row's seq wins
    ts, payload = convert.outbox_row(sample)
    assert ts == T0 + 0.5
    assert pb.TelemetrySample.FromString(payload).seq == 0
    assert sample.seq == 99  # the caller's message is not changed

    rows = [OutboxRow(7, ts, payload), OutboxRow(8, T0 + 1, b"\xff\xff garbage")]
    batch = convert.telemetry_batch_message(rows).telemetry_batch
    assert [s.seq for s in batch.samples] == [7, 8]
    assert batch.samples[0].soc_pct == 42.0
    # An undecodable row still goes out, with its seq and timestamp, so the seqs stay gap-free.
    assert batch.samples[1].timestamp_unix_ms == convert.to_unix_ms(T0 + 1)
    assert not batch.samples[1].HasField("soc_pct")

    event = convert.agent_event("agent_started", at=T0, message="up")
    ts, payload = convert.outbox_row(event)
    wire = convert.event_message(OutboxRow(3, ts, payload)).event
    assert (wire.seq, wire.kind, wire.message) == (3, pb.EVENT_KIND_AGENT_STARTED, "up")
    stub = convert.event_message(OutboxRow(4, T0, b"\xff\xff")).event
    assert (stub.seq, stub.code) == (4, "agent.event_unreadable")


# -- events -----------------------------------------------------------------------------------


def test_guard_intervention_names_the_most_severe_reason() -> None:
    event = GuardEvent(
        at=T0,
        reasons=frozenset({GuardReason.RAMP_LIMIT, GuardReason.STALE_TELEMETRY}),
        requested_kw=50.0,
        applied_kw=0.0,
        message="discharge 50.0 kW limited to 0.0 kW: SoC reading 30.0 s old",
    )
    out = convert.event_from_guard(event)
    assert out.kind == pb.EVENT_KIND_GUARD_INTERVENTION
    assert out.guard_reason == pb.GUARD_REASON_STALE_TELEMETRY
    assert out.severity == pb.EVENT_SEVERITY_WARNING
    assert out.code == "guard.stale_telemetry"
    assert out.details["reasons"] == "stale_telemetry,ramp_limit"
    assert (out.requested_kw, out.applied_kw) == (50.0, 0.0)
    assert out.timestamp_unix_ms == convert.to_unix_ms(T0)


def test_guard_reason_unknown_to_the_contract_and_release() -> None:
    invalid = GuardEvent(
        at=T0,
        reasons=frozenset({GuardReason.INVALID_SETPOINT}),
        requested_kw=math.nan,
        applied_kw=0.0,
        message="setpoint nan kW replaced by 0.0 kW",
    )
    out = convert.event_from_guard(invalid)
    assert out.guard_reason == pb.GUARD_REASON_UNSPECIFIED
    assert out.code == "guard.invalid_setpoint"
    assert not out.HasField("requested_kw")
    assert out.details["requested_kw"] == "nan"

    released = GuardEvent(
        at=T0, reasons=frozenset(), requested_kw=10.0, applied_kw=10.0, message="released"
    )
    out = convert.event_from_guard(released, released=[GuardReason.SOC_FLOOR])
    assert out.kind == pb.EVENT_KIND_GUARD_RELEASED
    assert out.guard_reason == pb.GUARD_REASON_SOC_FLOOR
    assert out.severity == pb.EVENT_SEVERITY_INFO


def test_alarm_and_agent_events() -> None:
    raised = convert.event_from_alarm(
        AlarmChange(at=T0, alarm="fire", raised=True, source="modbus", details={"reg": "40085"})
    )
    assert (raised.kind, raised.alarm, raised.severity) == (
        pb.EVENT_KIND_ALARM_RAISED,
        pb.ALARM_FIRE,
        pb.EVENT_SEVERITY_CRITICAL,
    )
    assert raised.details["reg"] == "40085"
    assert raised.message == "alarm fire raised"
    cleared = convert.event_from_alarm(AlarmChange(at=T0, alarm="vendor_x", raised=False))
    assert cleared.alarm == pb.ALARM_UNSPECIFIED
    assert cleared.details["alarm"] == "vendor_x"
    assert cleared.kind == pb.EVENT_KIND_ALARM_CLEARED

    started = convert.agent_event(
        "schedule_started", at=T0, message="executing v3", schedule_version=3
    )
    assert (started.kind, started.schedule_version, started.code) == (
        pb.EVENT_KIND_SCHEDULE_STARTED,
        3,
        "agent.schedule_started",
    )
    with pytest.raises(ValueError, match="unknown event kind"):
        convert.agent_event("party", at=T0, message="")


# -- session ----------------------------------------------------------------------------------


def test_hello_carries_ratings_limits_and_outbox_position() -> None:
    def stats(stream: str, oldest: int, last: int) -> StreamStats:
        return StreamStats(stream, last, oldest - 1, oldest, last - oldest + 1, 0.0, 0)

    info = HelloInfo(
        site_id="s1",
        agent_version="0.1.0",
        capabilities=frozenset({"modbus", "schedules", "teleportation"}),
        limits=LIMITS,
        last_schedule_version=4,
        config_version=2,
    )
    hello = convert.hello_message(
        info, telemetry=stats("telemetry", 11, 20), events=stats("events", 3, 3), now=T0
    ).hello
    assert list(hello.capabilities) == [pb.CAPABILITY_MODBUS, pb.CAPABILITY_SCHEDULES]
    assert (hello.oldest_unacked_seq, hello.last_assigned_seq) == (11, 20)
    assert (hello.oldest_unacked_event_seq, hello.last_assigned_event_seq) == (3, 3)
    assert hello.ratings.max_discharge_kw == 120.0
    assert hello.effective_limits.max_charge_kw == 80.0  # the configured limit, not the rating
    assert hello.effective_limits.min_soc_pct == 10.0
    assert hello.agent_time_unix_ms == convert.to_unix_ms(T0)
    assert (hello.last_schedule_version, hello.config_version) == (4, 2)

    bare = convert.hello_message(
        HelloInfo(site_id="s1", agent_version="x"),
        telemetry=stats("telemetry", 1, 0),
        events=stats("events", 1, 0),
        now=T0,
    ).hello
    assert not bare.HasField("ratings")


def test_welcome_and_heartbeat() -> None:
    welcome = convert.welcome_from_proto(
        pb.Welcome(server_time_unix_ms=1_767_225_600_500, last_stored_seq=7, session_id="x")
    )
    assert welcome.server_time == T0 + 0.5
    assert welcome.last_stored_seq == 7
    beat = convert.heartbeat_message(
        HeartbeatInfo(setpoint_kw=5.0), now=T0, pending_samples=3, pending_events=1
    ).heartbeat
    assert not beat.HasField("scheduled_kw")
    assert (beat.setpoint_kw, beat.outbox_pending_samples, beat.outbox_pending_events) == (
        5.0,
        3,
        1,
    )


# -- schedules --------------------------------------------------------------------------------


def a_schedule(**changes: object) -> Schedule:
    values: dict[str, object] = {
        "site_id": "s1",
        "version": 3,
        "created_at": T0 - 60.25,
        "valid_from": T0,
        "valid_until": T0 + 3600,
        "intervals": tuple(ScheduleInterval(T0 + 900 * i, -40.0 + 10 * i) for i in range(4)),
        "origin": "optimiser-run-7",
    }
    values.update(changes)
    return Schedule(**values)  # type: ignore[arg-type]


def test_schedule_round_trip_ms_to_s() -> None:
    schedule = a_schedule()
    wire = convert.schedule_to_proto(schedule)
    assert wire.valid_from_unix_ms == 1_767_225_600_000
    assert wire.created_unix_ms == 1_767_225_539_750
    assert wire.interval_minutes == 15
    assert wire.intervals[1].start_unix_ms == 1_767_225_600_000 + 900_000
    assert convert.schedule_from_proto(wire) == schedule
    assert convert.schedule_from_proto(wire, limits=LIMITS) == schedule


@pytest.mark.parametrize(
    ("change", "reason", "words"),
    [
        (lambda s: setattr(s, "site_id", ""), AckReason.MALFORMED, "site_id"),
        (lambda s: setattr(s, "version", 0), AckReason.MALFORMED, "version"),
        (lambda s: setattr(s, "interval_minutes", 0), AckReason.MALFORMED, "interval_minutes"),
        (
            lambda s: setattr(s, "valid_until_unix_ms", s.valid_from_unix_ms),
            AckReason.MALFORMED,
            "before valid_until",
        ),
        (
            lambda s: setattr(s.intervals[1], "start_unix_ms", s.intervals[1].start_unix_ms + 1),
            AckReason.MALFORMED,
            "not aligned",
        ),
        (
            lambda s: setattr(s.intervals[2], "start_unix_ms", s.intervals[1].start_unix_ms),
            AckReason.MALFORMED,
            "overlaps",
        ),
        (
            lambda s: setattr(s.intervals[0], "power_kw", math.nan),
            AckReason.MALFORMED,
            "finite",
        ),
        (
            lambda s: setattr(s.intervals[0], "power_kw", -100.5),
            AckReason.OUT_OF_RANGE,
            "ratings",
        ),
        (
            lambda s: setattr(s.intervals[0], "power_kw", 121.0),
            AckReason.OUT_OF_RANGE,
            "ratings",
        ),
    ],
)
def test_invalid_schedules_raise_with_the_reason_to_answer(
    change: object, reason: AckReason, words: str
) -> None:
    wire = convert.schedule_to_proto(a_schedule())
    change(wire)  # type: ignore[operator]
    with pytest.raises(InvalidMessageError, match=words) as raised:
        convert.schedule_from_proto(wire, limits=LIMITS)
    assert raised.value.reason is reason
    ack = convert.schedule_ack_message(wire.version, raised.value.ack()).schedule_ack
    assert ack.status == pb.ACK_STATUS_REJECTED
    assert ack.reject_reason == pb.RejectReason.Value(f"REJECT_REASON_{reason.name}")
    assert ack.detail == raised.value.detail


def test_a_schedule_beyond_the_configured_limit_but_within_ratings_is_accepted() -> None:
    # 90 kW charge exceeds charge_limit_kw 80 but not the 100 kW rating: the guard clamps it.
    wire = convert.schedule_to_proto(a_schedule(intervals=(ScheduleInterval(T0, -90.0),)))
    assert convert.schedule_from_proto(wire, limits=LIMITS).intervals[0].power_kw == -90.0


@pytest.mark.parametrize(
    ("result", "status", "reason"),
    [
        (SaveResult(SaveOutcome.ACCEPTED), pb.ACK_STATUS_ACCEPTED, pb.REJECT_REASON_UNSPECIFIED),
        (SaveResult(SaveOutcome.DUPLICATE), pb.ACK_STATUS_ACCEPTED, pb.REJECT_REASON_UNSPECIFIED),
        (
            SaveResult(SaveOutcome.REJECTED, RejectReason.WRONG_SITE, "other site"),
            pb.ACK_STATUS_REJECTED,
            pb.REJECT_REASON_WRONG_SITE,
        ),
        (
            SaveResult(SaveOutcome.REJECTED, RejectReason.STALE_VERSION),
            pb.ACK_STATUS_REJECTED,
            pb.REJECT_REASON_STALE_VERSION,
        ),
        (
            SaveResult(SaveOutcome.REJECTED, RejectReason.VERSION_CONFLICT, "changed"),
            pb.ACK_STATUS_REJECTED,
            pb.REJECT_REASON_STALE_VERSION,
        ),
        (
            SaveResult(SaveOutcome.REJECTED, RejectReason.EXPIRED),
            pb.ACK_STATUS_REJECTED,
            pb.REJECT_REASON_EXPIRED,
        ),
        (
            SaveResult(SaveOutcome.REJECTED, RejectReason.MALFORMED),
            pb.ACK_STATUS_REJECTED,
            pb.REJECT_REASON_MALFORMED,
        ),
        (SaveResult(SaveOutcome.REJECTED), pb.ACK_STATUS_REJECTED, pb.REJECT_REASON_INTERNAL),
    ],
)
def test_save_results_map_to_schedule_acks(result: SaveResult, status: int, reason: int) -> None:
    ack = convert.schedule_ack_message(3, convert.ack_from_save_result(result)).schedule_ack
    assert (ack.version, ack.status, ack.reject_reason) == (3, status, reason)
    assert ack.detail == result.detail
    back = convert.ack_from_proto(ack.status, ack.reject_reason, ack.detail)
    assert back.accepted is result.accepted


def test_every_ack_reason_has_a_wire_value_and_back() -> None:
    for reason in AckReason:
        wire = convert.command_ack_message("c", Ack.reject(reason, "why")).command_ack
        assert wire.reject_reason != pb.REJECT_REASON_UNSPECIFIED
        assert convert.ack_from_proto(wire.status, wire.reject_reason, wire.detail) == Ack(
            False, reason, "why"
        )
    config = convert.config_ack_message(9, Ack.ok()).config_ack
    assert (config.config_version, config.status) == (9, pb.ACK_STATUS_ACCEPTED)


# -- commands and config ----------------------------------------------------------------------

META = CommandMeta(command_id="c-1", issued_at=T0, expires_at=T0 + 60, issued_by="desk")


@pytest.mark.parametrize(
    "command",
    [
        StopCommand(meta=META, reason="grid event"),
        ResumeCommand(meta=META),
        SetLimitsCommand(meta=META, max_soc_pct=80.0, max_discharge_kw=0.0),
        SetLimitsCommand(meta=CommandMeta(command_id="c-2", issued_at=T0, expires_at=None)),
    ],
)
def test_commands_round_trip(command: convert.Command) -> None:
    assert convert.command_from_proto(convert.command_to_proto(command), now=T0) == command


def test_set_limits_keeps_absent_fields_absent() -> None:
    wire = pb.Command(command_id="c", set_limits=pb.SetLimits(min_soc_pct=0.0))
    command = convert.command_from_proto(wire, now=T0)
    assert isinstance(command, SetLimitsCommand)
    assert command.min_soc_pct == 0.0  # a real 0, not "unchanged"
    assert command.max_soc_pct is None
    assert command.max_charge_kw is None
    assert command.meta.expires_at is None


@pytest.mark.parametrize(
    ("wire", "reason"),
    [
        (pb.Command(stop=pb.Stop()), AckReason.MALFORMED),
        (pb.Command(command_id="c"), AckReason.UNSUPPORTED),
        (
            pb.Command(command_id="c", expires_unix_ms=int(T0 * 1000), stop=pb.Stop()),
            AckReason.EXPIRED,
        ),
        (
            pb.Command(command_id="c", set_limits=pb.SetLimits(max_soc_pct=101.0)),
            AckReason.OUT_OF_RANGE,
        ),
        (
            pb.Command(command_id="c", set_limits=pb.SetLimits(max_charge_kw=-1.0)),
            AckReason.OUT_OF_RANGE,
        ),
        (
            pb.Command(command_id="c", set_limits=pb.SetLimits(min_soc_pct=60.0, max_soc_pct=60.0)),
            AckReason.OUT_OF_RANGE,
        ),
        (
            pb.Command(command_id="c", set_limits=pb.SetLimits(max_discharge_kw=math.inf)),
            AckReason.MALFORMED,
        ),
    ],
)
def test_invalid_commands(wire: pb.Command, reason: AckReason) -> None:
    with pytest.raises(InvalidMessageError) as raised:
        convert.command_from_proto(wire, now=T0)
    assert raised.value.reason is reason


def test_a_command_from_a_newer_plane_is_unsupported() -> None:
    # An action added later arrives as an unknown field: no oneof member is set.
    newer = pb.Command(command_id="c").SerializeToString() + b"\xea\x01\x00"  # field 29, empty
    with pytest.raises(InvalidMessageError) as raised:
        convert.command_from_proto(pb.Command.FromString(newer), now=T0)
    assert raised.value.reason is AckReason.UNSUPPORTED


def test_config_update_to_patch() -> None:
    wire = pb.ConfigUpdate(config_version=3, values={"guard.ramp_kw_per_s": "5", "a": "1"})
    patch = convert.config_from_proto(wire)
    assert patch.version == 3
    assert dict(patch.values) == {"guard.ramp_kw_per_s": "5", "a": "1"}
    with pytest.raises(InvalidMessageError, match="config_version"):
        convert.config_from_proto(pb.ConfigUpdate(values={"a": "1"}))
    with pytest.raises(InvalidMessageError, match="dotted") as raised:
        convert.config_from_proto(pb.ConfigUpdate(config_version=1, values={"Guard.X": "1"}))
    assert raised.value.reason is AckReason.MALFORMED
