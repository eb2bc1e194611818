"""The control plane's FastAPI app: one process, the HTTP API and the EdgeLink gRPC server in
one event loop (DESIGN decision 3).

`create_app(settings)` builds the app; its lifespan opens the store (migrating it), rebuilds
the exchange's order books from it (`app.state.exchange`), binds the event hub for `/ws` to the
loop (`app.state.events`; the fleet's telemetry, alarms and sessions feed it), starts the
grpc.aio server on the configured port (0 = a free one; the bound port is `app.state.grpc_port`)
- with `edgelink_tls: mtls` behind TLS that requires a site certificate of the plane's CA,
which `control_plane/pki.py` creates on first use - and on the way out drains the agent
sessions, stops the server with a grace period and closes the store. Operational routes:
`/health` (the process answers), `/ready` (the store answers), `/metrics` (Prometheus text
format).

Access control (control_plane/auth): every other route depends on a role (`ViewerDep`,
`TraderDep`, ...). The open ones are listed in `OPEN_PATHS`; tests/control_plane/test_access.py
walks the routes and fails for any other route that answers without credentials. /ready is
open because orchestrator probes carry no key, so it says only "ready" or "unavailable".
/docs and /openapi.json are open: they describe the API and reveal no data.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Mapping, Sequence
from contextlib import AsyncExitStack, asynccontextmanager, contextmanager
from datetime import date, datetime
from typing import Any

import grpc
import grpc.aio
from fastapi import FastAPI, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Histogram, generate_latest
from sqlalchemy.engine import Engine

from . import __version__, db, events_api
from .auth import api as auth_api
from .auth import deps as auth_deps
from .auth.keys import KeyStore
from .auth.service import AuthMetrics, AuthService
from .auth.signing import HmacVerifier
from .billing import api as billing_api
from .billing.errors import BillingStoreError, SettlementRefusedError
from .billing.service import BillingMetrics, PaymentListener, open_billing
from .config import PlaneSettings
from .credit import api as credit_api
from .credit.models import CreditError
from .credit.service import CreditMetrics, CreditService
from .credit.store import CreditStore
from .events import EventHub, EventMetrics, TelemetryCoalescer
from .exchange import api as exchange_api
from .exchange.checks import checks_from_policy
from .exchange.metrics import ExchangeMetrics
from .exchange.models import PlacedOrder
from .exchange.policy import Policy, load_policy
from .exchange.service import Exchange, PreTradeCheck, utc_now
from .exchange.store import SqlOrderStore
from .fleet import api as fleet_api
from .fleet.edgelink import mtls_credentials, start_server
from .fleet.service import FleetMetrics, FleetService
from .fleet.store import FleetStore
from .forecast import api as forecast_api
from .forecast.service import PriceHistory, create_forecast_service
from .grid import api as grid_api
from .grid.checks import GridCapacity
from .grid.service import GridMetrics, GridService, open_grid
from .market import api as market_api
from .market.feed import FeedMetrics, open_market
from .optimiser import api as optimiser_api
from .optimiser.forecasting import HISTORY_DAYS as FORECAST_HISTORY_DAYS
from .optimiser.forecasting import price_forecaster
from .optimiser.service import OptimiserService
from .optimiser.store import AutoSubmitStore
from .pki import CertificateAuthority
from .risk import api as risk_api
from .risk.positions import FleetDispatch
from .risk.service import RiskLimitCheck, RiskMetrics, RiskService, RiskSettings
from .risk.store import LimitStore
from .site_states import FleetSiteStates

log = logging.getLogger(__name__)

OPEN_PATHS = frozenset(
    {"/health", "/ready", "/metrics", "/docs", "/docs/oauth2-redirect", "/redoc", "/openapi.json"}
)
"""Routes anyone may call: probes, metrics and the API description (no data)."""


def create_app(
    settings: PlaneSettings,
    *,
    clock: Callable[[], datetime] = utc_now,
    ws_keepalive_s: float = events_api.KEEPALIVE_S,
    price_history: PriceHistory | None = None,
) -> FastAPI:
    """The app; `clock` is the exchange's (tests inject one), `ws_keepalive_s` the /ws ping,
    `price_history` the forecasts' prices (None: no feed, price forecasts fail saying so)."""
    registry = CollectorRegistry()
    request_seconds = Histogram(
        "bess_plane_http_request_duration_seconds",
        "HTTP request latency by route template",
        ["method", "route", "status"],
        registry=registry,
    )
    fleet_metrics = FleetMetrics(registry)
    exchange_metrics = ExchangeMetrics(registry)
    policy = load_policy(settings.policy_path) if settings.policy_path else Policy()
    auth_metrics = AuthMetrics(registry)
    hub = EventHub(metrics=EventMetrics(registry))
    forecast = create_forecast_service(history=price_history, registry=registry)
    market_metrics = FeedMetrics(registry)
    risk_metrics = RiskMetrics(registry)
    credit_metrics = CreditMetrics(registry)
    billing_metrics = BillingMetrics(registry)
    grid_metrics = GridMetrics(registry)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        async with AsyncExitStack() as stack:
            url = settings.database_url.get_secret_value() if settings.database_url else None
            engine = db.create_engine(
                database_url=url,
                sqlite_path=settings.sqlite_file,
                sqlite_synchronous=settings.sqlite_synchronous,
            )
            stack.callback(engine.dispose)
            hmac_key = settings.hmac_key()
            auth = AuthService(
                store=KeyStore(engine),
                static_key=settings.api_key.get_secret_value() if settings.api_key else None,
                static_role=settings.api_key_role,
                hmac_verifier=None
                if hmac_key is None
                else HmacVerifier(hmac_key, role=settings.hmac_role, clock=utc_now),
                metrics=auth_metrics,
            )
            await asyncio.to_thread(auth.open)
            app.state.auth = auth
            hub.bind(asyncio.get_running_loop())
            stack.callback(hub.unbind)
            stack.push_async_callback(forecast.close)
            telemetry = TelemetryCoalescer(hub)

            def on_fleet_event(event_type: str, data: Mapping[str, Any]) -> None:
                if event_type == "telemetry":
                    telemetry.offer(str(data["site_id"]), data)
                    if (grid := getattr(app.state, "grid", None)) is not None:
                        grid.observe_telemetry(data)  # frequency per area, alerts
                else:
                    hub.publish(event_type, data)

            fleet_store = FleetStore(engine)
            fleet = FleetService(
                store=fleet_store,
                metrics=fleet_metrics,
                plane_version=__version__,
                heartbeat_interval_s=settings.heartbeat_interval_s,
                on_event=on_fleet_event,
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
            # Risk (control_plane/risk): limits store, VaR from the exchange's trades, the
            # fleet's schedules and the price store (set below); its limit check pre-trade.
            risk = RiskService(
                limits=LimitStore(engine),
                trades=SqlOrderStore(engine),
                prices=None,
                dispatch=FleetDispatch(fleet_store, engine),
                clock=clock,
                settings=RiskSettings(
                    window_days=settings.risk_window_days,
                    limit_level=settings.risk_limit_level,
                    limit_horizon_days=settings.risk_limit_horizon_days,
                    alert_thresholds_pct=tuple(settings.risk_alert_thresholds_pct),
                    history_ttl_s=settings.risk_history_ttl_s,
                    backtest_days=settings.risk_backtest_days,
                    default_zones=tuple(settings.market_zones),
                ),
                metrics=risk_metrics,
                publish=hub.publish,
            )
            await asyncio.to_thread(risk.limits_store.migrate)
            # Credit (control_plane/credit): master data, settlements, exposure from the
            # exchange's committed trades; its pre-trade check joins the exchange's checks.
            credit = CreditService(
                store=CreditStore(engine),
                trades=SqlOrderStore(engine),
                clock=clock,
                addon_pct=settings.credit_pfe_addon_pct,
                default_thresholds_pct=settings.credit_alert_thresholds_pct,
                require_counterparty=settings.credit_require_counterparty,
                metrics=credit_metrics,
                on_alert=lambda alert: hub.publish("credit.alert", alert.as_event()),
            )
            await asyncio.to_thread(credit.open)
            app.state.credit = credit
            # Grid: frequency from the fleet's telemetry, load/flows (ENTSO-E with a token),
            # constraints; they feed the pre-trade checks and the optimiser.
            grid = open_grid(
                engine,
                fleet_store,
                settings,
                clock=clock,
                metrics=grid_metrics,
                on_alert=hub.publish,
            )
            await grid.open()
            stack.push_async_callback(grid.close)
            app.state.grid = grid
            fleet.schedule_check = grid.schedule_problem  # constraints bound schedules too
            exchange = await asyncio.to_thread(
                _open_exchange,
                engine,
                clock=clock,
                policy=policy,
                sites=FleetSiteStates(fleet_store),
                metrics=exchange_metrics,
                grid=grid,
                extra_checks=[RiskLimitCheck(risk), credit.check],
            )
            stack.enter_context(
                _every(credit.refresh, settings.credit_refresh_interval_s, "credit refresh")
            )
            stack.enter_context(  # resting orders past gate closure -> order.expired
                _every(
                    lambda: exchange_api.publish_expiries(exchange, hub),
                    settings.exchange_expiry_interval_s,
                    "order expiry",
                )
            )
            # Market data: the price store and the scheduled feed (control_plane/market).
            prices, feed = await asyncio.to_thread(
                open_market, engine, settings, clock=clock, metrics=market_metrics
            )
            await stack.enter_async_context(feed.running())
            app.state.prices = prices
            risk.prices = prices
            app.state.risk = risk
            stack.enter_context(
                _every(risk.evaluate, settings.risk_evaluate_interval_s, "risk limit evaluation")
            )
            app.state.market_feed = feed
            if price_history is None:  # forecasts and the optimiser read the feed's store
                forecast.history = prices
            app.state.price_history = price_history or prices
            # Optimiser: plans kept in memory; prices from `app.state.price_history` (the
            # market feed's store sets it; without one, planning answers 409 saying so).
            # Submitted orders go to the exchange; their events to /ws as the HTTP route's do.
            auto_submit = AutoSubmitStore(engine)
            applied = await asyncio.to_thread(auto_submit.migrate)
            if applied:
                log.info("optimiser: store migrated to version %d", applied[-1])

            def publish_placement(placed: PlacedOrder) -> None:
                hub.publish_many(exchange_api.placement_events(placed))

            app.state.optimiser = OptimiserService(
                sites=FleetSiteStates(fleet_store),
                prices=lambda: getattr(app.state, "price_history", None),
                schedules=fleet,
                committed=exchange,
                clock=clock,
                forecaster=price_forecaster(),  # the Forecast API's model (ridge)
                forecast_history_days=FORECAST_HISTORY_DAYS,
                grid_limit_kw=grid.limit_kw,  # clamped to active grid constraints
                orders=exchange,
                on_placed=publish_placement,
                switches=auto_submit,
            )
            # Billing: invoices from the exchange's trades (control_plane/billing); an invoice
            # marked paid settles its trades in credit (billing does not import credit).
            app.state.billing = await asyncio.to_thread(
                open_billing,
                engine,
                settings,
                clock=clock,
                metrics=billing_metrics,
                on_paid=_settle_in_credit(credit),
            )
            app.state.engine = engine
            app.state.fleet = fleet
            app.state.exchange = exchange
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
        description="Fleet status, telemetry history and schedules of battery sites; the "
        "internal exchange (orders, trades, order book, exposure, market data); live events "
        "on /ws. Every /api route needs an API key (`Authorization: Bearer <key>` or "
        "`X-API-Key`) or an HMAC-SHA256 signature; roles: viewer, trader, technician, "
        "telemetry, admin.",
    )
    app.state.settings = settings
    app.state.registry = registry
    auth_deps.install(app)
    app.state.events = hub
    app.state.ws_metrics = events_api.WsMetrics(registry)
    app.state.ws_keepalive_s = ws_keepalive_s
    app.state.forecast = forecast

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
        """Readiness: the store answers a query (open to probes, so it tells nothing more)."""
        engine = getattr(request.app.state, "engine", None)
        if engine is None:
            return JSONResponse({"status": "starting"}, status_code=503)
        try:
            await asyncio.to_thread(db.ping, engine)
        except db.StoreError as exc:
            log.warning("ready: %s", exc)
            return JSONResponse({"status": "unavailable"}, status_code=503)
        return JSONResponse({"status": "ready"})

    @app.get("/metrics", tags=["operations"], include_in_schema=False)
    async def metrics() -> Response:
        return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)

    app.include_router(fleet_api.router)
    app.include_router(auth_api.router)
    app.include_router(exchange_api.router)
    app.include_router(events_api.router)
    app.include_router(forecast_api.router)
    app.include_router(market_api.router)
    app.include_router(optimiser_api.router)
    app.include_router(risk_api.router)
    app.include_router(credit_api.router)
    app.include_router(billing_api.router)
    app.include_router(grid_api.router)
    return app


def _open_exchange(
    engine: Engine,
    *,
    clock: Callable[[], datetime],
    policy: Policy,
    sites: FleetSiteStates,
    metrics: ExchangeMetrics,
    extra_checks: Sequence[PreTradeCheck] = (),
    grid: GridService,
) -> Exchange:
    """Migrate the exchange tables on the shared engine and rebuild the books from them; the
    policy gives the markets, the pricing rule and the pre-trade checks (SoC feasibility
    against the fleet's latest readings, throttling)."""
    store = SqlOrderStore(engine)
    applied = store.migrate()
    if applied:
        log.info("exchange: store migrated to version %d", applied[-1])
    return Exchange(
        store=store,
        markets=policy.market_registry(),
        clock=clock,
        pricing=policy.pricing,
        pre_trade_checks=[
            *checks_from_policy(policy, sites=sites, committed=store, clock=clock),
            *extra_checks,  # services' checks (risk limits, credit): they read the committed store
            GridCapacity(grid=grid, committed=store),
        ],
        metrics=metrics,
    )


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


def _settle_in_credit(credit: CreditService) -> PaymentListener:
    """Billing's payment listener: the paid invoice's trades settled in credit by its number."""

    def settle(
        *, counterparty: str, trade_ids: Sequence[int], settled_on: date, reference_text: str
    ) -> object:
        try:
            return credit.settle_trades(
                counterparty=counterparty,
                trade_ids=trade_ids,
                settled_on=settled_on,
                reference_text=reference_text,
            )
        except CreditError as exc:
            raise SettlementRefusedError(
                f"credit refused to settle the trades of invoice {reference_text}: {exc}; "
                "nothing was marked paid (check GET /api/credit/settlements for a manual "
                "settlement of these trades)"
            ) from exc
        except db.StoreError as exc:
            raise BillingStoreError(f"credit store failed: {exc}") from exc

    return settle


@contextmanager
def _every(job: Callable[[], object], interval_s: float, what: str) -> Iterator[None]:
    """Run blocking `job` in a worker thread every `interval_s` while the context is open;
    a failing run is logged and the next one tries again."""

    async def loop() -> None:
        while True:
            await asyncio.sleep(interval_s)
            try:
                await asyncio.to_thread(job)
            except Exception:
                log.exception("%s failed", what)

    task = asyncio.get_running_loop().create_task(loop(), name=what)
    try:
        yield
    finally:
        task.cancel()


async def _stop_grpc(server: grpc.aio.Server, fleet: FleetService, grace_s: float) -> None:
    fleet.drain()  # sessions end with UNAVAILABLE: agents keep their outbox and reconnect
    await server.stop(grace_s)
