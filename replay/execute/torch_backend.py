"""The torch interpreter: the same bits as the numpy reference, with few kernels per op.

Each op is compiled once into a closure (``replay/execute/torch_kernels.py`` holds the kernels):

- operands are passed to torch as they are when the IR index map is the identity or a
  numpy-style broadcast of the slot, as an ``as_strided`` view otherwise; values that a FILL of
  this step produced are captured as constants at compile time;
- MATMUL ``C[M,N] = A @ B`` forms all ``R·M·N`` rounded products with one ``mul`` kernel into a
  ``[R, M·N]`` table (inner dimension the longer of M, N) and sums its rows sequentially in r
  (:class:`RowSummer`); REDUCE_SUM does the same over its terms; REDUCE_MAX is ``amax`` plus a
  zero-sign fix;
- :meth:`TorchExecutor.run_step_tensors` runs the step as one generated Python function (the
  same kernels and operands as the per-op closures, element ops inlined), without the FILLs of
  ephemeral slots (their readers captured the constant), with each FREE as ``s[i] = None`` so
  a value's memory is released after its last read, and canonicalises NaNs only when a slot is
  exported.

Invariant: every tensor held in a slot is C-contiguous and owns its storage from offset 0, so
``as_strided`` (whose offset is absolute) reads exactly the IR's flat element index.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable

import numpy as np
import torch
import torch.nn.functional as F

from protocol.ir import (
    BATCH_X,
    ELEMENTWISE_OPS,
    Opcode,
    OpDescriptor,
    Operand,
    Program,
    contiguous_strides,
)
from replay.errors import ExecutionError
from replay.execute.fusion import Chain, chain_runner, plan_chains
from replay.execute.native import (
    NATIVE_ELEMENT_CODES,
    native_available,
    native_element_op,
    native_gather,
    native_gemm,
    native_kernels,
    native_reduce_max,
    native_reduce_sum,
)
from replay.execute.numpy_backend import slots_from_named
from replay.execute.torch_kernels import (
    ELEMENT_KERNELS,
    F32,
    RowSummer,
    SumStrategy,
    canon,
    compare_kernel,
    fma64,
    index_rows,
    reduce_max_terms,
)

Tensor = torch.Tensor
Slots = list[Tensor | None]
BatchTensors = tuple[Tensor, Tensor]
OpFn = Callable[[Slots, "BatchTensors | None"], None]
Getter = Callable[[Slots], Tensor]
#: how an element op gets an operand: ("slot", i) | ("const", tensor) |
#: ("strided", slot, size, stride, offset)
OperandSpec = tuple


def _is_identity(shape: tuple[int, ...], o: Operand, slot_shape: tuple[int, ...]) -> bool:
    return o.offset == 0 and slot_shape == shape and tuple(o.strides) == contiguous_strides(shape)


def _is_broadcast(shape: tuple[int, ...], o: Operand, slot_shape: tuple[int, ...]) -> bool:
    """True if the index map is numpy broadcasting of the slot (right-aligned) to ``shape``."""
    lead = len(shape) - len(slot_shape)
    if o.offset != 0 or lead < 0:
        return False
    if any(s != 0 and d != 1 for d, s in zip(shape[:lead], o.strides[:lead], strict=True)):
        return False
    cs = contiguous_strides(slot_shape)
    for i, n in enumerate(slot_shape):
        d, s = shape[lead + i], o.strides[lead + i]
        if n == d and (s == cs[i] or d == 1):
            continue
        if n == 1 and s == 0:
            continue
        return False
    return True


class TorchExecutor:
    """Runs a validated program with torch kernels on ``device`` (cpu or cuda)."""

    name = "torch"

    def __init__(
        self,
        program: Program,
        device: str = "cpu",
        sum_strategy: SumStrategy = "auto",
        max_table_bytes: int = 4 << 20,
    ) -> None:
        self.program = program
        self.device = torch.device(device)
        if self.device.type == "cuda" and not torch.cuda.is_available():
            raise ExecutionError("device 'cuda' requested but torch sees no CUDA device")
        if sum_strategy == "auto":
            sum_strategy = "embedding_bag" if self.device.type == "cpu" else "loop"
        self.sum_strategy: SumStrategy = sum_strategy
        self._summer = RowSummer(sum_strategy, self.device)
        self.max_table_bytes = max_table_bytes
        torch.set_flush_denormal(False)  # canonical mode keeps subnormals
        self._native = native_available(self.device)
        self.state: Slots = [None] * len(program.slots)
        self._computed: set[int] = set()
        self._batch_cache: tuple[object, BatchTensors] | None = None
        self._persistent = program.persistent_slots
        self._fns: list[OpFn] = []
        self._parts: dict[int, tuple[Callable[..., Tensor], list[OperandSpec], bool]] = {}
        plan: list[int] = []
        constants: dict[int, Tensor] = {}  # slot -> value of a FILL earlier in this step
        for j, op in enumerate(program.ops):
            fn = self._compile(op, constants)
            self._fns.append(fn)
            # FILL of an ephemeral slot is static (readers captured it)
            static = op.opcode == Opcode.FILL and not program.slots[op.out].persistent
            if not static:
                plan.append(j)
            if op.opcode == Opcode.FILL:
                constants[op.out] = self._fill_value(op)
            else:
                constants.pop(op.out, None)
        self._writes_compute = {
            op.out for op in program.ops if op.opcode not in (Opcode.LOAD_BATCH, Opcode.FREE)
        }
        self._static_fills = set(range(len(program.ops))) - set(plan)
        self._recorded: list[tuple[str, object, object]] | None = None
        self._step = self._generate_step(plan)

    # ------------------------------------------------------------------ state
    def clone(self) -> TorchExecutor:
        """An empty executor sharing this one's compiled ops (no state, no cached batch)."""
        other = copy.copy(self)
        other.state = [None] * len(self.program.slots)
        other._computed = set()
        other._batch_cache = None
        if self._recorded is None:  # compiled once, shared with the clones
            self._recorded = self._record_plan()
        other._recorded = self._recorded
        return other

    def set_state(self, values: dict[str, np.ndarray]) -> None:
        arrays = slots_from_named(self.program, values)
        self.state = [None if a is None else self._to_device(a) for a in arrays]
        self._computed = set()

    def get_state(self) -> dict[str, np.ndarray]:
        """The persistent slots by name, as read-only arrays. On the CPU they share memory
        with the executor's tensors (no copy): a step never writes a tensor it holds — every
        op stores a fresh one — so a returned state stays valid and unchanged while the
        executor runs on."""
        out: dict[str, np.ndarray] = {}
        for i in self._persistent:
            value = self.slot_array(i, copy=False)
            if value is None:
                raise ExecutionError(f"persistent slot {self.program.slots[i].name} is empty")
            out[self.program.slots[i].name] = value
        return out

    def slot_array(self, i: int, copy: bool = True) -> np.ndarray | None:
        """Slot ``i`` as a numpy float32 array with canonical NaNs (None if empty): a copy, or
        with ``copy=False`` a read-only view where no NaN needs canonicalising."""
        t = self.state[i]
        if t is None:
            return None
        if i in self._computed and self._has_nan(t):
            t, copy = canon(t), False  # already a fresh tensor
        a = t.detach().to("cpu").contiguous().numpy()
        if copy:
            return a.copy()
        a.flags.writeable = False
        return a

    def _has_nan(self, t: Tensor) -> bool:
        if self._native and t.is_contiguous():
            return bool(native_kernels().has_nan(t.numpy()))
        return bool(torch.isnan(t).any())

    def set_slot(self, i: int, value: np.ndarray | None) -> None:
        """Replace slot ``i``'s value (fault injection, ``replay.dispute.trace``)."""
        self.state[i] = None if value is None else self._to_device(value)
        self._computed.discard(i)

    def _to_device(self, a: np.ndarray) -> Tensor:
        return torch.from_numpy(np.array(a, dtype=np.float32, order="C", copy=True)).to(self.device)

    # ------------------------------------------------------------------ running
    def batch_tensors(self, batch: tuple[np.ndarray, np.ndarray]) -> BatchTensors:
        return self._to_device(batch[0]), self._to_device(batch[1])

    def run_op(self, j: int, batch: tuple[np.ndarray, np.ndarray] | None) -> None:
        if batch is None:
            tb = None
        else:  # convert a batch once, not once per op
            if self._batch_cache is None or self._batch_cache[0] is not batch:
                self._batch_cache = (batch, self.batch_tensors(batch))
            tb = self._batch_cache[1]
        self._fns[j](self.state, tb)
        op = self.program.ops[j]
        if op.opcode in (Opcode.LOAD_BATCH, Opcode.FREE):
            self._computed.discard(op.out)
        else:
            self._computed.add(op.out)

    def run_step(self, batch: tuple[np.ndarray, np.ndarray] | None) -> None:
        self.run_step_tensors(None if batch is None else self.batch_tensors(batch))

    def run_step_tensors(self, batch: BatchTensors | None) -> None:
        """One whole step: the plan skips ephemeral FILLs (captured) and runs FREEs, so memory
        follows the program's live set. The step works on the executor's own slot list: a
        persistent value is released as soon as the step overwrites it. If the step raises, the
        executor is left empty (load a state again)."""
        s, self.state = self.state, [None] * len(self.state)
        self._step(s, batch)
        keep = set(self._persistent)
        self.state = [v if i in keep else None for i, v in enumerate(s)]
        self._computed |= self._writes_compute

    def run_step_recorded(
        self, batch: BatchTensors | None, on_value: Callable[[int, int, Tensor | None], None]
    ) -> None:
        """One whole step like :meth:`run_step_tensors`, element chains included, calling
        ``on_value(op index, slot written, value)`` for every op as its value is made (None for
        a FREE; a captured FILL's constant; NaNs as computed: canonicalise them before
        committing, ``replay.execute.state.canonical_nans``) — what the dispute trace hashes,
        without running the ops one by one. Calls come in execution order, not op order
        (FILLs first, a chain's absorbed FREEs after it); a value is never written in place
        afterwards, so the callee may keep it."""
        if self._recorded is None:
            self._recorded = self._record_plan()
        ops = self.program.ops
        s, self.state = self.state, [None] * len(self.state)
        for kind, where, fn in self._recorded:
            if kind == "chain":
                values = fn(s, batch)  # type: ignore[operator]
                for k, t in zip(where, values, strict=True):  # type: ignore[call-overload]
                    on_value(k, ops[k].out, t)
            elif kind == "fill":  # a captured constant
                on_value(where, ops[where].out, fn)  # type: ignore[index,arg-type]
            elif kind == "free":  # a FREE the chain before ran
                on_value(where, ops[where].out, None)  # type: ignore[index,arg-type]
            else:
                fn(s, batch)  # type: ignore[operator]
                out = ops[where].out  # type: ignore[index]
                value = s[out]
                on_value(where, out, value)  # type: ignore[arg-type]
        keep = set(self._persistent)
        self.state = [v if i in keep else None for i, v in enumerate(s)]
        self._computed |= self._writes_compute

    def _record_plan(self) -> list[tuple[str, object, object]]:
        """The calls of :meth:`run_step_recorded`: chains that keep every value, the other
        ops' closures, and the captured FILLs (run nowhere, recorded at their index)."""
        program = self.program
        plan = [j for j in range(len(program.ops)) if j not in self._static_fills]
        entries: list[int | Chain] = list(plan)
        if native_available(self.device):
            entries = plan_chains(program, plan, lambda j: self._parts.get(id(program.ops[j])))
        calls: list[tuple[str, object, object]] = [
            ("fill", j, self._fill_value(program.ops[j])) for j in sorted(self._static_fills)
        ]
        kernels = native_kernels() if native_available(self.device) else None
        for e in entries:
            if isinstance(e, Chain):
                calls.append(("chain", e.ops, chain_runner(e, program, kernels, record=True)))
                chained = set(e.ops)  # the FREEs the chain absorbed: recorded, run by it
                calls.extend(("free", j, None) for j in e.entries if j not in chained)
            else:
                calls.append(("op", e, self._fns[e]))
        return calls

    # ------------------------------------------------------------------ compiling
    def _fill_value(self, op: OpDescriptor) -> Tensor:
        bits = np.full(op.shape, op.imm, dtype=np.uint32)
        return torch.from_numpy(bits.view(np.float32)).to(self.device)

    def _compile(self, op: OpDescriptor, constants: dict[int, Tensor]) -> OpFn:
        out = op.out
        code = op.opcode
        if code in ELEMENTWISE_OPS:
            return self._compile_elementwise(op, constants)
        if code == Opcode.REDUCE_MAX:
            return self._compile_reduce_max(op, constants)
        if code == Opcode.REDUCE_SUM:
            return self._compile_reduce_sum(op, constants)
        if code == Opcode.MATMUL:
            return self._compile_matmul(op, constants)
        if code == Opcode.INDEX_ADD:
            return self._compile_index_add(op, constants)
        if code == Opcode.GATHER:
            return self._compile_gather(op, constants)
        if code == Opcode.FILL:
            const = self._fill_value(op)

            def fill(s: Slots, _b: object) -> None:
                s[out] = const

            return fill
        if code == Opcode.LOAD_BATCH:
            which = 0 if op.imm == BATCH_X else 1
            shape = tuple(op.shape)

            def load(s: Slots, b: BatchTensors | None) -> None:
                if b is None:
                    raise ExecutionError("LOAD_BATCH needs a batch but none was given")
                t = b[which]
                if tuple(t.shape) != shape:
                    raise ExecutionError(
                        f"batch tensor has shape {list(t.shape)}, the program expects {list(shape)}"
                    )
                s[out] = t

            return load
        if code == Opcode.FREE:

            def free(s: Slots, _b: object) -> None:
                s[out] = None

            return free
        raise ExecutionError(f"unknown opcode {code!r}")  # pragma: no cover

    def _elementwise_parts(
        self, op: OpDescriptor, constants: dict[int, Tensor]
    ) -> tuple[Callable[..., Tensor], list[OperandSpec], bool]:
        """(kernel, how to pass each operand, whether any operand is a strided view)."""
        shape, kernel = tuple(op.shape), ELEMENT_KERNELS[op.opcode]
        if op.opcode in (Opcode.GT, Opcode.GE, Opcode.EQ):
            kernel = compare_kernel(op.opcode, shape, self.device)
        elif op.opcode.name in NATIVE_ELEMENT_CODES and native_available(self.device):
            kernel = native_element_op(op.opcode.name, shape, kernel)
        slots = self.program.slots
        # torch broadcasting must produce the op's shape: some operand has to be full-shape
        full = [
            _is_identity(shape, o, slots[o.slot].shape)
            or not _is_broadcast(shape, o, slots[o.slot].shape)
            for o in op.operands
        ]
        specs: list[OperandSpec] = []
        strided = False
        for k, o in enumerate(op.operands):
            slot_shape = slots[o.slot].shape
            const = constants.get(o.slot)
            force_full = not any(full) and k == 0
            if _is_identity(shape, o, slot_shape) or (
                not force_full and _is_broadcast(shape, o, slot_shape)
            ):
                specs.append(("slot", o.slot) if const is None else ("const", const))
            elif const is not None:
                specs.append(("const", torch.as_strided(const, shape, tuple(o.strides), o.offset)))
                strided = True
            else:
                specs.append(("strided", o.slot, shape, tuple(o.strides), o.offset))
                strided = True
        return kernel, specs, strided

    def _compile_elementwise(self, op: OpDescriptor, constants: dict[int, Tensor]) -> OpFn:
        kernel, specs, strided = self._elementwise_parts(op, constants)
        self._parts[id(op)] = (kernel, specs, strided)
        out = op.out

        def getter(spec: OperandSpec) -> Getter:
            if spec[0] == "slot":
                slot = spec[1]
                return lambda s: s[slot]  # type: ignore[return-value]
            if spec[0] == "const":
                value = spec[1]
                return lambda _s: value
            _, slot, size, stride, offset = spec
            return lambda s: torch.as_strided(s[slot], size, stride, offset)  # type: ignore[arg-type]

        getters = [getter(spec) for spec in specs]
        # outputs follow an identity operand's (C) layout; after strided views, make it so

        def elementwise(s: Slots, _b: object) -> None:
            r = kernel(*(g(s) for g in getters))
            s[out] = r.contiguous() if strided else r

        return elementwise

    def _generate_step(self, plan: list[int]) -> Callable[[Slots, BatchTensors | None], None]:
        """The step as one generated function: element ops inline, the others called.

        Same kernels and operands as the per-op closures, without their call layers; on the
        CPU with the native kernels, runs of element ops become one chain call each
        (``replay/execute/fusion.py``: same bits, one pass over memory). FREEs
        release their slot; an op that overwrites a persistent slot without reading it
        releases the old value before computing the new one (nothing reads it any more).
        """
        ns: dict[str, object] = {"as_strided": torch.as_strided}
        lines = ["def step(s, b):"]
        entries: list[int | Chain] = list(plan)
        if native_available(self.device):  # runs of element ops: one native call each
            program = self.program
            entries = plan_chains(program, plan, lambda j: self._parts.get(id(program.ops[j])))
        #: the step's calls in order, labelled (the generated function inlines the same):
        #: for profiling (bench/step.py --profile)
        self.step_calls: list[tuple[str, Callable[[Slots, BatchTensors | None], None]]] = []
        for j in entries:
            if isinstance(j, Chain):
                name = f"ch{j.ops[0]}"
                ns[name] = chain_runner(j, self.program, native_kernels())
                lines.append(f"    {name}(s, b)")
                self.step_calls.append((f"chain[{len(j.ops)}]", ns[name]))  # type: ignore[arg-type]
                continue
            op = self.program.ops[j]
            self.step_calls.append((op.opcode.name, self._fns[j]))
            if op.opcode == Opcode.FREE or (
                self.program.slots[op.out].persistent
                and op.out not in {o.slot for o in op.operands}
            ):  # a FREE, or a persistent value that is dead once this op starts: release it
                lines.append(f"    s[{int(op.out)}] = None")
                if op.opcode == Opcode.FREE:
                    continue
            parts = self._parts.get(id(op))
            if parts is None:
                ns[f"f{j}"] = self._fns[j]
                lines.append(f"    f{j}(s, b)")
                continue
            kernel, specs, strided = parts
            ns[f"k{j}"] = kernel
            args = []
            for k, spec in enumerate(specs):
                if spec[0] == "slot":
                    args.append(f"s[{int(spec[1])}]")
                elif spec[0] == "const":
                    ns[f"c{j}_{k}"] = spec[1]
                    args.append(f"c{j}_{k}")
                else:
                    _, slot, size, stride, offset = spec
                    args.append(
                        f"as_strided(s[{int(slot)}], {tuple(map(int, size))!r}, "
                        f"{tuple(map(int, stride))!r}, {int(offset)})"
                    )
            call = f"k{j}({', '.join(args)})" + (".contiguous()" if strided else "")
            lines.append(f"    s[{int(op.out)}] = {call}")
        lines.append("    return None")
        exec(compile("\n".join(lines), "<canonical step>", "exec"), ns)
        return ns["step"]  # type: ignore[return-value]

    def _terms(self, op: OpDescriptor, o: Operand, constants: dict[int, Tensor]) -> Getter:
        """All R terms of a reduction operand as a [R, *shape] view."""
        size = (op.reduce_len, *op.shape)
        stride, offset = (o.reduce_stride, *o.strides), o.offset
        const = constants.get(o.slot)
        if const is not None:
            view = torch.as_strided(const, size, stride, offset)
            return lambda _s: view
        slot = o.slot
        return lambda s: torch.as_strided(s[slot], size, stride, offset)  # type: ignore[arg-type]

    def _compile_reduce_max(self, op: OpDescriptor, constants: dict[int, Tensor]) -> OpFn:
        out, terms = op.out, self._terms(op, op.operands[0], constants)
        if native_available(self.device):
            return self._native_fold(op, constants, native_reduce_max)

        def rmax(s: Slots, _b: object) -> None:
            s[out] = reduce_max_terms(terms(s)).contiguous()

        return rmax

    def _block_rows(self, n: int) -> int:
        return max(1, self.max_table_bytes // max(1, 4 * n))

    def _flat(self, slot: int, constants: dict[int, Tensor]) -> Callable[[Slots], np.ndarray]:
        """A slot's (or its captured constant's) storage as a flat float32 numpy view."""
        const = constants.get(slot)
        if const is not None:
            fixed = const.reshape(-1).numpy()
            return lambda _s: fixed
        return lambda s: s[slot].reshape(-1).numpy()  # type: ignore[union-attr]

    def _native_fold(
        self, op: OpDescriptor, constants: dict[int, Tensor], kernel: Callable[..., None]
    ) -> OpFn:
        """REDUCE_SUM / REDUCE_MAX on the native kernel, reading the operand in place."""
        (o,) = op.operands
        out, shape, rows = op.out, tuple(op.shape), op.reduce_len
        x_of, x_map = self._flat(o.slot, constants), (o.offset, tuple(o.strides), o.reduce_stride)

        def fold(s: Slots, _b: object) -> None:
            res = torch.empty(shape, dtype=F32)
            kernel(res.reshape(-1).numpy(), x_of(s), shape, x_map, rows, torch.get_num_threads())
            s[out] = res

        return fold

    def _compile_reduce_sum(self, op: OpDescriptor, constants: dict[int, Tensor]) -> OpFn:
        out, shape, rows, n = op.out, tuple(op.shape), op.reduce_len, op.numel
        if native_available(self.device):
            return self._native_fold(op, constants, native_reduce_sum)
        terms, summer, block = (
            self._terms(op, op.operands[0], constants),
            self._summer,
            self._block_rows(n),
        )

        def rsum(s: Slots, _b: object) -> None:
            table = terms(s).reshape(rows, n)  # copies when the view is not contiguous
            s[out] = summer.blocked(lambda lo, hi: table[lo:hi], rows, n, block).reshape(shape)

        return rsum

    def _compile_matmul(self, op: OpDescriptor, constants: dict[int, Tensor]) -> OpFn:
        """The sequential FMA chain ``acc_{r+1} = fma(a_r, b_r, acc_r)``.

        A (batched) matrix product — A's map constant along the last output dim, B's along
        the one before — runs on the native kernel (``replay.execute._kernels``) on the CPU, one
        [M, R] @ [R, N] block per batch index; anything else, and every op when the kernel is
        not built or the device is not the CPU, is vectorised over the output elements with
        one exact float64 product table per r, rounded once (``fma64``)."""
        oa, ob = op.operands
        if op.rank >= 2 and oa.strides[-1] == 0 and ob.strides[-2] == 0:
            if native_available(self.device):
                return self._compile_native_matmul(op, constants)
            if op.rank == 2:
                return self._compile_matrix_product(op, constants)
        out, shape, rows = op.out, tuple(op.shape), op.reduce_len
        ta, tb = self._terms(op, oa, constants), self._terms(op, ob, constants)
        device = self.device

        def matmul(s: Slots, _b: object) -> None:
            a, b = ta(s), tb(s)
            acc = torch.zeros(shape, dtype=F32, device=device)
            for r in range(rows):
                acc = fma64(a[r].to(torch.float64) * b[r].to(torch.float64), acc.to(torch.float64))
            s[out] = acc.contiguous()

        return matmul

    def _compile_native_matmul(self, op: OpDescriptor, constants: dict[int, Tensor]) -> OpFn:
        """The native FMA-chain kernel reads both operands in place through their index maps
        (no gathered copies): per batch index an ``[M, R] @ [R, N]`` product, every output
        element one accumulator in strict r order — the same bits for any thread count and
        ISA path. The batch loop runs inside the kernel (whole batches per thread when there
        are enough)."""
        oa, ob = op.operands
        *lead, m, n = op.shape
        rows, out, shape = op.reduce_len, op.out, tuple(op.shape)
        batches = list(np.ndindex(*lead)) if lead else [()]
        offsets = np.array(
            [
                (
                    sum(i * st for i, st in zip(idx, oa.strides[:-2], strict=True)),
                    sum(i * st for i, st in zip(idx, ob.strides[:-2], strict=True)),
                    k * m * n,
                )
                for k, idx in enumerate(batches)
            ],
            dtype=np.int64,
        ).reshape(len(batches), 3)
        a_map = (oa.offset, oa.strides[-2], oa.reduce_stride)
        b_map = (ob.offset, ob.reduce_stride, ob.strides[-1])
        const_a, const_b = constants.get(oa.slot), constants.get(ob.slot)
        fixed_a = None if const_a is None else const_a.reshape(-1).numpy()
        fixed_b = None if const_b is None else const_b.reshape(-1).numpy()
        sa, sb = oa.slot, ob.slot

        def matmul(s: Slots, _b: object) -> None:
            res = torch.empty(shape, dtype=F32)
            a = fixed_a if fixed_a is not None else s[sa].reshape(-1).numpy()  # type: ignore[union-attr]
            b = fixed_b if fixed_b is not None else s[sb].reshape(-1).numpy()  # type: ignore[union-attr]
            native_gemm(
                a, b, res.reshape(-1).numpy(), (m, n, rows), a_map, b_map, offsets,
                torch.get_num_threads(),
            )  # fmt: skip
            s[out] = res

        return matmul

    def _compile_matrix_product(self, op: OpDescriptor, constants: dict[int, Tensor]) -> OpFn:
        """C[m,n] = fma chain over r of A[m,r]·B[r,n], A's map varying only with m and r,
        B's with r and n: A' = [R, M] and B' = [R, N] are gathered once in float64 (exact),
        and each step forms the [M, N] product table and adds it to the accumulator with one
        rounding."""
        oa, ob = op.operands
        (m, n), rows, out = op.shape, op.reduce_len, op.out
        ga = self._rows(oa, (rows, m), (oa.reduce_stride, oa.strides[0]), constants)
        gb = self._rows(ob, (rows, n), (ob.reduce_stride, ob.strides[1]), constants)
        device = self.device

        def matmul(s: Slots, _b: object) -> None:
            a, b = ga(s).to(torch.float64), gb(s).to(torch.float64)
            acc = torch.zeros((m, n), dtype=F32, device=device)
            for r in range(rows):
                acc = fma64(a[r].unsqueeze(1) * b[r].unsqueeze(0), acc.to(torch.float64))
            s[out] = acc

        return matmul

    def _compile_gather(self, op: OpDescriptor, constants: dict[int, Tensor]) -> OpFn:
        """GATHER: operand 0's values pick a row of operand 1 (``index_rows``); elements
        with no row are +0.0."""
        oi, ot = op.operands
        out, shape, rows = op.out, tuple(op.shape), op.reduce_len
        if native_available(self.device):
            i_of, t_of = self._flat(oi.slot, constants), self._flat(ot.slot, constants)
            i_map = (oi.offset, tuple(oi.strides))
            t_map = (ot.offset, tuple(ot.strides), ot.reduce_stride)

            def native_gather_op(s: Slots, _b: object) -> None:
                res = torch.empty(shape, dtype=F32)
                native_gather(
                    res.reshape(-1).numpy(), i_of(s), t_of(s), shape, i_map, t_map, rows,
                    torch.get_num_threads(),
                )  # fmt: skip
                s[out] = res

            return native_gather_op
        index = self._element_view(op, oi, constants)
        base = torch.as_strided(
            torch.arange(max(1, self.program.slots[ot.slot].numel), device=self.device),
            shape, tuple(ot.strides), ot.offset,
        ) if rows else None  # fmt: skip
        table_slot, rho, fixed = ot.slot, ot.reduce_stride, constants.get(ot.slot)
        device = self.device

        def gather(s: Slots, _b: object) -> None:
            valid, row = index_rows(index(s), rows)
            if base is None:
                s[out] = torch.zeros(shape, dtype=F32, device=device)
                return
            flat = torch.where(valid, base + row * rho, 0)
            table = fixed if fixed is not None else s[table_slot]
            picked = table.reshape(-1)[flat]  # type: ignore[union-attr]
            s[out] = torch.where(valid, picked, 0.0).contiguous()

        return gather

    def _compile_index_add(self, op: OpDescriptor, constants: dict[int, Tensor]) -> OpFn:
        """INDEX_ADD: output row v accumulates, in r order, the terms whose index equals v.

        When the index list is the same for every output element and the values do not
        depend on the row (an embedding gradient), the positions are stably sorted by row
        and ``embedding_bag`` sums each row's bag in index order from +0.0: the sequential
        sum with the non-matching (+0.0) terms left out, which changes nothing. Otherwise a
        plain loop over r."""
        oi, ov = op.operands
        out, shape, rows = op.out, tuple(op.shape), op.reduce_len
        device = self.device
        ti, tv = self._terms(op, oi, constants), self._terms(op, ov, constants)
        v = shape[0] if shape else 1
        fast = (
            self.sum_strategy == "embedding_bag"
            and len(shape) >= 1
            and math.prod(shape) > 0
            and all(st == 0 for st in oi.strides)
            and ov.strides[0] == 0
        )
        row_grid = torch.arange(v, device=device, dtype=torch.float64).reshape(
            (v,) + (1,) * (len(shape) - 1) if shape else ()
        )
        rest = math.prod(shape[1:])

        def index_add(s: Slots, _b: object) -> None:
            idx, val = ti(s), tv(s)  # [R, *shape] views
            if fast and rows:
                positions = idx.reshape(rows, -1)[:, 0]
                valid, row = index_rows(positions, v)
                keep = torch.nonzero(valid).reshape(-1)
                order = torch.sort(row[keep], stable=True)
                bags = keep[order.indices]
                starts = torch.searchsorted(order.values, torch.arange(v, device=device))
                table = val[:, 0].reshape(rows, rest).contiguous()
                if bags.numel() == 0:
                    s[out] = torch.zeros(shape, dtype=F32, device=device)
                    return
                summed = F.embedding_bag(bags, table, starts, mode="sum")
                s[out] = summed.reshape(shape).contiguous()
                return
            acc = torch.zeros(shape, dtype=F32, device=device)
            for r in range(rows):
                hit = idx[r].to(torch.float64) == row_grid
                acc = torch.add(acc, torch.where(hit, val[r], 0.0))
            s[out] = acc.contiguous()

        return index_add

    def _element_view(self, op: OpDescriptor, o: Operand, constants: dict[int, Tensor]) -> Getter:
        """An operand's values at every output element (r = 0), as an output-shaped view."""
        shape, stride, offset = tuple(op.shape), tuple(o.strides), o.offset
        const = constants.get(o.slot)
        if const is not None:
            view = torch.as_strided(const, shape, stride, offset)
            return lambda _s: view
        slot = o.slot
        return lambda s: torch.as_strided(s[slot], shape, stride, offset)  # type: ignore[arg-type]

    def _rows(
        self,
        o: Operand,
        size: tuple[int, int],
        stride: tuple[int, int],
        constants: dict[int, Tensor],
    ) -> Getter:
        """Operand values as a contiguous [R, K] tensor (a copy only if the view needs one)."""
        const = constants.get(o.slot)
        if const is not None:
            fixed = torch.as_strided(const, size, stride, o.offset).contiguous()
            return lambda _s: fixed
        slot, offset = o.slot, o.offset
        return lambda s: torch.as_strided(s[slot], size, stride, offset).contiguous()  # type: ignore[arg-type]
