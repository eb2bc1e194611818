"""The EdgeLink servicer with a real grpc.aio client on loopback, on the real (SQLite) store:
the session protocol of protos/bess/v1/edgelink.proto, idempotent replay, schedule delivery."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import grpc.aio
import pytest

from bess.v1 import edgelink_pb2 as pb
from bess.v1 import edgelink_pb2_grpc as pb_grpc

from ..plane import RunningPlane, running_plane, settings_for, until_async

pytestmark = pytest.mark.integration

SITE = "grpc-site"
QUARTER_MS = 900_000


class Agent:
    """A hand-driven EdgeLink client: send what the test says, read what the plane sends."""

    def __init__(self, target: str, credentials: grpc.ChannelCredentials | None = None) -> None:
        if credentials is None:
            self.channel = grpc.aio.insecure_channel(target)
        else:
            self.channel = grpc.aio.secure_channel(target, credentials)
        self.outq: asyncio.Queue[pb.AgentMessage | None] = asyncio.Queue()
        self.call = pb_grpc.EdgeLinkStub(self.channel).Connect(self._requests())

    async def _requests(self) -> AsyncIterator[pb.AgentMessage]:
        while (message := await self.outq.get()) is not None:
            yield message

    def send(self, **payload: object) -> None:
        self.outq.put_nowait(pb.AgentMessage(**payload))  # type: ignore[arg-type]

    async def read(self, kind: str | None = None, timeout: float = 5.0) -> pb.PlaneMessage:
        async with asyncio.timeout(timeout):
            while True:
                message = await self.call.read()
                assert message is not grpc.aio.EOF, "stream ended"
                assert isinstance(message, pb.PlaneMessage)
                if kind is None or message.WhichOneof("payload") == kind:
                    return message

    async def close(self) -> None:
        self.outq.put_nowait(None)
        await self.channel.close()


def hello(site: str = SITE, *, last_schedule_version: int = 0) -> pb.Hello:
    return pb.Hello(
        site_id=site,
        agent_version="9.9.9",
        capabilities=[pb.CAPABILITY_MODBUS, pb.CAPABILITY_SCHEDULES],
        last_schedule_version=last_schedule_version,
        ratings=pb.BatteryRatings(capacity_kwh=200, max_charge_kw=100, max_discharge_kw=100),
    )


def batch(seqs: range | list[int]) -> pb.TelemetryBatch:
    now = int(time.time() * 1000)
    return pb.TelemetryBatch(
        samples=[
            pb.TelemetrySample(
                seq=s,
                timestamp_unix_ms=now - 1000 + s,
                soc_pct=55.0,
                active_power_kw=12.0,
                status=pb.BATTERY_STATUS_DISCHARGING,
                source=pb.TELEMETRY_SOURCE_SIMULATED,
            )
            for s in seqs
        ]
    )


@pytest.fixture(params=["sqlite", "postgresql"])
async def plane(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[RunningPlane]:
    """The plane on each store: the behaviour must not depend on the backend."""
    extra = {}
    if request.param == "postgresql":
        extra["database_url"] = request.getfixturevalue("postgres_schema_dsn")
    settings = settings_for(tmp_path, heartbeat_interval_s=7, **extra)
    async with running_plane(settings) as running:
        yield running


async def test_hello_must_come_first(plane: RunningPlane) -> None:
    agent = Agent(plane.grpc_target)
    agent.send(heartbeat=pb.Heartbeat())
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await agent.read()
    assert err.value.code() is grpc.StatusCode.FAILED_PRECONDITION
    await agent.close()


async def test_bad_site_id_is_refused(plane: RunningPlane) -> None:
    agent = Agent(plane.grpc_target)
    agent.send(hello=hello("bad site/../x"))
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await agent.read()
    assert err.value.code() is grpc.StatusCode.INVALID_ARGUMENT
    await agent.close()


async def test_ingest_acks_cumulatively_and_replay_changes_nothing(plane: RunningPlane) -> None:
    agent = Agent(plane.grpc_target)
    agent.send(hello=hello())
    welcome = (await agent.read("welcome")).welcome
    assert (welcome.last_stored_seq, welcome.last_stored_event_seq) == (0, 0)
    assert welcome.heartbeat_interval_s == 7 and welcome.session_id

    agent.send(telemetry_batch=batch(range(1, 6)))
    assert (await agent.read("telemetry_ack")).telemetry_ack.acked_through_seq == 5
    agent.send(telemetry_batch=batch(range(3, 9)))  # overlaps: a resend after a lost ack
    assert (await agent.read("telemetry_ack")).telemetry_ack.acked_through_seq == 8
    agent.send(telemetry_batch=batch(range(1, 9)))  # a full replay
    assert (await agent.read("telemetry_ack")).telemetry_ack.acked_through_seq == 8
    agent.send(event=pb.Event(seq=1, timestamp_unix_ms=1, kind=pb.EVENT_KIND_AGENT_STARTED))
    assert (await agent.read("event_ack")).event_ack.acked_through_seq == 1
    agent.send(heartbeat=pb.Heartbeat(timestamp_unix_ms=2, setpoint_kw=3.0))
    await until_async(lambda: _heartbeat_seen(plane), what="heartbeat stored")
    await agent.close()

    fleet = plane.app.state.fleet
    assert await asyncio.to_thread(fleet.store.sample_seqs, SITE) == list(range(1, 9))
    metrics = (await plane.client.get("/metrics")).text
    assert 'bess_plane_telemetry_samples_ingested_total{stream="edge"} 8.0' in metrics
    assert "bess_plane_telemetry_samples_duplicate_total 11.0" in metrics

    # A new session resumes after what is stored.
    again = Agent(plane.grpc_target)
    again.send(hello=hello())
    welcome = (await again.read("welcome")).welcome
    assert (welcome.last_stored_seq, welcome.last_stored_event_seq) == (8, 1)
    site = (await plane.client.get(f"/api/sites/{SITE}")).json()
    assert site["connected"] is True
    assert site["agent_version"] == "9.9.9"
    assert site["capabilities"] == ["modbus", "schedules"]
    assert site["last_heartbeat"]["setpoint_kw"] == 3.0
    assert site["last_heartbeat"]["scheduled_kw"] is None  # absent on the wire = not known
    await again.close()


async def test_a_newer_session_replaces_the_older(plane: RunningPlane) -> None:
    old = Agent(plane.grpc_target)
    old.send(hello=hello())
    await old.read("welcome")
    new = Agent(plane.grpc_target)
    new.send(hello=hello())
    await new.read("welcome")
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await old.read()
    assert err.value.code() is grpc.StatusCode.ABORTED
    new.send(telemetry_batch=batch([1]))
    assert (await new.read("telemetry_ack")).telemetry_ack.acked_through_seq == 1
    assert plane.app.state.fleet.is_connected(SITE)
    await old.close()
    await new.close()


def _schedule_body(power_kw: float) -> dict[str, object]:
    now_ms = int(time.time() * 1000)
    start = now_ms - now_ms % QUARTER_MS
    iso = lambda ms: time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(ms / 1000))  # noqa: E731
    return {
        "valid_from": iso(start),
        "valid_until": iso(start + 2 * QUARTER_MS),
        "intervals": [
            {"start": iso(start), "power_kw": power_kw},
            {"start": iso(start + QUARTER_MS), "power_kw": power_kw},
        ],
        "origin": "test",
    }


async def _status(plane: RunningPlane, version: int) -> str:
    listed = (await plane.client.get(f"/api/sites/{SITE}/schedules")).json()
    return next(s["status"] for s in listed if s["version"] == version)


async def test_schedule_is_pushed_resent_after_reconnect_until_acked(
    plane: RunningPlane,
) -> None:
    agent = Agent(plane.grpc_target)
    agent.send(hello=hello())
    await agent.read("welcome")

    created = await plane.client.post(f"/api/sites/{SITE}/schedules", json=_schedule_body(30))
    assert created.status_code == 201, created.text
    assert created.json()["version"] == 1
    pushed = (await agent.read("schedule")).schedule
    assert (pushed.version, pushed.site_id, pushed.interval_minutes) == (1, SITE, 15)
    assert [i.power_kw for i in pushed.intervals] == [30.0, 30.0]
    await until_async(lambda: _is(plane, 1, "sent"), what="status sent")
    await agent.close()  # the stream breaks before the agent acks

    # Reconnect without the schedule: the plane expects v1 and sends it right after Welcome.
    agent = Agent(plane.grpc_target)
    agent.send(hello=hello(last_schedule_version=0))
    welcome = (await agent.read("welcome")).welcome
    assert welcome.expected_schedule_version == 1
    assert (await agent.read("schedule")).schedule.version == 1
    agent.send(schedule_ack=pb.ScheduleAck(version=1, status=pb.ACK_STATUS_ACCEPTED))
    await until_async(lambda: _is(plane, 1, "acknowledged"), what="status acknowledged")

    # A newer version supersedes it; the agent rejects that one.
    await plane.client.post(f"/api/sites/{SITE}/schedules", json=_schedule_body(-500))
    assert (await agent.read("schedule")).schedule.version == 2
    assert await _status(plane, 1) == "superseded"
    agent.send(
        schedule_ack=pb.ScheduleAck(
            version=2,
            status=pb.ACK_STATUS_REJECTED,
            reject_reason=pb.REJECT_REASON_OUT_OF_RANGE,
            detail="beyond the ratings",
        )
    )
    await until_async(lambda: _is(plane, 2, "rejected"), what="status rejected")
    listed = (await plane.client.get(f"/api/sites/{SITE}/schedules")).json()
    assert listed[0]["detail"] == "out_of_range: beyond the ratings"
    await agent.close()

    # Offline: stored as pending, delivered on the next Hello; a Hello holding it acks it.
    await until_async(lambda: _offline(plane), what="site offline")
    await plane.client.post(f"/api/sites/{SITE}/schedules", json=_schedule_body(10))
    assert await _status(plane, 3) == "pending"
    agent = Agent(plane.grpc_target)
    agent.send(hello=hello(last_schedule_version=3))
    assert (await agent.read("welcome")).welcome.expected_schedule_version == 3
    await until_async(lambda: _is(plane, 3, "acknowledged"), what="ack via Hello")
    await agent.close()


async def _command(plane: RunningPlane, command_id: str) -> dict[str, object]:
    listed = (await plane.client.get(f"/api/sites/{SITE}/commands")).json()
    return next(c for c in listed if c["command_id"] == command_id)


async def _command_is(plane: RunningPlane, command_id: str, status: str) -> bool:
    return (await _command(plane, command_id))["status"] == status


async def test_commands_are_pushed_resent_after_reconnect_until_answered(
    plane: RunningPlane,
) -> None:
    agent = Agent(plane.grpc_target)
    agent.send(hello=hello())
    await agent.read("welcome")

    body = {"set_limits": {"max_soc_pct": 80, "max_charge_kw": 50}, "expires_in_s": 3600}
    created = await plane.client.post(f"/api/sites/{SITE}/commands", json=body)
    assert created.status_code == 202, created.text
    record = created.json()
    assert record["kind"] == "set_limits" and record["status"] == "pending"
    assert record["payload"] == {"max_soc_pct": 80.0, "max_charge_kw": 50.0}
    assert record["issued_by"] == "test-admin (api_key)" and record["expires_at"] is not None
    pushed = (await agent.read("command")).command
    assert pushed.command_id == record["command_id"]
    assert pushed.WhichOneof("action") == "set_limits"
    assert pushed.set_limits.max_soc_pct == 80.0 and not pushed.set_limits.HasField("min_soc_pct")
    assert pushed.expires_unix_ms > pushed.issued_unix_ms > 0
    await until_async(lambda: _command_is(plane, pushed.command_id, "sent"), what="sent")
    await agent.close()  # the stream breaks before the agent answers

    # A stop while the site is offline waits; both go out after the next Welcome, oldest first.
    await until_async(lambda: _offline(plane), what="site offline")
    stop = await plane.client.post(f"/api/sites/{SITE}/commands", json={"stop": {"reason": "t"}})
    stop_id = stop.json()["command_id"]
    assert (await _command(plane, stop_id))["status"] == "pending"
    agent = Agent(plane.grpc_target)
    agent.send(hello=hello())
    await agent.read("welcome")
    first, second = (await agent.read("command")).command, (await agent.read("command")).command
    assert (first.command_id, second.command_id) == (pushed.command_id, stop_id)
    assert second.stop.reason == "t"
    agent.send(command_ack=pb.CommandAck(command_id=stop_id, status=pb.ACK_STATUS_ACCEPTED))
    agent.send(
        command_ack=pb.CommandAck(
            command_id=pushed.command_id,
            status=pb.ACK_STATUS_REJECTED,
            reject_reason=pb.REJECT_REASON_OUT_OF_RANGE,
            detail="above the site's ceiling",
        )
    )
    await until_async(lambda: _command_is(plane, stop_id, "acknowledged"), what="acknowledged")
    await until_async(lambda: _command_is(plane, pushed.command_id, "rejected"), what="rejected")
    assert (await _command(plane, pushed.command_id))["detail"] == (
        "out_of_range: above the site's ceiling"
    )
    # A repeated or foreign ack changes nothing; answered commands are not sent again.
    agent.send(command_ack=pb.CommandAck(command_id=stop_id, status=pb.ACK_STATUS_REJECTED))
    agent.send(command_ack=pb.CommandAck(command_id="nope", status=pb.ACK_STATUS_ACCEPTED))
    agent.send(telemetry_batch=batch([1]))
    await agent.read("telemetry_ack")
    assert (await _command(plane, stop_id))["status"] == "acknowledged"
    await agent.close()
    again = Agent(plane.grpc_target)
    again.send(hello=hello())
    await again.read("welcome")
    again.send(telemetry_batch=batch([2]))
    assert (await again.read()).WhichOneof("payload") == "telemetry_ack"  # no command first
    await again.close()

    metrics = (await plane.client.get("/metrics")).text
    assert 'bess_plane_commands_total{kind="stop",status="acknowledged"} 1.0' in metrics
    assert 'bess_plane_commands_total{kind="set_limits",status="sent"} 2.0' in metrics
    assert 'bess_plane_commands_total{kind="set_limits",status="rejected"} 1.0' in metrics


@pytest.mark.parametrize(
    ("body", "problem"),
    [
        ({}, "exactly one of set_limits, stop, resume"),
        ({"stop": {}, "resume": {}}, "got stop, resume"),
        ({"set_limits": {}}, "at least one of"),
        ({"set_limits": {"min_soc_pct": 90, "max_soc_pct": 10}}, "must be below"),
        ({"set_limits": {"max_charge_kw": -1}}, "greater than or equal to 0"),
        ({"resume": {}, "expires_in_s": 0}, "greater than 0"),
        ({"stop": {"reason": "x", "force": True}}, "Extra inputs"),
    ],
)
async def test_bad_commands_are_refused(
    plane: RunningPlane, body: dict[str, object], problem: str
) -> None:
    answer = await plane.client.post(f"/api/sites/{SITE}/commands", json=body)
    assert answer.status_code == 422
    assert problem in answer.text
    unknown = await plane.client.post("/api/sites/nobody/commands", json={"resume": {}})
    assert unknown.status_code == 404
    assert (await plane.client.get("/api/sites/nobody/commands")).status_code == 404


async def _is(plane: RunningPlane, version: int, status: str) -> bool:
    return await _status(plane, version) == status


async def _offline(plane: RunningPlane) -> bool:
    return not plane.app.state.fleet.is_connected(SITE)


async def _heartbeat_seen(plane: RunningPlane) -> bool:
    site = (await plane.client.get(f"/api/sites/{SITE}")).json()
    return site["last_heartbeat"] is not None
