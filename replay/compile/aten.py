"""ATen ops → IR ops: the lowering table of the PyTorch front end (docs/protocol.md §3.14).

:class:`Lowerer` walks the joint forward + backward FX graph that
:mod:`replay.compile.frontend` captures and emits, for every node, the IR ops of
:mod:`replay.compile.builder` / :mod:`replay.compile.layers` /
:mod:`replay.compile.lowering` that compute it. Values are
:class:`~replay.compile.builder.View` objects (torch's strides become index maps, so views,
transposes, slices, expands and contiguous reshapes cost nothing), compile-time constants
(``torch.Tensor`` values folded at compile time, materialised as constant table slots or scalar
FILLs when an op reads them), Python scalars, or tuples of those.

Layer ops keep their forward context for their backward node: ``convolution_backward`` finds
the forward ``convolution`` of the same input and weight, ``native_layer_norm_backward`` /
``native_batch_norm_backward`` / ``max_pool2d_with_indices_backward`` the forward node whose
saved outputs (mean, rstd, indices) they read.

Every op that is not in :data:`HANDLERS` — or an argument combination that is not supported
(dilation, groups, ceil_mode, ...) — raises :class:`LoweringError` naming the op; the front
end adds the module path and the user's source line.
"""

from __future__ import annotations

import math
import operator
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import fx

from protocol.ir import Opcode, contiguous_strides
from replay.compile import layers, lowering
from replay.compile.builder import ProgramBuilder, View
from replay.errors import SpecError

aten = torch.ops.aten


class LoweringError(SpecError):
    """An ATen node that the front end does not lower."""

    def __init__(self, message: str, node: fx.Node | None = None) -> None:
        super().__init__(message)
        self.node = node


@dataclass
class Pending:
    """Marker for a saved-for-backward output that only its backward node reads."""

    kind: str
    owner: fx.Node


Value = Any

#: Numerical Recipes ``erfc`` (fractional error < 1.2e-7): ``t·exp(-z² + P(t))``.
ERFC_POLY = (
    0.17087277,
    -0.82215223,
    1.48851587,
    -1.13520398,
    0.27886807,
    -0.18628806,
    0.09678418,
    0.37409196,
    1.00002368,
    -1.26551223,
)
INV_SQRT2 = 1.0 / math.sqrt(2.0)
INV_SQRT_2PI = 1.0 / math.sqrt(2.0 * math.pi)


def erfc(b: ProgramBuilder, x: View) -> View:
    """erfc(x): ``z = |x|``, ``t = 1/(1 + 0.5z)``, ``a = t·exp(P(t) - z·z)`` (Horner, highest
    degree first), ``erfc = a`` for ``x ≥ 0`` else ``2 - a`` (SELECT)."""
    z = b.abs(x, hint="erfc.z")
    one = b.const(1.0)
    t = b.div(one, b.add(one, b.mul(z, b.const(0.5), hint="erfc.t"), hint="erfc.t"), hint="erfc.t")
    p = lowering.horner(b, t, ERFC_POLY, "erfc.poly")
    e = lowering.exp(b, b.sub(p, b.mul(z, z, hint="erfc.z2"), hint="erfc.arg"))
    a = b.mul(t, e, hint="erfc.a")
    neg = b.gt(b.const(0.0), x, hint="erfc.neg")
    return b.select(neg, b.sub(b.const(2.0), a, hint="erfc.2a"), a, hint="erfc")


def gelu_erf(b: ProgramBuilder, x: View) -> tuple[View, View]:
    """(gelu(x), Φ(x)) for the exact (erf) form ``x·Φ(x)``, ``Φ(x) = 0.5·erfc(-x/√2)`` (no
    cancellation for x ≪ 0, unlike ``0.5·(1 + erf(x/√2))``)."""
    cdf = b.mul(
        erfc(b, b.mul(x, b.const(-INV_SQRT2), hint="gelu.w")), b.const(0.5), hint="gelu.cdf"
    )
    return b.mul(x, cdf, hint="gelu"), cdf


def gelu_erf_grad(b: ProgramBuilder, x: View, cdf: View) -> View:
    """``Φ(x) + x·φ(x)``, ``φ(x) = exp(-x²/2)/√(2π)``."""
    arg = b.mul(b.mul(x, x, hint="dgelu.x2"), b.const(-0.5), hint="dgelu.arg")
    pdf = b.mul(lowering.exp(b, arg), b.const(INV_SQRT_2PI), hint="dgelu.pdf")
    return b.add(cdf, b.mul(x, pdf, hint="dgelu.xpdf"), hint="dgelu")


def sigmoid(b: ProgramBuilder, x: View) -> View:
    """``1 / (1 + exp(-x))``."""
    one = b.const(1.0)
    e = lowering.exp(b, b.neg(x, hint="sig.neg"))
    return b.div(one, b.add(one, e, hint="sig.den"), hint="sigmoid")


def _shape(node: fx.Node) -> tuple[int, ...]:
    val = node.meta.get("val")
    if not isinstance(val, torch.Tensor):
        raise LoweringError(f"{node.target}: output is not a tensor", node)
    return tuple(int(d) for d in val.shape)


def _dim(d: int, rank: int) -> int:
    return d % rank if rank else 0


def _merge_reduce(b: ProgramBuilder, x: View, dims: Sequence[int], op: str, hint: str) -> View:
    """Reduce ``x`` over ``dims``: adjacent dims that form one stride run are merged into one
    REDUCE (row-major order over them); other dims are reduced one after another, the highest
    dim first."""
    dims = sorted({_dim(d, x.rank) for d in dims})
    reduce = b.reduce_sum if op == "sum" else b.reduce_max
    # merge runs of adjacent dims whose strides chain
    groups: list[list[int]] = []
    for d in dims:
        if groups and groups[-1][-1] == d - 1 and x.strides[d - 1] == x.shape[d] * x.strides[d]:
            groups[-1].append(d)
        else:
            groups.append([d])
    for g in reversed(groups):
        if len(g) > 1:
            first, last = g[0], g[-1]
            merged = math.prod(x.shape[first : last + 1])
            x = View(
                x.slot,
                (*x.shape[:first], merged, *x.shape[last + 1 :]),
                (*x.strides[:first], x.strides[last], *x.strides[last + 1 :]),
                x.offset,
            )
        x = reduce(x, axis=g[0], hint=hint)
    return x


class Lowerer:
    """Emits the IR of one captured joint graph."""

    def __init__(self, b: ProgramBuilder, tables: layers.Tables) -> None:
        self.b = b
        self.tables = tables
        self.env: dict[fx.Node, Value] = {}
        self.ctx: dict[fx.Node, Any] = {}
        self.extra: dict[fx.Node, Any] = {}
        self._const_count = 0

    # ------------------------------------------------------------------ values
    def view(self, v: Value, like: tuple[int, ...] | None = None) -> View:
        """Any value as a View (constants become FILL scalars or constant tables)."""
        b = self.b
        if isinstance(v, View):
            return v
        if isinstance(v, bool | int | float):
            return b.const(float(v))
        if isinstance(v, torch.Tensor):
            t = v.detach().to(torch.float32)
            if t.numel() == 1 and t.dim() == 0:
                return b.const(float(t.item()))
            if t.numel() > 0 and bool((t == t.flatten()[0]).all()):
                return b.const(float(t.flatten()[0].item())).broadcast_to(tuple(t.shape))
            arr = np.ascontiguousarray(t.numpy(), dtype=np.float32)
            import hashlib

            key = hashlib.sha256(arr.tobytes() + str(arr.shape).encode()).hexdigest()[:16]
            return self.tables.get(f"const:{key}", arr)
        raise LoweringError(f"cannot use {type(v).__name__} as a tensor")

    def arg(self, a: Any) -> Value:
        if isinstance(a, fx.Node):
            return self.env[a]
        if isinstance(a, list | tuple):
            return type(a)(self.arg(x) for x in a)
        return a

    # ------------------------------------------------------------------ driver
    def run(self, graph: fx.Graph, inputs: dict[fx.Node, Value]) -> None:
        for node in graph.nodes:
            if node.op == "placeholder":
                self.env[node] = inputs[node]
            elif node.op == "call_function":
                self.env[node] = self.lower(node)
            elif node.op == "output":
                pass
            else:
                raise LoweringError(f"unsupported FX node kind {node.op}", node)

    def lower(self, node: fx.Node) -> Value:
        target = node.target
        args = [self.arg(a) for a in node.args]
        kwargs = {k: self.arg(v) for k, v in node.kwargs.items()}
        if target is getitem_fn:
            base = args[0]
            return base[args[1]]
        # constant folding: every tensor input is a compile-time constant
        flat = [*args, *kwargs.values()]
        flat_leaves = []
        for a in flat:
            flat_leaves.extend(a if isinstance(a, list | tuple) else [a])
        if target in RANDOM_OPS:
            raise LoweringError(
                f"{_opname(target)} draws random numbers (dropout with p > 0, randn, ...): a "
                "canonical step is a pure function of its state and batch",
                node,
            )
        if not any(isinstance(a, View | Pending) for a in flat_leaves) and target not in NO_FOLD:
            try:
                return target(*args, **kwargs)
            except Exception as exc:  # pragma: no cover - torch's own message
                raise LoweringError(
                    f"{_opname(target)}: cannot fold a constant: {exc}", node
                ) from None
        handler = HANDLERS.get(target)
        if handler is None:
            raise LoweringError(f"ATen op {_opname(target)} is not supported", node)
        return handler(self, node, *args, **kwargs)


getitem_fn = operator.getitem


def _opname(target: Any) -> str:
    name = str(target)
    return name.removeprefix("aten.")


RANDOM_OPS = {
    aten.native_dropout.default,
    aten.bernoulli.default,
    aten.bernoulli.p,
    aten.rand.default,
    aten.randn.default,
    aten.rand_like.default,
    aten.randn_like.default,
    aten.randint.default,
    aten.randint.low,
    aten.normal.Tensor_float,
    aten.uniform.default,
}
NO_FOLD: set[Any] = set()

Handler = Callable[..., Value]
HANDLERS: dict[Any, Handler] = {}


def handles(*targets: Any) -> Callable[[Handler], Handler]:
    def deco(fn: Handler) -> Handler:
        for t in targets:
            HANDLERS[t] = fn
        return fn

    return deco


# --------------------------------------------------------------------------- views


def _as_view(lw: Lowerer, x: Value, node: fx.Node) -> View:
    return lw.view(x)


@handles(aten.alias.default, aten.detach.default, aten.clone.default, aten.lift_fresh_copy.default)
def _identity(lw: Lowerer, node: fx.Node, x: Value, *rest: Any, **kw: Any) -> Value:
    return x


@handles(aten._to_copy.default)
def _to_copy(lw: Lowerer, node: fx.Node, x: Value, **kw: Any) -> Value:
    src = node.args[0].meta["val"].dtype  # type: ignore[union-attr]
    dst = kw.get("dtype") or src
    if dst == torch.bool and src != torch.bool:
        return lw.b.sub(lw.b.const(1.0), lw.b.eq(lw.view(x), lw.b.const(0.0)), hint="tobool")
    if src.is_floating_point and not dst.is_floating_point and dst != torch.bool:
        raise LoweringError(
            "conversion of a float tensor to an integer dtype is not supported", node
        )
    if dst.is_floating_point and dst != torch.float32:
        raise LoweringError(f"dtype {dst} is not supported: programs are float32", node)
    return x


@handles(aten.view.default, aten._unsafe_view.default, aten.reshape.default)
def _view(lw: Lowerer, node: fx.Node, x: Value, shape: Sequence[int]) -> Value:
    out = _shape(node)
    v = lw.view(x)
    if v.shape == out:
        return v
    return layers.reshape(lw.b, v, out, hint="view")


@handles(aten.t.default)
def _t(lw: Lowerer, node: fx.Node, x: Value) -> Value:
    v = lw.view(x)
    return v if v.rank < 2 else layers.permute(v, (1, 0))


@handles(aten.permute.default)
def _permute(lw: Lowerer, node: fx.Node, x: Value, dims: Sequence[int]) -> Value:
    v = lw.view(x)
    return layers.permute(v, [_dim(d, v.rank) for d in dims])


@handles(aten.transpose.int)
def _transpose(lw: Lowerer, node: fx.Node, x: Value, d0: int, d1: int) -> Value:
    v = lw.view(x)
    if v.rank < 2:
        return v
    dims = list(range(v.rank))
    a, c = _dim(d0, v.rank), _dim(d1, v.rank)
    dims[a], dims[c] = dims[c], dims[a]
    return layers.permute(v, dims)


@handles(aten.expand.default)
def _expand(lw: Lowerer, node: fx.Node, x: Value, sizes: Sequence[int], **kw: Any) -> Value:
    return lw.view(x).broadcast_to(_shape(node))


@handles(aten.unsqueeze.default)
def _unsqueeze(lw: Lowerer, node: fx.Node, x: Value, d: int) -> Value:
    v = lw.view(x)
    return v.unsqueeze(d % (v.rank + 1))


@handles(aten.squeeze.dim, aten.squeeze.dims, aten.squeeze.default)
def _squeeze(lw: Lowerer, node: fx.Node, x: Value, dims: Any = None) -> Value:
    v = lw.view(x)
    if dims is None:
        dims = [i for i, d in enumerate(v.shape) if d == 1]
    elif isinstance(dims, int):
        dims = [dims]
    drop = {_dim(d, v.rank) for d in dims if v.shape[_dim(d, v.rank)] == 1}
    return layers.squeeze_dims(v, [i for i in range(v.rank) if i not in drop])


@handles(aten.slice.Tensor)
def _slice(
    lw: Lowerer,
    node: fx.Node,
    x: Value,
    dim: int = 0,
    start: int | None = None,
    end: int | None = None,
    step: int = 1,
) -> Value:
    v = lw.view(x)
    d = _dim(dim, v.rank)
    idx = range(v.shape[d])[slice(start, end, step)]
    shape = list(v.shape)
    strides = list(v.strides)
    offset = v.offset + (idx.start if len(idx) else 0) * v.strides[d]
    shape[d] = len(idx)
    strides[d] = v.strides[d] * step
    return View(v.slot, tuple(shape), tuple(strides), offset)


@handles(aten.select.int)
def _select(lw: Lowerer, node: fx.Node, x: Value, dim: int, index: int) -> Value:
    v = lw.view(x)
    d = _dim(dim, v.rank)
    i = index % v.shape[d]
    keep = [k for k in range(v.rank) if k != d]
    return View(
        v.slot,
        tuple(v.shape[k] for k in keep),
        tuple(v.strides[k] for k in keep),
        v.offset + i * v.strides[d],
    )


@handles(aten.split.Tensor, aten.split_with_sizes.default)
def _split(lw: Lowerer, node: fx.Node, x: Value, sizes: Any, dim: int = 0) -> Value:
    v = lw.view(x)
    d = _dim(dim, v.rank)
    n = v.shape[d]
    if isinstance(sizes, int):
        sizes = [min(sizes, n - s) for s in range(0, n, sizes)]
    out = []
    start = 0
    for s in sizes:
        out.append(_slice(lw, node, v, d, start, start + s))
        start += s
    return tuple(out)


@handles(aten.unbind.int)
def _unbind(lw: Lowerer, node: fx.Node, x: Value, dim: int = 0) -> Value:
    v = lw.view(x)
    d = _dim(dim, v.rank)
    return tuple(_select(lw, node, v, d, i) for i in range(v.shape[d]))


@handles(aten.cat.default)
def _cat(lw: Lowerer, node: fx.Node, tensors: Sequence[Value], dim: int = 0) -> Value:
    """``cat`` along ``dim``: per piece one GATHER over the output shape whose constant index
    table holds the position inside the piece along ``dim`` (-1 outside it, reading +0.0),
    then SELECTs by constant piece masks, first piece innermost."""
    b = lw.b
    out = _shape(node)
    views = [lw.view(t) for t in tensors]
    views = [v for v in views if v.shape[_dim(dim, len(out))] > 0] if out else views
    d = _dim(dim, len(out))
    total = out[d]
    acc: View | None = None
    start = 0
    for v in views:
        size = v.shape[d]
        pos = np.full(total, layers.NO_ROW, np.float32)
        pos[start : start + size] = np.arange(size, dtype=np.float32)
        mask = np.zeros(total, np.float32)
        mask[start : start + size] = 1.0
        shape1 = [1] * len(out)
        shape1[d] = total
        idx = lw.tables.get(f"cat.pos:{total}:{start}:{size}", pos).reshape(shape1)
        strides = list(v.strides)
        strides[d] = 0
        table = View(v.slot, out, tuple(strides), v.offset)
        got = b.gather(idx, table, size, v.strides[d], hint="cat")
        if acc is None:
            acc = got
        else:
            m = lw.tables.get(f"cat.mask:{total}:{start}:{size}", mask).reshape(shape1)
            acc = b.select(m, got, acc, hint="cat")
        start += size
    assert acc is not None
    return acc


@handles(aten.copy.default)
def _copy(lw: Lowerer, node: fx.Node, dst: Value, src: Value, *rest: Any) -> Value:
    return lw.view(src).broadcast_to(_shape(node))


# --------------------------------------------------------------------------- elementwise


def _binary(opcode: Opcode, hint: str) -> Handler:
    def fn(lw: Lowerer, node: fx.Node, a: Value, c: Value, alpha: Any = 1, **kw: Any) -> Value:
        if kw.get("rounding_mode") is not None:
            raise LoweringError(f"{_opname(node.target)}: rounding_mode is not supported", node)
        av, cv = lw.view(a), lw.view(c)
        if alpha != 1:
            cv = lw.b.mul(cv, lw.b.const(float(alpha)), hint=f"{hint}.alpha")
        return lw.b.elementwise(opcode, av, cv, hint=hint)

    return fn


for _t_, _o_, _h_ in (
    ((aten.add.Tensor, aten.add.Scalar), Opcode.ADD, "add"),
    ((aten.sub.Tensor, aten.sub.Scalar), Opcode.SUB, "sub"),
    ((aten.mul.Tensor, aten.mul.Scalar), Opcode.MUL, "mul"),
    ((aten.div.Tensor, aten.div.Scalar, aten.div.Tensor_mode), Opcode.DIV, "div"),
    ((aten.maximum.default,), Opcode.MAX, "max"),
    ((aten.minimum.default,), Opcode.MIN, "min"),
):
    handles(*_t_)(_binary(_o_, _h_))


@handles(aten.rsub.Scalar, aten.rsub.Tensor)
def _rsub(lw: Lowerer, node: fx.Node, a: Value, c: Value, alpha: Any = 1) -> Value:
    av = lw.view(a)
    if alpha != 1:
        av = lw.b.mul(av, lw.b.const(float(alpha)), hint="rsub.alpha")
    return lw.b.sub(lw.view(c), av, hint="rsub")


def _compare(kind: str) -> Handler:
    def fn(lw: Lowerer, node: fx.Node, a: Value, c: Value) -> Value:
        b = lw.b
        av, cv = lw.view(a), lw.view(c)
        if kind == "gt":
            return b.gt(av, cv, hint="gt")
        if kind == "ge":
            return b.ge(av, cv, hint="ge")
        if kind == "lt":
            return b.gt(cv, av, hint="lt")
        if kind == "le":
            return b.ge(cv, av, hint="le")
        if kind == "eq":
            return b.eq(av, cv, hint="eq")
        return b.sub(b.const(1.0), b.eq(av, cv, hint="ne"), hint="ne")

    return fn


for _k_ in ("gt", "ge", "lt", "le", "eq", "ne"):
    handles(getattr(aten, _k_).Tensor, getattr(aten, _k_).Scalar)(_compare(_k_))


@handles(aten.logical_not.default)
def _lnot(lw: Lowerer, node: fx.Node, x: Value) -> Value:
    return lw.b.eq(lw.view(x), lw.b.const(0.0), hint="not")


@handles(aten.where.self)
def _where(lw: Lowerer, node: fx.Node, c: Value, a: Value, o: Value) -> Value:
    return lw.b.select(lw.view(c), lw.view(a), lw.view(o), hint="where")


@handles(aten.masked_fill.Scalar, aten.masked_fill.Tensor)
def _masked_fill(lw: Lowerer, node: fx.Node, x: Value, mask: Value, value: Value) -> Value:
    return lw.b.select(lw.view(mask), lw.view(value), lw.view(x), hint="masked_fill")


def _unary(fn: Callable[[ProgramBuilder, View], View]) -> Handler:
    def h(lw: Lowerer, node: fx.Node, x: Value) -> Value:
        return fn(lw.b, lw.view(x))

    return h


handles(aten.neg.default)(_unary(lambda b, x: b.neg(x, hint="neg")))
handles(aten.abs.default)(_unary(lambda b, x: b.abs(x, hint="abs")))
handles(aten.sqrt.default)(_unary(lambda b, x: b.sqrt(x, hint="sqrt")))
handles(aten.rsqrt.default)(
    _unary(lambda b, x: b.div(b.const(1.0), b.sqrt(x, hint="rsqrt"), hint="rsqrt"))
)
handles(aten.reciprocal.default)(_unary(lambda b, x: b.div(b.const(1.0), x, hint="recip")))
handles(aten.exp.default)(_unary(lowering.exp))
handles(aten.log.default)(_unary(lowering.log))
handles(aten.tanh.default)(_unary(lowering.tanh))
handles(aten.sigmoid.default)(_unary(sigmoid))
handles(aten.relu.default)(_unary(lambda b, x: b.maximum(x, b.const(0.0), hint="relu")))


@handles(aten.pow.Tensor_Scalar)
def _pow(lw: Lowerer, node: fx.Node, x: Value, e: Any) -> Value:
    b, v = lw.b, lw.view(x)
    if e == 1:
        return v
    if e == 2:
        return b.mul(v, v, hint="pow2")
    if e == 3:
        return b.mul(b.mul(v, v, hint="pow3"), v, hint="pow3")
    if e == 0.5:
        return b.sqrt(v, hint="pow")
    if e == -1:
        return b.div(b.const(1.0), v, hint="pow")
    raise LoweringError(f"pow with exponent {e} is not supported (1, 2, 3, 0.5, -1 are)", node)


@handles(aten.clamp.default, aten.clamp_min.default, aten.clamp_max.default)
def _clamp(lw: Lowerer, node: fx.Node, x: Value, lo: Any = None, hi: Any = None) -> Value:
    v = lw.view(x)
    if node.target is aten.clamp_max.default:
        lo, hi = None, lo
    if lo is not None:
        v = lw.b.maximum(v, lw.view(lo), hint="clamp")
    if hi is not None:
        v = lw.b.minimum(v, lw.view(hi), hint="clamp")
    return v


@handles(aten.silu.default)
def _silu(lw: Lowerer, node: fx.Node, x: Value) -> Value:
    v = lw.view(x)
    return lw.b.mul(v, sigmoid(lw.b, v), hint="silu")


@handles(aten.silu_backward.default)
def _silu_bw(lw: Lowerer, node: fx.Node, g: Value, x: Value) -> Value:
    """``g·s·(1 + x·(1 - s))``, ``s = sigmoid(x)`` (torch's formula)."""
    b, v = lw.b, lw.view(x)
    s = sigmoid(b, v)
    one = b.const(1.0)
    inner = b.add(one, b.mul(v, b.sub(one, s, hint="dsilu"), hint="dsilu"), hint="dsilu")
    return b.mul(b.mul(lw.view(g), s, hint="dsilu"), inner, hint="dsilu")


@handles(aten.sigmoid_backward.default)
def _sigmoid_bw(lw: Lowerer, node: fx.Node, g: Value, y: Value) -> Value:
    b, yv = lw.b, lw.view(y)
    return b.mul(
        lw.view(g), b.mul(b.sub(b.const(1.0), yv, hint="dsig"), yv, hint="dsig"), hint="dsig"
    )


@handles(aten.tanh_backward.default)
def _tanh_bw(lw: Lowerer, node: fx.Node, g: Value, y: Value) -> Value:
    b, yv = lw.b, lw.view(y)
    return b.mul(
        lw.view(g), b.sub(b.const(1.0), b.mul(yv, yv, hint="dtanh"), hint="dtanh"), hint="dtanh"
    )


@handles(aten.threshold_backward.default)
def _threshold_bw(lw: Lowerer, node: fx.Node, g: Value, x: Value, threshold: Any) -> Value:
    """``SELECT(GT(x, threshold), g, +0)``."""
    b = lw.b
    keep = b.gt(lw.view(x), lw.view(threshold), hint="drelu")
    return b.select(keep, lw.view(g), b.const(0.0), hint="drelu")


@handles(aten.gelu.default)
def _gelu(lw: Lowerer, node: fx.Node, x: Value, approximate: str = "none") -> Value:
    v = lw.view(x)
    if approximate == "tanh":
        y, s = lowering.gelu_parts(lw.b, v)
    else:
        y, s = gelu_erf(lw.b, v)
    lw.extra[("gelu", node.args[0], approximate)] = s  # type: ignore[index]
    return y


@handles(aten.gelu_backward.default)
def _gelu_bw(lw: Lowerer, node: fx.Node, g: Value, x: Value, approximate: str = "none") -> Value:
    b, v = lw.b, lw.view(x)
    s = lw.extra.get(("gelu", node.args[1], approximate))  # type: ignore[call-overload]
    if approximate == "tanh":
        if s is None:
            _, s = lowering.gelu_parts(b, v)
        d = lowering.gelu_grad(b, v, s)
    else:
        if s is None:
            _, s = gelu_erf(b, v)
        d = gelu_erf_grad(b, v, s)
    return b.mul(lw.view(g), d, hint="dgelu")


@handles(aten.ones_like.default, aten.zeros_like.default, aten.full_like.default)
def _fill_like(lw: Lowerer, node: fx.Node, x: Value, *args: Any, **kw: Any) -> Value:
    if node.target is aten.full_like.default:
        value = float(args[0])
    else:
        value = 1.0 if node.target is aten.ones_like.default else 0.0
    return lw.b.const(value).broadcast_to(_shape(node))


# --------------------------------------------------------------------------- reductions


@handles(aten.sum.dim_IntList, aten.sum.default, aten.mean.dim, aten.mean.default)
def _sum(
    lw: Lowerer, node: fx.Node, x: Value, dims: Any = None, keepdim: bool = False, **kw: Any
) -> Value:
    v = lw.view(x)
    if dims is None or len(dims) == 0:
        dims = list(range(v.rank))
    dims = sorted({_dim(d, v.rank) for d in dims})
    if v.rank == 0:
        return v
    out = _merge_reduce(lw.b, v, dims, "sum", "sum")
    if node.target in (aten.mean.dim, aten.mean.default):
        n = math.prod(v.shape[d] for d in dims)
        out = lw.b.div(out, lw.b.const(float(n)), hint="mean")
    if keepdim:
        for d in dims:
            out = out.unsqueeze(d)
    return out


@handles(aten.amax.default)
def _amax(lw: Lowerer, node: fx.Node, x: Value, dims: Any = (), keepdim: bool = False) -> Value:
    v = lw.view(x)
    dims = sorted({_dim(d, v.rank) for d in (dims or range(v.rank))})
    out = _merge_reduce(lw.b, v, dims, "max", "amax")
    if keepdim:
        for d in dims:
            out = out.unsqueeze(d)
    return out


# --------------------------------------------------------------------------- matmul


@handles(aten.mm.default)
def _mm(lw: Lowerer, node: fx.Node, a: Value, c: Value) -> Value:
    return lw.b.matmul(lw.view(a), lw.view(c), hint="mm")


@handles(aten.addmm.default)
def _addmm(
    lw: Lowerer, node: fx.Node, bias: Value, a: Value, c: Value, beta: Any = 1, alpha: Any = 1
) -> Value:
    """``MATMUL(a, c)`` then ``ADD`` of the (broadcast) bias."""
    if beta != 1 or alpha != 1:
        raise LoweringError("addmm with beta or alpha other than 1 is not supported", node)
    y = lw.b.matmul(lw.view(a), lw.view(c), hint="addmm")
    return lw.b.add(y, lw.view(bias), hint="addmm.bias")


@handles(aten.bmm.default)
def _bmm(lw: Lowerer, node: fx.Node, a: Value, c: Value) -> Value:
    return lw.b.batched_matmul(lw.view(a), lw.view(c), hint="bmm")


# --------------------------------------------------------------------------- softmax


@handles(aten._softmax.default, aten._safe_softmax.default)
def _softmax(lw: Lowerer, node: fx.Node, x: Value, dim: int, *rest: Any, **kw: Any) -> Value:
    v = lw.view(x)
    p, _ = layers.softmax(lw.b, v, dim)
    if node.target is aten._safe_softmax.default:
        # rows that are entirely -inf give 0 instead of NaN
        b = lw.b
        axis = dim % v.rank
        m = b.reduce_max(v, axis=axis, hint="ssm.max")
        dead = b.eq(m.unsqueeze(axis), b.const(-math.inf), hint="ssm.dead")
        p = b.select(dead, b.const(0.0), p, hint="ssm")
    return p


@handles(aten._softmax_backward_data.default)
def _softmax_bw(lw: Lowerer, node: fx.Node, g: Value, y: Value, dim: int, dtype: Any) -> Value:
    yv = lw.view(y)
    return layers.softmax_backward(lw.b, layers.SoftmaxCtx(yv, dim % yv.rank), lw.view(g))


@handles(aten._log_softmax.default)
def _log_softmax(lw: Lowerer, node: fx.Node, x: Value, dim: int, *rest: Any) -> Value:
    """``m = REDUCE_MAX``; ``sh = x - m``; ``e = exp(sh)``; ``s = REDUCE_SUM e``;
    ``out = sh - log(s)`` (``p = e / s`` is kept for the backward)."""
    b, v = lw.b, lw.view(x)
    axis = dim % v.rank
    m = b.reduce_max(v, axis=axis, hint="lsm.max")
    sh = b.sub(v, m.unsqueeze(axis), hint="lsm.shift")
    e = lowering.exp(b, sh)
    s = b.reduce_sum(e, axis=axis, hint="lsm.sum")
    out = b.sub(sh, lowering.log(b, s).unsqueeze(axis), hint="lsm")
    lw.extra[("lsm", out)] = (e, s.unsqueeze(axis))  # type: ignore[index]
    return out


@handles(aten._log_softmax_backward_data.default)
def _log_softmax_bw(lw: Lowerer, node: fx.Node, g: Value, y: Value, dim: int, dtype: Any) -> Value:
    """``dx = g - p·Σ_axis g`` with ``p = e / s`` of the forward (or ``exp(y)``)."""
    b, yv, gv = lw.b, lw.view(y), lw.view(g)
    axis = dim % yv.rank
    saved = lw.extra.get(("lsm", yv))  # type: ignore[call-overload]
    p = b.div(saved[0], saved[1], hint="lsm.p") if saved else lowering.exp(b, yv)
    gs = b.reduce_sum(gv, axis=axis, hint="lsm.gsum")
    return b.sub(gv, b.mul(p, gs.unsqueeze(axis), hint="lsm.dx"), hint="lsm.dx")


# --------------------------------------------------------------------------- losses


def _class_ids(lw: Lowerer, c: int) -> View:
    return lw.tables.get(f"class_ids:{c}", np.arange(c, dtype=np.float32))


@handles(aten.nll_loss_forward.default)
def _nll(
    lw: Lowerer,
    node: fx.Node,
    logp: Value,
    target: Value,
    weight: Value,
    reduction: int,
    ignore_index: int,
) -> Value:
    """``onehot = EQ(y, class_ids)`` (an ignored target matches no class);
    ``picked = REDUCE_SUM_c logp·onehot``; ``count = REDUCE_SUM_n REDUCE_SUM_c onehot``;
    mean: ``-(REDUCE_SUM_n picked) / count``; sum: ``-(REDUCE_SUM_n picked)``."""
    if weight is not None:
        raise LoweringError("nll_loss / cross_entropy with class weights is not supported", node)
    if reduction not in (1, 2):
        raise LoweringError("nll_loss with reduction='none' is not supported", node)
    b, lp, y = lw.b, lw.view(logp), lw.view(target)
    if lp.rank == 1:
        lp, y = lp.unsqueeze(0), y.unsqueeze(0)
    if lp.rank != 2:
        raise LoweringError(
            "nll_loss over [N, C, d1, ...] is not supported: flatten the logits to [N, C]", node
        )
    c = lp.shape[1]
    onehot = b.eq(y.unsqueeze(1), _class_ids(lw, c).unsqueeze(0), hint="nll.onehot")
    picked = b.reduce_sum(b.mul(lp, onehot, hint="nll.pick"), axis=1, hint="nll.pick")
    total = b.reduce_sum(picked, axis=0, hint="nll.total")
    count = b.reduce_sum(b.reduce_sum(onehot, axis=1, hint="nll.count"), axis=0, hint="nll.count")
    if reduction == 1:
        loss = b.neg(b.div(total, count, hint="nll.mean"), hint="nll")
    else:
        loss = b.neg(total, hint="nll")
    lw.extra[("nll", node)] = (onehot, count)  # type: ignore[index]
    return (loss, count)


@handles(aten.nll_loss_backward.default)
def _nll_bw(
    lw: Lowerer,
    node: fx.Node,
    g: Value,
    logp: Value,
    target: Value,
    weight: Value,
    reduction: int,
    ignore_index: int,
    total_weight: Value,
) -> Value:
    """``dlogp = onehot · (-g / count)`` (mean) or ``onehot · (-g)`` (sum)."""
    b = lw.b
    fwd = node.args[6].args[0] if isinstance(node.args[6], fx.Node) else None  # type: ignore[union-attr]
    saved = lw.extra.get(("nll", fwd))  # type: ignore[call-overload]
    lp = lw.view(logp)
    if saved is None:
        raise LoweringError("nll_loss_backward without its forward", node)
    onehot, count = saved
    scale = b.neg(lw.view(g), hint="nll.g")
    if reduction == 1:
        scale = b.div(scale, count, hint="nll.g")
    d = b.mul(onehot, scale, hint="nll.grad")
    return d.reshape(lp.shape) if lp.rank == 1 else d


@handles(aten.mse_loss.default)
def _mse(lw: Lowerer, node: fx.Node, x: Value, t: Value, reduction: int = 1) -> Value:
    """``d = x - t``; ``REDUCE_SUM(d·d)`` over all elements (row-major), ``/ n`` for mean."""
    b = lw.b
    xv = lw.view(x)
    d = layers.contiguous(b, b.sub(xv, lw.view(t), hint="mse.d"))
    n = math.prod(d.shape)
    sq = b.mul(d, d, hint="mse.sq").reshape((n,))
    s = b.reduce_sum(sq, axis=0, hint="mse.sum")
    if reduction == 1:
        return b.div(s, b.const(float(n)), hint="mse")
    if reduction == 2:
        return s
    raise LoweringError("mse_loss with reduction='none' is not supported", node)


@handles(aten.mse_loss_backward.default)
def _mse_bw(lw: Lowerer, node: fx.Node, g: Value, x: Value, t: Value, reduction: int) -> Value:
    """``(x - t)·(2/n)·g`` (mean) or ``(x - t)·2·g`` (sum), torch's order."""
    b = lw.b
    xv = lw.view(x)
    n = math.prod(xv.shape) if reduction == 1 else 1
    d = b.sub(xv, lw.view(t), hint="dmse")
    return b.mul(b.mul(d, b.const(2.0 / n), hint="dmse"), lw.view(g), hint="dmse")


# --------------------------------------------------------------------------- layers


def _pair(v: Any, name: str, node: fx.Node) -> int:
    vals = list(v) if isinstance(v, list | tuple) else [v]
    if len(set(vals)) != 1:
        raise LoweringError(f"non-square {name} {tuple(vals)} is not supported", node)
    return int(vals[0])


@handles(aten.convolution.default)
def _conv(
    lw: Lowerer,
    node: fx.Node,
    x: Value,
    w: Value,
    bias: Value,
    stride: Any,
    padding: Any,
    dilation: Any,
    transposed: bool,
    output_padding: Any,
    groups: int,
) -> Value:
    if transposed or groups != 1 or _pair(dilation, "dilation", node) != 1:
        raise LoweringError(
            "convolution: only 2-d, dilation 1, groups 1, non-transposed is supported", node
        )
    xv = lw.view(x)
    if xv.rank != 4:
        raise LoweringError("convolution: only Conv2d ([N, C, H, W]) is supported", node)
    s, p = _pair(stride, "stride", node), _pair(padding, "padding", node)
    wv = layers.contiguous(lw.b, lw.view(w), "conv.w")
    y, ctx = layers.conv2d(lw.b, lw.tables, xv, wv, None if bias is None else lw.view(bias), s, p)
    lw.ctx[node] = ctx
    return y


def _find_forward(
    node: fx.Node, targets: Sequence[Any], match: Callable[[fx.Node], bool]
) -> fx.Node:
    n: fx.Node | None = node
    while n is not None:
        n = n.prev  # type: ignore[assignment]
        if n is None or n.op == "root":
            break
        if n.target in targets and match(n):
            return n
    raise LoweringError(f"{_opname(node.target)}: its forward node was not found", node)


@handles(aten.convolution_backward.default)
def _conv_bw(
    lw: Lowerer,
    node: fx.Node,
    g: Value,
    x: Value,
    w: Value,
    bias_sizes: Any,
    stride: Any,
    padding: Any,
    dilation: Any,
    transposed: bool,
    output_padding: Any,
    groups: int,
    mask: Sequence[bool],
) -> Value:
    """layers.conv2d_backward's three parts, each only when its output is used."""
    fwd = _find_forward(
        node,
        [aten.convolution.default],
        lambda n: n.args[0] is node.args[1] and n.args[1] is node.args[2],
    )
    ctx: layers.Conv2dCtx = lw.ctx[fwd]
    b = lw.b
    gv = lw.view(g)
    n_, c, _h, _wd = ctx.x_shape
    o = ctx.weight.shape[0]
    kh, kw = ctx.kernel
    ho, wo = ctx.out_hw
    p, k = ho * wo, kh * kw
    dx = dw = db = None
    if mask[1] or mask[2]:
        gt = b.copy(layers.permute(gv, (1, 0, 2, 3)), hint="conv.gT").reshape((o, n_ * p))
        if mask[1]:
            cols2 = ctx.cols.reshape((n_ * p, c * k))
            dw = b.batched_matmul(gt, cols2, hint="conv.dW").reshape((o, c, kh, kw))
        if mask[2]:
            db = b.reduce_sum(gt, axis=1, hint="conv.db")
    if mask[0]:
        dx = _conv_dx(lw, ctx, gv)
    return (dx, dw, db)


def _conv_dx(lw: Lowerer, ctx: layers.Conv2dCtx, g: View) -> View:
    """The input-gradient part of layers.conv2d_backward (a transposed convolution)."""
    b = lw.b
    n, c, h, w = ctx.x_shape
    o = ctx.weight.shape[0]
    kh, kw = ctx.kernel
    k = kh * kw
    idx = lw.tables.get(
        f"col2im:{layers._key(h, w, kh, kw, ctx.stride, ctx.padding)}",
        layers.col2im_table(h, w, kh, kw, ctx.stride, ctx.padding),
    )
    table, rows, rho = layers._image_table(b, g, (n, h * w, o, k), 1, "conv.gin")
    gcols = b.gather(idx.reshape((1, h * w, 1, k)), table, rows, rho, hint="conv.gcols")
    gcols = gcols.reshape((n, h * w, o * k))
    wr = b.copy(layers.permute(ctx.weight.reshape((o, c, k)), (1, 0, 2)), hint="conv.Wr")
    wr = wr.reshape((c, o * k))
    dx = b.batched_matmul(wr.unsqueeze(0), layers.permute(gcols, (0, 2, 1)), hint="conv.dx")
    return dx.reshape((n, c, h, w))


@handles(aten.max_pool2d_with_indices.default)
def _maxpool(
    lw: Lowerer,
    node: fx.Node,
    x: Value,
    kernel: Any,
    stride: Any = (),
    padding: Any = 0,
    dilation: Any = 1,
    ceil_mode: bool = False,
) -> Value:
    k = _pair(kernel, "kernel", node)
    s = _pair(stride, "stride", node) if stride else k
    if _pair(padding, "padding", node) != 0 or _pair(dilation, "dilation", node) != 1 or ceil_mode:
        raise LoweringError("max_pool2d: padding, dilation and ceil_mode are not supported", node)
    y, ctx = layers.max_pool2d(lw.b, lw.tables, lw.view(x), k, s)
    lw.ctx[node] = ctx
    return (y, Pending("maxpool.indices", node))


@handles(aten.max_pool2d_with_indices_backward.default)
def _maxpool_bw(lw: Lowerer, node: fx.Node, g: Value, x: Value, *args: Any) -> Value:
    indices = args[-1]
    if not isinstance(indices, Pending):
        raise LoweringError("max_pool2d backward without its forward", node)
    return layers.max_pool2d_backward(lw.b, lw.tables, lw.ctx[indices.owner], lw.view(g))


@handles(aten.avg_pool2d.default)
def _avgpool(
    lw: Lowerer,
    node: fx.Node,
    x: Value,
    kernel: Any,
    stride: Any = (),
    padding: Any = 0,
    ceil_mode: bool = False,
    count_include_pad: bool = True,
    divisor_override: Any = None,
) -> Value:
    k = _pair(kernel, "kernel", node)
    s = _pair(stride, "stride", node) if stride else k
    p = _pair(padding, "padding", node)
    if ceil_mode or (p and not count_include_pad) or divisor_override is not None:
        raise LoweringError(
            "avg_pool2d: ceil_mode, count_include_pad=False and divisor_override are not supported",
            node,
        )
    y, _ = layers.avg_pool2d(lw.b, lw.tables, lw.view(x), k, s, p)
    return y


@handles(aten.avg_pool2d_backward.default)
def _avgpool_bw(
    lw: Lowerer,
    node: fx.Node,
    g: Value,
    x: Value,
    kernel: Any,
    stride: Any,
    padding: Any,
    *rest: Any,
) -> Value:
    k = _pair(kernel, "kernel", node)
    s = _pair(stride, "stride", node) if stride else k
    p = _pair(padding, "padding", node)
    xv = lw.view(x)
    ctx = layers.PoolCtx(xv.shape, k, s, p, None, None)  # type: ignore[arg-type]
    return layers.avg_pool2d_backward(lw.b, lw.tables, ctx, lw.view(g))


@handles(aten.native_layer_norm.default)
def _layer_norm(
    lw: Lowerer, node: fx.Node, x: Value, shape: Sequence[int], w: Value, bias: Value, eps: float
) -> Value:
    if len(shape) != 1:
        raise LoweringError("layer_norm over more than the last dimension is not supported", node)
    xv = lw.view(x)
    y, ctx = layers.layer_norm(
        lw.b, xv, None if w is None else lw.view(w), None if bias is None else lw.view(bias), eps
    )
    lw.ctx[node] = ctx
    return (y, Pending("ln.mean", node), Pending("ln.rstd", node))


@handles(aten.native_layer_norm_backward.default)
def _layer_norm_bw(
    lw: Lowerer,
    node: fx.Node,
    g: Value,
    x: Value,
    shape: Any,
    mean: Value,
    rstd: Value,
    w: Value,
    bias: Value,
    mask: Sequence[bool],
) -> Value:
    if not isinstance(mean, Pending):
        raise LoweringError("layer_norm backward without its forward", node)
    ctx = lw.ctx[mean.owner]
    dx, dw, db = layers.layer_norm_backward(lw.b, ctx, lw.view(g))
    return (dx if mask[0] else None, dw if mask[1] else None, db if mask[2] else None)


@handles(aten._native_batch_norm_legit_functional.default)
def _batch_norm(
    lw: Lowerer,
    node: fx.Node,
    x: Value,
    w: Value,
    bias: Value,
    rm: Value,
    rv: Value,
    training: bool,
    momentum: float,
    eps: float,
) -> Value:
    """layers.batch_norm2d (training statistics); the running statistics are written into
    their persistent buffer slots in place (the new values are those slots)."""
    if not training:
        raise LoweringError(
            "batch norm in eval mode is not supported: call model.train() before compiling",
            node,
        )
    xv = lw.view(x)
    rank = xv.rank
    if rank == 2:
        xv = xv.unsqueeze(2).unsqueeze(3)
    elif rank == 3:
        xv = xv.unsqueeze(3)
    if xv.rank != 4:
        raise LoweringError("batch_norm: input must be [N, C], [N, C, L] or [N, C, H, W]", node)
    rmv = None if rm is None else lw.view(rm)
    rvv = None if rv is None else lw.view(rv)
    for r in (rmv, rvv):
        if r is not None and (r.strides != contiguous_strides(r.shape) or r.offset):
            raise LoweringError("batch_norm: running stats must be whole buffers", node)
    y, ctx = layers.batch_norm2d(
        lw.b,
        xv,
        None if w is None else lw.view(w),
        None if bias is None else lw.view(bias),
        rmv,
        rvv,
        momentum,
        eps,
    )
    lw.ctx[node] = (ctx, rank)
    if rank != 4:
        y = layers.squeeze_dims(y, list(range(rank)))
    return (y, Pending("bn.mean", node), Pending("bn.rstd", node), rmv, rvv)


@handles(aten.native_batch_norm_backward.default)
def _batch_norm_bw(
    lw: Lowerer,
    node: fx.Node,
    g: Value,
    x: Value,
    w: Value,
    rm: Value,
    rv: Value,
    save_mean: Value,
    save_rstd: Value,
    train: bool,
    eps: float,
    mask: Sequence[bool],
) -> Value:
    if not isinstance(save_rstd, Pending):
        raise LoweringError("batch_norm backward without its forward", node)
    ctx, rank = lw.ctx[save_rstd.owner]
    gv = lw.view(g)
    while gv.rank < 4:
        gv = gv.unsqueeze(gv.rank)
    dx, dw, db = layers.batch_norm2d_backward(lw.b, ctx, gv)
    if rank != 4:
        dx = layers.squeeze_dims(dx, list(range(rank)))
    return (dx if mask[0] else None, dw if mask[1] else None, db if mask[2] else None)


@handles(aten.embedding.default)
def _embedding(lw: Lowerer, node: fx.Node, w: Value, ids: Value, *rest: Any) -> Value:
    if len(rest) > 0 and rest[0] not in (-1, None):
        raise LoweringError("embedding with padding_idx is not supported", node)
    y, _ = layers.embedding(lw.b, lw.view(ids), lw.view(w))
    return y


@handles(aten.embedding_dense_backward.default)
def _embedding_bw(
    lw: Lowerer, node: fx.Node, g: Value, ids: Value, num: int, padding_idx: int, scale: bool
) -> Value:
    if padding_idx != -1 or scale:
        raise LoweringError("embedding backward with padding_idx / scale_grad_by_freq", node)
    return layers.embedding_backward(lw.b, layers.EmbeddingCtx(lw.view(ids), num), lw.view(g))


@handles(aten.native_dropout.default)
def _dropout(lw: Lowerer, node: fx.Node, x: Value, p: float, train: bool | None) -> Value:
    if p > 0 and train:
        raise LoweringError("dropout with p > 0 is not supported (it draws random numbers)", node)
    return (x, lw.b.const(1.0).broadcast_to(lw.view(x).shape))


RANDOM_OPS.discard(aten.native_dropout.default)
NO_FOLD.add(aten.native_dropout.default)


def _place(lw: Lowerer, g: View, sizes: Sequence[int], dim: int, pos: np.ndarray, key: str) -> View:
    """``out[..., i, ...] = g[..., pos[i], ...]`` along ``dim`` (+0.0 where ``pos[i] = -1``):
    ONE GATHER with the constant table ``pos``."""
    shape = tuple(int(s) for s in sizes)
    d = _dim(dim, len(shape))
    shape1 = [1] * len(shape)
    shape1[d] = shape[d]
    idx = lw.tables.get(f"place:{key}", pos.astype(np.float32)).reshape(shape1)
    strides = list(g.strides)
    strides[d] = 0
    table = View(g.slot, shape, tuple(strides), g.offset)
    return lw.b.gather(idx, table, g.shape[d], g.strides[d], hint="place")


@handles(aten.slice_backward.default)
def _slice_bw(
    lw: Lowerer,
    node: fx.Node,
    g: Value,
    sizes: Sequence[int],
    dim: int,
    start: int,
    end: int,
    step: int,
) -> Value:
    """The gradient of a slice: ``g`` placed at the sliced positions, +0.0 elsewhere."""
    d = _dim(dim, len(sizes))
    n = int(sizes[d])
    r = range(n)[slice(start, end, step)]
    pos = np.full(n, layers.NO_ROW, np.float32)
    pos[list(r)] = np.arange(len(r))
    return _place(lw, lw.view(g), sizes, d, pos, f"slice:{n}:{r.start}:{r.stop}:{r.step}")


@handles(aten.select_backward.default)
def _select_bw(
    lw: Lowerer, node: fx.Node, g: Value, sizes: Sequence[int], dim: int, index: int
) -> Value:
    d = _dim(dim, len(sizes))
    n = int(sizes[d])
    pos = np.full(n, layers.NO_ROW, np.float32)
    pos[index % n] = 0.0
    return _place(lw, lw.view(g).unsqueeze(d), sizes, d, pos, f"select:{n}:{index % n}")


@handles(aten.empty_like.default, aten.fill.Scalar, aten.new_zeros.default, aten.new_ones.default)
def _fill_value(lw: Lowerer, node: fx.Node, x: Value, *args: Any, **kw: Any) -> Value:
    """A constant of the node's shape: a scalar FILL slot broadcast (stride 0)."""
    value = 0.0
    if node.target is aten.fill.Scalar:
        value = float(args[0])
    elif node.target is aten.new_ones.default:
        value = 1.0
    return lw.b.const(value).broadcast_to(_shape(node))


@handles(aten._native_batch_norm_legit_no_training.default)
def _batch_norm_eval(
    lw: Lowerer,
    node: fx.Node,
    x: Value,
    w: Value,
    bias: Value,
    rm: Value,
    rv: Value,
    momentum: float,
    eps: float,
) -> Value:
    """Eval-mode batch norm (running statistics): ``rstd = 1/SQRT(rv + eps)``;
    ``y = FMA((x - rm)·rstd, w, b)`` per channel (``[C]`` viewed as ``[C, 1, ...]``)."""
    b = lw.b
    xv = lw.view(x)
    c = xv.shape[1]
    tail = (1,) * (xv.rank - 2)

    def per_channel(v: Value) -> View:
        return lw.view(v).reshape((c, *tail))

    rstd = b.div(
        b.const(1.0),
        b.sqrt(b.add(per_channel(rv), b.const(eps), hint="bne.veps"), hint="bne.std"),
        hint="bne.rstd",
    )
    xhat = b.mul(b.sub(xv, per_channel(rm), hint="bne.xc"), rstd, hint="bne.xhat")
    wv = None if w is None else per_channel(w)
    bv = None if bias is None else per_channel(bias)
    y = layers._affine(b, xhat, wv, bv, "bne")
    return (y, lw.b.const(0.0), lw.b.const(0.0))


def _truth(lw: Lowerer, node: fx.Node, i: int, v: Value) -> View:
    """A 0/1 view of argument ``i``: itself for bool tensors, else ``1 - EQ(v, 0)``."""
    arg = node.args[i]
    val = arg.meta.get("val") if isinstance(arg, fx.Node) else None
    view = lw.view(v)
    if isinstance(val, torch.Tensor) and val.dtype == torch.bool:
        return view
    return lw.b.sub(lw.b.const(1.0), lw.b.eq(view, lw.b.const(0.0), hint="truth"), hint="truth")


@handles(aten.logical_and.default, aten.bitwise_and.Tensor)
def _land(lw: Lowerer, node: fx.Node, a: Value, c: Value) -> Value:
    """MUL of the two 0/1 values."""
    return lw.b.mul(_truth(lw, node, 0, a), _truth(lw, node, 1, c), hint="and")


@handles(aten.logical_or.default, aten.bitwise_or.Tensor)
def _lor(lw: Lowerer, node: fx.Node, a: Value, c: Value) -> Value:
    """MAX of the two 0/1 values."""
    return lw.b.maximum(_truth(lw, node, 0, a), _truth(lw, node, 1, c), hint="or")


@handles(aten.bitwise_not.default)
def _bnot(lw: Lowerer, node: fx.Node, x: Value) -> Value:
    """``1 - x`` of a bool (0/1) tensor."""
    arg = node.args[0]
    val = arg.meta.get("val") if isinstance(arg, fx.Node) else None
    if not (isinstance(val, torch.Tensor) and val.dtype == torch.bool):
        raise LoweringError("bitwise_not of a non-bool tensor is not supported", node)
    return lw.b.sub(lw.b.const(1.0), lw.view(x), hint="not")
