"""Typed dependency for the registry's conversion executor: the registry's own routes, and routes
of domains above the registry that register model versions (the captures domain's "improve"
steps)."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request

from control_plane.registry.conversions import Conversions, conversions_for


def get_conversions(request: Request) -> Conversions:
    return conversions_for(request.app)


ConversionsDep = Annotated[Conversions, Depends(get_conversions)]
