"""``make demo``: what is real so far, end to end on a real local chain.

1. start anvil (npm ``@foundry-rs/anvil``) on a free loopback port;
2. deploy ``CommitmentHarness`` (the RFC 9162 verifier and tensor commitments);
3. commit the ``tensor_root`` of a real tensor — scikit-learn's bundled digits images;
4. prove one chunk of it on-chain against the committed root, and show that a chunk with
   one flipped bit is refused;
5. stop anvil and print a summary.
"""

from __future__ import annotations

import hashlib
import time
from contextlib import ExitStack

import numpy as np
from rich.console import Console
from rich.table import Table

from protocol.anvil import AnvilNode
from protocol.chain import ChainSettings, connect
from protocol.commitments import chunk, chunk_count, chunk_tree, data_root, tensor_root
from protocol.constants import CHUNK_BYTES

console = Console()


def digits_tensor() -> np.ndarray:
    """The 1797 8x8 digit images of scikit-learn's bundled set, as float32 (no download)."""
    from sklearn.datasets import load_digits

    return np.ascontiguousarray(load_digits().data, dtype="<f4")


def run_demo(rpc_url: str | None = None, seed: int = 7) -> int:
    t0 = time.monotonic()
    rows: list[tuple[str, str]] = []
    with ExitStack() as stack:
        if rpc_url is None:
            with console.status("starting anvil on a free loopback port"):
                node = stack.enter_context(AnvilNode())
            rpc_url = node.url
            console.print(f"[green]✓[/] anvil running at {rpc_url}")
            settings = ChainSettings(rpc_url=rpc_url, provider="foundry")
        else:
            settings = ChainSettings(rpc_url=rpc_url)
        with console.status("compiling contracts and connecting"):
            chain = stack.enter_context(connect(settings))
        console.print(
            f"[green]✓[/] connected: chain id {chain.chain_id}, sender {chain.sender.address}"
        )

        with console.status("deploying CommitmentHarness"):
            harness = chain.deploy("CommitmentHarness")
        console.print(f"[green]✓[/] CommitmentHarness deployed at {harness.address}")
        rows.append(("verifier", f"CommitmentHarness at {harness.address}"))

        x = digits_tensor()
        raw = memoryview(x).cast("B")
        droot, troot = data_root(raw), tensor_root(x)
        n_chunks = chunk_count(x.size)
        console.print(
            f"[green]✓[/] tensor: digits images {x.shape} float32, {x.nbytes:,} bytes, "
            f"{n_chunks} chunks of {CHUNK_BYTES} B\n    tensor_root 0x{troot.hex()}"
        )

        key = hashlib.sha256(b"sklearn/digits/images").digest()
        receipt = harness.commit_tensor(key, x.size, droot, sender=chain.sender)
        stored = bytes(harness.committed(chain.sender, key))
        if stored != troot:
            console.print(f"[red]✗ on-chain root 0x{stored.hex()} differs from 0x{troot.hex()}[/]")
            return 1
        console.print(
            f"[green]✓[/] committed on-chain in block {receipt.block_number} "
            f"({receipt.gas_used:,} gas); the contract recomputed the same tensor_root"
        )
        rows.append(("commit tensor_root", f"{receipt.gas_used:,} gas, root matches"))

        index = int(np.random.default_rng(seed).integers(n_chunks))
        piece = chunk(x, index)
        path = list(chunk_tree(x).prove(index).path)
        ok = harness.check_chunk(droot, x.size, index, piece, path)
        tampered = bytes([piece[0] ^ 1]) + piece[1:]
        refused = not harness.check_chunk(droot, x.size, index, tampered, path)
        check_tx = harness.check_chunk.transact(
            droot, x.size, index, piece, path, sender=chain.sender
        )
        console.print(
            f"[green]✓[/] chunk {index} (elements {index * 256}..{index * 256 + 255}) proven "
            f"on-chain with a {len(path)}-hash path: {'accepted' if ok else 'REJECTED'}; "
            f"with one bit flipped: {'refused' if refused else 'ACCEPTED'}"
        )
        rows.append(
            (
                "prove chunk",
                f"chunk {index}/{n_chunks}, {len(path)} hashes, {check_tx.gas_used:,} gas",
            )
        )
        rows.append(("tampered chunk", "refused" if refused else "ACCEPTED (bug)"))
        if not (ok and refused):
            return 1
    console.print("[green]✓[/] anvil stopped")
    table = Table(title="trainproof demo — commitments on a real chain")
    table.add_column("step")
    table.add_column("result")
    for r in rows:
        table.add_row(*r)
    table.add_row("wall time", f"{time.monotonic() - t0:.1f} s")
    console.print(table)
    return 0
