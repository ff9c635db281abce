"""``torch.optim`` objects lowered into IR update ops (docs/protocol.md §3.14.3).

Read from the optimizer's type and ``param_groups`` (never from its Python code), and written
to follow ``torch.optim``'s single-tensor implementations op for op:

- **SGD** (``lr, momentum, dampening, nesterov, weight_decay``): ``g = grad + wd·p``; with
  momentum ``buf = g`` on the first step, else ``buf·μ + (1-dampening)·g``; nesterov
  ``g = g + μ·buf`` else ``g = buf``; ``p = p + (-lr)·g``.
- **Adam / AdamW** (``lr, betas, eps, weight_decay``; AdamW or ``decoupled_weight_decay``
  decays ``p = p·(1 - lr·wd)`` first, Adam adds ``wd·p`` to the gradient):
  ``m = m + (1-β1)·(g - m)`` (lerp), ``v = v·β2 + (1-β2)·(g·g)``, ``β^t`` kept as float32
  scalars (``β^t ← β^t·β``, start 1), ``step_size = lr / (1 - β1^t)``,
  ``denom = √v / √(1 - β2^t) + eps``, ``p = p + (-step_size)·(m / denom)``.

Parameters with ``requires_grad=False`` (and parameters that get no gradient, which torch.optim
skips) are never written and get no state. Refused: ``amsgrad``, ``maximize``, other optimizer
types. The learning rate is a constant of the program, or, with a schedule, per-step data: the
constant table ``optim.lr_schedule [N, G]`` (step, param group; a persistent slot of C_0 that
no op writes) is read by ONE GATHER per group at row ``optim.step`` — any schedule is data;
past row N the GATHER reads +0.0 (lr 0: parameters stop moving). Optional gradient clipping
by global norm follows
``torch.nn.utils.clip_grad_norm_``: ``total = √(Σ_params Σ g²)``,
``g = g · min(max_norm / (total + 1e-6), 1)``.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import torch

from protocol.ir import Opcode
from replay.compile.builder import ProgramBuilder, View
from replay.errors import SpecError


class OptimizerError(SpecError):
    """An optimizer (or one of its settings) that is not lowered."""


def _f(v: object) -> float:
    if isinstance(v, torch.Tensor):
        return float(v.item())
    return float(v)  # type: ignore[arg-type]


def clip_grad_norm(b: ProgramBuilder, grads: dict[str, View], max_norm: float) -> dict[str, View]:
    """``torch.nn.utils.clip_grad_norm_(params, max_norm)`` (2-norm), in parameter order."""
    total: View | None = None
    for g in grads.values():
        sq = b.mul(g, g, hint="clip.sq")
        s = sq
        while s.rank:
            s = b.reduce_sum(s, axis=s.rank - 1, hint="clip.sum")
        total = s if total is None else b.add(total, s, hint="clip.total")
    if total is None:
        return grads
    norm = b.sqrt(total, hint="clip.norm")
    coef = b.div(b.const(max_norm), b.add(norm, b.const(1e-6), hint="clip.den"), hint="clip.coef")
    coef = b.minimum(coef, b.const(1.0), hint="clip.coef")
    return {k: b.mul(g, coef, hint="clip.g") for k, g in grads.items()}


def schedule_table(optimizer: torch.optim.Optimizer, scheduler: object, steps: int) -> np.ndarray:
    """``[steps, groups]``: the lr each param group uses at step t (0-based), read by stepping
    ``scheduler`` (bound to ``optimizer``) ``steps`` times, then restoring both."""
    import warnings

    if getattr(scheduler, "optimizer", None) is not optimizer:
        raise OptimizerError("lr_schedule must be a torch.optim.lr_scheduler bound to optimizer")
    saved = scheduler.state_dict()  # type: ignore[attr-defined]
    lrs = [g["lr"] for g in optimizer.param_groups]
    rows = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for _ in range(steps):
            rows.append([_f(g["lr"]) for g in optimizer.param_groups])
            scheduler.step()  # type: ignore[attr-defined]
    scheduler.load_state_dict(saved)  # type: ignore[attr-defined]
    for g, lr in zip(optimizer.param_groups, lrs, strict=True):
        g["lr"] = lr
    return np.asarray(rows, dtype=np.float32).reshape(steps, len(lrs))


def lower_optimizer(
    b: ProgramBuilder,
    optimizer: torch.optim.Optimizer,
    names: Mapping[int, str],
    params: Mapping[str, View],
    grads: Mapping[str, View],
    lr_table: np.ndarray | None = None,
) -> dict[str, np.ndarray]:
    """Emit the update of every trained parameter; returns C_0 values of the new state slots.

    ``names`` maps ``id(parameter tensor)`` to its slot name; ``grads`` holds the gradient
    view of every parameter that receives one.
    """
    kind = type(optimizer).__name__
    if kind not in ("SGD", "Adam", "AdamW"):
        raise OptimizerError(
            f"optimizer {type(optimizer).__module__}.{kind} is not supported (SGD, Adam, AdamW)"
        )
    initial: dict[str, np.ndarray] = {}
    step = b.persistent("optim.step", ())
    initial["optim.step"] = np.zeros((), np.float32)
    first = b.eq(step, b.const(0.0), hint="optim.first")
    table = None
    if lr_table is not None:
        table = b.persistent("optim.lr_schedule", lr_table.shape)
        initial["optim.lr_schedule"] = np.asarray(lr_table, np.float32)
    for gi, group in enumerate(optimizer.param_groups):
        lr: View
        if table is None:
            lr = b.const(_f(group["lr"]))
        else:
            column = View(table.slot, (), (), gi)
            lr = b.gather(step, column, lr_table.shape[0], table.strides[0], hint="optim.lr")  # type: ignore[union-attr]
        if group.get("maximize"):
            raise OptimizerError(f"param group {gi}: maximize=True is not supported")
        if group.get("amsgrad"):
            raise OptimizerError(f"param group {gi}: amsgrad=True is not supported")
        trained = []
        for p in group["params"]:
            name = names.get(id(p))
            if name is None:
                raise OptimizerError(
                    f"param group {gi} holds a tensor of shape {tuple(p.shape)} that is not a "
                    "parameter of the model"
                )
            if p.requires_grad and name in grads:
                trained.append(name)
        if kind == "SGD":
            _sgd(b, group, lr, trained, params, grads, first, initial)
        else:
            decoupled = kind == "AdamW" or bool(group.get("decoupled_weight_decay", False))
            _adam(b, gi, group, lr, trained, params, grads, decoupled, initial)
    b.add(step, b.const(1.0), out=step, hint="optim.step")
    return initial


def _sgd(
    b: ProgramBuilder,
    group: dict,
    lr: View,
    trained: list[str],
    params: Mapping[str, View],
    grads: Mapping[str, View],
    first: View,
    initial: dict[str, np.ndarray],
) -> None:
    mu = _f(group.get("momentum", 0.0))
    damp, wd = _f(group.get("dampening", 0.0)), _f(group.get("weight_decay", 0.0))
    nesterov = bool(group.get("nesterov", False))
    neg_lr = b.neg(lr, hint="sgd.lr")
    for name in trained:
        w, g = params[name], grads[name]
        if wd:
            g = b.add(g, b.mul(w, b.const(wd), hint="sgd.wd"), hint="sgd.g")
        if mu:
            buf = b.persistent(f"{name}.momentum_buffer", w.shape)
            initial[f"{name}.momentum_buffer"] = np.zeros(w.shape, np.float32)
            t = b.mul(buf, b.const(mu), hint="sgd.buf")
            gd = g if damp == 0 else b.mul(g, b.const(1.0 - damp), hint="sgd.buf")
            later = b.add(t, gd, hint="sgd.buf")
            buf = b.elementwise(Opcode.SELECT, first, g, later, out=buf, hint="sgd.buf")
            g = (
                b.add(g, b.mul(buf, b.const(mu), hint="sgd.nest"), hint="sgd.nest")
                if nesterov
                else buf
            )
        b.add(w, b.mul(g, neg_lr, hint="sgd.step"), out=w, hint="sgd.p")


def _adam(
    b: ProgramBuilder,
    gi: int,
    group: dict,
    lr: View,
    trained: list[str],
    params: Mapping[str, View],
    grads: Mapping[str, View],
    decoupled: bool,
    initial: dict[str, np.ndarray],
) -> None:
    if not trained:
        return
    eps, wd = _f(group["eps"]), _f(group.get("weight_decay", 0.0))
    beta1, beta2 = (_f(x) for x in group["betas"])
    p1 = b.persistent(f"optim.group{gi}.beta1_power", ())
    p2 = b.persistent(f"optim.group{gi}.beta2_power", ())
    initial[f"optim.group{gi}.beta1_power"] = np.ones((), np.float32)
    initial[f"optim.group{gi}.beta2_power"] = np.ones((), np.float32)
    p1 = b.mul(p1, b.const(beta1), out=p1, hint="adam.p1")
    p2 = b.mul(p2, b.const(beta2), out=p2, hint="adam.p2")
    one = b.const(1.0)
    bc1 = b.sub(one, p1, hint="adam.bc1")
    bc2_sqrt = b.sqrt(b.sub(one, p2, hint="adam.bc2"), hint="adam.bc2")
    neg_step = b.neg(b.div(lr, bc1, hint="adam.step"), hint="adam.step")
    decay = b.sub(one, b.mul(lr, b.const(wd), hint="adamw.decay"), hint="adamw.decay")
    w1, c2 = b.const(1.0 - beta1), b.const(1.0 - beta2)
    b2 = b.const(beta2)
    for name in trained:
        w, g = params[name], grads[name]
        if wd and decoupled:
            w_in = b.mul(w, decay, hint="adamw.decay")
        else:
            w_in = w
            if wd:
                g = b.add(g, b.mul(w, b.const(wd), hint="adam.wd"), hint="adam.g")
        m = b.persistent(f"{name}.exp_avg", w.shape)
        v = b.persistent(f"{name}.exp_avg_sq", w.shape)
        initial[f"{name}.exp_avg"] = np.zeros(w.shape, np.float32)
        initial[f"{name}.exp_avg_sq"] = np.zeros(w.shape, np.float32)
        m = b.add(m, b.mul(b.sub(g, m, hint="adam.m"), w1, hint="adam.m"), out=m, hint="adam.m")
        g2 = b.mul(g, g, hint="adam.g2")
        v = b.add(b.mul(v, b2, hint="adam.v"), b.mul(g2, c2, hint="adam.v"), out=v, hint="adam.v")
        denom = b.add(
            b.div(b.sqrt(v, hint="adam.den"), bc2_sqrt, hint="adam.den"),
            b.const(eps),
            hint="adam.den",
        )
        upd = b.mul(b.div(m, denom, hint="adam.upd"), neg_step, hint="adam.upd")
        b.add(w_in, upd, out=w, hint="adam.p")
