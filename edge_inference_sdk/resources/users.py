"""Users (admin: accounts and roles) and the caller's own account and API tokens."""

from __future__ import annotations

from typing import Any

from edge_inference_sdk.resources.base import ResourceBase, seg
from edge_inference_sdk.routes import route


class Users(ResourceBase):
    @route("GET", "/users/me")
    def me(self) -> dict[str, Any]:
        """The caller's account (username, role, whether the password must be changed)."""
        return dict(self._t.call("GET", "/users/me"))

    @route("POST", "/users/me/password")
    def change_password(self, current_password: str, new_password: str) -> dict[str, Any]:
        body = {"current_password": current_password, "new_password": new_password}
        return dict(self._t.call("POST", "/users/me/password", json=body))

    @route("GET", "/users/me/tokens")
    def tokens(self) -> list[dict[str, Any]]:
        return list(self._t.call("GET", "/users/me/tokens"))

    @route("POST", "/users/me/tokens")
    def create_token(self, name: str) -> dict[str, Any]:
        """A new API token acting as the caller; its ``token`` is shown in this answer only."""
        return dict(self._t.call("POST", "/users/me/tokens", json={"name": name}))

    @route("DELETE", "/users/me/tokens/{token_id}")
    def revoke_token(self, token_id: str) -> None:
        self._t.call("DELETE", f"/users/me/tokens/{seg(token_id)}")

    @route("GET", "/users")
    def list(self) -> list[dict[str, Any]]:
        return list(self._t.call("GET", "/users"))

    @route("POST", "/users")
    def create(self, username: str, password: str, role: str = "viewer") -> dict[str, Any]:
        """A new account (admin only); ``role`` is viewer, labeller, engineer or admin."""
        body = {"username": username, "password": password, "role": role}
        return dict(self._t.call("POST", "/users", json=body))

    @route("GET", "/users/{username}")
    def get(self, username: str) -> dict[str, Any]:
        return dict(self._t.call("GET", f"/users/{seg(username)}"))

    @route("PATCH", "/users/{username}")
    def update(
        self,
        username: str,
        role: str | None = None,
        password: str | None = None,
        disabled: bool | None = None,
    ) -> dict[str, Any]:
        """Change what is given; a change of role or ``disabled`` takes effect at once."""
        body = {
            k: v
            for k, v in {"role": role, "password": password, "disabled": disabled}.items()
            if v is not None
        }
        return dict(self._t.call("PATCH", f"/users/{seg(username)}", json=body))

    @route("DELETE", "/users/{username}")
    def delete(self, username: str) -> None:
        self._t.call("DELETE", f"/users/{seg(username)}")
