"""Every EdgeLink message survives the wire, and the contract keeps its conventions.

The messages are filled generically from their descriptors, so a field added to the .proto is
covered without touching this file.
"""

import re
from collections.abc import Iterator

import pytest
from google.protobuf import descriptor_pb2, json_format, message_factory
from google.protobuf.descriptor import Descriptor, EnumDescriptor, FieldDescriptor
from google.protobuf.message import Message

from bess.v1 import edgelink_pb2

FILE = edgelink_pb2.DESCRIPTOR
MAX_DEPTH = 6

# Units a floating-point quantity may carry in its name (STYLE.md: units in names).
UNIT_SUFFIXES = ("_kw", "_kvar", "_kwh", "_pct", "_c", "_v", "_hz", "_a")


def _messages(descriptors: Iterator[Descriptor] | list[Descriptor]) -> Iterator[Descriptor]:
    for d in descriptors:
        if d.GetOptions().map_entry:
            continue  # covered through the map field of its parent
        yield d
        yield from _messages(list(d.nested_types))


def _enums() -> Iterator[EnumDescriptor]:
    yield from FILE.enum_types_by_name.values()
    for d in _messages(list(FILE.message_types_by_name.values())):
        yield from d.enum_types


ALL_MESSAGES = list(_messages(list(FILE.message_types_by_name.values())))
ALL_ENUMS = list(_enums())
ALL_FIELDS = [f for d in ALL_MESSAGES for f in d.fields]


def _real_oneofs(d: Descriptor) -> list[list[FieldDescriptor]]:
    """Return the members of each oneof, leaving out the synthetic ones of proto3 `optional`."""
    proto = descriptor_pb2.DescriptorProto()
    d.CopyToProto(proto)
    synthetic = {f.oneof_index for f in proto.field if f.proto3_optional}
    return [list(o.fields) for i, o in enumerate(d.oneofs) if i not in synthetic]


def _scalar(field: FieldDescriptor, n: int) -> object:
    """Return a non-default value for a scalar or enum field; n=1,2,... gives distinct values."""
    t = field.type
    if t in (FieldDescriptor.TYPE_DOUBLE, FieldDescriptor.TYPE_FLOAT):
        return n + 0.5  # exact in float32 too
    if t in (
        FieldDescriptor.TYPE_INT32,
        FieldDescriptor.TYPE_SINT32,
        FieldDescriptor.TYPE_SFIXED32,
    ):
        return -7 * n
    if t in (
        FieldDescriptor.TYPE_INT64,
        FieldDescriptor.TYPE_SINT64,
        FieldDescriptor.TYPE_SFIXED64,
    ):
        return -(2**40) - n
    if t in (FieldDescriptor.TYPE_UINT32, FieldDescriptor.TYPE_FIXED32):
        return 2**32 - n
    if t in (FieldDescriptor.TYPE_UINT64, FieldDescriptor.TYPE_FIXED64):
        return 2**63 + n  # high bit set: catches a signed/unsigned mix-up
    if t == FieldDescriptor.TYPE_BOOL:
        return True
    if t == FieldDescriptor.TYPE_STRING:
        return f"{field.name}-{n}-ü"
    if t == FieldDescriptor.TYPE_BYTES:
        return bytes([n, 0, 255])
    if t == FieldDescriptor.TYPE_ENUM:
        nonzero = [v.number for v in field.enum_type.values if v.number != 0]
        return nonzero[-n % len(nonzero)]
    raise AssertionError(f"no sample value for {field.full_name} of type {t}")


def _variants(d: Descriptor) -> int:
    """How many fillings it takes to set each oneof member at least once."""
    return max((len(members) for members in _real_oneofs(d)), default=1)


def _fill(msg: Message, variant: int = 0, depth: int = 0) -> set[str]:
    """Set every field of msg to a non-default value; return the names that must be present.

    Of each oneof, member number `variant` (modulo its size) is set.
    """
    assert depth < MAX_DEPTH, f"{msg.DESCRIPTOR.full_name} nests too deep to fill"
    d = msg.DESCRIPTOR
    skipped = set()
    for members in _real_oneofs(d):
        chosen = members[variant % len(members)]
        skipped |= {f.name for f in members if f is not chosen}
    expected = set()
    for field in d.fields:
        if field.name in skipped:
            continue
        expected.add(field.name)
        value = getattr(msg, field.name)
        if field.message_type is not None and field.message_type.GetOptions().map_entry:
            key_field = field.message_type.fields_by_name["key"]
            value_field = field.message_type.fields_by_name["value"]
            for n in (1, 2):
                key = _scalar(key_field, n)
                if value_field.message_type is not None:
                    _fill(value[key], 0, depth + 1)
                else:
                    value[key] = _scalar(value_field, n)
        elif field.is_repeated:
            for n in (1, 2):
                if field.message_type is not None:
                    _fill(value.add(), n, depth + 1)
                else:
                    value.append(_scalar(field, n))
        elif field.message_type is not None:
            _fill(value, 0, depth + 1)
            value.SetInParent()  # an empty message (Resume) is still present
        else:
            setattr(msg, field.name, _scalar(field, 1))
    return expected


@pytest.mark.parametrize("descriptor", ALL_MESSAGES, ids=lambda d: d.full_name)
def test_message_roundtrips_with_every_field_set(descriptor: Descriptor) -> None:
    cls = message_factory.GetMessageClass(descriptor)
    for variant in range(_variants(descriptor)):
        original = cls()
        expected = _fill(original, variant)
        present = {f.name for f, _ in original.ListFields()}
        assert present == expected, f"{descriptor.full_name}: fields left at default"

        wire = original.SerializeToString(deterministic=True)
        parsed = cls.FromString(wire)
        assert parsed == original
        assert parsed.SerializeToString(deterministic=True) == wire

        # The JSON mapping is what grpcurl, logs and debugging tools show.
        from_json = json_format.Parse(json_format.MessageToJson(original), cls())
        assert from_json == original


def test_the_file_defines_the_whole_contract() -> None:
    names = {d.name for d in ALL_MESSAGES}
    assert {
        "AgentMessage",
        "PlaneMessage",
        "Hello",
        "Welcome",
        "TelemetryBatch",
        "TelemetrySample",
        "TelemetryAck",
        "Event",
        "EventAck",
        "Heartbeat",
        "Schedule",
        "ScheduleInterval",
        "ScheduleAck",
        "Command",
        "CommandAck",
        "ConfigUpdate",
        "ConfigAck",
    } <= names
    assert FILE.package == "bess.v1"


@pytest.mark.parametrize("enum", ALL_ENUMS, ids=lambda e: e.full_name)
def test_enum_zero_is_unspecified_and_values_are_prefixed(enum: EnumDescriptor) -> None:
    assert enum.values_by_number[0].name.endswith("_UNSPECIFIED")
    prefix = re.sub(r"(?<!^)(?=[A-Z])", "_", enum.name).upper() + "_"
    unprefixed = [v.name for v in enum.values if not v.name.startswith(prefix)]
    assert not unprefixed, f"{enum.name} values must start with {prefix}"


def _payloads(message: type[Message], oneof: str) -> dict[str, str]:
    d = message.DESCRIPTOR
    return {f.name: f.message_type.name for f in d.oneofs_by_name[oneof].fields}


def test_agent_message_carries_exactly_the_agent_payloads() -> None:
    assert _payloads(edgelink_pb2.AgentMessage, "payload") == {
        "hello": "Hello",
        "telemetry_batch": "TelemetryBatch",
        "event": "Event",
        "heartbeat": "Heartbeat",
        "schedule_ack": "ScheduleAck",
        "command_ack": "CommandAck",
        "config_ack": "ConfigAck",
    }
    # The envelope is only the oneof: anything else would be a payload nobody dispatches on.
    assert len(edgelink_pb2.AgentMessage.DESCRIPTOR.fields) == 7


def test_plane_message_carries_exactly_the_plane_payloads() -> None:
    assert _payloads(edgelink_pb2.PlaneMessage, "payload") == {
        "welcome": "Welcome",
        "telemetry_ack": "TelemetryAck",
        "event_ack": "EventAck",
        "schedule": "Schedule",
        "command": "Command",
        "config_update": "ConfigUpdate",
    }
    assert len(edgelink_pb2.PlaneMessage.DESCRIPTOR.fields) == 6


def test_command_actions() -> None:
    assert _payloads(edgelink_pb2.Command, "action") == {
        "set_limits": "SetLimits",
        "stop": "Stop",
        "resume": "Resume",
    }
    command = edgelink_pb2.PlaneMessage(
        command=edgelink_pb2.Command(command_id="c-1", resume=edgelink_pb2.Resume())
    )
    parsed = edgelink_pb2.PlaneMessage.FromString(command.SerializeToString())
    assert parsed.WhichOneof("payload") == "command"
    assert parsed.command.WhichOneof("action") == "resume"


def test_connect_is_one_bidirectional_stream() -> None:
    service = FILE.services_by_name["EdgeLink"]
    assert [m.name for m in service.methods] == ["Connect"]
    connect = service.methods_by_name["Connect"]
    assert connect.client_streaming
    assert connect.server_streaming
    assert connect.input_type.name == "AgentMessage"
    assert connect.output_type.name == "PlaneMessage"


@pytest.mark.parametrize(
    "field",
    [f for f in ALL_FIELDS if f.type in (FieldDescriptor.TYPE_DOUBLE, FieldDescriptor.TYPE_FLOAT)],
    ids=lambda f: f.full_name,
)
def test_quantities_name_their_unit(field: FieldDescriptor) -> None:
    assert field.name.endswith(UNIT_SUFFIXES), f"{field.full_name} needs a unit suffix"


@pytest.mark.parametrize(
    "field",
    [f for f in ALL_FIELDS if f.type == FieldDescriptor.TYPE_INT64],
    ids=lambda f: f.full_name,
)
def test_signed_64_bit_fields_are_instants(field: FieldDescriptor) -> None:
    # Counters and versions are uint64; int64 is kept for UTC instants in milliseconds.
    assert field.name.endswith("_unix_ms"), f"{field.full_name}: instants end in _unix_ms"


def test_sequence_numbers_and_versions_are_unsigned_64_bit() -> None:
    numbered = [
        f
        for f in ALL_FIELDS
        if f.name in ("seq", "version")
        or f.name.endswith(("_seq", "schedule_version", "config_version"))
    ]
    assert len(numbered) > 10
    wrong = [f.full_name for f in numbered if f.type != FieldDescriptor.TYPE_UINT64]
    assert not wrong, f"sequence numbers and versions must be uint64: {wrong}"
