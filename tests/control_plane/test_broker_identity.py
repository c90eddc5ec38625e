"""The generated Mosquitto config binds every client id to the authenticated identity, and refuses
packets bigger than the fleet's largest message. Real Mosquitto, no control plane needed.

The attacker holds one device's valid credentials. Each takeover test runs the same attack twice:
on the generated config, where it must fail, and on the same config with the binding removed,
where it must succeed: the positive control that proves the test can see a takeover at all.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from control_plane.core.settings import Settings
from control_plane.fleet.broker_config import device_access, max_packet_bytes, render_conf
from protos import fleet_topics as topics
from tests.control_plane.conftest import (
    DEVICE_PASSWORD,
    MQTT_PASSWORD,
    free_port,
    local_options,
    write_identity_files,
)
from tests.control_plane.mqtt_probe import MqttProbe

BINDING = "use_username_as_clientid true\n"
LONGEST_ID = "d" * 64  # the longest device id there is: the longest topics
DEVICES = ["cam-a", "cam-b", LONGEST_ID]


class Brokers:
    """Starts the generated config, or the same without the client-id binding, on free ports."""

    def __init__(self, folder: Path, start: Any) -> None:
        self.settings = Settings(mqtt_password=MQTT_PASSWORD, dev_mode=True, data_dir=folder)
        self.folder = folder / "broker"
        write_identity_files(self.folder, self.settings, DEVICES)
        self._start = start
        self.probes: list[MqttProbe] = []

    def start(self, bound: bool = True) -> int:
        port = free_port()
        conf = render_conf(self.folder, local_options(port))
        assert conf.count(BINDING) == 1, conf  # one listener, one binding
        self._start(conf if bound else conf.replace(BINDING, ""), port)
        return port

    def probe(self, port: int, user: str, **kw: Any) -> MqttProbe:
        password = MQTT_PASSWORD if user == self.settings.mqtt.username else DEVICE_PASSWORD
        p = MqttProbe(port, user, password, **kw)
        self.probes.append(p)
        return p

    def close(self) -> None:
        for p in self.probes:
            p.close()


def test_generated_config_binds_every_listener(tmp_path: Path) -> None:
    conf = render_conf(tmp_path, local_options(1883, cert_port=8884, **_fake_tls(tmp_path)))
    listeners = conf.split("\nlistener ")[1:]
    assert len(listeners) == 2
    assert all(BINDING in block for block in listeners)
    assert BINDING not in conf.split("\nlistener ")[0]  # the global section would ignore it


def _fake_tls(folder: Path) -> dict[str, Path]:
    return {"tls_cert": folder / "s.pem", "tls_key": folder / "s.key", "tls_ca": folder / "ca"}


def test_a_device_cannot_disconnect_another(tmp_path: Path, brokers: Any) -> None:
    b = Brokers(tmp_path, brokers)
    cp_user = b.settings.mqtt.username
    chunks_b = topics.device_topic("cam-b", topics.CHUNKS_DATA)
    try:
        for bound in (True, False):
            port = b.start(bound)
            victim = b.probe(port, "cam-b")
            assert victim.connect()
            victim.subscribe(chunks_b)
            # cam-a, with its own valid password, claims cam-b's client id.
            attacker = b.probe(port, "cam-a", client_id="cam-b")
            assert attacker.connect()
            if not bound:  # positive control: without the binding the broker drops cam-b
                assert victim.disconnected.wait(5), "the unbound broker kept the victim"
                continue
            assert not victim.disconnected.wait(1.0), "cam-a disconnected cam-b"
            sender = b.probe(port, cp_user)
            assert sender.connect()
            sender.publish(chunks_b, b"still here")
            assert victim.expect_on(chunks_b).payload == b"still here"
            assert attacker.drain(0.3) == []
    finally:
        b.close()


def test_a_device_cannot_take_the_control_planes_session(tmp_path: Path, brokers: Any) -> None:
    """The control plane keeps a persistent session (client id = its user name, clean session
    off) so that telemetry sent while it is down waits for it in the broker."""
    b = Brokers(tmp_path, brokers)
    cp_user = b.settings.mqtt.username
    telemetry_b = topics.device_topic("cam-b", topics.TELEMETRY)
    try:
        for bound in (True, False):
            port = b.start(bound)
            control_plane = b.probe(port, cp_user, client_id=cp_user, clean_session=False)
            assert control_plane.connect()
            control_plane.subscribe(topics.all_devices_filter(topics.TELEMETRY))
            control_plane.close()  # down: its session stays, and queues what arrives
            device = b.probe(port, "cam-b")
            assert device.connect()
            device.publish(telemetry_b, b"queued while down")

            attacker = b.probe(port, "cam-a", client_id=cp_user, clean_session=False)
            assert attacker.connect()
            stolen = attacker.drain(0.5)
            attacker.close()
            back = b.probe(port, cp_user, client_id=cp_user, clean_session=False)
            assert back.connect()
            delivered = [m.payload for m in back.drain(1.0)]

            if not bound:  # positive control: the takeover happens and the telemetry is lost
                assert attacker.session_present is True
                assert b"queued while down" not in delivered
                continue
            assert attacker.session_present is False
            assert stolen == []
            assert back.session_present is True
            assert delivered == [b"queued while down"]
    finally:
        b.close()


def test_broker_refuses_a_packet_bigger_than_the_largest_message(
    tmp_path: Path, brokers: Any
) -> None:
    b = Brokers(tmp_path, brokers)
    cp_user = b.settings.mqtt.username
    # The longest topic a device may read (every leaf a device may publish on, it may also read,
    # or is shorter than one it reads).
    topic = max((t for t, access in device_access(LONGEST_ID).items() if "read" in access), key=len)
    assert len(topic) == max(len(t) for t in device_access(LONGEST_ID))
    # The limit is the largest message on the longest topic, as Mosquitto counts a packet.
    assert max_packet_bytes() == 1 + 2 + len(topic) + 2 + topics.MAX_MESSAGE_BYTES
    try:
        port = b.start()
        device = b.probe(port, LONGEST_ID)
        assert device.connect()
        device.subscribe(topic)
        sender = b.probe(port, cp_user)
        assert sender.connect()
        # Positive control: the largest message the fleet sends goes through.
        sender.publish(topic, b"x" * topics.MAX_MESSAGE_BYTES)
        assert len(device.expect_on(topic, timeout=10).payload) == topics.MAX_MESSAGE_BYTES

        sender.client.publish(topic, b"y" * (topics.MAX_MESSAGE_BYTES + 1), qos=1)
        assert sender.disconnected.wait(10), "the oversized packet was accepted"
        assert device.drain(1.0) == []
        assert not device.disconnected.is_set()  # the broker is fine, only the sender went
    finally:
        b.close()
