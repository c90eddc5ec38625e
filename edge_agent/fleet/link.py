"""The MQTT connection: the only module of the agent that imports paho-mqtt.

Why a hand-written connection loop instead of paho's ``loop_start`` auto-reconnect:

* backoff: paho's reconnect delay is exponential without jitter; a fleet that lost its broker
  would come back in lock step (``backoff.Backoff`` gives full jitter);
* a fresh paho client per connection: paho replays every queued QoS 1 message of an old session
  into a new one. The agent keeps what must survive on disk (outbox, downloads, results) and
  republishes it itself, so stale chunk requests and outdated reports are simply dropped with
  the old client.

Threads: one daemon thread owns the socket (connect, ``loop``, reconnect). Callbacks run on it and
hand ``LinkEvent``s to the agent's asyncio loop, in order, through a queue that the loop drains
(one ``call_soon_threadsafe`` per burst, not per message); nothing else of the agent runs on
this thread. ``publish`` is called from the event loop (paho's publish is
thread-safe) and returns an id that a later ``PubAck`` event confirms.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import ssl
import threading
import uuid
from collections.abc import Callable
from dataclasses import dataclass

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from edge_agent.config import FleetSettings
from edge_agent.fleet.backoff import Backoff
from protos.fleet_topics import parse_broker_url

log = logging.getLogger(__name__)

QOS = 1


@dataclass(frozen=True)
class Connected:
    epoch: int


@dataclass(frozen=True)
class Disconnected:
    epoch: int
    reason: str


@dataclass(frozen=True)
class Message:
    topic: str
    payload: bytes


@dataclass(frozen=True)
class PubAck:
    epoch: int
    mid: int


LinkEvent = Connected | Disconnected | Message | PubAck


class MqttLink:
    def __init__(
        self,
        settings: FleetSettings,
        client_id: str,
        subscriptions: list[str],
        status_topic: str,
        online_payload: bytes,
        offline_payload: bytes,
        loop: asyncio.AbstractEventLoop,
        on_event: Callable[[LinkEvent], None],
    ) -> None:
        self.settings = settings
        self.address = parse_broker_url(settings.url)
        self.client_id = client_id
        self.subscriptions = subscriptions
        self.status_topic = status_topic
        self.online_payload = online_payload
        self.offline_payload = offline_payload
        self._loop = loop
        self._on_event = on_event
        self._events: list[LinkEvent] = []  # emitted, not yet handed to the loop
        self._events_lock = threading.Lock()
        self._drain_scheduled = False
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._client: mqtt.Client | None = None
        self._epoch = 0
        self._connected_epoch = 0  # epoch of the current CONNACKed session, 0 when none
        self._thread = threading.Thread(target=self._run, name="fleet-mqtt", daemon=True)
        self._backoff = Backoff(settings.reconnect_min_s, settings.reconnect_max_s)

    # --- called from the event loop ---------------------------------------------------------

    def start(self) -> None:
        self._thread.start()

    def stop(self, timeout: float = 2.0) -> None:
        """Say OFFLINE (a clean disconnect suppresses the Last Will), then disconnect."""
        self._stop.set()
        self._thread.join(timeout)

    @property
    def epoch(self) -> int:
        """The epoch of the current session, 0 while not connected."""
        return self._connected_epoch

    def publish(self, topic: str, payload: bytes, retain: bool = False) -> tuple[int, int] | None:
        """Publish with QoS 1 on the current session: (epoch, mid), or None when not connected.

        Nothing is queued for later: a caller that needs delivery keeps its data and publishes
        again after the next ``Connected``.
        """
        with self._lock:
            client, epoch = self._client, self._connected_epoch
            if client is None or epoch == 0:
                return None
            info = client.publish(topic, payload, qos=QOS, retain=retain)
        if info.rc != mqtt.MQTT_ERR_SUCCESS:
            return None
        return epoch, info.mid

    def subscribe(self, topic: str) -> None:
        """Add a subscription: now when connected, and at every (re)connect until removed.

        Called before the first request it serves: paho sends SUBSCRIBE and later PUBLISHes in
        order on one connection, so the broker holds the subscription before the request.
        """
        with self._lock:
            if topic in self.subscriptions:
                return
            self.subscriptions = [*self.subscriptions, topic]
            client = self._client if self._connected_epoch else None
            if client is not None:
                client.subscribe(topic, QOS)

    def unsubscribe(self, topic: str) -> None:
        with self._lock:
            if topic not in self.subscriptions:
                return
            self.subscriptions = [t for t in self.subscriptions if t != topic]
            client = self._client if self._connected_epoch else None
            if client is not None:
                client.unsubscribe(topic)

    # --- connection thread ------------------------------------------------------------------

    def _emit(self, event: LinkEvent) -> None:
        """Queue the event for the loop; only the first of a burst wakes it (a wake-up per
        256 KiB chunk was a self-pipe write, a loop iteration and a handle each)."""
        with self._events_lock:
            self._events.append(event)
            if self._drain_scheduled:
                return
            self._drain_scheduled = True
        with contextlib.suppress(RuntimeError):  # a closed loop: the agent is going away
            self._loop.call_soon_threadsafe(self._drain)

    def _drain(self) -> None:
        """On the loop: hand every queued event over, in the order they happened."""
        while True:
            with self._events_lock:
                if not self._events:
                    self._drain_scheduled = False
                    return
                events = list(self._events)
                self._events.clear()
            for event in events:
                try:
                    self._on_event(event)
                except Exception:  # as the loop would for its own callback: log, go on
                    log.exception("handling %s failed", type(event).__name__)

    def _new_client(self, epoch: int) -> mqtt.Client:
        s = self.settings
        client = mqtt.Client(
            CallbackAPIVersion.VERSION2,
            client_id=self.client_id,
            clean_session=True,
            protocol=mqtt.MQTTv311,
        )
        if s.username is not None:
            client.username_pw_set(
                s.username, s.password.get_secret_value() if s.password is not None else None
            )
        if self.address.tls:
            client.tls_set(
                ca_certs=str(s.ca_file) if s.ca_file else None,
                certfile=str(s.client_cert) if s.client_cert else None,
                keyfile=str(s.client_key) if s.client_key else None,
            )
        client.will_set(self.status_topic, self.offline_payload, qos=QOS, retain=True)
        client.max_inflight_messages_set(max(20, s.chunk_window * 2 + 4))

        def on_connect(c: mqtt.Client, _u: object, _f: object, rc: object, _p: object) -> None:
            if getattr(rc, "is_failure", False):
                log.error("broker %s refused the connection: %s", s.url, rc)
                return
            with self._lock:
                c.subscribe([(t, QOS) for t in self.subscriptions])
                c.publish(self.status_topic, self.online_payload, qos=QOS, retain=True)
                self._connected_epoch = epoch
            self._backoff.reset()
            log.info("connected to %s as %s", s.url, self.client_id)
            self._emit(Connected(epoch))

        def on_message(_c: mqtt.Client, _u: object, msg: mqtt.MQTTMessage) -> None:
            self._emit(Message(msg.topic, bytes(msg.payload)))

        def on_publish(_c: mqtt.Client, _u: object, mid: int, _rc: object, _p: object) -> None:
            self._emit(PubAck(epoch, mid))

        client.on_connect = on_connect
        client.on_message = on_message
        client.on_publish = on_publish
        return client

    def _run(self) -> None:
        logged_down = False
        while not self._stop.is_set():
            self._epoch += 1
            epoch = self._epoch
            client = self._new_client(epoch)
            try:
                client.connect(self.address.host, self.address.port, self.settings.keepalive_s)
            except (OSError, ssl.SSLError, ValueError) as exc:
                if not logged_down:
                    log.warning(
                        "broker %s unreachable (%s); retrying in the background",
                        self.settings.url,
                        exc,
                    )
                    logged_down = True
                self._stop.wait(self._backoff.next())
                continue
            logged_down = False
            with self._lock:
                self._client = client
            rc = mqtt.MQTT_ERR_SUCCESS
            while not self._stop.is_set() and rc == mqtt.MQTT_ERR_SUCCESS:
                rc = client.loop(timeout=0.2)
            was_connected = self._connected_epoch == epoch
            with self._lock:
                self._client = None
                self._connected_epoch = 0
            if self._stop.is_set():
                self._say_goodbye(client, was_connected)
                break
            client.disconnect()
            if was_connected:
                log.warning("lost the broker connection (%s); reconnecting", mqtt.error_string(rc))
                self._emit(Disconnected(epoch, mqtt.error_string(rc)))
            self._stop.wait(self._backoff.next())

    def _say_goodbye(self, client: mqtt.Client, was_connected: bool) -> None:
        if was_connected:
            info = client.publish(self.status_topic, self.offline_payload, qos=QOS, retain=True)
            for _ in range(10):
                if info.is_published():
                    break
                client.loop(timeout=0.1)
        client.disconnect()
        client.loop(timeout=0.1)


def new_request_id() -> str:
    return uuid.uuid4().hex[:12]
