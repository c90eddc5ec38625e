"""Request and response bodies of /users."""

from __future__ import annotations

import datetime as dt

from pydantic import BaseModel, ConfigDict, Field

from control_plane.core.auth import Role

USERNAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$"


class UserCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    username: str = Field(pattern=USERNAME_PATTERN)
    password: str = Field(min_length=8, max_length=1024)
    role: Role = Role.viewer


class UserUpdate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    role: Role | None = None
    password: str | None = Field(None, min_length=8, max_length=1024)
    disabled: bool | None = None


class PasswordChange(BaseModel):
    model_config = ConfigDict(extra="forbid")

    current_password: str = Field(max_length=1024)
    new_password: str = Field(min_length=8, max_length=1024)


class UserPublic(BaseModel):
    username: str
    role: Role
    disabled: bool
    must_change_password: bool
    created_at: dt.datetime


class TokenCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field(min_length=1, max_length=200)


class TokenPublic(BaseModel):
    id: str
    name: str
    created_at: dt.datetime
    last_used_at: dt.datetime | None


class TokenCreated(TokenPublic):
    """The new token; ``token`` is shown here once, only its hash is kept."""

    token: str
