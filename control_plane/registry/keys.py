"""The registry's signing key.

The control plane signs the packages it converts, and every device must trust that key before
its first registry package arrives, so the key is loaded (in dev mode created) when the control
plane starts (``load_signing_key``), not at the first registration: a device registered before
any model then already has the key in its config bundle, and a restarted control plane keeps
handing out the same key (it lives on disk). ``signing_key`` names it; without it the default
path under ``data_dir`` is used, and in dev mode a missing key is generated there (production
refuses, like default secrets: a key that appears by itself on a server is one nobody has backed
up or put on the devices). The public key is added to the control plane's trust store, so
registered packages pass the same verification as uploads and are handed to devices in their
config bundle.
"""

from __future__ import annotations

import logging
from pathlib import Path

from control_plane.core.context import AppContext
from control_plane.core.errors import InvalidRequest
from model_packager.signing import generate_keypair, key_id, load_private_key

logger = logging.getLogger(__name__)


def load_signing_key(ctx: AppContext) -> Path | None:
    """At start: trust the registry's key, creating it in dev mode; the key file, or None.

    Outside dev mode a key named by ``signing_key`` must exist (a typo must not start a registry
    that cannot sign); with no key configured and none at the default path the control plane
    starts, logs why, and refuses model registrations until one is installed.
    """
    settings = ctx.settings
    configured = settings.registry.signing_key
    path = configured or settings.data_dir / "keys" / "signing.key"
    if path.is_file() or settings.dev_mode:
        return signing_key_path(ctx)
    if configured is not None:
        raise InvalidRequest(f"CONTROL_PLANE_SIGNING_KEY names {path}, which does not exist")
    logger.warning(
        "no registry signing key at %s: model registration is refused until "
        "CONTROL_PLANE_SIGNING_KEY names one (model-packager keygen)",
        path,
    )
    return None


def signing_key_path(ctx: AppContext) -> Path:
    """The private key file, generated in dev mode when missing; its public key becomes trusted."""
    settings = ctx.settings
    path = settings.registry.signing_key or settings.data_dir / "keys" / "signing.key"
    if not path.is_file():
        if not settings.dev_mode:
            raise InvalidRequest(
                f"no signing key at {path}: set CONTROL_PLANE_SIGNING_KEY to an Ed25519 private "
                "key (model-packager keygen) so the registry can sign packages"
            )
        kid = generate_keypair(path, path.with_suffix(".pub"))
        logger.warning("dev mode: generated registry signing key %s (%s)", path, kid)
    public = load_private_key(path).public_key()
    ctx.trust.keys.setdefault(key_id(public), public)
    return path.absolute()  # conversion workers run in their own folders
