"""The doctor's dependency-free certificate reader, and what the doctor says about the site
certificate, checked against certificates the plane's CA (control_plane/pki.py) issues."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.x509.oid import ExtendedKeyUsageOID

from control_plane.pki import CertificateAuthority
from edge_agent.certinfo import CertificateFormatError, read_pem_certificate
from edge_agent.doctor import Status, _uplink_credentials
from edge_agent.uplink import UplinkSettings

T0 = datetime(2026, 6, 1, 12, 0, tzinfo=UTC)
SITE = "site-42"


@pytest.fixture
def ca(tmp_path: Path) -> CertificateAuthority:
    return CertificateAuthority.open(tmp_path / "pki", clock=lambda: T0)


def test_reads_site_validity_and_name(ca: CertificateAuthority) -> None:
    issued = ca.issue_site(SITE, days=90)
    summary = read_pem_certificate(b"junk before\n" + issued.cert_pem + issued.ca_pem)
    reference = x509.load_pem_x509_certificate(issued.cert_pem)
    assert summary.common_name == SITE
    assert summary.site_ids == (SITE,)
    assert summary.uris == ("urn:bess:site:site-42",)
    assert summary.not_after == reference.not_valid_after_utc == T0 + timedelta(days=90)
    assert summary.not_before == reference.not_valid_before_utc
    ca_summary = read_pem_certificate(ca.ca_pem)
    assert ca_summary.site_ids == () and ca_summary.common_name == "Phoenyra BESS EdgeLink CA"


def test_generalized_time_after_2049(ca: CertificateAuthority) -> None:
    late = datetime(2049, 12, 1, tzinfo=UTC)  # certificates ending in 2050+: GeneralizedTime
    far = CertificateAuthority.open(ca.directory.parent / "far", clock=lambda: late)
    summary = read_pem_certificate(far.issue_site(SITE, days=60).cert_pem)
    assert summary.not_after.year == 2050


@pytest.mark.parametrize(
    ("pem", "problem"),
    [
        (b"", "no '-----BEGIN CERTIFICATE-----'"),
        (b"-----BEGIN CERTIFICATE-----\n!!!\n-----END CERTIFICATE-----", "base64"),
        (b"-----BEGIN CERTIFICATE-----\nMAMCAQE=\n-----END CERTIFICATE-----", "X.509"),
        (b"-----BEGIN CERTIFICATE-----\nMIIBAAA=\n-----END CERTIFICATE-----", "truncated"),
    ],
)
def test_garbage_is_refused(pem: bytes, problem: str) -> None:
    with pytest.raises(CertificateFormatError, match=problem):
        read_pem_certificate(pem)


def _settings(tmp_path: Path, cert_pem: bytes, key_pem: bytes, ca_pem: bytes) -> UplinkSettings:
    for name, data in (("site.crt", cert_pem), ("site.key", key_pem), ("ca.crt", ca_pem)):
        (tmp_path / name).write_bytes(data)
    return UplinkSettings(
        target="plane.example:50051",
        tls={
            "enabled": True,
            "ca_file": tmp_path / "ca.crt",
            "cert_file": tmp_path / "site.crt",
            "key_file": tmp_path / "site.key",
        },
    )


def test_doctor_checks_the_site_certificate(ca: CertificateAuthority, tmp_path: Path) -> None:
    issued = ca.issue_site(SITE, days=90)
    settings = _settings(tmp_path, issued.cert_pem, issued.key_pem, issued.ca_pem)
    now = T0.timestamp()

    ok = _uplink_credentials(settings, {}, site_id=SITE, now=now)
    assert ok.status is Status.OK, ok
    assert "TLS with client certificate" in ok.detail
    assert "site certificate for site-42 until 2026-08-30" in ok.detail

    wrong = _uplink_credentials(settings, {}, site_id="site-7", now=now)
    assert wrong.status is Status.FAIL
    assert "for site 'site-42' but site_id is 'site-7'" in wrong.detail
    assert "bess-plane site-cert" in wrong.hint

    soon = _uplink_credentials(settings, {}, site_id=SITE, now=now + 80 * 86_400)
    assert soon.status is Status.WARN and "expires in 10 days" in soon.hint

    expired = _uplink_credentials(settings, {}, site_id=SITE, now=now + 91 * 86_400)
    assert expired.status is Status.FAIL and "expired on 2026-08-30" in expired.detail

    early = _uplink_credentials(settings, {}, site_id=SITE, now=now - 86_400)
    assert early.status is Status.FAIL and "clock" in early.detail


def test_doctor_refuses_a_certificate_without_a_site(
    ca: CertificateAuthority, tmp_path: Path
) -> None:
    key, cert = ca._issue("box", [x509.DNSName("box")], ExtendedKeyUsageOID.CLIENT_AUTH, 30)
    settings = _settings(tmp_path, cert.public_bytes(serialization.Encoding.PEM), key, ca.ca_pem)
    check = _uplink_credentials(settings, {}, site_id=SITE, now=T0.timestamp())
    assert check.status is Status.FAIL and "names no site" in check.detail

    (tmp_path / "site.crt").write_text(
        "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----"
    )
    check = _uplink_credentials(settings, {}, site_id=SITE, now=T0.timestamp())
    assert check.status is Status.FAIL and "cannot be read as a certificate" in check.detail
