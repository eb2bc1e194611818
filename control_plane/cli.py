"""`bess-plane`: run the control plane.

    bess-plane serve [--config FILE]     HTTP API + EdgeLink gRPC server in one process
    bess-plane check-config [--config FILE]
    bess-plane keys create --name N --role R [--expires-in DAYS]
    bess-plane keys list | revoke ID | rotate ID [--grace-hours H]

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
        f"  EdgeLink gRPC {settings.grpc_host}:{settings.grpc_port}  store "
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
        engine = create_engine(database_url=url, sqlite_path=settings.sqlite_file)
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


def main(argv: Sequence[str] | None = None) -> int:
    from .auth.models import Role

    parser = argparse.ArgumentParser(prog="bess-plane", description=__doc__.split("\n\n")[0])
    parser.add_argument("--version", action="version", version=f"bess-plane {__version__}")
    commands = parser.add_subparsers(dest="command", required=True)
    for name, text in (
        ("serve", "run the HTTP API and the EdgeLink server"),
        ("check-config", "validate the settings and the policy file, print them (secrets masked)"),
    ):
        sub = commands.add_parser(name, help=text)
        sub.add_argument("--config", type=Path, help="settings file (YAML); env vars override it")
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
    args = parser.parse_args(argv)
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
    configure_logging(settings)
    try:
        asyncio.run(serve(settings))
    except KeyboardInterrupt:
        return 130
    return 0
