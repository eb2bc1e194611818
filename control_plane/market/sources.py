"""Where prices come from: the `PriceSource` protocol, the file source, and the registry that
turns the plane's settings into configured sources.

A source answers one question: the prices of a zone for delivery intervals starting in
[start, end). It raises `NoDataError` when it answered with nothing (tomorrow not published
yet), `SourceError` when it could not be reached or refused (with `retryable`), and
`DocumentError` when its answer cannot be read. The ENTSO-E and aWattar clients implement the
same shape (a `name` and an async `fetch`); they register a factory under their name in
`SOURCE_FACTORIES`, and `build_sources(settings)` builds the ones `market_sources` names.

`FileSource` serves a CSV read once with `read_price_csv` (tests, demos, a utility's export):
what the file holds for the zone and window, `NoDataError` for anything else.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Protocol, runtime_checkable

from .csv_import import CsvFormat, read_price_csv
from .models import NoDataError, PricePoint, Zone, zone

if TYPE_CHECKING:
    from control_plane.config import PlaneSettings

__all__ = [
    "SOURCE_FACTORIES",
    "FileSource",
    "PriceSource",
    "SourceConfigError",
    "build_sources",
    "configured_source_names",
]


@runtime_checkable
class PriceSource(Protocol):
    """Prices of one provider (ENTSO-E, aWattar, a file)."""

    name: str
    """Stored as the points' `source` family and used as the metrics label: `entsoe`, ..."""

    async def fetch(self, zone: Zone, start: datetime, end: datetime) -> list[PricePoint]:
        """Points of `zone` whose delivery starts in [start, end), oldest first."""
        ...


class SourceConfigError(ValueError):
    """`market_sources` names a source this build cannot provide."""


SourceFactory = Callable[["PlaneSettings"], PriceSource]
SOURCE_FACTORIES: dict[str, SourceFactory] = {}
"""Source name -> factory from the settings; the ENTSO-E and aWattar clients register here."""


def configured_source_names(settings: PlaneSettings) -> list[str]:
    """The names the settings ask for: `market_sources`, or when unset `entsoe` if
    ENTSOE_TOKEN is set and the ENTSO-E client is in this build, else none."""
    if settings.market_sources is not None:
        return list(settings.market_sources)
    if settings.entsoe_token is not None and "entsoe" in SOURCE_FACTORIES:
        return ["entsoe"]
    return []


def build_sources(settings: PlaneSettings) -> list[PriceSource]:
    """The configured sources; SourceConfigError for a name no factory is registered for."""
    sources = []
    for name in configured_source_names(settings):
        factory = SOURCE_FACTORIES.get(name)
        if factory is None:
            known = ", ".join(sorted(SOURCE_FACTORIES)) or "none"
            raise SourceConfigError(
                f"market_sources names {name!r}, which this build does not provide "
                f"(available: {known}); remove it or install a build with that client"
            )
        sources.append(factory(settings))
    return sources


class FileSource:
    """The prices of one CSV file for one zone, read on the first fetch and kept."""

    def __init__(
        self, path: Path, *, zone_code: str, fmt: CsvFormat | None = None, name: str = "file"
    ) -> None:
        self.path = path
        self.zone = zone(zone_code).code
        self.fmt = fmt
        self.name = name
        self._points: list[PricePoint] | None = None

    async def fetch(self, zone: Zone, start: datetime, end: datetime) -> list[PricePoint]:
        if zone.code != self.zone:
            raise NoDataError(f"{self.path.name} holds prices of {self.zone}, not {zone.code}")
        if self._points is None:
            result = await asyncio.to_thread(
                read_price_csv, self.path, zone_code=self.zone, fmt=self.fmt
            )
            self._points = result.points
        found = [p for p in self._points if start <= p.start < end]
        if not found:
            raise NoDataError(
                f"{self.path.name} has no {self.zone} prices from {start:%Y-%m-%d %H:%M}Z "
                f"to {end:%Y-%m-%d %H:%M}Z"
            )
        return found


def _entsoe(settings: PlaneSettings) -> PriceSource:
    from .entsoe import EntsoeClient

    if settings.entsoe_token is None:
        raise SourceConfigError(
            "market_sources names 'entsoe' but ENTSOE_TOKEN is not set: request a token on the "
            "ENTSO-E Transparency Platform (My Account Settings) and set ENTSOE_TOKEN"
        )
    return EntsoeClient(token=settings.entsoe_token.get_secret_value())


def _awattar(settings: PlaneSettings) -> PriceSource:
    from .awattar import AwattarClient

    return AwattarClient()


SOURCE_FACTORIES.update(entsoe=_entsoe, awattar=_awattar)
