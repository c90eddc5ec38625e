"""NotebookService: create, start, stop, delete notebooks and export one into training code.

A notebook's files live in ``<notebooks_dir>/<id>/``: ``work/`` (JupyterLab's root, kept across
stop and start), ``dataset/`` (the chosen dataset version as read-only hard links: files 0444,
folders 0555; root ignores modes, so for root it is a convention, not a guard) and
``jupyter.log``. A notebook that reads a dataset version records a use of it, so the version
cannot be deleted while the notebook exists.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import io
import json
import logging
import os
import secrets
import shutil
import stat
import tempfile
import time
import uuid
import zipfile
from pathlib import Path, PurePosixPath

from sqlalchemy import select
from sqlalchemy.orm import Session

from control_plane.core.context import AppContext
from control_plane.core.errors import Conflict, InvalidRequest, NotFound
from control_plane.datasets.versions.service import VersionService
from control_plane.notebooks.export import export_script
from control_plane.notebooks.models import Notebook
from control_plane.notebooks.schemas import (
    ExamplePublic,
    ExportChange,
    ExportCreate,
    ExportPublic,
    NotebookCreate,
    NotebookFile,
)
from control_plane.notebooks.servers import JupyterServers
from control_plane.training.service import TrainingService

logger = logging.getLogger(__name__)

EXAMPLES = Path(__file__).parent / "examples"
USE_KIND = "notebook"
# Never part of exported training code: notebooks themselves, Jupyter's and Python's caches,
# the dataset link and the interactive run's output.
_SKIP_DIRS = {".ipynb_checkpoints", "__pycache__", ".git", "output", "dataset"}


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def examples() -> list[ExamplePublic]:
    out = []
    for path in sorted(EXAMPLES.glob("*.ipynb")):
        meta = json.loads(path.read_text())["metadata"].get("edge_example", {})
        out.append(
            ExamplePublic(name=path.stem, title=meta.get("title", path.stem), file=path.name)
        )
    return out


def _link_tree(source: Path, target: Path) -> None:
    """``target`` as read-only hard links of ``source`` (copies across file systems)."""
    for folder, _dirs, files in os.walk(source):
        rel = Path(folder).relative_to(source)
        (target / rel).mkdir(parents=True, exist_ok=True)
        for name in files:
            src, dst = Path(folder) / name, target / rel / name
            try:
                os.link(src, dst)
            except OSError:
                shutil.copyfile(src, dst)
            os.chmod(dst, 0o444)
    for folder, _dirs, _files in os.walk(target):
        os.chmod(folder, 0o555)


def _remove_tree(path: Path) -> None:
    if not path.exists():
        return
    for folder, _dirs, _files in os.walk(path):
        with contextlib.suppress(OSError):
            os.chmod(folder, stat.S_IRWXU)
    shutil.rmtree(path, ignore_errors=True)


class NotebookService:
    def __init__(self, session: Session, ctx: AppContext, servers: JupyterServers) -> None:
        self.session = session
        self.ctx = ctx
        self.servers = servers
        self.folders = servers.folders

    def data_url(self, nb: Notebook) -> Path | None:
        return self.folders.dataset(nb.id).resolve() if nb.dataset_id else None

    def create(self, spec: NotebookCreate, api_url: str) -> Notebook:
        if self.session.scalar(select(Notebook).where(Notebook.name == spec.name)) is not None:
            raise Conflict(f"notebook {spec.name} exists")
        if (spec.dataset_id is None) != (spec.dataset_version is None):
            raise InvalidRequest("give both dataset_id and dataset_version, or neither")
        example = None
        if spec.example is not None:
            example = EXAMPLES / f"{spec.example}.ipynb"
            if not example.is_file():
                names = ", ".join(e.name for e in examples())
                raise InvalidRequest(f"no example {spec.example!r} (known: {names})")
        versions = VersionService(self.session, self.ctx)
        version_dir = None
        if spec.dataset_id and spec.dataset_version:
            version_dir = versions.path(versions.get(spec.dataset_id, spec.dataset_version))
        nb = Notebook(
            id=uuid.uuid4().hex[:12],
            name=spec.name,
            state="starting",
            reason="",
            dataset_id=spec.dataset_id,
            dataset_version=spec.dataset_version,
            idle_s=spec.idle_s or self.ctx.settings.notebooks.idle_s,
            token=secrets.token_hex(24),
            api_url=api_url,
        )
        work = self.folders.work(nb.id)
        work.mkdir(parents=True)
        try:
            if version_dir is not None:
                _link_tree(version_dir, self.folders.dataset(nb.id))
                # Shown in JupyterLab's file browser; never exported (a link).
                (work / "dataset").symlink_to(Path("..") / "dataset")
            if example is not None:
                shutil.copyfile(example, work / example.name)
            self.session.add(nb)
            self.session.flush()
            self.servers.launch(nb, self.data_url(nb))
            self.session.commit()
        except BaseException:
            self.session.rollback()
            self.servers.stop(nb.id)
            _remove_tree(self.folders.home(nb.id))
            raise
        if spec.dataset_id and spec.dataset_version:
            versions.add_use(spec.dataset_id, spec.dataset_version, USE_KIND, nb.id)
        return nb

    def list(self) -> list[Notebook]:
        return list(self.session.scalars(select(Notebook).order_by(Notebook.created_at)))

    def get(self, notebook_id: str, touch: bool = True) -> Notebook:
        nb = self.session.get(Notebook, notebook_id)
        if nb is None:
            raise NotFound(f"notebook {notebook_id} not found")
        if touch:
            self.servers.touch(notebook_id)
        if nb.state == "starting":
            # Answer "running" as soon as JupyterLab does, not at the monitor's next tick.
            self.servers.check(notebook_id)
            self.session.refresh(nb)
        return nb

    def start(self, notebook_id: str) -> Notebook:
        """Start a stopped (or failed) notebook again, on the same work folder."""
        nb = self.get(notebook_id)
        if nb.state in ("starting", "running"):
            return nb
        self.servers.launch(nb, self.data_url(nb))
        self.session.commit()
        return nb

    def stop(self, notebook_id: str) -> Notebook:
        nb = self.get(notebook_id, touch=False)
        self.servers.stop(notebook_id)
        if nb.state in ("starting", "running"):
            nb.state, nb.reason = "stopped", "stopped by request"
        nb.pid = nb.port = None
        nb.updated_at = _now()
        self.session.commit()
        return nb

    def delete(self, notebook_id: str) -> None:
        nb = self.stop(notebook_id)
        if nb.dataset_id and nb.dataset_version:
            VersionService(self.session, self.ctx).remove_use(
                nb.dataset_id, nb.dataset_version, USE_KIND, nb.id
            )
        self.session.delete(nb)
        self.session.commit()
        _remove_tree(self.folders.home(notebook_id))

    def files(self, notebook_id: str) -> list[NotebookFile]:
        self.get(notebook_id)
        work = self.folders.work(notebook_id)
        return [
            NotebookFile(path=p.relative_to(work).as_posix(), size=p.stat().st_size)
            for p in sorted(work.rglob("*"))
            if p.is_file() and not p.is_symlink() and not _skipped(p.relative_to(work))
        ]

    def export(self, notebook_id: str, spec: ExportCreate) -> ExportPublic:
        """The notebook as a script plus the work folder's other code, stored as training code."""
        self.get(notebook_id)
        work = self.folders.work(notebook_id).resolve()
        source = _inside(work, spec.path)
        if source.suffix != ".ipynb" or not source.is_file():
            raise NotFound(f"notebook file {spec.path} not found in the work folder")
        boot = spec.boot_file or f"{source.stem}.py"
        if PurePosixPath(boot).name != boot or not boot.endswith(".py"):
            raise InvalidRequest(f"boot_file {boot!r} must be a plain file name ending in .py")
        script, changes = export_script(source)
        buf = io.BytesIO()
        with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
            for path in sorted(work.rglob("*")):
                rel = path.relative_to(work)
                if path.is_symlink() or not path.is_file() or _skipped(rel):
                    continue
                if path.suffix == ".ipynb" or rel.as_posix() == boot:
                    continue
                zf.write(path, rel.as_posix())
            # Dated like the notebook: the same notebook and files give the same zip, so the
            # same code id (training code is stored by digest, once).
            entry = zipfile.ZipInfo(boot, date_time=time.localtime(source.stat().st_mtime)[:6])
            entry.compress_type = zipfile.ZIP_DEFLATED
            zf.writestr(entry, script)
        with tempfile.SpooledTemporaryFile(max_size=8 << 20) as stream:
            stream.write(buf.getvalue())
            stream.seek(0)
            code_id, files = TrainingService(self.session, self.ctx).upload_code(stream)  # type: ignore[arg-type]
        logger.info("notebook %s: exported %s as code %s", notebook_id, spec.path, code_id)
        return ExportPublic(
            code_id=code_id,
            boot_file=boot,
            files=files,
            changes=[ExportChange(**vars(c)) for c in changes],
            script=script,
        )


def _skipped(rel: Path) -> bool:
    return any(part in _SKIP_DIRS or part.startswith(".") for part in rel.parts)


def _inside(root: Path, relative: str) -> Path:
    path = (root / relative).resolve()
    if not path.is_relative_to(root):
        raise InvalidRequest(f"{relative} is outside the work folder")
    return path
