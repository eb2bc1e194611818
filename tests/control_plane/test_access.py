"""Every route's authentication requirement, by walking the app (a new open route fails here),
plus the behaviour of keys, roles, signatures and WebSockets through the real app."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi import Depends, FastAPI, WebSocket

from control_plane.app import create_app
from control_plane.auth.client import sign_request, sign_websocket_url
from control_plane.auth.deps import WsViewerDep, require
from control_plane.auth.models import Role

from .access import TestClient, audit, endpoints
from .plane import bearer, settings_for

SECRET = "h" * 32


def _issue(app: FastAPI, role: Role) -> str:
    return str(app.state.auth.create(name=f"t-{role}", role=role).token)


def _with_ws_routes(app: FastAPI) -> FastAPI:
    """A protected WebSocket (echoes the principal) like the exchange's /ws will be."""

    @app.websocket("/ws/audit-probe")
    async def probe(websocket: WebSocket, principal: WsViewerDep) -> None:
        await websocket.send_json({"name": principal.name, "role": principal.role})
        await websocket.close()

    return app


@pytest.fixture
def client(tmp_path: Path) -> Iterator[TestClient]:
    app = _with_ws_routes(create_app(settings_for(tmp_path, hmac_secret=SECRET)))
    with TestClient(app, raise_server_exceptions=False) as client:
        yield client


def test_every_route_needs_credentials_except_the_open_ones(client: TestClient) -> None:
    app = client.app
    assert isinstance(app, FastAPI)
    walked = {(m, p) for m, p, _ in endpoints(app)}
    assert ("POST", "/api/sites/{site_id}/schedules") in walked
    assert ("WEBSOCKET", "/ws/audit-probe") in walked
    assert ("GET", "/metrics") in walked  # not in the schema, walked anyway
    problems = audit(app, client, viewer_headers=bearer(_issue(app, Role.VIEWER)))
    assert problems == []


def test_the_audit_reports_an_unprotected_or_underprotected_route(tmp_path: Path) -> None:
    app = create_app(settings_for(tmp_path))

    @app.get("/api/bare")
    async def bare() -> dict[str, str]:
        return {"oops": "open"}

    @app.post("/api/weak", dependencies=[Depends(require(Role.VIEWER))])
    async def weak() -> None:
        return None

    @app.websocket("/ws/bare")
    async def ws_bare(websocket: WebSocket) -> None:
        await websocket.accept()

    with TestClient(app, raise_server_exceptions=False) as client:
        problems = audit(app, client, viewer_headers=bearer(_issue(app, Role.VIEWER)))
    assert problems == [
        "GET /api/bare: without credentials got 200, not 401",
        "GET /api/bare: no role dependency (use ViewerDep, TraderDep, ...)",
        "POST /api/weak: changes something but needs only viewer",
        "WEBSOCKET /ws/bare: no role dependency (use WsViewerDep etc.)",
    ]


def test_open_routes_answer_without_credentials(client: TestClient) -> None:
    assert client.get("/health").status_code == 200
    assert client.get("/ready").json() == {"status": "ready"}
    assert client.get("/openapi.json").status_code == 200
    metrics = client.get("/metrics").text
    assert "bess_plane_auth_failures_total" in metrics


def test_401_403_and_the_failure_metric(client: TestClient) -> None:
    app = client.app
    assert isinstance(app, FastAPI)
    missing = client.get("/api/sites")
    assert missing.status_code == 401
    assert missing.headers["WWW-Authenticate"].startswith("Bearer")
    assert "bess-plane keys create" in missing.json()["detail"]
    assert client.get("/api/sites", headers=bearer("bess_0123456789abcdef_" + "A" * 43)).json() == {
        "detail": "invalid API key"
    }
    assert client.get("/api/sites", headers={"Authorization": "Basic abc"}).status_code == 401
    viewer = _issue(app, Role.VIEWER)
    assert client.get("/api/sites", headers={"X-API-Key": viewer}).json() == []
    refused = client.post("/api/sites/s1/schedules", headers=bearer(viewer), json={})
    assert refused.status_code == 403
    assert refused.json()["detail"] == "this needs role trader; key 't-viewer' has role viewer"
    telemetry = _issue(app, Role.TELEMETRY)
    reading = {"site_id": "ext-1", "timestamp": "2030-01-01T00:00:00Z", "soc_pct": 50}
    assert client.post("/api/telemetry", headers=bearer(telemetry), json=reading).status_code == 200
    assert client.get("/api/sites", headers=bearer(telemetry)).status_code == 403  # write-only
    metrics = client.get("/metrics").text
    assert 'bess_plane_auth_failures_total{reason="missing"} 1.0' in metrics
    assert 'bess_plane_auth_failures_total{reason="invalid_key"} 1.0' in metrics
    assert 'bess_plane_auth_failures_total{reason="forbidden"} 2.0' in metrics


def test_key_administration_over_the_api(client: TestClient) -> None:
    app = client.app
    assert isinstance(app, FastAPI)
    admin = bearer(_issue(app, Role.ADMIN))
    created = client.post("/api/keys", headers=admin, json={"name": "bot", "role": "trader"})
    assert created.status_code == 201, created.text
    body = created.json()
    secret, key_id = body["secret"], body["id"]
    assert body["masked"] == f"bess_{key_id}_…" and body["state"] == "active"
    assert client.get("/api/auth/whoami", headers=bearer(secret)).json() == {
        "key_id": key_id,
        "name": "bot",
        "role": "trader",
        "via": "api_key",
    }
    listed = client.get("/api/keys", headers=admin).json()
    assert secret not in json.dumps(listed)
    assert {k["id"] for k in listed} >= {key_id}
    assert client.get("/api/keys", headers=bearer(secret)).status_code == 403

    rotated = client.post(f"/api/keys/{key_id}/rotate", headers=admin, json={"grace_hours": 1})
    assert rotated.status_code == 201, rotated.text
    new_secret = rotated.json()["secret"]
    for token in (secret, new_secret):  # both work during the grace period
        assert client.get("/api/auth/whoami", headers=bearer(token)).status_code == 200
    revoked = client.delete(f"/api/keys/{key_id}", headers=admin)
    assert revoked.json()["state"] == "revoked"
    gone = client.get("/api/auth/whoami", headers=bearer(secret))
    assert (gone.status_code, gone.json()["detail"]) == (401, f"API key {key_id} is revoked")
    assert client.delete(f"/api/keys/{key_id}", headers=admin).status_code == 409
    assert client.delete("/api/keys/nope", headers=admin).status_code == 404
    bad = client.post("/api/keys", headers=admin, json={"name": "x", "role": "root"})
    assert bad.status_code == 422


def test_signed_requests(client: TestClient) -> None:
    app = client.app
    assert isinstance(app, FastAPI)
    reading = {"site_id": "ext-2", "timestamp": "2030-01-01T00:00:00Z"}
    admin = bearer(_issue(app, Role.ADMIN))
    assert client.post("/api/telemetry", json=reading, headers=admin).status_code == 200
    path = "/api/sites/ext-2/schedules"
    body = json.dumps(
        {
            "valid_from": "2030-01-01T00:00:00Z",
            "valid_until": "2030-01-01T00:15:00Z",
            "intervals": [{"start": "2030-01-01T00:00:00Z", "power_kw": 5}],
        }
    ).encode()
    headers = sign_request(SECRET, "POST", path, body) | {"content-type": "application/json"}
    ok = client.post(path, content=body, headers=headers)
    assert ok.status_code == 201, ok.text  # hmac_role defaults to trader
    replay = client.post(path, content=body, headers=headers)
    assert replay.status_code == 401
    assert "used before" in replay.json()["detail"]
    tampered = sign_request(SECRET, "POST", path, body) | {"content-type": "application/json"}
    changed = client.post(path, content=body.replace(b"5}", b"50}"), headers=tampered)
    assert changed.status_code == 401
    query = "/api/sites/ext-2/telemetry?limit=5"
    signed_get = client.get(query, headers=sign_request(SECRET, "GET", query))
    assert signed_get.status_code == 200, signed_get.text
    assert len(signed_get.json()) == 1
    whoami = client.get("/api/auth/whoami", headers=sign_request(SECRET, "GET", "/api/auth/whoami"))
    assert whoami.json()["via"] == "hmac"
    telemetry = client.post(
        "/api/telemetry", json=reading, headers=sign_request(SECRET, "POST", "/api/telemetry")
    )
    assert telemetry.status_code == 401  # signed over an empty body, sent with one
    admin_only = client.get("/api/keys", headers=sign_request(SECRET, "GET", "/api/keys"))
    assert admin_only.status_code == 403
    assert admin_only.json()["detail"] == (
        "this needs role admin; key 'HMAC client' has role trader"
    )


def test_signing_is_off_without_a_secret(tmp_path: Path) -> None:
    with TestClient(create_app(settings_for(tmp_path))) as client:
        refused = client.get("/api/sites", headers=sign_request(SECRET, "GET", "/api/sites"))
    assert refused.status_code == 401
    assert "no HMAC_SECRET" in refused.json()["detail"]


def test_static_api_key(tmp_path: Path) -> None:
    static = "s" * 40
    with TestClient(create_app(settings_for(tmp_path, api_key=static))) as client:
        assert client.get("/api/auth/whoami", headers=bearer(static)).json()["role"] == "viewer"
        assert client.post("/api/telemetry", headers=bearer(static), json={}).status_code == 403


def test_websocket_authentication(client: TestClient) -> None:
    app = client.app
    assert isinstance(app, FastAPI)
    key = _issue(app, Role.VIEWER)
    with client.websocket_connect(
        "/ws/audit-probe", subprotocols=["bess.v1", f"bess.key.{key}"]
    ) as ws:
        assert ws.accepted_subprotocol == "bess.v1"
        assert ws.receive_json() == {"name": "t-viewer", "role": "viewer"}
    with client.websocket_connect("/ws/audit-probe", headers=bearer(key)) as ws:
        assert ws.receive_json()["role"] == "viewer"
    with client.websocket_connect(sign_websocket_url(SECRET, "/ws/audit-probe")) as ws:
        assert ws.receive_json() == {"name": "HMAC client", "role": "trader"}
    with client.websocket_connect(
        "/ws/audit-probe", subprotocols=["bess.v1", "bess.key.nope"]
    ) as ws:
        closed = ws.receive()
    assert closed["code"] == 4401
    assert "not an API key" in closed["reason"]
