"""Frequency per area from the sites' measurements, and the alert state machine. Pure and
clocked: no I/O, the caller passes the time (STYLE item 8).

Every inverter measures the grid frequency at its terminals; the agents send it with every
telemetry sample (`grid_frequency_hz`). A site belongs to an area (settings
`grid_site_areas`, default the plane's zone). An area's frequency is the **median** of its
sites' fresh readings (newer than `stale_after`): the frequency is one value across a
synchronous area, so one faulty meter must not move it; min and max show the spread.

**Alerts.** An area's level is `normal` inside the normal band, `warn` outside it, `alarm`
outside the alarm band (edges count as inside). An alert is raised when the level rises
(normal -> warn, normal/warn -> alarm): once per crossing, not per sample. Falling back to
normal raises a `normal` ("cleared") alert and closes the excursion. Going down from alarm to
warn raises nothing but re-arms the alarm. No fresh reading leaves the level as it was (an
agent that stops reporting neither raises nor clears anything).

**Excursions** (the hil frequency events as the plane sees them): each time outside the
normal band is kept (newest `keep` of them) with its worst level and the extreme reading.
"""

from __future__ import annotations

import math
import statistics
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from typing import Any

from .models import (
    AreaFrequency,
    FrequencyBands,
    FrequencyExcursion,
    Level,
    SiteFrequency,
)


@dataclass(frozen=True, slots=True)
class _Reading:
    at: datetime
    hz: float


@dataclass(frozen=True, slots=True, kw_only=True)
class Alert:
    """A level change worth telling: `level` is the new one (`normal` = cleared)."""

    area: str
    level: Level
    previous_level: Level
    frequency_hz: float
    at: datetime
    message: str

    def as_event(self) -> dict[str, Any]:
        return {
            "area": self.area,
            "level": self.level.value,
            "previous_level": self.previous_level.value,
            "frequency_hz": self.frequency_hz,
            "at": self.at.isoformat(),
            "message": self.message,
        }


class FrequencyMonitor:
    """Latest reading per site, the areas' frequency and their alert state."""

    def __init__(
        self,
        *,
        bands: FrequencyBands,
        area_of: Mapping[str, str],
        default_area: str,
        stale_after: timedelta,
        keep: int = 50,
    ) -> None:
        self.bands = bands
        self._area_of = dict(area_of)
        self.default_area = default_area
        self.stale_after = stale_after
        self._latest: dict[str, _Reading] = {}
        self._levels: dict[str, Level] = {}
        self._open: dict[str, FrequencyExcursion] = {}
        self._closed: deque[FrequencyExcursion] = deque(maxlen=keep)

    def area(self, site_id: str) -> str:
        return self._area_of.get(site_id, self.default_area)

    @property
    def configured_areas(self) -> set[str]:
        return set(self._area_of.values()) | {self.default_area}

    def observe(
        self, site_id: str, at: datetime, hz: float | None, *, now: datetime
    ) -> list[Alert]:
        """Take one site's reading (older than the one held: ignored); the alerts it causes."""
        if hz is None or not math.isfinite(hz) or hz <= 0:
            return []
        held = self._latest.get(site_id)
        if held is not None and held.at > at:
            return []
        self._latest[site_id] = _Reading(at, hz)
        return self.evaluate(self.area(site_id), now=now)

    def known_areas(self) -> set[str]:
        return {self.area(s) for s in self._latest} | self.configured_areas

    def frequency(self, area: str, *, now: datetime) -> AreaFrequency:
        sites = tuple(
            SiteFrequency(
                site_id=site_id,
                area=area,
                frequency_hz=r.hz,
                measured_at=r.at,
                stale=now - r.at > self.stale_after,
            )
            for site_id, r in sorted(self._latest.items())
            if self.area(site_id) == area
        )
        fresh = [s.frequency_hz for s in sites if not s.stale]
        hz = statistics.median(fresh) if fresh else None
        return AreaFrequency(
            area=area,
            frequency_hz=hz,
            min_hz=min(fresh) if fresh else None,
            max_hz=max(fresh) if fresh else None,
            level=self.bands.level(hz),
            sites=sites,
        )

    def level(self, area: str) -> Level:
        """The area's alert level as last evaluated (unknown before any reading)."""
        return self._levels.get(area, Level.UNKNOWN)

    def evaluate(self, area: str, *, now: datetime) -> list[Alert]:
        current = self.frequency(area, now=now)
        hz, new = current.frequency_hz, current.level
        if hz is None or new is Level.UNKNOWN:
            return []
        previous = self._levels.get(area, Level.NORMAL)
        self._levels[area] = new
        self._track(area, new, hz, now)
        if new.rank > previous.rank and new in (Level.WARN, Level.ALARM):
            band = (
                (self.bands.alarm_low_hz, self.bands.alarm_high_hz)
                if new is Level.ALARM
                else (self.bands.warn_low_hz, self.bands.warn_high_hz)
            )
            message = (
                f"grid frequency in {area} is {hz:.3f} Hz, outside the "
                f"{'alarm' if new is Level.ALARM else 'normal'} band {band[0]:g}-{band[1]:g} Hz "
                f"({current.fresh_sites} site(s) reporting)"
            )
            return [self._alert(area, new, previous, hz, now, message)]
        if new is Level.NORMAL and previous in (Level.WARN, Level.ALARM):
            message = f"grid frequency in {area} is back in the normal band: {hz:.3f} Hz"
            return [self._alert(area, new, previous, hz, now, message)]
        return []

    def excursions(self) -> list[FrequencyExcursion]:
        """Recent and open excursions, newest first."""
        found = [*self._closed, *self._open.values()]
        return sorted(found, key=lambda e: e.started_at, reverse=True)

    def _track(self, area: str, level: Level, hz: float, now: datetime) -> None:
        open_ = self._open.get(area)
        if level is Level.NORMAL:
            if open_ is not None:
                self._closed.append(replace(open_, ended_at=now))
                del self._open[area]
            return
        if open_ is None:
            self._open[area] = FrequencyExcursion(
                area=area, level=level, started_at=now, ended_at=None, extreme_hz=hz
            )
            return
        nominal = self.bands.nominal_hz
        extreme = hz if abs(hz - nominal) > abs(open_.extreme_hz - nominal) else open_.extreme_hz
        worst = level if level.rank > open_.level.rank else open_.level
        self._open[area] = replace(open_, level=worst, extreme_hz=extreme)

    @staticmethod
    def _alert(
        area: str, level: Level, previous: Level, hz: float, now: datetime, message: str
    ) -> Alert:
        return Alert(
            area=area,
            level=level,
            previous_level=previous,
            frequency_hz=hz,
            at=now,
            message=message,
        )
