"""`GET /api/risk/report/{portfolio}` on the real app (SQLite and PostgreSQL): prices imported
into the store, trades placed through /api/orders; the back-test against a hand computation
and against `bess-plane risk backtest` on the shared Belgian file; too little history; roles."""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from fastapi import FastAPI

from control_plane.app import create_app
from control_plane.auth.models import Role
from control_plane.cli import main
from control_plane.market.csv_import import read_price_csv
from control_plane.market.models import PricePoint, Resolution

from ..exchange.conftest import T0, SteppedClock
from ..exchange_api.conftest import order_body
from ..plane import bearer, settings_for

with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    from starlette.testclient import TestClient

SHARED_PRICES = Path("/work/shared/data/be_dayahead_2022_2023.csv")
TODAY = datetime(T0.year, T0.month, T0.day, tzinfo=UTC)
SLOT = 40  # order_body's delivery: 10:00 UTC


def hourly_prices(days: int, seed: int = 7) -> np.ndarray:
    """`days` x 24 hourly AT prices: a daily shape plus noise whose volatility grows over
    time (so a back-test's last days see exceptions), EUR/MWh."""
    rng = np.random.default_rng(seed)
    shape = 60 + 25 * np.sin(np.arange(24) / 24 * 2 * np.pi)
    scale = (1 + np.arange(days) / 100)[:, None]
    noise = rng.normal(0, 12, (days, 24)) + rng.normal(0, 8, (days, 1))
    return np.round(shape + scale * noise, 2)


def store_prices(app: FastAPI, matrix: np.ndarray, zone: str = "AT") -> None:
    first = TODAY - timedelta(days=len(matrix))
    app.state.prices.upsert(
        [
            PricePoint(
                zone=zone,
                start=first + timedelta(days=d, hours=h),
                resolution=Resolution.PT60M,
                price_eur_per_mwh=float(matrix[d, h]),
                source="file:test",
            )
            for d in range(len(matrix))
            for h in range(24)
        ],
        fetched_at=T0,
    )


Plane = Callable[..., TestClient]


@pytest.fixture(params=["sqlite", "postgresql"])
def plane(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Plane]:
    """Starts the app (settings overrides as keywords) with an admin key on the client."""
    clients: list[TestClient] = []

    def start(**overrides: Any) -> TestClient:
        if request.param == "postgresql":
            overrides["database_url"] = request.getfixturevalue("postgres_schema_dsn")
        app = create_app(settings_for(tmp_path, **overrides), clock=SteppedClock())
        client = TestClient(app, base_url="http://plane")
        client.__enter__()
        clients.append(client)
        issued = app.state.auth.create(name="report-tests", role=Role.ADMIN)
        client.headers.update(bearer(str(issued.token)))
        return client

    yield start
    for client in clients:
        client.__exit__(None, None, None)


def _trade(client: TestClient, side: str, mw: str) -> None:
    other = "SELL" if side == "BUY" else "BUY"
    placed = client.post("/api/orders", json=order_body(side=other, quantity_mw=mw, portfolio="st"))
    assert placed.status_code in (200, 201), placed.text
    taken = client.post("/api/orders", json=order_body(side=side, quantity_mw=mw))
    assert taken.status_code in (200, 201), taken.text


def _exceptions_by_hand(prices: np.ndarray, mwh: float, window: int, level: float) -> int:
    """Exceptions of 1-day historical VaR of `mwh` in the 10:00 quarter, computed directly."""
    hourly = prices[:, SLOT // 4]
    pnl = np.diff(hourly) * mwh
    count = 0
    for t in range(window, len(pnl)):
        losses = sorted(-pnl[t - window : t])
        var = max(losses[math.ceil(level * window) - 1], 0.0)
        count += int(-pnl[t] > var)
    return count


def test_report_of_a_traded_portfolio(plane: Plane) -> None:
    client = plane()
    app: Any = client.app
    prices = hourly_prices(300)
    store_prices(app, prices)
    _trade(client, "BUY", "2")

    response = client.get("/api/risk/report/pf-a")
    assert response.status_code == 200, response.text
    report = response.json()
    assert report["portfolio"] == "pf-a" and report["generated_at"].startswith("2025-11-03T08")
    inputs = report["inputs"]
    assert inputs["window_days"] == 250 and inputs["monte_carlo_paths"] == 20_000
    assert inputs["levels"] == [0.95, 0.99, 0.995] and inputs["significance"] == 0.05
    assert report["method_notes"] and any("Kupiec" in n for n in report["method_notes"])

    pos = report["positions"]
    assert pos["quarters"] == 1 and pos["zones"] == ["AT"]
    assert float(pos["long_mwh"]) == 0.5
    assert float(pos["short_mwh"]) == 0 and float(pos["net_mwh"]) == 0.5
    assert pos["net_cash_eur"] == "-25.00"  # 0.5 MWh bought at 50 EUR/MWh

    historical, monte_carlo = report["var"]
    assert historical["method"] == "historical" and historical["available"]
    assert historical["scenarios"] == 250 and monte_carlo["scenarios"] == 20_000
    posted = client.post("/api/risk/var", json={"portfolio": "pf-a"}).json()
    assert historical["figures"] == posted["figures"]
    for section in (historical, monte_carlo):
        assert [f["level"] for f in section["figures"]] == [0.95, 0.99, 0.995]
        values = [float(f["var_eur"]) for f in section["figures"]]
        assert 0 < values[0] <= values[1] <= values[2]
        assert all(float(f["es_eur"]) >= float(f["var_eur"]) for f in section["figures"])
    again = client.get("/api/risk/report/pf-a").json()
    assert again["var"][1]["figures"] == monte_carlo["figures"]  # seeded

    [test] = report["backtest"]
    assert report["backtest_zones_from"] == "positions"
    assert test["zone"] == "AT" and test["available"] and test["shortfall"] is None
    assert test["profile"] == "position"
    assert test["profile_mwh"][SLOT] == 0.5 and sum(test["profile_mwh"]) == 0.5
    assert test["history_days"] == 300 and test["changes"] == 299
    assert test["test_days"] == 299 - 250 and test["window_days"] == 250
    assert test["last_test_day"] == (TODAY - timedelta(days=1)).date().isoformat()
    for level in test["levels"]:
        assert level["observations"] == test["test_days"]
        assert level["exceptions"] == _exceptions_by_hand(prices, 0.5, 250, level["level"])
        assert level["expected_exceptions"] == pytest.approx((1 - level["level"]) * 49)
        assert level["verdict"] == ("accepted" if level["p_value"] >= 0.05 else "rejected at 5%")
        assert level["accepted_at_5pct"] == (level["verdict"] == "accepted")
    assert [level["exceptions"] for level in test["levels"]] == [4, 1, 1]  # not vacuous
    assert report["limits"] == {
        "configured": False,
        "var_limit_eur": None,
        "pnl_limit_eur": None,
        "hard": None,
        "lines": [],
        "unavailable_reason": None,
    }


def test_report_limits_carry_utilisation_and_alert_state(plane: Plane) -> None:
    client = plane()
    store_prices(client.app, hourly_prices(60))  # type: ignore[arg-type]
    _trade(client, "BUY", "2")
    var99 = client.post("/api/risk/var", json={"portfolio": "pf-a"}).json()["figures"][1]
    limit = (float(var99["var_eur"]) / 0.8).__round__(2)
    put = client.put("/api/risk/limits/pf-a", json={"var_limit_eur": str(limit), "hard": False})
    assert put.status_code == 200, put.text
    client.put("/api/risk/limits/pf-a", json={"var_limit_eur": str(limit), "pnl_limit_eur": "1e6"})
    with client.websocket_connect("/ws?types=risk") as ws:
        assert ws.receive_json()["type"] == "hello"
        limits = client.get("/api/risk/report/pf-a").json()["limits"]
        event = ws.receive_json()
    assert event["type"] == "risk.alert" and event["data"]["threshold_pct"] == 75.0
    assert limits["configured"] and limits["hard"] is True
    var_line, pnl_line = limits["lines"]
    assert var_line["limit"] == "var" and var_line["alert_state"] == "alert"
    assert 79 <= float(var_line["utilisation_pct"]) <= 81
    assert var_line["alert_threshold_pct"] == 75.0 and not var_line["breached"]
    assert pnl_line["limit"] == "pnl" and pnl_line["alert_state"] == "ok"
    assert pnl_line["alert_threshold_pct"] == 0.0


def test_report_with_too_little_history_says_how_much_is_needed(plane: Plane) -> None:
    client = plane(risk_history_ttl_s=0)  # the VaR history cache would hide the import
    _trade(client, "BUY", "2")
    bare = client.get("/api/risk/report/pf-a")
    assert bare.status_code == 200, bare.text
    for section in bare.json()["var"]:
        assert not section["available"] and "price history" in section["unavailable_reason"]
    [empty] = bare.json()["backtest"]
    assert not empty["available"] and empty["history_days"] == 0 and empty["levels"] == []

    store_prices(client.app, hourly_prices(40))  # type: ignore[arg-type]
    report = client.get("/api/risk/report/pf-a").json()
    assert all(section["available"] for section in report["var"])  # 39 >= 20 scenarios
    assert report["var"][0]["scenarios"] == 39
    [test] = report["backtest"]
    assert not test["available"] and test["levels"] == [] and test["test_days"] == 0
    assert test["history_days"] == 40 and test["changes"] == 39 and test["needed_changes"] == 251
    assert "needs 251" in test["shortfall"] and "212 more days" in test["shortfall"]
    shorter = client.get("/api/risk/report/pf-a", params={"window_days": 30}).json()
    assert shorter["backtest"][0]["available"] and shorter["backtest"][0]["test_days"] == 9


def test_report_refuses_bad_inputs(plane: Plane) -> None:
    client = plane()
    for params in ({"format": "pdf"}, {"window_days": 10}, {"paths": 10}, {"seed": -1}):
        response = client.get("/api/risk/report/pf-a", params=params)
        assert response.status_code == 422, params
    assert client.get("/api/risk/report/bad portfolio!").status_code == 422


def test_report_needs_a_key_and_a_viewer_may_read_it(plane: Plane) -> None:
    client = plane()
    viewer = client.app.state.auth.create(name="v", role=Role.VIEWER)  # type: ignore[attr-defined]
    anonymous = client.get("/api/risk/report/pf-a", headers={"Authorization": ""})
    assert anonymous.status_code == 401
    read = client.get("/api/risk/report/pf-a", headers=bearer(str(viewer.token)))
    assert read.status_code == 200, read.text


@pytest.mark.skipif(not SHARED_PRICES.exists(), reason="the shared Belgian price file is absent")
def test_report_on_the_belgian_file_matches_the_command(
    plane: Plane, capsys: pytest.CaptureFixture[str]
) -> None:
    client = plane(market_zones=["BE"])
    points = read_price_csv(SHARED_PRICES, zone_code="BE").points
    client.app.state.prices.upsert(points, fetched_at=T0)  # type: ignore[attr-defined]
    report = client.get("/api/risk/report/desk-without-trades").json()
    assert report["positions"]["quarters"] == 0
    assert report["backtest_zones_from"] == "market_zones"
    [test] = report["backtest"]
    assert test["zone"] == "BE" and test["profile"] == "baseload"
    assert set(test["profile_mwh"]) == {0.25} and "1 MW baseload" in test["profile_note"]
    assert test["test_days"] == 478
    assert [lv["exceptions"] for lv in test["levels"]] == [19, 5, 2]
    assert all(lv["verdict"] == "accepted" for lv in test["levels"])

    assert main(["risk", "backtest", "--prices", str(SHARED_PRICES)]) == 0
    out = capsys.readouterr().out
    assert f"({test['test_days']})" in out and f"{test['first_test_day']} .." in out
    for lv in test["levels"]:
        assert f"{lv['exceptions']:>10} {lv['expected_exceptions']:>8.1f}" in out
