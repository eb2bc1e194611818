"""Risk speed: Monte Carlo VaR with 100 000 paths over 96 quarter-hours, and historical VaR.

1. **Monte Carlo**: a 96-factor covariance estimated from 250 days of quarter-hour price
   changes (the Belgian hourly file, 2023, each hour spread over its quarters, plus seeded
   quarter-hour noise so the covariance is full rank), a position in every quarter (1 MW long
   by day, 1 MW short by night); `monte_carlo_pnl` + `figures_from_pnl` (95/99/99.5 %) for
   100 000 paths, `--repeat` times: p50 / max seconds, the figures printed.
2. **Through the service**: `RiskService.var` on a SQLite store holding those prices and a
   96-quarter portfolio (trades), Monte Carlo 100 000 paths and historical: what
   `POST /api/risk/var` costs without HTTP (positions, marks, history read + cached).

    python -m bench.risk_var [--paths 100000] [--repeat 5] [--prices FILE]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np

from control_plane import db
from control_plane.exchange.models import DeliveryPeriod, MarketRegistry, NewOrder, Side
from control_plane.exchange.service import Exchange
from control_plane.exchange.store import SqlOrderStore
from control_plane.market.csv_import import read_price_csv
from control_plane.market.models import PricePoint, Resolution
from control_plane.market.store import PriceStore
from control_plane.risk.history import DailyPrices
from control_plane.risk.models import Method, VarRequest
from control_plane.risk.service import RiskService, RiskSettings
from control_plane.risk.store import LimitStore
from control_plane.risk.var import figures_from_pnl, monte_carlo_pnl

_REPO = Path(__file__).resolve().parents[1]
# ../shared beside the checkout (a git worktree one level deeper finds it too).
_CANDIDATES = [
    parent / "shared" / "data" / "be_dayahead_2022_2023.csv"
    for parent in (_REPO.parent, _REPO.parent.parent)
]
DEFAULT_PRICES = next((p for p in _CANDIDATES if p.exists()), _CANDIDATES[0])


def _quarter_points(path: Path) -> list[PricePoint]:
    """The file's 2023 hours as AT quarter-hour points, with seeded noise per quarter."""
    rng = np.random.default_rng(1)
    points = []
    for p in read_price_csv(path, zone_code="BE").points:
        if p.start.year != 2023:
            continue
        for m in range(0, 60, 15):
            points.append(
                PricePoint(
                    zone="AT",
                    start=p.start + timedelta(minutes=m),
                    resolution=Resolution.PT15M,
                    price_eur_per_mwh=round(p.price_eur_per_mwh + rng.normal(0, 5), 2),
                    source="file:bench",
                )
            )
    return points


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--paths", type=int, default=100_000)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--prices", type=Path, default=DEFAULT_PRICES)
    args = parser.parse_args()
    points = _quarter_points(args.prices)
    daily = DailyPrices.from_points("AT", points)
    _, changes = daily.changes(1)
    changes = changes[-250:]
    cov = np.cov(changes, rowvar=False)
    q = np.where((np.arange(96) >= 32) & (np.arange(96) < 80), 0.25, -0.25)
    times = []
    for seed in range(args.repeat):
        began = time.perf_counter()
        figures = figures_from_pnl(monte_carlo_pnl(cov, q, paths=args.paths, seed=seed))
        times.append(time.perf_counter() - began)
    print(f"Monte Carlo VaR, {args.paths:,} paths x 96 quarter-hours, {len(changes)} days:")
    print(f"  p50 {statistics.median(times):.3f} s   max {max(times):.3f} s")
    for f in figures:
        print(f"  {f.level:.1%}: VaR {f.var_eur:,.2f} EUR  ES {f.es_eur:,.2f} EUR")

    with tempfile.TemporaryDirectory() as tmp:
        engine = db.create_engine(database_url=None, sqlite_path=Path(tmp) / "bench.sqlite3")
        prices = PriceStore(engine)
        prices.migrate()
        prices.upsert(points, fetched_at=datetime.now(UTC))
        store = SqlOrderStore(engine)
        store.migrate()
        limits = LimitStore(engine)
        limits.migrate()
        last = daily.days[-1]
        now = datetime(last.year, last.month, last.day, tzinfo=UTC) + timedelta(days=1)
        exchange = Exchange(store=store, markets=MarketRegistry.default(), clock=lambda: now)
        for k in range(96):
            delivery = DeliveryPeriod.quarter(now + timedelta(days=1, minutes=15 * k))
            for side, portfolio in ((Side.SELL, "street"), (Side.BUY, "desk")):
                exchange.place_order(
                    order=NewOrder(
                        side=side,
                        quantity_mw=1,
                        limit_price_eur_per_mwh=80,
                        market="epex_at",
                        delivery=delivery,
                        portfolio=portfolio,
                        counterparty="bench",
                    )
                )
        risk = RiskService(
            limits=limits, trades=store, prices=prices, clock=lambda: now,
            settings=RiskSettings(window_days=250),
        )  # fmt: skip
        risk.var(VarRequest(portfolio="desk"))  # warm the history cache
        for method, paths in ((Method.HISTORICAL, 0), (Method.MONTE_CARLO, args.paths)):
            request = VarRequest(portfolio="desk", method=method, paths=paths or 10_000)
            began = time.perf_counter()
            result = risk.var(request)
            took = time.perf_counter() - began
            print(
                f"RiskService.var {method.value} ({result.scenarios:,} scenarios, "
                f"{result.positions} quarters): {took:.3f} s, VaR99 {result.figures[1].var_eur} EUR"
            )
        engine.dispose()


if __name__ == "__main__":
    main()
