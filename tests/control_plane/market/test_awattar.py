"""The aWattar source: its JSON payload and the client's request shape."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

import httpx
import pytest

from control_plane.market.awattar import AwattarClient, parse_awattar
from control_plane.market.models import (
    DocumentError,
    NoDataError,
    Resolution,
    SourceError,
    zone,
)

from .test_entsoe_client import FakeTime

T0 = datetime(2025, 10, 1, 22, tzinfo=UTC)


def _ms(at: datetime) -> int:
    return int(at.timestamp() * 1000)


def _entry(start: datetime, minutes: int, price: float, unit: str = "Eur/MWh") -> dict[str, object]:
    return {
        "start_timestamp": _ms(start),
        "end_timestamp": _ms(start + timedelta(minutes=minutes)),
        "marketprice": price,
        "unit": unit,
    }


def _payload(*entries: dict[str, object]) -> bytes:
    return json.dumps(
        {"object": "list", "data": list(entries), "url": "/at/v1/marketdata"}
    ).encode()


def test_hourly_payload() -> None:
    data = _payload(*(_entry(T0 + timedelta(hours=h), 60, 80.5 - h * 30) for h in range(4)))
    points = parse_awattar(data, zone_code="AT", document="at")
    assert [p.start for p in points] == [T0 + timedelta(hours=h) for h in range(4)]
    assert [p.price_eur_per_mwh for p in points] == [80.5, 50.5, 20.5, -9.5]  # negative kept
    assert {p.resolution for p in points} == {Resolution.PT60M}
    assert {(p.zone, p.source, p.sequence) for p in points} == {("AT", "awattar", "")}


def test_quarter_hour_payload_and_units() -> None:
    data = _payload(
        _entry(T0, 15, 0.0925, unit="Eur/kWh"),
        _entry(T0 + timedelta(minutes=15), 15, 9.5, unit="ct/kWh"),
        _entry(T0 + timedelta(minutes=30), 15, 4500.0),
    )
    points = parse_awattar(data, zone_code="DE_LU", document="de")
    assert [p.resolution for p in points] == [Resolution.PT15M] * 3
    assert [p.price_eur_per_mwh for p in points] == pytest.approx([92.5, 95.0, 4500.0])
    assert [bool(p.flag) for p in points] == [False, False, True]


@pytest.mark.parametrize(
    ("data", "problem"),
    [
        (b"{not json", "malformed JSON"),
        (b"[1, 2]", 'expected an object with a "data" list'),
        (b'{"object": "list"}', 'expected an object with a "data" list'),
        (_payload({"start_timestamp": 1}), "data[0].end_timestamp: missing"),
        (
            _payload({**_entry(T0, 60, 1.0), "marketprice": "12,5"}),
            "data[0].marketprice: not a number: '12,5'",
        ),
        (_payload({**_entry(T0, 60, 1.0), "unit": None}), "data[0].unit: missing"),
        (_payload(_entry(T0, 60, 1.0, unit="USD/MWh")), "data[0].unit: unknown price unit"),
        (_payload(_entry(T0, 60, 1.0), _entry(T0, 45, 1.0)), "data[1]: interval of 45 minutes"),
        (b'{"data": ["x"]}', "data[0]: expected an object"),
    ],
)
def test_malformed_payloads_name_the_entry_and_field(data: bytes, problem: str) -> None:
    with pytest.raises(DocumentError) as caught:
        parse_awattar(data, zone_code="AT", document="aWattar AT")
    assert caught.value.document == "aWattar AT"
    assert problem in caught.value.problem


def test_empty_data_is_no_data() -> None:
    with pytest.raises(NoDataError, match="no prices"):
        parse_awattar(_payload(), zone_code="AT", document="at")


async def test_client_asks_the_zone_url_in_milliseconds_and_filters_the_range() -> None:
    fake = FakeTime()
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(
            200,
            content=_payload(*(_entry(T0 + timedelta(hours=h), 60, 50.0 + h) for h in range(24))),
        )

    http = httpx.AsyncClient(transport=httpx.MockTransport(handler))
    async with AwattarClient(http=http, clock=fake.clock, sleep=fake.sleep) as client:
        assert client.name == "awattar"
        assert client.zones == {"AT", "DE_LU"}
        points = await client.fetch(zone("DE_LU"), T0 + timedelta(hours=2), T0 + timedelta(hours=5))
        await client.fetch(zone("AT"), T0, T0 + timedelta(hours=1))
    assert [p.price_eur_per_mwh for p in points] == [52.0, 53.0, 54.0]
    assert seen[0].url.host == "api.awattar.de" and seen[0].url.path == "/v1/marketdata"
    assert dict(seen[0].url.params) == {
        "start": str(_ms(T0 + timedelta(hours=2))),
        "end": str(_ms(T0 + timedelta(hours=5))),
    }
    assert seen[1].url.host == "api.awattar.at"
    assert fake.sleeps == [2.0]  # the default pace: one request per 2 s


async def test_client_refuses_other_zones_and_reports_http_errors() -> None:
    fake = FakeTime()
    http = httpx.AsyncClient(transport=httpx.MockTransport(lambda r: httpx.Response(404)))
    client = AwattarClient(http=http, clock=fake.clock, sleep=fake.sleep)
    with pytest.raises(SourceError, match="AT, DE_LU only, not CH"):
        await client.fetch(zone("CH"), T0, T0 + timedelta(hours=1))
    with pytest.raises(SourceError, match="aWattar answered 404") as caught:
        await client.fetch(zone("AT"), T0, T0 + timedelta(hours=1))
    assert caught.value.status == 404 and not caught.value.retryable
