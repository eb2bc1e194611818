"""The EdgeLink gRPC servicer (grpc.aio): moves messages between agent streams and the service.

Logic lives in `FleetService`, wire conversion in `convert.py` (STYLE item 3); this module only
runs the session protocol of `protos/bess/v1/edgelink.proto`: Hello first (else
FAILED_PRECONDITION), Welcome, then one reader task feeding the service and one writer loop
sending what the service queues (acks, schedules) or ending the call with a status: ABORTED
when a newer session of the site replaced this one, UNAVAILABLE when the plane drains.
"""

from __future__ import annotations

import asyncio
import logging
import re
from collections.abc import AsyncIterator

import grpc
import grpc.aio

from bess.v1 import edgelink_pb2 as pb
from bess.v1 import edgelink_pb2_grpc as pb_grpc

from . import convert
from .models import EndReason, ScheduleOut, SessionEnd
from .service import FleetService, Session

log = logging.getLogger(__name__)

SITE_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,62}")

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
    service: FleetService, *, host: str, port: int, keepalive_time_s: float
) -> tuple[grpc.aio.Server, int]:
    """A started grpc.aio server with the EdgeLink servicer; (server, bound port)."""
    server = grpc.aio.server(options=server_options(keepalive_time_s))
    pb_grpc.add_EdgeLinkServicer_to_server(EdgeLinkServicer(service), server)
    bound = server.add_insecure_port(f"{host}:{port}")
    if bound == 0:
        raise OSError(f"EdgeLink: cannot listen on {host}:{port} (in use, or not an address here)")
    await server.start()
    return server, bound


class EdgeLinkServicer(pb_grpc.EdgeLinkServicer):
    def __init__(self, service: FleetService) -> None:
        self.service = service

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
                f"Hello.site_id {hello.site_id!r} must be 1-63 letters, digits, '.', '_' or '-'",
            )
        session, welcome, to_send = await self.service.open_session(hello)
        reader = asyncio.create_task(self._read(messages, session))
        reason = "cancelled"
        try:
            yield convert.welcome_message(welcome)
            if to_send is not None:
                session.outbound.put_nowait(ScheduleOut(to_send.schedule))
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
                if isinstance(item, ScheduleOut):
                    await self.service.schedule_sent(session, item.schedule.version)
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
        elif kind == "hello":
            return SessionEnd(EndReason.PROTOCOL, "a second Hello in one session")
        else:  # command/config acks (this plane sends neither yet) or a newer payload
            service.heard(session)
        return None
