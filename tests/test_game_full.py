"""Whole dispute games on the real digits-mlp trace, on anvil and (a sample, see
``conftest.on_the_embedded_network``) on ape's local network.

A trainer fault injected at a random (step, op, element) — in a matmul, a reduction, an
elementwise op, a LOAD_BATCH, or a transition that also changes a second slot — loses every
time; an honest trainer beats a lying challenger, whatever level the lie is settled at.
"""

from __future__ import annotations

import random
import zlib
from functools import cache

import pytest
from chain_games import BOND, REWARD, STAKE, advance, new_job, run_dispute
from conftest import on_the_embedded_network

from protocol.game import JobStatus, Phase
from protocol.ir import Opcode
from protocol.market import ApeMarket
from replay.compile.compiler import compile_train, initial_state
from replay.compile.examples import get_example
from replay.data.dataset import Dataset
from replay.dispute.players import (
    Computation,
    Fault,
    TrainerPlayer,
)

STEPS, EVERY = 4, 2


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


TRAINER_FAULTS = [
    ("element", {Opcode.MATMUL}),
    ("element", {Opcode.REDUCE_SUM, Opcode.REDUCE_MAX}),
    ("element", {Opcode.MUL, Opcode.ADD, Opcode.SUB, Opcode.DIV, Opcode.SQRT, Opcode.SELECT}),
    ("wrong-batch", {Opcode.LOAD_BATCH}),
    ("second-slot", {Opcode.MUL, Opcode.ADD, Opcode.MATMUL}),
]


def case_id(case: tuple[str, set[Opcode]]) -> str:
    kind, opcodes = case
    return f"{kind}-{'+'.join(sorted(o.name for o in opcodes))}"


@on_the_embedded_network(
    "element-MATMUL", "second-slot-ADD+MATMUL+MUL", of=map(case_id, TRAINER_FAULTS)
)  # a partial pick; a timeout
@pytest.mark.parametrize(("kind", "opcodes"), TRAINER_FAULTS, ids=map(case_id, TRAINER_FAULTS))
def test_cheating_trainer_loses(chain, market, kind, opcodes) -> None:
    fault = random_fault(kind, opcodes, seed=stable_seed(kind, opcodes))
    d = run_dispute(chain, market, honest(), faulty(fault), honest())
    result, job_id, paid = d.result, d.job_id, d.paid
    requester, trainer, challenger = d.requester, d.trainer, d.challenger
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


# on the embedded network: a lie decided at the op opening
@on_the_embedded_network("wrong-batch-LOAD_BATCH", of=map(case_id, CHALLENGER_LIES))
@pytest.mark.parametrize(("kind", "opcodes"), CHALLENGER_LIES, ids=map(case_id, CHALLENGER_LIES))
def test_honest_trainer_beats_lying_challenger(chain, market, kind, opcodes) -> None:
    fault = random_fault(kind, opcodes, seed=7 + stable_seed(kind, opcodes))
    d = run_dispute(chain, market, honest(), honest(), faulty(fault))
    result, job_id, paid, trainer, challenger = d.result, d.job_id, d.paid, d.trainer, d.challenger
    assert result.trainer_won, f"challenger with {fault} won"
    assert result.timeouts == 0
    assert market.jobs(job_id).status == JobStatus.COMMITTED
    assert paid[trainer] == BOND - BOND // 4
    assert paid[challenger] == 0
    last = [m.phase for m in result.moves][-1]
    assert last in {Phase.ONE_STEP, Phase.OPEN_OP, Phase.ELEMENT_PICK}


def test_honest_commitment_finalises_and_pays(chain, market) -> None:
    job_id, requester, trainer_acct, _ = new_job(chain, market, honest())
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
