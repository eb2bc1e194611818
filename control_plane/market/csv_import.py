"""Price files: a CSV of (time, price) rows in local time or with offsets, any of the price
units, mapped to UTC price points.

Local time is what files from utilities and research repositories hold, and it is ambiguous
twice a year (DESIGN 8). The rules, which `../shared/data/be_dayahead_2022_2023.csv` needs:

- a local time that does not exist (the spring-forward hour) is dropped if its price is empty,
  and refused (`DocumentError`) if it has one: that row cannot be placed in time;
- a local time that occurs twice (the fall-back hour) is taken in file order: the first row is
  the summer-time hour, the second the winter-time hour (`fold`); a third is refused;
- a timestamp with an offset (`2025-01-01T00:00:00+01:00`, `...Z`) is used as it is.

Every other row must have a readable time and price (else `DocumentError` naming the file, the
line and the problem: nothing is half-imported), times must increase by exactly the
resolution in UTC (a gap or a duplicate is an error), and prices outside the plausibility
bounds are kept and flagged.
"""

from __future__ import annotations

import csv
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from .models import (
    DEFAULT_PRICE_BOUNDS,
    DocumentError,
    PricePoint,
    Resolution,
    flag_out_of_bounds,
    to_eur_per_mwh,
    zone,
)

__all__ = ["CsvFormat", "ImportResult", "read_price_csv"]


@dataclass(frozen=True, slots=True, kw_only=True)
class CsvFormat:
    """How to read a price file; the defaults read the shared Belgian file."""

    time_column: str = "time"
    price_column: str = "DAM_price"
    time_format: str = "%d%b%Y %H:%M:%S"
    """strptime format; `iso` for ISO 8601 (with or without an offset)."""
    timezone: str = "Europe/Brussels"
    """Time zone of times written without an offset."""
    unit: str = "EUR/kWh"
    resolution: Resolution = Resolution.PT60M
    delimiter: str = ","


@dataclass(frozen=True, slots=True)
class ImportResult:
    points: list[PricePoint]
    dropped: list[str] = field(default_factory=list)
    """One line per row left out on purpose (nonexistent local time with no price)."""


def read_price_csv(
    path: Path,
    *,
    zone_code: str,
    fmt: CsvFormat | None = None,
    bounds: tuple[float, float] = DEFAULT_PRICE_BOUNDS,
) -> ImportResult:
    """The file's prices for `zone_code` as UTC points (source `file:<name>`)."""
    fmt = fmt or CsvFormat()
    zone_id = zone(zone_code).code
    try:
        tz = ZoneInfo(fmt.timezone)
    except (ZoneInfoNotFoundError, ValueError):
        raise DocumentError(str(path), f"unknown time zone {fmt.timezone!r}") from None
    to_eur_per_mwh(1.0, fmt.unit)  # UnitError now, not after reading the file
    name = str(path)
    points: list[PricePoint] = []
    dropped: list[str] = []
    seen: dict[datetime, int] = {}
    step = fmt.resolution.delta
    for line, when_text, price_text in _rows(path, fmt):
        where = f"line {line}"
        local = _parse_time(name, where, when_text, fmt.time_format)
        if local.tzinfo is None:
            occurrence = seen.get(local, 0)
            seen[local] = occurrence + 1
            start = _to_utc(local, tz, occurrence)
            if start is None:
                if price_text.strip():
                    raise DocumentError(
                        name,
                        f"{where}: {when_text!r} does not exist in {fmt.timezone} (the clocks "
                        f"jump forward) but has a price {price_text!r}",
                    )
                dropped.append(f"{where}: {when_text} does not exist in {fmt.timezone}")
                continue
            if occurrence > 1 or (occurrence == 1 and start == _to_utc(local, tz, 0)):
                raise DocumentError(
                    name,
                    f"{where}: {when_text!r} appears more often than the "
                    f"local time occurs in {fmt.timezone}",
                )
        else:
            start = local.astimezone(UTC)
        price = _parse_price(name, where, price_text, fmt.unit)
        if points and start != points[-1].start + step:
            expected = points[-1].start + step
            raise DocumentError(
                name,
                f"{where}: {when_text!r} is {start:%Y-%m-%dT%H:%MZ} but the next "
                f"{fmt.resolution.value} interval starts {expected:%Y-%m-%dT%H:%MZ} (a gap, a "
                "duplicate or rows out of order)",
            )
        points.append(
            PricePoint(
                zone=zone_id,
                start=start,
                resolution=fmt.resolution,
                price_eur_per_mwh=price,
                source=f"file:{path.name}",
            )
        )
    if not points:
        raise DocumentError(name, "no price rows")
    return ImportResult(flag_out_of_bounds(points, bounds), dropped)


def _rows(path: Path, fmt: CsvFormat) -> Iterator[tuple[int, str, str]]:
    try:
        handle = path.open(newline="", encoding="utf-8-sig")
    except OSError as exc:
        raise DocumentError(str(path), exc.strerror or str(exc)) from None
    with handle:
        reader = csv.DictReader(handle, delimiter=fmt.delimiter)
        header = reader.fieldnames or []
        for column in (fmt.time_column, fmt.price_column):
            if column not in header:
                raise DocumentError(
                    str(path),
                    f"no column {column!r} in the header {', '.join(header) or '(empty)'}",
                )
        try:
            for row in reader:
                yield reader.line_num, row[fmt.time_column] or "", row[fmt.price_column] or ""
        except (csv.Error, UnicodeDecodeError) as exc:
            raise DocumentError(str(path), f"line {reader.line_num}: {exc}") from None


def _parse_time(name: str, where: str, text: str, time_format: str) -> datetime:
    value = text.strip()
    try:
        if time_format == "iso":
            return datetime.fromisoformat(value.replace("Z", "+00:00"))
        return datetime.strptime(value, time_format)
    except ValueError:
        raise DocumentError(
            name, f"{where}: time {text!r} does not match the format {time_format!r}"
        ) from None


def _parse_price(name: str, where: str, text: str, unit: str) -> float:
    value = text.strip()
    if not value:
        raise DocumentError(name, f"{where}: the price is empty")
    try:
        number = float(value)
    except ValueError:
        raise DocumentError(name, f"{where}: price {text!r} is not a number") from None
    if number != number or number in (float("inf"), float("-inf")):
        raise DocumentError(name, f"{where}: price {text!r} is not finite")
    return to_eur_per_mwh(number, unit)


def _to_utc(local: datetime, tz: ZoneInfo, occurrence: int) -> datetime | None:
    """The UTC instant of a naive local time; None if it does not exist in `tz`."""
    aware = local.replace(tzinfo=tz, fold=min(occurrence, 1))
    utc = aware.astimezone(UTC)
    if utc.astimezone(tz).replace(tzinfo=None) != local:
        return None  # in the gap: round-tripping lands on another wall time
    return utc
