"""Where load and tie-line flows come from: ENTSO-E, or no source at all.

`GridDataSource` is the capability (`load(zone, start, end)`, `flows(from, to, start, end)`).
`EntsoeGridSource` implements it over the ENTSO-E Transparency Platform with the market
package's `Fetcher` (one request per second, retries with backoff on 429/5xx, the token
masked in every log line and error):

- **Actual total load, document A65** (processType A16 "realised",
  `outBiddingZone_Domain` = the zone's EIC): a `GL_MarketDocument` of `TimeSeries` /
  `Period` / `Point` (`position`, `quantity`, MW).
- **Physical flows, document A11** (`out_Domain` -> `in_Domain`): a
  `Publication_MarketDocument` of the same shape, MW >= 0 per direction. A tie line's net
  flow a -> b is flow(a -> b) - flow(b -> a) for the same interval.

The parser `parse_quantities` reads them as `entsoe.parse_a44` reads prices: the namespace
from the root element, resolutions kept per period, curve A03 forward-filled and A01 with
every position required, units checked (MAW = MW), an `Acknowledgement_MarketDocument`
reason 999 is `NoDataError`, anything unreadable a `DocumentError` naming where it is.

Without a token there is no source (`NoGridSource`): the grid state says so, it never shows
made-up numbers.
"""

from __future__ import annotations

import asyncio
import math
import random
import time
import xml.etree.ElementTree as ET
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Final, Protocol

import httpx

from control_plane.market.entsoe import DEFAULT_BASE_URL, TOKEN_ENV
from control_plane.market.fetching import Fetcher, FetchingClient, RetrySettings, Sleep, redact
from control_plane.market.models import (
    DocumentError,
    NoDataError,
    Resolution,
    SourceError,
    UnknownZoneError,
    Zone,
    zone,
)

from .models import FlowPoint, LoadPoint, NoGridSourceError

__all__ = ["EntsoeGridSource", "GridDataSource", "NoGridSource", "parse_quantities"]

_NO_DATA_CODE: Final = "999"
_UNITS: Final = {"MAW": 1.0, "KW": 0.001}


class GridDataSource(Protocol):
    name: str

    async def load(self, zone_code: str, start: datetime, end: datetime) -> list[LoadPoint]: ...

    async def flows(
        self, from_zone: str, to_zone: str, start: datetime, end: datetime
    ) -> list[FlowPoint]: ...

    async def aclose(self) -> None: ...


class NoGridSource:
    """No load or flow source is configured: every call says so."""

    name = "none"

    def __init__(self, reason: str) -> None:
        self.reason = reason

    async def load(self, zone_code: str, start: datetime, end: datetime) -> list[LoadPoint]:
        raise NoGridSourceError(self.reason)

    async def flows(
        self, from_zone: str, to_zone: str, start: datetime, end: datetime
    ) -> list[FlowPoint]:
        raise NoGridSourceError(self.reason)

    async def aclose(self) -> None:
        return None


def _time(text: str | None, where: str, element: str, document: str) -> datetime:
    if text is None or not text.strip():
        raise DocumentError(document, f"{where}: missing <{element}>")
    try:
        value = datetime.fromisoformat(text.strip())
    except ValueError:
        raise DocumentError(
            document, f"{where}: <{element}> {text.strip()!r} is not an ISO 8601 time"
        ) from None
    if value.tzinfo is None:
        raise DocumentError(document, f"{where}: <{element}> {text.strip()!r} has no UTC offset")
    return value.astimezone(UTC)


def parse_quantities(
    data: bytes, *, document: str, doc_type: str
) -> list[tuple[dict[str, str], datetime, int, float]]:
    """The points of an A65 or A11 answer: (series fields, start, minutes, MW), oldest first.

    `series fields` are the series' domain mRIDs (`outBiddingZone_Domain.mRID`,
    `in_Domain.mRID`, `out_Domain.mRID`, whichever it has)."""
    try:
        root = ET.fromstring(data)  # noqa: S314 (expat >= 2.4; no external entities)
    except ET.ParseError as exc:
        raise DocumentError(document, f"malformed XML: {exc}") from None
    ns_uri, _, local = root.tag.rpartition("}")
    ns = f"{ns_uri}}}" if ns_uri else ""
    if local == "Acknowledgement_MarketDocument":
        reasons = []
        codes = []
        for reason in root.iter(f"{ns}Reason"):
            code = (reason.findtext(f"{ns}code") or "").strip()
            codes.append(code)
            reasons.append(f"[{code}] {(reason.findtext(f'{ns}text') or '').strip()}")
        message = "; ".join(reasons) or "acknowledgement without a reason"
        if _NO_DATA_CODE in codes:
            raise NoDataError(f"{document}: ENTSO-E has no data: {message}")
        raise SourceError(f"{document}: ENTSO-E refused: {redact(message)}", retryable=False)
    if local not in ("GL_MarketDocument", "Publication_MarketDocument"):
        raise DocumentError(
            document,
            f"root element is <{local}>; expected <GL_MarketDocument> (load), "
            "<Publication_MarketDocument> (flows) or <Acknowledgement_MarketDocument>",
        )
    found_type = (root.findtext(f"{ns}type") or "").strip()
    if found_type and found_type != doc_type:
        raise DocumentError(document, f"document type is {found_type!r}, not {doc_type}")
    out: list[tuple[dict[str, str], datetime, int, float]] = []
    for s_index, series in enumerate(root.iterfind(f"{ns}TimeSeries"), start=1):
        where_s = f"TimeSeries {s_index}"
        fields = {
            name: (series.findtext(f"{ns}{name}") or "").strip()
            for name in ("outBiddingZone_Domain.mRID", "in_Domain.mRID", "out_Domain.mRID")
        }
        unit = (series.findtext(f"{ns}quantity_Measure_Unit.name") or "MAW").strip().upper()
        factor = _UNITS.get(unit)
        if factor is None:
            raise DocumentError(document, f"{where_s}: quantity unit {unit!r}; expected MAW (MW)")
        curve = (series.findtext(f"{ns}curveType") or "A01").strip()
        if curve not in ("A01", "A03"):
            raise DocumentError(document, f"{where_s}: curve type {curve!r}; only A01 and A03")
        for p_index, period in enumerate(series.iterfind(f"{ns}Period"), start=1):
            where_p = f"{where_s}, Period {p_index}"
            interval = period.find(f"{ns}timeInterval")
            if interval is None:
                raise DocumentError(document, f"{where_p}: missing <timeInterval>")
            start = _time(interval.findtext(f"{ns}start"), where_p, "start", document)
            end = _time(interval.findtext(f"{ns}end"), where_p, "end", document)
            try:
                resolution = Resolution.parse((period.findtext(f"{ns}resolution") or "").strip())
            except ValueError as exc:
                raise DocumentError(document, f"{where_p}: {exc}") from None
            delta = resolution.delta
            if end <= start or (end - start) % delta:
                raise DocumentError(
                    document, f"{where_p}: the period is not a whole number of {resolution.value}"
                )
            count = (end - start) // delta
            values: list[float | None] = [None] * count
            for t_index, point in enumerate(period.iterfind(f"{ns}Point"), start=1):
                pos_text = point.findtext(f"{ns}position")
                qty_text = point.findtext(f"{ns}quantity")
                try:
                    position = int(pos_text)  # type: ignore[arg-type]
                    quantity = float(qty_text)  # type: ignore[arg-type]
                except (TypeError, ValueError):
                    raise DocumentError(
                        document,
                        f"{where_p}, Point {t_index}: position {pos_text!r} / quantity "
                        f"{qty_text!r} is not a number",
                    ) from None
                if not 0 < position <= count:
                    raise DocumentError(
                        document,
                        f"{where_p}, Point {t_index}: position {position} not in 1..{count}",
                    )
                if not math.isfinite(quantity):
                    raise DocumentError(
                        document, f"{where_p}, Point {t_index}: quantity not finite"
                    )
                values[position - 1] = quantity * factor
            if curve == "A03":
                if values[0] is None:
                    raise DocumentError(document, f"{where_p}: curve A03 without position 1")
                previous = values[0]
                for i, value in enumerate(values):
                    if value is None:
                        values[i] = previous
                    else:
                        previous = value
            elif None in values:
                missing = [i + 1 for i, v in enumerate(values) if v is None]
                raise DocumentError(
                    document,
                    f"{where_p}: curve A01 must list every position; {len(missing)} of {count} "
                    f"missing ({', '.join(map(str, missing[:10]))})",
                )
            for i, value in enumerate(values):
                out.append((fields, start + i * delta, resolution.minutes, float(value or 0.0)))
    out.sort(key=lambda item: item[1])
    return out


def _api_time(at: datetime) -> str:
    return at.astimezone(UTC).strftime("%Y%m%d%H%M")


class EntsoeGridSource(FetchingClient):
    """Actual load (A65) and physical flows (A11) from the ENTSO-E RESTful API."""

    name = "entsoe"

    def __init__(
        self,
        token: str,
        *,
        base_url: str = DEFAULT_BASE_URL,
        http: httpx.AsyncClient | None = None,
        retry: RetrySettings | None = None,
        clock: Callable[[], float] | None = None,
        sleep: Sleep | None = None,
        jitter: Callable[[], float] | None = None,
    ) -> None:
        if not token.strip():
            raise SourceError(f"ENTSO-E token is empty: set {TOKEN_ENV}", retryable=False)
        self.__token = token.strip()
        self.base_url = base_url
        self._own_http = http is None
        self._http = http or httpx.AsyncClient()
        self._fetcher = Fetcher(
            label="ENTSO-E grid",
            http=self._http,
            settings=retry or RetrySettings(),
            clock=clock or time.monotonic,
            sleep=sleep or asyncio.sleep,
            jitter=jitter or random.random,
        )

    def __repr__(self) -> str:
        return f"EntsoeGridSource(base_url={self.base_url!r}, token=***)"

    async def load(self, zone_code: str, start: datetime, end: datetime) -> list[LoadPoint]:
        z = _zone(zone_code)
        document = f"ENTSO-E A65 {z.code} {start:%Y-%m-%dT%H:%MZ} .. {end:%Y-%m-%dT%H:%MZ}"
        params = {
            "documentType": "A65",
            "processType": "A16",
            "outBiddingZone_Domain": z.eic,
            "periodStart": _api_time(start),
            "periodEnd": _api_time(end),
        }
        points = await self._get(params, document, "A65")
        return [
            LoadPoint(zone=z.code, start=at, minutes=minutes, load_mw=mw)
            for _, at, minutes, mw in points
            if start <= at < end
        ]

    async def flows(
        self, from_zone: str, to_zone: str, start: datetime, end: datetime
    ) -> list[FlowPoint]:
        a, b = _zone(from_zone), _zone(to_zone)
        document = f"ENTSO-E A11 {a.code}>{b.code} {start:%Y-%m-%dT%H:%MZ} .. {end:%Y-%m-%dT%H:%MZ}"
        params = {
            "documentType": "A11",
            "out_Domain": a.eic,
            "in_Domain": b.eic,
            "periodStart": _api_time(start),
            "periodEnd": _api_time(end),
        }
        points = await self._get(params, document, "A11")
        return [
            FlowPoint(from_zone=a.code, to_zone=b.code, start=at, minutes=minutes, flow_mw=mw)
            for _, at, minutes, mw in points
            if start <= at < end
        ]

    async def _get(
        self, params: dict[str, str], document: str, doc_type: str
    ) -> list[tuple[dict[str, str], datetime, int, float]]:
        response = await self._fetcher.get(self.base_url, params | {"securityToken": self.__token})
        status = response.status_code
        if status in (401, 403):
            raise SourceError(
                f"ENTSO-E refused the token ({status}): check {TOKEN_ENV}",
                retryable=False,
                status=status,
            )
        if status == 200 or response.content.lstrip().startswith(b"<"):
            return parse_quantities(response.content, document=document, doc_type=doc_type)
        body = redact(response.text[:300].strip())
        raise SourceError(
            f"ENTSO-E answered {status} to {document}: {body or 'empty body'}",
            retryable=False,
            status=status,
        )


def _zone(code: str) -> Zone:
    try:
        return zone(code)
    except UnknownZoneError:
        raise ValueError(
            f"{code!r} is not a bidding zone (a code such as AT or DE_LU, or an EIC)"
        ) from None


def latest_window(now: datetime, hours: int = 6) -> tuple[datetime, datetime]:
    """The window asked for "the latest" value: the last `hours` up to the next full hour."""
    end = now.astimezone(UTC).replace(minute=0, second=0, microsecond=0) + timedelta(hours=1)
    return end - timedelta(hours=hours), end
