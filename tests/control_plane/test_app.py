"""The HTTP API through httpx.AsyncClient + ASGITransport, with the real lifespan and store."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import pytest

from control_plane.fleet.models import Hello, Ratings

from .plane import RunningPlane, running_plane, settings_for

SITE = "api-site"
T0 = datetime(2030, 1, 1, tzinfo=UTC)


@pytest.fixture
async def plane(tmp_path: Path) -> AsyncIterator[RunningPlane]:
    async with running_plane(settings_for(tmp_path)) as running:
        yield running


async def _register(plane: RunningPlane) -> None:
    fleet = plane.app.state.fleet
    session, _, _ = await fleet.open_session(
        Hello(SITE, "1.0", ("modbus",), ratings=Ratings(100.0, 50.0, 50.0))
    )
    await fleet.close_session(session, "test")


async def test_health_ready_metrics_docs(plane: RunningPlane) -> None:
    assert (await plane.client.get("/health")).json()["status"] == "ok"
    ready = await plane.client.get("/ready")
    assert ready.status_code == 200
    assert ready.json() == {"status": "ready"}
    metrics = await plane.client.get("/metrics")
    assert metrics.headers["content-type"].startswith("text/plain")
    assert "bess_plane_sites_connected 0.0" in metrics.text
    assert 'route="/ready"' in metrics.text
    assert (await plane.client.get("/openapi.json")).json()["paths"]["/api/bess/status"]


async def test_unknown_site_is_404(plane: RunningPlane) -> None:
    for path in ("", "/telemetry", "/events", "/schedules"):
        response = await plane.client.get(f"/api/sites/nope{path}")
        assert response.status_code == 404, path
        assert "unknown site 'nope'" in response.json()["detail"]


async def _post(plane: RunningPlane, path: str, body: object) -> httpx.Response:
    """POST JSON that may hold NaN/Infinity (httpx refuses to encode them; clients do send them)."""
    return await plane.client.post(
        path, content=json.dumps(body), headers={"content-type": "application/json"}
    )


def _body(**changes: object) -> dict[str, object]:
    body: dict[str, object] = {
        "valid_from": "2030-01-01T00:00:00Z",
        "valid_until": "2030-01-01T01:00:00+00:00",
        "intervals": [
            {"start": "2030-01-01T00:00:00Z", "power_kw": 10},
            {"start": "2030-01-01T01:15:00+01:00", "power_kw": -10},  # 00:15 UTC
        ],
    }
    body.update(changes)
    return body


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"interval_minutes": 60}, "Input should be 15"),
        ({"intervals": []}, "at least 1 item"),
        ({"valid_until": "2029-12-31T00:00:00Z"}, "must be before valid_until"),
        ({"valid_from": "2030-01-01T00:00:00"}, "timezone"),
        (
            {"intervals": [{"start": "2030-01-01T00:05:00Z", "power_kw": 1}]},
            "not aligned to 15 minutes",
        ),
        (
            {"intervals": [{"start": "2030-01-01T00:00:00Z", "power_kw": float("nan")}]},
            "finite number",
        ),
        (
            {
                "intervals": [
                    {"start": "2030-01-01T00:15:00Z", "power_kw": 1},
                    {"start": "2030-01-01T00:00:00Z", "power_kw": 1},
                ]
            },
            "overlaps the previous one or is out of order",
        ),
        (
            {"intervals": [{"start": "2030-01-01T01:00:00Z", "power_kw": 1}]},
            "outside the validity",
        ),
        ({"extra": 1}, "Extra inputs are not permitted"),
    ],
)
async def test_schedule_validation_says_what_is_wrong(
    plane: RunningPlane, changes: dict[str, object], message: str
) -> None:
    await _register(plane)
    response = await _post(plane, f"/api/sites/{SITE}/schedules", _body(**changes))
    assert response.status_code == 422
    assert message in response.text


async def test_schedule_for_an_offline_site_waits(plane: RunningPlane) -> None:
    await _register(plane)
    response = await plane.client.post(f"/api/sites/{SITE}/schedules", json=_body())
    assert response.status_code == 201, response.text
    created = response.json()
    assert (created["version"], created["status"], created["interval_minutes"]) == (
        1,
        "pending",
        15,
    )
    assert created["intervals"][1] == {"start": "2030-01-01T00:15:00Z", "power_kw": -10.0}
    second = (await plane.client.post(f"/api/sites/{SITE}/schedules", json=_body())).json()
    assert second["version"] == 2
    listed = (await plane.client.get(f"/api/sites/{SITE}/schedules")).json()
    assert [(s["version"], s["status"]) for s in listed] == [(2, "pending"), (1, "superseded")]


@pytest.mark.parametrize("path", ["/api/telemetry", "/api/bess/telemetry"])
async def test_external_telemetry_is_deduplicated_and_shows_in_status(
    plane: RunningPlane, path: str
) -> None:
    reading = {
        "site_id": "ext-1",
        "seq": 7,
        "timestamp": "2030-01-01T00:00:00Z",
        "soc_pct": 61.5,
        "active_power_kw": 250.0,
        "temperature_c": 24.0,
    }
    first = await plane.client.post(path, json=reading)
    assert first.json() == {"site_id": "ext-1", "stored": 1, "duplicates": 0}
    again = await plane.client.post(path, json=reading)
    assert again.json() == {"site_id": "ext-1", "stored": 0, "duplicates": 1}
    later = {**reading, "timestamp": "2030-01-01T00:00:10Z", "soc_pct": 62.0}
    del later["seq"]  # no seq: the plane numbers it
    assert (await plane.client.post(path, json=later)).json()["stored"] == 1

    for status_path in ("/api/bess/status", "/api/bess-status"):
        body = (await plane.client.get(status_path)).json()
        (site,) = body["sites"]
        assert site["site_id"] == "ext-1"
        assert site["soc_pct"] == 62.0
        assert site["active_power_mw"] == 0.25
        assert site["status"] == "offline"  # no agent connected
        assert body["totals"]["sites"] == 1
        assert body["totals"]["active_power_kw"] == 250.0

    history = await plane.client.get(
        "/api/sites/ext-1/telemetry",
        params={"start": "2030-01-01T00:00:05Z", "end": "2030-01-01T01:00:00Z"},
    )
    assert [s["seq"] for s in history.json()] == [8]
    assert (await plane.client.get("/api/sites/ext-1/events")).json() == []


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"soc_pct": 101}, "less than or equal to 100"),
        ({"seq": 0}, "greater than or equal to 1"),
        ({"timestamp": "2030-01-01T00:00:00"}, "timezone"),
        ({"site_id": "bad id"}, "String should match pattern"),
        ({"active_power_kw": float("inf")}, "finite number"),
    ],
)
async def test_external_telemetry_validation(
    plane: RunningPlane, changes: dict[str, object], message: str
) -> None:
    reading = {"site_id": "ext-1", "timestamp": "2030-01-01T00:00:00Z", **changes}
    response = await _post(plane, "/api/telemetry", reading)
    assert response.status_code == 422
    assert message in response.text


async def test_history_range_must_be_ordered_and_aware(plane: RunningPlane) -> None:
    await _register(plane)
    start = T0.isoformat()
    end = (T0 - timedelta(hours=1)).isoformat()
    bad = await plane.client.get(
        f"/api/sites/{SITE}/telemetry", params={"start": start, "end": end}
    )
    assert bad.status_code == 422
    assert "start must be before end" in bad.text
    naive = await plane.client.get(
        f"/api/sites/{SITE}/telemetry", params={"start": "2030-01-01T00:00:00"}
    )
    assert naive.status_code == 422
    assert "UTC offset" in naive.text


@pytest.mark.parametrize(("synchronous", "level"), [("FULL", 2), ("NORMAL", 1)])
async def test_the_store_uses_the_sqlite_synchronous_setting(
    tmp_path: Path, synchronous: str, level: int
) -> None:
    async with running_plane(settings_for(tmp_path, sqlite_synchronous=synchronous)) as running:
        with running.app.state.engine.connect() as conn:
            assert conn.exec_driver_sql("PRAGMA synchronous").scalar() == level
