"""One Modbus TCP connection: one lock, our own timeouts, our own never-ending reconnect.

pymodbus' own retry and reconnect logic is switched off (``retries=0``, ``reconnect_delay=0``;
LIBRARY-NOTES.md lists the bugs it has had). ``ModbusConnection`` owns instead:

- **one ``AsyncModbusTcpClient`` per (host, port)** and one ``asyncio.Lock``, so exactly one
  request is on the wire at a time (sources sharing a gateway, e.g. a Victron GX with several
  unit ids, share the connection object);
- **a per-request timeout** (``asyncio.timeout`` around every call). A connection that misses
  ``timeouts_before_reconnect`` answers in a row is dropped and reconnected: an unplugged cable
  shows up as silence, never as an error;
- **silence detection that does not depend on the caller's patience**: a connection on which
  requests have waited ``timeouts_before_reconnect`` x ``request_timeout_s`` in all since its
  last answer is dropped too, also when those requests were abandoned by their callers (a poll
  deadline shorter than ``request_timeout_s`` cancels requests before our own timeout can
  count them; a half-open TCP connection would otherwise be kept forever);
- **a reconnect loop that never gives up**: exponential backoff with full jitter and a cap
  (0.5 s, 1 s, 2 s ... 60 s, each delay drawn uniformly below its ceiling), for as long as the
  outage lasts; every attempt has its own ``connect_timeout_s``, and an unexpected error in an
  attempt counts as a failed attempt instead of ending the loop. ``sleep`` and ``rng`` are
  injected so a test runs a multi-hour outage in milliseconds. Requests made while the loop
  runs fail at once with ``ConnectionLost``: the coordinator marks the data stale instead of
  waiting.

**Cancellation** always wins. pymodbus awaits its answer (and its connect) with
``asyncio.wait_for``, which on Python < 3.12 returns the result instead of raising when the
task is cancelled in the very loop iteration in which the answer arrives (CPython gh-86296,
likely under CPU load); the cancel request is then lost and a task that was told to stop keeps
running (the agent's executor did, and its TaskGroup waited for it forever). Every request is
therefore awaited through ``_honouring_cancel``, which raises the lost ``CancelledError``
again; a connect attempt runs as a task of its own that we wait for with ``asyncio.wait`` and
abandon when it overruns. ``close`` waits for the reconnect task a bounded time only.

Logging (STYLE 7): the first failure is logged loudly, repeats quietly (debug, counted), the
recovery once. Device exceptions are the device's answer, not a link failure: they are counted
here and logged by whoever asked (the source logs them once per request and code).

Errors (pymodbus exceptions are translated here, at the boundary)::

    ModbusError                  anything that went wrong talking to the device
    ├── ConnectionLost           not connected (refused, dropped, reconnecting in the background)
    ├── RequestTimeout           connected, but no answer within request_timeout_s
    ├── DeviceException          the device answered with a Modbus exception (code, meaning)
    └── ProtocolError            an answer that does not fit the request (wrong length, ids)
"""

from __future__ import annotations

import asyncio
import logging
import math
import random
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any, Literal, Protocol, TypeVar, cast

from pymodbus.client import AsyncModbusTcpClient
from pymodbus.exceptions import ConnectionException, ModbusIOException

from .tasks import cancel_and_wait

log = logging.getLogger(__name__)

Table = Literal["holding", "input"]
_T = TypeVar("_T")
Sleep = Callable[[float], Awaitable[None]]
Rng = Callable[[], float]

DEFAULT_PORT = 502
DEFAULT_BACKOFF_INITIAL_S = 0.5
DEFAULT_BACKOFF_MAX_S = 60.0
DEFAULT_TIMEOUTS_BEFORE_RECONNECT = 3  # like pymodbus' own "retries + 3" rule
CLOSE_TIMEOUT_S = 2.0  # how long close() waits for the reconnect task to end

EXCEPTION_MEANINGS: dict[int, str] = {
    1: "illegal function",
    2: "illegal data address",
    3: "illegal data value",
    4: "server device failure",
    5: "acknowledge",
    6: "server device busy",
    7: "negative acknowledge",
    8: "memory parity error",
    10: "gateway path unavailable",
    11: "gateway target device failed to respond",
}

EXCEPTION_HINTS: dict[int, str] = {
    1: "the device does not support this function: check the table (holding/input)",
    2: "check the register map / unit id",
    3: "the device refused the value: check its range and scale",
    4: "the device reports an internal failure: check its own display or log",
    5: "the device accepted a long-running request: read again later",
    6: "the device is busy: it is retried at the next poll",
    10: "the gateway has no path to that unit id: check the unit id",
    11: "no device answered behind the gateway: check the unit id and the bus behind it",
}


# -- errors ---------------------------------------------------------------------------------


class ModbusError(Exception):
    """Anything that went wrong talking to a Modbus device; the message says what to check."""


class ConnectionLost(ModbusError):
    """No connection: refused, dropped, or the reconnect loop is still trying."""


class RequestTimeout(ModbusError):
    """Connected, but the device did not answer within the request timeout."""


class DeviceException(ModbusError):
    """The device answered with a Modbus exception response."""

    def __init__(self, code: int, request: str, *, unit_id: int | None = None) -> None:
        self.code = code
        self.meaning = EXCEPTION_MEANINGS.get(code, "unknown exception code")
        self.request = request
        self.unit_id = unit_id
        hint = EXCEPTION_HINTS.get(code, "see the device's Modbus documentation")
        unit = f" (unit {unit_id})" if unit_id is not None else ""
        super().__init__(f"exception {code} ({self.meaning}) {request}{unit} — {hint}")


class ProtocolError(ModbusError):
    """An answer that does not fit the request (wrong register count, transaction or unit)."""


# -- backoff --------------------------------------------------------------------------------


@dataclass
class Backoff:
    """Exponential backoff with full jitter: delay n is uniform in [0, min(max, initial*2^n)).

    Never exhausted; the exponent stops growing once the ceiling reaches the cap, so the
    10-millionth attempt costs the same arithmetic as the tenth.
    """

    initial_s: float = DEFAULT_BACKOFF_INITIAL_S
    max_s: float = DEFAULT_BACKOFF_MAX_S
    multiplier: float = 2.0
    rng: Rng = random.random
    attempt: int = 0

    def __post_init__(self) -> None:
        if not 0 < self.initial_s <= self.max_s:
            raise ValueError(f"backoff needs 0 < initial ({self.initial_s}) <= max ({self.max_s})")
        if self.multiplier < 1:
            raise ValueError(f"backoff multiplier must be >= 1 (got {self.multiplier})")
        growth = self.max_s / self.initial_s
        self._cap_exponent = (
            0 if self.multiplier == 1 else math.ceil(math.log(growth, self.multiplier))
        )

    @property
    def ceiling_s(self) -> float:
        """The upper bound of the next delay."""
        exponent = min(self.attempt, self._cap_exponent)
        return min(self.max_s, self.initial_s * self.multiplier**exponent)

    def next_delay(self) -> float:
        ceiling = self.ceiling_s
        self.attempt += 1
        return max(0.0, min(1.0, self.rng())) * ceiling

    def reset(self) -> None:
        self.attempt = 0


# -- cancellation --------------------------------------------------------------------------


async def _honouring_cancel(awaitable: Awaitable[_T]) -> _T:
    """Await ``awaitable``; raise ``CancelledError`` if it swallowed a cancel request.

    ``asyncio.wait_for`` (pymodbus awaits every answer with it) drops a
    cancellation that arrives together with the result on Python < 3.12 (gh-86296). A cancel
    request that was delivered shows in ``Task.cancelling()`` until someone ``uncancel()``s it
    (``asyncio.timeout`` does, when it turns its own cancel into ``TimeoutError``): more cancel
    requests after the call than before it means one was swallowed, and it is raised again here
    so that ``asyncio.timeout``, ``TaskGroup`` and ``Task.cancel()`` keep their promises.
    """
    task = asyncio.current_task()
    before = task.cancelling() if task is not None else 0
    result = await awaitable
    if task is not None and task.cancelling() > before:
        raise asyncio.CancelledError
    return result


def _describe(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__


# -- the client, as far as we use it ------------------------------------------------------------


class ModbusResponse(Protocol):
    """The part of a pymodbus PDU we look at."""

    registers: list[int]
    exception_code: int

    def isError(self) -> bool: ...


class ModbusClient(Protocol):
    """The part of ``AsyncModbusTcpClient`` we use; tests may pass a fake."""

    @property
    def connected(self) -> bool: ...

    async def connect(self) -> bool: ...

    def close(self) -> None: ...

    async def read_holding_registers(
        self, address: int, *, count: int, device_id: int
    ) -> ModbusResponse: ...

    async def read_input_registers(
        self, address: int, *, count: int, device_id: int
    ) -> ModbusResponse: ...

    async def write_registers(
        self, address: int, values: list[int], *, device_id: int
    ) -> ModbusResponse: ...


class RegisterIO(Protocol):
    """What a source needs from a connection: read and write registers of one unit."""

    @property
    def generation(self) -> int:
        """Bumped on every (re)connect: the device may have rebooted, re-read what it says."""
        ...

    async def read_registers(
        self, table: Table, address: int, count: int, *, unit_id: int
    ) -> list[int]: ...

    async def write_registers(
        self, address: int, values: Sequence[int], *, unit_id: int
    ) -> None: ...


def _pymodbus_client(host: str, port: int, timeout_s: float) -> ModbusClient:
    client = AsyncModbusTcpClient(host, port=port, timeout=timeout_s, retries=0, reconnect_delay=0)
    return cast(ModbusClient, client)  # its PDUs are typed more loosely than our Protocol


# -- statistics and the once-logger -------------------------------------------------------------


@dataclass
class ConnectionStats:
    """Counters for metrics (``as_dict`` uses Prometheus-friendly names)."""

    requests: int = 0
    responses: int = 0  # answers, exception responses included
    errors: Counter[str] = field(default_factory=Counter)  # by kind (error class name)
    device_exceptions: Counter[int] = field(default_factory=Counter)  # by exception code
    connect_attempts: int = 0
    connects: int = 0  # successful connects, the first one included
    reconnects: int = 0  # successful connects after a loss
    connect_failures: int = 0

    def as_dict(self) -> dict[str, Any]:
        return {
            "requests_total": self.requests,
            "responses_total": self.responses,
            "errors_total": dict(self.errors),
            "device_exceptions_total": {str(k): v for k, v in self.device_exceptions.items()},
            "connect_attempts_total": self.connect_attempts,
            "connects_total": self.connects,
            "reconnects_total": self.reconnects,
            "connect_failures_total": self.connect_failures,
        }


class LinkHealth:
    """First failure loud, repeats quiet (counted), recovery once (STYLE 7).

    ``failed`` takes the whole message (the errors here already name the connection).
    """

    def __init__(self, name: str, logger: logging.Logger = log) -> None:
        self.name = name
        self.log = logger
        self.failing_since: float | None = None
        self.suppressed = 0

    def failed(self, problem: str) -> None:
        if self.failing_since is None:
            self.failing_since = time.monotonic()
            self.suppressed = 0
            self.log.warning("%s (repeats are logged at debug level)", problem)
        else:
            self.suppressed += 1
            self.log.debug("%s (again, %d repeats)", problem, self.suppressed)

    def succeeded(self) -> None:
        if self.failing_since is None:
            return
        down_s = time.monotonic() - self.failing_since
        self.log.warning(
            "%s: back to normal after %.1f s (%d repeated failures not logged)",
            self.name,
            down_s,
            self.suppressed,
        )
        self.failing_since = None
        self.suppressed = 0


# -- the connection ---------------------------------------------------------------------------


class ModbusConnection:
    """``async with ModbusConnection(host, port) as conn``: requests, timeouts, reconnects."""

    def __init__(
        self,
        host: str,
        port: int = DEFAULT_PORT,
        *,
        request_timeout_s: float = 1.0,
        connect_timeout_s: float = 3.0,
        backoff_initial_s: float = DEFAULT_BACKOFF_INITIAL_S,
        backoff_max_s: float = DEFAULT_BACKOFF_MAX_S,
        timeouts_before_reconnect: int = DEFAULT_TIMEOUTS_BEFORE_RECONNECT,
        sleep: Sleep = asyncio.sleep,
        rng: Rng = random.random,
        client_factory: Callable[[], ModbusClient] | None = None,
    ) -> None:
        if not request_timeout_s > 0 or not connect_timeout_s > 0:
            raise ValueError("request and connect timeouts must be > 0")
        if timeouts_before_reconnect < 1:
            raise ValueError("timeouts_before_reconnect must be >= 1")
        self.host = host
        self.port = port
        self.name = f"Modbus {host}:{port}"
        self.request_timeout_s = request_timeout_s
        self.connect_timeout_s = connect_timeout_s
        self.timeouts_before_reconnect = timeouts_before_reconnect
        self.backoff = Backoff(backoff_initial_s, backoff_max_s, rng=rng)
        self.stats = ConnectionStats()
        self._sleep = sleep
        # pymodbus' own timeout must never fire before ours: ours decides what a timeout is.
        inner_timeout = 2 * max(request_timeout_s, connect_timeout_s) + 1.0
        self._client_factory = client_factory or (
            lambda: _pymodbus_client(host, port, inner_timeout)
        )
        self._client: ModbusClient | None = None
        self._lock = asyncio.Lock()
        self._health = LinkHealth(self.name)
        self._reconnect_task: asyncio.Task[None] | None = None
        self._silent = 0  # consecutive timeouts
        self._unanswered_s = 0.0  # time requests have waited in vain since the last answer
        self._generation = 0
        self._closed = False
        self._ever_connected = False

    # -- lifecycle --------------------------------------------------------------------------
    async def __aenter__(self) -> ModbusConnection:
        await self.open()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    async def open(self) -> bool:
        """Connect once now; on failure the reconnect loop keeps trying in the background."""
        self._closed = False
        if self.connected:
            return True
        if await self.try_connect():
            return True
        log.warning(
            "%s: reconnecting in the background, forever (backoff %g s ... %g s with jitter)",
            self.name,
            self.backoff.initial_s,
            self.backoff.max_s,
        )
        self._start_reconnect()
        return False

    async def close(self) -> None:
        """Stop reconnecting and close the connection; returns within ``CLOSE_TIMEOUT_S``."""
        self._closed = True
        task, self._reconnect_task = self._reconnect_task, None
        if task is not None and not task.done():
            await cancel_and_wait([task], CLOSE_TIMEOUT_S, f"{self.name}: the reconnect task")
        if self._client is not None:
            self._client.close()
        await asyncio.sleep(0)  # let the transport run its connection_lost callback

    @property
    def connected(self) -> bool:
        """The connection is up and usable: not while a reconnect attempt is still finishing
        (its transport can be up before `generation` moves on, see `_request`)."""
        return self._client is not None and self._client.connected and not self.reconnecting

    @property
    def generation(self) -> int:
        """Bumped on every successful (re)connect."""
        return self._generation

    @property
    def reconnecting(self) -> bool:
        return self._reconnect_task is not None and not self._reconnect_task.done()

    async def wait_connected(self, timeout_s: float | None = None) -> bool:
        """Wait (real time) until connected; for tools and tests. False on timeout."""
        try:
            async with asyncio.timeout(timeout_s):
                while not self.connected:
                    await asyncio.sleep(0.01)
        except TimeoutError:
            return False
        return True

    # -- requests ---------------------------------------------------------------------------
    async def read_registers(
        self, table: Table, address: int, count: int, *, unit_id: int
    ) -> list[int]:
        """``count`` registers from ``address`` of the holding or input table."""
        what = f"reading {table} {address}+{count}"

        async def call(client: ModbusClient) -> ModbusResponse:
            if table == "input":
                return await client.read_input_registers(address, count=count, device_id=unit_id)
            return await client.read_holding_registers(address, count=count, device_id=unit_id)

        response = await self._request(what, unit_id, call)
        registers = [int(r) for r in getattr(response, "registers", None) or []]
        if len(registers) != count:
            self.stats.errors["ProtocolError"] += 1
            raise ProtocolError(
                f"{self.name}: {what} returned {len(registers)} registers instead of {count}"
            )
        return registers

    async def write_registers(self, address: int, values: Sequence[int], *, unit_id: int) -> None:
        """Write-multiple-registers (function 16), also for a single register."""
        regs = [int(v) & 0xFFFF for v in values]
        what = f"writing {address}+{len(regs)}"

        async def call(client: ModbusClient) -> ModbusResponse:
            return await client.write_registers(address, regs, device_id=unit_id)

        await self._request(what, unit_id, call)

    async def _request(
        self,
        what: str,
        unit_id: int,
        call: Callable[[ModbusClient], Awaitable[ModbusResponse]],
    ) -> ModbusResponse:
        async with self._lock:
            self.stats.requests += 1
            client = self._client
            if self._closed:
                raise self._failed(ConnectionLost(f"{self.name}: connection closed"))
            # While a reconnect runs, its new connection may already be up before the attempt
            # finishes and bumps `generation`: a request must not slip onto it under the old
            # generation (callers re-read device layout, e.g. SunSpec discovery, per generation).
            if client is None or not self.connected:
                self._start_reconnect()
                raise self._failed(ConnectionLost(self._not_connected_text()))
            sent = time.monotonic()
            try:
                async with asyncio.timeout(self.request_timeout_s):
                    response = await _honouring_cancel(call(client))
            except TimeoutError:
                if not client.connected:
                    self._start_reconnect()
                    raise self._failed(
                        ConnectionLost(f"{self.name}: connection lost while {what}")
                    ) from None
                self._silent += 1
                if self._silent >= self.timeouts_before_reconnect:
                    self._drop(f"{self._silent} requests in a row unanswered")
                else:
                    self._count_silence(client, sent)
                raise self._failed(
                    RequestTimeout(
                        f"{self.name}: no answer within {self.request_timeout_s:g} s "
                        f"{what} (unit {unit_id}) — is the unit id right, is the device busy?"
                    )
                ) from None
            except asyncio.CancelledError:
                # The caller gave up (its own deadline, or shutdown) before our timeout could
                # count the request: the silence still counts (see the module docstring).
                self._count_silence(client, sent)
                raise
            except ModbusIOException as exc:
                if "No response" in str(exc) and client.connected:
                    self._silent += 1
                    if self._silent >= self.timeouts_before_reconnect:
                        self._drop(f"{self._silent} requests in a row unanswered")
                    raise self._failed(
                        RequestTimeout(f"{self.name}: no answer {what} (unit {unit_id})")
                    ) from None
                self._drop(str(exc))
                raise self._failed(ConnectionLost(f"{self.name}: {what}: {exc}")) from None
            except (ConnectionException, OSError) as exc:
                self._drop(str(exc))
                raise self._failed(
                    ConnectionLost(f"{self.name}: connection lost while {what}: {exc}")
                ) from None
            self._silent = 0
            self._unanswered_s = 0.0
            self.stats.responses += 1
            self._health.succeeded()
            if response.isError():
                code = int(getattr(response, "exception_code", 0) or 0)
                self.stats.device_exceptions[code] += 1
                self.stats.errors["DeviceException"] += 1
                raise DeviceException(code, what, unit_id=unit_id)
            return response

    def _failed(self, error: ModbusError) -> ModbusError:
        self.stats.errors[type(error).__name__] += 1
        self._health.failed(str(error))
        return error

    def _not_connected_text(self) -> str:
        if self.reconnecting:
            return (
                f"{self.name}: not connected (reconnecting in the background, "
                f"{self.stats.connect_failures} failed attempts so far; check that the device "
                f"is on and reachable)"
            )
        return f"{self.name}: not connected"

    # -- connecting -------------------------------------------------------------------------
    @property
    def silence_limit_s(self) -> float:
        """Requests waiting this long without any answer: the connection is dropped."""
        return self.timeouts_before_reconnect * self.request_timeout_s

    def _count_silence(self, client: ModbusClient, sent: float) -> None:
        """A request sent at ``sent`` ended without an answer: add its wait to the silence."""
        if client is not self._client or not client.connected:
            return  # that connection is gone already
        self._unanswered_s += max(0.0, time.monotonic() - sent)
        if self._unanswered_s >= self.silence_limit_s:
            self._drop(
                f"requests waited {self._unanswered_s:.1f} s in all without an answer "
                "(timed out or abandoned by their callers)"
            )

    def _abandon(self, client: ModbusClient, attempt: asyncio.Task[bool]) -> None:
        """A connect attempt we stop waiting for: cancel it and never use its client again."""
        attempt.cancel()
        client.close()
        if self._client is client:
            self._client = None  # the next attempt starts with a fresh client

        def closed_when_done(task: asyncio.Task[bool]) -> None:
            client.close()  # in case it connected after all
            if not task.cancelled():
                task.exception()  # retrieved: nobody waits for it any more

        attempt.add_done_callback(closed_when_done)

    def _drop(self, reason: str) -> None:
        """Close a connection that cannot be trusted and reconnect in the background."""
        log.debug("%s: dropping the connection: %s", self.name, reason)
        self._silent = 0
        self._unanswered_s = 0.0
        if self._client is not None:
            self._client.close()
        self._start_reconnect()

    def _start_reconnect(self) -> None:
        if self._closed or self.reconnecting:
            return
        self._reconnect_task = asyncio.create_task(
            self._reconnect_loop(), name=f"modbus-reconnect-{self.host}:{self.port}"
        )

    async def _reconnect_loop(self) -> None:
        """Try forever: sleep a jittered, capped, growing delay, then connect once."""
        while not self._closed:
            delay = self.backoff.next_delay()
            log.debug("%s: reconnecting in %.2f s", self.name, delay)
            await self._sleep(delay)
            if self._closed:
                return
            if await self.try_connect():
                self.stats.reconnects += int(self._generation > 1)
                return

    async def try_connect(self) -> bool:
        """One connect attempt within ``connect_timeout_s``; no retry (tools, the loop).

        Never raises but ``CancelledError``: whatever goes wrong is a failed attempt, so the
        reconnect loop keeps going. The attempt runs as a task of its own that is abandoned
        (cancelled, its client closed and replaced) when it overruns or we are cancelled: a
        library that ignores a cancellation cannot hold the reconnect loop, and a connect that
        completes after all is never used without a generation bump.
        """
        self.stats.connect_attempts += 1
        problem = "refused or unreachable"
        client: ModbusClient | None = None
        ok = False
        try:
            if self._client is None:
                self._client = self._client_factory()
            client = self._client
            client.close()  # a clean transport for every attempt
        except Exception as exc:  # a client that cannot even be made: one failed attempt
            client, problem = None, _describe(exc)
        if client is not None:
            attempt = asyncio.create_task(
                client.connect(), name=f"modbus-connect-{self.host}:{self.port}"
            )
            try:
                done, _ = await asyncio.wait({attempt}, timeout=self.connect_timeout_s)
            except asyncio.CancelledError:
                self._abandon(client, attempt)
                raise
            if not done:
                problem = f"no answer within {self.connect_timeout_s:g} s"
                self._abandon(client, attempt)
            elif attempt.cancelled():
                problem = "the connect was cancelled"
            elif (failure := attempt.exception()) is not None:  # OSError, a pymodbus surprise
                problem = _describe(failure)
            else:
                ok = bool(attempt.result())
        if client is None or not ok or not client.connected:
            if client is not None:
                client.close()
            self.stats.connect_failures += 1
            self.stats.errors["ConnectionLost"] += 1
            self._health.failed(
                f"{self.name}: cannot connect ({problem}) — check the address and port, that "
                f"Modbus TCP is enabled on the device, and firewalls"
            )
            return False
        self._generation += 1
        self._silent = 0
        self._unanswered_s = 0.0
        self.stats.connects += 1
        self.backoff.reset()
        if not self._ever_connected:
            self._ever_connected = True
            log.info("%s: connected", self.name)
        self._health.succeeded()
        return True
