"""`bess-plane`: run the control plane.

    bess-plane serve [--config FILE]     HTTP API + EdgeLink gRPC server in one process
    bess-plane check-config [--config FILE]

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
from datetime import UTC, datetime
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
        "  authentication is NOT implemented yet: keep the plane on loopback or behind a proxy",
        flush=True,
    )
    await server.serve()


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="bess-plane", description=__doc__.split("\n\n")[0])
    parser.add_argument("--version", action="version", version=f"bess-plane {__version__}")
    commands = parser.add_subparsers(dest="command", required=True)
    for name, text in (
        ("serve", "run the HTTP API and the EdgeLink server"),
        ("check-config", "validate the settings and the policy file, print them (secrets masked)"),
    ):
        sub = commands.add_parser(name, help=text)
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
    configure_logging(settings)
    try:
        asyncio.run(serve(settings))
    except KeyboardInterrupt:
        return 130
    return 0
