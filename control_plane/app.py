"""The control plane's FastAPI app: one process, the HTTP API and the EdgeLink gRPC server in
one event loop (DESIGN decision 3).

`create_app(settings)` builds the app; its lifespan opens the store (migrating it), starts the
grpc.aio server on the configured port (0 = a free one; the bound port is `app.state.grpc_port`)
- with `edgelink_tls: mtls` behind TLS that requires a site certificate of the plane's CA,
which `control_plane/pki.py` creates on first use - and on the way out drains the agent
sessions, stops the server with a grace period and closes the store. Operational routes:
`/health` (the process answers), `/ready` (the store answers), `/metrics` (Prometheus text
format).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AsyncExitStack, asynccontextmanager

import grpc
import grpc.aio
from fastapi import FastAPI, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Histogram, generate_latest

from . import __version__, db
from .config import PlaneSettings
from .fleet import api as fleet_api
from .fleet.edgelink import mtls_credentials, start_server
from .fleet.service import FleetMetrics, FleetService
from .fleet.store import FleetStore
from .pki import CertificateAuthority

log = logging.getLogger(__name__)


def create_app(settings: PlaneSettings) -> FastAPI:
    registry = CollectorRegistry()
    request_seconds = Histogram(
        "bess_plane_http_request_duration_seconds",
        "HTTP request latency by route template",
        ["method", "route", "status"],
        registry=registry,
    )
    fleet_metrics = FleetMetrics(registry)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        async with AsyncExitStack() as stack:
            url = settings.database_url.get_secret_value() if settings.database_url else None
            engine = db.create_engine(database_url=url, sqlite_path=settings.sqlite_file)
            stack.callback(engine.dispose)
            fleet = FleetService(
                store=FleetStore(engine),
                metrics=fleet_metrics,
                plane_version=__version__,
                heartbeat_interval_s=settings.heartbeat_interval_s,
            )
            await fleet.open()
            stack.push_async_callback(fleet.close)
            credentials = None
            if settings.edgelink_tls == "mtls":
                credentials = await asyncio.to_thread(_edgelink_credentials, settings)
            server, grpc_port = await start_server(
                fleet,
                host=settings.grpc_host,
                port=settings.grpc_port,
                keepalive_time_s=settings.agent_keepalive_time_s,
                credentials=credentials,
            )
            stack.push_async_callback(_stop_grpc, server, fleet, settings.shutdown_grace_s)
            app.state.engine = engine
            app.state.fleet = fleet
            app.state.grpc_port = grpc_port
            log.info(
                "control plane %s: store %s, EdgeLink gRPC on %s:%d (%s)",
                __version__,
                settings.store_description,
                settings.grpc_host,
                grpc_port,
                "mutual TLS, site certificates required"
                if credentials is not None
                else "plaintext, no TLS",
            )
            yield
            log.info("control plane: shutting down (grace %g s)", settings.shutdown_grace_s)

    app = FastAPI(
        title="Phoenyra BESS control plane",
        version=__version__,
        lifespan=lifespan,
        description="Fleet status, telemetry history and schedules of battery sites. "
        "Authentication is not implemented yet: keep the plane on a trusted network.",
    )
    app.state.settings = settings
    app.state.registry = registry

    @app.exception_handler(RequestValidationError)
    async def _invalid_request(request: Request, exc: RequestValidationError) -> JSONResponse:
        # FastAPI's default echoes the input back, and fails on a NaN/Infinity it got (not
        # JSON-encodable): answer with where and what only.
        detail = [
            {"type": e.get("type"), "loc": list(e.get("loc", ())), "msg": e.get("msg")}
            for e in exc.errors()
        ]
        return JSONResponse({"detail": detail}, status_code=422)

    @app.middleware("http")
    async def _time_requests(
        request: Request, call_next: Callable[[Request], Awaitable[Response]]
    ) -> Response:
        started = time.perf_counter()
        code = 500
        try:
            response = await call_next(request)
            code = response.status_code
            return response
        finally:
            route = request.scope.get("route")
            # The route template, never the raw path: bounded label values.
            template = getattr(route, "path", "unmatched")
            request_seconds.labels(request.method, template, str(code)).observe(
                time.perf_counter() - started
            )

    @app.get("/health", tags=["operations"])
    async def health() -> dict[str, str]:
        """Liveness: the process answers."""
        return {"status": "ok", "version": __version__}

    @app.get("/ready", tags=["operations"])
    async def ready(request: Request) -> JSONResponse:
        """Readiness: the store answers a query."""
        engine = getattr(request.app.state, "engine", None)
        if engine is None:
            return JSONResponse({"status": "starting"}, status_code=503)
        try:
            await asyncio.to_thread(db.ping, engine)
        except db.StoreError as exc:
            return JSONResponse({"status": "unavailable", "detail": str(exc)}, status_code=503)
        return JSONResponse({"status": "ready", "store": engine.dialect.name})

    @app.get("/metrics", tags=["operations"], include_in_schema=False)
    async def metrics() -> Response:
        return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)

    app.include_router(fleet_api.router)
    return app


def _edgelink_credentials(settings: PlaneSettings) -> grpc.ServerCredentials:
    """The CA (created on first use) and a current server certificate, as gRPC credentials."""
    ca = CertificateAuthority.open(settings.pki_directory)
    key_pem, cert_pem = ca.server_certificate(settings.tls_names, days=settings.server_cert_days)
    log.info(
        "EdgeLink mTLS: CA %s (SHA-256 %s), server certificate for %s",
        ca.info.subject,
        ca.info.fingerprint_sha256,
        ", ".join(settings.tls_names),
    )
    return mtls_credentials(key_pem=key_pem, cert_pem=cert_pem, ca_pem=ca.ca_pem)


async def _stop_grpc(server: grpc.aio.Server, fleet: FleetService, grace_s: float) -> None:
    fleet.drain()  # sessions end with UNAVAILABLE: agents keep their outbox and reconnect
    await server.stop(grace_s)
