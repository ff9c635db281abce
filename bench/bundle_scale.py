"""A 100,000-step job from its bundle alone (issue 13, acceptance 3).

    .venv/bin/python bench/bundle_scale.py [--steps 100000] [--every 100] [--interval 737]

1. Build a small linear-regression program with the IR builder (x [8, 16], y [8], SGD) and a
   synthetic dataset; write its bundle (N batch blobs in pages of 1,024 steps) into a store
   folder served over HTTP by `trainproof blobs serve`'s server, which counts every byte it
   sends by kind (bundle head, dataset index, pages, batches, checkpoints).
2. On anvil: deploy, register the job binding the bundle, and run the real prover service
   (`ProverService`: fetches the bundle, trains N steps, publishes every checkpoint, commits).
3. Run the real challenger (`trainproof challenger watch`, a fresh process knowing only the RPC,
   the deployment and the store URL) told to replay one interval (`--interval`); report what
   it fetched against the dataset's size, and its peak RSS (ru_maxrss of the child), next to
   the peak RSS of the same command on a job with no commitment to check (the baseline:
   interpreter, torch, web3), measured in the same run.

Single-threaded compute (torch.set_num_threads(1) in the prover; the challenger is started
with OMP_NUM_THREADS=1). Writes bench/results/bundle_scale.json.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path
from tempfile import TemporaryDirectory

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench._report import table, write
from protocol.anvil import AnvilNode
from protocol.blobs import FileStore, make_server
from protocol.chain import ChainSettings, connect, deploy_market
from protocol.game import JobStatus
from protocol.ir import BATCH_Y, Program
from replay.compile.builder import ProgramBuilder
from replay.data.bundle import Bundle, BundleMetadata, DataInfo, write_bundle

ROOT = Path(__file__).resolve().parent.parent
ETH = 10**18
BATCH, FEATURES, LR = 8, 16, 0.01


def regression_program() -> Program:
    """w <- w - lr * x^T (x w - y); loss = sum((x w - y)^2)."""
    b = ProgramBuilder()
    w = b.persistent("w", (FEATURES, 1))
    loss = b.persistent("loss", ())
    x = b.load_x((BATCH, FEATURES))
    y = b.load_batch(BATCH_Y, (BATCH,), "batch.y")
    err = b.sub(b.matmul(x, w, hint="pred").reshape((BATCH,)), y, hint="err")
    b.reduce_sum(b.mul(err, err, hint="sq"), axis=0, out=loss, hint="loss")
    grad = b.matmul(x.T, err.reshape((BATCH, 1)), hint="grad")
    b.sub(w, b.mul(grad, b.const(LR), hint="step"), out=w, hint="update")
    return b.build()


class SyntheticData:
    """y = x · w* + noise, a fresh batch per step from a counter-based generator."""

    def __init__(self) -> None:
        self.w = np.random.default_rng(0).normal(size=FEATURES).astype(np.float32)

    def batch(self, t: int) -> tuple[np.ndarray, np.ndarray]:
        rng = np.random.default_rng([1, t])
        x = rng.normal(size=(BATCH, FEATURES)).astype(np.float32)
        y = (x @ self.w + 0.1 * rng.normal(size=BATCH)).astype(np.float32)
        return x, y


def counting_server(store: FileStore, kinds: dict[str, str]) -> tuple[object, dict[str, int]]:
    """The blob server, counting the body bytes it sends per kind of blob."""
    sent: dict[str, int] = {}
    server = make_server(store)
    base = server.RequestHandlerClass

    class Counting(base):  # type: ignore[misc, valid-type]
        def send_header(self, keyword: str, value: str) -> None:
            if keyword == "Content-Length" and self.command == "GET":
                name = self.path.strip("/").split("/")[-1].split("?")[0]
                kind = kinds.get(name, "checkpoints" if "/roots/" not in self.path else "pointers")
                sent[kind] = sent.get(kind, 0) + int(value)
            super().send_header(keyword, value)

    server.RequestHandlerClass = Counting
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server, sent


def challenger_rss(args: list[str], log: Path) -> tuple[int, float]:
    """Peak RSS (bytes) and wall time of a challenger process run to its end (its own
    rusage, from wait4: not the maximum over every child this process ever had)."""
    t0 = time.perf_counter()
    with open(log, "wb") as out:
        env = {**os.environ, "OMP_NUM_THREADS": "1"}
        proc = subprocess.Popen([sys.executable, "-m", "trainproof", *args], stdout=out,
                                stderr=out, cwd=ROOT, env=env)  # fmt: skip
        _, status, usage = os.wait4(proc.pid, 0)
        proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        raise RuntimeError(f"the challenger exited with {proc.returncode}: see {log}")
    return usage.ru_maxrss * 1024, time.perf_counter() - t0


def main() -> None:
    import torch

    from prover.service import ProverConfig, ProverService

    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--steps", type=int, default=100_000)
    ap.add_argument("--every", type=int, default=100)
    ap.add_argument("--interval", type=int, default=737)
    a = ap.parse_args()
    torch.set_num_threads(1)
    program = regression_program()
    with TemporaryDirectory(prefix="trainproof-scale-") as tmp_s:
        tmp = Path(tmp_s)
        store = FileStore(tmp / "store")
        t0 = time.perf_counter()
        address, manifest = write_bundle(
            store, program, {"w": np.zeros((FEATURES, 1), np.float32),
                             "loss": np.zeros((), np.float32)},
            SyntheticData(), a.steps,
            BundleMetadata(name="linear-regression", description="bench/bundle_scale.py",
                           data=DataInfo(source="synthetic: y = x w* + noise", licence="CC0")),
        )  # fmt: skip
        write_s = time.perf_counter() - t0
        bundle = Bundle.open(store, address)
        ds = manifest.dataset
        head = [address, manifest.program.address, manifest.initial.manifest.address,
                manifest.initial.tensors.address, manifest.metadata.address]  # fmt: skip
        kinds = {**dict.fromkeys(head, "bundle head"), ds.index.address: "dataset index"}
        page_bytes = 0
        for p in range(ds.pages):
            page = bundle.dataset.page(p)
            kinds[bundle.dataset.page_address(p)] = "dataset pages"
            page_bytes += 96 * len(page.leaves)
            kinds.update(dict.fromkeys(page.batches, "dataset batches"))
        dataset_bytes = ds.index.size + page_bytes + ds.steps * ds.batch_bytes
        server, sent = counting_server(store, kinds)
        url = f"http://127.0.0.1:{server.server_address[1]}"  # type: ignore[attr-defined]
        with (
            AnvilNode() as node,
            connect(ChainSettings(rpc_url=node.url, provider="foundry")) as ch,
        ):
            deployment = deploy_market(ch)
            deployment.save(tmp / "deployment.json")
            market = ch.at("TrainProof", deployment.contracts["TrainProof"])
            spec = bundle.job_spec(every=a.every, stake=2 * ETH, bond=ETH // 10, clock=3600,
                                   window=3600, train_time=86400)  # fmt: skip
            market.register_job(spec.as_tuple(), sender=ch.test_account(1), value=ETH)
            common = {"rpc": node.url, "deployment": tmp / "deployment.json", "poll": 0.05}
            prover = ProverService(ProverConfig(**common, db=tmp / "p.db", test_account=2,
                                                job=1, store=[str(tmp / "store")]))  # fmt: skip
            t0 = time.perf_counter()
            while prover.step().status != JobStatus.COMMITTED:
                pass
            train_s = time.perf_counter() - t0
            sent.clear()
            watch = ["challenger", "watch", "--rpc", node.url, "--deployment",
                     str(tmp / "deployment.json"), "--store", url, "--confirmations", "0",
                     "--test-account", "3", "--poll", "0.05", "--max-polls", "3"]  # fmt: skip
            rss, replay_s = challenger_rss(
                [*watch, "--db", str(tmp / "c.db"), "--interval", str(a.interval)],
                tmp / "challenger.log",
            )
            fetched = dict(sent)
            log = (tmp / "challenger.log").read_text()
            assert "all 1 sampled intervals match" in log, log[-3000:]
            sent.clear()
            base_rss, _ = challenger_rss(
                [*watch, "--db", str(tmp / "c2.db"), "--from-block", "999999999"],
                tmp / "baseline.log",
            )
        server.shutdown()  # type: ignore[attr-defined]
    data_fetched = sum(v for k, v in fetched.items() if k.startswith("dataset"))
    result = {
        "steps": a.steps, "every": a.every, "intervals": a.steps // a.every,
        "interval_replayed": a.interval, "ops_per_step": len(program.ops),
        "batch_bytes": ds.batch_bytes, "pages": ds.pages, "page_steps": ds.page_steps,
        "dataset_bytes": dataset_bytes, "fetched_by_kind": fetched,
        "dataset_bytes_fetched": data_fetched,
        "dataset_fraction_fetched": data_fetched / dataset_bytes,
        "challenger_peak_rss_bytes": rss, "baseline_peak_rss_bytes": base_rss,
        "challenger_rss_over_baseline": rss / base_rss,
        "seconds": {"write_bundle": write_s, "prover_train_publish_commit": train_s,
                    "challenger_process": replay_s},
        "threads": 1,
    }  # fmt: skip
    table(
        f"{a.steps:,}-step job from its bundle: one interval of {a.every} steps replayed",
        ["what", "value"],
        [
            ["dataset (index + pages + batches)", f"{dataset_bytes:,} B"],
            ["fetched of it by the challenger", f"{data_fetched:,} B "
             f"({100 * data_fetched / dataset_bytes:.3f} %)"],
            ["fetched otherwise", ", ".join(f"{k}: {v:,} B" for k, v in fetched.items()
                                            if not k.startswith("dataset"))],
            ["challenger peak RSS", f"{rss / 2**20:.0f} MiB (idle baseline "
             f"{base_rss / 2**20:.0f} MiB)"],
            ["write bundle / train+commit / challenger", f"{write_s:.0f} s / {train_s:.0f} s / "
             f"{replay_s:.0f} s"],
        ],
    )  # fmt: skip
    print(json.dumps(result["fetched_by_kind"]))
    print("wrote", write("bundle_scale", result))


if __name__ == "__main__":
    main()
