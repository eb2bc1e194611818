"""`bess-plane backtest`: the rolling day-ahead back-test of the optimiser over a price file.

    bess-plane backtest --prices FILE --battery capacity_kwh=1000,power_kw=500 [--zone BE]
        [--horizon-hours 24] [--forecast seasonal-naive | module:function] [--start DATE]
        [--end DATE] [--initial-soc 50] [--end-soc PCT] [--json] [CSV format options]

The summary goes to stdout (text, or JSON with `--json`), the progress bar to stderr. Works on
files only, without the plane's settings or store.
"""

from __future__ import annotations

import argparse
import importlib
import json
import sys
import time
from datetime import date
from pathlib import Path
from typing import Any, TextIO, cast

__all__ = ["add_backtest_parser", "backtest_command"]


def add_backtest_parser(commands: Any) -> None:
    """Add `backtest` to the CLI's subcommands (an argparse `_SubParsersAction`)."""
    sub: argparse.ArgumentParser = commands.add_parser(
        "backtest", help="rolling day-ahead back-test of the optimiser over a price file"
    )
    sub.add_argument("--prices", type=Path, required=True, help="price CSV (read_price_csv)")
    sub.add_argument("--zone", default="BE", help="bidding zone code of the file (default BE)")
    sub.add_argument(
        "--battery",
        required=True,
        help="key=value,...: capacity_kwh, power_kw (or max_charge_kw + max_discharge_kw), "
        "min_soc_pct, max_soc_pct, efficiency (each way) or charge_/discharge_efficiency, "
        "grid_limit_kw, degradation_eur_per_mwh, max_cycles_per_day",
    )
    sub.add_argument("--horizon-hours", type=int, default=24, help="plan horizon, 24..168")
    sub.add_argument(
        "--forecast",
        default="seasonal-naive",
        help="seasonal-naive (default) or module:function, a (history, origin, horizon) -> "
        "prices callable",
    )
    sub.add_argument("--start", type=date.fromisoformat, help="first delivery day (local)")
    sub.add_argument("--end", type=date.fromisoformat, help="day after the last one")
    sub.add_argument("--initial-soc", type=float, default=50.0, help="SoC %% at the start")
    sub.add_argument("--end-soc", type=float, help="SoC %% each plan must end at or above")
    sub.add_argument("--json", action="store_true", help="print the result as JSON")
    fmt = sub.add_argument_group("CSV format (defaults read the shared Belgian file)")
    fmt.add_argument("--time-column", default="time")
    fmt.add_argument("--price-column", default="DAM_price")
    fmt.add_argument("--time-format", default="%d%b%Y %H:%M:%S", help="strptime, or iso")
    fmt.add_argument("--timezone", default="Europe/Brussels", help="of times without offset")
    fmt.add_argument("--unit", default="EUR/kWh", help="EUR/MWh, EUR/kWh or ct/kWh")


def backtest_command(args: argparse.Namespace) -> int:
    from control_plane.market.csv_import import CsvFormat, read_price_csv
    from control_plane.market.models import MarketDataError

    from .backtest import InMemoryPriceHistory, parse_battery, run_backtest, seasonal_naive
    from .model import OptimiserError, silence_highs_banner

    silence_highs_banner()
    try:
        battery = parse_battery(args.battery)
        forecaster = seasonal_naive if args.forecast == "seasonal-naive" else _load(args.forecast)
        fmt = CsvFormat(
            time_column=args.time_column,
            price_column=args.price_column,
            time_format=args.time_format,
            timezone=args.timezone,
            unit=args.unit,
        )
        points = read_price_csv(args.prices, zone_code=args.zone, fmt=fmt).points
        began = time.perf_counter()
        result = run_backtest(
            history=InMemoryPriceHistory(points),
            zone_code=args.zone,
            battery=battery,
            start=args.start,
            end=args.end,
            horizon_hours=args.horizon_hours,
            initial_soc_pct=args.initial_soc,
            end_soc_pct=args.end_soc,
            forecaster=forecaster,
            progress=ProgressBar(sys.stderr),
        )
        wall = time.perf_counter() - began
    except (OptimiserError, MarketDataError, ValueError, OSError) as exc:
        print(f"bess-plane backtest: {exc}", file=sys.stderr)
        return 2
    if args.json:
        print(
            json.dumps(
                {
                    "zone": result.zone,
                    "days": len(result.days),
                    "skipped": result.skipped,
                    "horizon_hours": result.horizon_hours,
                    "perfect_eur": round(result.perfect_eur, 2),
                    "forecast_eur": round(result.forecast_eur, 2),
                    "ratio": round(result.ratio, 4),
                    "perfect_cycles_per_day": round(result.cycles_per_day("perfect"), 4),
                    "forecast_cycles_per_day": round(result.cycles_per_day("forecast"), 4),
                    "wall_seconds": round(wall, 3),
                    "solve_seconds": round(result.solve_seconds, 3),
                },
                indent=2,
            )
        )
    else:
        print(result.summary())
        print(f"wall time {wall:.1f} s (solver {result.solve_seconds:.1f} s)")
    return 0


def _load(spec: str) -> Any:
    module_name, sep, attr = spec.partition(":")
    if not sep or not module_name or not attr:
        raise ValueError(f"--forecast {spec!r}: use seasonal-naive or module:function")
    try:
        function = getattr(importlib.import_module(module_name), attr)
    except (ImportError, AttributeError) as exc:
        raise ValueError(f"--forecast {spec!r}: {exc}") from None
    if not callable(function):
        raise ValueError(f"--forecast {spec!r} is not callable")
    return cast(Any, function)


class ProgressBar:
    """A one-line bar on a terminal; on a pipe or file, a line per 10 %."""

    def __init__(self, stream: TextIO, width: int = 40) -> None:
        self._stream = stream
        self._width = width
        self._tty = stream.isatty()
        self._last_tenth = -1

    def __call__(self, done: int, total: int) -> None:
        if total <= 0:
            return
        if self._tty:
            filled = self._width * done // total
            bar = "#" * filled + "-" * (self._width - filled)
            end = "\n" if done >= total else ""
            self._stream.write(f"\rbacktest [{bar}] {done}/{total} days{end}")
            self._stream.flush()
            return
        tenth = 10 * done // total
        if tenth != self._last_tenth:
            self._last_tenth = tenth
            self._stream.write(f"backtest {done}/{total} days\n")
            self._stream.flush()
