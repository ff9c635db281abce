"""Adversarial tests of the one-step for the IR v1 indexed ops (GATHER, INDEX_ADD), titanoboa.

Two jobs: the mixed CNN step of tests/game_programs.py, and a bare GATHER over an index
slot holding every index class — in range, ``-0``, negative, fractional, NaN, ``+inf``, one
past the last row, huge. A trainer that claims a table element for an index that selects no
row (clamping it, or reading it modulo the table) loses at the one-step with the single
index witness; a challenger cannot prove the table at another row than the proven index
selects, swap in another slot's witness for the index, send a table witness when there is no
row or leave it out when there is one. Each refused call reverts and changes nothing; on the
debug build with its exact ``# dev:`` reason (tests/game_fixtures.py's BUILDS).
"""

from __future__ import annotations

from functools import cache
from typing import Any

import boa
import numpy as np
import pytest
from game_fixtures import (
    BOND,
    BUILDS,
    CLOCK,
    REWARD,
    STAKE,
    TRAIN_TIME,
    WINDOW,
    GameDriver,
    account,
    deploy,
    first_bad_interval,
    open_dispute,
    reverts,
)
from game_programs import mixed_targets, mixed_train_program

from protocol.commitments import chunk, chunk_tree
from protocol.game import Phase
from protocol.ir import Opcode, OpDescriptor, Operand, Program, Slot, index_value, operand_index
from replay.data.dataset import Dataset, DatasetSpec
from replay.dispute.players import Computation, Fault, job_spec_for
from replay.execute.state import as_committed

STEPS, EVERY, BATCH = 4, 2, 16
ROWS, WIDTH = 7, 64  # 448 table elements: rows 0-3 in chunk 0, 4-6 in chunk 1
#: every index class, and what it selects among ROWS rows (None: no row, the element is +0.0)
INDICES = [0.0, 3.0, -0.0, -1.0, 2.5, float("nan"), float("inf"), 7.0, 1e30, 6.0]


@cache
def gather_job() -> tuple[Program, dict[str, np.ndarray]]:
    """One GATHER of a [ROWS, WIDTH] table by the index slot INDICES (a persistent slot)."""
    n = len(INDICES)
    slots = (
        Slot(name="index", shape=(n,), kind="persistent"),
        Slot(name="table", shape=(ROWS, WIDTH), kind="persistent"),
        Slot(name="out", shape=(n, WIDTH), kind="persistent"),
    )
    op = OpDescriptor(
        opcode=Opcode.GATHER, out=2, shape=(n, WIDTH), reduce_len=ROWS,
        operands=(
            Operand(slot=0, strides=(1, 0)),
            Operand(slot=1, strides=(0, 1), reduce_stride=WIDTH),
        ),
    )  # fmt: skip
    table = (np.arange(ROWS * WIDTH, dtype=np.float32) + 1).reshape(ROWS, WIDTH)
    state = {
        "index": np.array(INDICES, np.float32),
        "table": table,
        "out": np.zeros((n, WIDTH), np.float32),
    }
    return Program(slots=slots, ops=(op,)), state


@cache
def dataset() -> Dataset:
    return Dataset(DatasetSpec(batch_size=BATCH))


def comp(which: str, fault: Fault | None = None) -> Computation:
    """The job's honest computation, or one with ``fault`` (each built once)."""
    return _comp(which, None if fault is None else fault.model_dump_json())


@cache
def _comp(which: str, fault: str | None) -> Computation:
    program, init = gather_job() if which == "gather" else mixed_train_program(BATCH)
    f = None if fault is None else Fault.model_validate_json(fault)
    c = Computation(program, dataset(), init, STEPS, EVERY, fault=f, cache=STEPS)
    c.checkpoint_roots()
    return c


@pytest.fixture(scope="module", params=BUILDS)
def tp(request: pytest.FixtureRequest) -> Any:
    return deploy(request.param)


@pytest.fixture(autouse=True)
def _isolated(tp: Any) -> Any:
    with boa.env.anchor():
        yield


def game(tp: Any, trainer: Computation, challenger: Computation) -> GameDriver:
    """Register, accept and commit ``trainer``'s run; the challenger disputes its first
    interval that differs from its own."""
    requester, trainer_acct, challenger_acct = account(), account(), account()
    honest = challenger if challenger.fault is None else trainer
    spec = job_spec_for(
        honest, stake=STAKE, bond=BOND, clock=CLOCK, window=WINDOW, train_time=TRAIN_TIME
    )
    job_id = tp.register_job(spec.as_tuple(), sender=requester, value=REWARD)
    _accept(tp, job_id, trainer_acct, spec.stake)
    committed = tuple(trainer.checkpoint_roots())
    tp.commit_run(job_id, 0, list(committed[1:]), sender=trainer_acct)
    interval = first_bad_interval(tuple(challenger.checkpoint_roots()), committed)
    assert interval is not None
    game_id = open_dispute(tp, job_id, challenger_acct, committed, interval)
    return GameDriver(tp, game_id, trainer_acct, challenger_acct, trainer, challenger)


def _accept(tp: Any, job_id: int, trainer: str, stake: int) -> None:
    tp.accept_job(job_id, tp.jobs(job_id).job_hash, sender=trainer, value=stake)


def snapshot(d: GameDriver) -> tuple:
    return tuple(d.tp.game(d.game_id)), d.tp.held(), d.tp.burned()


def refused(d: GameDriver, call: Any, dev: str) -> None:
    before = snapshot(d)
    with reverts(d.tp, dev):
        d.send(call)
    assert snapshot(d) == before


def clamping_trainer(element: int) -> Fault:
    """A trainer that writes a non-zero value where the index selects no row."""
    return Fault(kind="element", step=1, op=0, element=element)


def _row(i: int) -> int | None:
    row = index_value(INDICES[i])
    return row if row is not None and row < ROWS else None


NO_ROW = [i for i in range(len(INDICES)) if _row(i) is None]
HAS_ROW = [i for i in range(len(INDICES)) if _row(i) is not None]


@pytest.mark.parametrize("i", NO_ROW, ids=lambda i: f"index={INDICES[i]}")
def test_an_index_that_selects_no_row_reads_zero(tp, i: int) -> None:
    """Out of range, negative, fractional, NaN, inf: the element is +0.0; the trainer that
    claims otherwise loses with the single index witness, and a second witness is refused."""
    d = game(tp, comp("gather", clamping_trainer(i * WIDTH)), comp("gather"))
    g = d.play_until(Phase.ONE_STEP)
    call = d.challenger_call(g)
    desc, ws = call.args
    assert len(ws) == 1  # the index alone
    table = as_committed(gather_job()[1]["table"]).reshape(-1)
    table_witness = _witness_like(ws[0], table, 0)
    refused(d, call.replace(desc, [*ws, table_witness]), "index selects no row")
    d.send(call)
    assert d.state().phase == Phase.CHALLENGER_WON


@pytest.mark.parametrize("i", HAS_ROW, ids=lambda i: f"index={INDICES[i]}")
def test_an_index_in_range_needs_the_table_at_its_row(tp, i: int) -> None:
    """A challenger lying about a gathered element: it must prove the table element at the
    proven index's row; the index alone, or the table at another row, is refused."""
    d = game(tp, comp("gather"), comp("gather", clamping_trainer(i * WIDTH + 1)))
    g = d.play_until(Phase.ONE_STEP)
    call = d.challenger_call(g)
    desc, ws = call.args
    assert len(ws) == 2
    refused(d, call.replace(desc, ws[:1]), "index selects a row")
    row = _row(i)
    assert row is not None
    other = ROWS - 1 if row < 4 else 0  # a row in the other chunk
    table = as_committed(gather_job()[1]["table"]).reshape(-1)
    wrong_row = _witness_like(ws[1], table, other * WIDTH + 1)
    assert wrong_row[4] != ws[1][4]  # a valid chunk with its own valid proof, of another row
    refused(d, call.replace(desc, [ws[0], wrong_row]), "bad operand chunk proof")
    refused(d, call.replace(desc, [ws[1], ws[1]]), "bad operand slot proof")
    d.send(call)
    assert d.state().phase == Phase.TRAINER_WON  # the challenger lied


def _witness_like(w: tuple, raw: np.ndarray, idx: int) -> tuple:
    """Witness ``w`` (slot value, slot proof, numel, data root, chunk, chunk proof) with the
    chunk holding element ``idx`` of ``raw`` and that chunk's own proof."""
    c = idx // 256
    return (w[0], w[1], w[2], w[3], chunk(raw, c), list(chunk_tree(raw).prove(c).path))


# ---------------------------------------------------------------- the mixed CNN step


@cache
def mixed_fault(role: str, pad: bool) -> Fault:
    program, init = mixed_train_program(BATCH)
    j = mixed_targets(program)[role]
    op = program.ops[j]
    index = init[program.slots[op.operands[0].slot].name].reshape(-1) if pad else None
    for f in range(op.numel):
        if index is not None:
            row = index_value(float(index[operand_index(op, 0, f)]))
            if row is not None and row < op.reduce_len:
                continue
        fault = Fault(kind="element", step=1, op=j, element=f)
        if comp("mixed", fault).checkpoint_roots() != comp("mixed").checkpoint_roots():
            return fault
    raise AssertionError(f"no effective fault in {role}")


def test_an_index_witness_from_another_slot_is_refused(tp) -> None:
    d = game(tp, comp("mixed", mixed_fault("embedding_gather", False)), comp("mixed"))
    g = d.play_until(Phase.ONE_STEP)
    call = d.challenger_call(g)
    desc, ws = call.args
    assert len(ws) == 2
    # the table's witness in the index's place: its slot proof is for another leaf
    refused(d, call.replace(desc, [ws[1], ws[1]]), "bad operand slot proof")
    refused(d, call.replace(desc, [ws[1]]), "bad operand slot proof")
    d.send(call)
    assert d.state().phase == Phase.CHALLENGER_WON


def test_a_gather_into_padding_is_decided_by_the_index_alone(tp) -> None:
    """The padded convolution's im2col reads index -1 at a border: the trainer that put a
    pixel there loses, with one witness; a table witness next to it is refused."""
    d = game(tp, comp("mixed", mixed_fault("conv_im2col_gather", True)), comp("mixed"))
    g = d.play_until(Phase.ONE_STEP)
    call = d.challenger_call(g)
    desc, ws = call.args
    assert len(ws) == 1
    refused(d, call.replace(desc, [ws[0], ws[0]]), "index selects no row")
    d.send(call)
    assert d.state().phase == Phase.CHALLENGER_WON


def test_index_add_one_step_proves_index_and_value(tp) -> None:
    """The embedding gradient's partial bisection ends at one term; dropping the index
    witness or sending the value twice is refused; the honest challenger wins."""
    d = game(tp, comp("mixed", mixed_fault("embedding_index_add", False)), comp("mixed"))
    g = d.play_until(Phase.ONE_STEP)
    call = d.challenger_call(g)
    desc, ws = call.args
    assert len(ws) == 2
    refused(d, call.replace(desc, ws[1:]), "bad operand slot proof")
    refused(d, call.replace(desc, ws[:1]), "wrong operand count")
    d.send(call)
    assert d.state().phase == Phase.CHALLENGER_WON
