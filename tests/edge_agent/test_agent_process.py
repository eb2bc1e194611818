"""`bess-edge run` as a real process in front of the hil battery: while it runs the battery's
revert timeout never fires; killed with SIGKILL (no chance to write 0 kW) the battery falls
back to 0 kW by itself (DESIGN decision 9)."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from edge_agent.schedule_store import Schedule, ScheduleSource, ScheduleStore
from hil.clock import AcceleratedClock
from hil.modbus_server import ModbusBatteryServer
from hil.model import Alarm, BatterySpec
from hil.regmap import load_register_map
from hil.sim import Simulator

pytestmark = pytest.mark.integration

SPEED = 60.0  # simulated seconds per real second
REVERT_S = 120.0  # simulated: 2 s of real time


def _reverted(sim: Simulator) -> bool:
    sim.sync()  # the physics advances on reads; nobody reads once the agent is gone
    return any(kind == "raised" and a is Alarm.SETPOINT_REVERTED for _, kind, a in sim.alarm_log)


async def test_revert_timeout_fires_only_after_the_agent_is_killed(tmp_path: Path) -> None:
    sim = Simulator(
        BatterySpec(revert_timeout_s=REVERT_S), AcceleratedClock(speed=SPEED), soc_pct=60.0
    )
    async with ModbusBatteryServer(sim, load_register_map("sunspec"), port=0) as server:
        data = tmp_path / "data"
        site = {
            "site_id": "kill-test",
            "battery": {"capacity_kwh": 200, "max_charge_kw": 100, "max_discharge_kw": 100},
            "sources": {
                "modbus": {
                    "host": "127.0.0.1",
                    "port": server.port,
                    "preset": "sunspec",
                    "poll_interval_s": 0.2,
                },
            },
            # The device counts its revert timeout in simulated seconds (60x): refresh in
            # real time well inside the 2 s it really lasts.
            "executor": {"tick_interval_s": 0.1, "refresh_interval_s": 0.4},
            "telemetry": {"interval_s": 0.5},
            "storage": {"data_dir": str(data), "synchronous": "NORMAL"},
            "metrics": {"enabled": False},
        }
        config_path = tmp_path / "site.yaml"
        config_path.write_text(yaml.safe_dump(site))
        data.mkdir()
        now = time.time()
        start = now - now % 900
        with ScheduleStore(data / "schedules.sqlite", site_id="kill-test") as store:
            store.save(
                Schedule(
                    site_id="kill-test",
                    version=1,
                    created_at=now,
                    valid_from=start,
                    valid_until=start + 1800,
                    interval_s=900,
                    intervals=((start, 30.0), (start + 900, 30.0)),
                    source=ScheduleSource.CLI,
                ),
                now=now,
            )

        agent = subprocess.Popen(
            [sys.executable, "-m", "edge_agent", "run", "-c", str(config_path)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        try:
            deadline = time.monotonic() + 30
            while sim.state.setpoint_kw != pytest.approx(30.0):
                assert agent.poll() is None, agent.stderr.read().decode() if agent.stderr else ""
                assert time.monotonic() < deadline, "the agent never commanded the battery"
                await asyncio.sleep(0.05)
            # Three revert periods of the device with the agent alive: never reverted.
            await asyncio.sleep(3 * REVERT_S / SPEED)
            sim.sync()
            assert not _reverted(sim), "the revert timeout fired while the agent was running"
            assert sim.state.power_kw == pytest.approx(30.0)
        finally:
            os.kill(agent.pid, signal.SIGKILL)
            agent.wait(timeout=10)
            if agent.stderr:
                agent.stderr.close()
        # Killed: nobody refreshes the setpoint, the battery must revert on its own.
        deadline = time.monotonic() + 3 * REVERT_S / SPEED + 5
        while not _reverted(sim):
            assert time.monotonic() < deadline, "the battery kept running without its agent"
            await asyncio.sleep(0.05)
        sim.sync()
        assert sim.state.power_kw == 0.0
