"""Leaving the agent is bounded in time, step by step.

The agent test once hung in ``Agent.__aexit__``: the executor task had lost its cancellation
(pymodbus' ``asyncio.wait_for`` swallowed it, see test_modbus_cancel.py), kept ticking, and the
TaskGroup waited for it forever. Here a task that ignores its cancellation (and an outbox that
does not close) are simulated directly: the agent must still stop within a few seconds, set
the battery to 0 kW and log what it left behind.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from bess.v1 import edgelink_pb2 as pb
from edge_agent import agent as agent_module
from edge_agent import convert
from edge_agent.agent import Agent, _supervised
from edge_agent.executor import Executor
from edge_agent.outbox import AsyncOutbox
from edge_agent.uplink import EVENTS, UplinkState

from .fake_plane import FakePlane
from .test_agent import _config, _until, battery

__all__ = ["battery"]  # the fixture, imported for its use here

pytestmark = pytest.mark.timeout(60)


class Deaf:
    """A coroutine body that swallows every cancellation until released (a library bug)."""

    def __init__(self) -> None:
        self.release = asyncio.Event()
        self.running = asyncio.Event()
        self.swallowed = 0

    async def run(self, *args: Any) -> None:
        self.running.set()
        while not self.release.is_set():
            try:
                await self.release.wait()
            except asyncio.CancelledError:
                self.swallowed += 1


async def test_a_supervised_task_that_ignores_cancellation_cannot_hold_the_taskgroup(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(agent_module, "STOP_STEP_TIMEOUT_S", 0.3)
    deaf = Deaf()
    try:
        started = time.monotonic()
        async with asyncio.timeout(5):  # a hang fails the test instead of blocking it
            async with asyncio.TaskGroup() as tg:
                child = tg.create_task(_supervised(deaf.run(), "deaf"), name="deaf")
                await deaf.running.wait()
                child.cancel()
        took = time.monotonic() - started
        assert took < 1.5
        assert deaf.swallowed >= 2  # the cancel was repeated
        assert "deaf did not end within 0.3 s" in caplog.text
    finally:
        deaf.release.set()
        await asyncio.sleep(0.01)


async def test_a_supervised_task_still_reports_its_failure() -> None:
    async def broken() -> None:
        raise ValueError("bug in a loop")

    with pytest.raises(ExceptionGroup) as caught:
        async with asyncio.TaskGroup() as tg:
            tg.create_task(_supervised(broken(), "broken"), name="broken")
    assert isinstance(caught.value.exceptions[0], ValueError)


@pytest.mark.integration
async def test_the_agent_stops_although_its_executor_ignores_cancellation(
    tmp_path: Path,
    battery: Any,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    monkeypatch.setattr(agent_module, "STOP_STEP_TIMEOUT_S", 0.5)
    deaf = Deaf()
    monkeypatch.setattr(Executor, "run", deaf.run)  # what the pymodbus race did to it
    sim, server = battery
    try:
        async with FakePlane() as plane:
            config = _config(tmp_path, server.port, plane.address)
            async with Agent(config) as agent:
                await deaf.running.wait()
                await _until(lambda: len(plane.stored_seqs("e2e-site")) >= 3, what="samples")
                assert agent.uplink is not None
                await agent.executor.tick()  # one decision: 0 kW (no schedule)
                started = time.monotonic()
            took = time.monotonic() - started
            assert took < 5.0, f"leaving the agent took {took:.1f} s"
            assert "executor did not end within 0.5 s" in caplog.text
            assert sim.state.setpoint_kw == 0.0
            assert agent.uplink.state is UplinkState.STOPPED
    finally:
        deaf.release.set()
        await asyncio.sleep(0.01)


@pytest.mark.integration
async def test_the_agent_stops_promptly_with_the_plane_unreachable_and_a_stuck_outbox(
    tmp_path: Path,
    battery: Any,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    monkeypatch.setattr(agent_module, "STOP_STEP_TIMEOUT_S", 0.5)
    _sim, server = battery
    plane = FakePlane()
    await plane.start()
    address = plane.address
    await plane.stop()  # nothing listens there now: the uplink dials and backs off
    plane.close()

    real_aclose = AsyncOutbox.aclose
    hanging = asyncio.Event()

    async def slow_aclose(self: AsyncOutbox) -> None:  # a disk that does not answer
        hanging.set()
        await asyncio.sleep(30)
        await real_aclose(self)

    monkeypatch.setattr(AsyncOutbox, "aclose", slow_aclose)
    config = _config(tmp_path, server.port, address)
    async with Agent(config) as agent:
        await _until(lambda: agent.executor.status().at is not None, what="first tick")
        assert agent.uplink is not None
        await _until(
            lambda: agent.uplink is not None and agent.uplink.state is not UplinkState.CONNECTED,
            what="the uplink dialling",
        )
        started = time.monotonic()
    took = time.monotonic() - started
    assert hanging.is_set()
    assert took < 4.0, f"leaving the agent took {took:.1f} s"
    assert "closing the outbox took longer than 0.5 s" in caplog.text
    await real_aclose(agent.outbox)
    logging.getLogger(__name__).debug("stopped in %.2f s", took)


@pytest.mark.integration
async def test_events_drained_when_the_agent_stops_are_not_lost(
    tmp_path: Path, battery: Any
) -> None:
    """The sampler drains the pending events (the guard's intervention after a STOP was lost
    so under CPU load) and is cancelled by the agent stopping while their append still waits
    for the outbox's thread (busy, e.g. a slow disk). The events existed nowhere else: they
    must still be written."""
    _sim, server = battery
    config = _config(tmp_path, server.port, "127.0.0.1:1", uplink=None)
    async with Agent(config) as agent:
        await _until(lambda: agent.executor.status().at is not None, what="first tick")
        thread = agent.outbox._executor
        assert thread is not None
        busy = threading.Event()
        thread.submit(busy.wait, 10.0)  # the outbox's one thread is busy for now
        agent._pending.append(
            convert.agent_event("source_lost", at=time.time(), message="probe", source="modbus")
        )
        drain = asyncio.create_task(agent._drain_events())  # as the sampler does
        await asyncio.sleep(0.05)  # taken from the queue; its append waits behind `busy`
        assert agent._pending == []
        drain.cancel()  # the agent stops
        await asyncio.wait({drain}, timeout=1.0)
        busy.set()
        rows = await agent.outbox.pending(EVENTS, limit=1000)
    kinds = [pb.Event.FromString(row.payload).kind for row in rows]
    assert pb.EVENT_KIND_SOURCE_LOST in kinds, "the drained event was lost"
