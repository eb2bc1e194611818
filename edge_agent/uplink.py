"""The agent's end of the EdgeLink stream: outbox -> plane, plane -> schedule / command / config.

One long-lived `Connect` stream per site (protos/bess/v1/edgelink.proto has the protocol).
A session:

1. dial (a fresh channel with its own connection per session, so rotated certificates and
   tokens are picked up and the connect deadline covers one attempt), send Hello with the
   outbox position of both streams, wait for Welcome (`connect_timeout_s` for all of it);
2. `Outbox.reconcile` with Welcome.last_stored_seq / last_stored_event_seq: rows the plane
   already holds are deleted, nothing of them is sent again;
3. stream everything pending from the oldest unacked seq, in seq order: telemetry in batches of
   up to `batch_max_samples`, a partial batch once its first row has waited
   `batch_max_delay_s` (at once when the row is older than that: the tail of a backlog), up to
   `max_unacked_batches` batches ahead of their ack; events one message each, up to
   `max_unacked_events` ahead. New rows are picked up when the sampler calls `notify()` after
   its append (or at the latest after the batch delay);
4. cumulative TelemetryAck / EventAck -> `Outbox.ack` (only now are rows deleted);
5. Schedule / Command / ConfigUpdate -> the handler given, answered with ScheduleAck /
   CommandAck / ConfigAck, in arrival order; Heartbeat every Welcome.heartbeat_interval_s.

Anything sent but unacked when the stream breaks stays in the outbox and is sent again in the
next session, after the reconcile (the plane ingests by (site, seq), so a resend is harmless).
Reconnects use exponential backoff with full jitter and a cap and never give up; the backoff
starts over after a session that lasted `backoff_reset_after_s`.

**Silence.** The plane is *silent* when it has not answered for `silence_timeout_s` while the
agent waits for an answer (a Welcome, or acks of data in flight) or while there is no session
at all. `state` is then `SILENT` (whatever the connection does), so the executor can fall back
to its local behaviour; a silent session is torn down and redialled, because a plane that
stopped acking on a stream gRPC keepalive still sees as alive will not recover by waiting.

**Keepalive.** The client pings every `keepalive_time_s` and drops the connection when a ping
is not answered within `keepalive_timeout_s`, also while no call is open
(`grpc.keepalive_permit_without_calls`) and also while its own writes are stuck behind flow
control (`grpc.http2.max_pings_without_data` = 0: a plane that stopped reading is exactly the
dead peer keepalive must catch). The server must permit this, or after
`grpc.http2.max_ping_strikes` early pings it answers GOAWAY `too_many_pings` and the stream
breaks (gRPC then doubles that client's keepalive time): it needs
`grpc.http2.min_ping_interval_without_data_ms` <= keepalive_time_ms and
`grpc.keepalive_permit_without_calls` = 1; `server_keepalive_options()` returns exactly that.
gRPC sends keepalive pings at most once a second, hence `keepalive_time_s` >= 1.

**Stopping.** `aclose()` returns within `close_timeout_s` whatever the session is doing
(dialling, streaming, backing off): it cancels the run task, repeats the cancel while it waits
(a library may swallow one) and, as a last resort, logs the task as stuck and leaves it behind.
gRPC may turn a cancellation into an RPC error (INTERNAL, CANCELLED) or raise a
`CancelledError` of its own for a call it cancelled locally; the run loop therefore decides by
`Task.cancelling()` whether it was told to stop (stop) or the session merely failed (redial).
Every wait for a gRPC status is bounded, and a session's tasks are stopped within a bound too.

**Secrets.** The site token is read from `token_file` or the environment variable named by
`token_env` at each dial, sent as `authorization: Bearer <token>` metadata and never logged,
stored in settings or exposed in `repr`.

Errors (all end a session; the run loop logs them and reconnects):

    UplinkError
    ├── UplinkConfigError   token or certificate files unusable (retried: provisioning may be late)
    ├── ProtocolError       the plane broke the EdgeLink protocol (no Welcome first, bad ack)
    ├── PlaneSilentError    no answer from the plane within silence_timeout_s
    └── StreamEndedError    the plane ended the stream (gRPC status code and details)
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import ipaddress
import logging
import os
import random
import time
from collections import OrderedDict, deque
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from types import TracebackType
from typing import NoReturn, Self, TypeVar, cast

import grpc
import grpc.aio
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from bess.v1 import edgelink_pb2 as pb
from bess.v1 import edgelink_pb2_grpc as pb_grpc

from . import convert
from .convert import Ack, AckReason, Command, ConfigPatch, HeartbeatInfo, HelloInfo
from .outbox import AckBeyondLastSeqError, AsyncOutbox, OutboxRow
from .schedule_store import SaveResult, Schedule
from .tasks import cancel_and_wait

log = logging.getLogger(__name__)

TELEMETRY = "telemetry"
EVENTS = "events"
_ANSWERS_REMEMBERED = 1024
"""Command ids and config versions whose answer is repeated for a redelivery."""
_T = TypeVar("_T")
_K = TypeVar("_K", str, int)
_R = TypeVar("_R")
_SYSTEM_RANDOM = random.SystemRandom()  # jitter only; no seed to share between agents
CLOSE_TIMEOUT_S = 3.0
"""How long `Uplink.aclose` waits for the run task after cancelling it."""
_TASKS_STOP_TIMEOUT_S = 2.0
"""How long a session waits for its reader/writer tasks after cancelling them."""
_STATUS_TIMEOUT_S = 2.0
"""How long to wait for the status of a call that ended (normally it is there already)."""

ScheduleHandler = Callable[[Schedule], Awaitable[SaveResult]]
CommandHandler = Callable[[Command], Awaitable[Ack]]
ConfigHandler = Callable[[ConfigPatch], Awaitable[Ack]]


# -- errors -------------------------------------------------------------------------------


class UplinkError(Exception):
    """Base of every error that ends an uplink session."""


class UplinkConfigError(UplinkError):
    """A token or certificate file is missing, unreadable or empty."""


class ProtocolError(UplinkError):
    """The plane did not follow the EdgeLink session protocol."""


class PlaneSilentError(UplinkError):
    """The plane did not answer within silence_timeout_s."""


class StreamEndedError(UplinkError):
    """The plane ended the stream; `code` is the gRPC status (OK for a clean end)."""

    def __init__(self, code: grpc.StatusCode, details: str) -> None:
        super().__init__(f"stream ended by the plane: {code.name} {details}".rstrip())
        self.code = code
        self.details = details


# -- cancellation helpers -------------------------------------------------------------------


def _cancelling() -> int:
    task = asyncio.current_task()
    return task.cancelling() if task is not None else 0


def cancel_requested(before: int = 0) -> bool:
    """True if the current task was told to stop: more cancel requests not taken back than
    `before` (the count when the caller started, for a task that carries an old one)."""
    return _cancelling() > before


async def _call_status(
    call: grpc.aio.StreamStreamCall[pb.AgentMessage, pb.PlaneMessage],
) -> tuple[grpc.StatusCode, str]:
    """The status of a call that ended, without waiting forever for it."""
    try:
        async with asyncio.timeout(_STATUS_TIMEOUT_S):
            return await call.code(), await call.details()
    except TimeoutError:
        return grpc.StatusCode.UNKNOWN, f"(no status from gRPC within {_STATUS_TIMEOUT_S:g} s)"


# -- settings -----------------------------------------------------------------------------


class TlsSettings(BaseModel):
    """TLS toward the plane; with cert_file + key_file also the site's client certificate."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    enabled: bool = False
    ca_file: Path | None = None
    """PEM of the CA that signed the plane's certificate; None = the system's roots."""
    cert_file: Path | None = None
    """PEM of the site certificate (mutual TLS)."""
    key_file: Path | None = None
    """PEM of the site certificate's private key."""
    server_name: str | None = None
    """Name to verify the plane's certificate against, when the target is an IP or alias."""

    @model_validator(mode="after")
    def _consistent(self) -> Self:
        client = {"ca_file": self.ca_file, "cert_file": self.cert_file, "key_file": self.key_file}
        if self.cert_file is not None or self.key_file is not None:
            missing = [f"tls.{name}" for name, path in client.items() if path is None]
            if missing:
                # The plane's CA signs both ends: a site certificate without the CA cannot
                # verify the plane (the system roots do not know that CA).
                raise ValueError(
                    "tls.ca_file, tls.cert_file and tls.key_file go together (mutual TLS); "
                    f"missing {', '.join(missing)}: `bess-plane site-cert` writes ca.crt, "
                    "site.crt and site.key"
                )
        given = [
            name
            for name in ("ca_file", "cert_file", "key_file", "server_name")
            if getattr(self, name) is not None
        ]
        if given and not self.enabled:
            raise ValueError(f"tls.{given[0]} is set but tls.enabled is false")
        return self


class UplinkSettings(BaseModel):
    """Everything the uplink needs to reach the plane and pace the stream."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    target: str
    """The plane's EdgeLink endpoint, "host:port"."""
    tls: TlsSettings = TlsSettings()
    token_file: Path | None = None
    """File holding the site token (sent as `authorization: Bearer`)."""
    token_env: str | None = None
    """Name of the environment variable holding the site token (not the token itself)."""
    allow_plaintext_token: bool = False
    """Development only: send the token without TLS to a target that is not loopback."""

    batch_max_samples: int = Field(default=500, ge=1, le=10_000)
    batch_max_delay_s: float = Field(default=1.0, ge=0.0, le=60.0)
    max_unacked_batches: int = Field(default=8, ge=1, le=1_000)
    max_unacked_events: int = Field(default=100, ge=1, le=10_000)
    heartbeat_interval_s: float = Field(default=10.0, gt=0.0)
    """Used when Welcome.heartbeat_interval_s is 0."""

    keepalive_time_s: float = Field(default=30.0, ge=1.0)  # gRPC pings at most once a second
    keepalive_timeout_s: float = Field(default=10.0, gt=0.0)
    connect_timeout_s: float = Field(default=10.0, gt=0.0)
    """Deadline for one dial: channel, Hello, Welcome."""

    backoff_initial_s: float = Field(default=0.5, gt=0.0)
    backoff_max_s: float = Field(default=60.0, gt=0.0)
    backoff_multiplier: float = Field(default=2.0, ge=1.0)
    backoff_reset_after_s: float = Field(default=30.0, ge=0.0)
    """A session that lasted this long starts the backoff over."""

    silence_timeout_s: float = Field(default=60.0, gt=0.0)
    clock_skew_warn_s: float = Field(default=5.0, gt=0.0)

    @field_validator("target")
    @classmethod
    def _host_port(cls, target: str) -> str:
        host, sep, port = target.rpartition(":")
        if not sep or not host or not port.isdigit() or not 0 < int(port) < 65_536:
            raise ValueError(f"target must be host:port, got {target!r}")
        return target

    @field_validator("token_env")
    @classmethod
    def _env_name(cls, name: str | None) -> str | None:
        if name is not None and (not name or "=" in name or len(name) > 200):
            raise ValueError("token_env is the *name* of an environment variable")
        return name

    @model_validator(mode="after")
    def _consistent(self) -> Self:
        if self.token_file is not None and self.token_env is not None:
            raise ValueError("give the token as token_file or token_env, not both")
        has_token = self.token_file is not None or self.token_env is not None
        if (
            has_token
            and not self.tls.enabled
            and not self.allow_plaintext_token
            and not _is_loopback(self.host)
        ):
            raise ValueError(
                f"the site token would cross the network to {self.target} in clear text: "
                "enable tls (or set allow_plaintext_token for a development setup)"
            )
        if self.backoff_initial_s > self.backoff_max_s:
            raise ValueError("backoff_initial_s must not exceed backoff_max_s")
        if self.silence_timeout_s <= self.batch_max_delay_s:
            raise ValueError("silence_timeout_s must be longer than batch_max_delay_s")
        return self

    @property
    def host(self) -> str:
        return self.target.rpartition(":")[0].strip("[]")

    def channel_options(self) -> list[tuple[str, int | str]]:
        """gRPC client options: keepalive (see the module docstring) and TLS name override."""
        options: list[tuple[str, int | str]] = [
            ("grpc.keepalive_time_ms", _ms(self.keepalive_time_s)),
            ("grpc.keepalive_timeout_ms", _ms(self.keepalive_timeout_s)),
            ("grpc.keepalive_permit_without_calls", 1),
            ("grpc.http2.max_pings_without_data", 0),
            # A connection of its own per channel (not gRPC's process-wide subchannel pool),
            # so a redial really opens a new connection.
            ("grpc.use_local_subchannel_pool", 1),
        ]
        if self.tls.server_name:
            options.append(("grpc.ssl_target_name_override", self.tls.server_name))
        return options


def server_keepalive_options(settings: UplinkSettings | None = None) -> list[tuple[str, int]]:
    """What a plane's grpc server needs to accept the agents' keepalive pings."""
    keepalive_s = (settings or UplinkSettings(target="localhost:1")).keepalive_time_s
    return [
        ("grpc.http2.min_ping_interval_without_data_ms", _ms(keepalive_s)),
        ("grpc.keepalive_permit_without_calls", 1),
    ]


def _ms(seconds: float) -> int:
    return max(1, round(seconds * 1000))


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


# -- state and stats ----------------------------------------------------------------------


class UplinkState(StrEnum):
    STOPPED = "stopped"  # not running
    CONNECTING = "connecting"  # dialling, Hello sent, waiting for Welcome
    CONNECTED = "connected"  # session up, the plane answers
    BACKOFF = "backoff"  # waiting to redial
    SILENT = "silent"  # the plane has not answered for silence_timeout_s (see module doc)


@dataclass(frozen=True, slots=True)
class UplinkStats:
    """Counters and gauges for metrics, `doctor` and heartbeats."""

    state: UplinkState
    sessions_total: int  # Welcomes received
    reconnects_total: int  # dials after the first
    batches_sent_total: int
    samples_sent_total: int
    samples_resent_total: int  # sent again after a reconnect (were unacked)
    events_sent_total: int
    acked_through_seq: int
    events_acked_through_seq: int
    last_ack_at: float | None  # Unix s of the last telemetry or event ack
    oldest_unacked_age_s: float  # telemetry
    pending_samples: int
    pending_events: int
    silent_for_s: float  # how long the plane has left the agent waiting; 0 = not waiting
    session_id: str
    clock_skew_s: float | None  # plane clock - agent clock at the last Welcome
    last_error: str


@dataclass(slots=True)
class _Session:
    call: grpc.aio.StreamStreamCall[pb.AgentMessage, pb.PlaneMessage]
    welcome: convert.WelcomeInfo
    batch_max: int
    max_unacked: int
    write_lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    sent_through: dict[str, int] = field(default_factory=dict)
    batches_in_flight: deque[int] = field(default_factory=deque)  # last seq of each batch
    events_in_flight: deque[int] = field(default_factory=deque)
    partial_first_seq: int = 0
    partial_since: float = 0.0
    control: asyncio.Queue[pb.PlaneMessage] = field(default_factory=asyncio.Queue)


# -- the uplink ---------------------------------------------------------------------------


class Uplink:
    """Keeps one EdgeLink session open and moves the outbox to the plane; see the module doc.

    `async with Uplink(...) as uplink:` runs it in a task; leaving the block cancels it and
    closes the channel (the outbox keeps whatever is unacked). `run()` is the same loop for
    an `asyncio.TaskGroup`. Handlers run on the event loop, one message at a time; a missing
    handler answers REJECTED / UNSUPPORTED and the capability is not announced. A handler that
    raises answers REJECTED / INTERNAL (the plane may retry). Command and config answers are
    remembered (except INTERNAL) and repeated for a redelivery without calling the handler
    again; the handlers must still apply a command id or config version at most once across
    restarts (EdgeLink step 6).
    """

    def __init__(
        self,
        settings: UplinkSettings,
        *,
        outbox: AsyncOutbox,
        hello: Callable[[], HelloInfo],
        on_schedule: ScheduleHandler | None = None,
        on_command: CommandHandler | None = None,
        on_config: ConfigHandler | None = None,
        heartbeat: Callable[[], HeartbeatInfo] | None = None,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        rng: Callable[[], float] = _SYSTEM_RANDOM.random,
        clock: Callable[[], float] = time.monotonic,
        wall_clock: Callable[[], float] = time.time,
        close_timeout_s: float = CLOSE_TIMEOUT_S,
    ) -> None:
        """`sleep` and `rng` drive the reconnect backoff (tests inject them); `clock` is
        monotonic (silence, batch delay), `wall_clock` Unix s (Hello, heartbeats, expiry);
        `close_timeout_s` bounds `aclose`."""
        if not close_timeout_s > 0:
            raise ValueError(f"close_timeout_s must be > 0 (got {close_timeout_s!r})")
        self.settings = settings
        self.close_timeout_s = close_timeout_s
        self._outbox = outbox
        self._hello = hello
        self._on_schedule = on_schedule
        self._on_command = on_command
        self._on_config = on_config
        self._heartbeat = heartbeat
        self._sleep = sleep
        self._rng = rng
        self._clock = clock
        self._wall = wall_clock

        self._task: asyncio.Task[None] | None = None
        self._cancel_base = 0  # cancel requests the run task carried when run() started
        self._phase = UplinkState.STOPPED
        self._wake = asyncio.Event()
        self._acked_event = asyncio.Event()
        self._quiet_since: float | None = clock()
        self._attempt = 0
        self._down_since: float | None = None  # first failure of the current trouble
        self._failed_dials = 0
        self._command_answers: OrderedDict[str, Ack] = OrderedDict()
        self._config_answers: OrderedDict[int, Ack] = OrderedDict()
        self._skewed = False
        self._welcomed_at: float | None = None

        self._sessions_total = 0
        self._dials_total = 0
        self._batches_sent = 0
        self._samples_sent = 0
        self._samples_resent = 0
        self._events_sent = 0
        self._max_sent: dict[str, int] = {TELEMETRY: 0, EVENTS: 0}
        self._acked: dict[str, int] = {TELEMETRY: 0, EVENTS: 0}
        self._last_ack_at: float | None = None
        self._session_id = ""
        self._clock_skew_s: float | None = None
        self._last_error = ""

    # -- lifecycle -------------------------------------------------------------------------

    async def __aenter__(self) -> Self:
        self._task = asyncio.create_task(self.run(), name="edgelink-uplink")
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Stop the uplink: cancel the session (unacked rows stay in the outbox).

        Returns within `close_timeout_s` in every state of the session (see "Stopping" in the
        module docstring); never raises, except the caller's own cancellation."""
        task, self._task = self._task, None
        if task is None:
            return
        stuck = await cancel_and_wait([task], self.close_timeout_s, "uplink")
        if stuck:
            self._phase = UplinkState.STOPPED  # it no longer runs as far as we are concerned
            return
        if not task.cancelled() and task.exception() is not None:
            log.error("uplink: the run task had failed", exc_info=task.exception())

    async def run(self) -> None:
        """Connect, stream, reconnect; forever (until cancelled)."""
        self._cancel_base = _cancelling()
        try:
            while True:
                self._checkpoint()
                self._phase = UplinkState.CONNECTING
                self._dials_total += 1
                self._welcomed_at = None
                error: Exception | None = None
                try:
                    await self._run_session()
                except asyncio.CancelledError:
                    if cancel_requested(self._cancel_base):
                        raise
                    # Not a request to stop this task: gRPC's own CancelledError for a call
                    # it cancelled locally. The session is over; dial again.
                    error = UplinkError("the gRPC call was cancelled under the session")
                except Exception as exc:  # every failure ends the session, none ends the loop
                    if cancel_requested(self._cancel_base):
                        # grpc turned our cancellation into an RPC error (INTERNAL); honour it.
                        log.debug("uplink: cancelled while %s", _describe(exc))
                        raise asyncio.CancelledError from exc
                    error = exc
                finally:
                    if self._quiet_since is None:
                        self._quiet_since = self._clock()
                welcomed_at = self._welcomed_at
                lasted = self._clock() - welcomed_at if welcomed_at is not None else -1.0
                if lasted >= self.settings.backoff_reset_after_s:
                    self._attempt = 0
                self._session_ended(error, welcomed=welcomed_at is not None)
                delay = self.backoff_delay(self._attempt)
                self._attempt += 1
                self._phase = UplinkState.BACKOFF
                log.debug("uplink: redialling in %.2f s", delay)
                await self._sleep(delay)
                self._checkpoint()  # the sleep swallowed it (an injected one may)
        finally:
            self._phase = UplinkState.STOPPED

    def _checkpoint(self) -> None:
        """Raise `CancelledError` if the run task was told to stop and something (a library,
        an injected dependency) swallowed it: the run loop stops instead of carrying on."""
        if cancel_requested(self._cancel_base):
            raise asyncio.CancelledError

    def backoff_delay(self, attempt: int) -> float:
        """Full jitter: uniform in [0, min(max, initial * multiplier ** attempt))."""
        s = self.settings
        exponent = min(attempt, 64)  # beyond that the cap has long been reached
        ceiling = min(s.backoff_max_s, s.backoff_initial_s * s.backoff_multiplier**exponent)
        return self._rng() * ceiling

    # -- public state ----------------------------------------------------------------------

    @property
    def state(self) -> UplinkState:
        if self._phase is UplinkState.STOPPED:
            return UplinkState.STOPPED
        if self._silent_for() > self.settings.silence_timeout_s:
            return UplinkState.SILENT
        return self._phase

    @property
    def silent_for_s(self) -> float:
        """How long the plane has left the agent waiting for an answer; 0 = not waiting."""
        return self._silent_for()

    def notify(self) -> None:
        """New rows are in the outbox: send them soon. Call on the loop thread (from another
        thread: `loop.call_soon_threadsafe(uplink.notify)`)."""
        self._wake.set()

    async def stats(self) -> UplinkStats:
        outbox = await self._outbox.stats()
        telemetry, events = outbox[TELEMETRY], outbox[EVENTS]
        return UplinkStats(
            state=self.state,
            sessions_total=self._sessions_total,
            reconnects_total=max(0, self._dials_total - 1),
            batches_sent_total=self._batches_sent,
            samples_sent_total=self._samples_sent,
            samples_resent_total=self._samples_resent,
            events_sent_total=self._events_sent,
            acked_through_seq=self._acked[TELEMETRY],
            events_acked_through_seq=self._acked[EVENTS],
            last_ack_at=self._last_ack_at,
            oldest_unacked_age_s=telemetry.oldest_age_s,
            pending_samples=telemetry.depth,
            pending_events=events.depth,
            silent_for_s=self._silent_for(),
            session_id=self._session_id,
            clock_skew_s=self._clock_skew_s,
            last_error=self._last_error,
        )

    async def flush(self, timeout_s: float) -> bool:
        """Wait until every row in the outbox now is acked; False on timeout (which covers
        reading the outbox too)."""
        try:
            async with asyncio.timeout(timeout_s):
                outbox = await self._outbox.stats()
                target = {name: outbox[name].last_seq for name in (TELEMETRY, EVENTS)}
                while True:
                    self._acked_event.clear()
                    outbox = await self._outbox.stats()
                    if all(outbox[n].acked_seq >= seq for n, seq in target.items()):
                        return True
                    await self._acked_event.wait()
        except TimeoutError:
            return False

    # -- one session -----------------------------------------------------------------------

    async def _run_session(self) -> None:
        """Dial, handshake and stream until the session fails (it always ends by raising)."""
        settings = self.settings
        metadata, credentials = await asyncio.to_thread(self._credentials)
        self._checkpoint()
        options = settings.channel_options()
        if credentials is None:
            channel = grpc.aio.insecure_channel(settings.target, options=options)
        else:
            channel = grpc.aio.secure_channel(settings.target, credentials, options=options)
        try:
            call = pb_grpc.EdgeLinkStub(channel).Connect(metadata=metadata)
            try:
                session = await self._handshake(call)
                self._checkpoint()  # a step of the handshake swallowed one
                await self._stream(session)
            finally:
                call.cancel()
        finally:
            await channel.close(grace=None)

    def _credentials(
        self,
    ) -> tuple[tuple[tuple[str, str], ...], grpc.ChannelCredentials | None]:
        """(call metadata, channel credentials); runs in a thread (file reads)."""
        settings = self.settings
        token: str | None = None
        if settings.token_file is not None:
            token = _read_secret(settings.token_file, "token_file").decode().strip()
        elif settings.token_env is not None:
            token = os.environ.get(settings.token_env, "").strip()
            if not token:
                raise UplinkConfigError(
                    f"the environment variable {settings.token_env} (token_env) is not set"
                )
        if token is not None and (not token or any(c in token for c in "\r\n")):
            raise UplinkConfigError("the site token is empty or spans several lines")
        metadata = (("authorization", f"Bearer {token}"),) if token else ()
        tls = settings.tls
        if not tls.enabled:
            return metadata, None
        credentials = grpc.ssl_channel_credentials(
            root_certificates=_read_secret(tls.ca_file, "tls.ca_file") if tls.ca_file else None,
            private_key=_read_secret(tls.key_file, "tls.key_file") if tls.key_file else None,
            certificate_chain=(
                _read_secret(tls.cert_file, "tls.cert_file") if tls.cert_file else None
            ),
        )
        return metadata, credentials

    async def _handshake(
        self, call: grpc.aio.StreamStreamCall[pb.AgentMessage, pb.PlaneMessage]
    ) -> _Session:
        settings = self.settings
        if self._quiet_since is None:
            self._quiet_since = self._clock()
        try:
            async with asyncio.timeout(settings.connect_timeout_s):
                outbox = await self._outbox.stats()
                info = self._hello_info()
                hello = convert.hello_message(
                    info, telemetry=outbox[TELEMETRY], events=outbox[EVENTS], now=self._wall()
                )
                try:
                    await call.write(hello)
                except grpc.aio.AioRpcError as exc:
                    if exc.code() is not grpc.StatusCode.INTERNAL:
                        raise
                    # The plane ended the call before Hello went out; grpc then reports its
                    # own INTERNAL instead of the plane's status (typically an auth refusal).
                    raise UplinkError(
                        "the plane ended the call before Hello went out (refused the site "
                        f"token or certificate?): {_describe(exc)}"
                    ) from exc
                first = await call.read()
        except TimeoutError:
            raise UplinkError(
                f"no Welcome from {settings.target} within {settings.connect_timeout_s:g} s"
            ) from None
        except asyncio.InvalidStateError:
            raise StreamEndedError(*await _call_status(call)) from None
        if first is grpc.aio.EOF:
            raise StreamEndedError(*await _call_status(call))
        assert isinstance(first, pb.PlaneMessage)  # noqa: S101 (narrowing for mypy)
        if first.WhichOneof("payload") != "welcome":
            raise ProtocolError(
                f"the plane's first message is {first.WhichOneof('payload')}, not Welcome"
            )
        welcome = convert.welcome_from_proto(first.welcome)
        for stream, stored in (
            (TELEMETRY, welcome.last_stored_seq),
            (EVENTS, welcome.last_stored_event_seq),
        ):
            if stored < self._acked[stream]:
                log.error(
                    "uplink: the plane holds %s only through seq %d but acked through %d "
                    "before; rows %d..%d were deleted here and are lost on the plane",
                    stream,
                    stored,
                    self._acked[stream],
                    stored + 1,
                    self._acked[stream],
                )
            await self._outbox.reconcile(stream, stored)
        outbox = await self._outbox.stats()
        self._acked = {name: outbox[name].acked_seq for name in (TELEMETRY, EVENTS)}
        self._sessions_total += 1
        self._welcomed_at = self._clock()
        self._session_id = welcome.session_id
        self._phase = UplinkState.CONNECTED
        self._heard(outstanding=False)
        await self._check_skew(welcome)
        self._log_connected(welcome)
        self._acked_event.set()  # the Welcome acts as an ack
        if welcome.expected_schedule_version > info.last_schedule_version:
            log.info(
                "uplink: the plane expects schedule v%d, this agent holds v%d; it follows",
                welcome.expected_schedule_version,
                info.last_schedule_version,
            )
        session = _Session(
            call=call,
            welcome=welcome,
            batch_max=min(settings.batch_max_samples, welcome.max_batch_samples or 10**9),
            max_unacked=min(settings.max_unacked_batches, welcome.max_unacked_batches or 10**9),
            sent_through=dict(self._acked),
        )
        return session

    def _hello_info(self) -> HelloInfo:
        info = self._hello()
        capabilities = set(info.capabilities) | {"events"}
        for name, handler in (
            ("schedules", self._on_schedule),
            ("commands", self._on_command),
            ("config", self._on_config),
        ):
            if handler is not None:
                capabilities.add(name)
            else:
                capabilities.discard(name)
        return HelloInfo(
            site_id=info.site_id,
            agent_version=info.agent_version,
            capabilities=frozenset(capabilities),
            limits=info.limits,
            last_schedule_version=info.last_schedule_version,
            config_version=info.config_version,
        )

    async def _check_skew(self, welcome: convert.WelcomeInfo) -> None:
        if not welcome.server_time:
            self._clock_skew_s = None
            return
        skew = welcome.server_time - self._wall()
        self._clock_skew_s = skew
        skewed = abs(skew) > self.settings.clock_skew_warn_s
        if skewed and not self._skewed:
            log.warning(
                "uplink: the plane's clock is %+.1f s from this agent's (limit %g s); "
                "check NTP on the edge box",
                skew,
                self.settings.clock_skew_warn_s,
            )
            event = convert.agent_event(
                "clock_skew",
                at=self._wall(),
                severity="warning",
                message=f"agent clock differs from the plane's by {-skew:+.1f} s",
                details={"skew_s": f"{skew:.3f}"},
            )
            await self._outbox.append(EVENTS, [convert.outbox_row(event)])
        elif not skewed and self._skewed:
            log.info("uplink: the clocks agree again (skew %+.1f s)", skew)
        self._skewed = skewed

    async def _stream(self, session: _Session) -> NoReturn:
        tasks = [
            asyncio.create_task(self._read_loop(session), name="uplink-read"),
            asyncio.create_task(self._send_loop(session), name="uplink-send"),
            asyncio.create_task(self._heartbeat_loop(session), name="uplink-heartbeat"),
            asyncio.create_task(self._control_loop(session), name="uplink-control"),
            asyncio.create_task(self._watchdog(), name="uplink-watchdog"),
        ]
        try:
            # Each of them runs until the session fails: the first to end ends the session
            # (also one that ends cancelled: gRPC cancelled the call under it).
            done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
        finally:
            stuck = await cancel_and_wait(tasks, _TASKS_STOP_TIMEOUT_S, "uplink session")
        # The reader (first) sees why the stream ended; a writer only sees that it did.
        for task in tasks:
            if task.done() and not task.cancelled() and task.exception() is not None:
                raise cast(BaseException, task.exception())
        ended = [t.get_name() for t in tasks if t in done and t.cancelled()]
        if ended:
            raise UplinkError(f"{', '.join(ended)} cancelled by gRPC (the call was cancelled)")
        if stuck:  # pragma: no cover (logged by cancel_and_wait)
            raise UplinkError("uplink session tasks did not stop")
        raise UplinkError("uplink session ended without an error")  # pragma: no cover

    # -- plane -> agent --------------------------------------------------------------------

    async def _read_loop(self, session: _Session) -> None:
        call = session.call
        while True:
            message = await call.read()
            if message is grpc.aio.EOF:
                raise StreamEndedError(*await _call_status(call))
            assert isinstance(message, pb.PlaneMessage)  # noqa: S101 (narrowing for mypy)
            kind = message.WhichOneof("payload")
            if kind == "telemetry_ack":
                await self._on_ack(session, TELEMETRY, message.telemetry_ack.acked_through_seq)
            elif kind == "event_ack":
                await self._on_ack(session, EVENTS, message.event_ack.acked_through_seq)
            elif kind in ("schedule", "command", "config_update"):
                session.control.put_nowait(message)
            elif kind == "welcome":
                log.warning("uplink: a second Welcome in one session; ignored")
            else:  # a payload from a newer plane
                log.debug("uplink: ignoring a plane message this agent does not know")
            self._heard(outstanding=bool(session.batches_in_flight or session.events_in_flight))

    async def _on_ack(self, session: _Session, stream: str, through: int) -> None:
        if through > self._acked[stream]:  # else a repeat, or rows the Welcome covered
            try:
                await self._outbox.ack(stream, through)
            except AckBeyondLastSeqError as exc:
                raise ProtocolError(
                    f"the plane acked {stream} beyond anything sent: {exc}"
                ) from None
            self._acked[stream] = through
            self._last_ack_at = self._wall()
            # Rows the plane stored outside this session's sends (a late batch of the previous
            # session) need not be sent again.
            session.sent_through[stream] = max(session.sent_through[stream], through)
            self._acked_event.set()
        in_flight = session.batches_in_flight if stream == TELEMETRY else session.events_in_flight
        while in_flight and in_flight[0] <= through:
            in_flight.popleft()
        self._wake.set()

    async def _control_loop(self, session: _Session) -> None:
        while True:
            message = await session.control.get()
            kind = message.WhichOneof("payload")
            if kind == "schedule":
                version = message.schedule.version
                ack = await self._schedule(message.schedule)
                await self._write(session, convert.schedule_ack_message(version, ack))
            elif kind == "command":
                command_id = message.command.command_id
                ack = await self._command(message.command)
                await self._write(session, convert.command_ack_message(command_id, ack))
            elif kind == "config_update":
                version = message.config_update.config_version
                ack = await self._config(message.config_update)
                await self._write(session, convert.config_ack_message(version, ack))

    async def _schedule(self, message: pb.Schedule) -> Ack:
        where = f"schedule v{message.version}"
        if self._on_schedule is None:
            return Ack.reject(AckReason.UNSUPPORTED, "this agent does not execute schedules")
        try:
            schedule = convert.schedule_from_proto(message, limits=self._hello().limits)
        except convert.InvalidMessageError as exc:
            log.warning("uplink: %s rejected (%s): %s", where, exc.reason, exc.detail)
            return exc.ack()
        ack = await self._call_handler(where, self._on_schedule, schedule)
        if isinstance(ack, Ack):
            return ack
        return convert.ack_from_save_result(ack)

    async def _command(self, message: pb.Command) -> Ack:
        answered = self._command_answers.get(message.command_id)
        if answered is not None and message.command_id:
            return answered
        if self._on_command is None:
            return Ack.reject(AckReason.UNSUPPORTED, "this agent does not execute commands")
        try:
            command = convert.command_from_proto(message, now=self._wall())
        except convert.InvalidMessageError as exc:
            log.warning("uplink: command %s rejected: %s", message.command_id, exc.detail)
            ack = exc.ack()
        else:
            ack = await self._call_handler(
                f"command {message.command_id}", self._on_command, command
            )
        _remember(self._command_answers, message.command_id, ack)
        return ack

    async def _config(self, message: pb.ConfigUpdate) -> Ack:
        answered = self._config_answers.get(message.config_version)
        if answered is not None and message.config_version:
            return answered
        if self._on_config is None:
            return Ack.reject(AckReason.UNSUPPORTED, "this agent does not take config updates")
        try:
            patch = convert.config_from_proto(message)
        except convert.InvalidMessageError as exc:
            log.warning("uplink: config v%d rejected: %s", message.config_version, exc.detail)
            ack = exc.ack()
        else:
            ack = await self._call_handler(
                f"config v{message.config_version}", self._on_config, patch
            )
        _remember(self._config_answers, message.config_version, ack)
        return ack

    async def _call_handler(
        self, what: str, handler: Callable[[_T], Awaitable[_R]], value: _T
    ) -> _R | Ack:
        try:
            result = handler(value)
            return await result if inspect.isawaitable(result) else result
        except Exception as exc:  # a failing handler must not end the session
            log.exception("uplink: the handler for %s failed", what)
            return Ack.reject(AckReason.INTERNAL, f"{type(exc).__name__} while applying {what}")

    # -- agent -> plane --------------------------------------------------------------------

    async def _write(self, session: _Session, message: pb.AgentMessage) -> None:
        async with session.write_lock:
            try:
                await session.call.write(message)
            except asyncio.InvalidStateError:
                raise StreamEndedError(*await _call_status(session.call)) from None

    async def _send_loop(self, session: _Session) -> None:
        settings = self.settings
        idle_poll_s = max(settings.batch_max_delay_s, 0.05)
        while True:
            self._wake.clear()
            sent = await self._send_events(session)
            wait_s: float | None = idle_poll_s
            if len(session.batches_in_flight) < session.max_unacked:
                rows = await self._outbox.pending(
                    TELEMETRY, after_seq=session.sent_through[TELEMETRY], limit=session.batch_max
                )
                if rows:
                    due_in = self._batch_due_in(session, rows)
                    if due_in <= 0:
                        await self._send_batch(session, rows)
                        sent = True
                    else:
                        wait_s = min(due_in, idle_poll_s)
            if sent:
                continue
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(wait_s):
                    await self._wake.wait()

    def _batch_due_in(self, session: _Session, rows: Sequence[OutboxRow]) -> float:
        """Seconds until a partial batch starting at rows[0] should go; <= 0 = now."""
        if len(rows) >= session.batch_max:
            return 0.0
        delay = self.settings.batch_max_delay_s
        if self._wall() - rows[0].timestamp >= delay:
            return 0.0  # waited in the outbox already (the tail of a backlog)
        now = self._clock()
        if session.partial_first_seq != rows[0].seq:
            session.partial_first_seq = rows[0].seq
            session.partial_since = now
        return session.partial_since + delay - now

    async def _send_batch(self, session: _Session, rows: Sequence[OutboxRow]) -> None:
        if not (session.batches_in_flight or session.events_in_flight):
            self._expecting()
        last = rows[-1].seq
        # Booked before the write: its ack may be read while the write is still awaited.
        session.sent_through[TELEMETRY] = max(session.sent_through[TELEMETRY], last)
        session.batches_in_flight.append(last)
        await self._write(session, convert.telemetry_batch_message(rows))
        self._batches_sent += 1
        self._samples_sent += len(rows)
        resent = sum(1 for row in rows if row.seq <= self._max_sent[TELEMETRY])
        if resent:
            self._samples_resent += resent
        self._max_sent[TELEMETRY] = max(self._max_sent[TELEMETRY], last)

    async def _send_events(self, session: _Session) -> bool:
        room = self.settings.max_unacked_events - len(session.events_in_flight)
        if room <= 0:
            return False
        rows = await self._outbox.pending(
            EVENTS, after_seq=session.sent_through[EVENTS], limit=room
        )
        for row in rows:
            if not (session.batches_in_flight or session.events_in_flight):
                self._expecting()
            session.sent_through[EVENTS] = max(session.sent_through[EVENTS], row.seq)
            session.events_in_flight.append(row.seq)
            await self._write(session, convert.event_message(row))
            self._events_sent += 1
            self._max_sent[EVENTS] = max(self._max_sent[EVENTS], row.seq)
        return bool(rows)

    async def _heartbeat_loop(self, session: _Session) -> None:
        interval = session.welcome.heartbeat_interval_s or self.settings.heartbeat_interval_s
        while True:
            outbox = await self._outbox.stats()
            info = self._heartbeat_info()
            await self._write(
                session,
                convert.heartbeat_message(
                    info,
                    now=self._wall(),
                    pending_samples=outbox[TELEMETRY].depth,
                    pending_events=outbox[EVENTS].depth,
                ),
            )
            await asyncio.sleep(interval)

    def _heartbeat_info(self) -> HeartbeatInfo:
        if self._heartbeat is None:
            return HeartbeatInfo()
        try:
            return self._heartbeat()
        except Exception:  # a broken status provider must not break the link
            log.exception("uplink: the heartbeat provider failed; sending a bare heartbeat")
            return HeartbeatInfo()

    # -- silence ---------------------------------------------------------------------------

    def _heard(self, *, outstanding: bool) -> None:
        """The plane spoke; silence counts again from now only if the agent still waits."""
        self._quiet_since = self._clock() if outstanding else None

    def _expecting(self) -> None:
        """The agent starts waiting for an answer."""
        if self._quiet_since is None:
            self._quiet_since = self._clock()

    def _silent_for(self) -> float:
        if self._quiet_since is None:
            return 0.0
        return max(0.0, self._clock() - self._quiet_since)

    async def _watchdog(self) -> None:
        timeout = self.settings.silence_timeout_s
        while True:
            await asyncio.sleep(min(1.0, timeout / 4))
            silent_for = self._silent_for()
            if silent_for > timeout:
                raise PlaneSilentError(
                    f"no answer from the plane for {silent_for:.1f} s (silence_timeout_s "
                    f"{timeout:g})"
                )

    # -- logging ---------------------------------------------------------------------------

    def _session_ended(self, error: Exception | None, *, welcomed: bool) -> None:
        """Log the first failure loudly, repeats quietly (the recovery: `_log_connected`)."""
        what = _describe(error)
        self._last_error = what
        if self._down_since is None:
            self._down_since = self._clock()
            self._failed_dials = 0
            log.warning(
                "uplink to %s: %s%s; reconnecting with backoff (repeats logged at debug level)",
                self.settings.target,
                what,
                _hint(error),
            )
        else:
            log.debug("uplink to %s: %s", self.settings.target, what)
        if not welcomed:
            self._failed_dials += 1

    def _log_connected(self, welcome: convert.WelcomeInfo) -> None:
        if self._down_since is not None:
            log.info(
                "uplink: connected to %s again after %.1f s (%d failed dials); session %s",
                self.settings.target,
                self._clock() - self._down_since,
                self._failed_dials,
                welcome.session_id,
            )
            self._down_since = None
        elif self._sessions_total == 1:
            log.info(
                "uplink: connected to %s (plane %s, session %s)",
                self.settings.target,
                welcome.plane_version,
                welcome.session_id,
            )


def _describe(error: BaseException | None) -> str:
    if error is None:
        return "session ended"
    if isinstance(error, grpc.aio.AioRpcError):
        return f"{error.code().name}: {error.details() or ''}".rstrip(": ")
    return f"{type(error).__name__}: {error}" if str(error) else type(error).__name__


def _hint(error: BaseException | None) -> str:
    code = None
    if isinstance(error, grpc.aio.AioRpcError):
        code = error.code()
    elif isinstance(error, StreamEndedError):
        code = error.code
    if code in (grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.PERMISSION_DENIED):
        return " (check the site token / certificate and the site id)"
    if code is grpc.StatusCode.ABORTED:
        return " (a newer session for this site replaced this one: two agents with one site id?)"
    return ""


def _read_secret(path: Path, what: str) -> bytes:
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise UplinkConfigError(f"{what} {path}: {exc.strerror or exc}") from None
    if not data.strip():
        raise UplinkConfigError(f"{what} {path} is empty")
    return data


def _remember(answers: OrderedDict[_K, Ack], key: _K, ack: Ack) -> None:
    if ack.reason is AckReason.INTERNAL or not key:
        return  # retryable: a redelivery should try again
    answers[key] = ack
    answers.move_to_end(key)
    while len(answers) > _ANSWERS_REMEMBERED:
        answers.popitem(last=False)
