"""Signing helpers for machine clients (tests, the demo, scripts) of the plane's HMAC scheme.

    headers = sign_request(secret, "POST", "/api/telemetry", body)
    httpx.post(url + "/api/telemetry", content=body, headers=headers | {"content-type": ...})

The path must be exactly what is sent, query included. See `signing.py` for the scheme.
"""

from __future__ import annotations

import secrets
import time
from urllib.parse import urlsplit

from .signing import HEADER_NONCE, HEADER_SIGNATURE, HEADER_TIMESTAMP, signature, websocket_path


def sign_request(
    secret: str | bytes,
    method: str,
    path: str,
    body: bytes = b"",
    *,
    now: float | None = None,
    nonce: str | None = None,
) -> dict[str, str]:
    """The three headers of a signed request; a fresh nonce and the current time by default."""
    key = secret.encode() if isinstance(secret, str) else secret
    timestamp = str(int(time.time() if now is None else now))
    nonce = nonce or secrets.token_urlsafe(18)
    return {
        HEADER_TIMESTAMP: timestamp,
        HEADER_NONCE: nonce,
        HEADER_SIGNATURE: signature(key, method, path, timestamp, nonce, body),
    }


def sign_websocket_url(
    secret: str | bytes, url: str, *, now: float | None = None, nonce: str | None = None
) -> str:
    """`url` (a path or ws:// URL, query allowed) with ts, nonce and sig appended."""
    parts = urlsplit(url)
    signed = sign_request(
        secret, "GET", websocket_path(parts.path, parts.query), now=now, nonce=nonce
    )
    params = (
        f"ts={signed[HEADER_TIMESTAMP]}&nonce={signed[HEADER_NONCE]}&sig={signed[HEADER_SIGNATURE]}"
    )
    return f"{url}{'&' if parts.query else '?'}{params}"
