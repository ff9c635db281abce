"""The replay farm on a real local Ray cluster (loopback only, bounded CPUs).

- A farm's answers are a local replay's: same roots, same first bad interval, same matches,
  from C_0 or from a published checkpoint.
- A worker SIGKILLed mid-replay: Ray runs the task again and the answer is unchanged.
- A watcher with ``--ray`` checks three jobs at once on a 2-worker cluster and disputes the
  cheat among them to the verdict on anvil, next to a watcher without Ray on the same chain:
  both reach the same samples, roots and verdicts.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from challenger.service import ChallengerConfig, ChallengerService
from protocol.anvil import AnvilNode, rpc
from protocol.blobs import FileStore
from protocol.chain import ChainSettings, connect, deploy_market
from protocol.game import JobStatus
from protocol.market import ApeMarket
from prover.service import ProverConfig, ProverService
from replay.data.publish import publish_state
from replay.dispute.players import Computation, example_computation, job_spec_for, write_job_bundle
from replay.scale.cluster import ClusterError, LocalCluster, disconnect
from replay.scale.cluster import connect as ray_connect
from replay.scale.farm import IntervalTask, LocalFarm, RayFarm

pytestmark = pytest.mark.xdist_group(name="ray-farm")

ETH = 10**18
WINDOW = 3600


@pytest.fixture(scope="module")
def cluster() -> Iterator[LocalCluster]:
    with LocalCluster(cpus=2) as c:
        yield c
        disconnect()


def _job(tmp: Path, steps: int, every: int) -> tuple[Computation, FileStore, object]:
    comp = example_computation("digits-mlp", steps, every)
    store = FileStore(tmp / "store")
    bundle = write_job_bundle(store, comp)
    spec = job_spec_for(comp, bundle=bundle, stake=ETH, bond=ETH // 10, clock=WINDOW,
                        window=WINDOW, train_time=600)  # fmt: skip
    return comp, store, spec


def _tasks(spec, committed, sample, store_dir) -> list[IntervalTask]:  # type: ignore[no-untyped-def]
    return [IntervalTask(job_id=1, spec=spec, committed=committed, interval=c,
                         stores=[str(store_dir)]) for c in sample]  # fmt: skip


def test_farm_answers_are_a_local_replay(tmp_path, cluster) -> None:
    comp, store, spec = _job(tmp_path, steps=8, every=2)
    committed = comp.checkpoint_roots()
    publish_state(store, comp.program, 4, comp.state_before(4))  # C_2 published: start there
    committed[4] = bytes(32)  # C_4 is a lie: interval 3 differs
    tasks = _tasks(spec, committed, [0, 1, 3], tmp_path / "store")
    local, farm = LocalFarm(store), RayFarm(cluster.address)
    got = {
        name: [f.submit(t, comp.fresh()).result() for t in tasks]
        for name, f in (("local", local), ("ray", farm))
    }
    for a, b in zip(got["local"], got["ray"], strict=True):
        keep = {"interval", "start", "matched", "bad", "roots", "missing"}
        assert a.model_dump(include=keep) == b.model_dump(include=keep)
        assert [(r.interval, r.event) for r in a.rejected] == [
            (r.interval, r.event) for r in b.rejected
        ]
    by = {o.interval: o for o in got["ray"]}
    assert by[0].start == 0 and by[0].matched == [0] and by[0].bad is None
    assert by[3].start == 2 and by[3].matched == [2] and by[3].bad == 3  # from C_2's checkpoint
    assert by[3].roots[0] == committed[3] and by[3].roots[1] != committed[4]
    assert all(o.worker.split(":")[1] != str(os.getpid()) for o in got["ray"])  # ran elsewhere
    assert len(farm.overhead) == 3 and all(s >= 0 for s in farm.overhead)


def _running_a_replay(pid: int) -> bool:
    """Whether Ray worker ``pid`` is running a replay now (Ray titles a busy worker with its
    task, ``ray::replay_interval``, and an idle one ``ray::IDLE``)."""
    try:
        return b"ray::replay_interval" in Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return False


def _kill_first_replay(stop: threading.Event, killed: list[int]) -> None:
    """SIGKILL the first Ray worker seen running a replay, once it has run a while and while
    it still does (its process title names the task)."""
    while not stop.is_set() and not killed:
        out = subprocess.run(["pgrep", "-f", "ray::replay_interval"], capture_output=True,
                             text=True).stdout.split()  # fmt: skip
        if out:
            pid = int(out[0])
            time.sleep(0.1)  # mid-replay: the bundle is open and steps are running
            if not _running_a_replay(pid):
                continue  # done already: wait for the next one
            try:
                os.kill(pid, signal.SIGKILL)
                killed.append(pid)
            except ProcessLookupError:
                continue
        time.sleep(0.02)


def test_a_worker_killed_mid_replay_is_retried_with_the_same_answer(tmp_path, cluster) -> None:
    steps = 600  # two intervals of ~0.3-0.6 s each: long enough to be caught running
    comp, store, spec = _job(tmp_path, steps=steps, every=steps // 2)
    committed = comp.checkpoint_roots()
    committed[2] = bytes(32)  # the second interval's end is a lie; no checkpoint published
    (task,) = _tasks(spec, committed, [1], tmp_path / "store")  # replays both, from C_0
    expected = LocalFarm(store).submit(task, comp.fresh()).result()
    stop, killed = threading.Event(), []
    killer = threading.Thread(target=_kill_first_replay, args=(stop, killed))
    killer.start()
    try:
        outcome = RayFarm(cluster.address).submit(task, comp.fresh()).result()
    finally:
        stop.set()
        killer.join()
    assert killed, "no worker was seen replaying"
    assert outcome.worker != f"{os.uname().nodename}:{killed[0]}"  # answered by another run
    assert (outcome.start, outcome.matched, outcome.bad, outcome.roots) == (
        expected.start,
        expected.matched,
        expected.bad,
        expected.roots,
    )
    assert outcome.bad == 1 and outcome.matched == [0]


def test_a_cluster_that_does_not_answer_is_one_clear_line() -> None:
    with pytest.raises(ClusterError, match=r"no Ray cluster at '127\.0\.0\.1:9'.*ray start --head"):
        ray_connect("127.0.0.1:9")


# ---------------------------------------------------------------- a watcher farm on anvil

JOBS = 3
CHEAT = 2  # job 2's trainer cheats in step 3


@pytest.fixture
def world(tmp_path) -> Iterator[tuple[AnvilNode, Path, ApeMarket, Path]]:
    """A fresh anvil, the market, and JOBS registered digits-mlp jobs (4 steps, 2 intervals)."""
    with AnvilNode() as node, connect(ChainSettings(rpc_url=node.url, provider="foundry")) as ch:
        deployment = deploy_market(ch)
        path = tmp_path / "deployment.json"
        deployment.save(path)
        market = ch.at("TrainProof", deployment.contracts["TrainProof"])
        _, _, spec = _job(tmp_path, steps=4, every=2)
        for _ in range(JOBS):
            market.register_job(spec.as_tuple(), sender=ch.test_account(1), value=ETH)  # type: ignore[attr-defined]
        yield node, path, ApeMarket(market, ch.test_account(1)), tmp_path


def test_a_ray_watcher_checks_jobs_at_once_and_matches_a_local_one(world, cluster) -> None:
    node, deployment, market, tmp = world

    def prover(j: int) -> ProverService:
        fault = "step=3,op=222,elem=5" if j == CHEAT else None
        return ProverService(ProverConfig(
            rpc=node.url, deployment=deployment, db=tmp / f"prover{j}.db", test_account=1 + j,
            job=j, store=[str(tmp / "store")], poll=0.1, fault=fault,
        ))  # fmt: skip

    def watcher(name: str, account: int, ray: str | None) -> ChallengerService:
        return ChallengerService(ChallengerConfig(
            rpc=node.url, deployment=deployment, db=tmp / f"{name}.db", test_account=account,
            store=[str(tmp / "store")], rate=1.0, confirmations=0, poll=0.1, ray=ray,
        ))  # fmt: skip

    provers = [prover(j) for j in range(1, JOBS + 1)]
    watchers = {"ray": watcher("ray", 5, cluster.address), "local": watcher("local", 6, None)}
    for _ in range(100):  # every trainer commits first: the watchers then see all jobs at once
        if all(market.job(j).status == JobStatus.COMMITTED for j in range(1, JOBS + 1)):
            break
        for p in provers:
            p.step()
    for i in range(600):
        done = [p.step().done for p in provers]
        for w in watchers.values():
            w.step()
        if all(done) and not any(w._games() for w in watchers.values()):
            break
        if i % 5 == 4:  # chain time passes: clocks and the challenge window run on it
            rpc(node.url, "evm_increaseTime", [300])
            rpc(node.url, "evm_mine")
    else:
        raise AssertionError("the services did not finish")
    statuses = {j: market.job(j).status for j in range(1, JOBS + 1)}
    assert statuses == {j: JobStatus.REJECTED if j == CHEAT else JobStatus.FINALIZED
                        for j in statuses}  # fmt: skip
    records = {
        name: {k: json.loads(v) for k, v in w.db.items("job:")} for name, w in watchers.items()
    }
    assert records["ray"] == records["local"]  # same samples, verdicts, disputed intervals
    assert records["ray"][f"job:{CHEAT}"]["verdict"] == "disputed"
    farm = watchers["ray"].farm
    assert farm.name == "ray" and farm.in_flight == 0
    assert farm.peak_in_flight == 2 * JOBS  # both intervals of all three jobs replayed at once
    # the Ray watcher's own game, played from a DisputeWorker on the cluster, was won
    (ray_game,) = [int(v) for _, v in watchers["ray"].db.items("done:game:")]
    assert market.game(ray_game).phase.name == "CHALLENGER_WON"
    assert market.job(CHEAT).status == JobStatus.REJECTED
