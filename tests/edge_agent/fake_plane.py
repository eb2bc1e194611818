"""A small but honest EdgeLink control plane for tests: a real grpc.aio server on 127.0.0.1.

What it does as the contract says (protos/bess/v1/edgelink.proto): Hello first (else
FAILED_PRECONDITION), an optional bearer token (else UNAUTHENTICATED), Welcome with the highest
seq it holds per stream, idempotent ingest by (site, seq), cumulative acks of what it stored,
a newer session replacing an older one (ABORTED). What it adds for tests: it records every
session and everything received (duplicates and gaps counted), pushes Schedule / Command /
ConfigUpdate to a connected site, and has controls for outages: `stop()` / `start()` on the
same port, holding or delaying acks, breaking the current stream.

Storage: in memory by default; with `db_path` every stored sample and event also goes to SQLite
before its ack, and a new FakePlane on the same file starts with it (a plane restart).
"""

from __future__ import annotations

import asyncio
import itertools
import sqlite3
import time
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Self

import grpc
import grpc.aio

from bess.v1 import edgelink_pb2 as pb
from bess.v1 import edgelink_pb2_grpc as pb_grpc
from edge_agent.uplink import server_keepalive_options


@dataclass
class SessionLog:
    """One Connect call as the plane saw it."""

    session_id: str
    site_id: str
    hello: pb.Hello
    welcome: pb.Welcome
    received_seqs: list[int] = field(default_factory=list)  # telemetry, in arrival order
    received_event_seqs: list[int] = field(default_factory=list)
    acks_sent: list[int] = field(default_factory=list)
    heartbeats: list[pb.Heartbeat] = field(default_factory=list)
    ended: str = ""  # "" while open


@dataclass(frozen=True)
class _Abort:
    code: grpc.StatusCode
    details: str


@dataclass
class _Live:
    site_id: str
    log: SessionLog
    outq: asyncio.Queue[pb.PlaneMessage | _Abort | None] = field(default_factory=asyncio.Queue)


class FakePlane(pb_grpc.EdgeLinkServicer):
    """See the module docstring. Use as `async with FakePlane() as plane:`."""

    def __init__(
        self,
        *,
        db_path: Path | None = None,
        token: str | None = None,
        heartbeat_interval_s: int = 10,
        max_batch_samples: int = 0,
        max_unacked_batches: int = 0,
        server_options: Sequence[tuple[str, int | str]] | None = None,
        server_credentials: grpc.ServerCredentials | None = None,
        plane_version: str = "fake-plane",
    ) -> None:
        self.token = token
        self.heartbeat_interval_s = heartbeat_interval_s
        self.max_batch_samples = max_batch_samples
        self.max_unacked_batches = max_unacked_batches
        self.plane_version = plane_version
        self.server_options = list(
            server_keepalive_options() if server_options is None else server_options
        )
        self.server_credentials = server_credentials  # TLS (and mTLS) instead of plaintext
        self.port = 0
        self._server: grpc.aio.Server | None = None
        self._db = sqlite3.connect(db_path or ":memory:", isolation_level=None)
        self._db.executescript(
            "PRAGMA journal_mode = WAL;"
            "CREATE TABLE IF NOT EXISTS samples (site TEXT, seq INTEGER, payload BLOB, "
            "PRIMARY KEY (site, seq));"
            "CREATE TABLE IF NOT EXISTS events (site TEXT, seq INTEGER, payload BLOB, "
            "PRIMARY KEY (site, seq));"
        )
        self._samples: dict[str, dict[int, bytes]] = {}
        self._events: dict[str, dict[int, bytes]] = {}
        for table, into in (("samples", self._samples), ("events", self._events)):
            for site, seq, payload in self._db.execute(
                f"SELECT site, seq, payload FROM {table} ORDER BY site, seq"  # noqa: S608
            ):
                into.setdefault(site, {})[seq] = payload
        self._live: dict[str, _Live] = {}
        self._session_ids = itertools.count(1)

        # What was received and sent, for assertions.
        self.sessions: list[SessionLog] = []
        self.duplicates = 0  # samples received whose seq was already stored
        self.event_duplicates = 0
        self.gaps: list[tuple[str, int, int]] = []  # (site, last stored, seq received)
        self.schedule_acks: list[tuple[str, pb.ScheduleAck]] = []
        self.command_acks: list[tuple[str, pb.CommandAck]] = []
        self.config_acks: list[tuple[str, pb.ConfigAck]] = []
        self.auth_failures = 0
        self.auth_headers: list[str] = []  # every authorization value received
        self.peer_common_names: list[str] = []  # client certificate CNs (mutual TLS)

        # Test controls.
        self.hold_acks = False  # store but do not ack; release_acks() sends the latest
        self.ack_delay_s = 0.0
        self.expected_schedule: dict[str, pb.Schedule] = {}  # sent right after Welcome
        self._held: dict[str, _Live] = {}

    # -- lifecycle -------------------------------------------------------------------------

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def running(self) -> bool:
        return self._server is not None

    async def start(self) -> None:
        """Serve on 127.0.0.1 (a free port the first time, the same one after a stop)."""
        if self._server is not None:
            return
        server = grpc.aio.server(options=self.server_options)
        pb_grpc.add_EdgeLinkServicer_to_server(self, server)
        address = f"127.0.0.1:{self.port}"
        if self.server_credentials is None:
            port = server.add_insecure_port(address)
        else:
            port = server.add_secure_port(address, self.server_credentials)
        if port == 0:
            raise RuntimeError(f"fake plane: cannot bind 127.0.0.1:{self.port}")
        await server.start()
        self.port, self._server = port, server

    async def stop(self, grace: float | None = None) -> None:
        """An outage: the server goes away and every stream breaks; the store stays."""
        server, self._server = self._server, None
        if server is not None:
            await server.stop(grace)
        self._live.clear()
        self._held.clear()

    def close(self) -> None:
        self._db.close()

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop()
        self.close()

    # -- the store -------------------------------------------------------------------------

    def stored_seqs(self, site: str) -> list[int]:
        return sorted(self._samples.get(site, {}))

    def sample(self, site: str, seq: int) -> pb.TelemetrySample:
        return pb.TelemetrySample.FromString(self._samples[site][seq])

    def stored_event_seqs(self, site: str) -> list[int]:
        return sorted(self._events.get(site, {}))

    def event(self, site: str, seq: int) -> pb.Event:
        return pb.Event.FromString(self._events[site][seq])

    def last_stored_seq(self, site: str) -> int:
        return max(self._samples.get(site, {}), default=0)

    def last_stored_event_seq(self, site: str) -> int:
        return max(self._events.get(site, {}), default=0)

    def sessions_of(self, site: str) -> list[SessionLog]:
        return [s for s in self.sessions if s.site_id == site]

    # -- controls --------------------------------------------------------------------------

    def connected(self, site: str) -> bool:
        return site in self._live

    async def push(self, site: str, message: pb.PlaneMessage) -> None:
        """Send a plane message to the site's current session."""
        live = self._live.get(site)
        if live is None:
            raise AssertionError(f"fake plane: site {site!r} is not connected")
        live.outq.put_nowait(message)

    async def push_schedule(self, site: str, schedule: pb.Schedule) -> None:
        await self.push(site, pb.PlaneMessage(schedule=schedule))

    async def push_command(self, site: str, command: pb.Command) -> None:
        await self.push(site, pb.PlaneMessage(command=command))

    async def push_config(self, site: str, update: pb.ConfigUpdate) -> None:
        await self.push(site, pb.PlaneMessage(config_update=update))

    async def break_stream(
        self,
        site: str,
        code: grpc.StatusCode = grpc.StatusCode.UNAVAILABLE,
        details: str = "fake plane broke the stream",
    ) -> None:
        """End the site's current stream with a status (a draining replica sends UNAVAILABLE)."""
        live = self._live.pop(site, None)
        if live is None:
            raise AssertionError(f"fake plane: site {site!r} is not connected")
        live.outq.put_nowait(_Abort(code, details))

    def release_acks(self) -> None:
        """Send every held ack now (one cumulative ack per session)."""
        held, self._held = self._held, {}
        for site, live in held.items():
            self._send_ack(live, self.last_stored_seq(site))

    async def wait_for(
        self, predicate: Callable[[], bool], *, timeout: float = 5.0, what: str = "condition"
    ) -> None:
        """Poll until predicate() is true; AssertionError after timeout seconds."""
        deadline = time.monotonic() + timeout
        while not predicate():
            if time.monotonic() > deadline:
                raise AssertionError(f"fake plane: timed out after {timeout:g} s waiting: {what}")
            await asyncio.sleep(0.005)

    # -- the servicer ----------------------------------------------------------------------

    async def Connect(  # name fixed by the generated servicer
        self,
        request_iterator: AsyncIterator[pb.AgentMessage],
        context: grpc.aio.ServicerContext[pb.AgentMessage, pb.PlaneMessage],
    ) -> None:
        for name in (context.auth_context() or {}).get("x509_common_name", []):
            self.peer_common_names.append(name.decode())
        if self.token is not None:
            auth = dict(context.invocation_metadata() or ()).get("authorization", "")
            self.auth_headers.append(str(auth))
            if auth != f"Bearer {self.token}":
                self.auth_failures += 1
                await context.abort(grpc.StatusCode.UNAUTHENTICATED, "bad or missing site token")
        else:
            auth = dict(context.invocation_metadata() or ()).get("authorization")
            if auth is not None:
                self.auth_headers.append(str(auth))
        messages = aiter(request_iterator)
        try:
            first = await anext(messages)
        except StopAsyncIteration:
            return
        if first.WhichOneof("payload") != "hello":
            await context.abort(grpc.StatusCode.FAILED_PRECONDITION, "send Hello first")
        hello = first.hello
        site = hello.site_id
        if not site:
            await context.abort(grpc.StatusCode.PERMISSION_DENIED, "Hello without site_id")
        previous = self._live.pop(site, None)
        if previous is not None:
            previous.outq.put_nowait(
                _Abort(grpc.StatusCode.ABORTED, "replaced by a newer session of this site")
            )
        expected = self.expected_schedule.get(site)
        welcome = pb.Welcome(
            plane_version=self.plane_version,
            server_time_unix_ms=round(time.time() * 1000),
            last_stored_seq=self.last_stored_seq(site),
            last_stored_event_seq=self.last_stored_event_seq(site),
            expected_schedule_version=expected.version if expected else 0,
            heartbeat_interval_s=self.heartbeat_interval_s,
            session_id=f"fake-{next(self._session_ids)}",
            max_batch_samples=self.max_batch_samples,
            max_unacked_batches=self.max_unacked_batches,
        )
        log = SessionLog(session_id=welcome.session_id, site_id=site, hello=hello, welcome=welcome)
        self.sessions.append(log)
        live = _Live(site_id=site, log=log)
        self._live[site] = live
        reader = asyncio.create_task(self._read(messages, live))
        try:
            await context.write(pb.PlaneMessage(welcome=welcome))
            if expected is not None and expected.version > hello.last_schedule_version:
                await context.write(pb.PlaneMessage(schedule=expected))
            while True:
                item = await live.outq.get()
                if item is None:  # the agent half-closed
                    log.ended = "closed by the agent"
                    return
                if isinstance(item, _Abort):
                    log.ended = f"{item.code.name}: {item.details}"
                    await context.abort(item.code, item.details)
                await context.write(item)
        finally:
            if not log.ended:
                log.ended = "cancelled"
            reader.cancel()
            if self._live.get(site) is live:
                del self._live[site]
            self._held.pop(site, None)

    async def _read(self, messages: AsyncIterator[pb.AgentMessage], live: _Live) -> None:
        site = live.site_id
        try:
            async for message in messages:
                kind = message.WhichOneof("payload")
                if kind == "telemetry_batch":
                    self._store(
                        "samples", self._samples, site, message.telemetry_batch.samples, live
                    )
                    self._ack(live)
                elif kind == "event":
                    self._store("events", self._events, site, [message.event], live)
                    live.outq.put_nowait(
                        pb.PlaneMessage(
                            event_ack=pb.EventAck(
                                acked_through_seq=self.last_stored_event_seq(site)
                            )
                        )
                    )
                elif kind == "heartbeat":
                    live.log.heartbeats.append(message.heartbeat)
                elif kind == "schedule_ack":
                    self.schedule_acks.append((site, message.schedule_ack))
                elif kind == "command_ack":
                    self.command_acks.append((site, message.command_ack))
                elif kind == "config_ack":
                    self.config_acks.append((site, message.config_ack))
                elif kind == "hello":
                    live.outq.put_nowait(
                        _Abort(grpc.StatusCode.FAILED_PRECONDITION, "a second Hello")
                    )
        except asyncio.CancelledError:
            raise
        except Exception:  # the call broke (agent gone, server stopping): the handler ends too
            return
        live.outq.put_nowait(None)

    def _store(
        self,
        table: str,
        into: dict[str, dict[int, bytes]],
        site: str,
        items: Sequence[pb.TelemetrySample] | Sequence[pb.Event],
        live: _Live,
    ) -> None:
        held = into.setdefault(site, {})
        received = live.log.received_seqs if table == "samples" else live.log.received_event_seqs
        new: list[tuple[str, int, bytes]] = []
        for item in items:
            received.append(item.seq)
            if item.seq in held:
                if table == "samples":
                    self.duplicates += 1
                else:
                    self.event_duplicates += 1
                continue
            last = max(held, default=0)
            if item.seq != last + 1 and item.seq > last:
                self.gaps.append((site, last, item.seq))
            payload = item.SerializeToString()
            held[item.seq] = payload
            new.append((site, item.seq, payload))
        if new:
            # Durable before the ack, as the contract requires of the real plane.
            self._db.executemany(
                f"INSERT OR IGNORE INTO {table} (site, seq, payload) VALUES (?, ?, ?)",  # noqa: S608
                new,
            )

    def _ack(self, live: _Live) -> None:
        if self.hold_acks:
            self._held[live.site_id] = live
            return
        through = self.last_stored_seq(live.site_id)
        if self.ack_delay_s > 0:
            asyncio.get_running_loop().call_later(self.ack_delay_s, self._send_ack, live, through)
        else:
            self._send_ack(live, through)

    @staticmethod
    def _send_ack(live: _Live, through: int) -> None:
        live.log.acks_sent.append(through)
        live.outq.put_nowait(
            pb.PlaneMessage(telemetry_ack=pb.TelemetryAck(acked_through_seq=through))
        )
