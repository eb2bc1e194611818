"""`bess-plane risk backtest`: the Kupiec back-test of 1-day historical VaR over a price file.

    bess-plane risk backtest --prices FILE [--zone BE] [--window 250] [--profile baseload]
        [--mw 1] [CSV format options]

Profiles (MW per quarter-hour, long): `baseload` (every quarter), `peak` (08:00-20:00 UTC),
`spread` (long 00:00-06:00, short 16:00-22:00 UTC: a battery's charge/discharge day). Works on
files only, without the plane's settings or store. The back-test is `report.backtest_section`,
the same function as the back-test section of `GET /api/risk/report/{portfolio}`.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from .var import FloatArray

if TYPE_CHECKING:
    from .report import BacktestSection

__all__ = ["PROFILES", "add_parser", "format_section", "profile", "risk_command"]

PROFILES = ("baseload", "peak", "spread")


def profile(name: str, mw: float) -> FloatArray:
    """MWh per quarter-hour slot of a named profile at `mw`."""
    q = np.zeros(96)
    if name == "baseload":
        q[:] = 1.0
    elif name == "peak":
        q[32:80] = 1.0
    elif name == "spread":
        q[0:24] = 1.0
        q[64:88] = -1.0
    else:
        raise ValueError(f"unknown profile {name!r}: use one of {', '.join(PROFILES)}")
    return q * mw * 0.25


def add_parser(commands: Any) -> None:
    risk = commands.add_parser("risk", help="risk: VaR back-test")
    sub = risk.add_subparsers(dest="risk_command", required=True).add_parser(
        "backtest", help="Kupiec POF test of 1-day historical VaR (95/99/99.5 %%) over a CSV"
    )
    sub.add_argument("--prices", type=Path, required=True, help="price CSV (read_price_csv)")
    sub.add_argument("--zone", default="BE", help="bidding zone of the file (default BE)")
    sub.add_argument("--window", type=int, default=250, help="scenario days per forecast")
    sub.add_argument("--profile", choices=PROFILES, default="baseload")
    sub.add_argument("--mw", type=float, default=1.0, help="position size, MW")
    fmt = sub.add_argument_group("CSV format (defaults read the shared Belgian file)")
    fmt.add_argument("--time-column", default="time")
    fmt.add_argument("--price-column", default="DAM_price")
    fmt.add_argument("--time-format", default="%d%b%Y %H:%M:%S", help="strptime, or iso")
    fmt.add_argument("--timezone", default="Europe/Brussels", help="of times without offset")
    fmt.add_argument("--unit", default="EUR/kWh", help="EUR/MWh, EUR/kWh or ct/kWh")


def risk_command(args: argparse.Namespace) -> int:
    from control_plane.market.csv_import import CsvFormat, read_price_csv
    from control_plane.market.models import MarketDataError

    from .history import DailyPrices
    from .models import RiskError
    from .report import ProfileKind, backtest_section

    try:
        fmt = CsvFormat(
            time_column=args.time_column,
            price_column=args.price_column,
            time_format=args.time_format,
            timezone=args.timezone,
            unit=args.unit,
        )
        points = read_price_csv(args.prices, zone_code=args.zone, fmt=fmt).points
        daily = DailyPrices.from_points(args.zone, points)
        section = backtest_section(
            daily,
            profile(args.profile, args.mw),
            window_days=args.window,
            profile=ProfileKind.NAMED,
            profile_note=f"{args.profile} {args.mw:g} MW",
        )
    except (MarketDataError, RiskError, ValueError, OSError) as exc:
        print(f"bess-plane risk backtest: {exc}", file=sys.stderr)
        return 2
    if section.shortfall is not None:
        print(f"bess-plane risk backtest: {section.shortfall}", file=sys.stderr)
        return 2
    print(format_section(section))
    return 0


def format_section(section: BacktestSection) -> str:
    """The back-test as the text table the command prints."""
    from .report import verdict

    lines = [
        f"{section.zone}: {section.profile_note}, 1-day historical VaR on "
        f"{section.window_days}-day windows",
        f"history {section.history_from} .. {section.history_to} ({section.history_days} "
        f"complete days), test days {section.first_test_day} .. {section.last_test_day} "
        f"({section.test_days})",
        f"{'level':>7} {'days':>5} {'exceptions':>10} {'expected':>8} {'rate':>7} {'LR':>7} "
        f"{'p':>7}  verdict (Kupiec POF, {section.significance:.0%})",
    ]
    for k in section.results:
        lines.append(
            f"{k.level:>7.1%} {k.observations:>5} {k.exceptions:>10} "
            f"{k.expected_exceptions:>8.1f} {k.exception_rate:>7.2%} {k.lr_statistic:>7.2f} "
            f"{k.p_value:>7.3f}  {verdict(k, section.significance)}"
        )
    return "\n".join(lines)
