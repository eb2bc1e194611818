"""EdgeLink with mutual TLS (`edgelink_tls: mtls`): a real grpc.aio server on loopback with the
plane's CA; a site certificate is the only way in, and it speaks for its own site only."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import grpc.aio
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.x509.oid import ExtendedKeyUsageOID

from control_plane.pki import CertificateAuthority, IssuedCertificate

from ..plane import RunningPlane, running_plane, settings_for
from .test_edgelink import SITE, Agent, batch, hello

pytestmark = pytest.mark.integration


@pytest.fixture
async def plane(tmp_path: Path) -> AsyncIterator[RunningPlane]:
    async with running_plane(settings_for(tmp_path, edgelink_tls="mtls")) as running:
        yield running


def _ca(plane: RunningPlane) -> CertificateAuthority:
    return CertificateAuthority.open(plane.app.state.settings.pki_directory)


def _credentials(issued: IssuedCertificate) -> grpc.ChannelCredentials:
    return grpc.ssl_channel_credentials(
        root_certificates=issued.ca_pem,
        private_key=issued.key_pem,
        certificate_chain=issued.cert_pem,
    )


async def test_a_site_certificate_opens_a_session_for_its_site(plane: RunningPlane) -> None:
    agent = Agent(plane.grpc_target, _credentials(_ca(plane).issue_site(SITE)))
    agent.send(hello=hello())
    assert (await agent.read("welcome")).welcome.session_id
    agent.send(telemetry_batch=batch(range(1, 4)))
    assert (await agent.read("telemetry_ack")).telemetry_ack.acked_through_seq == 3
    await agent.close()
    fleet = plane.app.state.fleet
    assert await asyncio.to_thread(fleet.store.sample_seqs, SITE) == [1, 2, 3]


async def test_a_certificate_of_another_site_is_refused(plane: RunningPlane) -> None:
    agent = Agent(plane.grpc_target, _credentials(_ca(plane).issue_site("other-site")))
    agent.send(hello=hello())
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await agent.read()
    assert err.value.code() is grpc.StatusCode.PERMISSION_DENIED
    assert f"{SITE!r}" in str(err.value.details())
    assert "'other-site'" in str(err.value.details())
    await agent.close()
    sites = (await plane.client.get("/api/sites")).json()
    assert sites == [], "nothing is registered for a refused stream"


async def test_a_certificate_without_a_site_name_is_refused(plane: RunningPlane) -> None:
    # A client certificate of the same CA that names a host instead of a site.
    ca = _ca(plane)
    key, cert = ca._issue("box-1", [x509.DNSName("box-1")], ExtendedKeyUsageOID.CLIENT_AUTH, 1)
    credentials = grpc.ssl_channel_credentials(
        root_certificates=ca.ca_pem,
        private_key=key,
        certificate_chain=cert.public_bytes(serialization.Encoding.PEM),
    )
    agent = Agent(plane.grpc_target, credentials)
    agent.send(hello=hello())
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await agent.read()
    assert err.value.code() is grpc.StatusCode.PERMISSION_DENIED
    assert "names no site" in str(err.value.details())
    await agent.close()


async def test_without_a_client_certificate_the_handshake_fails(
    plane: RunningPlane, tmp_path: Path
) -> None:
    anonymous = grpc.ssl_channel_credentials(root_certificates=_ca(plane).ca_pem)
    agent = Agent(plane.grpc_target, anonymous)
    agent.send(hello=hello())
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await agent.read()
    assert err.value.code() is grpc.StatusCode.UNAVAILABLE
    await agent.close()

    # A certificate from another CA does not get in either.
    stranger = CertificateAuthority.open(tmp_path / "stranger").issue_site(SITE)
    foreign = grpc.ssl_channel_credentials(
        root_certificates=_ca(plane).ca_pem,
        private_key=stranger.key_pem,
        certificate_chain=stranger.cert_pem,
    )
    agent = Agent(plane.grpc_target, foreign)
    agent.send(hello=hello())
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await agent.read()
    assert err.value.code() is grpc.StatusCode.UNAVAILABLE
    await agent.close()

    # Nor does plaintext.
    plain = Agent(plane.grpc_target)
    plain.send(hello=hello())
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await plain.read()
    assert err.value.code() is grpc.StatusCode.UNAVAILABLE
    await plain.close()
