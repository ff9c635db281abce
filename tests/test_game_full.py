"""Whole dispute games on the real digits-mlp trace, on ape's local network and on anvil.

A trainer fault injected at a random (step, op, element) — in a matmul, a reduction, an
elementwise op, a LOAD_BATCH, or a transition that also changes a second slot — loses every
time; an honest trainer beats a lying challenger, whatever level the lie is settled at.
"""

from __future__ import annotations

import random
import zlib
from functools import cache

import pytest

from protocol.game import JobStatus, Phase
from protocol.ir import Opcode
from protocol.market import ApeMarket
from replay.compile.compiler import compile_train, initial_state
from replay.compile.examples import get_example
from replay.data.dataset import Dataset
from replay.dispute.players import (
    ChallengerPlayer,
    Computation,
    Fault,
    TrainerPlayer,
    job_spec_for,
    play,
)

STEPS, EVERY = 4, 2
STAKE, BOND, REWARD = 10**18, 10**17, 5 * 10**17
MAX_MOVES = 40


@cache
def setup() -> tuple:
    ex = get_example("digits-mlp")
    program = compile_train(ex.model)
    return program, Dataset(ex.dataset), initial_state(ex.model, program)


@cache
def honest() -> Computation:
    program, dataset, init = setup()
    return Computation(program, dataset, init, STEPS, EVERY)


def faulty(fault: Fault) -> Computation:
    program, dataset, init = setup()
    return Computation(program, dataset, init, STEPS, EVERY, fault=fault)


def random_fault(kind: str, opcodes: set[Opcode], seed: int) -> Fault:
    """A fault at a random step, op of one of ``opcodes`` and element, that really changes
    the committed checkpoints (some perturbations vanish in later roundings: no cheat)."""
    program = setup()[0]
    rng = random.Random(seed)
    ops = [j for j, o in enumerate(program.ops) if o.opcode in opcodes]
    for _ in range(50):
        j = rng.choice(ops)
        fault = Fault(
            kind=kind,
            step=rng.randrange(STEPS - 1),
            op=j,
            element=rng.randrange(program.ops[j].numel),
        )
        if faulty(fault).checkpoint_roots() != honest().checkpoint_roots():
            return fault
    raise AssertionError(f"no effective {kind} fault among {sorted(o.name for o in opcodes)}")


def stable_seed(kind: str, opcodes: set[Opcode]) -> int:
    return zlib.crc32(f"{kind}:{sorted(int(o) for o in opcodes)}".encode())


@pytest.fixture(scope="module")
def market(chain):
    executor = chain.deploy("Executor")
    return chain.deploy("TrainProof", executor.address)


def advance(seconds: int) -> None:
    from ape import chain as ape_chain

    ape_chain.pending_timestamp += seconds
    ape_chain.mine()


def new_job(chain, market) -> tuple[int, object, object, object]:
    requester, trainer, challenger = (chain.test_account(i) for i in (3, 4, 5))
    spec = job_spec_for(honest(), stake=STAKE, bond=BOND, clock=3600, window=7200, train_time=3600)
    receipt = market.register_job(spec.as_tuple(), sender=requester, value=REWARD)
    job_id = int(receipt.events[0].job_id)
    market.accept_job(job_id, market.jobs(job_id).job_hash, sender=trainer, value=STAKE)
    return job_id, requester, trainer, challenger


def run_dispute(chain, market, trainer_comp: Computation, challenger_comp: Computation):
    job_id, requester, trainer_acct, challenger_acct = new_job(chain, market)
    trainer = TrainerPlayer(ApeMarket(market, trainer_acct), trainer_comp, job_id)
    challenger = ChallengerPlayer(ApeMarket(market, challenger_acct), challenger_comp, job_id)
    trainer.commit()
    committed = trainer_comp.checkpoint_roots()
    interval = challenger.first_bad_interval(committed)
    assert interval is not None, "the challenger's computation must disagree somewhere"
    game_id = challenger.open(committed, interval, BOND)
    result = play(trainer, challenger, game_id, advance)
    assert len(result.moves) <= MAX_MOVES
    before = {a: market.credits(a) for a in (trainer_acct, challenger_acct, requester)}
    market.settle(game_id, sender=requester)
    paid = {a: market.credits(a) - before[a] for a in before}
    assert chain.provider.get_balance(market.address) == market.liabilities()
    return result, job_id, paid, (requester, trainer_acct, challenger_acct)


TRAINER_FAULTS = [
    ("element", {Opcode.MATMUL}),
    ("element", {Opcode.REDUCE_SUM, Opcode.REDUCE_MAX}),
    ("element", {Opcode.MUL, Opcode.ADD, Opcode.SUB, Opcode.DIV, Opcode.SQRT, Opcode.SELECT}),
    ("wrong-batch", {Opcode.LOAD_BATCH}),
    ("second-slot", {Opcode.MUL, Opcode.ADD, Opcode.MATMUL}),
]


@pytest.mark.parametrize(("kind", "opcodes"), TRAINER_FAULTS, ids=lambda v: str(v))
def test_cheating_trainer_loses(chain, market, kind, opcodes) -> None:
    fault = random_fault(kind, opcodes, seed=stable_seed(kind, opcodes))
    result, job_id, paid, (requester, trainer, challenger) = run_dispute(
        chain, market, faulty(fault), honest()
    )
    assert not result.trainer_won, f"trainer with {fault} won"
    assert market.jobs(job_id).status == JobStatus.REJECTED
    assert paid[challenger] == BOND + STAKE // 2
    assert paid[requester] == REWARD
    assert paid[trainer] == 0
    if kind == "second-slot":
        assert result.timeouts == 1  # the transition cannot be opened: the trainer times out


CHALLENGER_LIES = [
    # the level at which the lie is settled follows from where the lying computation departs
    ("element", {Opcode.MATMUL}),  # partial bisection, then one-step
    ("element", {Opcode.MUL, Opcode.ADD, Opcode.DIV}),  # one-step
    ("element", {Opcode.FILL}),  # element pick (FILL is decided there)
    ("wrong-batch", {Opcode.LOAD_BATCH}),  # op opening (LOAD_BATCH is decided there)
]


@pytest.mark.parametrize(("kind", "opcodes"), CHALLENGER_LIES, ids=lambda v: str(v))
def test_honest_trainer_beats_lying_challenger(chain, market, kind, opcodes) -> None:
    fault = random_fault(kind, opcodes, seed=7 + stable_seed(kind, opcodes))
    result, job_id, paid, (_requester, trainer, challenger) = run_dispute(
        chain, market, honest(), faulty(fault)
    )
    assert result.trainer_won, f"challenger with {fault} won"
    assert result.timeouts == 0
    assert market.jobs(job_id).status == JobStatus.COMMITTED
    assert paid[trainer] == BOND - BOND // 4
    assert paid[challenger] == 0
    last = [m.phase for m in result.moves][-1]
    assert last in {Phase.ONE_STEP, Phase.OPEN_OP, Phase.ELEMENT_PICK}


def test_honest_commitment_finalises_and_pays(chain, market) -> None:
    job_id, requester, trainer_acct, _ = new_job(chain, market)
    TrainerPlayer(ApeMarket(market, trainer_acct), honest(), job_id).commit()
    advance(7200 + 1)
    market.finalize(job_id, sender=requester)
    assert market.jobs(job_id).status == JobStatus.FINALIZED
    credit = market.credits(trainer_acct)
    assert credit >= STAKE + REWARD
    before = chain.provider.get_balance(trainer_acct.address)
    receipt = market.withdraw(sender=trainer_acct)
    fee = receipt.gas_used * receipt.gas_price
    assert chain.provider.get_balance(trainer_acct.address) == before + credit - fee
    assert chain.provider.get_balance(market.address) == market.liabilities()


def test_python_mirrors_the_contract_constants(market) -> None:
    from protocol.game import PARTIAL_ARITY, TRACE_ARITY

    assert market.TRACE_ARITY() == TRACE_ARITY
    assert market.PARTIAL_ARITY() == PARTIAL_ARITY
