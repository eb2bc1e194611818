"""End to end on loopback: hil battery (Modbus TCP) -> edge agent -> control plane (gRPC +
HTTP served by uvicorn), with the plane restarted mid-stream; and the same over EdgeLink mTLS
with commands posted to the HTTP API."""

from __future__ import annotations

import math
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from control_plane.pki import CertificateAuthority, write_secret
from edge_agent.agent import Agent
from edge_agent.config import SiteConfig
from hil.clock import AcceleratedClock
from hil.modbus_server import ModbusBatteryServer
from hil.model import BatterySpec
from hil.regmap import load_register_map
from hil.sim import Simulator

from .plane import RunningPlane, running_plane, settings_for, until, until_async

pytestmark = pytest.mark.integration

SITE = "e2e-site"
QUARTER_S = 900


def _agent_config(
    tmp_path: Path, modbus_port: int, plane: str, tls: dict[str, object] | None = None
) -> SiteConfig:
    return SiteConfig.model_validate(
        {
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
            "uplink": {
                "target": plane,
                "batch_max_delay_s": 0.02,
                "connect_timeout_s": 2,
                "backoff_initial_s": 0.05,
                "backoff_max_s": 0.3,
                **({"tls": tls} if tls else {}),
            },
            "storage": {"data_dir": str(tmp_path / "agent"), "synchronous": "NORMAL"},
            "metrics": {"enabled": False},
        }
    )


@pytest.fixture
async def battery() -> AsyncIterator[tuple[Simulator, ModbusBatteryServer]]:
    sim = Simulator(BatterySpec(revert_timeout_s=600.0), AcceleratedClock(speed=60.0), soc_pct=50.0)
    async with ModbusBatteryServer(sim, load_register_map("generic"), port=0) as server:
        yield sim, server


def _schedule(power_kw: float) -> dict[str, object]:
    start = int(time.time()) // QUARTER_S * QUARTER_S
    iso = lambda s: time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(s))  # noqa: E731
    return {
        "valid_from": iso(start),
        "valid_until": iso(start + 2 * QUARTER_S),
        "intervals": [
            {"start": iso(start), "power_kw": power_kw},
            {"start": iso(start + QUARTER_S), "power_kw": power_kw},
        ],
        "origin": "e2e",
    }


async def _site_status(plane: RunningPlane) -> dict[str, object] | None:
    body = (await plane.client.get("/api/bess/status")).json()
    sites = [s for s in body["sites"] if s["site_id"] == SITE and s["soc_pct"] is not None]
    return sites[0] if sites else None


async def test_battery_to_agent_to_plane_and_back_surviving_a_plane_restart(
    tmp_path: Path, battery: tuple[Simulator, ModbusBatteryServer]
) -> None:
    sim, modbus = battery
    plane_cm = running_plane(settings_for(tmp_path), http=True)
    plane = await plane_cm.__aenter__()
    grpc_port = plane.grpc_port
    try:
        async with Agent(_agent_config(tmp_path, modbus.port, plane.grpc_target)) as agent:
            # Telemetry from the simulated battery shows in the fleet status.
            status = await until_async(lambda: _site_status(plane), what="site status")
            assert status["status"] == "online"
            assert math.isclose(float(status["soc_pct"]), sim.soc_pct, abs_tol=1.0)

            # A schedule posted to the plane drives the battery.
            created = await plane.client.post(f"/api/sites/{SITE}/schedules", json=_schedule(40))
            assert created.status_code == 201, created.text
            await until(lambda: sim.state.setpoint_kw == pytest.approx(40.0), what="40 kW")
            await until_async(
                lambda: _schedule_status(plane, "acknowledged"), what="schedule acknowledged"
            )

            # The plane goes away mid-stream; the agent keeps sampling into its outbox.
            stored_before = len(await _stored(plane))
            assert stored_before > 0
            await plane_cm.__aexit__(None, None, None)
            depth_at_stop = (await agent.outbox.stats())["telemetry"].last_seq
            await until_async(
                lambda: _outbox_grew(agent, depth_at_stop + 10), what="agent buffering"
            )

            # Back on the same gRPC port and store: the agent resumes where the store ends.
            plane_cm = running_plane(settings_for(tmp_path, grpc_port=grpc_port), http=True)
            plane = await plane_cm.__aenter__()
            await until_async(lambda: _caught_up(agent, plane), timeout=20, what="catch-up")
            seqs = await _stored(plane)
            assert seqs == list(range(1, len(seqs) + 1)), "no sample lost, none twice"
            assert len(seqs) > stored_before
            # The schedule is still held after the reconnect (no re-send needed) and in force.
            assert sim.state.setpoint_kw == pytest.approx(40.0)
            assert await _schedule_status(plane, "acknowledged")
            metrics = (await plane.client.get("/metrics")).text
            assert "bess_plane_sites_connected 1.0" in metrics
            assert 'bess_plane_http_request_duration_seconds_count{method="GET"' in metrics
    finally:
        await plane_cm.__aexit__(None, None, None)


async def _stored(plane: RunningPlane) -> list[int]:
    import asyncio

    fleet = plane.app.state.fleet
    return list(await asyncio.to_thread(fleet.store.sample_seqs, SITE))


async def _schedule_status(plane: RunningPlane, status: str) -> bool:
    listed = (await plane.client.get(f"/api/sites/{SITE}/schedules")).json()
    return bool(listed) and listed[0]["status"] == status


async def _outbox_grew(agent: Agent, seq: int) -> bool:
    return (await agent.outbox.stats())["telemetry"].last_seq >= seq


async def _caught_up(agent: Agent, plane: RunningPlane) -> bool:
    stats = (await agent.outbox.stats())["telemetry"]
    stored = await _stored(plane)
    return bool(stored) and stats.acked_seq >= stats.last_seq - 3 and stored[-1] >= stats.acked_seq


async def _command_status(plane: RunningPlane, command_id: str) -> str:
    listed = (await plane.client.get(f"/api/sites/{SITE}/commands")).json()
    return str(next(c["status"] for c in listed if c["command_id"] == command_id))


async def _acknowledged(plane: RunningPlane, body: dict[str, object]) -> None:
    posted = await plane.client.post(f"/api/sites/{SITE}/commands", json=body)
    assert posted.status_code == 202, posted.text
    command_id = posted.json()["command_id"]
    await until_async(
        lambda: _is_acknowledged(plane, command_id), what=f"{next(iter(body))} acknowledged"
    )


async def _is_acknowledged(plane: RunningPlane, command_id: str) -> bool:
    return await _command_status(plane, command_id) == "acknowledged"


async def test_stop_and_resume_over_mtls(
    tmp_path: Path, battery: tuple[Simulator, ModbusBatteryServer]
) -> None:
    sim, modbus = battery
    settings = settings_for(tmp_path, edgelink_tls="mtls")
    async with running_plane(settings) as plane:
        issued = CertificateAuthority.open(settings.pki_directory).issue_site(SITE)
        tls_dir = tmp_path / "tls"
        tls_dir.mkdir()
        write_secret(tls_dir / "site.key", issued.key_pem)
        (tls_dir / "site.crt").write_bytes(issued.cert_pem)
        (tls_dir / "ca.crt").write_bytes(issued.ca_pem)
        tls = {
            "enabled": True,
            "ca_file": str(tls_dir / "ca.crt"),
            "cert_file": str(tls_dir / "site.crt"),
            "key_file": str(tls_dir / "site.key"),
        }
        async with Agent(_agent_config(tmp_path, modbus.port, plane.grpc_target, tls)):
            await until_async(lambda: _site_status(plane), what="telemetry over mTLS")
            created = await plane.client.post(f"/api/sites/{SITE}/schedules", json=_schedule(40))
            assert created.status_code == 201, created.text
            await until(lambda: sim.state.setpoint_kw == pytest.approx(40.0), what="40 kW")

            await _acknowledged(plane, {"stop": {"reason": "grid operator request"}})
            await until(lambda: sim.state.setpoint_kw == pytest.approx(0.0), what="stopped")
            await _acknowledged(plane, {"resume": {}})
            await until(lambda: sim.state.setpoint_kw == pytest.approx(40.0), what="resumed")
