"""The registry's signing keys: the one that signs now, the retired ones, and their rotation.

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

Rotation (``rotate``, ``POST /registry/keys/rotate``) writes a new key pair under
``<data_dir>/keys/``, makes it the one that signs, and retires the previous one with a grace
period (``key_grace_period_s``). The ``signing_keys`` table is the record: which file signs now
(generation N) and until when each retired key's packages are accepted. Devices learn of it
through ``signed_trust_set``: every key with its end, version N, signed by each key still in
use, so a device that trusts any one of them (even one that slept through several rotations
within the grace) can check it. Once the first key is recorded the table, not
``signing_key``, says which key signs.
"""

from __future__ import annotations

import datetime as dt
import logging
import time
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy import func, select
from sqlalchemy.exc import IntegrityError

from control_plane.core.context import AppContext
from control_plane.core.errors import Conflict, InvalidRequest
from control_plane.registry.models import SigningKey
from model_packager.errors import SignatureError
from model_packager.signing import (
    generate_keypair,
    key_id,
    load_private_key,
    load_public_key,
    public_key_pem,
    sign_manifest,
)
from protos.fleet_trust import TrustedKey, TrustSet, encode_signed, encode_trust_set

logger = logging.getLogger(__name__)

CURRENT = "current"
RETIRED = "retired"


@dataclass(frozen=True)
class KeyView:
    key_id: str
    generation: int
    state: str
    created_at: dt.datetime
    retired_at: dt.datetime | None
    not_after: dt.datetime | None


def load_signing_key(ctx: AppContext) -> Path | None:
    """At start: trust the registry's keys, creating the first in dev mode; the key file, or None.

    Outside dev mode a key named by ``signing_key`` must exist (a typo must not start a registry
    that cannot sign); with no key configured and none at the default path the control plane
    starts, logs why, and refuses model registrations until one is installed.
    """
    if _current(ctx) is not None:
        return signing_key_path(ctx)
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
    """The current private key file; the first is generated in dev mode when missing.

    Every recorded key (current and retired) becomes trusted by the control plane, and the
    retired ones' grace ends are noted (``ctx.key_not_after``).
    """
    current = _current(ctx)
    if current is not None:
        path = Path(current.private_key_path)
        if not path.is_file():
            raise InvalidRequest(
                f"the registry's signing key {current.key_id} should be at {path}, which is "
                "missing: restore it from the backup of the control plane's data folder"
            )
        refresh_trust(ctx)
        return path
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
    path = path.absolute()  # conversion workers run in their own folders
    public = load_private_key(path).public_key()
    _record(
        ctx,
        SigningKey(
            key_id=key_id(public),
            generation=1,
            public_key_pem=public_key_pem(public),
            private_key_path=str(path),
            state=CURRENT,
        ),
    )
    refresh_trust(ctx)
    return path


def rotate(ctx: AppContext) -> KeyView:
    """Make a new key the one that signs; the previous one retires with the grace period.

    The caller publishes the new trust set (``ctx.publisher.publish_trust``) once this returns.
    """
    signing_key_path(ctx)  # the first key is recorded before it can be retired
    now = dt.datetime.now(dt.UTC)
    grace = ctx.settings.registry.key_grace_period_s
    with ctx.sessions() as session:
        generation = (session.scalar(select(func.max(SigningKey.generation))) or 0) + 1
        folder = ctx.settings.data_dir / "keys"
        private = (folder / f"signing-{generation}.key").absolute()
        kid = generate_keypair(private, private.with_suffix(".pub"))
        for old in session.scalars(select(SigningKey).where(SigningKey.state == CURRENT)):
            old.state = RETIRED
            old.retired_at = now
            old.not_after = now + dt.timedelta(seconds=grace)
        public = load_public_key(private.with_suffix(".pub"))
        row = SigningKey(
            key_id=kid,
            generation=generation,
            public_key_pem=public_key_pem(public),
            private_key_path=str(private),
            state=CURRENT,
            created_at=now,
        )
        session.add(row)
        try:
            session.commit()
        except IntegrityError:
            session.rollback()
            private.unlink(missing_ok=True)
            private.with_suffix(".pub").unlink(missing_ok=True)
            raise Conflict("another key rotation finished first; list the keys and retry") from None
        view = _view(row)
    refresh_trust(ctx)
    logger.info("registry signing key rotated: %s is generation %d", kid, generation)
    return view


def list_keys(ctx: AppContext) -> list[KeyView]:
    with ctx.sessions() as session:
        rows = session.scalars(select(SigningKey).order_by(SigningKey.generation.desc()))
        return [_view(r) for r in rows]


def refresh_trust(ctx: AppContext) -> None:
    """Trust every recorded key and note the retired ones' grace ends in the context."""
    with ctx.sessions() as session:
        rows = list(session.scalars(select(SigningKey)))
    for row in rows:
        ctx.trust.keys.setdefault(row.key_id, load_public_key(row.public_key_pem))
        if row.not_after is not None:
            ctx.key_not_after[row.key_id] = _aware(row.not_after).timestamp()


def signed_trust_set(ctx: AppContext) -> tuple[int, bytes] | None:
    """The ``SignedTrustSet`` devices receive, with its version; None before any rotation.

    Signed by every key whose packages are still accepted and whose private file is here: a
    device that slept through two rotations still trusts one of them.
    """
    with ctx.sessions() as session:
        rows = list(session.scalars(select(SigningKey).order_by(SigningKey.generation)))
    if len(rows) < 2:
        return None
    now = time.time()
    keys = tuple(
        TrustedKey(
            r.key_id,
            r.public_key_pem,
            int(_aware(r.not_after).timestamp()) if r.not_after is not None else 0,
        )
        for r in rows
    )
    version = rows[-1].generation
    body = encode_trust_set(TrustSet(version=version, keys=keys, issued_at=int(now)))
    signatures = []
    for row, key in zip(rows, keys, strict=True):
        if key.expired(now):
            continue
        try:
            signatures.append(sign_manifest(body, load_private_key(Path(row.private_key_path))))
        except SignatureError as exc:
            logger.warning("trust set not signed by %s: %s", row.key_id, exc)
    if not signatures:
        logger.error("no signing key can sign the trust set; devices will not receive it")
        return None
    return version, encode_signed(body, signatures)


def _current(ctx: AppContext) -> SigningKey | None:
    with ctx.sessions() as session:
        row = session.scalars(select(SigningKey).where(SigningKey.state == CURRENT)).first()
        if row is not None:
            session.expunge(row)
        return row


def _record(ctx: AppContext, row: SigningKey) -> None:
    with ctx.sessions() as session:
        if session.scalar(select(func.count()).select_from(SigningKey)):
            return  # recorded meanwhile (another replica's start)
        session.add(row)
        try:
            session.commit()
        except IntegrityError:
            session.rollback()


def _aware(t: dt.datetime) -> dt.datetime:
    return t if t.tzinfo is not None else t.replace(tzinfo=dt.UTC)  # SQLite drops the zone


def _view(row: SigningKey) -> KeyView:
    return KeyView(
        key_id=row.key_id,
        generation=row.generation,
        state=row.state,
        created_at=_aware(row.created_at),
        retired_at=_aware(row.retired_at) if row.retired_at else None,
        not_after=_aware(row.not_after) if row.not_after else None,
    )
