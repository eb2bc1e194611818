"""The plane's CA (control_plane/pki.py) and `bess-plane site-cert` / `ca show`."""

from __future__ import annotations

import stat
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from control_plane.cli import main
from control_plane.config import PlaneSettings, SettingsError, load_settings
from control_plane.pki import (
    CertificateAuthority,
    InvalidSiteIdError,
    PkiError,
    site_of_certificate,
)

T0 = datetime(2026, 1, 1, tzinfo=UTC)


class Clock:
    def __init__(self, now: datetime) -> None:
        self.now = now

    def __call__(self) -> datetime:
        return self.now


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_ca_is_created_once_with_private_files(tmp_path: Path) -> None:
    ca = CertificateAuthority.open(tmp_path / "pki", clock=Clock(T0))
    assert _mode(tmp_path / "pki") == 0o700
    assert _mode(tmp_path / "pki" / "ca.key") == 0o600
    assert ca.cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    again = CertificateAuthority.open(tmp_path / "pki")
    assert again.info.fingerprint_sha256 == ca.info.fingerprint_sha256
    assert again.info.not_after == T0 + timedelta(days=3650)


def test_a_broken_ca_directory_is_refused_with_the_reason(tmp_path: Path) -> None:
    CertificateAuthority.open(tmp_path)
    (tmp_path / "ca.key").chmod(0o644)
    with pytest.raises(PkiError, match="readable by other users: chmod 600"):
        CertificateAuthority.open(tmp_path)
    (tmp_path / "ca.key").unlink()
    with pytest.raises(PkiError, match=r"incomplete \(.*ca\.key is missing\)"):
        CertificateAuthority.open(tmp_path)


def test_site_certificate_names_the_site(tmp_path: Path) -> None:
    ca = CertificateAuthority.open(tmp_path, clock=Clock(T0))
    issued = ca.issue_site("site-7", days=30)
    cert = x509.load_pem_x509_certificate(issued.cert_pem)
    assert cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == "site-7"
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.UniformResourceIdentifier) == ["urn:bess:site:site-7"]
    usage = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert list(usage) == [ExtendedKeyUsageOID.CLIENT_AUTH]
    cert.verify_directly_issued_by(ca.cert)
    assert cert.not_valid_after_utc == T0 + timedelta(days=30)
    assert site_of_certificate(issued.cert_pem) == "site-7"
    assert ca.issue_site("site-7").info.serial != issued.info.serial  # random serials
    assert b"PRIVATE KEY" in issued.key_pem


def test_certificates_without_exactly_one_site_name_no_site(tmp_path: Path) -> None:
    ca = CertificateAuthority.open(tmp_path)
    _, server = ca.server_certificate(["localhost"])
    assert site_of_certificate(server) is None
    assert site_of_certificate(b"not a certificate") is None


@pytest.mark.parametrize("bad", ["", "a/b", "-x", "x" * 64, "urn:bess:site:x"])
def test_site_ids_follow_the_fleet_rule(tmp_path: Path, bad: str) -> None:
    with pytest.raises(InvalidSiteIdError, match="is not valid"):
        CertificateAuthority.open(tmp_path).issue_site(bad)


def test_server_certificate_is_reissued_on_new_names_or_near_expiry(tmp_path: Path) -> None:
    clock = Clock(T0)
    ca = CertificateAuthority.open(tmp_path, clock=clock)
    key, cert = ca.server_certificate(["localhost", "127.0.0.1", "plane.example"], days=90)
    assert _mode(tmp_path / "server.key") == 0o600
    san = x509.load_pem_x509_certificate(cert).extensions.get_extension_for_class(
        x509.SubjectAlternativeName
    )
    assert san.value.get_values_for_type(x509.DNSName) == ["localhost", "plane.example"]
    assert [str(ip) for ip in san.value.get_values_for_type(x509.IPAddress)] == ["127.0.0.1"]
    # Same names, plenty of time left: the same files.
    clock.now = T0 + timedelta(days=59)
    assert ca.server_certificate(["plane.example", "localhost", "127.0.0.1"], days=90) == (
        key,
        cert,
    )
    # Less than a third of the validity left: a new one.
    clock.now = T0 + timedelta(days=61)
    renewed = ca.server_certificate(["localhost", "127.0.0.1", "plane.example"], days=90)
    assert renewed[1] != cert
    # Other names: a new one.
    assert ca.server_certificate(["localhost"], days=90)[1] != renewed[1]


def test_server_certificate_of_another_ca_is_replaced(tmp_path: Path) -> None:
    first = CertificateAuthority.open(tmp_path / "a")
    key, cert = first.server_certificate(["localhost"])
    other = CertificateAuthority.open(tmp_path / "b")
    (tmp_path / "b" / "server.key").write_bytes(key)
    (tmp_path / "b" / "server.crt").write_bytes(cert)
    _, replaced = other.server_certificate(["localhost"])
    x509.load_pem_x509_certificate(replaced).verify_directly_issued_by(other.cert)


def test_tls_names_default_to_loopback_and_the_grpc_host(tmp_path: Path) -> None:
    base = {"data_dir": tmp_path}
    assert PlaneSettings(**base).tls_names == ["localhost", "127.0.0.1"]
    remote = PlaneSettings(**base, grpc_host="10.0.0.5", edgelink_tls="mtls")
    assert remote.tls_names == ["localhost", "127.0.0.1", "10.0.0.5"]
    assert PlaneSettings(**base, grpc_host="0.0.0.0", edgelink_tls="mtls").tls_names == [  # noqa: S104
        "localhost",
        "127.0.0.1",
    ]
    named = PlaneSettings(**base, grpc_tls_names=["plane.example", "::1"])
    assert named.tls_names == ["plane.example", "::1"]
    assert remote.pki_directory == tmp_path / "pki"


def test_tls_names_from_the_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BESS_PLANE_DATA_DIR", str(tmp_path))
    monkeypatch.setenv("BESS_PLANE_GRPC_TLS_NAMES", "plane.example.com, 10.0.0.5")
    assert load_settings().tls_names == ["plane.example.com", "10.0.0.5"]
    monkeypatch.setenv("BESS_PLANE_GRPC_TLS_NAMES", '["plane.example.com"]')
    assert load_settings().tls_names == ["plane.example.com"]
    monkeypatch.setenv("BESS_PLANE_GRPC_TLS_NAMES", "plane example")
    with pytest.raises(SettingsError, match="not a DNS name or IP"):
        load_settings()


def test_mtls_makes_a_remote_grpc_bind_legal(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"grpc_host '10\.0\.0\.5'.*edgelink_tls"):
        PlaneSettings(data_dir=tmp_path, grpc_host="10.0.0.5")
    PlaneSettings(data_dir=tmp_path, grpc_host="10.0.0.5", edgelink_tls="mtls")
    # HTTP has its own access control (API keys), so a remote http_host is legal either way.
    PlaneSettings(data_dir=tmp_path, http_host="10.0.0.5")
    with pytest.raises(ValueError, match="not a DNS name or IP"):
        PlaneSettings(data_dir=tmp_path, grpc_tls_names=["plane example"])


# -- CLI --------------------------------------------------------------------------------------


def test_site_cert_writes_the_files_and_the_agent_lines(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("BESS_PLANE_DATA_DIR", str(tmp_path / "plane"))
    out = tmp_path / "out"
    assert main(["site-cert", "site-7", "--out", str(out), "--days", "10"]) == 0
    printed = capsys.readouterr().out
    assert _mode(out / "site.key") == 0o600
    key = (out / "site.key").read_text()
    assert key.strip() not in printed and "PRIVATE KEY" not in printed
    assert "cert_file: /etc/bess-edge/tls/site.crt" in printed and "enabled: true" in printed
    assert site_of_certificate((out / "site.crt").read_bytes()) == "site-7"
    ca = CertificateAuthority.open(tmp_path / "plane" / "pki")
    assert (out / "ca.crt").read_bytes() == ca.ca_pem
    cert = x509.load_pem_x509_certificate((out / "site.crt").read_bytes())
    assert cert.not_valid_after_utc - cert.not_valid_before_utc < timedelta(days=10, hours=1)

    # No silent overwrite; --force replaces.
    assert main(["site-cert", "site-7", "--out", str(out)]) == 1
    assert "--force" in capsys.readouterr().err
    assert (out / "site.key").read_text() == key
    assert main(["site-cert", "site-7", "--out", str(out), "--force"]) == 0
    assert (out / "site.key").read_text() != key

    assert main(["site-cert", "bad/id", "--out", str(tmp_path / "x")]) == 2
    assert "is not valid" in capsys.readouterr().err
    assert main(["site-cert", "s", "--days", "0"]) == 2

    capsys.readouterr()
    assert main(["ca", "show"]) == 0
    shown = capsys.readouterr().out
    assert ca.info.fingerprint_sha256 in shown and "valid" in shown
