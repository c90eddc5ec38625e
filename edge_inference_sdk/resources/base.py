"""What every resource class shares: the transport, typed decoding and polling waits."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any, TypeVar
from urllib.parse import quote

from pydantic import BaseModel, TypeAdapter

from edge_inference_sdk.errors import WaitTimeout
from edge_inference_sdk.transport import Transport

M = TypeVar("M", bound=BaseModel)
T = TypeVar("T")


def seg(value: object) -> str:
    """A path segment, escaped (names may hold characters that are not URL-safe)."""
    return quote(str(value), safe="")


class ResourceBase:
    def __init__(self, transport: Transport) -> None:
        self._t = transport

    @staticmethod
    def _one(model: type[M], data: Any) -> M:
        return model.model_validate(data)

    @staticmethod
    def _many(model: type[M], data: Any) -> list[M]:
        return TypeAdapter(list[model]).validate_python(data)  # type: ignore[valid-type]

    @staticmethod
    def _wait(
        fetch: Callable[[], T],
        done: Callable[[T], bool],
        what: str,
        timeout: float | None,
        poll_s: float,
        on_poll: Callable[[T], None] | None = None,
    ) -> T:
        """Poll ``fetch`` until ``done``; ``WaitTimeout`` after ``timeout`` s (None: never)."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            item = fetch()
            if on_poll is not None:
                on_poll(item)
            if done(item):
                return item
            if deadline is not None and time.monotonic() > deadline:
                raise WaitTimeout(f"{what} not done after {timeout}s")
            time.sleep(poll_s)
