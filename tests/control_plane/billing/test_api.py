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
