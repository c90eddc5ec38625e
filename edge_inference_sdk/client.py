"""``Client``: one object with a property per REST resource.

from edge_inference_sdk import Client

client = Client()  # URL and token from the arguments, the environment or the config file
ds = client.datasets.create("digits")
"""

from __future__ import annotations

import httpx

from edge_inference_sdk.config import load_profile
from edge_inference_sdk.resources.captures import Captures
from edge_inference_sdk.resources.datasets import Datasets
from edge_inference_sdk.resources.fleet import Deployments, Devices
from edge_inference_sdk.resources.notebooks import Notebooks
from edge_inference_sdk.resources.registry import Keys, Models, Packages
from edge_inference_sdk.resources.services import Services
from edge_inference_sdk.resources.training import Training
from edge_inference_sdk.resources.users import Users
from edge_inference_sdk.transport import Transport

RESOURCES = (
    Datasets,
    Training,
    Models,
    Packages,
    Keys,
    Devices,
    Deployments,
    Services,
    Notebooks,
    Users,
    Captures,
)


class Client:
    def __init__(
        self,
        url: str | None = None,
        token: str | None = None,
        *,
        profile: str | None = None,
        timeout: float = 60.0,
        retries: int = 3,
        backoff_s: float = 0.5,
        http_transport: httpx.BaseTransport | None = None,
        http_client: httpx.Client | None = None,
    ) -> None:
        """``url``/``token`` default to ``EDGE_INFERENCE_URL``/``EDGE_INFERENCE_TOKEN``, then
        the config file's profile (see ``edge_inference_sdk.config``). ``http_client`` sends
        through a given httpx client instead (FastAPI's ``TestClient`` over an in-process app:
        the same code against a served control plane and inside a test)."""
        resolved = load_profile(url, token, profile)
        self._transport = Transport(
            resolved.url, resolved.token, timeout, retries, backoff_s, http_transport, http_client
        )
        self.url = self._transport.url
        self.datasets = Datasets(self._transport)
        self.training = Training(self._transport)
        self.models = Models(self._transport)
        self.packages = Packages(self._transport)
        self.keys = Keys(self._transport)
        self.devices = Devices(self._transport)
        self.deployments = Deployments(self._transport)
        self.services = Services(self._transport)
        self.notebooks = Notebooks(self._transport)
        self.users = Users(self._transport)
        self.captures = Captures(self._transport)

    def health(self) -> dict[str, object]:
        """``GET /health`` (no token needed): ``{"status": "ok", "broker_connected": bool}``."""
        response = self._transport.http.get(f"{self.url}/health")
        response.raise_for_status()
        return dict(response.json())

    def close(self) -> None:
        self._transport.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
