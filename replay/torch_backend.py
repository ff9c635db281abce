"""The torch interpreter: the same element semantics as the numpy reference, bit for bit.

Each op is compiled once into a closure over torch kernels. Only kernels whose float32
results are defined bit for bit are used: elementwise ``add sub mul div neg abs round``
(IEEE correctly rounded, one kernel per primitive, so nothing is fused; SQRT goes through
float64, see :func:`_sqrt`), comparisons, ``where``,
integer bit operations and float64<->float32 conversions. No BLAS, no library transcendental.

- Reductions and MATMUL: all terms of the op are formed with one ``mul`` kernel (MATMUL) into a
  ``[R, outputs]`` table, then summed **sequentially in r** by ``embedding_bag(mode="sum")``,
  whose kernel adds the rows of one bag in index order into a float32 accumulator that starts
  at +0.0 — exactly ``acc_{r+1} = acc_r + term_r``. The ``"loop"`` strategy (one ``add`` kernel
  per r) is the plainly sequential fallback, and the default on CUDA. The tests hold both to
  the numpy reference over random programs.
- NaN canonicalisation is lazy: whether an IEEE result is NaN never depends on the payload of
  a NaN operand, and no primitive turns a NaN into a non-NaN differently by payload (compares
  give 0.0, SELECT only moves it), so canonicalising the slots that are exported (state, trace)
  gives the same bits as canonicalising after every op.
- MAX/MIN: ``torch.maximum`` + a fix for equal operands, where the IEEE 754-2019 result is the
  bitwise AND (max) / OR (min) of the two patterns (it only differs from either for ±0).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F

from protocol.ir import (
    BATCH_X,
    CANONICAL_NAN_BITS,
    ELEMENTWISE_OPS,
    Opcode,
    OpDescriptor,
    Operand,
    Program,
    contiguous_strides,
)
from replay.errors import ExecutionError
from replay.numpy_backend import named_from_slots, slots_from_named
from replay.semantics import LDEXP_CLAMP

Tensor = torch.Tensor
Slots = list[Tensor | None]
OpFn = Callable[[Slots, "tuple[Tensor, Tensor] | None"], None]
SumStrategy = Literal["auto", "embedding_bag", "loop"]
F32 = torch.float32
_NAN = float("nan")


def canonical_nan_like(t: Tensor) -> Tensor:
    return torch.full((), _NAN, dtype=F32, device=t.device)


def canon(t: Tensor) -> Tensor:
    """``t`` with every NaN replaced by the canonical NaN 0x7FC00000."""
    nan = torch.tensor(CANONICAL_NAN_BITS, dtype=torch.int32, device=t.device).view(F32)
    return torch.where(torch.isnan(t), nan, t)


# --------------------------------------------------------------------------- element kernels


def _max(a: Tensor, b: Tensor) -> Tensor:
    same = (a.view(torch.int32) & b.view(torch.int32)).view(F32)
    return torch.where(a == b, same, torch.maximum(a, b))


def _min(a: Tensor, b: Tensor) -> Tensor:
    same = (a.view(torch.int32) | b.view(torch.int32)).view(F32)
    return torch.where(a == b, same, torch.minimum(a, b))


def _pow2(k: Tensor) -> Tensor:
    """Exact float64 2**k for integer |k| ≤ 1022 (built from the exponent bits)."""
    return ((k + 1023) << 52).view(torch.float64)


def _ldexp(x: Tensor, n: Tensor) -> Tensor:
    valid = torch.isfinite(n) & (torch.trunc(n) == n)
    k = torch.clamp(torch.where(valid, n, 0.0), -LDEXP_CLAMP, LDEXP_CLAMP).to(torch.int64)
    k1 = torch.div(k, 2, rounding_mode="floor")
    # x·2^k1·2^(k-k1) is exact in float64 (|k1|, |k-k1| ≤ 150), then one rounding to float32
    r = (x.to(torch.float64) * _pow2(k1) * _pow2(k - k1)).to(F32)
    return torch.where(valid, r, canonical_nan_like(x))


def _frexp_exp(x: Tensor) -> Tensor:
    _, e = torch.frexp(x)
    return torch.where(torch.isfinite(x), e.to(F32), 0.0)


def _sqrt(x: Tensor) -> Tensor:
    """Correctly rounded float32 sqrt, computed as float32(sqrt_f64(x)).

    torch's vectorised float32 sqrt on CPU is *not* correctly rounded (torch 2.13: about 20% of
    random inputs are 1 ulp off, for every ATEN_CPU_CAPABILITY). For float32 x, sqrt(x) is at
    least 2^-50 (relative) away from every float32 rounding midpoint, so a float64 sqrt with
    error below 4 ulps of float64 rounds to the correctly rounded float32 result.
    """
    return torch.sqrt(x.to(torch.float64)).to(F32)


def _flag(fn: Callable[[Tensor, Tensor], Tensor]) -> Callable[[Tensor, Tensor], Tensor]:
    return lambda a, b: fn(a, b).to(F32)


ELEMENT_KERNELS: dict[Opcode, Callable[..., Tensor]] = {
    Opcode.ADD: torch.add,
    Opcode.SUB: torch.sub,
    Opcode.MUL: torch.mul,
    Opcode.DIV: torch.div,
    Opcode.MAX: _max,
    Opcode.MIN: _min,
    Opcode.GT: _flag(torch.gt),
    Opcode.GE: _flag(torch.ge),
    Opcode.EQ: _flag(torch.eq),
    Opcode.LDEXP: _ldexp,
    Opcode.NEG: torch.neg,
    Opcode.ABS: torch.abs,
    Opcode.SQRT: _sqrt,
    Opcode.ROUND: torch.round,
    Opcode.FREXP_EXP: _frexp_exp,
    Opcode.FREXP_MANT: lambda x: torch.frexp(x)[0],
    # a fresh tensor: slot tensors must own their storage from offset 0 (as_strided is absolute)
    Opcode.COPY: lambda x: x.clone(memory_format=torch.contiguous_format),
    Opcode.SELECT: lambda c, a, b: torch.where(c != 0, a, b),
}


# --------------------------------------------------------------------------- operand views


def _is_identity(op: OpDescriptor, o: Operand, slot_shape: tuple[int, ...]) -> bool:
    return (
        o.offset == 0
        and tuple(slot_shape) == tuple(op.shape)
        and tuple(o.strides) == contiguous_strides(op.shape)
    )


def _viewer(op: OpDescriptor, o: Operand, slot_shape: tuple[int, ...]) -> Callable[[Slots], Tensor]:
    slot = o.slot
    if _is_identity(op, o, slot_shape):
        return lambda s: s[slot]  # type: ignore[return-value]
    size, stride, offset = tuple(op.shape), tuple(o.strides), o.offset
    return lambda s: torch.as_strided(s[slot], size, stride, offset)  # type: ignore[arg-type]


def _term_viewer(op: OpDescriptor, o: Operand) -> Callable[[Slots], Tensor]:
    """All R terms of a reduction operand as a [R, *shape] view."""
    slot = o.slot
    size = (op.reduce_len, *op.shape)
    stride = (o.reduce_stride, *o.strides)
    offset = o.offset
    return lambda s: torch.as_strided(s[slot], size, stride, offset)  # type: ignore[arg-type]


# --------------------------------------------------------------------------- sequential sums


def sequential_sum_rows(table: Tensor, strategy: SumStrategy) -> Tensor:
    """``acc = +0.0; for r: acc = acc + table[r]`` over a contiguous [R, n] float32 table."""
    rows, n = table.shape
    if rows == 0:
        return torch.zeros(n, dtype=F32, device=table.device)
    if strategy == "loop":
        acc = torch.zeros(n, dtype=F32, device=table.device)
        for r in range(rows):
            acc = torch.add(acc, table[r])
        return acc
    idx = torch.arange(rows, device=table.device)
    offsets = torch.zeros(1, dtype=torch.long, device=table.device)
    return F.embedding_bag(idx, table, offsets, mode="sum").reshape(n)


class TorchExecutor:
    """Runs a validated program with torch kernels on ``device`` (cpu or cuda)."""

    name = "torch"

    def __init__(
        self,
        program: Program,
        device: str = "cpu",
        sum_strategy: SumStrategy = "auto",
        max_table_bytes: int = 64 << 20,
    ) -> None:
        self.program = program
        self.device = torch.device(device)
        if self.device.type == "cuda" and not torch.cuda.is_available():
            raise ExecutionError("device 'cuda' requested but torch sees no CUDA device")
        if sum_strategy == "auto":
            sum_strategy = "embedding_bag" if self.device.type == "cpu" else "loop"
        self.sum_strategy: SumStrategy = sum_strategy
        self.max_table_rows_bytes = max_table_bytes
        torch.set_flush_denormal(False)  # canonical mode keeps subnormals
        self.state: Slots = [None] * len(program.slots)
        self._computed: set[int] = set()
        self._batch_cache: tuple[object, tuple[Tensor, Tensor]] | None = None
        self._fns: list[OpFn] = [self._compile(op) for op in program.ops]
        self._writes_compute = {
            op.out for op in program.ops if op.opcode not in (Opcode.LOAD_BATCH, Opcode.FREE)
        }

    # ------------------------------------------------------------------ state
    def set_state(self, values: dict[str, np.ndarray]) -> None:
        arrays = slots_from_named(self.program, values)
        self.state = [None if a is None else self._to_device(a) for a in arrays]
        self._computed = set()

    def get_state(self) -> dict[str, np.ndarray]:
        return named_from_slots(
            self.program, [self.slot_array(i) for i in range(len(self.program.slots))]
        )

    def slot_array(self, i: int) -> np.ndarray | None:
        """Slot ``i`` as a numpy float32 array with canonical NaNs (None if empty)."""
        t = self.state[i]
        if t is None:
            return None
        if i in self._computed:
            t = canon(t)
        return t.detach().to("cpu").contiguous().numpy().copy()

    def _to_device(self, a: np.ndarray) -> Tensor:
        return torch.from_numpy(np.array(a, dtype=np.float32, order="C", copy=True)).to(self.device)

    # ------------------------------------------------------------------ running
    def batch_tensors(self, batch: tuple[np.ndarray, np.ndarray]) -> tuple[Tensor, Tensor]:
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
        tb = None if batch is None else self.batch_tensors(batch)
        self.run_step_tensors(tb)

    def run_step_tensors(self, batch: tuple[Tensor, Tensor] | None) -> None:
        s = self.state
        for fn in self._fns:
            fn(s, batch)
        self._computed |= self._writes_compute

    # ------------------------------------------------------------------ compiling
    def _compile(self, op: OpDescriptor) -> OpFn:
        out = op.out
        slots = self.program.slots
        code = op.opcode
        if code in ELEMENTWISE_OPS:
            kernel = ELEMENT_KERNELS[code]
            views = [_viewer(op, o, slots[o.slot].shape) for o in op.operands]
            if len(views) == 1:
                (v0,) = views

                def unary(s: Slots, _b: object) -> None:
                    s[out] = kernel(v0(s)).contiguous()

                return unary
            if len(views) == 2:
                v0, v1 = views

                def binary(s: Slots, _b: object) -> None:
                    s[out] = kernel(v0(s), v1(s)).contiguous()

                return binary
            v0, v1, v2 = views

            def ternary(s: Slots, _b: object) -> None:
                s[out] = kernel(v0(s), v1(s), v2(s)).contiguous()

            return ternary
        if code in (Opcode.REDUCE_SUM, Opcode.MATMUL, Opcode.REDUCE_MAX):
            return self._compile_reduction(op)
        if code == Opcode.FILL:
            bits = np.full(op.shape, op.imm, dtype=np.uint32)
            const = torch.from_numpy(bits.view(np.float32)).to(self.device)

            def fill(s: Slots, _b: object) -> None:
                s[out] = const

            return fill
        if code == Opcode.LOAD_BATCH:
            which = 0 if op.imm == BATCH_X else 1
            shape = tuple(op.shape)

            def load(s: Slots, b: tuple[Tensor, Tensor] | None) -> None:
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

    def _compile_reduction(self, op: OpDescriptor) -> OpFn:
        out = op.out
        shape = tuple(op.shape)
        rows = op.reduce_len
        n = op.numel
        terms = [_term_viewer(op, o) for o in op.operands]
        strategy = self.sum_strategy
        device = self.device
        if op.opcode == Opcode.REDUCE_MAX:
            (t0,) = terms

            def rmax(s: Slots, _b: object) -> None:
                s[out] = reduce_max_terms(t0(s).reshape(rows, n), device).reshape(shape)

            return rmax
        # rows per block so that one block of the term table stays under max_table_bytes
        block = max(1, min(rows, self.max_table_rows_bytes // max(1, 4 * n)))
        if op.opcode == Opcode.REDUCE_SUM:
            (t0,) = terms

            def rsum(s: Slots, _b: object) -> None:
                table = t0(s).reshape(rows, n)  # copies when the view is not contiguous
                s[out] = blocked_sum(
                    lambda lo, hi: table[lo:hi], rows, n, block, strategy, device
                ).reshape(shape)

            return rsum
        ta, tb = terms

        def matmul(s: Slots, _b: object) -> None:
            a, b = ta(s), tb(s)

            def products(lo: int, hi: int) -> Tensor:
                buf = torch.empty((hi - lo, *shape), dtype=F32, device=device)
                torch.mul(a[lo:hi], b[lo:hi], out=buf)
                return buf.reshape(hi - lo, n)

            s[out] = blocked_sum(products, rows, n, block, strategy, device).reshape(shape)

        return matmul


def blocked_sum(
    rows_of: Callable[[int, int], Tensor],
    rows: int,
    n: int,
    block: int,
    strategy: SumStrategy,
    device: torch.device,
) -> Tensor:
    """Sequential sum of R rows produced block by block (bounded memory).

    Each later block is summed with the running accumulator as its first row: the sum then
    starts ``+0.0 + acc``, which equals ``acc`` because a sequential sum that starts at +0.0 is
    never -0.0 (x + y = -0 in RNE only when both are -0), so the order of additions is exactly
    ``acc_{r+1} = acc_r + term_r``.
    """
    if rows <= block:
        return sequential_sum_rows(rows_of(0, rows).contiguous(), strategy)
    acc = sequential_sum_rows(rows_of(0, block).contiguous(), strategy)
    for lo in range(block, rows, block):
        hi = min(rows, lo + block)
        table = torch.cat([acc.reshape(1, n), rows_of(lo, hi)])
        acc = sequential_sum_rows(table, strategy)
    return acc


def reduce_max_terms(table: Tensor, device: torch.device) -> Tensor:
    """IEEE 754-2019 maximum over rows, from acc_0 = -inf.

    maximum with -0 < +0 and NaN absorbing is a lattice join, so the sequential fold equals the
    order-free max; ``amax`` computes it except for the sign of a zero result, fixed here: +0 if
    any term is +0, else -0.
    """
    rows, n = table.shape
    if rows == 0:
        return torch.full((n,), float("-inf"), dtype=F32, device=device)
    m = torch.amax(table, dim=0)
    pos_zero = (table.view(torch.int32) == 0).any(dim=0)
    zeros = torch.tensor([0.0, -0.0], dtype=F32, device=device)
    zero = torch.where(pos_zero, zeros[0], zeros[1])
    return torch.where(m == 0, zero, m)
