"""Turn the control plane's device config bundle into the agent's YAML config.

The bundle (``POST /api/v1/devices``) is ``{device_id, mqtt: {url, client_id, username, password,
topic_prefix}, trusted_keys_pem: [...]}``. ``FleetSettings`` names its first fields like the
``mqtt`` object, so that object becomes the ``fleet`` section unchanged; the only conversion is
writing the PEM keys to files, because ``trusted_keys`` names files (the same setting serves
keys installed by other means).
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

from edge_agent.fsutil import atomic_write_bytes


def config_from_bundle(bundle: dict[str, Any], keys_dir: Path, **extra: Any) -> dict[str, Any]:
    """The agent config as a dict (dump it as YAML); writes the bundle keys into ``keys_dir``."""
    keys = []
    for pem in bundle.get("trusted_keys_pem", []):
        path = Path(keys_dir) / f"{hashlib.sha256(pem.encode()).hexdigest()[:16]}.pub"
        atomic_write_bytes(path, pem.encode())
        keys.append(str(path))
    return {
        "device_id": bundle["device_id"],
        "trusted_keys": keys,
        "fleet": dict(bundle["mqtt"]),
        **extra,
    }
