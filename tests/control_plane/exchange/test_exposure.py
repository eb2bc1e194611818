"""Exposure and realised PnL per portfolio: the definitions in numbers, then as properties."""

from __future__ import annotations

import itertools
from decimal import Decimal

from hypothesis import given, settings
from hypothesis import strategies as st

from control_plane.exchange.exposure import portfolio_exposure
from control_plane.exchange.models import DeliveryPeriod, MarketRegistry, Side, Trade
from control_plane.exchange.service import Exchange
from control_plane.exchange.store import MemoryOrderStore

from .conftest import DELIVERY, MARKET, T0, SteppedClock, order

LATER = DeliveryPeriod.quarter(DELIVERY.end)
BLOCK = DeliveryPeriod.hour_block(DELIVERY.start)
_ids = itertools.count(1)


def trade(
    buyer: str,
    seller: str,
    mw: str,
    price: str,
    delivery: DeliveryPeriod = DELIVERY,
    market: str = MARKET,
) -> Trade:
    n = next(_ids)
    return Trade(
        trade_id=n,
        market=market,
        delivery=delivery,
        buy_order_id=2 * n,
        sell_order_id=2 * n + 1,
        buy_portfolio=buyer,
        sell_portfolio=seller,
        buy_counterparty="c",
        sell_counterparty="c",
        quantity_mw=Decimal(mw),
        price_eur_per_mwh=Decimal(price),
        aggressor=Side.BUY,
        executed_at=T0,
    )


def test_one_sided_position_is_all_open() -> None:
    exposure = portfolio_exposure(
        "bess", [trade("bess", "x", "4", "50"), trade("bess", "x", "2", "80")]
    )
    # 6 MW for a quarter hour = 1.5 MWh; cost 4*0.25*50 + 2*0.25*80 = 50 + 40
    assert exposure.net_energy_mwh == Decimal("1.5")
    assert exposure.open_energy_mwh == Decimal("1.5")
    assert exposure.net_cash_eur == Decimal(-90)
    assert exposure.realised_pnl_eur == 0
    assert exposure.open_value_eur == Decimal(90)


def test_buy_and_sell_in_the_same_quarter_realise_the_spread() -> None:
    trades = [
        trade("bess", "x", "4", "50"),  # buy 1 MWh for 50
        trade("x", "bess", "2", "70"),  # sell 0.5 MWh for 35
        trade("x", "bess", "1", "90"),  # sell 0.25 MWh for 22.5
    ]
    exposure = portfolio_exposure("bess", trades)
    (position,) = exposure.positions
    assert position.matched_energy_mwh == Decimal("0.75")
    # average sell (35 + 22.5) / 0.75 = 76.666..., average buy 50: 0.75 * 26.666... = 20
    assert exposure.realised_pnl_eur == Decimal(20)
    assert exposure.net_energy_mwh == Decimal("0.25")
    assert exposure.net_cash_eur == Decimal("7.5")
    assert exposure.open_value_eur == Decimal("12.5")  # 0.25 MWh at the average buy of 50
    assert exposure.net_cash_eur == exposure.realised_pnl_eur - exposure.open_value_eur


def test_net_short_position() -> None:
    trades = [trade("x", "bess", "4", "100"), trade("bess", "x", "1", "20")]
    exposure = portfolio_exposure("bess", trades)
    assert exposure.net_energy_mwh == Decimal("-0.75")
    assert exposure.realised_pnl_eur == Decimal(20)  # 0.25 MWh bought at 20, sold at 100
    assert exposure.open_value_eur == Decimal(-75)  # proceeds of the 0.75 MWh still to deliver
    assert exposure.net_cash_eur == Decimal(95)


def test_different_quarters_and_markets_do_not_net() -> None:
    trades = [
        trade("bess", "x", "4", "30"),
        trade("x", "bess", "4", "90", delivery=LATER),  # time arbitrage: not realised yet
        trade("x", "bess", "4", "90", market="epex_de_lu"),  # another bidding zone
    ]
    exposure = portfolio_exposure("bess", trades)
    assert len(exposure.positions) == 3
    assert exposure.realised_pnl_eur == 0
    assert exposure.net_energy_mwh == Decimal(-1)
    assert exposure.open_energy_mwh == Decimal(3)


def test_hour_block_counts_in_each_of_its_quarters() -> None:
    exposure = portfolio_exposure(
        "bess", [trade("bess", "x", "2", "40", delivery=BLOCK), trade("x", "bess", "2", "60")]
    )
    assert [p.delivery for p in exposure.positions] == list(BLOCK.quarters())
    first = exposure.positions[0]
    assert (first.bought_mwh, first.sold_mwh) == (Decimal("0.5"), Decimal("0.5"))
    assert exposure.realised_pnl_eur == Decimal(10)  # 0.5 MWh at 60 - 40
    assert exposure.net_energy_mwh == Decimal("1.5")  # the three other quarters
    assert exposure.net_cash_eur == Decimal(30 - 80)


def test_trade_within_one_portfolio_nets_out_and_others_are_ignored() -> None:
    exposure = portfolio_exposure(
        "bess", [trade("bess", "bess", "2", "50"), trade("a", "b", "9", "9")]
    )
    assert exposure.net_energy_mwh == 0
    assert exposure.net_cash_eur == 0
    assert exposure.realised_pnl_eur == 0
    assert exposure.bought_mwh == exposure.sold_mwh == Decimal("0.5")
    assert portfolio_exposure("nobody", []).positions == ()


def test_engine_reports_exposure_from_its_trades(clock: SteppedClock) -> None:
    exchange = Exchange(store=MemoryOrderStore(), markets=MarketRegistry.default(), clock=clock)
    exchange.place_order(order=order(Side.SELL, 4, 50, portfolio="market"))
    exchange.place_order(order=order(Side.BUY, 4, 60, portfolio="bess"))  # at 55
    exchange.place_order(order=order(Side.BUY, 2, 80, portfolio="market"))
    exchange.place_order(order=order(Side.SELL, 2, 70, portfolio="bess"))  # at 75
    exposure = exchange.exposure(portfolio="bess")
    assert exposure.realised_pnl_eur == Decimal(10)  # 0.5 MWh x (75 - 55)
    assert exposure.net_energy_mwh == Decimal("0.5")
    assert exposure.net_cash_eur == Decimal("37.5") - Decimal(55)
    assert exchange.exposure(portfolio="market").realised_pnl_eur == Decimal(-10)


TRADES = st.lists(
    st.builds(
        trade,
        buyer=st.sampled_from(["bess", "x"]),
        seller=st.sampled_from(["bess", "y"]),
        mw=st.integers(1, 10_000).map(lambda kw: str(Decimal(kw) / 1000)),
        price=st.integers(-50_000, 400_000).map(lambda c: str(Decimal(c) / 100)),
        delivery=st.sampled_from([DELIVERY, LATER, BLOCK]),
    ),
    max_size=25,
)


@settings(max_examples=150, deadline=None)
@given(trades=TRADES, data=st.data())
def test_identities_hold_for_any_trades(trades: list[Trade], data: st.DataObject) -> None:
    exposure = portfolio_exposure("bess", trades)
    mine = [t for t in trades if "bess" in (t.buy_portfolio, t.sell_portfolio)]
    signed = [
        (t.energy_mwh if t.buy_portfolio == "bess" else 0)
        - (t.energy_mwh if t.sell_portfolio == "bess" else 0)
        for t in mine
    ]
    assert exposure.net_energy_mwh == sum(signed, Decimal(0))
    cash = sum(
        (
            (t.value_eur if t.sell_portfolio == "bess" else 0)
            - (t.value_eur if t.buy_portfolio == "bess" else 0)
            for t in mine
        ),
        Decimal(0),
    )
    assert exposure.net_cash_eur == cash
    assert exposure.net_cash_eur == exposure.realised_pnl_eur - exposure.open_value_eur
    for p in exposure.positions:
        assert p.net_cash_eur == p.realised_pnl_eur - p.open_value_eur
        if p.bought_mwh == 0 or p.sold_mwh == 0:
            assert p.realised_pnl_eur == 0
    shuffled = data.draw(st.permutations(trades))
    assert portfolio_exposure("bess", shuffled) == exposure
