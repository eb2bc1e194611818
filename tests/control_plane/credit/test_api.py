"""The credit routes on the running plane: master data, the spec's limit route, exposure after
real orders through /api/orders (rejected by the credit check at the limit), settlements,
roles, the metric and the `credit.alert` event."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from control_plane.auth.models import Role

from ..plane import RunningPlane, running_plane, settings_for


@pytest.fixture
async def plane(tmp_path: Path) -> AsyncIterator[RunningPlane]:
    settings = settings_for(tmp_path, credit_pfe_addon_pct="0", credit_refresh_interval_s=3600)
    async with running_plane(settings) as running:
        yield running


def _order(counterparty: str, side: str, mw: str, price: str) -> dict[str, Any]:
    start = (datetime.now(UTC) + timedelta(days=1)).replace(minute=0, second=0, microsecond=0)
    return {
        "side": side,
        "quantity_mw": mw,
        "limit_price": price,
        "market": "epex_at",
        "delivery": {"start": start.isoformat(), "product": "PT15M"},
        "portfolio": "pf",
        "counterparty": counterparty,
    }


async def test_limit_exposure_check_and_settlement(plane: RunningPlane) -> None:
    client = plane.client
    created = await client.post(
        "/api/credit/counterparties",
        json={"counterparty": "CP-A", "name": "Alpha GmbH", "limit_eur": "1000"},
    )
    assert created.status_code == 201, created.text
    assert created.json()["alert_thresholds_pct"] == ["75", "90"]
    again = await client.post("/api/credit/counterparties", json={"counterparty": "CP-A"})
    assert again.status_code == 409
    limit = await client.post("/api/credit/limit", json={"counterparty": "CP-A", "limit_eur": 100})
    assert limit.status_code == 200 and limit.json()["limit_eur"] == "100.00"

    hub = plane.app.state.events
    with hub.subscribe(types=frozenset({"credit.alert"})) as events:
        sell = await client.post("/api/orders", json=_order("CP-B", "SELL", "4", "100"))
        assert sell.status_code == 201
        buy = await client.post("/api/orders", json=_order("CP-A", "BUY", "4", "100"))
        assert buy.json()["order"]["state"] == "FILLED", buy.text
        over = await client.post("/api/orders", json=_order("CP-A", "BUY", "0.001", "1"))
        assert over.json()["order"]["state"] == "REJECTED"
        assert over.json()["order"]["reject_reason"].startswith("credit: counterparty CP-A")

        exposure = await client.get("/api/credit/exposure")
        assert exposure.status_code == 200
        rows = {row["counterparty"]: row for row in exposure.json()["counterparties"]}
        assert rows["CP-A"]["exposure_eur"] == "100.00"
        assert rows["CP-A"]["utilisation_pct"] == "100.00"
        assert rows["CP-B"]["payable_eur"] == "100.00" and rows["CP-B"]["limit_eur"] is None
        seen = [await events.get() for _ in range(2)]
    assert [e["data"]["threshold_pct"] for e in seen] == ["75", "90"]
    assert all(e["type"] == "credit.alert" for e in seen)

    metrics = (await client.get("/metrics")).text
    assert 'pho_credit_exposure_eur{counterparty="CP-A"} 100.0' in metrics

    trade_id = buy.json()["trades"][0]["trade_id"]
    settled = await client.post(
        "/api/credit/settlements",
        json={"counterparty": "CP-A", "trade_ids": [trade_id], "settled_on": "2025-12-01"},
    )
    assert settled.status_code == 201, settled.text
    assert settled.json()["amount_eur"] == "100.00"
    twice = await client.post(
        "/api/credit/settlements",
        json={"counterparty": "CP-A", "trade_ids": [trade_id], "settled_on": "2025-12-01"},
    )
    assert twice.status_code == 409 and "settled already" in twice.text
    one = await client.get("/api/credit/exposure", params={"counterparty": "CP-A"})
    assert one.json()["counterparties"][0]["exposure_eur"] == "0.00"
    listed = await client.get("/api/credit/settlements", params={"counterparty": "CP-A"})
    assert [s["trade_ids"] for s in listed.json()] == [[trade_id]]


async def test_errors_and_roles(plane: RunningPlane) -> None:
    client = plane.client
    bad = await client.post("/api/credit/limit", json={"counterparty": "CP-A", "limit_eur": -1})
    assert bad.status_code == 422
    assert bad.json()["detail"][0]["loc"] == ["body", "limit_eur"]
    missing = await client.get("/api/credit/counterparties/nobody")
    assert missing.status_code == 404 and "POST /api/credit/counterparties" in missing.text
    neither = await client.post(
        "/api/credit/settlements", json={"counterparty": "CP-A", "settled_on": "2025-12-01"}
    )
    assert neither.status_code == 422 and "either trade_ids" in neither.text
    put = await client.put("/api/credit/counterparties/CP-A", json={"limit_eur": "5"})
    assert put.status_code == 404

    viewer = await plane.headers(Role.VIEWER)
    assert (await client.get("/api/credit/exposure", headers=viewer)).status_code == 200
    for method, path, body in (
        ("POST", "/api/credit/limit", {"counterparty": "CP-A", "limit_eur": 1}),
        ("POST", "/api/credit/counterparties", {"counterparty": "CP-A"}),
        (
            "POST",
            "/api/credit/settlements",
            {"counterparty": "CP-A", "amount_eur": 1, "settled_on": "2025-12-01"},
        ),
    ):
        answer = await client.request(method, path, json=body, headers=viewer)
        assert answer.status_code == 403, path
    trader = await plane.headers(Role.TRADER)
    answer = await client.post(
        "/api/credit/limit", json={"counterparty": "CP-A", "limit_eur": 1}, headers=trader
    )
    assert answer.status_code == 403
