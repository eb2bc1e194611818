"""Fixtures of the exchange HTTP and WebSocket tests: the real app (lifespan, store, gRPC server)
on SQLite and on PostgreSQL, driven by Starlette's TestClient (it speaks WebSocket too), with
the exchange on a stepped clock.

`client` is the ONE place the tests get their HTTP client: headers every request needs (an
admin API key) go here; tests/control_plane/test_access.py covers the roles.
"""

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

from ..exchange.conftest import DELIVERY, MARKET, T0, SteppedClock
from ..plane import bearer, settings_for

with warnings.catch_warnings():
    # Starlette 1.x suggests httpx2; the client works as before with httpx.
    warnings.simplefilter("ignore")
    from starlette.testclient import TestClient

__all__ = ["DELIVERY", "MARKET", "T0", "order_body"]


def order_body(**changes: Any) -> dict[str, Any]:
    """A valid JSON order for DELIVERY (10:00 UTC, two hours after the clock's T0)."""
    body: dict[str, Any] = {
        "side": "BUY",
        "quantity_mw": "1.5",
        "limit_price": "50",
        "market": MARKET,
        "delivery": {"start": DELIVERY.start.isoformat(), "product": "PT15M"},
        "portfolio": "pf-a",
        "counterparty": "desk",
    }
    body.update(changes)
    return body


@pytest.fixture
def clock() -> SteppedClock:
    return SteppedClock()


@pytest.fixture(params=["sqlite", "postgresql"])
def app(request: pytest.FixtureRequest, tmp_path: Path, clock: SteppedClock) -> FastAPI:
    """The app; `@pytest.mark.plane(ws_keepalive_s=...)` passes options to `create_app`."""
    overrides: dict[str, Any] = {}
    if request.param == "postgresql":
        overrides["database_url"] = request.getfixturevalue("postgres_schema_dsn")
    options: dict[str, Any] = {"ws_keepalive_s": 3600.0}
    marker = request.node.get_closest_marker("plane")
    if marker is not None:
        options.update(marker.kwargs)
    return create_app(settings_for(tmp_path, **overrides), clock=clock, **options)


@pytest.fixture
def client(app: FastAPI) -> Iterator[TestClient]:
    """The plane's HTTP/WebSocket client, lifespan running (the one client fixture)."""
    with TestClient(app, base_url="http://plane") as test_client:
        issued = app.state.auth.create(name="exchange-api-tests", role=Role.ADMIN)
        test_client.headers.update(bearer(str(issued.token)))
        yield test_client


def later(minutes: int) -> str:
    """DELIVERY's start plus `minutes`, ISO 8601."""
    return (DELIVERY.start + timedelta(minutes=minutes)).isoformat()
