"""What `bess-edge doctor` needs from the site certificate, without a crypto library.

The agent does TLS through gRPC alone; pulling `cryptography` onto every edge box only to show
a certificate's site and expiry is not worth it (DESIGN decision 1: the agent is light). This
reads just those fields from the DER inside the PEM: the validity and the subject alternative
names of type URI (the plane writes the site there as `urn:bess:site:<SITE_ID>`, see
`control_plane/pki.py`), and the subject's common name. It verifies nothing: trust is the TLS
handshake's business.

    TBSCertificate ::= SEQUENCE { [0] version, serial, signature, issuer, validity
                                  SEQUENCE { notBefore, notAfter }, subject, spki,
                                  [1] [2] unique ids, [3] extensions }
"""

from __future__ import annotations

import base64
import binascii
import re
from dataclasses import dataclass
from datetime import UTC, datetime

SITE_URI_PREFIX = "urn:bess:site:"

_PEM = re.compile(rb"-----BEGIN CERTIFICATE-----(.+?)-----END CERTIFICATE-----", re.DOTALL)
_SEQUENCE, _OID, _OCTETS = 0x30, 0x06, 0x04
_UTC_TIME, _GENERALIZED_TIME = 0x17, 0x18
_EXPLICIT_VERSION, _EXPLICIT_EXTENSIONS, _SAN_URI = 0xA0, 0xA3, 0x86
_OID_SAN = bytes([0x55, 0x1D, 0x11])  # 2.5.29.17 subjectAltName
_OID_CN = bytes([0x55, 0x04, 0x03])  # 2.5.4.3 commonName


class CertificateFormatError(ValueError):
    """Not a PEM certificate this reader understands; the message says what is wrong."""


@dataclass(frozen=True, slots=True)
class CertificateSummary:
    common_name: str | None
    not_before: datetime
    not_after: datetime
    uris: tuple[str, ...]

    @property
    def site_ids(self) -> tuple[str, ...]:
        """The sites the certificate names (the plane accepts exactly one)."""
        return tuple(
            uri.removeprefix(SITE_URI_PREFIX)
            for uri in self.uris
            if uri.startswith(SITE_URI_PREFIX)
        )


def _tlv(der: bytes, pos: int, end: int) -> tuple[int, int, int]:
    """(tag, content start, content end) of the element at `pos`."""
    if pos + 2 > end:
        raise CertificateFormatError("truncated DER")
    tag, length = der[pos], der[pos + 1]
    pos += 2
    if length & 0x80:
        count = length & 0x7F
        if count == 0 or count > 4 or pos + count > end:
            raise CertificateFormatError("bad DER length")
        length = int.from_bytes(der[pos : pos + count], "big")
        pos += count
    if pos + length > end:
        raise CertificateFormatError("truncated DER")
    return tag, pos, pos + length


def _children(der: bytes, start: int, end: int) -> list[tuple[int, int, int]]:
    items = []
    while start < end:
        item = _tlv(der, start, end)
        items.append(item)
        start = item[2]
    return items


def _time(der: bytes, tag: int, start: int, end: int) -> datetime:
    text = der[start:end].decode("ascii", "replace")
    formats = {_UTC_TIME: "%y%m%d%H%M%SZ", _GENERALIZED_TIME: "%Y%m%d%H%M%SZ"}
    if tag not in formats:
        raise CertificateFormatError(f"validity is not a time (tag {tag:#x})")
    try:
        return datetime.strptime(text, formats[tag]).replace(tzinfo=UTC)
    except ValueError:
        raise CertificateFormatError(f"unreadable validity time {text!r}") from None


def read_pem_certificate(pem: bytes) -> CertificateSummary:
    """The first certificate of a PEM file (a chain starts with the site's own)."""
    found = _PEM.search(pem)
    if found is None:
        raise CertificateFormatError("no '-----BEGIN CERTIFICATE-----' block")
    try:
        der = base64.b64decode(b"".join(found.group(1).split()), validate=True)
    except (binascii.Error, ValueError):
        raise CertificateFormatError("the PEM block is not valid base64") from None
    return read_der_certificate(der)


def read_der_certificate(der: bytes) -> CertificateSummary:
    tag, start, end = _tlv(der, 0, len(der))
    if tag != _SEQUENCE:
        raise CertificateFormatError("not an X.509 certificate")
    tbs_tag, tbs_start, tbs_end = _tlv(der, start, end)
    if tbs_tag != _SEQUENCE:
        raise CertificateFormatError("not an X.509 certificate")
    fields = _children(der, tbs_start, tbs_end)
    if fields and fields[0][0] == _EXPLICIT_VERSION:
        fields = fields[1:]
    if len(fields) < 6:
        raise CertificateFormatError("the certificate lacks fields")
    # serial, signature, issuer, validity, subject, spki, then optional [1] [2] [3]
    validity = _children(der, fields[3][1], fields[3][2])
    if len(validity) != 2:
        raise CertificateFormatError("the validity is not two times")
    not_before = _time(der, *validity[0])
    not_after = _time(der, *validity[1])
    uris: list[str] = []
    for tag, s, e in fields[6:]:
        if tag == _EXPLICIT_EXTENSIONS:
            uris += _san_uris(der, s, e)
    return CertificateSummary(_common_name(der, *fields[4][1:]), not_before, not_after, tuple(uris))


def _san_uris(der: bytes, start: int, end: int) -> list[str]:
    outer = _children(der, start, end)
    if len(outer) != 1 or outer[0][0] != _SEQUENCE:
        raise CertificateFormatError("the extensions are not one SEQUENCE")
    _, seq_start, seq_end = outer[0]
    for _, ext_start, ext_end in _children(der, seq_start, seq_end):
        parts = _children(der, ext_start, ext_end)
        if not parts or parts[0][0] != _OID or der[parts[0][1] : parts[0][2]] != _OID_SAN:
            continue
        value = parts[-1]
        if value[0] != _OCTETS:
            raise CertificateFormatError("subjectAltName value is not an OCTET STRING")
        _, names_start, names_end = _tlv(der, value[1], value[2])
        return [
            der[s:e].decode("ascii", "replace")
            for tag, s, e in _children(der, names_start, names_end)
            if tag == _SAN_URI
        ]
    return []


def _common_name(der: bytes, start: int, end: int) -> str | None:
    for _, set_start, set_end in _children(der, start, end):
        for _, attr_start, attr_end in _children(der, set_start, set_end):
            parts = _children(der, attr_start, attr_end)
            if len(parts) == 2 and der[parts[0][1] : parts[0][2]] == _OID_CN:
                return der[parts[1][1] : parts[1][2]].decode("utf-8", "replace")
    return None
