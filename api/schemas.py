"""Pydantic v2 models at the API boundary (they are the OpenAPI schemas)."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

Address = Field(pattern=r"^0x[0-9a-fA-F]{40}$", description="20-byte hex address")
Hex32 = Field(pattern=r"^0x[0-9a-fA-F]{64}$", description="32-byte hex word")

VerificationStatus = Literal[
    "open", "training", "committed", "disputed", "finalized", "rejected", "cancelled", "expired"
]
Level = Literal["trace", "op", "chunk", "element", "partial", "one-step", "resolved", "none"]
BundleStatus = Literal["verified", "unavailable", "invalid", "unchecked"]
#: Bundle statuses under which a job cannot be verified (its inputs cannot be obtained).
UNVERIFIABLE: tuple[BundleStatus, ...] = ("unavailable", "invalid")


class Problem(BaseModel):
    """RFC 9457 problem details."""

    type: str = "about:blank"
    title: str
    status: int
    detail: str | None = None
    instance: str | None = None
    errors: list[dict[str, Any]] | None = None


class IndexStatus(BaseModel):
    chain_id: int | None
    contract: str | None
    tip: int
    tip_timestamp: int | None


class BundleCheck(BaseModel):
    """What the API found when it fetched and verified the job's bundle (docs/protocol.md
    §7): the inputs a challenger needs to replay the job. ``unverifiable`` is the one field
    a marketplace needs: true when the bundle is ``unavailable`` or ``invalid``, i.e. no
    challenger can obtain the job's inputs from the API's stores, so nobody can check the
    trainer's work and the job's result must not be trusted."""

    address: str | None = Field(
        description="JobSpec.bundle: sha256 of the bundle's manifest (0x + 64 hex); null for "
        "a job registered on a contract from before bundles"
    )
    status: BundleStatus = Field(
        description="verified: every part fetched and verified (or a random sample of the "
        "batches, see scope); unavailable: a part could not be fetched (no store has it, or "
        "the stores do not answer), checked again later; invalid: a part does not verify "
        "against what the job binds (part and why say which and how); unchecked: not checked "
        "(yet, or this API has no blob stores configured)"
    )
    unverifiable: bool = Field(
        description="status is unavailable or invalid: the job's inputs cannot be obtained, "
        "so its commitment cannot be verified by anyone (treat the job as unverifiable)"
    )
    part: str | None = Field(
        description="the bundle part that failed, e.g. 'manifest', 'batch of step 3'"
    )
    why: str | None = Field(description="why that part failed (or why not checked)")
    scope: str | None = Field(description="what the last check covered, e.g. 'complete: 4 batches'")
    checked_at: int | None = Field(description="unix seconds of the last check")
    tries: int = Field(description="checks in a row that did not verify")
    next_check: int | None = Field(
        description="unix seconds of the next check (null: none planned)"
    )


class JobSummary(BaseModel):
    id: int
    job_hash: str
    requester: str
    trainer: str | None
    status: VerificationStatus
    contract_status: int = Field(description="the contract's JobStatus code")
    reward: str = Field(description="wei, decimal")
    stake: str
    bond: str
    steps: int
    every: int
    intervals: int
    open_games: int
    games_total: int
    registered_at: int
    committed_at: int | None
    challenge_deadline: int | None
    run_root: str | None
    bundle: BundleCheck


class JobPage(BaseModel):
    items: list[JobSummary]
    total: int
    limit: int
    offset: int
    next_offset: int | None


class TimelineEntry(BaseModel):
    block_number: int
    timestamp: int
    tx_hash: str
    event: str
    game_id: int | None
    data: dict[str, Any]


class GameSummary(BaseModel):
    id: int
    job_id: int
    challenger: str
    interval: int
    phase: str
    level: Level
    seq: int
    to_move: Literal["trainer", "challenger"] | None
    lo: int
    hi: int
    step: int
    op: int
    element: int
    trainer_clock: int = Field(description="seconds left at the last move")
    challenger_clock: int
    trainer_clock_left: int = Field(description="seconds left as of the indexed tip")
    challenger_clock_left: int
    last_move: int
    opened_at: int
    resolved_at: int | None
    trainer_won: bool | None
    reason: str | None
    settled: bool


class CheckpointOut(BaseModel):
    index: int
    step: int
    root: str


class CheckpointList(BaseModel):
    job_id: int
    run_root: str | None
    every: int
    checkpoints: list[CheckpointOut]


class JobDetail(JobSummary):
    program_root: str
    program_len: int
    dataset_root: str
    initial_root: str
    slots: int
    clock: int
    window: int
    train_time: int
    accepted_at: int | None
    commit_deadline: int | None
    closed_at: int | None
    timeline: list[TimelineEntry]
    games: list[GameSummary]


class CommitmentStatus(BaseModel):
    job_id: int
    status: VerificationStatus
    run_root: str | None
    committed_at: int | None
    challenge_deadline: int | None
    window_open: bool = Field(description="disputes may still open (as of the indexed tip)")
    as_of_block: int
    as_of_timestamp: int | None
    games: list[GameSummary]
    bundle: BundleCheck


class MoveOut(BaseModel):
    seq: int
    phase: str
    level: Level
    lo: int
    hi: int
    values: list[str]
    chunk_index: int | None
    block_number: int
    timestamp: int
    tx_hash: str


class LevelHistory(BaseModel):
    level: Level
    moves: list[MoveOut]


class DisputeDetail(GameSummary):
    levels: list[LevelHistory]


class DisputePage(BaseModel):
    items: list[GameSummary]
    total: int
    limit: int
    offset: int
    next_offset: int | None


class RoleRecord(BaseModel):
    count: int = Field(description="jobs trained / games played")
    wins: int
    losses: int
    slashed: str = Field(description="wei lost: stakes of rejected jobs / bonds of lost games")
    earned: str = Field(description="wei credited in this role: returned + profit")
    returned: str = Field(
        "0",
        description="wei of its own paid back: stakes of finalised jobs (trainer) / bonds of won "
        "or abandoned games (challenger)",
    )
    profit: str = Field(
        "0",
        description="wei earned beyond its own money: rewards and bonds of lying challengers "
        "(trainer) / shares of slashed stakes (challenger)",
    )


class AccountRecord(BaseModel):
    address: str
    as_trainer: RoleRecord
    as_challenger: RoleRecord
    credited: str
    withdrawn: str


class AttestationIn(BaseModel):
    """EIP-712 ``Coverage`` message plus its signature."""

    model_config = ConfigDict(extra="forbid")

    job_id: int = Field(ge=1, lt=2**53)
    run_root: str = Hex32
    interval: int = Field(ge=0, lt=2**32)
    challenger: str = Address
    timestamp: int = Field(ge=0, lt=2**53, description="unix seconds when signed")
    nonce: str = Hex32
    signature: str = Field(pattern=r"^0x[0-9a-fA-F]{130}$", description="65-byte r||s||v")


class AttestationOut(BaseModel):
    digest: str
    job_id: int
    interval: int
    challenger: str


class IntervalCoverage(BaseModel):
    interval: int
    challengers: int = Field(description="distinct signers (any key)")
    bonded_challengers: int = Field(
        0, description="distinct signers that have posted a bond or a stake (docs §6)"
    )


class Coverage(BaseModel):
    job_id: int
    run_root: str | None
    intervals: int
    attestations: int
    covered_1: float = Field(description="fraction of intervals replayed by >= 1 challenger")
    covered_3: float = Field(description="fraction of intervals replayed by >= 3 challengers")
    bonded_covered_1: float = Field(
        0.0, description="fraction of intervals attested by >= 1 bonded signer (docs §6)"
    )
    bonded_covered_3: float = Field(
        0.0, description="fraction of intervals attested by >= 3 bonded signers (docs §6)"
    )
    per_interval: list[IntervalCoverage]
