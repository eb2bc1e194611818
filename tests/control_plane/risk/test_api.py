"""The risk routes on the real app (SQLite): VaR echo and errors, limits with the exchange's
pre-trade rejection and the `risk.alert` event, and the back-test command."""

from __future__ import annotations

import warnings
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from fastapi import FastAPI

from control_plane.app import create_app
from control_plane.auth.models import Role
from control_plane.cli import main
from control_plane.market.models import PricePoint, Resolution

from ..exchange.conftest import T0, SteppedClock
from ..exchange_api.conftest import order_body
from ..plane import bearer, settings_for

with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    from starlette.testclient import TestClient

SHARED_PRICES = Path("/work/shared/data/be_dayahead_2022_2023.csv")


@pytest.fixture
def client(tmp_path: Path) -> Iterator[TestClient]:
    app: FastAPI = create_app(settings_for(tmp_path), clock=SteppedClock())
    with TestClient(app, base_url="http://plane") as test_client:
        issued = app.state.auth.create(name="risk-tests", role=Role.ADMIN)
        test_client.headers.update(bearer(str(issued.token)))
        day0 = datetime(T0.year, T0.month, T0.day, tzinfo=UTC) - timedelta(days=40)
        app.state.prices.upsert(
            [
                PricePoint(
                    zone="AT",
                    start=day0 + timedelta(hours=h),
                    resolution=Resolution.PT60M,
                    price_eur_per_mwh=50.0 + (h * 37 % 23) - (h // 24 % 5) * 3,
                    source="file:test",
                )
                for h in range(40 * 24)
            ],
            fetched_at=T0,
        )
        yield test_client


def _trade(client: TestClient, side: str, mw: str) -> dict[str, object]:
    other = "SELL" if side == "BUY" else "BUY"
    client.post("/api/orders", json=order_body(side=other, quantity_mw=mw, portfolio="street"))
    response = client.post("/api/orders", json=order_body(side=side, quantity_mw=mw))
    return dict(response.json())


def test_var_echoes_inputs_and_refuses_bad_ones(client: TestClient) -> None:
    _trade(client, "BUY", "2")
    body = {"portfolio": "pf-a", "method": "monte_carlo", "paths": 5000, "seed": 3}
    first = client.post("/api/risk/var", json=body)
    assert first.status_code == 200, first.text
    data = first.json()
    assert data["inputs"]["seed"] == 3 and data["inputs"]["method"] == "monte_carlo"
    assert data["scenarios"] == 5000 and data["zones"] == ["AT"]
    assert [f["level"] for f in data["figures"]] == [0.95, 0.99, 0.995]
    assert client.post("/api/risk/var", json=body).json()["figures"] == data["figures"]
    assert client.post("/api/risk/var", json={**body, "paths": 10}).status_code == 422
    short = client.post("/api/risk/var", json={"portfolio": "pf-a", "horizon_days": 30})
    assert short.status_code == 409 and "price history" in short.json()["detail"]


def test_hard_limit_rejects_order_and_alerts(client: TestClient) -> None:
    _trade(client, "BUY", "2")
    limits = client.get("/api/risk/limits").json()
    assert limits["limits"] == [] and limits["alert_thresholds_pct"] == [75.0, 90.0, 100.0]
    var99 = client.post("/api/risk/var", json={"portfolio": "pf-a"}).json()["figures"][1]
    assert float(var99["var_eur"]) > 0
    put = client.put("/api/risk/limits/pf-a", json={"var_limit_eur": var99["var_eur"]})
    assert put.status_code == 200 and put.json()["hard"] is True
    with client.websocket_connect("/ws?types=risk") as ws:
        assert ws.receive_json()["type"] == "hello"
        [limit] = client.get("/api/risk/limits").json()["limits"]
        assert limit["utilisation"][0]["utilisation_pct"] == "100.0"
        event = ws.receive_json()
        assert event["type"] == "risk.alert" and event["data"]["portfolio"] == "pf-a"
    rejected = _trade(client, "BUY", "1")
    rejected = dict(rejected.get("order", rejected))  # type: ignore[call-overload]
    assert rejected["state"] == "REJECTED", rejected
    assert str(rejected["reject_reason"]).startswith("risk_limit:")
    metrics = client.get("/metrics").text
    assert 'pho_risk_limit_utilization_pct{limit="var",portfolio="pf-a"} 100.0' in metrics
    assert 'pho_risk_var_99_eur{portfolio="pf-a"}' in metrics
    assert client.delete("/api/risk/limits/pf-a").status_code == 204
    assert client.delete("/api/risk/limits/pf-a").status_code == 404


@pytest.mark.skipif(not SHARED_PRICES.exists(), reason="the shared Belgian price file is absent")
def test_backtest_command_prints_kupiec(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["risk", "backtest", "--prices", str(SHARED_PRICES)]) == 0
    out = capsys.readouterr().out
    assert "99.0%" in out and "exceptions" in out and "accepted" in out


def test_backtest_command_refuses_a_missing_file(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["risk", "backtest", "--prices", "/nonexistent.csv"]) == 2
    assert "No such file" in capsys.readouterr().err
