"""Turn the control plane's device config bundle into the agent's YAML config.

The bundle (``POST /api/v1/devices``) is ``{device_id, mqtt: {url, client_id, username, password,
topic_prefix}, trusted_keys_pem: [...]}``. ``FleetSettings`` names its first fields like the
``mqtt`` object, so that object becomes the ``fleet`` section unchanged; the only conversion is
writing the PEM keys to files, because ``trusted_keys`` names files (the same setting serves
keys installed by other means).

Each key file is named by its key id (``<key id>.pub``, the id ``eictl keys list``, trust sets
and package signatures show), and listed by its absolute path: the agent resolves relative
paths against the directory it runs in, which a service manager rarely sets to the config's.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from edge_agent.fsutil import atomic_write_bytes
from model_packager.signing import key_id, load_public_key


def config_from_bundle(bundle: dict[str, Any], keys_dir: Path, **extra: Any) -> dict[str, Any]:
    """The agent config as a dict (dump it as YAML); writes the bundle keys into ``keys_dir``.

    A bundle key that is not an Ed25519 PEM public key raises ``SignatureError`` before any
    file is written.
    """
    pems = list(bundle.get("trusted_keys_pem", []))
    ids = [key_id(load_public_key(pem)) for pem in pems]
    keys = []
    for pem, kid in zip(pems, ids, strict=True):
        path = Path(keys_dir).resolve() / f"{kid}.pub"
        atomic_write_bytes(path, pem.encode())
        keys.append(str(path))
    return {
        "device_id": bundle["device_id"],
        "trusted_keys": keys,
        "fleet": dict(bundle["mqtt"]),
        **extra,
    }
