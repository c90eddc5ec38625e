"""The models the agent serves: every loaded version and which one is active per model.

Swapping the active version is one dict assignment on the event loop, so a request either sees
the old version or the new one; a request already holding the old version finishes on it, and old
versions are closed only after ``max_versions_per_model`` newer ones exist. That is what makes a
hot swap lose no request.

A model may also have a traffic split (``traffic.py``): requests without a version are then
routed over several versions by weight, and a share mirrored to a shadow version. The split's
``Route`` is swapped the same way, one assignment, so weights change under load without a failed
request. Versions a split refers to are never evicted; removing one drops it from the split.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterator

from edge_agent.errors import ModelNotFound
from edge_agent.metrics import METRICS
from edge_agent.serving.served_model import ServedModel
from edge_agent.serving.traffic import Route, TrafficSplit

log = logging.getLogger(__name__)

_DRAIN_GRACE_S = 5.0


class ModelRepository:
    def __init__(self, max_versions_per_model: int = 2) -> None:
        self._versions: dict[str, dict[str, ServedModel]] = {}
        self._active: dict[str, str] = {}
        self._order: dict[str, list[str]] = {}  # versions in the order they were added
        self._routes: dict[str, Route] = {}  # models with a traffic split only
        self.max_versions = max_versions_per_model

    def get(self, name: str, version: str = "") -> ServedModel:
        versions = self._versions.get(name)
        if not versions:
            raise ModelNotFound(f"model {name!r} is not installed")
        if not version:
            version = self._active.get(name, "")
            if not version:
                raise ModelNotFound(f"model {name!r} has no active version")
        served = versions.get(version)
        if served is None:
            have = ", ".join(sorted(versions)) or "none"
            raise ModelNotFound(f"model {name!r} has no version {version!r} (loaded: {have})")
        return served

    def route(self, name: str, version: str = "") -> tuple[ServedModel, ServedModel | None]:
        """The version that answers a request, and the shadow version to mirror it to, if any.

        A request naming a version gets that version and no shadow (the client chose). Without
        one, the model's split picks (the active version when it has no weights), and every
        ``1 / shadow_fraction``-th request is also due to the shadow version.
        """
        route = self._routes.get(name)
        if version or route is None:
            return self.get(name, version), None
        served = self.get(name, route.pick())
        if not route.take_shadow():
            return served, None
        shadow = self._versions[name].get(route.split.shadow_version)
        return served, shadow if shadow is not served else None

    def traffic(self, name: str) -> TrafficSplit:
        """The model's split (the default, empty one when none is set)."""
        if name not in self._versions:
            raise ModelNotFound(f"model {name!r} is not installed")
        route = self._routes.get(name)
        return route.split if route is not None else TrafficSplit()

    def splits(self) -> dict[str, TrafficSplit]:
        """Every model's split that is not the default."""
        return {n: r.split for n, r in self._routes.items()}

    def set_traffic(self, name: str, split: TrafficSplit) -> None:
        """Check ``split`` against the loaded versions and swap it in (``InvalidInput`` if not)."""
        if name not in self._versions:
            raise ModelNotFound(f"model {name!r} is not installed")
        split.check(name, self._versions[name])
        if split.is_default:
            self._routes.pop(name, None)
        else:
            self._routes[name] = Route(split)

    def has(self, name: str, version: str) -> bool:
        return version in self._versions.get(name, {})

    def active_version(self, name: str) -> str | None:
        return self._active.get(name)

    def names(self) -> list[str]:
        return sorted(self._versions)

    def versions(self, name: str) -> list[ServedModel]:
        return [self._versions[name][v] for v in self._order.get(name, [])]

    def __iter__(self) -> Iterator[ServedModel]:
        for name in self.names():
            yield from self.versions(name)

    def add(self, served: ServedModel) -> ServedModel | None:
        """Add a loaded version (not yet active); returns the object it replaced, if any."""
        by_version = self._versions.setdefault(served.name, {})
        old = by_version.get(served.version)
        by_version[served.version] = served
        order = self._order.setdefault(served.name, [])
        if served.version in order:
            order.remove(served.version)
        order.append(served.version)
        METRICS.models_ready.set(sum(len(v) for v in self._versions.values()))
        return old if old is not served else None

    def evict_extra(self, name: str, keep_also: tuple[str, ...] = ()) -> list[ServedModel]:
        """Drop the oldest inactive versions beyond the cap; the caller closes them later.

        ``keep_also`` names versions to spare besides the active one and the split's: an
        activating install passes the version it replaced, the one a local guard or a rollback
        re-activates without a download. Load order alone would not protect it: at start-up the
        active version is loaded first, so it is the oldest once another is installed.
        """
        order = self._order.get(name, [])
        evicted = []
        while len(order) > self.max_versions:
            route = self._routes.get(name)
            pinned = route.split.versions() if route is not None else set()
            keep = {self._active.get(name), *pinned, *keep_also}
            victim = next((v for v in order if v not in keep), None)
            if victim is None:
                break
            evicted.append(self.remove(name, victim))
        return [e for e in evicted if e is not None]

    def set_active(self, name: str, version: str) -> None:
        if not self.has(name, version):
            raise ModelNotFound(f"model {name!r} has no loaded version {version!r}")
        self._active[name] = version

    def remove(self, name: str, version: str) -> ServedModel | None:
        served = self._versions.get(name, {}).pop(version, None)
        if served is not None:
            self._order[name].remove(version)
            if self._active.get(name) == version:
                del self._active[name]
            route = self._routes.get(name)
            if route is not None and version in route.split.versions():
                split = route.split.without(version)
                if split.is_default:
                    del self._routes[name]
                else:
                    self._routes[name] = Route(split)
            if not self._versions[name]:
                del self._versions[name]
                del self._order[name]
                self._routes.pop(name, None)
        METRICS.models_ready.set(sum(len(v) for v in self._versions.values()))
        return served


async def close_later(models: list[ServedModel], grace_s: float = _DRAIN_GRACE_S) -> None:
    """Close evicted versions after in-flight requests on them had time to finish."""
    if not models:
        return
    await asyncio.sleep(grace_s)
    for m in models:
        try:
            await m.close()
        except Exception:  # closing must never take the agent down
            log.exception("closing %s:%s failed", m.name, m.version)
