"""The op-level trace: roots, incremental updates, chunk trees, operand reads, partial sums."""

from __future__ import annotations

import tracemalloc

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from test_replay_backends import chain_programs

from protocol.commitments import chunk_tree, state_root, tensor_root, tensor_root_from_fields
from protocol.constants import DTYPE_FLOAT32
from protocol.ir import REDUCTION_OPS, Opcode, operand_index
from replay.compile.compiler import compile_train, initial_state
from replay.compile.examples import DIGITS_MLP
from replay.compile.liveness import live_bytes
from replay.compile.spec import GELU, AdamW, Linear, MLPSpec, ReLU
from replay.data.dataset import Dataset
from replay.dispute import trace as trace_module
from replay.dispute.trace import StepTrace
from replay.execute import numpy_backend, semantics
from replay.execute.backends import make_executor
from replay.execute.numpy_backend import reduce_partials
from replay.execute.state import IncrementalStateTree, state_root_of


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


# ---------------------------------------------------------------- re-execution, memory

TINY = MLPSpec(
    input_dim=3,
    num_classes=2,
    layers=(Linear(out_features=3), GELU(), Linear(out_features=2)),
    optimizer=AdamW(lr=1e-2),
    batch_size=2,
    init_seed=7,
)


def _tamper_hook(program):
    """Perturbs an element of the first MATMUL's output and, later, a persistent slot."""
    mm = next(j for j, op in enumerate(program.ops) if op.opcode == Opcode.MATMUL)
    late = len(program.ops) - 20

    def hook(j, ex, _batch):
        if j == mm:
            v = ex.slot_array(program.ops[j].out).copy()
            v.reshape(-1)[1] = np.float32(7.5)
            return {program.ops[j].out: v}
        if j == late:
            return {0: np.full(program.slots[0].shape, 0.25, np.float32)}
        return {}

    return hook


def _reference(program, start, batch, hook):
    """Every boundary's full state, op by op (the numpy reference, the same tamper)."""
    ex = make_executor(program, "numpy")
    ex.set_state(start)
    states = [list(ex.state)]
    with np.errstate(all="ignore"):
        for j in range(len(program.ops)):
            ex.run_op(j, batch)
            for slot, value in (hook(j, ex, batch) if hook else {}).items():
                ex.set_slot(slot, value)
            states.append(list(ex.state))
    return states


def _bits(v):
    return None if v is None else np.asarray(v, np.float32).view(np.uint32).tolist()


@pytest.mark.parametrize("tampered", [False, True])
def test_queries_equal_a_full_recomputation(tampered: bool) -> None:
    program = compile_train(TINY)
    start = initial_state(TINY, program)
    rng = np.random.default_rng(1)
    batch = (rng.normal(size=(2, 3)).astype(np.float32), np.array([0, 1], dtype=np.float32))
    hook = _tamper_hook(program) if tampered else None
    trace = StepTrace(program, start, batch, tamper=hook)
    ref = _reference(program, start, batch, _tamper_hook(program) if tampered else None)
    L = len(program.ops)
    order = list(rng.permutation(L + 1))
    order += [j for k in range(0, L, 37) for j in (k, k + 1, k, k + 1)]  # an op's pre/post state
    for j in order:
        j = int(j)
        roots = [None if v is None else tensor_root(v) for v in ref[j]]
        assert trace.slot_roots(j) == roots, j
        assert state_root(roots) == trace.op_roots[j] == trace.state_tree(j).root, j
        for slot in range(len(program.slots)):
            assert _bits(trace.slot_value(j, slot)) == _bits(ref[j][slot]), (j, slot)
        if j < L:
            op = program.ops[j]
            out = program.ops[j].out
            assert trace.slot_proof(j, out).verify(trace.state_tree(j).leaf(out), trace.op_roots[j])
            if op.operands and op.numel:
                flat = op.numel - 1
                for r in range(max(1, op.reduce_len)):
                    got = [
                        (rd.slot, rd.index, _bits(rd.value))
                        for rd in trace.operand_reads(j, flat, r)
                    ]
                    want = [
                        (o.slot, idx, _bits(ref[j][o.slot].reshape(-1)[idx]))
                        for o, idx in (
                            (o, operand_index(op, k, flat, r)) for k, o in enumerate(op.operands)
                        )
                    ]
                    assert got == want, (j, r)
            if op.opcode in REDUCTION_OPS and op.numel:
                with np.errstate(all="ignore"):
                    want = reduce_partials(op, ref[j])
                for flat in range(op.numel):
                    got = trace.partials(j, flat)
                    assert _bits(got) == [_bits(a.reshape(-1)[flat]) for a in want], (j, flat)
        if ref[j][0] is not None:
            assert trace.chunk_tree(j, 0).root == chunk_tree(ref[j][0].reshape(-1)).root


def test_trace_memory_is_bounded_by_the_live_set(monkeypatch: pytest.MonkeyPatch) -> None:
    """The trace keeps per-op roots, not per-op values: what it holds after recording every
    root, and its peak while doing so and while answering a query, stay within the program's
    live set and the values waiting to be hashed (at most ``TRACE_HASH_BACKLOG`` bytes plus
    one open batch; measured with tracemalloc, which sees numpy's buffers; nothing timed)."""
    spec = MLPSpec(
        input_dim=128,
        num_classes=10,
        layers=(Linear(out_features=256), ReLU(), Linear(out_features=10)),
        optimizer=AdamW(lr=1e-3),
        batch_size=64,
    )
    program = compile_train(spec)
    start = initial_state(spec, program)
    rng = np.random.default_rng(0)
    batch = (
        rng.normal(size=(64, 128)).astype(np.float32),
        rng.integers(0, 10, 64).astype(np.float32),
    )
    outputs = sum(4 * program.slots[op.out].numel for op in program.ops if op.opcode != Opcode.FREE)
    live = max(live_bytes(program.slots, program.ops, rewritten=True))
    monkeypatch.setattr(numpy_backend, "BLOCK", 1024)
    monkeypatch.setattr(trace_module, "HASH_BATCH_BYTES", 8 * 1024)
    monkeypatch.setattr(trace_module, "TRACE_HASH_BACKLOG", 16 * 1024)
    # one block's int64 indices and gathered operands, the roots' Python objects, and the
    # hashing window: the backlog, the open batch and one value over each (64 KiB here)
    slack = 64 * 1024 + 300 * len(program.ops) + (16 + 8 + 2 * 64) * 1024
    assert live + slack < outputs / 2  # the old trace kept `outputs` bytes
    tracemalloc.start()
    try:
        trace = StepTrace(program, start, batch)
        held, peak = tracemalloc.get_traced_memory()
        # roots and their bookkeeping (Python objects, a few hundred bytes per op), no values
        assert held < 64 * 1024 + 300 * len(program.ops) < outputs / 10
        assert peak < live + slack
        tracemalloc.reset_peak()
        j = max(
            (j for j, op in enumerate(program.ops) if op.opcode == Opcode.MATMUL),
            key=lambda j: program.ops[j].numel * program.ops[j].reduce_len,
        )
        assert len(trace.partials(j, program.ops[j].numel // 2)) == program.ops[j].reduce_len + 1
        assert tracemalloc.get_traced_memory()[1] < live + slack
    finally:
        tracemalloc.stop()


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(chain_programs())
def test_a_fused_recorded_trace_equals_the_op_by_op_trace(case) -> None:
    """The torch trace records the whole step at once (element chains fused, every op's
    value kept): the same op-level roots and slot values as the numpy trace op by op."""
    program, start, batch = case
    with np.errstate(all="ignore"):
        ref = StepTrace(program, start, batch)
    fused = StepTrace(program, start, batch, backend="torch")
    assert fused.op_roots == ref.op_roots
    for j in (0, program_length := len(program.ops), program_length // 2):
        assert fused.slot_roots(j) == ref.slot_roots(j)
