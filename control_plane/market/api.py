"""The market HTTP routes: stored prices (with their revisions), the feed's status and the
price-file import. Only translation here (STYLE 10): domain errors become 422/503 answers in
the exchange's error shape ``{"detail": [{"type", "loc", "msg"}]}``, and the input is not
echoed beyond the field it was wrong in.

- `GET /api/market/prices` (and the spec's legacy `GET /market/prices`): the points of a zone
  whose delivery starts in [start, end) (default: today and tomorrow, local days of the zone),
  one per interval (source priority, see `store.py`), at most `MAX_QUERY_DAYS` days. Viewer.
- `GET /api/market/history?zone=&start=`: every revision of the intervals starting then. Viewer.
- `GET /api/market/status`: the feed's state per source and zone. Viewer.
- `POST /api/market/import`: a price CSV as multipart (`file`) or as the raw body, with the
  format in query parameters; answers the stored counts. Admin.
"""

from __future__ import annotations

import asyncio
import logging
import re
import tempfile
from datetime import datetime, time, timedelta
from pathlib import Path
from typing import Annotated, Any, NoReturn
from zoneinfo import ZoneInfo

from fastapi import APIRouter, Depends, HTTPException, Query, Request, status
from pydantic import AwareDatetime
from sqlalchemy.exc import SQLAlchemyError

from control_plane.auth.deps import require
from control_plane.auth.models import Role
from control_plane.db import StoreError
from control_plane.deps import MarketFeedDep, PriceStoreDep, SettingsDep

from .csv_import import CsvFormat
from .models import DocumentError, MarketDataError, Resolution, UnitError, UnknownZoneError, zone
from .schemas import (
    FeedStatusPublic,
    HistoryPublic,
    ImportPublic,
    MarketStatusPublic,
    PricePointPublic,
    PricesPublic,
    RevisionPublic,
)
from .service import InvalidRangeError, check_range, import_price_file

log = logging.getLogger(__name__)

router = APIRouter(tags=["market"])
_VIEWER = [Depends(require(Role.VIEWER))]
_ADMIN = [Depends(require(Role.ADMIN))]

_FMT = CsvFormat()
MAX_UPLOAD_BYTES = 32 * 1024 * 1024
"""A year of quarter-hours is about 1.5 MB of CSV; anything near this limit is not a price file."""

ZoneQ = Annotated[
    str | None,
    Query(
        max_length=32,
        description="zone code (AT, DE_LU, ...) or EIC; default the first of market_zones",
    ),
]
StartQ = Annotated[
    AwareDatetime | None,
    Query(
        description="delivery starts at or after (ISO 8601 with offset); default today 00:00 "
        "in the zone's time"
    ),
]
EndQ = Annotated[
    AwareDatetime | None,
    Query(description="delivery starts before; default start + 2 days (today and tomorrow)"),
]
ResolutionQ = Annotated[
    str | None,
    Query(max_length=8, description="PT15M, PT30M or PT60M; default the finest stored"),
]
SourceQ = Annotated[
    str | None,
    Query(max_length=128, description="a source (file:be.csv) or family (entsoe, file, demo)"),
]


def _invalid(loc: tuple[str, ...], message: str, kind: str = "value_error") -> NoReturn:
    raise HTTPException(
        status.HTTP_422_UNPROCESSABLE_CONTENT,
        detail=[{"type": kind, "loc": list(loc), "msg": message}],
    )


def _unavailable(exc: Exception) -> HTTPException:
    log.warning("market store unavailable: %s", exc)
    return HTTPException(
        status.HTTP_503_SERVICE_UNAVAILABLE,
        detail="the price store is not available; try again shortly",
        headers={"Retry-After": "2"},
    )


def _zone_code(code: str | None, default: str) -> str:
    try:
        return zone(code or default).code
    except UnknownZoneError as exc:
        _invalid(("query", "zone"), str(exc), "unknown_zone")


def _resolution(text: str | None) -> Resolution | None:
    if text is None or not text.strip():
        return None
    try:
        return Resolution.parse(text)
    except ValueError as exc:
        _invalid(("query", "resolution"), str(exc))


async def prices(
    store: PriceStoreDep,
    feed: MarketFeedDep,
    settings: SettingsDep,
    zone_code: Annotated[str | None, Query(alias="zone", max_length=32)] = None,
    start: StartQ = None,
    end: EndQ = None,
    resolution: ResolutionQ = None,
    source: SourceQ = None,
) -> PricesPublic:
    """Stored prices of a zone, oldest first, one per interval, flags included. Viewer."""
    code = _zone_code(zone_code, settings.market_zones[0])
    wanted = _resolution(resolution)
    if start is None:
        local = ZoneInfo(zone(code).timezone)
        today = feed.now().astimezone(local).date()
        start = datetime.combine(today, time(0), tzinfo=local)
    if end is None:
        end = start + timedelta(days=2)
    try:
        check_range(start, end)
    except InvalidRangeError as exc:
        _invalid(("query", "end"), str(exc), "invalid_range")
    try:
        found = await asyncio.to_thread(store.prices, code, start, end, wanted, source or None)
    except (SQLAlchemyError, StoreError) as exc:
        raise _unavailable(exc) from None
    if found:
        note = (
            "one point per interval; where several sources have it, the first of "
            f"{', '.join(store.priority)} wins"
            + ("" if wanted else "; the finest stored resolution per stretch of time")
        )
    else:
        note = (
            f"no prices stored for {code} in this range: the feed has not fetched them (see "
            "/api/market/status) or nothing was imported (POST /api/market/import)"
        )
    return PricesPublic(
        zone=code,
        start=start,
        end=end,
        resolution=None if wanted is None else wanted.value,
        source=source or None,
        count=len(found),
        points=[PricePointPublic.of(p) for p in found],
        note=note,
    )


router.add_api_route(
    "/api/market/prices",
    prices,
    methods=["GET"],
    response_model=PricesPublic,
    dependencies=_VIEWER,
    summary="Stored day-ahead prices of a zone",
)
router.add_api_route(
    "/market/prices",
    prices,
    methods=["GET"],
    response_model=PricesPublic,
    dependencies=_VIEWER,
    summary="Stored day-ahead prices (legacy path of the spec; same as /api/market/prices)",
    deprecated=True,
)


@router.get("/api/market/history", response_model=HistoryPublic, dependencies=_VIEWER)
async def history(
    store: PriceStoreDep,
    settings: SettingsDep,
    start: Annotated[AwareDatetime, Query(description="delivery start of the interval")],
    zone_code: Annotated[str | None, Query(alias="zone", max_length=32)] = None,
) -> HistoryPublic:
    """Every value stored for the intervals starting at `start`, per source, oldest first."""
    code = _zone_code(zone_code, settings.market_zones[0])
    try:
        found = await asyncio.to_thread(store.history, code, start)
    except (SQLAlchemyError, StoreError) as exc:
        raise _unavailable(exc) from None
    return HistoryPublic(zone=code, start=start, revisions=[RevisionPublic.of(r) for r in found])


@router.get("/api/market/status", response_model=MarketStatusPublic, dependencies=_VIEWER)
async def market_status(feed: MarketFeedDep, store: PriceStoreDep) -> MarketStatusPublic:
    """The scheduled feed per source and zone: last attempt, success, error, next run. Viewer."""
    sources = [s.name for s in feed.sources]
    note = (
        f"every {feed.interval_s:g} s, the window yesterday .. tomorrow (local days)"
        if sources
        else "no price source configured (market_sources; ENTSOE_TOKEN enables entsoe): "
        "prices come only from imports (POST /api/market/import, bess-plane prices import)"
    )
    return MarketStatusPublic(
        interval_s=feed.interval_s,
        zones=[z.code for z in feed.zones],
        sources=sources,
        source_priority=list(store.priority),
        feeds=[FeedStatusPublic.of(s) for s in feed.status()],
        note=note,
    )


_SAFE_NAME = re.compile(r"[^A-Za-z0-9._-]+")


def _file_name(name: str | None) -> str:
    """The upload's base name, reduced to safe characters (it becomes `file:<name>`)."""
    base = Path((name or "").replace("\\", "/")).name
    cleaned = _SAFE_NAME.sub("_", base).strip("._")[:100]
    return cleaned or "upload.csv"


async def _upload(request: Request, name: str | None) -> tuple[str, bytes]:
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > MAX_UPLOAD_BYTES:
        raise HTTPException(
            status.HTTP_413_REQUEST_ENTITY_TOO_LARGE,
            detail=f"the upload is larger than {MAX_UPLOAD_BYTES // 2**20} MB",
        )
    content_type = request.headers.get("content-type", "")
    if content_type.startswith("multipart/form-data"):
        form = await request.form()
        upload = form.get("file")
        if upload is None or isinstance(upload, str):
            _invalid(("body", "file"), "send the CSV in a multipart field named 'file'")
        data = await upload.read(MAX_UPLOAD_BYTES + 1)
        filename = name or upload.filename
    else:
        data = await request.body()
        filename = name
    if len(data) > MAX_UPLOAD_BYTES:
        raise HTTPException(
            status.HTTP_413_REQUEST_ENTITY_TOO_LARGE,
            detail=f"the upload is larger than {MAX_UPLOAD_BYTES // 2**20} MB",
        )
    if not data.strip():
        _invalid(("body",), "the upload is empty: send a price CSV (multipart 'file' or raw body)")
    return _file_name(filename), data


@router.post(
    "/api/market/import",
    response_model=ImportPublic,
    status_code=status.HTTP_201_CREATED,
    dependencies=_ADMIN,
    openapi_extra={
        "requestBody": {
            "content": {
                "text/csv": {"schema": {"type": "string"}},
                "multipart/form-data": {
                    "schema": {
                        "type": "object",
                        "properties": {"file": {"type": "string", "format": "binary"}},
                        "required": ["file"],
                    }
                },
            }
        }
    },
)
async def import_prices(
    request: Request,
    store: PriceStoreDep,
    feed: MarketFeedDep,
    zone_code: Annotated[str, Query(alias="zone", max_length=32, description="e.g. BE, AT")],
    timezone: Annotated[str, Query(max_length=64)] = _FMT.timezone,
    unit: Annotated[str, Query(max_length=16, description="EUR/MWh, EUR/kWh, ct/kWh")] = (
        _FMT.unit
    ),
    time_format: Annotated[
        str, Query(max_length=64, description="strptime format, or iso for ISO 8601")
    ] = _FMT.time_format,
    resolution: Annotated[str, Query(max_length=8)] = _FMT.resolution.value,
    time_column: Annotated[str, Query(max_length=64)] = _FMT.time_column,
    price_column: Annotated[str, Query(max_length=64)] = _FMT.price_column,
    delimiter: Annotated[str, Query(min_length=1, max_length=1)] = _FMT.delimiter,
    name: Annotated[
        str | None,
        Query(
            max_length=100,
            description="file name for the source; default the upload's, or upload.csv",
        ),
    ] = None,
) -> ImportPublic:
    """Store a price CSV (defaults read the shared Belgian file: local time, EUR/kWh). Admin.

    Stored as source `file:<name>`; importing the same file again changes nothing, a changed
    price becomes a revision. 422 names the line and the problem; nothing is half-imported."""
    code = _zone_code(zone_code, zone_code)
    wanted = _resolution(resolution) or Resolution.PT60M
    filename, data = await _upload(request, name)
    fmt = CsvFormat(
        time_column=time_column,
        price_column=price_column,
        time_format=time_format,
        timezone=timezone,
        unit=unit,
        resolution=wanted,
        delimiter=delimiter,
    )

    def run(directory: str) -> Any:
        path = Path(directory) / filename
        path.write_bytes(data)
        return import_price_file(store=store, path=path, zone_code=code, fmt=fmt, now=feed.now())

    try:
        with tempfile.TemporaryDirectory(prefix="bess-price-import-") as directory:
            summary = await asyncio.to_thread(run, directory)
    except DocumentError as exc:
        # The message names the upload, never the temporary path.
        _invalid(("body",), f"{filename}: {exc.problem}", "invalid_document")
    except UnitError as exc:
        _invalid(("query", "unit"), str(exc))
    except MarketDataError as exc:
        _invalid(("body",), str(exc))
    except (SQLAlchemyError, StoreError) as exc:
        raise _unavailable(exc) from None
    return ImportPublic.of(summary)
