"""The metrics port: the agent's registry in the Prometheus text format, for any GET path.

Served by the same ``HttpServer`` as the REST API, on its own port (``metrics_port``) and the
agent's event loop, so scraping costs no thread and no extra library (see ``metrics.py``).
Any path answers, as Prometheus' own client library did, so a scrape config with the
default ``/metrics`` or with ``/`` keeps working. Plain HTTP, no token: keep ``metrics_host``
on loopback or a management network.
"""

from __future__ import annotations

from edge_agent.http.server import Request, Response
from edge_agent.http.status import HttpError
from edge_agent.metrics import CONTENT_TYPE, Registry

#: A scrape has no body; anything larger is refused before it is read.
MAX_BODY = 64 * 1024


def error_text(error: HttpError) -> Response:
    """The server's own refusals (bad request line, too large ...), in plain text."""
    return Response(error.status, [f"{error}\n".encode()], "text/plain", error.headers)


class MetricsRoute:
    def __init__(self, registry: Registry) -> None:
        self.registry = registry

    async def __call__(self, request: Request) -> Response:
        if request.method != "GET":
            return error_text(HttpError(405, "only GET", {"Allow": "GET"}))
        return Response(200, [self.registry.exposition()], CONTENT_TYPE)
