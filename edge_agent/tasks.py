"""Stopping asyncio tasks that may not want to stop."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from typing import Any

log = logging.getLogger(__name__)


async def cancel_and_wait(
    tasks: Sequence[asyncio.Task[Any]], timeout_s: float, what: str
) -> list[asyncio.Task[Any]]:
    """Cancel `tasks` and wait at most `timeout_s` for them to end; returns those that did not
    (logged as an error, left behind). The cancel is repeated while waiting, because a library
    may swallow one (Python < 3.12 `asyncio.wait_for`, gRPC). A cancellation of the caller is
    not swallowed: it interrupts the wait (the tasks have been cancelled at least once)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    pending = [t for t in tasks if not t.done()]
    while pending:
        remaining = deadline - loop.time()
        if remaining <= 0:
            log.error(
                "%s: %s did not end within %g s of being cancelled; left behind",
                what,
                ", ".join(t.get_name() for t in pending),
                timeout_s,
            )
            return pending
        for task in pending:
            task.cancel()
        await asyncio.wait(pending, timeout=min(0.25, remaining))
        pending = [t for t in pending if not t.done()]
    for task in tasks:  # retrieve errors, so none is reported as "never retrieved"
        if task.done() and not task.cancelled() and task.exception() is not None:
            log.debug("%s: %s ended with %r", what, task.get_name(), task.exception())
    return []
