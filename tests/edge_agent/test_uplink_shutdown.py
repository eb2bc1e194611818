"""Stopping the uplink is bounded: `aclose()` returns within a couple of seconds whatever the
session is doing (dialling a peer that never answers, streaming with data unacked, backing
off), when it is interrupted at awkward moments, when something swallows its cancellation and,
as a last resort, when the run task never ends at all (logged, left behind)."""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, cast

import pytest

from edge_agent.outbox import AsyncOutbox
from edge_agent.uplink import TELEMETRY, Uplink, UplinkState

from .fake_plane import FakePlane
from .test_uplink import SITE, T0, append, hello, make_uplink, outbox, settings_for, wait_state

__all__ = ["outbox"]  # the fixture, imported for its use here

pytestmark = [pytest.mark.integration, pytest.mark.timeout(60)]

PROMPT_S = 2.0  # "a couple of seconds"


async def closed_promptly(uplink: Uplink, within_s: float = PROMPT_S) -> float:
    task = uplink._task
    started = time.monotonic()
    await asyncio.wait_for(uplink.aclose(), timeout=within_s + 5)  # a hang fails, not blocks
    took = time.monotonic() - started
    assert took < within_s, f"aclose took {took:.2f} s"
    assert task is not None and task.done()
    assert uplink.state is UplinkState.STOPPED
    return took


@pytest.fixture
async def plane() -> AsyncIterator[FakePlane]:
    async with FakePlane() as fake:
        yield fake


@pytest.fixture
async def mute_server() -> AsyncIterator[tuple[str, list[asyncio.StreamWriter]]]:
    """Accepts TCP connections and never says a word (a plane stuck before HTTP/2)."""
    peers: list[asyncio.StreamWriter] = []

    async def accept(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        peers.append(writer)

    server = await asyncio.start_server(accept, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        yield f"127.0.0.1:{port}", peers
    finally:
        for writer in peers:
            writer.close()
        server.close()
        await server.wait_closed()


# -- each state ------------------------------------------------------------------------------


async def test_aclose_while_dialling_a_plane_that_never_answers(
    mute_server: tuple[str, list[asyncio.StreamWriter]], outbox: AsyncOutbox
) -> None:
    target, peers = mute_server
    plane = FakePlane()  # only for the settings helper: never started
    settings = settings_for(plane, target=target, connect_timeout_s=30.0)
    uplink = Uplink(settings, outbox=outbox, hello=hello())
    await uplink.__aenter__()
    await wait_state(uplink, UplinkState.CONNECTING)
    async with asyncio.timeout(5):
        while not peers:  # gRPC has a TCP connection and waits for the plane's HTTP/2
            await asyncio.sleep(0.01)
    await asyncio.sleep(0.2)
    assert uplink.state is UplinkState.CONNECTING
    await closed_promptly(uplink)
    plane.close()


async def test_aclose_while_connected_with_unacked_data(
    plane: FakePlane, outbox: AsyncOutbox
) -> None:
    plane.hold_acks = True
    uplink = make_uplink(plane, outbox)
    await uplink.__aenter__()
    await wait_state(uplink, UplinkState.CONNECTED)
    await append(outbox, uplink, T0, 20)
    await plane.wait_for(lambda: plane.last_stored_seq(SITE) == 20, what="the samples")
    await closed_promptly(uplink)
    assert (await outbox.stats())[TELEMETRY].depth == 20  # unacked: still in the outbox


async def test_aclose_while_backing_off(outbox: AsyncOutbox) -> None:
    plane = FakePlane()
    plane.port = 1  # nothing listens: every dial fails at once
    uplink = make_uplink(
        plane,
        outbox,
        sleep=asyncio.sleep,  # a real 30 s backoff sleep
        settings={"backoff_initial_s": 30.0, "backoff_max_s": 60.0},
    )
    await uplink.__aenter__()
    await wait_state(uplink, UplinkState.BACKOFF)
    await closed_promptly(uplink)
    plane.close()


# -- awkward moments --------------------------------------------------------------------------


@pytest.mark.parametrize("seed", range(3))
async def test_aclose_at_random_moments_of_a_busy_session(
    plane: FakePlane, outbox: AsyncOutbox, seed: int
) -> None:
    rng = random.Random(seed)
    plane.ack_delay_s = 0.005
    for round_ in range(8):
        uplink = make_uplink(plane, outbox)
        await uplink.__aenter__()
        feeding = asyncio.create_task(_feed(outbox, uplink, T0 + 1000 * (seed * 10 + round_)))
        flushing = asyncio.create_task(uplink.flush(5.0))
        await asyncio.sleep(rng.choice([0.0, 0.0005, 0.002, 0.01, 0.03, 0.08, 0.2]))
        await closed_promptly(uplink)
        feeding.cancel()
        flushing.cancel()  # a flush waiting for acks that will not come (the uplink is closed)
        await asyncio.wait({feeding, flushing}, timeout=PROMPT_S)
        assert feeding.done() and flushing.done()
    assert plane.gaps == []


async def _feed(outbox: AsyncOutbox, uplink: Uplink, first_s: float) -> None:
    n = 0
    while True:
        await append(outbox, uplink, first_s + n, 5)
        n += 5
        await asyncio.sleep(0.002)


async def test_the_caller_of_aclose_may_itself_be_cancelled(
    plane: FakePlane, outbox: AsyncOutbox
) -> None:
    uplink = make_uplink(plane, outbox)
    await uplink.__aenter__()
    await wait_state(uplink, UplinkState.CONNECTED)
    task = uplink._task
    closer = asyncio.create_task(uplink.aclose())
    await asyncio.sleep(0)
    closer.cancel()  # the agent itself is being torn down
    await asyncio.wait({closer}, timeout=PROMPT_S)
    assert closer.cancelled(), "aclose swallowed its caller's cancellation"
    assert task is not None
    await asyncio.wait({task}, timeout=PROMPT_S)
    assert task.done()  # it was cancelled before the caller gave up on waiting
    await uplink.aclose()  # and a second aclose is harmless


# -- cancellations that get lost --------------------------------------------------------------


async def test_a_backoff_sleep_that_swallows_the_cancel_does_not_keep_it_running(
    outbox: AsyncOutbox,
) -> None:
    swallowed = 0

    async def deaf_once(delay: float) -> None:  # an injected sleep with a bug
        nonlocal swallowed
        try:
            await asyncio.sleep(10.0)
        except asyncio.CancelledError:
            swallowed += 1

    plane = FakePlane()
    plane.port = 1
    uplink = make_uplink(plane, outbox, sleep=deaf_once)
    await uplink.__aenter__()
    await wait_state(uplink, UplinkState.BACKOFF)
    await closed_promptly(uplink)
    assert swallowed == 1
    assert uplink._dials_total == 1  # it did not dial again after being told to stop
    plane.close()


async def test_a_cancelled_error_from_grpc_is_a_failed_session_not_a_stop(
    plane: FakePlane, outbox: AsyncOutbox, caplog: pytest.LogCaptureFixture
) -> None:
    """gRPC raises CancelledError of its own for a call it cancelled locally; the task was
    not told to stop, so the uplink redials instead of ending silently."""
    uplink = make_uplink(plane, outbox)
    real = uplink._run_session
    calls = 0

    async def grpc_cancelled_once() -> None:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise asyncio.CancelledError  # as grpc.aio does for a locally cancelled call
        await real()

    uplink._run_session = grpc_cancelled_once  # type: ignore[method-assign]
    async with uplink:
        await wait_state(uplink, UplinkState.CONNECTED)
        assert calls == 2
        assert "cancelled under the session" in (await uplink.stats()).last_error


class StuckOutbox:
    """An outbox whose `stats` does not return until released; `deaf`: and ignores
    cancellation meanwhile (a bug), else it is merely slow (a disk that hangs)."""

    def __init__(self, inner: AsyncOutbox, *, deaf: bool = True) -> None:
        self._inner = inner
        self.deaf = deaf
        self.release = asyncio.Event()
        self.stuck = asyncio.Event()

    async def stats(self, now: float | None = None) -> Any:
        self.stuck.set()
        while not self.release.is_set():
            try:
                await self.release.wait()
            except asyncio.CancelledError:
                if not self.deaf:
                    raise
        return await self._inner.stats(now)

    def __getattr__(self, name: str) -> Callable[..., Awaitable[Any]]:
        return cast(Callable[..., Awaitable[Any]], getattr(self._inner, name))


async def test_a_run_task_that_never_ends_is_left_behind_after_the_close_timeout(
    plane: FakePlane, outbox: AsyncOutbox, caplog: pytest.LogCaptureFixture
) -> None:
    stuck = StuckOutbox(outbox)
    uplink = Uplink(
        settings_for(plane),
        outbox=cast(AsyncOutbox, stuck),
        hello=hello(),
        close_timeout_s=0.5,
    )
    await uplink.__aenter__()
    task = uplink._task
    assert task is not None
    try:
        await stuck.stuck.wait()  # in the handshake, deaf to every cancellation
        with caplog.at_level(logging.ERROR, logger="edge_agent.uplink"):
            started = time.monotonic()
            await asyncio.wait_for(uplink.aclose(), timeout=5)
            took = time.monotonic() - started
        assert 0.45 <= took < 1.5
        assert "did not end within 0.5 s" in caplog.text
        assert uplink.state is UplinkState.STOPPED
        assert not task.done()  # left behind
    finally:
        stuck.release.set()  # let it go; it was cancelled, so it ends now
        await asyncio.wait({task}, timeout=PROMPT_S)
    assert task.done()


async def test_flush_is_bounded_even_when_the_outbox_does_not_answer(
    plane: FakePlane, outbox: AsyncOutbox
) -> None:
    stuck = StuckOutbox(outbox, deaf=False)
    uplink = Uplink(settings_for(plane), outbox=cast(AsyncOutbox, stuck), hello=hello())
    flushing = asyncio.create_task(uplink.flush(0.2))
    await asyncio.wait({flushing}, timeout=PROMPT_S)
    stuck.release.set()  # (for the old code, which waited for the outbox without a deadline)
    assert flushing.done(), "flush waited for the outbox beyond its timeout"
    assert flushing.result() is False
