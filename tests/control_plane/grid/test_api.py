"""The grid API on the real plane: a hil frequency dip posted as fleet telemetry shows in
/api/grid/state and raises the alert (event, metric); constraints CRUD with roles; a
maintenance constraint makes the exchange reject an order for the site, with the figures."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from control_plane.auth.models import Role
from control_plane.fleet.models import Hello, Ratings
from hil.grid import FrequencyEvent, GridFrequency

from ..plane import RunningPlane, running_plane, settings_for

SITE = "hil-1"


@pytest.fixture
async def plane(tmp_path: Path):
    settings = settings_for(tmp_path, grid_site_areas={SITE: "AT", "other": "DE_LU"})
    async with running_plane(settings) as running:
        yield running


async def _post(plane: RunningPlane, samples: list[tuple[datetime, float]]) -> None:
    for at, hz in samples:
        body = {
            "site_id": SITE,
            "timestamp": at.isoformat(),
            "grid_frequency_hz": hz,
            "soc_pct": 50,
        }
        response = await plane.client.post("/api/telemetry", json=body)
        assert response.status_code == 200, response.text


async def _alerts(sub: Any) -> list[dict[str, Any]]:
    got = []
    while True:
        try:
            got.append((await asyncio.wait_for(sub.get(), timeout=0.5))["data"])
        except TimeoutError:
            return got


async def test_a_hil_frequency_dip_shows_in_the_state_and_raises_the_alert(plane: RunningPlane):
    # The hil simulator's grid: a 49.6 Hz dip for 5 s, 10 s into a 1 Hz run ending now.
    now = datetime.now(UTC).replace(microsecond=0)
    start = now - timedelta(seconds=19)
    grid = GridFrequency(seed=7, noise_std_hz=0.01)
    grid.add_event(FrequencyEvent(start=start.timestamp() + 10, duration_s=5, hz=49.6))
    signal = [
        (start + timedelta(seconds=i), grid.step(start.timestamp() + i, 1.0)) for i in range(20)
    ]
    in_dip = [s for s in signal[:13]]
    assert 49.55 < in_dip[-1][1] < 49.65  # the hil signal really dips

    hub = plane.app.state.events
    with hub.subscribe(frozenset({"grid.alert"})) as sub:
        await _post(plane, in_dip)
        state = (await plane.client.get("/api/grid/state")).json()
        (at,) = [a for a in state["areas"] if a["area"] == "AT"]
        assert at["alert_level"] == "alarm"
        assert at["frequency"]["level"] == "alarm"
        assert at["frequency"]["frequency_hz"] == pytest.approx(in_dip[-1][1])
        assert [s["site_id"] for s in at["frequency"]["sites"]] == [SITE]
        (event,) = state["frequency_events"]
        assert event["area"] == "AT" and event["level"] == "alarm" and event["ended_at"] is None

        await _post(plane, signal[13:])  # the dip ends
        state = (await plane.client.get("/api/grid/state")).json()
        (at,) = [a for a in state["areas"] if a["area"] == "AT"]
        assert at["alert_level"] == "normal"
        (event,) = state["frequency_events"]
        assert event["ended_at"] is not None and event["extreme_hz"] < 49.65
        alerts = await _alerts(sub)

    assert [(a["area"], a["level"], a["previous_level"]) for a in alerts] == [
        ("AT", "alarm", "normal"),  # once for the crossing, not per sample
        ("AT", "normal", "alarm"),
    ]
    assert "outside the alarm band 49.7-50.3 Hz" in alerts[0]["message"]
    metrics = (await plane.client.get("/metrics")).text
    assert 'pho_grid_alerts_total{area="AT",level="alarm"} 1.0' in metrics
    assert 'pho_grid_freq_hz{area="AT"}' in metrics
    # no token: load and flows say "no source", never a number
    assert state["source"] == "none"
    assert at["load"]["status"] == "no source" and at["load"]["value_mw"] is None
    assert "ENTSOE_TOKEN" in at["load"]["detail"]


async def test_constraints_crud_roles_and_validation(plane: RunningPlane):
    now = datetime.now(UTC)
    body = {
        "kind": "capacity_limit",
        "site_id": SITE,
        "limit_kw": "250",
        "valid_from": (now - timedelta(hours=1)).isoformat(),
        "valid_to": (now + timedelta(hours=1)).isoformat(),
        "reason": "DSO: transformer",
    }
    viewer = await plane.headers(Role.VIEWER)
    assert (
        await plane.client.post("/api/grid/constraints", json=body, headers=viewer)
    ).status_code == 403
    assert (await plane.anonymous.get("/api/grid/constraints")).status_code == 401
    created = await plane.client.post("/api/grid/constraints", json=body)
    assert created.status_code == 201, created.text
    c = created.json()
    assert c["limit_kw"] == "250" and c["effective_limit_kw"] == "250"
    bad = await plane.client.post("/api/grid/constraints", json=body | {"kind": "maintenance"})
    assert bad.status_code == 422 and "takes no limit_kw" in bad.json()["detail"]
    listed = await plane.client.get(
        "/api/grid/constraints",
        params={"active_at": now.isoformat(), "site_id": SITE},
        headers=viewer,
    )
    assert [x["constraint_id"] for x in listed.json()] == [c["constraint_id"]]
    later = (now + timedelta(hours=2)).isoformat()
    assert (
        await plane.client.get("/api/grid/constraints", params={"active_at": later})
    ).json() == []
    ended = await plane.client.put(
        f"/api/grid/constraints/{c['constraint_id']}", json=body | {"valid_to": now.isoformat()}
    )
    assert ended.status_code == 200 and ended.json()["valid_to"] is not None
    assert (
        await plane.client.delete(f"/api/grid/constraints/{c['constraint_id']}")
    ).status_code == 200
    assert (
        await plane.client.get(f"/api/grid/constraints/{c['constraint_id']}")
    ).status_code == 404


async def test_a_constrained_site_cannot_be_traded_beyond_it(plane: RunningPlane):
    fleet = plane.app.state.fleet
    session, _, _ = await fleet.open_session(
        Hello(SITE, "1.0", ("modbus",), ratings=Ratings(2000.0, 1000.0, 1000.0))
    )
    await fleet.close_session(session, "test")
    now = datetime.now(UTC)
    await _post(plane, [(now.replace(microsecond=0), 50.0)])
    delivery = (now + timedelta(hours=2)).replace(minute=0, second=0, microsecond=0)
    created = await plane.client.post(
        "/api/grid/constraints",
        json={
            "kind": "capacity_limit",
            "site_id": SITE,
            "limit_kw": "300",
            "valid_from": delivery.isoformat(),
            "valid_to": (delivery + timedelta(hours=1)).isoformat(),
        },
    )
    assert created.status_code == 201
    order = {
        "side": "BUY",
        "quantity_mw": "0.3",
        "limit_price": "50",
        "market": "epex_at",
        "delivery": {"start": delivery.isoformat(), "product": "PT15M"},
        "portfolio": "pf-a",
        "counterparty": "desk",
        "site": SITE,
    }
    ok = (await plane.client.post("/api/orders", json=order)).json()["order"]
    assert ok["state"] == "ACCEPTED", ok["reject_reason"]
    refused = (await plane.client.post("/api/orders", json=order | {"quantity_mw": "0.1"})).json()
    assert refused["order"]["state"] == "REJECTED"
    reason = refused["order"]["reject_reason"]
    assert reason.startswith("grid_capacity: BUY 0.100 MW for site hil-1")
    assert "400 kW charging, beyond the 300 kW allowed by constraint #1" in reason
    assert "over by 100 kW" in reason
    # the state shows the constraint and the congestion it causes (300 of 1000 kW free)
    state = (await plane.client.get("/api/grid/state")).json()
    (at,) = [a for a in state["areas"] if a["area"] == "AT"]
    assert at["congestion_index"] == 0.0  # not active yet: it starts in two hours
    assert plane.app.state.grid.limit_kw(SITE, delivery, delivery + timedelta(minutes=15)) == 300.0
    body = {"kind": "capacity_limit", "site_id": SITE, "limit_kw": "250"}
    body |= {"valid_from": (now - timedelta(minutes=1)).isoformat()}
    assert (await plane.client.post("/api/grid/constraints", json=body)).status_code == 201
    state = (await plane.client.get("/api/grid/state")).json()
    (at,) = [a for a in state["areas"] if a["area"] == "AT"]
    assert at["congestion_index"] == 0.75  # 750 of the site's 1000 kW withheld
    assert [c["limit_kw"] for c in at["active_constraints"]] == ["250"]
    quarter = (delivery, delivery + timedelta(minutes=15))
    assert plane.app.state.grid.limit_kw(SITE, *quarter) == 250.0  # open-ended: the tighter


async def test_a_constrained_site_cannot_be_scheduled_beyond_it(plane: RunningPlane):
    fleet = plane.app.state.fleet
    session, _, _ = await fleet.open_session(
        Hello(SITE, "1.0", ("modbus",), ratings=Ratings(2000.0, 1000.0, 1000.0))
    )
    await fleet.close_session(session, "test")
    now = datetime.now(UTC)
    start = (now + timedelta(hours=1)).replace(minute=0, second=0, microsecond=0)
    created = await plane.client.post(
        "/api/grid/constraints",
        json={
            "kind": "capacity_limit",
            "site_id": SITE,
            "limit_kw": "300",
            "valid_from": (start + timedelta(minutes=15)).isoformat(),
            "valid_to": (start + timedelta(minutes=45)).isoformat(),
        },
    )
    assert created.status_code == 201, created.text

    def schedule(*powers: float) -> dict[str, Any]:
        return {
            "valid_from": start.isoformat(),
            "valid_until": (start + timedelta(hours=1)).isoformat(),
            "intervals": [
                {"start": (start + timedelta(minutes=15 * i)).isoformat(), "power_kw": p}
                for i, p in enumerate(powers)
            ],
        }

    url = f"/api/sites/{SITE}/schedules"
    # 500 kW before and after the constraint's window, exactly 300 kW charging inside it
    ok = await plane.client.post(url, json=schedule(500, -300, 300, 500))
    assert ok.status_code == 201, ok.text
    refused = await plane.client.post(url, json=schedule(500, 300, -301, -400))
    assert refused.status_code == 409
    detail = refused.json()["detail"]
    assert f"asks 301 kW at {start + timedelta(minutes=30):%Y-%m-%dT%H:%MZ}" in detail
    assert "constraint #1 (capacity_limit, site hil-1" in detail
    assert "allows site hil-1 300 kW; over by 1 kW" in detail
    assert "(and" not in detail  # 400 kW at 45 min is after the window
    listed = (await plane.client.get(url)).json()
    assert [s["version"] for s in listed] == [ok.json()["version"]]  # nothing stored
