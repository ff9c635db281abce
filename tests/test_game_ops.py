"""Whole dispute games over the IR v1 ops, on anvil and (a sample, see
``conftest.on_the_embedded_network``) on ape's local network.

The job is one training step of a small model that uses every new op (tests/game_programs.py:
a pixel-intensity embedding (GATHER, gradient by INDEX_ADD), a zero-padded convolution
(im2col GATHER reading index -1 as zero, then an FMA-chain MATMUL), max pooling (REDUCE_MAX),
layer norm (REDUCE_SUM), a linear head). A trainer fault in each of those ops loses — through
the partial bisection and the FMA / indexed-accumulation one-step for reductions, through the
index witness (and, for a padding element, the single-witness "no row" path) for gathers — and
an honest trainer beats a challenger that lies about each of them.
"""

from __future__ import annotations

import random
import zlib
from functools import cache

import numpy as np
import pytest
from chain_games import run_dispute
from conftest import on_the_embedded_network
from game_programs import mixed_targets, mixed_train_program

from protocol.game import JobStatus, Phase
from protocol.ir import Program, index_value, operand_index
from replay.data.dataset import Dataset, DatasetSpec
from replay.dispute.players import (
    Computation,
    Fault,
)

STEPS, EVERY, BATCH = 4, 2, 16


@cache
def setup() -> tuple[Program, Dataset, dict[str, np.ndarray]]:
    program, init = mixed_train_program(BATCH)
    return program, Dataset(DatasetSpec(batch_size=BATCH)), init


def computation(fault: Fault | None = None) -> Computation:
    program, dataset, init = setup()
    return Computation(program, dataset, init, STEPS, EVERY, fault=fault)


@cache
def honest() -> Computation:
    return computation()


#: the op roles of tests/game_programs.py each fault targets
TARGETS: dict[str, tuple[str, ...]] = {
    "fma-matmul": ("conv_matmul", "fc_matmul", "conv_dW_matmul"),
    "embedding-gather": ("embedding_gather",),
    "index-add": ("embedding_index_add",),
    "padded-conv": ("conv_im2col_gather",),
    "pooling": ("pool_reduce_max",),
    "layer-norm": ("layernorm_sum", "layernorm_sumsq"),
}


def _padding_elements(program: Program, init: dict[str, np.ndarray], j: int) -> list[int]:
    """Elements of GATHER op ``j`` whose index selects no row (zero padding)."""
    op = program.ops[j]
    index = init[program.slots[op.operands[0].slot].name].reshape(-1)
    return [
        f
        for f in range(op.numel)
        if (row := index_value(float(index[operand_index(op, 0, f)]))) is None
        or row >= op.reduce_len
    ]


@cache
def fault_for(target: str, seed: int) -> Fault:
    """A fault in an op of ``target`` that really changes the committed checkpoints."""
    program, _, init = setup()
    roles = mixed_targets(program)
    ops = [roles[role] for role in TARGETS[target]]
    rng = random.Random(seed)
    for _ in range(50):
        j = rng.choice(ops)
        if target == "padded-conv":
            pads = _padding_elements(program, init, j)
            assert pads, "the padded convolution reads no padding"
            element = rng.choice(pads)
        else:
            element = rng.randrange(program.ops[j].numel)
        fault = Fault(kind="element", step=rng.randrange(STEPS - 1), op=j, element=element)
        if computation(fault).checkpoint_roots() != honest().checkpoint_roots():
            return fault
    raise AssertionError(f"no effective fault in a {target} op")


def seed_of(target: str) -> int:
    return zlib.crc32(target.encode())


REDUCTIONS = {"fma-matmul", "index-add", "pooling", "layer-norm"}


@on_the_embedded_network("padded-conv", of=TARGETS)  # a gather: the single-witness "no row" path
@pytest.mark.parametrize("target", sorted(TARGETS))
def test_cheating_trainer_loses(chain, market, target: str) -> None:
    fault = fault_for(target, seed_of(target))
    d = run_dispute(chain, market, honest(), computation(fault), honest())
    result, job_id = d.result, d.job_id
    assert not result.trainer_won, f"trainer with {fault} won"
    assert result.timeouts == 0
    assert market.jobs(job_id).status == JobStatus.REJECTED
    phases = [m.phase for m in result.moves]
    assert phases[-1] == Phase.ONE_STEP
    assert (Phase.PARTIAL_PICK in phases) == (
        target in REDUCTIONS and setup()[0].ops[fault.op].reduce_len > 1
    )


@on_the_embedded_network("fma-matmul", of=TARGETS)  # the FMA one-step after a partial pick
@pytest.mark.parametrize("target", sorted(TARGETS))
def test_honest_trainer_beats_a_lying_challenger(chain, market, target: str) -> None:
    fault = fault_for(target, 7 + seed_of(target))
    d = run_dispute(chain, market, honest(), honest(), computation(fault))
    result, job_id = d.result, d.job_id
    assert result.trainer_won, f"challenger with {fault} won"
    assert result.timeouts == 0
    assert market.jobs(job_id).status == JobStatus.COMMITTED
