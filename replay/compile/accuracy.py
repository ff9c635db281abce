"""Error of the lowered functions in ulps against float64, measured through the IR itself.

Used by the tests (a fixed sample, asserting the documented bounds) and by the bench (large
strided sweeps of every float32 in each range, reported in bench/results/replay.json).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from protocol.ir import Program
from replay.compile import lowering
from replay.compile.builder import ProgramBuilder, View
from replay.execute.numpy_backend import NumpyExecutor


def _gelu(b: ProgramBuilder, x: View) -> View:
    return lowering.gelu_parts(b, x)[0]


def _gelu64(x: np.ndarray) -> np.ndarray:
    """GELU tanh form in float64, as x·sigmoid(2u): 1 + tanh(u) cancels even in float64."""
    u = math.sqrt(2.0 / math.pi) * (x + 0.044715 * x**3)
    return x / (1.0 + np.exp(-2.0 * u))


@dataclass(frozen=True)
class LoweredFunction:
    name: str
    build: Callable[[ProgramBuilder, View], View]
    reference: Callable[[np.ndarray], np.ndarray]
    #: the float32 inputs the bound is stated for (bit patterns are swept between these)
    lo: float
    hi: float
    #: documented worst-case error, in ulps of the correctly rounded result
    max_ulps: float


FUNCTIONS: dict[str, LoweredFunction] = {
    f.name: f
    for f in (
        LoweredFunction("exp", lowering.exp, np.exp, -103.97, 88.72, 1.0),
        LoweredFunction("log", lowering.log, np.log, 1.4e-45, 3.4028235e38, 1.0),
        LoweredFunction("tanh", lowering.tanh, np.tanh, -10.0, 10.0, 1.5),
        LoweredFunction("gelu", _gelu, _gelu64, -1.0, 10.0, 3.0),
    )
}


def unary_program(fn: LoweredFunction, n: int) -> Program:
    b = ProgramBuilder()
    x = b.persistent("x", (n,))
    y = b.persistent("y", (n,))
    b.copy(fn.build(b, x), out=y)
    return b.build()


def evaluate(fn: LoweredFunction, x: np.ndarray) -> np.ndarray:
    """The lowered function on float32 inputs, by the numpy reference interpreter."""
    x = np.ascontiguousarray(x, dtype=np.float32)
    ex = NumpyExecutor(unary_program(fn, x.size))
    ex.set_state({"x": x, "y": np.zeros_like(x)})
    ex.run_step(None)
    return ex.get_state()["y"]


def ulps(y: np.ndarray, ref: np.ndarray) -> np.ndarray:
    """|y - ref| in ulps of float32 at ref (ulp of the binade of ref, at least 2^-149)."""
    ref = np.asarray(ref, dtype=np.float64)
    _, e = np.frexp(ref)
    ulp = np.ldexp(1.0, np.maximum(e - 24, -149))
    with np.errstate(invalid="ignore"):
        err = np.abs(y.astype(np.float64) - ref) / ulp
    err[y.astype(np.float64) == ref] = 0.0
    return err


def float32_sweep(lo: float, hi: float, stride: int, phase: int = 0) -> np.ndarray:
    """Every ``stride``-th float32 (by bit pattern) in [lo, hi], both signs as needed."""

    def span(a: float, b: float) -> np.ndarray:  # 0 <= a <= b
        ia = int(np.float32(a).view(np.uint32))
        ib = int(np.float32(b).view(np.uint32))
        return np.arange(ia + phase % stride, ib + 1, stride, dtype=np.uint32).view(np.float32)

    parts = []
    if hi > 0:
        parts.append(span(max(lo, 0.0), hi))
    if lo < 0:
        parts.append(-span(max(-hi, 0.0), -lo))
    return np.concatenate(parts).astype(np.float32)


@dataclass(frozen=True)
class Measurement:
    name: str
    points: int
    max_ulps: float
    worst_x: float
    mean_ulps: float


def measure(fn: LoweredFunction, x: np.ndarray, chunk: int = 1 << 19) -> Measurement:
    worst, worst_x, total, count = 0.0, float("nan"), 0.0, 0
    for i in range(0, x.size, chunk):
        xs = x[i : i + chunk]
        y = evaluate(fn, xs)
        with np.errstate(all="ignore"):
            ref = fn.reference(xs.astype(np.float64))
        finite = np.isfinite(ref) & (np.abs(ref) <= float(np.finfo(np.float32).max))
        err = ulps(y[finite], ref[finite])
        if err.size:
            k = int(np.argmax(err))
            if err[k] > worst:
                worst, worst_x = float(err[k]), float(xs[finite][k])
            total += float(err.sum())
            count += err.size
    return Measurement(fn.name, count, worst, worst_x, total / max(1, count))
