"""Optimiser speed: solve time for 96 and 672 intervals, and a one-year hourly back-test.

1. **Solve time**: `--instances` random instances (seeded) per size: 96 intervals (one day of
   quarter-hours) and 672 (one week of quarter-hours), a 1 MWh / 500 kW battery with random
   SoC limits, efficiencies, degradation cost, end target and a few positions; prices from a
   daily profile plus noise, with negative hours (so some instances need the MILP). Reports
   p50 / p90 / max of `optimise()` wall time (model build + HiGHS, one thread) and how many
   instances needed the MILP. Each size runs twice: "typical" prices (70 EUR/MWh mean, few
   negative hours) and "negative" (the same shifted down by 90 EUR/MWh: about half the
   intervals negative, where the LP wants to charge and discharge at once and the MILP runs).
2. **Back-test**: `run_backtest` over one year of the Belgian hourly file
   (`--prices`, default ../shared/data/be_dayahead_2022_2023.csv, 2023), perfect foresight and
   seasonal-naive forecast: wall time (without reading the file), solver share, revenue,
   ratio and cycles per day.

    python -m bench.optimiser
    python -m bench.optimiser --instances 50 --prices FILE --year 2022
"""

from __future__ import annotations

import argparse
import itertools
import math
import statistics
import time
from datetime import UTC, date, datetime
from pathlib import Path

import numpy as np

from control_plane.market.csv_import import read_price_csv
from control_plane.optimiser.backtest import InMemoryPriceHistory, parse_battery, run_backtest
from control_plane.optimiser.model import Battery, Problem, optimise, silence_highs_banner

_REPO = Path(__file__).resolve().parents[1]
# ../shared beside the checkout (a git worktree one level deeper finds it too).
_CANDIDATES = [
    parent / "shared" / "data" / "be_dayahead_2022_2023.csv"
    for parent in (_REPO.parent, _REPO.parent.parent)
]
DEFAULT_PRICES = next((p for p in _CANDIDATES if p.exists()), _CANDIDATES[0])


def instance(rng: np.random.Generator, n: int, shift: float) -> Problem:
    hours = np.arange(n) / 4.0
    profile = (
        70 + 40 * np.sin((hours % 24 - 9) / 24 * 2 * math.pi) + 30 * np.sin(hours / 12 * math.pi)
    )
    prices = profile + shift + rng.normal(0, 35, n)
    lo = float(rng.uniform(5, 20))
    battery = Battery(
        capacity_kwh=1000.0,
        max_charge_kw=500.0,
        max_discharge_kw=500.0,
        min_soc_pct=lo,
        max_soc_pct=float(rng.uniform(80, 95)),
        charge_efficiency=float(rng.uniform(0.92, 0.97)),
        discharge_efficiency=float(rng.uniform(0.92, 0.97)),
        degradation_eur_per_mwh=float(rng.uniform(0, 15)),
        max_cycles_per_day=2.0 if rng.random() < 0.5 else None,
    )
    positions = np.where(rng.random(n) < 0.05, rng.uniform(-0.2, 0.2, n), 0.0)
    return Problem(
        battery=battery,
        start=datetime(2025, 6, 2, tzinfo=UTC),
        interval_minutes=15,
        prices_eur_per_mwh=prices.round(2).tolist(),
        initial_soc_pct=50.0,
        end_soc_pct=50.0,
        positions_mw=positions.round(3).tolist(),
    )


def bench_solve(sizes: list[int], instances: int, seed: int) -> None:
    print(f"solve time, {instances} random instances per size (quarter-hours)")
    print(
        f"{'intervals':>10} {'prices':>9} {'p50 ms':>9} {'p90 ms':>9} {'max ms':>9} "
        f"{'milp':>6} {'relaxed':>8}"
    )
    for n, (label, shift) in itertools.product(sizes, (("typical", 0.0), ("negative", -90.0))):
        rng = np.random.default_rng(seed)
        times: list[float] = []
        milp = relaxed = 0
        for _ in range(instances):
            problem = instance(rng, n, shift)
            began = time.perf_counter()
            plan = optimise(problem)
            times.append(time.perf_counter() - began)
            milp += plan.milp
            relaxed += bool(plan.relaxed)
        times.sort()
        p90 = times[min(len(times) - 1, int(0.9 * len(times)))]
        print(
            f"{n:>10} {label:>9} {statistics.median(times) * 1e3:>9.1f} {p90 * 1e3:>9.1f} "
            f"{times[-1] * 1e3:>9.1f} {milp:>6} {relaxed:>8}"
        )


def bench_backtest(prices: Path, year: int, battery: str) -> None:
    points = read_price_csv(prices, zone_code="BE").points
    began = time.perf_counter()
    result = run_backtest(
        history=InMemoryPriceHistory(points),
        zone_code="BE",
        battery=parse_battery(battery),
        start=date(year, 1, 1),
        end=date(year + 1, 1, 1),
    )
    wall = time.perf_counter() - began
    print(f"\none-year hourly back-test, {prices.name}, {year}, battery {battery}")
    print(result.summary())
    print(
        f"wall time {wall:.2f} s for {len(result.days)} days x 2 plans "
        f"({wall / max(1, 2 * len(result.days)) * 1e3:.2f} ms per plan; "
        f"solver {result.solve_seconds:.2f} s)"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[96, 672])
    parser.add_argument("--instances", type=int, default=20)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--prices", type=Path, default=DEFAULT_PRICES)
    parser.add_argument("--year", type=int, default=2023)
    parser.add_argument(
        "--battery",
        default="capacity_kwh=1000,power_kw=500,efficiency=0.95,degradation_eur_per_mwh=5",
    )
    args = parser.parse_args()
    silence_highs_banner()
    bench_solve(args.sizes, args.instances, args.seed)
    bench_backtest(args.prices, args.year, args.battery)


if __name__ == "__main__":
    main()
