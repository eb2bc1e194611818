"""HTTP plumbing the price sources share: a request pacer and retries with backoff.

Both public price APIs limit their callers (ENTSO-E: the spec allows at most one request per
second; aWattar: a fair-use limit), and both fail now and then with 429 or 5xx. So every
request goes through `Fetcher.get`:

- **Pacing**: request starts are at least `min_interval_s` apart (one `asyncio.Lock` per
  fetcher, so concurrent `fetch` calls queue instead of bursting). Retries are requests too
  and are paced the same way.
- **Retries** on 429, 5xx and transport errors (connect, read timeout, reset), at most
  `max_attempts` requests in all. The wait before attempt n+1 is exponential with full jitter,
  `base * 2**(n-1) * (0.5 + jitter()/2)` capped at `max_backoff_s`; a `Retry-After` header
  (seconds or an HTTP date) raises the wait to at least what the server asked for. A server
  asking for more than `max_retry_after_s` is not waited for: the fetch fails at once with a
  retryable `SourceError` that says when to come back (the scheduled feed tries again on its
  next run; a fetch must not hang for an hour).
- Any other status (200, 400, 401, 404, ...) is returned to the source, which knows what its
  API means by it.

Clock, sleep and jitter are injected so tests run without waiting. URLs are logged through
`redact`, which masks secret query parameters (ENTSO-E's `securityToken`): the token must never
reach a log line or an exception text (DESIGN 11).
"""

from __future__ import annotations

import asyncio
import logging
import random
import re
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from types import TracebackType
from typing import Self

import httpx

from .models import SourceError

__all__ = ["Fetcher", "RetrySettings", "redact"]

log = logging.getLogger(__name__)

_SECRET_PARAM = re.compile(r"(?i)(securityToken=)[^&\s\"'>]*")


def redact(text: str) -> str:
    """`text` with the value of every `securityToken=` query parameter masked."""
    return _SECRET_PARAM.sub(r"\1***", text)


class _RedactFilter(logging.Filter):
    """Masks secret query parameters in httpx's own request log lines ("HTTP Request: GET
    <url> ..."), which print the full URL at INFO level."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.args:
            args = record.args if isinstance(record.args, tuple) else (record.args,)
            record.args = tuple(redact(a) if isinstance(a, str) else _redact_obj(a) for a in args)
        record.msg = redact(str(record.msg)) if isinstance(record.msg, str) else record.msg
        return True


def _redact_obj(value: object) -> object:
    if isinstance(value, httpx.URL):
        return redact(str(value))
    return value


_FILTER = _RedactFilter()


def install_log_redaction() -> None:
    """Install the redaction filter on httpx's logger (idempotent)."""
    logger = logging.getLogger("httpx")
    if _FILTER not in logger.filters:
        logger.addFilter(_FILTER)


@dataclass(frozen=True, slots=True, kw_only=True)
class RetrySettings:
    """How a source paces and retries its requests."""

    min_interval_s: float = 1.0
    """At least this long between two request starts (ENTSO-E: one request per second)."""
    max_attempts: int = 5
    """Requests in all for one call, the first included."""
    base_backoff_s: float = 1.0
    max_backoff_s: float = 60.0
    max_retry_after_s: float = 120.0
    """A `Retry-After` longer than this fails the fetch (retryable) instead of waiting."""
    timeout_s: float = 30.0

    def __post_init__(self) -> None:
        if self.min_interval_s < 0:
            raise ValueError(f"min_interval_s must be >= 0, got {self.min_interval_s}")
        if self.max_attempts < 1:
            raise ValueError(f"max_attempts must be >= 1, got {self.max_attempts}")
        if self.base_backoff_s < 0 or self.max_backoff_s < self.base_backoff_s:
            raise ValueError(
                "backoff must satisfy 0 <= base_backoff_s <= max_backoff_s, got "
                f"{self.base_backoff_s} and {self.max_backoff_s}"
            )
        if self.timeout_s <= 0:
            raise ValueError(f"timeout_s must be > 0, got {self.timeout_s}")


Sleep = Callable[[float], Awaitable[None]]


class Fetcher:
    """Paced, retried GET requests for one source (`label` names it in errors and logs)."""

    def __init__(
        self,
        *,
        label: str,
        http: httpx.AsyncClient,
        settings: RetrySettings,
        clock: Callable[[], float] = time.monotonic,
        sleep: Sleep = asyncio.sleep,
        jitter: Callable[[], float] = random.random,
        wall_clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self.label = label
        self.settings = settings
        self._http = http
        self._clock = clock
        self._sleep = sleep
        self._jitter = jitter
        self._wall_clock = wall_clock
        self._lock = asyncio.Lock()
        self._next_start: float | None = None
        self.requests_sent = 0
        install_log_redaction()

    async def _pace(self) -> None:
        async with self._lock:
            now = self._clock()
            if self._next_start is not None and now < self._next_start:
                await self._sleep(self._next_start - now)
                now = max(self._clock(), self._next_start)
            self._next_start = now + self.settings.min_interval_s

    def backoff_s(self, attempt: int) -> float:
        """The wait after failed attempt `attempt` (1-based), jitter included."""
        s = self.settings
        base = min(s.max_backoff_s, s.base_backoff_s * 2 ** (attempt - 1))
        return float(base * (0.5 + self._jitter() / 2))

    def _retry_after_s(self, response: httpx.Response) -> float | None:
        value = response.headers.get("Retry-After")
        if value is None:
            return None
        value = value.strip()
        if value.isdigit():
            return float(value)
        try:
            when = parsedate_to_datetime(value)
        except (TypeError, ValueError):
            return None  # unreadable: fall back to our own backoff
        if when.tzinfo is None:
            when = when.replace(tzinfo=UTC)
        return max(0.0, (when - self._wall_clock()).total_seconds())

    async def get(self, url: str, params: Mapping[str, str]) -> httpx.Response:
        """The response to GET `url` with `params`, after retries; raises `SourceError` when
        every attempt failed or the server asks to wait too long."""
        s = self.settings
        shown = redact(str(httpx.URL(url, params=dict(params))))
        for attempt in range(1, s.max_attempts + 1):
            await self._pace()
            self.requests_sent += 1
            try:
                response = await self._http.get(url, params=params, timeout=s.timeout_s)
            except httpx.TransportError as exc:
                problem = f"{type(exc).__name__}: {redact(str(exc)) or 'no detail'}"
                error = SourceError(
                    f"{self.label}: request failed ({problem}) after {attempt} attempt(s); "
                    f"GET {shown}",
                    retryable=True,
                )
                wait = self.backoff_s(attempt)
            else:
                status = response.status_code
                if status != 429 and status < 500:
                    log.debug("%s: GET %s -> %d", self.label, shown, status)
                    return response
                error = SourceError(
                    f"{self.label}: HTTP {status} after {attempt} attempt(s); GET {shown}",
                    retryable=True,
                    status=status,
                )
                wait = self.backoff_s(attempt)
                asked = self._retry_after_s(response)
                if asked is not None:
                    if asked > s.max_retry_after_s:
                        raise SourceError(
                            f"{self.label}: HTTP {status}, the server asks to retry after "
                            f"{asked:.0f} s (more than max_retry_after_s "
                            f"{s.max_retry_after_s:g}); GET {shown}",
                            retryable=True,
                            status=status,
                        )
                    wait = max(wait, asked)
            if attempt == s.max_attempts:
                raise error
            log.warning("%s (retrying in %.1f s)", error, wait)
            await self._sleep(wait)
        raise AssertionError("unreachable")  # pragma: no cover


class FetchingClient:
    """What every HTTP source shares: its `Fetcher`, the httpx client it closes if it made it
    (`_own_http`), and use as an async context manager. Subclasses set `_fetcher`, `_http`
    and `_own_http` in their `__init__`."""

    _fetcher: Fetcher
    _http: httpx.AsyncClient
    _own_http: bool

    @property
    def requests_sent(self) -> int:
        return self._fetcher.requests_sent

    async def aclose(self) -> None:
        if self._own_http:
            await self._http.aclose()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()
