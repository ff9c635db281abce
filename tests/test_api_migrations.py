"""The index database's Alembic migrations (api/migrations), on SQLite and on a temporary
PostgreSQL (skipped with the reason where the server binaries are missing): the schema at head
is the models' (autogenerate finds no difference, and the DDL equals what ``create_all``
makes), a database made by ``create_all`` before migrations existed is stamped and keeps
working, migrating twice is a no-op, concurrent processes on one new database migrate it once,
downgrading to base drops every table, and the CLI and revision generator work.
"""

from __future__ import annotations

import logging
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import Column, Integer, MetaData, String, Table, create_engine, func, inspect
from sqlalchemy import select as sa_select
from sqlalchemy.engine import Engine
from typer.testing import CliRunner

from api import cli
from api.db import (
    BASELINE,
    BASELINE_TABLES,
    Base,
    Event,
    Job,
    Meta,
    alembic_config,
    current_revision,
    head_revision,
    make_engine,
    make_sessions,
    migrate,
)
from api.migrations import VERSIONS, generate_revision
from api.seed import seed

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
def engines() -> Iterator[list[Engine]]:
    """Engines to dispose of after the test (PostgreSQL keeps connections pooled)."""
    made: list[Engine] = []
    yield made
    for e in made:
        e.dispose()


def _diff(engine: Engine, metadata: MetaData = Base.metadata) -> list[Any]:
    with engine.connect() as conn:
        return compare_metadata(MigrationContext.configure(conn), metadata)


def _schema(engine: Engine) -> dict[str, Any]:
    """The database's own record of its schema, except Alembic's version table."""
    with engine.connect() as conn:
        if conn.dialect.name == "sqlite":
            rows = conn.exec_driver_sql(
                "SELECT type, name, tbl_name, sql FROM sqlite_master "
                "WHERE tbl_name != 'alembic_version'"
            )
            # whitespace aside: ALTER TABLE ADD COLUMN (revision 0003 on) writes a column's
            # text into the stored CREATE TABLE without create_all's line breaks
            return {name: (kind, table, _words(sql)) for kind, name, table, sql in rows}
        queries = {
            "columns": "SELECT table_name, column_name, ordinal_position, data_type, "
            "character_maximum_length, is_nullable, column_default "
            "FROM information_schema.columns WHERE table_schema = 'public'",
            "indexes": "SELECT tablename, indexname, indexdef FROM pg_indexes "
            "WHERE schemaname = 'public'",
            "constraints": "SELECT conrelid::regclass::text, conname, "
            "pg_get_constraintdef(oid) FROM pg_constraint "
            "WHERE connamespace = 'public'::regnamespace",
            "sequences": "SELECT sequence_name, data_type FROM information_schema.sequences "
            "WHERE sequence_schema = 'public'",
        }
        return {
            key: sorted(tuple(r) for r in conn.exec_driver_sql(q) if "alembic_version" not in r[0])
            for key, q in queries.items()
        }


def _words(sql: str | None) -> str | None:
    return None if sql is None else " ".join(sql.split())


def _create_all(url: str) -> Engine:
    """The models' schema, made directly (the reference the head revision must equal)."""
    engine = create_engine(url)
    Base.metadata.create_all(engine)
    return engine


def _made_before_migrations(url: str) -> Engine:
    """What ``make_engine``'s ``create_all`` made before migrations existed: the baseline
    revision's schema, without Alembic's version table."""
    engine = create_engine(url)
    with engine.begin() as conn:
        command.upgrade(alembic_config(conn), BASELINE)
        conn.exec_driver_sql("DROP TABLE alembic_version")
    return engine


def test_head_is_the_models_schema(new_index_url, engines) -> None:
    engine = make_engine(new_index_url())
    reference = _create_all(new_index_url())
    engines += [engine, reference]
    assert current_revision(engine) == head_revision()
    assert set(inspect(engine).get_table_names()) == BASELINE_TABLES | {"alembic_version"}
    assert _diff(engine) == []
    # stricter than autogenerate: sqlite_autoincrement, BIGSERIAL vs plain BIGINT keys,
    # index and constraint names and columns, column order
    assert _schema(engine) == _schema(reference)
    assert _schema(engine)


def _seed_baseline(legacy: Engine, jobs: int, tmp: Path) -> None:
    """``seed``'s rows in a database at the baseline revision, whose tables lack the columns
    later revisions add: seeded at head into a scratch SQLite file, then each baseline
    table's own columns copied (surrogate keys left to the database, which counts them)."""
    scratch = make_engine(f"sqlite:///{tmp / 'scratch.db'}")
    seed(make_sessions(scratch), jobs=jobs)
    baseline = MetaData()
    baseline.reflect(legacy)
    with scratch.connect() as src, legacy.begin() as dst:
        for table in baseline.sorted_tables:
            model = Base.metadata.tables[table.name]
            names = [c.name for c in table.c if not (c.name == "id" and table.name in _SURROGATE)]
            query = sa_select(*(model.c[n] for n in names)).order_by(*model.primary_key.columns)
            rows = src.execute(query).all()
            if rows:
                dst.execute(table.insert(), [dict(zip(names, r, strict=True)) for r in rows])
    scratch.dispose()


_SURROGATE = ("events", "changes")


def test_create_all_database_is_stamped(new_index_url, engines, caplog, tmp_path) -> None:
    url = new_index_url()
    legacy = _made_before_migrations(url)
    _seed_baseline(legacy, 6, tmp_path)
    legacy.dispose()
    with caplog.at_level(logging.WARNING, logger="trainproof.api.db"):
        engine = make_engine(url)
    engines.append(engine)
    assert any(f"stamping revision {BASELINE}" in r.getMessage() for r in caplog.records)
    assert current_revision(engine) == head_revision()
    assert _diff(engine) == []
    sessions = make_sessions(engine)
    with sessions.begin() as s:
        assert s.scalar(sa_select(func.count()).select_from(Job)) == 6
        last = s.scalar(sa_select(func.max(Event.id)))
        assert last is not None and last > 0
        ev = Event(
            block_number=10**6,
            log_index=0,
            tx_hash="0x" + "ab" * 32,
            timestamp=1,
            name="JobRegistered",
            data={},
        )
        s.add(ev)
        s.flush()
        assert ev.id == last + 1  # the surrogate key still counts on
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="trainproof.api.db"):
        assert migrate(engine) == head_revision()
    assert not caplog.records  # stamped once, then an ordinary migrated database


def test_partial_unversioned_schema_is_refused(new_index_url, engines) -> None:
    url = new_index_url()
    engine = create_engine(url)
    engines.append(engine)
    Base.metadata.create_all(engine, tables=[Meta.__table__, Job.__table__])
    with pytest.raises(RuntimeError, match="not a schema this code made"):
        migrate(engine)
    assert current_revision(engine) is None


def test_migrate_twice_is_a_noop(new_index_url, engines, caplog) -> None:
    url = new_index_url()
    engine = make_engine(url)
    engines.append(engine)
    with make_sessions(engine).begin() as s:
        s.add(Meta(key="tip", value="42"))
    before = _schema(engine)
    with caplog.at_level(logging.INFO, logger="alembic"):
        assert migrate(engine) == head_revision()
        engines.append(make_engine(url))
    assert not [r for r in caplog.records if "Running upgrade" in r.getMessage()]
    assert _schema(engine) == before
    with make_sessions(engine).begin() as s:
        assert s.get(Meta, "tip").value == "42"


def test_downgrade_to_base_drops_everything(new_index_url, engines) -> None:
    engine = make_engine(new_index_url())
    engines.append(engine)
    with engine.begin() as conn:
        command.downgrade(alembic_config(conn), "base")
    assert set(inspect(engine).get_table_names()) <= {"alembic_version"}
    assert current_revision(engine) is None
    if engine.dialect.name == "postgresql":
        assert _schema(engine) == {"columns": [], "indexes": [], "constraints": [], "sequences": []}
    else:  # only SQLite's own AUTOINCREMENT bookkeeping, which cannot be dropped
        assert set(_schema(engine)) == {"sqlite_sequence"}
    assert migrate(engine) == head_revision()  # and back up again
    assert _diff(engine) == []


_CHILD = """
import logging, sys, time
logging.basicConfig(level=logging.INFO, format="%(name)s %(message)s")
from api.db import current_revision, make_engine
time.sleep(max(0.0, float(sys.argv[2]) - time.time()))
engine = make_engine(sys.argv[1])
print("revision", current_revision(engine))
"""


def test_concurrent_processes_migrate_once(new_index_url, engines) -> None:
    """Processes opening one new database at the same moment: one migrates, the others wait
    on its lock (SQLite BEGIN IMMEDIATE, a PostgreSQL advisory lock) and find it at head."""
    url = new_index_url()
    start_at = time.time() + 4.0  # after every child has imported
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", _CHILD, url, str(start_at)],
            cwd=ROOT,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(4)
    ]
    outs = [p.communicate(timeout=120) for p in procs]
    for p, (out, err) in zip(procs, outs, strict=True):
        assert p.returncode == 0, err[-2000:]
        assert out.strip() == f"revision {head_revision()}", err[-2000:]
    assert sum("Running upgrade" in err for _, err in outs) == 1  # one process migrated
    engine = create_engine(url)
    reference = _create_all(new_index_url())
    engines += [engine, reference]
    assert _diff(engine) == []
    assert _schema(engine) == _schema(reference)


def test_concurrent_threads_with_separate_engines(new_index_url, engines) -> None:
    url = new_index_url()
    barrier = threading.Barrier(4)
    errors: list[BaseException] = []

    def open_engine() -> None:
        barrier.wait()
        try:
            engines.append(make_engine(url))
        except BaseException as e:
            errors.append(e)

    threads = [threading.Thread(target=open_engine) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert {current_revision(e) for e in engines} == {head_revision()}
    assert _diff(engines[0]) == []


def test_cli_migrate(tmp_path) -> None:
    runner = CliRunner()
    db = tmp_path / "cli.db"
    for _ in range(2):
        r = runner.invoke(cli.app, ["migrate", "--db", str(db)])
        assert r.exit_code == 0, r.output
        assert f"revision {head_revision()} (head)" in r.output
    engine = make_engine(str(db))
    try:
        assert current_revision(engine) == head_revision()
    finally:
        engine.dispose()
    help_ = runner.invoke(cli.app, ["migrate", "--help"])
    assert help_.exit_code == 0 and "newest revision" in help_.output
    before = sorted(p.name for p in VERSIONS.iterdir())
    r = runner.invoke(cli.app, ["revision", "-m", "nothing", "--db", str(tmp_path / "r.db")])
    assert r.exit_code == 1 and "nothing to generate" in r.output
    assert sorted(p.name for p in VERSIONS.iterdir()) == before


def test_generated_revision_applies(new_index_url, engines, tmp_path) -> None:
    """The developer path: change the models, autogenerate the next revision (numbered,
    ruff-clean), apply it, and the database matches the changed models."""
    versions = tmp_path / "versions"
    versions.mkdir()
    for revision in VERSIONS.glob("[0-9]*.py"):
        shutil.copy(revision, versions)
    head = head_revision()
    following = f"{int(head) + 1:04d}"
    changed = MetaData()
    for table in Base.metadata.tables.values():
        table.to_metadata(changed)
    changed.tables["jobs"].append_column(Column("note", String(32), nullable=True))
    Table("notes", changed, Column("id", Integer, primary_key=True), Column("body", String(80)))
    path = generate_revision("add notes", new_index_url(), versions=versions, metadata=changed)
    assert path is not None and path.name == f"{following}_add_notes.py"
    text = path.read_text()
    assert f"down_revision: str | Sequence[str] | None = '{head}'" in text.replace('"', "'")
    assert "create_table" in text and "add_column" in text and "drop_column" in text
    ruff = Path(sys.executable).parent / "ruff"
    if ruff.exists():
        lint = subprocess.run([str(ruff), "check", str(path)], capture_output=True, text=True)
        assert lint.returncode == 0, lint.stdout

    engine = make_engine(new_index_url())
    engines.append(engine)
    with engine.begin() as conn:
        cfg = alembic_config(conn)
        cfg.set_main_option("version_locations", str(versions))
        command.upgrade(cfg, "head")
    assert current_revision(engine) == following
    assert _diff(engine, changed) == []
    with engine.begin() as conn:
        cfg = alembic_config(conn)
        cfg.set_main_option("version_locations", str(versions))
        command.downgrade(cfg, head)
    assert _diff(engine) == []
