"""The market-data vocabulary every source, the store, the forecasts and the optimiser share.

A **price point** is one delivery interval of one bidding zone from one source: its start (UTC,
timezone-aware, DESIGN 8), its resolution (PT15M, PT30M or PT60M: the day-ahead auction runs
15-minute products since 1 October 2025 and older data is hourly, so one zone can have several
resolutions for the same hour; they are kept apart, never mixed into one series) and its price
in EUR/MWh (DESIGN 7: ct/kWh and EUR/kWh are converted at the boundary, `to_eur_per_mwh`).
Negative prices are valid. A price outside the plausibility bounds is kept and flagged, never
dropped.

Prices are floats: they feed statistics, forecasts and linear programs, and the sources publish
at most two decimals. The exchange's money arithmetic (Decimal) stays in the exchange.

Errors, one tree (STYLE 10):

    MarketDataError
    ├── UnknownZoneError (ValueError)    a zone code or EIC that is not in `ZONES`
    ├── UnitError (ValueError)           a price unit other than EUR/MWh, EUR/kWh, ct/kWh
    ├── DocumentError (ValueError)       a document (XML, JSON, CSV) that cannot be read: names
    │                                    the document and the problem (line/element where known)
    ├── NoDataError                      the source answered, with no data for the request
    │                                    (ENTSO-E acknowledgement "No matching data found")
    └── SourceError                      the source could not be reached or refused the request
                                         (HTTP status, timeout); says whether a retry may help
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from typing import Final

__all__ = [
    "DEFAULT_PRICE_BOUNDS",
    "ZONES",
    "DocumentError",
    "MarketDataError",
    "NoDataError",
    "PricePoint",
    "Resolution",
    "SourceError",
    "UnitError",
    "UnknownZoneError",
    "Zone",
    "flag_out_of_bounds",
    "to_eur_per_mwh",
    "zone",
]


class MarketDataError(Exception):
    """Base of every market-data error."""


class UnknownZoneError(MarketDataError, ValueError):
    def __init__(self, code: str) -> None:
        self.code = code
        known = ", ".join(f"{z.code} ({z.eic})" for z in ZONES.values())
        super().__init__(f"unknown bidding zone {code!r}; known: {known}")


class UnitError(MarketDataError, ValueError):
    def __init__(self, unit: str) -> None:
        self.unit = unit
        super().__init__(f"unknown price unit {unit!r}; use one of {', '.join(UNIT_FACTORS)}")


class DocumentError(MarketDataError, ValueError):
    """A document that cannot be read; `document` names it, `problem` says why."""

    def __init__(self, document: str, problem: str) -> None:
        self.document = document
        self.problem = problem
        super().__init__(f"{document}: {problem}")


class NoDataError(MarketDataError):
    """The source has no data for the request (not a failure: nothing to store)."""


class SourceError(MarketDataError):
    """The source failed; `retryable` says whether trying again later may help."""

    def __init__(self, message: str, *, retryable: bool, status: int | None = None) -> None:
        self.retryable = retryable
        self.status = status
        super().__init__(message)


class Resolution(StrEnum):
    """ISO 8601 durations as ENTSO-E writes them."""

    PT15M = "PT15M"
    PT30M = "PT30M"
    PT60M = "PT60M"

    @property
    def minutes(self) -> int:
        return {"PT15M": 15, "PT30M": 30, "PT60M": 60}[self.value]

    @property
    def delta(self) -> timedelta:
        return timedelta(minutes=self.minutes)

    @classmethod
    def parse(cls, text: str) -> Resolution:
        """`PT15M`, `PT30M`, `PT60M` (and `PT1H`, ENTSO-E's other spelling of an hour)."""
        value = text.strip().upper()
        if value == "PT1H":
            return cls.PT60M
        try:
            return cls(value)
        except ValueError:
            raise ValueError(
                f"unsupported resolution {text!r}; expected PT15M, PT30M or PT60M"
            ) from None


@dataclass(frozen=True, slots=True)
class Zone:
    """A bidding zone: our short code, the ENTSO-E EIC, and its local time zone (for display,
    files and invoices only)."""

    code: str
    eic: str
    timezone: str
    name: str


ZONES: Final[dict[str, Zone]] = {
    z.code: z
    for z in (
        Zone("AT", "10YAT-APG------L", "Europe/Vienna", "Austria"),
        Zone("DE_LU", "10Y1001A1001A82H", "Europe/Berlin", "Germany-Luxembourg"),
        Zone("CH", "10YCH-SWISSGRIDZ", "Europe/Zurich", "Switzerland"),
        Zone("IT_NORD", "10Y1001A1001A73I", "Europe/Rome", "Italy North"),
        Zone("BE", "10YBE----------2", "Europe/Brussels", "Belgium"),
        Zone("NL", "10YNL----------L", "Europe/Amsterdam", "Netherlands"),
        Zone("FR", "10YFR-RTE------C", "Europe/Paris", "France"),
        Zone("CZ", "10YCZ-CEPS-----N", "Europe/Prague", "Czech Republic"),
        Zone("HU", "10YHU-MAVIR----U", "Europe/Budapest", "Hungary"),
        Zone("SI", "10YSI-ELES-----O", "Europe/Ljubljana", "Slovenia"),
        Zone("PL", "10YPL-AREA-----S", "Europe/Warsaw", "Poland"),
    )
}
_BY_EIC: Final = {z.eic: z for z in ZONES.values()}


def zone(code_or_eic: str) -> Zone:
    """The zone for a short code (`AT`, `de_lu`, `DE-LU`) or an EIC (`10YAT-APG------L`).

    An EIC that is not in `ZONES` is accepted as its own zone (code = EIC, UTC display), so any
    ENTSO-E bidding zone can be fetched; a short code must be known."""
    text = code_or_eic.strip()
    found = _BY_EIC.get(text) or ZONES.get(text.upper().replace("-", "_"))
    if found is not None:
        return found
    if len(text) == 16 and text[:2] == "10" and text[2] in "YXZTVW":
        return Zone(text, text, "UTC", text)
    raise UnknownZoneError(text)


UNIT_FACTORS: Final = {"EUR/MWh": 1.0, "EUR/kWh": 1000.0, "ct/kWh": 10.0}
"""Multiply a price in the key's unit by the value to get EUR/MWh."""


def to_eur_per_mwh(value: float, unit: str) -> float:
    """A price in `unit` (EUR/MWh, EUR/kWh, ct/kWh; case-insensitive) in EUR/MWh."""
    for name, factor in UNIT_FACTORS.items():
        if unit.strip().lower() == name.lower():
            return value * factor
    raise UnitError(unit)


DEFAULT_PRICE_BOUNDS: Final = (-500.0, 4000.0)
"""Plausibility bounds in EUR/MWh: the harmonised day-ahead range (DESIGN 7)."""


@dataclass(frozen=True, slots=True, kw_only=True)
class PricePoint:
    """One delivery interval's price of one zone from one source."""

    zone: str
    """Zone code (`AT`) or, for a zone not in `ZONES`, its EIC."""
    start: datetime
    """Start of delivery, UTC, timezone-aware."""
    resolution: Resolution
    price_eur_per_mwh: float
    source: str
    """`entsoe`, `awattar`, `file:<name>`, ..."""
    sequence: str = ""
    """The auction the price comes from where a zone has several (e.g. `SDAC`, `EXAA` for AT);
    empty when the source does not say."""
    flag: str = ""
    """Why the price is suspicious (e.g. outside the plausibility bounds); empty = plausible."""

    def __post_init__(self) -> None:
        if self.start.tzinfo is None:
            raise ValueError(f"PricePoint.start must be timezone-aware, got {self.start!r}")
        if self.start.utcoffset() != timedelta(0):
            object.__setattr__(self, "start", self.start.astimezone(UTC))

    @property
    def end(self) -> datetime:
        return self.start + self.resolution.delta


def flag_out_of_bounds(
    points: Iterable[PricePoint], bounds: tuple[float, float] = DEFAULT_PRICE_BOUNDS
) -> list[PricePoint]:
    """The points, each one outside `bounds` (inclusive) flagged with the reason; none dropped."""
    low, high = bounds
    result = []
    for p in points:
        price = p.price_eur_per_mwh
        if (price < low or price > high) and not p.flag:
            p = PricePoint(
                zone=p.zone,
                start=p.start,
                resolution=p.resolution,
                price_eur_per_mwh=price,
                source=p.source,
                sequence=p.sequence,
                flag=f"outside plausibility bounds {low:g} .. {high:g} EUR/MWh",
            )
        result.append(p)
    return result
