"""Stateful test of TrainProof (job market + dispute game) against a model, titanoboa.

A hypothesis state machine runs random sequences of register_job, accept_job, commit_run
(the honest run or a faulty one), open_dispute, game moves (the correct move of the party
on turn, computed from its own run, or a wrong move that must revert and change nothing),
whole games played out, time travel, timeout, abandon, settle, finalize, cancel_job,
expire_job and withdraw, from a small pool of accounts (a requester may also train or
challenge its own job, a trainer may challenge itself), with odd stakes, bonds and
rewards (zero, tiny, large). Calls often land exactly on the last second of a commit
deadline, challenge window or chess clock, or on the first second after it. The model
predicts which calls succeed, who wins a game where one side computed honestly (or who
was on turn at a timeout), and every wei. Runs on the deployed (Venom) build; the exact
revert reasons are test_game_adversarial's job.

The model also keeps each job's shared game clock (docs/protocol.md §4.3: virtual time
advancing at 1 / running games per second, at 1 after a rejection) and its winner (the
lowest-numbered game a challenger won: games below it keep running, games above it are
frozen until abandoned; only the winner is paid the stake share, once no game of the job
runs; other won games get their bond back).

Invariants after every step:
- the contract's balance == liabilities() == held() + burned();
- held() == the model's escrow of live jobs (reward, stake) + bonds of unsettled games
  + all credits; burned() and every account's credits equal the model's;
- each job's open_games equals the model's count of its running games, and its clock word
  (winner, running games, virtual time) equals the model's;
- every live game's `deadline` is the last second at which the model lets the party on
  turn move;
and a withdraw pays the account exactly its credit, once.
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass, field
from typing import Any

import boa
from game_fixtures import (
    BOND,
    BOND_BURN_BPS,
    BPS,
    REWARD,
    STAKE,
    WINNER_SHARE_BPS,
    Call,
    GameDriver,
    account,
    balance,
    checkpoints,
    computation,
    deploy,
    job_spec,
    open_dispute,
    run_proof,
)
from hypothesis import HealthCheck, event, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
)

from protocol.game import MIN_BOND, MIN_STAKE, GameState, JobStatus, Phase

#: The runs a party may hold: honest, or with a fault the game settles at the one-step
#: (add), in the partial bisection (matmul), at open_op (batch: the trainer cannot open)
#: or by timeout (second-slot: the trainer cannot open).
RUNS = ("add", "honest", "matmul", "batch", "second-slot")
for _name in RUNS:  # the expensive part, once per process
    checkpoints(_name)

INTERVALS = len(checkpoints()) - 1
REWARDS = (0, 1, REWARD)
# the smallest the contract accepts, odd ones (rounding of the shares), and large ones
STAKES = (MIN_STAKE, MIN_STAKE + 3, STAKE)
BONDS = (MIN_BOND, MIN_BOND + 3, BOND)
# every job's durations (s): distinct, so that time steps land exactly on each limit; the
# clocks are the longest, so that games often outlive the jumps to the other limits
TRAIN_TIME, WINDOW, CLOCK = 1000, 3600, 4000
_V = 16  # virtual time counts 2^-16 s
TIME_STEPS = (1, 500, TRAIN_TIME, WINDOW, CLOCK)

# job escrow per status: (reward held, stake held)
_LIVE = {JobStatus.OPEN: (1, 0), JobStatus.ACCEPTED: (1, 1), JobStatus.COMMITTED: (1, 1)}


@dataclass
class JobModel:
    id: int
    requester: str
    reward: int
    stake: int
    bond: int
    status: JobStatus = JobStatus.OPEN
    trainer: str | None = None
    run: str | None = None
    accepted_at: int = 0
    committed_at: int = 0
    paid_out: bool = False  # a rejected job's reward and stake went out at settle
    winner: int | None = None  # the lowest-numbered game the challenger won
    v: int = 0  # virtual time at `at` (units of 2^-16 s)
    at: int = 0
    running: int = 0  # running games, frozen ones included

    def vnow(self, now: int) -> int:
        elapsed = (now - self.at) << _V
        if self.winner is not None:
            return self.v + elapsed
        return self.v if self.running == 0 else self.v + elapsed // self.running

    def fold(self, now: int, delta: int) -> int:
        self.v, self.at = self.vnow(now), now
        self.running += delta
        return self.v

    def frozen(self, game_id: int) -> bool:
        return self.winner is not None and game_id > self.winner

    def escrow(self) -> int:
        if self.status in _LIVE:
            r, s = _LIVE[self.status]
            return r * self.reward + s * self.stake
        if self.status == JobStatus.REJECTED and not self.paid_out:
            return self.reward + self.stake
        return 0


@dataclass
class GameModel:
    id: int
    job: JobModel
    challenger: str
    run: str
    interval: int
    driver: GameDriver
    bond: int
    expected: str | None  # "trainer" / "challenger" when one side computed honestly
    phase: Phase = Phase.TRACE_REVEAL
    settled: bool = False
    vstart: int = 0  # the job's virtual time at the last move

    @property
    def running(self) -> bool:
        return not self.phase.over


@dataclass
class Model:
    jobs: list[JobModel] = field(default_factory=list)
    games: list[GameModel] = field(default_factory=list)
    credits: dict[str, int] = field(default_factory=dict)
    burned: int = 0

    def credit(self, who: str, amount: int) -> None:
        self.credits[who] = self.credits.get(who, 0) + amount

    def held(self) -> int:
        bonds = sum(g.bond for g in self.games if not g.settled)
        return sum(j.escrow() for j in self.jobs) + bonds + sum(self.credits.values())


def _wrong(call: Call, g: GameState) -> Call:
    """A variant of the correct move ``call`` that the contract must reject."""
    a = call.args
    if call.fn == "reveal":
        return call.replace(a[0][:-1] if a[0] else [b"\x01" * 32])  # wrong number of values
    if call.fn == "pick":
        return call.replace([_flip(a[0][0]), *a[0][1:]], a[1])  # values differ from the reveal
    if call.fn == "open_op":
        return call.replace(*a[:3], _flip(a[3]), *a[4:])  # post-state mismatch
    if call.fn in ("reveal_children", "pick_child"):
        return call.replace(_flip(a[0]), *a[1:])  # children mismatch
    if call.fn == "open_chunk":
        return call.replace(_flip(a[0]))  # chunk mismatch
    if call.fn == "pick_element":
        return call.replace(_flip(a[0]), *a[1:])  # chunk mismatch
    if call.fn == "one_step":
        w = list(a[1][0])
        w[0] = _flip(w[0])  # bad operand slot proof
        return call.replace(a[0], [tuple(w), *a[1][1:]])
    raise AssertionError(call.fn)


def _flip(b: bytes) -> bytes:
    return bytes([b[0] ^ 1]) + b[1:]


class TrainProofMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self._anchor = contextlib.ExitStack()
        self._anchor.enter_context(boa.env.anchor())
        self.tp = deploy()  # a fresh contract per example (cheap once compiled)
        self.people = [account() for _ in range(3)]
        self.outsider = account()
        self.m = Model()

    def teardown(self) -> None:
        self._anchor.close()

    # ------------------------------------------------------------ helpers

    @property
    def now(self) -> int:
        return boa.env.timestamp

    def _reverts(
        self, fn: str, *args: Any, sender: str, value: int = 0,
        job: JobModel | None = None, game: GameModel | None = None,
    ) -> None:  # fmt: skip
        """``fn(*args)`` reverts and leaves the books, and the job and the game it names, as
        they were. (Sent as a raw message: boa's revert report would cost more than the
        call; the exact reasons are asserted in test_game_adversarial.)"""
        before = self._books(job, game)
        data = getattr(self.tp, fn).prepare_calldata(*args)
        computation = boa.env.execute_code(
            to_address=self.tp.address, sender=sender, value=value, data=data
        )
        assert computation.is_error, f"{fn}{args} did not revert"
        assert self._books(job, game) == before

    def _reverts_move(self, g: GameModel, call: Call, seq: int) -> None:
        self._reverts(call.fn, g.id, seq, *call.args, sender=call.sender, game=g)

    def _books(self, job: JobModel | None, game: GameModel | None) -> tuple[Any, ...]:
        tp = self.tp
        if game is not None:
            job = game.job
        return (
            tp.held(),
            tp.burned(),
            balance(tp.address),
            None if job is None else tuple(tp.jobs(job.id)),
            None if game is None else tuple(tp.game(game.id)),
        )

    @staticmethod
    def _pick(data: st.DataObject, items: list[Any], good: list[Any]) -> Any:
        """One of ``items``; half the time one of ``good`` (those for which the call should
        succeed), so both the success and the revert paths run often."""
        if good and data.draw(st.booleans()):
            return data.draw(st.sampled_from(good))
        return data.draw(st.sampled_from(items))

    def _at_limit(self, data: st.DataObject, limit: int, after: bool = True) -> None:
        """Maybe go to the last second before ``limit`` passes, or (``after``) to the first
        after it, when that is ahead: calls land exactly on deadlines, windows and clocks."""
        whens = ["now", "now", "last second"] + ["first second after"] * after
        when = data.draw(st.sampled_from(whens))
        target = limit + (when == "first second after")
        if when != "now" and target > self.now:
            boa.env.time_travel(seconds=target - self.now)

    def _clock_limit(self, g: GameModel) -> int:
        return g.driver.state().deadline  # checked against the model by `deadlines`

    def _jobs(self, *status: JobStatus) -> list[JobModel]:
        return [j for j in self.m.jobs if j.status in status]

    def _running(self) -> list[GameModel]:
        return [g for g in self.m.games if g.running]

    def _expired_at(self, g: GameModel, state: GameState, when: int) -> bool:
        """Whether the party on turn in ``g`` is out of clock at time ``when``."""
        if state.phase.trainer_moves:
            return g.job.vnow(when) - g.vstart > state.trainer_clock << _V
        return when - state.last_move > state.challenger_clock

    def _on_turn_expired(self, g: GameModel, state: GameState) -> bool:
        return self._expired_at(g, state, self.now)

    def _send(self, g: GameModel, call: Call, seq: int) -> None:
        """A correct move: the trainer's clock is charged the virtual time, rounded up."""
        before = g.driver.state()
        v = g.job.vnow(self.now)
        g.driver.send(call, seq)
        after = g.driver.state()
        if before.phase.trainer_moves and not after.phase.over:
            charged = -(-(v - g.vstart) >> _V)
            assert after.trainer_clock == before.trainer_clock - charged
        g.vstart = v
        self._after_move(g)

    def _after_move(self, g: GameModel, by_timeout: str | None = None) -> None:
        """Read the game's phase; if it ended, check the winner and update the model."""
        state = g.driver.state()
        if not state.phase.over:
            g.phase = state.phase
            return
        g.job.fold(self.now, -1)
        assert state.phase in (Phase.TRAINER_WON, Phase.CHALLENGER_WON)
        winner = "trainer" if state.phase == Phase.TRAINER_WON else "challenger"
        expected = by_timeout or g.expected
        if expected is not None:
            assert winner == expected, (g.job.run, g.run, g.interval, by_timeout)
        g.phase = state.phase
        event(f"game won by the {winner} ({'timeout' if by_timeout else 'played'})")
        if winner == "challenger":
            g.job.status = JobStatus.REJECTED
            if g.job.winner is None or g.id < g.job.winner:
                g.job.winner = g.id

    # ------------------------------------------------------------ a running start

    @initialize(
        data=st.data(),
        roles=st.tuples(st.integers(0, 2), st.integers(0, 2), st.integers(0, 2)),
        run=st.sampled_from(RUNS),
        money=st.tuples(st.sampled_from(REWARDS), st.sampled_from(STAKES), st.sampled_from(BONDS)),
        frivolous=st.booleans(),
        disputes=st.integers(0, 3),
    )
    def committed_and_disputed(
        self, data: st.DataObject, roles: tuple[int, int, int], run: str,
        money: tuple[int, int, int], frivolous: bool, disputes: int,
    ) -> None:  # fmt: skip
        """Start with a committed job and 0-3 disputes of it, so that games run from the
        first step (and a rejection can leave other games to abandon)."""
        requester, trainer, challenger = roles
        self.register_job(requester, *money)
        job = self.m.jobs[-1]
        self.accept_job(data, trainer, False)
        self.commit_run(data, run, at_limits=False)
        for k in range(disputes):
            self.open_dispute(data, (challenger + k) % 3, frivolous and k == 0, at_limits=False)
        assert job.status == JobStatus.COMMITTED and len(self.m.games) == disputes

    # ------------------------------------------------------------ jobs

    @rule(
        who=st.integers(0, 2),
        reward=st.sampled_from(REWARDS),
        stake=st.sampled_from(STAKES),
        bond=st.sampled_from(BONDS),
    )
    def register_job(self, who: int, reward: int, stake: int, bond: int) -> None:
        requester = self.people[who]
        spec = job_spec(stake=stake, bond=bond, clock=CLOCK, train_time=TRAIN_TIME, window=WINDOW)
        job_id = self.tp.register_job(spec.as_tuple(), sender=requester, value=reward)
        assert job_id == len(self.m.jobs) + 1
        self.m.jobs.append(JobModel(job_id, requester, reward, stake, bond))

    @precondition(lambda self: self._jobs(JobStatus.OPEN))
    @rule(data=st.data(), who=st.integers(0, 2), wrong_stake=st.booleans())
    def accept_job(self, data: st.DataObject, who: int, wrong_stake: bool) -> None:
        job = data.draw(st.sampled_from(self._jobs(JobStatus.OPEN)))
        trainer = self.people[who]
        if wrong_stake:
            self._reverts(
                "accept_job", job.id, self.tp.jobs(job.id).job_hash,
                sender=trainer, value=job.stake + 1, job=job,
            )  # fmt: skip
            return
        self.tp.accept_job(job.id, self.tp.jobs(job.id).job_hash, sender=trainer, value=job.stake)
        job.status, job.trainer, job.accepted_at = JobStatus.ACCEPTED, trainer, self.now

    @precondition(lambda self: self._jobs(JobStatus.ACCEPTED))
    @rule(data=st.data(), run=st.sampled_from(RUNS))
    def commit_run(self, data: st.DataObject, run: str, at_limits: bool = True) -> None:
        job = data.draw(st.sampled_from(self._jobs(JobStatus.ACCEPTED)))
        roots = list(checkpoints(run)[1:])
        if at_limits:
            self._at_limit(data, job.accepted_at + TRAIN_TIME)
        if self.now > job.accepted_at + TRAIN_TIME:
            self._reverts("commit_run", job.id, 0, roots, sender=job.trainer, job=job)
            return
        self.tp.commit_run(job.id, 0, roots, sender=job.trainer)
        job.status, job.run, job.committed_at = JobStatus.COMMITTED, run, self.now

    @precondition(lambda self: self.m.jobs)
    @rule(data=st.data(), who=st.integers(0, 2))
    def cancel_job(self, data: st.DataObject, who: int) -> None:
        job = self._pick(data, self.m.jobs, self._jobs(JobStatus.OPEN))
        sender = job.requester if data.draw(st.booleans()) else self.people[who]
        if job.status != JobStatus.OPEN or sender != job.requester:
            self._reverts("cancel_job", job.id, sender=sender, job=job)
            return
        self.tp.cancel_job(job.id, sender=sender)
        job.status = JobStatus.CANCELLED
        self.m.credit(job.requester, job.reward)

    @precondition(lambda self: self.m.jobs)
    @rule(data=st.data())
    def expire_job(self, data: st.DataObject) -> None:
        late = [j for j in self._jobs(JobStatus.ACCEPTED) if self.now > j.accepted_at + TRAIN_TIME]
        job = self._pick(data, self.m.jobs, late)
        if job.status == JobStatus.ACCEPTED:
            self._at_limit(data, job.accepted_at + TRAIN_TIME)
        if job.status != JobStatus.ACCEPTED or self.now <= job.accepted_at + TRAIN_TIME:
            self._reverts("expire_job", job.id, sender=self.outsider, job=job)
            return
        self.tp.expire_job(job.id, sender=self.outsider)
        job.status = JobStatus.EXPIRED
        self.m.credit(job.requester, job.reward + job.stake)

    @precondition(lambda self: self.m.jobs)
    @rule(data=st.data())
    def finalize(self, data: st.DataObject) -> None:
        def ok(job: JobModel) -> bool:
            return (
                job.status == JobStatus.COMMITTED
                and self.now > job.committed_at + WINDOW
                and not any(g.job is job for g in self._running())
            )

        job = self._pick(data, self.m.jobs, [j for j in self.m.jobs if ok(j)])
        if job.status == JobStatus.COMMITTED:
            self._at_limit(data, job.committed_at + WINDOW)
        ok = ok(job)
        if not ok:
            self._reverts("finalize", job.id, sender=self.outsider, job=job)
            return
        self.tp.finalize(job.id, sender=self.outsider)
        job.status = JobStatus.FINALIZED
        event("finalized")
        assert job.trainer is not None
        self.m.credit(job.trainer, job.reward + job.stake)

    # ------------------------------------------------------------ disputes

    @precondition(lambda self: self._jobs(JobStatus.COMMITTED))
    @rule(data=st.data(), who=st.integers(0, 2), frivolous=st.booleans())
    def open_dispute(
        self, data: st.DataObject, who: int, frivolous: bool, at_limits: bool = True
    ) -> None:
        """A challenger with one of the runs disputes; mostly one whose run differs from the
        commitment (a frivolous one may dispute an interval it agrees with)."""
        job = data.draw(st.sampled_from(self._jobs(JobStatus.COMMITTED)))
        assert job.run is not None and job.trainer is not None
        committed = checkpoints(job.run)
        differ = [r for r in RUNS if checkpoints(r) != committed]
        run = data.draw(st.sampled_from(RUNS if frivolous else differ))
        mine = checkpoints(run)
        # a challenger disputes an interval whose start it agrees with, and (unless
        # frivolous) whose end it does not
        agreed = [c for c in range(INTERVALS) if mine[c] == committed[c]]
        wrong = [c for c in agreed if mine[c + 1] != committed[c + 1]]
        interval = data.draw(st.sampled_from(agreed if frivolous or not wrong else wrong))
        challenger = self.people[who]
        if at_limits:
            self._at_limit(data, job.committed_at + WINDOW)
        if self.now > job.committed_at + WINDOW:
            args = (
                job.id, interval,
                committed[interval], run_proof(committed, interval),
                committed[interval + 1], run_proof(committed, interval + 1),
            )  # fmt: skip
            self._reverts("open_dispute", *args, sender=challenger, value=job.bond, job=job)
            return
        game_id = open_dispute(self.tp, job.id, challenger, committed, interval, job.bond)
        assert game_id == len(self.m.games) + 1
        expected = None
        if job.run == "honest":
            expected = "trainer"  # no challenger beats an honest trainer
        elif run == "honest" and mine[interval + 1] != committed[interval + 1]:
            expected = "challenger"  # an honest challenger of a wrong interval wins
        driver = GameDriver(
            self.tp, game_id, job.trainer, challenger, computation(job.run), computation(run)
        )
        model = GameModel(game_id, job, challenger, run, interval, driver, job.bond, expected)
        model.vstart = job.fold(self.now, +1)
        self.m.games.append(model)

    @precondition(lambda self: self._running())
    @rule(data=st.data(), how=st.sampled_from(["right", "stale", "sender", "wrong"]))
    def move(self, data: st.DataObject, how: str) -> None:
        """One move in a running game: the correct one, or a wrong one that must revert."""
        g = data.draw(st.sampled_from(self._running()))
        self._at_limit(data, self._clock_limit(g))
        state = g.driver.state()
        call = g.driver.next_call(state)
        if call is None:  # the party on turn has no valid move: it can only run out of time
            event("move: none")
            return
        frozen = g.job.frozen(g.id)
        if frozen or self._on_turn_expired(g, state):
            event(f"move: {'frozen' if frozen else 'expired'}")
            # job not committed, or the clock of the party on turn ran out
            self._reverts_move(g, call, state.seq)
            return
        event(f"move: {how}")
        clock = state.trainer_clock if state.phase.trainer_moves else state.challenger_clock
        if self.now - state.last_move == clock:
            event("move at the last second of a clock")
        if how == "stale":
            seqs = [state.seq + 1] + ([state.seq - 1] if state.seq else [])
            seq = data.draw(st.sampled_from(seqs))
            self._reverts_move(g, call, seq)
        elif how == "sender" and call.fn != "one_step":  # anyone may send the verdict
            self._reverts_move(g, call.replace(sender=self.outsider), state.seq)
        elif how == "wrong":
            self._reverts_move(g, _wrong(call, state), state.seq)
        else:
            self._send(g, call, state.seq)

    @precondition(lambda self: self._running())
    @rule(data=st.data(), count=st.integers(2, 25))
    def moves(self, data: st.DataObject, count: int) -> None:
        """Several correct moves in one running game (deep phases, then other actions)."""
        g = data.draw(st.sampled_from(self._running()))
        self._at_limit(data, self._clock_limit(g), after=False)
        for _ in range(count):
            state = g.driver.state()
            if not g.running or g.job.frozen(g.id):
                return
            if self._on_turn_expired(g, state):
                return
            call = g.driver.next_call(state)
            if call is None:
                return
            self._send(g, call, state.seq)
            event(f"reached {g.phase.name}")

    @precondition(lambda self: self._running())
    @rule(data=st.data())
    def play_out(self, data: st.DataObject) -> None:
        """Play a running game to its end (a party without a move runs out of time)."""
        g = data.draw(st.sampled_from(self._running()))
        if g.job.frozen(g.id):
            return
        for _ in range(100):
            state = g.driver.state()
            if state.phase.over:
                break
            loser = "trainer" if state.phase.trainer_moves else "challenger"
            call = g.driver.next_call(state)
            if call is None or self._on_turn_expired(g, state):
                if not self._on_turn_expired(g, state):
                    boa.env.time_travel(seconds=state.deadline + 1 - self.now)
                self.tp.timeout(g.id, sender=self.outsider)
                winner = "challenger" if loser == "trainer" else "trainer"
                if call is None:  # no move at all: the same verdict a played game gives
                    self._after_move(g)
                else:
                    self._after_move(g, by_timeout=winner)
                return
            self._send(g, call, state.seq)
        assert not g.running

    @rule(data=st.data(), seconds=st.sampled_from(TIME_STEPS), to_limit=st.booleans())
    def time_travel(self, data: st.DataObject, seconds: int, to_limit: bool) -> None:
        """Let ``seconds`` pass, or go to the last second of a commit deadline, a challenge
        window or a clock of the party on turn (or the first second after it)."""
        if not to_limit:
            boa.env.time_travel(seconds=seconds)
            return
        past = data.draw(st.booleans())
        limits = [j.accepted_at + TRAIN_TIME for j in self._jobs(JobStatus.ACCEPTED)]
        limits += [j.committed_at + WINDOW for j in self._jobs(JobStatus.COMMITTED)]
        for g in self._running():
            limits.append(g.driver.state().deadline)
        ahead = [t + past for t in limits if t + past > self.now]
        if ahead:
            boa.env.time_travel(seconds=data.draw(st.sampled_from(ahead)) - self.now)

    @precondition(lambda self: self._running())
    @rule(data=st.data())
    def timeout(self, data: st.DataObject) -> None:
        live = [g for g in self._running() if not g.job.frozen(g.id)]
        g = self._pick(data, self._running(), live)
        self._at_limit(data, self._clock_limit(g))
        state = g.driver.state()
        if g.job.frozen(g.id) or not self._on_turn_expired(g, state):
            self._reverts("timeout", g.id, sender=self.outsider, game=g)
            return
        self.tp.timeout(g.id, sender=self.outsider)
        self._after_move(g, by_timeout="challenger" if state.phase.trainer_moves else "trainer")

    @precondition(lambda self: self._running())
    @rule(data=st.data())
    def abandon(self, data: st.DataObject) -> None:
        frozen = [g for g in self._running() if g.job.frozen(g.id)]
        g = self._pick(data, self._running(), frozen)
        if not g.job.frozen(g.id):  # no winner yet, or a game below it (still live)
            self._reverts("abandon", g.id, sender=self.outsider, game=g)
            return
        self.tp.abandon(g.id, sender=self.outsider)
        g.phase = Phase.ABANDONED
        g.job.fold(self.now, -1)
        event("abandoned")

    @precondition(lambda self: self.m.games)
    @rule(data=st.data())
    def settle(self, data: st.DataObject) -> None:
        def payable(g: GameModel) -> bool:
            if g.running or g.settled:
                return False
            if g.phase == Phase.CHALLENGER_WON and g.id == g.job.winner:
                return not any(o.job is g.job for o in self._running())  # the share waits
            return True

        g = self._pick(data, self.m.games, [g for g in self.m.games if payable(g)])
        if not payable(g):
            self._reverts("settle", g.id, sender=self.outsider, game=g)
            return
        self.tp.settle(g.id, sender=self.outsider)
        g.settled = True
        event(f"settled {g.phase.name}")
        job = g.job
        assert job.trainer is not None
        if g.phase == Phase.TRAINER_WON:
            burn = g.bond * BOND_BURN_BPS // BPS
            self.m.burned += burn
            self.m.credit(job.trainer, g.bond - burn)
        elif g.phase == Phase.CHALLENGER_WON and g.id == job.winner:
            share = job.stake * WINNER_SHARE_BPS // BPS
            self.m.burned += job.stake - share
            self.m.credit(g.challenger, g.bond + share)
            self.m.credit(job.requester, job.reward)
            job.paid_out = True
        else:
            self.m.credit(g.challenger, g.bond)

    @rule(data=st.data())
    def withdraw(self, data: st.DataObject) -> None:
        everyone = [*self.people, self.outsider]
        sender = self._pick(data, everyone, [a for a in everyone if self.m.credits.get(a)])
        credit = self.m.credits.get(sender, 0)
        assert self.tp.credits(sender) == credit
        if credit == 0:
            self._reverts("withdraw", sender=sender)
            return
        before = balance(sender)
        self.tp.withdraw(sender=sender)
        assert balance(sender) == before + credit  # exactly the credit
        self.m.credits[sender] = 0
        event("withdrew")
        self._reverts("withdraw", sender=sender)  # and only once

    # ------------------------------------------------------------ invariants

    @invariant()
    def books(self) -> None:
        """Balance == liabilities == held + burned; held, burned, credits and each job's
        status and open games as the model has them."""
        tp = self.tp
        held, burned = tp.held(), tp.burned()
        assert balance(tp.address) == tp.liabilities() == held + burned
        assert burned == self.m.burned
        assert held == self.m.held()
        for a in (*self.people, self.outsider):
            assert tp.credits(a) == self.m.credits.get(a, 0)
        for job in self.m.jobs:
            onchain = tp.jobs(job.id)
            assert onchain.status == job.status
            assert onchain.open_games == sum(1 for g in self._running() if g.job is job)
            word = tp.job_clock(job.id)
            assert word >> 192 == (job.winner or 0)
            assert (word >> 160) & (2**32 - 1) == job.running == onchain.open_games
            if job.running or job.winner:
                assert (word & (2**96 - 1), (word >> 96) & (2**64 - 1)) == (job.v, job.at)

    @invariant()
    def deadlines(self) -> None:
        """A live game's deadline is the last second its party on turn may move."""
        for g in self._running():
            state = g.driver.state()
            assert state.live == (not g.job.frozen(g.id))
            if not state.live:
                continue
            d = state.deadline
            if d < g.job.at:  # out of clock since before the last change of the job's clock
                assert self._on_turn_expired(g, state)
                continue
            assert not self._expired_at(g, state, d) and self._expired_at(g, state, d + 1)


# about 30 s on one core (the whole file runs in one xdist worker)
# STATEFUL_EXAMPLES=1000 for the acceptance run (about 10 minutes on one core)
TrainProofMachine.TestCase.settings = settings(
    max_examples=int(os.environ.get("STATEFUL_EXAMPLES", "60")),
    stateful_step_count=40,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
test_trainproof_stateful = TrainProofMachine.TestCase
