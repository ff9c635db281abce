"""The TrainProof contract as the players and services see it: one small interface, two
implementations.

- :class:`ApeMarket` — an ape contract instance and account (tests, benchmarks, the demo);
- :class:`Web3Market` — plain web3 against any JSON-RPC, sending through the crash-safe
  :class:`~protocol.outbox.Outbox` (the prover and challenger services).

A market is bound to the one account that signs its transactions. ``transact`` takes an
intent key: the web3 market sends each key at most once, ever (see protocol/outbox.py).
"""

from __future__ import annotations

import json
from functools import cache
from typing import Any, Protocol

from pydantic import BaseModel

from protocol.anvil import REPO_ROOT
from protocol.errors import TrainproofError
from protocol.game import GameState, JobSpec, JobStatus, plain
from protocol.merkle import merkle_root
from protocol.outbox import Outbox, Sent


class JobView(BaseModel):
    """A job as the contract stores it (`jobs(id)`)."""

    spec: JobSpec
    job_hash: bytes
    requester: str
    trainer: str
    reward: int
    status: JobStatus
    accepted_at: int
    committed_at: int
    run_root: bytes
    open_games: int

    @classmethod
    def from_chain(cls, raw: Any) -> JobView:
        v = list(raw)
        spec = JobSpec(**dict(zip(JobSpec.model_fields, [plain(x) for x in v[0]], strict=True)))
        rest = dict(zip(list(cls.model_fields)[1:], [plain(x) for x in v[1:]], strict=True))
        return cls(spec=spec, **rest)


class CommitmentError(TrainproofError):
    """A commitment's CheckpointRoots events do not make the run root it committed."""


class Commitment(BaseModel):
    """A RunCommitted event with the checkpoint roots C_k..C_N of the job (from its
    CheckpointRoots events, checked against the run root), and where it was logged."""

    job_id: int
    trainer: str
    run_root: bytes
    checkpoint_roots: list[bytes]
    block: int


class Market(Protocol):
    address: str
    sender: str

    def game(self, game_id: int) -> GameState: ...
    def job(self, job_id: int) -> JobView: ...
    def credits(self, account: str) -> int: ...
    def moved_values(self, game_id: int, seq: int) -> list[bytes]: ...
    def opened_chunk(self, game_id: int, seq: int) -> bytes: ...
    def games_of(self, job_id: int) -> list[int]: ...
    def committed_parts(self, job_id: int) -> int: ...
    def commitments(self, from_block: int, to_block: int) -> list[Commitment]: ...
    def transact(self, fn: str, *args: Any, value: int = 0, key: str) -> Sent | None: ...


def assemble_roots(
    job_id: int, run_root: bytes, spec: JobSpec, parts: list[tuple[int, list[bytes]]]
) -> list[bytes]:
    """C_1..C_m of a commitment from its CheckpointRoots events ``(part, roots)``: ordered
    by part, one event per part, N/k roots in all, making ``run_root`` with C_0 (else
    CommitmentError)."""
    by_part = dict(parts)
    if len(by_part) != len(parts) or sorted(by_part) != list(range(len(by_part))):
        found = sorted(p for p, _ in parts)
        raise CommitmentError(f"job {job_id}: CheckpointRoots events of parts {found}")
    roots = [r for p in range(len(by_part)) for r in by_part[p]]
    if len(roots) != spec.intervals:
        raise CommitmentError(
            f"job {job_id}: CheckpointRoots events hold {len(roots)} roots, the job has "
            f"{spec.intervals} intervals"
        )
    if merkle_root([spec.initial_root, *roots]) != run_root:
        raise CommitmentError(
            f"job {job_id}: the {len(roots)} roots of its CheckpointRoots events do not make "
            f"its run root 0x{run_root.hex()}"
        )
    return roots


@cache
def trainproof_abi() -> list[dict[str, Any]]:
    """The TrainProof ABI from ape's compiled project (compiling contracts/ if needed)."""
    build = REPO_ROOT / ".build" / "__local__.json"
    if build.is_file():
        types = json.loads(build.read_text()).get("contractTypes", {})
        if "TrainProof" in types:
            return list(types["TrainProof"]["abi"])
    from protocol.chain import contracts_project  # puts this venv's vyper on PATH for ape

    abi = contracts_project().TrainProof.contract_type.abi
    return [a.model_dump(mode="json", by_alias=True) for a in abi]


class ApeMarket:
    """The market through an ape contract instance, signing as one ape account."""

    def __init__(self, contract: Any, account: Any) -> None:
        self.contract = contract
        self.account = account
        self.address = str(contract.address)
        self.sender = str(account.address)
        # C_1..C_m per (job, run root), assembled once: the run root binds them
        self._roots: dict[tuple[int, bytes], list[bytes]] = {}

    def game(self, game_id: int) -> GameState:
        return GameState.from_chain(self.contract.game(game_id))

    def job(self, job_id: int) -> JobView:
        return JobView.from_chain(self.contract.jobs(job_id))

    def credits(self, account: str) -> int:
        return int(self.contract.credits(account))

    def _logs(self, event: str, **topics: Any) -> list[Any]:
        from ape import chain

        handler = getattr(self.contract, event)
        return list(handler.range(0, int(chain.blocks.height) + 1, search_topics=topics))

    def moved_values(self, game_id: int, seq: int) -> list[bytes]:
        for log in self._logs("Moved", game_id=game_id):
            if log.seq == seq:
                return [bytes(v) for v in log.values]
        raise LookupError(f"no Moved log for move {seq} of game {game_id}")

    def opened_chunk(self, game_id: int, seq: int) -> bytes:
        for log in self._logs("ChunkOpened", game_id=game_id):
            if log.seq == seq:
                return bytes(log.chunk)
        raise LookupError(f"no ChunkOpened log for move {seq} of game {game_id}")

    def games_of(self, job_id: int) -> list[int]:
        return [int(log.game_id) for log in self._logs("DisputeOpened", job_id=job_id)]

    def committed_parts(self, job_id: int) -> int:
        return int(self.contract.committed_parts(job_id))

    def commitments(self, from_block: int, to_block: int) -> list[Commitment]:
        out = []
        for log in self.contract.RunCommitted.range(from_block, to_block + 1):
            job_id, run_root = int(log.job_id), bytes(log.run_root)
            if (job_id, run_root) not in self._roots:
                parts = [
                    (int(p.part), [bytes(r) for r in p.roots])
                    for p in self.contract.CheckpointRoots.range(
                        0, int(log.block_number) + 1, search_topics={"job_id": job_id}
                    )
                ]
                spec = self.job(job_id).spec
                self._roots[job_id, run_root] = assemble_roots(job_id, run_root, spec, parts)
            out.append(
                Commitment(
                    job_id=job_id,
                    trainer=str(log.trainer),
                    run_root=run_root,
                    checkpoint_roots=list(self._roots[job_id, run_root]),
                    block=int(log.block_number),
                )
            )
        return out

    def transact(self, fn: str, *args: Any, value: int = 0, key: str) -> Sent | None:
        receipt = getattr(self.contract, fn)(*args, sender=self.account, value=value)
        return Sent(
            key=key,
            hash=str(receipt.txn_hash),
            gas_used=int(receipt.gas_used),
            block=int(receipt.block_number),
            success=not receipt.failed,
            logs=[{"event": e.event_name, **dict(e.event_arguments)} for e in receipt.events],
        )


class Web3Market:
    """The market over plain JSON-RPC; transactions go through a crash-safe Outbox."""

    def __init__(self, w3: Any, address: str, outbox: Outbox, start_block: int = 0) -> None:
        self.w3 = w3
        self.contract = w3.eth.contract(
            address=w3.to_checksum_address(address), abi=trainproof_abi()
        )
        self.address = self.contract.address
        self.outbox = outbox
        self.sender = outbox.account.address
        self.start_block = start_block
        self._roots: dict[tuple[int, bytes], list[bytes]] = {}  # as ApeMarket's

    def game(self, game_id: int) -> GameState:
        return GameState.from_chain(self.contract.functions.game(game_id).call())

    def job(self, job_id: int) -> JobView:
        return JobView.from_chain(self.contract.functions.jobs(job_id).call())

    def credits(self, account: str) -> int:
        return int(self.contract.functions.credits(account).call())

    def _logs(
        self, event: str, from_block: int | None = None, to_block: Any = "latest", **topics: Any
    ) -> list[Any]:
        handler = getattr(self.contract.events, event)
        return list(
            handler.get_logs(
                from_block=self.start_block if from_block is None else from_block,
                to_block=to_block,
                argument_filters=topics or None,
            )
        )

    def moved_values(self, game_id: int, seq: int) -> list[bytes]:
        for log in self._logs("Moved", game_id=game_id):
            if log["args"]["seq"] == seq:
                return [bytes(v) for v in log["args"]["values"]]
        raise LookupError(f"no Moved log for move {seq} of game {game_id}")

    def opened_chunk(self, game_id: int, seq: int) -> bytes:
        for log in self._logs("ChunkOpened", game_id=game_id):
            if log["args"]["seq"] == seq:
                return bytes(log["args"]["chunk"])
        raise LookupError(f"no ChunkOpened log for move {seq} of game {game_id}")

    def games_of(self, job_id: int) -> list[int]:
        return [int(log["args"]["game_id"]) for log in self._logs("DisputeOpened", job_id=job_id)]

    def committed_parts(self, job_id: int) -> int:
        return int(self.contract.functions.committed_parts(job_id).call())

    def commitments(self, from_block: int, to_block: int) -> list[Commitment]:
        out = []
        for log in self._logs("RunCommitted", from_block=from_block, to_block=to_block):
            args = log["args"]
            job_id, run_root = int(args["job_id"]), bytes(args["run_root"])
            if (job_id, run_root) not in self._roots:
                events = self._logs("CheckpointRoots", to_block=log["blockNumber"], job_id=job_id)
                parts = [
                    (int(p["args"]["part"]), [bytes(r) for r in p["args"]["roots"]]) for p in events
                ]
                spec = self.job(job_id).spec
                self._roots[job_id, run_root] = assemble_roots(job_id, run_root, spec, parts)
            out.append(
                Commitment(
                    job_id=job_id,
                    trainer=str(args["trainer"]),
                    run_root=run_root,
                    checkpoint_roots=list(self._roots[job_id, run_root]),
                    block=int(log["blockNumber"]),
                )
            )
        return out

    def transact(self, fn: str, *args: Any, value: int = 0, key: str) -> Sent | None:
        function = getattr(self.contract.functions, fn)(*args)

        def build(params: dict[str, Any]) -> dict[str, Any]:
            params = {**params, "value": value}
            gas = function.estimate_gas(params)  # raises if it would revert now
            return function.build_transaction({**params, "gas": gas * 5 // 4 + 20_000})

        return self.outbox.send(key, build)
