"""/ws with the real app: order, trade and fleet events arrive as JSON; filters; keepalive."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest
from fastapi import FastAPI
from starlette.testclient import TestClient
from starlette.websockets import WebSocketDisconnect

from control_plane.fleet.models import Event, Hello

from .conftest import T0, order_body


def _next(ws: Any, *, skip: tuple[str, ...] = ("ping",)) -> dict[str, Any]:
    while True:
        message: dict[str, Any] = ws.receive_json()
        if message["type"] not in skip:
            return message


def test_placements_publish_accepted_trade_and_filled_in_order(client: TestClient) -> None:
    with client.websocket_connect("/ws") as ws:
        hello = ws.receive_json()
        assert hello["type"] == "hello"
        assert hello["seq"] == 0
        client.post("/api/orders", json=order_body(side="SELL", quantity_mw="2", limit_price="40"))
        accepted = _next(ws)
        assert accepted["type"] == "order.accepted"
        assert accepted["seq"] == 1
        assert accepted["data"]["order_id"] == 1
        assert accepted["data"]["quantity_mw"] == "2.000"
        client.post("/api/orders", json=order_body(side="BUY", quantity_mw="2", limit_price="60"))
        events = [_next(ws) for _ in range(4)]
    types = [e["type"] for e in events]
    assert types == ["order.accepted", "trade", "order.filled", "order.filled"]
    assert [e["seq"] for e in events] == [2, 3, 4, 5]
    assert events[1]["data"]["price_eur_per_mwh"] == "50.000"
    assert {e["data"]["order_id"] for e in events[2:]} == {1, 2}
    assert all(e["ts"].endswith("+00:00") for e in events)


def test_partial_fill_rejection_and_cancel_events(client: TestClient) -> None:
    with client.websocket_connect("/ws?types=order") as ws:
        ws.receive_json()
        client.post("/api/orders", json=order_body(side="SELL", quantity_mw="3", limit_price="40"))
        client.post("/api/orders", json=order_body(side="BUY", quantity_mw="1", limit_price="40"))
        types = [_next(ws)["type"] for _ in range(4)]  # no trade: filtered out
        assert types == [
            "order.accepted",
            "order.accepted",
            "order.filled",
            "order.partially_filled",
        ]
        client.delete("/api/orders/1")
        cancelled = _next(ws)
        assert (cancelled["type"], cancelled["data"]["state"]) == ("order.cancelled", "CANCELLED")
        # a refused request (422) stores nothing and publishes nothing
        assert client.post("/api/orders", json=order_body(quantity_mw=0)).status_code == 422
        client.post("/api/orders", json=order_body(limit_price="1"))
        assert _next(ws)["data"]["order_id"] == 3


def test_a_trade_filter_sees_only_trades(client: TestClient) -> None:
    with client.websocket_connect("/ws?types=trade") as ws:
        assert ws.receive_json()["data"]["types"] == ["trade"]
        client.post("/api/orders", json=order_body(side="SELL"))
        client.post("/api/orders", json=order_body(side="BUY"))
        trade = _next(ws)
        assert trade["type"] == "trade"
        assert trade["seq"] == 3  # order.accepted x2 went to others


def test_an_unknown_type_filter_closes_with_1008_naming_the_known_ones(
    client: TestClient,
) -> None:
    with client.websocket_connect("/ws?types=orders") as ws:
        with pytest.raises(WebSocketDisconnect) as closed:
            ws.receive_json()
    assert closed.value.code == 1008
    assert "unknown event types ['orders']" in closed.value.reason


@pytest.mark.plane(ws_keepalive_s=0.05)
def test_an_idle_stream_gets_pings(client: TestClient) -> None:
    with client.websocket_connect("/ws") as ws:
        ws.receive_json()
        assert ws.receive_json()["type"] == "ping"


def test_the_client_gauge_counts_connected_sockets(client: TestClient) -> None:
    def gauge() -> str:
        lines = client.get("/metrics").text.splitlines()
        return next(line for line in lines if line.startswith("bess_plane_ws_clients "))

    with client.websocket_connect("/ws") as ws:
        ws.receive_json()
        assert gauge() == "bess_plane_ws_clients 1.0"
    # the server side notices the close asynchronously: the next connection proves it ran
    with client.websocket_connect("/ws") as ws:
        ws.receive_json()
        assert gauge() == "bess_plane_ws_clients 1.0"
    assert "bess_plane_ws_events_dropped_total 0.0" in client.get("/metrics").text


def test_telemetry_from_the_http_ingest_arrives(client: TestClient) -> None:
    with client.websocket_connect("/ws?types=telemetry") as ws:
        ws.receive_json()
        reading = {"site_id": "site-1", "timestamp": "2025-11-03T08:00:00Z", "soc_pct": 55.5}
        assert client.post("/api/telemetry", json=reading).status_code == 200
        event = _next(ws)
    assert event["type"] == "telemetry"
    assert event["data"]["site_id"] == "site-1"
    assert event["data"]["soc_pct"] == 55.5
    assert event["data"]["timestamp"] == "2025-11-03T08:00:00+00:00"


def test_site_sessions_and_alarms_from_the_fleet_arrive(client: TestClient, app: FastAPI) -> None:
    fleet = app.state.fleet
    assert client.portal is not None
    with client.websocket_connect("/ws?types=site,alarm") as ws:
        ws.receive_json()
        session, _, _ = client.portal.call(fleet.open_session, Hello("site-9", "1.2.3", ()))
        connected = _next(ws)
        assert connected["type"] == "site.connected"
        assert connected["data"]["site_id"] == "site-9"
        info = Event(seq=1, timestamp=T0, severity="info", kind="agent_started")
        alarm = Event(
            seq=2,
            timestamp=T0 + timedelta(seconds=1),
            severity="critical",
            kind="alarm_raised",
            alarm="over_temperature",
            message="cell 48 C",
        )
        client.portal.call(fleet.ingest_event, session, info)  # not an alarm: not streamed
        client.portal.call(fleet.ingest_event, session, alarm)
        client.portal.call(fleet.ingest_event, session, alarm)  # a resend: stored once
        client.portal.call(fleet.close_session, session, "test over")
        raised = _next(ws)
        assert raised["type"] == "alarm"
        assert raised["data"]["alarm"] == "over_temperature"
        assert raised["data"]["severity"] == "critical"
        gone = _next(ws)
    assert (gone["type"], gone["data"]["reason"]) == ("site.disconnected", "test over")
