"""The four holes of issue 15, each as the attack that exploited it, against TrainProof
(titanoboa; docs/protocol.md §4):

1. a zero-size tensor whose data root is not MTH({}) hides data in the state;
2. a swarm of frivolous disputes against a trainer that sends one transaction per block;
3. a cheater's sock puppet racing the honest watcher to the stake share;
4. job parameters that trap funds or honest trainers, and an accept that binds no spec.

Each test asserts the outcome and every resulting balance; revert reasons are asserted on
the debug build (see game_fixtures.BUILDS).
"""

from __future__ import annotations

import hashlib
import logging
from typing import Any

import boa
import numpy as np
import pytest
from game_fixtures import (
    BOND,
    BOND_BURN_BPS,
    BPS,
    BUILDS,
    CLOCK,
    REWARD,
    STAKE,
    WINDOW,
    WINNER_SHARE_BPS,
    GameDriver,
    account,
    balance,
    checkpoints,
    committed_job,
    computation,
    deploy,
    game_state,
    job_spec,
    new_job,
    open_dispute,
    reverts,
)

from protocol import game as protocol_game
from protocol.commitments import state_tree, tensor_root, tensor_root_from_fields
from protocol.game import JobSpec, JobStatus, Phase, answer_order, job_problems
from protocol.ir import Opcode, OpDescriptor, Program, Slot, validate_program
from prover.service import unsafe_job

SHARE = STAKE * WINNER_SHARE_BPS // BPS
BOND_BURN = BOND * BOND_BURN_BPS // BPS
EMPTY_DATA_ROOT = hashlib.sha256(b"").digest()
BLOCK = 12  # seconds per block


@pytest.fixture(scope="module", params=BUILDS)
def tp(request: pytest.FixtureRequest) -> Any:
    return deploy(request.param)


@pytest.fixture(autouse=True)
def _isolated() -> Any:
    with boa.env.anchor():
        yield


@pytest.fixture
def people() -> dict[str, str]:
    return {name: account() for name in ("requester", "trainer", "watcher", "puppet", "anyone")}


def assert_books(tp: Any) -> None:
    assert balance(tp.address) == tp.liabilities() == tp.held() + tp.burned()


def withdraw_all(tp: Any, *accounts: str) -> None:
    for a in accounts:
        if tp.credits(a) > 0:
            tp.withdraw(sender=a)


# ---------------------------------------------------------------- 1. zero-size tensor

#: A one-op step: FILL writes the zero-size persistent slot 0; slot 1 holds a weight.
ZERO_SIZE_PROGRAM = Program(
    slots=(
        Slot(name="hidden", shape=(0,), kind="persistent"),
        Slot(name="w", shape=(1,), kind="persistent"),
    ),
    ops=(OpDescriptor(opcode=Opcode.FILL, out=0, shape=(0,), imm=0),),
)


@pytest.mark.parametrize("trainer", ["hides a value", "honest"])
def test_zero_size_tensor_only_the_empty_root(tp, people, trainer) -> None:
    """The slot value of a numel-0 tensor is tensor_root(float32, 0, X); only X = MTH({}) =
    sha256("") is the tensor. A trainer that commits another X (data hidden in the state)
    loses at open_op; one that commits the canonical root wins against a challenger."""
    validate_program(ZERO_SIZE_PROGRAM)  # zero-size ops stay legal: the root is canonical
    canonical = tensor_root(np.zeros(0, np.float32))
    assert canonical == tensor_root_from_fields(1, 0, EMPTY_DATA_ROOT)
    secret = hashlib.sha256(b"42.0").digest()
    lie = tensor_root_from_fields(1, 0, secret)
    weight = tensor_root(np.ones(1, np.float32))
    before = state_tree([canonical, weight])
    after = state_tree([lie if trainer == "hides a value" else canonical, weight])
    spec = JobSpec(
        program_root=ZERO_SIZE_PROGRAM.root(), program_len=1, dataset_root=b"\x07" * 32,
        initial_root=before.root, bundle=b"\x08" * 32, steps=1, every=1, slots=2, stake=STAKE,
        bond=BOND, clock=CLOCK, window=WINDOW, train_time=3600,
    )  # fmt: skip
    job_id = new_job(tp, people["requester"], spec)
    tp.accept_job(job_id, tp.jobs(job_id).job_hash, sender=people["trainer"], value=STAKE)
    tp.commit_run(job_id, 0, [after.root], sender=people["trainer"])
    roots = [before.root, after.root]
    game_id = open_dispute(tp, job_id, people["watcher"], tuple(roots), 0)
    g = game_state(tp, game_id)
    assert g.phase == Phase.OPEN_OP  # one op per interval: straight to the opening
    desc = ZERO_SIZE_PROGRAM.ops[0].encode()
    old, new = canonical, lie if trainer == "hides a value" else canonical
    path = list(before.prove(0).path)
    data = secret if trainer == "hides a value" else EMPTY_DATA_ROOT
    tp.open_op(game_id, 0, desc, [], old, new, path, 0, data, b"", [], sender=people["trainer"])
    g = game_state(tp, game_id)
    if trainer == "hides a value":
        assert g.phase == Phase.CHALLENGER_WON
        assert tp.jobs(job_id).status == JobStatus.REJECTED
        tp.settle(game_id, sender=people["anyone"])
        assert tp.credits(people["watcher"]) == BOND + SHARE
        assert tp.credits(people["trainer"]) == 0
        assert tp.credits(people["requester"]) == REWARD
    else:
        assert g.phase == Phase.TRAINER_WON
        tp.settle(game_id, sender=people["anyone"])
        assert tp.credits(people["trainer"]) == BOND - BOND_BURN
    assert_books(tp)


# ---------------------------------------------------------------- 2. dispute swarm


@pytest.mark.slow  # ~1,100 trainer moves and as many attacker moves: 1-4 min
def test_swarm_of_100_disputes_cannot_time_out_a_one_tx_per_block_trainer() -> None:
    """100 frivolous disputes of an honest commitment, opened at once; the attackers answer
    every move in the block it lands in and stall at the end. The trainer sends one
    transaction per 12-s block, always in the game that has waited longest. It wins every
    game (nobody can time it out at any block), the attackers lose their bonds."""
    tp = deploy("deployed")
    requester, trainer, anyone = account(), account(), account()
    n = 100
    attackers = [account() for _ in range(n)]
    job_id = committed_job(tp, requester, trainer)
    committed = checkpoints("honest")
    drivers = []
    for who in attackers:  # liars: the "add" run disputes interval 1 and bisects into op 3
        game_id = open_dispute(tp, job_id, who, committed, 1)
        drivers.append(
            GameDriver(tp, game_id, trainer, who, computation("honest"), computation("add"))
        )
    by_id = {d.game_id: d for d in drivers}
    stall = (Phase.ELEMENT_PICK, Phase.ONE_STEP)  # attackers never send their losing move
    states = {d.game_id: d.state() for d in drivers}
    least_left, trainer_moves, blocks = CLOCK, 0, 0
    while not all(g.phase.over for g in states.values()):
        order = answer_order(list(states.items()))
        if order:
            boa.env.time_travel(seconds=BLOCK)
        else:  # only stalled games left: the next block in which one of them times out
            nxt = min(g.deadline for g in states.values() if not g.phase.over)
            boa.env.time_travel(seconds=max(BLOCK, nxt + 1 - boa.env.timestamp))
        blocks += 1
        now = boa.env.timestamp
        # the attackers try to time the trainer out where its deadline is closest
        waiting = [(states[gid].deadline, gid) for gid in order]
        if waiting:
            _, closest = min(waiting)
            data = tp.timeout.prepare_calldata(closest)
            res = boa.env.execute_code(to_address=tp.address, sender=anyone, data=data)
            assert res.is_error, f"the trainer was timed out in game {closest}"
        # the trainer: one move per block, in the game that has waited longest
        if order:
            d = by_id[order[0]]
            g = states[d.game_id]
            assert g.deadline >= now
            call = d.trainer_call(g)
            assert call is not None
            d.send(call, g.seq)
            states[d.game_id] = d.state()
            trainer_moves += 1
            least_left = min(least_left, states[d.game_id].trainer_clock)
        # the attackers answer at once, except the last, losing move; and they end every
        # stalled game as soon as they can, so that fewer games share the trainer's clock
        resolved = False
        for gid, g in list(states.items()):
            if g.phase.over or g.phase.trainer_moves:
                continue
            d = by_id[gid]
            if g.phase in stall:
                if now > g.deadline:
                    tp.timeout(gid, sender=anyone)
                    resolved = True
            else:
                d.send(d.challenger_call(g), g.seq)
                states[gid] = d.state()
        if resolved:  # fewer running games: every trainer deadline moved
            states = {d.game_id: d.state() for d in drivers}
    phases = [d.state().phase for d in drivers]
    assert phases == [Phase.TRAINER_WON] * n
    assert least_left > 0
    for d in drivers:
        tp.settle(d.game_id, sender=anyone)
    assert tp.credits(trainer) == n * (BOND - BOND_BURN)
    assert tp.burned() == n * BOND_BURN
    boa.env.time_travel(seconds=WINDOW + 1)
    tp.finalize(job_id, sender=anyone)
    assert tp.jobs(job_id).status == JobStatus.FINALIZED
    assert tp.credits(trainer) == n * (BOND - BOND_BURN) + REWARD + STAKE
    for who in attackers:
        assert tp.credits(who) == 0
    assert_books(tp)
    print(f"{trainer_moves} trainer moves in {blocks} blocks; least clock left {least_left} s")


def test_trainer_clock_is_shared_by_the_running_games(tp, people) -> None:
    """With n games running, the trainer's clock in each runs at 1/n of block time: after
    n * CLOCK seconds of silence it is out in every game, not before."""
    job_id = committed_job(tp, people["requester"], people["trainer"])
    committed = checkpoints("honest")
    games = [open_dispute(tp, job_id, account(), committed, c % 2) for c in range(3)]
    g = game_state(tp, games[0])
    assert g.deadline == g.last_move + 3 * CLOCK  # all three opened in the same second
    boa.env.time_travel(seconds=3 * CLOCK)
    for game_id in games:
        with reverts(tp, "trainer has time"):
            tp.timeout(game_id, sender=people["anyone"])
    boa.env.time_travel(seconds=1)
    tp.timeout(games[0], sender=people["anyone"])
    assert game_state(tp, games[0]).phase == Phase.CHALLENGER_WON
    # rejected: the cheater is no longer protected, its clock runs at block time
    assert game_state(tp, games[1]).live is False and game_state(tp, games[2]).live is False


# ---------------------------------------------------------------- 3. puppet race


@pytest.mark.parametrize("cheater", ["stalls", "plays"])
def test_puppet_race_pays_the_watcher_that_came_first(tp, people, cheater) -> None:
    """The trainer commits a faulty run; an honest watcher disputes first; the trainer's
    puppet disputes the same interval and the trainer loses that game fast. The watcher's
    game keeps running after the rejection, and whether the cheater stalls it (timeout) or
    plays it (one-step), the watcher gets exactly what it gets alone: bond + half the stake.
    The cheater and its puppet together lose the whole stake, as against the watcher alone."""
    trainer, puppet, watcher = people["trainer"], people["puppet"], people["watcher"]
    start = {a: balance(a) for a in (trainer, puppet, watcher)}
    job_id = committed_job(tp, people["requester"], trainer, "add")
    committed = checkpoints("add")
    w = GameDriver(
        tp, open_dispute(tp, job_id, watcher, committed, 1), trainer, watcher,
        computation("add"), computation("honest"),
    )  # fmt: skip
    w.step()
    w.step()  # the watcher's game is under way
    p = GameDriver(
        tp, open_dispute(tp, job_id, puppet, committed, 1), trainer, puppet,
        computation("add"), computation("honest"),
    )  # fmt: skip
    late = open_dispute(tp, job_id, people["anyone"], committed, 0)  # a liar, opened last
    assert p.play().phase == Phase.CHALLENGER_WON  # the puppet finishes first
    assert tp.jobs(job_id).status == JobStatus.REJECTED
    assert game_state(tp, w.game_id).live and not game_state(tp, late).live
    with reverts(tp, "game still live"):
        tp.abandon(w.game_id, sender=people["anyone"])
    with reverts(tp, "job not committed"):  # games after the winner are frozen
        tp.timeout(late, sender=people["anyone"])
    with reverts(tp, "games still open"):  # the winner so far, but an earlier game runs
        tp.settle(p.game_id, sender=people["anyone"])
    if cheater == "stalls":
        g = w.state()
        if not g.phase.trainer_moves:
            w.step()
            g = w.state()
        assert g.phase.trainer_moves
        boa.env.time_travel(seconds=g.trainer_clock)  # block time now: the job is rejected
        with reverts(tp, "trainer has time"):
            tp.timeout(w.game_id, sender=people["anyone"])
        boa.env.time_travel(seconds=1)
        tp.timeout(w.game_id, sender=people["anyone"])
        assert w.state().phase == Phase.CHALLENGER_WON
    else:
        assert w.play().phase == Phase.CHALLENGER_WON
    with reverts(tp, "games still open"):  # the share waits for every game of the job
        tp.settle(w.game_id, sender=people["anyone"])
    tp.settle(p.game_id, sender=people["anyone"])  # no longer the first: its bond back
    assert tp.credits(puppet) == BOND
    tp.abandon(late, sender=people["anyone"])
    tp.settle(w.game_id, sender=people["anyone"])
    tp.settle(late, sender=people["anyone"])
    assert tp.credits(watcher) == BOND + SHARE  # what it would have had alone
    assert tp.credits(people["requester"]) == REWARD
    assert tp.credits(people["anyone"]) == BOND
    assert tp.credits(trainer) == 0
    assert tp.burned() == STAKE - SHARE
    withdraw_all(tp, trainer, puppet, watcher)
    coalition = balance(trainer) + balance(puppet) - start[trainer] - start[puppet]
    assert coalition == -STAKE  # what it would have lost to the watcher alone
    assert balance(watcher) - start[watcher] == SHARE
    assert_books(tp)


def test_puppet_that_disputes_first_still_costs_half_the_stake(tp, people) -> None:
    """The residual case: a puppet opened before any watcher is the winner; the watcher's
    later game is abandoned with its bond back; the cheater still loses the burned half."""
    trainer, puppet, watcher = people["trainer"], people["puppet"], people["watcher"]
    start = balance(trainer) + balance(puppet)
    job_id = committed_job(tp, people["requester"], trainer, "add")
    committed = checkpoints("add")
    p = GameDriver(
        tp, open_dispute(tp, job_id, puppet, committed, 1), trainer, puppet,
        computation("add"), computation("honest"),
    )  # fmt: skip
    w = open_dispute(tp, job_id, watcher, committed, 1)
    assert p.play().phase == Phase.CHALLENGER_WON
    tp.abandon(w, sender=people["anyone"])
    for game_id in (p.game_id, w):
        tp.settle(game_id, sender=people["anyone"])
    assert tp.credits(watcher) == BOND
    withdraw_all(tp, trainer, puppet)
    assert balance(trainer) + balance(puppet) - start == -(STAKE - SHARE)
    assert_books(tp)


# ---------------------------------------------------------------- 4. job parameters

MAX = 2**64 - 1
BAD_PARAMS = [
    ({"train_time": MAX}, "bad train time"),  # accepted_at + train_time overflows
    ({"train_time": protocol_game.MAX_DURATION + 1}, "bad train time"),
    ({"train_time": 0}, "bad train time"),
    ({"window": MAX}, "bad window"),  # committed_at + window overflows
    ({"window": protocol_game.MIN_WINDOW - 1}, "bad window"),
    ({"clock": 1}, "bad clock"),  # a puppet times out an honest trainer in a second
    ({"clock": protocol_game.MIN_CLOCK - 1}, "bad clock"),
    ({"clock": MAX}, "bad clock"),
    ({"bond": 3}, "bond too small"),  # burns nothing: self-challenge free
    ({"bond": 0}, "bond too small"),  # griefing free
    ({"bond": protocol_game.MIN_BOND - 1}, "bond too small"),
    ({"stake": 0}, "stake too small"),
    ({"stake": protocol_game.MIN_STAKE - 1}, "stake too small"),
    ({"program_len": 2**32}, "program too long"),
    ({"every": 2**62, "steps": 2**62}, "interval too long"),  # k * L overflows uint64
]


@pytest.mark.parametrize(("params", "dev"), BAD_PARAMS, ids=[d for _, d in BAD_PARAMS])
def test_register_job_refuses_trapping_parameters(tp, people, params, dev) -> None:
    spec = job_spec().model_copy(update=params)  # unvalidated: the contract must refuse it
    assert job_problems(spec), "the Python mirror must refuse it too"
    with reverts(tp, dev):
        new_job(tp, people["requester"], spec)
    assert tp.job_count() == 0 and balance(tp.address) == 0


def test_register_job_accepts_the_bounds_themselves(tp, people) -> None:
    g = protocol_game
    for params in (
        {"clock": g.MIN_CLOCK, "window": g.MIN_WINDOW, "bond": g.MIN_BOND, "stake": g.MIN_STAKE},
        {"clock": g.MAX_DURATION, "window": g.MAX_DURATION, "train_time": g.MAX_DURATION},
    ):
        spec = job_spec(**params)
        assert job_problems(spec) == []
        job_id = new_job(tp, people["requester"], spec)
        tp.accept_job(job_id, tp.jobs(job_id).job_hash, sender=people["trainer"], value=spec.stake)
        # the far deadlines are plain arithmetic, no overflow
        with reverts(tp, "deadline not passed"):
            tp.expire_job(job_id, sender=people["anyone"])


def test_parameter_bounds_match_the_deployed_contract(tp) -> None:
    g = protocol_game
    for name in ("MIN_CLOCK", "MIN_WINDOW", "MAX_DURATION", "MIN_BOND", "MIN_STAKE"):
        assert getattr(tp, name)() == getattr(g, name), name


def test_accept_job_binds_the_job_hash(tp, people) -> None:
    job_id = new_job(tp, people["requester"])
    other = new_job(tp, people["requester"], job_spec(bond=2 * BOND))  # another spec
    real, wrong = tp.jobs(job_id).job_hash, tp.jobs(other).job_hash
    assert real != wrong
    for h in (wrong, b"\x00" * 32):
        with reverts(tp, "wrong job hash"):
            tp.accept_job(job_id, h, sender=people["trainer"], value=STAKE)
    assert tp.jobs(job_id).status == JobStatus.OPEN
    tp.accept_job(job_id, real, sender=people["trainer"], value=STAKE)
    assert tp.jobs(job_id).status == JobStatus.ACCEPTED
    assert_books(tp)


class _FakeMarket:
    """Just enough of protocol.market.Market for ProverService.step on an OPEN job."""

    def __init__(self, job: Any) -> None:
        self._job, self.sent = job, []

    def job(self, job_id: int) -> Any:
        return self._job

    def transact(self, fn: str, *args: Any, value: int = 0, key: str) -> Any:
        self.sent.append((fn, args))
        return None


@pytest.mark.parametrize(
    ("params", "why"),
    [
        ({"clock": 1}, "clock=1s outside"),
        ({"window": 2**64 - 1}, "window="),
        ({"bond": 3}, "bond=3 wei below"),
        ({"clock": protocol_game.MIN_CLOCK}, "needed for"),  # contract-legal, too short here
    ],
)
def test_prover_refuses_unsafe_jobs(caplog, params, why) -> None:
    """The prover never stakes on a job the contract would refuse, nor on one whose clock is
    too short for it to survive its configured number of parallel disputes; it says why."""
    from protocol.market import JobView
    from prover.service import ProverService

    spec = job_spec(**params)
    comp = computation("honest")
    reason = unsafe_job(spec, comp, survive=1000, seconds_per_move=60.0)
    assert reason is not None and why in reason
    view = JobView(
        spec=spec, job_hash=b"\x01" * 32, requester="0x" + "11" * 20, trainer="0x" + "00" * 20,
        reward=REWARD, status=JobStatus.OPEN, accepted_at=0, committed_at=0,
        run_root=b"\x00" * 32, open_games=0,
    )  # fmt: skip
    service = ProverService.__new__(ProverService)
    service.cfg = type("Cfg", (), {"job": 7, "survive": 1000, "seconds_per_move": 60.0})()
    service.market = _FakeMarket(view)
    service.agent = type("A", (), {"address": "0x" + "22" * 20})()
    service.comp = comp
    with caplog.at_level(logging.ERROR, logger="trainproof.prover"):
        status = service._step()  # the decision alone (step() adds the P&L line)
    assert status.done and status.status == JobStatus.OPEN
    assert service.market.sent == []  # no accept_job
    assert any("event=refused job=7" in r.getMessage() and why in r.getMessage()
               for r in caplog.records)  # fmt: skip


def test_prover_accepts_a_safe_job() -> None:
    assert unsafe_job(job_spec(), computation("honest")) is None
