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
from protocol.agent import Agent, AgentConfig, is_transient, poll_forever, setup_logging
from protocol.blobs import open_stores
from protocol.game import JobSpec, JobStatus
from protocol.market import Commitment
from protocol.pnl import Ledger, PnL
from protocol.units import eth
from replay.data.bundle import BundleError, BundleSource
from replay.dispute.players import ChallengerPlayer, Computation, Fault, bundle_computation
from replay.scale.cluster import RayAddress
from replay.scale.farm import (
    IntervalOutcome,
    IntervalTask,
    Pending,
    Rejected,
    open_farm,
)

log = setup_logging("challenger")


class ChallengerConfig(AgentConfig):
    store: list[str] = Field(
        min_length=1,
        description="blob stores to fetch bundles and checkpoints from, tried in order: "
        "folders, http(s) URLs of `trainproof blobs serve`, ipfs+http(s) trustless gateways",
    )
    rate: float = Field(0.25, gt=0, le=1, description="probability of replaying each interval")
    intervals: list[int] | None = Field(
        None, description="replay exactly these intervals of each commitment (audits, benchmarks)"
    )
    confirmations: int = Field(2, ge=0, description="blocks a commitment must be buried under")
    lie: bool = Field(False, description="dispute honest commitments and lie (demos and tests)")
    from_block: int | None = Field(
        None, ge=0, description="first block to look for commitments in (default: deployment)"
    )
    attest_to: str | None = Field(
        None,
        pattern=r"^https?://",
        description="URL of a verification-status API to send signed coverage attestations to",
    )
    ray: RayAddress | None = Field(
        None,
        description="replay sampled intervals on the Ray cluster at this address "
        "(`auto`: the one this machine joined; HOST:PORT: its head) instead of in-process",
    )
    ray_cpus: float = Field(1.0, gt=0, description="CPUs each replay task asks Ray for")
    ray_gpus: float = Field(0.0, ge=0, description="GPUs each replay task asks Ray for")


#: Longest wait between two tries of an attestation the API did not take yet.
ATTEST_MAX_BACKOFF_S = 300
#: Longest wait between two tries of a dispute that did not land (the window is hours).
DISPUTE_MAX_BACKOFF_S = 60
#: Polls without a new block after which a commitment waiting for confirmations is reported.
STALL_POLLS = 20
#: Longest wait between two tries of a job whose bundle or batches could not be had.
UNVERIFIABLE_MAX_BACKOFF_S = 300
#: State-file key prefix of a dispute decided on and not on-chain yet.
PENDING = "pending_dispute:"


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
        self.store = open_stores(cfg.store)
        self.bundles = BundleSource(self.store)
        self.farm = open_farm(self.store, cfg.ray, cfg.ray_cpus, cfg.ray_gpus)
        self._comps: dict[tuple[int, int], Computation] = {}
        self._unsent: set[tuple[int, int]] = set()
        self._recover_pending()
        log.info(
            "event=start rate=%.3f p_catch_one_bad_interval=%.3f note=%s",
            cfg.rate, cfg.rate, "per commitment, for a cheat confined to a single interval",
        )  # fmt: skip
        self.ledger = Ledger(self.agent, "challenger")
        self.agent.startup_line(
            log, "challenger", f"RunCommitted of every job from block "
            f"{self._last_checked() + 1}, {cfg.confirmations} confirmations, replaying each "
            f"interval with probability {cfg.rate}, bundles and checkpoints from "
            f"{', '.join(cfg.store)}",
        )  # fmt: skip

    def _warn_if_head_stalls(self, head: int, first_unconfirmed: int) -> None:
        """A plain anvil mines only when a transaction arrives: a commitment newer than
        ``--confirmations`` blocks then waits for blocks that never come. Say so, once."""
        seen, polls = getattr(self, "_stall", (None, 0))
        polls = polls + 1 if seen == head else 0
        self._stall = (head, polls)
        if polls != STALL_POLLS or self.cfg.confirmations == 0 or first_unconfirmed > head:
            return
        waiting = self.market.commitments(first_unconfirmed, head)
        if waiting:
            log.warning("event=waiting_for_blocks jobs=%s head=%d confirmations=%d note=%r",
                        [c.job_id for c in waiting], head, self.cfg.confirmations,
                        f"no new block for {STALL_POLLS} polls: a commitment waits for "
                        f"{self.cfg.confirmations} blocks on top of it; a plain anvil mines only "
                        "on transactions: start it with --block-time 1, or pass "
                        "--confirmations 0 on a dev chain")  # fmt: skip

    def _last_checked(self) -> int:
        """The last block whose commitments were checked (``--from-block`` skips ahead)."""
        stored = self.db.get("last_block")
        last = int(stored) if stored is not None else self.market.start_block - 1
        if self.cfg.from_block is not None:
            last = max(last, self.cfg.from_block - 1)
        return last

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
        last = self._last_checked()
        self._warn_if_head_stalls(head, max(last + 1, safe + 1))
        if safe > last:
            self._check_all(
                [c for c in self.market.commitments(last + 1, safe)
                 if self._job_record(c.job_id) is None]
            )  # fmt: skip
            self.db.put("last_block", str(safe))
        self._retry_disputes()
        self._retry_unverifiable()
        for key, game_id in self._games():
            self._play(key, game_id)
        self._send_attestations()
        self.ledger.report(log)

    def summary(self) -> PnL:
        """The final lines: what it checked, each game's outcome in words, the P&L."""
        records = [(int(k.removeprefix("job:")), json.loads(v)) for k, v in self.db.items("job:")]
        for job_id, record in records:
            status = self.market.job(job_id).status.name
            log.info("event=job job=%d verdict=%s status=%s", job_id, record["verdict"], status)
        games = [int(v) for _, v in self.db.items("game:")]
        games += [int(v) for _, v in self.db.items("done:game:")]
        for words in self.ledger.outcomes(games):
            log.info("event=outcome %s", words)
        totals = self.ledger.report(log, final=True)
        assert totals is not None
        return totals

    # ---- disputes that did not land yet

    def _pending_disputes(self) -> list[tuple[int, int, dict[str, float]]]:
        out = []
        for key, raw in self.db.items(PENDING):
            job_s, interval_s = key.removeprefix(PENDING).split(":")
            out.append((int(job_s), int(interval_s), json.loads(raw)))
        return out

    def _recover_pending(self) -> None:
        """At start: every dispute this challenger decided on and has no game for is due now
        (also those a version without retries recorded as disputed and then forgot)."""
        for job_key, raw in self.db.items("job:"):
            record = json.loads(raw)
            if record.get("verdict") != "disputed":
                continue
            job_id, interval = int(job_key.removeprefix("job:")), int(record["interval"])
            key = f"game:{job_id}:{interval}"
            if self.db.get(key) is None and self.db.get(f"done:{key}") is None:
                pending = self.db.get(f"{PENDING}{job_id}:{interval}")
                tries = json.loads(pending)["tries"] if pending else 0
                self.db.put(
                    f"{PENDING}{job_id}:{interval}", json.dumps({"tries": tries, "next": 0.0})
                )
        for job_id, interval, _ in self._pending_disputes():
            log.warning("event=dispute_pending job=%d interval=%d note=%s", job_id, interval,
                        "decided before a restart and not on-chain yet: retrying now")  # fmt: skip

    def _retry_disputes(self) -> None:
        now = time.time()
        for job_id, interval, pending in self._pending_disputes():
            if pending["next"] <= now:
                self._try_dispute(job_id, interval)

    def _try_dispute(
        self, job_id: int, interval: int, committed: list[bytes] | None = None
    ) -> None:
        """Open the dispute of ``interval``; on failure retry later with backoff, loudly,
        until it lands or the challenge window closes."""
        key = f"{PENDING}{job_id}:{interval}"
        raw = self.db.get(key)
        pending = json.loads(raw) if raw else {"tries": 0, "next": 0.0}
        job = self.market.job(job_id)
        mine = self._my_game(job_id, interval)
        if mine is not None:  # it landed (maybe sent before a crash)
            self._landed(job_id, interval, mine)
            return
        closes = job.committed_at + job.spec.window
        if job.status != JobStatus.COMMITTED or self.agent.now() > closes:
            self.db.delete(key)
            why = (
                "the challenge window closed before the dispute could be sent"
                if job.status == JobStatus.COMMITTED
                else f"the job is {job.status.name} now: there is nothing left to dispute"
            )
            log.error("event=dispute_abandoned job=%d interval=%d status=%s tries=%d why=%r",
                      job_id, interval, job.status.name, pending["tries"], why)  # fmt: skip
            return
        if committed is None:
            committed = [job.spec.initial_root, *self._committed_roots(job_id)]
        comp = self._computation_for(job_id, interval)
        why = "the dispute transaction was not accepted (see the outbox lines above)"
        try:
            game_id = ChallengerPlayer(self.market, comp, job_id).open(
                committed, interval, job.spec.bond
            )
        except Exception as e:  # a node error or a transaction not mined: retried like a refusal
            if not is_transient(e):
                raise
            game_id, why = None, f"{type(e).__name__}: {str(e)[:160]}"
        if game_id is not None:
            self._landed(job_id, interval, game_id)
            return
        if self.agent.outbox.retire(f"dispute:{job_id}:{interval}"):
            why = "the dispute transaction reverted on-chain; the next try sends a new one"
        balance = int(self.agent.w3.eth.get_balance(self.agent.address))
        if balance < job.spec.bond:
            why = (f"balance {eth(balance)} is below the bond {eth(job.spec.bond)} plus gas: "
                   f"fund {self.agent.address}")  # fmt: skip
        pending["tries"] += 1
        delay = min(DISPUTE_MAX_BACKOFF_S, 2 ** pending["tries"])
        pending["next"] = time.time() + delay
        self.db.put(key, json.dumps(pending))
        log.error("event=dispute_failed job=%d interval=%d tries=%d retry_in_s=%d "
                  "window_closes_at=%d why=%r", job_id, interval, pending["tries"], delay,
                  job.committed_at + job.spec.window, why)  # fmt: skip

    def _my_game(self, job_id: int, interval: int) -> int | None:
        me = self.agent.address.lower()
        for game_id in self.market.games_of(job_id):
            g = self.market.game(game_id)
            if g.challenger.lower() == me and g.interval == interval:
                return game_id
        return None

    def _landed(self, job_id: int, interval: int, game_id: int) -> None:
        self.db.put(f"game:{job_id}:{interval}", str(game_id))
        self.db.delete(f"{PENDING}{job_id}:{interval}")
        log.info("event=disputed job=%d interval=%d game=%d", job_id, interval, game_id)

    def _games(self) -> list[tuple[str, int]]:
        return [(k, int(v)) for k, v in self.db.items("game:")]

    # ---- checking a commitment

    def _honest(self, spec: JobSpec, fault: Fault | None = None) -> Computation:
        """The job's computation from its verified bundle (BundleError when it can't be had)."""
        return bundle_computation(self.bundles.bundle(spec), spec, fault)

    def _liar(self, spec: JobSpec) -> Computation:
        """--lie: the job's computation with one element of its first tensor op wrong."""
        honest = self._honest(spec)
        return self._honest(spec, Fault(kind="element", step=0, op=_first_tensor_op(honest)))

    def _check(self, c: Commitment) -> None:
        self._check_all([c])

    def _check_all(self, commitments: list[Commitment]) -> None:
        """Check commitments: sample each one's intervals (kept, so that a retry checks the
        same ones), hand every sampled interval's replay to the farm at once (so that a Ray
        farm replays all jobs' intervals in parallel), then conclude job by job: dispute the
        first interval that differs; a job whose inputs can't be had is marked unverifiable
        and retried with backoff until its challenge window closes."""
        planned = []
        for c in commitments:
            job = self.market.job(c.job_id)
            committed = [job.spec.initial_root, *c.checkpoint_roots]
            record = {"verdict": "clean", "sample": self._sample(c)}
            try:
                honest = self._liar(job.spec) if self.cfg.lie else self._honest(job.spec)
            except BundleError as e:
                self._unverifiable(c.job_id, record, job.spec, e.part, e.why)
                continue
            pending = []
            if not self.cfg.lie:
                for interval in record["sample"]:  # type: ignore[union-attr]
                    task = IntervalTask(job_id=c.job_id, spec=job.spec, committed=committed,
                                        interval=interval, stores=self.cfg.store)  # fmt: skip
                    pending.append((interval, self.farm.submit(task, honest)))
            planned.append((c, job.spec, committed, record, honest, pending))
        tasks = sum(len(p[-1]) for p in planned)
        if tasks:
            log.info("event=replays_submitted jobs=%d intervals=%d farm=%s", len(planned), tasks,
                     self.farm.name)  # fmt: skip
        for c, spec, committed, record, honest, pending in planned:
            if self.cfg.lie:
                bad, comp, matched, missing = 0, honest, [], {}
            else:
                found = self._find_bad(c.job_id, committed, pending, honest)
                bad, comp, matched, missing, reached = found
                # what this watcher computed, next to what was committed (audits, farms)
                record["reached"] = {str(i): "0x" + r.hex() for i, r in sorted(reached.items())}
            self._conclude(c, spec, record, bad, comp, matched, missing, committed)

    def _sample(self, c: Commitment) -> list[int]:
        record = self._job_record(c.job_id) or {}
        m = len(c.checkpoint_roots)
        if "sample" in record:
            return [int(i) for i in record["sample"]]  # type: ignore[union-attr]
        if self.cfg.intervals is not None:
            return sorted({i for i in self.cfg.intervals if 0 <= i < m})
        rng = secrets.SystemRandom()
        return sorted(i for i in range(m) if rng.random() < self.cfg.rate)

    def _conclude(
        self,
        c: Commitment,
        spec: JobSpec,
        record: dict[str, object],
        bad: int | None,
        comp: Computation,
        matched: list[int],
        missing: dict[int, str],
        committed: list[bytes],
    ) -> None:
        m = len(c.checkpoint_roots)
        sample = record["sample"]
        assert isinstance(sample, list)
        if self.cfg.attest_to:  # kept before the verdict, so a crash between loses none
            for interval in matched:
                pending = {"run_root": "0x" + c.run_root.hex(), "tries": 0, "next": 0.0}
                self.db.put(f"attest:{c.job_id}:{interval}", json.dumps(pending))
        if bad is None and missing:
            first = min(missing)
            why = f"interval {first}: {missing[first]}"
            self._unverifiable(c.job_id, record, spec, "dataset", why, sorted(missing))
            return
        log_check(c.job_id, m, sample, bad, self.cfg.rate, self.cfg.lie)
        if bad is None:
            self._save_job(c.job_id, record)
            return
        self._comps[(c.job_id, bad)] = comp
        record.update(verdict="disputed", interval=bad, start=comp.start_checkpoint)
        # the intent to dispute is kept with the verdict: until the dispute lands it is retried
        self.db.put(f"{PENDING}{c.job_id}:{bad}", json.dumps({"tries": 0, "next": 0.0}))
        self._save_job(c.job_id, record)
        self._try_dispute(c.job_id, bad, committed)

    def _unverifiable(
        self,
        job_id: int,
        record: dict[str, object],
        spec: JobSpec,
        part: str,
        why: str,
        intervals: list[int] | None = None,
    ) -> None:
        """Record (and say) that this job's inputs can't be had now; retried with backoff."""
        tries = int(record.get("tries", 0)) + 1  # type: ignore[call-overload]
        delay = min(UNVERIFIABLE_MAX_BACKOFF_S, 2**tries)
        record.update(verdict="unverifiable", part=part, why=why, tries=tries,
                      retry_at=time.time() + delay)  # fmt: skip
        if intervals is not None:
            record["intervals"] = intervals
        self._save_job(job_id, record)
        log.error("event=unverifiable job=%d part=%r why=%r tries=%d retry_in_s=%d bundle=%s",
                  job_id, part, why, tries, delay, spec.bundle.hex())  # fmt: skip

    def _retry_unverifiable(self) -> None:
        """Check again every unverifiable job whose backoff has passed, while disputes can
        still open; after its window it stays unverifiable for good."""
        now = time.time()
        for key, raw in self.db.items("job:"):
            record = json.loads(raw)
            if record.get("verdict") != "unverifiable" or record.get("final"):
                continue
            if record["retry_at"] > now:
                continue
            job_id = int(key.removeprefix("job:"))
            job = self.market.job(job_id)
            if job.status != JobStatus.COMMITTED or self.agent.now() > (
                job.committed_at + job.spec.window
            ):
                record["final"] = True
                self._save_job(job_id, record)
                log.error("event=unverifiable_final job=%d status=%s part=%r why=%r",
                          job_id, job.status.name, record["part"], record["why"])  # fmt: skip
                continue
            self._check(self._commitment(job_id))

    def _dispute_computation(
        self, job_id: int, committed: list[bytes], c: int, honest: Computation
    ) -> Computation:
        """The computation a dispute of interval ``c`` is played from: from the latest
        verified checkpoint at or before C_c, here or (``--ray``) on a farm worker."""
        task = IntervalTask(job_id=job_id, spec=self.market.job(job_id).spec,
                            committed=committed, interval=c, stores=self.cfg.store)  # fmt: skip
        return self.farm.computation(task, honest)

    def _find_bad(
        self,
        job_id: int,
        committed: list[bytes],
        pending: list[tuple[int, Pending]],
        honest: Computation,
    ) -> tuple[int | None, Computation, list[int], dict[int, str], dict[int, bytes]]:
        """The first interval found to disagree with the commitment, from the farm's replays
        of the sampled intervals (each from the latest verified checkpoint before it, every
        interval replayed on the way compared too), read in interval order; the computation
        to play it from; the intervals replayed that matched; and the sampled intervals whose
        batches could not be had (why); and every interval end the replays reached. Replays
        still running past the first bad one are cancelled (a local farm never starts them)."""
        matched: list[int] = []
        missing: dict[int, str] = {}
        reached: dict[int, bytes] = {}
        for n, (c, task) in enumerate(pending):
            if c in matched:
                task.cancel()
                continue
            outcome = task.result()
            _log_outcome(job_id, outcome, self.farm.name)
            reached.update((outcome.start + k + 1, r) for k, r in enumerate(outcome.roots))
            matched.extend(i for i in outcome.matched if i not in matched)
            if outcome.missing is not None:
                missing[c] = outcome.missing
                log.warning("event=interval_unverifiable job=%d interval=%d part=%r why=%r",
                            job_id, c, outcome.missing_part, outcome.missing)  # fmt: skip
                continue
            if outcome.bad is not None:
                for _, later in pending[n + 1 :]:
                    later.cancel()
                comp = task.computation()
                if comp is None:  # replayed elsewhere: played there, from the checkpoint before
                    comp = self._dispute_computation(job_id, committed, outcome.bad, honest)
                return outcome.bad, comp, sorted(matched), missing, reached
        return None, honest, sorted(matched), missing, reached

    def _computation_for(self, job_id: int, interval: int) -> Computation:
        """The computation a game is played from (rebuilt after a restart)."""
        if (job_id, interval) not in self._comps:
            job = self.market.job(job_id)
            if self.cfg.lie:
                comp = self._liar(job.spec)
            else:
                record = self._job_record(job_id) or {}
                honest = self._honest(job.spec)
                start = int(record.get("start", 0))  # type: ignore[call-overload]
                committed = [job.spec.initial_root, *self._committed_roots(job_id)]
                comp = self._dispute_computation(job_id, committed, start, honest)
            self._comps[(job_id, interval)] = comp
        return self._comps[(job_id, interval)]

    def _commitment(self, job_id: int) -> Commitment:
        for c in self.market.commitments(self.market.start_block, self.agent.head()):
            if c.job_id == job_id:
                return c
        raise LookupError(f"job {job_id} has no RunCommitted event")

    def _committed_roots(self, job_id: int) -> list[bytes]:
        return self._commitment(job_id).checkpoint_roots

    # ---- playing

    def _play(self, key: str, game_id: int) -> None:
        _, job_s, interval_s = key.split(":")
        job_id, interval = int(job_s), int(interval_s)
        m = self.market
        g = m.game(game_id)
        if g.phase.over:
            if not g.settled:
                self._abandon_frozen(job_id)  # a won game pays once none of its job runs
                # None: it would revert now, i.e. an earlier game of the job still runs (the
                # share goes to the lowest-numbered won game): not a failure, settle later
                if m.transact("settle", game_id, key=f"settle:{game_id}") is None:
                    return
                log.info("event=settled game=%d phase=%s", game_id, g.phase.name)
            for words in self.ledger.outcomes([game_id]):
                log.info("event=outcome job=%d %s", job_id, words)
            credit = m.credits(self.agent.address)
            if credit:
                if not self.agent.send(log, "withdraw", key=f"withdraw:{game_id}:{credit}"):
                    return
                log.info("event=withdrew game=%d amount=%r", game_id, eth(credit))
            self.db.delete(key)
            self.db.put(f"done:{key}", str(game_id))
            return
        if not g.live:  # frozen by a lower-numbered game that rejected the job
            m.transact("abandon", game_id, key=f"abandon:{game_id}")
            log.info("event=abandoned game=%d", game_id)
            return
        if g.phase.trainer_moves:
            if self.agent.now() > g.deadline:
                if self.agent.send(log, "timeout", game_id, key=f"timeout:{game_id}"):
                    log.info("event=timeout game=%d", game_id)
            return
        player = ChallengerPlayer(m, self._computation_for(job_id, interval), job_id)
        if player.move(game_id) is not None:
            log.info("event=moved game=%d seq=%d phase=%s", game_id, g.seq, g.phase.name)
        elif (game_id, g.seq) not in self._unsent:  # said once per move; tried every poll
            self._unsent.add((game_id, g.seq))
            log.error("event=move_not_sent game=%d seq=%d phase=%s clock_left_s=%d note=%r",
                      game_id, g.seq, g.phase.name,
                      g.challenger_clock - (self.agent.now() - g.last_move),
                      "the move was not accepted (see the outbox lines); retrying every poll "
                      "until the clock runs out")  # fmt: skip

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
        """Poll (forever, or ``max_polls`` times); a node that stops answering is retried
        with backoff, the state kept."""
        try:
            poll_forever(self.step, self.cfg.poll, log, self.cfg.rpc, max_polls=max_polls)
        finally:  # also when stopped (Ctrl-C, SIGTERM): the summary is the last word
            self.farm.close()
            try:
                self.summary()
            except Exception as e:  # the node may be what stopped it
                log.warning("event=summary_unavailable why=%r", f"{type(e).__name__}: {e}")


def log_check(
    job_id: int, intervals: int, sample: list[int], bad: int | None, rate: float, lie: bool
) -> None:
    """What checking a commitment found, in words: an empty sample is no clean check."""
    if lie:
        log.info("event=checked job=%d result=%r", job_id, "lying on purpose (--lie)")
    elif not sample:
        log.info("event=not_checked job=%d intervals=%d sampled=0 note=%r", job_id, intervals,
                 f"no interval drawn at rate {rate}: not checked this time")  # fmt: skip
    elif bad is None:
        log.info("event=checked job=%d intervals=%d sampled=%s result=%r", job_id, intervals,
                 sample, f"all {len(sample)} sampled intervals match")  # fmt: skip
    else:
        log.warning("event=checked job=%d intervals=%d sampled=%s result=%r", job_id, intervals,
                    sample, f"interval {bad} does not match the commitment: disputing")  # fmt: skip


def _log_rejected(job_id: int, rejected: list[Rejected]) -> None:
    for r in rejected:
        if r.event == "store_unreachable":
            log.warning("event=store_unreachable job=%d interval=%d why=%r note=%s", job_id,
                        r.interval, r.why, "trying an earlier checkpoint")  # fmt: skip
        else:
            log.warning("event=checkpoint_rejected job=%d interval=%d why=%r", job_id,
                        r.interval, r.why)  # fmt: skip


def _log_outcome(job_id: int, outcome: IntervalOutcome, farm: str) -> None:
    """What one interval's replay cost, and where it started from."""
    _log_rejected(job_id, outcome.rejected)
    if outcome.start < outcome.interval:
        log.info("event=replay_from job=%d interval=%d from=%d", job_id, outcome.interval,
                 outcome.start)  # fmt: skip
    log.info("event=replayed job=%d interval=%d from=%d seconds=%.3f farm=%s worker=%s", job_id,
             outcome.interval, outcome.start, outcome.seconds, farm, outcome.worker)  # fmt: skip


def _first_tensor_op(comp: Computation) -> int:
    """The first op that writes a tensor (what --lie gets wrong)."""
    from protocol.ir import ROOT_LEVEL_OPS

    return next(j for j, o in enumerate(comp.program.ops) if o.opcode not in ROOT_LEVEL_OPS)
