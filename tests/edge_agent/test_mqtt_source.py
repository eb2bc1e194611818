"""The MQTT source against a real broker (``mqtt_broker``: Mosquitto on loopback).

Every test uses its own topic prefix and client id (a uuid), so tests never see each other's
messages, retained ones included. Nothing sleeps for a fixed time: tests wait on what they
expect, with a timeout.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import socket
import time
import uuid
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion
from pydantic import SecretStr, ValidationError

from edge_agent.mqtt_source import (
    DEFAULT_TOPICS,
    MqttSource,
    MqttSourceError,
    MqttSourceSettings,
    TopicSpec,
    default_client_id,
    parse_message,
)
from edge_agent.readings import Quantity, Reading
from hil.clock import SteppedClock
from hil.config import MqttSettings
from hil.model import BatterySpec
from hil.mqtt import MqttPublisher
from hil.sim import Simulator

Q = Quantity
T0 = 1_767_225_600.0  # 2026-01-01T00:00:00Z
RECEIVED_AT = T0 + 100.0  # what the injected clock says when a message arrives
WAIT_S = 1.5


class RecordingSink:
    """Collects readings on the loop thread; tests wait on it."""

    def __init__(self) -> None:
        self.readings: list[Reading] = []
        self._changed = asyncio.Event()

    def ingest(self, readings: Iterable[Reading]) -> None:
        self.readings.extend(readings)
        self._changed.set()

    def of(self, quantity: Quantity) -> list[Reading]:
        return [r for r in self.readings if r.quantity is quantity]

    async def wait_for(
        self, predicate: Callable[[list[Reading]], bool], what: str, timeout_s: float = WAIT_S
    ) -> list[Reading]:
        deadline = time.monotonic() + timeout_s
        while not predicate(self.readings):
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                pytest.fail(f"timed out waiting for {what}; got {self.readings}")
            self._changed.clear()
            try:
                await asyncio.wait_for(self._changed.wait(), remaining)
            except TimeoutError:
                pass
        return self.readings

    async def wait_count(self, quantity: Quantity, count: int = 1) -> list[Reading]:
        await self.wait_for(lambda rs: len(self.of(quantity)) >= count, f"{count} x {quantity}")
        return self.of(quantity)


async def wait_until(predicate: Callable[[], bool], what: str, timeout_s: float = WAIT_S) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out waiting for {what}")
        await asyncio.sleep(0.005)


class Publisher:
    """A plain paho client standing in for a battery, a sensor or a broken device."""

    def __init__(self, host: str, port: int) -> None:
        self.client = mqtt.Client(
            CallbackAPIVersion.VERSION2, client_id=f"pub-{uuid.uuid4().hex[:10]}"
        )
        self.client.connect(host, port, keepalive=10)
        self.client.loop_start()
        self.retained: set[str] = set()

    async def publish(self, topic: str, payload: str | bytes, *, retain: bool = False) -> None:
        info = self.client.publish(topic, payload, qos=1, retain=retain)
        if retain:
            self.retained.add(topic)
        await asyncio.to_thread(info.wait_for_publish, WAIT_S)

    def close(self) -> None:
        for topic in self.retained:  # leave nothing behind on a shared broker
            self.client.publish(topic, b"", qos=1, retain=True).wait_for_publish(WAIT_S)
        self.client.disconnect()
        self.client.loop_stop()


@pytest.fixture
def prefix() -> str:
    return f"test-{uuid.uuid4().hex[:12]}"


@pytest.fixture
def publisher(mqtt_broker: tuple[str, int]) -> Iterator[Publisher]:
    pub = Publisher(*mqtt_broker)
    yield pub
    pub.close()


@pytest.fixture
def sink() -> RecordingSink:
    return RecordingSink()


def source_settings(
    broker: tuple[str, int], prefix: str, topics: dict[Quantity, Any] | None = None, **kw: Any
) -> MqttSourceSettings:
    host, port = broker
    base: dict[str, Any] = {
        "enabled": True,
        "host": host,
        "port": port,
        "reconnect_min_delay_s": 0.05,
        "reconnect_max_delay_s": 0.2,
        "connect_timeout_s": WAIT_S,
        "session_expiry_s": 5,  # short: tests leave no long-lived sessions on a shared broker
        "topics": topics
        or {
            Q.SOC_PCT: f"{prefix}/soc",
            Q.ACTIVE_POWER_KW: f"{prefix}/power",
            Q.TEMPERATURE_C: f"{prefix}/temperature",
        },
    }
    base.update(kw)
    return MqttSourceSettings(**base)


def make_source(settings: MqttSourceSettings, sink: RecordingSink, prefix: str) -> MqttSource:
    return MqttSource(settings, sink, site_id=prefix, clock=lambda: RECEIVED_AT)


# -- integration: real broker ---------------------------------------------------------------


@pytest.mark.integration
@pytest.mark.parametrize("protocol", ["5", "3.1.1"])
async def test_plain_and_json_payloads_arrive_as_readings(
    mqtt_broker: tuple[str, int],
    prefix: str,
    publisher: Publisher,
    sink: RecordingSink,
    protocol: str,
) -> None:
    topics = {
        Q.SOC_PCT: TopicSpec(topic=f"{prefix}/soc"),
        Q.ACTIVE_POWER_KW: TopicSpec(
            topic=f"{prefix}/inverter", format="json", json_path="data.ac.p_w", scale=0.001
        ),
        Q.TEMPERATURE_C: TopicSpec(topic=f"{prefix}/temperature", format="json"),
    }
    s = source_settings(mqtt_broker, prefix, topics, protocol=protocol)
    async with make_source(s, sink, prefix) as source:
        assert source.subscribed
        assert source.client_id == f"bess-edge-{prefix}"
        await publisher.publish(f"{prefix}/soc", "57.3")
        await publisher.publish(f"{prefix}/inverter", '{"data": {"ac": {"p_w": -12500}}}')
        await publisher.publish(
            f"{prefix}/temperature", '{"value": 24.1, "unit": "°C", "ts": "2026-01-01T00:00:00Z"}'
        )
        await sink.wait_for(lambda rs: len(rs) == 3, "three readings")
        status = source.status()
    assert sink.readings == [
        Reading(Q.SOC_PCT, 57.3, RECEIVED_AT, "mqtt"),  # no payload timestamp: receive time
        Reading(Q.ACTIVE_POWER_KW, -12.5, RECEIVED_AT, "mqtt"),
        Reading(Q.TEMPERATURE_C, 24.1, T0, "mqtt"),  # the payload's own timestamp
    ]
    assert status["state"] == "connected"
    assert status["messages"] == 3
    assert status["readings"] == 3
    assert status["malformed"] == {}
    assert source.status()["state"] == "stopped"


@pytest.mark.integration
async def test_malformed_payloads_are_counted_and_logged_once_per_topic(
    mqtt_broker: tuple[str, int],
    prefix: str,
    publisher: Publisher,
    sink: RecordingSink,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="edge_agent.mqtt_source")
    topics = {
        Q.SOC_PCT: TopicSpec(topic=f"{prefix}/soc"),
        Q.ACTIVE_POWER_KW: TopicSpec(topic=f"{prefix}/power", format="json"),
    }
    soc, power = f"{prefix}/soc", f"{prefix}/power"
    async with make_source(source_settings(mqtt_broker, prefix, topics), sink, prefix) as source:
        for payload in ("abc", "nan", "150", "1e999", b"\xff\xfe", "", "12 %"):
            await publisher.publish(soc, payload)
        for payload in ("{bad", '{"other": 1}', '{"value": NaN}', '{"value": true}'):
            await publisher.publish(power, payload)
        await publisher.publish(power, '{"value": 1, "ts": "not a time"}')
        await publisher.publish(power, '{"value": 1, "ts": "2026-01-01T00:00:00"}')
        # Messages on one topic arrive in order: a good one last means all were handled.
        await publisher.publish(soc, "55")
        await publisher.publish(power, '{"value": -3}')
        await sink.wait_for(lambda rs: len(rs) == 2, "the two good readings")
        assert source.stats.malformed == {soc: 6, power: 6}
        assert source.stats.empty == 1
        assert source.connected  # the agent keeps running

        bad = [rec.getMessage() for rec in caplog.records if rec.levelno == logging.WARNING]
        assert len(bad) == 2, bad
        assert f"MQTT {soc}: bad payload 'abc': soc_pct: payload is 'abc', not a number" in bad[0]
        assert f"MQTT {power}: bad payload '{{bad': active_power_kw: invalid JSON" in bad[1]
        good_again = [
            rec.getMessage() for rec in caplog.records if "good again" in rec.getMessage()
        ]
        assert len(good_again) == 2

        caplog.clear()
        await publisher.publish(soc, "101")  # bad again after a good one: logged again
        await publisher.publish(soc, "56")
        await sink.wait_count(Q.SOC_PCT, 2)
        assert [r.levelno for r in caplog.records].count(logging.WARNING) == 1
        assert "outside the plausible range 0 … 100" in caplog.records[0].getMessage()
    assert [r.value for r in sink.readings] == [55.0, -3.0, 56.0]


@pytest.mark.integration
async def test_retained_values_need_a_timestamp(
    mqtt_broker: tuple[str, int], prefix: str, publisher: Publisher, sink: RecordingSink
) -> None:
    topics = {
        Q.SOC_PCT: TopicSpec(topic=f"{prefix}/soc"),
        Q.TEMPERATURE_C: TopicSpec(topic=f"{prefix}/temperature", format="json"),
    }
    # Retained before the agent starts: possibly hours old.
    await publisher.publish(f"{prefix}/soc", "40", retain=True)
    await publisher.publish(
        f"{prefix}/temperature", json.dumps({"value": 30.0, "ts": T0}), retain=True
    )
    async with make_source(source_settings(mqtt_broker, prefix, topics), sink, prefix) as source:
        await sink.wait_count(Q.TEMPERATURE_C)
        await publisher.publish(f"{prefix}/soc", "41")  # live: receive time is fine
        await sink.wait_count(Q.SOC_PCT)
        assert source.stats.retained_skipped == 1
    assert sink.readings == [
        Reading(Q.TEMPERATURE_C, 30.0, T0, "mqtt"),
        Reading(Q.SOC_PCT, 41.0, RECEIVED_AT, "mqtt"),
    ]


def hil_source_topics(prefix: str, mode: str) -> dict[Quantity, TopicSpec]:
    names = {
        Q.SOC_PCT: ("soc", "soc_pct"),
        Q.ACTIVE_POWER_KW: ("power", "power_kw"),
        Q.TEMPERATURE_C: ("temperature", "temperature_c"),
        Q.GRID_FREQUENCY_HZ: ("frequency", "frequency_hz"),
    }
    if mode == "single":
        return {
            q: TopicSpec(topic=f"{prefix}/telemetry", format="json", json_path=key)
            for q, (_, key) in names.items()
        }
    return {
        q: TopicSpec(topic=f"{prefix}/{suffix}", format="plain" if mode == "plain" else "json")
        for q, (suffix, _) in names.items()
    }


@pytest.mark.integration
@pytest.mark.parametrize("mode", ["plain", "json", "single"])
async def test_hil_publisher_end_to_end(
    mqtt_broker: tuple[str, int], prefix: str, sink: RecordingSink, mode: str
) -> None:
    clock = SteppedClock(start=T0)
    sim = Simulator(BatterySpec(ramp_kw_per_s=0.0, revert_timeout_s=0.0), clock, soc_pct=57.3)
    sim.command_power_kw(-40.0)
    clock.advance(900.0)
    host, port = mqtt_broker
    hil_settings = MqttSettings(
        host=host,
        port=port,
        topic_prefix=prefix,
        payload_format="plain" if mode == "plain" else "json",
        single_topic=f"{prefix}/telemetry" if mode == "single" else None,
    )
    s = source_settings(mqtt_broker, prefix, hil_source_topics(prefix, mode))
    try:
        async with (
            make_source(s, sink, prefix),
            MqttPublisher(sim, hil_settings, run_loop=False) as battery,
        ):
            battery.publish_once()
            await sink.wait_for(lambda rs: len(rs) == 4, "4 readings from the simulator")
    finally:
        await clear_retained(mqtt_broker, f"{prefix}/status")  # the simulator's availability
    m = sim.measure()
    expected = {
        Q.SOC_PCT: m.soc_pct,
        Q.ACTIVE_POWER_KW: m.power_kw,
        Q.TEMPERATURE_C: m.temperature_c,
        Q.GRID_FREQUENCY_HZ: m.frequency_hz,
    }
    got = {r.quantity: r for r in sink.readings}
    assert set(got) == set(expected)
    for quantity, value in expected.items():
        assert got[quantity].value == pytest.approx(value, abs=0.0005), quantity
        # JSON carries the simulated time; plain numbers are stamped when they arrive.
        assert got[quantity].timestamp == (RECEIVED_AT if mode == "plain" else T0 + 900.0)
    assert got[Q.ACTIVE_POWER_KW].value == -40.0
    assert got[Q.SOC_PCT].value > 57.3  # charged for 15 simulated minutes


async def clear_retained(broker: tuple[str, int], topic: str) -> None:
    pub = Publisher(*broker)
    try:
        await pub.publish(topic, b"", retain=True)
    finally:
        pub.close()


@pytest.mark.integration
async def test_reconnects_and_resubscribes_after_the_connection_drops(
    mqtt_broker: tuple[str, int],
    prefix: str,
    publisher: Publisher,
    sink: RecordingSink,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="edge_agent.mqtt_source")
    async with make_source(source_settings(mqtt_broker, prefix), sink, prefix) as source:
        await publisher.publish(f"{prefix}/soc", "50")
        await sink.wait_count(Q.SOC_PCT)

        source.abort_connection()  # a pulled cable: no DISCONNECT
        await wait_until(lambda: source.stats.disconnects == 1, "the drop to be noticed")
        assert await source.wait_ready(WAIT_S), "did not reconnect and resubscribe"
        assert source.stats.connects == 2

        await publisher.publish(f"{prefix}/soc", "51")
        await sink.wait_for(lambda rs: any(r.value == 51.0 for r in rs), "51 after reconnect")
    messages = [rec.getMessage() for rec in caplog.records]
    assert any("connection to" in m and "lost" in m for m in messages)
    assert any("MQTT reconnected" in m for m in messages)
    # QoS 1 is at least once: "50" comes again if its PUBACK was lost in the drop.
    assert [r.value for r in sink.readings if r.value != 50.0] == [51.0]


@pytest.mark.integration
async def test_persistent_session_delivers_what_was_published_while_away(
    mqtt_broker: tuple[str, int], prefix: str, publisher: Publisher, sink: RecordingSink
) -> None:
    s = source_settings(mqtt_broker, prefix)
    async with make_source(s, sink, prefix):
        pass  # the broker now holds a session with our subscriptions
    await publisher.publish(f"{prefix}/soc", "61")  # the agent is away (restart, outage)
    async with make_source(s, sink, prefix):
        await sink.wait_count(Q.SOC_PCT)
    assert sink.readings[0].value == 61.0


@pytest.mark.integration
async def test_clean_start_forgets_what_was_published_while_away(
    mqtt_broker: tuple[str, int], prefix: str, publisher: Publisher, sink: RecordingSink
) -> None:
    s = source_settings(mqtt_broker, prefix, clean_start=True)
    async with make_source(s, sink, prefix):
        pass
    await publisher.publish(f"{prefix}/soc", "61")
    async with make_source(s, sink, prefix):
        await publisher.publish(f"{prefix}/soc", "62")
        await sink.wait_count(Q.SOC_PCT)
    assert [r.value for r in sink.readings] == [62.0]


@pytest.mark.integration
async def test_unreachable_broker_does_not_block_or_crash(
    prefix: str, sink: RecordingSink, caplog: pytest.LogCaptureFixture
) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]  # nothing listens here
    s = source_settings(("127.0.0.1", port), prefix, connect_timeout_s=0.3)
    started = time.monotonic()
    async with make_source(s, sink, prefix) as source:
        assert time.monotonic() - started < 2.5  # start-up does not wait for an unreachable broker
        assert source.status()["state"] == "connecting"
        await wait_until(
            lambda: any("cannot reach the MQTT broker" in r.getMessage() for r in caplog.records),
            "the unreachable broker to be reported",
        )
    errors = [r for r in caplog.records if "cannot reach" in r.getMessage()]
    assert len(errors) == 1  # retries are quiet


@pytest.mark.integration
async def test_password_is_never_logged(
    mqtt_broker: tuple[str, int],
    prefix: str,
    sink: RecordingSink,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    secret = "s3cret-" + uuid.uuid4().hex
    s = source_settings(mqtt_broker, prefix, username="agent", password=SecretStr(secret))
    assert secret not in repr(s)
    async with make_source(s, sink, prefix) as source:
        assert secret not in json.dumps(source.status())
    assert all(secret not in rec.getMessage() for rec in caplog.records)


# -- unit: settings and payload parsing -----------------------------------------------------


def test_defaults_follow_the_spec() -> None:
    s = MqttSourceSettings()
    assert s.port == 1883
    assert s.qos == 1
    assert s.clean_start is False
    assert {q: t.topic for q, t in s.topics.items()} == {
        Q.SOC_PCT: "bess/soc",
        Q.ACTIVE_POWER_KW: "bess/power",
        Q.TEMPERATURE_C: "bess/temperature",
    }
    assert dict(DEFAULT_TOPICS) == s.topics


def test_topic_shorthand_and_yaml_shapes() -> None:
    s = MqttSourceSettings.model_validate(
        {
            "topics": {
                "soc_pct": "site/soc",
                "active_power_kw": {"topic": "site/p", "format": "json", "scale": 0.001},
            }
        }
    )
    assert s.topics[Q.SOC_PCT] == TopicSpec(topic="site/soc")
    assert s.topics[Q.ACTIVE_POWER_KW].scale == 0.001


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"topics": {"soc_pct": "bess/+"}}, "no wildcards"),
        ({"topics": {"soc_pct": "bess/#"}}, "no wildcards"),
        ({"topics": {"state_of_charge": "bess/soc"}}, "soc_pct"),
        ({"topics": {}}, "at least one quantity"),
        ({"topics": {"soc_pct": {"topic": "a", "scale": 0}}}, "other than 0"),
        ({"topics": {"soc_pct": {"topic": "a", "json_path": "a..b"}}}, "dotted names"),
        ({"topics": {"soc_pct": {"topic": "a", "format": "xml"}}}, "'plain' or 'json'"),
        ({"password": "x"}, "needs a username"),
        ({"tls": {"insecure": True}}, "TLS is off"),
        ({"tls": {"enabled": True, "ca_file": "/nonexistent/ca.pem"}}, "does not point to a file"),
        ({"reconnect_min_delay_s": 5, "reconnect_max_delay_s": 1}, "reconnect_max_delay_s"),
        ({"qos": 3}, "qos"),
        ({"client_id": "  "}, "must not be blank"),
        ({"brokr": "x"}, "Extra inputs are not permitted"),
    ],
)
def test_bad_settings_are_refused(data: dict[str, Any], message: str) -> None:
    with pytest.raises(ValidationError, match=message.replace("+", r"\+")):
        MqttSourceSettings.model_validate(data)


def test_client_id_comes_from_the_site_id() -> None:
    assert default_client_id("AT-Wien 01/ä") == "bess-edge-AT-Wien-01"
    with pytest.raises(MqttSourceError, match="site id"):
        default_client_id("//")
    with pytest.raises(MqttSourceError, match="stable client id"):
        MqttSource(MqttSourceSettings(), RecordingSink())
    source = MqttSource(MqttSourceSettings(client_id="mine"), RecordingSink(), site_id="x")
    assert source.client_id == "mine"


def spec(**kw: Any) -> list[tuple[Quantity, TopicSpec]]:
    return [(Q.ACTIVE_POWER_KW, TopicSpec(topic="t", **kw))]


@pytest.mark.parametrize(
    ("payload", "kw", "value", "timestamp"),
    [
        (b" 12.5\n", {}, 12.5, RECEIVED_AT),
        (b"-7", {"scale": -1}, 7.0, RECEIVED_AT),
        (b'{"value": "3.5"}', {"format": "json"}, 3.5, RECEIVED_AT),  # numeric string
        (
            b'{"d": [{"p": 2000}]}',
            {"format": "json", "json_path": "d.0.p", "scale": 0.001},
            2.0,
            RECEIVED_AT,
        ),
        (b'{"value": 1, "ts": 1767225600000}', {"format": "json"}, 1.0, T0),  # milliseconds
        (b'{"value": 1, "timestamp": "2026-01-01T01:00:00+01:00"}', {"format": "json"}, 1.0, T0),
        (b'{"value": 1, "ts": null}', {"format": "json"}, 1.0, RECEIVED_AT),
    ],
)
def test_parse_message(payload: bytes, kw: dict[str, Any], value: float, timestamp: float) -> None:
    readings, problems, _ = parse_message(payload, spec(**kw), received_at=RECEIVED_AT)
    assert problems == []
    assert readings == [Reading(Q.ACTIVE_POWER_KW, value, timestamp, "mqtt")]


@pytest.mark.parametrize(
    ("payload", "kw", "problem"),
    [
        (b"NaN", {}, "not a finite number"),
        (b"inf", {}, "not a finite number"),
        (b"true", {}, "not a number"),
        (b'{"value": 1}', {}, "not a number"),  # JSON sent to a plain topic
        (b"[1, 2]", {"format": "json"}, "JSON has no 'value'"),
        (b'{"value": [1]}', {"format": "json"}, "not a number"),
        (b'{"value": 1, "ts": 12}', {"format": "json"}, "sender's clock is probably not set"),
        (b'{"value": Infinity}', {"format": "json"}, "Infinity, not a finite number"),
    ],
)
def test_parse_message_problems(payload: bytes, kw: dict[str, Any], problem: str) -> None:
    readings, problems, _ = parse_message(payload, spec(**kw), received_at=RECEIVED_AT)
    assert readings == []
    assert len(problems) == 1
    assert problem in problems[0]


def test_one_topic_many_quantities_keeps_the_good_ones() -> None:
    specs = [
        (Q.SOC_PCT, TopicSpec(topic="t", format="json", json_path="soc")),
        (Q.TEMPERATURE_C, TopicSpec(topic="t", format="json", json_path="temp")),
    ]
    readings, problems, carried = parse_message(
        b'{"soc": 50, "ts": "2026-01-01T00:00:00Z"}', specs, received_at=RECEIVED_AT
    )
    assert readings == [Reading(Q.SOC_PCT, 50.0, T0, "mqtt")]
    assert problems == ["temperature_c: JSON has no 'temp'"]
    assert carried


def test_timestamp_paths_configurable() -> None:
    payload = b'{"value": 1, "meta": {"time": "2026-01-01T00:00:00Z"}, "ts": 0}'
    readings, _, _ = parse_message(
        payload, spec(format="json"), received_at=RECEIVED_AT, timestamp_paths=("meta.time",)
    )
    assert readings[0].timestamp == T0
    readings, _, carried = parse_message(
        payload, spec(format="json"), received_at=RECEIVED_AT, timestamp_paths=()
    )
    assert (readings[0].timestamp, carried) == (RECEIVED_AT, False)
    assert not math.isnan(readings[0].value)
