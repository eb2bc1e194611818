"""Matching-engine throughput: orders/s in memory and durable on SQLite, vs a bare insert.

One deterministic workload (seeded) of `--ops` operations over `--books` quarter-hour books of
one market: 60 % resting orders (a limit that does not reach the other side: a bid below the
best ask, an ask above the best bid), 30 % crossing orders (a limit through the best opposite
price, 0.1-5 MW, so it fills one or more resting orders, often partly, and may rest the
remainder), 10 % cancels of a random open order. The workload is generated once by running it
through an in-memory engine (not timed) and then replayed, operation by operation, on:

- `memory`: `Exchange` on `MemoryOrderStore` - validation, matching, bookkeeping, no I/O;
- `sqlite FULL` / `sqlite NORMAL`: `Exchange` on `SqlOrderStore` (WAL), one transaction per
  placement or cancel (order + trades + counter-order updates), at each `synchronous` level;
- baseline `bare insert`: stdlib `sqlite3`, the same order rows (every column the store
  writes) into a table of the same shape, one INSERT + COMMIT per row, same WAL and
  `synchronous`: what one durable row costs without SQLAlchemy and without matching.

Latency is per operation, as the caller of `place_order`/`cancel_order` waits for it.

    python -m bench.exchange_orders                        # 10 000 ops, /tmp
    python -m bench.exchange_orders --ops 50000 --dir /var/lib/phoenyra
    python -m bench.exchange_orders --postgres postgresql+psycopg://postgres@127.0.0.1/bench
"""

from __future__ import annotations

import argparse
import random
import sqlite3
import statistics
import tempfile
import time
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path

from control_plane.exchange.models import (
    DeliveryPeriod,
    MarketRegistry,
    NewOrder,
    Order,
    Side,
)
from control_plane.exchange.service import Exchange
from control_plane.exchange.store import MemoryOrderStore, OrderStore, SqlOrderStore, Synchronous

NOW = datetime(2025, 11, 3, 8, 0, tzinfo=UTC)
MARKET = "epex_at"
MID_EUR_PER_MWH = Decimal(80)
CENT = Decimal("0.01")


@dataclass(frozen=True, slots=True)
class Op:
    kind: str  # "rest", "cross", "cancel"
    order: NewOrder | None = None
    cancel_id: int = 0


def _clock() -> datetime:
    return NOW


def generate(ops: int, books: int, seed: int) -> tuple[list[Op], list[Order]]:
    """The workload, and the order rows it stores (for the baseline), from an untimed run."""
    rng = random.Random(seed)
    deliveries = [
        DeliveryPeriod.quarter(NOW + timedelta(hours=2, minutes=15 * i)) for i in range(books)
    ]
    engine = Exchange(store=MemoryOrderStore(), markets=MarketRegistry.default(), clock=_clock)
    open_ids: set[int] = set()
    open_list: list[int] = []  # for random choice; pruned lazily
    workload: list[Op] = []
    rows: list[Order] = []

    def price(value: Decimal) -> Decimal:
        return min(Decimal(3999), max(Decimal(-499), value)).quantize(CENT)

    while len(workload) < ops:
        roll = rng.random()
        if roll < 0.10 and open_ids:
            while (order_id := open_list[rng.randrange(len(open_list))]) not in open_ids:
                open_list.remove(order_id)
            engine.cancel_order(order_id=order_id)
            open_ids.discard(order_id)
            workload.append(Op("cancel", cancel_id=order_id))
            continue
        delivery = deliveries[rng.randrange(books)]
        side = rng.choice((Side.BUY, Side.SELL))
        bid, ask = engine.top_of_book(market=MARKET, delivery=delivery)
        opposite = ask if side is Side.BUY else bid
        sign = 1 if side is Side.BUY else -1
        step = Decimal(rng.randint(1, 1000)) / 100  # 0.01 .. 10 EUR/MWh
        if roll < 0.40 and opposite is not None:
            kind, limit = "cross", price(opposite + sign * step / 5)
            quantity = Decimal(rng.randint(100, 5000)) / 1000
        else:
            anchor = opposite if opposite is not None else MID_EUR_PER_MWH
            kind, limit = "rest", price(anchor - sign * step)
            quantity = Decimal(rng.randint(500, 5000)) / 1000
        new = NewOrder(
            side=side,
            quantity_mw=quantity,
            limit_price_eur_per_mwh=limit,
            market=MARKET,
            delivery=delivery,
            portfolio=rng.choice(("bess-a", "bess-b", "desk")),
            counterparty="internal",
        )
        placed = engine.place_order(order=new)
        rows.append(placed.order)
        for counter in placed.counter_orders:
            if not counter.is_open:
                open_ids.discard(counter.order_id)
        if placed.order.is_open:
            open_ids.add(placed.order.order_id)
            open_list.append(placed.order.order_id)
        workload.append(Op(kind, order=new))
    return workload, rows


@dataclass
class Result:
    label: str
    seconds: float
    latencies: dict[str, list[float]]
    trades: int = 0

    @property
    def ops(self) -> int:
        return sum(len(v) for v in self.latencies.values())

    @property
    def rate(self) -> float:
        return self.ops / self.seconds

    def all_latencies(self) -> list[float]:
        return [x for v in self.latencies.values() for x in v]


def _pct_ms(samples: list[float], q: float) -> float:
    ordered = sorted(samples)
    return 1000.0 * ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def replay(label: str, store: OrderStore, workload: list[Op]) -> Result:
    """Run the workload through a fresh engine on `store`; per-operation latency."""
    engine = Exchange(store=store, markets=MarketRegistry.default(), clock=_clock)
    latencies: dict[str, list[float]] = {"rest": [], "cross": [], "cancel": []}
    trades = 0
    clock = time.perf_counter
    started = clock()
    for op in workload:
        t0 = clock()
        if op.order is not None:
            trades += len(engine.place_order(order=op.order).trades)
        else:
            engine.cancel_order(order_id=op.cancel_id)
        latencies[op.kind].append(clock() - t0)
    return Result(label, clock() - started, latencies, trades)


BARE_SCHEMA = """
CREATE TABLE exchange_orders (
    order_id INTEGER PRIMARY KEY, market TEXT NOT NULL, delivery_start TEXT NOT NULL,
    delivery_minutes INTEGER NOT NULL, side TEXT NOT NULL, quantity_kw INTEGER NOT NULL,
    limit_price_meur_per_mwh INTEGER NOT NULL, portfolio TEXT NOT NULL,
    counterparty TEXT NOT NULL, site TEXT, state TEXT NOT NULL, filled_kw INTEGER NOT NULL,
    reject_reason TEXT, created_at TEXT NOT NULL, updated_at TEXT NOT NULL
)
"""
BARE_INSERT = "INSERT INTO exchange_orders VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"


def bare_insert(path: Path, synchronous: Synchronous, rows: list[Order]) -> Result:
    """The baseline: each order row inserted and committed on its own with stdlib sqlite3."""
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("PRAGMA journal_mode = WAL")
    conn.execute(f"PRAGMA synchronous = {synchronous}")
    conn.execute(BARE_SCHEMA)
    values = [
        (
            o.order_id,
            o.market,
            o.delivery.start.replace(tzinfo=None).isoformat(" "),
            o.delivery.minutes,
            o.side.value,
            int(o.quantity_mw * 1000),
            int(o.limit_price_eur_per_mwh * 1000),
            o.portfolio,
            o.counterparty,
            o.site,
            "ACCEPTED",
            0,
            None,
            o.created_at.replace(tzinfo=None).isoformat(" "),
            o.updated_at.replace(tzinfo=None).isoformat(" "),
        )
        for o in rows
    ]
    latencies: list[float] = []
    clock = time.perf_counter
    started = clock()
    for row in values:
        t0 = clock()
        conn.execute("BEGIN")
        conn.execute(BARE_INSERT, row)
        conn.execute("COMMIT")
        latencies.append(clock() - t0)
    seconds = clock() - started
    conn.close()
    return Result(f"bare insert {synchronous}", seconds, {"insert": latencies})


def _print(results: list[Result], baseline: dict[str, Result]) -> None:
    print(
        f"{'run':<22} {'ops':>7} {'ops/s':>9} {'p50 ms':>8} {'p99 ms':>8} {'max ms':>8} "
        f"{'x bare':>7}"
    )
    for r in results:
        lat = r.all_latencies()
        sync = r.label.split()[-1]
        ratio = f"{r.rate / baseline[sync].rate:>7.2f}" if sync in baseline else f"{'':>7}"
        print(
            f"{r.label:<22} {r.ops:>7} {r.rate:>9,.0f} {statistics.median(lat) * 1000:>8.3f} "
            f"{_pct_ms(lat, 0.99):>8.3f} {max(lat) * 1000:>8.3f} {ratio}"
        )
    print()
    print(f"{'by kind (p50 / p99 ms)':<22} {'rest':>17} {'cross':>17} {'cancel':>17}")
    for r in results:
        if "insert" in r.latencies:
            continue
        cells = [
            f"{statistics.median(v) * 1000:>7.3f} / {_pct_ms(v, 0.99):>7.3f}"
            for v in (r.latencies["rest"], r.latencies["cross"], r.latencies["cancel"])
        ]
        print(f"{r.label:<22} {cells[0]:>17} {cells[1]:>17} {cells[2]:>17}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--ops", type=int, default=10_000, help="operations in the workload")
    parser.add_argument("--books", type=int, default=4, help="quarter-hour books it spreads over")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--dir", type=Path, help="directory on the disk to measure (default /tmp)")
    parser.add_argument(
        "--sync", nargs="+", default=["FULL", "NORMAL"], choices=["FULL", "NORMAL", "OFF"]
    )
    parser.add_argument("--postgres", help="also run durable on this (empty) PostgreSQL database")
    args = parser.parse_args(argv)

    workload, rows = generate(args.ops, args.books, args.seed)
    kinds = {k: sum(1 for op in workload if op.kind == k) for k in ("rest", "cross", "cancel")}
    print(
        f"Exchange workload: {len(workload)} ops on {args.books} books of {MARKET} "
        f"(rest {kinds['rest']}, cross {kinds['cross']}, cancel {kinds['cancel']}; "
        f"{len(rows)} order rows), seed {args.seed}"
    )
    results: list[Result] = []
    baseline: dict[str, Result] = {}
    memory = replay("memory", MemoryOrderStore(), workload)
    results.append(memory)
    with tempfile.TemporaryDirectory(prefix="exchange-bench-", dir=args.dir) as tmp:
        directory = Path(tmp)
        print(f"SQLite files in {directory}; {memory.trades} trades per replay")
        for sync in args.sync:
            with SqlOrderStore.open(
                f"sqlite:///{directory / f'exchange-{sync}.sqlite3'}", synchronous=sync
            ) as store:
                results.append(replay(f"sqlite {sync}", store, workload))
            baseline[sync] = bare_insert(directory / f"bare-{sync}.sqlite3", sync, rows)
        if args.postgres:
            with SqlOrderStore.open(args.postgres) as store:
                results.append(replay("postgresql", store, workload))
    results.extend(baseline.values())
    print()
    _print(results, baseline)
    print()
    for r in results[1:]:
        if r.label.startswith(("sqlite", "postgresql")):
            print(f"memory / {r.label}: {memory.rate / r.rate:,.1f}x")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
