"""The optimiser's HTTP API on the real app (SQLite store, fleet, exchange): plan, list, read,
dispatch to the fleet's schedules; errors as 404/409/422."""

from __future__ import annotations

import warnings
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import pytest

from control_plane.app import create_app
from control_plane.auth.models import Role
from control_plane.fleet.models import Hello, Ratings, TelemetrySample
from control_plane.market.models import PricePoint, Resolution
from control_plane.optimiser.backtest import InMemoryPriceHistory

from ..exchange.conftest import T0, SteppedClock
from ..plane import bearer, settings_for

with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    from starlette.testclient import TestClient

SITE = "site-opt"
START = T0 + timedelta(minutes=15)  # the clock stands at T0 (08:00 UTC, on the quarter)


@pytest.fixture
def clock() -> SteppedClock:
    """The plane's clock (exchange, optimiser), standing at T0 until a test advances it."""
    return SteppedClock()


@pytest.fixture
def client(tmp_path: Path, clock: SteppedClock) -> Iterator[TestClient]:
    app = create_app(settings_for(tmp_path), clock=clock)
    with TestClient(app, base_url="http://plane") as test_client:
        issued = app.state.auth.create(name="optimiser-tests", role=Role.ADMIN)
        test_client.headers.update(bearer(str(issued.token)))
        store = app.state.fleet.store
        store.register(
            Hello(site_id=SITE, agent_version="t", ratings=Ratings(1000.0, 500.0, 500.0)),
            session_id="s",
            now=T0,
        )
        store.ingest_samples(
            SITE,
            [TelemetrySample(seq=1, timestamp=T0 - timedelta(minutes=2), soc_pct=40.0)],
            now=T0,
        )
        yield test_client


def prices(hours: int) -> InMemoryPriceHistory:
    return InMemoryPriceHistory(
        PricePoint(
            zone="AT",
            start=T0 + timedelta(minutes=15 * i),
            resolution=Resolution.PT15M,
            price_eur_per_mwh=10.0 if i < 2 * hours else 150.0,
            source="test",
        )
        for i in range(4 * hours + 4)
    )


def test_plan_list_read_and_dispatch(client: TestClient) -> None:
    client.app.state.price_history = prices(12)  # type: ignore[attr-defined]
    body = {
        "site_id": SITE,
        "zone": "AT",
        "horizon_hours": 12,
        "market": "epex_at",
        "portfolio": "desk",
        "end_soc_pct": 40,
    }
    created = client.post("/api/optimise", json=body)
    assert created.status_code == 201, created.text
    plan = created.json()
    assert plan["site_id"] == SITE and plan["initial_soc_pct"] == 40.0
    assert plan["start"].startswith("2025-11-03T08:00")  # aligned: T0 itself
    assert len(plan["intervals"]) == 48 and plan["interval_minutes"] == 15
    assert plan["expected_revenue_eur"] > 0 and plan["relaxations"] == []
    powers = [i["power_kw"] for i in plan["intervals"]]
    assert sum(powers[:24]) < 0 < sum(powers[24:])  # cheap first: charge (negative), then sell
    assert plan["intervals"][-1]["soc_pct"] >= 40 - 1e-6
    assert len(plan["schedule"]["intervals"]) == 48
    sides = {o["side"] for o in plan["proposed_orders"]}
    assert sides == {"BUY", "SELL"}
    listed = client.get("/api/optimise", params={"site": SITE}).json()
    assert [p["plan_id"] for p in listed] == [plan["plan_id"]]
    assert client.get("/api/optimise", params={"site": "other"}).json() == []
    assert client.get(f"/api/optimise/{plan['plan_id']}").json()["plan_id"] == plan["plan_id"]

    dispatched = client.post(f"/api/optimise/{plan['plan_id']}/dispatch")
    assert dispatched.status_code == 200, dispatched.text
    version = dispatched.json()["dispatched"]["schedule_version"]
    schedules = client.get(f"/api/sites/{SITE}/schedules").json()
    mine = [s for s in schedules if s["version"] == version]
    assert mine and mine[0]["origin"] == f"optimiser:{plan['plan_id']}"
    again = client.post(f"/api/optimise/{plan['plan_id']}/dispatch")
    assert again.status_code == 409 and "dispatched already" in again.json()["detail"]


def test_errors(client: TestClient) -> None:
    no_prices = client.post("/api/optimise", json={"site_id": SITE, "zone": "AT"})
    assert no_prices.status_code == 409  # the feed's store is empty
    assert "no complete day-ahead prices for zone AT" in no_prices.json()["detail"]
    client.app.state.price_history = prices(12)  # type: ignore[attr-defined]
    short = client.post("/api/optimise", json={"site_id": SITE, "zone": "AT", "horizon_hours": 24})
    assert short.status_code == 409 and "shorten the horizon" in short.json()["detail"]
    unknown = client.post("/api/optimise", json={"site_id": "ghost", "zone": "AT"})
    assert unknown.status_code == 404
    bad = client.post(
        "/api/optimise",
        json={
            "site_id": SITE,
            "zone": "AT",
            "horizon_hours": 2,
            "battery": {"charge_efficiency": 95},
        },
    )
    assert bad.status_code == 422 and "charge_efficiency" in bad.json()["detail"]
    assert client.post("/api/optimise", json={"site_id": SITE}).status_code == 422
    assert client.get("/api/optimise/nope").status_code == 404
    assert client.post("/api/optimise/nope/dispatch").status_code == 404


def test_a_viewer_may_read_but_not_plan(client: TestClient) -> None:
    viewer = client.app.state.auth.create(name="v", role=Role.VIEWER)  # type: ignore[attr-defined]
    headers = bearer(str(viewer.token))
    assert client.get("/api/optimise", headers=headers).status_code == 200
    assert (
        client.post(
            "/api/optimise", json={"site_id": SITE, "zone": "AT"}, headers=headers
        ).status_code
        == 403
    )
