"""The status endpoint's fast path (one Core statement, on the event loop) against the ORM path
of the job detail and the index position, on SQLite and on PostgreSQL: every seeded job, a job
with two games, a tip without its block row, and an index without a tip."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import delete, select
from sqlalchemy.orm import sessionmaker

from api.app import create_app
from api.db import Block, Game, Job, Meta, make_engine, make_sessions
from api.seed import CHALLENGERS, seed

JOBS = 12


@pytest.fixture
def sessions(new_index_url) -> Iterator[sessionmaker]:
    engine = make_engine(new_index_url())
    made = make_sessions(engine)
    seed(made, jobs=JOBS)
    yield made
    engine.dispose()


def _second_game(sessions: sessionmaker, job_id: int) -> int:
    """A second challenger's game on ``job_id``, still open (the job's counters follow)."""
    with sessions.begin() as s:
        first = s.scalars(select(Game).where(Game.job_id == job_id)).one()
        new_id = (s.scalar(select(Game.id).order_by(Game.id.desc()).limit(1)) or 0) + 1
        fields = {c.name: getattr(first, c.name) for c in Game.__table__.c}
        fields.update(id=new_id, challenger=CHALLENGERS[7], phase=1, seq=0, resolved_at=None)
        fields.update(trainer_won=None, reason=None, settled=False)
        s.add(Game(**fields))
        job = s.get(Job, job_id)
        job.games_total += 1
        job.open_games += 1
    return new_id


def test_status_agrees_with_detail_for_every_job(sessions) -> None:
    second = _second_game(sessions, 3)
    with TestClient(create_app(sessions)) as client:
        index = client.get("/v1/index").json()
        for job_id in range(1, JOBS + 1):
            status = client.get(f"/v1/jobs/{job_id}/status")
            detail = client.get(f"/v1/jobs/{job_id}").json()
            assert status.status_code == 200, status.text
            st = status.json()
            assert st["status"] == detail["status"]
            assert st["run_root"] == detail["run_root"]
            assert st["challenge_deadline"] == detail["challenge_deadline"]
            assert st["games"] == detail["games"], job_id
            assert (st["as_of_block"], st["as_of_timestamp"]) == (
                index["tip"],
                index["tip_timestamp"],
            )
        two = client.get("/v1/jobs/3/status").json()
        assert [g["id"] for g in two["games"]] == sorted(g["id"] for g in two["games"])
        assert second in [g["id"] for g in two["games"]] and len(two["games"]) == 2
        assert two["status"] == "disputed"


def test_status_without_tip_block_or_tip(sessions) -> None:
    with TestClient(create_app(sessions)) as client:
        tip = client.get("/v1/index").json()["tip"]
        with sessions.begin() as s:
            s.execute(delete(Block).where(Block.number == tip))
        st = client.get("/v1/jobs/2/status").json()
        assert (st["as_of_block"], st["as_of_timestamp"]) == (tip, None)
        assert st["window_open"] is True  # no timestamp: the window counts as open
        with sessions.begin() as s:
            s.execute(delete(Meta).where(Meta.key == "tip"))
        st = client.get("/v1/jobs/2/status").json()
        assert (st["as_of_block"], st["as_of_timestamp"]) == (-1, None)
        assert client.get("/v1/index").json()["tip"] == -1


def test_status_errors_are_problems(sessions) -> None:
    with TestClient(create_app(sessions)) as client:
        for path in ("/v1/jobs/999/status", "/v1/jobs/0/status", f"/v1/jobs/{2**53}/status"):
            r = client.get(path)
            assert r.status_code == 404, path
            assert r.headers["content-type"].startswith("application/problem+json")
        r = client.get("/v1/jobs/abc/status")
        assert r.status_code == 422
