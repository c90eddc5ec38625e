"""An S3-compatible object store (AWS S3, MinIO, Ceph RGW, Garage, ...) through boto3.

``S3Objects`` is the one adapter: named objects under ``s3://bucket/prefix``, written from local
files (multipart above a threshold, so a 4 GiB package never sits in memory) or bytes, read
whole, by range, or streamed. It speaks the plain S3 HTTP API and nothing vendor-specific.
botocore's exceptions stop here: callers see ``StorageUnavailable`` (the store cannot be reached
or refused us) or ``FileNotFoundError`` (no such object), as the local folder would raise.

Checksums: every object written from a file or bytes carries its sha256 in the object's metadata
(``x-amz-meta-sha256``); ``download`` and ``stream`` hash what they read and refuse content that
disagrees, so a damaged or substituted object is never passed on.
"""

from __future__ import annotations

import hashlib
import logging
import os
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from control_plane.core.errors import StorageUnavailable

logger = logging.getLogger(__name__)

READ_CHUNK = 1 << 20
SHA256_META = "sha256"


class ChecksumMismatch(StorageUnavailable):
    """An object's content does not match the sha256 it was stored with."""


@dataclass(frozen=True)
class S3Location:
    bucket: str
    prefix: str  # "" or "a/b/" (always ends with "/")

    @classmethod
    def parse(cls, url: str) -> S3Location:
        """``s3://bucket`` or ``s3://bucket/some/prefix``."""
        parsed = urlparse(url)
        if parsed.scheme != "s3" or not parsed.netloc:
            raise ValueError(f"not an s3://bucket[/prefix] URL: {url!r}")
        prefix = parsed.path.strip("/")
        return cls(parsed.netloc, f"{prefix}/" if prefix else "")

    def url(self, key: str = "") -> str:
        return f"s3://{self.bucket}/{self.prefix}{key}"


@dataclass(frozen=True)
class S3Options:
    """How to reach the store; the fields of the ``storage`` settings section."""

    endpoint_url: str | None = None
    region: str = "us-east-1"
    access_key_id: str | None = None
    secret_access_key: str | None = None
    multipart_threshold: int = 64 << 20
    part_size: int = 16 << 20


def _error_code(exc: Exception) -> str:
    response = getattr(exc, "response", None) or {}
    return str(response.get("Error", {}).get("Code", ""))


class S3Objects:
    """Objects named relative to one ``s3://bucket/prefix``."""

    def __init__(self, location: S3Location, options: S3Options) -> None:
        import boto3
        from boto3.s3.transfer import TransferConfig
        from botocore.config import Config

        self.location = location
        self.options = options
        session = boto3.session.Session(
            aws_access_key_id=options.access_key_id,
            aws_secret_access_key=options.secret_access_key,
            region_name=options.region,
        )
        self.client: Any = session.client(
            "s3",
            endpoint_url=options.endpoint_url,
            config=Config(retries={"max_attempts": 5, "mode": "standard"}),
        )
        self.transfer = TransferConfig(
            multipart_threshold=options.multipart_threshold,
            multipart_chunksize=options.part_size,
            max_concurrency=4,
        )

    # --- errors ------------------------------------------------------------------------------

    def _fail(self, exc: Exception, what: str, key: str) -> Exception:
        """Translate a botocore error into ours (at this boundary only)."""
        if _error_code(exc) in ("404", "NoSuchKey", "NotFound"):
            return FileNotFoundError(f"{self.location.url(key)}: no such object")
        return StorageUnavailable(f"object store: {what} {self.location.url(key)} failed: {exc}")

    def key(self, name: str) -> str:
        return self.location.prefix + name

    def check(self) -> None:
        """Fail clearly at start when the bucket is missing or unreachable."""
        try:
            self.client.head_bucket(Bucket=self.location.bucket)
        except Exception as exc:
            endpoint = self.options.endpoint_url or "AWS"
            raise StorageUnavailable(
                f"object store bucket {self.location.bucket!r} at {endpoint} is not usable: {exc}"
            ) from None

    # --- writing -----------------------------------------------------------------------------

    def put_file(self, name: str, source: Path, sha256: str | None = None) -> None:
        """Upload a local file (multipart above ``multipart_threshold``); an interrupted
        multipart upload is aborted by boto3's transfer manager, leaving no object."""
        digest = sha256 or _sha256_file(source)
        try:
            self.client.upload_file(
                str(source),
                self.location.bucket,
                self.key(name),
                Config=self.transfer,
                ExtraArgs={"Metadata": {SHA256_META: digest}},
            )
        except Exception as exc:
            raise self._fail(exc, "upload to", name) from None

    def put_bytes(self, name: str, data: bytes) -> None:
        try:
            self.client.put_object(
                Bucket=self.location.bucket,
                Key=self.key(name),
                Body=data,
                Metadata={SHA256_META: hashlib.sha256(data).hexdigest()},
            )
        except Exception as exc:
            raise self._fail(exc, "write of", name) from None

    def delete(self, name: str) -> None:
        try:
            self.client.delete_object(Bucket=self.location.bucket, Key=self.key(name))
        except Exception as exc:
            raise self._fail(exc, "delete of", name) from None

    # --- reading -----------------------------------------------------------------------------

    def head(self, name: str) -> dict[str, Any]:
        try:
            return dict(self.client.head_object(Bucket=self.location.bucket, Key=self.key(name)))
        except Exception as exc:
            raise self._fail(exc, "lookup of", name) from None

    def exists(self, name: str) -> bool:
        try:
            self.head(name)
        except FileNotFoundError:
            return False
        return True

    def size(self, name: str) -> int:
        return int(self.head(name)["ContentLength"])

    def read_range(self, name: str, offset: int, length: int) -> bytes:
        if length <= 0:
            return b""
        try:
            response = self.client.get_object(
                Bucket=self.location.bucket,
                Key=self.key(name),
                Range=f"bytes={offset}-{offset + length - 1}",
            )
            return bytes(response["Body"].read())
        except Exception as exc:
            if _error_code(exc) == "InvalidRange":  # offset at or past the end
                return b""
            raise self._fail(exc, "read of", name) from None

    def stream(self, name: str, sha256: str | None = None) -> Iterator[bytes]:
        """The object's bytes in chunks, checked against ``sha256`` (or the one stored with it)
        once the last chunk is read: a mismatch raises ``ChecksumMismatch`` instead of ending."""
        try:
            response = self.client.get_object(Bucket=self.location.bucket, Key=self.key(name))
        except Exception as exc:
            raise self._fail(exc, "read of", name) from None
        expected = sha256 or response.get("Metadata", {}).get(SHA256_META)
        hasher = hashlib.sha256()
        body = response["Body"]
        try:
            while chunk := body.read(READ_CHUNK):
                hasher.update(chunk)
                yield chunk
        finally:
            body.close()
        if expected and hasher.hexdigest() != expected:
            raise ChecksumMismatch(
                f"{self.location.url(self.key(name))}: content sha256 {hasher.hexdigest()} "
                f"is not the stored {expected}"
            )

    def read(self, name: str, sha256: str | None = None) -> bytes:
        return b"".join(self.stream(name, sha256))

    def download(self, name: str, target: Path, sha256: str | None = None) -> None:
        """Write the object to ``target`` (checked; renamed into place only when it matches)."""
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.with_name(f".{target.name}.{os.getpid()}.{threading.get_ident()}.part")
        try:
            with open(tmp, "wb") as f:
                for chunk in self.stream(name, sha256):
                    f.write(chunk)
            os.replace(tmp, target)
        finally:
            tmp.unlink(missing_ok=True)

    def names(self, prefix: str = "") -> list[str]:
        """Names (relative to the location) of the objects under ``prefix``."""
        out: list[str] = []
        paginator = self.client.get_paginator("list_objects_v2")
        try:
            for page in paginator.paginate(Bucket=self.location.bucket, Prefix=self.key(prefix)):
                out += [o["Key"][len(self.location.prefix) :] for o in page.get("Contents", [])]
        except Exception as exc:
            raise self._fail(exc, "listing of", prefix) from None
        return sorted(out)


def _sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(READ_CHUNK):
            h.update(chunk)
    return h.hexdigest()
