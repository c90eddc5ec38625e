"""HTTP for the SDK: the token, retries on connection errors only, error bodies to exceptions,
uploads and downloads with progress.

Retries: a request that could not connect (``ConnectError``, ``ConnectTimeout``) never reached
the server, so it is sent again, whatever its method, after a jittered, doubling pause
(``retries`` times, default 3). A GET or HEAD whose connection broke before an answer is retried
too; anything else (a POST that may have been received, any HTTP status) is not: an answer,
even 503, is the server's word and becomes an exception.
"""

from __future__ import annotations

import io
import json
import os
import random
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO, Any

import httpx

from edge_inference_sdk.errors import ConnectionFailed, error_for

# (bytes done, total bytes or None when unknown)
Progress = Callable[[int, int | None], None]
API_PREFIX = "/api/v1"
_CHUNK = 1 << 20
_IDEMPOTENT = {"GET", "HEAD"}


class ProgressFile(io.RawIOBase):
    """A read-only file that reports how much was read (httpx streams uploads through it)."""

    def __init__(self, path: Path, progress: Progress | None) -> None:
        super().__init__()
        self._f = open(path, "rb")  # noqa: SIM115 - closed by close()
        self.total = os.fstat(self._f.fileno()).st_size
        self.done = 0
        self.progress = progress

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def fileno(self) -> int:
        return self._f.fileno()

    def tell(self) -> int:
        return self._f.tell()

    def seek(self, offset: int, whence: int = 0) -> int:
        pos = self._f.seek(offset, whence)
        self.done = pos
        return pos

    def read(self, size: int = -1) -> bytes:
        data = self._f.read(size)
        self.done += len(data)
        if self.progress is not None and data:
            self.progress(self.done, self.total)
        return data

    def readinto(self, buffer: Any) -> int:
        data = self.read(len(buffer))
        buffer[: len(data)] = data
        return len(data)

    def close(self) -> None:
        self._f.close()
        super().close()


class Transport:
    def __init__(
        self,
        url: str,
        token: str | None,
        timeout: float = 60.0,
        retries: int = 3,
        backoff_s: float = 0.5,
        http_transport: httpx.BaseTransport | None = None,
        http_client: httpx.Client | None = None,
    ) -> None:
        """``http_client``: an httpx client to send through instead of one made here (e.g.
        FastAPI's ``TestClient`` for an in-process app); its base URL is the control plane's."""
        self.retries = retries
        self.backoff_s = backoff_s
        headers = {"User-Agent": "edge-inference-sdk"}
        if token:
            headers["Authorization"] = f"Bearer {token}"
        self._owned = http_client is None
        if http_client is not None:
            http_client.headers.update(headers)
            self.http = http_client
            self.url = str(http_client.base_url).rstrip("/")
            self.prefix = API_PREFIX
        else:
            self.url = url.rstrip("/")
            self.prefix = ""
            self.http = httpx.Client(
                base_url=self.url + API_PREFIX,
                headers=headers,
                timeout=httpx.Timeout(timeout, connect=10.0),
                transport=http_transport,
            )

    def close(self) -> None:
        if self._owned:
            self.http.close()

    def _send(self, method: str, path: str, stream: bool = False, **kw: Any) -> httpx.Response:
        attempt = 0
        while True:
            for f in _files_of(kw):
                f.seek(0)
            request = self.http.build_request(method, self.prefix + path, **kw)
            try:
                response = self.http.send(request, stream=stream)
            except (httpx.ConnectError, httpx.ConnectTimeout) as exc:
                failure: Exception = exc
            except (httpx.RemoteProtocolError, httpx.ReadError) as exc:
                if method not in _IDEMPOTENT:
                    raise ConnectionFailed(f"{method} {request.url}: {exc}") from exc
                failure = exc
            else:
                if response.status_code >= 400:
                    if stream:
                        response.read()
                    raise _error(response)
                return response
            attempt += 1
            if attempt > self.retries:
                raise ConnectionFailed(
                    f"{method} {request.url}: {failure} (after {self.retries} retries)"
                ) from failure
            time.sleep(self.backoff_s * (2 ** (attempt - 1)) * (0.5 + random.random()))

    def call(self, method: str, path: str, **kw: Any) -> Any:
        """The decoded JSON answer (None for 204)."""
        response = self._send(method, path, **kw)
        if response.status_code == 204 or not response.content:
            return None
        return response.json()

    def text(self, method: str, path: str, **kw: Any) -> str:
        return self._send(method, path, **kw).text

    def upload(
        self,
        method: str,
        path: str,
        field: str,
        file: Path,
        progress: Progress | None = None,
        data: dict[str, str] | None = None,
        content_type: str = "application/octet-stream",
    ) -> Any:
        """Multipart upload of one file, streamed from disk, reporting progress."""
        with ProgressFile(Path(file), progress) as f:
            files = {field: (Path(file).name, f, content_type)}
            return self.call(method, path, files=files, data=data or {})

    def download(self, path: str, dest: Path, progress: Progress | None = None, **kw: Any) -> Path:
        """Stream an answer into ``dest`` (written under a temporary name, then renamed)."""
        dest = Path(dest)
        dest.parent.mkdir(parents=True, exist_ok=True)
        tmp = dest.with_name(f".{dest.name}.part")
        response = self._send("GET", path, stream=True, **kw)
        try:
            total = (
                int(response.headers["content-length"])
                if "content-length" in response.headers
                else None
            )
            done = 0
            with open(tmp, "wb") as out:
                for chunk in response.iter_bytes(_CHUNK):
                    out.write(chunk)
                    done += len(chunk)
                    if progress is not None:
                        progress(done, total)
            os.replace(tmp, dest)
        finally:
            response.close()
            tmp.unlink(missing_ok=True)
        return dest

    def lines(self, path: str, **kw: Any) -> Iterator[str]:
        """The answer's text line by line, as it arrives (followed logs)."""
        response = self._send("GET", path, stream=True, timeout=None, **kw)
        try:
            yield from response.iter_lines()
        finally:
            response.close()


def _files_of(kw: dict[str, Any]) -> list[IO[bytes]]:
    files = kw.get("files") or {}
    items = files.values() if isinstance(files, dict) else [v for _, v in files]
    return [v[1] for v in items if isinstance(v, tuple) and hasattr(v[1], "seek")]


def _error(response: httpx.Response) -> Exception:
    try:
        body: Any = response.json()
    except (json.JSONDecodeError, UnicodeDecodeError):
        body = response.text
    return error_for(response.status_code, body, response.request.method, str(response.request.url))
