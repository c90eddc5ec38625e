"""Delta updates on the fleet channel: a package's chunk index and its chunks by digest.

A device that holds chunks of a desired package in packages it installed asks for the package's
chunk index (``ChunkRequest.cdc_index``), then for the content-defined chunks it lacks, named by
sha256 (``ChunkRequest.cdc_sha256``). Both are answered here, on the device's own
``chunks/data``, with the same checks as fixed chunks: the package must be in the device's
desired state (checked by the caller), at most ``MAX_CHUNK_INDEXES_PER_REQUEST`` chunks a
request, and every chunk's bytes are checked against its digest before they are sent.
"""

from __future__ import annotations

from control_plane.core.errors import InvalidRequest
from control_plane.fleet import codec
from control_plane.registry.packages.service import PackageService
from protos import fleet_topics as topics


def delta_answers(
    packages: PackageService,
    package_digest: str,
    request_id: str,
    *,
    want_index: bool,
    digests: list[bytes],
) -> list[bytes]:
    """The ChunkData payloads answering a delta request, in request order.

    Raises a ``ControlPlaneError`` (sent back as one refusal) for a package without a chunk
    index, a malformed or unknown digest, or too many chunks.
    """
    wanted = list(dict.fromkeys(digests))
    if len(wanted) > topics.MAX_CHUNK_INDEXES_PER_REQUEST:
        raise InvalidRequest(f"at most {topics.MAX_CHUNK_INDEXES_PER_REQUEST} chunks per request")
    if any(len(d) != 32 for d in wanted):
        raise InvalidRequest("chunk digests are raw 32-byte sha256 values")
    encoded, index = packages.chunk_index(package_digest)
    out = []
    if want_index:
        out.append(codec.chunk_index_to_proto(package_digest, encoded, index.count, request_id))
    for chunk in packages.read_cdc_chunks(package_digest, wanted):
        out.append(codec.chunk_to_proto(package_digest, chunk, index.count, request_id, cdc=True))
    return out
