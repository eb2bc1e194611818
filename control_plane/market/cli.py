"""`bess-plane prices ...`: import, fetch and show prices in the plane's store.

    bess-plane prices import FILE --zone BE [--timezone TZ --unit U --format F --resolution R]
    bess-plane prices fetch --zone AT --start 2025-01-01 --end 2025-01-02
    bess-plane prices show --zone AT --day 2025-01-01 [--resolution PT15M] [--source entsoe]
    bess-plane prices demo --zone AT --shape FILE [--past-days N]   synthetic, source demo:...

They work on the store the settings name (the plane may be running). Dates without a time are
local days of the zone; times need an offset (2025-01-01T00:00+01:00).
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from datetime import date, datetime, time, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

from control_plane.config import PlaneSettings
from control_plane.db import StoreError, create_engine

from .csv_import import CsvFormat, read_price_csv
from .demo import demo_prices, hourly_shape, replayed_prices
from .feed import MarketFeed, utc_now
from .models import MarketDataError, Resolution, zone
from .service import ImportSummary, check_range, import_price_file
from .sources import SourceConfigError, build_sources
from .store import PriceStore

__all__ = ["add_parser", "prices_command"]


def add_parser(commands: Any) -> None:
    """The `prices` subcommands on the main parser's subparsers."""
    defaults = CsvFormat()
    prices = commands.add_parser("prices", help="import, fetch and show day-ahead prices")
    sub = prices.add_subparsers(dest="prices_command", required=True)
    imp = sub.add_parser("import", help="store a price CSV (defaults: the shared Belgian file)")
    imp.add_argument("file", type=Path, metavar="FILE")
    imp.add_argument("--zone", required=True, help="zone code (BE, AT, DE_LU, ...) or EIC")
    imp.add_argument("--timezone", default=defaults.timezone, help="of times without offset")
    imp.add_argument("--unit", default=defaults.unit, help="EUR/MWh, EUR/kWh or ct/kWh")
    imp.add_argument(
        "--format",
        dest="time_format",
        default=defaults.time_format,
        help="strptime format of the time column, or iso",
    )
    imp.add_argument("--resolution", default=defaults.resolution.value)
    imp.add_argument("--time-column", default=defaults.time_column)
    imp.add_argument("--price-column", default=defaults.price_column)
    imp.add_argument("--delimiter", default=defaults.delimiter)
    fetch = sub.add_parser("fetch", help="fetch a range from the configured sources now")
    fetch.add_argument("--zone", required=True)
    fetch.add_argument("--start", required=True, help="date (local day) or ISO time with offset")
    fetch.add_argument("--end", required=True, help="date (exclusive) or ISO time with offset")
    show = sub.add_parser("show", help="print the stored prices of one local day")
    show.add_argument("--zone", required=True)
    show.add_argument("--day", required=True, type=date.fromisoformat, help="YYYY-MM-DD")
    show.add_argument("--resolution", help="PT15M, PT30M or PT60M; default the finest stored")
    show.add_argument("--source", help="a source or family (entsoe, file, demo)")
    demo = sub.add_parser(
        "demo", help="synthetic prices for today and tomorrow from a file's daily shape"
    )
    demo.add_argument("--zone", required=True)
    demo.add_argument("--shape", required=True, type=Path, help="a price CSV (its format args)")
    demo.add_argument("--shape-zone", default="BE", help="zone of the shape file")
    demo.add_argument("--days", type=int, default=2)
    demo.add_argument(
        "--past-days",
        type=int,
        default=0,
        help="also the N days before today: the file's real day curves replayed (weekdays "
        "matched), so forecasts have a history; 0 = today/tomorrow from the mean daily shape",
    )
    for p in (imp, fetch, show, demo):
        p.add_argument("--config", type=Path, help="settings file (YAML); env vars override it")


def _open_store(settings: PlaneSettings) -> PriceStore:
    url = settings.database_url.get_secret_value() if settings.database_url else None
    engine = create_engine(
        database_url=url,
        sqlite_path=settings.sqlite_file,
        sqlite_synchronous=settings.sqlite_synchronous,
    )
    store = PriceStore(engine, priority=settings.market_source_priority)
    store.migrate()
    return store


def _moment(text: str, tz: ZoneInfo) -> datetime:
    try:
        if len(text) == 10:
            return datetime.combine(date.fromisoformat(text), time(0), tzinfo=tz)
        moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise ValueError(f"{text!r} is not a date (2025-01-01) or an ISO time") from None
    if moment.tzinfo is None:
        raise ValueError(f"{text!r} has no UTC offset: write e.g. {text}+01:00 or {text}Z")
    return moment


def _summary(s: ImportSummary) -> str:
    text = (
        f"stored {s.points} {s.zone} prices from {s.source}: {s.result.inserted} new, "
        f"{s.result.revised} revised, {s.result.unchanged} unchanged; delivery "
        f"{s.first:%Y-%m-%d %H:%M}Z .. {s.last:%Y-%m-%d %H:%M}Z"
    )
    if s.flagged:
        text += f"; {s.flagged} outside the plausibility bounds (kept, flagged)"
    for line in s.dropped:
        text += f"\n  left out: {line}"
    return text


def prices_command(settings: PlaneSettings, args: argparse.Namespace) -> int:
    """Run one `prices` subcommand; 0 ok, 1 failed, 2 bad arguments."""
    where = f"bess-plane prices {args.prices_command}"
    try:
        target = zone(args.zone)
        resolution = getattr(args, "resolution", None)
        wanted = Resolution.parse(resolution) if resolution else None
    except (MarketDataError, ValueError) as exc:
        print(f"{where}: {exc}", file=sys.stderr)
        return 2
    try:
        store = _open_store(settings)
    except StoreError as exc:
        print(f"{where}: {exc}", file=sys.stderr)
        return 1
    try:
        if args.prices_command == "import":
            fmt = CsvFormat(
                time_column=args.time_column,
                price_column=args.price_column,
                time_format=args.time_format,
                timezone=args.timezone,
                unit=args.unit,
                resolution=wanted or Resolution.PT60M,
                delimiter=args.delimiter,
            )
            summary = import_price_file(
                store=store, path=args.file, zone_code=target.code, fmt=fmt, now=utc_now()
            )
            print(_summary(summary))
            return 0
        if args.prices_command == "demo":
            # The file's last year: nearer today's price level than a multi-year mean.
            shape_points = read_price_csv(args.shape, zone_code=args.shape_zone).points[-8760:]
            if args.past_days > 0:
                points = replayed_prices(
                    shape_points,
                    source_timezone=zone(args.shape_zone).timezone,
                    zone_code=target.code,
                    now=utc_now(),
                    label=f"replay-of-{args.shape.stem}",
                    past_days=args.past_days,
                    days=args.days,
                )
            else:
                shape = hourly_shape(shape_points, zone(args.shape_zone).timezone)
                points = demo_prices(
                    shape,
                    zone_code=target.code,
                    now=utc_now(),
                    label=f"shape-of-{args.shape.stem}",
                    days=args.days,
                )
            result = store.upsert(points, utc_now())
            print(
                f"stored {len(points)} synthetic {target.code} quarter-hours (source "
                f"{points[0].source}, flagged as demo data; {result.inserted} new, "
                f"{result.revised} revised, {result.unchanged} unchanged)"
            )
            return 0
        tz = ZoneInfo(target.timezone)
        if args.prices_command == "fetch":
            start, end = _moment(args.start, tz), _moment(args.end, tz)
            check_range(start, end)
            return _fetch(settings, store, target.code, start, end)
        start = datetime.combine(args.day, time(0), tzinfo=tz)
        end = datetime.combine(args.day + timedelta(days=1), time(0), tzinfo=tz)
        found = store.prices(target.code, start, end, wanted, args.source)
        if not found:
            print(f"no {target.code} prices stored for {args.day} ({target.timezone})")
            return 0
        print(f"{'local':<17} {'UTC':<17} {'res':<6} {'EUR/MWh':>10}  source  flag")
        for p in found:
            print(
                f"{p.start.astimezone(tz):%Y-%m-%d %H:%M}  {p.start:%Y-%m-%d %H:%M}Z "
                f"{p.resolution.value:<6} {p.price_eur_per_mwh:>10.2f}  {p.source}"
                f"{' ' + p.sequence if p.sequence else ''}  {p.flag}".rstrip()
            )
        print(f"{len(found)} intervals, {target.code}, {args.day} ({target.timezone})")
        return 0
    except (MarketDataError, SourceConfigError, ValueError) as exc:
        print(f"{where}: {exc}", file=sys.stderr)
        return 1
    except StoreError as exc:
        print(f"{where}: {exc}", file=sys.stderr)
        return 1
    finally:
        store.engine.dispose()


def _fetch(
    settings: PlaneSettings, store: PriceStore, zone_code: str, start: datetime, end: datetime
) -> int:
    sources = build_sources(settings)
    if not sources:
        print(
            "bess-plane prices fetch: no price source configured: set ENTSOE_TOKEN or "
            "market_sources (BESS_PLANE_MARKET_SOURCES=entsoe,awattar)",
            file=sys.stderr,
        )
        return 1
    feed = MarketFeed(sources=sources, store=store, zones=[zone_code])
    results = asyncio.run(feed.fetch_range(zone_code, start, end))
    failed = False
    for name, result in results.items():
        if isinstance(result, Exception):
            failed = True
            print(f"{name}: failed: {result}", file=sys.stderr)
        else:
            print(
                f"{name}: {result.inserted} new, {result.revised} revised, "
                f"{result.unchanged} unchanged"
            )
    return 1 if failed else 0
