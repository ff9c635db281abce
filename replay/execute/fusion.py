"""Element chains: runs of element ops of one output size, executed by one native call.

The step's plan (``TorchExecutor._generate_step``) is cut into maximal runs of element ops
whose operands are whole slots — produced earlier in the run, or read from outside it as a
tensor of the output's size, one broadcast element, or one trailing row repeated (a bias).
FREEs inside a run are absorbed. ``replay/execute/_kernels.c`` (``chain``) computes a run
block by block, keeping each op's block result in scratch memory and writing to a tensor
only the values that outlive the run (a slot read later, or persistent). Each op still rounds
once, exactly as alone — only memory traffic and per-op dispatch are saved — so a fused step
has the same bits as the op-by-op one (the dispute trace runs ops one by one).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch

from protocol.ir import Opcode, Program

#: element ops the chain kernel computes (FREXP_* are not: they stay single ops)
CHAIN_OPCODES = frozenset(
    {Opcode.ADD, Opcode.SUB, Opcode.MUL, Opcode.DIV, Opcode.MAX, Opcode.MIN, Opcode.GT}
    | {Opcode.GE, Opcode.EQ, Opcode.LDEXP, Opcode.NEG, Opcode.ABS, Opcode.SQRT, Opcode.ROUND}
    | {Opcode.COPY, Opcode.SELECT, Opcode.FMA}
)
#: the chain kernel's limits (CHAIN_MAX_OPS, CHAIN_MAX_INPUTS in _kernels.c)
MAX_CHAIN_OPS = 256
MAX_CHAIN_INPUTS = 256

OperandSpec = tuple
Slots = list[torch.Tensor | None]


@dataclass
class Chain:
    """One run of the plan: its element ops, and how the native call sees them."""

    n: int
    ops: list[int] = field(default_factory=list)  # op indices, in order
    entries: list[int] = field(default_factory=list)  # plan entries covered (ops and FREEs)
    refs: list[list[int]] = field(default_factory=list)  # per op: operand refs
    inputs: list[OperandSpec] = field(default_factory=list)  # ("slot", i) | ("const", t)
    input_index: dict[object, int] = field(default_factory=dict)
    writer: dict[int, int] = field(default_factory=dict)  # slot -> chain op now holding it
    dead: set[int] = field(default_factory=set)  # chain ops whose value nobody reads later
    frees: list[int] = field(default_factory=list)  # outside slots freed inside the run


def _trailing(slot_shape: tuple[int, ...], shape: tuple[int, ...]) -> bool:
    """Whether a slot of ``slot_shape`` broadcasts to ``shape`` as one repeated trailing row."""
    core = tuple(slot_shape)
    while core and core[0] == 1:
        core = core[1:]
    return 0 < len(core) <= len(shape) and tuple(shape[len(shape) - len(core) :]) == core


def _operand_ref(
    chain: Chain, spec: OperandSpec, program: Program, shape: tuple[int, ...]
) -> int | None:
    """The chain ref of one operand (>= 0 an input, < 0 an earlier chain op), or None."""
    if spec[0] == "slot" and spec[1] in chain.writer:
        return -chain.writer[spec[1]] - 1
    if spec[0] == "slot":
        slot_shape = tuple(program.slots[spec[1]].shape)
        key: object = ("slot", spec[1])
    elif spec[0] == "const":
        slot_shape = tuple(spec[1].shape)
        key = ("const", id(spec[1]))
    else:
        return None  # a strided view
    m = math.prod(slot_shape)
    if not (
        m == chain.n or m == 1 or (m > 0 and chain.n % m == 0 and _trailing(slot_shape, shape))
    ):
        return None
    if key not in chain.input_index:
        if len(chain.inputs) >= MAX_CHAIN_INPUTS:
            return None
        chain.input_index[key] = len(chain.inputs)
        chain.inputs.append(spec)
    return chain.input_index[key]


def plan_chains(
    program: Program,
    plan: list[int],
    parts: Callable[[int], tuple[object, list[OperandSpec], bool] | None],
) -> list[int | Chain]:
    """The plan with runs of ≥ 2 chainable element ops replaced by :class:`Chain` s."""
    out: list[int | Chain] = []
    chain: Chain | None = None

    def close() -> None:
        nonlocal chain
        if chain is not None:
            if len(chain.ops) >= 2:
                out.append(chain)
            else:
                out.extend(chain.entries)
        chain = None

    for j in plan:
        op = program.ops[j]
        if op.opcode == Opcode.FREE:
            if chain is None:
                out.append(j)
                continue
            chain.entries.append(j)
            if op.out in chain.writer:
                chain.dead.add(chain.writer.pop(op.out))
            else:
                chain.frees.append(op.out)
            continue
        got = parts(j) if op.opcode in CHAIN_OPCODES else None
        if got is None or got[2]:  # not chainable, or reads a strided view
            close()
            out.append(j)
            continue
        specs, shape = got[1], tuple(op.shape)
        n = math.prod(shape)
        if chain is not None and (chain.n != n or len(chain.ops) >= MAX_CHAIN_OPS):
            close()
        if chain is None:
            chain = Chain(n=n)
        refs = [_operand_ref(chain, spec, program, shape) for spec in specs]
        if any(r is None for r in refs):
            close()
            chain = Chain(n=n)
            refs = [_operand_ref(chain, spec, program, shape) for spec in specs]
            if any(r is None for r in refs):
                chain = None
                out.append(j)
                continue
        k = len(chain.ops)
        if op.out in chain.writer:
            chain.dead.add(chain.writer[op.out])  # overwritten inside the run
        chain.writer[op.out] = k
        chain.ops.append(j)
        chain.entries.append(j)
        chain.refs.append([int(r) for r in refs])  # type: ignore[arg-type]
    close()
    return out


def chain_runner(
    chain: Chain, program: Program, kernels: object
) -> Callable[[Slots, object], None]:
    """The step-function call for ``chain``: gather inputs, run the native chain, store the
    values that outlive it, release the outside slots it freed."""
    spec = np.full((len(chain.ops), 5), -1, dtype=np.int32)
    out_slots: list[int] = []
    out_shapes: list[tuple[int, ...]] = []
    for k, j in enumerate(chain.ops):
        op = program.ops[j]
        spec[k, 0] = int(op.opcode)
        spec[k, 1 : 1 + len(chain.refs[k])] = chain.refs[k]
        if k not in chain.dead:
            spec[k, 4] = len(out_slots)
            out_slots.append(op.out)
            out_shapes.append(tuple(op.shape))
    getters: list[Callable[[Slots], np.ndarray]] = []
    for inp in chain.inputs:
        if inp[0] == "const":
            fixed = inp[1].contiguous().numpy()
            getters.append(lambda _s, v=fixed: v)
        else:
            getters.append(lambda s, i=inp[1]: s[i].numpy())  # type: ignore[union-attr]
    n, frees, run = chain.n, list(chain.frees), kernels.chain  # type: ignore[attr-defined]
    f32, threads = torch.float32, torch.get_num_threads

    def run_chain(s: Slots, _b: object) -> None:
        ins = tuple(g(s) for g in getters)
        outs = [torch.empty(shape, dtype=f32) for shape in out_shapes]
        run(n, spec, ins, tuple(t.numpy() for t in outs), threads())
        for slot in frees:  # first: a freed slot may be written again inside the run
            s[slot] = None
        for slot, t in zip(out_slots, outs, strict=True):
            s[slot] = t

    return run_chain
