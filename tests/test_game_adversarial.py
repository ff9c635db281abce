"""Adversarial tests of the job market and dispute game (contracts/TrainProof.vy), titanoboa.

Each test names one attack or misuse and asserts the exact `# dev:` revert reason, or the
outcome and every resulting balance. The job is digits-mlp's training step, N = 4, k = 2;
parties play from the honest computation or a faulty one (tests/game_fixtures.py). Every
test runs on two builds of the same source: "deployed" (Venom, as shipped), where a failed
check must revert and change nothing, and "debug" (legacy backend), where boa can also
name the `# dev:` reason of the check that failed (see game_fixtures.BUILDS for why).

- turn and sequencing: out of turn, wrong party, wrong phase, duplicate and stale moves,
  moves after the game ended or after the job was rejected;
- clocks: a move at exactly the limit, 1 s late, cumulative chess clocks, timeout by anyone;
- inclusion proofs in open_dispute, open_op (descriptor, slot, dataset) and one_step
  (operand slot and chunk): wrong index, wrong size, wrong sibling, wrong length;
- chunk descent: children not matching the node, a chunk not matching its leaf;
- a challenger naming a correct element loses at the one-step;
- windows: commit after train_time (expire_job), dispute after the window, finalize early,
  with a dispute open, twice; settle and withdraw twice; wrong stake and bond; k not dividing N;
- re-entrancy on withdraw (contracts/test/Reentrant.vy);
- several challengers (one honest; all lying) and a trainer challenging itself;
- the reference players of replay/dispute/players.py (through BoaMarket) play the same games as the
  GameDriver used here.
"""

from __future__ import annotations

from typing import Any

import boa
import pytest
from game_fixtures import (
    BOND,
    BOND_BURN_BPS,
    BPS,
    BUILDS,
    CLOCK,
    REWARD,
    STAKE,
    TRAIN_TIME,
    WINDOW,
    WINNER_SHARE_BPS,
    BoaMarket,
    Call,
    GameDriver,
    LogBook,
    account,
    balance,
    checkpoints,
    committed_job,
    computation,
    deploy,
    first_bad_interval,
    game_state,
    job_spec,
    new_job,
    open_dispute,
    reentrant_deployer,
    reverts,
    run_proof,
)

from protocol.commitments import chunk, chunk_tree
from protocol.game import JobStatus, Phase
from protocol.merkle import MerkleTree
from replay.dispute.players import ChallengerPlayer, TrainerPlayer, play, transition_opening
from replay.execute.state import as_committed

SHARE = STAKE * WINNER_SHARE_BPS // BPS
BOND_BURN = BOND * BOND_BURN_BPS // BPS
ZERO = b"\x00" * 32


@pytest.fixture(scope="module", params=BUILDS)
def tp(request: pytest.FixtureRequest) -> Any:
    return deploy(request.param)


@pytest.fixture(autouse=True)
def _isolated(tp: Any) -> Any:
    """Every test starts from the freshly deployed contract (state and clock rolled back)."""
    with boa.env.anchor():
        yield


@pytest.fixture
def people() -> dict[str, str]:
    return {name: account() for name in ("requester", "trainer", "challenger", "anyone")}


def dispute(
    tp: Any,
    people: dict[str, str],
    trainer: str = "honest",
    challenger: str = "honest",
    interval: int | None = None,
    challenger_account: str | None = None,
    job_id: int | None = None,
) -> GameDriver:
    """Commit ``trainer``'s computation (unless ``job_id`` is given) and open the dispute
    ``challenger``'s computation would open; a driver for the game."""
    if job_id is None:
        job_id = committed_job(tp, people["requester"], people["trainer"], trainer)
    committed = checkpoints(trainer)
    if interval is None:
        interval = first_bad_interval(checkpoints(challenger), committed)
        assert interval is not None
    who = challenger_account or people["challenger"]
    game_id = open_dispute(tp, job_id, who, committed, interval)
    return GameDriver(
        tp, game_id, people["trainer"], who, computation(trainer), computation(challenger)
    )


def snapshot(tp: Any, game_id: int) -> tuple[Any, ...]:
    return tuple(tp.game(game_id)), tp.held(), tp.burned()


def assert_reverts_unchanged(d: GameDriver, call: Call, dev: str, seq: int | None = None) -> None:
    """``call`` reverts with ``dev`` and leaves the game and the money as they were."""
    before = snapshot(d.tp, d.game_id)
    with reverts(d.tp, dev):
        d.send(call, seq)
    assert snapshot(d.tp, d.game_id) == before


def flip(word: bytes, at: int = 0) -> bytes:
    return word[:at] + bytes([word[at] ^ 1]) + word[at + 1 :]


def withdraw_all(tp: Any, *accounts: str) -> None:
    for a in accounts:
        if tp.credits(a) > 0:
            tp.withdraw(sender=a)


def assert_books(tp: Any) -> None:
    assert balance(tp.address) == tp.liabilities() == tp.held() + tp.burned()


# ---------------------------------------------------------------- job parameters


def test_register_job_k_not_dividing_n(tp, people) -> None:
    spec = job_spec()
    with reverts(tp, "k must divide N"):
        new_job(tp, people["requester"], spec.model_copy(update={"every": 3}))
    with reverts(tp, "bad steps"):
        new_job(tp, people["requester"], spec.model_copy(update={"every": 0}))
    assert tp.job_count() == 0 and balance(tp.address) == 0


def test_register_job_without_a_bundle(tp, people) -> None:
    """A job must name the bundle its inputs are published as: with none, nobody but the
    requester could ever check it."""
    spec = job_spec()
    with reverts(tp, "no bundle"):
        new_job(tp, people["requester"], spec.model_copy(update={"bundle": bytes(32)}))
    assert tp.job_count() == 0 and balance(tp.address) == 0
    new_job(tp, people["requester"], spec)
    assert tp.jobs(1).spec.bundle == spec.bundle


def test_accept_job_wrong_stake(tp, people) -> None:
    job_id = new_job(tp, people["requester"])
    for value in (0, STAKE - 1, STAKE + 1):
        with reverts(tp, "wrong stake"):
            tp.accept_job(job_id, tp.jobs(job_id).job_hash, sender=people["trainer"], value=value)
    tp.accept_job(job_id, tp.jobs(job_id).job_hash, sender=people["trainer"], value=STAKE)
    with reverts(tp, "job not open"):
        tp.accept_job(job_id, tp.jobs(job_id).job_hash, sender=people["anyone"], value=STAKE)
    assert tp.held() == REWARD + STAKE
    assert_books(tp)


def test_open_dispute_wrong_bond(tp, people) -> None:
    job_id = committed_job(tp, people["requester"], people["trainer"], "add")
    committed = checkpoints("add")
    for value in (0, BOND - 1, BOND + 1):
        with reverts(tp, "wrong bond"):
            open_dispute(tp, job_id, people["challenger"], committed, 1, bond=value)
    assert tp.game_count() == 0 and tp.held() == REWARD + STAKE


# ---------------------------------------------------------------- windows


def test_commit_at_the_deadline_succeeds(tp, people) -> None:
    job_id = new_job(tp, people["requester"])
    tp.accept_job(job_id, tp.jobs(job_id).job_hash, sender=people["trainer"], value=STAKE)
    boa.env.time_travel(seconds=TRAIN_TIME)
    with reverts(tp, "deadline not passed"):
        tp.expire_job(job_id, sender=people["anyone"])
    tp.commit_run(job_id, 0, list(checkpoints()[1:]), sender=people["trainer"])
    assert tp.jobs(job_id).status == JobStatus.COMMITTED


def test_commit_after_deadline_then_expire(tp, people) -> None:
    job_id = new_job(tp, people["requester"])
    tp.accept_job(job_id, tp.jobs(job_id).job_hash, sender=people["trainer"], value=STAKE)
    boa.env.time_travel(seconds=TRAIN_TIME + 1)
    with reverts(tp, "commit deadline passed"):
        tp.commit_run(job_id, 0, list(checkpoints()[1:]), sender=people["trainer"])
    tp.expire_job(job_id, sender=people["anyone"])  # anyone may expire it
    assert tp.jobs(job_id).status == JobStatus.EXPIRED
    assert tp.credits(people["requester"]) == REWARD + STAKE
    assert tp.credits(people["trainer"]) == 0
    with reverts(tp, "not accepted"):
        tp.expire_job(job_id, sender=people["anyone"])
    with reverts(tp, "not accepted"):
        tp.commit_run(job_id, 0, list(checkpoints()[1:]), sender=people["trainer"])
    assert_books(tp)


def test_dispute_at_window_end_succeeds_and_after_it_is_closed(tp, people) -> None:
    job_id = committed_job(tp, people["requester"], people["trainer"], "add")
    committed = checkpoints("add")
    boa.env.time_travel(seconds=WINDOW)
    open_dispute(tp, job_id, people["challenger"], committed, 1)  # the last second
    boa.env.time_travel(seconds=1)
    with reverts(tp, "window closed"):
        open_dispute(tp, job_id, people["anyone"], committed, 1)
    assert tp.game_count() == 1


def test_finalize_before_window_end(tp, people) -> None:
    job_id = committed_job(tp, people["requester"], people["trainer"])
    with reverts(tp, "window open"):
        tp.finalize(job_id, sender=people["anyone"])
    boa.env.time_travel(seconds=WINDOW)  # the window still includes this second
    with reverts(tp, "window open"):
        tp.finalize(job_id, sender=people["anyone"])
    boa.env.time_travel(seconds=1)
    tp.finalize(job_id, sender=people["anyone"])
    assert tp.credits(people["trainer"]) == REWARD + STAKE


def test_finalize_with_open_dispute(tp, people) -> None:
    committed_job(tp, people["requester"], people["trainer"])
    boa.env.time_travel(seconds=WINDOW - 10)
    d = dispute(tp, people, challenger="add", job_id=1)  # a lying challenger, just in time
    boa.env.time_travel(seconds=11)
    with reverts(tp, "dispute open"):
        tp.finalize(1, sender=people["anyone"])
    assert d.play().phase == Phase.TRAINER_WON  # the game outlives the window
    tp.finalize(1, sender=people["anyone"])
    assert tp.jobs(1).status == JobStatus.FINALIZED


def test_double_finalize(tp, people) -> None:
    job_id = committed_job(tp, people["requester"], people["trainer"])
    boa.env.time_travel(seconds=WINDOW + 1)
    tp.finalize(job_id, sender=people["anyone"])
    with reverts(tp, "not committed"):
        tp.finalize(job_id, sender=people["anyone"])
    assert tp.credits(people["trainer"]) == REWARD + STAKE
    assert tp.held() == REWARD + STAKE
    assert_books(tp)


def test_double_withdraw(tp, people) -> None:
    job_id = committed_job(tp, people["requester"], people["trainer"])
    boa.env.time_travel(seconds=WINDOW + 1)
    tp.finalize(job_id, sender=people["anyone"])
    before = balance(people["trainer"])
    tp.withdraw(sender=people["trainer"])
    assert balance(people["trainer"]) == before + REWARD + STAKE
    with reverts(tp, "nothing to withdraw"):
        tp.withdraw(sender=people["trainer"])
    with reverts(tp, "nothing to withdraw"):
        tp.withdraw(sender=people["anyone"])
    assert balance(people["trainer"]) == before + REWARD + STAKE
    assert balance(tp.address) == tp.held() == tp.burned() == 0


def test_double_settle(tp, people) -> None:
    d = dispute(tp, people, challenger="fill")
    with reverts(tp, "game not over"):
        tp.settle(d.game_id, sender=people["anyone"])
    assert d.play().phase == Phase.TRAINER_WON
    tp.settle(d.game_id, sender=people["anyone"])
    with reverts(tp, "already settled"):
        tp.settle(d.game_id, sender=people["anyone"])
    with reverts(tp, "game not over"):
        tp.settle(d.game_id + 1, sender=people["anyone"])  # no such game
    assert tp.credits(people["trainer"]) == BOND - BOND_BURN
    assert tp.burned() == BOND_BURN
    assert game_state(tp, d.game_id).settled
    assert_books(tp)


# ---------------------------------------------------------------- turns and sequencing


def test_move_out_of_turn(tp, people) -> None:
    d = dispute(tp, people, trainer="add")
    g = d.state()
    assert g.phase == Phase.TRACE_REVEAL and tp.to_move(d.game_id) == people["trainer"]
    reveal = d.trainer_call(g)
    assert reveal is not None
    values = reveal.args[0]
    # the challenger moves in the trainer's phase, with any challenger move
    assert_reverts_unchanged(
        d, Call("pick", (values, 0), people["challenger"]), "not this party's turn"
    )
    assert_reverts_unchanged(
        d, Call("pick_child", (ZERO, ZERO, True), people["challenger"]), "not this party's turn"
    )
    # a third party sends the trainer's move
    assert_reverts_unchanged(d, reveal.replace(sender=people["anyone"]), "not the trainer")
    # the right party, the wrong kind of move for the phase
    assert_reverts_unchanged(
        d, Call("reveal_children", (ZERO, ZERO), people["trainer"]), "wrong phase"
    )
    d.send(reveal)
    g = d.state()
    assert g.phase == Phase.TRACE_PICK and tp.to_move(d.game_id) == people["challenger"]
    pick = d.challenger_call(g)
    # now the trainer is out of turn; neither it nor a third party may pick
    assert_reverts_unchanged(d, reveal, "not this party's turn")
    assert_reverts_unchanged(d, pick.replace(sender=people["trainer"]), "not the challenger")
    assert_reverts_unchanged(d, pick.replace(sender=people["anyone"]), "not the challenger")
    assert_reverts_unchanged(
        d, Call("pick_child", (ZERO, ZERO, True), people["challenger"]), "wrong phase"
    )
    d.send(pick)
    assert d.state().seq == 2


def test_duplicate_move_is_stale(tp, people) -> None:
    d = dispute(tp, people, trainer="add")
    reveal = d.trainer_call()
    d.send(reveal, 0)
    # the same move again (a replay, or a re-sent transaction)
    assert_reverts_unchanged(d, reveal, "stale move", seq=0)
    pick = d.challenger_call()
    d.send(pick, 1)
    assert_reverts_unchanged(d, pick, "stale move", seq=1)
    assert d.state().seq == 2 and d.state().phase == Phase.TRACE_REVEAL


def test_move_with_wrong_seq(tp, people) -> None:
    d = dispute(tp, people, trainer="add")
    d.send(d.trainer_call())
    g = d.state()
    pick = d.challenger_call(g)
    # a move computed against another state of the game names another move count
    for seq in (g.seq - 1, g.seq + 1, 0, 2**32):
        assert_reverts_unchanged(d, pick, "stale move", seq=seq)
    d.send(pick, g.seq)


def test_move_after_resolution(tp, people) -> None:
    d = dispute(tp, people, trainer="fill")
    last: dict[Phase, Call] = {}
    while not (g := d.state()).phase.over:
        call = d.next_call(g)
        assert call is not None
        last[g.phase] = call
        d.send(call, g.seq)
    assert g.phase == Phase.CHALLENGER_WON
    assert tp.to_move(d.game_id) == "0x" + "00" * 20
    for call in last.values():
        for seq in (g.seq, g.seq - 1):
            with reverts(tp, "game not running"):
                d.send(call, seq)
    with reverts(tp, "game not running"):
        tp.timeout(d.game_id, sender=people["anyone"])
    with reverts(tp, "game not running"):
        tp.abandon(d.game_id, sender=people["anyone"])
    with reverts(tp, "game not running"):
        tp.timeout(d.game_id + 1, sender=people["anyone"])  # no such game


# ---------------------------------------------------------------- clocks


@pytest.mark.parametrize("late", ["trainer", "challenger"])
def test_last_second_move_then_clock_expiry(tp, people, late) -> None:
    """Each party moves with exactly its whole clock used (the move counts); then the
    ``late`` party, with no time left, moves one second late: it reverts, and anyone's
    timeout makes that party lose."""
    d = dispute(tp, people, trainer="add")
    boa.env.time_travel(seconds=CLOCK)
    with reverts(tp, "trainer has time"):
        tp.timeout(d.game_id, sender=people["anyone"])
    d.send(d.trainer_call())
    g = d.state()
    assert (g.trainer_clock, g.challenger_clock, g.phase) == (0, CLOCK, Phase.TRACE_PICK)
    boa.env.time_travel(seconds=CLOCK)
    with reverts(tp, "challenger has time"):
        tp.timeout(d.game_id, sender=people["anyone"])
    d.send(d.challenger_call())
    g = d.state()
    assert (g.trainer_clock, g.challenger_clock, g.phase) == (0, 0, Phase.TRACE_REVEAL)
    if late == "challenger":
        d.send(d.trainer_call())  # in the same second: a clock at 0 still allows that
        assert d.state().phase == Phase.TRACE_PICK
    call = d.next_call()
    assert call is not None and call.sender == people[late]
    boa.env.time_travel(seconds=1)
    assert_reverts_unchanged(d, call, "clock expired")
    tp.timeout(d.game_id, sender=people["anyone"])
    winner = Phase.TRAINER_WON if late == "challenger" else Phase.CHALLENGER_WON
    assert d.state().phase == winner


def test_clocks_are_cumulative(tp, people) -> None:
    d = dispute(tp, people, challenger="add")
    boa.env.time_travel(seconds=CLOCK - 10)
    d.step()  # trainer: 10 s left
    boa.env.time_travel(seconds=100)
    d.step()  # challenger: CLOCK - 100 left
    g = d.state()
    assert (g.trainer_clock, g.challenger_clock) == (10, CLOCK - 100)
    assert g.phase == Phase.TRACE_REVEAL
    call = d.trainer_call(g)
    boa.env.time_travel(seconds=11)  # more than what is left of the trainer's clock
    assert_reverts_unchanged(d, call, "clock expired")
    tp.timeout(d.game_id, sender=people["anyone"])
    assert d.state().phase == Phase.CHALLENGER_WON  # an honest trainer that stalls loses


def test_timeout_by_third_party(tp, people) -> None:
    d = dispute(tp, people, trainer="second-slot")
    g = d.play_until(Phase.OPEN_OP)
    assert d.trainer_call(g) is None  # its transition changed two slots: it cannot open it
    boa.env.time_travel(seconds=g.trainer_clock)
    with reverts(tp, "trainer has time"):
        tp.timeout(d.game_id, sender=people["anyone"])
    boa.env.time_travel(seconds=1)
    stranger = account(0)  # any address, even one without funds
    tp.timeout(d.game_id, sender=stranger)
    assert d.state().phase == Phase.CHALLENGER_WON
    assert tp.jobs(1).status == JobStatus.REJECTED
    tp.settle(d.game_id, sender=stranger)
    assert tp.credits(people["challenger"]) == BOND + SHARE
    assert tp.credits(people["requester"]) == REWARD
    assert tp.credits(stranger) == 0
    assert_books(tp)


# ---------------------------------------------------------------- inclusion proofs


def _other_tree_proof(roots: tuple[bytes, ...], index: int) -> list[bytes]:
    """A proof of the same leaf in a tree with one more leaf (a wrong tree size)."""
    return run_proof((*roots, b"\x42" * 32), index)


@pytest.mark.parametrize(
    ("case", "dev"),
    [
        ("wrong index: proofs of interval 0 for interval 1", "bad proof of C_c"),
        ("wrong index: roots of interval 0, proofs of interval 1", "bad proof of C_c"),
        ("wrong size: lo proof from a larger tree", "bad proof of C_c"),
        ("wrong size: hi proof from a larger tree", "bad proof of C_c+1"),
        ("wrong sibling in lo proof", "bad proof of C_c"),
        ("wrong sibling in hi proof", "bad proof of C_c+1"),
        ("lo proof one hash too long", "bad proof of C_c"),
        ("hi proof one hash too short", "bad proof of C_c+1"),
        ("hi root not committed", "bad proof of C_c+1"),
        ("no such interval", "no such interval"),
    ],
)
def test_open_dispute_invalid_proofs(tp, people, case, dev) -> None:
    job_id = committed_job(tp, people["requester"], people["trainer"], "add")
    roots = checkpoints("add")
    c = 1
    lo, lo_p, hi, hi_p = roots[c], run_proof(roots, c), roots[c + 1], run_proof(roots, c + 1)
    if case.startswith("wrong index: proofs"):
        lo_p, hi_p = run_proof(roots, 0), run_proof(roots, 1)
    elif case.startswith("wrong index: roots"):
        lo, hi = roots[0], roots[1]
    elif case == "wrong size: lo proof from a larger tree":
        lo_p = _other_tree_proof(roots, c)
    elif case == "wrong size: hi proof from a larger tree":
        hi_p = _other_tree_proof(roots, c + 1)
    elif case == "wrong sibling in lo proof":
        lo_p[0] = flip(lo_p[0])
    elif case == "wrong sibling in hi proof":
        hi_p[-1] = flip(hi_p[-1], 31)
    elif case == "lo proof one hash too long":
        lo_p = [*lo_p, lo_p[-1]]
    elif case == "hi proof one hash too short":
        hi_p = hi_p[:-1]
    elif case == "hi root not committed":
        hi = checkpoints("honest")[c + 1]
    elif case == "no such interval":
        c = 2
    with reverts(tp, dev):
        tp.open_dispute(job_id, c, lo, lo_p, hi, hi_p, sender=people["challenger"], value=BOND)
    assert tp.game_count() == 0 and tp.held() == REWARD + STAKE


OPEN_OP_CASES = [
    ("descriptor of another op, with its own proof (wrong index)", "bad descriptor proof"),
    ("descriptor proof from a larger program (wrong size)", "bad descriptor proof"),
    ("wrong sibling in descriptor proof", "bad descriptor proof"),
    ("descriptor proof one hash too long", "bad descriptor proof"),
    ("descriptor proof one hash too short", "bad descriptor proof"),
    ("wrong sibling in slot proof", "pre-state mismatch"),
    ("slot proof of another slot (wrong index)", "pre-state mismatch"),
    ("slot proof from a larger state (wrong size)", "pre-state mismatch"),
    ("slot proof one hash too long", "wrong proof length"),
    ("slot proof one hash too short", "wrong proof length"),
    ("wrong old value", "pre-state mismatch"),
    ("wrong new value", "post-state mismatch"),
    ("wrong numel", "wrong numel"),
    ("wrong data root", "tensor fields mismatch"),
]


@pytest.mark.parametrize(("case", "dev"), OPEN_OP_CASES)
def test_open_op_invalid_proofs(tp, people, case, dev) -> None:
    d = dispute(tp, people, challenger="add")  # a lying challenger; the trainer is honest
    g = d.play_until(Phase.OPEN_OP)
    call = d.trainer_call(g)
    assert call is not None
    desc, desc_p, old, new, slot_p, numel, droot, leaf, leaf_p = call.args
    desc_p, slot_p = list(desc_p), list(slot_p)  # copies: the honest call is sent after
    comp = d.trainer_comp
    t, j = d.opened_op(comp, g)
    trace = comp.trace(t)
    out = comp.program.ops[j].out
    if case.startswith("descriptor of another op"):
        desc, desc_p = comp.program.ops[j + 1].encode(), comp.program_proof(j + 1)
    elif case.startswith("descriptor proof from a larger"):
        leaves = [*comp.program.encoded(), comp.program.ops[j].encode()]
        desc_p = list(MerkleTree.from_leaves(leaves).prove(j).path)
    elif case == "wrong sibling in descriptor proof":
        desc_p[2] = flip(desc_p[2])
    elif case == "descriptor proof one hash too long":
        desc_p = [*desc_p, ZERO]
    elif case == "descriptor proof one hash too short":
        desc_p = desc_p[:-1]
    elif case == "wrong sibling in slot proof":
        slot_p[1] = flip(slot_p[1])
    elif case.startswith("slot proof of another slot"):
        slot_p = list(trace.state_tree(j).prove(out + 1).path)
    elif case.startswith("slot proof from a larger state"):
        roots = [*trace.slot_roots(j), None]
        from protocol.commitments import state_tree

        slot_p = list(state_tree(roots).prove(out).path)
    elif case == "slot proof one hash too long":
        slot_p = [*slot_p, ZERO]
    elif case == "slot proof one hash too short":
        slot_p = slot_p[:-1]
    elif case == "wrong old value":
        old = flip(old)
    elif case == "wrong new value":
        new = flip(new)
    elif case == "wrong numel":
        numel += 1
    elif case == "wrong data root":
        droot = flip(droot)
    bad = call.replace(desc, desc_p, old, new, slot_p, numel, droot, leaf, leaf_p)
    assert_reverts_unchanged(d, bad, dev)
    d.send(call)  # the honest open still works
    assert d.state().phase == Phase.CHUNK_REVEAL


@pytest.mark.parametrize(
    ("case", "dev"),
    [
        ("wrong sibling in dataset proof", "bad dataset proof"),
        ("dataset proof one hash too long", "bad dataset proof"),
        ("another step's leaf and proof (wrong index)", "bad dataset proof"),
        ("another step's batch, this step's proof", "bad dataset proof"),
    ],
)
def test_open_op_load_batch_invalid_proofs(tp, people, case, dev) -> None:
    d = dispute(tp, people, challenger="batch")  # disputes step 1's LOAD_BATCH, wrongly
    g = d.play_until(Phase.OPEN_OP)
    call = d.trainer_call(g)
    assert call is not None
    *head, leaf, leaf_p = call.args
    leaf_p = list(leaf_p)
    comp = d.trainer_comp
    t, _ = d.opened_op(comp, g)
    if case == "wrong sibling in dataset proof":
        leaf_p[0] = flip(leaf_p[0])
    elif case == "dataset proof one hash too long":
        leaf_p = [*leaf_p, ZERO]
    elif case.startswith("another step's leaf and proof"):
        leaf, leaf_p = comp.dataset.leaf(t + 1), comp.dataset_proof(t + 1)
    else:
        leaf = comp.dataset.leaf(t + 1)
    assert_reverts_unchanged(d, call.replace(*head, leaf, leaf_p), dev)
    d.send(call)
    assert d.state().phase == Phase.TRAINER_WON


def test_open_op_wrong_batch_loses(tp, people) -> None:
    """A trainer that loaded another step's batch cannot open its op: its only openings
    revert, and it loses on time."""
    d = dispute(tp, people, trainer="batch")
    g = d.play_until(Phase.OPEN_OP)
    assert d.trainer_call(g) is None
    t, j = d.opened_op(computation("honest"), g)
    opening = transition_opening(computation("honest"), t, j)
    right = Call(opening.fn, opening.args, d.trainer)
    # the honest opening does not match the roots this trainer committed
    assert_reverts_unchanged(d, right, "post-state mismatch")
    # its own transition, with the batch leaf it really loaded: not the step's leaf
    desc, desc_p, old, new, slot_p, numel, droot, _, _ = right.args
    comp = computation("batch")
    t, j = d.opened_op(comp, g)
    new = comp.trace(t).slot_roots(j + 1)[comp.program.ops[j].out]
    wrong = right.replace(
        desc, desc_p, old, new, slot_p, numel, droot, comp.dataset.leaf(t), comp.dataset_proof(t)
    )
    assert_reverts_unchanged(d, wrong, "wrong batch")
    assert d.play().phase == Phase.CHALLENGER_WON


ONE_STEP_CASES = [
    ("wrong sibling in operand slot proof", "bad operand slot proof"),
    ("operand slot proof one hash too long", "bad operand slot proof"),
    ("operand slot proof one hash too short", "bad operand slot proof"),
    ("operand slot proof from a larger state (wrong size)", "bad operand slot proof"),
    ("another operand's slot (wrong index)", "bad operand slot proof"),
    ("wrong operand numel", "operand fields mismatch"),
    ("wrong operand data root", "operand fields mismatch"),
    ("wrong sibling in chunk proof", "bad operand chunk proof"),
    ("chunk proof one hash too long", "bad operand chunk proof"),
    ("chunk proof one hash too short", "bad operand chunk proof"),
    ("another chunk with its proof (wrong index)", "bad operand chunk proof"),
    ("chunk one byte short", "bad operand chunk proof"),
    ("chunk with a changed element", "bad operand chunk proof"),
    ("one operand missing", "wrong operand count"),
    ("another descriptor", "descriptor differs"),
]


@pytest.mark.parametrize(("case", "dev"), ONE_STEP_CASES)
def test_one_step_invalid_proofs(tp, people, case, dev) -> None:
    d = dispute(tp, people, challenger="add")  # disputes op 3 (ADD) element 5, wrongly
    g = d.play_until(Phase.ONE_STEP)
    call = d.challenger_call(g)
    desc, ws = call.args
    ws = [[list(x) if isinstance(x, list) else x for x in w] for w in ws]  # deep copies
    comp = d.challenger_comp
    t, j = d.opened_op(comp, g)
    trace = comp.trace(t)
    op = comp.program.ops[j]
    w = ws[0]  # (slot_value, slot_proof, numel, data_root, chunk, chunk_proof)
    if case == "wrong sibling in operand slot proof":
        w[1][0] = flip(w[1][0])
    elif case == "operand slot proof one hash too long":
        w[1] = [*w[1], ZERO]
    elif case == "operand slot proof one hash too short":
        w[1] = w[1][:-1]
    elif case.startswith("operand slot proof from a larger state"):
        from protocol.commitments import state_tree

        w[1] = list(state_tree([*trace.slot_roots(j), None]).prove(op.operands[0].slot).path)
    elif case.startswith("another operand's slot"):
        ws[0] = list(ws[1])
    elif case == "wrong operand numel":
        w[2] += 1
    elif case == "wrong operand data root":
        w[3] = flip(w[3])
    elif case == "wrong sibling in chunk proof":
        w[5][0] = flip(w[5][0])
    elif case == "chunk proof one hash too long":
        w[5] = [*w[5], ZERO]
    elif case == "chunk proof one hash too short":
        w[5] = w[5][:-1]
    elif case.startswith("another chunk"):
        value = trace.slot_value(j, op.operands[0].slot)
        raw = as_committed(value).reshape(-1)
        assert w[4] == chunk(raw, 0)  # element 5 reads chunk 0; send chunk 1 instead
        w[4], w[5] = chunk(raw, 1), list(chunk_tree(raw).prove(1).path)
    elif case == "chunk one byte short":
        w[4] = w[4][:-1]
    elif case == "chunk with a changed element":
        w[4] = flip(w[4], 4 * g.element)
    elif case == "one operand missing":
        ws = ws[:1]
    elif case == "another descriptor":
        desc = comp.program.ops[j + 1].encode()
    assert_reverts_unchanged(d, call.replace(desc, [tuple(x) for x in ws]), dev)
    d.send(call)
    assert d.state().phase == Phase.TRAINER_WON


# ---------------------------------------------------------------- chunk descent


def test_children_not_matching_node(tp, people) -> None:
    d = dispute(tp, people, trainer="add")
    g = d.play_until(Phase.CHUNK_REVEAL)
    call = d.trainer_call(g)
    left, right = call.args
    for bad in ((right, left), (flip(left), right), (left, flip(right, 31)), (ZERO, ZERO)):
        assert_reverts_unchanged(d, call.replace(*bad), "children mismatch")
    d.send(call)
    pick = d.challenger_call()
    assert_reverts_unchanged(d, pick.replace(right, left, pick.args[2]), "children mismatch")
    assert_reverts_unchanged(d, pick.replace(flip(left), right, pick.args[2]), "children mismatch")
    d.send(pick)
    assert d.play().phase == Phase.CHALLENGER_WON


def test_chunk_reveal_not_matching_leaf(tp, people) -> None:
    d = dispute(tp, people, trainer="add")
    g = d.play_until(Phase.CHUNK_OPEN)
    call = d.trainer_call(g)
    (data,) = call.args
    raw = d.output_tensor(d.trainer_comp, g)
    other = chunk(raw, g.node_lo + 1)
    honest_chunk = chunk(d.output_tensor(computation("honest"), g), g.node_lo)
    for bad in (other, honest_chunk, data[:-1], flip(data, 100)):
        assert_reverts_unchanged(d, call.replace(bad), "chunk mismatch")
    with boa.reverts():  # longer than Bytes[1024]: rejected when decoding the calldata
        d.send(call.replace(data + b"\x00"))
    d.send(call)
    g = d.state()
    assert g.phase == Phase.ELEMENT_PICK
    pick = d.challenger_call(g)
    chunk_arg, index, desc = pick.args
    assert_reverts_unchanged(d, pick.replace(honest_chunk, index, desc), "chunk mismatch")
    assert_reverts_unchanged(d, pick.replace(chunk_arg, 256, desc), "no such element")
    other_desc = d.trainer_comp.program.ops[g.op + 1].encode()
    assert_reverts_unchanged(d, pick.replace(chunk_arg, index, other_desc), "descriptor differs")
    d.send(pick)
    assert d.play().phase == Phase.CHALLENGER_WON


def test_bisection_values_must_match_the_reveal(tp, people) -> None:
    d = dispute(tp, people, trainer="add")
    reveal = d.trainer_call()
    (values,) = reveal.args
    assert len(values) == 7
    for bad in (values[:-1], [*values, ZERO]):
        assert_reverts_unchanged(d, reveal.replace(bad), "wrong number of values")
    d.send(reveal)
    pick = d.challenger_call()
    _, part = pick.args
    assert_reverts_unchanged(d, pick.replace([flip(values[0]), *values[1:]], part),
                             "values differ from the reveal")  # fmt: skip
    assert_reverts_unchanged(d, pick.replace(values, 8), "no such part")
    d.send(pick)


@pytest.mark.parametrize("index", ["its own disputed element", "a neighbour"])
def test_challenger_names_correct_element(tp, people, index) -> None:
    """A challenger that disputes an element the trainer got right reaches the one-step
    (the game does not end early) and loses there."""
    d = dispute(tp, people, challenger="add")
    g = d.play_until(Phase.ELEMENT_PICK)
    pick = d.challenger_call(g)
    data, own, desc = pick.args
    chosen = own if index == "its own disputed element" else own + 1
    d.send(pick.replace(data, chosen, desc))
    g = d.state()
    assert g.phase == Phase.ONE_STEP
    assert g.element == g.node_lo * 256 + chosen
    # anyone may send the verdict; the honest operands give the trainer's value
    verdict = Call("one_step", (desc, d.witnesses(g)), people["anyone"])
    d.send(verdict)
    assert d.state().phase == Phase.TRAINER_WON
    tp.settle(d.game_id, sender=people["anyone"])
    assert tp.credits(people["trainer"]) == BOND - BOND_BURN
    assert tp.credits(people["challenger"]) == 0
    assert tp.jobs(1).status == JobStatus.COMMITTED


# ---------------------------------------------------------------- the reference players


@pytest.mark.parametrize(
    ("trainer", "challenger", "trainer_wins"),
    [
        ("add", "honest", False),  # one-step
        ("matmul", "honest", False),  # partial bisection
        ("fill", "honest", False),  # decided at the element pick
        ("batch", "honest", False),  # the trainer cannot open LOAD_BATCH: timeout
        ("second-slot", "honest", False),  # the trainer cannot open: timeout
        ("honest", "add", True),
        ("honest", "matmul", True),
        ("honest", "batch", True),
    ],
)
def test_reference_players_agree_with_the_driver(
    tp, people, trainer, challenger, trainer_wins
) -> None:
    """replay.dispute.players's players, through BoaMarket, play the same game as GameDriver: the
    same moves in the same phases, the same timeouts, the same verdict."""
    book = LogBook()
    job_id = committed_job(tp, people["requester"], people["trainer"], trainer)
    t_player = TrainerPlayer(BoaMarket(tp, people["trainer"], book), computation(trainer), job_id)
    c_player = ChallengerPlayer(
        BoaMarket(tp, people["challenger"], book), computation(challenger), job_id
    )
    committed = list(checkpoints(trainer))
    interval = c_player.first_bad_interval(committed)
    assert interval is not None
    game_id = c_player.open(committed, interval, BOND)
    assert game_id is not None
    result = play(t_player, c_player, game_id, lambda s: boa.env.time_travel(seconds=s))
    assert result.trainer_won == trainer_wins
    # the same dispute of a second, identical job, played by the driver
    d = dispute(tp, people, trainer, challenger)
    phases, timeouts = [], 0
    while not (g := d.state()).phase.over:
        if d.next_call(g) is None:
            timeouts += 1
        else:
            phases.append(g.phase)
        d.step()
    assert (g.phase == Phase.TRAINER_WON) == trainer_wins
    assert [m.phase for m in result.moves if m.seq >= 0] == phases
    assert result.timeouts == timeouts


# ---------------------------------------------------------------- re-entrancy


def _attacker_earns_credit(tp: Any, requester: str) -> Any:
    """A Reentrant contract that became a trainer, committed honestly and was finalised."""
    attacker = reentrant_deployer().deploy(tp.address)
    funder = account()
    job_id = new_job(tp, requester)
    data = tp.accept_job.prepare_calldata(job_id, tp.jobs(job_id).job_hash)
    attacker.forward(data, value=STAKE, sender=funder)
    attacker.forward(tp.commit_run.prepare_calldata(job_id, 0, list(checkpoints()[1:])))
    boa.env.time_travel(seconds=WINDOW + 1)
    tp.finalize(job_id)
    assert tp.credits(attacker.address) == REWARD + STAKE
    return attacker


def test_reentrant_withdraw_gets_credit_once(tp, people) -> None:
    attacker = _attacker_earns_credit(tp, people["requester"])
    other = committed_job(tp, people["requester"], people["trainer"])  # wei of others held
    held_before = tp.held()
    attacker.attack()
    assert attacker.attempts() == 1
    assert attacker.reentered() == 0  # the re-entered withdraw failed
    assert attacker.payments() == 1
    assert balance(attacker.address) == attacker.received() == REWARD + STAKE
    assert tp.credits(attacker.address) == 0
    assert tp.held() == held_before - (REWARD + STAKE) == REWARD + STAKE
    assert_books(tp)
    with reverts(tp, "nothing to withdraw"):
        attacker.attack()
    assert tp.jobs(other).status == JobStatus.COMMITTED


def test_reentrant_withdraw_reverting_receiver_keeps_credit(tp, people) -> None:
    """A receiver that fails when its re-entry fails makes the whole withdraw revert: it
    keeps its credit, and can withdraw it (once) when it stops re-entering."""
    attacker = _attacker_earns_credit(tp, people["requester"])
    attacker.set_mode(True, 1)
    with boa.reverts():
        attacker.attack()
    assert tp.credits(attacker.address) == REWARD + STAKE
    assert balance(attacker.address) == 0
    attacker.set_mode(False, 0)
    attacker.attack()
    assert balance(attacker.address) == REWARD + STAKE and attacker.reentered() == 0
    assert balance(tp.address) == tp.liabilities() == 0


# ---------------------------------------------------------------- several challengers


def test_many_challengers_one_honest(tp, people) -> None:
    """A faulty commitment disputed by an honest challenger and two liars: the honest one
    wins, the trainer is slashed, the liars' games are abandoned and their bonds refunded."""
    job_id = committed_job(tp, people["requester"], people["trainer"], "add")
    liar_a, liar_b = account(), account()
    start = {a: balance(a) for a in (people["challenger"], liar_a, liar_b, people["trainer"])}
    honest = dispute(tp, people, trainer="add", challenger="honest", job_id=job_id)
    lie_a = dispute(tp, people, "add", "batch", challenger_account=liar_a, job_id=job_id)
    lie_b = dispute(tp, people, "add", "fill", challenger_account=liar_b, job_id=job_id)
    assert (lie_a.state().interval, lie_b.state().interval) == (0, 1)
    for _ in range(3):  # the games interleave
        lie_a.step()
        lie_b.step()
        honest.step()
    assert tp.jobs(job_id).open_games == 3
    with reverts(tp, "job not rejected"):
        tp.abandon(lie_a.game_id, sender=people["anyone"])
    assert honest.play().phase == Phase.CHALLENGER_WON
    assert tp.jobs(job_id).status == JobStatus.REJECTED
    assert tp.jobs(job_id).open_games == 2
    # the other games are frozen: no move, no timeout, no finalize
    for d in (lie_a, lie_b):
        g = d.state()
        call = d.next_call(g)
        assert call is not None
        with reverts(tp, "job not committed"):
            d.send(call, g.seq)
        boa.env.time_travel(seconds=CLOCK + 1)
        with reverts(tp, "job not committed"):
            tp.timeout(d.game_id, sender=people["anyone"])
        with reverts(tp, "game not over"):
            tp.settle(d.game_id, sender=people["anyone"])
    with reverts(tp, "not committed"):
        tp.finalize(job_id, sender=people["anyone"])
    for d in (lie_a, lie_b):
        tp.abandon(d.game_id, sender=people["anyone"])
        assert d.state().phase == Phase.ABANDONED
    assert tp.jobs(job_id).open_games == 0
    for d in (honest, lie_a, lie_b):
        tp.settle(d.game_id, sender=people["anyone"])
    assert tp.credits(people["challenger"]) == BOND + SHARE
    assert tp.credits(liar_a) == tp.credits(liar_b) == BOND
    assert tp.credits(people["requester"]) == REWARD
    assert tp.credits(people["trainer"]) == 0
    assert tp.burned() == STAKE - SHARE
    withdraw_all(tp, people["challenger"], liar_a, liar_b, people["requester"])
    assert balance(people["challenger"]) == start[people["challenger"]] + SHARE
    assert balance(liar_a) == start[liar_a] and balance(liar_b) == start[liar_b]
    assert balance(people["trainer"]) == start[people["trainer"]]  # its stake is gone
    assert tp.held() == 0 and balance(tp.address) == tp.liabilities() == STAKE - SHARE


def test_many_challengers_all_lie(tp, people) -> None:
    """An honest commitment disputed by three liars: the trainer wins every game, collects
    the bonds less the burned share, and is finalised."""
    job_id = committed_job(tp, people["requester"], people["trainer"])
    liars = {name: account() for name in ("add", "matmul", "batch")}
    start = {a: balance(a) for a in (*liars.values(), people["trainer"])}
    games = [
        dispute(tp, people, "honest", name, challenger_account=who, job_id=job_id)
        for name, who in liars.items()
    ]
    while not all(d.state().phase.over for d in games):
        for d in games:
            d.step()
    assert [d.state().phase for d in games] == [Phase.TRAINER_WON] * 3
    for d in games:
        tp.settle(d.game_id, sender=people["anyone"])
    assert tp.credits(people["trainer"]) == 3 * (BOND - BOND_BURN)
    assert tp.burned() == 3 * BOND_BURN
    boa.env.time_travel(seconds=WINDOW + 1)
    tp.finalize(job_id, sender=people["anyone"])
    assert tp.credits(people["trainer"]) == 3 * (BOND - BOND_BURN) + REWARD + STAKE
    withdraw_all(tp, people["trainer"], *liars.values())
    assert balance(people["trainer"]) == start[people["trainer"]] + 3 * (BOND - BOND_BURN) + (
        REWARD + STAKE
    )
    for who in liars.values():
        assert balance(who) == start[who] - BOND
        assert tp.credits(who) == 0
    assert balance(tp.address) == tp.liabilities() == tp.burned() == 3 * BOND_BURN


# ---------------------------------------------------------------- self-challenge


@pytest.mark.parametrize("lie", ["add", "matmul", "batch"])
def test_self_challenge_of_honest_commitment_never_pays(tp, people, lie) -> None:
    trainer, puppet = people["trainer"], account()
    start = balance(trainer) + balance(puppet)
    job_id = committed_job(tp, people["requester"], trainer)
    d = dispute(tp, people, "honest", lie, challenger_account=puppet, job_id=job_id)
    assert d.play().phase == Phase.TRAINER_WON
    tp.settle(d.game_id, sender=puppet)
    boa.env.time_travel(seconds=WINDOW + 1)
    tp.finalize(job_id, sender=trainer)
    withdraw_all(tp, trainer, puppet)
    end = balance(trainer) + balance(puppet)
    assert end == start + REWARD - BOND_BURN
    assert end < start + REWARD  # what it gets without challenging itself


def test_self_challenge_of_faulty_commitment_loses_half_the_stake(tp, people) -> None:
    trainer, puppet = people["trainer"], account()
    start = balance(trainer) + balance(puppet)
    job_id = committed_job(tp, people["requester"], trainer, "add")
    d = dispute(tp, people, "add", "honest", challenger_account=puppet, job_id=job_id)
    assert d.play().phase == Phase.CHALLENGER_WON  # the puppet wins ...
    tp.settle(d.game_id, sender=puppet)
    withdraw_all(tp, trainer, puppet, people["requester"])
    end = balance(trainer) + balance(puppet)
    assert end == start - (STAKE - SHARE)  # ... and half the stake is burned
    assert start - end >= STAKE // 2
    assert balance(tp.address) == tp.burned() == STAKE - SHARE
