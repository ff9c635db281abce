"""The prover service: ``trainproof prover run``.

Accepts a job, trains it canonically, publishes every checkpoint to the blob store,
commits, then answers every dispute move of every game until the job ends; finalises,
settles and withdraws. Each poll derives what to do from the chain (the truth) and the
outbox (what this prover already signed), so a restart after SIGKILL picks up exactly
where it stopped and never sends a move twice.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from typing import Any

from pydantic import BaseModel, Field, field_serializer, model_validator

from protocol.agent import Agent, AgentConfig, AgentError, poll_forever, setup_logging
from protocol.blobs import BlobError, open_stores
from protocol.game import (
    MIN_CLOCK,
    JobSpec,
    JobStatus,
    answer_order,
    clock_needed,
    commit_parts,
    job_problems,
    trainer_moves_bound,
)
from protocol.ir import REDUCTION_OPS
from protocol.market import JobView, Market, Web3Market
from protocol.pnl import Ledger, PnL
from protocol.units import eth
from replay.data.bundle import Bundle, BundleError, BundleSource
from replay.data.checkpoint import CheckpointError
from replay.data.publish import fetch_checkpoint, publish_state
from replay.dispute.players import Computation, TrainerPlayer, bundle_computation, parse_fault
from replay.scale.cluster import RayAddress
from replay.scale.microbatch import segments_of

log = setup_logging("prover")


class ProverConfig(AgentConfig):
    job: int = Field(gt=0, description="the job id to work on")
    store: list[str] = Field(
        min_length=1,
        description="blob stores: the job's bundle is fetched from them (in order), its "
        "checkpoints published into every folder among them",
    )
    fault: str | None = Field(None, description="inject a fault (demos and tests)")
    survive: int = Field(
        100, ge=1, description="parallel disputes the job's clock must let this prover answer"
    )
    seconds_per_move: float = Field(
        24.0, gt=0, description="this prover's slowest pace per move (block time + compute), s"
    )
    ray: RayAddress | None = Field(
        None,
        description="train on the Ray cluster at this address (auto | HOST:PORT): each step's "
        "micro-batches on its workers (a job compiled with --micro-batches N > 1); the same "
        "checkpoints and roots",
    )

    @model_validator(mode="after")
    def _ray_is_honest(self) -> ProverConfig:
        if self.ray is not None and self.fault is not None:
            raise ValueError("--ray trains honestly: drop --fault, or --ray")
        return self


class ProverStatus(BaseModel):
    done: bool
    status: JobStatus
    games: int

    @field_serializer("status")
    def _status_name(self, status: JobStatus) -> str:
        return status.name  # operators read names, not the contract's numbers


class ProverService:
    def __init__(self, cfg: ProverConfig) -> None:
        self.cfg = cfg
        self.agent = Agent(cfg)
        self.market = self.agent.market
        job = existing_job(self.market, cfg.job)
        self.store = open_stores(cfg.store)
        self.bundle = fetch_bundle(BundleSource(self.store), job.spec, cfg.job)
        self.comp = bundle_computation(self.bundle, job.spec)
        if cfg.fault:
            fault = parse_fault(cfg.fault, self.comp.program, job.spec.steps)
            self.comp = bundle_computation(self.bundle, job.spec, fault)
            log.warning("event=fault job=%d fault=%s", cfg.job, fault.model_dump_json())
        self.segments: list[dict[str, object]] = []
        if cfg.ray is not None:  # refuse a job without micro-batches before staking on it
            self.segments = list(self.bundle.metadata().job.get("segments") or [])
            segments_of(self.comp.program, self.segments)
        self.player = TrainerPlayer(self.market, self.comp, cfg.job)
        if self.agent.db.get(f"published:{cfg.job}"):
            self._resume_from_checkpoints()
        self._stuck: set[tuple[int, int]] = set()
        self.ledger = Ledger(self.agent, "prover")
        self.agent.startup_line(
            log, "prover", f"job {cfg.job} ({self.bundle.manifest.name}, bundle "
            f"{self.bundle.address[:12]}…, {job.spec.steps} steps, status "
            f"{job.status.name}, stake {eth(job.spec.stake)}, reward {eth(job.reward)})",
        )  # fmt: skip

    def step(self) -> ProverStatus:
        """One poll: do whatever the job needs next; the P&L line when it changed."""
        status = self._step()
        self.ledger.report(log)
        return status

    def summary(self) -> PnL:
        """The final lines: each game's outcome in words, the job's status, the P&L."""
        job = self.market.job(self.cfg.job)
        for words in self.ledger.outcomes(self.market.games_of(self.cfg.job)):
            log.info("event=outcome job=%d %s", self.cfg.job, words)
        log.info("event=job_status job=%d status=%s", self.cfg.job, job.status.name)
        totals = self.ledger.report(log, final=True)
        assert totals is not None
        return totals

    def _step(self) -> ProverStatus:
        m, cfg, me = self.market, self.cfg, self.agent.address
        job = m.job(cfg.job)
        if job.status == JobStatus.OPEN:
            why = unsafe_job(job.spec, self.comp, cfg.survive, cfg.seconds_per_move)
            if why is not None:
                log.error("event=refused job=%d why=%r", cfg.job, why)
                return ProverStatus(done=True, status=job.status, games=0)
            send = self.agent.send
            accept = ("accept_job", cfg.job, job.job_hash)
            if send(log, *accept, value=job.spec.stake, key=f"accept:{cfg.job}"):
                log.info("event=accepted job=%d stake=%r", cfg.job, eth(job.spec.stake))
            return ProverStatus(done=False, status=job.status, games=0)
        if job.trainer.lower() != me.lower():
            raise SystemExit(f"job {cfg.job} was accepted by {job.trainer}, not by {me}")
        if job.status == JobStatus.ACCEPTED:
            self._publish()
            # one transaction per part, from the first part the chain lacks (a restart resumes)
            parts = commit_parts(self.comp.checkpoint_roots()[1:])
            for p in range(m.committed_parts(cfg.job), len(parts)):
                if not self.agent.send(
                    log, "commit_run", cfg.job, p, parts[p], key=f"commit:{cfg.job}:{p}"
                ):
                    break
                log.info("event=committed job=%d part=%d parts=%d", cfg.job, p, len(parts))
            return ProverStatus(done=False, status=job.status, games=0)
        games = oldest_wait_first(m, m.games_of(cfg.job))
        settled = True
        for game_id in games:
            g = m.game(game_id)
            if not g.phase.over:
                if g.live and g.phase.trainer_moves and (game_id, g.seq) not in self._stuck:
                    if self.player.move(game_id) is None:
                        self._stuck.add((game_id, g.seq))
                        log.warning(
                            "event=no_valid_move game=%d seq=%d phase=%s",
                            game_id,
                            g.seq,
                            g.phase.name,
                        )
                    else:
                        log.info(
                            "event=moved game=%d seq=%d phase=%s", game_id, g.seq, g.phase.name
                        )
                settled = False
            elif not g.settled:
                if self.agent.send(log, "settle", game_id, key=f"settle:{game_id}"):
                    log.info("event=settled game=%d phase=%s %s", game_id, g.phase.name,
                             self._outcome(game_id))  # fmt: skip
        job = m.job(cfg.job)
        if (
            job.status == JobStatus.COMMITTED
            and job.open_games == 0
            and self.agent.now() > job.committed_at + job.spec.window
        ):
            if self.agent.send(log, "finalize", cfg.job, key=f"finalize:{cfg.job}"):
                log.info("event=finalized job=%d", cfg.job)
            job = m.job(cfg.job)
        closed = job.status in (JobStatus.FINALIZED, JobStatus.REJECTED)
        if closed and settled:
            credit = m.credits(me)
            if credit:
                if self.agent.send(log, "withdraw", key=f"withdraw:{cfg.job}:{credit}"):
                    log.info("event=withdrew job=%d amount=%r", cfg.job, eth(credit))
                else:
                    return ProverStatus(done=False, status=job.status, games=len(games))
            return ProverStatus(done=True, status=job.status, games=len(games))
        return ProverStatus(done=False, status=job.status, games=len(games))

    def _play(self, game_id: int) -> None:
        g = self.market.game(game_id)
        if not g.phase.trainer_moves or (game_id, g.seq) in self._stuck:
            return
        what = f"game={game_id} seq={g.seq} phase={g.phase.name}"
        if self.player.move(game_id) is None:
            self._stuck.add((game_id, g.seq))  # nothing valid to send: the clock will decide
            log.warning("event=no_valid_move %s", what)
        else:
            log.info("event=moved %s", what)

    def _resume_from_checkpoints(self) -> None:
        """After a restart: start every later trace from the nearest published checkpoint
        (fetched and verified like anyone else's) instead of recomputing from C_0."""
        comp = self.comp
        for c in range(1, comp.steps // comp.every + 1):
            root = self.agent.db.get(f"checkpoint:{self.cfg.job}:{c}")
            if root is None:
                continue
            try:
                state = fetch_checkpoint(self.store, comp.program, bytes.fromhex(root))
            except (BlobError, CheckpointError) as e:
                log.warning("event=checkpoint_unusable interval=%d why=%r", c, str(e))
                continue
            comp.seed(c * comp.every, state)
        log.info("event=resumed job=%d from=published_checkpoints", self.cfg.job)

    def _publish(self) -> None:
        key = f"published:{self.cfg.job}"
        if self.agent.db.get(key):
            return
        if self.cfg.ray is not None:
            train_on_ray(self.comp, self.segments, self.cfg.ray, self.cfg.job)
        every, program = self.comp.every, self.comp.program
        for c in range(self.comp.steps // every + 1):
            state = self.comp.state_before(c * every)
            pointer = publish_state(self.store, program, c * every, state)
            self.agent.db.put(f"checkpoint:{self.cfg.job}:{c}", pointer.state_root)
        self.agent.db.put(key, "1")
        log.info(
            "event=published job=%d checkpoints=%d", self.cfg.job, self.comp.steps // every + 1
        )

    def run(self, until_done: bool = True) -> ProverStatus:
        """Poll until the job is over (forever unless ``until_done``); a node that stops
        answering is retried with backoff, the state kept."""
        status = poll_forever(
            self.step, self.cfg.poll, log, self.cfg.rpc, done=lambda s: until_done and s.done
        )
        log.info("event=done job=%d status=%s", self.cfg.job, status.status.name)
        self.summary()
        return status

    def _outcome(self, game_id: int) -> str:
        words = self.ledger.outcomes([game_id])
        return f"outcome={words[0]!r}" if words else ""


def train_on_ray(
    comp: Computation, segments: Sequence[Mapping[str, Any]], address: str, job_id: int = 0
) -> None:
    """Train ``comp``'s job with each step's micro-batches on the Ray cluster at ``address``
    (``replay.scale.microbatch``) and seed every checkpoint state into ``comp``: the states a
    local run gives, bit for bit, so the commitment and every later dispute move agree."""
    from replay.scale.microbatch import open_executor

    start = comp.start_checkpoint * comp.every
    t0 = time.perf_counter()
    with open_executor(comp.program, segments, address, comp.backend) as ex:
        log.info("event=ray_training job=%d address=%s cpus=%g micro_batches=%d from_step=%d "
                 "steps=%d", job_id, address, ex.workers, ex.micro_batches, start,
                 comp.steps)  # fmt: skip
        ex.set_state(comp.state_before(start))
        for t in range(start, comp.steps):
            ex.run_step(comp.dataset.batch(t))
            if (t + 1) % comp.every == 0:
                state = ex.get_state()
                comp.seed(t + 1, state)
                # its root is hashed once, when the checkpoint is published and committed
                log.info("event=trained job=%d step=%d seconds=%.1f", job_id, t + 1,
                         time.perf_counter() - t0)  # fmt: skip


#: Tries, and the longest wait between two, for a bundle before the prover gives up.
BUNDLE_TRIES = 5


def fetch_bundle(source: BundleSource, spec: JobSpec, job_id: int) -> Bundle:
    """The job's verified bundle, waiting out the source's backoff between tries; a one-line
    error after BUNDLE_TRIES failures (a prover never stakes on a job it cannot train)."""
    while True:
        try:
            return source.bundle(spec)
        except BundleError as e:
            if source.tries(spec) >= BUNDLE_TRIES:
                raise AgentError(
                    f"job {job_id}'s {e}; check the --store locations (the requester publishes "
                    "the bundle with trainproof job register --bundle)"
                ) from None
            delay = source.retry_in(spec)
            log.warning("event=bundle_unavailable job=%d part=%r why=%r try=%d retry_in_s=%.0f",
                        job_id, e.part, e.why, source.tries(spec), delay)  # fmt: skip
            time.sleep(delay)


def existing_job(market: Web3Market, job_id: int) -> JobView:
    """Job ``job_id``, or a one-line error when the contract has no such job."""
    count = int(market.contract.functions.job_count().call())
    if not 1 <= job_id <= count:
        raise AgentError(
            f"no job {job_id} on TrainProof at {market.address} (it has {count} job"
            f"{'' if count == 1 else 's'}): pass --job 1..{count}, or register one with "
            "trainproof job register"
            if count
            else f"no job {job_id} on TrainProof at {market.address}: it has no jobs yet; "
            "register one with trainproof job register"
        )
    return market.job(job_id)


def unsafe_job(
    spec: JobSpec, comp: Computation, survive: int = 100, seconds_per_move: float = 24.0
) -> str | None:
    """Why this prover must not stake on ``spec`` (None when it may): a parameter the
    contract refuses (protocol.game.job_problems), or a chess clock too short to answer
    ``survive`` parallel disputes at ``seconds_per_move`` per move (docs/protocol.md §4.3)."""
    problems = job_problems(spec)
    if problems:
        return "; ".join(problems)
    ops = comp.program.ops
    max_numel = max((op.numel for op in ops), default=0)
    max_reduce = max((op.reduce_len for op in ops if op.opcode in REDUCTION_OPS), default=0)
    moves = trainer_moves_bound(spec, max_numel, max_reduce)
    need = max(MIN_CLOCK, clock_needed(moves, survive, seconds_per_move))
    if spec.clock < need:
        return (
            f"clock={spec.clock}s < {need:.0f}s needed for {moves} moves per game "
            f"in {survive} parallel disputes at {seconds_per_move:g}s per move"
        )
    return None


def oldest_wait_first(market: Market, game_ids: list[int]) -> list[int]:
    """The job's games with the ones waiting on the trainer first, longest wait first (the
    order in which one move per block is enough, docs/protocol.md §4.3), then the rest."""
    states = {gid: market.game(gid) for gid in game_ids}
    first = answer_order(list(states.items()))
    return first + [gid for gid in game_ids if gid not in first]
