"""End to end on loopback: a hil battery's grid frequency event (Modbus TCP) -> a real edge
agent -> the plane's fleet (gRPC) -> /api/grid/state and the `grid.alert` event."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from edge_agent.agent import Agent
from hil.faults import Fault, FaultKind
from hil.modbus_server import ModbusBatteryServer
from hil.sim import Simulator

from ..plane import RunningPlane, running_plane, settings_for, until_async
from ..test_e2e import SITE, _agent_config, battery  # noqa: F401 (the fixture)

pytestmark = pytest.mark.integration


async def _area(plane: RunningPlane, level: str) -> dict[str, Any] | None:
    state = (await plane.client.get("/api/grid/state")).json()
    for area in state["areas"]:
        sites = [s["site_id"] for s in area["frequency"]["sites"]]
        if area["area"] == "AT" and SITE in sites and area["alert_level"] == level:
            return dict(area) | {"events": state["frequency_events"]}
    return None


async def test_hil_frequency_dip_through_a_real_agent(
    tmp_path: Path,
    battery: tuple[Simulator, ModbusBatteryServer],  # noqa: F811
) -> None:
    sim, modbus = battery
    async with running_plane(settings_for(tmp_path)) as plane:
        hub = plane.app.state.events
        with hub.subscribe(frozenset({"grid.alert"})) as sub:
            async with Agent(_agent_config(tmp_path, modbus.port, plane.grpc_target)):
                normal = await until_async(lambda: _area(plane, "normal"), what="50 Hz")
                assert 49.8 <= normal["frequency"]["frequency_hz"] <= 50.2
                sim.inject(Fault(FaultKind.FREQUENCY_EVENT, params={"hz": 49.6}))
                dip = await until_async(lambda: _area(plane, "alarm"), what="the dip")
                assert dip["frequency"]["frequency_hz"] == pytest.approx(49.6, abs=0.011)
                assert dip["events"][0]["level"] == "alarm"
                assert dip["events"][0]["ended_at"] is None
                alert = await sub.get()
        assert alert["data"]["area"] == "AT" and alert["data"]["level"] == "alarm"
