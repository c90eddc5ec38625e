"""Rendering: the Jinja2 environment and ``page()``, which every page returns through.

Templates get the signed-in principal (``user``), its CSRF token for the ``<meta>`` tag the
script reads, ``can(role)`` to show or disable controls, and the chart helpers' output as plain
data: no template or script decides anything the services did not.
"""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import Any

from fastapi import Request
from fastapi.responses import HTMLResponse
from fastapi.templating import Jinja2Templates

from control_plane.core.auth import Principal, Role

HERE = Path(__file__).resolve().parent
templates = Jinja2Templates(directory=HERE / "templates")
# Templates are package files that do not change while the server runs: no stat() per render.
templates.env.auto_reload = False


def _when(value: dt.datetime | None) -> str:
    if value is None:
        return ""
    return value.strftime("%Y-%m-%d %H:%M:%S")


def _ms_when(ms: int | None) -> str:
    """Milliseconds since the epoch (the fleet wire's times), as ``when`` shows a datetime."""
    if not ms:
        return ""
    return _when(dt.datetime.fromtimestamp(ms / 1000, tz=dt.UTC))


def _size(n: int | None) -> str:
    if n is None:
        return ""
    size = float(n)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if size < 1024 or unit == "GiB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return str(n)


templates.env.filters["when"] = _when
templates.env.filters["size"] = _size
templates.env.filters["ms_when"] = _ms_when


def page(
    request: Request, template: str, user: Principal | None, status_code: int = 200, **values: Any
) -> HTMLResponse:
    def can(role: str) -> bool:
        return user is not None and user.role.allows(Role(role))

    context = {"user": user, "csrf": user.csrf if user else "", "can": can, **values}
    return templates.TemplateResponse(request, template, context, status_code=status_code)
