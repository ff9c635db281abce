"""Gas of committing a run in parts (commit_run, docs/protocol.md §3.3) and of opening a
dispute in a large commitment, on anvil.

    .venv/bin/python bench/gas_commit.py [--sizes 10,2100,65536]

Writes bench/results/gas_commit.json and prints a table. Each job is hand-built (every = 1,
synthetic checkpoint roots: gas does not depend on their values, only on how many there are
and their nonzero bytes), registered, accepted and committed one part per transaction, the
parts of protocol.game.commit_parts; then one dispute is opened on a late interval, whose
two inclusion proofs have the most hashes the run tree needs. All gas is a transaction's gas
used (21,000 base + calldata + execution).

Reference, the single-transaction commit_run it replaces (the whole list in one call):
10 intervals 206,916 gas; 2,100 intervals 4.07M (1,938 gas per checkpoint).
"""

from __future__ import annotations

import argparse
import hashlib
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench._report import table, write
from protocol.anvil import AnvilNode
from protocol.chain import ChainSettings, connect
from protocol.constants import COMMIT_PART, MAX_CHECKPOINTS
from protocol.game import JobSpec, commit_parts
from protocol.merkle import MerkleTree, leaf_hash
from replay.runner import run_root_of

STAKE, BOND, REWARD = 10**18, 10**17, 5 * 10**17


def calldata_gas(data: bytes) -> int:
    return sum(4 if b == 0 else 16 for b in data)


def synthetic_roots(m: int) -> list[bytes]:
    """C_0..C_m: distinct sha256 values (all but ~1/8 of their bytes nonzero, as real roots)."""
    return [hashlib.sha256(f"C{i}".encode()).digest() for i in range(m + 1)]


def spec_for(m: int, c0: bytes) -> JobSpec:
    h = hashlib.sha256(b"bench job").digest()
    return JobSpec(
        program_root=h, program_len=359, dataset_root=h, initial_root=c0, bundle=h, steps=m,
        every=1, slots=188, stake=STAKE, bond=BOND, clock=3600, window=7200, train_time=86400,
    )  # fmt: skip


def measure(market, requester, trainer, challenger, m: int) -> dict[str, object]:
    c = synthetic_roots(m)
    spec = spec_for(m, c[0])
    receipt = market.register_job(spec.as_tuple(), sender=requester, value=REWARD)
    job_id = int(receipt.events[0].job_id)
    market.accept_job(job_id, market.jobs(job_id).job_hash, sender=trainer, value=STAKE)
    parts = commit_parts(c[1:])
    per_part, calldata = [], 0
    t0 = time.perf_counter()
    for p, roots in enumerate(parts):
        calldata += calldata_gas(bytes.fromhex(
            market.commit_run.encode_input(job_id, p, roots).hex().removeprefix("0x")
        ))  # fmt: skip
        tx = market.commit_run(job_id, p, roots, sender=trainer)
        per_part.append(int(tx.gas_used))
    seconds = time.perf_counter() - t0
    assert bytes(market.jobs(job_id).run_root) == run_root_of(c)
    # a late interval whose two roots have the longest proofs: inside the run tree's largest
    # complete subtree when there is one, else the last interval
    n = m + 1
    top = 1 << ((n - 1).bit_length() - 1) if n > 2 else n
    interval = top - 2 if top >= 2 and top < n else m - 1
    tree = MerkleTree([leaf_hash(r) for r in c])
    lo, hi = tree.prove(interval).path, tree.prove(interval + 1).path
    tx = market.open_dispute(job_id, interval, c[interval], list(lo), c[interval + 1], list(hi),
                             sender=challenger, value=BOND)  # fmt: skip
    total = sum(per_part)
    return {
        "intervals": m,
        "parts": len(parts),
        "transactions": len(parts),
        "commit_gas": total,
        "gas_per_checkpoint": round(total / m, 1),
        "gas_per_part": per_part,
        "full_part_gas": max(per_part) if len(parts) > 1 else None,
        "calldata_gas": calldata,
        "commit_seconds_on_anvil": round(seconds, 2),
        "open_dispute": {
            "interval": interval,
            "gas": int(tx.gas_used),
            "proof_hashes": [len(lo), len(hi)],
            "proof_bytes": 32 * (len(lo) + len(hi)),
        },
    }


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--sizes", default=f"10,2100,{MAX_CHECKPOINTS}",
                    help="checkpoint intervals per job, comma-separated")  # fmt: skip
    args = ap.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]
    results = []
    with AnvilNode() as node, connect(ChainSettings(rpc_url=node.url, provider="foundry")) as ch:
        executor = ch.deploy("Executor")
        market = ch.deploy("TrainProof", executor.address)
        requester, trainer, challenger = (ch.test_account(i) for i in (3, 4, 5))
        for m in sizes:
            results.append(measure(market, requester, trainer, challenger, m))
    path = write("gas_commit", {
        "commit_part": COMMIT_PART, "max_checkpoints": MAX_CHECKPOINTS, "jobs": results,
        "reference_single_tx": {"10": 206_916, "2100": 4_070_000},
    })  # fmt: skip
    table(
        f"commit_run in parts of {COMMIT_PART:,} leaves (anvil)",
        ["intervals", "txs", "commit gas", "gas/checkpoint", "max gas/tx", "calldata gas",
         "open_dispute gas", "proof hashes (lo, hi)", "proof bytes"],
        [[f"{r['intervals']:,}", str(r["transactions"]), f"{r['commit_gas']:,}",
          f"{r['gas_per_checkpoint']:,}", f"{max(r['gas_per_part']):,}",
          f"{r['calldata_gas']:,}", f"{r['open_dispute']['gas']:,}",
          str(tuple(r["open_dispute"]["proof_hashes"])), str(r["open_dispute"]["proof_bytes"])]
         for r in results],
    )  # fmt: skip
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
