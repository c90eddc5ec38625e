"""A small synchronous paho client for tests: connect with given credentials, collect messages."""

from __future__ import annotations

import queue
import threading
import time
import uuid
from dataclasses import dataclass

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion


@dataclass(frozen=True)
class Received:
    topic: str
    payload: bytes
    retain: bool


class MqttProbe:
    """One paho client. Its client id is its user name unless told otherwise: both brokers bind
    the client id to the identity (Mosquitto rewrites it, the embedded broker refuses others)."""

    def __init__(
        self,
        port: int,
        username: str | None,
        password: str | None,
        client_id: str | None = None,
        clean_session: bool = True,
        tls: dict[str, str] | None = None,
    ) -> None:
        self.port = port
        self.session_present: bool | None = None
        self.messages: queue.Queue[Received] = queue.Queue()
        self._connack = threading.Event()
        self.disconnected = threading.Event()
        self._subacks: dict[int, threading.Event] = {}
        self._granted: dict[int, list[int]] = {}
        self.reason: mqtt.ReasonCode | None = None
        self.client = mqtt.Client(
            CallbackAPIVersion.VERSION2,
            client_id=client_id or username or f"probe-{uuid.uuid4().hex[:8]}",
            clean_session=clean_session,
            protocol=mqtt.MQTTv311,
        )
        if username is not None:
            self.client.username_pw_set(username, password)
        if tls is not None:  # ca_certs, and certfile/keyfile for a client certificate
            self.client.tls_set(**tls)
        self.client.on_connect = self._on_connect
        self.client.on_message = self._on_message
        self.client.on_subscribe = self._on_subscribe
        self.client.on_disconnect = self._on_disconnect

    def _on_connect(self, _c, _u, flags, rc, _p) -> None:  # type: ignore[no-untyped-def]
        self.reason = rc
        self.session_present = bool(flags.session_present)
        self._connack.set()

    def _on_disconnect(self, _c, _u, _f, _rc, _p) -> None:  # type: ignore[no-untyped-def]
        self.disconnected.set()

    def _on_message(self, _c, _u, msg) -> None:  # type: ignore[no-untyped-def]
        self.messages.put(Received(msg.topic, bytes(msg.payload), bool(msg.retain)))

    def _on_subscribe(self, _c, _u, mid, rcs, _p) -> None:  # type: ignore[no-untyped-def]
        self._granted[mid] = [int(getattr(rc, "value", rc)) for rc in rcs]
        self._subacks.setdefault(mid, threading.Event()).set()

    def connect(self, timeout: float = 5.0, will: tuple[str, bytes] | None = None) -> bool:
        """True when the broker accepted the CONNECT; False when it refused it."""
        if will:
            self.client.will_set(will[0], will[1], qos=1, retain=True)
        self._connack.clear()
        self.disconnected.clear()
        self.client.connect("127.0.0.1", self.port, keepalive=30)
        self.client.loop_start()
        deadline = time.monotonic() + timeout
        while not self._connack.wait(0.02):
            if self.disconnected.is_set():  # closed before any CONNACK (e.g. TLS refused it)
                self.client.loop_stop()
                return False
            if time.monotonic() > deadline:
                raise AssertionError("no CONNACK from the broker")
        ok = self.reason is not None and not self.reason.is_failure
        if not ok:
            self.client.loop_stop()
        return ok

    def subscribe(self, topic: str, qos: int = 1, timeout: float = 5.0) -> list[int]:
        """Subscribe and wait for the SUBACK; returns the granted codes (128 = refused)."""
        _, mid = self.client.subscribe(topic, qos)
        event = self._subacks.setdefault(mid, threading.Event())
        if not event.wait(timeout):
            raise AssertionError(f"no SUBACK for {topic}")
        return self._granted[mid]

    def publish(self, topic: str, payload: bytes, retain: bool = False) -> None:
        info = self.client.publish(topic, payload, qos=1, retain=retain)
        info.wait_for_publish(timeout=5)

    def expect(self, timeout: float = 5.0) -> Received:
        try:
            return self.messages.get(timeout=timeout)
        except queue.Empty:
            raise AssertionError(f"no message within {timeout} s") from None

    def expect_on(self, topic: str, timeout: float = 5.0) -> Received:
        deadline = time.monotonic() + timeout
        while (left := deadline - time.monotonic()) > 0:
            msg = self.expect(left)
            if msg.topic == topic:
                return msg
        raise AssertionError(f"no message on {topic} within {timeout} s")

    def drain(self, window: float) -> list[Received]:
        """Everything that arrives within ``window`` seconds."""
        got = []
        deadline = time.monotonic() + window
        while (left := deadline - time.monotonic()) > 0:
            try:
                got.append(self.messages.get(timeout=left))
            except queue.Empty:
                break
        return got

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()
