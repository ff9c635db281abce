"""Bonded coverage (docs/protocol.md §6): attestations count for the bonded coverage only when
their signer has posted a dispute bond or a stake in the contract; fresh keys, the job's own
trainer and requester raise the raw coverage only. SQLite index (the query is plain SQL)."""

from __future__ import annotations

import secrets
from collections.abc import Iterator
from typing import Any

import pytest
from eth_account import Account
from fastapi.testclient import TestClient
from test_api import NOW, _attestation

from api.app import create_app
from api.db import Game, Job, make_engine, make_sessions
from api.seed import seed


@pytest.fixture
def world(tmp_path) -> Iterator[tuple[TestClient, list[str], list[str], Any]]:
    """A seeded index, two keys that posted a dispute bond (a game each on job 3), one that
    staked job 4 as its trainer, and three fresh keys."""
    engine = make_engine(f"sqlite:///{tmp_path / 'index.db'}")
    sessions = make_sessions(engine)
    seed(sessions, jobs=24)
    bonded = ["0x" + secrets.token_hex(32) for _ in range(3)]
    fresh = ["0x" + secrets.token_hex(32) for _ in range(3)]
    with sessions() as s, s.begin():
        template = s.get(Game, 1)
        assert template is not None
        for n, key in enumerate(bonded[:2]):
            s.add(
                Game(
                    id=1000 + n, job_id=3, challenger=Account.from_key(key).address,
                    interval=0, bond=template.bond, phase=11, trainer_clock=1,
                    challenger_clock=1, last_move=1, opened_at=1, updated_block=1,
                )
            )  # fmt: skip
        job4 = s.get(Job, 4)
        assert job4 is not None
        job4.trainer = Account.from_key(bonded[2]).address
    app = create_app(sessions, now=lambda: NOW)
    with TestClient(app) as c:
        yield c, bonded, fresh, sessions
    engine.dispose()


def test_bonded_coverage_counts_only_signers_with_money_at_risk(world) -> None:
    client, bonded, fresh, _ = world
    job = client.get("/v1/jobs/8").json()
    assert job["status"] == "committed"
    for key in fresh:  # a Sybil's free keys: interval 0 reaches ">= 3" raw coverage
        r = client.post("/v1/attestations", json=_attestation(key, job, 0, NOW))
        assert r.status_code == 201
    cov = client.get("/v1/jobs/8/coverage").json()
    assert cov["covered_3"] == 0.25 and cov["bonded_covered_1"] == 0.0
    for key in bonded:  # two dispute bonds and a stake: interval 1 has 3 bonded signers
        r = client.post("/v1/attestations", json=_attestation(key, job, 1, NOW))
        assert r.status_code == 201
    cov = client.get("/v1/jobs/8/coverage").json()
    per = {p["interval"]: (p["challengers"], p["bonded_challengers"]) for p in cov["per_interval"]}
    assert per == {0: (3, 0), 1: (3, 3)}
    assert (cov["covered_1"], cov["covered_3"]) == (0.5, 0.5)
    assert (cov["bonded_covered_1"], cov["bonded_covered_3"]) == (0.25, 0.25)


def test_a_jobs_own_trainer_and_requester_are_not_bonded_coverage_of_it(world) -> None:
    """Money at risk elsewhere does not make a party's word about its own job worth anything."""
    client, bonded, _, sessions = world
    with sessions() as s, s.begin():
        job8 = s.get(Job, 8)
        assert job8 is not None
        job8.trainer = Account.from_key(bonded[2]).address  # also staked job 4
        job8.requester = Account.from_key(bonded[0]).address  # also posted a dispute bond
    job = client.get("/v1/jobs/8").json()
    for key in bonded:
        r = client.post("/v1/attestations", json=_attestation(key, job, 2, NOW))
        assert r.status_code == 201
    cov = client.get("/v1/jobs/8/coverage").json()
    per = {p["interval"]: (p["challengers"], p["bonded_challengers"]) for p in cov["per_interval"]}
    assert per == {2: (3, 1)}  # only bonded[1], a challenger of another job's game
