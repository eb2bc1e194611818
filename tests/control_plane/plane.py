"""Helpers to run the real control plane in a test: the app's lifespan (store + gRPC server on
a free loopback port), optionally served over real HTTP by uvicorn on a free port.

Access control: `plane.client` sends an admin key (created on the plane's own store at start),
so a test of a route's behaviour need not care about keys; `plane.anonymous` sends none, and
`await plane.headers(Role.VIEWER)` gives the headers of a fresh key with any other role."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import uvicorn
from fastapi import FastAPI

from control_plane.app import create_app
from control_plane.auth.models import Role
from control_plane.config import PlaneSettings


def settings_for(tmp_path: Path, **overrides: Any) -> PlaneSettings:
    values: dict[str, Any] = {
        "data_dir": tmp_path / "plane",
        "grpc_port": 0,
        "http_port": 0,
        "shutdown_grace_s": 0.5,
    }
    values.update(overrides)
    return PlaneSettings(**values)


async def issue_key(app: FastAPI, role: Role, name: str | None = None) -> str:
    """A new API key of `role` on the running app's store (its token)."""
    auth = app.state.auth
    issued = await asyncio.to_thread(lambda: auth.create(name=name or f"test-{role}", role=role))
    return str(issued.token)


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


@dataclass
class RunningPlane:
    app: FastAPI
    client: httpx.AsyncClient  # authenticated as admin
    anonymous: httpx.AsyncClient  # no credentials
    grpc_port: int
    http_port: int | None = None
    admin_key: str = ""

    @property
    def grpc_target(self) -> str:
        return f"127.0.0.1:{self.grpc_port}"

    async def headers(self, role: Role) -> dict[str, str]:
        """Authorization headers of a new key with `role`."""
        return bearer(await issue_key(self.app, role))


@contextlib.asynccontextmanager
async def running_plane(
    settings: PlaneSettings, *, http: bool = False
) -> AsyncIterator[RunningPlane]:
    """The plane's lifespan; with `http`, uvicorn serves it on 127.0.0.1 (settings.http_port)."""
    app = create_app(settings)
    if not http:
        async with app.router.lifespan_context(app):
            transport = httpx.ASGITransport(app=app)
            key = await issue_key(app, Role.ADMIN, "test-admin")
            async with (
                httpx.AsyncClient(
                    transport=transport, base_url="http://plane", headers=bearer(key)
                ) as client,
                httpx.AsyncClient(transport=transport, base_url="http://plane") as anonymous,
            ):
                yield RunningPlane(app, client, anonymous, app.state.grpc_port, admin_key=key)
        return
    config = uvicorn.Config(
        app, host="127.0.0.1", port=settings.http_port, log_config=None, lifespan="on"
    )
    server = uvicorn.Server(config)
    task = asyncio.create_task(server.serve())
    try:
        await until(lambda: server.started or task.done(), what="uvicorn start")
        if task.done():
            task.result()
            raise AssertionError("uvicorn stopped at start")
        port = server.servers[0].sockets[0].getsockname()[1]
        key = await issue_key(app, Role.ADMIN, "test-admin")
        base = f"http://127.0.0.1:{port}"
        async with (
            httpx.AsyncClient(base_url=base, headers=bearer(key)) as client,
            httpx.AsyncClient(base_url=base) as anonymous,
        ):
            yield RunningPlane(app, client, anonymous, app.state.grpc_port, port, admin_key=key)
    finally:
        server.should_exit = True
        await task


async def until(predicate: Callable[[], object], *, timeout: float = 15.0, what: str) -> None:
    """Poll until predicate() is truthy; AssertionError after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:g} s waiting for {what}")
        await asyncio.sleep(0.01)


async def until_async(probe: Callable[[], Any], *, timeout: float = 15.0, what: str) -> Any:
    """Await probe() until it returns something truthy, which is returned."""
    deadline = time.monotonic() + timeout
    while True:
        value = await probe()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:g} s waiting for {what}")
        await asyncio.sleep(0.02)
