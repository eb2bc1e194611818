"""The price forecast back-test over the shared Belgian file: MAE/RMSE/P10-P90 coverage table
of each model and horizon, and the wall time (load + back-test). See bench/README.md."""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from control_plane.forecast.backtest import format_table, run_backtest
from control_plane.forecast.models import hourly_from_points
from control_plane.market.csv_import import read_price_csv

DEFAULT = Path(__file__).resolve().parents[2] / "shared" / "data" / "be_dayahead_2022_2023.csv"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--prices", type=Path, default=DEFAULT, help="price CSV (default: BE)")
    parser.add_argument("--warmup-days", type=int, default=28)
    args = parser.parse_args()
    started = time.perf_counter()
    series = hourly_from_points(
        read_price_csv(args.prices, zone_code="BE").points, timezone="Europe/Brussels"
    )
    loaded = time.perf_counter()
    rows = run_backtest(series, warmup_days=args.warmup_days)
    done = time.perf_counter()
    print(format_table(rows))
    origins = max(r.forecasts for r in rows)
    print(
        f"load {loaded - started:.2f} s, back-test {done - loaded:.2f} s "
        f"({len(rows)} model x horizon runs, {origins} origins, "
        f"{1000 * (done - loaded) / origins:.1f} ms per origin)"
    )


if __name__ == "__main__":
    main()
