"""Package registry: verified uploads stored by sha256, and chunk reads for the fleet channel."""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from control_plane.core.context import AppContext
from control_plane.core.errors import (
    Conflict,
    InvalidRequest,
    NotFound,
    PackageRejected,
)
from control_plane.core.uploads import stage_upload
from control_plane.registry.models import Package
from model_packager import cdc
from model_packager.archive import verify_package
from model_packager.chunk_index import ChunkIndex
from model_packager.errors import PackageError

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Chunk:
    index: int
    sha256: bytes
    data: bytes


def chunk_digests(path: Path, chunk_size: int) -> bytes:
    """Raw sha256 of each ``chunk_size`` slice of the file, concatenated."""
    out = bytearray()
    with open(path, "rb") as f:
        while piece := f.read(chunk_size):
            out += hashlib.sha256(piece).digest()
    return bytes(out)


class PackageService:
    def __init__(self, session: Session, ctx: AppContext) -> None:
        self.session = session
        self.ctx = ctx

    def upload(self, stream: BinaryIO) -> tuple[Package, bool]:
        """Verify and store an uploaded package; returns it and whether it is new.

        The upload is copied to a staging file (bounded by ``max_upload_bytes``), verified against
        the trusted keys, and only then moved into the blob store. Whatever fails, the staging
        file is removed, so a rejected upload leaves nothing behind.
        """
        settings = self.ctx.settings
        staged, digest = stage_upload(
            stream, settings.staging_dir, settings.storage.max_upload_bytes, ".edgepkg", "package"
        )
        try:
            existing = self.session.get(Package, digest)
            if existing is not None:
                return existing, False
            try:
                reader, key_id = verify_package(staged, self.ctx.trust)
            except PackageError as exc:
                raise PackageRejected(f"package rejected: {exc}") from exc
            if (refusal := self.ctx.retired_key_refusal(key_id)) is not None:
                raise PackageRejected(f"package rejected: {refusal}")
            manifest = reader.manifest
            index = cdc.chunk_file(staged).encode()
            package = Package(
                digest=digest,
                name=manifest.name,
                version=manifest.version,
                size=staged.stat().st_size,
                key_id=key_id,
                manifest=manifest.to_dict(json=True),
                chunk_size=settings.mqtt.chunk_size,
                chunk_digests=chunk_digests(staged, settings.mqtt.chunk_size),
                cdc_index=index,
                cdc_index_sha256=hashlib.sha256(index).digest(),
            )
            self.session.add(package)
            try:
                # The insert takes the row (and the name/version index entry): a concurrent upload
                # of the same package waits here until this one commits, then fails the insert.
                self.session.flush()
            except IntegrityError:
                self.session.rollback()
                stored = self.session.get(Package, digest)
                if stored is not None:  # the same package, stored by a concurrent upload
                    return stored, False
                raise Conflict(
                    f"a different package {manifest.name} {manifest.version} already exists"
                ) from None
            self.ctx.blobs.put(digest, staged)
            try:
                self.session.commit()
            except BaseException:
                self.ctx.blobs.delete(digest)
                raise
            logger.info(
                "stored package %s %s (%s, key %s)", package.name, package.version, digest, key_id
            )
            return package, True
        finally:
            staged.unlink(missing_ok=True)

    def list(self) -> list[Package]:
        return list(self.session.scalars(select(Package).order_by(Package.created_at)).all())

    def get(self, digest: str) -> Package:
        package = self.session.get(Package, digest)
        if package is None:
            raise NotFound(f"package {digest} not found")
        return package

    def check_deployable(self, package: Package) -> None:
        """Refuse a package whose signing key is retired and past its grace: devices would
        refuse it too, so the deployment could only fail."""
        if (refusal := self.ctx.retired_key_refusal(package.key_id)) is not None:
            raise InvalidRequest(f"{package.name} {package.version}: {refusal}")

    def find(self, name: str, version: str) -> Package:
        package = self.session.scalars(
            select(Package).where(Package.name == name, Package.version == version)
        ).first()
        if package is None:
            raise NotFound(f"package {name} {version} not found")
        return package

    def read_chunks(self, digest: str, indexes: list[int]) -> list[Chunk]:
        """The requested chunks of a package, each checked against its recorded sha256.

        Whether the asker may read them is the caller's question (the fleet channel serves a
        device only the packages its desired state names).
        """
        package = self.get(digest)
        count = package.chunk_count
        bad = [i for i in indexes if i >= count]
        if bad:
            raise InvalidRequest(f"chunk indexes {bad} out of range (package has {count})")
        chunks = []
        for i in indexes:
            data = self.ctx.blobs.read_range(digest, i * package.chunk_size, package.chunk_size)
            sha = hashlib.sha256(data).digest()
            if sha != package.chunk_sha256(i):
                # The blob changed under us: never send bytes that disagree with the manifest.
                raise PackageRejected(f"blob {digest} chunk {i} does not match its recorded digest")
            chunks.append(Chunk(i, sha, data))
        return chunks

    def chunk_index(self, digest: str) -> tuple[bytes, ChunkIndex]:
        """The package's chunk index, encoded (as its sha256 was taken) and decoded.

        ``NotFound`` for a package stored before chunk indexes existed (it has none).
        """
        package = self.get(digest)
        if package.cdc_index is None:
            raise NotFound(f"package {digest} has no chunk index (stored before delta updates)")
        return package.cdc_index, ChunkIndex.decode(package.cdc_index)

    def read_cdc_chunks(self, digest: str, wanted: list[bytes]) -> list[Chunk]:
        """Content-defined chunks of a package, named by sha256, each checked before it goes.

        A chunk's ``index`` is its first position in the chunk index. ``NotFound`` names a
        digest the package does not contain.
        """
        _, index = self.chunk_index(digest)
        where: dict[bytes, int] = {}
        for i, d in enumerate(index.digests):
            where.setdefault(d, i)
        unknown = [d.hex()[:16] for d in wanted if d not in where]
        if unknown:
            raise NotFound(f"package {digest} has no chunk(s) {', '.join(unknown)}")
        chunks = []
        for d in wanted:
            i = where[d]
            data = self.ctx.blobs.read_range(digest, index.offsets[i], index.sizes[i])
            if hashlib.sha256(data).digest() != d:
                raise PackageRejected(
                    f"blob {digest} chunk {d.hex()[:16]} does not match its chunk index"
                )
            chunks.append(Chunk(i, d, data))
        return chunks
