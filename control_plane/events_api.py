"""`/ws`: the live event stream for the UI (orders, trades, telemetry, alarms, site sessions).

Protocol (JSON text frames, server to client):

- first ``{"type": "hello", "seq": <last seq so far>, "data": {"types": [...]}}``;
- then every event the client subscribed to, as the hub publishes it (see `events.py`):
  ``{"seq", "type", "ts", "data"}``, `seq` increasing by one per event of the whole stream
  (with a type filter the client sees gaps: those are other types);
- ``{"type": "ping", "ts": ...}`` after `KEEPALIVE_S` without an event, so proxies and clients
  can tell a quiet stream from a dead one;
- ``{"type": "lagged", ...}`` if the client read too slowly; the server then closes (1013,
  try again later): reconnect and reload the state over HTTP.

Filter: `/ws?types=order,trade` (a type or its prefix: `order` = every `order.*`); unknown types
close the socket with 1008 and the list of known ones. Messages from the client are read only
to notice a disconnect (one task sends, so frames never interleave).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from datetime import UTC, date, datetime
from decimal import Decimal
from enum import Enum
from typing import Annotated, Any, Final

from fastapi import APIRouter, Query, WebSocket, WebSocketDisconnect
from prometheus_client import CollectorRegistry, Gauge
from starlette.websockets import WebSocketState

from .auth.deps import WsViewerDep
from .deps import EventHubDep
from .events import EVENT_TYPES, Subscription, parse_type_filter

log = logging.getLogger(__name__)

router = APIRouter(tags=["events"])

KEEPALIVE_S: Final = 20.0
"""Idle seconds before the server sends a ping message."""
CLOSE_POLICY: Final = 1008
CLOSE_TRY_AGAIN: Final = 1013


class WsMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.clients = Gauge(
            "bess_plane_ws_clients", "WebSocket clients connected to /ws", registry=registry
        )


def to_json(message: dict[str, Any]) -> str:
    """JSON text of an event: times as ISO 8601, Decimals as strings (exact)."""
    return json.dumps(message, default=_default, separators=(",", ":"), allow_nan=False)


def _default(value: object) -> object:
    if isinstance(value, datetime | date):
        return value.isoformat()
    if isinstance(value, Decimal):
        return str(value)
    if isinstance(value, Enum):
        return value.value
    if isinstance(value, set | frozenset | tuple):
        return list(value)
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")


@router.websocket("/ws")
async def event_stream(
    websocket: WebSocket,
    hub: EventHubDep,
    principal: WsViewerDep,
    types: Annotated[str | None, Query(max_length=500)] = None,
) -> None:
    """Live events as JSON text; role: viewer (the dependency authenticates and accepts)."""
    try:
        wanted = parse_type_filter(types)
    except ValueError as exc:
        await websocket.close(CLOSE_POLICY, reason=str(exc)[:120])
        return
    metrics: WsMetrics | None = getattr(websocket.app.state, "ws_metrics", None)
    keepalive_s: float = getattr(websocket.app.state, "ws_keepalive_s", KEEPALIVE_S)
    if metrics is not None:
        metrics.clients.inc()
    try:
        with hub.subscribe(wanted) as subscription:
            await websocket.send_text(
                to_json(
                    {
                        "type": "hello",
                        "seq": hub.last_seq,
                        "ts": datetime.now(UTC).isoformat(),
                        "data": {"types": sorted(wanted or EVENT_TYPES)},
                    }
                )
            )
            await _serve(websocket, subscription, keepalive_s)
    finally:
        if metrics is not None:
            metrics.clients.dec()


async def _serve(websocket: WebSocket, subscription: Subscription, keepalive_s: float) -> None:
    """Send events until the client goes or lags; read its frames to notice it going."""
    sender = asyncio.create_task(_send(websocket, subscription, keepalive_s))
    receiver = asyncio.create_task(_receive(websocket))
    try:
        done, _ = await asyncio.wait({sender, receiver}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in (sender, receiver):
            task.cancel()
        for task in (sender, receiver):
            with contextlib.suppress(asyncio.CancelledError, WebSocketDisconnect, RuntimeError):
                await task
    for task in done:
        exc = task.exception()
        if exc is not None and not isinstance(exc, WebSocketDisconnect | RuntimeError):
            raise exc


async def _send(websocket: WebSocket, subscription: Subscription, keepalive_s: float) -> None:
    while True:
        try:
            message = await asyncio.wait_for(subscription.get(), timeout=keepalive_s)
        except TimeoutError:
            message = {"type": "ping", "ts": datetime.now(UTC).isoformat()}
        await websocket.send_text(to_json(message))
        if message["type"] == "lagged":
            if websocket.application_state is WebSocketState.CONNECTED:
                await websocket.close(CLOSE_TRY_AGAIN, reason="lagging: reconnect and reload")
            return


async def _receive(websocket: WebSocket) -> None:
    while True:
        message = await websocket.receive()
        if message["type"] == "websocket.disconnect":
            return
