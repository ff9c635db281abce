"""The challenger service: ``trainproof challenger watch``.

Follows RunCommitted events ``--confirmations`` blocks behind the head (a reorg can't make
it act on a commitment that disappears), samples each commitment's checkpoint intervals
with private randomness at ``--rate``, fetches the sampled intervals' start checkpoints from
the blob store (re-hashed and checked against the committed roots), replays them
bit-exactly, and disputes the first interval whose end differs; then plays every game to
its verdict, settles and withdraws. A checkpoint that is withheld, tampered or truncated
sends it to a full replay from C_0, which the job's public inputs always allow. With
``--attest-to URL`` it also signs an EIP-712 coverage attestation for every interval it
replayed that matched, and sends it to that verification-status API (retrying, with backoff,
until the API has indexed the commitment and accepts it).

What it decided (the sample, each job's verdict, its games) is kept in its SQLite file, and
every transaction goes through the crash-safe outbox: killed and restarted, it continues
the same games without sending any move twice.
"""

from __future__ import annotations

import json
import math
import secrets
import time

from pydantic import Field

from protocol import attestation
from protocol.agent import Agent, AgentConfig, setup_logging
from protocol.blobs import BlobError, open_store
from protocol.market import Commitment
from replay.checkpoint import CheckpointError
from replay.dispute import (
    ChallengerPlayer,
    Computation,
    Fault,
    example_computation,
    spec_mismatch,
)
from replay.publish import fetch_checkpoint

log = setup_logging("challenger")


class ChallengerConfig(AgentConfig):
    store: str = Field(description="blob store: a folder or an http(s) URL")
    example: str = Field("digits-mlp", description="the example whose jobs it checks")
    rate: float = Field(0.25, gt=0, le=1, description="probability of replaying each interval")
    confirmations: int = Field(2, ge=0, description="blocks a commitment must be buried under")
    lie: bool = Field(False, description="dispute honest commitments and lie (demos and tests)")
    attest_to: str | None = Field(
        None,
        pattern=r"^https?://",
        description="URL of a verification-status API to send signed coverage attestations to",
    )


#: Longest wait between two tries of an attestation the API did not take yet.
ATTEST_MAX_BACKOFF_S = 300


def detection_probability(rate: float, intervals: int, bad_fraction: float) -> float:
    """Chance that sampling each interval with probability ``rate`` hits at least one of the
    ``bad_fraction`` of ``intervals`` that are wrong (at least one bad interval)."""
    bad = max(1, math.ceil(bad_fraction * intervals))
    return 1 - (1 - rate) ** bad


class ChallengerService:
    def __init__(self, cfg: ChallengerConfig) -> None:
        self.cfg = cfg
        self.agent = Agent(cfg)
        self.market = self.agent.market
        self.db = self.agent.db
        self.store = open_store(cfg.store)
        self._comps: dict[tuple[int, int], Computation] = {}
        log.info(
            "event=start rate=%.3f p_catch_one_bad_interval=%.3f note=%s",
            cfg.rate, cfg.rate, "per commitment, for a cheat confined to a single interval",
        )  # fmt: skip

    # ---- what it remembers

    def _job_record(self, job_id: int) -> dict[str, object] | None:
        raw = self.db.get(f"job:{job_id}")
        return None if raw is None else json.loads(raw)

    def _save_job(self, job_id: int, record: dict[str, object]) -> None:
        self.db.put(f"job:{job_id}", json.dumps(record))

    # ---- one poll

    def step(self) -> None:
        head = self.agent.head()
        safe = head - self.cfg.confirmations
        last = int(self.db.get("last_block") or self.market.start_block - 1)
        if safe > last:
            for commitment in self.market.commitments(last + 1, safe):
                if self._job_record(commitment.job_id) is None:
                    self._check(commitment)
            self.db.put("last_block", str(safe))
        for key, game_id in self._games():
            self._play(key, game_id)
        self._send_attestations()

    def _games(self) -> list[tuple[str, int]]:
        return [(k, int(v)) for k, v in self.db.items("game:")]

    # ---- checking a commitment

    def _check(self, c: Commitment) -> None:
        job = self.market.job(c.job_id)
        honest = example_computation(self.cfg.example, job.spec.steps, job.spec.every)
        problem = spec_mismatch(job.spec, honest)
        if problem:
            self._save_job(c.job_id, {"verdict": "skipped", "why": problem})
            log.info("event=skip job=%d why=%r", c.job_id, problem)
            return
        committed = [job.spec.initial_root, *c.checkpoint_roots]
        m = len(c.checkpoint_roots)
        rng = secrets.SystemRandom()
        sample = sorted(i for i in range(m) if rng.random() < self.cfg.rate)
        record: dict[str, object] = {"verdict": "clean", "sample": sample}
        if self.cfg.lie:
            bad = 0
            comp = example_computation(
                self.cfg.example, job.spec.steps, job.spec.every,
                Fault(kind="element", step=0, op=_first_matmul(honest), element=0),
            )  # fmt: skip
        else:
            bad, comp, matched = self._find_bad(c.job_id, committed, sample, honest)
            if self.cfg.attest_to:  # kept before the verdict, so a crash between loses none
                for interval in matched:
                    pending = {"run_root": "0x" + c.run_root.hex(), "tries": 0, "next": 0.0}
                    self.db.put(f"attest:{c.job_id}:{interval}", json.dumps(pending))
        log.info("event=checked job=%d intervals=%d sampled=%s bad=%s", c.job_id, m, sample, bad)
        if bad is None:
            self._save_job(c.job_id, record)
            return
        self._comps[(c.job_id, bad)] = comp
        record.update(verdict="disputed", interval=bad)
        self._save_job(c.job_id, record)
        game_id = ChallengerPlayer(self.market, comp, c.job_id).open(committed, bad, job.spec.bond)
        if game_id is None:
            log.warning("event=dispute_failed job=%d interval=%d", c.job_id, bad)
            return
        self.db.put(f"game:{c.job_id}:{bad}", str(game_id))
        log.info("event=disputed job=%d interval=%d game=%d", c.job_id, bad, game_id)

    def _find_bad(
        self, job_id: int, committed: list[bytes], sample: list[int], honest: Computation
    ) -> tuple[int | None, Computation, list[int]]:
        """The first sampled interval whose replay from its verified start checkpoint
        disagrees with the commitment (a full replay from C_0 when a checkpoint can't be
        had), the computation to play it from, and the intervals replayed that matched."""
        matched: list[int] = []
        for c in sample:
            comp = self._interval_computation(job_id, committed, c, honest)
            if comp is None:  # withheld or invalid: replay everything from C_0
                bad = ChallengerPlayer(self.market, honest, job_id).first_bad_interval(committed)
                log.info("event=full_replay job=%d missing_interval=%d bad=%s", job_id, c, bad)
                return bad, honest, list(range(len(committed) - 1 if bad is None else bad))
            if comp.step_root((c + 1) * comp.every) != committed[c + 1]:
                return c, comp, matched
            matched.append(c)
        return None, honest, matched

    def _interval_computation(
        self, job_id: int, committed: list[bytes], c: int, honest: Computation
    ) -> Computation | None:
        if c == 0:
            return honest
        try:
            state = fetch_checkpoint(self.store, honest.program, committed[c])
        except (BlobError, CheckpointError) as e:
            log.warning("event=checkpoint_rejected job=%d interval=%d why=%r", job_id, c, str(e))
            return None
        comp = Computation(
            honest.program, honest.dataset, honest.state_before(0), honest.steps, honest.every
        )
        comp.seed(c * honest.every, state)
        return comp

    def _computation_for(self, job_id: int, interval: int) -> Computation:
        """The computation a game is played from (rebuilt after a restart)."""
        if (job_id, interval) not in self._comps:
            job = self.market.job(job_id)
            honest = example_computation(self.cfg.example, job.spec.steps, job.spec.every)
            comp: Computation | None = honest
            if self.cfg.lie:
                comp = example_computation(
                    self.cfg.example, job.spec.steps, job.spec.every,
                    Fault(kind="element", step=0, op=_first_matmul(honest), element=0),
                )  # fmt: skip
            elif interval > 0:
                committed = [job.spec.initial_root, *self._committed_roots(job_id)]
                comp = self._interval_computation(job_id, committed, interval, honest) or honest
            assert comp is not None
            self._comps[(job_id, interval)] = comp
        return self._comps[(job_id, interval)]

    def _committed_roots(self, job_id: int) -> list[bytes]:
        for c in self.market.commitments(self.market.start_block, self.agent.head()):
            if c.job_id == job_id:
                return c.checkpoint_roots
        raise LookupError(f"job {job_id} has no RunCommitted event")

    # ---- playing

    def _play(self, key: str, game_id: int) -> None:
        _, job_s, interval_s = key.split(":")
        job_id, interval = int(job_s), int(interval_s)
        m = self.market
        g = m.game(game_id)
        if g.phase.over:
            if not g.settled:
                self._abandon_frozen(job_id)  # a won game pays once none of its job runs
                if m.transact("settle", game_id, key=f"settle:{game_id}") is None:
                    return  # an earlier game of the job still runs: settle later
                log.info("event=settled game=%d phase=%s", game_id, g.phase.name)
            credit = m.credits(self.agent.address)
            if credit:
                m.transact("withdraw", key=f"withdraw:{game_id}:{credit}")
                log.info("event=withdrew game=%d amount=%d", game_id, credit)
            self.db.delete(key)
            self.db.put(f"done:{key}", str(game_id))
            return
        if not g.live:  # frozen by a lower-numbered game that rejected the job
            m.transact("abandon", game_id, key=f"abandon:{game_id}")
            log.info("event=abandoned game=%d", game_id)
            return
        if g.phase.trainer_moves:
            if self.agent.now() > g.deadline:
                m.transact("timeout", game_id, key=f"timeout:{game_id}")
                log.info("event=timeout game=%d", game_id)
            return
        player = ChallengerPlayer(m, self._computation_for(job_id, interval), job_id)
        if player.move(game_id) is not None:
            log.info("event=moved game=%d seq=%d phase=%s", game_id, g.seq, g.phase.name)

    def _abandon_frozen(self, job_id: int) -> None:
        """Abandon the job's games frozen by the game that rejected it (their bonds go back
        at settle), so that the winner's share can be paid."""
        m = self.market
        for other in m.games_of(job_id):
            o = m.game(other)
            if not o.phase.over and not o.live:
                m.transact("abandon", other, key=f"abandon:{other}")
                log.info("event=abandoned game=%d", other)

    # ---- coverage attestations

    def _send_attestations(self) -> None:
        """Send the attestations due; an answer other than 201 is retried with backoff, except
        a refusal of the attestation itself (400/422: logged, dropped)."""
        if not self.cfg.attest_to:
            return
        now = time.time()
        for key, raw in self.db.items("attest:"):
            pending = json.loads(raw)
            if pending["next"] > now:
                continue
            _, job_s, interval_s = key.split(":")
            status, body = attestation.post(
                self.cfg.attest_to, self.agent.account, self.agent.chain_id,
                self.market.address, job_id=int(job_s), run_root=pending["run_root"],
                interval=int(interval_s),
            )  # fmt: skip
            if status == 201:
                self.db.delete(key)
                log.info("event=attested job=%s interval=%s", job_s, interval_s)
            elif status in (400, 422):
                self.db.delete(key)
                log.warning("event=attestation_refused job=%s interval=%s status=%d body=%r",
                            job_s, interval_s, status, body[:300])  # fmt: skip
            else:  # no answer, not indexed yet (404/409), a server error: later
                pending["tries"] += 1
                pending["next"] = now + min(ATTEST_MAX_BACKOFF_S, 2 ** pending["tries"])
                self.db.put(key, json.dumps(pending))
                log.info("event=attestation_deferred job=%s interval=%s status=%d tries=%d",
                         job_s, interval_s, status, pending["tries"])  # fmt: skip

    def run(self, max_polls: int | None = None) -> None:
        polls = 0
        while max_polls is None or polls < max_polls:
            self.step()
            polls += 1
            time.sleep(self.cfg.poll)


def _first_matmul(comp: Computation) -> int:
    from protocol.ir import Opcode

    return next(j for j, o in enumerate(comp.program.ops) if o.opcode == Opcode.MATMUL)
