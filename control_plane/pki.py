"""The plane's small certificate authority for EdgeLink mutual TLS.

One ECDSA P-256 CA (the curve gRPC's BoringSSL handles everywhere) lives in `pki_dir`
(default `<data_dir>/pki/`), created on first use: `ca.key` (mode 0600) and `ca.crt`. It signs

* the EdgeLink **server certificate** (`server.key`, `server.crt`) with the names the agents
  dial as subject alternative names (DNS names or IP addresses). `server_certificate()`
  re-issues it when the names change, when it was signed by another CA, or when less than a
  third of its validity is left, so a plane that restarts now and then never serves an
  expired one;
* **site certificates**: CN = site id and the SAN URI `urn:bess:site:<SITE_ID>`, which is what
  identifies the site on a stream (`site_of_certificate`). Random 159-bit serials.

Private keys are written with `os.open(..., 0o600)` before any byte goes in (never world
readable, not even for a moment) and never logged; the directory is created 0700.

Errors:

    PkiError (RuntimeError)         the CA directory or a file in it is unusable
     +-- InvalidSiteIdError (+ValueError)   a site id that breaks the fleet's rule
"""

from __future__ import annotations

import ipaddress
import os
import stat
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from .fleet.models import SITE_ID, SITE_ID_RULE

SITE_URI_PREFIX = "urn:bess:site:"
CA_DAYS = 3650
DEFAULT_CERT_DAYS = 397
"""The CA/Browser Forum's limit for TLS certificates; also a sensible yearly rotation."""
_CLOCK_SKEW = timedelta(minutes=5)  # not_before in the past: an edge box's clock may lag

Clock = Callable[[], datetime]


class PkiError(RuntimeError):
    """The CA directory or one of its files cannot be used; the message says which and why."""


class InvalidSiteIdError(PkiError, ValueError):
    def __init__(self, site_id: str) -> None:
        super().__init__(f"site id {site_id!r} is not valid: {SITE_ID_RULE}")
        self.site_id = site_id


def _utc_now() -> datetime:
    return datetime.now(UTC)


@dataclass(frozen=True, slots=True)
class CertInfo:
    subject: str
    serial: int
    not_before: datetime
    not_after: datetime
    fingerprint_sha256: str  # colon-separated hex, as `openssl x509 -fingerprint` shows it

    @classmethod
    def of(cls, cert: x509.Certificate) -> CertInfo:
        digest = cert.fingerprint(hashes.SHA256()).hex().upper()
        return cls(
            subject=cert.subject.rfc4514_string(),
            serial=cert.serial_number,
            not_before=cert.not_valid_before_utc,
            not_after=cert.not_valid_after_utc,
            fingerprint_sha256=":".join(digest[i : i + 2] for i in range(0, len(digest), 2)),
        )


@dataclass(frozen=True, slots=True)
class IssuedCertificate:
    """A new key and certificate; `key_pem` is a secret (write it 0600, never log it)."""

    site_id: str
    key_pem: bytes
    cert_pem: bytes
    ca_pem: bytes
    info: CertInfo


def check_site_id(site_id: str) -> str:
    if not SITE_ID.fullmatch(site_id):
        raise InvalidSiteIdError(site_id)
    return site_id


def site_uri(site_id: str) -> str:
    return SITE_URI_PREFIX + check_site_id(site_id)


def site_of_certificate(pem: bytes) -> str | None:
    """The site a certificate identifies (its `urn:bess:site:` SAN URI), or None."""
    try:
        cert = x509.load_pem_x509_certificate(pem)
        names = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except (ValueError, x509.ExtensionNotFound):
        return None
    sites = [
        uri.removeprefix(SITE_URI_PREFIX)
        for uri in names.get_values_for_type(x509.UniformResourceIdentifier)
        if uri.startswith(SITE_URI_PREFIX)
    ]
    if len(sites) != 1 or not SITE_ID.fullmatch(sites[0]):
        return None  # none, or ambiguous: a certificate names exactly one site
    return sites[0]


def write_secret(path: Path, data: bytes, *, overwrite: bool = False) -> None:
    """Write a private key readable by its owner only (0600 from the first byte)."""
    flags = os.O_WRONLY | os.O_CREAT | (os.O_TRUNC if overwrite else os.O_EXCL)
    fd = os.open(path, flags, 0o600)
    try:
        os.fchmod(fd, 0o600)  # an existing file keeps its mode on O_TRUNC
        os.write(fd, data)
    finally:
        os.close(fd)


def _new_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def _cert_pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


def _key_usage(*, ca: bool) -> x509.KeyUsage:
    """A CA signs certificates; a TLS peer with an EC key signs handshakes and agrees keys."""
    return x509.KeyUsage(
        digital_signature=not ca,
        content_commitment=False,
        key_encipherment=False,
        data_encipherment=False,
        key_agreement=not ca,
        key_cert_sign=ca,
        crl_sign=ca,
        encipher_only=False,
        decipher_only=False,
    )


def _general_name(name: str) -> x509.GeneralName:
    try:
        return x509.IPAddress(ipaddress.ip_address(name))
    except ValueError:
        return x509.DNSName(name)


class CertificateAuthority:
    """The CA in one directory; `open()` creates it on first use."""

    def __init__(
        self,
        directory: Path,
        key: ec.EllipticCurvePrivateKey,
        cert: x509.Certificate,
        *,
        clock: Clock = _utc_now,
    ) -> None:
        self.directory = directory
        self._key = key
        self.cert = cert
        self.clock = clock

    @property
    def ca_pem(self) -> bytes:
        return _cert_pem(self.cert)

    @property
    def info(self) -> CertInfo:
        return CertInfo.of(self.cert)

    @classmethod
    def open(cls, directory: Path, *, clock: Clock = _utc_now) -> CertificateAuthority:
        """Load the CA from `directory`, or create it there if it holds none yet."""
        key_path, cert_path = directory / "ca.key", directory / "ca.crt"
        try:
            directory.mkdir(mode=0o700, parents=True, exist_ok=True)
            if not key_path.exists() and not cert_path.exists():
                return cls._create(directory, clock)
            key_pem, cert_pem = key_path.read_bytes(), cert_path.read_bytes()
        except FileNotFoundError as exc:
            raise PkiError(
                f"the CA in {directory} is incomplete ({exc.filename} is missing): restore it "
                "from the backup, or move the directory away to start a new CA (every site "
                "certificate must then be issued again)"
            ) from None
        except OSError as exc:
            raise PkiError(f"cannot use the CA directory {directory}: {exc}") from None
        if stat.S_IMODE(key_path.stat().st_mode) & 0o077:
            raise PkiError(
                f"{key_path} is readable by other users: chmod 600 {key_path} (and consider "
                "the CA key compromised if others could read it)"
            )
        try:
            key = serialization.load_pem_private_key(key_pem, password=None)
            cert = x509.load_pem_x509_certificate(cert_pem)
        except ValueError as exc:
            raise PkiError(f"the CA files in {directory} cannot be read: {exc}") from None
        if not isinstance(key, ec.EllipticCurvePrivateKey):
            raise PkiError(f"{key_path} is not an EC private key")
        if key.public_key() != cert.public_key():
            raise PkiError(f"{key_path} and {cert_path} do not belong together")
        return cls(directory, key, cert, clock=clock)

    @classmethod
    def _create(cls, directory: Path, clock: Clock) -> CertificateAuthority:
        key = _new_key()
        now = clock()
        name = x509.Name(
            [
                x509.NameAttribute(NameOID.ORGANIZATION_NAME, "Phoenyra BESS"),
                x509.NameAttribute(NameOID.COMMON_NAME, "Phoenyra BESS EdgeLink CA"),
            ]
        )
        cert = (
            x509.CertificateBuilder()
            .subject_name(name)
            .issuer_name(name)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - _CLOCK_SKEW)
            .not_valid_after(now + timedelta(days=CA_DAYS))
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(_key_usage(ca=True), critical=True)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), False)
            .sign(key, hashes.SHA256())
        )
        write_secret(directory / "ca.key", _key_pem(key))
        (directory / "ca.crt").write_bytes(_cert_pem(cert))
        return cls(directory, key, cert, clock=clock)

    # -- issuing ---------------------------------------------------------------------------

    def _issue(
        self,
        subject: str,
        names: Sequence[x509.GeneralName],
        usage: x509.ObjectIdentifier,
        days: int,
    ) -> tuple[bytes, x509.Certificate]:
        if days < 1:
            raise ValueError(f"validity must be at least 1 day, got {days}")
        now = self.clock()
        not_after = min(now + timedelta(days=days), self.cert.not_valid_after_utc)
        key = _new_key()
        cert = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)]))
            .issuer_name(self.cert.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - _CLOCK_SKEW)
            .not_valid_after(not_after)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(_key_usage(ca=False), critical=True)
            .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
            .add_extension(x509.SubjectAlternativeName(names), critical=False)
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_public_key(self._key.public_key()), False
            )
            .sign(self._key, hashes.SHA256())
        )
        return _key_pem(key), cert

    def issue_site(self, site_id: str, *, days: int = DEFAULT_CERT_DAYS) -> IssuedCertificate:
        """A client certificate that identifies `site_id` on EdgeLink."""
        uri = site_uri(site_id)
        key_pem, cert = self._issue(
            site_id, [x509.UniformResourceIdentifier(uri)], ExtendedKeyUsageOID.CLIENT_AUTH, days
        )
        return IssuedCertificate(site_id, key_pem, _cert_pem(cert), self.ca_pem, CertInfo.of(cert))

    def server_certificate(
        self, names: Sequence[str], *, days: int = DEFAULT_CERT_DAYS
    ) -> tuple[bytes, bytes]:
        """(key PEM, certificate PEM) of the EdgeLink server, issued again when needed."""
        if not names:
            raise ValueError("the server certificate needs at least one name (grpc_tls_names)")
        key_path, cert_path = self.directory / "server.key", self.directory / "server.crt"
        wanted = [_general_name(n) for n in dict.fromkeys(names)]
        try:
            if key_path.exists() and cert_path.exists():
                key_pem, cert_pem = key_path.read_bytes(), cert_path.read_bytes()
                if self._still_good(cert_pem, wanted):
                    return key_pem, cert_pem
            key_pem, cert = self._issue(
                str(names[0]), wanted, ExtendedKeyUsageOID.SERVER_AUTH, days
            )
            cert_pem = _cert_pem(cert)
            write_secret(key_path, key_pem, overwrite=True)
            cert_path.write_bytes(cert_pem)
        except OSError as exc:
            raise PkiError(
                f"cannot write the server certificate in {self.directory}: {exc}"
            ) from None
        return key_pem, cert_pem

    def _still_good(self, cert_pem: bytes, wanted: Sequence[x509.GeneralName]) -> bool:
        try:
            cert = x509.load_pem_x509_certificate(cert_pem)
            cert.verify_directly_issued_by(self.cert)
            names = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        except (ValueError, TypeError, InvalidSignature, x509.ExtensionNotFound):
            return False
        if set(names) != set(wanted):
            return False
        start, end = cert.not_valid_before_utc, cert.not_valid_after_utc
        return self.clock() < end - (end - start) / 3
