"""Errors raised by the package library.

One tree so that callers (the agent's installer, the control plane's upload route, the CLI) can
translate a whole family at their boundary without knowing which module raised it.
"""

from __future__ import annotations


class PackageError(Exception):
    """Base of every error about a model package."""


class InvalidPackage(PackageError):
    """The archive or its manifest is malformed, truncated or incomplete."""


class UnsafeArchive(InvalidPackage):
    """The archive tries to write outside its folder, holds links or devices, or exceeds limits."""


class DigestMismatch(PackageError):
    """A file's sha256 differs from the one pinned in the manifest."""


class SignatureError(PackageError):
    """The package is unsigned, signed by an untrusted key, or the signature does not verify."""


class ModelLoadError(PackageError):
    """A runtime could not load a model artifact."""


class RuntimeUnavailable(ModelLoadError):
    """The runtime a variant needs is not installed on this machine."""


class InferenceError(PackageError):
    """A runtime failed while running a model."""


class GoldenMismatch(PackageError):
    """A model's outputs on its golden vectors differ from the expected ones beyond tolerance."""


class BuildError(PackageError):
    """A package could not be built from the given inputs."""
