"""Hand-made A44 documents for the parser and client tests (and the parse benchmark).

`series(...)` writes one `TimeSeries` with one `Period`; `document(...)` wraps series in a
`Publication_MarketDocument` of a given namespace version; `acknowledgement(...)` writes the
API's "no data" answer. Prices are given per position; positions absent from `omit` are
written, so A03 gaps are explicit in each test.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from datetime import datetime

NS_73 = "urn:iec62325.351:tc57wg16:451-3:publicationdocument:7:3"
NS_70 = "urn:iec62325.351:tc57wg16:451-3:publicationdocument:7:0"
NS_ACK = "urn:iec62325.351:tc57wg16:451-1:acknowledgementdocument:7:0"
DE_LU = "10Y1001A1001A82H"
AT = "10YAT-APG------L"


def _t(at: datetime) -> str:
    return at.strftime("%Y-%m-%dT%H:%MZ")


def series(
    prices: Sequence[float],
    *,
    start: datetime,
    end: datetime,
    resolution: str = "PT15M",
    curve: str | None = "A03",
    sequence: str | None = "1",
    eic: str = DE_LU,
    currency: str = "EUR",
    unit: str = "MWH",
    omit: Iterable[int] = (),
    extra_points: str = "",
) -> str:
    """A TimeSeries; `prices[i]` is position i+1; positions in `omit` (1-based) are left out."""
    skipped = set(omit)
    points = "".join(
        f"<Point><position>{i}</position><price.amount>{p}</price.amount></Point>"
        for i, p in enumerate(prices, start=1)
        if i not in skipped
    )
    seq = (
        ""
        if sequence is None
        else "<classificationSequence_AttributeInstanceComponent.position>"
        f"{sequence}</classificationSequence_AttributeInstanceComponent.position>"
    )
    curve_el = "" if curve is None else f"<curveType>{curve}</curveType>"
    return (
        "<TimeSeries><mRID>1</mRID><auction.type>A01</auction.type>"
        "<businessType>A62</businessType>"
        f'<in_Domain.mRID codingScheme="A01">{eic}</in_Domain.mRID>'
        f'<out_Domain.mRID codingScheme="A01">{eic}</out_Domain.mRID>'
        "<contract_MarketAgreement.type>A01</contract_MarketAgreement.type>"
        f"<currency_Unit.name>{currency}</currency_Unit.name>"
        f"<price_Measure_Unit.name>{unit}</price_Measure_Unit.name>"
        f"{seq}{curve_el}"
        f"<Period><timeInterval><start>{_t(start)}</start><end>{_t(end)}</end></timeInterval>"
        f"<resolution>{resolution}</resolution>{points}{extra_points}</Period></TimeSeries>"
    )


def document(*all_series: str, ns: str | None = NS_73, doc_type: str = "A44") -> bytes:
    xmlns = f' xmlns="{ns}"' if ns else ""
    return (
        f'<?xml version="1.0" encoding="utf-8"?><Publication_MarketDocument{xmlns}>'
        "<mRID>0a1b2c</mRID><revisionNumber>1</revisionNumber>"
        f"<type>{doc_type}</type>"
        "<createdDateTime>2025-09-30T12:00:00Z</createdDateTime>"
        + "".join(all_series)
        + "</Publication_MarketDocument>"
    ).encode()


def acknowledgement(code: str = "999", text: str = "No matching data found") -> bytes:
    return (
        f'<?xml version="1.0" encoding="UTF-8"?><Acknowledgement_MarketDocument xmlns="{NS_ACK}">'
        "<mRID>ack1</mRID><createdDateTime>2025-10-01T10:00:00Z</createdDateTime>"
        '<sender_MarketParticipant.mRID codingScheme="A01">10X1001A1001A450'
        "</sender_MarketParticipant.mRID>"
        "<received_MarketDocument.createdDateTime>2025-10-01T10:00:00Z"
        "</received_MarketDocument.createdDateTime>"
        f"<Reason><code>{code}</code><text>{text}</text></Reason>"
        "</Acknowledgement_MarketDocument>"
    ).encode()
