"""The agent's error tree. ``grpc/status.py`` maps each class to a gRPC status code, in one place.

Library errors (``model_packager.errors``) are translated at the boundary where the agent calls
the library, so transports only ever see these classes.
"""

from __future__ import annotations


class AgentError(Exception):
    """Base of every error the agent reports to a client."""


class InvalidInput(AgentError):
    """A request is malformed: wrong datatype, shape, byte length, names, or empty tensors."""


class ModelNotFound(AgentError):
    """No model, or no such version of it, is installed."""


class ModelNotReady(AgentError):
    """The model exists but cannot serve right now (loading, failed, or the agent is stopping)."""


class Overloaded(AgentError):
    """A bounded queue is full; the client should back off and retry."""


class InferenceFailed(AgentError):
    """The runtime failed on a request that passed validation."""


class InstallFailed(AgentError):
    """A package install failed; the previous version keeps serving."""

    def __init__(self, step: str, reason: str) -> None:
        super().__init__(f"install failed at {step}: {reason}")
        self.step = step
        self.reason = reason


class JobNotFound(AgentError):
    """No batch job with that id."""


class RegionNotFound(AgentError):
    """No shared memory region of that name is registered (the status call)."""


class Unsupported(AgentError):
    """A protocol extension the agent does not implement (CUDA shared memory)."""
