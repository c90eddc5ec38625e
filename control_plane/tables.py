"""Every domain's tables, imported so that ``Base.metadata`` holds the whole schema.

Each domain declares its tables in its own ``models.py`` against the one ``core.database.Base``;
nothing below the app needs them all at once, except Alembic and the schema checks, which import
this module. It sits at the top of the package, beside ``app.py``, so no import runs back up.
"""

from __future__ import annotations

from control_plane.captures import models as captures
from control_plane.core import replicas
from control_plane.core.database import Base
from control_plane.datasets import models as datasets
from control_plane.deployments import models as deployments
from control_plane.devices import models as devices
from control_plane.notebooks import models as notebooks
from control_plane.registry import models as registry
from control_plane.services import models as services
from control_plane.training import models as training
from control_plane.users import models as users

__all__ = [
    "Base",
    "captures",
    "datasets",
    "deployments",
    "devices",
    "notebooks",
    "registry",
    "replicas",
    "services",
    "training",
    "users",
]
