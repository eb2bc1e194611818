"""The engine's incremental position book and its metrics: equal to the batch computation over
the stored trades (also after a reload), and metrics that move only after a commit."""

from __future__ import annotations

from datetime import timedelta

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry

from control_plane.exchange.errors import StoreError
from control_plane.exchange.exposure import PositionBook, portfolio_exposure
from control_plane.exchange.metrics import ExchangeMetrics
from control_plane.exchange.models import DeliveryPeriod, MarketRegistry, PlacedOrder, Side
from control_plane.exchange.service import Exchange
from control_plane.exchange.store import MemoryOrderStore, SqlOrderStore

from .conftest import DELIVERY, MARKET, SteppedClock, order

LATER = DeliveryPeriod.quarter(DELIVERY.end)
BLOCK = DeliveryPeriod.hour_block(DELIVERY.start)
PORTFOLIOS = ("bess", "desk", "mm")

ORDERS = st.lists(
    st.tuples(
        st.sampled_from(list(Side)),
        st.integers(1, 3000).map(lambda kw: f"{kw / 1000:.3f}"),
        st.integers(-200, 300).map(str),
        st.sampled_from(PORTFOLIOS),
        st.sampled_from([DELIVERY, LATER, BLOCK]),
        st.sampled_from(["epex_at", "epex_de_lu"]),
    ),
    max_size=40,
)


def _assert_matches_the_store(exchange: Exchange, store: MemoryOrderStore | SqlOrderStore) -> None:
    trades = store.list_trades()
    traded = sorted({p for t in trades for p in (t.buy_portfolio, t.sell_portfolio)})
    assert exchange.portfolios() == traded
    for portfolio in (*PORTFOLIOS, "nobody"):
        assert exchange.exposure(portfolio=portfolio) == portfolio_exposure(portfolio, trades)


@settings(max_examples=60, deadline=None)
@given(orders=ORDERS)
def test_incremental_exposure_equals_the_batch_one_also_after_a_reload(
    orders: list[tuple[Side, str, str, str, DeliveryPeriod, str]],
) -> None:
    store = MemoryOrderStore()
    clock = SteppedClock()
    exchange = Exchange(store=store, markets=MarketRegistry.default(), clock=clock)
    for i, (side, mw, price, portfolio, delivery, market) in enumerate(orders):
        exchange.place_order(
            order=order(side, mw, price, portfolio=portfolio, delivery=delivery, market=market)
        )
        if i % 7 == 3 and exchange.open_orders():
            exchange.cancel_order(order_id=exchange.open_orders()[0].order_id)
        clock.advance(timedelta(seconds=1))
    _assert_matches_the_store(exchange, store)
    _assert_matches_the_store(
        Exchange(store=store, markets=MarketRegistry.default(), clock=clock), store
    )


def test_position_book_sums_a_trade_within_one_portfolio_both_ways() -> None:
    store = MemoryOrderStore()
    exchange = Exchange(store=store, markets=MarketRegistry.default(), clock=SteppedClock())
    exchange.place_order(order=order(Side.SELL, 1, 50, portfolio="bess"))
    exchange.place_order(order=order(Side.BUY, 1, 50, portfolio="bess"))
    book = PositionBook(store.list_trades())
    assert book.portfolios() == ["bess"]
    assert book.exposure("bess") == portfolio_exposure("bess", store.list_trades())
    assert book.exposure("bess").bought_mwh == book.exposure("bess").sold_mwh != 0


def test_positions_survive_a_restart_on_sql(sql_store: SqlOrderStore, clock: SteppedClock) -> None:
    exchange = Exchange(store=sql_store, markets=MarketRegistry.default(), clock=clock)
    exchange.place_order(order=order(Side.SELL, 2, 40, portfolio="mm"))
    exchange.place_order(order=order(Side.BUY, 1, 60, portfolio="bess"))
    exchange.place_order(order=order(Side.SELL, "0.5", 30, portfolio="bess", delivery=BLOCK))
    exchange.place_order(order=order(Side.BUY, 1, 90, portfolio="mm", delivery=BLOCK))
    _assert_matches_the_store(exchange, sql_store)
    restarted = Exchange(store=sql_store, markets=MarketRegistry.default(), clock=clock)
    _assert_matches_the_store(restarted, sql_store)
    assert restarted.exposure(portfolio="bess") == exchange.exposure(portfolio="bess")


# -- metrics ----------------------------------------------------------------------------------


def _value(registry: CollectorRegistry, name: str, **labels: str) -> float | None:
    return registry.get_sample_value(name, labels)


class FlakyStore(MemoryOrderStore):
    """Refuses the next commit."""

    fail = False

    def commit_placement(self, placed: PlacedOrder) -> None:
        if self.fail:
            self.fail = False
            raise StoreError("disk I/O error")
        super().commit_placement(placed)


def _reject_above_5_mw(candidate: object) -> str | None:
    return "max_5: too big" if getattr(candidate, "quantity_mw", 0) > 5 else None


_reject_above_5_mw.name = "max_5"  # type: ignore[attr-defined]


def test_metrics_follow_committed_placements(clock: SteppedClock) -> None:
    registry = CollectorRegistry()
    store = FlakyStore()
    exchange = Exchange(
        store=store,
        markets=MarketRegistry.default(),
        clock=clock,
        pre_trade_checks=[_reject_above_5_mw],
        metrics=ExchangeMetrics(registry),
    )
    exchange.place_order(order=order(Side.SELL, 4, 50, portfolio="mm"))
    exchange.place_order(order=order(Side.BUY, 1, 60, portfolio="bess"))  # 1 @ 55
    exchange.place_order(order=order(Side.BUY, 4, 60, portfolio="bess"))  # 3 @ 55, 1 rests
    exchange.place_order(order=order(Side.BUY, 6, 60, portfolio="bess"))  # rejected
    exchange.place_order(order=order(Side.SELL, 2, 65, portfolio="bess"))  # rests above 60
    counts = {
        outcome: _value(registry, "bess_plane_orders_total", market=MARKET, outcome=outcome)
        for outcome in ("accepted", "filled", "partially_filled", "rejected")
    }
    assert counts == {"accepted": 2.0, "filled": 1.0, "partially_filled": 1.0, "rejected": 1.0}
    assert _value(registry, "bess_plane_order_rejections_total", check="max_5") == 1.0
    assert _value(registry, "bess_plane_trades_total", market=MARKET) == 2.0
    assert _value(registry, "bess_plane_traded_energy_mwh_total", market=MARKET) == 1.0
    bess = exchange.exposure(portfolio="bess")
    for spec, name, value in (
        ("G_EXPO_E", "bess_plane_exposure_energy_mwh", bess.open_energy_mwh),
        ("G_EXPO_N", "bess_plane_exposure_notional_eur", bess.open_notional_eur),
        ("G_PNL_REAL", "bess_plane_pnl_realised_eur", bess.realised_pnl_eur),
    ):
        assert _value(registry, spec, portfolio="bess") == float(value)
        assert _value(registry, name, portfolio="bess") == float(value)
    assert _value(registry, "G_EXPO_E", portfolio="bess") == 1.0  # 4 MW x 0.25 h
    assert _value(registry, "G_EXPO_N", portfolio="bess") == 55.0  # 1 MWh at 55
    assert _value(registry, "G_EXPO_E", portfolio="mm") == 1.0

    before = registry.get_sample_value("bess_plane_trades_total", {"market": MARKET})
    store.fail = True
    with pytest.raises(StoreError):
        exchange.place_order(order=order(Side.BUY, 2, 70, portfolio="desk"))  # would trade
    assert registry.get_sample_value("bess_plane_trades_total", {"market": MARKET}) == before
    assert _value(registry, "G_EXPO_E", portfolio="desk") is None
    assert _value(registry, "bess_plane_orders_total", market=MARKET, outcome="filled") == 1.0

    (resting,) = [o for o in exchange.open_orders() if o.side is Side.SELL]
    exchange.cancel_order(order_id=resting.order_id)
    assert _value(registry, "bess_plane_orders_total", market=MARKET, outcome="cancelled") == 1


def test_gauges_are_set_from_the_store_at_start(clock: SteppedClock) -> None:
    store = MemoryOrderStore()
    first = Exchange(store=store, markets=MarketRegistry.default(), clock=clock)
    first.place_order(order=order(Side.SELL, 2, 40, portfolio="mm"))
    first.place_order(order=order(Side.BUY, 2, 60, portfolio="bess"))  # 0.5 MWh @ 50
    first.place_order(order=order(Side.SELL, 2, 80, portfolio="bess"))
    first.place_order(order=order(Side.BUY, 2, 90, portfolio="mm"))  # sold 0.5 MWh @ 85
    registry = CollectorRegistry()
    Exchange(
        store=store,
        markets=MarketRegistry.default(),
        clock=clock,
        metrics=ExchangeMetrics(registry),
    )
    assert _value(registry, "G_PNL_REAL", portfolio="bess") == 17.5  # 0.5 x (85 - 50)
    assert _value(registry, "G_PNL_REAL", portfolio="mm") == -17.5
    assert _value(registry, "G_EXPO_E", portfolio="bess") == 0.0
