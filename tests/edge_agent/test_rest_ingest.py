"""The REST telemetry ingest on loopback (port 0), spoken to with a raw HTTP/1.1 client."""

from __future__ import annotations

import asyncio
import json
import logging
import socket
from collections.abc import AsyncIterator, Iterable
from typing import Any

import pytest
from pydantic import SecretStr, ValidationError

from edge_agent.readings import Quantity, Reading
from edge_agent.rest_ingest import (
    RestIngestError,
    RestIngestServer,
    RestIngestSettings,
    parse_timestamp,
)

pytestmark = pytest.mark.integration

KEY = "test-key-0123456789abcdef"
T0 = 1_767_225_600.0  # 2026-01-01T00:00:00Z
Q = Quantity


class RecordingSink:
    def __init__(self) -> None:
        self.readings: list[Reading] = []

    def ingest(self, readings: Iterable[Reading]) -> None:
        self.readings.extend(readings)


class Response:
    def __init__(self, status: int, headers: dict[str, str], body: bytes) -> None:
        self.status = status
        self.headers = headers
        self.body = body

    @property
    def json(self) -> Any:
        return json.loads(self.body)

    @property
    def error(self) -> str:
        return str(self.json["error"])


async def read_response(reader: asyncio.StreamReader, *, head: bool = False) -> Response:
    raw = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 2.0)
    lines = raw.decode("latin-1").split("\r\n")
    status = int(lines[0].split(" ")[1])
    headers = {}
    for line in lines[1:]:
        if line:
            name, _, value = line.partition(":")
            headers[name.lower()] = value.strip()
    if head:  # a reply to HEAD announces the length of a body it does not send
        return Response(status, headers, b"")
    body = await reader.readexactly(int(headers.get("content-length", "0")))
    return Response(status, headers, body)


def request_bytes(
    method: str, path: str, body: bytes | None = None, headers: dict[str, str] | None = None
) -> bytes:
    lines = [f"{method} {path} HTTP/1.1", "Host: agent"]
    all_headers = dict(headers or {})
    if body is not None and "Content-Length" not in all_headers:
        all_headers["Content-Length"] = str(len(body))
    lines += [f"{k}: {v}" for k, v in all_headers.items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + (body or b"")


class Client:
    def __init__(self, port: int) -> None:
        self.port = port

    async def send_raw(self, data: bytes) -> Response:
        reader, writer = await asyncio.open_connection("127.0.0.1", self.port)
        try:
            writer.write(data)
            await writer.drain()
            return await read_response(reader, head=data.startswith(b"HEAD "))
        finally:
            writer.close()

    async def post(
        self,
        payload: Any,
        *,
        path: str = "/api/telemetry",
        key: str | None = KEY,
        headers: dict[str, str] | None = None,
    ) -> Response:
        all_headers = {"Content-Type": "application/json"}
        if key is not None:
            all_headers["X-API-Key"] = key
        all_headers.update(headers or {})
        body = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
        return await self.send_raw(request_bytes("POST", path, body, all_headers))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def settings(**overrides: Any) -> RestIngestSettings:
    base: dict[str, Any] = {"enabled": True, "port": 0, "api_key": SecretStr(KEY)}
    base.update(overrides)
    return RestIngestSettings(**base)


@pytest.fixture
def sink() -> RecordingSink:
    return RecordingSink()


@pytest.fixture
async def server(sink: RecordingSink) -> AsyncIterator[RestIngestServer]:
    async with RestIngestServer(settings(), sink, clock=lambda: T0) as srv:
        yield srv


@pytest.fixture
def client(server: RestIngestServer) -> Client:
    assert server.port is not None
    return Client(server.port)


# -- accepted -------------------------------------------------------------------------------


async def test_spec_fields_are_accepted(client: Client, sink: RecordingSink) -> None:
    body = {"soc": 57.3, "power": -12.5, "temperature": 24.1, "timestamp": "2026-01-01T00:00:00Z"}
    resp = await client.post(body)
    assert resp.status == 202, resp.body
    assert resp.json["accepted"] == 3
    assert resp.json["readings"][0] == {
        "quantity": "soc_pct",
        "value": 57.3,
        "timestamp": "2026-01-01T00:00:00.000Z",
    }
    assert sink.readings == [
        Reading(Q.SOC_PCT, 57.3, T0, "rest"),
        Reading(Q.ACTIVE_POWER_KW, -12.5, T0, "rest"),
        Reading(Q.TEMPERATURE_C, 24.1, T0, "rest"),
    ]


async def test_agent_names_on_spec_path_with_bearer(client: Client, sink: RecordingSink) -> None:
    body = {"soc_pct": 40, "active_power_kw": 5.0, "grid_frequency_hz": 49.98}
    resp = await client.post(
        body, path="/api/bess/telemetry", key=None, headers={"Authorization": f"Bearer {KEY}"}
    )
    assert resp.status == 202, resp.body
    assert {(r.quantity, r.value) for r in sink.readings} == {
        (Q.SOC_PCT, 40.0),
        (Q.ACTIVE_POWER_KW, 5.0),
        (Q.GRID_FREQUENCY_HZ, 49.98),
    }
    assert all(r.timestamp == T0 for r in sink.readings)  # no timestamp: receive time


async def test_batch(client: Client, sink: RecordingSink) -> None:
    batch = [
        {"soc": 50.0, "timestamp": T0 - 2},
        {"soc": 50.5, "timestamp": (T0 - 1) * 1000},  # milliseconds
        {"soc": 51.0, "power": 3.0, "timestamp": "2026-01-01T01:00:00+01:00"},
    ]
    resp = await client.post(batch)
    assert resp.status == 202, resp.body
    assert resp.json["accepted"] == 4
    assert [(r.value, r.timestamp) for r in sink.readings] == [
        (50.0, T0 - 2),
        (50.5, T0 - 1),
        (51.0, T0),
        (3.0, T0),
    ]


async def test_keep_alive_serves_several_requests(server: RestIngestServer) -> None:
    assert server.port is not None
    reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
    try:
        for soc in (10, 20):
            body = json.dumps({"soc": soc}).encode()
            writer.write(request_bytes("POST", "/api/telemetry", body, {"X-API-Key": KEY}))
            resp = await read_response(reader)
            assert resp.status == 202
            assert resp.headers["connection"] == "keep-alive"
    finally:
        writer.close()


async def test_healthz(client: Client) -> None:
    resp = await client.send_raw(request_bytes("GET", "/healthz"))
    assert (resp.status, resp.json) == (200, {"status": "ok"})


# -- refused --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ({"soc": 50, "colour": "red"}, "unknown field 'colour'; allowed: soc, power, temperature"),
        ({"soc": "abc"}, "field 'soc' must be a number, got 'abc'"),
        ({"soc": True}, "field 'soc' must be a number"),
        ({"soc": None}, "field 'soc' must be a number"),
        ({"soc": 120}, "field 'soc' = 120 is out of range; allowed 0 … 100"),
        ({"temperature": -100}, "field 'temperature' = -100 is out of range; allowed -40 … 120"),
        (
            {"soc": 50, "timestamp": "yesterday"},
            "field 'timestamp': 'yesterday' is not a timestamp",
        ),
        ({"soc": 50, "timestamp": "2026-01-01T00:00:00"}, "has no UTC offset"),
        ({"soc": 50, "timestamp": 0}, "sender's clock is probably not set"),
        ({"soc": 50, "timestamp": T0 + 3600}, "3600 s ahead of the agent's clock"),
        ({"soc": 50, "soc_pct": 50}, "fields 'soc' and 'soc_pct' both give soc_pct"),
        ({"timestamp": T0}, "no readings in the object"),
        ([], "the list is empty"),
        ("57.3", "body must be a JSON object"),
        ([{"soc": 50}, {"soc": 150}], "item 1: field 'soc' = 150 is out of range"),
        ([{"soc": 50}, 7], "item 1: must be a JSON object"),
        (b'{"soc": NaN}', "NaN is not a finite number"),
        (b'{"soc": 1e999}', "field 'soc' is not a finite number"),
        (b'{"soc": 5', "body is not valid JSON"),
        (b'{"soc": 5, "soc": 6}', "field 'soc' appears twice"),
        (b"\xff\xfe", "body is not UTF-8 text"),
    ],
)
async def test_bad_body_is_400_with_a_clear_message(
    client: Client, sink: RecordingSink, body: Any, message: str
) -> None:
    resp = await client.post(body)
    assert resp.status == 400
    assert message in resp.error
    assert sink.readings == []  # a batch is all or nothing


async def test_unknown_field_message_lists_agent_names(client: Client) -> None:
    resp = await client.post({"state_of_charge": 50})
    assert "soc_pct" in resp.error
    assert "active_power_kw" in resp.error
    assert "timestamp" in resp.error


@pytest.mark.parametrize(
    ("headers", "message"),
    [
        ({}, "missing API key: send it in the X-API-Key header"),
        ({"X-API-Key": "wrong-key-0123456789"}, "invalid API key"),
        ({"Authorization": "Bearer wrong-key-0123456789"}, "invalid API key"),
        ({"Authorization": f"Basic {KEY}"}, "missing API key"),
        ({"X-API-Key": "Ünicode-wrong"}, "invalid API key"),
    ],
)
async def test_without_valid_key_is_401(
    client: Client,
    sink: RecordingSink,
    caplog: pytest.LogCaptureFixture,
    headers: dict[str, str],
    message: str,
) -> None:
    caplog.set_level(logging.DEBUG)
    body = json.dumps({"soc": 50}).encode()
    raw = request_bytes("POST", "/api/telemetry", body, headers | {"Content-Type": "x"})
    resp = await client.send_raw(raw)
    assert resp.status == 401
    assert message in resp.error
    assert resp.headers["www-authenticate"] == "Bearer"
    assert sink.readings == []
    assert all(KEY not in rec.getMessage() for rec in caplog.records)


async def test_too_large_is_413_without_reading_the_body(server: RestIngestServer) -> None:
    assert server.port is not None
    reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
    try:
        limit = server.settings.max_body_bytes
        head = request_bytes("POST", "/api/telemetry", None, {"X-API-Key": KEY})
        head = head.replace(b"\r\n\r\n", f"\r\nContent-Length: {limit + 1}\r\n\r\n".encode())
        writer.write(head)  # the body is never sent: the answer must not wait for it
        resp = await read_response(reader)
        assert resp.status == 413
        assert f"larger than the limit of {limit} bytes" in resp.error
        assert resp.headers["connection"] == "close"
        assert await asyncio.wait_for(reader.read(), 1.0) == b""  # closed
    finally:
        writer.close()


async def test_too_large_body_sent_at_once_still_gets_its_413(server: RestIngestServer) -> None:
    """The server reads and drops what the client still sends, so no reset eats the 413."""
    assert server.port is not None
    body = b"[" + b'{"soc": 50},' * 30_000 + b'{"soc": 50}]'
    assert len(body) > server.settings.max_body_bytes
    resp = await Client(server.port).post(body)
    assert resp.status == 413


async def test_head_healthz_has_no_body(client: Client) -> None:
    resp = await client.send_raw(request_bytes("HEAD", "/healthz"))
    assert resp.status == 200
    assert resp.headers["content-length"] == "15"


async def test_a_failing_sink_gives_500_and_the_server_keeps_serving(
    caplog: pytest.LogCaptureFixture,
) -> None:
    class BrokenSink:
        def ingest(self, readings: Iterable[Reading]) -> None:
            raise RuntimeError("sink bug")

    async with RestIngestServer(settings(), BrokenSink()) as srv:
        assert srv.port is not None
        client = Client(srv.port)
        resp = await client.post({"soc": 50})
        assert (resp.status, resp.error) == (500, "internal error")
        assert (await client.send_raw(request_bytes("GET", "/healthz"))).status == 200
    assert any("unexpected error" in rec.getMessage() for rec in caplog.records)


@pytest.mark.parametrize(
    ("raw", "status", "message"),
    [
        (request_bytes("GET", "/api/nothing"), 404, "no such endpoint '/api/nothing'"),
        (request_bytes("GET", "/"), 404, "POST telemetry to /api/telemetry or /api/bess/telemetry"),
        (request_bytes("GET", "/api/telemetry"), 405, "GET is not allowed here; use POST"),
        (request_bytes("PUT", "/api/bess/telemetry", b"{}"), 405, "use POST"),
        (request_bytes("POST", "/healthz", b"{}"), 405, "use GET"),
        (request_bytes("POST", "/api/telemetry", None, {"X-API-Key": KEY}), 411, "Content-Length"),
        (
            request_bytes(
                "POST",
                "/api/telemetry",
                None,
                {"X-API-Key": KEY, "Transfer-Encoding": "chunked"},
            ),
            411,
            "Transfer-Encoding is not accepted",
        ),
        (b"HELLO\r\n\r\n", 400, "malformed request line"),
        (b"GET / HTTP/2.0\r\n\r\n", 400, "unsupported protocol"),
        (b"GET / HTTP/1.1\r\nbad header\r\n\r\n", 400, "malformed header line"),
        (
            request_bytes("POST", "/api/telemetry", b"{}", {"Content-Length": "-1"}),
            400,
            "invalid Content-Length",
        ),
        (
            b"POST /api/telemetry HTTP/1.1\r\nContent-Length: 2\r\nContent-Length: 3\r\n\r\n{}",
            400,
            "given more than once",
        ),
        (b"GET / HTTP/1.1\r\nX-Big: " + b"a" * 10_000 + b"\r\n\r\n", 431, "headers exceed"),
    ],
)
async def test_other_requests(client: Client, raw: bytes, status: int, message: str) -> None:
    resp = await client.send_raw(raw)
    assert resp.status == status
    assert message in resp.error


async def test_405_names_the_allowed_method(client: Client) -> None:
    resp = await client.send_raw(request_bytes("GET", "/api/telemetry"))
    assert resp.headers["allow"] == "POST"


async def test_a_silent_client_is_dropped(sink: RecordingSink) -> None:
    async with RestIngestServer(settings(request_timeout_s=0.1), sink) as srv:
        assert srv.port is not None
        reader, writer = await asyncio.open_connection("127.0.0.1", srv.port)
        writer.write(b"POST /api/telemetry HTTP/1.1\r\n")  # and then nothing
        assert await asyncio.wait_for(reader.read(), 1.0) == b""
        writer.close()


async def test_connection_limit(sink: RecordingSink) -> None:
    async with RestIngestServer(settings(max_connections=1), sink) as srv:
        assert srv.port is not None
        _, first = await asyncio.open_connection("127.0.0.1", srv.port)
        await asyncio.sleep(0.05)  # let the server take the first connection
        resp = await Client(srv.port).send_raw(request_bytes("GET", "/healthz"))
        assert resp.status == 503
        first.close()
        assert srv.stats.connections_refused == 1


# -- start-up -------------------------------------------------------------------------------


async def test_disabled_does_not_listen(sink: RecordingSink) -> None:
    port = free_port()
    s = RestIngestSettings(enabled=False, port=port)  # no key needed when disabled
    async with RestIngestServer(s, sink) as srv:
        assert not srv.listening
        assert srv.port is None
        with pytest.raises(OSError):
            await asyncio.open_connection("127.0.0.1", port)


@pytest.mark.parametrize(
    ("key", "message"),
    [
        (None, "no API key is set: set BESS_API_KEY"),
        ("   ", "no API key is set"),
        ("bess_telemetry_key", "sample key printed in the spec"),
        ("short", "shorter than 16 characters"),
    ],
)
def test_enabled_without_a_usable_key_is_refused(key: str | None, message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        RestIngestSettings(enabled=True, api_key=key)  # type: ignore[arg-type]


async def test_server_refuses_to_start_without_key(sink: RecordingSink) -> None:
    unchecked = RestIngestSettings.model_construct(enabled=True, port=0, api_key=None)
    with pytest.raises(RestIngestError, match="BESS_API_KEY"):
        async with RestIngestServer(unchecked, sink):
            pass


async def test_port_in_use_is_a_clear_error(server: RestIngestServer, sink: RecordingSink) -> None:
    with pytest.raises(RestIngestError, match=r"cannot listen for REST telemetry on 127\.0\.0\.1"):
        async with RestIngestServer(settings(port=server.port), sink):
            pass


async def test_key_never_in_repr_or_logs(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    s = settings()
    assert KEY not in repr(s)
    assert KEY not in s.model_dump_json()
    async with RestIngestServer(s, RecordingSink()):
        pass
    assert all(KEY not in rec.getMessage() for rec in caplog.records)


# -- timestamps (pure) ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("2026-01-01T00:00:00Z", T0),
        ("2026-01-01T00:00:00.500+00:00", T0 + 0.5),
        ("2026-01-01T01:00:00+01:00", T0),
        (T0, T0),
        (int(T0), T0),
        (T0 * 1000, T0),
        (str(int(T0)), T0),
    ],
)
def test_parse_timestamp(value: object, expected: float) -> None:
    assert parse_timestamp(value) == pytest.approx(expected)


@pytest.mark.parametrize(
    "value", ["", "2026-01-01 00:00:00", "noon", True, None, [], 12.0, float("nan"), 5e12 * 1000]
)
def test_parse_timestamp_refuses(value: object) -> None:
    with pytest.raises(ValueError):
        parse_timestamp(value)
