"""Reconnect and timeouts: a multi-hour outage in simulated time, a silent device, a late start.

The connection's backoff sleeps go through an injected ``sleep`` that only records the delay
and advances simulated time, so hours of outage pass in well under a second; the connect
attempts themselves are real (against the hil Modbus server on loopback, refusing or not).
"""

from __future__ import annotations

import asyncio
import logging
import random
import socket
import time
from collections.abc import AsyncIterator, Awaitable, Callable

import pytest

from edge_agent.modbus_client import (
    Backoff,
    ConnectionLost,
    ModbusConnection,
    RequestTimeout,
)
from edge_agent.modbus_source import ModbusSource, ModbusSourceSettings
from edge_agent.readings import Quantity
from hil.clock import SteppedClock
from hil.faults import Fault, FaultKind
from hil.modbus_server import ModbusBatteryServer
from hil.model import BatterySpec
from hil.regmap import load_register_map
from hil.sim import Simulator

HOURS = 3600.0


class SimulatedTime:
    """An injected ``sleep``: records each delay, advances simulated time, yields once."""

    def __init__(self) -> None:
        self.now = 0.0
        self.delays: list[float] = []
        self.on_sleep: Callable[[SimulatedTime], Awaitable[None]] | None = None

    async def sleep(self, delay: float) -> None:
        self.delays.append(delay)
        self.now += delay
        if self.on_sleep is not None:
            await self.on_sleep(self)
        await asyncio.sleep(0)


async def until(condition: Callable[[], bool], what: str, timeout_s: float = 10.0) -> None:
    """Wait in real time for I/O to make ``condition`` true."""
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.001)


@pytest.fixture
def clock() -> SteppedClock:
    return SteppedClock()


@pytest.fixture
def sim(clock: SteppedClock) -> Simulator:
    return Simulator(BatterySpec(), clock, soc_pct=57.3)


@pytest.fixture
async def server(sim: Simulator) -> AsyncIterator[ModbusBatteryServer]:
    async with ModbusBatteryServer(sim, load_register_map("generic"), port=0) as srv:
        yield srv


def source_on(conn: ModbusConnection, clock: SteppedClock) -> ModbusSource:
    settings = ModbusSourceSettings(host=conn.host, port=conn.port, preset="generic")
    return ModbusSource(settings, io=conn, clock=clock.now)


# -- backoff ------------------------------------------------------------------------------------


def test_backoff_doubles_to_the_cap_and_never_runs_out() -> None:
    top = Backoff(0.5, 60.0, rng=lambda: 1.0)  # the ceilings themselves
    assert [top.next_delay() for _ in range(10)] == [0.5, 1, 2, 4, 8, 16, 32, 60, 60, 60]
    top.attempt = 10_000_000  # a year of attempts: no overflow, still the cap
    assert top.next_delay() == 60.0
    top.reset()
    assert top.next_delay() == 0.5

    jittered = Backoff(0.5, 60.0, rng=random.Random(3).random)
    delays = [jittered.next_delay() for _ in range(200)]
    assert all(0 <= d <= min(60.0, 0.5 * 2**i) for i, d in enumerate(delays))
    assert len(set(delays)) == len(delays)  # full jitter: no two clients in lockstep
    assert 20 < sum(delays[10:]) / len(delays[10:]) < 40  # uniform below 60: mean ~30
    with pytest.raises(ValueError):
        Backoff(5.0, 1.0)


# -- a long outage --------------------------------------------------------------------------------


@pytest.mark.integration
async def test_a_multi_hour_outage_is_ridden_out_and_polling_resumes(
    server: ModbusBatteryServer,
    sim: Simulator,
    clock: SteppedClock,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG, logger="edge_agent")
    t = SimulatedTime()
    outage_s = 3 * HOURS

    async def battery_back_after_the_outage(t: SimulatedTime) -> None:
        if t.now >= outage_s and sim.faults.all():
            sim.faults.clear()
            await server.check_faults()

    conn = ModbusConnection(
        "127.0.0.1",
        server.port,
        request_timeout_s=0.5,
        connect_timeout_s=0.5,
        sleep=t.sleep,
        rng=random.Random(7).random,
    )
    async with conn:
        source = source_on(conn, clock)
        before = {r.quantity: r.value for r in await source.read()}
        assert before[Quantity.SOC_PCT] == pytest.approx(57.3)

        # The battery goes away: connections dropped, new ones refused, for three hours.
        sim.inject(Fault(FaultKind.DROP_CONNECTIONS))
        sim.inject(Fault(FaultKind.REFUSE_CONNECTIONS))
        await server.check_faults()
        await until(lambda: not conn.connected, "the agent to see the connection close")
        t.on_sleep = battery_back_after_the_outage

        failed_polls = 0
        while not conn.connected:  # the coordinator keeps polling; each poll fails fast
            # No waiting on a dead link: the read fails at once without sending a request
            # (a wall-clock bound here would only measure the machine's load).
            with pytest.raises(ConnectionLost, match="not connected"):
                await source.read()
            failed_polls += 1
            await asyncio.sleep(0.001)
            assert failed_polls < 20_000, "never reconnected"

        # Polling resumes by itself with fresh values.
        clock.advance(5)
        after = {r.quantity: r.value for r in await source.read()}
        assert after[Quantity.SOC_PCT] == pytest.approx(sim.soc_pct, abs=0.05)
        assert source.stats.poll_failures == failed_polls

    delays = t.delays
    assert sum(delays) >= outage_s  # three simulated hours of retrying ...
    assert len(delays) > 300  # ... hundreds of attempts, and it did not give up
    for i, delay in enumerate(delays):  # exponential ceilings, full jitter below them
        assert 0.0 <= delay <= min(60.0, 0.5 * 2**i)
    assert max(delays) > 50.0  # the cap is reached
    assert len(set(delays)) == len(delays)  # jittered
    assert conn.stats.connect_failures == len(delays) - 1  # the last attempt succeeded
    assert conn.stats.reconnects == 1 and conn.stats.connects == 2
    assert conn.generation == 2

    # STYLE 7: first failure loud, hundreds of repeats quiet, recovery once.
    loud = [
        r
        for r in caplog.records
        if r.name == "edge_agent.modbus_client" and r.levelno >= logging.WARNING
    ]
    assert len(loud) == 2, [r.getMessage() for r in loud]
    assert "back to normal" in loud[-1].getMessage()
    quiet = [r for r in caplog.records if r.levelno == logging.DEBUG and "again" in r.getMessage()]
    assert len(quiet) > 300


@pytest.mark.integration
async def test_the_agent_may_start_before_the_battery(sim: Simulator, clock: SteppedClock) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = int(s.getsockname()[1])  # free again: nothing listens yet
    t = SimulatedTime()
    servers: list[ModbusBatteryServer] = []

    async def battery_switched_on(t: SimulatedTime) -> None:
        if len(t.delays) == 20 and not servers:
            srv = ModbusBatteryServer(sim, load_register_map("generic"), port=port)
            await srv.start()
            servers.append(srv)

    t.on_sleep = battery_switched_on
    conn = ModbusConnection("127.0.0.1", port, connect_timeout_s=0.5, sleep=t.sleep)
    try:
        async with conn:  # does not raise: the agent starts and keeps trying
            source = source_on(conn, clock)
            await until(lambda: conn.connected, "the connection")
            readings = await source.read()
            assert {r.quantity for r in readings} >= {Quantity.SOC_PCT, Quantity.ACTIVE_POWER_KW}
            await source.write_power_kw(-10.0)
            assert sim.state.setpoint_kw == pytest.approx(-10.0)
    finally:
        for srv in servers:
            await srv.stop()
    assert len(t.delays) == 20
    assert conn.stats.connects == 1 and conn.stats.reconnects == 0


# -- a silent device ------------------------------------------------------------------------------


@pytest.mark.integration
async def test_a_silent_device_times_out_per_request_then_reconnects(
    server: ModbusBatteryServer, sim: Simulator, clock: SteppedClock
) -> None:
    t = SimulatedTime()
    conn = ModbusConnection(
        "127.0.0.1",
        server.port,
        request_timeout_s=0.2,
        sleep=t.sleep,
        timeouts_before_reconnect=3,
    )
    async with conn:
        source = source_on(conn, clock)
        await source.read()
        sim.inject(Fault(FaultKind.NO_RESPONSE))
        for _ in range(3):
            started = time.monotonic()
            with pytest.raises(RequestTimeout, match=r"no answer within 0.2 s"):
                await source.read()
            assert 0.15 < time.monotonic() - started < 2.5  # our timeout, not pymodbus' 3 s
        assert conn.stats.errors["RequestTimeout"] == 3
        # Three unanswered requests in a row: the connection is not trusted any more.
        await until(lambda: conn.generation == 2, "a fresh connection")
        sim.faults.clear(FaultKind.NO_RESPONSE)
        got = {r.quantity: r.value for r in await source.read()}
        assert got[Quantity.SOC_PCT] == pytest.approx(57.3)
        await source.write_power_kw(15.0)
        assert sim.state.setpoint_kw == pytest.approx(15.0)
    assert server.stats.unanswered == 3


@pytest.mark.integration
async def test_one_lock_one_request_on_the_wire(
    server: ModbusBatteryServer, sim: Simulator, clock: SteppedClock
) -> None:
    conn = ModbusConnection("127.0.0.1", server.port)
    async with conn:
        results = await asyncio.gather(
            *(conn.read_registers("holding", 0, 3, unit_id=1) for _ in range(20)),
            conn.write_registers(20, [50], unit_id=1),
        )
    assert all(r == results[0] for r in results[:20])
    assert conn.stats.requests == conn.stats.responses == 21
    assert server.stats.requests == 21
    assert sim.state.setpoint_kw == pytest.approx(5.0)
