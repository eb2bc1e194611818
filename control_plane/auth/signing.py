"""HMAC-SHA256 request signatures for machine clients, with replay protection.

(Named `signing.py`, not `hmac.py`: a module that shadows the standard library's name makes
every `import hmac` in this package a question.)

A client that holds the shared `HMAC_SECRET` signs

    METHOD \\n PATH[?QUERY] \\n TIMESTAMP \\n NONCE \\n hex(sha256(BODY))

(upper-case method; the path and query exactly as sent; unix seconds; 16-128 characters of
`[A-Za-z0-9_-]`) and sends the hex HMAC-SHA256 in `X-Bess-Signature` with `X-Bess-Timestamp`
and `X-Bess-Nonce`. The plane refuses a timestamp more than `skew_s` (300 s) away from its
clock and a nonce it has already accepted within the window. The signature is checked before
the nonce is recorded, so unsigned junk cannot fill the nonce cache.

The nonce cache lives in this process's memory, bounded and expiring (an entry is needed only
while its timestamp is inside the window). Several plane replicas behind a load balancer need a
shared nonce store (e.g. Redis `SET NX EX`), else a request could be replayed to another
replica within the window. When the cache is full of live nonces the plane refuses new signed
requests (503) rather than forget a nonce that could then be replayed.

WebSockets (browsers cannot set headers on them) carry the same three values as query
parameters `ts`, `nonce` and `sig`, signed over `GET\\n/ws[?other query]\\n...` with an empty
body; the other query parameters keep their order.

Errors:

    Unauthenticated (AuthError)       bad, stale or replayed signature (HTTP 401)
    NonceCacheFull (AuthError)        too many live nonces in this process (HTTP 503)
"""

from __future__ import annotations

import hashlib
import heapq
import hmac
import re
from collections.abc import Callable
from datetime import datetime

from .models import AuthError, Principal, Role, Unauthenticated

HEADER_TIMESTAMP = "X-Bess-Timestamp"
HEADER_NONCE = "X-Bess-Nonce"
HEADER_SIGNATURE = "X-Bess-Signature"
WS_PARAMS = ("ts", "nonce", "sig")

DEFAULT_SKEW_S = 300
DEFAULT_MAX_NONCES = 100_000

_NONCE = re.compile(r"[A-Za-z0-9_-]{16,128}")
_SIGNATURE = re.compile(r"[0-9a-fA-F]{64}")


class NonceCacheFull(AuthError):
    """More live nonces than the cache holds: refuse rather than forget one (HTTP 503)."""


def canonical(method: str, path: str, timestamp: str, nonce: str, body: bytes) -> bytes:
    """The string a signature covers."""
    digest = hashlib.sha256(body).hexdigest()
    return f"{method.upper()}\n{path}\n{timestamp}\n{nonce}\n{digest}".encode()


def signature(
    secret: bytes, method: str, path: str, timestamp: str, nonce: str, body: bytes
) -> str:
    return hmac.new(secret, canonical(method, path, timestamp, nonce, body), "sha256").hexdigest()


def websocket_path(path: str, query: str) -> str:
    """The signed path of a WebSocket URL: its query without the ts/nonce/sig parameters."""
    kept = [p for p in query.split("&") if p and p.split("=", 1)[0] not in WS_PARAMS]
    return f"{path}?{'&'.join(kept)}" if kept else path


class NonceCache:
    """Nonces seen within their validity, bounded; `add` is False for a nonce seen before."""

    def __init__(self, *, ttl_s: float, max_entries: int = DEFAULT_MAX_NONCES) -> None:
        if max_entries < 1:
            raise ValueError("max_entries must be at least 1")
        self.ttl_s = ttl_s
        self.max_entries = max_entries
        self._expiry: dict[str, float] = {}
        self._heap: list[tuple[float, str]] = []

    def __len__(self) -> int:
        return len(self._expiry)

    def add(self, nonce: str, *, now: float, valid_until: float) -> bool:
        self._expire(now)
        if nonce in self._expiry:
            return False
        if len(self._expiry) >= self.max_entries:
            raise NonceCacheFull(
                f"more than {self.max_entries} signed requests within "
                f"{self.ttl_s:g} s: retry shortly",
                reason="nonce_cache_full",
            )
        until = max(valid_until, now)
        self._expiry[nonce] = until
        heapq.heappush(self._heap, (until, nonce))
        return True

    def _expire(self, now: float) -> None:
        while self._heap and self._heap[0][0] < now:
            _, nonce = heapq.heappop(self._heap)
            self._expiry.pop(nonce, None)


class HmacVerifier:
    """Checks signed requests against one shared secret; signers act with `role`."""

    def __init__(
        self,
        secret: bytes,
        *,
        role: Role,
        clock: Callable[[], datetime],
        skew_s: int = DEFAULT_SKEW_S,
        max_nonces: int = DEFAULT_MAX_NONCES,
    ) -> None:
        self._secret = secret
        self.role = role
        self.skew_s = skew_s
        self._clock = clock
        # A nonce must be remembered while its timestamp can still pass the skew check.
        self.nonces = NonceCache(ttl_s=2 * skew_s, max_entries=max_nonces)

    def verify(
        self,
        *,
        method: str,
        path: str,
        timestamp: str | None,
        nonce: str | None,
        sig: str | None,
        body: bytes,
    ) -> Principal:
        """The HMAC principal, or Unauthenticated saying what is wrong."""
        if not timestamp or not nonce or not sig:
            missing = [
                name
                for name, value in (
                    (HEADER_TIMESTAMP, timestamp),
                    (HEADER_NONCE, nonce),
                    (HEADER_SIGNATURE, sig),
                )
                if not value
            ]
            raise Unauthenticated(
                f"signed request lacks {', '.join(missing)}", reason="malformed_signature"
            )
        if not timestamp.isascii() or not timestamp.isdigit() or len(timestamp) > 12:
            raise Unauthenticated(
                f"{HEADER_TIMESTAMP} must be unix seconds (an integer)",
                reason="malformed_signature",
            )
        if not _NONCE.fullmatch(nonce):
            raise Unauthenticated(
                f"{HEADER_NONCE} must be 16-128 characters of A-Z a-z 0-9 _ -",
                reason="malformed_signature",
            )
        if not _SIGNATURE.fullmatch(sig):
            raise Unauthenticated(
                f"{HEADER_SIGNATURE} must be a hex HMAC-SHA256 (64 characters)",
                reason="malformed_signature",
            )
        now = self._clock().timestamp()
        sent = int(timestamp)
        if abs(now - sent) > self.skew_s:
            raise Unauthenticated(
                f"{HEADER_TIMESTAMP} is {now - sent:+.0f} s from the plane's clock (allowed "
                f"±{self.skew_s} s): sync the client's clock (NTP) and sign each request anew",
                reason="stale_timestamp",
            )
        expected = signature(self._secret, method, path, timestamp, nonce, body)
        if not hmac.compare_digest(expected, sig.lower()):
            raise Unauthenticated(
                "signature does not match: sign METHOD\\nPATH?QUERY\\nTIMESTAMP\\nNONCE\\n"
                "hex(sha256(body)) with HMAC_SECRET",
                reason="bad_signature",
            )
        if not self.nonces.add(nonce, now=now, valid_until=sent + self.skew_s):
            raise Unauthenticated(
                f"{HEADER_NONCE} was used before: every request needs a fresh nonce",
                reason="nonce_reused",
            )
        return Principal(key_id="hmac", name="HMAC client", role=self.role, via="hmac")
