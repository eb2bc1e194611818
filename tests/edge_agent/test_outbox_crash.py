"""A real crash: SIGKILL a process mid-append and check every confirmed seq survived.

SIGKILL tests a process crash (the kernel keeps the page cache); surviving a power loss is
what synchronous=FULL adds and needs hardware or a VM to test.
"""

from __future__ import annotations

import os
import queue
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

from edge_agent.outbox import Outbox

REPO = Path(__file__).resolve().parents[2]
CONFIRMED_BEFORE_KILL = 25
TIMEOUT_S = 10.0

# Appends batches of 1..20 rows forever at synchronous=FULL and prints each batch's last seq
# once append() has returned, i.e. after the commit.
CHILD = """
import sys
import time

# As on the [edge] install: without pandas/numpy, which sqlite-utils imports when present
# (0.8 s of the child's start-up in the dev venv).
sys.modules["pandas"] = sys.modules["numpy"] = None
from edge_agent.outbox import Outbox

with Outbox(sys.argv[1], max_rows=10**9, max_age_s=None) as outbox:
    n = 0
    while True:
        n += 1
        size = n % 20 + 1
        seqs = outbox.append("telemetry", [(time.time(), b"x" * 100)] * size)
        sys.stdout.write(f"{seqs[-1]}\\n")
        sys.stdout.flush()
"""


def run_and_kill(path: Path) -> list[int]:
    """Start the child, SIGKILL it after some confirmed batches; return every confirmed seq."""
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]),
    }
    child = subprocess.Popen(
        [sys.executable, "-c", CHILD, str(path)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    lines: queue.Queue[str] = queue.Queue()

    def read_lines() -> None:
        for line in child.stdout or ():
            lines.put(line)

    reader = threading.Thread(target=read_lines, daemon=True)
    reader.start()
    confirmed: list[int] = []
    deadline = time.monotonic() + TIMEOUT_S
    try:
        while len(confirmed) < CONFIRMED_BEFORE_KILL:
            remaining = deadline - time.monotonic()
            assert remaining > 0 and child.poll() is None, child.stderr and child.stderr.read()
            try:
                confirmed.append(int(lines.get(timeout=remaining)))
            except queue.Empty:
                continue
    finally:
        child.send_signal(signal.SIGKILL)
        child.wait(TIMEOUT_S)
        reader.join(TIMEOUT_S)
    assert child.returncode == -signal.SIGKILL
    # Lines written between our last read and the kill were confirmed too.
    while not lines.empty():
        confirmed.append(int(lines.get()))
    stderr = child.stderr.read() if child.stderr else ""
    assert "Traceback" not in stderr, stderr
    return confirmed


def test_every_confirmed_seq_survives_sigkill_and_numbering_continues(tmp_path: Path) -> None:
    path = tmp_path / "outbox.sqlite"
    last_before = 0
    for _round in range(2):  # the second child reopens a file recovered from a crash
        confirmed = run_and_kill(path)
        assert confirmed == sorted(confirmed)
        assert confirmed[0] > last_before
        with Outbox(path) as outbox:
            seqs = [r.seq for r in outbox.pending("telemetry", limit=10**6)]
            last = outbox.last_seq("telemetry")
            # Durable: every seq the child was told about is there, nothing beyond last_seq.
            assert set(confirmed) <= set(seqs)
            assert seqs == list(range(1, last + 1))
            assert last >= confirmed[-1]
            assert outbox.append("telemetry", [(time.time(), b"after")]) == [last + 1]
            last_before = last + 1
