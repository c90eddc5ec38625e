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


class Unauthorized(ControlPlaneError):
    """Missing or wrong credentials."""


class BrokerUnavailable(ControlPlaneError):
    """The MQTT broker cannot be reached or refused the control plane."""
