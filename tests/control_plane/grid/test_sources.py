"""ENTSO-E actual load (A65) and physical flows (A11): the parser and the client (fake HTTP)."""

from __future__ import annotations

from datetime import UTC, datetime

import httpx
import pytest

from control_plane.grid.models import NoGridSourceError
from control_plane.grid.sources import EntsoeGridSource, NoGridSource, parse_quantities
from control_plane.market.fetching import RetrySettings
from control_plane.market.models import DocumentError, NoDataError, SourceError

AT = "10YAT-APG------L"
CZ = "10YCZ-CEPS-----N"
TOKEN = "secret-token-123"  # noqa: S105 (a test value)


def a65(points: str, curve: str = "A01", unit: str = "MAW") -> bytes:
    return f"""<?xml version="1.0" encoding="UTF-8"?>
<GL_MarketDocument xmlns="urn:iec62325.351:tc57wg16:451-6:generationloaddocument:3:0">
  <type>A65</type>
  <TimeSeries>
    <outBiddingZone_Domain.mRID codingScheme="A01">{AT}</outBiddingZone_Domain.mRID>
    <quantity_Measure_Unit.name>{unit}</quantity_Measure_Unit.name>
    <curveType>{curve}</curveType>
    <Period>
      <timeInterval><start>2025-11-03T07:00Z</start><end>2025-11-03T08:00Z</end></timeInterval>
      <resolution>PT15M</resolution>
      {points}
    </Period>
  </TimeSeries>
</GL_MarketDocument>""".encode()


def a11(out_eic: str, in_eic: str, mw: list[float]) -> bytes:
    points = "".join(
        f"<Point><position>{i + 1}</position><quantity>{v}</quantity></Point>"
        for i, v in enumerate(mw)
    )
    ns = "urn:iec62325.351:tc57wg16:451-3:publicationdocument:7:0"
    return f"""<Publication_MarketDocument xmlns="{ns}">
  <type>A11</type>
  <TimeSeries>
    <in_Domain.mRID codingScheme="A01">{in_eic}</in_Domain.mRID>
    <out_Domain.mRID codingScheme="A01">{out_eic}</out_Domain.mRID>
    <quantity_Measure_Unit.name>MAW</quantity_Measure_Unit.name>
    <curveType>A01</curveType>
    <Period>
      <timeInterval><start>2025-11-03T06:00Z</start><end>2025-11-03T08:00Z</end></timeInterval>
      <resolution>PT60M</resolution>
      {points}
    </Period>
  </TimeSeries>
</Publication_MarketDocument>""".encode()


def pts(*values: float) -> str:
    return "".join(
        f"<Point><position>{i + 1}</position><quantity>{v}</quantity></Point>"
        for i, v in enumerate(values)
    )


NO_DATA = b"""<Acknowledgement_MarketDocument
  xmlns="urn:iec62325.351:tc57wg16:451-1:acknowledgementdocument:7:0">
<Reason><code>999</code><text>No matching data found for Data item ACTUAL_TOTAL_LOAD</text></Reason>
</Acknowledgement_MarketDocument>"""


def test_a65_points_and_a03_forward_fill():
    got = parse_quantities(a65(pts(6100, 6200, 6300, 6400)), document="t", doc_type="A65")
    assert [(at.minute, mw) for _, at, _, mw in got] == [
        (0, 6100),
        (15, 6200),
        (30, 6300),
        (45, 6400),
    ]
    assert got[0][0]["outBiddingZone_Domain.mRID"] == AT and got[0][2] == 15
    a03 = (
        "<Point><position>1</position><quantity>5000</quantity></Point>"
        "<Point><position>3</position><quantity>5100</quantity></Point>"
    )
    got = parse_quantities(a65(a03, curve="A03"), document="t", doc_type="A65")
    assert [mw for *_, mw in got] == [5000, 5000, 5100, 5100]


@pytest.mark.parametrize(
    ("data", "problem"),
    [
        (a65(pts(1, 2, 3)), "curve A01 must list every position; 1 of 4 missing (4)"),
        (a65(pts(1, 2, 3, 4), unit="MWH"), "quantity unit 'MWH'; expected MAW"),
        (a65(pts(1, 2, 3, 4, 5)), "position 5 not in 1..4"),
        (b"<nope", "malformed XML"),
        (a11(AT, CZ, [1, 2]), "document type is 'A11', not A65"),
    ],
)
def test_unreadable_documents_say_where(data, problem):
    with pytest.raises(DocumentError, match=problem.replace("(", r"\(").replace(")", r"\)")):
        parse_quantities(data, document="t", doc_type="A65")


def test_acknowledgement_999_is_no_data():
    with pytest.raises(NoDataError, match="No matching data"):
        parse_quantities(NO_DATA, document="t", doc_type="A65")


def client(handler) -> EntsoeGridSource:
    async def no_sleep(_: float) -> None:
        return None

    return EntsoeGridSource(
        TOKEN,
        base_url="https://entsoe.test/api",
        http=httpx.AsyncClient(transport=httpx.MockTransport(handler)),
        retry=RetrySettings(min_interval_s=0, max_attempts=2, base_backoff_s=0, max_backoff_s=0),
        sleep=no_sleep,
    )


async def test_client_asks_for_a65_and_a11_with_the_right_domains():
    seen: list[dict[str, str]] = []

    def handler(request: httpx.Request) -> httpx.Response:
        params = dict(request.url.params)
        seen.append(params)
        if params["documentType"] == "A65":
            return httpx.Response(200, content=a65(pts(6100, 6200, 6300, 6400)))
        return httpx.Response(
            200, content=a11(params["out_Domain"], params["in_Domain"], [700, 650])
        )

    source = client(handler)
    start, end = datetime(2025, 11, 3, 6, tzinfo=UTC), datetime(2025, 11, 3, 8, tzinfo=UTC)
    load = await source.load("AT", start, end)
    assert [p.load_mw for p in load] == [6100, 6200, 6300, 6400] and load[0].zone == "AT"
    flows = await source.flows("AT", "CZ", start, end)
    assert [(p.from_zone, p.to_zone, p.minutes, p.flow_mw) for p in flows] == [
        ("AT", "CZ", 60, 700),
        ("AT", "CZ", 60, 650),
    ]
    assert seen[0]["processType"] == "A16" and seen[0]["outBiddingZone_Domain"] == AT
    assert seen[0]["periodStart"] == "202511030600" and seen[0]["securityToken"] == TOKEN
    assert seen[1]["out_Domain"] == AT and seen[1]["in_Domain"] == CZ
    assert "***" in repr(source) and TOKEN not in repr(source)


async def test_client_errors_never_show_the_token():
    source = client(lambda request: httpx.Response(401))
    start, end = datetime(2025, 11, 3, 6, tzinfo=UTC), datetime(2025, 11, 3, 8, tzinfo=UTC)
    with pytest.raises(SourceError, match="refused the token") as info:
        await source.load("AT", start, end)
    assert TOKEN not in str(info.value)
    failing = client(lambda request: httpx.Response(503))
    with pytest.raises(SourceError, match="HTTP 503") as info:
        await failing.flows("AT", "CZ", start, end)
    assert TOKEN not in str(info.value) and "securityToken=***" in str(info.value)
    with pytest.raises(ValueError, match="'XX' is not a bidding zone"):
        await source.load("XX", start, end)


async def test_no_source_says_so():
    with pytest.raises(NoGridSourceError, match="set ENTSOE_TOKEN"):
        await NoGridSource("no source: set ENTSOE_TOKEN").load(
            "AT", datetime.now(UTC), datetime.now(UTC)
        )
