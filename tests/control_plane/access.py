"""The access audit: walk every route of an app and check its authentication requirement.

`audit(app, client, viewer_headers=...)` returns one line per problem (empty = fine):
- a route outside `open_paths` that answers a request without credentials with anything but
  401 (WebSockets: anything but close code 4401);
- a route without a role dependency (`require(role)` / `require_ws(role)`);
- a route that needs more than viewer but does not answer a viewer key with 403 naming the role;
- a route that changes something (not GET/HEAD) but needs only viewer.
Tests of new routers need no change: their routes are walked like every other.
"""

from __future__ import annotations

import re
import warnings
from collections.abc import Iterable

from fastapi import FastAPI
from fastapi.dependencies.models import Dependant
from fastapi.routing import APIWebSocketRoute, RouteContext, iter_route_contexts
from starlette.routing import WebSocketRoute
from starlette.websockets import WebSocketDisconnect

from control_plane.app import OPEN_PATHS
from control_plane.auth.deps import WS_CLOSE_UNAUTHENTICATED
from control_plane.auth.models import Role

with warnings.catch_warnings():
    # Starlette 1.x nudges towards `httpx2`; httpx is what the project uses.
    warnings.simplefilter("ignore")
    from starlette.testclient import TestClient  # the one client for HTTP and WebSocket

READ_METHODS = frozenset({"GET", "HEAD"})


def required_role(dependant: Dependant) -> Role | None:
    """The role a route's dependency tree requires (the `required_role` of `require(...)`)."""
    for dep in dependant.dependencies:
        role = getattr(dep.call, "required_role", None)
        if isinstance(role, Role):
            return role
        found = required_role(dep)
        if found is not None:
            return found
    return None


def _concrete(path: str) -> str:
    return re.sub(r"\{[^}]+\}", "audit-x", path)


def endpoints(app: FastAPI) -> list[tuple[str, str, RouteContext | None]]:
    """(method or 'WEBSOCKET', path, route) of the OpenAPI schema and of every route
    (included routers flattened: FastAPI keeps them as lazy `_IncludedRouter` entries)."""
    found: dict[tuple[str, str], RouteContext | None] = {}
    for path, operations in app.openapi().get("paths", {}).items():
        for method in operations:
            found[(method.upper(), path)] = None
    for route in iter_route_contexts(app.routes):
        if route.path is None:
            continue
        if isinstance(route.original_route, (APIWebSocketRoute, WebSocketRoute)):
            found[("WEBSOCKET", route.path)] = route
        else:
            for method in route.methods or ():
                found[(method, route.path)] = route
    return [(m, p, r) for (m, p), r in sorted(found.items(), key=lambda i: (i[0][1], i[0][0]))]


def audit(
    app: FastAPI,
    client: TestClient,
    *,
    viewer_headers: dict[str, str],
    open_paths: Iterable[str] = OPEN_PATHS,
) -> list[str]:
    problems: list[str] = []
    allowed_open = set(open_paths)
    for method, path, route in endpoints(app):
        if path in allowed_open or method == "HEAD":
            continue
        dependant = getattr(route, "dependant", None)
        role = required_role(dependant) if dependant is not None else None
        where = f"{method} {path}"
        if method == "WEBSOCKET":
            if role is None:
                problems.append(f"{where}: no role dependency (use WsViewerDep etc.)")
                continue  # connecting could hang on a route that waits for messages
            code = _ws_close_code(client, _concrete(path))
            if code != WS_CLOSE_UNAUTHENTICATED:
                problems.append(f"{where}: without credentials got {code}, not 4401")
            continue
        anonymous = client.request(method, _concrete(path))
        if anonymous.status_code != 401:
            problems.append(f"{where}: without credentials got {anonymous.status_code}, not 401")
        elif "WWW-Authenticate" not in anonymous.headers:
            problems.append(f"{where}: 401 without WWW-Authenticate")
        if role is None:
            problems.append(f"{where}: no role dependency (use ViewerDep, TraderDep, ...)")
            continue
        if method not in READ_METHODS and role == Role.VIEWER:
            problems.append(f"{where}: changes something but needs only viewer")
        if not Role.VIEWER.allows(role):
            viewer = client.request(method, _concrete(path), headers=viewer_headers)
            if viewer.status_code != 403 or f"this needs role {role}" not in viewer.text:
                problems.append(
                    f"{where}: a viewer key got {viewer.status_code} {viewer.text[:80]!r}, "
                    f"not 403 'this needs role {role}'"
                )
    return problems


def _ws_close_code(client: TestClient, path: str) -> int | str:
    try:
        with client.websocket_connect(path) as ws:
            message = ws.receive()
    except WebSocketDisconnect as exc:
        return exc.code
    if message.get("type") == "websocket.close":
        return int(message.get("code", 1000))
    return f"a message ({message.get('type')})"
