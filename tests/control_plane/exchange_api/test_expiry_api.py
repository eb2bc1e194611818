"""Expiry at gate closure through the real app: order lists, cancel, `order.expired`, metrics."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from fastapi import FastAPI
from starlette.testclient import TestClient

from control_plane.exchange import api as exchange_api

from ..exchange.conftest import SteppedClock
from .conftest import DELIVERY, order_body


def _next(ws: Any) -> dict[str, Any]:
    while True:
        message: dict[str, Any] = ws.receive_json()
        if message["type"] != "ping":
            return message


def test_an_order_past_gate_closure_leaves_the_open_list_and_cannot_be_cancelled(
    client: TestClient, clock: SteppedClock
) -> None:
    client.post("/api/orders", json=order_body(side="SELL", quantity_mw="2", limit_price="40"))
    client.post("/api/orders", json=order_body(quantity_mw="0.5", limit_price="40"))
    later = (DELIVERY.start + timedelta(minutes=15)).isoformat()
    client.post("/api/orders", json=order_body(delivery={"start": later, "product": "PT15M"}))
    assert [o["order_id"] for o in client.get("/api/orders").json()["items"]] == [3, 1]
    clock.now = DELIVERY.start  # the default markets close at delivery start; no sweep ran
    assert [o["order_id"] for o in client.get("/api/orders").json()["items"]] == [3]
    expired = client.get("/api/orders", params={"state": "expired"}).json()["items"]
    assert [(o["order_id"], o["state"], o["filled_mw"]) for o in expired] == [
        (1, "EXPIRED", "0.500")
    ]
    assert client.get("/api/orders/1").json()["state"] == "EXPIRED"
    answer = client.delete("/api/orders/1")
    assert answer.status_code == 409
    assert answer.json()["detail"].startswith(
        "order 1 expired at gate closure 2025-11-03T10:00:00+00:00"
    )
    book = client.get(
        "/api/orderbook", params={"market": "epex_at", "delivery": DELIVERY.product_id}
    ).json()
    assert (book["bids"], book["asks"], book["best_ask_eur_per_mwh"]) == ([], [], None)


def test_the_sweep_publishes_order_expired_and_counts_it(
    client: TestClient, app: FastAPI, clock: SteppedClock
) -> None:
    with client.websocket_connect("/ws?types=order") as ws:
        ws.receive_json()  # hello
        client.post("/api/orders", json=order_body(side="SELL", limit_price="40"))
        assert _next(ws)["type"] == "order.accepted"
        clock.now = DELIVERY.start
        swept = exchange_api.publish_expiries(app.state.exchange, app.state.events)
        assert [o.order_id for o in swept] == [1]
        event = _next(ws)
        assert event["type"] == "order.expired"
        assert (event["data"]["order_id"], event["data"]["state"]) == (1, "EXPIRED")
        assert event["data"]["remaining_mw"] == "0.000"
        assert exchange_api.publish_expiries(app.state.exchange, app.state.events) == []
    metrics = client.get("/metrics").text
    assert 'bess_plane_orders_total{market="epex_at",outcome="expired"} 1.0' in metrics
