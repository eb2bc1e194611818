"""Telemetry pushed by local systems over HTTP: ``POST /api/telemetry`` (and the spec's
``/api/bess/telemetry``), authenticated by an API key, delivered to the coordinator as
readings from source ``"rest"``.

Why a small HTTP/1.1 server on ``asyncio.start_server`` and not ``http.server``: the agent must
stay light (no web framework), and this server lives in the agent's event loop, so accepted
readings go straight to the coordinator on its own thread (no locks, no hand-over), every
request has a deadline (a slow or silent client cannot hold a thread), the number of
connections is bounded, and shutdown is an ordinary ``async with``. The parser is deliberately
strict and small: HTTP/1.0 or 1.1, ``Content-Length`` required for bodies (no chunked
encoding), bounded header and body sizes, persistent connections only after a fully read
request.

Endpoints::

    POST /api/telemetry, /api/bess/telemetry   JSON object or list of objects -> 202 / 400 /
                                                401 / 411 / 413
    GET  /healthz                               {"status": "ok"} (no key needed, no data)

Body fields: the spec's ``soc``, ``power`` (kW, + = discharge), ``temperature`` (°C) and
``voltage``, ``frequency``, ``soh``, ``reactive_power``; or the agent's own quantity names
(``soc_pct``, ``active_power_kw``, ...); plus an optional ``timestamp`` (ISO 8601 with a UTC
offset, or Unix seconds / milliseconds; default: the receive time). A batch is accepted
completely or not at all, so a client can resend it after a 400 without duplicates.

Errors:

    RestIngestError      the server cannot start (no API key, port in use)
    TelemetryError       a request body that is not valid telemetry (answered with 400);
                         also ValueError
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import ipaddress
import json
import logging
import math
import time
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from types import MappingProxyType, TracebackType
from typing import Any, Self

from pydantic import BaseModel, ConfigDict, Field, SecretStr, model_validator

from .readings import PLAUSIBLE, Quantity, Reading, ReadingSink

log = logging.getLogger(__name__)

Clock = Callable[[], float]

TELEMETRY_PATHS = ("/api/telemetry", "/api/bess/telemetry")
HEALTH_PATH = "/healthz"
SOURCE_NAME = "rest"
MAX_HEADER_BYTES = 8192
LINGER_S = 1.0  # after an error reply, read (and drop) what the client still sends
LINGER_MAX_BYTES = 1 << 20
SHUTDOWN_GRACE_S = 2.0
SPEC_SAMPLE_KEY = "bess_telemetry_key"  # printed in the spec; never a valid key (DESIGN 11)
MIN_KEY_LENGTH = 16
KEY_HELP = "generate one with: python -c 'import secrets; print(secrets.token_urlsafe(32))'"

# The spec's field names first, then the agent's own quantity names.
SPEC_FIELDS: Mapping[str, Quantity] = MappingProxyType(
    {
        "soc": Quantity.SOC_PCT,
        "power": Quantity.ACTIVE_POWER_KW,
        "temperature": Quantity.TEMPERATURE_C,
        "voltage": Quantity.VOLTAGE_V,
        "frequency": Quantity.GRID_FREQUENCY_HZ,
        "soh": Quantity.SOH_PCT,
        "reactive_power": Quantity.REACTIVE_POWER_KVAR,
    }
)
FIELDS: Mapping[str, Quantity] = MappingProxyType({**SPEC_FIELDS, **{q.value: q for q in Quantity}})
TIMESTAMP_FIELD = "timestamp"
FIELDS_HELP = (
    f"{', '.join(SPEC_FIELDS)} (power in kW, + = discharge), "
    f"or {', '.join(q.value for q in Quantity)}; plus {TIMESTAMP_FIELD}"
)

# Timestamps before 2000 or after 2100 come from an unset or broken clock.
EARLIEST_TIMESTAMP = 946_684_800.0  # 2000-01-01T00:00:00Z
LATEST_TIMESTAMP = 4_102_444_800.0  # 2100-01-01T00:00:00Z
MS_THRESHOLD = 1e11  # a Unix time above this is milliseconds (1e11 s is the year 5138)

_REASONS = {
    200: "OK",
    202: "Accepted",
    400: "Bad Request",
    401: "Unauthorized",
    404: "Not Found",
    405: "Method Not Allowed",
    408: "Request Timeout",
    411: "Length Required",
    413: "Content Too Large",
    431: "Request Header Fields Too Large",
    500: "Internal Server Error",
    503: "Service Unavailable",
}


class RestIngestError(Exception):
    """The REST ingest cannot start."""


class TelemetryError(ValueError):
    """A request body that is not valid telemetry; the message names the field and the rule."""


# -- settings -------------------------------------------------------------------------------


class RestIngestSettings(BaseModel):
    """The local telemetry endpoint (spec: ``BESS_REST_ENABLED``, ``BESS_API_KEY``)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    enabled: bool = False
    host: str = "127.0.0.1"  # loopback unless local systems on the LAN must reach it
    port: int = Field(default=9520, ge=0, le=65535)  # 0 = any free port (tests)
    api_key: SecretStr | None = None
    max_body_bytes: int = Field(default=256 * 1024, ge=64, le=16 * 1024 * 1024)
    request_timeout_s: float = Field(default=10.0, gt=0)  # whole request, and keep-alive idle
    max_connections: int = Field(default=32, ge=1)
    # Refuse timestamps further ahead; the coordinator would count them stale anyway.
    max_clock_skew_s: float = Field(default=10.0, ge=0)

    @model_validator(mode="after")
    def _key_when_enabled(self) -> RestIngestSettings:
        problem = api_key_problem(self)
        if problem is not None:
            raise ValueError(problem)
        return self


def api_key_problem(settings: RestIngestSettings) -> str | None:
    """Why ``settings`` cannot serve, in plain language; None when it can."""
    if not settings.enabled:
        return None
    if settings.api_key is None or not settings.api_key.get_secret_value().strip():
        return (
            "the REST telemetry ingest is enabled (BESS_REST_ENABLED=true) but no API key is "
            f"set: set BESS_API_KEY; {KEY_HELP}"
        )
    key = settings.api_key.get_secret_value()
    if key == SPEC_SAMPLE_KEY:
        return f"BESS_API_KEY is the sample key printed in the spec; use a secret one: {KEY_HELP}"
    if len(key) < MIN_KEY_LENGTH:
        return f"BESS_API_KEY is shorter than {MIN_KEY_LENGTH} characters; {KEY_HELP}"
    if key != key.strip() or any(not c.isprintable() for c in key) or not key.isascii():
        return "BESS_API_KEY must be printable ASCII without surrounding spaces"
    return None


# -- body parsing (pure) --------------------------------------------------------------------


def parse_timestamp(value: object) -> float:
    """Unix seconds from ISO 8601 with a UTC offset, or Unix seconds or milliseconds.

    Raises ``ValueError`` naming what is wrong (no offset, not a time, outside 2000 … 2100).
    """
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        raise ValueError(
            f"{value!r} is not a timestamp; give ISO 8601 with an offset "
            "(2026-01-01T12:00:00Z) or Unix seconds or milliseconds"
        )
    seconds: float
    if isinstance(value, str):
        text = value.strip()
        try:
            number = float(text)
        except ValueError:
            try:
                parsed = datetime.fromisoformat(text)
            except ValueError:
                raise ValueError(
                    f"{value!r} is not a timestamp; give ISO 8601 with an offset "
                    "(2026-01-01T12:00:00Z) or Unix seconds or milliseconds"
                ) from None
            if parsed.tzinfo is None:
                raise ValueError(
                    f"{value!r} has no UTC offset; add Z or +01:00 so the time is unambiguous"
                ) from None
            seconds = parsed.timestamp()
        else:
            seconds = _unix_seconds(number, value)
    else:
        seconds = _unix_seconds(float(value), value)
    if not EARLIEST_TIMESTAMP <= seconds < LATEST_TIMESTAMP:
        raise ValueError(
            f"{value!r} is outside 2000 … 2100; the sender's clock is probably not set"
        )
    return seconds


def _unix_seconds(number: float, original: object) -> float:
    if not math.isfinite(number):
        raise ValueError(f"{original!r} is not a finite number")
    return number / 1000.0 if abs(number) >= MS_THRESHOLD else number


def iso_utc(timestamp: float) -> str:
    """Unix seconds as ISO 8601 UTC with milliseconds and a ``Z``."""
    text = datetime.fromtimestamp(timestamp, UTC).isoformat(timespec="milliseconds")
    return text.replace("+00:00", "Z")


def _reject_constant(name: str) -> Any:
    raise TelemetryError(f"{name} is not a finite number; send finite numbers only")


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise TelemetryError(f"field {key!r} appears twice in one object")
        out[key] = value
    return out


def load_json(body: bytes) -> object:
    """Strict JSON: UTF-8, no NaN/Infinity, no duplicate keys."""
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError:
        raise TelemetryError("body is not UTF-8 text") from None
    try:
        return json.loads(text, parse_constant=_reject_constant, object_pairs_hook=_unique_keys)
    except TelemetryError:
        raise
    except (ValueError, RecursionError) as exc:
        raise TelemetryError(f"body is not valid JSON: {exc}") from None


def parse_telemetry(
    document: object,
    *,
    received_at: float,
    source: str = SOURCE_NAME,
    max_clock_skew_s: float = 10.0,
) -> list[Reading]:
    """Readings from a telemetry body (an object or a non-empty list of objects).

    All or nothing: raises ``TelemetryError`` naming the item, the field and what is allowed.
    """
    if isinstance(document, dict):
        items: list[object] = [document]
        batch = False
    elif isinstance(document, list):
        if not document:
            raise TelemetryError("the list is empty; send at least one telemetry object")
        items = document
        batch = True
    else:
        raise TelemetryError(
            "body must be a JSON object such as "
            '{"soc": 57.3, "power": -12.5, "temperature": 24.1} or a list of such objects'
        )
    readings: list[Reading] = []
    for index, item in enumerate(items):
        where = f"item {index}: " if batch else ""
        if not isinstance(item, dict):
            raise TelemetryError(f"{where}must be a JSON object, got {type(item).__name__}")
        readings.extend(
            _parse_item(item, where, received_at, source=source, max_skew_s=max_clock_skew_s)
        )
    return readings


def _parse_item(
    item: dict[str, Any], where: str, received_at: float, *, source: str, max_skew_s: float
) -> list[Reading]:
    timestamp = received_at
    if TIMESTAMP_FIELD in item:
        try:
            timestamp = parse_timestamp(item[TIMESTAMP_FIELD])
        except ValueError as exc:
            raise TelemetryError(f"{where}field 'timestamp': {exc}") from None
        ahead = timestamp - received_at
        if ahead > max_skew_s:
            raise TelemetryError(
                f"{where}field 'timestamp' is {ahead:.0f} s ahead of the agent's clock "
                f"(at most {max_skew_s:g} s allowed); check the sender's clock (NTP) or omit "
                "the timestamp to use the receive time"
            )
    readings: list[Reading] = []
    given: dict[Quantity, str] = {}
    for name, raw in item.items():
        if name == TIMESTAMP_FIELD:
            continue
        quantity = FIELDS.get(name)
        if quantity is None:
            raise TelemetryError(f"{where}unknown field {name!r}; allowed: {FIELDS_HELP}")
        if quantity in given:
            raise TelemetryError(
                f"{where}fields {given[quantity]!r} and {name!r} both give {quantity.value}; "
                "send one of them"
            )
        given[quantity] = name
        if isinstance(raw, bool) or not isinstance(raw, int | float):
            raise TelemetryError(f"{where}field {name!r} must be a number, got {raw!r}")
        try:
            value = float(raw)
        except OverflowError:
            value = math.inf
        if not math.isfinite(value):
            raise TelemetryError(f"{where}field {name!r} is not a finite number")
        bounds = PLAUSIBLE.get(quantity)
        if bounds is not None and not bounds[0] <= value <= bounds[1]:
            raise TelemetryError(
                f"{where}field {name!r} = {value:g} is out of range; allowed "
                f"{bounds[0]:g} … {bounds[1]:g}"
            )
        readings.append(Reading(quantity=quantity, value=value, timestamp=timestamp, source=source))
    if not readings:
        raise TelemetryError(
            f"{where}no readings in the object; give at least one of: {FIELDS_HELP}"
        )
    return readings


# -- HTTP -----------------------------------------------------------------------------------


class _HttpError(Exception):
    """Answer with ``status`` and ``message``, then close the connection."""

    def __init__(self, status: int, message: str, headers: Mapping[str, str] | None = None):
        super().__init__(message)
        self.status = status
        self.message = message
        self.headers = dict(headers or {})


@dataclass(frozen=True)
class _Reply:
    status: int
    body: dict[str, Any]
    headers: Mapping[str, str] = field(default_factory=dict)
    body_unread: bool = False  # the request's body is still on the wire: close afterwards

    @classmethod
    def error(cls, status: int, message: str, body_unread: bool = False, **headers: str) -> _Reply:
        return cls(status, {"error": message}, headers, body_unread)


@dataclass(frozen=True)
class _Request:
    method: str
    path: str
    version: str
    headers: Mapping[str, str]

    @property
    def keep_alive(self) -> bool:
        connection = self.headers.get("connection", "").lower()
        if self.version == "HTTP/1.0":
            return connection == "keep-alive"
        return connection != "close"


@dataclass
class RestIngestStats:
    responses: Counter[int] = field(default_factory=Counter)  # by status code
    readings_accepted: int = 0
    connections_refused: int = 0  # over max_connections

    def as_dict(self) -> dict[str, Any]:
        return {
            "responses": dict(self.responses),
            "readings_accepted": self.readings_accepted,
            "connections_refused": self.connections_refused,
        }


_SINGLE_HEADERS = frozenset(
    {"content-length", "transfer-encoding", "authorization", "x-api-key", "host"}
)


async def _read_head(reader: asyncio.StreamReader) -> _Request | None:
    """The request line and headers; None on a clean end of stream before a request."""
    try:
        head = await reader.readuntil(b"\r\n\r\n")
    except asyncio.IncompleteReadError as exc:
        if not exc.partial.strip():
            return None
        raise _HttpError(400, "incomplete request") from None
    except asyncio.LimitOverrunError:
        raise _HttpError(431, f"request headers exceed {MAX_HEADER_BYTES} bytes") from None
    lines = head[:-4].decode("latin-1").split("\r\n")
    parts = lines[0].split(" ")
    if len(parts) != 3 or not parts[0].isalpha() or not parts[1]:
        raise _HttpError(400, "malformed request line; expected 'METHOD /path HTTP/1.1'")
    method, target, version = parts
    if version not in ("HTTP/1.1", "HTTP/1.0"):
        raise _HttpError(400, f"unsupported protocol {version!r}; use HTTP/1.1")
    headers: dict[str, str] = {}
    for line in lines[1:]:
        name, sep, value = line.partition(":")
        if not sep or not name or name != name.strip() or line[0] in " \t":
            raise _HttpError(400, f"malformed header line {line[:60]!r}")
        key = name.lower()
        if key in headers and key in _SINGLE_HEADERS:
            raise _HttpError(400, f"header {name!r} given more than once")
        headers[key] = value.strip()
    return _Request(method, target.split("?", 1)[0], version, headers)


def _response(
    status: int,
    body: Mapping[str, Any] | None,
    *,
    keep_alive: bool,
    head_only: bool = False,
    headers: Mapping[str, str] | None = None,
) -> bytes:
    payload = json.dumps(body, separators=(",", ":"), ensure_ascii=False).encode() if body else b""
    lines = [
        f"HTTP/1.1 {status} {_REASONS.get(status, 'Error')}",
        "Content-Type: application/json",
        f"Content-Length: {len(payload)}",
        "Cache-Control: no-store",
        f"Connection: {'keep-alive' if keep_alive else 'close'}",
        *(f"{k}: {v}" for k, v in (headers or {}).items()),
    ]
    head = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")
    return head if head_only else head + payload


class RestIngestServer:
    """``async with RestIngestServer(settings, sink) as server``: serve until the block ends.

    Disabled settings make it a no-op (nothing listens). ``server.port`` is the bound port.
    """

    def __init__(
        self,
        settings: RestIngestSettings,
        sink: ReadingSink,
        *,
        clock: Clock = time.time,
        source: str = SOURCE_NAME,
    ) -> None:
        self.settings = settings
        self.stats = RestIngestStats()
        self._sink = sink
        self._clock = clock
        self._source = source
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()  # connections being served
        self._tasks: set[asyncio.Task[Any]] = set()  # their handlers, refused ones included
        self._key = (
            settings.api_key.get_secret_value().encode() if settings.api_key is not None else b""
        )
        self._unauthorized_logged = False

    @property
    def listening(self) -> bool:
        return self._server is not None and self._server.is_serving()

    @property
    def port(self) -> int | None:
        """The bound TCP port while listening (useful with port 0)."""
        if self._server is None or not self._server.sockets:
            return None
        return int(self._server.sockets[0].getsockname()[1])

    async def __aenter__(self) -> Self:
        s = self.settings
        if not s.enabled:
            log.info("REST telemetry ingest disabled (BESS_REST_ENABLED is not true)")
            return self
        problem = api_key_problem(s)
        if problem is not None:
            raise RestIngestError(problem)
        try:
            self._server = await asyncio.start_server(
                self._serve_connection, s.host, s.port, limit=MAX_HEADER_BYTES
            )
        except OSError as exc:
            raise RestIngestError(
                f"cannot listen for REST telemetry on {s.host}:{s.port}: {exc.strerror or exc}"
                "; choose another port or stop the program using it"
            ) from exc
        log.info(
            "REST telemetry ingest listening on http://%s:%d%s",
            s.host,
            self.port,
            " and ".join(TELEMETRY_PATHS),
        )
        if not _is_loopback(s.host):
            log.warning(
                "REST telemetry ingest listens on %s: the API key travels unencrypted, "
                "so use it only on a trusted local network",
                s.host,
            )
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        server, self._server = self._server, None
        if server is None:
            return
        server.close()
        for writer in list(self._writers):
            writer.close()  # the handlers see end of stream and finish
        tasks = set(self._tasks)
        if tasks:
            _, pending = await asyncio.wait(tasks, timeout=SHUTDOWN_GRACE_S)
            for task in pending:
                task.cancel()
            await asyncio.gather(*pending, return_exceptions=True)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(server.wait_closed(), SHUTDOWN_GRACE_S)

    # -- connection handling ---------------------------------------------------------------
    async def _serve_connection(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        task = asyncio.current_task()
        if task is not None:
            self._tasks.add(task)
        try:
            if len(self._writers) >= self.settings.max_connections:
                self.stats.connections_refused += 1
                body = {"error": "too many connections; retry shortly"}
                await self._send(writer, 503, body, keep_alive=False)
                return
            self._writers.add(writer)
            keep_alive = True
            while keep_alive:
                keep_alive = await self._serve_request(reader, writer)
        except (ConnectionError, asyncio.IncompleteReadError):
            pass  # the client went away
        except Exception:  # a bug here must not take the agent down
            log.exception("REST ingest: unexpected error while serving a request")
            with contextlib.suppress(ConnectionError):
                await self._send(writer, 500, {"error": "internal error"}, keep_alive=False)
        finally:
            self._writers.discard(writer)
            await _close(writer, reader)
            if task is not None:
                self._tasks.discard(task)

    async def _serve_request(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> bool:
        """Serve one request; True if the connection may carry another one."""
        try:
            async with asyncio.timeout(self.settings.request_timeout_s):
                request = await _read_head(reader)
                if request is None:
                    return False
                reply = await self._route(request, reader)
        except TimeoutError:
            return False  # idle keep-alive or a client too slow to send its request
        except _HttpError as err:
            await self._send(writer, err.status, {"error": err.message}, False, err.headers)
            return False
        keep = request.keep_alive and not reply.body_unread
        head_only = request.method == "HEAD"
        await self._send(writer, reply.status, reply.body, keep, reply.headers, head_only=head_only)
        return keep

    async def _route(self, request: _Request, reader: asyncio.StreamReader) -> _Reply:
        length = _content_length(request)
        unread = length not in (None, 0)  # a body we do not read forbids keep-alive
        if request.path == HEALTH_PATH:
            if request.method not in ("GET", "HEAD"):
                return _Reply.error(
                    405, f"{request.method} is not allowed here; use GET", unread, Allow="GET, HEAD"
                )
            return _Reply(200, {"status": "ok"}, body_unread=unread)
        if request.path not in TELEMETRY_PATHS:
            return _Reply.error(
                404,
                f"no such endpoint {request.path!r}; POST telemetry to "
                f"{' or '.join(TELEMETRY_PATHS)}",
                unread,
            )
        if request.method != "POST":
            return _Reply.error(
                405, f"{request.method} is not allowed here; use POST", unread, Allow="POST"
            )
        auth_problem = self._auth_problem(request)
        if auth_problem is not None:
            return _Reply.error(401, auth_problem, unread, **{"WWW-Authenticate": "Bearer"})
        if length is None:
            return _Reply.error(411, "Content-Length is required (chunked bodies are refused)")
        if length > self.settings.max_body_bytes:
            return _Reply.error(
                413,
                f"body of {length} bytes is larger than the limit of "
                f"{self.settings.max_body_bytes} bytes; send smaller batches",
                unread,
            )
        raw = await reader.readexactly(length)
        try:
            readings = parse_telemetry(
                load_json(raw),
                received_at=self._clock(),
                source=self._source,
                max_clock_skew_s=self.settings.max_clock_skew_s,
            )
        except TelemetryError as exc:
            return _Reply.error(400, str(exc))
        self._sink.ingest(readings)
        self.stats.readings_accepted += len(readings)
        accepted = [
            {"quantity": r.quantity.value, "value": r.value, "timestamp": iso_utc(r.timestamp)}
            for r in readings
        ]
        return _Reply(202, {"accepted": len(readings), "readings": accepted})

    def _auth_problem(self, request: _Request) -> str | None:
        presented = request.headers.get("x-api-key")
        if presented is None:
            scheme, _, token = request.headers.get("authorization", "").partition(" ")
            if scheme.lower() == "bearer" and token.strip():
                presented = token.strip()
        if not presented:
            return (
                "missing API key: send it in the X-API-Key header "
                "or as 'Authorization: Bearer <key>'"
            )
        if not hmac.compare_digest(presented.encode("latin-1"), self._key):
            if not self._unauthorized_logged:
                self._unauthorized_logged = True
                log.warning("REST ingest: request with an invalid API key refused (logged once)")
            return "invalid API key"
        return None

    async def _send(
        self,
        writer: asyncio.StreamWriter,
        status: int,
        body: Mapping[str, Any] | None,
        keep_alive: bool,
        headers: Mapping[str, str] | None = None,
        *,
        head_only: bool = False,
    ) -> None:
        self.stats.responses[status] += 1
        writer.write(
            _response(status, body, keep_alive=keep_alive, head_only=head_only, headers=headers)
        )
        await writer.drain()


def _content_length(request: _Request) -> int | None:
    if "transfer-encoding" in request.headers:
        raise _HttpError(
            411, "Transfer-Encoding is not accepted; send the body with a Content-Length"
        )
    text = request.headers.get("content-length")
    if text is None:
        return None
    if not text.isdigit() or not text.isascii() or len(text) > 12:
        raise _HttpError(400, f"invalid Content-Length {text[:20]!r}")
    return int(text)


async def _close(writer: asyncio.StreamWriter, reader: asyncio.StreamReader) -> None:
    """Lingering close: end our side, discard what the client still sends, then close.

    Closing a socket with unread input makes the kernel send a reset, which can destroy the
    response (a 413 or 503) before the client has read it.
    """
    with contextlib.suppress(ConnectionError, OSError, TimeoutError, RuntimeError):
        if not writer.is_closing() and writer.can_write_eof():
            writer.write_eof()
            async with asyncio.timeout(LINGER_S):
                discarded = 0
                while discarded < LINGER_MAX_BYTES:
                    chunk = await reader.read(65536)
                    if not chunk:
                        break
                    discarded += len(chunk)
    writer.close()
    with contextlib.suppress(ConnectionError, OSError):
        await writer.wait_closed()


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
