"""The control plane's one error tree.

Services raise these; ``control_plane.core.http_errors`` maps each class to an HTTP status in one
place.
Third-party exceptions (model_packager, SQLAlchemy, paho) are translated where they are caught.
"""

from __future__ import annotations


class ControlPlaneError(Exception):
    """Base of every error the control plane reports to a caller."""


class NotFound(ControlPlaneError):
    """The named resource does not exist."""


class Conflict(ControlPlaneError):
    """The request clashes with existing state (e.g. a package name and version already taken)."""


class InvalidRequest(ControlPlaneError):
    """The request is well-formed but asks for something impossible."""


class PackageRejected(ControlPlaneError):
    """An uploaded package failed verification (signature, digests, structure)."""


class PayloadTooLarge(ControlPlaneError):
    """An upload exceeds the configured limit."""


class ArchiveRefused(ControlPlaneError):
    """An uploaded zip is refused as a whole (see ``control_plane.core.archives``).

    A marker base, so code that reports problems per item (a dataset import) can let these pass:
    a forged or oversized member says the archive is hostile, not that one sample is bad.
    """


class InvalidArchive(ArchiveRefused, InvalidRequest):
    """An uploaded zip is malformed or unsafe (unsafe path, symlink, encrypted, corrupt, forged)."""


class ArchiveTooLarge(ArchiveRefused, PayloadTooLarge):
    """An uploaded zip is over one of its kind's limits (members, file size, total size)."""


class Unauthorized(ControlPlaneError):
    """Missing or wrong credentials."""


class Forbidden(ControlPlaneError):
    """Valid credentials whose role does not allow the request (HTTP 403, not 401: signing in
    again would not help)."""


class BrokerUnavailable(ControlPlaneError):
    """The MQTT broker cannot be reached or refused the control plane."""


class Unavailable(ControlPlaneError):
    """What the request needs is not running right now (e.g. no replica of a service)."""


class StorageUnavailable(Unavailable):
    """The object store (an S3-compatible service) cannot be reached, refused the request, or
    returned content that fails its checksum."""
