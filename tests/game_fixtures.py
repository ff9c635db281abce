"""Titanoboa helpers for the dispute-game tests (test_game_adversarial, test_game_stateful).

- One small job: the digits-mlp training step (L = 359 ops, 188 slots), N = 4 steps,
  k = 2 (two checkpoint intervals), with the honest computation and a few faulty ones
  (:data:`FAULTS`), each built once per process (:func:`computation`).
- :func:`deploy` deploys Executor + TrainProof from compilations cached per process.
- :class:`BoaMarket` is replay.dispute.players's Market interface over a boa contract, so the
  reference players (TrainerPlayer, ChallengerPlayer, play) run on titanoboa unchanged.
- :class:`GameDriver` plays one game on a boa contract: it computes each party's move from
  that party's :class:`~replay.dispute.players.Computation` with the same logic as the reference
  players (replay/dispute/players.py, written for ape), reads the values a move revealed from the
  boa logs of that move, and can send any call (correct or tampered) for a test to assert on.
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import boa
import numpy as np

from protocol.game import (
    GameState,
    JobSpec,
    Phase,
    commit_parts,
)
from protocol.ir import REDUCTION_OPS
from protocol.market import JobView
from protocol.merkle import MerkleTree, leaf_hash
from protocol.outbox import Sent
from replay.compile.compiler import compile_train, initial_state
from replay.compile.examples import get_example
from replay.data.dataset import Dataset
from replay.dispute.players import (
    ChallengerPlayer,
    Computation,
    Fault,
    Player,
    TrainerPlayer,
    job_spec_for,
    opened_op,
    operand_witnesses,
)
from replay.execute.state import as_committed

N_STEPS, EVERY = 4, 2
STAKE = 10**18
BOND = 10**17
REWARD = 5 * 10**17
CLOCK = 3600
WINDOW = 7200
TRAIN_TIME = 3600

# the contract's payout constants (private there; the tests check the payouts they imply)
WINNER_SHARE_BPS = 5000
BOND_BURN_BPS = 2500
BPS = 10000

#: Faulty computations of the job (op indices are digits-mlp's compiled step):
#: - add: op 3 (ADD, 8192 outputs = 32 chunks) of step 3: chunk descent, one-step;
#: - matmul: op 7 (MATMUL, 640 outputs, 128 terms) of step 3: partial bisection;
#: - fill: op 5 (FILL, one element) of step 2: decided at the element pick;
#: - batch: op 0 (LOAD_BATCH) of step 1 loads step 2's batch: decided at open_op;
#: - second-slot: op 8 (ADD) of step 3 also changes slot 0: the trainer cannot open it.
FAULTS: dict[str, Fault] = {
    "add": Fault(kind="element", step=3, op=3, element=5),
    "matmul": Fault(kind="element", step=3, op=7, element=300),
    "fill": Fault(kind="element", step=2, op=5, element=0),
    "batch": Fault(kind="wrong-batch", step=1, op=0),
    "second-slot": Fault(kind="second-slot", step=3, op=8),
}


@functools.cache
def _job_inputs() -> tuple[Any, Dataset, dict[str, np.ndarray]]:
    ex = get_example("digits-mlp")
    program = compile_train(ex.model)
    return program, Dataset(ex.dataset), initial_state(ex.model, program)


@functools.cache
def computation(name: str = "honest") -> Computation:
    """The honest computation, or one with fault ``name`` of :data:`FAULTS` (cached)."""
    program, dataset, init = _job_inputs()
    fault = None if name == "honest" else FAULTS[name]
    comp = Computation(program, dataset, init, N_STEPS, EVERY, fault=fault, cache=N_STEPS)
    comp.checkpoint_roots()  # run every step once: later moves only read traces
    return comp


@functools.cache
def checkpoints(name: str = "honest") -> tuple[bytes, ...]:
    """C_0, C_k, ..., C_N of a computation."""
    return tuple(computation(name).checkpoint_roots())


def job_spec(**params: Any) -> JobSpec:
    """The job's spec, with the default stake, bond and durations unless overridden."""
    base: dict[str, Any] = {
        "stake": STAKE,
        "bond": BOND,
        "clock": CLOCK,
        "window": WINDOW,
        "train_time": TRAIN_TIME,
    }
    base.update(params)
    return job_spec_for(computation("honest"), **base)


# ---------------------------------------------------------------- contracts


#: TrainProof builds: "deployed" is the contract as shipped (Venom backend, optimised);
#: "debug" is the same source through vyper's legacy backend. Venom merges the revert
#: branches of different asserts (one shared revert block per function, comparisons fused
#: into the statement before), so boa usually cannot tell which `# dev:` check failed in the
#: deployed build, even unoptimised; the legacy backend maps every check to its source line.
#: Revert reasons are asserted exactly on the debug build; the deployed build is checked to
#: revert in the same places (:func:`reverts`) and to behave the same otherwise.
BUILDS = ("deployed", "debug")
_VENOM_PRAGMA = "# pragma experimental-codegen\n"


@functools.cache
def _deployer(path: str, build: str = "deployed") -> Any:
    if build == "deployed":
        return boa.load_partial(path)
    with open(path) as f:
        source = f.read()
    assert _VENOM_PRAGMA in source
    return boa.loads_partial(source.replace(_VENOM_PRAGMA, ""), name=path, filename=path)


def reentrant_deployer() -> Any:
    return _deployer("contracts/test/Reentrant.vy")


def _short_repr(contract: Any) -> str:
    return f"<{contract.contract_name} at {contract.address}>"


def deploy(build: str = "deployed") -> Any:
    """A fresh TrainProof (with its own Executor) of build ``build`` (:data:`BUILDS`).

    boa renders the contract, storage dump included, for the report of every reverted call
    (tens of ms once a few jobs and games exist); the contract gets a short repr instead."""
    executor = _deployer("contracts/Executor.vy").deploy()
    tp = _deployer("contracts/TrainProof.vy", build).deploy(executor.address)
    tp.__class__ = type("TrainProofContract", (type(tp),), {"__repr__": _short_repr})
    tp.build = build
    return tp


@contextlib.contextmanager
def reverts(tp: Any, dev: str) -> Iterator[None]:
    """The block reverts; on the debug build, with exactly the `# dev:` reason ``dev``."""
    if getattr(tp, "build", "deployed") == "debug":
        with boa.reverts(dev=dev):
            yield
    else:
        with boa.reverts():
            yield


def account(balance: int = 100 * 10**18) -> str:
    addr = boa.env.generate_address()
    boa.env.set_balance(addr, balance)
    return addr


def balance(addr: Any) -> int:
    return boa.env.get_balance(addr)


def game_state(tp: Any, game_id: int) -> GameState:
    return GameState.from_chain(tp.game(game_id))


def run_proof(roots: tuple[bytes, ...] | list[bytes], index: int) -> list[bytes]:
    """Inclusion proof of checkpoint root ``index`` in the run tree over ``roots``."""
    tree = MerkleTree([leaf_hash(r) for r in roots])
    return list(tree.prove(index).path)


def first_bad_interval(mine: tuple[bytes, ...], committed: tuple[bytes, ...]) -> int | None:
    for c in range(len(committed) - 1):
        if committed[c + 1] != mine[c + 1]:
            return c
    return None


def new_job(tp: Any, requester: str, spec: JobSpec | None = None, reward: int = REWARD) -> int:
    spec = spec or job_spec()
    return tp.register_job(spec.as_tuple(), sender=requester, value=reward)


def committed_job(
    tp: Any, requester: str, trainer: str, name: str = "honest", spec: JobSpec | None = None
) -> int:
    """Register, accept and commit a job; the trainer commits computation ``name``."""
    spec = spec or job_spec()
    job_id = new_job(tp, requester, spec)
    tp.accept_job(job_id, tp.jobs(job_id).job_hash, sender=trainer, value=spec.stake)
    commit(tp, job_id, checkpoints(name), trainer)
    return job_id


def commit(tp: Any, job_id: int, committed: tuple[bytes, ...] | list[bytes], trainer: str) -> None:
    """commit_run every part of C_1..C_m (``committed`` is C_0..C_m)."""
    for p, roots in enumerate(commit_parts(list(committed[1:]))):
        tp.commit_run(job_id, p, roots, sender=trainer)


def open_dispute(
    tp: Any,
    job_id: int,
    challenger: str,
    committed: tuple[bytes, ...],
    interval: int,
    bond: int = BOND,
) -> int:
    """Open a dispute of ``interval`` against the committed roots (correct proofs)."""
    return tp.open_dispute(
        job_id, interval,
        committed[interval], run_proof(committed, interval),
        committed[interval + 1], run_proof(committed, interval + 1),
        sender=challenger, value=bond,
    )  # fmt: skip


# ---------------------------------------------------------------- the Market interface


@dataclass
class LogBook:
    """The events of one contract, kept as the calls that emitted them return (boa only
    shows the logs of the last call)."""

    moved: dict[tuple[int, int], list[bytes]] = field(default_factory=dict)
    chunks: dict[tuple[int, int], bytes] = field(default_factory=dict)
    disputes: dict[int, list[int]] = field(default_factory=dict)

    def record(self, tp: Any) -> list[Any]:
        logs = tp.get_logs()
        for log in logs:
            name = type(log).__name__
            if name == "Moved":
                self.moved[log.game_id, log.seq] = [bytes(v) for v in log.values]
            elif name == "ChunkOpened":
                self.chunks[log.game_id, log.seq] = bytes(log.chunk)
            elif name == "DisputeOpened":
                self.disputes.setdefault(log.job_id, []).append(log.game_id)
        return logs


class BoaMarket:
    """protocol.market.Market over a boa contract, signing as ``account``; markets of the
    same contract share one :class:`LogBook`."""

    def __init__(self, tp: Any, account: str, book: LogBook) -> None:
        self.tp, self.book = tp, book
        self.address, self.sender = str(tp.address), str(account)

    def game(self, game_id: int) -> GameState:
        return game_state(self.tp, game_id)

    def job(self, job_id: int) -> JobView:
        return JobView.from_chain(self.tp.jobs(job_id))

    def credits(self, account: str) -> int:
        return int(self.tp.credits(account))

    def moved_values(self, game_id: int, seq: int) -> list[bytes]:
        return self.book.moved[game_id, seq]

    def opened_chunk(self, game_id: int, seq: int) -> bytes:
        return self.book.chunks[game_id, seq]

    def games_of(self, job_id: int) -> list[int]:
        return list(self.book.disputes.get(job_id, []))

    def committed_parts(self, job_id: int) -> int:
        return int(self.tp.committed_parts(job_id))

    def commitments(self, from_block: int, to_block: int) -> list[Any]:
        raise NotImplementedError("not needed by the players")

    def transact(self, fn: str, *args: Any, value: int = 0, key: str) -> Sent | None:
        getattr(self.tp, fn)(*args, sender=self.sender, value=value)
        logs = self.book.record(self.tp)
        gas = self.tp._computation.get_gas_used()
        return Sent(key=key, hash="0x", gas_used=gas, block=0, success=True, logs=logs)


# ---------------------------------------------------------------- playing a game


@dataclass(frozen=True)
class Call:
    """A move: the contract function, the arguments after (game_id, seq), the sender."""

    fn: str
    args: tuple[Any, ...]
    sender: str

    def replace(self, *args: Any, fn: str | None = None, sender: str | None = None) -> Call:
        return Call(fn or self.fn, args if args else self.args, sender or self.sender)


@dataclass
class GameDriver:
    """Plays game ``game_id``: the trainer from ``trainer_comp``, the challenger from
    ``challenger_comp`` (each party's own view of the run)."""

    tp: Any
    game_id: int
    trainer: str
    challenger: str
    trainer_comp: Computation
    challenger_comp: Computation
    book: LogBook = field(default_factory=LogBook)  # what the moves logged

    def state(self) -> GameState:
        return game_state(self.tp, self.game_id)

    # -------------------------------------------------------- the op being disputed

    @staticmethod
    def opened_op(comp: Computation, g: GameState) -> tuple[int, int]:
        return opened_op(comp, g)

    def output_tensor(self, comp: Computation, g: GameState) -> np.ndarray:
        t, j = self.opened_op(comp, g)
        value = comp.trace(t).slot_value(j + 1, comp.program.ops[j].out)
        assert value is not None
        return as_committed(value).reshape(-1)

    # -------------------------------------------------------- moves: the reference players'

    def _player(self, cls: type[Player], who: str, comp: Computation, g: GameState) -> Player:
        return cls(BoaMarket(self.tp, who, self.book), comp, g.job_id)

    def trainer_call(self, g: GameState | None = None) -> Call | None:
        """The trainer's move from its computation (replay.dispute.players.TrainerPlayer); None: it
        has none (it can only run out its clock)."""
        g = g or self.state()
        player = self._player(TrainerPlayer, self.trainer, self.trainer_comp, g)
        move = player.next_move(self.game_id, g)
        return None if move is None else Call(move.fn, move.args, self.trainer)

    def challenger_call(self, g: GameState | None = None) -> Call:
        """The challenger's move from its computation (replay.dispute.players.ChallengerPlayer)."""
        g = g or self.state()
        player = self._player(ChallengerPlayer, self.challenger, self.challenger_comp, g)
        move = player.next_move(self.game_id, g)
        if move is None:
            raise AssertionError(f"not a challenger phase: {g.phase!r}")
        return Call(move.fn, move.args, self.challenger)

    def witnesses(self, g: GameState, comp: Computation | None = None) -> list[tuple[Any, ...]]:
        """The one-step operand witnesses (from the challenger's computation by default)."""
        comp = comp or self.challenger_comp
        t, j = self.opened_op(comp, g)
        op = comp.program.ops[j]
        r = g.lo if op.opcode in REDUCTION_OPS else 0
        return operand_witnesses(comp.trace(t), j, g.element, r)

    def next_call(self, g: GameState | None = None) -> Call | None:
        g = g or self.state()
        if g.phase.over:
            return None
        return self.trainer_call(g) if g.phase.trainer_moves else self.challenger_call(g)

    # -------------------------------------------------------- sending

    def send(self, call: Call, seq: int | None = None) -> Any:
        """Send ``call`` naming ``seq`` (the current move count by default); record what
        the move logged."""
        if seq is None:
            seq = self.state().seq
        result = getattr(self.tp, call.fn)(self.game_id, seq, *call.args, sender=call.sender)
        self.book.record(self.tp)
        return result

    def step(self, anyone: str | None = None) -> GameState:
        """One move by the party on turn; a party with no move runs out its clock and
        ``anyone`` (the challenger by default) calls ``timeout``."""
        g = self.state()
        if g.phase.over:
            return g
        call = self.next_call(g)
        if call is None:  # past the deadline (the trainer's clock is shared by the job's games)
            boa.env.time_travel(seconds=max(1, g.deadline + 1 - boa.env.timestamp))
            self.tp.timeout(self.game_id, sender=anyone or self.challenger)
        else:
            self.send(call, g.seq)
        return self.state()

    def play_until(self, phase: Phase, max_moves: int = 100) -> GameState:
        """Move until the game is in ``phase`` (error if it ends first)."""
        for _ in range(max_moves):
            g = self.state()
            if g.phase == phase:
                return g
            if g.phase.over:
                raise AssertionError(f"game ended in {g.phase!r} before reaching {phase!r}")
            self.step()
        raise AssertionError(f"{phase!r} not reached in {max_moves} moves")

    def play(self, max_moves: int = 100) -> GameState:
        """Play to the end; returns the final state."""
        for _ in range(max_moves):
            g = self.step()
            if g.phase.over:
                return g
        raise AssertionError(f"game {self.game_id} did not end in {max_moves} moves")
