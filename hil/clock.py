"""Clocks for the simulator: real time, accelerated time and fully stepped time.

All simulator time is Unix seconds (float, UTC). Physics never reads the wall clock itself;
it asks the clock it was given, so a 24-hour scenario runs in milliseconds under a
``SteppedClock`` and in minutes under an ``AcceleratedClock(speed=60)``.
"""

from __future__ import annotations

import time
from typing import Protocol


class Clock(Protocol):
    """Something that tells the simulated time in Unix seconds."""

    def now(self) -> float: ...

    @property
    def speed(self) -> float:
        """Simulated seconds per real second (0 for a stepped clock that only moves on demand)."""
        ...


class RealClock:
    """The wall clock."""

    speed = 1.0

    def now(self) -> float:
        return time.time()


class AcceleratedClock:
    """Simulated time that runs ``speed`` times faster than the wall clock."""

    def __init__(self, speed: float, start: float | None = None) -> None:
        if not speed > 0:
            raise ValueError(f"speed must be > 0, got {speed!r}")
        self._speed = float(speed)
        self._start = time.time() if start is None else float(start)
        self._mono0 = time.monotonic()

    @property
    def speed(self) -> float:
        return self._speed

    def now(self) -> float:
        return self._start + (time.monotonic() - self._mono0) * self._speed


class SteppedClock:
    """Time that moves only when told to: for tests and scenario runs."""

    speed = 0.0

    def __init__(self, start: float = 1_767_225_600.0) -> None:  # 2026-01-01T00:00:00Z
        self._now = float(start)

    def now(self) -> float:
        return self._now

    def advance(self, seconds: float) -> float:
        if seconds < 0:
            raise ValueError(f"a clock cannot go backwards ({seconds} s)")
        self._now += seconds
        return self._now
