"""The REST proxy in front of a service's replicas: ``/services/{name}/v2/...`` -> an agent.

Requests are spread round-robin over the replicas that are running; a replica that cannot be
reached (killed, restarting) is skipped and the next one tried, so a request fails only when no
replica answers. Only the headers the protocol needs travel (content type and encoding, Triton's
``Inference-Header-Content-Length``); the control plane's own ``Authorization`` stays here.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import threading
from collections.abc import Sequence
from dataclasses import dataclass

import httpx

from control_plane.core.errors import Unavailable

logger = logging.getLogger(__name__)

FORWARDED_REQUEST = ("content-type", "content-encoding", "inference-header-content-length")
FORWARDED_RESPONSE = ("content-type", "inference-header-content-length")


@dataclass(frozen=True)
class Answer:
    status: int
    headers: dict[str, str]
    body: bytes


class ReplicaProxy:
    def __init__(self, timeout_s: float) -> None:
        self.timeout_s = timeout_s
        # One connection pool per event loop: a pool is bound to the loop that created it (one
        # loop when served by uvicorn; tests may serve the same app from two).
        self._clients: dict[asyncio.AbstractEventLoop, httpx.AsyncClient] = {}
        self._turns: dict[str, itertools.count[int]] = {}
        self._lock = threading.Lock()

    def _client(self) -> httpx.AsyncClient:
        loop = asyncio.get_running_loop()
        with self._lock:
            client = self._clients.get(loop)
            if client is None:
                client = self._clients[loop] = httpx.AsyncClient(timeout=self.timeout_s)
            return client

    def _order(self, service: str, addresses: Sequence[str]) -> list[str]:
        with self._lock:
            turn = next(self._turns.setdefault(service, itertools.count()))
        start = turn % len(addresses)
        return [*addresses[start:], *addresses[:start]]

    async def forward(
        self,
        service: str,
        addresses: Sequence[str],
        method: str,
        path: str,
        query: str,
        headers: dict[str, str],
        body: bytes,
    ) -> Answer:
        """Send the request to the next replica that answers; ``Unavailable`` if none does."""
        if not addresses:
            raise Unavailable(f"service {service} has no running replica")
        sent = {k: v for k, v in headers.items() if k.lower() in FORWARDED_REQUEST}
        # Says the request is relayed (RFC 7239): the agent then treats it as remote although
        # it arrives over loopback, so no one reaches its shared memory through the proxy.
        sent["Forwarded"] = "for=unknown"
        for address in self._order(service, addresses):
            url = f"http://{address}/v2/{path}" + (f"?{query}" if query else "")
            try:
                r = await self._client().request(method, url, headers=sent, content=body)
            except (httpx.ConnectError, httpx.RemoteProtocolError, httpx.ReadError) as exc:
                logger.warning("service %s: replica %s unreachable (%s)", service, address, exc)
                continue
            kept = {k: v for k, v in r.headers.items() if k.lower() in FORWARDED_RESPONSE}
            return Answer(r.status_code, kept, r.content)
        raise Unavailable(f"service {service}: no replica answered")

    async def close(self) -> None:
        """Close the pool of the running loop (the others go with their loops)."""
        client = self._clients.pop(asyncio.get_running_loop(), None)
        if client is not None:
            await client.aclose()
