"""A throwaway PostgreSQL cluster for tests: ``initdb`` + ``pg_ctl`` in a temp folder.

Never a system service: the cluster lives in its own folder, listens on a free loopback port
and a socket in that folder, and is stopped (and the folder removed) at the end. PostgreSQL
refuses to run as root, so when the tests run as root the binaries are started through
``runuser -u postgres --`` and the folder is handed to that user.

Each test gets a fresh database (``CREATE DATABASE``, milliseconds) so tests never see each
other's rows. Settings favour speed over durability (``fsync=off``): the cluster holds nothing
worth keeping.
"""

from __future__ import annotations

import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

import pytest

# Marks for a module or test: its tests that use the ``database_url`` fixture (directly or through
# an app fixture) run on both engines, or on PostgreSQL only (the concurrency that SQLite's single
# writer hides). tests/conftest.py's ``pytest_generate_tests`` reads them.
BOTH_DATABASES = pytest.mark.databases("sqlite", "postgres")
POSTGRES_ONLY = pytest.mark.databases("postgres")

PG_BIN_CANDIDATES = [Path("/usr/lib/postgresql/15/bin"), Path("/usr/lib/postgresql/16/bin")]


class PostgresUnavailable(RuntimeError):
    """The PostgreSQL server binaries are not installed."""


def pg_bin() -> Path:
    env = os.environ.get("EDGE_PG_BIN")
    candidates = [Path(env)] if env else PG_BIN_CANDIDATES
    for folder in candidates:
        if (folder / "initdb").is_file() and (folder / "pg_ctl").is_file():
            return folder
    found = shutil.which("initdb")
    if found:
        return Path(found).parent
    raise PostgresUnavailable(
        "PostgreSQL server binaries not found (apt-get install postgresql-15; .ci/run installs "
        "it), or set EDGE_PG_BIN to the folder holding initdb and pg_ctl"
    )


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class PostgresCluster:
    root: Path
    port: int
    bin: Path
    as_user: str | None

    @property
    def data(self) -> Path:
        return self.root / "data"

    @property
    def log(self) -> Path:
        return self.root / "postgres.log"

    def _run(self, *args: str) -> subprocess.CompletedProcess[str]:
        cmd = list(args)
        if self.as_user:
            cmd = ["runuser", "-u", self.as_user, "--", *cmd]
        return subprocess.run(cmd, capture_output=True, text=True, check=False, timeout=120)

    def url(self, database: str = "postgres") -> str:
        return f"postgresql+psycopg://postgres@127.0.0.1:{self.port}/{database}"

    def start(self) -> None:
        result = self._run(
            str(self.bin / "initdb"),
            "-D",
            str(self.data),
            "-U",
            "postgres",
            "--auth=trust",
            "-E",
            "UTF8",
            "--no-sync",
        )
        if result.returncode != 0:
            raise RuntimeError(f"initdb failed:\n{result.stdout}\n{result.stderr}")
        options = (
            f"-p {self.port} -k {self.root} -c listen_addresses=127.0.0.1 -c fsync=off "
            "-c synchronous_commit=off -c full_page_writes=off -c max_connections=200"
        )
        result = self._run(
            str(self.bin / "pg_ctl"),
            "-D",
            str(self.data),
            "-o",
            options,
            "-l",
            str(self.log),
            "-w",
            "-t",
            "60",
            "start",
        )
        if result.returncode != 0:
            log = self.log.read_text() if self.log.exists() else ""
            raise RuntimeError(f"pg_ctl start failed:\n{result.stdout}\n{result.stderr}\n{log}")

    def stop(self) -> None:
        self._run(str(self.bin / "pg_ctl"), "-D", str(self.data), "-m", "immediate", "stop")
        shutil.rmtree(self.root, ignore_errors=True)

    def create_database(self) -> str:
        """A fresh empty database; returns its SQLAlchemy URL."""
        import psycopg

        name = f"t_{uuid.uuid4().hex[:12]}"
        with psycopg.connect(
            host="127.0.0.1", port=self.port, user="postgres", dbname="postgres", autocommit=True
        ) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        return self.url(name)


def start_cluster() -> PostgresCluster:
    """Start a cluster in a new temp folder (owned by ``postgres`` when running as root)."""
    binaries = pg_bin()
    root = Path(tempfile.mkdtemp(prefix="edge-pg-"))
    as_user = None
    if os.geteuid() == 0:
        as_user = "postgres"
        entry = pwd.getpwnam(as_user)
        os.chown(root, entry.pw_uid, entry.pw_gid)
    root.chmod(0o700)
    cluster = PostgresCluster(root=root, port=_free_port(), bin=binaries, as_user=as_user)
    try:
        cluster.start()
    except BaseException:
        shutil.rmtree(root, ignore_errors=True)
        raise
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", cluster.port), timeout=0.2):
                return cluster
        except OSError:
            time.sleep(0.05)
    cluster.stop()
    raise RuntimeError("PostgreSQL did not listen")
