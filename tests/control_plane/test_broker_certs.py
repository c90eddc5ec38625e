"""Client-certificate authentication: a listener that takes the certificate's CN as the identity.

Real Mosquitto on loopback, certificates made in the test (tests/control_plane/certs.py). The
control plane itself connects with its own client certificate, so the retained desired states a
device finds are the positive control that the channel works; each refusal is paired with the
same connection succeeding with a valid certificate.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from control_plane.app import create_app
from control_plane.core.context import AppContext
from control_plane.core.database import upgrade
from control_plane.core.settings import Settings
from control_plane.fleet.broker_config import render_conf, write_broker_config
from protos import fleet_topics as topics
from protos.gen import fleet_pb2
from tests.control_plane.conftest import (
    API_TOKEN,
    DEVICE_PASSWORD,
    MQTT_PASSWORD,
    Keys,
    free_port,
    local_options,
    make_settings,
    wait_for,
    write_identity_files,
)
from tests.control_plane.mqtt_probe import MqttProbe
from tests.pki import Issued, TestCA

WINDOW = 1.0
BINDING = "use_username_as_clientid true\n"


@dataclass(frozen=True)
class Pki:
    ca: TestCA
    server: Issued
    clients: dict[str, Issued]  # CN -> certificate, from ``ca``
    foreign: Issued  # CN cam-a, from another CA

    def tls(self, cn: str | None = None, cert: Issued | None = None) -> dict[str, str]:
        """paho ``tls_set`` arguments: trust the broker's CA, present ``cn``'s certificate."""
        chosen = cert or (self.clients[cn] if cn else None)
        args = {"ca_certs": str(self.ca.cert)}
        if chosen is not None:
            args |= {"certfile": str(chosen.cert), "keyfile": str(chosen.key)}
        return args


@pytest.fixture
def pki(tmp_path: Path) -> Pki:
    ca = TestCA(tmp_path / "pki")
    other = TestCA(tmp_path / "other-pki", name="other-ca")
    clients = {cn: ca.issue(cn) for cn in ("cam-a", "cam-b", "control-plane")}
    return Pki(
        ca, ca.issue("127.0.0.1", server=True, file_name="server"), clients, other.issue("cam-a")
    )


def _connects(port: int, tls: dict[str, str], user: str | None = None, **kw: Any) -> bool:
    """True when the broker accepts the connection (TLS handshake and CONNACK)."""
    password = {None: None, "control-plane": MQTT_PASSWORD}.get(user, DEVICE_PASSWORD)
    probe = MqttProbe(port, user, password, tls=tls, **kw)
    try:
        return probe.connect(timeout=3)
    except (OSError, AssertionError):  # handshake refused (ssl.SSLError), or no CONNACK
        return False
    finally:
        probe.close()


@dataclass
class CertPlane:
    api: TestClient
    port: int
    conf: Path
    pki: Pki
    probes: list[MqttProbe]

    def device(self, cn: str, port: int | None = None, **kw: Any) -> MqttProbe:
        """A client presenting ``cn``'s certificate and no user name: the CN is the identity."""
        probe = MqttProbe(port or self.port, None, None, tls=self.pki.tls(cn), **kw)
        self.probes.append(probe)
        assert probe.connect()
        return probe


@pytest.fixture
def cert_plane(
    tmp_path: Path, trusted_keys: Keys, pki: Pki, brokers: Any, package_factory: Any
) -> Iterator[CertPlane]:
    """A control plane on a Mosquitto whose only listener takes client certificates; cam-a and
    cam-b are registered, and each has a deployment (so each has a retained desired state)."""
    port = free_port()
    broker_dir = tmp_path / "broker"
    options = local_options(
        port,
        tls_cert=pki.server.cert,
        tls_key=pki.server.key,
        tls_ca=pki.ca.cert,
        require_client_cert=True,
    )
    base = make_settings(tmp_path, trusted_keys)
    ctx = AppContext.from_settings(base)
    upgrade(ctx.engine)
    with ctx.sessions() as session:
        conf = write_broker_config(base, session, broker_dir, options)
    ctx.close()
    broker = brokers(conf.read_text(), port)
    cp_cert = pki.clients["control-plane"]
    settings = make_settings(
        tmp_path,
        trusted_keys,
        mqtt_url=f"mqtts://127.0.0.1:{port}",
        mqtt_ca_file=pki.ca.cert,
        mqtt_client_cert=cp_cert.cert,
        mqtt_client_key=cp_cert.key,
        broker_config_dir=broker_dir,
        broker_reload_command=f"kill -HUP {broker.process.pid}",
    )
    app = create_app(settings)
    with TestClient(app, headers={"Authorization": f"Bearer {API_TOKEN}"}) as api:
        # The control plane's own client certificate (CN = its user name) is accepted.
        assert app.state.fleet.connected.wait(5), broker.log.read_text()
        with open(package_factory("1.0.0"), "rb") as f:
            digest = api.post("/api/v1/packages", files={"file": ("p", f)}).json()["digest"]
        for device_id in ("cam-a", "cam-b"):
            assert api.post("/api/v1/devices", json={"device_id": device_id}).status_code == 201
            body = {"package_digest": digest, "device_id": device_id}
            assert api.post("/api/v1/deployments", json=body).status_code == 201
        # Certificates skip the password file, so no connect retry waits for the ACL: wait here.
        assert app.state.fleet.wait_broker_files()
        plane = CertPlane(api, port, conf, pki, [])
        try:
            yield plane
        finally:
            for p in plane.probes:
                p.close()


def test_a_certificate_is_its_cn_and_confined_to_its_subtree(cert_plane: CertPlane) -> None:
    a = cert_plane.device("cam-a")
    for sub in ("edge/cam-b/#", topics.device_topic("cam-b", topics.DESIRED), "#"):
        a.subscribe(sub)  # granted by the SUBACK, filtered on delivery
    a.subscribe(topics.device_topic("cam-a", topics.DESIRED))
    got = a.drain(WINDOW)
    # Positive control: its own retained desired state arrives; nothing of cam-b's does.
    assert got and {m.topic for m in got} == {topics.device_topic("cam-a", topics.DESIRED)}

    forged = fleet_pb2.ReportedState(device_id="cam-b", agent_version="forged")
    a.publish(topics.device_topic("cam-b", topics.REPORTED), forged.SerializeToString(), True)
    own = fleet_pb2.ReportedState(device_id="cam-a", agent_version="1.0")
    a.publish(topics.device_topic("cam-a", topics.REPORTED), own.SerializeToString(), True)
    api = cert_plane.api
    wait_for(lambda: api.get("/api/v1/devices/cam-a").json()["reported"])  # positive control
    assert api.get("/api/v1/devices/cam-b").json()["reported"] is None


def test_the_user_name_sent_does_not_change_the_identity(cert_plane: CertPlane) -> None:
    """cam-a's certificate with the control plane's user name and password is still cam-a."""
    a = MqttProbe(cert_plane.port, "control-plane", MQTT_PASSWORD, tls=cert_plane.pki.tls("cam-a"))
    cert_plane.probes.append(a)
    assert a.connect()
    a.subscribe(topics.all_devices_filter(topics.DESIRED))
    got = {m.topic for m in a.drain(WINDOW)}
    assert got == {topics.device_topic("cam-a", topics.DESIRED)}  # cam-a's only, not the fleet's


def test_no_certificate_or_a_foreign_one_is_refused(cert_plane: CertPlane) -> None:
    port, pki = cert_plane.port, cert_plane.pki
    assert _connects(port, pki.tls("cam-a"))  # positive control
    assert not _connects(port, pki.tls(), user="cam-a")  # a password is not enough here
    assert not _connects(port, pki.tls(), user="control-plane")
    assert not _connects(port, pki.tls(cert=pki.foreign))  # CN cam-a, signed by another CA


def test_a_certificate_cannot_take_another_identitys_connection(
    cert_plane: CertPlane, brokers: Any
) -> None:
    unbound_port = free_port()  # positive control: the same config without the binding
    conf = cert_plane.conf.read_text()
    assert conf.count(BINDING) == 1
    brokers(
        conf.replace(BINDING, "").replace(f" {cert_plane.port} ", f" {unbound_port} "), unbound_port
    )
    for port in (cert_plane.port, unbound_port):
        b = cert_plane.device("cam-b", port=port, client_id="cam-b")  # as the agent does
        cert_plane.device("cam-a", port=port, client_id="cam-b")
        if port == unbound_port:
            assert b.disconnected.wait(5), "the unbound broker kept cam-b's connection"
        else:
            assert not b.disconnected.wait(WINDOW), "cam-a's certificate took cam-b's connection"


def test_password_and_certificate_listeners_side_by_side(
    tmp_path: Path, pki: Pki, brokers: Any
) -> None:
    """``cert_port``: a second listener takes certificates while ``port`` keeps passwords."""
    folder = tmp_path / "broker"
    settings = Settings(mqtt_password=MQTT_PASSWORD, dev_mode=True, data_dir=tmp_path)
    write_identity_files(folder, settings, ["cam-a"])
    port, cert_port = free_port(), free_port()
    tls = {"tls_cert": pki.server.cert, "tls_key": pki.server.key, "tls_ca": pki.ca.cert}
    brokers(render_conf(folder, local_options(port, cert_port=cert_port, **tls)), port)
    assert _connects(port, pki.tls(), user="cam-a")  # password over TLS
    assert not _connects(port, pki.tls(), user="cam-b")  # unknown: refused
    assert _connects(cert_port, pki.tls("cam-a"))
    assert not _connects(cert_port, pki.tls(), user="cam-a")


def test_client_certificate_settings_go_together(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="go together"):
        Settings(dev_mode=True, mqtt_url="mqtts://b:8883", mqtt_client_cert=tmp_path / "c")
    with pytest.raises(ValueError, match="mqtts"):
        Settings(
            dev_mode=True,
            mqtt_url="mqtt://b:1883",
            mqtt_client_cert=tmp_path / "c",
            mqtt_client_key=tmp_path / "k",
        )
