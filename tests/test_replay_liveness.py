"""The liveness pass: each ephemeral value freed right after its last read, same training."""

from __future__ import annotations

import numpy as np
import pytest

from protocol.ir import Opcode, Program, validate_program
from replay.compile.compiler import compile_eval, compile_train, initial_state
from replay.compile.examples import DIGITS_MLP
from replay.compile.liveness import frees_at_end, live_bytes, place_frees
from replay.compile.spec import GELU, SGD, Linear, MLPSpec
from replay.data.dataset import Dataset, DatasetSpec
from replay.execute import numpy_backend
from replay.execute.backends import make_executor
from replay.execute.state import state_root_of

#: digits-mlp after 5 steps from C_0 and its program_root, both computed before the liveness
#: pass (FREEs all at the end): moving the FREEs changes program_root and op-level roots, never
#: a step boundary.
DIGITS_ROOT_AFTER_5 = "721b88edd25cf3f3d1d2fc34fe5e35ec56c139921c167f5ba081c487de7d575a"
DIGITS_ROOT_BEFORE_PASS = "1a6277bc18cd2bd851443089d046341549f52b3dbcb2454ee28c2cda0a9d97d8"
DIGITS_LOSS_AT_5 = np.float32(2.1676909923553467)

GELU_SGD = MLPSpec(
    input_dim=64,
    num_classes=10,
    layers=(
        Linear(out_features=32),
        GELU(),
        Linear(out_features=16),
        GELU(),
        Linear(out_features=10),
    ),
    optimizer=SGD(lr=0.1, momentum=0.9, weight_decay=1e-4),
    batch_size=32,
)


def programs() -> dict[str, Program]:
    return {
        "digits-mlp": compile_train(DIGITS_MLP.model),
        "gelu-sgd": compile_train(GELU_SGD),
        "digits-eval": compile_eval(DIGITS_MLP.model, 17),
    }


def before(program: Program) -> Program:
    return Program(slots=program.slots, ops=tuple(frees_at_end(program.slots, program.ops)))


@pytest.mark.parametrize("name", ["digits-mlp", "gelu-sgd", "digits-eval"])
def test_no_ephemeral_value_outlives_its_last_read(name: str) -> None:
    program = programs()[name]
    validate_program(program)
    last_use: dict[int, int] = {}  # ephemeral slot holding a value -> last op reading/writing it
    for j, op in enumerate(program.ops):
        if op.opcode == Opcode.FREE:
            # only FREEs sit between a value's last use and its FREE
            between = program.ops[last_use[op.out] + 1 : j]
            assert all(o.opcode == Opcode.FREE for o in between), (name, j)
            del last_use[op.out]
            continue
        for o in op.operands:
            if o.slot in last_use:
                last_use[o.slot] = j
        if not program.slots[op.out].persistent:
            last_use[op.out] = j
    assert not last_use
    # FREEs that follow one op are in slot order
    run: list[int] = []
    for op in (*program.ops, None):
        if op is not None and op.opcode == Opcode.FREE:
            run.append(op.out)
        else:
            assert run == sorted(run)
            run = []


@pytest.mark.parametrize("name", ["digits-mlp", "gelu-sgd", "digits-eval"])
def test_the_pass_only_moves_frees(name: str) -> None:
    program = programs()[name]
    old = before(program)
    validate_program(old)
    assert len(old.ops) == len(program.ops)
    body = [op for op in program.ops if op.opcode != Opcode.FREE]
    assert body == [op for op in old.ops if op.opcode != Opcode.FREE]
    assert sorted(op.out for op in program.ops if op.opcode == Opcode.FREE) == sorted(
        op.out for op in old.ops if op.opcode == Opcode.FREE
    )
    assert place_frees(program.slots, old.ops) == list(program.ops)  # idempotent, from any order
    assert max(live_bytes(program.slots, program.ops)) < max(live_bytes(old.slots, old.ops))
    assert live_bytes(program.slots, program.ops)[-1] == 0


def test_digits_counts_and_live_set() -> None:
    program = compile_train(DIGITS_MLP.model)
    assert (len(program.ops), len(program.slots)) == (359, 188)  # docs/protocol.md §3.9
    # the same ops with every FREE last is exactly the program compiled before the pass
    assert before(program).root().hex() == DIGITS_ROOT_BEFORE_PASS
    after = max(live_bytes(program.slots, program.ops))
    assert after * 3 < max(live_bytes(program.slots, before(program).ops))


def test_a_value_nobody_reads_is_freed_right_after_its_write() -> None:
    from replay.compile.builder import ProgramBuilder

    b = ProgramBuilder()
    x = b.persistent("x", (3,))
    unused = b.neg(x, hint="unused")
    b.add(x, b.abs(x), out=x)
    program = b.build()
    ops = program.ops
    j = next(i for i, op in enumerate(ops) if op.out == unused.slot)
    assert ops[j + 1].opcode == Opcode.FREE and ops[j + 1].out == unused.slot


@pytest.mark.parametrize("backend", ["torch", "numpy"])
def test_training_is_unchanged_by_the_pass(backend: str) -> None:
    """Step-boundary roots and the loss equal those computed before the pass (and those of the
    same ops with every FREE at the end), on both backends."""
    program = compile_train(DIGITS_MLP.model)
    data = Dataset(DIGITS_MLP.dataset)
    start = initial_state(DIGITS_MLP.model, program)
    roots = []
    for p in (program, before(program)):
        ex = make_executor(p, backend)
        ex.set_state(start)
        for t in range(5):
            ex.run_step(data.batch(t))
        state = ex.get_state()
        roots.append(state_root_of(p, state).hex())
        assert state["loss"].view(np.uint32) == DIGITS_LOSS_AT_5.view(np.uint32)
    assert roots == [DIGITS_ROOT_AFTER_5, DIGITS_ROOT_AFTER_5]


def test_numpy_blocks_give_the_same_bits(monkeypatch: pytest.MonkeyPatch) -> None:
    """The reference executes element ops and reductions in blocks of output elements."""
    program = compile_train(GELU_SGD)
    data = Dataset(DatasetSpec(batch_size=32))
    start = initial_state(GELU_SGD, program)
    roots = []
    for block in (numpy_backend.BLOCK, 7):
        monkeypatch.setattr(numpy_backend, "BLOCK", block)
        ex = make_executor(program, "numpy")
        ex.set_state(start)
        for t in range(2):
            ex.run_step(data.batch(t))
        roots.append(state_root_of(program, ex.get_state()))
    torch_ex = make_executor(program, "torch")
    torch_ex.set_state(start)
    for t in range(2):
        torch_ex.run_step(data.batch(t))
    assert roots[0] == roots[1] == state_root_of(program, torch_ex.get_state())


def test_torch_step_releases_values() -> None:
    """The generated step honours FREE: after a step only persistent slots hold tensors."""
    program = compile_train(DIGITS_MLP.model)
    ex = make_executor(program, "torch")
    ex.set_state(initial_state(DIGITS_MLP.model, program))
    ex.run_step(Dataset(DIGITS_MLP.dataset).batch(0))
    held = [i for i, v in enumerate(ex.state) if v is not None]  # type: ignore[attr-defined]
    assert tuple(held) == program.persistent_slots
