"""What the control plane's reverse proxies share (notebooks, TensorBoard).

Both forward a browser's requests to a server bound to loopback. Hop-by-hop headers, and the
control plane's own credentials, never travel upstream; httpx pools are bound to the event loop
that made them, so each loop gets its own.
"""

from __future__ import annotations

import asyncio
import threading

import httpx

#: Request headers that are not forwarded: hop-by-hop ones (RFC 9110 7.6.1), the host, the
#: length (recomputed), and the caller's credentials for the control plane.
HOP_HEADERS = frozenset(
    {
        "connection", "keep-alive", "proxy-authenticate", "proxy-authorization", "te",
        "trailer", "transfer-encoding", "upgrade", "host", "authorization", "cookie",
        "content-length",
    }
)  # fmt: skip


class LoopClients:
    """One ``httpx.AsyncClient`` per event loop, made on first use."""

    def __init__(self, timeout_s: float) -> None:
        self._timeout_s = timeout_s
        self._clients: dict[asyncio.AbstractEventLoop, httpx.AsyncClient] = {}
        self._lock = threading.Lock()

    def get(self) -> httpx.AsyncClient:
        loop = asyncio.get_running_loop()
        with self._lock:
            client = self._clients.get(loop)
            if client is None:
                # The answer's bytes are passed through as they come: ask for them uncompressed
                # unless the caller's own Accept-Encoding (forwarded) says it reads gzip. httpx's
                # default would send gzip to a caller that never asked for it (`curl` without
                # --compressed printed binary).
                client = httpx.AsyncClient(
                    timeout=self._timeout_s,
                    trust_env=False,
                    headers={"accept-encoding": "identity"},
                )
                self._clients[loop] = client
            return client
