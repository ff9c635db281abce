"""torch kernels for each IR primitive, with the exact semantics of ``replay/execute/semantics.py``.

Only kernels whose float32 results are defined bit for bit are used: elementwise
``add sub mul div neg abs round`` (IEEE correctly rounded; one kernel per primitive, so nothing
is fused), comparisons, ``where``, ``amax``, integer bit operations, float32<->float64
conversions and ``embedding_bag``'s sequential row sum. No BLAS, no library transcendental.

Results may carry non-canonical NaNs; the executor canonicalises when it exports a slot
(whether a result is NaN never depends on an operand NaN's payload).
"""

from __future__ import annotations

from collections.abc import Callable
from functools import lru_cache
from typing import Literal

import torch
import torch.nn.functional as F

from protocol.ir import CANONICAL_NAN_BITS, Opcode
from replay.execute.semantics import LDEXP_CLAMP

Tensor = torch.Tensor
F32 = torch.float32
SumStrategy = Literal["auto", "embedding_bag", "loop"]
#: elements per block of the float64 sqrt (bounds its temporaries to 1 MiB)
SQRT_BLOCK = 1 << 16


def canon(t: Tensor) -> Tensor:
    """``t`` with every NaN replaced by the canonical NaN 0x7FC00000."""
    return torch.where(torch.isnan(t), _nan(t.device), t)


@lru_cache(maxsize=8)
def _nan(device: torch.device) -> Tensor:
    """The canonical NaN as a 0-dim tensor (cached per device; never written to)."""
    return torch.tensor(CANONICAL_NAN_BITS, dtype=torch.int32, device=device).view(F32)


@lru_cache(maxsize=8)
def _signed_zeros(device: torch.device) -> tuple[Tensor, Tensor]:
    zeros = torch.tensor([0.0, -0.0], dtype=F32, device=device)
    return zeros[0], zeros[1]


def _max(a: Tensor, b: Tensor) -> Tensor:
    """IEEE 754-2019 maximum: ``torch.maximum`` (NaN-propagating) except where ``a == b``,
    where the result is the AND of the two bit patterns (+0 unless both are -0).

    (Not ``maximum(a, b) & maximum(b, a)``: on some code paths torch.maximum returns a NaN
    operand's own payload, and the AND of two different NaNs can be an infinity.)
    """
    same = (a.view(torch.int32) & b.view(torch.int32)).view(F32)
    return torch.where(a == b, same, torch.maximum(a, b))


def _min(a: Tensor, b: Tensor) -> Tensor:
    """IEEE 754-2019 minimum: as :func:`_max`, with OR (-0 if either is -0)."""
    same = (a.view(torch.int32) | b.view(torch.int32)).view(F32)
    return torch.where(a == b, same, torch.minimum(a, b))


def _ldexp(x: Tensor, n: Tensor) -> Tensor:
    """x·2^n: 2^k is built exactly from float64 exponent bits (|k| ≤ 300), the float64 product
    is exact, and the float64→float32 conversion is the single rounding."""
    valid = torch.isfinite(n) & (torch.trunc(n) == n)
    k = torch.clamp(torch.where(valid, n, 0.0), -LDEXP_CLAMP, LDEXP_CLAMP).to(torch.int64)
    pow2 = ((k + 1023) << 52).view(torch.float64)
    r = (x.to(torch.float64) * pow2).to(F32)
    return torch.where(valid, r, _nan(x.device))


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
    if x.numel() <= SQRT_BLOCK:
        return torch.sqrt(x.to(torch.float64)).to(F32)
    # in blocks, so the float64 temporaries stay small (elementwise: the same bits)
    src = x.reshape(-1)
    out = torch.empty(src.shape, dtype=F32, device=x.device)
    for lo in range(0, src.numel(), SQRT_BLOCK):
        hi = min(src.numel(), lo + SQRT_BLOCK)
        out[lo:hi] = torch.sqrt(src[lo:hi].to(torch.float64))
    return out.view(x.shape)


def fma(a: Tensor, b: Tensor, c: Tensor) -> Tensor:
    """``a·b + c`` rounded once: the exact float64 product, the float64 sum rounded to odd
    through its exact TwoSum error, then one float64→float32 rounding (the algorithm and its
    proof: ``replay.execute.semantics.fma``). Only correctly rounded float64 ``+ - ·``, compares and
    ``nextafter``: the same bits on every device."""
    p = a.to(torch.float64) * b.to(torch.float64)
    return fma64(p, c.to(torch.float64))


def fma64(p: Tensor, c: Tensor) -> Tensor:
    """float32 RNE of the exact ``p + c`` for float64 ``p`` (an exact float32 product) and
    ``c`` (a float32 value): round to odd in float64, then to float32."""
    s = p + c
    bb = s - p
    err = (p - (s - bb)) + (c - bb)
    fix = torch.isfinite(s) & (err != 0) & ((s.view(torch.int64) & 1) == 0)
    if bool(fix.any()):
        toward = torch.where(err > 0, _inf64(s.device), -_inf64(s.device))
        s = torch.where(fix, torch.nextafter(s, toward), s)
    return s.to(F32)


@lru_cache(maxsize=8)
def _inf64(device: torch.device) -> Tensor:
    return torch.tensor(float("inf"), dtype=torch.float64, device=device)


def index_rows(x: Tensor, rows: int) -> tuple[Tensor, Tensor]:
    """(valid, row) of float32 index values: finite, integral, ``0 ≤ x < rows`` (``-0`` is 0);
    row 0 where invalid (``replay.execute.semantics.index_rows``)."""
    x64 = x.to(torch.float64, memory_format=torch.contiguous_format)  # dense: fast kernels
    valid = torch.isfinite(x64) & (x64 >= 0) & (torch.floor(x64) == x64) & (x64 < rows)
    return valid, torch.where(valid, x64, 0.0).to(torch.int64)


def compare_kernel(
    opcode: Opcode, shape: tuple[int, ...], device: torch.device
) -> Callable[[Tensor, Tensor], Tensor]:
    """GT/GE/EQ writing 1.0 / 0.0 straight into a new float32 tensor of the op's shape."""
    fn = {Opcode.GT: torch.gt, Opcode.GE: torch.ge, Opcode.EQ: torch.eq}[opcode]

    def compare(a: Tensor, b: Tensor) -> Tensor:
        return fn(a, b, out=torch.empty(shape, dtype=F32, device=device))

    return compare


ELEMENT_KERNELS: dict[Opcode, Callable[..., Tensor]] = {
    Opcode.ADD: torch.add,
    Opcode.SUB: torch.sub,
    Opcode.MUL: torch.mul,
    Opcode.DIV: torch.div,
    Opcode.MAX: _max,
    Opcode.MIN: _min,
    Opcode.GT: lambda a, b: torch.gt(a, b).to(F32),  # the executor uses compare_kernel
    Opcode.GE: lambda a, b: torch.ge(a, b).to(F32),
    Opcode.EQ: lambda a, b: torch.eq(a, b).to(F32),
    Opcode.LDEXP: _ldexp,
    Opcode.NEG: torch.neg,
    Opcode.ABS: torch.abs,
    Opcode.SQRT: _sqrt,
    Opcode.ROUND: torch.round,
    Opcode.FREXP_EXP: _frexp_exp,
    Opcode.FREXP_MANT: lambda x: torch.frexp(x)[0],
    # a fresh tensor: slot tensors own their storage from offset 0 (as_strided is absolute)
    Opcode.COPY: lambda x: x.clone(memory_format=torch.contiguous_format),
    Opcode.SELECT: lambda c, a, b: torch.where(c != 0, a, b),
    Opcode.FMA: fma,
}


class RowSummer:
    """``acc = +0.0; for r: acc = acc + table[r]`` over contiguous [R, n] float32 tables.

    ``embedding_bag(mode="sum")`` adds the rows of one bag in index order into a float32
    accumulator that starts at +0.0: exactly the sequential sum. ``loop`` is one ``add`` kernel
    per row, plainly sequential (the CUDA default; the tests hold both to the reference).
    """

    def __init__(self, strategy: SumStrategy, device: torch.device) -> None:
        self.strategy = strategy
        self.device = device
        self._index: dict[int, Tensor] = {}
        self._offsets = torch.zeros(1, dtype=torch.long, device=device)

    def __call__(self, table: Tensor) -> Tensor:
        rows, n = table.shape
        if rows == 0:
            return torch.zeros(n, dtype=F32, device=self.device)
        if self.strategy == "loop":
            acc = torch.zeros(n, dtype=F32, device=self.device)
            for r in range(rows):
                acc = torch.add(acc, table[r])
            return acc
        idx = self._index.get(rows)
        if idx is None:
            idx = self._index[rows] = torch.arange(rows, device=self.device)
        return F.embedding_bag(idx, table, self._offsets, mode="sum").reshape(n)

    def blocked(
        self, rows_of: Callable[[int, int], Tensor], rows: int, n: int, block: int
    ) -> Tensor:
        """Sum of R rows produced block by block (bounded memory).

        Each later block is summed with the running accumulator as its first row: the sum then
        starts ``+0.0 + acc``, which equals ``acc`` because a sequential sum that starts at +0.0
        is never -0.0 (x + y = -0 in RNE only when both are -0), so the additions happen in
        exactly the order ``acc_{r+1} = acc_r + term_r``.
        """
        if rows <= block:
            return self(rows_of(0, rows).contiguous())
        acc = self(rows_of(0, block).contiguous())
        for lo in range(block, rows, block):
            hi = min(rows, lo + block)
            acc = self(torch.cat([acc.reshape(1, n), rows_of(lo, hi).reshape(hi - lo, n)]))
        return acc


def reduce_max_terms(terms: Tensor) -> Tensor:
    """IEEE 754-2019 maximum over dim 0 of a [R, ...] view, from acc_0 = -inf.

    maximum with -0 < +0 and NaN absorbing is a lattice join, so the sequential fold equals the
    order-free max; ``amax`` (NaN-propagating) computes it except for the sign of a zero result,
    fixed here: +0 if any term is +0, else -0.
    """
    if terms.shape[0] == 0:
        return torch.full(terms.shape[1:], float("-inf"), dtype=F32, device=terms.device)
    m = torch.amax(terms, dim=0)
    pos_zero = (terms.view(torch.int32) == 0).any(dim=0)
    plus, minus = _signed_zeros(terms.device)
    return torch.where(m == 0, torch.where(pos_zero, plus, minus), m)
