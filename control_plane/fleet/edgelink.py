"""The EdgeLink gRPC servicer (grpc.aio): moves messages between agent streams and the service.

Logic lives in `FleetService`, wire conversion in `convert.py` (STYLE item 3); this module only
runs the session protocol of `protos/bess/v1/edgelink.proto`: Hello first (else
FAILED_PRECONDITION), Welcome, then one reader task feeding the service and one writer loop
sending what the service queues (acks, schedules, commands) or ending the call with a status:
ABORTED when a newer session of the site replaced this one, UNAVAILABLE when the plane drains.

Identity: with mutual TLS (`start_server(..., credentials=...)`, `edgelink_tls: mtls`) the
client certificate names the site (SAN URI `urn:bess:site:<id>`, see `control_plane/pki.py`);
a stream may only speak for that site. A Hello naming another site, or a certificate without
the site URI, ends the call with PERMISSION_DENIED before anything is stored. Without TLS the
Hello's site_id is taken as it is (loopback demo).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator

import grpc
import grpc.aio

from bess.v1 import edgelink_pb2 as pb
from bess.v1 import edgelink_pb2_grpc as pb_grpc
from control_plane.pki import SITE_URI_PREFIX, site_of_certificate

from . import convert
from .models import SITE_ID, SITE_ID_RULE, EndReason, SessionEnd
from .service import FleetService, Session

log = logging.getLogger(__name__)

_STATUS = {
    EndReason.REPLACED: grpc.StatusCode.ABORTED,
    EndReason.DRAINING: grpc.StatusCode.UNAVAILABLE,
    EndReason.PROTOCOL: grpc.StatusCode.FAILED_PRECONDITION,
    EndReason.UNAVAILABLE: grpc.StatusCode.UNAVAILABLE,
}

Context = grpc.aio.ServicerContext[pb.AgentMessage, pb.PlaneMessage]


def server_options(keepalive_time_s: float) -> list[tuple[str, int]]:
    """Accept the agents' keepalive pings (see `edge_agent.uplink.server_keepalive_options`)."""
    return [
        ("grpc.http2.min_ping_interval_without_data_ms", max(1, round(keepalive_time_s * 1000))),
        ("grpc.keepalive_permit_without_calls", 1),
    ]


async def start_server(
    service: FleetService,
    *,
    host: str,
    port: int,
    keepalive_time_s: float,
    credentials: grpc.ServerCredentials | None = None,
) -> tuple[grpc.aio.Server, int]:
    """A started grpc.aio server with the EdgeLink servicer; (server, bound port).

    `credentials` (mutual TLS, client certificates required) make every stream speak for the
    site its certificate names; None serves plaintext.
    """
    server = grpc.aio.server(options=server_options(keepalive_time_s))
    servicer = EdgeLinkServicer(service, verify_site=credentials is not None)
    pb_grpc.add_EdgeLinkServicer_to_server(servicer, server)
    address = f"{host}:{port}"
    if credentials is None:
        bound = server.add_insecure_port(address)
    else:
        bound = server.add_secure_port(address, credentials)
    if bound == 0:
        raise OSError(f"EdgeLink: cannot listen on {host}:{port} (in use, or not an address here)")
    await server.start()
    return server, bound


def mtls_credentials(*, key_pem: bytes, cert_pem: bytes, ca_pem: bytes) -> grpc.ServerCredentials:
    """Server credentials that require a client certificate signed by the plane's CA."""
    return grpc.ssl_server_credentials(
        [(key_pem, cert_pem)], root_certificates=ca_pem, require_client_auth=True
    )


def certified_site(context: Context) -> tuple[str | None, str]:
    """(site the peer's certificate names, or None; why not) from the TLS auth context."""
    certs = list(context.auth_context().get("x509_pem_cert") or ())
    if not certs:
        return None, "the connection carries no client certificate"
    site = site_of_certificate(certs[0])
    if site is None:
        return None, (
            f"the client certificate names no site (one SAN URI {SITE_URI_PREFIX}<site id>): "
            "issue one with `bess-plane site-cert SITE_ID`"
        )
    return site, ""


class EdgeLinkServicer(pb_grpc.EdgeLinkServicer):
    def __init__(self, service: FleetService, *, verify_site: bool = False) -> None:
        self.service = service
        self.verify_site = verify_site

    async def Connect(  # name fixed by the generated servicer
        self, request_iterator: AsyncIterator[pb.AgentMessage], context: Context
    ) -> AsyncIterator[pb.PlaneMessage]:
        messages = aiter(request_iterator)
        try:
            first = await anext(messages)
        except StopAsyncIteration:
            return
        if first.WhichOneof("payload") != "hello":
            await context.abort(grpc.StatusCode.FAILED_PRECONDITION, "send Hello first")
        hello = convert.hello_from_proto(first.hello)
        if not SITE_ID.fullmatch(hello.site_id):
            await context.abort(
                grpc.StatusCode.INVALID_ARGUMENT,
                f"Hello.site_id {hello.site_id!r} must be {SITE_ID_RULE}",
            )
        if self.verify_site:
            certified, why = certified_site(context)
            if certified is None:
                await context.abort(grpc.StatusCode.PERMISSION_DENIED, why)
            elif certified != hello.site_id:
                log.warning(
                    "edgelink: refused Hello for site %s from a certificate of site %s",
                    hello.site_id,
                    certified,
                )
                await context.abort(
                    grpc.StatusCode.PERMISSION_DENIED,
                    f"Hello.site_id is {hello.site_id!r} but the client certificate is for "
                    f"site {certified!r}: a stream may only send for its own site",
                )
        session, welcome, to_send = await self.service.open_session(hello)
        reader = asyncio.create_task(self._read(messages, session))
        reason = "cancelled"
        try:
            yield convert.welcome_message(welcome)
            for item in to_send:
                session.outbound.put_nowait(item)
            while True:
                item = await session.outbound.get()
                if isinstance(item, SessionEnd):
                    reason = item.detail
                    if item.reason is EndReason.CLOSED:
                        return
                    await context.abort(_STATUS[item.reason], item.detail)
                message = convert.outbound_message(item)
                if message is None:  # pragma: no cover - every other item has a message
                    continue
                yield message
                await self.service.sent(session, item)
        finally:
            reader.cancel()
            await self.service.close_session(session, reason)

    async def _read(self, messages: AsyncIterator[pb.AgentMessage], session: Session) -> None:
        end = SessionEnd(EndReason.CLOSED, "closed by the agent")
        try:
            async for message in messages:
                try:
                    problem = await self._handle(message, session)
                except Exception as exc:  # the store failed: nothing acked, the agent resends
                    log.exception("edgelink: site %s: handling a message failed", session.site_id)
                    problem = SessionEnd(
                        EndReason.UNAVAILABLE,
                        f"the plane cannot store data now ({type(exc).__name__})",
                    )
                if problem is not None:
                    end = problem
                    break
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # the call broke (agent gone, server stopping)
            end = SessionEnd(EndReason.CLOSED, f"stream broke: {type(exc).__name__}")
            log.debug("edgelink: site %s stream ended: %r", session.site_id, exc)
        session.outbound.put_nowait(end)

    async def _handle(self, message: pb.AgentMessage, session: Session) -> SessionEnd | None:
        """Feed one agent message to the service; a SessionEnd if it breaks the protocol."""
        service = self.service
        kind = message.WhichOneof("payload")
        if kind == "telemetry_batch":
            samples = convert.samples_from_proto(message.telemetry_batch)
            if any(s.seq == 0 for s in samples):
                return SessionEnd(EndReason.PROTOCOL, "a telemetry sample without seq")
            await service.ingest_telemetry(session, samples)
        elif kind == "event":
            if message.event.seq == 0:
                return SessionEnd(EndReason.PROTOCOL, "an event without seq")
            await service.ingest_event(session, convert.event_from_proto(message.event))
        elif kind == "heartbeat":
            await service.heartbeat(session, convert.heartbeat_from_proto(message.heartbeat))
        elif kind == "schedule_ack":
            await service.schedule_answered(
                session, convert.schedule_answer_from_proto(message.schedule_ack)
            )
        elif kind == "command_ack":
            await service.command_answered(
                session, convert.command_answer_from_proto(message.command_ack)
            )
        elif kind == "hello":
            return SessionEnd(EndReason.PROTOCOL, "a second Hello in one session")
        else:  # config acks (this plane sends no ConfigUpdate yet) or a newer payload
            service.heard(session)
        return None
