"""Optional bearer-token auth: one token, one rule, checked by both transports.

Without a token the agent trusts whoever reaches its ports, which is only safe while it listens
on loopback; so a server bound anywhere else refuses to start without one (``AgentSettings``
validation calls ``exposed_without_token``). With a token, every call needs
``authorization: Bearer <token>`` (an HTTP header or gRPC metadata, which tritonclient sends
with ``headers=``), except health checks, which orchestrators and load balancers probe without
credentials. Each transport applies ``TokenAuth.accepts`` in one place: ``http/server.py`` before
routing, ``grpc/auth.py`` as a server interceptor.
"""

from __future__ import annotations

import hmac
import ipaddress
from pathlib import Path
from typing import TYPE_CHECKING

from model_packager.records import Secret

if TYPE_CHECKING:
    from edge_agent.config import AgentSettings

#: Shorter tokens are refused: a guessable token is worse than none, it looks safe.
MIN_TOKEN_CHARS = 16


def is_loopback(host: str) -> bool:
    """Whether ``host`` only accepts connections from this machine (``0.0.0.0`` does not)."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:  # a host name: it may resolve to anything
        return False


def grpc_peer_is_local(peer: str) -> bool:
    """Whether a gRPC peer (``ipv4:127.0.0.1:port``, ``ipv6:[::1]:port``, ``unix:path``) is
    on this machine."""
    kind, _, rest = peer.partition(":")
    if kind == "unix":
        return True
    if kind not in ("ipv4", "ipv6"):
        return False
    return is_loopback(rest.rpartition(":")[0])


def socket_peer_is_local(peer: object) -> bool:
    """Whether an asyncio ``peername`` (``(host, port[, ...])``, or a Unix socket's path) is
    on this machine."""
    if isinstance(peer, tuple) and peer and isinstance(peer[0], str):
        return is_loopback(peer[0])
    return isinstance(peer, str | bytes)


def resolve_token(token: Secret | None, token_file: Path | None) -> str | None:
    """The configured token, from the setting or the file; ``ValueError`` names the problem."""
    if token is not None and token_file is not None:
        raise ValueError("set auth_token or auth_token_file, not both")
    if token_file is not None:
        try:
            value = Path(token_file).read_text(encoding="utf-8").strip()
        except (OSError, UnicodeDecodeError) as exc:
            raise ValueError(f"auth_token_file {token_file}: cannot read it ({exc})") from None
        source = f"auth_token_file {token_file}"
    elif token is not None:
        value = token.get_secret_value().strip()
        source = "auth_token"
    else:
        return None
    if len(value) < MIN_TOKEN_CHARS or any(c.isspace() for c in value):
        raise ValueError(
            f"{source}: the token must be at least {MIN_TOKEN_CHARS} characters without spaces "
            "(e.g. python -c 'import secrets; print(secrets.token_urlsafe(32))')"
        )
    return value


def exposed_without_token(settings: AgentSettings, token: str | None) -> None:
    """Refuse a server bound to a non-loopback address when no token guards it."""
    if token is not None:
        return
    exposed = [f"grpc_host {settings.grpc_host!r}"] if not is_loopback(settings.grpc_host) else []
    if settings.http_port >= 0 and not is_loopback(settings.http_host):
        exposed.append(f"http_host {settings.http_host!r}")
    if exposed:
        verb = "accepts" if len(exposed) == 1 else "accept"
        raise ValueError(
            f"{' and '.join(exposed)} {verb} connections from other machines: set auth_token "
            "or auth_token_file, so that only clients with the token can install packages and "
            "run inferences"
        )


class TokenAuth:
    """Checks an ``Authorization`` value against the token, in constant time."""

    def __init__(self, token: str) -> None:
        self._expected = token.encode()

    def accepts(self, authorization: str | bytes | None) -> bool:
        if not authorization:
            return False
        if isinstance(authorization, str):
            authorization = authorization.encode("latin-1", "replace")
        scheme, _, presented = authorization.strip().partition(b" ")
        if scheme.lower() != b"bearer":
            return False
        return hmac.compare_digest(presented.strip(), self._expected)


UNAUTHORIZED = "missing or wrong bearer token (send 'authorization: Bearer <token>')"
