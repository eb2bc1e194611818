"""Trades, order book, exposure, market data and the legacy routes, on SQLite and PostgreSQL."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest
from starlette.testclient import TestClient

from ..exchange.conftest import SteppedClock
from .conftest import DELIVERY, later, order_body


def _trade_pair(client: TestClient, *, price: str, quantity: str = "1", **changes: Any) -> None:
    """A resting SELL at `price` and a BUY at the same limit: one trade at `price`."""
    sell = order_body(side="SELL", limit_price=price, quantity_mw=quantity, portfolio="seller")
    sell.update(changes)
    buy = order_body(side="BUY", limit_price=price, quantity_mw=quantity, portfolio="buyer")
    buy.update(changes)
    assert client.post("/api/orders", json=sell).status_code == 201
    placed = client.post("/api/orders", json=buy).json()
    assert placed["order"]["state"] == "FILLED", placed


def _trade_ids(response: Any) -> list[int]:
    assert response.status_code == 200, response.text
    return [t["trade_id"] for t in response.json()["items"]]


def test_trades_newest_first_with_filters_and_pages(
    client: TestClient, clock: SteppedClock
) -> None:
    _trade_pair(client, price="40")  # trade 1, 10:00 epex_at
    clock.advance(timedelta(minutes=1))
    _trade_pair(client, price="41", delivery={"start": later(15)})  # trade 2, 10:15
    _trade_pair(client, price="42", market="epex_de_lu")  # trade 3
    assert _trade_ids(client.get("/api/trades")) == [3, 2, 1]
    assert _trade_ids(client.get("/api/trades", params={"market": "epex_at"})) == [2, 1]
    assert _trade_ids(client.get("/api/trades", params={"portfolio": "seller"})) == [3, 2, 1]
    assert _trade_ids(client.get("/api/trades", params={"portfolio": "nobody"})) == []
    assert _trade_ids(client.get("/api/trades", params={"delivery_from": later(15)})) == [2]
    assert _trade_ids(client.get("/api/trades", params={"delivery_to": later(15)})) == [3, 1]
    since = (clock.now - timedelta(seconds=1)).isoformat()
    assert _trade_ids(client.get("/api/trades", params={"since": since})) == [3, 2]
    page = client.get("/api/trades", params={"limit": 2}).json()
    assert [t["trade_id"] for t in page["items"]] == [3, 2]
    assert page["next_cursor"] == 2
    rest = client.get("/api/trades", params={"limit": 2, "cursor": 2}).json()
    assert [t["trade_id"] for t in rest["items"]] == [1]
    assert rest["next_cursor"] is None
    trade = client.get("/api/trades", params={"limit": 1}).json()["items"][0]
    assert trade["price_eur_per_mwh"] == "42.000"
    assert trade["value_eur"] == "10.50000000"  # 1 MW x 0.25 h x 42


def test_bad_trade_parameters_are_422(client: TestClient) -> None:
    for params in ({"market": "nope"}, {"since": "yesterday"}, {"limit": 5000}):
        assert client.get("/api/trades", params=params).status_code == 422, params


def test_order_book_is_aggregated_per_price_level_best_first(client: TestClient) -> None:
    for side, price, qty in (
        ("BUY", "49", "1"),
        ("BUY", "50", "1.5"),
        ("BUY", "50", "0.25"),
        ("SELL", "55", "2"),
        ("SELL", "53.5", "1"),
    ):
        body = order_body(side=side, limit_price=price, quantity_mw=qty)
        assert client.post("/api/orders", json=body).status_code == 201
    response = client.get(
        "/api/orderbook", params={"market": "epex_at", "delivery": DELIVERY.product_id}
    )
    assert response.status_code == 200
    book = response.json()
    assert book["best_bid_eur_per_mwh"] == "50.00"
    assert book["best_ask_eur_per_mwh"] == "53.50"
    assert book["bids"] == [
        {"price_eur_per_mwh": "50.00", "quantity_mw": "1.750", "orders": 2},
        {"price_eur_per_mwh": "49.00", "quantity_mw": "1.000", "orders": 1},
    ]
    assert [level["price_eur_per_mwh"] for level in book["asks"]] == ["53.50", "55.00"]
    empty = client.get(
        "/api/orderbook", params={"market": "epex_de_lu", "delivery": DELIVERY.product_id}
    ).json()
    assert (empty["bids"], empty["asks"], empty["best_bid_eur_per_mwh"]) == ([], [], None)


@pytest.mark.parametrize(
    ("params", "words"),
    [
        ({"market": "epex_at", "delivery": "2025-11-03T10:00"}, "not a product id"),
        ({"market": "epex_at", "delivery": "2025-11-03T10:05Z/PT15M"}, "not aligned"),
        ({"market": "nope", "delivery": "2025-11-03T10:00Z/PT15M"}, "unknown market"),
        ({"market": "epex_at"}, "Field required"),
    ],
)
def test_bad_order_book_queries_are_422(
    client: TestClient, params: dict[str, str], words: str
) -> None:
    response = client.get("/api/orderbook", params=params)
    assert response.status_code == 422
    assert words in response.json()["detail"][0]["msg"]


def test_exposure_totals_and_per_delivery(client: TestClient) -> None:
    _trade_pair(client, price="40", quantity="2")  # buyer takes 0.5 MWh at 40
    _trade_pair(client, price="60", quantity="2", delivery={"start": later(15)})
    # buyer sells 1 MW of 10:00 back at 70
    client.post("/api/orders", json=order_body(side="BUY", limit_price="70", portfolio="x"))
    sold = order_body(side="SELL", limit_price="70", quantity_mw="1.5", portfolio="buyer")
    assert client.post("/api/orders", json=sold).json()["order"]["state"] == "FILLED"
    total = client.get("/api/exposure", params={"portfolio": "buyer"}).json()
    assert total["positions"] is None
    assert total["bought_mwh"] == "1.00000"
    assert total["sold_mwh"] == "0.37500"
    assert total["net_energy_mwh"] == "0.62500"
    assert total["open_energy_mwh"] == "0.62500"
    assert total["realised_pnl_eur"] == "11.25000000"  # 0.375 MWh x (70 - 40)
    assert total["net_cash_eur"] == "-23.75000000"  # 26.25 - 20 - 30
    detail = client.get("/api/exposure", params={"portfolio": "buyer", "per_delivery": True})
    positions = detail.json()["positions"]
    assert [p["delivery"]["product_id"] for p in positions] == [
        "2025-11-03T10:00Z/PT15M",
        "2025-11-03T10:15Z/PT15M",
    ]
    assert positions[0]["net_energy_mwh"] == "0.12500"
    assert client.get("/api/exposure").status_code == 422
    nobody = client.get("/api/exposure", params={"portfolio": "nobody"}).json()
    assert nobody["net_energy_mwh"] == "0"


def test_market_data_without_trades_says_where_prices_come_from(client: TestClient) -> None:
    response = client.get("/api/market-data")
    assert response.status_code == 200
    data = response.json()
    assert data["source"] == "internal_exchange"
    assert "own order books" in data["note"]
    # No prices in the store: the external figures say so and make none up.
    assert [(e["market"], e["zone"], e["source"]) for e in data["external"]] == [
        ("epex_at", "AT", None),
        ("epex_de_lu", "DE_LU", None),
    ]
    assert all(e["mark_price_eur_per_mwh"] is None for e in data["external"])
    assert "no day-ahead prices of AT stored" in data["external"][0]["note"]
    assert data["markets"] == ["epex_at", "epex_de_lu"]
    assert data["quotes"] == []
    assert data["trading_day_start"] == "2025-11-03T00:00:00Z"
    client.post("/api/orders", json=order_body(side="BUY", limit_price="45"))
    [quote] = client.get("/api/market-data").json()["quotes"]
    assert quote["best_bid_eur_per_mwh"] == "45.00"
    assert quote["best_ask_eur_per_mwh"] is None
    assert quote["last_price_eur_per_mwh"] is None
    assert quote["vwap_eur_per_mwh"] is None
    assert (quote["volume_mwh"], quote["trades"]) == ("0", 0)


def test_market_data_with_trades_vwap_last_volume_and_past_periods_dropped(
    client: TestClient, clock: SteppedClock
) -> None:
    _trade_pair(client, price="40", quantity="1")
    _trade_pair(client, price="50", quantity="3")
    client.post("/api/orders", json=order_body(side="SELL", limit_price="55"))
    _trade_pair(client, price="70", market="epex_de_lu", delivery={"start": later(60)})
    data = client.get("/api/market-data", params={"market": "epex_at"}).json()
    assert data["markets"] == ["epex_at"]
    [quote] = data["quotes"]
    assert quote["delivery"]["product_id"] == DELIVERY.product_id
    assert quote["last_price_eur_per_mwh"] == "50.000"
    assert quote["vwap_eur_per_mwh"] == "47.500"  # (0.25 x 40 + 0.75 x 50) / 1
    assert quote["volume_mwh"] == "1.00000"
    assert quote["trades"] == 2
    assert quote["best_ask_eur_per_mwh"] == "55.00"
    assert len(client.get("/api/market-data").json()["quotes"]) == 2
    clock.advance(timedelta(hours=2, minutes=15))  # 10:15: the 10:00 quarter has ended
    [left] = client.get("/api/market-data").json()["quotes"]
    assert left["market"] == "epex_de_lu"
    assert client.get("/api/market-data", params={"market": "nope"}).status_code == 422


def test_market_data_counts_only_todays_trades(client: TestClient, clock: SteppedClock) -> None:
    tomorrow = {"start": (DELIVERY.start + timedelta(days=1)).isoformat()}
    _trade_pair(client, price="40", delivery=tomorrow)
    assert client.get("/api/market-data").json()["quotes"][0]["trades"] == 1
    clock.advance(timedelta(days=1) - timedelta(hours=8))  # 00:00 next day
    assert client.get("/api/market-data").json()["quotes"] == []  # no book, no trade today
    client.post("/api/orders", json=order_body(limit_price="30", delivery=tomorrow))
    [quote] = client.get("/api/market-data").json()["quotes"]
    assert quote["trades"] == 0
    assert quote["last_price_eur_per_mwh"] is None
    assert quote["best_bid_eur_per_mwh"] == "30.00"


# -- legacy routes ---------------------------------------------------------------------------


def _form(**changes: str) -> dict[str, str]:
    form = {
        "side": "sell",
        "quantity_mw": "2",
        "limit_price": "45.5",
        "market": "epex_at",
        "delivery_start": DELIVERY.start.isoformat(),
        "portfolio": "pf-a",
        "counterparty": "desk",
        "site": "",
        "submit": "Order",
    }
    form.update(changes)
    return form


def test_legacy_form_order_is_placed_like_a_json_one(client: TestClient) -> None:
    response = client.post("/order", data=_form())
    assert response.status_code == 201, response.text
    order = response.json()["order"]
    assert (order["side"], order["quantity_mw"], order["site"]) == ("SELL", "2.000", None)
    assert order["limit_price_eur_per_mwh"] == "45.50"
    ct = client.post("/order", data=_form(limit_price="4.6", price_unit="ct/kWh", site="s-1"))
    assert ct.json()["order"]["limit_price_eur_per_mwh"] == "46.00"
    assert ct.json()["order"]["site"] == "s-1"
    split = client.post(
        "/order", data=_form(product="PT60M", split_hour="true", delivery_start=later(0))
    )
    assert len(split.json()["placements"]) == 4


@pytest.mark.parametrize(
    ("changes", "loc", "words"),
    [
        ({"quantity_mw": "0"}, ["body", "quantity_mw"], "must be positive"),
        ({"limit_price": "9000"}, ["body", "limit_price"], "outside the price bounds"),
        ({"delivery_start": "2025-11-03T07:00:00Z"}, ["body", "delivery_start"], "past"),
        ({"market": "nope"}, ["body", "market"], "unknown market"),
        ({"quantity_mw": "inf"}, ["body", "quantity_mw"], "finite"),
        ({"side": "hold"}, ["body", "side"], "BUY"),
        ({"side": ""}, ["body", "side"], "Field required"),
    ],
)
def test_legacy_form_errors_name_the_form_field(
    client: TestClient, changes: dict[str, str], loc: list[str], words: str
) -> None:
    response = client.post("/order", data=_form(**changes))
    assert response.status_code == 422, response.text
    [error] = response.json()["detail"]
    assert error["loc"] == loc
    assert words in error["msg"]


def test_legacy_lists_serve_the_same_data_and_are_deprecated(client: TestClient) -> None:
    _trade_pair(client, price="40")
    client.post("/api/orders", json=order_body(limit_price="30"))
    orders = client.get("/orders").json()
    assert [o["order_id"] for o in orders["items"]] == [3, 2, 1]  # all states by default
    assert orders == client.get("/api/orders", params={"state": "all"}).json()
    assert client.get("/trades").json() == client.get("/api/trades").json()
    paths = client.get("/openapi.json").json()["paths"]
    assert paths["/orders"]["get"]["deprecated"] is True
    assert paths["/trades"]["get"]["deprecated"] is True
    assert paths["/order"]["post"]["deprecated"] is True
    assert "application/x-www-form-urlencoded" in paths["/order"]["post"]["requestBody"]["content"]
    assert "deprecated" not in paths["/api/orders"]["get"]
