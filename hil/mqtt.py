"""MQTT publisher mode: the simulated battery pushes its telemetry to a broker.

Topics default to the spec's ``bess/soc``, ``bess/power``, ``bess/temperature`` plus
``bess/frequency``; ``bess/status`` carries availability (``online`` / ``offline``, retained,
and ``offline`` is also the last will, so a battery that vanishes is seen to vanish).

Payloads are a plain number (``57.3``) or JSON (``{"value": 57.3, "unit": "%", "ts": ...}``),
or in single-topic mode one JSON object with every quantity. The publish interval counts
SIMULATED seconds, so an accelerated clock publishes faster (down to ``min_real_interval_s``).

Communication faults make a silent battery: while ``drop_connections`` or
``refuse_connections`` is active the TCP connection is cut without a DISCONNECT (the broker
publishes the will) and nothing is published; ``no_response`` keeps the connection but
publishes nothing. Measurement faults (freeze, out of range) arrive through ``sim.measure()``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import socket
import uuid
from dataclasses import dataclass
from types import TracebackType
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion, MQTTErrorCode, MQTTProtocolVersion
from paho.mqtt.reasoncodes import ReasonCode

from .config import MQTT_QUANTITIES, MqttSettings, iso_utc
from .faults import Fault, FaultKind
from .sim import Measurements, Simulator

log = logging.getLogger(__name__)

SILENCING_FAULTS = (
    FaultKind.DROP_CONNECTIONS,
    FaultKind.REFUSE_CONNECTIONS,
    FaultKind.NO_RESPONSE,
)
MAX_QUEUED_MESSAGES = 1000  # while the broker is away; older telemetry is worthless anyway
STEPPED_CLOCK_POLL_S = 0.02


def format_number(value: float, decimals: int) -> str:
    """A plain-number payload: fixed decimals, trailing zeros dropped, never ``-0``."""
    text = f"{value:.{decimals}f}"
    if "." in text:
        text = text.rstrip("0").rstrip(".")
    return "0" if text in {"-0", ""} else text


def _value(m: Measurements, quantity: str) -> Any:
    if quantity == "status":
        return m.status.value
    if quantity == "alarms":
        return sorted(a.value for a in m.alarms)
    return float(getattr(m, quantity))


def build_messages(m: Measurements, settings: MqttSettings) -> list[tuple[str, str]]:
    """The (topic, payload) pairs one publish cycle sends for measurements ``m``."""
    ts = iso_utc(m.timestamp)
    d = settings.decimals
    if settings.single_topic is not None:
        body: dict[str, Any] = {"ts": ts}
        for q in settings.quantities:
            v = _value(m, q)
            body[q] = round(v, d) if isinstance(v, float) else v
        return [(settings.single_topic, json.dumps(body, separators=(",", ":")))]
    out: list[tuple[str, str]] = []
    for q in settings.quantities:
        v = _value(m, q)
        if settings.payload_format == "json":
            item: dict[str, Any] = {"value": round(v, d) if isinstance(v, float) else v}
            unit = MQTT_QUANTITIES[q][1]
            if unit:
                item["unit"] = unit
            item["ts"] = ts
            payload = json.dumps(item, separators=(",", ":"), ensure_ascii=False)
        elif isinstance(v, float):
            payload = format_number(v, d)
        elif isinstance(v, list):
            payload = ",".join(v)
        else:
            payload = str(v)
        out.append((settings.topic_for(q), payload))
    return out


@dataclass
class PublisherStats:
    cycles: int = 0  # publish cycles that sent telemetry
    messages: int = 0  # telemetry messages handed to the client
    not_sent: int = 0  # refused by the client (not connected with QoS 0, queue full)
    silent_cycles: int = 0  # cycles skipped because a communication fault was active
    connects: int = 0
    disconnects: int = 0
    last_publish_ts: float | None = None  # simulated time of the last cycle that sent

    def as_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


class MqttPublisher:
    """Publish ``sim``'s measurements to a broker: ``async with MqttPublisher(sim, s) as pub``.

    ``publish_once()`` sends one cycle now; the background loop (``run_loop=True``) does it
    every ``settings.interval_s`` simulated seconds.
    """

    def __init__(self, sim: Simulator, settings: MqttSettings, *, run_loop: bool = True) -> None:
        self.sim = sim
        self.settings = settings
        self.stats = PublisherStats()
        self.client_id = settings.client_id or f"bess-hil-{uuid.uuid4().hex[:8]}"
        self._run_loop = run_loop
        self._client: mqtt.Client | None = None
        self._connected = False
        self._connected_event: asyncio.Event | None = None
        self._aio_loop: asyncio.AbstractEventLoop | None = None
        self._task: asyncio.Task[None] | None = None
        self._silenced_by: Fault | None = None
        self._refused_logged = False
        self._pending: list[mqtt.MQTTMessageInfo] = []

    # -- lifecycle -------------------------------------------------------------------------
    async def __aenter__(self) -> MqttPublisher:
        s = self.settings
        self._aio_loop = asyncio.get_running_loop()
        self._connected_event = asyncio.Event()
        protocol = MQTTProtocolVersion.MQTTv5 if s.protocol == "5" else MQTTProtocolVersion.MQTTv311
        client = mqtt.Client(
            CallbackAPIVersion.VERSION2, client_id=self.client_id, protocol=protocol
        )
        client.will_set(s.status_topic, "offline", qos=s.qos, retain=True)
        if s.username is not None:
            password = s.password.get_secret_value() if s.password is not None else None
            client.username_pw_set(s.username, password)
        if s.tls:
            client.tls_set(ca_certs=s.ca_certs, certfile=s.certfile, keyfile=s.keyfile)
            client.tls_insecure_set(s.tls_insecure)
        client.reconnect_delay_set(s.reconnect_min_delay_s, s.reconnect_max_delay_s)
        client.max_queued_messages_set(MAX_QUEUED_MESSAGES)
        client.on_connect = self._on_connect
        client.on_disconnect = self._on_disconnect
        self._client = client
        client.connect_async(s.host, s.port, keepalive=s.keepalive_s)
        client.loop_start()  # paho's thread connects, and reconnects with backoff
        if not await self.wait_connected(s.connect_timeout_s):
            log.warning(
                "MQTT broker %s:%d not reachable yet; publishing starts when it is (retrying)",
                s.host,
                s.port,
            )
        if self._run_loop:
            self._task = asyncio.create_task(self._publish_loop(), name="mqtt-publisher")
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        client = self._client
        if client is None:
            return
        if self._connected:
            # A clean DISCONNECT discards the will, so say "offline" ourselves first.
            info = client.publish(self.settings.status_topic, "offline", self.settings.qos, True)
            with contextlib.suppress(RuntimeError, ValueError):
                await asyncio.to_thread(info.wait_for_publish, 2.0)
        client.disconnect()
        await asyncio.to_thread(client.loop_stop)
        self._client = None

    async def wait_connected(self, timeout_s: float) -> bool:
        """Wait up to ``timeout_s`` real seconds for the broker connection."""
        if self._connected:
            return True
        if self._connected_event is None or timeout_s <= 0:
            return False
        self._connected_event.clear()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._connected_event.wait(), timeout_s)
        return self._connected

    @property
    def connected(self) -> bool:
        return self._connected

    @property
    def silent(self) -> bool:
        """True while a communication fault keeps the battery quiet."""
        return self._silenced_by is not None

    # -- paho callbacks (paho's network thread) --------------------------------------------
    def _on_connect(
        self,
        client: mqtt.Client,
        userdata: Any,
        flags: mqtt.ConnectFlags,
        reason_code: ReasonCode,
        properties: Any,
    ) -> None:
        if reason_code.is_failure:
            if not self._refused_logged:
                log.error(
                    "MQTT broker %s:%d refused the connection: %s",
                    self.settings.host,
                    self.settings.port,
                    reason_code,
                )
                self._refused_logged = True
            return
        self._refused_logged = False
        self._connected = True
        self.stats.connects += 1
        log.info("MQTT connected to %s:%d", self.settings.host, self.settings.port)
        if self._silenced_by is None:
            client.publish(self.settings.status_topic, "online", self.settings.qos, True)
        self._notify_connected()

    def _on_disconnect(
        self,
        client: mqtt.Client,
        userdata: Any,
        flags: mqtt.DisconnectFlags,
        reason_code: ReasonCode,
        properties: Any,
    ) -> None:
        was_connected = self._connected
        self._connected = False
        if was_connected:
            self.stats.disconnects += 1
            if reason_code.is_failure:
                log.warning("MQTT connection lost (%s); reconnecting", reason_code)

    def _notify_connected(self) -> None:
        loop, event = self._aio_loop, self._connected_event
        if loop is not None and event is not None and not loop.is_closed():
            with contextlib.suppress(RuntimeError):  # loop shutting down
                loop.call_soon_threadsafe(event.set)

    # -- publishing ------------------------------------------------------------------------
    def messages(self, m: Measurements | None = None) -> list[tuple[str, str]]:
        return build_messages(m if m is not None else self.sim.measure(), self.settings)

    def publish_once(self) -> list[mqtt.MQTTMessageInfo]:
        """Publish one cycle now; returns paho's handle for each telemetry message sent.

        An empty list means the battery is silent (communication fault active).
        """
        if self._client is None:
            raise RuntimeError("MqttPublisher is not started; use 'async with MqttPublisher(...)'")
        m = self.sim.measure()
        fault = self._communication_fault(m.timestamp)
        if fault is not None:
            if self._silenced_by is None:
                self._go_silent(fault)
            self.stats.silent_cycles += 1
            return []
        if self._silenced_by is not None:
            self._resume()
        infos: list[mqtt.MQTTMessageInfo] = []
        for topic, payload in build_messages(m, self.settings):
            info = self._client.publish(topic, payload, self.settings.qos, self.settings.retain)
            if info.rc == MQTTErrorCode.MQTT_ERR_SUCCESS:
                infos.append(info)
            else:
                self.stats.not_sent += 1
        self.stats.cycles += 1
        self.stats.messages += len(infos)
        self.stats.last_publish_ts = m.timestamp
        self._pending = [i for i in self._pending if not i.is_published()] + infos
        return infos

    async def flush(self, timeout_s: float = 2.0) -> bool:
        """Wait until every message handed to paho so far is sent (QoS 0) or acknowledged."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        while any(not i.is_published() for i in self._pending):
            if loop.time() >= deadline:
                return False
            await asyncio.sleep(0.005)
        self._pending.clear()
        return True

    def _communication_fault(self, t: float) -> Fault | None:
        for kind in SILENCING_FAULTS:
            fault = self.sim.faults.active(kind, t)
            if fault is not None:
                return fault
        return None

    def _go_silent(self, fault: Fault) -> None:
        self._silenced_by = fault
        log.warning("MQTT publisher silent: fault %s active", fault.kind.value)
        if fault.kind is not FaultKind.NO_RESPONSE:
            self.abort_connection()

    def _resume(self) -> None:
        fault = self._silenced_by
        log.info("MQTT publisher resumes: fault %s over", fault.kind.value if fault else "?")
        self._silenced_by = None
        if self._connected and self._client is not None:
            self._client.publish(self.settings.status_topic, "online", self.settings.qos, True)

    def abort_connection(self) -> None:
        """Cut the TCP connection without a DISCONNECT, like a pulled cable.

        The broker then publishes the last will; paho reconnects with its backoff.
        """
        sock = self._client.socket() if self._client is not None else None
        if isinstance(sock, socket.socket):
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)

    async def _publish_loop(self) -> None:
        clock = self.sim.clock
        interval = self.settings.interval_s
        next_due = clock.now()
        while True:
            now = clock.now()
            if now >= next_due:
                try:
                    self.publish_once()
                except Exception:  # a publishing hiccup must not stop the battery
                    log.exception("MQTT publish cycle failed")
                next_due += interval
                if next_due <= now:  # fell behind (slow host, huge speed): skip, don't burst
                    next_due = now + interval
            speed = clock.speed
            if speed > 0:
                delay = max((next_due - clock.now()) / speed, self.settings.min_real_interval_s)
            else:
                delay = STEPPED_CLOCK_POLL_S
            await asyncio.sleep(delay)
