"""Telemetry from an MQTT broker: a push source that delivers readings to the coordinator.

Each tracked quantity maps to a ``TopicSpec``: the topic (defaults: the spec's ``bess/soc``,
``bess/power``, ``bess/temperature``), the payload format (a plain number, or JSON with a
dotted ``json_path`` such as ``value`` or ``data.soc``) and a ``scale`` (``0.001`` for W -> kW,
``-1`` for a device that counts charging as positive). Several quantities may share one topic
(one JSON object with every value). A JSON payload may carry its own timestamp (``ts`` or
``timestamp`` by default; ISO 8601 with an offset, or Unix seconds / milliseconds); otherwise
the receive time is used.

Threading: paho's network thread (``loop_start``) receives; every message is handed to the
event loop with ``loop.call_soon_threadsafe`` and parsed there, so the sink (the coordinator)
and all counters live on the loop thread only. paho reconnects by itself with exponential
backoff (``reconnect_delay_set``); subscriptions are renewed in every ``on_connect``.

Session: MQTT 5 by default, with ``clean_start=False`` and a Session Expiry Interval (1 h). The
broker then queues QoS 1 telemetry during a short outage of the agent or the network and
delivers it on reconnect, while a decommissioned agent's session (and its queue) expires
instead of living on the broker forever, as an MQTT 3.1.1 ``clean_session=False`` session
does. Brokers without MQTT 5 are served with ``protocol: "3.1.1"``. A persistent session
needs a stable client id, so it defaults to ``bess-edge-<site id>``: two agents must never
share one (the broker would disconnect them in turn).

Retained messages: a value retained on the broker may be hours old. One that carries no
payload timestamp is skipped (its age is unknown) unless ``accept_retained_without_timestamp``.

Bad payloads (not a number, missing JSON path, invalid JSON, non-finite, implausible, bad
timestamp) never stop the agent: they are counted per topic and logged once per topic, until
a good payload arrives on it.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import math
import re
import socket
import time
from collections import Counter
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType, TracebackType
from typing import Any, Literal, Self, cast

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion, MQTTErrorCode, MQTTProtocolVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode
from paho.mqtt.subscribeoptions import SubscribeOptions
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    FilePath,
    SecretStr,
    field_validator,
    model_validator,
)

from .readings import Quantity, Reading, ReadingError, ReadingSink, check_plausible
from .rest_ingest import parse_timestamp

log = logging.getLogger(__name__)

Clock = Callable[[], float]

SOURCE_NAME = "mqtt"
PAYLOAD_EXCERPT_CHARS = 80
_CLIENT_ID_UNSAFE = re.compile(r"[^A-Za-z0-9_-]+")


class MqttSourceError(Exception):
    """The MQTT source cannot start (bad TLS files, no stable client id)."""


# -- settings -------------------------------------------------------------------------------


class TopicSpec(BaseModel):
    """Where one quantity arrives and how to read it."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    topic: str
    format: Literal["plain", "json"] = "plain"
    json_path: str = "value"  # dotted path into the JSON document; digits index lists
    scale: float = 1.0  # multiplied in: 0.001 for W -> kW, -1 to flip the sign convention

    @field_validator("topic")
    @classmethod
    def _concrete_topic(cls, value: str) -> str:
        if not value or "+" in value or "#" in value or "\x00" in value:
            raise ValueError(
                f"topic {value!r} must be a concrete topic such as 'bess/soc' "
                "(no wildcards + or #, not empty)"
            )
        return value

    @field_validator("json_path")
    @classmethod
    def _path(cls, value: str) -> str:
        if not value or any(not part for part in value.split(".")):
            raise ValueError(f"json_path {value!r} must be dotted names such as 'data.soc'")
        return value

    @field_validator("scale")
    @classmethod
    def _scale(cls, value: float) -> float:
        if not math.isfinite(value) or value == 0:
            raise ValueError(f"scale must be a finite number other than 0 (got {value!r})")
        return value


DEFAULT_TOPICS: Mapping[Quantity, TopicSpec] = MappingProxyType(
    {
        Quantity.SOC_PCT: TopicSpec(topic="bess/soc"),
        Quantity.ACTIVE_POWER_KW: TopicSpec(topic="bess/power"),
        Quantity.TEMPERATURE_C: TopicSpec(topic="bess/temperature"),
    }
)


class MqttTlsSettings(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    enabled: bool = False
    ca_file: FilePath | None = None  # None = the system's CA store
    cert_file: FilePath | None = None  # client certificate (mutual TLS)
    key_file: FilePath | None = None
    insecure: bool = False  # skip the host-name check (test rigs with self-signed certs only)

    @model_validator(mode="after")
    def _consistent(self) -> MqttTlsSettings:
        if (self.ca_file or self.cert_file or self.key_file or self.insecure) and not self.enabled:
            raise ValueError("TLS files or insecure given but TLS is off; set tls.enabled=true")
        if self.key_file is not None and self.cert_file is None:
            raise ValueError("tls.key_file needs tls.cert_file (the client certificate)")
        return self


class MqttSourceSettings(BaseModel):
    """Telemetry over MQTT (spec: ``BESS_MQTT_ENABLED``, ``BESS_MQTT_BROKER``,
    ``BESS_MQTT_PORT``, ``BESS_MQTT_TOPIC_SOC``/``_POWER``/``_TEMP``)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    enabled: bool = False
    host: str = "localhost"
    port: int = Field(default=1883, ge=1, le=65535)
    client_id: str | None = None  # None = "bess-edge-<site id>" (stable: persistent session)
    username: str | None = None
    password: SecretStr | None = None
    tls: MqttTlsSettings = MqttTlsSettings()
    protocol: Literal["5", "3.1.1"] = "5"
    keepalive_s: int = Field(default=30, ge=5, le=65535)
    qos: Literal[0, 1, 2] = 1
    clean_start: bool = False  # False = persistent session (queued QoS 1 telemetry survives)
    session_expiry_s: int = Field(default=3600, ge=0, le=0xFFFFFFFF)  # MQTT 5 only
    reconnect_min_delay_s: float = Field(default=1.0, gt=0)
    reconnect_max_delay_s: float = Field(default=30.0, gt=0)
    connect_timeout_s: float = Field(default=5.0, ge=0)  # how long start-up waits (no failure)
    topics: dict[Quantity, TopicSpec] = Field(default_factory=lambda: dict(DEFAULT_TOPICS))
    timestamp_paths: tuple[str, ...] = ("ts", "timestamp")  # first found wins; () = receive time
    accept_retained_without_timestamp: bool = False

    @field_validator("topics", mode="before")
    @classmethod
    def _topic_shorthand(cls, value: object) -> object:
        """``{soc_pct: "site/soc"}`` is short for ``{soc_pct: {topic: "site/soc"}}``."""
        if isinstance(value, Mapping):
            return {q: {"topic": s} if isinstance(s, str) else s for q, s in value.items()}
        return value

    @model_validator(mode="after")
    def _consistent(self) -> MqttSourceSettings:
        if not self.topics:
            raise ValueError("map at least one quantity to a topic")
        if self.password is not None and self.username is None:
            raise ValueError("an MQTT password needs a username")
        if self.reconnect_max_delay_s < self.reconnect_min_delay_s:
            raise ValueError("reconnect_max_delay_s must be >= reconnect_min_delay_s")
        if self.client_id is not None and not self.client_id.strip():
            raise ValueError("client_id must not be blank (leave it out for bess-edge-<site>)")
        for path in self.timestamp_paths:
            if not path or any(not part for part in path.split(".")):
                raise ValueError(f"timestamp path {path!r} must be dotted names such as 'ts'")
        return self


def default_client_id(site_id: str) -> str:
    """``bess-edge-<site id>``, reduced to characters every broker accepts."""
    safe = _CLIENT_ID_UNSAFE.sub("-", site_id.strip()).strip("-")
    if not safe:
        raise MqttSourceError(
            f"site id {site_id!r} gives no usable MQTT client id; set mqtt client_id"
        )
    return f"bess-edge-{safe}"[:64]


# -- payload parsing (pure) -----------------------------------------------------------------


class PayloadError(ValueError):
    """A payload that does not hold the configured value."""


_MISSING = object()


def _resolve(document: object, path: str) -> object:
    node = document
    for part in path.split("."):
        if isinstance(node, dict):
            node = node.get(part, _MISSING)
        elif isinstance(node, list) and part.isdigit() and int(part) < len(node):
            node = node[int(part)]
        else:
            return _MISSING
        if node is _MISSING:
            return _MISSING
    return node


def _number(value: object, what: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        raise PayloadError(f"{what} is {value!r}, not a number")
    try:
        number = float(value)
    except ValueError:
        raise PayloadError(f"{what} is {value!r}, not a number") from None
    except OverflowError:
        number = math.inf
    if not math.isfinite(number):
        raise PayloadError(f"{what} is {value!r}, not a finite number")
    return number


def _reject_constant(name: str) -> Any:
    raise PayloadError(f"JSON holds {name}, not a finite number")


def parse_message(
    payload: bytes,
    specs: Iterable[tuple[Quantity, TopicSpec]],
    *,
    received_at: float,
    source: str = SOURCE_NAME,
    timestamp_paths: Iterable[str] = ("ts", "timestamp"),
) -> tuple[list[Reading], list[str], bool]:
    """(readings, problems, carried_timestamp) for one message on a topic.

    Every quantity that parses is returned, even when another on the same topic does not.
    """
    problems: list[str] = []
    readings: list[Reading] = []
    try:
        text = payload.decode("utf-8").strip()
    except UnicodeDecodeError:
        return [], ["payload is not UTF-8 text"], False
    document: object = _MISSING
    json_problem: str | None = None
    specs = list(specs)
    if any(spec.format == "json" for _, spec in specs):
        try:
            document = json.loads(text, parse_constant=_reject_constant)
        except PayloadError as exc:
            json_problem = str(exc)
        except (ValueError, RecursionError) as exc:
            json_problem = f"invalid JSON ({exc})"
    timestamp = received_at
    carried = False
    if document is not _MISSING:
        for path in timestamp_paths:
            raw = _resolve(document, path)
            if raw is _MISSING or raw is None:
                continue
            try:
                timestamp = parse_timestamp(raw)
            except ValueError as exc:
                return [], [f"timestamp {path!r}: {exc}"], False
            carried = True
            break
    for quantity, spec in specs:
        try:
            if spec.format == "plain":
                value = _number(text, "payload")
            elif json_problem is not None:
                raise PayloadError(json_problem)
            else:
                raw = _resolve(document, spec.json_path)
                if raw is _MISSING:
                    raise PayloadError(f"JSON has no {spec.json_path!r}")
                value = _number(raw, f"JSON {spec.json_path!r}")
            reading = Reading(quantity, value * spec.scale, timestamp, source)
            readings.append(check_plausible(reading))
        except (PayloadError, ReadingError) as exc:
            problems.append(f"{quantity.value}: {exc}")
    return readings, problems, carried


# -- the source -----------------------------------------------------------------------------


@dataclass
class MqttSourceStats:
    connects: int = 0
    disconnects: int = 0
    messages: int = 0  # on mapped topics
    readings: int = 0  # delivered to the sink
    malformed: Counter[str] = field(default_factory=Counter)  # per topic
    retained_skipped: int = 0  # retained, no timestamp: age unknown
    empty: int = 0  # empty payloads (a retained message being cleared)
    unexpected: int = 0  # topics we did not ask for (e.g. an old persistent subscription)
    subscribe_refused: int = 0
    sink_errors: int = 0
    last_message_at: float | None = None

    def as_dict(self) -> dict[str, Any]:
        out = dict(self.__dict__)
        out["malformed"] = dict(self.malformed)
        return out


class MqttSource:
    """``async with MqttSource(settings, sink, site_id=...) as source``: readings flow to
    ``sink.ingest`` until the block ends."""

    def __init__(
        self,
        settings: MqttSourceSettings,
        sink: ReadingSink,
        *,
        site_id: str | None = None,
        clock: Clock = time.time,
        name: str = SOURCE_NAME,
    ) -> None:
        if settings.client_id is None and site_id is None:
            raise MqttSourceError(
                "the MQTT source needs a stable client id for its persistent session: "
                "give the site id or set client_id"
            )
        self.settings = settings
        self.name = name
        self.client_id = settings.client_id or default_client_id(site_id or "")
        self.stats = MqttSourceStats()
        self._sink = sink
        self._clock = clock
        self._by_topic: dict[str, list[tuple[Quantity, TopicSpec]]] = {}
        for quantity, spec in settings.topics.items():
            self._by_topic.setdefault(spec.topic, []).append((quantity, spec))
        self._client: mqtt.Client | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._ready = asyncio.Event()
        self._closing = False
        # Written by paho's thread, read anywhere (single assignments).
        self._connected = False
        self._subscribed = False
        self._pending_subscribe: int | None = None
        self._lost_at: float | None = None
        self._refused_logged: str | None = None
        self._unreachable_logged = False
        # Loop thread only.
        self._malformed_logged: set[str] = set()
        self._retained_logged: set[str] = set()
        self._sink_error_logged = False

    # -- state -----------------------------------------------------------------------------
    @property
    def connected(self) -> bool:
        return self._connected

    @property
    def subscribed(self) -> bool:
        """Connected and every topic's subscription acknowledged by the broker."""
        return self._connected and self._subscribed

    @property
    def topics(self) -> tuple[str, ...]:
        return tuple(self._by_topic)

    def status(self) -> dict[str, Any]:
        """Connection state and counters, for metrics and the ``doctor`` command."""
        if self._client is None:
            state = "stopped"
        else:
            state = "connected" if self._connected else "connecting"
        return {
            "state": state,
            "broker": f"{self.settings.host}:{self.settings.port}",
            "client_id": self.client_id,
            "subscribed": self.subscribed,
            **self.stats.as_dict(),
        }

    async def wait_ready(self, timeout_s: float) -> bool:
        """Wait up to ``timeout_s`` until connected and subscribed."""
        if self.subscribed:
            return True
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(timeout_s):
                while not self.subscribed:
                    self._ready.clear()
                    if self.subscribed:
                        break
                    await self._ready.wait()
        return self.subscribed

    # -- lifecycle -------------------------------------------------------------------------
    async def __aenter__(self) -> Self:
        s = self.settings
        self._loop = asyncio.get_running_loop()
        self._closing = False
        v5 = s.protocol == "5"
        client = mqtt.Client(
            CallbackAPIVersion.VERSION2,
            client_id=self.client_id,
            protocol=MQTTProtocolVersion.MQTTv5 if v5 else MQTTProtocolVersion.MQTTv311,
            clean_session=None if v5 else s.clean_start,
        )
        if s.username is not None:
            password = s.password.get_secret_value() if s.password is not None else None
            client.username_pw_set(s.username, password)
        if s.tls.enabled:
            try:
                client.tls_set(
                    ca_certs=str(s.tls.ca_file) if s.tls.ca_file else None,
                    certfile=str(s.tls.cert_file) if s.tls.cert_file else None,
                    keyfile=str(s.tls.key_file) if s.tls.key_file else None,
                )
            except (OSError, ValueError) as exc:  # ssl.SSLError is an OSError
                raise MqttSourceError(f"cannot load the MQTT TLS files: {exc}") from exc
            client.tls_insecure_set(s.tls.insecure)
        # paho only sleeps on these values; fractions of a second work (and keep tests fast).
        client.reconnect_delay_set(
            cast(int, s.reconnect_min_delay_s), cast(int, s.reconnect_max_delay_s)
        )
        client.on_connect = self._on_connect
        client.on_connect_fail = self._on_connect_fail
        client.on_disconnect = self._on_disconnect
        client.on_subscribe = self._on_subscribe
        client.on_message = self._on_message
        properties: Properties | None = None
        if v5:
            properties = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
            properties.SessionExpiryInterval = 0 if s.clean_start else s.session_expiry_s
        client.connect_async(
            s.host,
            s.port,
            keepalive=s.keepalive_s,
            clean_start=s.clean_start if v5 else mqtt.MQTT_CLEAN_START_FIRST_ONLY,
            properties=properties,
        )
        self._client = client
        client.loop_start()  # paho's thread connects, and reconnects with backoff
        if not await self.wait_ready(s.connect_timeout_s):
            log.warning(
                "MQTT broker %s:%d not ready after %g s; telemetry over MQTT starts when it "
                "is (retrying in the background)",
                s.host,
                s.port,
                s.connect_timeout_s,
            )
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        client, self._client = self._client, None
        if client is None:
            return
        self._closing = True
        client.disconnect()  # clean DISCONNECT: the broker keeps the session until it expires
        await asyncio.to_thread(client.loop_stop)
        self._connected = False
        self._subscribed = False
        log.info("MQTT source disconnected from %s:%d", self.settings.host, self.settings.port)

    def abort_connection(self) -> None:
        """Cut the TCP connection without a DISCONNECT, like a pulled cable (tests, doctor).

        paho notices, reconnects with its backoff and subscribes again.
        """
        sock = self._client.socket() if self._client is not None else None
        if isinstance(sock, socket.socket):
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)

    # -- paho callbacks (paho's network thread) --------------------------------------------
    def _on_connect(
        self,
        client: mqtt.Client,
        userdata: Any,
        flags: mqtt.ConnectFlags,
        reason_code: ReasonCode,
        properties: Properties | None,
    ) -> None:
        s = self.settings
        if reason_code.is_failure:
            reason = str(reason_code)
            if self._refused_logged != reason:
                self._refused_logged = reason
                hint = (
                    "; check the MQTT username and password"
                    if reason_code.value in (0x86, 0x87, 4, 5)
                    else ""
                )
                log.error(
                    "MQTT broker %s:%d refused the connection: %s%s (retrying)",
                    s.host,
                    s.port,
                    reason,
                    hint,
                )
            return
        self._refused_logged = None
        self._unreachable_logged = False
        self._connected = True
        self.stats.connects += 1
        if self._lost_at is not None:
            log.warning(
                "MQTT reconnected to %s:%d after %.1f s (session %s)",
                s.host,
                s.port,
                self._clock() - self._lost_at,
                "resumed" if flags.session_present else "new",
            )
            self._lost_at = None
        else:
            log.info(
                "MQTT connected to %s:%d as %s (session %s)",
                s.host,
                s.port,
                self.client_id,
                "resumed" if flags.session_present else "new",
            )
        # Subscribe on every connect: a new session has none, and it costs nothing otherwise.
        result, mid = client.subscribe(self._subscriptions())
        if result == MQTTErrorCode.MQTT_ERR_SUCCESS:
            self._pending_subscribe = mid

    def _subscriptions(self) -> list[tuple[str, SubscribeOptions]] | list[tuple[str, int]]:
        qos: int = self.settings.qos
        if self.settings.protocol == "5":
            # Retained values only with a new subscription, not again on every reconnect.
            options = SubscribeOptions(
                qos=qos, retainHandling=SubscribeOptions.RETAIN_SEND_IF_NEW_SUB
            )
            return [(topic, options) for topic in self._by_topic]
        return [(topic, qos) for topic in self._by_topic]

    def _on_connect_fail(self, client: mqtt.Client, userdata: Any) -> None:
        if not self._unreachable_logged:
            self._unreachable_logged = True
            log.error(
                "cannot reach the MQTT broker at %s:%d; retrying every %g … %g s",
                self.settings.host,
                self.settings.port,
                self.settings.reconnect_min_delay_s,
                self.settings.reconnect_max_delay_s,
            )

    def _on_subscribe(
        self,
        client: mqtt.Client,
        userdata: Any,
        mid: int,
        reason_codes: list[ReasonCode],
        properties: Properties | None,
    ) -> None:
        if mid != self._pending_subscribe:
            return
        refused = [
            topic for topic, rc in zip(self._by_topic, reason_codes, strict=False) if rc.is_failure
        ]
        if refused:
            self.stats.subscribe_refused += len(refused)
            log.error(
                "MQTT broker refused the subscription to %s; check the broker's access rules",
                ", ".join(refused),
            )
        self._subscribed = True
        self._call_in_loop(self._ready.set)

    def _on_disconnect(
        self,
        client: mqtt.Client,
        userdata: Any,
        flags: mqtt.DisconnectFlags,
        reason_code: ReasonCode,
        properties: Properties | None,
    ) -> None:
        was_connected = self._connected
        self._connected = False
        self._subscribed = False
        if not was_connected or self._closing:
            return
        self.stats.disconnects += 1
        self._lost_at = self._clock()
        log.warning(
            "MQTT connection to %s:%d lost (%s); reconnecting every %g … %g s",
            self.settings.host,
            self.settings.port,
            reason_code,
            self.settings.reconnect_min_delay_s,
            self.settings.reconnect_max_delay_s,
        )

    def _on_message(self, client: mqtt.Client, userdata: Any, message: mqtt.MQTTMessage) -> None:
        received_at = self._clock()
        self._call_in_loop(
            self._handle_message, message.topic, bytes(message.payload), message.retain, received_at
        )

    def _call_in_loop(self, callback: Callable[..., None], *args: Any) -> None:
        loop = self._loop
        if loop is not None and not loop.is_closed():
            with contextlib.suppress(RuntimeError):  # the loop is shutting down
                loop.call_soon_threadsafe(callback, *args)

    # -- message handling (event loop thread) ----------------------------------------------
    def _handle_message(self, topic: str, payload: bytes, retain: bool, received_at: float) -> None:
        if self._closing:
            return
        specs = self._by_topic.get(topic)
        if specs is None:
            self.stats.unexpected += 1
            log.debug("MQTT message on unexpected topic %r ignored", topic)
            return
        self.stats.messages += 1
        self.stats.last_message_at = received_at
        if not payload.strip():
            self.stats.empty += 1
            return
        readings, problems, carried = parse_message(
            payload,
            specs,
            received_at=received_at,
            source=self.name,
            timestamp_paths=self.settings.timestamp_paths,
        )
        if retain and not carried and not self.settings.accept_retained_without_timestamp:
            self.stats.retained_skipped += 1
            if topic not in self._retained_logged:
                self._retained_logged.add(topic)
                log.info(
                    "MQTT %s: retained message skipped, it has no timestamp so its age is "
                    "unknown (set accept_retained_without_timestamp to use it)",
                    topic,
                )
            return
        if problems:
            self.stats.malformed[topic] += 1
            if topic not in self._malformed_logged:
                self._malformed_logged.add(topic)
                excerpt = payload[:PAYLOAD_EXCERPT_CHARS].decode("utf-8", "replace")
                log.warning(
                    "MQTT %s: bad payload %r: %s (logged once until a good payload arrives)",
                    topic,
                    excerpt,
                    "; ".join(problems),
                )
        elif topic in self._malformed_logged:
            self._malformed_logged.discard(topic)
            log.info("MQTT %s: payloads are good again", topic)
        if not readings:
            return
        try:
            self._sink.ingest(readings)
        except Exception:  # the sink's bug must not silence MQTT
            self.stats.sink_errors += 1
            if not self._sink_error_logged:
                self._sink_error_logged = True
                log.exception("MQTT source: the reading sink failed (logged once)")
            return
        self.stats.readings += len(readings)
