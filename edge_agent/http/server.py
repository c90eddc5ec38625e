"""HTTP/1.1 on the agent's event loop: httptools parses, an ``asyncio.Protocol`` per connection.

The server knows requests and responses, not the protocol: it hands each complete request to
one handler (``routes.Router``) and writes back what that returns. Its own job is to keep a
device safe from its clients:

- a body is bounded (``http_max_body_bytes``): a declared ``Content-Length`` beyond it is
  refused before any byte of the body is kept, a chunked body as soon as it grows past it; the
  refused body is read and discarded so the client gets the 413 instead of a reset connection;
- the bearer token (``auth.TokenAuth``) is checked when the headers are complete, so an
  unauthenticated upload is never buffered either; ``/v2/health/*`` stays open;
- URL and header sizes are capped, a connection silent in the middle of a request gets 408,
  an idle keep-alive connection is closed, and the number of connections is capped;
- one request per connection runs at a time; pipelined ones wait (reading pauses, at most
  ``MAX_PIPELINED`` are held) and a response waits for the client to drain the previous one.

``Expect: 100-continue`` (curl sends it for large uploads) is answered at once, or replaced by the
refusal. Stopping closes the listener, lets in-flight requests finish for the grace period, then
closes every connection. With the agent's ``tls`` section the port speaks only HTTPS, with the
gRPC port's certificate and client policy (``server_tls_context``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import ssl
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import httptools

from edge_agent.auth import UNAUTHORIZED, TokenAuth, socket_peer_is_local
from edge_agent.http.status import REASONS, HttpError

if TYPE_CHECKING:
    from edge_agent.config import TlsSettings

log = logging.getLogger(__name__)

#: Paths served without a token (liveness and readiness probes).
OPEN_PREFIX = "/v2/health/"
MAX_URL_BYTES = 8 * 1024
MAX_HEADER_BYTES = 64 * 1024
MAX_CONNECTIONS = 1024
MAX_PIPELINED = 16
#: A request whose sender goes silent this long gets 408; an idle keep-alive connection this
#: long is closed, and so is one whose client stops reading its answer.
READ_TIMEOUT_S = 30.0
IDLE_TIMEOUT_S = 75.0


@dataclass(slots=True)
class Request:
    method: str
    path: str  # as sent, percent-encoded, without the query
    query: str
    headers: dict[str, str]  # lower-case names
    body: bytes
    #: The client connected over loopback (it is on this machine) and the request was not
    #: relayed by a proxy (no ``Forwarded`` / ``X-Forwarded-For``): shared memory needs it.
    local: bool = False


@dataclass(slots=True)
class Response:
    status: int
    body: list[bytes]  # written in order, never joined here
    content_type: str = "application/json"
    headers: dict[str, str] = field(default_factory=dict)


Handler = Callable[[Request], Awaitable[Response]]
ErrorBody = Callable[[HttpError], Response]


class HttpServer:
    def __init__(
        self,
        host: str,
        port: int,
        handler: Handler,
        error_response: ErrorBody,
        max_body: int,
        auth: TokenAuth | None = None,
        tls: TlsSettings | None = None,
    ) -> None:
        """``error_response`` renders the server's own refusals in the handler's format."""
        self.host = host
        self.port = port
        self.handler = handler
        self.error_response = error_response
        self.max_body = max_body
        self.auth = auth
        self.tls = tls
        self.security = "plaintext"  # or "TLS", "mutual TLS": for the start-up log line
        self.connections: set[_Connection] = set()
        self._server: asyncio.Server | None = None

    async def start(self) -> int:
        """Bind and listen; returns the bound port."""
        loop = asyncio.get_running_loop()
        context = None
        if self.tls is not None:
            context = server_tls_context(self.tls)
            mutual = context.verify_mode == ssl.CERT_REQUIRED
            self.security = "mutual TLS" if mutual else "TLS"
        try:
            self._server = await loop.create_server(
                lambda: _Connection(self),
                self.host,
                self.port,
                reuse_address=True,
                backlog=256,
                ssl=context,
            )
        except OSError as exc:
            raise OSError(exc.errno, f"cannot bind HTTP on {self.host}:{self.port}: {exc}") from exc
        self.port = self._server.sockets[0].getsockname()[1]
        return self.port

    async def stop(self, grace: float) -> None:
        if self._server is None:
            return
        self._server.close()
        for conn in list(self.connections):
            conn.shutdown()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + grace
        while self.connections and loop.time() < deadline:
            await asyncio.sleep(0.02)
        for conn in list(self.connections):
            conn.abort()
        await self._server.wait_closed()


class _Connection(asyncio.Protocol):
    """One client connection: parse, check, queue, answer, in that order."""

    def __init__(self, server: HttpServer) -> None:
        self.server = server
        self.parser = httptools.HttpRequestParser(self)
        self.transport: asyncio.Transport | None = None
        self.local = False
        self.loop = asyncio.get_running_loop()
        self.pending: deque[tuple[Request | HttpError, bool]] = deque()
        self.busy = False
        self.closing = False
        self.in_message = False
        self.timer: asyncio.TimerHandle | None = None
        self.task: asyncio.Task[None] | None = None
        self.writable = asyncio.Event()
        self.writable.set()
        self._reset_message()

    def _reset_message(self) -> None:
        self.url = b""
        self.header_bytes = 0
        self.headers: dict[str, str] = {}
        self.body: list[bytes] = []
        self.body_size = 0
        self.refused: HttpError | None = None

    # ---------------------------------------------------------------- asyncio.Protocol
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        if len(self.server.connections) >= MAX_CONNECTIONS:
            log.warning("refusing an HTTP connection: %d already open", MAX_CONNECTIONS)
            transport.abort()
            return
        self.server.connections.add(self)
        self.local = socket_peer_is_local(transport.get_extra_info("peername"))
        self._arm(IDLE_TIMEOUT_S)

    def connection_lost(self, exc: Exception | None) -> None:
        self.server.connections.discard(self)
        if self.timer is not None:
            self.timer.cancel()
        self.closing = True
        self.writable.set()

    def pause_writing(self) -> None:
        self.writable.clear()

    def resume_writing(self) -> None:
        self.writable.set()

    def data_received(self, data: bytes) -> None:
        if self.closing:
            return
        if self.in_message:
            self._arm(READ_TIMEOUT_S)
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            self._fail(HttpError(400, "protocol upgrades are not supported"))
        except httptools.HttpParserError as exc:
            self._fail(HttpError(400, f"malformed HTTP request: {exc}"))

    # ---------------------------------------------------------------- httptools callbacks
    def on_message_begin(self) -> None:
        self.in_message = True
        self._reset_message()
        self._arm(READ_TIMEOUT_S)

    def on_url(self, url: bytes) -> None:
        if len(self.url) + len(url) > MAX_URL_BYTES:
            if self.refused is None:
                self.refused = HttpError(414, f"the URL is longer than {MAX_URL_BYTES} bytes")
            self.header_bytes += len(url)  # not kept; counted against the hard cap below
            self._check_head_cap()
            return
        self.url += url

    def on_header(self, name: bytes, value: bytes) -> None:
        self.header_bytes += len(name) + len(value)
        if self.header_bytes > MAX_HEADER_BYTES:
            if self.refused is None:
                self.refused = HttpError(431, f"headers exceed {MAX_HEADER_BYTES} bytes")
            self._check_head_cap()
            return
        key = name.decode("latin-1").lower()
        text = value.decode("latin-1")
        old = self.headers.get(key)
        self.headers[key] = text if old is None else f"{old}, {text}"

    def _check_head_cap(self) -> None:
        """Refused heads are read to their end so the client gets its answer, but not forever."""
        if self.header_bytes > 4 * MAX_HEADER_BYTES and self.refused is not None:
            self._fail(self.refused)

    def on_headers_complete(self) -> None:
        if self.refused is None:
            self.refused = self._admit()
        if self.headers.get("expect", "").lower() == "100-continue":
            if self.refused is not None:
                # The client has not sent the body yet: answer now, and close rather than read it.
                self._fail(self.refused)
                return
            assert self.transport is not None
            self.transport.write(b"HTTP/1.1 100 Continue\r\n\r\n")

    def _admit(self) -> HttpError | None:
        """Refusals decided by the headers alone: no or a wrong token, then a body too large."""
        auth = self.server.auth
        if (
            auth is not None
            and not self.url.startswith(OPEN_PREFIX.encode())
            and not auth.accepts(self.headers.get("authorization"))
        ):
            return HttpError(401, UNAUTHORIZED, {"WWW-Authenticate": "Bearer"})
        length = self.headers.get("content-length")
        if length is not None and length.isdigit() and int(length) > self.server.max_body:
            return _too_large(self.server.max_body)
        return None

    def on_body(self, body: bytes) -> None:
        if self.refused is not None:
            return  # read and dropped: the client gets its answer once it has sent it all
        self.body_size += len(body)
        if self.body_size > self.server.max_body:
            self.refused = _too_large(self.server.max_body)
            self.body.clear()
            return
        self.body.append(body)

    def on_message_complete(self) -> None:
        self.in_message = False
        item: Request | HttpError
        if self.refused is not None:
            item = self.refused
        else:
            method = self.parser.get_method().decode("ascii", "replace")
            path, _, query = self.url.decode("latin-1").partition("?")
            body = self.body[0] if len(self.body) == 1 else b"".join(self.body)
            # A relayed request (a proxy on this machine) comes from wherever the proxy's
            # client is: not local, whatever the socket says.
            relayed = "forwarded" in self.headers or "x-forwarded-for" in self.headers
            item = Request(method, path, query, self.headers, body, self.local and not relayed)
        self.pending.append((item, self.parser.should_keep_alive()))
        self._reset_message()
        if len(self.pending) > MAX_PIPELINED:
            self._fail(HttpError(503, f"more than {MAX_PIPELINED} pipelined requests"))
            return
        if self.busy:
            assert self.transport is not None
            self.transport.pause_reading()
        else:
            self.busy = True
            self.task = self.loop.create_task(self._serve())  # held: the loop keeps weak refs

    # ---------------------------------------------------------------- answering
    async def _serve(self) -> None:
        """Answer queued requests one at a time, in order."""
        try:
            while self.pending and not self.closing:
                item, keep_alive = self.pending.popleft()
                if isinstance(item, HttpError):
                    response = self.server.error_response(item)
                else:
                    try:
                        response = await self.server.handler(item)
                    except Exception:
                        log.exception("HTTP %s %s failed", item.method, item.path)
                        response = self.server.error_response(HttpError(500, "internal error"))
                await self._write(response, keep_alive and not self.server_closing)
                if not keep_alive:
                    self._close()
                    return
        finally:
            self.busy = False
        if self.server_closing:
            self._close()
        elif not self.closing and self.transport is not None:
            self._arm(IDLE_TIMEOUT_S)
            self.transport.resume_reading()

    @property
    def server_closing(self) -> bool:
        server = self.server._server
        return server is None or not server.is_serving()

    async def _write(self, response: Response, keep_alive: bool) -> None:
        if self.closing or self.transport is None:
            return
        size = sum(len(b) for b in response.body)
        lines = [
            f"HTTP/1.1 {response.status} {REASONS.get(response.status, 'Unknown')}",
            f"content-type: {response.content_type}",
            f"content-length: {size}",
        ]
        lines += [f"{k}: {v}" for k, v in response.headers.items()]
        if not keep_alive:
            lines.append("connection: close")
        head = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")
        self.transport.writelines([head, *response.body])
        await self.writable.wait()  # the client reads this answer before we read its next

    def _fail(self, error: HttpError) -> None:
        """Answer a request that cannot be parsed or read further, then close."""
        self.closing = True
        self.pending.clear()
        if self.transport is None or self.transport.is_closing():
            return
        response = self.server.error_response(error)
        body = b"".join(response.body)
        head = (
            f"HTTP/1.1 {error.status} {REASONS.get(error.status, 'Error')}\r\n"
            f"content-type: {response.content_type}\r\ncontent-length: {len(body)}\r\n"
            + "".join(f"{k}: {v}\r\n" for k, v in response.headers.items())
            + "connection: close\r\n\r\n"
        ).encode("latin-1")
        self.transport.write(head + body)
        self.transport.close()

    def _close(self) -> None:
        self.closing = True
        if self.transport is not None:
            self.transport.close()

    def _arm(self, seconds: float) -> None:
        if self.timer is not None:
            self.timer.cancel()
        self.timer = self.loop.call_later(seconds, self._timed_out)

    def _timed_out(self) -> None:
        if self.busy:
            if not self.writable.is_set():  # the client stopped reading its answer
                self.abort()
                return
            self._arm(IDLE_TIMEOUT_S)  # a request being answered: the data plane's limits apply
        elif self.in_message:
            self._fail(
                HttpError(408, f"no data for {READ_TIMEOUT_S:g} s in the middle of a request")
            )
        else:
            self._close()

    def shutdown(self) -> None:
        """Server stopping: close now if idle, else after the answer in progress."""
        if not self.busy and not self.in_message:
            self._close()

    def abort(self) -> None:
        self.closing = True
        if self.transport is not None:
            with contextlib.suppress(Exception):
                self.transport.abort()


def server_tls_context(tls: TlsSettings) -> ssl.SSLContext:
    """The ``tls`` section as an ``ssl.SSLContext``: the same certificate and client policy as
    the gRPC port. The files go through ``edge_agent.tls`` first, for its named errors."""
    from edge_agent.tls import load_server_tls  # cryptography: only when TLS is configured

    checked = load_server_tls(tls)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(tls.cert_file, tls.key_file)
    if checked.client_ca is not None:
        context.load_verify_locations(cadata=checked.client_ca.decode("ascii", "replace"))
        context.verify_mode = ssl.CERT_REQUIRED
    return context


def _too_large(limit: int) -> HttpError:
    return HttpError(413, f"the request body is larger than {limit} bytes (http_max_body_bytes)")
