"""EMQX as the fleet's broker: its configuration, and the answers of its HTTP auth hooks.

EMQX (a clustered MQTT broker for many thousands of devices) does not read Mosquitto's password
and ACL files. It asks the control plane instead, through its HTTP authenticator and HTTP
authorizer, which ``fleet/broker_hook_routes.py`` serves:

- **authentication** (on CONNECT): ``{"username", "password", "clientid"}`` ->
  ``{"result": "allow" | "deny" | "ignore", "is_superuser": false}``. A registered device is
  checked against its stored password hash, the control plane's identities against
  ``mqtt.password``; the client id must equal the user name (Mosquitto's
  ``use_username_as_clientid``, so no one takes over another identity's session). A name the
  registry does not know is ``ignore``: EMQX asks its next authenticator, or refuses.
- **authorization** (on PUBLISH and SUBSCRIBE): ``{"username", "clientid", "topic", "action"}``
  -> ``{"result": "allow" | "deny" | "ignore"}``, decided by ``broker_config.identity_access``,
  the same rule the Mosquitto ACL file is rendered from. A shared subscription
  (``$share/<group>/<filter>``) is checked as its filter. Unknown names: ``ignore``; the
  generated configuration sets ``no_match = deny``, so nothing else grants them anything.

``render_emqx_conf`` writes the HOCON that points EMQX at those hooks.
"""

from __future__ import annotations

import hmac
import json
from dataclasses import dataclass
from typing import Literal

from sqlalchemy.orm import Session

from control_plane.core.credentials import verify_password
from control_plane.core.settings import Settings
from control_plane.deployments.service import package_grants
from control_plane.devices.service import broker_password_hash
from control_plane.fleet.broker_config import identity_access, max_packet_bytes
from protos.fleet_topics import parse_package_topic

Result = Literal["allow", "deny", "ignore"]

AUTHN_PATH = "/broker/emqx/authn"
AUTHZ_PATH = "/broker/emqx/authz"

#: What an action needs of a rule's access.
_NEEDS = {"publish": ("write", "readwrite"), "subscribe": ("read", "readwrite")}


def authenticate(
    settings: Settings, session: Session, username: str, password: str, clientid: str
) -> Result:
    """EMQX's CONNECT question: may this identity connect with this password and client id?"""
    if username in settings.mqtt_identities:
        expected = settings.mqtt.password.get_secret_value()
        ok = hmac.compare_digest(password.encode(), expected.encode())
    else:
        hashed = broker_password_hash(session, username) if username else None
        if hashed is None:
            return "ignore"
        ok = verify_password(password, hashed)
    return "allow" if ok and clientid == username else "deny"


def authorize(
    settings: Settings, session: Session, username: str, clientid: str, topic: str, action: str
) -> Result:
    """EMQX's PUBLISH / SUBSCRIBE question, answered from ``identity_access``."""
    is_device = username not in settings.mqtt_identities and bool(
        username and broker_password_hash(session, username) is not None
    )
    if action == "subscribe":
        topic = shared_filter(topic)
    # A shared package topic: the packages in this device's desired state decide (one query,
    # only for such topics).
    asked = parse_package_topic(topic, settings.mqtt.topic_root) if is_device else None
    packages = package_grants(session, username).get(username, set()) if asked else set()
    rules = identity_access(settings, username, is_device, packages)
    if rules is None:
        return "ignore"
    if clientid != username or action not in _NEEDS:
        return "deny"
    for pattern, access in rules.items():
        if access in _NEEDS[action] and filter_covers(pattern, topic):
            return "allow"
    return "deny"


def shared_filter(topic: str) -> str:
    """``$share/<group>/<filter>`` -> ``<filter>``; any other topic as it is."""
    if topic.startswith("$share/"):
        parts = topic.split("/", 2)
        return parts[2] if len(parts) == 3 else ""
    return topic


def filter_covers(pattern: str, topic: str) -> bool:
    """Whether an ACL ``pattern`` covers ``topic``: a topic name being published, or a filter
    being subscribed to. A wildcard in the requested filter is covered only by a wildcard of the
    pattern at that level (``+`` by ``+`` or ``#``, ``#`` by ``#``), so ``a/+`` never grants
    ``a/#``; topics starting with ``$`` are never matched by a leading wildcard (MQTT 4.7.2)."""
    if not topic:
        return False
    want, have = pattern.split("/"), topic.split("/")
    if topic.startswith("$") and want[0] in ("+", "#"):
        return False
    for i, level in enumerate(want):
        if level == "#":
            return i == len(want) - 1
        if i >= len(have):
            return False
        if level == "+":
            if have[i] == "#":
                return False
            continue
        if level != have[i]:
            return False
    return len(have) == len(want)


# --- configuration ---------------------------------------------------------------------------


@dataclass(frozen=True)
class EmqxOptions:
    """What ``control-plane broker-config --emqx`` is told."""

    hook_url: str  # the control plane as EMQX reaches it, e.g. http://control-plane:8080
    authz_cache_ttl_s: int = 60


def render_emqx_conf(settings: Settings, options: EmqxOptions) -> str:
    """HOCON for EMQX 5: the two HTTP hooks, ``no_match = deny`` and the fleet's packet size.

    The bearer token is ``mqtt.hook_token``; without one the hooks answer 404, so it is required.
    """
    token = settings.mqtt.hook_token
    if token is None:
        raise ValueError(
            "EMQX needs CONTROL_PLANE_BROKER_HOOK_TOKEN: the token it sends to the hooks"
        )
    base = options.hook_url.rstrip("/")
    if not base.startswith(("http://", "https://")):
        raise ValueError(f"--hook-url must be an http(s) URL, not {options.hook_url!r}")
    headers = _hocon(
        {
            "content-type": "application/json",
            "authorization": f"Bearer {token.get_secret_value()}",
        }
    )
    authn_body = _hocon(
        {"username": "${username}", "password": "${password}", "clientid": "${clientid}"}
    )
    authz_body = _hocon(
        {
            "username": "${username}",
            "clientid": "${clientid}",
            "topic": "${topic}",
            "action": "${action}",
        }
    )
    return f"""\
# Generated by `control-plane broker-config --emqx`. Regenerate rather than edit.
# Devices and the control plane authenticate, and are authorized topic by topic, by the control
# plane's hooks ({AUTHN_PATH}, {AUTHZ_PATH}): the same rules as the Mosquitto files.
# It holds the hook token: keep it readable by EMQX only.
authentication = [
  {{
    mechanism = password_based
    backend = http
    enable = true
    method = post
    url = "{base}{AUTHN_PATH}"
    headers {headers}
    body {authn_body}
    request_timeout = 5s
  }}
]
authorization {{
  no_match = deny
  deny_action = ignore
  cache {{ enable = true, max_size = 64, ttl = {options.authz_cache_ttl_s}s }}
  sources = [
    {{
      type = http
      enable = true
      method = post
      url = "{base}{AUTHZ_PATH}"
      headers {headers}
      body {authz_body}
      request_timeout = 5s
    }}
  ]
}}
mqtt {{
  max_packet_size = {max_packet_bytes(settings.mqtt.topic_root)}
  max_mqueue_len = 10000
}}
"""


def _hocon(values: dict[str, str]) -> str:
    """A one-line HOCON object; JSON strings are valid HOCON strings (placeholders intact)."""
    return "{" + ", ".join(f"{json.dumps(k)} = {json.dumps(v)}" for k, v in values.items()) + "}"
