"""FastAPI dependencies of access control: `require(role)` and its `Annotated` aliases.

    @router.get("/api/orders")
    async def orders(principal: ViewerDep) -> ...          # any key; the Principal if needed
    @router.post("/api/orders", dependencies=[Depends(require(Role.TRADER))])

Credentials, in this order:
- a signed request (`X-Bess-Signature`, `X-Bess-Timestamp`, `X-Bess-Nonce`, see signing.py);
- an API key in `Authorization: Bearer <key>` or `X-API-Key: <key>`.
No or bad credentials: 401 with `WWW-Authenticate: Bearer`; a role that does not allow the
route: 403 "this needs role trader; key 'x' has role viewer".

WebSockets (`WsViewerDep` etc.): browsers cannot set headers on a WebSocket, so the key goes in
the `Sec-WebSocket-Protocol` header: `new WebSocket(url, ["bess.v1", "bess.key." + key])`. It
stays out of URLs and so out of access logs (uvicorn logs query strings). Non-browser clients
may send the HTTP headers above instead, or sign with query parameters `ts`, `nonce`, `sig`.
On success the dependency ACCEPTS the connection (choosing `bess.v1` when offered, which
browsers require once they offer a subprotocol): the route must not call `accept()` again. On
failure it accepts and closes with 4401 (credentials) or 4403 (role) and the reason, because
a close before accept reaches the client as a bare HTTP 403 without either.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Annotated, Any, cast

from fastapi import Depends, FastAPI, HTTPException, Request, WebSocket, status

from .models import AuthError, Forbidden, Principal, Role, Unauthenticated
from .service import AuthService
from .signing import (
    HEADER_NONCE,
    HEADER_SIGNATURE,
    HEADER_TIMESTAMP,
    NonceCacheFull,
    websocket_path,
)

WS_SUBPROTOCOL = "bess.v1"
WS_KEY_PREFIX = "bess.key."
WS_CLOSE_UNAUTHENTICATED = 4401
WS_CLOSE_FORBIDDEN = 4403
WWW_AUTHENTICATE = 'Bearer realm="bess-plane"'

_NO_CREDENTIALS = (
    "this endpoint needs an API key: send 'Authorization: Bearer <key>' or 'X-API-Key: <key>' "
    "(an admin creates one with `bess-plane keys create`), or sign the request with HMAC"
)


def get_auth(request: Request) -> AuthService:
    return cast(AuthService, request.app.state.auth)


AuthDep = Annotated[AuthService, Depends(get_auth)]


def _key_from_headers(authorization: str | None, api_key: str | None) -> str | None:
    if api_key:
        return api_key.strip()
    if authorization:
        scheme, _, value = authorization.partition(" ")
        if scheme.lower() == "bearer" and value.strip():
            return value.strip()
        raise Unauthenticated("Authorization must be 'Bearer <API key>'", reason="malformed_key")
    return None


def _raw_path(scope: MutableMapping[str, Any]) -> str:
    """The path as the client sent it (what it signed), not the decoded one."""
    raw = scope.get("raw_path")
    path = raw.decode("latin-1") if isinstance(raw, bytes) else str(scope.get("path", ""))
    return path


async def authenticate_request(request: Request) -> Principal:
    """The request's principal; Unauthenticated (or NonceCacheFull) if it has none."""
    auth = get_auth(request)
    headers = request.headers
    if HEADER_SIGNATURE in headers:
        path = _raw_path(request.scope)
        query = request.scope.get("query_string", b"")
        if query:
            path += "?" + bytes(query).decode("latin-1")
        return auth.verify_signature(
            method=request.method,
            path=path,
            timestamp=headers.get(HEADER_TIMESTAMP),
            nonce=headers.get(HEADER_NONCE),
            sig=headers.get(HEADER_SIGNATURE),
            body=await request.body(),
        )
    try:
        token = _key_from_headers(headers.get("authorization"), headers.get("x-api-key"))
        if token is None:
            raise Unauthenticated(_NO_CREDENTIALS, reason="missing")
    except AuthError as exc:
        auth.failed(exc.reason)
        raise
    return await asyncio.to_thread(auth.authenticate_key, token)


RoleDependency = Callable[[Request], Awaitable[Principal]]
_http_deps: dict[Role, RoleDependency] = {}


def require(role: Role) -> RoleDependency:
    """The dependency that lets in principals whose role allows `role` (one per role)."""
    if role in _http_deps:
        return _http_deps[role]

    async def dependency(request: Request) -> Principal:
        try:
            principal = await authenticate_request(request)
            return get_auth(request).authorize(principal, role)
        except Forbidden as exc:
            raise HTTPException(status.HTTP_403_FORBIDDEN, str(exc)) from None
        except NonceCacheFull as exc:
            raise HTTPException(
                status.HTTP_503_SERVICE_UNAVAILABLE, str(exc), headers={"Retry-After": "5"}
            ) from None
        except AuthError as exc:
            raise HTTPException(
                status.HTTP_401_UNAUTHORIZED,
                str(exc),
                headers={"WWW-Authenticate": WWW_AUTHENTICATE},
            ) from None

    dependency.required_role = role  # type: ignore[attr-defined]  # read by the access audit
    dependency.__name__ = f"require_{role}"
    _http_deps[role] = dependency
    return dependency


ViewerDep = Annotated[Principal, Depends(require(Role.VIEWER))]
TraderDep = Annotated[Principal, Depends(require(Role.TRADER))]
TechnicianDep = Annotated[Principal, Depends(require(Role.TECHNICIAN))]
TelemetryDep = Annotated[Principal, Depends(require(Role.TELEMETRY))]
AdminDep = Annotated[Principal, Depends(require(Role.ADMIN))]


# -- WebSockets ----------------------------------------------------------------------------


class WebSocketAuthError(Exception):
    """Raised by the WebSocket dependencies; the app's handler closes with `code`."""

    def __init__(self, code: int, reason: str) -> None:
        super().__init__(reason)
        self.code = code
        self.reason = reason


def _offered(websocket: WebSocket) -> list[str]:
    header = websocket.headers.get("sec-websocket-protocol", "")
    return [p.strip() for p in header.split(",") if p.strip()]


def _subprotocol(websocket: WebSocket) -> str | None:
    return WS_SUBPROTOCOL if WS_SUBPROTOCOL in _offered(websocket) else None


async def authenticate_websocket(websocket: WebSocket, needed: Role = Role.VIEWER) -> Principal:
    """The connection's principal; WebSocketAuthError (4401/4403) otherwise. Does not accept."""
    auth = cast(AuthService, websocket.app.state.auth)
    try:
        params = websocket.query_params
        if "sig" in params:
            query = bytes(websocket.scope.get("query_string", b"")).decode("latin-1")
            principal = auth.verify_signature(
                method="GET",
                path=websocket_path(_raw_path(websocket.scope), query),
                timestamp=params.get("ts"),
                nonce=params.get("nonce"),
                sig=params.get("sig"),
                body=b"",
            )
        else:
            keys = [
                p[len(WS_KEY_PREFIX) :] for p in _offered(websocket) if p.startswith(WS_KEY_PREFIX)
            ]
            try:
                token = (
                    keys[0]
                    if keys
                    else _key_from_headers(
                        websocket.headers.get("authorization"), websocket.headers.get("x-api-key")
                    )
                )
                if token is None:
                    raise Unauthenticated(
                        "this WebSocket needs an API key: offer the subprotocols "
                        f"['{WS_SUBPROTOCOL}', '{WS_KEY_PREFIX}<key>'], or sign the URL "
                        "(ts, nonce, sig)",
                        reason="missing",
                    )
            except AuthError as exc:
                auth.failed(exc.reason)
                raise
            principal = await asyncio.to_thread(auth.authenticate_key, token)
        return auth.authorize(principal, needed)
    except Forbidden as exc:
        raise WebSocketAuthError(WS_CLOSE_FORBIDDEN, str(exc)) from None
    except AuthError as exc:
        raise WebSocketAuthError(WS_CLOSE_UNAUTHENTICATED, str(exc)) from None


WsDependency = Callable[[WebSocket], Awaitable[Principal]]
_ws_deps: dict[Role, WsDependency] = {}


def require_ws(role: Role) -> WsDependency:
    """The WebSocket dependency: authenticate, authorize, then accept (see module docs)."""
    if role in _ws_deps:
        return _ws_deps[role]

    async def dependency(websocket: WebSocket) -> Principal:
        principal = await authenticate_websocket(websocket, role)
        await websocket.accept(subprotocol=_subprotocol(websocket))
        return principal

    dependency.required_role = role  # type: ignore[attr-defined]
    dependency.__name__ = f"require_ws_{role}"
    _ws_deps[role] = dependency
    return dependency


WsViewerDep = Annotated[Principal, Depends(require_ws(Role.VIEWER))]
WsTraderDep = Annotated[Principal, Depends(require_ws(Role.TRADER))]
WsTechnicianDep = Annotated[Principal, Depends(require_ws(Role.TECHNICIAN))]
WsAdminDep = Annotated[Principal, Depends(require_ws(Role.ADMIN))]


async def _close_websocket(websocket: WebSocket, exc: WebSocketAuthError) -> None:
    # Reason text is limited to 123 bytes by RFC 6455.
    reason = exc.reason.encode()[:123].decode(errors="ignore")
    await websocket.accept(subprotocol=_subprotocol(websocket))
    await websocket.close(code=exc.code, reason=reason)


def install(app: FastAPI) -> None:
    """Register the handler that turns WebSocketAuthError into a 4401/4403 close."""
    # Starlette types handlers as taking a Request; for a WebSocket scope it passes the socket.
    app.add_exception_handler(WebSocketAuthError, _close_websocket)  # type: ignore[arg-type]
