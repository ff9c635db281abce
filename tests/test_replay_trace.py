"""The op-level trace: roots, incremental updates, chunk trees, operand reads, partial sums."""

from __future__ import annotations

import numpy as np
import pytest

from protocol.commitments import state_root, tensor_root, tensor_root_from_fields
from protocol.constants import DTYPE_FLOAT32
from protocol.ir import REDUCTION_OPS, Opcode
from replay import semantics
from replay.backends import make_executor
from replay.compiler import compile_train, initial_state
from replay.dataset import Dataset
from replay.examples import DIGITS_MLP
from replay.state import IncrementalStateTree, state_root_of
from replay.trace import StepTrace


@pytest.fixture(scope="module")
def setup():
    program = compile_train(DIGITS_MLP.model)
    start = initial_state(DIGITS_MLP.model, program)
    batch = Dataset(DIGITS_MLP.dataset).batch(0)
    return program, start, batch, StepTrace(program, start, batch)


def test_first_and_last_roots_are_the_step_boundaries(setup) -> None:
    program, start, batch, trace = setup
    assert len(trace.op_roots) == len(program.ops) + 1
    assert trace.op_roots[0] == state_root_of(program, start)
    ex = make_executor(program, "numpy")
    ex.set_state(start)
    ex.run_step(batch)
    assert trace.op_roots[-1] == state_root_of(program, ex.get_state())


def test_incremental_roots_equal_full_recomputation(setup) -> None:
    program, _, _, trace = setup
    for j in range(0, len(program.ops) + 1):
        assert state_root(trace.slot_roots(j)) == trace.op_roots[j], j


def test_each_op_replaces_only_its_slot_on_the_same_path(setup) -> None:
    program, _, _, trace = setup
    for j in (0, 5, 40, len(program.ops) - 1):
        out = program.ops[j].out
        before, after = trace.slot_roots(j), trace.slot_roots(j + 1)
        assert [i for i in range(len(before)) if before[i] != after[i]] in ([], [out])
        assert trace.slot_proof(j, out).path == trace.slot_proof(j + 1, out).path
        assert trace.slot_proof(j + 1, out).verify(
            trace.state_tree(j + 1).leaf(out), trace.op_roots[j + 1]
        )


def test_chunk_tree_commits_the_slot(setup) -> None:
    program, _, _, trace = setup
    j = next(i for i, op in enumerate(program.ops) if op.opcode == Opcode.MATMUL)
    out = program.ops[j].out
    value = trace.slot_value(j + 1, out)
    tree = trace.chunk_tree(j + 1, out)
    assert tensor_root_from_fields(DTYPE_FLOAT32, value.size, tree.root) == tensor_root(value)
    assert trace.slot_roots(j + 1)[out] == tensor_root(value)


def test_partials_are_the_sequential_accumulation(setup) -> None:
    program, _, _, trace = setup
    for j, op in enumerate(program.ops):
        if op.opcode not in REDUCTION_OPS:
            continue
        flat = op.numel // 3
        acc = trace.partials(j, flat)
        assert len(acc) == op.reduce_len + 1
        assert acc[0].view(np.uint32) == np.float32(semantics.REDUCE_INIT[op.opcode]).view(
            np.uint32
        )
        for r in range(op.reduce_len):
            reads = [np.array([rd.value], np.float32) for rd in trace.operand_reads(j, flat, r)]
            row = np.array([flat // max(1, op.numel // op.shape[0])]) if op.shape else None
            step = semantics.reduce_step(op.opcode, acc[r : r + 1], reads, row)
            assert step.view(np.uint32)[0] == acc[r + 1 : r + 2].view(np.uint32)[0]
        out = trace.slot_value(j + 1, op.out).reshape(-1)[flat]
        assert np.float32(out).view(np.uint32) == acc[-1].view(np.uint32)


def test_operand_reads_reproduce_an_elementwise_output(setup) -> None:
    program, _, _, trace = setup
    for j, op in enumerate(program.ops):
        if op.opcode in semantics.ELEMENTWISE and op.numel > 3:
            flat = op.numel - 2
            args = [np.array([rd.value], np.float32) for rd in trace.operand_reads(j, flat)]
            with np.errstate(all="ignore"):
                want = semantics.ELEMENTWISE[op.opcode](*args)
            got = trace.slot_value(j + 1, op.out).reshape(-1)[flat : flat + 1]
            assert got.view(np.uint32)[0] == want.view(np.uint32)[0], j


def test_torch_trace_equals_numpy_trace(setup) -> None:
    program, start, batch, trace = setup
    assert StepTrace(program, start, batch, backend="torch").op_roots == trace.op_roots


def test_incremental_tree_matches_state_root_for_any_update_order() -> None:
    rng = np.random.default_rng(0)
    roots = [None if rng.random() < 0.3 else rng.bytes(32) for _ in range(37)]
    tree = IncrementalStateTree(roots)
    for _ in range(100):
        i = int(rng.integers(0, len(roots)))
        roots[i] = None if rng.random() < 0.3 else rng.bytes(32)
        assert tree.update(i, roots[i]) == state_root(roots)
