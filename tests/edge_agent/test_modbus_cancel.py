"""Cancellation and silence on one Modbus connection: nothing may wait forever.

Regression tests for the agent test that hung under CPU load: pymodbus awaits each answer with
``asyncio.wait_for``, which on Python < 3.12 returns the answer and drops a cancellation that
arrives in the same loop iteration (CPython gh-86296). The executor, told to stop while its
write's answer was arriving, kept running, and the agent's TaskGroup waited for it forever
(meanwhile the poller *had* stopped, so the guard saw readings going stale). Here the race is
made deterministic with a fake client that awaits its answer exactly as pymodbus does.

Also here: a connection whose requests are all abandoned by a caller with a short deadline
(a poller whose timeout is below ``request_timeout_s``) is still recognised as silent and
rebuilt; every reconnect attempt has its own timeout and survives a surprise from the
library; ``close`` is bounded.
"""

from __future__ import annotations

import asyncio
import logging
import sys
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest

from edge_agent import modbus_client
from edge_agent.coordinator import Coordinator
from edge_agent.modbus_client import ModbusConnection
from edge_agent.modbus_source import ModbusSource, ModbusSourceSettings
from edge_agent.readings import Quantity
from hil.clock import SteppedClock
from hil.faults import Fault, FaultKind
from hil.modbus_server import ModbusBatteryServer
from hil.model import BatterySpec
from hil.regmap import load_register_map
from hil.sim import Simulator

pytestmark = pytest.mark.timeout(30)


async def until(condition: Callable[[], bool], what: str, timeout_s: float = 10.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s} s waiting for {what}")
        await asyncio.sleep(0.002)


class Answer:
    """A pymodbus PDU as far as ``ModbusConnection`` looks at it."""

    def __init__(self, registers: list[int]) -> None:
        self.registers = registers
        self.exception_code = 0

    def isError(self) -> bool:
        return False


class WaitForClient:
    """A fake ``ModbusClient`` that awaits its answers and connects the way pymodbus does:
    through ``asyncio.wait_for`` on a future the test resolves."""

    def __init__(self) -> None:
        self.connected = False
        self.answer: asyncio.Future[Answer] | None = None
        self.connecting: asyncio.Future[bool] | None = None
        self.auto_connect = True
        self.closes = 0

    async def connect(self) -> bool:
        if self.auto_connect:
            self.connected = True
            return True
        self.connecting = asyncio.get_running_loop().create_future()
        self.connected = await asyncio.wait_for(self.connecting, timeout=30)
        return self.connected

    def close(self) -> None:
        self.closes += 1
        self.connected = False

    async def _answer(self) -> Answer:
        self.answer = asyncio.get_running_loop().create_future()
        return await asyncio.wait_for(self.answer, timeout=30)

    async def read_holding_registers(self, address: int, *, count: int, device_id: int) -> Any:
        return await self._answer()

    async def read_input_registers(self, address: int, *, count: int, device_id: int) -> Any:
        return await self._answer()

    async def write_registers(self, address: int, values: list[int], *, device_id: int) -> Any:
        return await self._answer()


async def _answer_and_cancel_together(
    client: WaitForClient, task: asyncio.Task[Any], registers: list[int]
) -> None:
    """The answer arrives and the task is cancelled in one loop iteration: wait_for's race."""
    await until(lambda: client.answer is not None and not client.answer.done(), "the request")
    assert client.answer is not None
    client.answer.set_result(Answer(registers))
    task.cancel()


async def test_the_race_is_real_on_this_python() -> None:
    """The premise: a bare ``wait_for`` loses the cancel (only on Python < 3.12)."""
    loop = asyncio.get_running_loop()
    answer: asyncio.Future[int] = loop.create_future()

    async def waiter() -> int:
        return await asyncio.wait_for(answer, timeout=30)

    task = asyncio.create_task(waiter())
    await asyncio.sleep(0)
    answer.set_result(7)
    task.cancel()
    await asyncio.wait({task})
    if sys.version_info < (3, 12):
        assert not task.cancelled() and task.result() == 7  # the cancellation is gone
    else:
        assert task.cancelled()


async def test_a_cancel_swallowed_by_the_library_is_raised_again() -> None:
    client = WaitForClient()
    async with ModbusConnection("fake", 1, client_factory=lambda: client) as conn:
        task = asyncio.create_task(conn.read_registers("holding", 0, 2, unit_id=1))
        await _answer_and_cancel_together(client, task, [1, 2])
        await asyncio.wait({task}, timeout=2)
        assert task.cancelled(), "the cancellation of the task was swallowed"

        # The lock is free and the connection usable: the answer was complete.
        follow = asyncio.create_task(conn.read_registers("holding", 0, 2, unit_id=1))
        await until(lambda: not client.answer.done(), "the next request")  # type: ignore[union-attr]
        client.answer.set_result(Answer([3, 4]))  # type: ignore[union-attr]
        assert await follow == [3, 4]
        assert conn.generation == 1


async def test_a_looping_task_told_to_stop_stops() -> None:
    """What hung the agent: a loop (like the executor's) whose write swallowed the cancel."""
    client = WaitForClient()
    async with ModbusConnection("fake", 1, client_factory=lambda: client) as conn:
        writes = 0

        async def control_loop() -> None:
            nonlocal writes
            while True:
                await conn.write_registers(20, [0], unit_id=1)
                writes += 1
                await asyncio.sleep(0.001)

        loop_task = asyncio.create_task(control_loop())
        await _answer_and_cancel_together(client, loop_task, [])
        await asyncio.wait({loop_task}, timeout=2)
        assert loop_task.done(), "the loop keeps running after it was cancelled"
        assert loop_task.cancelled() and writes == 0


async def test_a_connect_that_swallows_the_cancel_does_not_leave_a_live_connection() -> None:
    client = WaitForClient()
    client.auto_connect = False
    conn = ModbusConnection("fake", 1, client_factory=lambda: client)
    task = asyncio.create_task(conn.try_connect())
    await until(lambda: client.connecting is not None, "the connect")
    assert client.connecting is not None
    client.connecting.set_result(True)
    task.cancel()
    await asyncio.wait({task}, timeout=2)
    assert task.cancelled()
    assert not client.connected  # closed again: never used without a generation bump
    assert conn.generation == 0
    await conn.close()


# -- reconnect attempts ------------------------------------------------------------------------


class FlakyClient(WaitForClient):
    """Connect attempts scripted: "hang" (never answers), "raise", "ok"."""

    def __init__(self, script: list[str]) -> None:
        super().__init__()
        self.script = script
        self.attempts = 0

    async def connect(self) -> bool:
        step = self.script[min(self.attempts, len(self.script) - 1)]
        self.attempts += 1
        if step == "hang":
            await asyncio.Event().wait()
        if step == "raise":
            raise RuntimeError("a pymodbus surprise")
        self.connected = True
        return True


async def fast_sleep(delay: float) -> None:
    await asyncio.sleep(0.001)


async def test_every_reconnect_attempt_has_its_own_timeout_and_survives_surprises(
    caplog: pytest.LogCaptureFixture,
) -> None:
    client = FlakyClient(["hang", "raise", "hang", "ok"])
    conn = ModbusConnection(
        "fake", 1, connect_timeout_s=0.1, sleep=fast_sleep, client_factory=lambda: client
    )
    started = time.monotonic()
    async with conn:  # the first attempt hangs: reconnecting in the background
        assert await conn.wait_connected(5.0), "the reconnect loop gave up"
    assert time.monotonic() - started < 3.0
    assert client.attempts == 4
    assert conn.stats.connect_failures == 3
    assert "RuntimeError: a pymodbus surprise" in caplog.text or any(
        "no answer within 0.1 s" in r.getMessage() for r in caplog.records
    )


class StuckClient(WaitForClient):
    """A connect that ignores cancellation until released (a broken library)."""

    def __init__(self) -> None:
        super().__init__()
        self.release = asyncio.Event()
        self.attempts = 0

    async def connect(self) -> bool:
        self.attempts += 1
        while not self.release.is_set():
            try:
                await self.release.wait()
            except asyncio.CancelledError:
                pass  # swallowed: the bug
        self.connected = True  # connects after all, long after we stopped waiting
        return True


async def test_a_connect_that_ignores_cancellation_cannot_hold_the_reconnect_loop() -> None:
    client = StuckClient()
    conn = ModbusConnection(
        "fake", 1, connect_timeout_s=0.05, sleep=fast_sleep, client_factory=lambda: client
    )
    started = time.monotonic()
    assert not await conn.open()  # the first attempt is given up after 0.05 s
    assert time.monotonic() - started < 2.5  # not stuck: the stuck client never returns by itself
    await until(lambda: client.attempts >= 3, "more attempts")  # the loop goes on
    assert conn.stats.connect_failures >= 2
    started = time.monotonic()
    await conn.close()
    assert time.monotonic() - started < 2.5  # close is bounded (2 s)
    client.release.set()  # the abandoned attempts "connect" now ...
    await asyncio.sleep(0.05)
    assert not client.connected  # ... and are closed at once: never used
    assert conn.generation == 0


async def test_close_is_bounded_even_if_the_reconnect_task_swallows_its_cancel(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(modbus_client, "CLOSE_TIMEOUT_S", 0.3)
    release = asyncio.Event()
    sleeping = asyncio.Event()

    async def swallowing_sleep(delay: float) -> None:  # a broken injected sleep
        sleeping.set()
        while not release.is_set():
            try:
                await release.wait()
            except asyncio.CancelledError:
                pass

    client = FlakyClient(["raise"])
    conn = ModbusConnection("fake", 1, sleep=swallowing_sleep, client_factory=lambda: client)
    assert not await conn.open()
    await sleeping.wait()  # the reconnect loop sleeps, deaf to cancellation
    started = time.monotonic()
    await conn.close()
    assert time.monotonic() - started < 1.5
    assert "did not end within 0.3 s" in caplog.text
    release.set()  # let it go, so that the test leaves nothing behind
    await asyncio.sleep(0.05)


# -- silence with a caller that gives up first ------------------------------------------------


@pytest.fixture
async def battery() -> AsyncIterator[tuple[Simulator, ModbusBatteryServer]]:
    clock = SteppedClock()
    sim = Simulator(BatterySpec(), clock, soc_pct=57.3)
    async with ModbusBatteryServer(sim, load_register_map("generic"), port=0) as server:
        yield sim, server


@pytest.mark.integration
async def test_a_silent_device_is_reconnected_even_if_the_poller_gives_up_first(
    battery: tuple[Simulator, ModbusBatteryServer],
) -> None:
    """The agent test's settings: polls every 0.05 s with a 0.05 s deadline, requests 0.5 s.

    No request ever reaches its own 0.5 s timeout (the poller cancels it first), so "3 timeouts
    in a row" never triggers; the silence still adds up to 3 x 0.5 s and the connection is
    rebuilt. Once the device answers again, polling resumes by itself.
    """
    sim, server = battery
    settings = ModbusSourceSettings(
        host="127.0.0.1",
        port=server.port,
        preset="generic",
        request_timeout_s=0.5,
        backoff_initial_s=0.05,
    )
    coordinator = Coordinator(time.time)
    async with ModbusSource(settings) as source:
        connection = source._own_connection
        assert connection is not None
        poller = asyncio.create_task(
            coordinator.run_poller(source, interval_s=0.05, timeout_s=0.05), name="poller"
        )
        try:
            await until(lambda: coordinator.health("modbus").last_success_at is not None, "poll")
            sim.inject(Fault(FaultKind.NO_RESPONSE))
            await until(lambda: coordinator.health("modbus").failing, "the poll to fail")
            assert connection.stats.errors["RequestTimeout"] == 0  # never our own timeout
            await until(lambda: connection.generation >= 2, "a fresh connection", timeout_s=8)
            sim.faults.clear(FaultKind.NO_RESPONSE)
            await until(lambda: not coordinator.health("modbus").failing, "polls to succeed")
            soc = coordinator.latest(Quantity.SOC_PCT, "modbus")
            assert soc is not None and soc.value == pytest.approx(57.3, abs=0.1)
        finally:
            poller.cancel()
            await asyncio.wait({poller}, timeout=2)
        assert poller.done()


@pytest.mark.integration
async def test_the_agents_poll_deadline_leaves_room_for_the_request_timeout() -> None:
    settings = ModbusSourceSettings(host="127.0.0.1", request_timeout_s=0.5)
    source = ModbusSource(settings)
    assert source.poll_timeout_s > settings.request_timeout_s
    logging.getLogger(__name__).debug("poll deadline %s", source.poll_timeout_s)
