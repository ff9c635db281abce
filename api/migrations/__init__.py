"""Alembic environment of the API's index database (``api.db.migrate`` runs it; no alembic.ini).

``env.py`` is executed by Alembic, not imported; ``versions/`` holds the revisions, named
``NNNN_slug.py`` with ``NNNN`` as the revision id. New revision: ``trainproof api revision -m``.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import MetaData

VERSIONS = Path(__file__).resolve().parent / "versions"


def generate_revision(
    message: str,
    db: str | None = None,
    versions: Path = VERSIONS,
    metadata: MetaData | None = None,
) -> Path | None:
    """Autogenerate the next revision (``NNNN_slug.py`` in ``versions``) from the difference
    between the models (``metadata``, default ``api.db.Base.metadata``) and the schema at head,
    as migrated into ``db`` (default: a scratch SQLite file). Returns None, writing nothing,
    when there is no difference. Review the result: autogenerate misses renames and some
    type changes, and SQLite reflects less than PostgreSQL."""
    from api.db import alembic_config, make_engine

    with tempfile.TemporaryDirectory(prefix="trainproof-rev-") as tmp:
        engine = make_engine(db or f"sqlite:///{tmp}/head.db")
        try:
            with engine.begin() as conn:
                cfg = alembic_config(conn)
                cfg.set_main_option("version_locations", str(versions).replace("%", "%%"))
                cfg.set_main_option("file_template", "%%(rev)s_%%(slug)s")
                if metadata is not None:
                    cfg.attributes["target_metadata"] = metadata
                target = metadata if metadata is not None else _models()
                if not compare_metadata(MigrationContext.configure(conn), target):
                    return None
                revs = ScriptDirectory.from_config(cfg).walk_revisions()
                rev_id = f"{max(int(s.revision) for s in revs) + 1:04d}"
                script = command.revision(cfg, message=message, autogenerate=True, rev_id=rev_id)
        finally:
            engine.dispose()
    assert script is not None and not isinstance(script, list)
    path = Path(script.path)
    _ruff(path)
    return path


def _models() -> MetaData:
    from api.db import Base

    return Base.metadata


def _ruff(path: Path) -> None:
    """Lint-fix and format a generated revision with the project's ruff, when installed."""
    ruff = shutil.which("ruff", path=str(Path(sys.executable).parent)) or shutil.which("ruff")
    if ruff is None:
        return
    subprocess.run([ruff, "check", "--fix", "--quiet", str(path)], check=False)
    subprocess.run([ruff, "format", "--quiet", str(path)], check=False)
