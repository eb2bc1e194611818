"""Billing throughput: invoices generated per second for 1,000 counterparties, PDFs per second.

A month of trades between `--counterparties` counterparties (default 1,000; each trade has a
random buyer and seller, `--trades-per-cp` trades per counterparty on average, quarter-hours
and hour blocks over two markets) is held in memory as the exchange's trade source, so the
figures are billing's own work: grouping, Decimal arithmetic, cent allocation, gapless numbers
and the inserts of the invoices and their lines in one issuing transaction. Stages:

- `generate`: one `generate(period)` call issuing every counterparty's invoice (cold store);
- `regenerate`: the same call again, idempotent (reads the current invoices, issues nothing);
- `pdf`: rendering `--pdfs` of the invoices to PDF (reportlab), one after the other.

Backends: SQLite `FULL` and `NORMAL` in a temp directory, and PostgreSQL with `--dsn`.

    python -m bench.billing
    python -m bench.billing --counterparties 1000 --dsn postgresql://postgres@127.0.0.1/bench
"""

from __future__ import annotations

import argparse
import random
import tempfile
import time
import uuid
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path

from control_plane import db
from control_plane.billing.models import BillingConfig, Party
from control_plane.billing.pdf import render_invoice
from control_plane.billing.service import BillingService
from control_plane.billing.store import BillingStore
from control_plane.exchange.models import DeliveryPeriod, Side, Trade

MONTH_START = datetime(2026, 9, 30, 22, 0, tzinfo=UTC)  # 2026-10-01 00:00 Europe/Vienna
QUARTERS = 31 * 96


class MemoryTrades:
    def __init__(self, trades: list[Trade]) -> None:
        self.trades = trades

    def list_trades(
        self, *, delivery_from: datetime | None = None, delivery_to: datetime | None = None
    ) -> list[Trade]:
        return self.trades


def month_of_trades(counterparties: int, per_cp: int, seed: int = 11) -> list[Trade]:
    rng = random.Random(seed)
    names = [f"cp{i:04d}" for i in range(counterparties)]
    trades = []
    for trade_id in range(1, counterparties * per_cp // 2 + 1):
        buyer, seller = rng.sample(names, 2)
        minutes = 60 if rng.random() < 0.2 else 15
        start = MONTH_START + timedelta(minutes=15 * rng.randrange(QUARTERS - 8))
        start -= timedelta(minutes=(start.minute % minutes))
        trades.append(
            Trade(
                trade_id=trade_id,
                market=rng.choice(("epex_at", "epex_de_lu")),
                delivery=DeliveryPeriod(start, minutes),
                buy_order_id=2 * trade_id,
                sell_order_id=2 * trade_id + 1,
                buy_portfolio="pf",
                sell_portfolio="pf",
                buy_counterparty=buyer,
                sell_counterparty=seller,
                quantity_mw=Decimal(rng.randrange(1, 20_000)) / 1000,
                price_eur_per_mwh=Decimal(rng.randrange(-20_000, 300_000)) / 1000,
                aggressor=Side.BUY,
                executed_at=start - timedelta(hours=1),
            )
        )
    return trades


def run(label: str, engine_factory: object, trades: list[Trade], pdfs: int) -> None:
    engine = engine_factory()  # type: ignore[operator]
    try:
        store = BillingStore(engine)
        store.migrate()
        service = BillingService(
            store=store,
            trades=MemoryTrades(trades),
            config=BillingConfig(issuer=Party("Phoenyra Energy Trading GmbH", ("1010 Wien",))),
            clock=lambda: datetime(2026, 11, 2, 9, tzinfo=UTC),
        )
        started = time.perf_counter()
        result = service.generate(period="2026-10")
        generate_s = time.perf_counter() - started
        n = len(result.issued)
        lines = sum(len(i.lines) for i in result.issued)
        started = time.perf_counter()
        again = service.generate(period="2026-10")
        regenerate_s = time.perf_counter() - started
        assert again.issued == () and len(again.invoices) == n
        sample = result.issued[:pdfs]
        started = time.perf_counter()
        size = sum(len(render_invoice(inv)) for inv in sample)
        pdf_s = time.perf_counter() - started
        print(
            f"{label:<16} generate {n:5d} invoices ({lines} lines) in {generate_s:6.2f} s = "
            f"{n / generate_s:7.0f} invoices/s | regenerate {regenerate_s:5.2f} s | "
            f"pdf {len(sample) / pdf_s:5.0f}/s (avg {size / len(sample) / 1024:.1f} KiB)"
        )
    finally:
        engine.dispose()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--counterparties", type=int, default=1000)
    parser.add_argument("--trades-per-cp", type=int, default=30)
    parser.add_argument("--pdfs", type=int, default=200)
    parser.add_argument("--dsn", help="also run against this PostgreSQL database")
    args = parser.parse_args()
    trades = month_of_trades(args.counterparties, args.trades_per_cp)
    print(
        f"billing: {args.counterparties} counterparties, {len(trades)} trades in 2026-10, "
        f"{args.pdfs} PDFs"
    )
    with tempfile.TemporaryDirectory() as tmp:
        for sync in ("FULL", "NORMAL"):
            path = Path(tmp) / f"billing-{sync}.sqlite3"
            run(
                f"sqlite {sync}",
                lambda p=path, s=sync: db.create_engine(
                    database_url=None, sqlite_path=p, sqlite_synchronous=s
                ),
                trades,
                args.pdfs,
            )
    if args.dsn:
        import psycopg

        schema = f"bench_{uuid.uuid4().hex[:8]}"
        with psycopg.connect(args.dsn, autocommit=True) as conn:
            conn.execute(f'CREATE SCHEMA "{schema}"')
        try:
            dsn = f"{args.dsn}?options=-csearch_path%3D{schema}"
            run("postgresql", lambda: db.create_engine(database_url=dsn, sqlite_path=Path()),
                trades, args.pdfs)  # fmt: skip
        finally:
            with psycopg.connect(args.dsn, autocommit=True) as conn:
                conn.execute(f'DROP SCHEMA "{schema}" CASCADE')


if __name__ == "__main__":
    main()
