"""The EdgeLink session over a real grpc.aio server on loopback: hello, batches, cumulative acks."""

import asyncio
from collections.abc import AsyncIterator, Iterable
from dataclasses import dataclass, field

import grpc
import pytest

from bess.v1 import edgelink_pb2 as pb
from bess.v1 import edgelink_pb2_grpc as pb_grpc

pytestmark = pytest.mark.integration

SITE = "site-test-001"


@dataclass
class TinyPlane(pb_grpc.EdgeLinkServicer):
    """Just enough of a control plane: Welcome on Hello, idempotent ingest, cumulative acks."""

    stored: dict[str, dict[int, pb.TelemetrySample]] = field(default_factory=dict)
    duplicates: int = 0

    async def Connect(  # name fixed by the generated servicer
        self,
        request_iterator: AsyncIterator[pb.AgentMessage],
        context: grpc.aio.ServicerContext[pb.AgentMessage, pb.PlaneMessage],
    ) -> AsyncIterator[pb.PlaneMessage]:
        site_id = ""
        async for message in request_iterator:
            kind = message.WhichOneof("payload")
            if not site_id and kind != "hello":
                await context.abort(grpc.StatusCode.FAILED_PRECONDITION, "send Hello first")
            if kind == "hello":
                site_id = message.hello.site_id
                samples = self.stored.setdefault(site_id, {})
                yield pb.PlaneMessage(
                    welcome=pb.Welcome(
                        plane_version="test",
                        server_time_unix_ms=1_700_000_000_000,
                        last_stored_seq=max(samples, default=0),
                        heartbeat_interval_s=10,
                    )
                )
            elif kind == "telemetry_batch":
                samples = self.stored[site_id]
                for sample in message.telemetry_batch.samples:
                    if sample.seq in samples:
                        self.duplicates += 1
                    else:
                        samples[sample.seq] = sample
                yield pb.PlaneMessage(
                    telemetry_ack=pb.TelemetryAck(acked_through_seq=max(samples, default=0))
                )


@pytest.fixture
async def plane() -> AsyncIterator[tuple[str, TinyPlane]]:
    servicer = TinyPlane()
    server = grpc.aio.server()
    pb_grpc.add_EdgeLinkServicer_to_server(servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        yield f"127.0.0.1:{port}", servicer
    finally:
        await server.stop(grace=0.5)


def _hello(oldest_unacked_seq: int = 0) -> pb.AgentMessage:
    return pb.AgentMessage(
        hello=pb.Hello(
            site_id=SITE,
            agent_version="0.1.0",
            capabilities=[pb.CAPABILITY_MODBUS, pb.CAPABILITY_SCHEDULES],
            oldest_unacked_seq=oldest_unacked_seq,
            ratings=pb.BatteryRatings(capacity_kwh=200, max_charge_kw=100, max_discharge_kw=100),
        )
    )


def _batch(seqs: Iterable[int]) -> pb.AgentMessage:
    samples = [
        pb.TelemetrySample(
            seq=seq,
            timestamp_unix_ms=1_700_000_000_000 + 1000 * seq,
            soc_pct=50.0,
            active_power_kw=-25.0,
            status=pb.BATTERY_STATUS_CHARGING,
            source=pb.TELEMETRY_SOURCE_SIMULATED,
        )
        for seq in seqs
    ]
    return pb.AgentMessage(telemetry_batch=pb.TelemetryBatch(samples=samples))


async def _read(
    call: grpc.aio.StreamStreamCall[pb.AgentMessage, pb.PlaneMessage],
) -> pb.PlaneMessage:
    message = await call.read()
    assert message is not grpc.aio.EOF, "stream ended early"
    assert isinstance(message, pb.PlaneMessage)
    return message


async def test_hello_then_batches_are_acked_cumulatively(plane: tuple[str, TinyPlane]) -> None:
    target, servicer = plane
    async with asyncio.timeout(5), grpc.aio.insecure_channel(target) as channel:
        call = pb_grpc.EdgeLinkStub(channel).Connect()

        await call.write(_hello())
        welcome = await _read(call)
        assert welcome.WhichOneof("payload") == "welcome"
        assert welcome.welcome.last_stored_seq == 0

        # Pipelined: all three batches go out before any ack is read.
        for first in (1, 4, 7):
            await call.write(_batch(range(first, first + 3)))
        acks = [(await _read(call)).telemetry_ack.acked_through_seq for _ in range(3)]
        assert acks == [3, 6, 9]

        await call.done_writing()
        assert await call.read() is grpc.aio.EOF
        assert await call.code() == grpc.StatusCode.OK
    assert sorted(servicer.stored[SITE]) == list(range(1, 10))


async def test_agent_resumes_by_seq_after_reconnect(plane: tuple[str, TinyPlane]) -> None:
    target, servicer = plane
    async with asyncio.timeout(5), grpc.aio.insecure_channel(target) as channel:
        stub = pb_grpc.EdgeLinkStub(channel)

        first = stub.Connect()
        await first.write(_hello())
        await _read(first)
        await first.write(_batch([1, 2, 3]))
        assert (await _read(first)).telemetry_ack.acked_through_seq == 3
        first.cancel()  # the link drops; the agent still holds 4..6 in its outbox

        second = stub.Connect()
        await second.write(_hello(oldest_unacked_seq=2))  # the ack of 2..3 was "lost"
        welcome = (await _read(second)).welcome
        assert welcome.last_stored_seq == 3
        # The agent resends from its oldest unacked row; the plane must not store twice.
        await second.write(_batch([2, 3, 4, 5, 6]))
        assert (await _read(second)).telemetry_ack.acked_through_seq == 6
        await second.done_writing()
        assert await second.read() is grpc.aio.EOF

    assert sorted(servicer.stored[SITE]) == [1, 2, 3, 4, 5, 6]
    assert servicer.duplicates == 2


async def test_first_message_must_be_hello(plane: tuple[str, TinyPlane]) -> None:
    target, _ = plane
    async with asyncio.timeout(5), grpc.aio.insecure_channel(target) as channel:
        call = pb_grpc.EdgeLinkStub(channel).Connect()
        await call.write(_batch([1]))
        with pytest.raises(grpc.aio.AioRpcError) as error:
            await call.read()
        assert error.value.code() == grpc.StatusCode.FAILED_PRECONDITION
