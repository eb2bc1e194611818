"""`bess-plane`: run the control plane.

    bess-plane serve [--config FILE]     HTTP API + EdgeLink gRPC server in one process
    bess-plane check-config [--config FILE]
    bess-plane keys create --name N --role R [--expires-in DAYS]
    bess-plane keys list | revoke ID | rotate ID [--grace-hours H]
    bess-plane site-cert SITE_ID [--out DIR] [--days N] [--force] [--config FILE]
    bess-plane ca show [--config FILE]   the EdgeLink CA's fingerprint and expiry
    bess-plane forecast backtest --prices FILE [--zone BE]   price models' MAE/RMSE table
    bess-plane prices import FILE --zone BE | fetch --zone AT --start D --end D
                      | show --zone AT --day D | demo --zone AT --shape FILE   (market/cli.py)
    bess-plane backtest --prices FILE --battery ...   optimiser back-test (optimiser/cli.py)
    bess-plane risk backtest --prices FILE [--zone BE]   Kupiec test of VaR (risk/cli.py)

`keys` works on the store the settings name (same as `serve`, running or not). `create` and
`rotate` print the new key alone on stdout, once (`KEY=$(bess-plane keys create ...)`); what
else they say goes to stderr, and nothing prints or logs a key anywhere else.

Settings come from the file and the environment (see `control_plane/config.py`); the exchange
policy file (`POLICY_PATH`) is validated by both commands, and a bad one stops the plane.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import sys
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path

from . import __version__
from .config import PlaneSettings, SettingsError, load_settings
from .exchange.policy import Policy, PolicyError, load_policy
from .market import cli as market_cli
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
        "  every /api route needs an API key (create one: bess-plane keys create --name N "
        "--role admin)",
        flush=True,
    )
    await server.serve()


def keys_command(settings: PlaneSettings, args: argparse.Namespace) -> int:
    """Run one `keys` subcommand on the configured store."""
    from .auth.keys import KeyStore
    from .auth.models import KeyStateError, Role, UnknownKeyError
    from .auth.service import AuthService
    from .db import StoreError, create_engine

    url = settings.database_url.get_secret_value() if settings.database_url else None
    try:
        engine = create_engine(
            database_url=url,
            sqlite_path=settings.sqlite_file,
            sqlite_synchronous=settings.sqlite_synchronous,
        )
    except StoreError as exc:
        print(f"bess-plane: {exc}", file=sys.stderr)
        return 1
    try:
        auth = AuthService(store=KeyStore(engine))
        auth.open()
        now = auth.clock()
        if args.keys_command == "list":
            rows = [
                f"{k.key_id}  {k.masked:<25} {k.role:<10} {k.state(now):<8} "
                f"{k.created_at:%Y-%m-%d %H:%M}Z  "
                f"{'-' if k.expires_at is None else f'{k.expires_at:%Y-%m-%d %H:%M}Z':<17} "
                f"{k.name}"
                for k in auth.list()
            ]
            header = f"{'id':<16}  {'key':<25} {'role':<10} {'state':<8} {'created':<18} "
            print(header + f"{'expires':<17} name")
            print("\n".join(rows) if rows else "(no keys: create one with `keys create`)")
            return 0
        if args.keys_command == "create":
            expires = None if args.expires_in is None else timedelta(days=args.expires_in)
            issued = auth.create(name=args.name, role=Role(args.role), expires_in=expires)
            what = f"created key {issued.key.key_id} ({issued.key.name!r}, role {issued.key.role})"
        elif args.keys_command == "rotate":
            issued = auth.rotate(args.key_id, grace=timedelta(hours=args.grace_hours))
            what = (
                f"rotated {args.key_id} to {issued.key.key_id}; the old key works until "
                f"{now + timedelta(hours=args.grace_hours):%Y-%m-%d %H:%M}Z at the latest"
            )
        else:
            key = auth.revoke(args.key_id)
            print(f"revoked key {key.key_id} ({key.name!r})", file=sys.stderr)
            return 0
    except (UnknownKeyError, KeyStateError, ValueError) as exc:
        print(f"bess-plane keys: {exc}", file=sys.stderr)
        return 1
    except StoreError as exc:
        print(f"bess-plane keys: {exc}", file=sys.stderr)
        return 1
    finally:
        engine.dispose()
    print(f"{what}. The key follows on stdout; it is shown this once:", file=sys.stderr)
    print(issued.token, flush=True)
    return 0


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


def forecast_backtest(prices: Path, zone_code: str, warmup_days: int) -> int:
    """Print the back-test table of the price models over a price file."""
    from .forecast.backtest import format_table, timed_backtest
    from .forecast.models import hourly_from_points
    from .market.csv_import import read_price_csv
    from .market.models import MarketDataError, zone

    try:
        found = zone(zone_code)
        points = read_price_csv(prices, zone_code=found.code).points
        series = hourly_from_points(points, timezone=found.timezone)
        rows, seconds = timed_backtest(series, warmup_days=warmup_days)
    except (MarketDataError, ValueError) as exc:
        print(f"bess-plane forecast backtest: {exc}", file=sys.stderr)
        return 1
    if not rows:
        print(
            f"bess-plane forecast backtest: {len(series)} hours in {prices} are too few for "
            f"a {warmup_days}-day warm-up and one forecast",
            file=sys.stderr,
        )
        return 1
    print(
        f"{found.code}: {len(series)} hours from {series.start:%Y-%m-%d %H:%M}Z, origins daily "
        f"12:00 {found.timezone} after {warmup_days} days; MAE/RMSE of P50 in EUR/MWh"
    )
    print(format_table(rows))
    print(f"({seconds:.1f} s)")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    from .auth.models import Role

    parser = argparse.ArgumentParser(prog="bess-plane", description=__doc__.split("\n\n")[0])
    parser.add_argument("--version", action="version", version=f"bess-plane {__version__}")
    commands = parser.add_subparsers(dest="command", required=True)
    subs = {}
    for name, text in (
        ("serve", "run the HTTP API and the EdgeLink server"),
        ("check-config", "validate the settings and the policy file, print them (secrets masked)"),
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
    keys = commands.add_parser("keys", help="create, list, revoke and rotate API keys")
    keys_commands = keys.add_subparsers(dest="keys_command", required=True)
    create = keys_commands.add_parser("create", help="a new key, printed once on stdout")
    create.add_argument("--name", required=True, help="who or what uses the key")
    create.add_argument("--role", required=True, choices=[r.value for r in Role])
    create.add_argument("--expires-in", type=float, metavar="DAYS", help="lifetime in days")
    keys_commands.add_parser("list", help="every key, masked")
    revoke = keys_commands.add_parser("revoke", help="refuse the key from now on")
    revoke.add_argument("key_id", metavar="ID")
    rotate = keys_commands.add_parser("rotate", help="a successor key; the old one ends later")
    rotate.add_argument("key_id", metavar="ID")
    rotate.add_argument(
        "--grace-hours", type=float, default=24.0, help="how long the old key still works"
    )
    for sub in (create, revoke, rotate, keys_commands.choices["list"]):
        sub.add_argument("--config", type=Path, help="settings file (YAML); env vars override it")
    forecast = commands.add_parser("forecast", help="price forecast models")
    backtest = forecast.add_subparsers(dest="forecast_command", required=True).add_parser(
        "backtest", help="rolling-origin back-test over a price CSV: MAE, RMSE, P10-P90 coverage"
    )
    backtest.add_argument("--prices", type=Path, required=True, help="price CSV (read_price_csv)")
    backtest.add_argument("--zone", default="BE", help="bidding zone of the file (default BE)")
    backtest.add_argument("--warmup-days", type=int, default=28, help="history before 1st origin")
    market_cli.add_parser(commands)
    # -- optimiser back-test: works on files, needs no settings (control_plane/optimiser/cli.py)
    from .optimiser.cli import add_backtest_parser, backtest_command

    add_backtest_parser(commands)
    from .risk import cli as risk_cli  # risk back-test: files only, no settings

    risk_cli.add_parser(commands)
    args = parser.parse_args(argv)
    if args.command == "forecast":
        return forecast_backtest(args.prices, args.zone, args.warmup_days)
    if args.command == "backtest":
        return backtest_command(args)
    if args.command == "risk":
        return risk_cli.risk_command(args)
    # --
    try:
        settings = load_settings(args.config)
    except SettingsError as exc:
        print(f"bess-plane: {exc}", file=sys.stderr)
        return 2
    policy: Policy | None = None
    if settings.policy_path is not None:
        try:  # a bad policy stops the plane before it starts, with every problem named
            policy = load_policy(settings.policy_path)
        except PolicyError as exc:
            print(f"bess-plane: {exc}", file=sys.stderr)
            return 2
    if args.command == "check-config":
        shown = settings.model_dump(mode="json")
        if policy is not None:
            shown["policy"] = policy.model_dump(mode="json")
        print(json.dumps(shown, indent=2))
        return 0
    if args.command == "keys":
        return keys_command(settings, args)
    if args.command == "prices":
        return market_cli.prices_command(settings, args)
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
