"""An embedded MQTT broker (amqtt) on loopback, for the one-machine default.

It exists so that `control-plane serve` works with nothing else installed, and it admits and
confines clients the way the generated Mosquitto config does:

- a client must present a user name and password: the control plane's own, or a registered
  device's, checked against the registry's stored ``$7$`` hash (``verify_password``);
- its client id must be its user name (Mosquitto rewrites the client id to the user name; this
  broker refuses the connection instead, so a misconfigured client fails visibly);
- it may subscribe, publish and receive only where the generated ACL lets that identity
  (``broker_config.device_access``, plus the shared topics of the packages in its desired state,
  ``package_topics.PackageGrants``; the control plane: ``<root>/#``), and a Will goes to a topic
  it may publish to.

It is still NOT a production broker: it binds only to 127.0.0.1, has no TLS, keeps retained
messages and sessions in memory only, does not drop the live connection of a device that is
deleted (it cannot connect again), and is a single asyncio loop. docs/fleet.md says when to move
to Mosquitto or a cluster.

Why a ``Broker`` subclass and not an amqtt auth plugin: amqtt (0.12) acts on the client id before
it asks its auth plugins (a clean-session CONNECT deletes the existing session of that id, and a
CONNECT for a connected id takes the live connection over, whatever the plugins answer next). So
admission has to look at the CONNECT packet before amqtt's session handling does: the packet is
read here, checked, and replayed to amqtt only when admitted.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from amqtt.adapters import ReaderAdapter, WriterAdapter
from amqtt.broker import Broker
from amqtt.contexts import Action, ListenerConfig
from amqtt.errors import AMQTTError, MQTTError, NoDataError
from amqtt.mqtt.connack import (
    BAD_USERNAME_PASSWORD,
    IDENTIFIER_REJECTED,
    NOT_AUTHORIZED,
    ConnackPacket,
)
from amqtt.mqtt.connect import ConnectPacket
from amqtt.session import Session

from control_plane.core.context import AppContext
from control_plane.core.credentials import hash_password, verify_password
from control_plane.devices.service import broker_password_hash
from control_plane.fleet.broker_config import device_access
from control_plane.fleet.package_topics import PackageGrants
from protos.fleet_topics import parse_package_topic

logger = logging.getLogger(__name__)


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


@dataclass(frozen=True)
class Identities:
    """Who may connect and what each identity may touch: the generated ACL's rules, in code."""

    control_plane: str
    control_plane_hash: str
    root: str
    # Device id -> its stored password hash, or None for an unknown device (reads the registry).
    device_hash: Callable[[str], str | None]
    # Which shared package topics each device may read (kept current by the fleet service).
    grants: PackageGrants | None = None

    @classmethod
    def from_context(cls, ctx: AppContext, grants: PackageGrants | None = None) -> Identities:
        mqtt = ctx.settings.mqtt

        def device_hash(device_id: str) -> str | None:
            with ctx.sessions() as session:
                return broker_password_hash(session, device_id)

        return cls(
            control_plane=mqtt.username,
            control_plane_hash=hash_password(mqtt.password.get_secret_value()),
            root=mqtt.topic_root,
            device_hash=device_hash,
            grants=grants,
        )

    def password_ok(self, username: str, password: str) -> bool:
        """Blocking (a database read and PBKDF2): run it off the broker's loop."""
        if username == self.control_plane:
            stored: str | None = self.control_plane_hash
        else:
            stored = self.device_hash(username)
        return stored is not None and verify_password(password, stored)

    def may(self, username: str | None, topic: str, action: Action) -> bool:
        """Whether ``username`` may publish to, subscribe to or receive from ``topic``.

        The control plane may do anything under ``<root>/``. A device may subscribe only to the
        exact topics it may read (no wildcards: the agent never needs one), receive from them,
        and publish where it may write; it may read a shared package topic while the package is
        in its desired state (``grants``), checked again at every delivery, so a revoked grant
        stops the flow even to a subscription made before.
        """
        if username is None:
            return False
        if username == self.control_plane:
            return topic.startswith(f"{self.root}/")
        try:
            rights = device_access(username, self.root)
        except ValueError:  # not a valid device id: no rights
            return False
        digest = parse_package_topic(topic, self.root)
        if digest is not None:
            readable = self.grants is not None and self.grants.may_read(username, digest)
            return action != Action.PUBLISH and readable
        access = rights.get(topic, "")
        return "write" in access if action == Action.PUBLISH else "read" in access


class _RecordingReader(ReaderAdapter):
    """Reads through to the connection and keeps what it read, to be replayed to amqtt."""

    def __init__(self, inner: ReaderAdapter) -> None:
        self._inner = inner
        self.data = bytearray()

    async def read(self, n: int = -1) -> bytes:
        chunk = await self._inner.read(n)
        self.data += chunk
        return chunk

    def feed_eof(self) -> None:
        self._inner.feed_eof()


class _ReplayReader(ReaderAdapter):
    """Serves the recorded CONNECT bytes first, then reads from the connection."""

    def __init__(self, recorded: bytes, inner: ReaderAdapter) -> None:
        self._buffer = bytearray(recorded)
        self._inner = inner

    async def read(self, n: int = -1) -> bytes:
        if not self._buffer:
            return await self._inner.read(n)
        if 0 <= n <= len(self._buffer):
            out = bytes(self._buffer[:n])
            del self._buffer[:n]
            return out
        out = bytes(self._buffer)
        self._buffer.clear()
        return out + await self._inner.read(-1 if n < 0 else n - len(out))

    def feed_eof(self) -> None:
        self._inner.feed_eof()


class _AdmittingBroker(Broker):
    """amqtt's broker with admission before session handling and the ACL on every topic use."""

    def __init__(
        self, config: dict[str, Any], loop: asyncio.AbstractEventLoop, identities: Identities
    ) -> None:
        super().__init__(config, loop=loop)
        self._identities = identities

    async def _initialize_client_session(
        self, reader: ReaderAdapter, writer: WriterAdapter, remote_address: str, remote_port: int
    ) -> Any:
        recorder = _RecordingReader(reader)
        try:
            connect = await ConnectPacket.from_stream(recorder)
        except (AMQTTError, MQTTError, NoDataError) as exc:  # what amqtt catches at this point
            await writer.close()
            raise AMQTTError(exc) from exc
        refusal = await self._refusal(connect)
        if refusal is not None:
            code, why = refusal
            logger.warning(
                "embedded broker refused %s:%s (client id %r, user %r): %s",
                remote_address,
                remote_port,
                connect.client_id,
                connect.username,
                why,
            )
            await ConnackPacket.build(0, code).to_stream(writer)
            await writer.close()
            raise AMQTTError(why)
        replay = _ReplayReader(bytes(recorder.data), reader)
        return await super()._initialize_client_session(replay, writer, remote_address, remote_port)

    async def _refusal(self, connect: ConnectPacket) -> tuple[int, str] | None:
        """(CONNACK code, reason) when the CONNECT must be refused; None to admit it."""
        username, password = connect.username, connect.password
        if not username or password is None:
            return BAD_USERNAME_PASSWORD, "no user name and password"
        loop = asyncio.get_running_loop()
        ok = await loop.run_in_executor(None, self._identities.password_ok, username, password)
        if not ok:
            return BAD_USERNAME_PASSWORD, "unknown user or wrong password"
        if connect.client_id != username:
            return IDENTIFIER_REJECTED, "the client id must be the user name"
        will = connect.will_topic if connect.will_flag else None
        if will is not None and not self._identities.may(username, will, Action.PUBLISH):
            return NOT_AUTHORIZED, f"Will topic {will!r} is outside its rights"
        return None

    async def _authenticate(self, session: Session, listener: ListenerConfig) -> bool:
        return True  # _refusal already authenticated the CONNECT, before any session was touched

    async def _topic_filtering(self, session: Session, topic: str, action: Action) -> bool:
        return self._identities.may(session.username, topic, action)

    async def _publish_retained_messages_for_subscription(
        self, subscription: tuple[str, int], session: Session
    ) -> None:
        """Retained messages for one of the session's own subscriptions, within its rights.

        amqtt (0.12) calls this after a SUBACK and, at every CONNECT, for every filter that any
        client holds, and sends what matches without asking ``_topic_filtering``: a device
        connecting would receive every other device's retained desired and reported state.
        Here a filter the session did not subscribe to yields nothing, and each retained
        message must be one the session may receive.
        """
        topic_filter, qos = subscription
        holders = self._subscriptions.get(topic_filter, [])
        if not any(held.client_id == session.client_id for held, _ in holders):
            return
        handler = self._get_handler(session)
        if handler is None:
            return
        sends = [
            asyncio.ensure_future(
                handler.mqtt_publish(topic, kept.data, min(qos, kept.qos or qos), retain=True)
            )
            for topic, kept in list(self._retained_messages.items())
            if self._matches(topic, topic_filter)
            and self._identities.may(session.username, topic, Action.RECEIVE)
        ]
        if sends:
            await asyncio.wait(sends)


class EmbeddedBroker:
    """amqtt running on its own event loop in a daemon thread."""

    def __init__(self, identities: Identities, port: int = 1883, host: str = "127.0.0.1") -> None:
        self.host = host
        self.port = port or free_port(host)
        self._identities = identities
        self._loop: asyncio.AbstractEventLoop | None = None
        self._broker: Broker | None = None
        self._thread: threading.Thread | None = None
        self._ready = threading.Event()
        self._error: BaseException | None = None

    @property
    def url(self) -> str:
        return f"mqtt://{self.host}:{self.port}"

    def start(self, timeout: float = 10.0) -> None:
        self._thread = threading.Thread(target=self._run, name="embedded-broker", daemon=True)
        self._thread.start()
        if not self._ready.wait(timeout):
            raise RuntimeError("embedded MQTT broker did not start in time")
        if self._error is not None:
            raise RuntimeError(f"embedded MQTT broker failed to start: {self._error}")
        logger.warning(
            "embedded MQTT broker on %s (loopback, no TLS, in-memory: development only)", self.url
        )

    def _run(self) -> None:
        loop = asyncio.new_event_loop()
        self._loop = loop
        asyncio.set_event_loop(loop)
        config: dict[str, Any] = {
            "listeners": {"default": {"type": "tcp", "bind": f"{self.host}:{self.port}"}},
            "plugins": {},  # admission and topic rules are _AdmittingBroker's own
        }
        try:
            self._broker = _AdmittingBroker(config, loop, self._identities)
            loop.run_until_complete(self._broker.start())
        except BaseException as exc:
            self._error = exc
            self._ready.set()
            return
        self._ready.set()
        loop.run_forever()
        # What amqtt leaves running after shutdown (its broadcast loop) ends here, not at exit.
        pending = asyncio.all_tasks(loop)
        for task in pending:
            task.cancel()
        loop.run_until_complete(asyncio.gather(*pending, return_exceptions=True))
        loop.close()

    def stop(self) -> None:
        loop, broker = self._loop, self._broker
        if loop is None or broker is None or not loop.is_running():
            return
        fut = asyncio.run_coroutine_threadsafe(broker.shutdown(), loop)
        try:
            fut.result(timeout=10)
        except Exception:
            logger.exception("embedded broker shutdown failed")
        loop.call_soon_threadsafe(loop.stop)
        if self._thread:
            self._thread.join(timeout=10)
