"""/users: user accounts (admin only) and every user's own profile and API tokens (``/me``)."""

from __future__ import annotations

from fastapi import APIRouter, status

from control_plane.core.auth import Role, needs_role
from control_plane.core.deps import ContextDep, CurrentUser, SessionDep
from control_plane.users.models import ApiToken, User
from control_plane.users.schemas import (
    PasswordChange,
    TokenCreate,
    TokenCreated,
    TokenPublic,
    UserCreate,
    UserPublic,
    UserUpdate,
)
from control_plane.users.service import UserService

router = APIRouter(prefix="/users", tags=["users"])
ADMIN = needs_role(Role.admin)
ANYONE = needs_role(Role.viewer)


def user_public(u: User) -> UserPublic:
    return UserPublic(
        username=u.username,
        role=Role(u.role),
        disabled=u.disabled,
        must_change_password=u.must_change_password,
        created_at=u.created_at,
    )


def token_public(t: ApiToken) -> TokenPublic:
    return TokenPublic(id=t.id, name=t.name, created_at=t.created_at, last_used_at=t.last_used_at)


# --- the caller's own account (any role) -----------------------------------------------------


@router.get("/me", openapi_extra=ANYONE)
def me(user: CurrentUser, session: SessionDep, ctx: ContextDep) -> UserPublic:
    return user_public(UserService(session, ctx).get(user.name))


@router.post("/me/password", openapi_extra=ANYONE)
def change_password(
    spec: PasswordChange, user: CurrentUser, session: SessionDep, ctx: ContextDep
) -> UserPublic:
    service = UserService(session, ctx)
    return user_public(service.change_password(user.name, spec.current_password, spec.new_password))


@router.get("/me/tokens", openapi_extra=ANYONE)
def my_tokens(user: CurrentUser, session: SessionDep, ctx: ContextDep) -> list[TokenPublic]:
    return [token_public(t) for t in UserService(session, ctx).tokens(user.name)]


@router.post("/me/tokens", status_code=status.HTTP_201_CREATED, openapi_extra=ANYONE)
def create_token(
    spec: TokenCreate, user: CurrentUser, session: SessionDep, ctx: ContextDep
) -> TokenCreated:
    """A new API token acting as the caller, with the caller's role; shown once."""
    token, secret = UserService(session, ctx).create_token(user.name, spec.name)
    return TokenCreated(**token_public(token).model_dump(), token=secret)


@router.delete(
    "/me/tokens/{token_id}", status_code=status.HTTP_204_NO_CONTENT, openapi_extra=ANYONE
)
def revoke_token(token_id: str, user: CurrentUser, session: SessionDep, ctx: ContextDep) -> None:
    UserService(session, ctx).revoke_token(user.name, token_id)


# --- accounts (admin) ------------------------------------------------------------------------


@router.get("", openapi_extra=ADMIN)
def list_users(session: SessionDep, ctx: ContextDep) -> list[UserPublic]:
    return [user_public(u) for u in UserService(session, ctx).list()]


@router.post("", status_code=status.HTTP_201_CREATED, openapi_extra=ADMIN)
def create_user(spec: UserCreate, session: SessionDep, ctx: ContextDep) -> UserPublic:
    return user_public(UserService(session, ctx).create(spec))


@router.get("/{username}", openapi_extra=ADMIN)
def get_user(username: str, session: SessionDep, ctx: ContextDep) -> UserPublic:
    return user_public(UserService(session, ctx).get(username))


@router.patch("/{username}", openapi_extra=ADMIN)
def update_user(
    username: str, spec: UserUpdate, user: CurrentUser, session: SessionDep, ctx: ContextDep
) -> UserPublic:
    """Change role, password (ends the user's sessions) or disable (ends them too)."""
    return user_public(UserService(session, ctx).update(username, spec, by=user.name))


@router.delete("/{username}", status_code=status.HTTP_204_NO_CONTENT, openapi_extra=ADMIN)
def delete_user(username: str, user: CurrentUser, session: SessionDep, ctx: ContextDep) -> None:
    """Delete a user with their tokens and sessions (never the last admin, nor yourself)."""
    UserService(session, ctx).delete(username, by=user.name)
