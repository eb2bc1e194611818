"""POST/GET/DELETE /api/orders through the real app, on SQLite and PostgreSQL."""

from __future__ import annotations

import json
from datetime import timedelta
from typing import Any

import pytest
from fastapi import FastAPI
from starlette.testclient import TestClient

from control_plane.exchange.errors import StoreError
from control_plane.exchange.models import MarketRegistry, Order
from control_plane.exchange.service import Exchange
from control_plane.exchange.store import SqlOrderStore

from ..exchange.conftest import SteppedClock
from .conftest import DELIVERY, T0, later, order_body


def _post_raw(client: TestClient, path: str, body: object) -> Any:
    """POST JSON that may hold NaN/Infinity (clients do send them)."""
    return client.post(path, content=json.dumps(body), headers={"content-type": "application/json"})


def test_a_new_order_is_201_with_its_state_in_exact_decimals(client: TestClient) -> None:
    response = client.post("/api/orders", json=order_body(side="buy", quantity_mw=1.5))
    assert response.status_code == 201
    body = response.json()
    assert body["trades"] == []
    order = body["order"]
    assert order["order_id"] == 1
    assert order["side"] == "BUY"
    assert order["state"] == "ACCEPTED"
    assert order["quantity_mw"] == "1.500"
    assert order["filled_mw"] == "0.000"
    assert order["remaining_mw"] == "1.500"
    assert order["limit_price_eur_per_mwh"] == "50.00"
    assert order["reject_reason"] is None
    assert order["delivery"] == {
        "product_id": "2025-11-03T10:00Z/PT15M",
        "start": "2025-11-03T10:00:00Z",
        "end": "2025-11-03T10:15:00Z",
        "product": "PT15M",
    }
    assert order["created_at"] == "2025-11-03T08:00:00Z"


def test_a_crossing_order_trades_at_the_mean_and_both_fill(client: TestClient) -> None:
    client.post("/api/orders", json=order_body(side="SELL", limit_price="40", portfolio="s"))
    response = client.post("/api/orders", json=order_body(side="BUY", limit_price=60.5))
    assert response.status_code == 201
    body = response.json()
    assert body["order"]["state"] == "FILLED"
    assert body["order"]["remaining_mw"] == "0.000"
    [trade] = body["trades"]
    assert trade["price_eur_per_mwh"] == "50.250"
    assert trade["quantity_mw"] == "1.500"
    assert trade["energy_mwh"] == "0.37500"
    assert (trade["buy_order_id"], trade["sell_order_id"]) == (2, 1)
    assert trade["aggressor"] == "BUY"
    assert client.get("/api/orders/1").json()["state"] == "FILLED"


@pytest.mark.parametrize(
    ("unit", "price", "stored"),
    [("ct/kWh", "5.2", "52.00"), ("EUR/kWh", 0.05, "50.00"), ("EUR/MWh", "-12.34", "-12.34")],
)
def test_prices_in_other_units_are_converted_to_eur_per_mwh(
    client: TestClient, unit: str, price: object, stored: str
) -> None:
    response = client.post("/api/orders", json=order_body(limit_price=price, price_unit=unit))
    assert response.status_code == 201, response.text
    assert response.json()["order"]["limit_price_eur_per_mwh"] == stored


def test_an_hour_splits_into_four_quarter_orders(client: TestClient) -> None:
    hour = {"start": later(0), "product": "PT60M"}
    response = client.post("/api/orders", json=order_body(delivery=hour, split_hour=True))
    assert response.status_code == 201
    placements = response.json()["placements"]
    assert [p["order"]["delivery"]["product_id"] for p in placements] == [
        "2025-11-03T10:00Z/PT15M",
        "2025-11-03T10:15Z/PT15M",
        "2025-11-03T10:30Z/PT15M",
        "2025-11-03T10:45Z/PT15M",
    ]
    assert {p["order"]["quantity_mw"] for p in placements} == {"1.500"}
    block = client.post("/api/orders", json=order_body(delivery=hour)).json()["order"]
    assert block["delivery"]["product_id"] == "2025-11-03T10:00Z/PT60M"
    assert block["delivery"]["end"] == "2025-11-03T11:00:00Z"


# -- 422: each case of the issue text, and the rest of the shape ------------------------------


@pytest.mark.parametrize(
    ("changes", "loc", "type_", "words"),
    [
        ({"quantity_mw": 0}, ["body", "quantity_mw"], "invalid_quantity", "must be positive"),
        ({"quantity_mw": "-1"}, ["body", "quantity_mw"], "invalid_quantity", "must be positive"),
        ({"quantity_mw": "1.0005"}, ["body", "quantity_mw"], "invalid_quantity", "finer"),
        ({"quantity_mw": 20000}, ["body", "quantity_mw"], "invalid_quantity", "maximum"),
        ({"quantity_mw": "NaN"}, ["body", "quantity_mw"], "finite_number", "finite"),
        ({"quantity_mw": "abc"}, ["body", "quantity_mw"], "decimal_parsing", "decimal"),
        ({"limit_price": 4000.01}, ["body", "limit_price"], "invalid_price", "bounds"),
        ({"limit_price": "-500.01"}, ["body", "limit_price"], "invalid_price", "bounds"),
        ({"limit_price": "1.001"}, ["body", "limit_price"], "invalid_price", "tick"),
        (
            {"limit_price": "401", "price_unit": "ct/kWh"},
            ["body", "limit_price"],
            "invalid_price",
            "401 ct/kWh = 4010 EUR/MWh",
        ),
        ({"market": "epex_xx"}, ["body", "market"], "unknown_market", "unknown market"),
        (
            {"delivery": {"start": (T0 - timedelta(minutes=15)).isoformat()}},
            ["body", "delivery", "start"],
            "invalid_delivery",
            "in the past",
        ),
        (
            {"delivery": {"start": later(5)}},
            ["body", "delivery", "start"],
            "invalid_delivery",
            "not aligned",
        ),
        (
            {"delivery": {"start": "2025-11-03T10:00:00"}},
            ["body", "delivery", "start"],
            "timezone_aware",
            "timezone",
        ),
        (
            {"delivery": {"start": later(0), "product": "PT30M"}},
            ["body", "delivery", "product"],
            "literal_error",
            "PT15M",
        ),
        (
            {"split_hour": True},
            ["body", "delivery", "product"],
            "invalid_delivery",
            "only an hour block",
        ),
        ({"side": "HOLD"}, ["body", "side"], "enum", "BUY"),
        ({"portfolio": ""}, ["body", "portfolio"], "string_too_short", "at least 1"),
        ({"price_unit": "USD/MWh"}, ["body", "price_unit"], "enum", "ct/kWh"),
        ({"extra": 1}, ["body", "extra"], "extra_forbidden", "not permitted"),
    ],
)
def test_malformed_orders_are_422_saying_what_is_wrong_and_nothing_is_stored(
    client: TestClient, changes: dict[str, Any], loc: list[str], type_: str, words: str
) -> None:
    response = client.post("/api/orders", json=order_body(**changes))
    assert response.status_code == 422, response.text
    [error] = response.json()["detail"]
    assert error["loc"] == loc
    assert error["type"] == type_
    assert words in error["msg"] + error.get("allowed", "")
    if type_.startswith("invalid_") or type_ == "unknown_market":
        assert error["allowed"]
    assert client.get("/api/orders", params={"state": "all"}).json()["items"] == []


def test_allowed_names_the_range_and_the_known_markets(client: TestClient) -> None:
    price = client.post("/api/orders", json=order_body(limit_price=5000)).json()["detail"][0]
    assert price["allowed"] == "-500 ... 4000 EUR/MWh, in steps of 0.01"
    market = client.post("/api/orders", json=order_body(market="nope")).json()["detail"][0]
    assert market["allowed"] == "epex_at, epex_de_lu"


@pytest.mark.parametrize("raw", [float("nan"), float("inf"), float("-inf")])
def test_nan_and_infinity_json_literals_are_422(client: TestClient, raw: float) -> None:
    for field in ("quantity_mw", "limit_price"):
        response = _post_raw(client, "/api/orders", order_body(**{field: raw}))
        assert response.status_code == 422
        [error] = response.json()["detail"]
        assert error["loc"] == ["body", field]
        assert "finite" in error["msg"]


def test_a_huge_input_is_refused_without_being_echoed(client: TestClient) -> None:
    huge = "9" * 100_000
    response = client.post("/api/orders", json=order_body(quantity_mw=huge, portfolio=huge))
    assert response.status_code == 422
    assert len(response.text) < 2000
    assert huge[:100] not in response.text


# -- policy rejection and store failure ------------------------------------------------------


def test_an_order_a_pre_trade_check_refuses_is_201_rejected_with_the_reason(
    client: TestClient, app: FastAPI, clock: SteppedClock
) -> None:
    def soc_check(order: Order) -> str | None:
        return "SoC too low to deliver 1.5 MW" if order.side.value == "SELL" else None

    app.state.exchange = Exchange(
        store=SqlOrderStore(app.state.engine),
        markets=MarketRegistry.default(),
        clock=clock,
        pre_trade_checks=[soc_check],
    )
    response = client.post("/api/orders", json=order_body(side="SELL"))
    assert response.status_code == 201
    order = response.json()["order"]
    assert order["state"] == "REJECTED"
    assert order["reject_reason"] == "SoC too low to deliver 1.5 MW"
    assert order["remaining_mw"] == "0.000"
    assert client.get(f"/api/orders/{order['order_id']}").json()["state"] == "REJECTED"
    assert client.get("/api/orders").json()["items"] == []  # not active


class _BrokenExchange:
    markets = MarketRegistry.default()

    def place_order(self, **_: object) -> None:
        raise StoreError("connection refused")

    def cancel_order(self, **_: object) -> None:
        raise StoreError("connection refused")

    def orders(self, **_: object) -> None:
        raise StoreError("connection refused")


def test_a_store_failure_is_503_with_retry_after(client: TestClient, app: FastAPI) -> None:
    app.state.exchange = _BrokenExchange()
    for response in (
        client.post("/api/orders", json=order_body()),
        client.delete("/api/orders/1"),
        client.get("/api/orders"),
    ):
        assert response.status_code == 503
        assert response.headers["retry-after"] == "2"
        assert "nothing was stored" in response.json()["detail"]


# -- reads and cancel ------------------------------------------------------------------------


def test_get_one_order_and_404(client: TestClient) -> None:
    client.post("/api/orders", json=order_body())
    assert client.get("/api/orders/1").json()["quantity_mw"] == "1.500"
    missing = client.get("/api/orders/99")
    assert missing.status_code == 404
    assert missing.json()["detail"] == "no order with id 99"


def test_cancel_is_200_then_409_and_404_for_an_unknown_id(client: TestClient) -> None:
    client.post("/api/orders", json=order_body())
    cancelled = client.delete("/api/orders/1")
    assert cancelled.status_code == 200
    assert cancelled.json()["state"] == "CANCELLED"
    again = client.delete("/api/orders/1")
    assert again.status_code == 409
    assert "CANCELLED" in again.json()["detail"]
    assert client.delete("/api/orders/42").status_code == 404
    assert client.get("/api/orders").json()["items"] == []


def _seed(client: TestClient) -> None:
    """Six orders: 1 FILLED sell, 2 FILLED buy, 3 open BUY, 4 CANCELLED, 5 open SELL (de_lu),
    6 open BUY at 10:15 in portfolio pf-b."""
    client.post("/api/orders", json=order_body(side="SELL", limit_price="40"))
    client.post("/api/orders", json=order_body(limit_price="40"))
    client.post("/api/orders", json=order_body(limit_price="30"))
    client.post("/api/orders", json=order_body(limit_price="31"))
    client.delete("/api/orders/4")
    client.post("/api/orders", json=order_body(side="SELL", market="epex_de_lu", limit_price=99))
    quarter = {"start": later(15)}
    client.post("/api/orders", json=order_body(delivery=quarter, portfolio="pf-b"))


def _ids(response: Any) -> list[int]:
    assert response.status_code == 200, response.text
    return [o["order_id"] for o in response.json()["items"]]


@pytest.mark.parametrize(
    ("params", "ids"),
    [
        ({}, [6, 5, 3]),
        ({"state": "open"}, [6, 5, 3]),
        ({"state": "all"}, [6, 5, 4, 3, 2, 1]),
        ({"state": "filled,cancelled"}, [4, 2, 1]),
        ({"state": "all", "side": "sell"}, [5, 1]),
        ({"market": "epex_de_lu"}, [5]),
        ({"portfolio": "pf-b"}, [6]),
        ({"delivery_from": later(15)}, [6]),
        ({"state": "all", "delivery_to": later(15)}, [5, 4, 3, 2, 1]),
    ],
)
def test_order_list_filters(client: TestClient, params: dict[str, str], ids: list[int]) -> None:
    _seed(client)
    assert _ids(client.get("/api/orders", params=params)) == ids


def test_order_list_pages_with_a_cursor(client: TestClient) -> None:
    _seed(client)
    seen: list[int] = []
    cursor = None
    for _ in range(4):
        params: dict[str, Any] = {"state": "all", "limit": 4}
        if cursor is not None:
            params["cursor"] = cursor
        page = client.get("/api/orders", params=params).json()
        seen += [o["order_id"] for o in page["items"]]
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert seen == [6, 5, 4, 3, 2, 1]
    first = client.get("/api/orders", params={"state": "all", "limit": 4}).json()
    assert first["next_cursor"] == 3
    last = client.get("/api/orders", params={"state": "all", "limit": 2, "cursor": 3}).json()
    assert [o["order_id"] for o in last["items"]] == [2, 1]
    assert last["next_cursor"] is None


@pytest.mark.parametrize(
    ("params", "loc", "words"),
    [
        ({"state": "DONE"}, ["query", "state"], "unknown state"),
        ({"market": "nope"}, ["query", "market"], "unknown market"),
        ({"side": "HOLD"}, ["query", "side"], "BUY"),
        ({"limit": 0}, ["query", "limit"], "greater than or equal to 1"),
        ({"limit": 1001}, ["query", "limit"], "less than or equal to 1000"),
        ({"cursor": 0}, ["query", "cursor"], "greater than or equal to 1"),
        ({"delivery_from": "2025-11-03T10:00:00"}, ["query", "delivery_from"], "timezone"),
        (
            {"delivery_from": later(15), "delivery_to": later(0)},
            ["query", "delivery_to"],
            "after",
        ),
    ],
)
def test_bad_list_parameters_are_422(
    client: TestClient, params: dict[str, Any], loc: list[str], words: str
) -> None:
    response = client.get("/api/orders", params=params)
    assert response.status_code == 422, response.text
    [error] = response.json()["detail"]
    assert error["loc"] == loc
    assert words in error["msg"]


def test_order_placed_at_the_boundary_of_the_clock(client: TestClient, clock: SteppedClock) -> None:
    """Delivery 'in the past' follows the exchange's clock, not the wall clock."""
    clock.advance(DELIVERY.start - T0)  # now = the delivery start
    response = client.post("/api/orders", json=order_body())
    assert response.status_code == 422
    assert "has started" in response.json()["detail"][0]["msg"]
    assert client.post("/api/orders", json=order_body(delivery={"start": later(15)})).is_success
