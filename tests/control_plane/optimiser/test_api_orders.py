"""Order submission through the real app (SQLite store, fleet, exchange, event hub): the
plan's orders land in GET /api/orders and on /ws, once; auto-submission on dispatch; roles."""

from __future__ import annotations

import warnings
from datetime import datetime, timedelta
from typing import Any

from control_plane.auth.models import Role

from ..exchange.conftest import SteppedClock
from ..plane import bearer
from .test_api import SITE, client, clock, prices

with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    from starlette.testclient import TestClient

__all__ = ["client", "clock"]  # the fixtures, shared with test_api

PLAN = {
    "site_id": SITE,
    "zone": "AT",
    "horizon_hours": 12,
    "market": "epex_at",
    "portfolio": "desk",
    "end_soc_pct": 40,
}


def _plan(client: TestClient, **overrides: Any) -> dict[str, Any]:
    client.app.state.price_history = prices(12)  # type: ignore[attr-defined]
    created = client.post("/api/optimise", json={**PLAN, **overrides})
    assert created.status_code == 201, created.text
    plan: dict[str, Any] = created.json()
    return plan


def _orders(client: TestClient) -> list[dict[str, Any]]:
    page = client.get("/api/orders", params={"state": "all", "portfolio": "desk", "limit": 500})
    assert page.status_code == 200, page.text
    items: list[dict[str, Any]] = page.json()["items"]
    return items


def _key(client: TestClient, role: Role, name: str) -> dict[str, str]:
    issued = client.app.state.auth.create(name=name, role=role)  # type: ignore[attr-defined]
    return bearer(str(issued.token))


def test_submit_places_the_proposed_orders_once(client: TestClient, clock: SteppedClock) -> None:
    plan = _plan(client)
    assert plan["orders_submitted"] is None and plan["auto_submit"] is False
    assert plan["portfolio"] == "desk"
    proposed = plan["proposed_orders"]
    trader = _key(client, Role.TRADER, "alice")
    # The desk submits late: the deliveries of the first two proposed orders have started
    # since, so the exchange refuses those as malformed (NOT_PLACED, nothing stored).
    assert len(proposed) > 2
    starts = [datetime.fromisoformat(o["delivery"]["start"]) for o in proposed]
    clock.advance(starts[1] + timedelta(minutes=1) - clock.now)
    late = {o["delivery"]["start"] for o, s in zip(proposed, starts, strict=True) if s < clock.now}
    assert len(late) == 2
    with client.websocket_connect("/ws?types=order") as ws:
        assert ws.receive_json()["type"] == "hello"
        submitted = client.post(f"/api/optimise/{plan['plan_id']}/orders", headers=trader)
        assert submitted.status_code == 200, submitted.text
        body = submitted.json()["orders_submitted"]
        placed = [r for r in body["results"] if r["order_id"] is not None]
        events = []
        while len(events) < len(placed):
            message = ws.receive_json()
            if message["type"] != "ping":
                events.append(message)
    assert body["submitted_by"] == "alice (api_key)" and body["complete"] is True
    results = body["results"]
    assert len(results) == len(proposed)
    assert [(r["side"], r["delivery"]["start"]) for r in results] == [
        (o["side"], o["delivery"]["start"]) for o in proposed
    ]
    for r in results:
        if r["delivery"]["start"] in late:
            assert r["state"] == "NOT_PLACED" and r["order_id"] is None
            assert "delivery has started" in r["reject_reason"]
        else:
            assert r["state"] in ("ACCEPTED", "REJECTED") and r["order_id"] is not None
    assert placed and body["placed"] == len(placed) == len(results) - body["not_placed"]
    stored = {o["order_id"]: o for o in _orders(client)}
    assert sorted(stored) == sorted(r["order_id"] for r in placed)
    for r in placed:
        assert stored[r["order_id"]]["state"] == r["state"]
        assert stored[r["order_id"]]["site"] == SITE
    assert {e["data"]["order_id"] for e in events} == set(stored)
    assert all(e["type"] in ("order.accepted", "order.rejected") for e in events)

    read = client.get(f"/api/optimise/{plan['plan_id']}").json()
    assert read["orders_submitted"]["results"] == results
    summary = client.get("/api/optimise", params={"site": SITE}).json()[0]
    assert summary["orders_submitted"]["placed"] == len(placed)
    assert "results" not in summary["orders_submitted"]

    again = client.post(f"/api/optimise/{plan['plan_id']}/orders")
    assert again.status_code == 409
    assert "were submitted at" in again.json()["detail"] and "by alice" in again.json()["detail"]
    assert len(_orders(client)) == len(placed)


def test_plans_without_market_and_portfolio_and_unknown_plans(client: TestClient) -> None:
    plan = _plan(client, market=None, portfolio=None)
    assert plan["portfolio"] is None and plan["proposed_orders"] == []
    refused = client.post(f"/api/optimise/{plan['plan_id']}/orders")
    assert refused.status_code == 409
    assert "needs `market` and `portfolio`" in refused.json()["detail"]
    assert client.post("/api/optimise/nope/orders").status_code == 404


def test_auto_submission_switch_and_dispatch(client: TestClient) -> None:
    assert client.get("/api/optimise/auto-submit").json() == []
    switched = client.put("/api/optimise/auto-submit/desk", json={"enabled": True})
    assert switched.status_code == 200, switched.text
    assert switched.json()["enabled"] is True
    assert switched.json()["updated_by"] == "optimiser-tests (api_key)"
    listed = client.get("/api/optimise/auto-submit").json()
    assert [(s["portfolio"], s["enabled"]) for s in listed] == [("desk", True)]

    plan = _plan(client)
    assert plan["auto_submit"] is True
    dispatched = client.post(f"/api/optimise/{plan['plan_id']}/dispatch")
    assert dispatched.status_code == 200, dispatched.text
    body = dispatched.json()
    assert body["dispatched"] is not None
    assert body["orders_submitted"]["submitted_by"] == "auto-submit"
    assert body["orders_submitted"]["complete"] is True
    placed = body["orders_submitted"]["placed"]
    assert placed > 0 and len(_orders(client)) == placed

    # switched off: the next dispatch pushes the schedule only
    assert client.put("/api/optimise/auto-submit/desk", json={"enabled": False}).status_code == 200
    quiet = _plan(client)
    assert quiet["auto_submit"] is False
    after = client.post(f"/api/optimise/{quiet['plan_id']}/dispatch").json()
    assert after["dispatched"] is not None and after["orders_submitted"] is None
    assert len(_orders(client)) == placed

    bad = client.put("/api/optimise/auto-submit/desk", json={"enabled": "maybe"})
    assert bad.status_code == 422
    assert client.put("/api/optimise/auto-submit/desk", json={}).status_code == 422
    assert (
        client.put(f"/api/optimise/auto-submit/{'x' * 65}", json={"enabled": True}).status_code
        == 422
    )
    blank = client.put("/api/optimise/auto-submit/%20", json={"enabled": True})
    assert blank.status_code == 422 and "printable" in blank.json()["detail"]


def test_roles(client: TestClient) -> None:
    plan = _plan(client)
    viewer = _key(client, Role.VIEWER, "v")
    trader = _key(client, Role.TRADER, "t")
    assert client.post(f"/api/optimise/{plan['plan_id']}/orders", headers=viewer).status_code == 403
    assert client.get("/api/optimise/auto-submit", headers=viewer).status_code == 200
    forbidden = client.put("/api/optimise/auto-submit/desk", json={"enabled": True}, headers=trader)
    assert forbidden.status_code == 403 and "admin" in forbidden.json()["detail"]
    assert client.get("/api/optimise/auto-submit").json() == []  # nothing switched
    assert _orders(client) == []  # nothing placed
