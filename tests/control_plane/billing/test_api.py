"""The billing routes on the real app (SQLite and PostgreSQL): trades placed through the
exchange's API, a month's invoices generated, listed, fetched as JSON and as PDF."""

from __future__ import annotations

import io
import warnings
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pypdf
import pytest
from fastapi import FastAPI

from control_plane.app import create_app
from control_plane.auth.models import Role

from ..exchange.conftest import DELIVERY, MARKET, SteppedClock
from ..plane import bearer, settings_for

with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    from starlette.testclient import TestClient


@pytest.fixture
def clock() -> SteppedClock:
    return SteppedClock()  # 2025-11-03 08:00 UTC


@pytest.fixture(params=["sqlite", "postgresql"])
def app(request: pytest.FixtureRequest, tmp_path: Path, clock: SteppedClock) -> FastAPI:
    overrides: dict[str, Any] = {
        "billing_issuer": {"name": "Phoenyra Energy Trading GmbH", "address": ["1010 Wien"]},
        "billing_recipients": {"acme": {"name": "ACME Storage AG", "vat_id": "ATU87654321"}},
        "billing_vat_rate_pct": "20",
        "billing_payment_days": 30,
    }
    if request.param == "postgresql":
        overrides["database_url"] = request.getfixturevalue("postgres_schema_dsn")
    return create_app(settings_for(tmp_path, **overrides), clock=clock, ws_keepalive_s=3600.0)


@pytest.fixture
def client(app: FastAPI) -> Iterator[TestClient]:
    with TestClient(app, base_url="http://plane") as test_client:
        issued = app.state.auth.create(name="billing-tests", role=Role.ADMIN)
        test_client.headers.update(bearer(str(issued.token)))
        yield test_client


def _order(side: str, counterparty: str, price: str, quantity: str = "1.5") -> dict[str, Any]:
    return {
        "side": side,
        "quantity_mw": quantity,
        "limit_price": price,
        "market": MARKET,
        "delivery": {"start": DELIVERY.start.isoformat(), "product": "PT15M"},
        "portfolio": f"pf-{counterparty}",
        "counterparty": counterparty,
    }


def test_generate_list_and_download(client: TestClient, app: FastAPI, clock: SteppedClock) -> None:
    for body in (_order("SELL", "beta", "40.01"), _order("BUY", "acme", "60.02", "2")):
        assert client.post("/api/orders", json=body).status_code == 201
    # matched 1.5 MW at the midpoint 50.015 EUR/MWh: 0.375 MWh x 50.015 = 18.755625 EUR
    early = client.post("/api/billing/generate", json={"period": "2025-11"})
    assert early.status_code == 422
    assert "2025-11 has not ended yet" in early.json()["detail"]

    clock.advance(timedelta(days=30))  # 2025-12-03
    answer = client.post("/api/billing/generate", json={"period": "2025-11"})
    assert answer.status_code == 200, answer.text
    result = answer.json()
    assert result["issued"] == ["PHO-2025-000001", "PHO-2025-000002"]
    acme, beta = result["invoices"]
    assert (acme["counterparty"], acme["net_eur"], acme["vat_eur"], acme["gross_eur"]) == (
        "acme",
        "18.76",
        "3.75",
        "22.51",
    )
    assert (beta["net_eur"], beta["gross_eur"]) == ("-18.76", "-22.51")
    assert acme["recipient"]["name"] == "ACME Storage AG"
    assert acme["due_date"] == "2026-01-02"
    assert acme["lines"] == [
        {
            "line_no": 1,
            "delivery_day": "2025-11-03",
            "market": MARKET,
            "product": "PT15M",
            "side": "BUY",
            "description": "epex_at PT15M energy bought",
            "trade_count": 1,
            "energy_mwh": "0.375",
            "avg_price_eur_per_mwh": "50.015",
            "amount_eur": "18.76",
        }
    ]
    assert result["warnings"] and "beta" in result["warnings"][0]
    again = client.post("/api/billing/generate", json={"period": "2025-11"}).json()
    assert again["issued"] == [] and again["invoices"] == result["invoices"]

    pdf = client.get(acme["pdf_url"])
    assert pdf.status_code == 200
    assert pdf.headers["content-type"] == "application/pdf"
    assert 'filename="PHO-2025-000001.pdf"' in pdf.headers["content-disposition"]
    text = " ".join(
        " ".join(p.extract_text() for p in pypdf.PdfReader(io.BytesIO(pdf.content)).pages).split()
    )
    for expected in (
        "Invoice PHO-2025-000001",
        "ACME Storage AG",
        "1 2025-11-03 epex_at PT15M bought 1 0.375 50.015 18.76",
        "Net amount 18.76 EUR",
        "VAT 20 % 3.75 EUR",
        "Total amount 22.51 EUR",
    ):
        assert expected in text, expected

    detail = client.get(f"/api/billing/invoices/{acme['id']}").json()
    assert detail == acme
    listed = client.get("/api/billing/invoices", params={"counterparty": "acme"}).json()
    assert [i["number"] for i in listed["invoices"]] == ["PHO-2025-000001"]
    assert listed["invoices"][0]["lines"] is None
    assert listed["stats"]["count"] == 1 and listed["stats"]["total_gross_eur"] == "22.51"
    everything = client.get("/api/billing/invoices", params={"limit": 1}).json()
    assert everything["stats"]["count"] == 2 and everything["stats"]["total_net_eur"] == "0.00"
    assert everything["stats"]["last_invoice"]["number"] == "PHO-2025-000002"
    assert everything["next_cursor"] == everything["invoices"][0]["id"]

    fixed = client.post(
        "/api/billing/generate",
        json={"period": "2025-11", "counterparty": "acme", "correction": True},
    ).json()
    assert fixed["issued"] == ["PHO-2025-000003", "PHO-2025-000004"]
    credit = client.get("/api/billing/invoices", params={"kind": "credit_note"}).json()
    assert credit["invoices"][0]["corrects_invoice_id"] == acme["id"]
    assert credit["stats"]["total_gross_eur"] == "-22.51"

    metrics = client.get("/metrics").text
    assert 'pho_bo_invoices_total{kind="invoice"} 3.0' in metrics
    assert 'pho_bo_invoices_total{kind="credit_note"} 1.0' in metrics


def test_errors_and_roles(client: TestClient, app: FastAPI) -> None:
    assert client.get("/api/billing/invoice/999").status_code == 404
    assert client.get("/api/billing/invoices/999").json() == {"detail": "no invoice with id 999"}
    assert client.post("/api/billing/generate", json={"period": "2025-13"}).status_code == 422
    assert client.post("/api/billing/generate", json={"period": "nov"}).status_code == 422
    assert (
        client.post("/api/billing/generate", json={"period": "2025-10", "x": 1}).status_code == 422
    )
    assert client.get("/api/billing/invoices", params={"period": "2025-13"}).status_code == 422
    viewer = bearer(str(app.state.auth.create(name="v", role=Role.VIEWER).token))
    trader = bearer(str(app.state.auth.create(name="t", role=Role.TRADER).token))
    body = {"period": "2025-10"}
    assert client.post("/api/billing/generate", json=body, headers=viewer).status_code == 403
    assert client.post("/api/billing/generate", json=body, headers=trader).status_code == 403
    assert client.get("/api/billing/invoices", headers=viewer).status_code == 200
    anonymous = client.get("/api/billing/invoices", headers={"Authorization": ""})
    assert anonymous.status_code == 401


def _exposure(client: TestClient, counterparty: str) -> dict[str, Any]:
    answer = client.get("/api/credit/exposure", params={"counterparty": counterparty})
    assert answer.status_code == 200, answer.text
    found: dict[str, Any] = answer.json()["counterparties"][0]
    return found


def test_an_invoice_paid_settles_its_trades_in_credit(
    client: TestClient, app: FastAPI, clock: SteppedClock
) -> None:
    for body in (_order("SELL", "beta", "40.01"), _order("BUY", "acme", "60.02")):
        assert client.post("/api/orders", json=body).status_code == 201
    clock.advance(timedelta(days=30))  # 2025-12-03: November is over; a December trade too
    december = {"start": (DELIVERY.start + timedelta(days=30)).isoformat(), "product": "PT15M"}
    for body in (_order("SELL", "beta", "30"), _order("BUY", "acme", "30", "1")):
        assert client.post("/api/orders", json={**body, "delivery": december}).status_code == 201
    before = _exposure(client, "acme")
    # November: 1.5 MW x 0.25 h x 50.015 = 18.755625; December: 1 MW x 0.25 h x 30 = 7.50
    assert (before["receivable_eur"], before["unsettled_trades"]) == ("26.26", 2)
    beta_before = _exposure(client, "beta")

    acme = client.post(
        "/api/billing/generate", json={"period": "2025-11", "counterparty": "acme"}
    ).json()["invoices"][0]
    assert (acme["settlement"], acme["paid_on"], acme["paid_reference"]) == (None, None, None)
    unpaid = client.get("/api/billing/invoices", params={"status": "unpaid"}).json()
    assert [i["number"] for i in unpaid["invoices"]] == [acme["number"]]
    assert (unpaid["stats"]["unpaid_count"], unpaid["stats"]["total_unpaid_gross_eur"]) == (
        1,
        "22.51",
    )

    url = f"/api/billing/invoice/{acme['id']}/paid"
    viewer = bearer(str(app.state.auth.create(name="v", role=Role.VIEWER).token))
    trader = bearer(str(app.state.auth.create(name="t", role=Role.TRADER).token))
    body = {"paid_on": "2025-12-03", "reference": "BANK 4711"}
    assert client.post(url, json=body, headers=viewer).status_code == 403
    assert client.post(url, json=body, headers=trader).status_code == 403
    future = client.post(url, json={"paid_on": "2099-01-01"})
    assert future.status_code == 422 and "in the future" in future.json()["detail"]
    assert client.post(url, json={"paid_on": "yesterday"}).status_code == 422
    assert _exposure(client, "acme") == before

    paid = client.post(url, json=body)
    assert paid.status_code == 200, paid.text
    assert (paid.json()["settlement"], paid.json()["paid_on"]) == ("payment", "2025-12-03")
    assert paid.json()["paid_reference"] == "BANK 4711"
    after = _exposure(client, "acme")
    assert (after["receivable_eur"], after["unsettled_trades"]) == ("7.50", 1)  # December only
    assert _exposure(client, "beta") == beta_before  # beta's own invoice is not paid
    settlements = client.get("/api/credit/settlements", params={"counterparty": "acme"}).json()
    assert [(s["reference"], s["amount_eur"], s["trade_ids"]) for s in settlements] == [
        (acme["number"], "18.76", [1])
    ]

    assert client.post(url, json=body).json() == paid.json()  # idempotent
    assert len(client.get("/api/credit/settlements").json()) == 1
    other = client.post(url, json={"paid_on": "2025-12-02"})
    assert other.status_code == 409 and "already paid" in other.json()["detail"]
    assert client.post(url, json={"paid_on": "2025-12-03", "x": 1}).status_code == 422
    assert client.post("/api/billing/invoice/999/paid", json=body).status_code == 404
    listed = client.get("/api/billing/invoices", params={"status": "paid"}).json()
    assert [i["number"] for i in listed["invoices"]] == [acme["number"]]
    assert client.get("/api/billing/invoices", params={"status": "open"}).status_code == 422

    refused = client.post(
        "/api/billing/generate",
        json={"period": "2025-11", "counterparty": "acme", "correction": True},
    )
    assert refused.status_code == 409 and "is paid" in refused.json()["detail"]
    beta = client.post(
        "/api/billing/generate", json={"period": "2025-11", "counterparty": "beta"}
    ).json()["invoices"][0]
    fixed = client.post(
        "/api/billing/generate",
        json={"period": "2025-11", "counterparty": "beta", "correction": True},
    ).json()
    note = client.get("/api/billing/invoices", params={"kind": "credit_note"}).json()["invoices"][0]
    assert (note["settlement"], note["paid_reference"]) == ("offset", beta["number"])
    for refused_id, why in ((note["id"], "is a credit note"), (beta["id"], "was corrected")):
        answer = client.post(f"/api/billing/invoice/{refused_id}/paid", json=body)
        assert answer.status_code == 409 and why in answer.json()["detail"]
    new_beta = fixed["invoices"][0]
    assert new_beta["replaces_invoice_id"] == beta["id"] and new_beta["settlement"] is None


def test_credit_refusing_the_settlement_marks_nothing_paid(
    client: TestClient, app: FastAPI, clock: SteppedClock
) -> None:
    for body in (_order("SELL", "beta", "40.01"), _order("BUY", "acme", "60.02")):
        assert client.post("/api/orders", json=body).status_code == 201
    clock.advance(timedelta(days=30))
    acme = client.post(
        "/api/billing/generate", json={"period": "2025-11", "counterparty": "acme"}
    ).json()["invoices"][0]
    by_hand = {"counterparty": "acme", "trade_ids": [1], "settled_on": "2025-12-01"}
    assert client.post("/api/credit/settlements", json=by_hand).status_code == 201
    answer = client.post(f"/api/billing/invoice/{acme['id']}/paid", json={"paid_on": "2025-12-03"})
    assert answer.status_code == 409
    assert f"credit refused to settle the trades of invoice {acme['number']}" in answer.text
    assert client.get(f"/api/billing/invoices/{acme['id']}").json()["paid_on"] is None
