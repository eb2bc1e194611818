"""The ENTSO-E client: pacing, retries, the year split and the token's secrecy, with
httpx.MockTransport and a fake clock (unit) and against a real loopback HTTP server."""

from __future__ import annotations

import asyncio
import itertools
import logging
import threading
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest

from control_plane.market.entsoe import EntsoeClient
from control_plane.market.fetching import RetrySettings, redact
from control_plane.market.models import DocumentError, NoDataError, Resolution, SourceError, zone

from .a44 import AT, acknowledgement, document, series

TOKEN = "0123abcd-secret-token-4567"  # noqa: S105 (a test value)
DATA = Path(__file__).parent / "data"
DE_LU = zone("DE_LU")
DAY = datetime(2025, 9, 30, 22, tzinfo=UTC)


class FakeTime:
    """A monotonic clock that only moves when the code under test sleeps."""

    def __init__(self) -> None:
        self.now = 1000.0
        self.sleeps: list[float] = []

    def clock(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds


Handler = Callable[[httpx.Request], httpx.Response]


def _client(handler: Handler, fake: FakeTime, **options: object) -> EntsoeClient:
    http = httpx.AsyncClient(transport=httpx.MockTransport(handler))
    return EntsoeClient(
        TOKEN,
        http=http,
        clock=fake.clock,
        sleep=fake.sleep,
        jitter=lambda: 0.5,
        **options,  # type: ignore[arg-type]
    )


def _day_doc(start: datetime, days: int = 1, base: float = 50.0) -> bytes:
    return document(
        *(
            series(
                [base + d + i / 100 for i in range(24)],
                start=start + timedelta(days=d),
                end=start + timedelta(days=d + 1),
                resolution="PT60M",
            )
            for d in range(days)
        )
    )


async def test_fetch_sends_the_a44_query_and_parses_the_answer() -> None:
    fake = FakeTime()
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(200, content=(DATA / "entsoe_a44_de_lu_2025-10-01.xml").read_bytes())

    async with _client(handler, fake) as client:
        points = await client.fetch(DE_LU, DAY, DAY + timedelta(days=1))
    assert len(points) == 216
    (request,) = seen
    params = dict(request.url.params)
    assert params == {
        "documentType": "A44",
        "in_Domain": "10Y1001A1001A82H",
        "out_Domain": "10Y1001A1001A82H",
        "periodStart": "202509302200",
        "periodEnd": "202510012200",
        "securityToken": TOKEN,
    }
    assert str(request.url).startswith("https://web-api.tp.entsoe.eu/api?")


async def test_points_outside_the_range_are_dropped() -> None:
    fake = FakeTime()
    async with _client(lambda r: httpx.Response(200, content=_day_doc(DAY, 2)), fake) as client:
        points = await client.fetch(DE_LU, DAY + timedelta(hours=5), DAY + timedelta(hours=30))
    assert len(points) == 25
    assert points[0].start == DAY + timedelta(hours=5)
    assert points[-1].start == DAY + timedelta(hours=29)


async def test_an_answer_for_another_zone_is_refused() -> None:
    fake = FakeTime()
    other = document(
        series([1.0] * 24, start=DAY, end=DAY + timedelta(days=1), resolution="PT60M", eic=AT)
    )
    async with _client(lambda r: httpx.Response(200, content=other), fake) as client:
        with pytest.raises(DocumentError, match="prices of zone AT, not of the requested DE_LU"):
            await client.fetch(DE_LU, DAY, DAY + timedelta(days=1))


async def test_requests_are_at_most_one_per_second() -> None:
    fake = FakeTime()
    starts: list[float] = []

    def handler(request: httpx.Request) -> httpx.Response:
        starts.append(fake.now)
        fake.now += 0.2  # the request itself takes 200 ms
        return httpx.Response(200, content=_day_doc(DAY))

    async with _client(handler, fake) as client:
        for _ in range(4):
            await client.fetch(DE_LU, DAY, DAY + timedelta(days=1))
        # concurrent fetches queue too
        await asyncio.gather(*(client.fetch(DE_LU, DAY, DAY + timedelta(days=1)) for _ in range(3)))
    assert len(starts) == 7
    gaps = [b - a for a, b in itertools.pairwise(starts)]
    assert all(gap >= 1.0 - 1e-9 for gap in gaps), gaps
    assert fake.sleeps and all(s == pytest.approx(0.8) for s in fake.sleeps)


async def test_retry_on_429_then_success_honours_retry_after() -> None:
    fake = FakeTime()
    answers = [
        httpx.Response(429, headers={"Retry-After": "7"}),
        httpx.Response(503),
        httpx.Response(200, content=_day_doc(DAY)),
    ]
    starts: list[float] = []

    def handler(request: httpx.Request) -> httpx.Response:
        starts.append(fake.now)
        return answers.pop(0)

    async with _client(handler, fake) as client:
        points = await client.fetch(DE_LU, DAY, DAY + timedelta(days=1))
        assert client.requests_sent == 3
    assert len(points) == 24
    # first wait: Retry-After 7 s beats the 1 s backoff; second: backoff 2 s (x jitter 0.75)
    assert starts[1] - starts[0] == pytest.approx(7.0)
    assert starts[2] - starts[1] == pytest.approx(1.5)


async def test_backoff_is_exponential_and_gives_up_after_max_attempts() -> None:
    fake = FakeTime()
    starts: list[float] = []

    def handler(request: httpx.Request) -> httpx.Response:
        starts.append(fake.now)
        return httpx.Response(502, text="Bad Gateway")

    async with _client(handler, fake, max_attempts=4) as client:
        with pytest.raises(SourceError, match=r"HTTP 502 after 4 attempt\(s\)") as caught:
            await client.fetch(DE_LU, DAY, DAY + timedelta(days=1))
    assert len(starts) == 4
    assert caught.value.retryable is True and caught.value.status == 502
    # backoff 1, 2, 4 s x (0.5 + 0.5/2); the first 0.75 s is raised to the 1 s request pace
    gaps = [b - a for a, b in itertools.pairwise(starts)]
    assert gaps == pytest.approx([1.0, 1.5, 3.0])


async def test_retry_after_longer_than_the_cap_fails_at_once() -> None:
    fake = FakeTime()
    async with _client(
        lambda r: httpx.Response(429, headers={"Retry-After": "3600"}), fake
    ) as client:
        with pytest.raises(SourceError, match="retry after 3600 s") as caught:
            await client.fetch(DE_LU, DAY, DAY + timedelta(days=1))
        assert client.requests_sent == 1
    assert caught.value.retryable is True


async def test_retry_after_as_an_http_date() -> None:
    fake = FakeTime()
    answers = [
        httpx.Response(503, headers={"Retry-After": "Wed, 01 Oct 2025 10:00:30 GMT"}),
        httpx.Response(200, content=_day_doc(DAY)),
    ]
    http = httpx.AsyncClient(transport=httpx.MockTransport(lambda r: answers.pop(0)))
    client = EntsoeClient(TOKEN, http=http, clock=fake.clock, sleep=fake.sleep, jitter=lambda: 0)
    client._fetcher._wall_clock = lambda: datetime(2025, 10, 1, 10, 0, tzinfo=UTC)
    await client.fetch(DE_LU, DAY, DAY + timedelta(days=1))
    assert fake.sleeps == [30.0]


async def test_transport_errors_are_retried() -> None:
    fake = FakeTime()
    calls = 0

    def handler(request: httpx.Request) -> httpx.Response:
        nonlocal calls
        calls += 1
        if calls < 3:
            raise httpx.ConnectError("connection refused", request=request)
        return httpx.Response(200, content=_day_doc(DAY))

    async with _client(handler, fake) as client:
        assert len(await client.fetch(DE_LU, DAY, DAY + timedelta(days=1))) == 24
    assert calls == 3


async def test_401_is_not_retried_and_does_not_show_the_token(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    fake = FakeTime()
    calls = 0

    def handler(request: httpx.Request) -> httpx.Response:
        nonlocal calls
        calls += 1
        return httpx.Response(401, text="Unauthorized")

    async with _client(handler, fake) as client:
        with pytest.raises(SourceError) as caught:
            await client.fetch(DE_LU, DAY, DAY + timedelta(days=1))
    assert calls == 1
    assert str(caught.value) == "ENTSO-E refused the token (401): check ENTSOE_TOKEN"
    assert caught.value.retryable is False
    assert TOKEN not in caplog.text


async def test_400_acknowledgements_are_no_data_or_a_clear_refusal() -> None:
    fake = FakeTime()
    async with _client(lambda r: httpx.Response(400, content=acknowledgement()), fake) as client:
        with pytest.raises(NoDataError, match="No matching data found"):
            await client.fetch(DE_LU, DAY, DAY + timedelta(days=1))
    refusal = acknowledgement(code="999", text="Bad parameter periodStart")
    async with _client(lambda r: httpx.Response(400, content=refusal), fake) as client:
        with pytest.raises(SourceError, match=r"rejected the request \(400\).*periodStart") as e:
            await client.fetch(DE_LU, DAY, DAY + timedelta(days=1))
    assert e.value.status == 400 and not e.value.retryable


async def test_no_data_answer_is_no_data_error() -> None:
    fake = FakeTime()
    async with _client(lambda r: httpx.Response(200, content=acknowledgement()), fake) as client:
        with pytest.raises(NoDataError, match=r"no day-ahead prices for DE_LU .*No matching data"):
            await client.fetch(DE_LU, DAY, DAY + timedelta(days=1))


async def test_ranges_longer_than_a_year_are_split_and_merged() -> None:
    fake = FakeTime()
    asked: list[tuple[str, str]] = []
    start = datetime(2023, 12, 31, 23, tzinfo=UTC)
    end = datetime(2025, 1, 2, 23, tzinfo=UTC)

    def handler(request: httpx.Request) -> httpx.Response:
        p = request.url.params
        asked.append((p["periodStart"], p["periodEnd"]))
        first = datetime.strptime(p["periodStart"], "%Y%m%d%H%M").replace(tzinfo=UTC)
        # like the API: whole days covering the interval; here the first and last day only
        return httpx.Response(200, content=_day_doc(first, 1, base=len(asked) * 100))

    async with _client(handler, fake) as client:
        points = await client.fetch(DE_LU, start, end)
    assert asked == [("202312312300", "202412312300"), ("202412312300", "202501022300")]
    assert len(points) == 48
    assert points[0].start == start and points[0].price_eur_per_mwh == 100.0
    assert points[24].start == datetime(2024, 12, 31, 23, tzinfo=UTC)
    assert points[24].price_eur_per_mwh == 200.0


async def test_a_year_with_no_data_in_one_chunk_still_returns_the_other() -> None:
    fake = FakeTime()
    answers = [acknowledgement(), _day_doc(datetime(2024, 12, 31, 23, tzinfo=UTC))]
    async with _client(lambda r: httpx.Response(200, content=answers.pop(0)), fake) as client:
        points = await client.fetch(
            DE_LU, datetime(2023, 12, 31, 23, tzinfo=UTC), datetime(2025, 1, 1, 23, tzinfo=UTC)
        )
    assert len(points) == 24


async def test_token_never_in_logs_reprs_or_errors(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    fake = FakeTime()

    def handler(request: httpx.Request) -> httpx.Response:
        raise httpx.ReadTimeout(f"timed out reading {request.url}", request=request)

    async with _client(handler, fake, max_attempts=2) as client:
        assert TOKEN not in repr(client)
        with pytest.raises(SourceError) as caught:
            await client.fetch(DE_LU, DAY, DAY + timedelta(days=1))
    assert "securityToken=***" in str(caught.value)
    assert TOKEN not in str(caught.value)
    assert caught.value.__cause__ is None and caught.value.__context__ is None
    assert "retrying" in caplog.text
    assert TOKEN not in caplog.text


def test_from_env_reads_entsoe_token_and_names_the_variable_when_unset() -> None:
    client = EntsoeClient.from_env({"ENTSOE_TOKEN": f"  {TOKEN} \n"})
    assert client._EntsoeClient__token == TOKEN  # type: ignore[attr-defined]
    with pytest.raises(SourceError, match="ENTSOE_TOKEN is not set"):
        EntsoeClient.from_env({})
    with pytest.raises(SourceError, match="ENTSOE_TOKEN is not set"):
        EntsoeClient.from_env({"ENTSOE_TOKEN": "  "})


def test_bad_arguments_are_refused() -> None:
    with pytest.raises(ValueError, match="max_attempts must be >= 1"):
        RetrySettings(max_attempts=0)
    with pytest.raises(ValueError, match="min_interval_s must be >= 0"):
        RetrySettings(min_interval_s=-1)


async def test_naive_or_reversed_range_is_refused() -> None:
    fake = FakeTime()
    async with _client(lambda r: httpx.Response(200), fake) as client:
        with pytest.raises(ValueError, match="timezone-aware"):
            await client.fetch(DE_LU, datetime(2025, 1, 1), datetime(2025, 1, 2))
        with pytest.raises(ValueError, match="must be after start"):
            await client.fetch(DE_LU, DAY, DAY)


def test_redact_masks_the_token_everywhere_in_a_url() -> None:
    url = f"https://x/api?documentType=A44&securityToken={TOKEN}&in_Domain=1"
    assert redact(url) == "https://x/api?documentType=A44&securityToken=***&in_Domain=1"


# --- a real HTTP server on loopback -------------------------------------------------------


class _Server:
    def __init__(self) -> None:
        self.queries: list[dict[str, list[str]]] = []
        self.answers: list[tuple[int, bytes, dict[str, str]]] = []


@pytest.fixture
def server() -> Iterator[tuple[str, _Server]]:
    state = _Server()

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            state.queries.append(parse_qs(urlsplit(self.path).query))
            status, body, headers = state.answers.pop(0)
            self.send_response(status)
            for name, value in headers.items():
                self.send_header(name, value)
            self.send_header("Content-Type", "text/xml")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: object) -> None:
            pass

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}/api", state
    finally:
        httpd.shutdown()
        httpd.server_close()


@pytest.mark.integration
async def test_against_a_loopback_server_with_a_retry(
    server: tuple[str, _Server], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    url, state = server
    sample = (DATA / "entsoe_a44_de_lu_2025-10-01.xml").read_bytes()
    state.answers = [(429, b"", {"Retry-After": "0"}), (200, sample, {})]
    fake = FakeTime()
    async with EntsoeClient(
        TOKEN, base_url=url, clock=fake.clock, sleep=fake.sleep, jitter=lambda: 0.0
    ) as client:
        points = await client.fetch(DE_LU, DAY, DAY + timedelta(days=1))
    assert len(points) == 216
    assert {p.resolution for p in points} == {Resolution.PT15M, Resolution.PT60M}
    assert len(state.queries) == 2
    assert state.queries[1]["securityToken"] == [TOKEN]
    assert state.queries[1]["periodStart"] == ["202509302200"]
    assert "HTTP Request: GET" in caplog.text  # httpx's own log line, redacted
    assert TOKEN not in caplog.text
