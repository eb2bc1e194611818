"""The Forecast API through the real app: job lifecycle, errors, roles, metrics."""

from __future__ import annotations

import time
import warnings
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from control_plane.app import create_app
from control_plane.auth.models import Role

from ..plane import bearer, settings_for
from .conftest import HOUR, T0, MemoryHistory, noisy, points

with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    from starlette.testclient import TestClient

ORIGIN = T0 + timedelta(days=60) + 11 * HOUR


@pytest.fixture
def client(tmp_path: Path) -> Iterator[TestClient]:
    history = MemoryHistory(points(noisy(24 * 65)))
    app = create_app(settings_for(tmp_path), price_history=history)
    with TestClient(app, base_url="http://plane") as test_client:
        issued = app.state.auth.create(name="forecast-api-tests", role=Role.ADMIN)
        test_client.headers.update(bearer(str(issued.token)))
        yield test_client


def wait(client: TestClient, job_id: str) -> dict[str, Any]:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        body = client.get(f"/api/forecast/status/{job_id}").json()
        if body["state"] in ("done", "failed"):
            return body
        time.sleep(0.02)
    raise AssertionError(f"job {job_id} still {body['state']} after 30 s")


def test_a_dayahead_job_runs_to_done_with_every_quantity(client: TestClient) -> None:
    started = client.post(
        "/api/forecast/dayahead", json={"zone": "be", "origin": ORIGIN.isoformat()}
    )
    assert started.status_code == 202
    job_id = started.json()["job_id"]
    assert started.json()["status_url"] == f"/api/forecast/status/{job_id}"
    assert started.json()["state"] == "queued"
    body = wait(client, job_id)
    assert body["state"] == "done" and body["error"] is None
    assert body["type"] == "dayahead" and body["zone"] == "BE"
    assert [r["quantity"] for r in body["result"]] == ["price", "load", "solar", "wind"]
    price = body["result"][0]
    assert price["unit"] == "EUR/MWh" and price["resolution"] == "PT15M"
    assert len(price["intervals"]) == 96
    assert all(i["p10"] <= i["p50"] <= i["p90"] for i in price["intervals"])
    assert price["training_end"].startswith(ORIGIN.strftime("%Y-%m-%dT%H:%M"))
    metrics = client.get("/metrics").text
    assert 'pho_forecast_jobs_total{type="dayahead"} 1.0' in metrics
    assert 'pho_forecast_price_eur_mwh{horizon="24h",zone="BE"}' in metrics


def test_an_intraday_job_for_chosen_quantities(client: TestClient) -> None:
    started = client.post(
        "/api/forecast/intraday",
        json={"zone": "BE", "quantities": ["price", "solar"], "origin": ORIGIN.isoformat()},
    )
    body = wait(client, started.json()["job_id"])
    assert [r["quantity"] for r in body["result"]] == ["price", "solar"]
    assert len(body["result"][0]["intervals"]) == 48
    assert 'pho_forecast_jobs_total{type="intraday"} 1.0' in client.get("/metrics").text


def test_a_job_without_enough_history_fails_with_the_reason(client: TestClient) -> None:
    early = T0 + timedelta(days=5)
    started = client.post(
        "/api/forecast/intraday", json={"zone": "BE", "origin": early.isoformat()}
    )
    body = wait(client, started.json()["job_id"])
    assert body["state"] == "failed" and body["result"] is None
    assert "needs at least 504 hours" in body["error"]


@pytest.mark.parametrize(
    ("body", "fragment"),
    [
        ({"zone": "XX"}, "unknown bidding zone"),
        ({"zone": "BE", "quantities": ["hail"]}, "quantities"),
        ({"zone": "BE", "quantities": []}, "quantities"),
        ({"zone": "BE", "origin": "2022-03-01T12:00:00"}, "origin"),  # no offset
        ({"zone": "BE", "colour": "red"}, "colour"),
    ],
)
def test_bad_requests_are_422_with_what_was_wrong(
    client: TestClient, body: dict[str, Any], fragment: str
) -> None:
    answer = client.post("/api/forecast/dayahead", json=body)
    assert answer.status_code == 422
    assert fragment in str(answer.json()["detail"])


def test_an_unknown_job_is_404(client: TestClient) -> None:
    answer = client.get("/api/forecast/status/nope")
    assert answer.status_code == 404
    assert "no forecast job 'nope'" in answer.json()["detail"]


def test_a_viewer_reads_jobs_but_a_trader_starts_them(client: TestClient) -> None:
    app = client.app
    viewer = bearer(str(app.state.auth.create(name="v", role=Role.VIEWER).token))  # type: ignore[attr-defined]
    trader = bearer(str(app.state.auth.create(name="t", role=Role.TRADER).token))  # type: ignore[attr-defined]
    refused = client.post("/api/forecast/dayahead", json={"zone": "BE"}, headers=viewer)
    assert refused.status_code == 403
    started = client.post(
        "/api/forecast/dayahead",
        json={"zone": "BE", "origin": ORIGIN.isoformat()},
        headers=trader,
    )
    assert started.status_code == 202
    job_id = started.json()["job_id"]
    assert client.get(f"/api/forecast/status/{job_id}", headers=viewer).status_code == 200
