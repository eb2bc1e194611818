"""HMAC request signatures: what passes, what fails, and the bounded replay cache."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from control_plane.auth.client import sign_request, sign_websocket_url
from control_plane.auth.models import Role, Unauthenticated
from control_plane.auth.signing import (
    HEADER_NONCE,
    HEADER_SIGNATURE,
    HEADER_TIMESTAMP,
    HmacVerifier,
    NonceCache,
    NonceCacheFull,
    websocket_path,
)

SECRET = b"k" * 32
T0 = datetime(2030, 1, 1, tzinfo=UTC)
BODY = b'{"site_id": "s1"}'


class Clock:
    def __init__(self) -> None:
        self.now = T0

    def __call__(self) -> datetime:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def verifier(clock: Clock) -> HmacVerifier:
    return HmacVerifier(SECRET, role=Role.TRADER, clock=clock)


def _verify(
    verifier: HmacVerifier,
    headers: dict[str, str],
    *,
    method: str = "POST",
    path: str = "/api/telemetry?x=1",
    body: bytes = BODY,
) -> str:
    """'ok' or the refusal's reason."""
    try:
        principal = verifier.verify(
            method=method,
            path=path,
            timestamp=headers.get(HEADER_TIMESTAMP),
            nonce=headers.get(HEADER_NONCE),
            sig=headers.get(HEADER_SIGNATURE),
            body=body,
        )
    except Unauthenticated as exc:
        return exc.reason
    assert (principal.via, principal.role) == ("hmac", Role.TRADER)
    return "ok"


def _signed(**kw: object) -> dict[str, str]:
    args: dict[str, object] = {"now": T0.timestamp(), **kw}
    return sign_request(SECRET, "POST", "/api/telemetry?x=1", BODY, **args)  # type: ignore[arg-type]


def test_a_good_signature_passes(verifier: HmacVerifier) -> None:
    assert _verify(verifier, _signed()) == "ok"


@pytest.mark.parametrize(
    "change",
    [
        {"method": "PUT"},
        {"path": "/api/telemetry?x=2"},
        {"path": "/api/bess/telemetry?x=1"},
        {"body": BODY + b" "},
    ],
)
def test_anything_changed_fails(verifier: HmacVerifier, change: dict[str, object]) -> None:
    assert _verify(verifier, _signed(), **change) == "bad_signature"  # type: ignore[arg-type]


def test_another_secret_fails(verifier: HmacVerifier) -> None:
    headers = sign_request(b"x" * 32, "POST", "/api/telemetry?x=1", BODY, now=T0.timestamp())
    assert _verify(verifier, headers) == "bad_signature"


@pytest.mark.parametrize(
    ("offset_s", "result"),
    [(-301, "stale_timestamp"), (-300, "ok"), (300, "ok"), (301, "stale_timestamp")],
)
def test_stale_and_future_timestamps_fail(
    verifier: HmacVerifier, offset_s: int, result: str
) -> None:
    assert _verify(verifier, _signed(now=T0.timestamp() + offset_s)) == result


def test_a_nonce_is_accepted_once(verifier: HmacVerifier, clock: Clock) -> None:
    headers = _signed(nonce="n" * 20)
    assert _verify(verifier, headers) == "ok"
    assert _verify(verifier, headers) == "nonce_reused"
    clock.now += timedelta(seconds=299)
    assert _verify(verifier, headers) == "nonce_reused"  # replay while still in the window
    clock.now += timedelta(seconds=2)
    assert _verify(verifier, headers) == "stale_timestamp"  # out of the window: too old anyway


def test_a_bad_signature_does_not_burn_the_nonce(verifier: HmacVerifier) -> None:
    good = _signed(nonce="m" * 20)
    forged = {**good, HEADER_SIGNATURE: "0" * 64}
    assert _verify(verifier, forged) == "bad_signature"
    assert _verify(verifier, good) == "ok"


@pytest.mark.parametrize(
    ("header", "value", "message"),
    [
        (HEADER_TIMESTAMP, "2030-01-01T00:00:00Z", "unix seconds"),
        (HEADER_NONCE, "short", "16-128 characters"),
        (HEADER_SIGNATURE, "zz", "64 characters"),
        (HEADER_NONCE, "", "lacks X-Bess-Nonce"),
    ],
)
def test_malformed_headers_say_what_is_wrong(
    verifier: HmacVerifier, header: str, value: str, message: str
) -> None:
    headers = {**_signed(), header: value}
    with pytest.raises(Unauthenticated, match=message):
        verifier.verify(
            method="POST",
            path="/api/telemetry?x=1",
            timestamp=headers[HEADER_TIMESTAMP],
            nonce=headers[HEADER_NONCE],
            sig=headers[HEADER_SIGNATURE],
            body=BODY,
        )


def test_the_nonce_cache_is_bounded_and_expires() -> None:
    cache = NonceCache(ttl_s=600, max_entries=3)
    for i in range(3):
        assert cache.add(f"n{i}", now=0.0, valid_until=300.0 + i)
    with pytest.raises(NonceCacheFull, match="more than 3 signed requests"):
        cache.add("n3", now=100.0, valid_until=400.0)
    assert len(cache) == 3
    assert cache.add("n3", now=300.5, valid_until=600.0)  # n0 expired and made room
    assert len(cache) == 3
    assert not cache.add("n1", now=300.5, valid_until=600.0)
    assert cache.add("n9", now=1000.0, valid_until=1300.0)
    assert len(cache) == 1


def test_a_full_cache_refuses_instead_of_forgetting(clock: Clock) -> None:
    verifier = HmacVerifier(SECRET, role=Role.TRADER, clock=clock, max_nonces=2)
    first = _signed(nonce="a" * 16)
    assert _verify(verifier, first) == "ok"
    assert _verify(verifier, _signed(nonce="b" * 16)) == "ok"
    with pytest.raises(NonceCacheFull):
        _verify(verifier, _signed(nonce="c" * 16))
    assert _verify(verifier, first) == "nonce_reused"


def test_websocket_urls_sign_their_path_without_the_signature_params(
    verifier: HmacVerifier,
) -> None:
    url = sign_websocket_url(SECRET, "/ws?topic=orders", now=T0.timestamp(), nonce="w" * 16)
    path, _, query = url.partition("?")
    assert query.startswith("topic=orders&ts=")
    assert websocket_path(path, query) == "/ws?topic=orders"
    params = dict(p.split("=", 1) for p in query.split("&"))
    principal = verifier.verify(
        method="GET",
        path=websocket_path(path, query),
        timestamp=params["ts"],
        nonce=params["nonce"],
        sig=params["sig"],
        body=b"",
    )
    assert principal.via == "hmac"
