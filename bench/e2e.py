"""End to end: how long a cheat survives, what replay costs, and what sampling buys.

    .venv/bin/python bench/e2e.py [--steps 40] [--every 10] [--repeats 3]

Writes bench/results/e2e.json and prints tables.

1. Commit to verdict: the demo's fault (one element of one MATMUL) in a digits-mlp job, with
   the real prover and challenger services (``ProverService``/``ChallengerService``, polled in
   turn in this process) on anvil; wall time from the commitment's block to the verdict.
2. Replay vs training: canonical training throughput of the trainer (``replay.runner.train``,
   torch backend, checkpointing) against the challenger's replay of the same run
   (``replay.runner.replay``, from the stored checkpoints) and against the dispute-time trace
   (``replay.dispute.trace.StepTrace`` on the torch backend, as the services run it, with
   every op-level state root) — steps/s and the ratio, medians (and spread) of --repeats
   samples taken in turn, torch pinned to --threads threads (default 1) in this process.
3. Sampling: the per-interval sampling rate a challenger needs to catch, with probability
   0.99, a cheat confined to 1% of the intervals, and what that costs as a fraction of the
   training compute (rate x replay cost / training cost).
"""

from __future__ import annotations

import argparse
import math
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench._report import pin_threads, spread, table, write
from protocol.anvil import AnvilNode, rpc
from protocol.blobs import FileStore
from protocol.chain import ChainSettings, connect, deploy_market
from protocol.game import JobStatus
from protocol.market import ApeMarket
from replay.dispute.players import example_computation, job_spec_for, write_job_bundle
from replay.dispute.trace import StepTrace
from replay.runner import replay, train

FAULT = "step=7,op=222,elem=7"
ETH = 10**18


def commit_to_verdict(steps: int, every: int) -> dict[str, float | int]:
    from challenger.service import ChallengerConfig, ChallengerService
    from prover.service import ProverConfig, ProverService

    with (
        tempfile.TemporaryDirectory() as tmp_s,
        AnvilNode() as node,
        connect(ChainSettings(rpc_url=node.url, provider="foundry")) as ch,
    ):
        tmp = Path(tmp_s)
        deployment = deploy_market(ch)
        deployment.save(tmp / "deployment.json")
        contract = ch.at("TrainProof", deployment.contracts["TrainProof"])
        market = ApeMarket(contract, ch.test_account(1))
        comp = example_computation("digits-mlp", steps, every)
        bundle = write_job_bundle(FileStore(tmp / "s"), comp)  # the job's published bundle
        spec = job_spec_for(
            comp, bundle=bundle, stake=2 * ETH, bond=ETH // 10, clock=3600, window=3600,
            train_time=600,
        )  # fmt: skip
        market.transact("register_job", spec.as_tuple(), value=ETH, key="job")
        common = {"rpc": node.url, "deployment": tmp / "deployment.json", "poll": 0.05}
        prover = ProverService(ProverConfig(
            **common, db=tmp / "p.db", test_account=2, job=1, store=[str(tmp / "s")], fault=FAULT,
        ))  # fmt: skip
        challenger = ChallengerService(ChallengerConfig(
            **common, db=tmp / "c.db", test_account=3, store=[str(tmp / "s")], rate=1.0,
            confirmations=0,
        ))  # fmt: skip
        t_commit = t_verdict = 0.0
        moves = 0
        for _ in range(2000):
            status = prover.step()
            if status.status == JobStatus.COMMITTED and not t_commit:
                t_commit = time.perf_counter()
            challenger.step()
            games = market.games_of(1)
            if games and market.game(games[0]).phase.over:
                t_verdict = time.perf_counter()
                moves = market.game(games[0]).seq
                break
            rpc(node.url, "evm_mine")
        if not t_verdict:
            raise RuntimeError("no verdict")
    return {"seconds": round(t_verdict - t_commit, 2), "moves": moves, "steps": steps,
            "every": every, "fault": FAULT}  # fmt: skip


def throughput(steps: int, every: int, repeats: int, threads: int) -> dict[str, object]:
    """Training, replay and the dispute trace of the same digits-mlp run, each sample of the
    three taken in turn (interleaved), torch pinned to ``threads`` threads."""
    pin_threads(threads)
    train_s: list[float] = []
    replay_s: list[float] = []
    trace_s: list[float] = []
    comp = example_computation("digits-mlp", steps, every)
    state = comp.state_before(0)
    StepTrace(comp.program, state, comp.dataset.batch(0), "torch")  # compile once
    for _ in range(repeats):
        with tempfile.TemporaryDirectory() as tmp:
            run = Path(tmp) / "run"
            t0 = time.perf_counter()
            train("digits-mlp", steps=steps, checkpoint_every=every, out=run, backend="torch")
            train_s.append(time.perf_counter() - t0)
            t0 = time.perf_counter()
            results = replay(run, backend="torch")
            replay_s.append(time.perf_counter() - t0)
            assert all(r.match for r in results)
        t0 = time.perf_counter()
        for t in range(every):
            StepTrace(comp.program, state, comp.dataset.batch(t), "torch")
        trace_s.append((time.perf_counter() - t0) * steps / every)
    med = {k: statistics.median(v) for k, v in
           (("train", train_s), ("replay", replay_s), ("trace", trace_s))}  # fmt: skip
    return {
        "steps": steps, "repeats": repeats, "threads": threads,
        "seconds": {"train": spread(train_s), "replay": spread(replay_s), "trace": spread(trace_s)},
        "train_steps_per_s": round(steps / med["train"], 1),
        "replay_steps_per_s": round(steps / med["replay"], 1),
        "dispute_trace_steps_per_s": round(steps / med["trace"], 1),
        "replay_over_train_time": round(med["replay"] / med["train"], 3),
        "trace_over_train_time": round(med["trace"] / med["train"], 3),
    }  # fmt: skip


def sampling(replay_cost: float) -> list[dict[str, float | int]]:
    rows = []
    for intervals in (100, 1000, 10_000):
        bad = max(1, math.ceil(0.01 * intervals))
        rate = 1 - 0.01 ** (1 / bad)  # 1 - (1 - rate)^bad = 0.99
        rows.append({"intervals": intervals, "bad_intervals": bad, "rate": round(rate, 4),
                     "fraction_of_training_compute": round(rate * replay_cost, 4)})  # fmt: skip
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--steps", type=int, default=40, help="steps of the throughput run")
    ap.add_argument("--every", type=int, default=10, help="steps per checkpoint interval")
    ap.add_argument("--repeats", type=int, default=5, help="repeats of the throughput run")
    ap.add_argument("--threads", type=int, default=1, help="torch threads, pinned")
    args = ap.parse_args()
    verdict = commit_to_verdict(10, 5)
    thr = throughput(args.steps, args.every, args.repeats, args.threads)
    samp = sampling(float(thr["replay_over_train_time"]))  # type: ignore[arg-type]
    path = write("e2e", {"commit_to_verdict": verdict, "throughput": thr, "sampling": samp})
    table("commit to verdict (real services on anvil, one process polling both)",
          ["fault", "moves", "seconds"],
          [[str(verdict["fault"]), str(verdict["moves"]), str(verdict["seconds"])]])  # fmt: skip
    table(f"replay vs training, digits-mlp, {args.steps} steps, {args.threads} thread(s) pinned "
          f"(median of {args.repeats}, interleaved)",
          ["measure", "steps/s", "time / training time"],
          [["trainer: train + checkpoints (torch)", str(thr["train_steps_per_s"]), "1"],
           ["challenger: replay from checkpoints (torch)", str(thr["replay_steps_per_s"]),
            str(thr["replay_over_train_time"])],
           ["dispute trace with op-level roots (torch)", str(thr["dispute_trace_steps_per_s"]),
            str(thr["trace_over_train_time"])]])  # fmt: skip
    table("sampling for 99% detection of a cheat in 1% of intervals",
          ["intervals", "bad", "rate", "fraction of training compute"],
          [[str(r["intervals"]), str(r["bad_intervals"]), str(r["rate"]),
            str(r["fraction_of_training_compute"])] for r in samp])  # fmt: skip
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
