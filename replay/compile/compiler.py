"""Compile an :class:`MLPSpec` into a one-step training program, an eval program, and C_0.

The training step, in IR ops only:

1. LOAD_BATCH x [B, D] and y [B] (class indices as float32);
2. forward: per Linear ``z = x @ W + b`` (MATMUL then ADD), activations ReLU (MAX with +0) or
   GELU (tanh form, lowered);
3. softmax cross-entropy: ``m = max_c z``, ``e = exp(z - m)``, ``s = Σ_c e``, ``p = e / s``,
   ``onehot = EQ(y, class_ids)``, loss ``= Σ_b (log s - (z - m)[y]) / B`` (persistent slot
   ``loss``), ``dz = (p - onehot) / B``;
4. backward through the layers (MATMULs against transposed views, bias grads as REDUCE_SUM);
5. the optimizer update (SGD momentum or AdamW), writing each persistent slot once;
6. FREE of every ephemeral value right after its last read (``replay.compile.liveness``).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from protocol.ir import BATCH_Y, Program
from replay.compile import lowering
from replay.compile.builder import ProgramBuilder, View
from replay.compile.spec import GELU, SGD, AdamW, Linear, MLPSpec, ReLU

CLASS_IDS = "class_ids"
LOSS = "loss"
LOGITS = "logits"
EVAL_X = "eval.x"


@dataclass(frozen=True)
class LinearParams:
    index: int
    weight: View
    bias: View


def param_names(index: int) -> tuple[str, str]:
    return f"layer{index}.weight", f"layer{index}.bias"


def linear_shapes(spec: MLPSpec) -> list[tuple[int, int, int]]:
    """(layer index, in, out) of every linear layer."""
    out = []
    width = spec.input_dim
    for i, layer in enumerate(spec.layers):
        if isinstance(layer, Linear):
            out.append((i, width, layer.out_features))
            width = layer.out_features
    return out


def _declare_params(b: ProgramBuilder, spec: MLPSpec) -> dict[int, LinearParams]:
    params = {}
    for i, fan_in, fan_out in linear_shapes(spec):
        w_name, b_name = param_names(i)
        params[i] = LinearParams(
            i, b.persistent(w_name, (fan_in, fan_out)), b.persistent(b_name, (fan_out,))
        )
    return params


@dataclass
class ForwardTrace:
    """Values the backward pass needs: each layer's input, and activation intermediates."""

    inputs: dict[int, View]
    sig_of: dict[int, View]
    logits: View


def _forward(
    b: ProgramBuilder, spec: MLPSpec, params: dict[int, LinearParams], x: View
) -> ForwardTrace:
    a = x
    inputs: dict[int, View] = {}
    sig_of: dict[int, View] = {}
    for i, layer in enumerate(spec.layers):
        inputs[i] = a
        if isinstance(layer, Linear):
            p = params[i]
            a = b.add(b.matmul(a, p.weight, hint=f"l{i}.mm"), p.bias, hint=f"l{i}.z")
        elif isinstance(layer, ReLU):
            a = b.maximum(a, b.const(0.0), hint=f"l{i}.relu")
        elif isinstance(layer, GELU):
            a, sig_of[i] = lowering.gelu_parts(b, a)
    return ForwardTrace(inputs, sig_of, a)


def _softmax_xent(
    b: ProgramBuilder, logits: View, y: View, class_ids: View, loss_out: View, batch: int
) -> View:
    """Writes the mean loss into ``loss_out``; returns dL/dlogits."""
    inv_b = b.const(1.0 / batch)
    m = b.reduce_max(logits, axis=1, hint="ce.max")
    shifted = b.sub(logits, m.unsqueeze(1), hint="ce.shift")
    e = lowering.exp(b, shifted)
    s = b.reduce_sum(e, axis=1, hint="ce.sum")
    p = b.div(e, s.unsqueeze(1), hint="ce.p")
    onehot = b.eq(y.unsqueeze(1), class_ids.unsqueeze(0), hint="ce.onehot")
    picked = b.reduce_sum(b.mul(shifted, onehot, hint="ce.pick"), axis=1, hint="ce.pick")
    per_example = b.sub(lowering.log(b, s), picked, hint="ce.nll")
    b.mul(b.reduce_sum(per_example, axis=0, hint="ce.total"), inv_b, out=loss_out, hint="ce.loss")
    return b.mul(b.sub(p, onehot, hint="ce.grad"), inv_b, hint="ce.grad")


def _backward(
    b: ProgramBuilder,
    spec: MLPSpec,
    params: dict[int, LinearParams],
    fwd: ForwardTrace,
    dlogits: View,
) -> dict[str, View]:
    """Gradients by persistent parameter name."""
    grads: dict[str, View] = {}
    d = dlogits
    for i in range(len(spec.layers) - 1, -1, -1):
        layer = spec.layers[i]
        a_in = fwd.inputs[i]
        if isinstance(layer, Linear):
            p = params[i]
            w_name, b_name = param_names(i)
            grads[w_name] = b.matmul(a_in.T, d, hint=f"l{i}.dW")
            grads[b_name] = b.reduce_sum(d, axis=0, hint=f"l{i}.db")
            if i > 0:
                d = b.matmul(d, p.weight.T, hint=f"l{i}.dx")
        elif isinstance(layer, ReLU):
            d = b.mul(d, b.gt(a_in, b.const(0.0), hint=f"l{i}.relu'"), hint=f"l{i}.drelu")
        elif isinstance(layer, GELU):
            d = b.mul(d, lowering.gelu_grad(b, a_in, fwd.sig_of[i]), hint=f"l{i}.dgelu")
    return grads


def _sgd(b: ProgramBuilder, opt: SGD, params: dict[str, View], grads: dict[str, View]) -> None:
    lr, mu = b.const(opt.lr), b.const(opt.momentum)
    for name, w in params.items():
        g = grads[name]
        if opt.weight_decay:
            g = b.add(g, b.mul(w, b.const(opt.weight_decay), hint="sgd.wd"), hint="sgd.g")
        v = b.persistent(f"{name}.momentum", w.shape)
        v_new = b.add(b.mul(v, mu, hint="sgd.v"), g, out=v, hint="sgd.v")
        b.sub(w, b.mul(v_new, lr, hint="sgd.step"), out=w, hint="sgd.w")


def _adamw(b: ProgramBuilder, opt: AdamW, params: dict[str, View], grads: dict[str, View]) -> None:
    one = b.const(1.0)
    beta1, beta2 = b.const(opt.beta1), b.const(opt.beta2)
    c1, c2 = b.const(1.0 - opt.beta1), b.const(1.0 - opt.beta2)
    p1 = b.persistent("adamw.beta1_power", ())
    p2 = b.persistent("adamw.beta2_power", ())
    p1 = b.mul(p1, beta1, out=p1, hint="adamw.p1")
    p2 = b.mul(p2, beta2, out=p2, hint="adamw.p2")
    bc1 = b.sub(one, p1, hint="adamw.bc1")
    bc2 = b.sub(one, p2, hint="adamw.bc2")
    lr, eps = b.const(opt.lr), b.const(opt.eps)
    decay = b.const(1.0 - opt.lr * opt.weight_decay)
    for name, w in params.items():
        g = grads[name]
        m = b.persistent(f"{name}.adam_m", w.shape)
        v = b.persistent(f"{name}.adam_v", w.shape)
        m = b.add(
            b.mul(m, beta1, hint="adamw.m"), b.mul(g, c1, hint="adamw.m"), out=m, hint="adamw.m"
        )
        g2 = b.mul(g, g, hint="adamw.g2")
        v = b.add(
            b.mul(v, beta2, hint="adamw.v"), b.mul(g2, c2, hint="adamw.v"), out=v, hint="adamw.v"
        )
        mhat = b.div(m, bc1, hint="adamw.mhat")
        denom = b.add(
            b.sqrt(b.div(v, bc2, hint="adamw.vhat"), hint="adamw.den"), eps, hint="adamw.den"
        )
        step = b.mul(b.div(mhat, denom, hint="adamw.upd"), lr, hint="adamw.upd")
        b.sub(b.mul(w, decay, hint="adamw.decay"), step, out=w, hint="adamw.w")


@dataclass(frozen=True)
class CompiledModel:
    spec: MLPSpec
    train: Program

    def initial_state(self) -> dict[str, np.ndarray]:
        return initial_state(self.spec, self.train)

    def eval_program(self, rows: int) -> Program:
        return compile_eval(self.spec, rows)


def compile_train(spec: MLPSpec) -> Program:
    """The one-step training program of ``spec``."""
    b = ProgramBuilder()
    params = _declare_params(b, spec)
    class_ids = b.persistent(CLASS_IDS, (spec.num_classes,))
    loss = b.persistent(LOSS, ())
    x = b.load_x((spec.batch_size, spec.input_dim))
    y = b.load_batch(BATCH_Y, (spec.batch_size,), "batch.y")
    fwd = _forward(b, spec, params, x)
    dlogits = _softmax_xent(b, fwd.logits, y, class_ids, loss, spec.batch_size)
    grads = _backward(b, spec, params, fwd, dlogits)
    by_name = {}
    for p in params.values():
        w_name, b_name = param_names(p.index)
        by_name[w_name] = p.weight
        by_name[b_name] = p.bias
    if isinstance(spec.optimizer, SGD):
        _sgd(b, spec.optimizer, by_name, grads)
    elif isinstance(spec.optimizer, AdamW):
        _adamw(b, spec.optimizer, by_name, grads)
    return b.build()


def compile_eval(spec: MLPSpec, rows: int) -> Program:
    """Forward only: persistent ``eval.x`` [rows, D] in, persistent ``logits`` [rows, C] out."""
    b = ProgramBuilder()
    params = _declare_params(b, spec)
    x = b.persistent(EVAL_X, (rows, spec.input_dim))
    logits = b.persistent(LOGITS, (rows, spec.num_classes))
    fwd = _forward(b, spec, params, x)
    b.copy(fwd.logits, out=logits, hint="logits")
    return b.build()


def initial_params(spec: MLPSpec) -> dict[str, np.ndarray]:
    """Weights and biases ~ U(-1/sqrt(fan_in), 1/sqrt(fan_in)) from ``init_seed`` (numpy PCG64)."""
    rng = np.random.default_rng(spec.init_seed)
    out: dict[str, np.ndarray] = {}
    for i, fan_in, fan_out in linear_shapes(spec):
        bound = 1.0 / np.sqrt(fan_in)
        w_name, b_name = param_names(i)
        out[w_name] = rng.uniform(-bound, bound, (fan_in, fan_out)).astype(np.float32)
        out[b_name] = rng.uniform(-bound, bound, (fan_out,)).astype(np.float32)
    return out


def initial_state(spec: MLPSpec, program: Program) -> dict[str, np.ndarray]:
    """C_0: initial parameters, zero optimizer state, betas' powers 1, class ids 0..C-1."""
    params = initial_params(spec)
    state: dict[str, np.ndarray] = {}
    for i in program.persistent_slots:
        slot = program.slots[i]
        if slot.name in params:
            state[slot.name] = params[slot.name]
        elif slot.name == CLASS_IDS:
            state[slot.name] = np.arange(spec.num_classes, dtype=np.float32)
        elif slot.name.startswith("adamw.beta"):
            state[slot.name] = np.ones(slot.shape, dtype=np.float32)
        else:
            state[slot.name] = np.zeros(slot.shape, dtype=np.float32)
    return state


def compile_model(spec: MLPSpec) -> CompiledModel:
    return CompiledModel(spec, compile_train(spec))
