"""The whole agent process against real components on loopback: the hil Modbus server (an
accelerated simulated battery), a real EdgeLink gRPC server (the fake plane) and the agent's
own Prometheus endpoint. This is what `bess-edge run` does, minus the CLI."""

from __future__ import annotations

import asyncio
import math
import time
import urllib.request
from pathlib import Path

import pytest

from bess.v1 import edgelink_pb2 as pb
from edge_agent.agent import Agent
from edge_agent.config import SiteConfig
from hil.clock import AcceleratedClock
from hil.modbus_server import ModbusBatteryServer
from hil.model import BatterySpec
from hil.regmap import load_register_map
from hil.sim import Simulator

from .fake_plane import FakePlane

pytestmark = pytest.mark.integration

SITE = "e2e-site"


def _config(tmp_path: Path, modbus_port: int, plane: str, **overrides: object) -> SiteConfig:
    raw: dict[str, object] = {
        "site_id": SITE,
        "battery": {"capacity_kwh": 200, "max_charge_kw": 100, "max_discharge_kw": 100},
        "sources": {
            "modbus": {
                "host": "127.0.0.1",
                "port": modbus_port,
                "preset": "generic",
                "poll_interval_s": 0.05,
                "request_timeout_s": 0.5,
            },
        },
        "executor": {"tick_interval_s": 0.05, "refresh_interval_s": 0.5},
        "telemetry": {"interval_s": 0.05},
        "uplink": {"target": plane, "batch_max_delay_s": 0.02, "connect_timeout_s": 2},
        "storage": {"data_dir": str(tmp_path / "data"), "synchronous": "NORMAL"},
        "metrics": {"port": 0},
    }
    raw.update(overrides)
    return SiteConfig.model_validate(raw)


async def _until(predicate, *, timeout: float = 20.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        await asyncio.sleep(0.01)


def _quarter_schedule(version: int, power_kw: float) -> pb.Schedule:
    now_ms = int(time.time() * 1000)
    start = now_ms - now_ms % 900_000
    return pb.Schedule(
        site_id=SITE,
        version=version,
        created_unix_ms=now_ms,
        valid_from_unix_ms=start,
        valid_until_unix_ms=start + 2 * 900_000,
        interval_minutes=15,
        intervals=[
            pb.ScheduleInterval(start_unix_ms=start, power_kw=power_kw),
            pb.ScheduleInterval(start_unix_ms=start + 900_000, power_kw=power_kw),
        ],
        origin="test",
    )


@pytest.fixture
async def battery():
    # 60x: a second of test is a simulated minute, so SoC moves visibly; the revert timeout is
    # in simulated seconds (600 s = 10 s real), longer than the agent's refresh.
    sim = Simulator(BatterySpec(revert_timeout_s=600.0), AcceleratedClock(speed=60.0), soc_pct=50.0)
    async with ModbusBatteryServer(sim, load_register_map("generic"), port=0) as server:
        yield sim, server


async def test_agent_streams_executes_schedules_obeys_stop_and_leaves_battery_idle(
    tmp_path: Path, battery
) -> None:
    sim, server = battery
    async with FakePlane() as plane:
        config = _config(tmp_path, server.port, plane.address)
        async with Agent(config) as agent:
            # Telemetry from the battery reaches the plane, in order, with the right SoC.
            await _until(lambda: len(plane.stored_seqs(SITE)) >= 5, what="5 samples")
            seqs = plane.stored_seqs(SITE)
            assert seqs == list(range(1, len(seqs) + 1))
            last = plane.sample(SITE, seqs[-1])
            assert last.HasField("soc_pct")
            assert math.isclose(last.soc_pct, sim.soc_pct, abs_tol=0.5)

            # A schedule from the plane is acknowledged and drives the battery.
            await plane.push_schedule(SITE, _quarter_schedule(1, 40.0))
            await _until(lambda: plane.schedule_acks, what="schedule ack")
            assert plane.schedule_acks[0][1].status == pb.ACK_STATUS_ACCEPTED
            await _until(lambda: sim.state.setpoint_kw == pytest.approx(40.0), what="setpoint")
            soc_before = sim.soc_pct
            await _until(lambda: sim.soc_pct < soc_before - 0.2, what="discharge")

            # Metrics on the agent's own port.
            assert agent.metrics_port
            body = await asyncio.to_thread(
                lambda: (
                    urllib.request.urlopen(
                        f"http://127.0.0.1:{agent.metrics_port}/metrics", timeout=5
                    )
                    .read()
                    .decode()
                )
            )
            assert "bess_edge_soc_percent" in body
            assert 'bess_edge_uplink_state{state="connected"} 1.0' in body

            # STOP from the plane: 0 kW now, acknowledged, and remembered across a restart.
            await plane.push_command(
                SITE,
                pb.Command(
                    command_id="c-1",
                    issued_unix_ms=int(time.time() * 1000),
                    stop=pb.Stop(reason="test stop"),
                ),
            )
            await _until(lambda: plane.command_acks, what="command ack")
            assert plane.command_acks[0][1].status == pb.ACK_STATUS_ACCEPTED
            await _until(lambda: sim.state.setpoint_kw == 0.0, what="stop -> 0 kW")

        # Left the agent: the battery was set to 0 kW and the plane heard it stop.
        assert sim.state.setpoint_kw == 0.0
        await plane.wait_for(
            lambda: any(
                plane.event(SITE, s).kind == pb.EVENT_KIND_AGENT_STOPPING
                for s in plane.stored_event_seqs(SITE)
            ),
            what="agent_stopping event",
        )
        kinds = {plane.event(SITE, s).kind for s in plane.stored_event_seqs(SITE)}
        assert pb.EVENT_KIND_AGENT_STARTED in kinds
        assert pb.EVENT_KIND_GUARD_INTERVENTION in kinds  # the stop order clamped the setpoint

        # Restarted: still stopped (the order survives), the schedule is still held.
        async with Agent(config) as agent:
            await _until(lambda: agent.executor.status().at is not None, what="first tick")
            status = agent.executor.status()
            assert status.applied_kw == 0.0
            assert agent.guard.stop_reason == "test stop"
            assert status.schedule_version == 1


async def test_agent_runs_with_the_plane_unreachable_and_catches_up(
    tmp_path: Path, battery
) -> None:
    _sim, server = battery
    plane = FakePlane()
    await plane.start()
    address = plane.address
    await plane.stop()  # reserved its port, now nothing listens there
    config = _config(tmp_path, server.port, address)
    async with Agent(config) as agent:
        await _until(lambda: agent.executor.status().at is not None, what="first tick")
        await asyncio.sleep(0.3)  # the agent samples every 0.05 s into its outbox meanwhile
        stats = await agent.outbox.stats()
        assert stats["telemetry"].depth > 0  # buffered, not lost
        await plane.start()  # same port
        await plane.wait_for(lambda: len(plane.stored_seqs(SITE)) >= 5, what="catch-up")
        seqs = plane.stored_seqs(SITE)
        assert seqs == list(range(1, len(seqs) + 1)), "every seq once, in order"
    await plane.stop()
    plane.close()
