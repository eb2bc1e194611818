"""ENTSO-E Transparency Platform: day-ahead prices (document A44), the parser and the client.

**The parser**, `parse_a44`, reads the API's answer as it really comes:

- `Publication_MarketDocument` in any version of its namespace (7:0, 7:3, ...): the namespace
  is taken from the root element, so element lookups stay exact-match and fast.
- Several `TimeSeries` (one per delivery day and auction), each with one or more `Period`s
  (`timeInterval` start/end in UTC, `resolution`, `Point`s of `position` + `price.amount`).
- Resolutions PT15M, PT30M and PT60M in one document are kept apart (`PricePoint.resolution`):
  since 1 October 2025 SDAC publishes 15-minute products and a response can also carry hourly
  series for the same day. The same (zone, auction, resolution, start) twice with the same
  price is merged; with two different prices the document is refused.
- Curve type **A03** ("variable sized block"): a position is omitted when its price equals the
  previous position's; it is forward-filled up to the end of the period, never treated as
  missing. Position 1 must be present (a block needs a start). Curve type **A01** (and a
  series without `curveType`, as in old documents): every position must be present; a missing
  one makes the document an error (`DocumentError` listing the missing positions), because a
  price cannot be invented and a silent hole would shift nothing but mislead every consumer.
- The period length must be a whole number of resolutions; the positions must lie in
  1..length/resolution. That is also the DST check: periods are in UTC, so the short day is
  23 h = 92 quarter-hours and the long day 25 h = 100 quarter-hours, and a position beyond
  the period is an error.
- The auction: `classificationSequence_AttributeInstanceComponent.position` numbers the
  day-ahead auctions of a zone that has several. For AT and DE-LU, 1 is SDAC (the coupled
  EPEX/Nord Pool auction) and 2 is EXAA (LIBRARY-NOTES); elsewhere 1 is SDAC. Any other number
  is kept as `seq<N>`; a series without one gets `""` (the source does not say). The auctions
  are never mixed: `PricePoint.sequence` keeps them apart.
- Units: `currency_Unit.name` must be EUR and `price_Measure_Unit.name` MWH (KWH is converted);
  anything else is a `DocumentError`. Prices outside the plausibility bounds are kept and
  flagged.
- `Acknowledgement_MarketDocument` is the API's "no answer": reason 999 with "No matching
  data" is `NoDataError` (the normal answer for a day not yet published), any other reason a
  `SourceError` with its text. Malformed XML or a missing/unreadable element is a
  `DocumentError(document, problem)` naming the element and where it is
  (`TimeSeries 2, Period 1, Point 17`).

The XML is read with the standard library's ElementTree: expat >= 2.4 refuses entity
expansion attacks and ElementTree never resolves external entities.

**The client**, `EntsoeClient`, is a price source (`name`, `fetch(zone, start, end)`): one
GET per at most a year (the API's limit for A44; longer ranges are split and merged), paced to
one request per second and retried on 429/5xx with backoff (`fetching.Fetcher`). 401/403 are
not retried: the token is wrong. The token comes from `ENTSOE_TOKEN` (`from_env`) and never
appears in a log line, an exception or a repr.
"""

from __future__ import annotations

import asyncio
import math
import os
import random
import time
import xml.etree.ElementTree as ET
from collections.abc import Callable, Mapping
from datetime import UTC, datetime, timedelta
from typing import Final

import httpx

from .fetching import Fetcher, FetchingClient, RetrySettings, Sleep, redact
from .models import (
    DEFAULT_PRICE_BOUNDS,
    DocumentError,
    NoDataError,
    PricePoint,
    Resolution,
    SourceError,
    UnknownZoneError,
    Zone,
    zone,
)

__all__ = ["DEFAULT_BASE_URL", "TOKEN_ENV", "EntsoeClient", "parse_a44"]

DEFAULT_BASE_URL: Final = "https://web-api.tp.entsoe.eu/api"
TOKEN_ENV: Final = "ENTSOE_TOKEN"  # noqa: S105 (the variable name, not a token)
SOURCE: Final = "entsoe"

_TWO_AUCTION_ZONES: Final = frozenset({"AT", "DE_LU"})
_NO_DATA_CODE: Final = "999"
_UNITS: Final = {"MWH": 1.0, "KWH": 1000.0}


def _sequence(zone_code: str, position: str | None) -> str:
    if position is None or not position.strip():
        return ""
    position = position.strip()
    if position == "1":
        return "SDAC"
    if position == "2" and zone_code in _TWO_AUCTION_ZONES:
        return "EXAA"
    return f"seq{position}"


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
        raise DocumentError(
            document, f"{where}: <{element}> {text.strip()!r} has no UTC offset (expected ...Z)"
        )
    return value.astimezone(UTC)


def _acknowledgement(root: ET.Element, ns: str, document: str) -> NoDataError | SourceError:
    reasons = []
    codes = []
    for reason in root.iter(f"{ns}Reason"):
        code = (reason.findtext(f"{ns}code") or "").strip()
        text = (reason.findtext(f"{ns}text") or "").strip()
        codes.append(code)
        reasons.append(f"[{code}] {text}" if code else text)
    message = "; ".join(reasons) or "acknowledgement without a reason"
    if _NO_DATA_CODE in codes and "no matching data" in message.lower():
        return NoDataError(f"{document}: ENTSO-E has no data: {message}")
    return SourceError(
        f"{document}: ENTSO-E refused the request: {redact(message)}", retryable=False
    )


def parse_a44(
    data: bytes,
    *,
    document: str,
    bounds: tuple[float, float] = DEFAULT_PRICE_BOUNDS,
) -> list[PricePoint]:
    """The price points of an A44 answer, oldest first (then by resolution and auction).

    `document` names the document in errors (a file name, or the request it answers).
    Raises `NoDataError` / `SourceError` for an acknowledgement, `DocumentError` for anything
    unreadable."""
    try:
        # expat >= 2.4 limits entity expansion; ElementTree resolves no external entities.
        root = ET.fromstring(data)  # noqa: S314
    except ET.ParseError as exc:
        raise DocumentError(document, f"malformed XML: {exc}") from None
    tag = root.tag
    ns, _, local = tag.rpartition("}")
    ns = f"{ns}}}" if ns else ""
    if local == "Acknowledgement_MarketDocument":
        raise _acknowledgement(root, ns, document)
    if local != "Publication_MarketDocument":
        raise DocumentError(
            document,
            f"root element is <{local}>; expected <Publication_MarketDocument> (prices) or "
            "<Acknowledgement_MarketDocument>",
        )
    doc_type = root.findtext(f"{ns}type")
    if doc_type is not None and doc_type.strip() != "A44":
        raise DocumentError(
            document, f"document type is {doc_type.strip()!r}, not A44 (day-ahead prices)"
        )

    low, high = bounds
    out_of_bounds = f"outside plausibility bounds {low:g} .. {high:g} EUR/MWh"
    t_period = f"{ns}Period"
    t_interval = f"{ns}timeInterval"
    t_start = f"{ns}start"
    t_end = f"{ns}end"
    t_point = f"{ns}Point"
    t_position = f"{ns}position"
    t_price = f"{ns}price.amount"

    # per (zone, auction, resolution): start -> price. Datetime keys are not tracked by the
    # garbage collector, tuple keys would be (35k of them per year of quarter-hours).
    seen: dict[tuple[str, str, Resolution], dict[datetime, float]] = {}
    points: list[PricePoint] = []
    for s_index, series in enumerate(root.iterfind(f"{ns}TimeSeries"), start=1):
        where_s = f"TimeSeries {s_index}"

        def text(element: str, where: str = where_s, parent: ET.Element = series) -> str:
            value = parent.findtext(f"{ns}{element}")
            if value is None or not value.strip():
                raise DocumentError(document, f"{where}: missing <{element}>")
            return value.strip()

        eic = text("in_Domain.mRID")
        try:
            zone_code = zone(eic).code
        except UnknownZoneError:
            raise DocumentError(
                document, f"{where_s}: <in_Domain.mRID> {eic!r} is not a bidding zone EIC"
            ) from None
        currency = text("currency_Unit.name")
        if currency.upper() != "EUR":
            raise DocumentError(
                document,
                f"{where_s}: prices in {currency}; only EUR is supported (convert the "
                "zone's prices to EUR or query its EUR series)",
            )
        unit = text("price_Measure_Unit.name").upper()
        factor = _UNITS.get(unit)
        if factor is None:
            raise DocumentError(
                document,
                f"{where_s}: price unit per {unit!r}; expected MWH (or KWH)",
            )
        curve = (series.findtext(f"{ns}curveType") or "A01").strip()
        if curve not in ("A01", "A03"):
            raise DocumentError(
                document, f"{where_s}: curve type {curve!r}; only A01 and A03 are supported"
            )
        sequence = _sequence(
            zone_code,
            series.findtext(f"{ns}classificationSequence_AttributeInstanceComponent.position"),
        )

        for p_index, period in enumerate(series.iterfind(t_period), start=1):
            where_p = f"{where_s}, Period {p_index}"
            interval = period.find(t_interval)
            if interval is None:
                raise DocumentError(document, f"{where_p}: missing <timeInterval>")
            start = _time(interval.findtext(t_start), where_p, "start", document)
            end = _time(interval.findtext(t_end), where_p, "end", document)
            res_text = text("resolution", where_p, period)
            try:
                resolution = Resolution.parse(res_text)
            except ValueError as exc:
                raise DocumentError(document, f"{where_p}: {exc}") from None
            delta = resolution.delta
            length = end - start
            if length <= timedelta(0) or length % delta:
                raise DocumentError(
                    document,
                    f"{where_p}: the period {start:%Y-%m-%dT%H:%MZ} .. {end:%Y-%m-%dT%H:%MZ} "
                    f"is not a whole number of {resolution.value} intervals",
                )
            count = length // delta
            values: list[float | None] = [None] * count
            t_index = 0
            # Direct child iteration: ElementTree's find* fall back to the pure-Python path
            # engine for namespaced tags, which would be most of the parse time.
            for point in period:
                if point.tag != t_point:
                    continue
                t_index += 1
                pos_text = price_text = None
                for child in point:
                    if child.tag == t_position:
                        pos_text = child.text
                    elif child.tag == t_price:
                        price_text = child.text
                try:
                    position = int(pos_text)  # type: ignore[arg-type]
                    price = float(price_text)  # type: ignore[arg-type]
                except (TypeError, ValueError):
                    where_t = f"{where_p}, Point {t_index}"
                    if pos_text is None or price_text is None:
                        missing = "position" if pos_text is None else "price.amount"
                        raise DocumentError(document, f"{where_t}: missing <{missing}>") from None
                    raise DocumentError(
                        document,
                        f"{where_t}: position {pos_text.strip()!r} / price.amount "
                        f"{price_text.strip()!r} is not a number",
                    ) from None
                if not 0 < position <= count:
                    raise DocumentError(
                        document,
                        f"{where_p}, Point {t_index}: position {position} outside 1..{count} "
                        f"({count} x {resolution.value} from {start:%Y-%m-%dT%H:%MZ} to "
                        f"{end:%Y-%m-%dT%H:%MZ})",
                    )
                if values[position - 1] is not None:
                    raise DocumentError(
                        document, f"{where_p}, Point {t_index}: position {position} twice"
                    )
                if not math.isfinite(price):
                    raise DocumentError(
                        document, f"{where_p}, Point {t_index}: price {price_text!r} not finite"
                    )
                values[position - 1] = price * factor if factor != 1.0 else price

            if curve == "A03":
                if values[0] is None:
                    raise DocumentError(
                        document,
                        f"{where_p}: curve A03 without position 1 (the first block must be "
                        "given; only repeats of the previous price may be omitted)",
                    )
                previous = values[0]
                for i, value in enumerate(values):
                    if value is None:
                        values[i] = previous
                    else:
                        previous = value
            elif None in values:
                missing_positions = [i + 1 for i, v in enumerate(values) if v is None]
                shown = ", ".join(map(str, missing_positions[:10]))
                more = ", ..." if len(missing_positions) > 10 else ""
                raise DocumentError(
                    document,
                    f"{where_p}: curve A01 must list every position; "
                    f"{len(missing_positions)} of {count} missing ({shown}{more})",
                )

            seen_here = seen.setdefault((zone_code, sequence, resolution), {})
            for i, value in enumerate(values):
                price = value  # type: ignore[assignment]
                at = start + i * delta
                earlier = seen_here.get(at)
                if earlier is not None:
                    if earlier != price:
                        raise DocumentError(
                            document,
                            f"{where_p}: two prices for {zone_code} {sequence or '-'} "
                            f"{resolution.value} {at:%Y-%m-%dT%H:%MZ}: {earlier:g} and "
                            f"{price:g} EUR/MWh",
                        )
                    continue
                seen_here[at] = price
                points.append(
                    PricePoint(
                        zone=zone_code,
                        start=at,
                        resolution=resolution,
                        price_eur_per_mwh=price,
                        source=SOURCE,
                        sequence=sequence,
                        flag=out_of_bounds if price < low or price > high else "",
                    )
                )
    points.sort(key=lambda p: (p.start, p.resolution.minutes, p.sequence))
    return points


def _add_year(at: datetime) -> datetime:
    try:
        return at.replace(year=at.year + 1)
    except ValueError:  # 29 February
        return at.replace(year=at.year + 1, day=28)


def year_chunks(start: datetime, end: datetime) -> list[tuple[datetime, datetime]]:
    """[start, end) cut into consecutive pieces of at most one calendar year."""
    chunks = []
    at = start
    while at < end:
        until = min(end, _add_year(at))
        chunks.append((at, until))
        at = until
    return chunks


def _api_time(at: datetime) -> str:
    return at.astimezone(UTC).strftime("%Y%m%d%H%M")


class EntsoeClient(FetchingClient):
    """Day-ahead prices from the ENTSO-E Transparency Platform RESTful API.

    Use as an async context manager (or call `aclose`) when it creates its own HTTP client."""

    name: str = SOURCE

    def __init__(
        self,
        token: str,
        *,
        base_url: str = DEFAULT_BASE_URL,
        http: httpx.AsyncClient | None = None,
        clock: Callable[[], float] | None = None,
        sleep: Sleep | None = None,
        jitter: Callable[[], float] | None = None,
        min_interval_s: float = 1.0,
        max_attempts: int = 5,
        retry: RetrySettings | None = None,
        bounds: tuple[float, float] = DEFAULT_PRICE_BOUNDS,
    ) -> None:
        if not token or not token.strip():
            raise SourceError(
                f"ENTSO-E token is empty: set {TOKEN_ENV} to your Transparency Platform "
                "RESTful API token",
                retryable=False,
            )
        self.__token = token.strip()
        self.base_url = base_url
        self.bounds = bounds
        self._own_http = http is None
        self._http = http or httpx.AsyncClient()
        settings = retry or RetrySettings(min_interval_s=min_interval_s, max_attempts=max_attempts)
        self._fetcher = Fetcher(
            label="ENTSO-E",
            http=self._http,
            settings=settings,
            clock=clock or time.monotonic,
            sleep=sleep or asyncio.sleep,
            jitter=jitter or random.random,
        )

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None, **options: object) -> EntsoeClient:
        """A client with the token from `ENTSOE_TOKEN` (`env` defaults to `os.environ`)."""
        token = (os.environ if env is None else env).get(TOKEN_ENV, "").strip()
        if not token:
            raise SourceError(
                f"{TOKEN_ENV} is not set: request a RESTful API token in your ENTSO-E "
                f"Transparency Platform account settings and export {TOKEN_ENV}=<token>",
                retryable=False,
            )
        return cls(token, **options)  # type: ignore[arg-type]

    def __repr__(self) -> str:
        return f"EntsoeClient(base_url={self.base_url!r}, token=***)"

    async def fetch(self, zone: Zone, start: datetime, end: datetime) -> list[PricePoint]:
        """Day-ahead prices of `zone` for deliveries starting in [start, end), oldest first.

        Raises `NoDataError` when ENTSO-E has none for the whole range, `SourceError` when it
        cannot be reached or refuses, `DocumentError` when its answer cannot be read."""
        if start.tzinfo is None or end.tzinfo is None:
            raise ValueError("start and end must be timezone-aware (UTC)")
        if end <= start:
            raise ValueError(f"end {end.isoformat()} must be after start {start.isoformat()}")
        merged: dict[tuple[str, Resolution, datetime], PricePoint] = {}
        no_data: list[str] = []
        for chunk_start, chunk_end in year_chunks(start, end):
            try:
                points = await self._fetch_once(zone, chunk_start, chunk_end)
            except NoDataError as exc:
                no_data.append(str(exc))
                continue
            for p in points:
                if p.zone != zone.code:
                    raise DocumentError(
                        f"ENTSO-E A44 {zone.code}",
                        f"the answer holds prices of zone {p.zone}, not of the requested "
                        f"{zone.code} ({zone.eic})",
                    )
                if start <= p.start < end:
                    merged[(p.sequence, p.resolution, p.start)] = p
        if not merged:
            reason = "; ".join(no_data) or "the answer holds no prices in the requested range"
            raise NoDataError(
                f"ENTSO-E has no day-ahead prices for {zone.code} "
                f"{start:%Y-%m-%dT%H:%MZ} .. {end:%Y-%m-%dT%H:%MZ}: {reason}"
            )
        return sorted(merged.values(), key=lambda p: (p.start, p.resolution.minutes, p.sequence))

    async def _fetch_once(self, zone: Zone, start: datetime, end: datetime) -> list[PricePoint]:
        document = f"ENTSO-E A44 {zone.code} {start:%Y-%m-%dT%H:%MZ} .. {end:%Y-%m-%dT%H:%MZ}"
        params = {
            "documentType": "A44",
            "in_Domain": zone.eic,
            "out_Domain": zone.eic,
            "periodStart": _api_time(start),
            "periodEnd": _api_time(end),
            "securityToken": self.__token,
        }
        response = await self._fetcher.get(self.base_url, params)
        status = response.status_code
        if status == 200:
            return parse_a44(response.content, document=document, bounds=self.bounds)
        if status in (401, 403):
            raise SourceError(
                f"ENTSO-E refused the token ({status}): check {TOKEN_ENV}",
                retryable=False,
                status=status,
            )
        if response.content.lstrip().startswith(b"<"):
            # 400 with an acknowledgement: a bad parameter, too much data, or no data.
            try:
                parse_a44(response.content, document=document, bounds=self.bounds)
            except NoDataError:
                raise
            except SourceError as exc:
                raise SourceError(
                    f"ENTSO-E rejected the request ({status}): {exc}",
                    retryable=False,
                    status=status,
                ) from None
            except DocumentError:
                pass
        body = redact(response.text[:300].strip())
        raise SourceError(
            f"ENTSO-E answered {status} to {document}: {body or 'empty body'}",
            retryable=False,
            status=status,
        )
