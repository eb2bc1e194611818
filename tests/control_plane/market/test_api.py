"""The market routes through the real app (lifespan, store on SQLite and PostgreSQL): prices,
revisions, feed status, CSV import and its errors, and the day-ahead figures in
/api/market-data."""

from __future__ import annotations

import warnings
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from fastapi import FastAPI

from control_plane.app import create_app
from control_plane.auth.models import Role

from ..exchange.conftest import T0, SteppedClock
from ..exchange_api.conftest import order_body
from ..plane import bearer, settings_for

with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    from starlette.testclient import TestClient

ISO = {
    "time_format": "iso",
    "unit": "EUR/MWh",
    "zone": "AT",
    "time_column": "time",
    "price_column": "price",
}


def csv_of(prices: list[float], start_hours: int = -3) -> bytes:
    rows = ["time,price"] + [
        f"{(T0 + timedelta(hours=start_hours + i)).isoformat()},{p}" for i, p in enumerate(prices)
    ]
    return ("\n".join(rows) + "\n").encode()


@pytest.fixture
def clock() -> SteppedClock:
    return SteppedClock()


@pytest.fixture(params=["sqlite", "postgresql"])
def app(request: pytest.FixtureRequest, tmp_path: Path, clock: SteppedClock) -> FastAPI:
    overrides: dict[str, Any] = {}
    if request.param == "postgresql":
        overrides["database_url"] = request.getfixturevalue("postgres_schema_dsn")
    return create_app(settings_for(tmp_path, **overrides), clock=clock, ws_keepalive_s=3600.0)


@pytest.fixture
def client(app: FastAPI) -> Iterator[TestClient]:
    with TestClient(app, base_url="http://plane") as test_client:
        issued = app.state.auth.create(name="market-api-tests", role=Role.ADMIN)
        test_client.headers.update(bearer(str(issued.token)))
        yield test_client


def _import(client: TestClient, body: bytes, **params: Any) -> Any:
    return client.post(
        "/api/market/import",
        params={**ISO, **params},
        content=body,
        headers={"Content-Type": "text/csv"},
    )


def test_an_empty_store_says_so(client: TestClient) -> None:
    data = client.get("/api/market/prices", params={"zone": "AT"}).json()
    assert (data["zone"], data["count"], data["points"]) == ("AT", 0, [])
    assert "no prices stored for AT" in data["note"]
    # default range: today and tomorrow, local days of the zone (clock: 2025-11-03 08:00Z)
    assert (data["start"], data["end"]) == (
        "2025-11-03T00:00:00+01:00",
        "2025-11-05T00:00:00+01:00",
    )
    status = client.get("/api/market/status").json()
    assert (status["sources"], status["feeds"], status["zones"]) == ([], [], ["AT"])
    assert "no price source configured" in status["note"]
    assert status["source_priority"] == ["entsoe", "awattar", "file"]


def test_import_then_read_prices_revisions_and_the_legacy_path(client: TestClient) -> None:
    reply = _import(client, csv_of([10.0, 20.0, 5000.0, -40.5]), name="at prices.csv")
    assert reply.status_code == 201, reply.text
    body = reply.json()
    assert body["source"] == "file:at_prices.csv"
    assert (body["points"], body["inserted"], body["revised"], body["unchanged"]) == (4, 4, 0, 0)
    assert body["flagged"] == 1
    params = {
        "zone": "at",
        "start": (T0 - timedelta(hours=3)).isoformat(),
        "end": (T0 + timedelta(hours=1)).isoformat(),
    }
    data = client.get("/api/market/prices", params=params).json()
    assert [p["price_eur_per_mwh"] for p in data["points"]] == [10.0, 20.0, 5000.0, -40.5]
    assert data["points"][2]["flag"].startswith("outside plausibility bounds")
    assert data["points"][0]["resolution"] == "PT60M"
    assert data["points"][0]["end"] == "2025-11-03T06:00:00Z"
    assert client.get("/market/prices", params=params).json() == data
    only_file = client.get("/api/market/prices", params={**params, "source": "file"}).json()
    assert only_file["count"] == 4
    assert (
        client.get("/api/market/prices", params={**params, "source": "entsoe"}).json()["count"] == 0
    )
    again = _import(client, csv_of([10.0, 21.0, 5000.0, -40.5]), name="at prices.csv").json()
    assert (again["inserted"], again["revised"], again["unchanged"]) == (0, 1, 3)
    history = client.get(
        "/api/market/history",
        params={"zone": "AT", "start": (T0 - timedelta(hours=2)).isoformat()},
    ).json()
    assert [(r["revision"], r["price_eur_per_mwh"]) for r in history["revisions"]] == [
        (1, 20.0),
        (2, 21.0),
    ]
    assert history["revisions"][0]["valid_to"] is not None
    assert history["revisions"][1]["valid_to"] is None


def test_multipart_upload(client: TestClient) -> None:
    reply = client.post(
        "/api/market/import",
        params=ISO,
        files={"file": ("../../etc/AT 2025.csv", csv_of([1.0, 2.0]), "text/csv")},
    )
    assert reply.status_code == 201, reply.text
    assert reply.json()["source"] == "file:AT_2025.csv"  # the base name, safe characters only
    missing = client.post("/api/market/import", params=ISO, files={"other": ("a.csv", b"x")})
    assert missing.status_code == 422
    assert "multipart field named 'file'" in missing.json()["detail"][0]["msg"]


@pytest.mark.parametrize(
    ("body", "params", "loc", "message"),
    [
        (
            b"time,price\n2025-11-03T05:00:00Z,1\n2025-11-03T06:00:00Z,abc\n",
            {},
            ["body"],
            "upload.csv: line 3: price 'abc' is not a number",
        ),
        (b"when,price\n", {}, ["body"], "no column 'time'"),
        (b"", {}, ["body"], "the upload is empty"),
        (
            b"time,price\n2025-11-03T05:00:00Z,1\n",
            {"unit": "USD"},
            ["query", "unit"],
            "unknown price unit",
        ),
        (
            b"time,price\n2025-11-03T05:00:00Z,1\n",
            {"zone": "XX"},
            ["query", "zone"],
            "unknown bidding zone 'XX'",
        ),
        (
            b"time,price\n2025-11-03T05:00:00Z,1\n",
            {"resolution": "PT5M"},
            ["query", "resolution"],
            "unsupported resolution",
        ),
        (
            b"time,price\n2025-11-03 05:00,1\n",
            {"time_format": "%Y-%m-%d %H:%M", "timezone": "Mars/Base"},
            ["body"],
            "unknown time zone 'Mars/Base'",
        ),
    ],
)
def test_import_errors_are_422_and_say_what_is_wrong(
    client: TestClient, body: bytes, params: dict[str, str], loc: list[str], message: str
) -> None:
    reply = _import(client, body, **params)
    assert reply.status_code == 422, reply.text
    [detail] = reply.json()["detail"]
    assert detail["loc"] == loc
    assert message in detail["msg"]
    assert "bess-price-import" not in detail["msg"]  # never the temporary path
    assert client.get("/api/market/prices", params={"zone": "AT"}).json()["count"] == 0


@pytest.mark.parametrize(
    ("params", "message"),
    [
        (
            {"start": "2025-01-01T00:00:00Z", "end": "2026-03-01T00:00:00Z"},
            "at most 400 are served",
        ),
        ({"start": "2025-01-02T00:00:00Z", "end": "2025-01-01T00:00:00Z"}, "must be after"),
        ({"zone": "Atlantis"}, "unknown bidding zone"),
        ({"resolution": "P1D"}, "unsupported resolution"),
    ],
)
def test_price_queries_out_of_limits_are_422(
    client: TestClient, params: dict[str, str], message: str
) -> None:
    reply = client.get("/api/market/prices", params=params)
    assert reply.status_code == 422
    assert message in reply.json()["detail"][0]["msg"]
    naive = client.get("/api/market/prices", params={"start": "2025-01-01T00:00:00"})
    assert naive.status_code == 422


def test_import_needs_admin_and_reads_need_viewer(app: FastAPI, client: TestClient) -> None:
    viewer = bearer(str(app.state.auth.create(name="v", role=Role.VIEWER).token))
    trader = bearer(str(app.state.auth.create(name="t", role=Role.TRADER).token))
    for headers in (viewer, trader):
        reply = client.post(
            "/api/market/import", params=ISO, content=csv_of([1.0]), headers=headers
        )
        assert reply.status_code == 403
    for path in ("/api/market/prices", "/market/prices", "/api/market/status"):
        assert client.get(path, headers=viewer).status_code == 200
    assert client.get("/api/market/prices", headers={"Authorization": ""}).status_code == 401


def test_market_data_carries_the_day_ahead_figures_with_their_source(
    client: TestClient, clock: SteppedClock
) -> None:
    # AT hours 05:00 .. 10:00 UTC; the clock is 08:00, so 10, 20, 30, 40 are delivered.
    assert _import(client, csv_of([10.0, 20.0, 30.0, 40.0, 50.0, 60.0])).status_code == 201
    data = client.get("/api/market-data").json()
    at, de = data["external"]
    assert (at["market"], at["zone"], at["source"]) == ("epex_at", "AT", "file:upload.csv")
    assert at["mark_price_eur_per_mwh"] == 40.0
    assert at["mark_start"] == "2025-11-03T08:00:00Z"
    assert at["ema_eur_per_mwh"] == pytest.approx(20.48)  # 10 -> 12 -> 15.6 -> 20.48
    assert (at["vwap_eur_per_mwh"], at["vwap_weighting"]) == (25.0, "equal")
    assert at["points"] == 4
    assert (de["zone"], de["source"], de["mark_price_eur_per_mwh"]) == ("DE_LU", None, None)
    assert "no day-ahead prices of DE_LU" in de["note"]
    # A trade delivering 10:00-10:15 UTC, then the clock moves into that hour: the VWAP is
    # weighted by the exchange's volume, and only the 10:00 hour has any.
    client.post("/api/orders", json=order_body(side="SELL", limit_price="55"))
    client.post("/api/orders", json=order_body(side="BUY", limit_price="55"))
    clock.advance(timedelta(hours=2, minutes=5))
    at = client.get("/api/market-data", params={"market": "epex_at"}).json()["external"][0]
    assert at["mark_price_eur_per_mwh"] == 60.0
    assert (at["vwap_eur_per_mwh"], at["vwap_weighting"]) == (60.0, "volume")
    assert (at["vwap_weighted_points"], at["vwap_volume_mwh"]) == (1, 0.375)  # 1.5 MW x 1/4 h
    assert len(client.get("/api/market-data", params={"market": "epex_at"}).json()["external"]) == 1
