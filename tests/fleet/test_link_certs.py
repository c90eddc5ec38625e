"""The agent's MQTT link authenticates with a client certificate (fleet ``client_cert`` /
``client_key``) on a Mosquitto listener generated with ``require_client_cert``.

Real Mosquitto and the agent's own ``MqttLink``; certificates made in the test. The same link
without the certificate is the negative control: it never gets a session.
"""

from __future__ import annotations

import asyncio
import queue
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from control_plane.core.settings import Settings
from control_plane.fleet.broker_config import render_conf
from edge_agent.config import FleetSettings
from edge_agent.fleet.link import Connected, LinkEvent, Message, MqttLink
from protos import fleet_topics as topics
from tests.control_plane.conftest import (
    MQTT_PASSWORD,
    brokers,  # noqa: F401 - the fixture, used by name
    free_port,
    local_options,
    write_identity_files,
)
from tests.control_plane.mqtt_probe import MqttProbe
from tests.pki import TestCA

DEVICE = "cam-a"


@pytest.fixture
def agent_loop() -> Iterator[asyncio.AbstractEventLoop]:
    """The event loop the link hands its events to, run in a thread as the agent's would be."""
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    try:
        yield loop
    finally:
        loop.call_soon_threadsafe(loop.stop)
        thread.join(5)
        loop.close()


def _next(events: queue.Queue[LinkEvent], kind: type, timeout: float) -> Any:
    deadline = time.monotonic() + timeout
    while (left := deadline - time.monotonic()) > 0:
        try:
            event = events.get(timeout=left)
        except queue.Empty:
            break
        if isinstance(event, kind):
            return event
    return None


def test_agent_link_connects_with_its_client_certificate(
    tmp_path: Path,
    brokers: Any,  # noqa: F811 - the fixture imported above
    agent_loop: asyncio.AbstractEventLoop,
) -> None:
    ca = TestCA(tmp_path / "pki")
    server = ca.issue("127.0.0.1", server=True, file_name="server")
    device_cert, cp_cert = ca.issue(DEVICE), ca.issue("control-plane")
    folder = tmp_path / "broker"
    write_identity_files(
        folder, Settings(mqtt_password=MQTT_PASSWORD, dev_mode=True, data_dir=tmp_path), [DEVICE]
    )
    port = free_port()
    tls = {"tls_cert": server.cert, "tls_key": server.key, "tls_ca": ca.cert}
    brokers(render_conf(folder, local_options(port, require_client_cert=True, **tls)), port)

    desired = topics.device_topic(DEVICE, topics.DESIRED)
    status = topics.device_topic(DEVICE, topics.STATUS)
    control_plane = MqttProbe(
        port,
        None,
        None,
        tls={"ca_certs": str(ca.cert), "certfile": str(cp_cert.cert), "keyfile": str(cp_cert.key)},
    )
    try:
        assert control_plane.connect()
        control_plane.publish(desired, b"desired state", retain=True)
        control_plane.subscribe(status)

        def link(**cert: Path) -> tuple[MqttLink, queue.Queue[LinkEvent]]:
            settings = FleetSettings(
                url=f"mqtts://127.0.0.1:{port}",
                ca_file=ca.cert,
                reconnect_min_s=0.2,
                reconnect_max_s=0.5,
                **cert,
            )
            events: queue.Queue[LinkEvent] = queue.Queue()
            return (
                MqttLink(
                    settings, DEVICE, [desired], status, b"on", b"off", agent_loop, events.put
                ),
                events,
            )

        without, events = link()  # negative control: no certificate, no session
        without.start()
        assert _next(events, Connected, 1.5) is None
        without.stop()

        with_cert, events = link(client_cert=device_cert.cert, client_key=device_cert.key)
        with_cert.start()
        try:
            assert _next(events, Connected, 5) is not None
            msg = _next(events, Message, 5)
            assert msg is not None and (msg.topic, msg.payload) == (desired, b"desired state")
            # Its ONLINE status got through the ACL: the broker took it for cam-a (its CN).
            assert control_plane.expect_on(status).payload == b"on"
        finally:
            with_cert.stop()
    finally:
        control_plane.close()


def test_agent_client_certificate_settings_are_checked(tmp_path: Path) -> None:
    cert, key = tmp_path / "c.pem", tmp_path / "c.key"
    FleetSettings(url="mqtts://b:8883", client_cert=cert, client_key=key)  # valid
    with pytest.raises(ValueError, match="go together"):
        FleetSettings(url="mqtts://b:8883", client_cert=cert)
    with pytest.raises(ValueError, match="mqtts"):
        FleetSettings(url="mqtt://b:1883", client_cert=cert, client_key=key)
