"""Reference players of the dispute game (docs/protocol.md §4), on top of the trace recorder.

A :class:`Computation` is one party's version of a job's run: the honest one, or one with an
injected :class:`Fault`. A :class:`TrainerPlayer` commits its computation's checkpoints and
answers every trainer move from it; a :class:`ChallengerPlayer` compares a commitment with
its own computation, disputes the first interval that differs and answers every challenger
move. A party whose computation is wrong loses, at whichever level the disagreement is
settled; playing a *lie* is therefore playing with a faulty computation.

Prover and challenger services (and the tests) drive these players; neither side has code
of its own for the game.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
from pydantic import BaseModel, Field

from protocol.blobs import BlobStore, MemoryStore
from protocol.commitments import chunk, chunk_tree, data_root, slot_value
from protocol.constants import EMPTY_SLOT
from protocol.game import (
    PARTIAL_ARITY,
    TRACE_ARITY,
    GameState,
    JobSpec,
    Phase,
    as_word,
    commit_parts,
    cut_points,
    split_point,
    trace_position,
)
from protocol.ir import REDUCTION_OPS, Opcode, Program
from protocol.market import Market
from protocol.merkle import MerkleTree, leaf_hash, root_from_path, root_of_leaf_hashes
from protocol.outbox import Sent
from replay.data.bundle import Bundle, BundleDataset, BundleMetadata, write_bundle
from replay.data.dataset import BatchSource, Dataset
from replay.dispute.trace import StepTrace, Tamper
from replay.execute.backends import Batch, Executor, make_executor
from replay.execute.numpy_backend import named_from_slots
from replay.execute.state import as_committed, state_root_of


def perturbed(x: np.float32) -> np.float32:
    """A clearly different float32: 2x + 1, or 1.0 where that is not finite or not different
    (a one-ulp flip can vanish in later roundings and change nothing committed)."""
    with np.errstate(all="ignore"):
        y = np.float32(np.float32(2) * x + np.float32(1))
    if not np.isfinite(y) or y == x:
        y = np.float32(1.0) if x != 1 else np.float32(3.0)
    return y


#: Fault kinds that change values inside one step (the others leave steps uncomputed).
TAMPERING = ("element", "second-slot", "wrong-batch")


class Fault(BaseModel):
    """A deliberate error in a computation (tests and demos).

    - ``element``: output element ``element`` of op ``op`` in step ``step`` becomes
      :func:`perturbed` of itself;
    - ``second-slot``: op ``op`` of step ``step`` also changes another slot (slot 0, or 1
      when the op writes slot 0);
    - ``wrong-batch``: LOAD_BATCH op ``op`` of step ``step`` loads the next step's batch;
    - ``skip-steps``: step ``step`` is not computed: its end state is its start state;
    - ``lazy``: no step from ``step`` on is computed, so every later checkpoint repeats the
      last one computed.
    """

    kind: Literal["element", "second-slot", "wrong-batch", "skip-steps", "lazy"]
    step: int = Field(ge=0)
    op: int = Field(ge=0)
    element: int = Field(0, ge=0)

    def freezes(self, t: int) -> bool:
        """Whether this fault leaves step ``t`` uncomputed."""
        return (self.kind == "skip-steps" and t == self.step) or (
            self.kind == "lazy" and t >= self.step
        )

    def tamper(self, program: Program, dataset: BatchSource) -> Tamper:
        target = program.ops[self.op]

        def hook(j: int, ex: Executor, batch: Batch | None) -> dict[int, np.ndarray | None]:
            if j != self.op:
                return {}
            if self.kind == "wrong-batch":
                if target.opcode != Opcode.LOAD_BATCH:
                    raise ValueError(f"op {self.op} is {target.opcode.name}, not LOAD_BATCH")
                return {target.out: dataset.batch(self.step + 1)[target.imm]}
            slot = target.out if self.kind == "element" else (1 if target.out == 0 else 0)
            value = ex.slot_array(slot)
            if value is None:
                raise ValueError(f"slot {slot} is empty after op {self.op}: nothing to perturb")
            changed = np.array(value, dtype=np.float32).reshape(-1).copy()
            index = self.element if self.kind == "element" else 0
            changed[index] = perturbed(changed[index])
            return {slot: changed.reshape(np.shape(value))}

        return hook


class FrozenStep:
    """A step that was not computed: every op-level state is the step's start state.

    What a lazy or step-skipping trainer claims; it offers the StepTrace interface the
    players use, so such a trainer plays (and loses) like any other.
    """

    def __init__(self, trace: StepTrace) -> None:
        self._trace = trace
        self.program = trace.program
        self.length = trace.length
        self.op_roots = [trace.op_roots[0]] * (trace.length + 1)

    def slot_value(self, j: int, slot: int) -> np.ndarray | None:
        return self._trace.slot_value(0, slot)

    def slot_roots(self, j: int) -> list[bytes | None]:
        return self._trace.slot_roots(0)

    def state_tree(self, j: int) -> MerkleTree:
        return self._trace.state_tree(0)

    def chunk_tree(self, j: int, slot: int) -> MerkleTree:
        return self._trace.chunk_tree(0, slot)

    def partials(self, j: int, flat: int) -> np.ndarray:
        return self._trace.partials(0, flat)


class Computation:
    """One party's run of a job, step by step, with any op-level detail on demand."""

    def __init__(
        self,
        program: Program,
        dataset: BatchSource,
        initial: Mapping[str, np.ndarray],
        steps: int,
        every: int,
        fault: Fault | None = None,
        cache: int = 16,
        backend: str = "torch",
    ) -> None:
        self.program = program
        self.backend = backend
        self._fast: Executor | None = None
        self._fast_at: int | None = None
        self.dataset = dataset
        self.steps = steps
        self.every = every
        self.fault = fault
        self._states: dict[int, dict[str, np.ndarray]] = {0: dict(initial)}
        self._kept: set[int] = {0}
        self._seeded: set[int] = {0}
        self._recent: OrderedDict[int, None] = OrderedDict()
        self._traces: OrderedDict[int, StepTrace | FrozenStep] = OrderedDict()
        self._cache = cache
        self._program_tree = MerkleTree.from_leaves(program.encoded())
        self._dataset_tree: MerkleTree | None = None

    @property
    def ops(self) -> int:
        return len(self.program.ops)

    def trace(self, t: int) -> StepTrace | FrozenStep:
        """The op-level trace of step ``t`` (cached)."""
        if t in self._traces:
            self._traces.move_to_end(t)
            return self._traces[t]
        tamper = None
        fault = self.fault
        if (
            fault is not None
            and fault.step == t
            and fault.kind in ("element", "second-slot", "wrong-batch")
        ):
            tamper = fault.tamper(self.program, self.dataset)
        trace: StepTrace | FrozenStep = StepTrace(
            self.program, self.state_before(t), self.dataset.batch(t), self.backend,
            tamper=tamper,
        )  # fmt: skip
        if fault is not None and fault.freezes(t):
            trace = FrozenStep(trace)
        elif tamper is None and t + 1 in self._states:
            ran = state_root_of(self.program, self._states[t + 1])
            if trace.op_roots[trace.length] != ran:
                raise RuntimeError(
                    f"step {t}: the op-by-op trace ends at {trace.op_roots[-1].hex()}, the "
                    f"{self.backend} step at {ran.hex()}; they disagree (a bug: report it with "
                    "the program) and this party's moves would not match its commitment"
                )
        self._traces[t] = trace
        if len(self._traces) > self._cache:
            self._traces.popitem(last=False)
        return trace

    def fresh(self) -> Computation:
        """A new computation of the same inputs (program, dataset, C_0, fault), from C_0."""
        return Computation(
            self.program, self.dataset, self._states[0], self.steps, self.every, self.fault,
            self._cache, self.backend,
        )  # fmt: skip

    @property
    def start_checkpoint(self) -> int:
        """The latest checkpoint this computation was seeded at (0: it starts from C_0)."""
        return max(t for t in self._kept if t in self._seeded) // self.every

    def seed(self, t: int, state: Mapping[str, np.ndarray]) -> None:
        """Start from a known state at step ``t`` (a verified checkpoint) instead of
        recomputing it from C_0. The caller vouches that it is this computation's state."""
        self._states[t] = dict(state)
        self._kept.add(t)
        self._seeded.add(t)

    def state_before(self, t: int) -> dict[str, np.ndarray]:
        """Persistent state at the start of step ``t``.

        States at checkpoint boundaries (and seeded ones) are kept; the others only in a
        cache of ``cache`` steps, so memory stays bounded by one interval's working set
        whatever the run's length (an evicted state is recomputed from its interval's start).
        """
        if t not in self._states:
            start = max(s for s in self._states if s < t)
            for s in range(start, t):
                self._keep(s + 1, self._advance(s))
        return self._states[t]

    def _advance(self, s: int) -> dict[str, np.ndarray]:
        """The state after step ``s`` (from the kept state before it): a plain run of the
        step on the fast backend, or the step's trace where a fault changes it."""
        fault = self.fault
        if fault is not None and (
            fault.freezes(s) or (fault.step == s and fault.kind in TAMPERING)
        ):
            tr = self.trace(s)
            values = [tr.slot_value(tr.length, i) for i in range(len(self.program.slots))]
            self._fast_at = None
            return named_from_slots(self.program, values)
        if self._fast is None:
            self._fast = make_executor(self.program, self.backend)
        if self._fast_at != s:
            self._fast.set_state(self._states[s])
        self._fast.run_step(self.dataset.batch(s))
        self._fast_at = s + 1
        return self._fast.get_state()

    def _keep(self, t: int, state: dict[str, np.ndarray]) -> None:
        self._states[t] = state
        if t % self.every == 0:
            self._kept.add(t)
            return
        self._recent[t] = None
        while len(self._recent) > self._cache:
            old, _ = self._recent.popitem(last=False)
            if old not in self._kept:
                self._states.pop(old, None)

    def step_root(self, t: int) -> bytes:
        """State root at the start of step ``t`` (``t = N`` is the end of the run)."""
        if t in self._traces:
            return self._traces[t].op_roots[0]
        return state_root_of(self.program, self.state_before(t))

    def checkpoint_roots(self) -> list[bytes]:
        """``C_0, C_k, ..., C_N``."""
        return [self.step_root(c * self.every) for c in range(self.steps // self.every + 1)]

    def position_root(self, interval: int, position: int) -> bytes:
        """The op-level state root at trace position ``position`` of interval ``interval``."""
        s, j = trace_position(position, self.ops)
        return self.trace(interval * self.every + s).op_roots[j]

    def program_proof(self, j: int) -> list[bytes]:
        return list(self._program_tree.prove(j).path)

    def dataset_proof(self, t: int) -> list[bytes]:
        """The inclusion path of step ``t``'s leaf in the dataset tree (a bundle's paged
        dataset proves it from the step's page; a local one builds the whole tree once)."""
        if isinstance(self.dataset, BundleDataset):
            return self.dataset.proof(t)
        if self._dataset_tree is None:
            leaves = [self.dataset.leaf(s) for s in range(self.steps)]
            self._dataset_tree = MerkleTree.from_leaves(leaves)
        return list(self._dataset_tree.prove(t).path)


def job_spec_for(comp: Computation, bundle: bytes | None = None, **params: Any) -> JobSpec:
    """The JobSpec binding an honest computation's program, data, C_0 and bundle (by
    default the address its bundle would have, computed without publishing it)."""
    return JobSpec(
        program_root=comp.program.root(),
        program_len=comp.ops,
        dataset_root=comp.dataset.root(comp.steps),
        initial_root=comp.step_root(0),
        bundle=write_job_bundle(MemoryStore(), comp) if bundle is None else bundle,
        steps=comp.steps,
        every=comp.every,
        slots=len(comp.program.slots),
        **params,
    )


# ---------------------------------------------------------------- helpers


def _subtree_root(tree: MerkleTree, lo: int, hi: int) -> bytes:
    return root_of_leaf_hashes([tree.leaf(i) for i in range(lo, hi)])


def opened_op(comp: Computation, g: GameState) -> tuple[int, int]:
    """(step, op) of the disputed transition: from the trace position until it is opened,
    then as the contract recorded it."""
    if g.phase <= Phase.OPEN_OP:
        return g.interval * comp.every + g.lo // comp.ops, g.lo % comp.ops
    return g.step, g.op


# ---------------------------------------------------------------- players


@dataclass(frozen=True)
class Call:
    """A move a player decided on: the contract function and its arguments after
    (game_id, seq). Tests may alter one before sending it."""

    fn: str
    args: tuple[Any, ...]


def transition_opening(comp: Computation, t: int, j: int) -> Call:
    """The ``open_op`` move for op ``j`` of step ``t`` as this computation ran it: the
    descriptor and its proof, the output slot's old and new value with the pre-state path,
    and the new tensor's fields (or the step's dataset leaf for LOAD_BATCH). Not checked
    against any game: see :func:`opening_is_valid`."""
    trace = comp.trace(t)
    op = comp.program.ops[j]
    old = slot_value(trace.slot_roots(j)[op.out])
    new = slot_value(trace.slot_roots(j + 1)[op.out])
    path = list(trace.state_tree(j).prove(op.out).path)
    batch_leaf, batch_proof = b"", []
    numel, droot = 0, b"\x00" * 32
    value = trace.slot_value(j + 1, op.out)
    if op.opcode == Opcode.LOAD_BATCH:
        batch_leaf, batch_proof = comp.dataset.leaf(t), comp.dataset_proof(t)
    elif op.opcode != Opcode.FREE and value is not None:
        raw = as_committed(value).reshape(-1)
        numel, droot = raw.size, data_root(memoryview(raw).cast("B"))
    return Call("open_op", (
        op.encode(), comp.program_proof(j), old, new, path,
        numel, droot, batch_leaf, batch_proof,
    ))  # fmt: skip


def opening_is_valid(comp: Computation, t: int, j: int, opening: Call, g: GameState) -> bool:
    """Whether the contract would accept ``opening`` in game state ``g``: the one path turns
    the agreed root into the disputed one, and the new value is what the op may write."""
    op = comp.program.ops[j]
    _, _, old, new, path, numel, _, batch_leaf, _ = opening.args
    size = len(comp.program.slots)
    if (
        root_from_path(leaf_hash(old), op.out, size, path) != g.v_lo
        or root_from_path(leaf_hash(new), op.out, size, path) != g.v_hi
    ):
        return False  # the claimed post-state is not this slot's change alone
    if op.opcode == Opcode.LOAD_BATCH:
        return bool(new == batch_leaf[32 * op.imm : 32 * op.imm + 32])
    if op.opcode == Opcode.FREE:
        return bool(new == EMPTY_SLOT)
    return bool(new != EMPTY_SLOT and numel == op.numel)  # a tensor of the op's size


@dataclass
class Move:
    """A move a player sent: its phase before the move, and the gas it used."""

    game_id: int
    seq: int  # the game's move count the move answered (-1: opening the dispute)
    phase: Phase
    gas: int
    party: str


@dataclass
class Player:
    """A party of the game, signing through ``market``, playing from ``comp``."""

    market: Market
    comp: Computation
    job_id: int
    moves: list[Move] = field(default_factory=list)

    def next_move(self, game_id: int, g: GameState) -> Call | None:
        """This party's move in state ``g`` of game ``game_id``, without sending it; None when
        it is not this party's turn or it has no valid move."""
        raise NotImplementedError

    def move(self, game_id: int) -> Sent | None:
        """Decide and send this party's move in ``game_id`` (one transaction per move count)."""
        g = self.market.game(game_id)
        call = None if g.phase.over else self.next_move(game_id, g)
        if call is None:
            return None
        sent = self.market.transact(
            call.fn, game_id, g.seq, *call.args, key=f"move:{game_id}:{g.seq}"
        )
        if sent is not None:
            self.moves.append(Move(game_id, g.seq, g.phase, sent.gas_used, type(self).__name__))
        return sent


@dataclass
class TrainerPlayer(Player):
    """Commits its computation and answers the trainer's moves of every game from it."""

    def commit(self) -> Sent | None:
        """Commit C_1..C_m, one ``commit_run`` per part (protocol.game.commit_parts), from the
        first part the chain lacks; the last part's receipt (None: a part did not land)."""
        parts = commit_parts(self.comp.checkpoint_roots()[1:])
        sent = None
        for p in range(self.market.committed_parts(self.job_id), len(parts)):
            key = f"commit:{self.job_id}:{p}"
            sent = self.market.transact("commit_run", self.job_id, p, parts[p], key=key)
            if sent is None or not sent.success:
                return sent
        return sent

    def next_move(self, game_id: int, g: GameState) -> Call | None:
        if not g.phase.trainer_moves:
            return None
        comp = self.comp
        if g.phase == Phase.TRACE_REVEAL:
            points = cut_points(g.lo, g.hi, TRACE_ARITY)
            return Call("reveal", ([comp.position_root(g.interval, p) for p in points],))
        if g.phase == Phase.OPEN_OP:
            return self._open_op(g)
        t, j = opened_op(comp, g)
        trace = comp.trace(t)
        out = comp.program.ops[j].out
        if g.phase == Phase.CHUNK_REVEAL:
            tree = trace.chunk_tree(j + 1, out)
            split = g.node_lo + split_point(g.node_hi - g.node_lo)
            left = _subtree_root(tree, g.node_lo, split)
            right = _subtree_root(tree, split, g.node_hi)
            return Call("reveal_children", (left, right))
        if g.phase == Phase.CHUNK_OPEN:
            value = trace.slot_value(j + 1, out)
            assert value is not None
            piece = chunk(as_committed(value).reshape(-1), g.node_lo)
            return Call("open_chunk", (piece,))
        if g.phase == Phase.PARTIAL_REVEAL:
            partials = trace.partials(j, g.element).view(np.uint32)
            values = [as_word(int(partials[r])) for r in cut_points(g.lo, g.hi, PARTIAL_ARITY)]
            return Call("reveal", (values,))
        raise AssertionError(f"unhandled trainer phase {g.phase}")

    def _open_op(self, g: GameState) -> Call | None:
        """Open the disputed transition — or nothing, when this computation cannot justify
        it (another slot changed too, a wrong batch, a value that is no tensor): then the
        trainer can only let its clock run out."""
        t, j = opened_op(self.comp, g)
        opening = transition_opening(self.comp, t, j)
        return opening if opening_is_valid(self.comp, t, j, opening, g) else None


@dataclass
class ChallengerPlayer(Player):
    """Checks a commitment against its computation; disputes and plays on the first difference."""

    def first_bad_interval(self, committed: list[bytes]) -> int | None:
        """The first interval whose end root differs from this computation's (C_0 is agreed)."""
        mine = self.comp.checkpoint_roots()
        for c in range(len(committed) - 1):
            if committed[c + 1] != mine[c + 1]:
                return c
        return None

    def open(self, committed: list[bytes], interval: int, bond: int) -> int | None:
        """Dispute ``interval`` of the commitment ``committed`` (C_0 .. C_N); the game id."""
        tree = MerkleTree([leaf_hash(r) for r in committed])
        sent = self.market.transact(
            "open_dispute", self.job_id, interval,
            committed[interval], list(tree.prove(interval).path),
            committed[interval + 1], list(tree.prove(interval + 1).path),
            value=bond, key=f"dispute:{self.job_id}:{interval}",
        )  # fmt: skip
        for game_id in reversed(self.market.games_of(self.job_id)):
            g = self.market.game(game_id)
            if g.challenger.lower() == self.market.sender.lower() and g.interval == interval:
                if sent is not None:
                    self.moves.append(Move(game_id, -1, Phase.TRACE_REVEAL, sent.gas_used, "open"))
                return game_id
        return None

    def next_move(self, game_id: int, g: GameState) -> Call | None:
        if g.phase.trainer_moves:
            return None
        m, comp = self.market, self.comp
        if g.phase == Phase.TRACE_PICK:
            values = m.moved_values(game_id, g.seq - 1)
            mine = [comp.position_root(g.interval, p) for p in cut_points(g.lo, g.hi, TRACE_ARITY)]
            return Call("pick", (values, _first_disputed(values, mine)))
        t, j = opened_op(comp, g)
        trace, op = comp.trace(t), comp.program.ops[j]
        if g.phase == Phase.CHUNK_PICK:
            left, right = m.moved_values(game_id, g.seq - 1)
            tree = trace.chunk_tree(j + 1, op.out)
            split = g.node_lo + split_point(g.node_hi - g.node_lo)
            go_right = left == _subtree_root(tree, g.node_lo, split)
            return Call("pick_child", (left, right, go_right))
        if g.phase == Phase.ELEMENT_PICK:
            theirs = m.opened_chunk(game_id, g.seq - 1)
            value = trace.slot_value(j + 1, op.out)
            assert value is not None
            ours = chunk(as_committed(value).reshape(-1), g.node_lo)
            index = _first_different_element(theirs, ours)
            return Call("pick_element", (theirs, index, op.encode()))
        if g.phase == Phase.PARTIAL_PICK:
            values = m.moved_values(game_id, g.seq - 1)
            partials = trace.partials(j, g.element).view(np.uint32)
            mine = [as_word(int(partials[r])) for r in cut_points(g.lo, g.hi, PARTIAL_ARITY)]
            return Call("pick", (values, _first_disputed(values, mine)))
        if g.phase == Phase.ONE_STEP:
            r = g.lo if op.opcode in REDUCTION_OPS else 0
            witnesses = operand_witnesses(trace, j, g.element, r)
            return Call("one_step", (op.encode(), witnesses))
        raise AssertionError(f"unhandled challenger phase {g.phase}")


def _first_disputed(values: list[bytes], mine: list[bytes]) -> int:
    """The first part whose end this party disputes (the last part's end is disputed by
    construction: it is the current disputed value)."""
    for i, (v, m) in enumerate(zip(values, mine, strict=True)):
        if v != m:
            return i
    return len(values)


def operand_witnesses(trace: StepTrace, j: int, f: int, r: int) -> list[tuple[Any, ...]]:
    """What `one_step` needs per operand of op ``j``: the slot's value and proof in the
    pre-state, its tensor fields, and the chunk holding element idx(f, r) with its proof."""
    op = trace.program.ops[j]
    roots = trace.slot_roots(j)
    state = trace.state_tree(j)
    out = []
    for read in trace.operand_reads(j, f, r):
        value = trace.slot_value(j, read.slot)
        if value is None:
            raise ValueError(f"op {j} reads empty slot {read.slot}")
        raw = as_committed(value).reshape(-1)
        idx, o = read.index, op.operands[read.k]
        tree = chunk_tree(raw)
        c = idx // 256
        out.append((
            slot_value(roots[o.slot]), list(state.prove(o.slot).path), raw.size,
            data_root(memoryview(raw).cast("B")), chunk(raw, c), list(tree.prove(c).path),
        ))  # fmt: skip
    return out


# ---------------------------------------------------------------- playing a whole game


@dataclass
class GameResult:
    game_id: int
    trainer_won: bool
    moves: list[Move]
    timeouts: int


def play(
    trainer: TrainerPlayer,
    challenger: ChallengerPlayer,
    game_id: int,
    advance_time: Callable[[int], None],
    max_moves: int = 200,
) -> GameResult:
    """Alternate the two players until the game ends; a player with no move lets its clock
    run out (``advance_time`` moves the chain's clock) and the challenger calls ``timeout``."""
    market = challenger.market
    timeouts = 0
    for _ in range(max_moves):
        g = market.game(game_id)
        if g.phase.over:
            break
        player: Player = trainer if g.phase.trainer_moves else challenger
        if player.move(game_id) is None:
            advance_time(max(1, g.deadline + 1 - g.last_move))  # now >= last_move
            market.transact("timeout", game_id, key=f"timeout:{game_id}")
            timeouts += 1
    g = market.game(game_id)
    if not g.phase.over:
        raise RuntimeError(f"game {game_id} did not end within {max_moves} moves")
    moves = sorted(
        (m for m in trainer.moves + challenger.moves if m.game_id == game_id), key=lambda m: m.seq
    )
    return GameResult(game_id, g.phase == Phase.TRAINER_WON, moves, timeouts)


def _first_different_element(theirs: bytes, ours: bytes) -> int:
    """The first float32 element (4-byte slot) where two chunks differ; 0 when none does (a
    challenger disputing a correct chunk must still name an element, and loses on it)."""
    return next(
        (i for i in range(len(ours) // 4) if theirs[4 * i : 4 * i + 4] != ours[4 * i : 4 * i + 4]),
        0,
    )


# ---------------------------------------------------------------- for the services


def example_computation(
    example: str, steps: int, every: int, fault: Fault | None = None
) -> Computation:
    """A named example's computation (replay.compile.examples) for a job of ``steps`` steps."""
    from replay.compile.compiler import compile_train, initial_state
    from replay.compile.examples import get_example

    ex = get_example(example)
    program = compile_train(ex.model)
    return Computation(
        program, Dataset(ex.dataset), initial_state(ex.model, program), steps, every, fault
    )


def bundle_computation(bundle: Bundle, spec: JobSpec, fault: Fault | None = None) -> Computation:
    """The computation of a job from its verified bundle (program, C_0, paged dataset)."""
    return Computation(
        bundle.program, bundle.dataset, bundle.initial_state, spec.steps, spec.every, fault
    )


def write_job_bundle(store: BlobStore, comp: Computation, name: str = "job") -> bytes:
    """Publish the bundle of ``comp``'s job (program, C_0, its N batches) into ``store``;
    its hash, what ``JobSpec.bundle`` binds (tests, benchmarks)."""
    address, _ = write_bundle(
        store, comp.program, comp.state_before(0), comp.dataset, comp.steps,
        BundleMetadata(name=name),
    )  # fmt: skip
    return bytes.fromhex(address)


def spec_mismatch(spec: JobSpec, comp: Computation) -> str | None:
    """Why a job is not this computation's (None when program, data and C_0 all match)."""
    checks = {
        "program_root": (spec.program_root, comp.program.root()),
        "program_len": (spec.program_len, comp.ops),
        "slots": (spec.slots, len(comp.program.slots)),
        "dataset_root": (spec.dataset_root, comp.dataset.root(spec.steps)),
        "initial_root": (spec.initial_root, comp.step_root(0)),
    }
    for name, (theirs, ours) in checks.items():
        if theirs != ours:
            return f"the job's {name} differs from this example's"
    return None


def parse_fault(text: str, program: Program, steps: int) -> Fault:
    """``step=T,op=J,elem=E`` | ``lazy`` | ``wrong-batch`` | ``skip-steps`` | ``second-slot``,
    the last four optionally followed by ``:step=T`` (default: the middle step)."""
    kind, _, rest = text.partition(":")
    if "=" in kind:
        kind, rest = "element", text
    fields = dict(kv.split("=", 1) for kv in rest.split(",") if kv)
    unknown = set(fields) - {"step", "op", "elem"}
    if unknown:
        raise ValueError(f"fault {text!r}: unknown fields {sorted(unknown)} (use step, op, elem)")
    step = int(fields.get("step", steps // 2))
    if kind == "wrong-batch":
        op = next(j for j, o in enumerate(program.ops) if o.opcode == Opcode.LOAD_BATCH)
    else:
        op = int(fields.get("op", 0))
    if not 0 <= step < steps or not 0 <= op < len(program.ops):
        raise ValueError(f"fault {text!r}: step must be < {steps}, op < {len(program.ops)}")
    if kind == "element" and "op" not in fields:
        raise ValueError(f"fault {text!r}: name the op (op=J) and element (elem=E)")
    return Fault(kind=kind, step=step, op=op, element=int(fields.get("elem", 0)))  # type: ignore[arg-type]
