"""Acceptance (issue 13): jobs of PyTorch programs nobody built in, verified by a watcher that
knows nothing but the RPC, the deployment and a store URL.

On anvil, a requester compiles two non-MLP models with the front end (a digits CNN: conv,
batch norm, pooling; and a small GPT: embedding, causal attention, layer norm, AdamW with an
lr schedule), writes their bundles, publishes them and registers the jobs. An honest prover
trains the CNN, a cheating one the GPT (one element of one MATMUL of one step is wrong); both
fetch everything from the store. The challenger fetches each job's bundle over HTTP, replays,
disputes the cheat and wins at the one-step; the honest job finalises.
"""

from __future__ import annotations

import sys
import threading
from pathlib import Path

import numpy as np
import pytest
import torch

import trainproof
from challenger.service import ChallengerConfig, ChallengerService
from protocol.anvil import AnvilNode, rpc
from protocol.blobs import FileStore, make_server
from protocol.chain import ChainSettings, connect, deploy_market
from protocol.game import JobStatus
from protocol.ir import Opcode
from protocol.market import ApeMarket
from prover.service import ProverConfig, ProverService
from replay.data.bundle import Bundle, BundleMetadata, DataInfo, publish_bundle, save_bundle_dir
from trainproof.datasets import from_arrays

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "examples"))

ETH = 10**18
STEPS, EVERY = 4, 2
pytestmark = [pytest.mark.xdist_group(name="services"), pytest.mark.slow]


def cnn_job() -> tuple[trainproof.CompiledJob, object]:
    import digits_cnn

    model, opt, loss, example = digits_cnn.factory()
    job = trainproof.compile(model, opt, loss, example, name="digits-cnn")
    return job, digits_cnn.dataset()


def gpt_job() -> tuple[trainproof.CompiledJob, object]:
    from gpt2_small import GPT, lm_loss, optimizer_for

    torch.manual_seed(0)
    model = GPT(vocab=64, ctx=8, d=16, layers=1, heads=2)
    opt = optimizer_for(model, lr=3e-3)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda t: 1.0 / (1 + t))
    rng = np.random.default_rng(0)
    tokens = rng.integers(0, 64, size=4 * 8 * 40 + 1)
    x = tokens[:-1].reshape(-1, 8)
    y = tokens[1:].reshape(-1, 8)
    data = from_arrays(x, y, batch_size=4, seed=0, heldout=0)
    bx, by = data.batch(0)
    job = trainproof.compile(
        model, opt, lm_loss, (torch.from_numpy(bx).long(), torch.from_numpy(by).long()),
        lr_schedule=sched, schedule_steps=STEPS, name="tiny-gpt",
    )  # fmt: skip
    return job, data


def test_two_front_end_jobs_from_their_bundles_alone(tmp_path: Path) -> None:
    store = tmp_path / "store"
    addresses = []
    for name, (job, data) in (("digits-cnn", cnn_job()), ("tiny-gpt", gpt_job())):
        address, _ = save_bundle_dir(
            tmp_path / name, program=job.program, initial_state=job.initial_state,
            dataset=data, steps=STEPS,
            metadata=BundleMetadata(name=name, data=DataInfo(source="test data")),
        )  # fmt: skip
        bundle = Bundle.open(FileStore(tmp_path / name), address)
        publish_bundle(bundle, [str(store)])
        addresses.append((address, bundle))
    gpt_program = addresses[1][1].program
    # the first MATMUL is the QKV projection: element 32 is token 0's first value entry,
    # which every later position attends to (token 0's query, elements 0..15, changes
    # nothing: a softmax over one key is 1 whatever the score)
    matmul = next(j for j, op in enumerate(gpt_program.ops) if op.opcode == Opcode.MATMUL)
    assert gpt_program.ops[matmul].shape == (32, 48)
    server = make_server(FileStore(store))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{server.server_address[1]}"
    try:
        with (
            AnvilNode() as node,
            connect(ChainSettings(rpc_url=node.url, provider="foundry")) as ch,
        ):
            deployment = deploy_market(ch)
            deployment.save(tmp_path / "deployment.json")
            contract = ch.at("TrainProof", deployment.contracts["TrainProof"])
            market = ApeMarket(contract, ch.test_account(1))
            for _, bundle in addresses:
                spec = bundle.job_spec(every=EVERY, stake=2 * ETH, bond=ETH // 10, clock=3600,
                                       window=3600, train_time=600)  # fmt: skip
                contract.register_job(spec.as_tuple(), sender=ch.test_account(1), value=ETH)
            common = {"rpc": node.url, "deployment": tmp_path / "deployment.json", "poll": 0.1}
            honest = ProverService(ProverConfig(**common, db=tmp_path / "p1.db", test_account=2,
                                                job=1, store=[str(store)]))  # fmt: skip
            cheat = ProverService(ProverConfig(**common, db=tmp_path / "p2.db", test_account=3,
                                               job=2, store=[str(store)],
                                               fault=f"step=3,op={matmul},elem=32"))  # fmt: skip
            watcher = ChallengerService(ChallengerConfig(
                **common, db=tmp_path / "c.db", test_account=4, store=[url], rate=1.0,
                confirmations=0,
            ))  # fmt: skip
            done = set()
            for i in range(600):
                for k, p in (("honest", honest), ("cheat", cheat)):
                    if k not in done and p.step().done:
                        done.add(k)
                watcher.step()
                if len(done) == 2 and not watcher._games():
                    break
                if i % 5 == 4:
                    rpc(node.url, "evm_increaseTime", [300])
                    rpc(node.url, "evm_mine")
            assert market.job(1).status == JobStatus.FINALIZED
            assert market.job(2).status == JobStatus.REJECTED
            assert market.games_of(1) == []
            (game,) = market.games_of(2)
            g = market.game(game)
            assert g.phase.name == "CHALLENGER_WON" and g.settled
            assert (g.step, g.op) == (3, matmul)
            from ape import chain as ape_chain

            reasons = [
                str(e.reason)
                for e in contract.GameResolved.range(0, int(ape_chain.blocks.height) + 1)
            ]
            assert reasons == ["one-step"]
    finally:
        server.shutdown()
