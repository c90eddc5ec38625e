"""Topic names of the fleet channel (protos/fleet.proto), shared by the control plane and the agent.

Everything for device ``D`` lives under ``<root>/<D>/`` (root ``edge`` by default), so one broker
ACL rule per device confines it to its own subtree. This module is plain Python with no
dependencies so both sides build topic names the same way; it sits next to the .proto because
the topic layout is as much a part of the wire contract as the messages.

| topic                        | direction      | retained | QoS | payload          |
| ---------------------------- | -------------- | -------- | --- | ---------------- |
| ``<root>/<D>/desired``       | cloud -> dev   | yes      | 1   | ``DesiredState`` |
| ``<root>/<D>/reported``      | dev -> cloud   | yes      | 1   | ``ReportedState``|
| ``<root>/<D>/status``        | dev -> cloud   | yes (LWT)| 1   | ``DeviceStatus`` |
| ``<root>/<D>/chunks/req``    | dev -> cloud   | no       | 1   | ``ChunkRequest`` |
| ``<root>/<D>/chunks/data``   | cloud -> dev   | no       | 1   | ``ChunkData``    |
| ``<root>/<D>/telemetry``     | dev -> cloud   | no       | 1   | ``TelemetryBatch``|
| ``<root>/<D>/events``        | dev -> cloud   | no       | 1   | reserved         |
| ``<root>/<D>/trust``         | cloud -> dev   | yes      | 1   | ``SignedTrustSet``|
| ``<root>/_packages/<digest>``| cloud -> devs  | no       | 1   | ``ChunkData``    |

The last is the one topic outside a device's subtree: a package's chunks published once for every
device targeted by a deployment of it (the ACL grants each such device read access to it).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from urllib.parse import urlsplit

DEFAULT_ROOT = "edge"

DESIRED = "desired"
REPORTED = "reported"
STATUS = "status"
CHUNKS_REQUEST = "chunks/req"
CHUNKS_DATA = "chunks/data"
TELEMETRY = "telemetry"
EVENTS = "events"
TRUST = "trust"

#: Leaves a device publishes to (it may also read back its own retained ``reported``/``status``).
DEVICE_PUBLISHES = (REPORTED, STATUS, CHUNKS_REQUEST, TELEMETRY, EVENTS)
#: Leaves a device subscribes to. Subscribe to these exact topics, not ``<root>/<D>/#``: the
#: production ACL grants a device read access only where it needs it.
DEVICE_SUBSCRIBES = (DESIRED, CHUNKS_DATA, TRUST)
#: Leaves the control plane subscribes to for every device (with ``+`` in place of the id).
CONTROL_PLANE_SUBSCRIBES = (REPORTED, STATUS, CHUNKS_REQUEST, TELEMETRY)

MAX_CHUNK_INDEXES_PER_REQUEST = 64
#: The largest ``TelemetryBatch`` a device sends, encoded, and the most records in one. The control
#: plane refuses (and counts) a batch over either limit without decoding it, so one message can
#: never hold the thread that serves every device's chunks.
MAX_TELEMETRY_BATCH_BYTES = 256 * 1024
MAX_TELEMETRY_BATCH_RECORDS = 500
#: The largest MQTT message either side sends: a chunk (at most 16 MiB of data) and its envelope.
#: The generated broker config refuses anything bigger.
MAX_MESSAGE_BYTES = 17 * 1024 * 1024

# Device ids become topic levels and broker user names: no wildcards, separators or spaces.
_DEVICE_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")


def valid_device_id(device_id: str) -> bool:
    """True when ``device_id`` is safe as a topic level and a broker user name."""
    return bool(_DEVICE_ID_RE.match(device_id))


def device_prefix(device_id: str, root: str = DEFAULT_ROOT) -> str:
    """``<root>/<device_id>``: the subtree a device owns (the config bundle's ``topic_prefix``)."""
    if not valid_device_id(device_id):
        raise ValueError(f"invalid device id {device_id!r}")
    return f"{root}/{device_id}"


def device_topic(device_id: str, leaf: str, root: str = DEFAULT_ROOT) -> str:
    """The topic for one leaf (``DESIRED``, ``REPORTED``, ...) of one device."""
    return f"{device_prefix(device_id, root)}/{leaf}"


def all_devices_filter(leaf: str, root: str = DEFAULT_ROOT) -> str:
    """Subscription filter for one leaf across every device, e.g. ``edge/+/reported``."""
    return f"{root}/+/{leaf}"


#: The second topic level of the shared package topics, ``<root>/_packages/<digest>``. A device
#: id starts with a letter or digit, so no device subtree can ever be named this.
PACKAGES_LEVEL = "_packages"
_DIGEST_RE = re.compile(r"^[0-9a-f]{64}$")


def package_topic(package_digest: str, root: str = DEFAULT_ROOT) -> str:
    """The shared topic of one package's chunks (``ChunkData``), read by every device targeted by
    a deployment of it and by no other (docs/fleet.md, "Shared package topics")."""
    if not _DIGEST_RE.match(package_digest):
        raise ValueError(f"invalid package digest {package_digest!r}")
    return f"{root}/{PACKAGES_LEVEL}/{package_digest}"


def parse_package_topic(topic: str, root: str = DEFAULT_ROOT) -> str | None:
    """The package digest of a shared package topic; None for any other topic."""
    parts = topic.split("/")
    if len(parts) != 3 or parts[0] != root or parts[1] != PACKAGES_LEVEL:
        return None
    return parts[2] if _DIGEST_RE.match(parts[2]) else None


@dataclass(frozen=True)
class ParsedTopic:
    device_id: str
    leaf: str


def parse_topic(topic: str, root: str = DEFAULT_ROOT) -> ParsedTopic | None:
    """Split ``<root>/<D>/<leaf>`` into device id and leaf; None for anything else."""
    parts = topic.split("/", 2)
    if len(parts) != 3 or parts[0] != root or not valid_device_id(parts[1]):
        return None
    return ParsedTopic(device_id=parts[1], leaf=parts[2])


@dataclass(frozen=True)
class BrokerAddress:
    host: str
    port: int
    tls: bool


def parse_broker_url(url: str) -> BrokerAddress:
    """``mqtt://host[:1883]`` or ``mqtts://host[:8883]`` (``tcp://`` / ``ssl://`` accepted).

    Both ends read broker URLs here, so a URL in the device's config bundle means exactly what
    it means to the control plane that wrote it.
    """
    parts = urlsplit(url)
    if parts.scheme not in ("mqtt", "mqtts", "tcp", "ssl"):
        raise ValueError(f"broker URL {url!r} must start with mqtt:// or mqtts://")
    tls = parts.scheme in ("mqtts", "ssl")
    if not parts.hostname:
        raise ValueError(f"broker URL {url!r} has no host")
    return BrokerAddress(parts.hostname, parts.port or (8883 if tls else 1883), tls)
