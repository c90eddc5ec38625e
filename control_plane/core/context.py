"""Everything a running control plane shares: settings, database, blobs, trust store, fleet.

Built once by the app's lifespan (or a CLI command) and handed to services, which keeps services
free of globals and lets tests build as many independent control planes as they like.
"""

from __future__ import annotations

import datetime as dt
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol, TypeVar

from sqlalchemy import Engine
from sqlalchemy.orm import Session, sessionmaker

from control_plane.core.auth import Authenticator
from control_plane.core.blobs import BlobStore, make_blob_store, object_store
from control_plane.core.database import make_engine, make_session_factory
from control_plane.core.settings import Settings
from model_packager.signing import TrustStore, public_key_pem

logger = logging.getLogger(__name__)


class FleetPublisher(Protocol):
    """What services need from the fleet channel (implemented by fleet.service.FleetService)."""

    def publish_desired(self, device_ids: list[str]) -> None:
        """Publish the current retained desired state of each device."""

    def forget_device(self, device_id: str) -> None:
        """Clear a deleted device's retained topics."""

    def devices_changed(self) -> None:
        """A device was registered or deleted: bring the broker's credentials and ACL up to date."""

    def counters(self, device_id: str) -> dict[str, int]:
        """What the fleet channel refused from the device since the control plane started."""

    def publish_trust(self) -> None:
        """Publish the registry's signed trust set to every device (after a key rotation)."""


class NullPublisher:
    """Used when no fleet channel runs (CLI commands, some tests)."""

    def publish_desired(self, device_ids: list[str]) -> None:
        logger.debug("no fleet channel: desired state of %s not published", device_ids)

    def forget_device(self, device_id: str) -> None:
        logger.debug("no fleet channel: retained topics of %s not cleared", device_id)

    def devices_changed(self) -> None:
        logger.debug("no fleet channel: broker files not rewritten")

    def counters(self, device_id: str) -> dict[str, int]:
        return {}

    def publish_trust(self) -> None:
        logger.debug("no fleet channel: trust set not published")


@dataclass
class AppContext:
    settings: Settings
    engine: Engine
    sessions: sessionmaker[Session]
    blobs: BlobStore
    trust: TrustStore
    publisher: FleetPublisher = field(default_factory=NullPublisher)
    # The broker the fleet channel uses (the embedded one's URL when none is configured).
    broker_url: str = ""
    # Resolves API tokens and session cookies (the users domain's, plugged in by the app);
    # None: only the settings' api_token is accepted, as the bootstrap admin.
    authenticator: Authenticator | None = None
    # The S3-compatible store of ``storage.url`` (None: local folders). One client, shared by
    # the blob store and the dataset store.
    objects: Any = None
    # Retired registry keys -> the end of their grace (Unix seconds), kept by
    # control_plane/registry/keys/service.py:
    # packages they signed are refused after it, and bundles stop carrying them.
    key_not_after: dict[str, float] = field(default_factory=dict)

    @classmethod
    def from_settings(cls, settings: Settings) -> AppContext:
        settings.data_dir.mkdir(parents=True, exist_ok=True)
        settings.staging_dir.mkdir(parents=True, exist_ok=True)
        engine = make_engine(settings.resolved_database_url)
        objects = object_store(settings)
        return cls(
            settings=settings,
            engine=engine,
            sessions=make_session_factory(engine),
            blobs=make_blob_store(settings, objects),
            objects=objects,
            trust=TrustStore.from_paths(settings.registry.trusted_keys),
            broker_url=settings.mqtt.url or "",
        )

    def trusted_key_pems(self) -> list[str]:
        return [
            public_key_pem(k)
            for kid, k in sorted(self.trust.keys.items())
            if self.retired_key_refusal(kid) is None
        ]

    def retired_key_refusal(self, kid: str, now: float | None = None) -> str | None:
        """Why a package signed by ``kid`` is refused (a retired key past its grace), or None."""
        end = self.key_not_after.get(kid)
        if end is None or (time.time() if now is None else now) < end:
            return None
        when = dt.datetime.fromtimestamp(end, dt.UTC).isoformat(timespec="seconds")
        return f"package is signed by key {kid}, retired and past its grace period ({when})"

    def close(self) -> None:
        self.engine.dispose()


_app_state_lock = threading.Lock()
S = TypeVar("S")


def app_state(app: Any, name: str, start: Callable[[AppContext], S]) -> S:
    """``app.state.<name>``, started from the app's context on first use if the lifespan did not.

    The app's lifespan starts the long-lived parts (the training runtime, the conversion
    executor); an app built without running its lifespan (some tests) gets them lazily, once.
    """
    with _app_state_lock:
        value: S | None = getattr(app.state, name, None)
        if value is None:
            value = start(app.state.ctx)
            setattr(app.state, name, value)
        return value
