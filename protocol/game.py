"""What both sides of a dispute share: the job spec, game phases, bisection arithmetic, and
a client for the TrainProof contract (contracts/TrainProof.vy, docs/protocol.md §4).

Every number here mirrors a constant of the contract; tests read the deployed constants
and compare.
"""

from __future__ import annotations

from collections.abc import Sequence
from enum import IntEnum
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from protocol.constants import COMMIT_PART, MAX_CHECKPOINTS
from protocol.merkle import leaf_hash, root_of_leaf_hashes

#: Parts per trace bisection move (the trainer reveals TRACE_ARITY - 1 roots).
TRACE_ARITY = 8
#: Parts per partial-value bisection move.
PARTIAL_ARITY = 8
#: Elements of float32 per chunk (CHUNK_BYTES / 4).
ELEMENTS_PER_CHUNK = 256

# Job parameter bounds (the contract's public constants of the same names; register_job
# enforces them, docs/protocol.md §4.5).
#: Shortest chess clock per party per game, s.
MIN_CLOCK = 3600
#: Shortest challenge window, s.
MIN_WINDOW = 3600
#: Longest clock, window and train time, s (365 days: no deadline overflows uint64).
MAX_DURATION = 365 * 86400
#: Smallest bond, wei.
MIN_BOND = 10**16
#: Smallest stake, wei.
MIN_STAKE = 2 * 10**16
#: Most ops per step; most trace positions per interval (k * L).
MAX_PROGRAM_LEN = 2**32 - 1
MAX_SPAN = 2**64 - 1
#: A block, s: the pace of a trainer that sends one transaction per block (§4.3).
BLOCK_TIME = 12


class JobStatus(IntEnum):
    OPEN = 1
    ACCEPTED = 2
    COMMITTED = 3
    FINALIZED = 4
    REJECTED = 5
    CANCELLED = 6
    EXPIRED = 7


class Phase(IntEnum):
    """Game phases; the party to move is :attr:`trainer_moves`."""

    TRACE_REVEAL = 1
    TRACE_PICK = 2
    OPEN_OP = 3
    CHUNK_REVEAL = 4
    CHUNK_PICK = 5
    CHUNK_OPEN = 6
    ELEMENT_PICK = 7
    PARTIAL_REVEAL = 8
    PARTIAL_PICK = 9
    ONE_STEP = 10
    TRAINER_WON = 11
    CHALLENGER_WON = 12
    ABANDONED = 13

    @property
    def trainer_moves(self) -> bool:
        return self in _TRAINER_PHASES

    @property
    def over(self) -> bool:
        return self >= Phase.TRAINER_WON

    @property
    def level(self) -> str:
        """The dispute level of DESIGN §4.4 this phase belongs to (for status displays)."""
        return _LEVELS[self]


_TRAINER_PHASES = frozenset(
    {Phase.TRACE_REVEAL, Phase.OPEN_OP, Phase.CHUNK_REVEAL, Phase.CHUNK_OPEN, Phase.PARTIAL_REVEAL}
)
_LEVELS = {
    Phase.TRACE_REVEAL: "trace",
    Phase.TRACE_PICK: "trace",
    Phase.OPEN_OP: "op",
    Phase.CHUNK_REVEAL: "chunk",
    Phase.CHUNK_PICK: "chunk",
    Phase.CHUNK_OPEN: "chunk",
    Phase.ELEMENT_PICK: "element",
    Phase.PARTIAL_REVEAL: "partial",
    Phase.PARTIAL_PICK: "partial",
    Phase.ONE_STEP: "one-step",
    Phase.TRAINER_WON: "resolved",
    Phase.CHALLENGER_WON: "resolved",
    Phase.ABANDONED: "resolved",
}


class JobSpec(BaseModel):
    """Everything a job binds (the contract's JobSpec struct, field for field)."""

    model_config = ConfigDict(frozen=True)

    program_root: bytes = Field(min_length=32, max_length=32)
    program_len: int = Field(gt=0, lt=2**64)
    dataset_root: bytes = Field(min_length=32, max_length=32)
    initial_root: bytes = Field(min_length=32, max_length=32)
    bundle: bytes = Field(
        min_length=32, max_length=32, description="sha256 of the job bundle's manifest"
    )
    steps: int = Field(gt=0, lt=2**64)
    every: int = Field(gt=0, lt=2**64)
    slots: int = Field(gt=0, lt=2**64)
    stake: int = Field(ge=0)
    bond: int = Field(ge=0)
    clock: int = Field(gt=0, lt=2**64, description="seconds per party per game")
    window: int = Field(gt=0, lt=2**64, description="challenge window after the commitment, s")
    train_time: int = Field(gt=0, lt=2**64, description="seconds from acceptance to commit")

    @property
    def intervals(self) -> int:
        return self.steps // self.every

    def as_tuple(self) -> tuple[Any, ...]:
        return tuple(getattr(self, f) for f in type(self).model_fields)


class GameState(BaseModel):
    """A game, as the contract's `game(id)` view unpacks it."""

    job_id: int
    challenger: str
    phase: Phase
    seq: int
    interval: int
    lo: int
    hi: int
    v_lo: bytes
    v_hi: bytes
    pending: bytes
    step: int
    op: int
    pre_root: bytes
    desc_hash: bytes
    numel: int
    node: bytes
    node_lo: int
    node_hi: int
    element: int
    trainer_clock: int
    challenger_clock: int
    last_move: int
    settled: bool
    deadline: int  # the last second the party on turn may move (at today's running games)
    live: bool  # running and not frozen by a lower-numbered game that rejected the job

    @classmethod
    def from_chain(cls, raw: Any) -> GameState:
        values = list(raw)
        return cls(**{name: plain(v) for name, v in zip(cls.model_fields, values, strict=True)})


def plain(v: Any) -> Any:
    """A value read from a contract as plain Python: bytes for any bytes-like value
    (ape's HexBytes, web3's 0x-strings of 32 bytes), everything else unchanged."""
    if isinstance(v, bytes | bytearray):
        return bytes(v)
    if isinstance(v, str) and v.startswith("0x") and len(v) == 66:
        return bytes.fromhex(v[2:])
    if hasattr(v, "hex") and not isinstance(v, int | str):
        return bytes(v)
    return v


def cut_points(lo: int, hi: int, arity: int) -> list[int]:
    """Positions strictly inside (lo, hi) at which a reveal gives values: n - 1 of them,
    n = min(arity, hi - lo), at lo + (hi - lo) * i // n."""
    n = min(arity, hi - lo)
    return [lo + (hi - lo) * i // n for i in range(1, n)]


def part_range(lo: int, hi: int, n: int, part: int) -> tuple[int, int]:
    """Bounds of part ``part`` of (lo, hi) cut in ``n`` parts."""
    return lo + (hi - lo) * part // n, lo + (hi - lo) * (part + 1) // n


def split_point(n: int) -> int:
    """Largest power of two strictly below n (n >= 2): RFC 9162's left-subtree size."""
    return 1 << ((n - 1).bit_length() - 1)


def commit_parts(roots: Sequence[bytes], part: int = COMMIT_PART) -> list[list[bytes]]:
    """C_1..C_m cut into the parts ``commit_run`` takes, in order (docs/protocol.md §3.3).

    Part p holds leaves p * part .. (p + 1) * part - 1 of the run tree, leaf i being C_i:
    part 0 omits C_0 (the spec's initial root), every part but the last is full, so each
    full part is a complete, aligned subtree of the run tree."""
    if not roots:
        raise ValueError("a commitment has at least one checkpoint root")
    n = len(roots) + 1
    return [list(roots[max(0, p * part - 1) : (p + 1) * part - 1]) for p in range(-(-n // part))]


def parts_run_root(initial_root: bytes, parts: Sequence[Sequence[bytes]]) -> bytes:
    """The run root as ``commit_run`` computes it: each part's subtree root, then the RFC
    9162 tree over the part roots. Equals ``run_root_of([initial_root, *C_1..C_m])``."""
    tops = [
        root_of_leaf_hashes([leaf_hash(r) for r in ([initial_root] if p == 0 else []) + list(rs)])
        for p, rs in enumerate(parts)
    ]
    return root_of_leaf_hashes(tops)


def trace_position(position: int, ops_per_step: int) -> tuple[int, int]:
    """(step within the interval, op boundary) of a trace position p in [0, k*L].

    Position s*L + j is the state after j ops of step s; the interval's end k*L is reported
    as (k - 1, L), the end of its last step.
    """
    if position == 0:
        return 0, 0
    s, j = divmod(position, ops_per_step)
    if j == 0:
        return s - 1, ops_per_step
    return s, j


def element_bits(chunk: bytes, index: int) -> int:
    """The float32 bit pattern of element ``index`` of a chunk (little-endian)."""
    return int.from_bytes(chunk[4 * index : 4 * index + 4], "little")


def as_word(bits: int) -> bytes:
    """A float32 bit pattern (or any small integer) as a 32-byte big-endian word."""
    return bits.to_bytes(32, "big")


def job_problems(spec: JobSpec) -> list[str]:
    """Why ``register_job`` would refuse ``spec`` (its parameter bounds), one line each;
    empty when none applies. The prover refuses such a job before staking on it."""
    problems = []
    if spec.steps % spec.every:
        problems.append(f"every={spec.every} does not divide steps={spec.steps}")
    elif spec.steps // spec.every > MAX_CHECKPOINTS:
        problems.append(f"{spec.steps // spec.every} checkpoints, more than {MAX_CHECKPOINTS}")
    if spec.program_len > MAX_PROGRAM_LEN or spec.every * spec.program_len > MAX_SPAN:
        problems.append(f"interval of {spec.every} x {spec.program_len} ops is too long")
    if not MIN_CLOCK <= spec.clock <= MAX_DURATION:
        problems.append(f"clock={spec.clock}s outside [{MIN_CLOCK}, {MAX_DURATION}]")
    if not MIN_WINDOW <= spec.window <= MAX_DURATION:
        problems.append(f"window={spec.window}s outside [{MIN_WINDOW}, {MAX_DURATION}]")
    if not 0 < spec.train_time <= MAX_DURATION:
        problems.append(f"train_time={spec.train_time}s outside [1, {MAX_DURATION}]")
    if spec.bond < MIN_BOND:
        problems.append(f"bond={spec.bond} wei below {MIN_BOND}")
    if spec.stake < MIN_STAKE:
        problems.append(f"stake={spec.stake} wei below {MIN_STAKE}")
    return problems


def trainer_moves_bound(spec: JobSpec, max_numel: int, max_reduce: int) -> int:
    """Most trainer moves one game of ``spec`` can take: trace reveals over k * L positions,
    open_op, chunk reveals down ceil(numel / 256) chunks, open_chunk, partial reveals over
    ``max_reduce`` terms."""

    def rounds(n: int, arity: int) -> int:
        r = 0
        while n > 1:
            n = -(-n // arity)
            r += 1
        return r

    chunks = -(-max_numel // ELEMENTS_PER_CHUNK)
    depth = max(chunks - 1, 0).bit_length()
    return (
        rounds(spec.every * spec.program_len, TRACE_ARITY)
        + 2
        + depth
        + rounds(max_reduce, PARTIAL_ARITY)
    )


def harmonic(n: int) -> float:
    """H_n = 1 + 1/2 + ... + 1/n (0 for n = 0)."""
    return sum(1 / i for i in range(1, n + 1))


def clock_needed(moves: int, disputes: int, per_move: float = BLOCK_TIME) -> float:
    """Clock (s) an honest trainer that answers the oldest waiting game first, one move per
    ``per_move`` seconds, needs to win ``disputes`` parallel games of ``moves`` trainer moves
    each: every move is charged at most ``per_move * H_disputes`` of virtual time (§4.3)."""
    return moves * per_move * harmonic(max(disputes, 1))


def answer_order(games: list[tuple[int, GameState]]) -> list[int]:
    """The live games where the trainer is on turn, oldest wait first: the order in which
    §4.3's bound holds."""
    waiting = [(g.last_move, gid) for gid, g in games if g.live and g.phase.trainer_moves]
    return [gid for _, gid in sorted(waiting)]
