"""The API's bundle checker (api/bundles.py, docs/protocol.md §7) on real bundles: written
into a FileStore and served over HTTP by the blob server, fetched and verified for each
indexed job. A complete bundle reads ``verified``; a missing blob ``unavailable``, checked
again later with a growing delay until it appears; a blob tampered with in the store, or a
bundle that does not bind the job's roots, ``invalid`` with the part named; no stores
``unchecked``. The verdicts are what ``/v1/jobs``, ``/v1/jobs/{id}`` and
``/v1/jobs/{id}/status`` report. On a real chain (ape's network and anvil), jobs registered
with ``job_spec_for(comp, bundle=...)`` are indexed and checked, and ``trainproof api index
--store`` prints the verdicts.
"""

from __future__ import annotations

import functools
import logging
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select
from sqlalchemy.orm import sessionmaker
from typer.testing import CliRunner
from web3 import Web3

from api import cli
from api.app import create_app
from api.bundles import NO_STORES, BundleChecker
from api.db import Change, Event, Job, Meta, make_engine, make_sessions
from api.derive import apply
from api.indexer import Indexer
from protocol.blobs import FileStore, make_server
from protocol.chain import Deployment
from protocol.game import JobSpec, JobStatus
from replay.dispute.players import Computation, example_computation, job_spec_for, write_job_bundle

STEPS, EVERY = 4, 2
T0 = 1_900_000_000
REQUESTER = "0x" + "12" * 20
ECONOMICS = {"stake": 10**18, "bond": 10**17, "clock": 3600, "window": 7200, "train_time": 3600}
BASE_DELAY = 60.0


@functools.cache
def computation() -> Computation:
    return example_computation("digits-mlp", STEPS, EVERY)


@functools.cache
def other_computation() -> Computation:
    """Another job's computation (more steps): its bundle is never published."""
    return example_computation("digits-mlp", 2 * STEPS, EVERY)


@pytest.fixture
def store(tmp_path: Path) -> FileStore:
    return FileStore(tmp_path / "store")


@pytest.fixture
def bundle(store: FileStore) -> bytes:
    """The bundle of ``computation()``, published into ``store``: its 32-byte address."""
    return write_job_bundle(store, computation())


@pytest.fixture
def served(store: FileStore) -> Iterator[str]:
    """``store`` over HTTP (``trainproof blobs serve``)."""
    server = make_server(store)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


@pytest.fixture
def sessions(new_index_url: Callable[[], str]) -> Iterator[sessionmaker]:
    engine = make_engine(new_index_url())
    yield make_sessions(engine)
    engine.dispose()


class Clock:
    def __init__(self) -> None:
        self.now = float(T0)

    def __call__(self) -> float:
        return self.now


def register(sessions: sessionmaker, job_id: int, spec: JobSpec, block: int = 1) -> None:
    """A JobRegistered event of ``spec``, folded in as the indexer does."""
    data = {k: "0x" + v.hex() if isinstance(v, bytes) else v for k, v in spec.model_dump().items()}
    with sessions.begin() as s:
        ev = Event(
            block_number=block,
            log_index=job_id,
            tx_hash="0x" + f"{job_id:064x}",
            timestamp=T0,
            name="JobRegistered",
            job_id=job_id,
            data={
                "job_id": job_id,
                "job_hash": "0x" + "11" * 32,
                "requester": REQUESTER,
                "spec": data,
                "reward": 5 * 10**17,
            },
        )
        s.add(ev)
        s.flush()
        apply(s, ev)
        s.merge(Meta(key="tip", value=str(block)))


def spec_of(bundle: bytes, **changes: object) -> JobSpec:
    spec = job_spec_for(computation(), bundle=bundle, **ECONOMICS)
    return spec.model_copy(update=changes) if changes else spec


def checker(sessions: sessionmaker, stores: list[str] | None, clock: Clock, **kw) -> BundleChecker:
    return BundleChecker(sessions, stores, clock=clock, base_delay_s=BASE_DELAY, **kw)


def api(sessions: sessionmaker, job_id: int) -> dict:
    """The ``bundle`` object of the job, the same in all three job responses."""
    client = TestClient(create_app(sessions))
    status = client.get(f"/v1/jobs/{job_id}/status").json()["bundle"]
    assert client.get(f"/v1/jobs/{job_id}").json()["bundle"] == status
    listed = {j["id"]: j["bundle"] for j in client.get("/v1/jobs").json()["items"]}
    assert listed[job_id] == status
    return status


def batch_address(store: FileStore, bundle: bytes, step: int) -> str:
    from replay.data.bundle import Bundle

    opened = Bundle.open(store, bundle.hex())
    return opened.dataset.page(step // opened.manifest.dataset.page_steps).batches[step]


def blob_file(store: FileStore, address: str) -> Path:
    return store.root / "blobs" / address[:2] / address[2:]


# ---------------------------------------------------------------- verdicts


@pytest.mark.parametrize("where", ["folder", "http"])
def test_a_complete_bundle_is_verified(sessions, store, bundle, served, where, caplog) -> None:
    register(sessions, 1, spec_of(bundle))
    assert api(sessions, 1)["status"] == "unchecked"  # indexed, not yet checked
    clock = Clock()
    location = str(store.root) if where == "folder" else served
    with caplog.at_level(logging.INFO, logger="trainproof.api.bundles"):
        (verdict,) = checker(sessions, [location], clock).run_once()
    assert verdict.status == "verified"
    assert api(sessions, 1) == {
        "address": "0x" + bundle.hex(),
        "status": "verified",
        "unverifiable": False,
        "part": None,
        "why": None,
        "scope": f"complete: {STEPS} batches, 1 pages",
        "checked_at": T0,
        "tries": 0,
        "next_check": None,  # a complete verdict is final
    }
    line = f"event=bundle_checked job=1 bundle=0x{bundle.hex()} status=verified part=None"
    assert any(line in r.getMessage() for r in caplog.records), caplog.text
    clock.now += 10 * 86400
    assert checker(sessions, [location], clock).run_once() == []  # nothing is due
    with sessions() as s:  # frontends following the SSE feed hear of it
        (change,) = [c for c in s.scalars(select(Change)) if "bundle" in c.data]
        assert change.kind == "job" and change.job_id == 1
        assert change.data == {"status": "open", "bundle": "verified"}


def test_a_missing_blob_is_unavailable_and_retried_later(sessions, store, bundle, served) -> None:
    register(sessions, 1, spec_of(bundle))
    address = batch_address(store, bundle, 2)
    kept = blob_file(store, address).read_bytes()
    blob_file(store, address).unlink()
    clock = Clock()
    check = checker(sessions, [served, str(store.root)], clock)
    (v,) = check.run_once()
    assert (v.status, v.part) == ("unavailable", "batch of step 2")
    first = api(sessions, 1)
    assert first["status"] == "unavailable" and first["unverifiable"] is True
    assert first["part"] == "batch of step 2" and address in first["why"]
    assert first["tries"] == 1 and first["next_check"] == T0 + BASE_DELAY

    clock.now += BASE_DELAY - 1
    assert check.run_once() == []  # backing off
    clock.now += 1
    (v,) = check.run_once()
    assert v.status == "unavailable"
    second = api(sessions, 1)
    assert second["tries"] == 2 and second["checked_at"] == clock.now
    assert second["next_check"] - clock.now == 2 * BASE_DELAY  # the delay grows

    FileStore(store.root).put(kept)  # the blob is published after all
    clock.now = second["next_check"]
    (v,) = check.run_once()
    assert v.status == "verified"
    third = api(sessions, 1)
    assert third["status"] == "verified" and third["unverifiable"] is False
    assert (third["part"], third["why"], third["tries"]) == (None, None, 0)


def test_an_unreachable_store_is_unavailable(sessions, bundle) -> None:
    from protocol.anvil import free_port

    register(sessions, 1, spec_of(bundle))
    (_v,) = checker(sessions, [f"http://127.0.0.1:{free_port()}"], Clock()).run_once()
    got = api(sessions, 1)
    assert (got["status"], got["part"]) == ("unavailable", "manifest")
    assert "unreachable" in got["why"] and got["next_check"] == T0 + BASE_DELAY


@pytest.mark.parametrize("where", ["folder", "http"])
def test_a_tampered_blob_is_invalid(sessions, store, bundle, served, where, caplog) -> None:
    register(sessions, 1, spec_of(bundle))
    blob_file(store, batch_address(store, bundle, 1)).write_bytes(b"garbage")
    location = str(store.root) if where == "folder" else served
    with caplog.at_level(logging.INFO, logger="trainproof.api.bundles"):
        (_v,) = checker(sessions, [location], Clock()).run_once()
    got = api(sessions, 1)
    assert (got["status"], got["part"], got["unverifiable"]) == ("invalid", "batch of step 1", True)
    assert got["why"]
    # a store's bad copy may be repaired (or another store have a good one): checked again
    assert got["next_check"] == T0 + BASE_DELAY
    assert any("status=invalid part=batch of step 1" in r.getMessage() for r in caplog.records), (
        caplog.text
    )


def test_a_bundle_that_does_not_bind_the_job_is_invalid(sessions, store, bundle) -> None:
    other = other_computation()
    register(sessions, 1, spec_of(bundle, dataset_root=other.dataset.root(other.steps)))
    register(sessions, 2, spec_of(b"\0" * 32), block=2)
    done = checker(sessions, [str(store.root)], Clock()).run_once()
    assert [v.status for v in done] == ["invalid", "invalid"]
    first = api(sessions, 1)
    assert first["part"] == "manifest" and "dataset root" in first["why"]
    assert first["unverifiable"] is True
    assert first["next_check"] is None  # content that does not verify never will
    second = api(sessions, 2)
    assert (second["address"], second["part"]) == ("0x" + "00" * 32, "manifest")
    assert "binds no bundle" in second["why"]


def test_no_stores_leaves_bundles_unchecked(sessions, bundle, tmp_path) -> None:
    register(sessions, 1, spec_of(bundle))
    assert checker(sessions, None, Clock()).run_once() == []
    got = api(sessions, 1)
    assert got == {
        "address": "0x" + bundle.hex(),
        "status": "unchecked",
        "unverifiable": False,  # not known either way
        "part": None,
        "why": NO_STORES,
        "scope": None,
        "checked_at": None,
        "tries": 0,
        "next_check": None,
    }
    # stores configured later (a restart with --store): the job is checked then
    (v,) = checker(sessions, [str(tmp_path / "empty")], Clock()).run_once()
    assert (v.status, v.part) == ("unavailable", "manifest")


def test_a_check_that_fails_is_tried_again(sessions, store, bundle, monkeypatch) -> None:
    from api import bundles

    def broken(*args: object, **kw: object) -> None:
        raise RuntimeError("no such luck")

    register(sessions, 1, spec_of(bundle))
    monkeypatch.setattr(bundles.Bundle, "open", broken)
    clock = Clock()
    check = checker(sessions, [str(store.root)], clock)
    (v,) = check.run_once()
    got = api(sessions, 1)
    assert got["status"] == "unchecked" and "RuntimeError: no such luck" in got["why"]
    assert got["next_check"] == T0 + BASE_DELAY and check.run_once() == []
    monkeypatch.undo()
    clock.now += BASE_DELAY
    (v,) = check.run_once()
    assert v.status == "verified"


def test_the_checker_thread_serves_while_it_checks(sessions, store, bundle) -> None:
    """As in ``trainproof api serve``: the checker on its own thread, the API answering."""
    register(sessions, 1, spec_of(bundle))
    stop = threading.Event()
    thread = threading.Thread(
        target=BundleChecker(sessions, [str(store.root)]).run_forever, args=(0.05, stop)
    )
    thread.start()
    try:
        client = TestClient(create_app(sessions))
        for _ in range(400):
            if client.get("/v1/jobs/1/status").json()["bundle"]["status"] != "unchecked":
                break
            stop.wait(0.05)
    finally:
        stop.set()
        thread.join(timeout=30)
    assert not thread.is_alive()
    assert api(sessions, 1)["status"] == "verified"


def test_a_big_dataset_is_sampled(sessions, store, bundle) -> None:
    register(sessions, 1, spec_of(bundle))
    clock = Clock()
    (_v,) = checker(sessions, [str(store.root)], clock, full_steps=2, sample=1).run_once()
    got = api(sessions, 1)
    assert got["status"] == "verified" and got["scope"].startswith("sampled: ")
    assert f"of {STEPS} batches" in got["scope"]
    assert got["next_check"] == T0 + 6 * 3600  # sampled again, afresh, later


def test_a_reorg_keeps_the_verdict(sessions, store, bundle) -> None:
    register(sessions, 1, spec_of(bundle))
    checker(sessions, [str(store.root)], Clock()).run_once()
    with sessions.begin() as s:  # the job is accepted in block 5, then that block reorged
        ev = Event(
            block_number=5,
            log_index=0,
            tx_hash="0x" + "ab" * 32,
            timestamp=T0 + 60,
            name="JobAccepted",
            job_id=1,
            data={"job_id": 1, "trainer": REQUESTER, "stake": 1, "commit_deadline": T0 + 3600},
        )
        s.add(ev)
        s.flush()
        apply(s, ev)
    assert TestClient(create_app(sessions)).get("/v1/jobs/1").json()["status"] == "training"
    Indexer(Web3(), "0x" + "00" * 20, sessions, start_block=0).rollback(3)
    with sessions() as s:
        job = s.get(Job, 1)
        assert job.status == JobStatus.OPEN and job.bundle_status == "verified"
    assert api(sessions, 1)["scope"] == f"complete: {STEPS} batches, 1 pages"


# ---------------------------------------------------------------- on a chain


def test_jobs_indexed_from_the_chain(chain, store, served, tmp_path) -> None:
    executor = chain.deploy("Executor")
    market = chain.deploy("TrainProof", executor.address)
    start = chain.block_number
    sessions = make_sessions(make_engine(f"sqlite:///{tmp_path / 'index.db'}"))
    indexer = Indexer(chain.provider.web3, market.address, sessions, start_block=start)
    requester = chain.test_account(3)
    published = write_job_bundle(store, computation())
    specs = [
        job_spec_for(computation(), bundle=published, **ECONOMICS),
        job_spec_for(other_computation(), **ECONOMICS),  # its bundle is published nowhere
    ]
    ids = [
        int(market.register_job(s.as_tuple(), sender=requester, value=1).events[0].job_id)
        for s in specs
    ]
    indexer.sync()
    for job_id, spec in zip(ids, specs, strict=True):
        assert bytes(market.jobs(job_id).spec.bundle) == spec.bundle
        assert api(sessions, job_id)["address"] == "0x" + spec.bundle.hex()
    verdicts = {v.job_id: v for v in BundleChecker(sessions, [served]).run_once()}
    assert verdicts[ids[0]].status == "verified"
    assert api(sessions, ids[0])["status"] == "verified"
    unavailable = api(sessions, ids[1])
    assert (unavailable["status"], unavailable["part"]) == ("unavailable", "manifest")
    assert unavailable["unverifiable"] is True

    if chain.provider.name != "foundry":
        return  # `trainproof api index` needs an RPC URL: anvil's
    deployment = tmp_path / "deployment.json"
    Deployment(chain_id=chain.chain_id, block=start, contracts={"TrainProof": market.address}).save(
        deployment
    )
    args = ["index", "--rpc", chain.provider.uri, "--deployment", str(deployment)]
    args += ["--db", str(tmp_path / "cli.db"), "--confirmations", "0", "--store", served]
    r = CliRunner().invoke(cli.app, args)
    assert r.exit_code == 0, r.output
    assert f"job={ids[0]} bundle=0x{published.hex()} status=verified" in r.output
    assert f"job={ids[1]} bundle=0x{specs[1].bundle.hex()} status=unavailable" in r.output
