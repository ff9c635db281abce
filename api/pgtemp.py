"""A throwaway PostgreSQL server for tests: ``initdb`` + ``pg_ctl`` in a temporary directory
on a free loopback port, trust auth, stopped (and only it) on exit. As root, the server runs as
the ``postgres`` system user (PostgreSQL refuses to run as root)."""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import subprocess
import tempfile
from pathlib import Path
from types import TracebackType

from sqlalchemy.engine import make_url

from protocol.anvil import free_port


class PostgresUnavailable(RuntimeError):
    pass


def _find(binary: str) -> str | None:
    for cand in sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{binary}"), reverse=True):
        return cand
    return shutil.which(binary)


class TempPostgres:
    def __init__(self) -> None:
        initdb, pg_ctl = _find("initdb"), _find("pg_ctl")
        if not initdb or not pg_ctl:
            raise PostgresUnavailable(
                "PostgreSQL server binaries (initdb, pg_ctl) not installed: "
                "apt-get install postgresql, or set DATABASE_URL to a server"
            )
        self.initdb, self.pg_ctl = initdb, pg_ctl
        self.port = free_port()
        self.prefix: list[str] = []
        if os.geteuid() == 0:
            try:
                pwd.getpwnam("postgres")
            except KeyError as e:
                raise PostgresUnavailable("running as root and no 'postgres' user exists") from e
            self.prefix = ["runuser", "-u", "postgres", "--"]
        self.dir = Path(tempfile.mkdtemp(prefix="trainproof-pg-"))
        self.url = f"postgresql+psycopg://postgres@127.0.0.1:{self.port}/postgres"

    def _run(self, *args: str) -> None:
        proc = subprocess.run([*self.prefix, *args], capture_output=True, text=True, timeout=120)
        if proc.returncode != 0:
            raise PostgresUnavailable(f"{args[0]} failed: {proc.stderr.strip()[-500:]}")

    def start(self) -> TempPostgres:
        if self.prefix:
            shutil.chown(self.dir, "postgres", "postgres")
        data = str(self.dir / "data")
        self._run(
            self.initdb, "-D", data, "-U", "postgres", "-A", "trust", "--no-sync", "-E", "UTF8"
        )
        opts = f"-p {self.port} -k {self.dir} -c listen_addresses=127.0.0.1 -c fsync=off"
        self._run(self.pg_ctl, "-D", data, "-o", opts, "-l", str(self.dir / "log"), "-w", "start")
        return self

    def create_database(self, name: str) -> str:
        """A new empty database on this server; returns its URL."""
        return create_database(self.url, name)

    def stop(self) -> None:
        data = str(self.dir / "data")
        if (self.dir / "data" / "postmaster.pid").exists():
            subprocess.run(
                [*self.prefix, self.pg_ctl, "-D", data, "-m", "immediate", "stop"],
                capture_output=True,
                timeout=60,
            )
        shutil.rmtree(self.dir, ignore_errors=True)

    def __enter__(self) -> TempPostgres:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


def _admin(url: str, statement: str, name: str) -> None:
    import psycopg
    from psycopg import sql

    dsn = make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(sql.SQL(statement).format(sql.Identifier(name)))


def create_database(server_url: str, name: str) -> str:
    """Create the empty database ``name`` on the server of ``server_url``; returns its URL."""
    _admin(server_url, "CREATE DATABASE {}", name)
    return make_url(server_url).set(database=name).render_as_string(hide_password=False)


class ExistingPostgres:
    """A PostgreSQL server that is already running (e.g. the one ``DATABASE_URL`` names): the
    databases made through it are dropped again by ``stop``; the server itself is left alone."""

    def __init__(self, url: str) -> None:
        from api.db import database_url

        self.url = database_url(url)
        self.created: list[str] = []

    def create_database(self, name: str) -> str:
        made = create_database(self.url, name)
        self.created.append(name)
        return made

    def stop(self) -> None:
        for name in self.created:
            _admin(self.url, "DROP DATABASE IF EXISTS {} WITH (FORCE)", name)
        self.created.clear()
