"""`bess-plane`: run the control plane.

    bess-plane serve [--config FILE]     HTTP API + EdgeLink gRPC server in one process
    bess-plane check-config [--config FILE]
    bess-plane site-cert SITE_ID [--out DIR] [--days N] [--force] [--config FILE]
    bess-plane ca show [--config FILE]   the EdgeLink CA's fingerprint and expiry

Settings come from the file and the environment (see `control_plane/config.py`).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import sys
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path

from . import __version__
from .config import PlaneSettings, SettingsError, load_settings
from .pki import CertificateAuthority, InvalidSiteIdError, PkiError, write_secret

log = logging.getLogger("control_plane")


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time (UTC), level, logger, message (+ exception)."""

    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, ensure_ascii=False)


def configure_logging(settings: PlaneSettings) -> None:
    handler = logging.StreamHandler(sys.stderr)
    if settings.log_format == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)-7s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(settings.log_level)
    for name in ("uvicorn", "uvicorn.error", "uvicorn.access"):
        logging.getLogger(name).handlers[:] = []  # through the root handler, same format


async def serve(settings: PlaneSettings) -> None:
    import uvicorn

    from .app import create_app

    app = create_app(settings)
    config = uvicorn.Config(
        app,
        host=settings.http_host,
        port=settings.http_port,
        log_config=None,
        lifespan="on",
        timeout_graceful_shutdown=max(1, round(settings.shutdown_grace_s)),
    )
    server = uvicorn.Server(config)
    base = f"http://{settings.http_host}:{settings.http_port}"
    print(
        f"bess-plane {__version__}: API {base}/api  docs {base}/docs  metrics {base}/metrics\n"
        f"  EdgeLink gRPC {settings.grpc_host}:{settings.grpc_port} "
        f"({'mutual TLS' if settings.edgelink_tls == 'mtls' else 'plaintext'})  store "
        f"{settings.store_description}\n"
        "  HTTP authentication is NOT implemented yet: keep the API on loopback or behind a "
        "proxy",
        flush=True,
    )
    await server.serve()


SITE_FILES = ("site.key", "site.crt", "ca.crt")


def site_cert(
    settings: PlaneSettings, site_id: str, out: Path | None, days: int | None, *, force: bool
) -> int:
    """Issue a site certificate into `out`; the agent config lines go to stdout."""
    directory = out or Path(f"site-{site_id}")
    present = [name for name in SITE_FILES if (directory / name).exists()]
    if present and not force:
        print(
            f"bess-plane site-cert: {directory} already holds {', '.join(present)}; "
            "pass --force to replace them (the old certificate stays valid until it expires)",
            file=sys.stderr,
        )
        return 1
    try:
        ca = CertificateAuthority.open(settings.pki_directory)
        issued = ca.issue_site(site_id, days=days or settings.site_cert_days)
    except InvalidSiteIdError as exc:
        print(f"bess-plane site-cert: {exc}", file=sys.stderr)
        return 2
    except PkiError as exc:
        print(f"bess-plane site-cert: {exc}", file=sys.stderr)
        return 1
    try:
        directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        write_secret(directory / "site.key", issued.key_pem, overwrite=True)
        (directory / "site.crt").write_bytes(issued.cert_pem)
        (directory / "ca.crt").write_bytes(issued.ca_pem)
    except OSError as exc:
        print(f"bess-plane site-cert: cannot write to {directory}: {exc}", file=sys.stderr)
        return 1
    where = directory.resolve()
    target = f"{settings.tls_names[-1]}:{settings.grpc_port or 50051}"
    print(
        f"site certificate for {site_id!r} in {where} (site.key is secret: mode 0600)\n"
        f"  valid until {issued.info.not_after:%Y-%m-%d %H:%M} UTC, serial "
        f"{issued.info.serial:x}\n"
        f"  CA SHA-256 {ca.info.fingerprint_sha256}\n"
        "\n"
        "Copy the three files to the agent (e.g. /etc/bess-edge/tls/, readable by the agent's\n"
        "user only) and put this in its site file (the target is the plane's address as the\n"
        "site reaches it; it must be one of the plane's grpc_tls_names):\n"
        "\n"
        "uplink:\n"
        f"  target: {target}\n"
        "  tls:\n"
        "    enabled: true\n"
        "    ca_file: /etc/bess-edge/tls/ca.crt\n"
        "    cert_file: /etc/bess-edge/tls/site.crt\n"
        "    key_file: /etc/bess-edge/tls/site.key\n"
        "\n"
        "Then check it with `bess-edge doctor`.",
        flush=True,
    )
    return 0


def ca_show(settings: PlaneSettings) -> int:
    try:
        ca = CertificateAuthority.open(settings.pki_directory)
    except PkiError as exc:
        print(f"bess-plane ca show: {exc}", file=sys.stderr)
        return 1
    info = ca.info
    print(
        f"CA        {info.subject}\n"
        f"directory {settings.pki_directory.resolve()}\n"
        f"SHA-256   {info.fingerprint_sha256}\n"
        f"valid     {info.not_before:%Y-%m-%d} .. {info.not_after:%Y-%m-%d} UTC"
    )
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="bess-plane", description=__doc__.split("\n\n")[0])
    parser.add_argument("--version", action="version", version=f"bess-plane {__version__}")
    commands = parser.add_subparsers(dest="command", required=True)
    subs = {}
    for name, text in (
        ("serve", "run the HTTP API and the EdgeLink server"),
        ("check-config", "validate the settings and print them (secrets masked)"),
        ("site-cert", "issue a site certificate for EdgeLink mTLS (CA created on first use)"),
        ("ca", "the EdgeLink certificate authority"),
    ):
        sub = commands.add_parser(name, help=text)
        sub.add_argument("--config", type=Path, help="settings file (YAML); env vars override it")
        subs[name] = sub
    cert = subs["site-cert"]
    cert.add_argument("site_id", metavar="SITE_ID", help="the site id the agent's Hello sends")
    cert.add_argument("--out", type=Path, help="directory for the files; default ./site-SITE_ID")
    cert.add_argument("--days", type=int, help="validity in days; default site_cert_days (397)")
    cert.add_argument("--force", action="store_true", help="replace files already there")
    subs["ca"].add_argument("action", choices=["show"], help="show: fingerprint and expiry")
    args = parser.parse_args(argv)
    try:
        settings = load_settings(args.config)
    except SettingsError as exc:
        print(f"bess-plane: {exc}", file=sys.stderr)
        return 2
    if args.command == "check-config":
        print(json.dumps(settings.model_dump(mode="json"), indent=2))
        return 0
    if args.command == "site-cert":
        if args.days is not None and not 1 <= args.days <= 3650:
            print("bess-plane site-cert: --days must be 1 to 3650", file=sys.stderr)
            return 2
        return site_cert(settings, args.site_id, args.out, args.days, force=args.force)
    if args.command == "ca":
        return ca_show(settings)
    configure_logging(settings)
    try:
        asyncio.run(serve(settings))
    except KeyboardInterrupt:
        return 130
    return 0
