"""replay/compile/layers.py against PyTorch autograd, on both backends.

Each test builds one program that computes a layer's forward and backward (the upstream
gradient is a random persistent input), runs it on the numpy reference and on the torch
backend — every slot must agree bit for bit — and compares the forward output and every
gradient with ``torch.nn.functional`` + autograd in float64.

Tolerance: ``max |ir - ref| ≤ TOL · max |ref|`` per tensor, TOL = 1e-5. Every IR value is a
chain of float32 operations, each with relative rounding error ≤ u = 2^-24 ≈ 6e-8; the longest
chains here are sums / FMA chains of ≤ ~200 terms (error ≤ R·u·Σ|terms|, in practice ~√R·u)
and exp (≤ 1 ulp, §3.8), so the worst absolute error is a few hundred u times the tensor's
scale: ≈ 1e-6 of its max magnitude at the shapes used, and 1e-5 leaves a 10x margin while still
catching any indexing mistake (a wrong, missing or duplicated term is an O(1) relative error).
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from protocol.ir import Opcode, Program, validate_program
from replay.compile import layers
from replay.compile.builder import ProgramBuilder, View
from replay.data.dataset import Dataset, DatasetSpec
from replay.dispute.trace import StepTrace
from replay.execute.numpy_backend import NumpyExecutor
from replay.execute.state import state_root_of
from replay.execute.torch_backend import TorchExecutor

TOL = 1e-5


def _bits(a: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(a, dtype=np.float32).view(np.uint32)


class Case:
    """One program: persistent inputs, a layer's forward and backward, persistent outputs."""

    def __init__(self) -> None:
        self.b = ProgramBuilder()
        self.tables = layers.Tables(self.b)
        self.inputs: dict[str, np.ndarray] = {}
        self.outputs: list[str] = []
        self.program: Program | None = None

    def input(self, name: str, array: np.ndarray) -> View:
        array = np.ascontiguousarray(array, dtype=np.float32)
        self.inputs[name] = array
        return self.b.persistent(name, array.shape)

    def output(self, name: str, view: View) -> None:
        slot = self.b.persistent(f"out.{name}", view.shape)
        self.b.copy(view, out=slot, hint=f"out.{name}")
        self.outputs.append(name)

    def run(self) -> dict[str, np.ndarray]:
        """Run on both backends, require identical bits everywhere, return the outputs."""
        self.program = self.b.build()
        state = dict(self.inputs) | dict(self.tables.values)
        for i in self.program.persistent_slots:
            slot = self.program.slots[i]
            state.setdefault(slot.name, np.zeros(slot.shape, np.float32))
        results = []
        for ex in (NumpyExecutor(self.program), TorchExecutor(self.program)):
            ex.set_state(state)
            ex.run_step(None)
            results.append(ex.get_state())
        ref, other = results
        for name in ref:
            assert np.array_equal(_bits(ref[name]), _bits(other[name])), f"{name}: backends differ"
        return {name: ref[f"out.{name}"] for name in self.outputs}

    def opcodes(self) -> set[Opcode]:
        assert self.program is not None
        return {op.opcode for op in self.program.ops}


def assert_close(got: np.ndarray, want: torch.Tensor, name: str, tol: float = TOL) -> None:
    ref = want.detach().to(torch.float64).numpy()
    assert got.shape == ref.shape, f"{name}: shape {got.shape} != {ref.shape}"
    scale = max(float(np.abs(ref).max(initial=0.0)), 1e-30)
    err = float(np.abs(got.astype(np.float64) - ref).max(initial=0.0))
    assert err <= tol * scale, f"{name}: max error {err:.3e} > {tol} x {scale:.3e}"


def _t(a: np.ndarray) -> torch.Tensor:
    return torch.tensor(a.astype(np.float64), requires_grad=True)


def _rand(rng: np.random.Generator, *shape: int) -> np.ndarray:
    return rng.standard_normal(shape).astype(np.float32)


# --------------------------------------------------------------------------- convolution


def _check_conv(
    seed: int, n: int, c: int, h: int, w: int, o: int, k: int, stride: int, padding: int,
    channels_last: bool = False,
) -> Case:  # fmt: skip
    rng = np.random.default_rng(seed)
    x, wt, bias = _rand(rng, n, c, h, w), _rand(rng, o, c, k, k), _rand(rng, o)
    ho, wo = layers.out_size(h, k, stride, padding), layers.out_size(w, k, stride, padding)
    g = _rand(rng, n, o, ho, wo)
    case = Case()
    if channels_last:  # an NHWC slot read as an NCHW view
        xv = layers.permute(case.input("x", x.transpose(0, 2, 3, 1)), (0, 3, 1, 2))
    else:
        xv = case.input("x", x)
    y, ctx = layers.conv2d(case.b, case.tables, xv, case.input("w", wt), case.input("b", bias),
                           stride=stride, padding=padding)  # fmt: skip
    dx, dw, db = layers.conv2d_backward(case.b, case.tables, ctx, case.input("g", g))
    assert db is not None
    for name, v in (("y", y), ("dx", dx), ("dw", dw), ("db", db)):
        case.output(name, v)
    out = case.run()
    tx, tw, tb = _t(x), _t(wt), _t(bias)
    ty = F.conv2d(tx, tw, tb, stride=stride, padding=padding)
    ty.backward(torch.tensor(g.astype(np.float64)))
    assert_close(out["y"], ty, "y")
    assert_close(out["dx"], tx.grad, "dx")
    assert_close(out["dw"], tw.grad, "dw")
    assert_close(out["db"], tb.grad, "db")
    return case


@pytest.mark.parametrize(
    ("n", "c", "h", "w", "o", "k", "stride", "padding"),
    [
        (2, 3, 6, 5, 4, 3, 1, 1),  # "same" 3x3
        (2, 3, 7, 6, 4, 3, 2, 1),  # padded stride 2, odd size
        (1, 2, 8, 8, 3, 3, 2, 1),
        (2, 2, 5, 5, 3, 5, 1, 2),  # 5x5, padding 2
        (2, 3, 6, 6, 2, 1, 1, 0),  # 1x1
        (1, 2, 6, 7, 3, 2, 2, 0),  # 2x2 stride 2, no padding
    ],
)
def test_conv2d_matches_torch(n, c, h, w, o, k, stride, padding) -> None:
    case = _check_conv(0, n, c, h, w, o, k, stride, padding)
    assert {Opcode.GATHER, Opcode.MATMUL, Opcode.REDUCE_SUM} <= case.opcodes()


def test_conv2d_reads_a_channels_last_view_without_a_copy() -> None:
    case = _check_conv(1, 2, 3, 5, 5, 4, 3, 2, 1, channels_last=True)
    assert case.program is not None
    first = case.program.ops[0]
    assert first.opcode == Opcode.GATHER  # the im2col reads the NHWC slot directly


@settings(max_examples=12, deadline=None)
@given(
    n=st.integers(1, 2), c=st.integers(1, 3), h=st.integers(2, 7), w=st.integers(2, 7),
    o=st.integers(1, 3), k=st.integers(1, 3), stride=st.integers(1, 2), data=st.data(),
)  # fmt: skip
def test_conv2d_hypothesis_shapes(n, c, h, w, o, k, stride, data) -> None:
    padding = data.draw(st.integers(0, k // 2))
    if h + 2 * padding < k or w + 2 * padding < k:
        return
    _check_conv(2, n, c, h, w, o, k, stride, padding)


def test_padded_stride2_im2col_reads_minus_one_as_zero() -> None:
    """The im2col GATHER of a padded stride-2 convolution: table entries -1 give +0.0 bits
    (even where the image holds NaN and -0.0), the others the image element itself."""
    n, c, h, w, k, stride, padding = 1, 2, 5, 6, 3, 2, 1
    x = np.full((n, c, h, w), np.nan, np.float32)
    x[0, 1] = -np.arange(h * w, dtype=np.float32).reshape(h, w)  # includes -0.0
    case = Case()
    wt = np.zeros((1, c, k, k), np.float32)
    _y, ctx = layers.conv2d(case.b, case.tables, case.input("x", x), case.input("w", wt), None,
                            stride=stride, padding=padding)  # fmt: skip
    case.output("cols", ctx.cols)
    cols = case.run()["cols"]
    table = layers.im2col_table(h, w, k, k, stride, padding)
    assert (table == -1).any() and (table >= 0).any()
    flat = x.reshape(n, c, h * w)
    for p in range(table.shape[0]):
        for t in range(table.shape[1]):
            for ch in range(c):
                got = cols[0, p, ch, t]
                if table[p, t] < 0:
                    assert _bits(np.array(got)) == 0  # +0.0, not NaN, not -0.0
                else:
                    want = flat[0, ch, int(table[p, t])]
                    assert _bits(np.array(got)) == _bits(np.array(want)) or (
                        np.isnan(want) and _bits(np.array(got)) == 0x7FC00000
                    )


def test_pad2d_matches_torch() -> None:
    rng = np.random.default_rng(3)
    x = _rand(rng, 2, 3, 4, 5)
    pads = (1, 2, 0, 3)
    g = _rand(rng, 2, 3, 4 + 0 + 3, 5 + 1 + 2)
    case = Case()
    y, ctx = layers.pad2d(case.b, case.tables, case.input("x", x), pads)
    case.output("y", y)
    case.output("dx", layers.pad2d_backward(case.b, ctx, case.input("g", g)))
    out = case.run()
    tx = _t(x)
    ty = F.pad(tx, pads)
    ty.backward(torch.tensor(g.astype(np.float64)))
    assert_close(out["y"], ty, "y", tol=0)
    assert_close(out["dx"], tx.grad, "dx", tol=0)


# --------------------------------------------------------------------------- pooling


@pytest.mark.parametrize(
    ("h", "w", "k", "stride"), [(4, 6, 2, 2), (5, 5, 2, 2), (5, 6, 3, 1), (7, 7, 3, 2)]
)
@pytest.mark.parametrize("ties", [False, True])
def test_max_pool2d_matches_torch(h, w, k, stride, ties) -> None:
    """With ``ties`` the input is quantised to {-1, 0, 1} (and has whole zero windows, like
    after a ReLU): the gradient must go to the first maximal element, as torch's CPU kernel."""
    rng = np.random.default_rng(4)
    x = _rand(rng, 2, 3, h, w)
    if ties:
        x = np.clip(np.round(x), -1, 1).astype(np.float32)
        x[0, 0] = 0.0
    ho, wo = layers.out_size(h, k, stride, 0), layers.out_size(w, k, stride, 0)
    g = _rand(rng, 2, 3, ho, wo)
    case = Case()
    y, ctx = layers.max_pool2d(case.b, case.tables, case.input("x", x), k, stride)
    case.output("y", y)
    case.output("dx", layers.max_pool2d_backward(case.b, case.tables, ctx, case.input("g", g)))
    out = case.run()
    tx = _t(x)
    ty = F.max_pool2d(tx, k, stride)
    ty.backward(torch.tensor(g.astype(np.float64)))
    assert_close(out["y"], ty, "y", tol=0)
    assert_close(out["dx"], tx.grad, "dx")
    assert Opcode.REDUCE_MAX in case.opcodes()


@pytest.mark.parametrize(
    ("h", "w", "k", "stride", "padding"), [(4, 6, 2, 2, 0), (5, 5, 3, 1, 1), (7, 6, 3, 2, 1)]
)
def test_avg_pool2d_matches_torch(h, w, k, stride, padding) -> None:
    rng = np.random.default_rng(5)
    x = _rand(rng, 2, 2, h, w)
    ho, wo = layers.out_size(h, k, stride, padding), layers.out_size(w, k, stride, padding)
    g = _rand(rng, 2, 2, ho, wo)
    case = Case()
    y, ctx = layers.avg_pool2d(case.b, case.tables, case.input("x", x), k, stride, padding)
    case.output("y", y)
    case.output("dx", layers.avg_pool2d_backward(case.b, case.tables, ctx, case.input("g", g)))
    out = case.run()
    tx = _t(x)
    ty = F.avg_pool2d(tx, k, stride, padding)
    ty.backward(torch.tensor(g.astype(np.float64)))
    assert_close(out["y"], ty, "y")
    assert_close(out["dx"], tx.grad, "dx")


@settings(max_examples=12, deadline=None)
@given(
    h=st.integers(2, 7), w=st.integers(2, 7), k=st.integers(1, 3), stride=st.integers(1, 3),
    avg=st.booleans(), data=st.data(),
)  # fmt: skip
def test_pooling_hypothesis_shapes(h, w, k, stride, avg, data) -> None:
    """Max (quantised input: ties) and average pooling over random shapes, kernels, strides
    (and padding for average pooling)."""
    padding = data.draw(st.integers(0, k // 2)) if avg else 0
    if h + 2 * padding < k or w + 2 * padding < k:
        return
    rng = np.random.default_rng(12)
    x = _rand(rng, 2, 2, h, w)
    if not avg:
        x = np.round(x * 2).astype(np.float32)
    ho, wo = layers.out_size(h, k, stride, padding), layers.out_size(w, k, stride, padding)
    g = _rand(rng, 2, 2, ho, wo)
    case = Case()
    xv, gv = case.input("x", x), case.input("g", g)
    if avg:
        y, ctx = layers.avg_pool2d(case.b, case.tables, xv, k, stride, padding)
        dx = layers.avg_pool2d_backward(case.b, case.tables, ctx, gv)
    else:
        y, ctx = layers.max_pool2d(case.b, case.tables, xv, k, stride)
        dx = layers.max_pool2d_backward(case.b, case.tables, ctx, gv)
    case.output("y", y)
    case.output("dx", dx)
    out = case.run()
    tx = _t(x)
    pool = F.avg_pool2d(tx, k, stride, padding) if avg else F.max_pool2d(tx, k, stride)
    pool.backward(torch.tensor(g.astype(np.float64)))
    assert_close(out["y"], pool, "y")
    assert_close(out["dx"], tx.grad, "dx")


# --------------------------------------------------------------------------- normalisation


@pytest.mark.parametrize("shape", [(6, 10), (2, 3, 16)])
def test_layer_norm_matches_torch(shape) -> None:
    rng = np.random.default_rng(6)
    d = shape[-1]
    x = (_rand(rng, *shape) * 3 + 1).astype(np.float32)
    wt, bias, g = _rand(rng, d), _rand(rng, d), _rand(rng, *shape)
    case = Case()
    y, ctx = layers.layer_norm(case.b, case.input("x", x), case.input("w", wt),
                               case.input("b", bias), eps=1e-5)  # fmt: skip
    dx, dw, db = layers.layer_norm_backward(case.b, ctx, case.input("g", g))
    assert dw is not None and db is not None
    for name, v in (("y", y), ("dx", dx), ("dw", dw), ("db", db)):
        case.output(name, v)
    out = case.run()
    tx, tw, tb = _t(x), _t(wt), _t(bias)
    ty = F.layer_norm(tx, (d,), tw, tb, eps=1e-5)
    ty.backward(torch.tensor(g.astype(np.float64)))
    for name, want in (("y", ty), ("dx", tx.grad), ("dw", tw.grad), ("db", tb.grad)):
        assert_close(out[name], want, name)
    assert Opcode.FMA in case.opcodes()


def test_batch_norm2d_matches_torch() -> None:
    rng = np.random.default_rng(7)
    n, c, h, w = 3, 4, 3, 5
    x = (_rand(rng, n, c, h, w) * 2 - 0.5).astype(np.float32)
    wt, bias, g = _rand(rng, c), _rand(rng, c), _rand(rng, n, c, h, w)
    rm, rv = _rand(rng, c), (np.abs(_rand(rng, c)) + 0.5).astype(np.float32)
    case = Case()
    rm_v, rv_v = case.input("rm", rm), case.input("rv", rv)
    xv, wv, bv = case.input("x", x), case.input("w", wt), case.input("b", bias)
    y, ctx = layers.batch_norm2d(case.b, xv, wv, bv, rm_v, rv_v, momentum=0.1, eps=1e-5)
    dx, dw, db = layers.batch_norm2d_backward(case.b, ctx, case.input("g", g))
    assert dw is not None
    for name, v in (("y", y), ("dx", dx), ("dw", dw), ("db", db)):
        case.output(name, v)
    program_state = case.run()
    assert case.program is not None
    tx, tw, tb = _t(x), _t(wt), _t(bias)
    trm, trv = torch.tensor(rm.astype(np.float64)), torch.tensor(rv.astype(np.float64))
    ty = F.batch_norm(tx, trm, trv, tw, tb, training=True, momentum=0.1, eps=1e-5)
    ty.backward(torch.tensor(g.astype(np.float64)))
    for name, want in (("y", ty), ("dx", tx.grad), ("dw", tw.grad), ("db", tb.grad)):
        assert_close(program_state[name], want, name)
    # the running statistics were updated in place (persistent slots rm, rv)
    ex = NumpyExecutor(case.program)
    state = dict(case.inputs) | {
        case.program.slots[i].name: np.zeros(case.program.slots[i].shape, np.float32)
        for i in case.program.persistent_slots
        if case.program.slots[i].name.startswith("out.")
    }
    ex.set_state(state)
    ex.run_step(None)
    after = ex.get_state()
    assert_close(after["rm"], trm, "running_mean")
    assert_close(after["rv"], trv, "running_var")


# --------------------------------------------------------------------------- attention pieces


@pytest.mark.parametrize(
    "shape", [((2, 3, 4, 5), (2, 3, 5, 6)), ((3, 4, 2), (3, 2, 5)), ((4, 3), (3, 2))]
)
def test_batched_matmul_matches_torch(shape) -> None:
    rng = np.random.default_rng(8)
    sa, sb = shape
    a, bm = _rand(rng, *sa), _rand(rng, *sb)
    g = _rand(rng, *sa[:-1], sb[-1])
    case = Case()
    av, bv = case.input("a", a), case.input("bm", bm)
    y = case.b.batched_matmul(av, bv)
    da, db = layers.batched_matmul_backward(case.b, av, bv, case.input("g", g))
    for name, v in (("y", y), ("da", da), ("db", db)):
        case.output(name, v)
    out = case.run()
    ta, tb = _t(a), _t(bm)
    ty = ta @ tb
    ty.backward(torch.tensor(g.astype(np.float64)))
    for name, want in (("y", ty), ("da", ta.grad), ("db", tb.grad)):
        assert_close(out[name], want, name)


@pytest.mark.parametrize("axis", [0, 1, 2, 3, -1])
def test_softmax_any_axis_matches_torch(axis) -> None:
    rng = np.random.default_rng(9)
    x = (_rand(rng, 2, 3, 4, 5) * 4).astype(np.float32)
    g = _rand(rng, 2, 3, 4, 5)
    case = Case()
    p, ctx = layers.softmax(case.b, case.input("x", x), axis)
    case.output("p", p)
    case.output("dx", layers.softmax_backward(case.b, ctx, case.input("g", g)))
    out = case.run()
    tx = _t(x)
    ty = torch.softmax(tx, axis)
    ty.backward(torch.tensor(g.astype(np.float64)))
    assert_close(out["p"], ty, "p")
    assert_close(out["dx"], tx.grad, "dx")


def test_causal_attention_block_matches_torch() -> None:
    """One causal attention head block over [B, H, T, D]: scores = q·kᵀ/√D, causal mask
    (SELECT with -inf), softmax over the last axis, @ v, heads transposed back to
    [B, T, H·D] (COPY then view) plus a residual add — forward and all gradients."""
    rng = np.random.default_rng(10)
    bsz, heads, t, d = 2, 2, 5, 3
    q, k, v = (_rand(rng, bsz, heads, t, d) for _ in range(3))
    res = _rand(rng, bsz, t, heads * d)
    g = _rand(rng, bsz, t, heads * d)
    case = Case()
    b, tables = case.b, case.tables
    qv, kv, vv, rv = (
        case.input("q", q),
        case.input("k", k),
        case.input("v", v),
        case.input("r", res),
    )
    mask = tables.get(f"causal:{t}x{t}", layers.causal_mask(t, t))
    scale = b.const(1.0 / math.sqrt(d))
    s = b.mul(b.batched_matmul(qv, kv.T), scale)
    sm_in = layers.masked_fill(b, s, mask)
    p, sm = layers.softmax(b, sm_in, -1)
    o = b.batched_matmul(p, vv)  # [B, H, T, D]
    merged = layers.reshape(b, layers.permute(o, (0, 2, 1, 3)), (bsz, t, heads * d))
    y = layers.residual_add(b, rv, merged)
    # backward
    gv = case.input("g", g)
    go = layers.permute(gv.reshape((bsz, t, heads, d)), (0, 2, 1, 3))  # [B, H, T, D] view
    go = layers.contiguous(b, go)
    dp, dv = layers.batched_matmul_backward(b, p, vv, go)
    ds = layers.masked_fill_backward(b, mask, layers.softmax_backward(b, sm, dp))
    ds = b.mul(ds, scale)
    dq, dkt = layers.batched_matmul_backward(b, qv, kv.T, ds)
    for name, val in (("y", y), ("dq", dq), ("dk", dkt.T), ("dv", dv), ("dr", gv)):
        case.output(name, val)
    out = case.run()
    tq, tk, tv, tr = _t(q), _t(k), _t(v), _t(res)
    ts = (tq @ tk.transpose(-1, -2)) / math.sqrt(d)
    ts = ts.masked_fill(torch.tensor(layers.causal_mask(t, t) == 0), -math.inf)
    to = torch.softmax(ts, -1) @ tv
    ty = tr + to.permute(0, 2, 1, 3).reshape(bsz, t, heads * d)
    ty.backward(torch.tensor(g.astype(np.float64)))
    wants = {"y": ty, "dq": tq.grad, "dk": tk.grad, "dv": tv.grad, "dr": tr.grad}
    for name, want in wants.items():
        assert_close(out[name], want, name)


def test_embedding_matches_torch() -> None:
    rng = np.random.default_rng(11)
    vocab, d = 7, 4
    ids = rng.integers(0, vocab, (3, 5)).astype(np.float32)
    ids[0, :3] = 2.0  # repeated ids accumulate
    table, g = _rand(rng, vocab, d), _rand(rng, 3, 5, d)
    case = Case()
    y, ctx = layers.embedding(case.b, case.input("ids", ids), case.input("table", table))
    case.output("y", y)
    case.output("dt", layers.embedding_backward(case.b, ctx, case.input("g", g)))
    out = case.run()
    tt = _t(table)
    ty = F.embedding(torch.tensor(ids.astype(np.int64)), tt)
    ty.backward(torch.tensor(g.astype(np.float64)))
    assert_close(out["y"], ty, "y", tol=0)
    assert_close(out["dt"], tt.grad, "dtable")
    assert {Opcode.GATHER, Opcode.INDEX_ADD} <= case.opcodes()


# --------------------------------------------------------------------------- the mixed program


def _mixed():
    import game_programs

    return game_programs


def test_mixed_program_has_every_target_op() -> None:
    gp = _mixed()
    program, state = gp.mixed_train_program(16)
    validate_program(program)
    codes = [op.opcode for op in program.ops]
    for code in (Opcode.GATHER, Opcode.INDEX_ADD, Opcode.MATMUL, Opcode.REDUCE_MAX, Opcode.FMA):
        assert code in codes
    targets = gp.mixed_targets(program)
    conv = program.ops[targets["conv_im2col_gather"]]
    table = state[program.slots[conv.operands[0].slot].name]
    assert (table == -1).any()  # the padded convolution reads zero padding
    assert program.ops[targets["pool_reduce_max"]].opcode == Opcode.REDUCE_MAX
    assert program.ops[targets["layernorm_sum"]].opcode == Opcode.REDUCE_SUM
    assert program.ops[targets["embedding_index_add"]].opcode == Opcode.INDEX_ADD
    assert len(program.ops) < 400


def test_mixed_program_backends_agree_for_two_steps() -> None:
    gp = _mixed()
    program, state = gp.mixed_train_program(16)
    data = Dataset(DatasetSpec(batch_size=16))
    roots = []
    for ex in (NumpyExecutor(program), TorchExecutor(program)):
        ex.set_state(state)
        step_roots = []
        for t in range(2):
            ex.run_step(data.batch(t))
            step_roots.append(state_root_of(program, ex.get_state()))
        roots.append(step_roots)
    assert roots[0] == roots[1]


def test_mixed_program_step_matches_torch_autograd() -> None:
    """One step against the same network in float64 torch (autograd, plain SGD): the loss
    within 1e-5 relative, every parameter's update ``w_new - w_old`` within 1e-4 of its largest
    magnitude plus the float32 rounding of ``w_new`` itself (2^-24·max|w|)."""
    gp = _mixed()
    program, state = gp.mixed_train_program(16)
    x, y = Dataset(DatasetSpec(batch_size=16)).batch(0)
    ex = NumpyExecutor(program)
    ex.set_state(state)
    ex.run_step((x, y))
    after = ex.get_state()
    p = {name: _t(state[name]) for name in gp.PARAMS}
    tokens = torch.tensor(np.round(x * 16).astype(np.int64))
    h0 = p["emb.weight"][tokens].reshape(16, 8, 8, gp.EMBED).permute(0, 3, 1, 2)
    z = F.conv2d(h0, p["conv.weight"], p["conv.bias"], padding=1)
    pooled = F.max_pool2d(torch.relu(z), 2)
    h = F.layer_norm(pooled.reshape(16, -1), (128,), p["ln.weight"], p["ln.bias"], eps=1e-5)
    logits = h @ p["fc.weight"] + p["fc.bias"]
    loss = F.cross_entropy(logits, torch.tensor(y.astype(np.int64)))
    loss.backward()
    ref_loss = float(loss.detach())
    assert abs(float(after["loss"]) - ref_loss) <= 1e-5 * ref_loss
    for name in gp.PARAMS:
        step = -gp.LR * p[name].grad.numpy()
        got = after[name].astype(np.float64) - state[name].astype(np.float64)
        scale = float(np.abs(step).max())
        err = float(np.abs(got - step).max())
        assert err <= 1e-4 * scale + 2.0**-24 * float(np.abs(state[name]).max()), (name, err, scale)


def test_mixed_program_trains() -> None:
    gp = _mixed()
    program, state = gp.mixed_train_program(16)
    data = Dataset(DatasetSpec(batch_size=16))
    ex = NumpyExecutor(program)
    ex.set_state(state)
    losses = []
    for t in range(30):
        ex.run_step(data.batch(t))
        losses.append(float(ex.get_state()["loss"]))
    assert np.mean(losses[-5:]) < 0.8 * np.mean(losses[:5]), losses


def test_mixed_program_op_level_trace_agrees_and_reads_padding_as_no_row() -> None:
    """The op-level trace (every state root) is the same on both backends, and the dispute
    read of a padded im2col element is the index alone (-1 selects no row: +0.0)."""
    gp = _mixed()
    program, state = gp.mixed_train_program(16)
    batch = Dataset(DatasetSpec(batch_size=16)).batch(0)
    ref = StepTrace(program, state, batch, backend="numpy")
    assert ref.op_roots == StepTrace(program, state, batch, backend="torch").op_roots
    j = gp.mixed_targets(program)["conv_im2col_gather"]
    op = program.ops[j]
    table = state[program.slots[op.operands[0].slot].name]
    p = int(np.argmax((table == -1).any(axis=1)))  # an output position touching the border
    t = int(np.argmax(table[p] == -1))
    flat = int(np.ravel_multi_index((0, p, 0, t), op.shape))
    reads = ref.operand_reads(j, flat)
    assert len(reads) == 1 and float(reads[0].value) == -1.0
    out = ref.slot_value(j + 1, op.out)
    assert out is not None and out.reshape(-1)[flat].view(np.uint32) == 0
