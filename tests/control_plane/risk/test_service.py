"""The risk service on real stores (SQLite and PostgreSQL): positions from the exchange's trades
and the fleet's schedules, marks from the price store, historical VaR against a hand
computation, limits with alerts once per crossing, and the exchange's pre-trade rejection."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import numpy as np
import pytest
from sqlalchemy.engine import Engine

from control_plane.exchange.models import MarketRegistry, OrderState
from control_plane.exchange.service import Exchange
from control_plane.exchange.store import SqlOrderStore
from control_plane.fleet.models import NewSchedule, ScheduleInterval
from control_plane.fleet.store import FleetStore
from control_plane.market.models import PricePoint, Resolution
from control_plane.market.store import PriceStore
from control_plane.risk.models import LimitKind, Method, UnknownLimitError, VarRequest
from control_plane.risk.positions import FleetDispatch
from control_plane.risk.service import RiskLimitCheck, RiskService, RiskSettings
from control_plane.risk.store import LimitStore
from control_plane.risk.var import figures_from_pnl

from ..exchange.conftest import DELIVERY, T0, SteppedClock, order

DAYS = 60
SLOT = DELIVERY.start.hour * 4 + DELIVERY.start.minute // 15


def _history() -> np.ndarray:
    """DAYS x 96 quarter-hour prices before T0's day: a daily shape plus seeded noise."""
    rng = np.random.default_rng(42)
    shape = 60 + 25 * np.sin(np.arange(96) / 96 * 2 * np.pi)
    return np.round(shape + rng.normal(0, 12, size=(DAYS, 96)).cumsum(axis=0) / 3, 2)


@pytest.fixture
def prices_array() -> np.ndarray:
    return _history()


@pytest.fixture
def setup(engine: Engine, prices_array: np.ndarray) -> dict[str, Any]:
    store = SqlOrderStore(engine)
    store.migrate()
    prices = PriceStore(engine)
    prices.migrate()
    first_day = datetime(T0.year, T0.month, T0.day, tzinfo=UTC) - timedelta(days=DAYS)
    prices.upsert(
        [
            PricePoint(
                zone="AT",
                start=first_day + timedelta(days=d, minutes=15 * k),
                resolution=Resolution.PT15M,
                price_eur_per_mwh=float(prices_array[d, k]),
                source="file:test",
            )
            for d in range(DAYS)
            for k in range(96)
        ],
        fetched_at=T0,
    )
    limits = LimitStore(engine)
    limits.migrate()
    fleet = FleetStore(engine)
    fleet.migrate()
    clock = SteppedClock()
    alerts: list[tuple[str, Mapping[str, Any]]] = []
    risk = RiskService(
        limits=limits,
        trades=store,
        prices=prices,
        dispatch=FleetDispatch(fleet, engine),
        clock=clock,
        settings=RiskSettings(window_days=250),
        publish=lambda kind, data: alerts.append((kind, data)),
    )
    exchange = Exchange(
        store=store,
        markets=MarketRegistry.default(),
        clock=clock,
        pre_trade_checks=[RiskLimitCheck(risk)],
    )
    return {"risk": risk, "exchange": exchange, "alerts": alerts, "fleet": fleet}


def _trade(exchange: Exchange, side: str, mw: str, price: str, **kw: Any) -> None:
    other = "SELL" if side == "BUY" else "BUY"
    exchange.place_order(order=order(other, mw, price, portfolio="street"))
    placed = exchange.place_order(order=order(side, mw, price, **kw))
    assert placed.order.state is OrderState.FILLED, placed.order.reject_reason


def test_positions_are_marked_to_the_latest_price(
    setup: dict[str, Any], prices_array: np.ndarray
) -> None:
    _trade(setup["exchange"], "BUY", "2", "50")
    pos = setup["risk"].positions("pf-a")
    [line] = pos.lines
    assert line.traded_mwh == Decimal("0.5")
    assert line.net_cash_eur == Decimal("-25")
    # no stored price for the delivery day: the newest price of the same quarter of the day
    mark = Decimal(repr(float(prices_array[-1, SLOT]))).quantize(Decimal("0.001"))
    assert (line.mark_eur_per_mwh, line.mark_source) == (mark, "latest")
    assert line.mtm_pnl_eur == Decimal("-25") + Decimal("0.5") * mark


def test_historical_var_matches_a_hand_computation(
    setup: dict[str, Any], prices_array: np.ndarray
) -> None:
    _trade(setup["exchange"], "SELL", "4", "80")  # short 1 MWh at 10:00
    result = setup["risk"].var(VarRequest(portfolio="pf-a", window_days=250))
    changes = prices_array[1:, SLOT] - prices_array[:-1, SLOT]
    expected = figures_from_pnl(-1.0 * changes)
    assert result.scenarios == DAYS - 1
    assert result.zones == ("AT",)
    for got, want in zip(result.figures, expected, strict=True):
        assert got.var_eur == Decimal(repr(want.var_eur)).quantize(Decimal("0.01"))
        assert got.es_eur == Decimal(repr(want.es_eur)).quantize(Decimal("0.01"))


def test_monte_carlo_is_seeded_and_echoed(setup: dict[str, Any]) -> None:
    _trade(setup["exchange"], "BUY", "4", "80")
    request = VarRequest(portfolio="pf-a", method=Method.MONTE_CARLO, paths=20_000, seed=9)
    first = setup["risk"].var(request)
    assert first.request == request and first.scenarios == 20_000
    assert first.figures == setup["risk"].var(request).figures
    assert first.figures[1].var_eur > first.figures[0].var_eur > 0


def test_scheduled_dispatch_counts_for_the_sites_portfolio(setup: dict[str, Any]) -> None:
    fleet: FleetStore = setup["fleet"]
    _trade(setup["exchange"], "SELL", "1", "80", site="site-1")  # site-1 -> pf-a, epex_at
    fleet.ensure_site("site-1", now=T0)
    fleet.add_schedule(
        "site-1",
        NewSchedule(
            valid_from=DELIVERY.start,
            valid_until=DELIVERY.start + timedelta(hours=1),
            intervals=(ScheduleInterval(DELIVERY.start, 1000.0),),  # discharge 1 MW, 15 min
            interval_minutes=15,
        ),
        now=T0,
    )
    [line] = setup["risk"].positions("pf-a").lines
    assert line.traded_mwh == Decimal("-0.25")
    assert line.scheduled_mwh == Decimal("0.25")
    assert line.net_mwh == 0  # the scheduled discharge is sold forward: hedged


def test_limit_breach_alerts_once_and_the_exchange_rejects(setup: dict[str, Any]) -> None:
    risk: RiskService = setup["risk"]
    exchange: Exchange = setup["exchange"]
    _trade(exchange, "BUY", "4", "80")
    var_now = risk.var(risk.limit_request("pf-a")).figures[1].var_eur  # level 0.99
    assert var_now > 0
    risk.set_limit("pf-a", var_limit_eur=var_now * 2, pnl_limit_eur=None, hard=True, by="t")
    assert [s.utilisation_pct for s in risk.evaluate()] == [Decimal("50.0")]
    assert setup["alerts"] == []

    # doubling the position doubles the VaR: exactly 100 % is not over the limit
    _trade(exchange, "BUY", "4", "80")
    [status] = risk.evaluate()
    assert status.kind is LimitKind.VAR and status.utilisation_pct == Decimal("100.0")
    [(kind, data)] = setup["alerts"]
    assert kind == "risk.alert" and data["threshold_pct"] == 100.0
    risk.evaluate()
    assert len(setup["alerts"]) == 1  # once per crossing

    exchange.place_order(order=order("SELL", "1", "80", portfolio="street"))
    placed = exchange.place_order(order=order("BUY", "1", "80"))
    assert placed.order.state is OrderState.REJECTED
    reason = placed.order.reject_reason or ""
    assert reason.startswith("risk_limit: BUY 1.000 MW")
    assert "over its hard limit" in reason

    # a risk-reducing order passes although the portfolio sits at its limit
    reducing = exchange.place_order(order=order("SELL", "1", "80"))
    assert reducing.order.state is not OrderState.REJECTED, reducing.order.reject_reason


def test_pnl_limit_rejects_a_worst_case_fill(setup: dict[str, Any]) -> None:
    risk: RiskService = setup["risk"]
    mark = risk.positions("pf-a").lines  # no position yet
    assert mark == ()
    risk.set_limit("pf-a", var_limit_eur=None, pnl_limit_eur=Decimal("100"), hard=True, by="t")
    # buying 4 MW for a quarter 1000 EUR/MWh above any mark loses ~250 EUR at once
    placed = setup["exchange"].place_order(order=order("BUY", "4", "1000"))
    assert placed.order.state is OrderState.REJECTED
    assert "mark-to-market loss" in (placed.order.reject_reason or "")
    soft = risk.set_limit(
        "pf-a", var_limit_eur=None, pnl_limit_eur=Decimal(100), hard=False, by="t"
    )
    assert not soft.hard
    assert setup["exchange"].place_order(order=order("BUY", "4", "1000")).order.is_open


def test_limits_store_round_trips_and_deletes(setup: dict[str, Any]) -> None:
    risk: RiskService = setup["risk"]
    risk.set_limit(
        "pf-b", var_limit_eur=Decimal("1234.565"), pnl_limit_eur=None, hard=False, by="ops"
    )
    [limit] = risk.limits_store.list()
    assert limit.var_limit_eur == Decimal("1234.56") and limit.updated_by == "ops"
    risk.delete_limit("pf-b")
    with pytest.raises(UnknownLimitError, match="pf-b"):
        risk.delete_limit("pf-b")
