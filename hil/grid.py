"""Grid frequency as a deterministic signal: nominal plus seeded noise plus scheduled events.

The noise is an Ornstein-Uhlenbeck process (mean-reverting, like the real frequency between
primary-control actions); events override it, e.g. a 49.8 Hz dip for 30 s.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass


@dataclass(frozen=True)
class FrequencyEvent:
    """The frequency goes to ``hz`` at ``start`` (Unix s) for ``duration_s`` seconds."""

    start: float
    duration_s: float
    hz: float

    def active(self, t: float) -> bool:
        return self.start <= t < self.start + self.duration_s


class GridFrequency:
    def __init__(
        self,
        *,
        nominal_hz: float = 50.0,
        noise_std_hz: float = 0.02,
        reversion_s: float = 30.0,
        seed: int = 0,
    ) -> None:
        if noise_std_hz < 0 or reversion_s <= 0:
            raise ValueError("noise_std_hz must be >= 0 and reversion_s > 0")
        self.nominal_hz = nominal_hz
        self._std = noise_std_hz
        self._tau = reversion_s
        self._rng = random.Random(seed)
        self._deviation = 0.0
        self._events: list[FrequencyEvent] = []

    def add_event(self, event: FrequencyEvent) -> None:
        self._events.append(event)

    def clear_events(self) -> None:
        self._events.clear()

    def step(self, t: float, dt_s: float) -> float:
        """Advance the noise by ``dt_s`` and return the frequency at time ``t``."""
        if dt_s > 0 and self._std > 0:
            a = math.exp(-dt_s / self._tau)
            self._deviation = self._deviation * a + self._std * math.sqrt(
                1 - a * a
            ) * self._rng.gauss(0.0, 1.0)
        for event in self._events:
            if event.active(t):
                return event.hz + self._deviation * 0.1
        return self.nominal_hz + self._deviation
