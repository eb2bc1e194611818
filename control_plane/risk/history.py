"""Price history as risk-factor scenarios: one row per UTC day, one column per quarter-hour.

`DailyPrices.from_points` lays a zone's price points (PT15M or PT60M; an hour fills its four
quarters) on a grid of complete UTC days x 96 quarter-hours; a day with any quarter missing is
left out (a UTC day always has 96 quarters, DST or not). `changes(horizon_days)` gives the
H-day price changes ``P[d] - P[d-H]`` for every day d whose day d-H is also there: the
scenarios of historical simulation and the sample of the Monte Carlo covariance.

`FactorHistory.join` puts several zones side by side on their common days (factor order: the
zones in the order given, 96 slots each), so a portfolio trading in AT and DE_LU gets
scenarios in which both zones move as they did on the same day.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from typing import Final

import numpy as np

from control_plane.market.models import PricePoint

from .var import FloatArray

__all__ = ["SLOTS_PER_DAY", "DailyPrices", "FactorHistory", "slot_of"]

SLOTS_PER_DAY: Final = 96


def slot_of(moment: datetime) -> int:
    """The quarter-hour of the UTC day `moment` falls in, 0..95."""
    utc = moment.astimezone(UTC)
    return utc.hour * 4 + utc.minute // 15


@dataclass(frozen=True, slots=True)
class DailyPrices:
    """One zone's complete UTC days of quarter-hour prices (EUR/MWh)."""

    zone: str
    days: tuple[date, ...]
    prices: FloatArray
    """len(days) x 96."""

    @classmethod
    def from_points(cls, zone: str, points: Iterable[PricePoint]) -> DailyPrices:
        grid: dict[date, FloatArray] = {}
        for point in points:
            start = point.start.astimezone(UTC)
            minutes = point.resolution.minutes
            for offset in range(0, minutes, 15):
                moment = start + timedelta(minutes=offset)
                row = grid.get(moment.date())
                if row is None:
                    row = grid[moment.date()] = np.full(SLOTS_PER_DAY, np.nan)
                row[slot_of(moment)] = point.price_eur_per_mwh
        days = sorted(d for d, row in grid.items() if not np.isnan(row).any())
        matrix = np.array([grid[d] for d in days]) if days else np.empty((0, SLOTS_PER_DAY))
        return cls(zone, tuple(days), matrix)

    def changes(self, horizon_days: int) -> tuple[tuple[date, ...], FloatArray]:
        """(the days d, their H-day changes P[d] - P[d-H]) for each d with d-H present."""
        if horizon_days < 1:
            raise ValueError("the horizon must be at least one day")
        index = {d: i for i, d in enumerate(self.days)}
        pairs = [
            (d, i, index[d - timedelta(days=horizon_days)])
            for i, d in enumerate(self.days)
            if d - timedelta(days=horizon_days) in index
        ]
        if not pairs:
            return (), np.empty((0, SLOTS_PER_DAY))
        now = np.array([i for _, i, _ in pairs])
        then = np.array([j for _, _, j in pairs])
        return tuple(d for d, _, _ in pairs), self.prices[now] - self.prices[then]


@dataclass(frozen=True, slots=True)
class FactorHistory:
    """Scenarios of price changes for factors (zone, slot), zones side by side."""

    zones: tuple[str, ...]
    days: tuple[date, ...]
    changes: FloatArray
    """len(days) x (96 x len(zones))."""

    @classmethod
    def join(cls, histories: Sequence[DailyPrices], horizon_days: int) -> FactorHistory:
        per_zone = [h.changes(horizon_days) for h in histories]
        common = set(per_zone[0][0]) if per_zone else set()
        for days, _ in per_zone[1:]:
            common &= set(days)
        ordered = tuple(sorted(common))
        blocks = []
        for days, matrix in per_zone:
            where = {d: i for i, d in enumerate(days)}
            rows = [where[d] for d in ordered]
            blocks.append(matrix[rows] if rows else np.empty((0, SLOTS_PER_DAY)))
        changes = np.hstack(blocks) if blocks else np.empty((0, 0))
        return cls(tuple(h.zone for h in histories), ordered, changes)

    def window(self, days: int) -> FactorHistory:
        """The last `days` scenarios."""
        return FactorHistory(self.zones, self.days[-days:], self.changes[-days:])
