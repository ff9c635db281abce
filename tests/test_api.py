"""The REST API over a seeded index, on SQLite and on a real PostgreSQL (started from the
installed server binaries; skipped with the reason when there are none): listing, filters,
status, disputes, records, ETags, problem+json errors, EIP-712 attestations and coverage, SSE,
the dashboard's files, and a reorg rollback in the derived tables.
"""

from __future__ import annotations

import json
import secrets
from collections.abc import Iterator

import pytest
from eth_account import Account
from fastapi.testclient import TestClient

from api.app import create_app
from api.db import make_engine, make_sessions
from api.seed import CHAIN_ID, CONTRACT, REQUESTERS, TRAINERS, seed
from protocol import attestation as attest

NOW = 1_900_000_000.0


@pytest.fixture(scope="module")
def client(index_url) -> Iterator[TestClient]:
    engine = make_engine(index_url)
    sessions = make_sessions(engine)
    seed(sessions, jobs=24)
    app = create_app(sessions, now=lambda: NOW, sse_poll_s=0.01)
    with TestClient(app) as c:
        yield c
    engine.dispose()


def test_jobs_listing_filters_and_pagination(client) -> None:
    page = client.get("/v1/jobs", params={"limit": 10}).json()
    assert page["total"] == 24 and len(page["items"]) == 10 and page["next_offset"] == 10
    assert [j["id"] for j in page["items"]] == list(range(24, 14, -1))
    last = client.get("/v1/jobs", params={"limit": 10, "offset": 20}).json()
    assert len(last["items"]) == 4 and last["next_offset"] is None
    by_status = {}
    for st in ("open", "training", "committed", "disputed", "finalized", "rejected"):
        items = client.get("/v1/jobs", params={"status": st, "limit": 100}).json()["items"]
        assert items and all(j["status"] == st for j in items)
        by_status[st] = {j["id"] for j in items}
    assert by_status["disputed"] == {j for j in range(1, 25) if j % 6 == 3}
    assert by_status["rejected"] == {j for j in range(1, 25) if j % 6 == 5}
    t = TRAINERS[1]
    items = client.get("/v1/jobs", params={"trainer": t.lower(), "limit": 100}).json()["items"]
    assert items and all(j["trainer"] == t for j in items)
    r = REQUESTERS[2]
    items = client.get("/v1/jobs", params={"requester": r, "limit": 100}).json()["items"]
    assert {j["id"] for j in items} == {j for j in range(1, 25) if j % 8 == 2}


def test_status_and_dispute_detail(client) -> None:
    st = client.get("/v1/jobs/3/status").json()
    assert st["status"] == "disputed" and st["window_open"] is True
    (g,) = st["games"]
    assert g["level"] == "partial" and g["to_move"] == "trainer"
    d = client.get(f"/v1/disputes/{g['id']}").json()
    assert [lv["level"] for lv in d["levels"]] == ["trace", "op", "chunk", "element"]
    trace = d["levels"][0]["moves"]
    assert [m["seq"] for m in trace] == list(range(len(trace)))
    rejected = client.get("/v1/jobs/5/status").json()
    assert rejected["status"] == "rejected"
    assert rejected["games"][0]["trainer_won"] is False
    assert rejected["games"][0]["level"] == "resolved"
    assert client.get("/v1/jobs/2/status").json()["status"] == "committed"
    assert client.get("/v1/jobs/1/status").json()["status"] == "training"
    cps = client.get("/v1/jobs/2/checkpoints").json()
    assert [c["step"] for c in cps["checkpoints"]] == [0, 10, 20, 30, 40]
    detail = client.get("/v1/jobs/4").json()
    assert [e["event"] for e in detail["timeline"]] == [
        "JobRegistered",
        "JobAccepted",
        "CheckpointRoots",
        "RunCommitted",
        "JobClosed",
    ]
    running = client.get("/v1/disputes", params={"running": True}).json()
    assert running["items"] and all(i["resolved_at"] is None for i in running["items"])


def test_records(client) -> None:
    trainer = client.get("/v1/jobs/5").json()["trainer"]
    rec = client.get(f"/v1/accounts/{trainer}").json()
    assert rec["as_trainer"]["losses"] >= 1 and int(rec["as_trainer"]["slashed"]) >= 10**18
    fin_trainer = client.get("/v1/jobs/4").json()["trainer"]
    rec = client.get(f"/v1/accounts/{fin_trainer}").json()
    assert int(rec["as_trainer"]["earned"]) >= 15 * 10**17


def test_etag_and_problem_json(client) -> None:
    r = client.get("/v1/jobs/3/status")
    tag = r.headers["etag"]
    assert client.get("/v1/jobs/3/status", headers={"If-None-Match": tag}).status_code == 304
    missing = client.get("/v1/jobs/999999")
    assert missing.status_code == 404
    assert missing.headers["content-type"].startswith("application/problem+json")
    assert missing.json()["title"] == "Job not found" and missing.json()["status"] == 404
    bad = client.get("/v1/jobs", params={"trainer": "0x1234"})
    assert bad.status_code == 422
    assert bad.headers["content-type"].startswith("application/problem+json")
    assert "trainer" in bad.json()["detail"]
    assert client.get("/v1/accounts/not-an-address").status_code == 422
    assert client.get("/v1/jobs", params={"status": "bogus"}).status_code == 422
    assert client.get("/v1/nope").json()["status"] == 404


def _attestation(key: str, job: dict, interval: int, ts: float, nonce: str | None = None) -> dict:
    acct = Account.from_key(key)
    fields = {
        "job_id": job["id"],
        "run_root": job["run_root"],
        "interval": interval,
        "challenger": acct.address,
        "timestamp": int(ts),
        "nonce": nonce or "0x" + secrets.token_hex(32),
    }
    sig = attest.sign(key, CHAIN_ID, CONTRACT, **fields)
    return {**fields, "signature": sig}


def test_attestations_and_coverage(client) -> None:
    job = client.get("/v1/jobs/8").json()
    assert job["status"] == "committed" and job["intervals"] == 4
    keys = ["0x" + secrets.token_hex(32) for _ in range(3)]
    for k in keys:
        r = client.post("/v1/attestations", json=_attestation(k, job, 0, NOW - 5))
        assert r.status_code == 201, r.text
    r = client.post("/v1/attestations", json=_attestation(keys[0], job, 2, NOW))
    assert r.status_code == 201
    cov = client.get("/v1/jobs/8/coverage").json()
    assert cov["attestations"] == 4
    assert cov["covered_1"] == 0.5 and cov["covered_3"] == 0.25
    assert {p["interval"]: p["challengers"] for p in cov["per_interval"]} == {0: 3, 2: 1}

    # replay: the same signed body again, and a new message reusing a nonce
    body = _attestation(keys[1], job, 1, NOW)
    assert client.post("/v1/attestations", json=body).status_code == 201
    again = client.post("/v1/attestations", json=body)
    assert again.status_code == 409 and again.json()["title"] == "Replayed attestation"
    reuse = _attestation(keys[1], job, 3, NOW, nonce=body["nonce"])
    assert client.post("/v1/attestations", json=reuse).status_code == 409
    # expired, from the future
    old = client.post("/v1/attestations", json=_attestation(keys[2], job, 1, NOW - 3600))
    assert old.status_code == 400 and old.json()["title"] == "Expired attestation"
    future = client.post("/v1/attestations", json=_attestation(keys[2], job, 1, NOW + 3600))
    assert future.status_code == 400
    # signed by someone else than the claimed challenger
    forged = _attestation(keys[2], job, 1, NOW)
    forged["challenger"] = Account.from_key(keys[0]).address
    bad = client.post("/v1/attestations", json=forged)
    assert bad.status_code == 400 and bad.json()["title"] == "Bad signature"
    assert bad.headers["content-type"].startswith("application/problem+json")
    # tampered field: the signature no longer recovers the challenger
    tampered = {**_attestation(keys[2], job, 1, NOW), "interval": 3}
    assert client.post("/v1/attestations", json=tampered).status_code == 400
    # wrong run root, no such interval, malformed fields
    wrong = _attestation(keys[2], {**job, "run_root": "0x" + "11" * 32}, 1, NOW)
    assert client.post("/v1/attestations", json=wrong).status_code == 409
    assert (
        client.post("/v1/attestations", json=_attestation(keys[2], job, 9, NOW)).status_code == 400
    )
    malformed = {**_attestation(keys[2], job, 1, NOW), "challenger": "0xzz"}
    assert client.post("/v1/attestations", json=malformed).status_code == 422
    assert client.get("/v1/jobs/8/coverage").json()["attestations"] == 5
    assert client.get("/v1/attestations/domain").json()["domain"]["chainId"] == CHAIN_ID


def test_sse_stream(client) -> None:
    with client.stream("GET", "/v1/events", params={"after": 0, "limit": 5, "job_id": 3}) as r:
        assert r.headers["content-type"].startswith("text/event-stream")
        text = "".join(r.iter_text())
    frames = [f for f in text.split("\n\n") if f.startswith("id:")]
    assert len(frames) == 5
    first = json.loads(frames[0].split("data: ", 1)[1])
    assert first["job_id"] == 3 and first["status"] == "open"
    kinds = [f.split("\n")[1] for f in frames]
    assert "event: game" in kinds or "event: job" in kinds


def test_dashboard_served(client) -> None:
    r = client.get("/", follow_redirects=True)
    assert r.status_code == 200 and "trainproof" in r.text
    assert client.get("/dashboard/app.js").status_code == 200


def test_reorg_rollback_rederives(new_index_url) -> None:
    """Rollback without a chain: events after a block vanish and the jobs they touched are
    re-derived from what remains (the indexer's rollback path)."""
    from api.indexer import Indexer

    engine = make_engine(new_index_url())
    sessions = make_sessions(engine)
    seed(sessions, jobs=6)
    client = TestClient(create_app(sessions, now=lambda: NOW))
    assert client.get("/v1/jobs/5/status").json()["status"] == "rejected"
    block = client.get("/v1/jobs/5").json()["timeline"][3]["block_number"]  # RunCommitted

    class NoChain(Indexer):
        def __init__(self) -> None:
            self.sessions, self.start_block = sessions, 0

        def _refresh_games(self, s, game_ids, block) -> None:  # no chain to read views from
            pass

    NoChain().rollback(block)
    st = client.get("/v1/jobs/5/status").json()
    assert st["status"] == "committed" and st["games"] == []
    assert client.get("/v1/jobs/3/status").json()["status"] == "disputed"  # earlier: kept
    assert client.get("/v1/jobs/6").status_code == 404  # registered after the fork
    assert client.get("/v1/index").json()["tip"] == block
    engine.dispose()
