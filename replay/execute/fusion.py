"""Element chains: runs of element ops of one output size, executed by one native call.

The step's plan (``TorchExecutor._generate_step``) is cut into maximal runs of element ops
whose operands are values produced earlier in the run (read element for element) or slots
from outside it read through any affine index map (broadcasts, transposes, windows).
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

from protocol.ir import Opcode, Program, contiguous_strides

#: element ops the chain kernel computes (FREXP_* are not: they stay single ops)
CHAIN_OPCODES = frozenset(
    {Opcode.ADD, Opcode.SUB, Opcode.MUL, Opcode.DIV, Opcode.MAX, Opcode.MIN, Opcode.GT}
    | {Opcode.GE, Opcode.EQ, Opcode.LDEXP, Opcode.NEG, Opcode.ABS, Opcode.SQRT, Opcode.ROUND}
    | {Opcode.COPY, Opcode.SELECT, Opcode.FMA}
)
#: the chain kernel's limits (CHAIN_MAX_OPS, CHAIN_MAX_INPUTS in _kernels.c)
MAX_CHAIN_OPS = 256
MAX_CHAIN_INPUTS = 256
#: a run this long becomes a chain; shorter ones stay torch ops
MIN_CHAIN_OPS = 2

OperandSpec = tuple
Slots = list[torch.Tensor | None]


@dataclass
class Chain:
    """One run of the plan: its element ops, and how the native call sees them."""

    n: int
    shape: tuple[int, ...]  # the first op's: input maps index it
    ops: list[int] = field(default_factory=list)  # op indices, in order
    entries: list[int] = field(default_factory=list)  # plan entries covered (ops and FREEs)
    refs: list[list[int]] = field(default_factory=list)  # per op: operand refs
    #: ("slot", i, map) | ("const", tensor, map); map = (offset, strides padded to rank 4)
    inputs: list[tuple[str, object, tuple[int, tuple[int, ...]]]] = field(default_factory=list)
    input_index: dict[object, int] = field(default_factory=dict)
    writer: dict[int, int] = field(default_factory=dict)  # slot -> chain op now holding it
    dead: set[int] = field(default_factory=set)  # chain ops whose value nobody reads later
    frees: list[int] = field(default_factory=list)  # outside slots freed inside the run


def _broadcast_map(slot_shape: tuple[int, ...], shape: tuple[int, ...]) -> tuple[int, ...]:
    """Element strides (padded to rank 4) of a slot broadcast numpy-style to ``shape``."""
    strides = contiguous_strides(slot_shape)
    lead = len(shape) - len(slot_shape)
    out = [0] * len(shape)
    for k, n in enumerate(slot_shape):
        if n != 1:
            out[lead + k] = strides[k]
    return (0,) * (4 - len(shape)) + tuple(out)


def _operand_ref(
    chain: Chain, spec: OperandSpec, program: Program, shape: tuple[int, ...]
) -> int | None:
    """The chain ref of one operand (>= 0 an input, < 0 an earlier chain op), or None when
    the chain cannot read it (a value made inside the chain, read through a non-identity
    map: it exists only block by block)."""
    if spec[0] in ("slot", "strided") and spec[1] in chain.writer:
        return -chain.writer[spec[1]] - 1 if spec[0] == "slot" else None
    if spec[0] == "slot":
        key: object = ("slot", spec[1])
        imap = (0, _broadcast_map(tuple(program.slots[spec[1]].shape), shape))
    elif spec[0] == "const":
        key = ("const", id(spec[1]))
        imap = (0, _broadcast_map(tuple(spec[1].shape), shape))
    else:  # ("strided", slot, size, stride, offset)
        key = ("slot", spec[1])
        imap = (int(spec[4]), (0,) * (4 - len(shape)) + tuple(int(x) for x in spec[3]))
    if shape != chain.shape:  # same size, other shape: only maps that ignore the shape
        if all(st == 0 for st in imap[1]):
            pass  # one broadcast element
        elif imap == (0, _broadcast_map(shape, shape)):  # the op's own C layout
            imap = (0, _broadcast_map(chain.shape, chain.shape))
        else:
            return None
    if (key, imap) not in chain.input_index:
        if len(chain.inputs) >= MAX_CHAIN_INPUTS:
            return None
        chain.input_index[(key, imap)] = len(chain.inputs)
        chain.inputs.append((spec[0] if spec[0] == "const" else "slot", spec[1], imap))
    return chain.input_index[(key, imap)]


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
            if len(chain.ops) >= MIN_CHAIN_OPS:
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
        if got is None:  # not an element op the chain kernel computes
            close()
            out.append(j)
            continue
        specs, shape = got[1], tuple(op.shape)
        n = math.prod(shape)
        if chain is not None and (chain.n != n or len(chain.ops) >= MAX_CHAIN_OPS):
            close()
        if chain is None:
            chain = Chain(n=n, shape=shape)
        refs = [_operand_ref(chain, spec, program, shape) for spec in specs]
        if any(r is None for r in refs):
            close()
            chain = Chain(n=n, shape=shape)
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
    chain: Chain, program: Program, kernels: object, record: bool = False
) -> Callable[[Slots, object], list[torch.Tensor]]:
    """The step-function call for ``chain``: gather inputs, run the native chain, store the
    values that outlive it, release the outside slots it freed. With ``record`` every op's
    value is kept and the call returns them in op order (the dispute trace hashes each)."""
    spec = np.full((len(chain.ops), 5), -1, dtype=np.int32)
    out_slots: list[int] = []
    out_shapes: list[tuple[int, ...]] = []
    for k, j in enumerate(chain.ops):
        op = program.ops[j]
        spec[k, 0] = int(op.opcode)
        spec[k, 1 : 1 + len(chain.refs[k])] = chain.refs[k]
        if record or k not in chain.dead:
            spec[k, 4] = len(out_slots)
            out_slots.append(op.out)
            out_shapes.append(tuple(op.shape))
    getters: list[Callable[[Slots], np.ndarray]] = []
    for kind, source, _map in chain.inputs:
        if kind == "const":
            fixed = source.contiguous().numpy()  # type: ignore[attr-defined]
            getters.append(lambda _s, v=fixed: v)
        else:
            getters.append(lambda s, i=source: s[i].numpy())  # type: ignore[union-attr,index]
    maps = tuple(m for _k, _s, m in chain.inputs)
    shape = tuple(program.ops[chain.ops[0]].shape)
    shape4 = (1,) * (4 - len(shape)) + shape
    frees, run = list(chain.frees), kernels.chain  # type: ignore[attr-defined]
    f32, threads = torch.float32, torch.get_num_threads

    keep = [record is False or k not in chain.dead for k in range(len(out_slots))]

    def run_chain(s: Slots, _b: object) -> list[torch.Tensor]:
        ins = tuple(g(s) for g in getters)
        outs = [torch.empty(shape, dtype=f32) for shape in out_shapes]
        run(shape4, spec, ins, maps, tuple(t.numpy() for t in outs), threads())
        for slot in frees:  # first: a freed slot may be written again inside the run
            s[slot] = None
        for slot, t, live in zip(out_slots, outs, keep, strict=True):
            if live:
                s[slot] = t
        return outs

    return run_chain
