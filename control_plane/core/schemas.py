"""Pydantic pieces every domain's schemas share."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

# Names of jobs and registered models: they appear in paths, folders and package names.
Name = Field(min_length=1, max_length=128, pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$")


class OrmModel(BaseModel):
    """A response model read from an ORM row (``XPublic.model_validate(row)``)."""

    model_config = ConfigDict(from_attributes=True)
