"""CNN and transformer layers lowered into IR ops, forward and backward (docs/protocol.md §3.13).

Every function only emits ops through a :class:`~replay.compile.builder.ProgramBuilder`. A forward
function returns the output view and a context holding what its backward needs; a backward
function takes that context and the upstream gradient view and returns the input and
parameter gradients. Layouts are torch's (``[N, C, H, W]`` images, ``[O, C, kh, kw]`` conv
weights) as *views*: an image may have any strides as long as its two spatial dims combine
into one row stride (``strides[2] == W·strides[3]``), so a channels-last tensor viewed as
NCHW is read without a copy.

Constant integer index tables (im2col positions, pooling windows, the causal mask, the
reverse ramp of the max-pool first-index rule) are persistent slots that the program only
reads: :class:`Tables` declares them and collects their values, which the caller adds to
``C_0`` (like ``class_ids`` in replay/compile/compiler.py). An index of ``-1`` names no row, so
GATHER reads it as ``+0.0`` (zero padding, holes of a strided transposed convolution).

Summation orders (each a sequential FMA chain or sum, strictly in index order):

- conv forward: ``y[n,o,ho,wo] = Σ_{c,i,j} W[o,c,i,j]·cols[n,(ho,wo),c,(i,j)]`` (c major);
- conv weight grad: ``Σ_{n,ho,wo}`` (n major); bias grad the same order;
- conv input grad: a transposed convolution by GATHER of the upstream gradient and one
  MATMUL, ``Σ_{o,i,j}`` (o major), see :func:`conv2d_backward`;
- pooling: window elements in row-major order; the max-pool gradient goes to the first
  maximal element of each window in that order (torch's CPU kernel), overlapping windows'
  gradients are summed in window order.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from protocol.ir import contiguous_strides
from replay.compile import lowering
from replay.compile.builder import ProgramBuilder, View
from replay.errors import SpecError

NO_ROW = -1.0


class Tables:
    """Constant tables: persistent slots written into ``C_0`` and never updated.

    ``values`` maps each table's slot name to its float32 contents; add them to the initial
    state. A table requested twice under one name is declared once (same contents required).
    """

    def __init__(self, b: ProgramBuilder) -> None:
        self.b = b
        self.values: dict[str, np.ndarray] = {}
        self._views: dict[str, View] = {}

    def get(self, name: str, array: np.ndarray) -> View:
        array = np.ascontiguousarray(array, dtype=np.float32)
        name = f"table:{name}"
        if name in self._views:
            if not np.array_equal(self.values[name], array):
                raise SpecError(f"table {name!r} requested with different contents")
            return self._views[name]
        view = self.b.persistent(name, array.shape)
        self.values[name] = array
        self._views[name] = view
        return view


# --------------------------------------------------------------------------- views


def is_contiguous(v: View) -> bool:
    return v.strides == contiguous_strides(v.shape)


def permute(v: View, dims: Sequence[int]) -> View:
    """The view with its dimensions reordered (no op)."""
    dims = tuple(dims)
    if sorted(dims) != list(range(v.rank)):
        raise SpecError(f"permutation {dims} of a rank-{v.rank} view")
    return View(
        v.slot, tuple(v.shape[d] for d in dims), tuple(v.strides[d] for d in dims), v.offset
    )


def contiguous(b: ProgramBuilder, v: View, hint: str = "contig") -> View:
    """``v`` itself when it is contiguous, else a COPY of it (C order of its shape)."""
    return v if is_contiguous(v) else b.copy(v, hint=hint)


def reshape(b: ProgramBuilder, v: View, shape: Sequence[int], hint: str = "reshape") -> View:
    """torch ``reshape``: a view when ``v`` is contiguous, else COPY then view."""
    return contiguous(b, v, hint).reshape(shape)


def squeeze_dims(v: View, keep: Sequence[int]) -> View:
    return View(
        v.slot, tuple(v.shape[k] for k in keep), tuple(v.strides[k] for k in keep), v.offset
    )


def _spatial(b: ProgramBuilder, x: View, hint: str) -> tuple[View, int]:
    """(an NCHW view whose (h, w) positions are rows of one stride, that stride)."""
    if x.rank != 4:
        raise SpecError(f"expected an [N, C, H, W] view, got shape {x.shape}")
    if x.shape[3] == 1 or x.strides[2] == x.shape[3] * x.strides[3]:
        return x, (x.strides[3] if x.shape[3] > 1 else x.strides[2])
    x = b.copy(x, hint=hint)
    return x, 1


def _image_table(
    b: ProgramBuilder, x: View, shape: tuple[int, int, int, int], spatial_axis: int, hint: str
) -> tuple[View, int, int]:
    """(table view for a GATHER of ``x``'s spatial rows into an output of ``shape``, rows,
    row stride). Output axes: 0 = n, ``spatial_axis`` = the gathered position, the other
    non-batch axis = c; the fourth axis is free (stride 0)."""
    x, rho = _spatial(b, x, hint)
    h, w = x.shape[2], x.shape[3]
    strides = [0, 0, 0, 0]
    strides[0] = x.strides[0]
    c_axis = 2 if spatial_axis == 1 else 1
    strides[c_axis] = x.strides[1]
    return View(x.slot, shape, tuple(strides), x.offset), h * w, rho


# --------------------------------------------------------------------------- index tables


def out_size(size: int, kernel: int, stride: int, padding: int) -> int:
    return (size + 2 * padding - kernel) // stride + 1


def im2col_table(h: int, w: int, kh: int, kw: int, stride: int, padding: int) -> np.ndarray:
    """``[Ho·Wo, kh·kw]``: input position ``hi·W + wi`` read by output position (ho, wo) and
    kernel tap (i, j), ``hi = ho·s - p + i``, ``wi = wo·s - p + j``; -1 outside the image."""
    ho, wo = out_size(h, kh, stride, padding), out_size(w, kw, stride, padding)
    oh = np.arange(ho).reshape(ho, 1, 1, 1)
    ow = np.arange(wo).reshape(1, wo, 1, 1)
    ki = np.arange(kh).reshape(1, 1, kh, 1)
    kj = np.arange(kw).reshape(1, 1, 1, kw)
    hi = oh * stride - padding + ki
    wi = ow * stride - padding + kj
    inside = (hi >= 0) & (hi < h) & (wi >= 0) & (wi < w)
    table = np.where(inside, hi * w + wi, -1)
    return table.reshape(ho * wo, kh * kw).astype(np.float32)


def col2im_table(h: int, w: int, kh: int, kw: int, stride: int, padding: int) -> np.ndarray:
    """``[H·W, kh·kw]``: for input position (hi, wi) and tap (i, j), the output position
    ``ho·Wo + wo`` with ``ho·s - p + i = hi`` and ``wo·s - p + j = wi`` (-1 when there is none:
    a hole of the stride or past the border) — a transposed convolution's im2col."""
    ho, wo = out_size(h, kh, stride, padding), out_size(w, kw, stride, padding)
    hi = np.arange(h).reshape(h, 1, 1, 1)
    wi = np.arange(w).reshape(1, w, 1, 1)
    ki = np.arange(kh).reshape(1, 1, kh, 1)
    kj = np.arange(kw).reshape(1, 1, 1, kw)
    th, tw = hi + padding - ki, wi + padding - kj
    oh, ow = th // stride, tw // stride
    ok = (th % stride == 0) & (tw % stride == 0) & (oh >= 0) & (oh < ho) & (ow >= 0) & (ow < wo)
    table = np.where(ok, oh * wo + ow, -1)
    return table.reshape(h * w, kh * kw).astype(np.float32)


def window_inverse_table(h: int, w: int, kh: int, kw: int, stride: int, padding: int) -> np.ndarray:
    """``[H·W, M]``: for each input position, the flat window elements ``p·K + k`` that read
    it (K = kh·kw), in increasing order, padded with -1 to the largest count M."""
    fwd = im2col_table(h, w, kh, kw, stride, padding)
    k = kh * kw
    hits: list[list[int]] = [[] for _ in range(h * w)]
    for p in range(fwd.shape[0]):
        for t in range(k):
            src = int(fwd[p, t])
            if src >= 0:
                hits[src].append(p * k + t)
    m = max(1, max(len(x) for x in hits))
    table = np.full((h * w, m), NO_ROW, np.float32)
    for i, x in enumerate(hits):
        table[i, : len(x)] = x
    return table


def pad_table(h: int, w: int, padding: tuple[int, int, int, int]) -> np.ndarray:
    """``[Hp, Wp]`` (padding = left, right, top, bottom): input position or -1."""
    left, right, top, bottom = padding
    hp, wp = h + top + bottom, w + left + right
    hi = np.arange(hp).reshape(hp, 1) - top
    wi = np.arange(wp).reshape(1, wp) - left
    inside = (hi >= 0) & (hi < h) & (wi >= 0) & (wi < w)
    return np.where(inside, hi * w + wi, -1).astype(np.float32)


def causal_mask(t_q: int, t_k: int) -> np.ndarray:
    """``[Tq, Tk]``: 1.0 where key j may be attended by query i (``j ≤ i + Tk - Tq``)."""
    i = np.arange(t_q).reshape(t_q, 1)
    j = np.arange(t_k).reshape(1, t_k)
    return (j <= i + (t_k - t_q)).astype(np.float32)


def _key(*parts: object) -> str:
    return "x".join(str(p) for p in parts)


# --------------------------------------------------------------------------- padding


@dataclass(frozen=True)
class Pad2dCtx:
    in_shape: tuple[int, int, int, int]
    padding: tuple[int, int, int, int]


def pad2d(
    b: ProgramBuilder, tables: Tables, x: View, padding: int | tuple[int, int, int, int]
) -> tuple[View, Pad2dCtx]:
    """torch ``F.pad(x, (left, right, top, bottom))`` with zeros: ONE GATHER of ``x``'s
    spatial rows by the table :func:`pad_table` (-1 → +0.0). Output contiguous NCHW."""
    pads = (padding,) * 4 if isinstance(padding, int) else tuple(padding)
    n, c, h, w = x.shape
    hp, wp = h + pads[2] + pads[3], w + pads[0] + pads[1]
    idx = tables.get(f"pad:{_key(h, w, *pads)}", pad_table(h, w, pads))  # type: ignore[arg-type]
    x, rho = _spatial(b, x, "pad.in")
    table = View(x.slot, (n, c, hp, wp), (x.strides[0], x.strides[1], 0, 0), x.offset)
    y = b.gather(idx.unsqueeze(0).unsqueeze(0), table, h * w, rho, hint="pad")
    return y, Pad2dCtx((n, c, h, w), pads)  # type: ignore[arg-type]


def pad2d_backward(b: ProgramBuilder, ctx: Pad2dCtx, g: View) -> View:
    """The interior of ``g``: ONE COPY of the view at offset (top, left)."""
    n, c, h, w = ctx.in_shape
    left, _right, top, _bottom = ctx.padding
    offset = g.offset + top * g.strides[2] + left * g.strides[3]
    return b.copy(View(g.slot, (n, c, h, w), g.strides, offset), hint="pad.grad")


# --------------------------------------------------------------------------- convolution


@dataclass(frozen=True)
class Conv2dCtx:
    x_shape: tuple[int, int, int, int]
    channels_last_grad: bool
    weight: View
    cols: View  # [N, P, C, K] contiguous
    out_hw: tuple[int, int]
    kernel: tuple[int, int]
    stride: int
    padding: int
    has_bias: bool


def conv2d(
    b: ProgramBuilder,
    tables: Tables,
    x: View,
    weight: View,
    bias: View | None,
    stride: int = 1,
    padding: int = 0,
) -> tuple[View, Conv2dCtx]:
    """torch ``F.conv2d(x, weight, bias, stride, padding)`` (zero padding, dilation 1, groups 1).

    1. GATHER ``cols[n, p, c, k]`` (``[N, Ho·Wo, C, kh·kw]``) of ``x``'s spatial rows by the
       constant table :func:`im2col_table` (``[Ho·Wo, kh·kw]``, -1 → +0.0 for padding);
    2. MATMUL ``y[n, o, p] = Σ_{(c,k)} W[o, (c,k)]·cols[n, p, (c,k)]`` (``R = C·kh·kw``,
       weight as a ``[O, C·kh·kw]`` view), written as ``[N, O, Ho·Wo]`` = NCHW;
    3. ADD of the bias broadcast over (n, ho, wo), if any.
    """
    n, c, h, w = x.shape
    o, c2, kh, kw = weight.shape
    if c2 != c:
        raise SpecError(f"conv2d: input has {c} channels, weight expects {c2}")
    if not is_contiguous(weight):
        raise SpecError("conv2d: the weight view must be contiguous")
    ho, wo = out_size(h, kh, stride, padding), out_size(w, kw, stride, padding)
    p, k = ho * wo, kh * kw
    idx = tables.get(
        f"im2col:{_key(h, w, kh, kw, stride, padding)}", im2col_table(h, w, kh, kw, stride, padding)
    )
    table, rows, rho = _image_table(b, x, (n, p, c, k), 1, "conv.in")
    cols = b.gather(idx.reshape((1, p, 1, k)), table, rows, rho, hint="conv.im2col")
    cols_t = permute(cols.reshape((n, p, c * k)), (0, 2, 1))  # [N, CK, P]
    w2 = weight.reshape((o, c * k)).unsqueeze(0)  # [1, O, CK]
    y = b.batched_matmul(w2, cols_t, hint="conv.mm")  # [N, O, P]
    y = y.reshape((n, o, ho, wo))
    if bias is not None:
        y = b.add(y, bias.reshape((o, 1, 1)), hint="conv.bias")
    cl = c > 1 and x.strides[1] < x.strides[3]
    ctx = Conv2dCtx(
        (n, c, h, w), cl, weight, cols, (ho, wo), (kh, kw), stride, padding, bias is not None
    )
    return y, ctx


def conv2d_backward(
    b: ProgramBuilder, tables: Tables, ctx: Conv2dCtx, g: View
) -> tuple[View, View, View | None]:
    """(dx, dW, db) of :func:`conv2d` for the upstream gradient ``g`` ``[N, O, Ho, Wo]``.

    - ``gt = COPY g`` as ``[O, N, Ho·Wo]`` (so that (n, p) has one stride);
    - ``dW[o, (c,k)] = MATMUL Σ_{(n,p)} gt[o, (n,p)]·cols[(n,p), (c,k)]`` (``R = N·Ho·Wo``),
      written in the weight's ``[O, C, kh, kw]`` layout; ``db = REDUCE_SUM_{(n,p)} gt``;
    - input gradient as a transposed convolution (no scatter): GATHER
      ``gcols[n, q, o, k] = g[n, o, T[q, k]]`` (``[N, H·W, O, kh·kw]``) with the constant
      table :func:`col2im_table` (``[H·W, kh·kw]``, -1 → +0.0 for stride holes and borders),
      ``Wr = COPY W`` as ``[C, O, kh·kw]``, then MATMUL
      ``dx[n, c, q] = Σ_{(o,k)} Wr[c, (o,k)]·gcols[n, q, (o,k)]`` (``R = O·kh·kw``), written
      NCHW — or NHWC (``[N, H·W, C]``, returned as an NCHW view) when the input was a
      channels-last view.
    """
    n, c, h, w = ctx.x_shape
    o = ctx.weight.shape[0]
    kh, kw = ctx.kernel
    ho, wo = ctx.out_hw
    p, k = ho * wo, kh * kw
    # weight and bias gradients
    gt = b.copy(permute(g, (1, 0, 2, 3)), hint="conv.gT").reshape((o, n * p))  # [O, N·P]
    cols2 = ctx.cols.reshape((n * p, c * k))
    dw = b.batched_matmul(gt, cols2, hint="conv.dW").reshape((o, c, kh, kw))
    db = b.reduce_sum(gt, axis=1, hint="conv.db") if ctx.has_bias else None
    # input gradient: transposed convolution
    idx = tables.get(
        f"col2im:{_key(h, w, kh, kw, ctx.stride, ctx.padding)}",
        col2im_table(h, w, kh, kw, ctx.stride, ctx.padding),
    )
    table, rows, rho = _image_table(b, g, (n, h * w, o, k), 1, "conv.gin")
    gcols = b.gather(idx.reshape((1, h * w, 1, k)), table, rows, rho, hint="conv.gcols")
    gcols = gcols.reshape((n, h * w, o * k))
    wr = b.copy(permute(ctx.weight.reshape((o, c, k)), (1, 0, 2)), hint="conv.Wr")
    wr = wr.reshape((c, o * k))
    if ctx.channels_last_grad:
        dx = b.batched_matmul(gcols, wr.T, hint="conv.dx")  # [N, HW, C]
        dx = permute(dx.reshape((n, h, w, c)), (0, 3, 1, 2))
    else:
        dx = b.batched_matmul(wr.unsqueeze(0), permute(gcols, (0, 2, 1)), hint="conv.dx")
        dx = dx.reshape((n, c, h, w))
    return dx, dw, db


# --------------------------------------------------------------------------- pooling


@dataclass(frozen=True)
class PoolCtx:
    x_shape: tuple[int, int, int, int]
    kernel: int
    stride: int
    padding: int
    windows: View | None  # max pool: [N, C, P, K]
    pooled: View | None  # max pool: [N, C, P]


def _windows(
    b: ProgramBuilder, tables: Tables, x: View, kernel: int, stride: int, padding: int
) -> View:
    n, c, h, w = x.shape
    ho, wo = out_size(h, kernel, stride, padding), out_size(w, kernel, stride, padding)
    p, k = ho * wo, kernel * kernel
    idx = tables.get(
        f"im2col:{_key(h, w, kernel, kernel, stride, padding)}",
        im2col_table(h, w, kernel, kernel, stride, padding),
    )
    table, rows, rho = _image_table(b, x, (n, c, p, k), 2, "pool.in")
    return b.gather(idx.reshape((1, 1, p, k)), table, rows, rho, hint="pool.win")


def _scatter_windows(
    b: ProgramBuilder,
    tables: Tables,
    src: View,
    x_shape: tuple[int, int, int, int],
    kernel: int,
    stride: int,
    padding: int,
    hint: str,
) -> View:
    """Sum window-element gradients ``src`` (contiguous ``[N, C, P·K]``) back onto the input
    positions: GATHER ``[N, C, H·W, M]`` by :func:`window_inverse_table`, then REDUCE_SUM over
    M (omitted when M = 1: non-overlapping windows)."""
    n, c, h, w = x_shape
    inv = window_inverse_table(h, w, kernel, kernel, stride, padding)
    m = inv.shape[1]
    idx = tables.get(f"pool.inv:{_key(h, w, kernel, stride, padding)}", inv)
    rows = src.shape[2]
    table = View(src.slot, (n, c, h * w, m), (src.strides[0], src.strides[1], 0, 0), src.offset)
    got = b.gather(idx.unsqueeze(0).unsqueeze(0), table, rows, src.strides[2], hint=hint)
    if m > 1:
        got = b.reduce_sum(got, axis=3, hint=hint)
        return got.reshape((n, c, h, w))
    return squeeze_dims(got, (0, 1, 2)).reshape((n, c, h, w))


def max_pool2d(
    b: ProgramBuilder, tables: Tables, x: View, kernel: int = 2, stride: int | None = None
) -> tuple[View, PoolCtx]:
    """torch ``F.max_pool2d(x, kernel, stride)`` (no padding): GATHER windows
    ``[N, C, Ho·Wo, k·k]`` by :func:`im2col_table`, REDUCE_MAX over the window."""
    stride = kernel if stride is None else stride
    n, c, h, w = x.shape
    ho, wo = out_size(h, kernel, stride, 0), out_size(w, kernel, stride, 0)
    win = _windows(b, tables, x, kernel, stride, 0)
    pooled = b.reduce_max(win, axis=3, hint="pool.max")
    return pooled.reshape((n, c, ho, wo)), PoolCtx((n, c, h, w), kernel, stride, 0, win, pooled)


def max_pool2d_backward(b: ProgramBuilder, tables: Tables, ctx: PoolCtx, g: View) -> View:
    """The gradient goes to the FIRST maximal element of each window (row-major window order,
    torch's CPU rule): ``hit = EQ(win, max)``; ``score = SELECT(hit, K - k, +0)`` with the
    constant ramp ``[K, K-1, …, 1]``; ``first = REDUCE_MAX_k score``;
    ``gwin = SELECT(EQ(score, first), g, +0)``; then :func:`_scatter_windows`. (A window
    holding a NaN has no hit, so every element of it receives the gradient.)"""
    assert ctx.windows is not None and ctx.pooled is not None
    n, c, _h, _w = ctx.x_shape
    p, k = ctx.windows.shape[2], ctx.windows.shape[3]
    ramp = tables.get(f"ramp:{k}", np.arange(k, 0, -1, dtype=np.float32))
    zero = b.const(0.0)
    hit = b.eq(ctx.windows, ctx.pooled.unsqueeze(3), hint="pool.hit")
    score = b.select(hit, ramp, zero, hint="pool.score")
    first = b.reduce_max(score, axis=3, hint="pool.first")
    pick = b.eq(score, first.unsqueeze(3), hint="pool.pick")
    gp = g.reshape((n, c, p)) if is_contiguous(g) else b.copy(g, hint="pool.g").reshape((n, c, p))
    gwin = b.select(pick, gp.unsqueeze(3), zero, hint="pool.gwin").reshape((n, c, p * k))
    return _scatter_windows(b, tables, gwin, ctx.x_shape, ctx.kernel, ctx.stride, 0, "pool.dx")


def avg_pool2d(
    b: ProgramBuilder,
    tables: Tables,
    x: View,
    kernel: int = 2,
    stride: int | None = None,
    padding: int = 0,
) -> tuple[View, PoolCtx]:
    """torch ``F.avg_pool2d(x, kernel, stride, padding)`` (``count_include_pad=True``): GATHER
    windows (padding reads +0.0), REDUCE_SUM over the window, DIV by ``k·k``."""
    stride = kernel if stride is None else stride
    n, c, h, w = x.shape
    ho, wo = out_size(h, kernel, stride, padding), out_size(w, kernel, stride, padding)
    win = _windows(b, tables, x, kernel, stride, padding)
    s = b.reduce_sum(win, axis=3, hint="pool.sum")
    y = b.div(s, b.const(float(kernel * kernel)), hint="pool.avg")
    return y.reshape((n, c, ho, wo)), PoolCtx((n, c, h, w), kernel, stride, padding, None, None)


def avg_pool2d_backward(b: ProgramBuilder, tables: Tables, ctx: PoolCtx, g: View) -> View:
    """``gk = DIV(g, k·k)`` (``[N, C, P]``), then :func:`_scatter_windows` with the window
    element index ``p·K + k`` read through a view that repeats ``gk`` K times (stride 0 is
    not a row stride, so the table holds ``p`` directly: row stride 1 over ``gk``)."""
    n, c, h, w = ctx.x_shape
    k = ctx.kernel * ctx.kernel
    gk = b.div(g, b.const(float(k)), hint="pool.gk")
    p = gk.shape[2] * gk.shape[3]
    inv = window_inverse_table(h, w, ctx.kernel, ctx.kernel, ctx.stride, ctx.padding)
    inv = np.where(inv >= 0, np.floor(inv / k), NO_ROW).astype(np.float32)
    m = inv.shape[1]
    idx = tables.get(f"pool.avginv:{_key(h, w, ctx.kernel, ctx.stride, ctx.padding)}", inv)
    table = View(gk.slot, (n, c, h * w, m), (gk.strides[0], gk.strides[1], 0, 0), gk.offset)
    got = b.gather(idx.unsqueeze(0).unsqueeze(0), table, p, 1, hint="pool.dx")
    if m > 1:
        return b.reduce_sum(got, axis=3, hint="pool.dx").reshape((n, c, h, w))
    return squeeze_dims(got, (0, 1, 2)).reshape((n, c, h, w))


# --------------------------------------------------------------------------- normalisation


@dataclass(frozen=True)
class NormCtx:
    xhat: View
    rstd: View  # broadcastable against xhat
    weight: View | None
    count: int


def layer_norm(
    b: ProgramBuilder, x: View, weight: View | None, bias: View | None, eps: float = 1e-5
) -> tuple[View, NormCtx]:
    """torch ``F.layer_norm(x, (D,), weight, bias, eps)`` over the last axis:
    ``mean = REDUCE_SUM(x)/D``; ``xc = x - mean``; ``var = REDUCE_SUM(xc·xc)/D`` (biased);
    ``rstd = 1/SQRT(var + eps)``; ``xhat = xc·rstd``; ``y = FMA(xhat, w, b)`` (or MUL / ADD
    when only one of w, b is given)."""
    d = x.shape[-1]
    dd = b.const(float(d))
    mean = b.div(b.reduce_sum(x, axis=-1, hint="ln.sum"), dd, hint="ln.mean")
    xc = b.sub(x, mean.unsqueeze(x.rank - 1), hint="ln.xc")
    var = b.div(
        b.reduce_sum(b.mul(xc, xc, hint="ln.sq"), axis=-1, hint="ln.ssq"), dd, hint="ln.var"
    )
    rstd = b.div(
        b.const(1.0),
        b.sqrt(b.add(var, b.const(eps), hint="ln.veps"), hint="ln.std"),
        hint="ln.rstd",
    )
    rstd = rstd.unsqueeze(x.rank - 1)
    xhat = b.mul(xc, rstd, hint="ln.xhat")
    y = _affine(b, xhat, weight, bias, "ln")
    return y, NormCtx(xhat, rstd, weight, d)


def _affine(
    b: ProgramBuilder, xhat: View, weight: View | None, bias: View | None, hint: str
) -> View:
    if weight is not None and bias is not None:
        return b.fma(xhat, weight, bias, hint=f"{hint}.y")
    if weight is not None:
        return b.mul(xhat, weight, hint=f"{hint}.y")
    if bias is not None:
        return b.add(xhat, bias, hint=f"{hint}.y")
    return xhat


def _flat_rows(b: ProgramBuilder, v: View, hint: str) -> View:
    """``v`` as ``[rows, D]`` (COPY first if it is not contiguous)."""
    return reshape(b, v, (math.prod(v.shape[:-1]), v.shape[-1]), hint)


def layer_norm_backward(
    b: ProgramBuilder, ctx: NormCtx, g: View
) -> tuple[View, View | None, View | None]:
    """(dx, dw, db): ``dxhat = g·w``; ``a = REDUCE_SUM(dxhat)/D``;
    ``c = REDUCE_SUM(dxhat·xhat)/D``; ``dx = ((dxhat - a) - xhat·c)·rstd``;
    ``dw = REDUCE_SUM_rows(g·xhat)``, ``db = REDUCE_SUM_rows(g)`` over all leading dims
    flattened (row order)."""
    xhat, rank = ctx.xhat, ctx.xhat.rank
    dd = b.const(float(ctx.count))
    dxhat = b.mul(g, ctx.weight, hint="ln.dxhat") if ctx.weight is not None else g
    a = b.div(b.reduce_sum(dxhat, axis=-1, hint="ln.ga"), dd, hint="ln.ga")
    c = b.div(
        b.reduce_sum(b.mul(dxhat, xhat, hint="ln.gxh"), axis=-1, hint="ln.gc"), dd, hint="ln.gc"
    )
    t = b.sub(dxhat, a.unsqueeze(rank - 1), hint="ln.dx")
    t = b.sub(t, b.mul(xhat, c.unsqueeze(rank - 1), hint="ln.dx"), hint="ln.dx")
    dx = b.mul(t, ctx.rstd, hint="ln.dx")
    dw = db = None
    if ctx.weight is not None:
        gx = b.mul(g, xhat, hint="ln.dw")
        dw = b.reduce_sum(_flat_rows(b, gx, "ln.dw"), axis=0, hint="ln.dw")
    db = b.reduce_sum(_flat_rows(b, g, "ln.db"), axis=0, hint="ln.db")
    return dx, dw, db


@dataclass(frozen=True)
class BatchNormCtx:
    xhat: View  # [N, C, H, W]
    rstd: View  # [C, 1, 1]
    weight: View | None
    count: int


def _channel_sum(b: ProgramBuilder, v: View, hint: str) -> View:
    """Σ over (n, h, w) of an ``[N, C, H, W]`` view: REDUCE_SUM over (h, w) flattened, then
    over n (two sequential sums; v must be contiguous)."""
    n, c, h, w = v.shape
    v = contiguous(b, v, hint)
    s = b.reduce_sum(v.reshape((n, c, h * w)), axis=2, hint=hint)
    return b.reduce_sum(s, axis=0, hint=hint)


def batch_norm2d(
    b: ProgramBuilder,
    x: View,
    weight: View | None,
    bias: View | None,
    running_mean: View | None = None,
    running_var: View | None = None,
    momentum: float = 0.1,
    eps: float = 1e-5,
) -> tuple[View, BatchNormCtx]:
    """torch ``F.batch_norm(x, rm, rv, weight, bias, training=True, momentum, eps)``:
    per channel ``mean = Σ_{n,h,w} x / M`` (:func:`_channel_sum`), ``xc = x - mean``,
    ``var = Σ xc² / M`` (biased, used to normalise), ``rstd = 1/SQRT(var + eps)``,
    ``xhat = xc·rstd``, ``y = FMA(xhat, w, b)``. Running statistics (persistent slots,
    each written once): ``rm ← FMA(rm, 1-μ, μ·mean)``,
    ``rv ← FMA(rv, 1-μ, μ·(var·M/(M-1)))`` (the unbiased variance, like torch)."""
    n, c, h, w = x.shape
    m = n * h * w
    mm = b.const(float(m))
    mean = b.div(_channel_sum(b, x, "bn.sum"), mm, hint="bn.mean")  # [C]
    mean3 = mean.reshape((c, 1, 1))
    xc = b.sub(x, mean3, hint="bn.xc")
    var = b.div(_channel_sum(b, b.mul(xc, xc, hint="bn.sq"), "bn.ssq"), mm, hint="bn.var")
    rstd = b.div(
        b.const(1.0),
        b.sqrt(b.add(var, b.const(eps), hint="bn.veps"), hint="bn.std"),
        hint="bn.rstd",
    ).reshape((c, 1, 1))
    xhat = b.mul(xc, rstd, hint="bn.xhat")
    wv = None if weight is None else weight.reshape((c, 1, 1))
    bv = None if bias is None else bias.reshape((c, 1, 1))
    y = _affine(b, xhat, wv, bv, "bn")
    keep, mu = b.const(1.0 - momentum), b.const(momentum)
    if running_mean is not None:
        b.fma(running_mean, keep, b.mul(mean, mu, hint="bn.rm"), out=running_mean, hint="bn.rm")
    if running_var is not None:
        unbiased = b.mul(var, b.const(m / max(1, m - 1)), hint="bn.rv")
        b.fma(running_var, keep, b.mul(unbiased, mu, hint="bn.rv"), out=running_var, hint="bn.rv")
    return y, BatchNormCtx(xhat, rstd, wv, m)


def batch_norm2d_backward(
    b: ProgramBuilder, ctx: BatchNormCtx, g: View
) -> tuple[View, View | None, View]:
    """(dx, dw, db): ``dxhat = g·w``; ``a = Σ dxhat / M``; ``c = Σ dxhat·xhat / M``;
    ``dx = ((dxhat - a) - xhat·c)·rstd``; ``dw = Σ g·xhat``; ``db = Σ g`` (sums per channel by
    :func:`_channel_sum`)."""
    c_ = ctx.xhat.shape[1]
    mm = b.const(float(ctx.count))
    dxhat = b.mul(g, ctx.weight, hint="bn.dxhat") if ctx.weight is not None else g
    gxh = b.mul(dxhat, ctx.xhat, hint="bn.gxh")
    a = b.div(_channel_sum(b, dxhat, "bn.ga"), mm, hint="bn.ga").reshape((c_, 1, 1))
    c = b.div(_channel_sum(b, gxh, "bn.gc"), mm, hint="bn.gc").reshape((c_, 1, 1))
    t = b.sub(b.sub(dxhat, a, hint="bn.dx"), b.mul(ctx.xhat, c, hint="bn.dx"), hint="bn.dx")
    dx = b.mul(t, ctx.rstd, hint="bn.dx")
    dw = None
    if ctx.weight is not None:
        dw = _channel_sum(b, b.mul(g, ctx.xhat, hint="bn.dw"), "bn.dw")
    db = _channel_sum(b, g, "bn.db")
    return dx, dw, db


# --------------------------------------------------------------------------- matmul, attention


def batched_matmul_backward(b: ProgramBuilder, a: View, bm: View, g: View) -> tuple[View, View]:
    """(da, db) of ``a @ bm`` with equal batch dims: ``da = g @ bmᵀ`` (``R = N``),
    ``db = aᵀ @ g`` (``R = M``), each one MATMUL over transposed views."""
    if a.shape[:-2] != bm.shape[:-2]:
        raise SpecError("batched_matmul_backward needs equal (unbroadcast) batch dims")
    return b.batched_matmul(g, bm.T, hint="bmm.da"), b.batched_matmul(a.T, g, hint="bmm.db")


def masked_fill(b: ProgramBuilder, x: View, mask: View, value: float = -math.inf) -> View:
    """``x`` where ``mask ≠ 0`` else ``value``: one SELECT (mask broadcast)."""
    return b.select(mask, x, b.const(value), hint="mask")


def masked_fill_backward(b: ProgramBuilder, mask: View, g: View) -> View:
    return b.select(mask, g, b.const(0.0), hint="mask.grad")


@dataclass(frozen=True)
class SoftmaxCtx:
    p: View
    axis: int


def softmax(b: ProgramBuilder, x: View, axis: int = -1) -> tuple[View, SoftmaxCtx]:
    """``m = REDUCE_MAX_axis x``; ``e = exp(x - m)`` (§3.8); ``s = REDUCE_SUM_axis e``;
    ``p = e / s``. A row that is all -inf gives NaN (as torch)."""
    axis %= x.rank
    m = b.reduce_max(x, axis=axis, hint="sm.max")
    e = lowering.exp(b, b.sub(x, m.unsqueeze(axis), hint="sm.shift"))
    s = b.reduce_sum(e, axis=axis, hint="sm.sum")
    p = b.div(e, s.unsqueeze(axis), hint="sm.p")
    return p, SoftmaxCtx(p, axis)


def softmax_backward(b: ProgramBuilder, ctx: SoftmaxCtx, g: View) -> View:
    """``dx = p·(g - Σ_axis g·p)``."""
    gp = b.reduce_sum(b.mul(g, ctx.p, hint="sm.gp"), axis=ctx.axis, hint="sm.gp")
    return b.mul(ctx.p, b.sub(g, gp.unsqueeze(ctx.axis), hint="sm.dx"), hint="sm.dx")


def residual_add(b: ProgramBuilder, x: View, fx: View) -> View:
    """``x + f(x)``; its backward passes the gradient unchanged to both inputs."""
    return b.add(x, fx, hint="residual")


# --------------------------------------------------------------------------- embedding


@dataclass(frozen=True)
class EmbeddingCtx:
    ids: View
    vocab: int


def embedding(b: ProgramBuilder, ids: View, table: View) -> tuple[View, EmbeddingCtx]:
    """torch ``F.embedding(ids, table)``: ONE GATHER ``out[..., d] = table[ids[...], d]``
    (``R = V`` rows of stride D); an id that is not an integer in ``[0, V)`` gives +0.0."""
    v, d = table.shape
    shape = (*ids.shape, d)
    rows = View(table.slot, shape, (0,) * ids.rank + (table.strides[1],), table.offset)
    out = b.gather(ids.unsqueeze(ids.rank), rows, v, table.strides[0], hint="emb")
    return out, EmbeddingCtx(ids, v)


def embedding_backward(b: ProgramBuilder, ctx: EmbeddingCtx, g: View) -> View:
    """``dtable[v, d] = Σ_{positions q in order} (ids[q] == v ? g[q, d] : +0)``: ONE INDEX_ADD
    with ``R`` = the number of positions (ids and g flattened in C order)."""
    d = g.shape[-1]
    ids = contiguous(b, ctx.ids, "emb.ids")
    q = math.prod(ids.shape)
    flat_ids = ids.reshape((q,))
    g2 = _flat_rows(b, g, "emb.g")  # [Q, D]
    return b.index_add(flat_ids, g2.T, (ctx.vocab, d), hint="emb.grad")
