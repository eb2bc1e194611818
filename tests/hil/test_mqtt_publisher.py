"""The MQTT publisher against a real broker (Mosquitto on loopback, see ``mqtt_broker``).

Every test subscribes to its own topic prefix (a uuid), so tests never see each other's
messages, retained ones included.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import threading
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion
from pydantic import ValidationError

from hil.clock import SteppedClock
from hil.config import MqttSettings
from hil.faults import Fault, FaultKind
from hil.model import BatterySpec
from hil.mqtt import MqttPublisher, build_messages, format_number
from hil.sim import Simulator

WAIT_S = 1.5


@dataclass(frozen=True)
class Received:
    topic: str
    payload: str
    qos: int
    retain: bool


class Subscriber:
    """A paho client on ``<prefix>/#`` that records what arrives."""

    def __init__(self, host: str, port: int, prefix: str) -> None:
        self.prefix = prefix
        self.messages: list[Received] = []
        self._cond = threading.Condition()
        self._subscribed = threading.Event()
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"sub-{prefix}")
        self.client.on_message = self._on_message
        self.client.on_subscribe = lambda *a: self._subscribed.set()
        self.client.on_connect = lambda c, *a: c.subscribe(f"{prefix}/#", qos=1)
        self.client.connect(host, port, keepalive=10)
        self.client.loop_start()
        assert self._subscribed.wait(WAIT_S), "subscriber did not get its SUBACK"

    def _on_message(self, client: mqtt.Client, userdata: object, msg: mqtt.MQTTMessage) -> None:
        with self._cond:
            self.messages.append(Received(msg.topic, msg.payload.decode(), msg.qos, msg.retain))
            self._cond.notify_all()

    def on(self, suffix: str) -> list[Received]:
        topic = f"{self.prefix}/{suffix}"
        with self._cond:
            return [m for m in self.messages if m.topic == topic]

    async def wait_for(
        self, predicate: Callable[[list[Received]], bool], what: str, timeout_s: float = WAIT_S
    ) -> list[Received]:
        deadline = time.monotonic() + timeout_s
        while True:
            with self._cond:
                snapshot = list(self.messages)
            if predicate(snapshot):
                return snapshot
            if time.monotonic() > deadline:
                pytest.fail(f"timed out waiting for {what}; got {snapshot}")
            await asyncio.sleep(0.005)

    async def wait_topic(self, suffix: str, count: int = 1) -> list[Received]:
        topic = f"{self.prefix}/{suffix}"
        await self.wait_for(
            lambda ms: sum(m.topic == topic for m in ms) >= count, f"{count} x {topic}"
        )
        return self.on(suffix)

    def close(self) -> None:
        # Leave no retained availability message behind on a shared broker.
        self.client.publish(f"{self.prefix}/status", b"", qos=1, retain=True).wait_for_publish(1)
        self.client.disconnect()
        self.client.loop_stop()


@pytest.fixture
def prefix() -> str:
    return f"test-{uuid.uuid4().hex[:12]}"


@pytest.fixture
def subscriber(mqtt_broker: tuple[str, int], prefix: str) -> Iterator[Subscriber]:
    sub = Subscriber(*mqtt_broker, prefix)
    yield sub
    sub.close()


@pytest.fixture
def sim() -> Simulator:
    spec = BatterySpec(ramp_kw_per_s=0.0, revert_timeout_s=0.0)
    return Simulator(spec, SteppedClock(), soc_pct=57.3)


def settings_for(broker: tuple[str, int], prefix: str, **kw: object) -> MqttSettings:
    host, port = broker
    return MqttSettings(host=host, port=port, topic_prefix=prefix, **kw)  # type: ignore[arg-type]


@pytest.fixture
async def publisher(
    sim: Simulator, mqtt_broker: tuple[str, int], prefix: str, subscriber: Subscriber
) -> AsyncIterator[MqttPublisher]:
    async with MqttPublisher(sim, settings_for(mqtt_broker, prefix), run_loop=False) as pub:
        yield pub


def advance(sim: Simulator, seconds: float) -> None:
    clock = sim.clock
    assert isinstance(clock, SteppedClock)
    clock.advance(seconds)
    sim.sync()


# -- integration: real broker ---------------------------------------------------------------


@pytest.mark.integration
async def test_plain_payloads_carry_the_simulated_values_with_qos_1(
    sim: Simulator, publisher: MqttPublisher, subscriber: Subscriber
) -> None:
    sim.command_power_kw(-50.0)
    advance(sim, 600.0)
    infos = publisher.publish_once()
    assert len(infos) == 4
    assert await publisher.flush()
    await subscriber.wait_for(lambda ms: len({m.topic for m in ms}) >= 5, "4 telemetry topics")
    m = sim.measure()
    expected = {
        "soc": m.soc_pct,
        "power": m.power_kw,
        "temperature": m.temperature_c,
        "frequency": m.frequency_hz,
    }
    for suffix, value in expected.items():
        (msg,) = subscriber.on(suffix)
        assert float(msg.payload) == pytest.approx(value, abs=0.0005), suffix
        assert msg.qos == 1
        assert not msg.retain
    assert float(subscriber.on("power")[0].payload) == -50.0
    assert subscriber.on("status")[0].payload == "online"


@pytest.mark.integration
async def test_json_payloads_have_value_unit_and_simulated_utc_time(
    sim: Simulator, mqtt_broker: tuple[str, int], prefix: str, subscriber: Subscriber
) -> None:
    s = settings_for(
        mqtt_broker,
        prefix,
        payload_format="json",
        quantities=("soc_pct", "temperature_c", "setpoint_kw", "status", "alarms"),
    )
    async with MqttPublisher(sim, s, run_loop=False) as pub:
        sim.command_power_kw(20.0)
        advance(sim, 60.0)
        pub.publish_once()
        await subscriber.wait_topic("alarms")
    m = sim.measure()
    ts = datetime.fromtimestamp(m.timestamp, UTC).isoformat(timespec="milliseconds")
    ts = ts.replace("+00:00", "Z")
    soc = json.loads(subscriber.on("soc")[0].payload)
    assert soc == {"value": round(m.soc_pct, 3), "unit": "%", "ts": ts}
    assert json.loads(subscriber.on("temperature")[0].payload)["unit"] == "°C"
    assert json.loads(subscriber.on("setpoint")[0].payload)["value"] == 20.0
    assert json.loads(subscriber.on("state")[0].payload) == {"value": "discharging", "ts": ts}
    assert json.loads(subscriber.on("alarms")[0].payload) == {"value": [], "ts": ts}


@pytest.mark.integration
async def test_single_topic_json_holds_every_quantity(
    sim: Simulator, mqtt_broker: tuple[str, int], prefix: str, subscriber: Subscriber
) -> None:
    s = settings_for(mqtt_broker, prefix, payload_format="json", single_topic=f"{prefix}/telemetry")
    async with MqttPublisher(sim, s, run_loop=False) as pub:
        assert len(pub.publish_once()) == 1
        (msg,) = await subscriber.wait_topic("telemetry")
    body = json.loads(msg.payload)
    assert set(body) == {"ts", "soc_pct", "power_kw", "temperature_c", "frequency_hz"}
    assert body["soc_pct"] == 57.3


@pytest.mark.integration
async def test_availability_online_then_offline_on_clean_exit(
    sim: Simulator, mqtt_broker: tuple[str, int], prefix: str, subscriber: Subscriber
) -> None:
    async with MqttPublisher(sim, settings_for(mqtt_broker, prefix), run_loop=False) as pub:
        assert pub.connected
        await subscriber.wait_topic("status")
    statuses = await subscriber.wait_topic("status", 2)
    assert [m.payload for m in statuses] == ["online", "offline"]


@pytest.mark.integration
async def test_no_response_fault_silences_the_battery_until_cleared(
    sim: Simulator, publisher: MqttPublisher, subscriber: Subscriber
) -> None:
    sim.inject(Fault(FaultKind.NO_RESPONSE))
    assert publisher.publish_once() == []
    assert publisher.silent
    assert publisher.stats.silent_cycles == 1
    sim.faults.clear()
    assert len(publisher.publish_once()) == 4
    await subscriber.wait_topic("soc")
    assert publisher.connected  # the connection itself stayed up
    assert len(subscriber.on("soc")) == 1


@pytest.mark.integration
async def test_drop_connections_fires_the_last_will_and_recovers(
    sim: Simulator, publisher: MqttPublisher, subscriber: Subscriber
) -> None:
    await subscriber.wait_topic("status")  # "online"
    sim.inject(Fault(FaultKind.DROP_CONNECTIONS, duration_s=30.0))
    assert publisher.publish_once() == []
    statuses = await subscriber.wait_topic("status", 2)
    assert statuses[-1].payload == "offline"  # the broker's last will: no clean DISCONNECT
    deadline = time.monotonic() + WAIT_S
    while publisher.connected:  # paho's thread notices the cut connection too
        assert time.monotonic() < deadline, "paho did not notice the dropped connection"
        await asyncio.sleep(0.005)
    advance(sim, 31.0)  # the fault is over
    assert await publisher.wait_connected(WAIT_S)  # paho reconnects with its backoff (1 s)
    assert len(publisher.publish_once()) == 4
    await subscriber.wait_topic("soc")
    statuses = await subscriber.wait_topic("status", 3)
    assert statuses[-1].payload == "online"
    assert publisher.stats.disconnects == 1


@pytest.mark.integration
async def test_background_loop_publishes_every_simulated_interval(
    sim: Simulator, mqtt_broker: tuple[str, int], prefix: str, subscriber: Subscriber
) -> None:
    s = settings_for(mqtt_broker, prefix, payload_format="json", interval_s=60.0)
    async with MqttPublisher(sim, s):
        await subscriber.wait_topic("soc", 1)  # at start
        for n in (2, 3, 4):
            advance(sim, 60.0)
            await subscriber.wait_topic("soc", n)
    stamps = [json.loads(m.payload)["ts"] for m in subscriber.on("soc")]
    times = [datetime.fromisoformat(t).timestamp() for t in stamps]
    assert [b - a for a, b in itertools.pairwise(times)] == [60.0, 60.0, 60.0]


@pytest.mark.integration
async def test_frozen_measurement_is_published_frozen(
    sim: Simulator, publisher: MqttPublisher, subscriber: Subscriber
) -> None:
    sim.command_power_kw(-100.0)
    sim.inject(Fault(FaultKind.FREEZE, params={"quantities": ["soc_pct"]}))
    advance(sim, 600.0)
    publisher.publish_once()
    await subscriber.wait_topic("power")
    assert float(subscriber.on("soc")[0].payload) == 57.3
    assert float(subscriber.on("power")[0].payload) == -100.0


# -- unit: payloads and settings ------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "decimals", "text"),
    [
        (57.3, 3, "57.3"),
        (-0.0001, 3, "0"),
        (50.0, 3, "50"),
        (49.98765, 2, "49.99"),
        (-50.0, 1, "-50"),
    ],
)
def test_plain_number_format(value: float, decimals: int, text: str) -> None:
    assert format_number(value, decimals) == text


def test_topics_default_to_the_spec_and_can_be_overridden(sim: Simulator) -> None:
    s = MqttSettings(topics={"soc_pct": "site7/battery/soc"})
    topics = [t for t, _ in build_messages(sim.measure(), s)]
    assert topics == ["site7/battery/soc", "bess/power", "bess/temperature", "bess/frequency"]
    assert s.status_topic == "bess/status"


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"quantities": ("soc_pct", "soc")}, "unknown quantity"),
        ({"single_topic": "x"}, "single_topic needs payload_format 'json'"),
        ({"qos": 3}, "Input should be 0, 1 or 2"),
        ({"ca_certs": "ca.pem"}, "tls is off"),
        ({"topic_prefix": "bess/#"}, "without # or +"),
    ],
)
def test_bad_mqtt_settings_are_refused(kwargs: dict[str, object], message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        MqttSettings(**kwargs)  # type: ignore[arg-type]


async def test_unreachable_broker_does_not_block_start(sim: Simulator) -> None:
    # Port 9 (discard) on loopback: nothing listens, the connection is refused at once.
    s = MqttSettings(port=9, connect_timeout_s=0.2)
    started = time.monotonic()
    async with MqttPublisher(sim, s, run_loop=False) as pub:
        assert not pub.connected
        pub.publish_once()  # queued or refused by paho, never an exception
    assert time.monotonic() - started < 1.5
