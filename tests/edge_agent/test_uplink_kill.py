"""A real crash: SIGKILL an agent process mid-stream, restart it, and lose nothing.

SIGKILL tests a process crash (the kernel keeps the page cache), not a power loss. The child
runs an outbox, a loop appending samples (printing each seq once `append` has committed it)
and the uplink to the fake plane, which runs in this test's event loop. After two kills the
plane must hold every seq any child printed, each once, in order, with no gap.
"""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from pathlib import Path

import pytest

from .fake_plane import FakePlane

pytestmark = [pytest.mark.integration, pytest.mark.timeout(60)]

REPO = Path(__file__).resolve().parents[2]
SITE = "site-kill-001"

# argv: outbox path, plane address, samples to append (-1 = forever). Appends one sample
# every 2 ms and prints its seq after the commit; keeps the uplink running afterwards.
CHILD = """
import asyncio
import functools
import sys
import time

# As on the [edge] install: without pandas/numpy, which sqlite-utils imports when present.
sys.modules["pandas"] = sys.modules["numpy"] = None
from edge_agent import convert
from edge_agent.outbox import AsyncOutbox, Outbox
from edge_agent.readings import Quantity
from edge_agent.uplink import Uplink, UplinkSettings


async def main(path, target, count):
    settings = UplinkSettings(
        target=target,
        batch_max_samples=20,
        batch_max_delay_s=0.01,
        max_unacked_batches=4,
        backoff_initial_s=0.02,
        backoff_max_s=0.1,
        connect_timeout_s=2.0,
    )
    hello = lambda: convert.HelloInfo(site_id=sys.argv[4], agent_version="test")
    async with AsyncOutbox(functools.partial(Outbox, path)) as outbox:
        async with Uplink(settings, outbox=outbox, hello=hello) as uplink:
            n = 0
            while count < 0 or n < count:
                n += 1
                sample = convert.sample_from_values({Quantity.SOC_PCT: 50.0}, at=time.time())
                seqs = await outbox.append("telemetry", [convert.outbox_row(sample)])
                sys.stdout.write(f"{seqs[-1]}\\n")
                sys.stdout.flush()
                uplink.notify()
                await asyncio.sleep(0.002)
            await asyncio.Event().wait()


asyncio.run(main(sys.argv[1], sys.argv[2], int(sys.argv[3])))
"""


class Child:
    """One agent process; collects the seqs it printed."""

    def __init__(self, proc: asyncio.subprocess.Process) -> None:
        self.proc = proc
        self.printed: list[int] = []
        self.reader = asyncio.create_task(self._read())

    @classmethod
    async def start(cls, outbox: Path, plane: FakePlane, count: int) -> Child:
        env = {
            **os.environ,
            "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]),
        }
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-c",
            CHILD,
            str(outbox),
            plane.address,
            str(count),
            SITE,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            env=env,
        )
        return cls(proc)

    async def _read(self) -> None:
        assert self.proc.stdout is not None
        async for line in self.proc.stdout:
            self.printed.append(int(line))

    async def kill(self) -> str:
        """SIGKILL; returns stderr. Lines printed before the kill are all read."""
        self.proc.send_signal(signal.SIGKILL)
        await self.proc.wait()
        await self.reader
        assert self.proc.returncode == -signal.SIGKILL
        assert self.proc.stderr is not None
        stderr = (await self.proc.stderr.read()).decode(errors="replace")
        assert "Traceback" not in stderr, stderr
        return stderr


async def wait_until(condition, child: Child, what: str, timeout: float = 10.0) -> None:
    async with asyncio.timeout(timeout):
        while not condition():
            if child.proc.returncode is not None:
                assert child.proc.stderr is not None
                stderr = (await child.proc.stderr.read()).decode(errors="replace")
                raise AssertionError(f"child died waiting for {what}: {stderr[-3000:]}")
            await asyncio.sleep(0.005)


async def test_sigkill_mid_stream_then_restart_loses_and_duplicates_nothing(
    tmp_path: Path,
) -> None:
    outbox = tmp_path / "outbox.sqlite"
    async with FakePlane() as plane:
        stored = lambda: plane.stored_seqs(SITE)  # noqa: E731

        # 1. Killed while appending and streaming: some rows are sent but unacked, some unsent.
        first = await Child.start(outbox, plane, count=-1)
        await wait_until(lambda: len(stored()) >= 20, first, "20 stored")
        await first.kill()
        printed_first = first.printed
        assert len(printed_first) >= 20

        # 2. Killed again while it streams the backlog plus new rows.
        second = await Child.start(outbox, plane, count=-1)
        await wait_until(
            lambda: len(second.printed) >= 10 and len(stored()) > printed_first[-1],
            second,
            "the restarted child streams",
        )
        await second.kill()

        # 3. Runs until everything it and its predecessors committed is stored.
        third = await Child.start(outbox, plane, count=30)
        await wait_until(lambda: len(third.printed) == 30, third, "30 appended")
        printed = printed_first + second.printed + third.printed
        await wait_until(lambda: stored()[-1:] == [printed[-1]], third, "all stored")
        await asyncio.sleep(0.05)  # nothing beyond the last printed seq may arrive
        await third.kill()

    # Every seq any child was told was committed reached the plane, once, in order. (A row
    # committed in the instant between append and print is stored without having been printed.)
    assert printed == sorted(set(printed))
    assert set(printed) <= set(stored())
    assert stored() == list(range(1, printed[-1] + 1))
    assert plane.gaps == []
    sessions = plane.sessions_of(SITE)
    assert len(sessions) >= 3
    # The kills really came mid-stream: each restart found committed rows the plane lacked.
    restarts = [s for s in sessions if s.hello.last_assigned_seq > 0][1:]
    assert any(s.hello.last_assigned_seq > s.welcome.last_stored_seq for s in restarts)
    for session in sessions:
        seqs = session.received_seqs
        assert seqs == sorted(set(seqs)), session.session_id
        if seqs:
            assert seqs[0] == session.welcome.last_stored_seq + 1, session.session_id
