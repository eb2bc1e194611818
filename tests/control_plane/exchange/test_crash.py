"""A real crash: SIGKILL an engine process mid-stream, reopen its store, check nothing tore.

The child places random orders (and cancels some) on the store as fast as it can and prints
each placement once `place_order` has returned, i.e. after its commit. After some of them
the parent kills it with SIGKILL, wherever it is - often inside a transaction. Then, on the
reopened store: every acknowledged order and trade is there unchanged; every order's filled MW
equals its trades; order and trade ids have no gaps or duplicates; the rebuilt books are not
crossed; and a new engine carries on with the next ids. SIGKILL tests a process crash (the
kernel keeps the page cache); power loss is what synchronous=FULL adds on top.
"""

from __future__ import annotations

import os
import queue
import signal
import subprocess
import sys
import threading
import time
from decimal import Decimal
from pathlib import Path

import pytest

from control_plane.exchange.models import MarketRegistry, OrderState, Side
from control_plane.exchange.service import Exchange
from control_plane.exchange.store import SqlOrderStore

from .conftest import DELIVERY, MARKET, SteppedClock, order

REPO = Path(__file__).resolve().parents[3]
ACKED_BEFORE_KILL = 60
TIMEOUT_S = 20.0

CHILD = """
import random
import sys
from datetime import UTC, datetime
from decimal import Decimal

from control_plane.exchange.models import DeliveryPeriod, MarketRegistry, NewOrder, Side
from control_plane.exchange.service import Exchange
from control_plane.exchange.store import SqlOrderStore

url, start = sys.argv[1], datetime.fromisoformat(sys.argv[2])
now = datetime(2025, 11, 3, 8, 0, tzinfo=UTC)
exchange = Exchange(
    store=SqlOrderStore.open(url), markets=MarketRegistry.default(), clock=lambda: now
)
rng = random.Random(7)
open_ids = []
while True:
    if open_ids and rng.random() < 0.1:
        order_id = open_ids.pop(rng.randrange(len(open_ids)))
        exchange.cancel_order(order_id=order_id)
        line = f"C {order_id}"
    else:
        placed = exchange.place_order(order=NewOrder(
            side=rng.choice([Side.BUY, Side.SELL]),
            quantity_mw=Decimal(rng.randint(1, 3000)) / 1000,
            limit_price_eur_per_mwh=Decimal(rng.randint(4500, 5500)) / 100,
            market="epex_at",
            delivery=DeliveryPeriod.quarter(start),
            portfolio=rng.choice(["a", "b"]),
            counterparty="desk",
        ))
        done = {o.order_id for o in placed.counter_orders if not o.is_open}
        open_ids = [i for i in open_ids if i not in done]
        if placed.order.is_open:
            open_ids.append(placed.order.order_id)
        trades = ",".join(
            f"{t.trade_id}:{t.buy_order_id}:{t.sell_order_id}:{t.quantity_mw}:{t.price_eur_per_mwh}"
            for t in placed.trades
        )
        line = f"P {placed.order.order_id} {placed.order.filled_mw} {trades}"
    sys.stdout.write(line + "\\n")
    sys.stdout.flush()
"""


def _run_and_kill(url: str) -> list[str]:
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]),
    }
    child = subprocess.Popen(
        [sys.executable, "-c", CHILD, url, DELIVERY.start.isoformat()],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    lines: queue.Queue[str] = queue.Queue()

    def pump() -> None:
        assert child.stdout is not None
        for line in child.stdout:
            lines.put(line.strip())

    threading.Thread(target=pump, daemon=True).start()
    acked: list[str] = []
    deadline = time.monotonic() + TIMEOUT_S
    try:
        while len(acked) < ACKED_BEFORE_KILL:
            try:
                acked.append(lines.get(timeout=max(0.0, deadline - time.monotonic())))
            except queue.Empty:
                child.kill()
                _, err = child.communicate(timeout=5)
                pytest.fail(f"the child acked only {len(acked)} placements: {err[-2000:]}")
        os.kill(child.pid, signal.SIGKILL)
    finally:
        if child.poll() is None:
            child.kill()
        child.wait(timeout=10)
    assert child.returncode == -signal.SIGKILL
    # Lines printed before the kill landed but not yet read are acknowledged too.
    while not lines.empty():
        acked.append(lines.get_nowait())
    return acked


def test_sigkill_mid_stream_loses_and_tears_nothing(store_url: str, clock: SteppedClock) -> None:
    SqlOrderStore.open(store_url).close()  # migrate first, so the child starts trading at once
    acked = _run_and_kill(store_url)

    with SqlOrderStore.open(store_url) as store:
        orders = {o.order_id: o for o in store.list_orders()}
        trades = store.list_trades()

        # every acknowledged placement and trade is there, as acknowledged
        by_id = {t.trade_id: t for t in trades}
        for line in acked:
            kind, order_id, *rest = line.split(" ")
            assert int(order_id) in orders
            if kind == "C":
                assert orders[int(order_id)].state is OrderState.CANCELLED
                continue
            filled, trade_list = rest[0], rest[1] if len(rest) > 1 else ""
            assert orders[int(order_id)].filled_mw >= Decimal(filled)
            for item in filter(None, trade_list.split(",")):
                trade_id, buy, sell, quantity, price = item.split(":")
                t = by_id[int(trade_id)]
                assert (t.buy_order_id, t.sell_order_id) == (int(buy), int(sell))
                assert (t.quantity_mw, t.price_eur_per_mwh) == (Decimal(quantity), Decimal(price))

        # no gaps, no duplicates, nothing half-written
        assert sorted(orders) == list(range(1, len(orders) + 1))
        assert [t.trade_id for t in trades] == list(range(1, len(trades) + 1))
        assert len(orders) >= sum(1 for line in acked if line.startswith("P"))
        traded: dict[int, Decimal] = {}
        for t in trades:
            traded[t.buy_order_id] = traded.get(t.buy_order_id, Decimal(0)) + t.quantity_mw
            traded[t.sell_order_id] = traded.get(t.sell_order_id, Decimal(0)) + t.quantity_mw
            assert orders[t.buy_order_id].side is Side.BUY
            assert orders[t.sell_order_id].side is Side.SELL
        for o in orders.values():
            assert o.filled_mw == traded.get(o.order_id, Decimal(0)), o
            assert o.filled_mw <= o.quantity_mw
            if o.state is OrderState.FILLED:
                assert o.filled_mw == o.quantity_mw
            elif o.state is OrderState.PARTIALLY_FILLED:
                assert 0 < o.filled_mw < o.quantity_mw

        # the books come back uncrossed and the engine carries on
        exchange = Exchange(store=store, markets=MarketRegistry.default(), clock=clock)
        book = exchange.book(market=MARKET, delivery=DELIVERY)
        assert not book.is_crossed
        assert len(book.bids) + len(book.asks) == len(store.load_open_orders())
        placed = exchange.place_order(order=order(Side.BUY, "1", "4000"))
        assert placed.order.order_id == len(orders) + 1
        assert [t.trade_id for t in placed.trades][:1] in ([], [len(trades) + 1])
