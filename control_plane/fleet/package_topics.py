"""Shared package topics: who may read them, and which requested chunks go there.

A package's chunks can be published once on ``<root>/_packages/<digest>`` (``protos.fleet_topics
.package_topic``) for every device pulling it, and the broker fans them out, instead of the
control plane sending each device its own copy through paho. Two pieces:

- ``PackageGrants``: which devices may read which package topic, i.e. every package in a device's
  current desired state (``deployments.service.package_grants``), the same rule as the chunk
  requests it may make. The generated Mosquitto ACL (``broker_config.render_acl``) and the
  embedded broker (``embedded_broker.Identities.may``) both read it; ``FleetService`` refreshes it
  whenever desired states change, so a grant appears with the deployment and goes with it.
- ``ChunkFanout``: per chunk request, which indexes to publish on the shared topic, which on the
  requester's own ``chunks/data``, and which to leave out because they are already on their way
  to it. Devices keep asking for the chunks they lack exactly as before; this only changes how
  the answers travel:

  * a chunk published on the shared topic after the requester's first request for the package
    arrived (its agent subscribes to the topic before asking, so the broker delivered that
    publish to it), and at most ``window_s`` before this request arrived, is not sent again:
    many requests, one publish. The window counts from the request's arrival, not from when the
    worker gets to it: a request that waited in the queue behind others (a loaded control plane)
    is still one the publish answers, and re-publishing it would send every device a duplicate;
  * otherwise, when other devices asked for the package within ``active_s``, it goes on the
    shared topic (they are pulling the same bytes);
  * otherwise (a single late device), and whenever a device asks again for an index it asked
    for before (it lost it: a reconnect, a dropped message, an agent that does not read the
    shared topic), it goes on the device's own topic.

  ``window_s`` stays below the agents' ``chunk_timeout_s``, so a chunk a device lost is asked
  again after the window and always sent.
"""

from __future__ import annotations

import threading
from collections.abc import Collection, Mapping
from dataclasses import dataclass, field

#: A chunk published on the shared topic is not published again for this long (seconds).
COALESCE_WINDOW_S = 2.0
#: A device that asked for a package this recently (seconds) counts as pulling it.
ACTIVE_S = 3.0
#: Package state not touched for this long (seconds) is forgotten.
IDLE_S = 120.0


class PackageGrants:
    """Device id -> the package digests whose shared topic it may read (thread-safe swaps)."""

    def __init__(self) -> None:
        self._by_device: dict[str, frozenset[str]] = {}

    def replace(self, grants: Mapping[str, Collection[str]]) -> bool:
        """Take a new mapping; True when it differs from the current one."""
        new = {d: frozenset(p) for d, p in grants.items() if p}
        changed = new != self._by_device
        self._by_device = new  # one reference swap: readers see the old or the new mapping
        return changed

    def may_read(self, device_id: str, package_digest: str) -> bool:
        return package_digest in self._by_device.get(device_id, frozenset())

    def of(self, device_id: str) -> frozenset[str]:
        return self._by_device.get(device_id, frozenset())

    def as_dict(self) -> dict[str, frozenset[str]]:
        return dict(self._by_device)


@dataclass(frozen=True)
class ChunkPlan:
    """Where the chunks of one request go (indexes in request order)."""

    shared: list[int]
    direct: list[int]
    coalesced: int


@dataclass
class _Member:
    joined: float  # arrival of its first request for the package
    last_seen: float
    asked: bytearray  # per index: 1 once it asked for it


@dataclass
class _Package:
    members: dict[str, _Member] = field(default_factory=dict)
    shared_at: dict[int, float] = field(default_factory=dict)
    touched: float = 0.0


class ChunkFanout:
    """Decides, per chunk request, what is published where (see the module's docstring).

    Called from the control plane's one chunk worker thread; a lock keeps it safe anyway.
    """

    def __init__(
        self,
        window_s: float = COALESCE_WINDOW_S,
        active_s: float = ACTIVE_S,
        idle_s: float = IDLE_S,
    ) -> None:
        self.window_s, self.active_s, self.idle_s = window_s, active_s, idle_s
        self._packages: dict[str, _Package] = {}
        self._lock = threading.Lock()
        self._last_prune = 0.0
        self.counts = {"shared": 0, "direct": 0, "coalesced": 0}

    def plan(
        self,
        device_id: str,
        package_digest: str,
        chunk_count: int,
        indexes: list[int],
        arrived: float,
        now: float,
    ) -> ChunkPlan:
        """``arrived``: when the request reached the control plane; ``now``: when it is served
        (the shared publishes it plans happen at ``now``). Both ``time.monotonic()``."""
        with self._lock:
            self._prune(now)
            pkg = self._packages.setdefault(package_digest, _Package())
            pkg.touched = now
            me = pkg.members.get(device_id)
            if me is None or len(me.asked) != chunk_count:
                me = _Member(arrived, now, bytearray(chunk_count))
                pkg.members[device_id] = me
            others = any(
                m.last_seen >= now - self.active_s for d, m in pkg.members.items() if d != device_id
            )
            me.last_seen = now
            shared: list[int] = []
            direct: list[int] = []
            coalesced = 0
            for i in indexes:
                repeat = bool(me.asked[i])
                me.asked[i] = 1
                sent = pkg.shared_at.get(i)
                if repeat:
                    direct.append(i)
                elif sent is not None and sent >= me.joined and arrived - sent < self.window_s:
                    coalesced += 1
                elif others:
                    shared.append(i)
                    pkg.shared_at[i] = now
                else:
                    direct.append(i)
            self.counts["shared"] += len(shared)
            self.counts["direct"] += len(direct)
            self.counts["coalesced"] += coalesced
            return ChunkPlan(shared, direct, coalesced)

    def forget(self, package_digests: Collection[str] | None = None) -> None:
        """Drop the state of these packages (all when None)."""
        with self._lock:
            if package_digests is None:
                self._packages.clear()
            else:
                for digest in package_digests:
                    self._packages.pop(digest, None)

    def _prune(self, now: float) -> None:
        if now - self._last_prune < self.idle_s / 4:
            return
        self._last_prune = now
        for digest in [d for d, p in self._packages.items() if now - p.touched > self.idle_s]:
            del self._packages[digest]
