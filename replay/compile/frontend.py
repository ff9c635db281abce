"""Capture a PyTorch training step (forward, loss, backward) and lower it to one IR program.

**Capture: AOTAutograd's joint graph** (``torch._functorch.aot_autograd.aot_export_module``
with ``trace_joint=True``). Why this one, on torch 2.13:

- it is the one API that returns forward *and* backward as a single functional ATen graph
  of a module whose output is a scalar loss, with a ``GraphSignature`` that names every
  parameter and buffer input, the gradient output of each parameter, and each buffer
  mutation (BatchNorm running statistics) — exactly what a program's slot table needs;
- it traces with fake tensors, so data-dependent Python control flow (``if x.sum() > 0``)
  fails at trace time instead of being silently baked in;
- it applies no decomposition unless asked, so layer ops arrive as ``convolution`` +
  ``convolution_backward``, ``native_layer_norm(_backward)``,
  ``_native_batch_norm_legit_functional`` + ``native_batch_norm_backward``,
  ``max_pool2d_with_indices(_backward)``, ``embedding_dense_backward`` ... and map one to one
  onto replay/compile/layers.py, whose summation orders are documented;
- ``make_fx`` over ``torch.func.grad`` trips over in-place buffer updates (BatchNorm's
  ``num_batches_tracked.add_``), and ``torch.export`` + ``_export_forward_backward`` runs the
  core-ATen decompositions over the whole graph (layer norm, batch norm, GELU and their
  backwards as dozens of primitive ops each) and errs on parameters without gradients.

Attention: ``F.scaled_dot_product_attention`` is captured under
``sdpa_kernel(SDPBackend.MATH)``, so it arrives as its math form (bmm, ``_safe_softmax``,
a causal ``tril`` mask, bmm) with an ordinary backward.

The joint graph carries no user source lines, so :func:`compile` first runs one eager
forward + backward of a *copy* of the model under a dispatch mode that records, per ATen op,
the module path and the user's source line; this probe also checks that the example batch
fits the model and finds parameters that receive no gradient (torch.optim skips those, so
they are treated as frozen). Every refusal is one :class:`CompileError` naming the op, the
module path and the source line.
"""

from __future__ import annotations

import copy
import os
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import fx, nn
from torch.utils._python_dispatch import TorchDispatchMode

from protocol.ir import BATCH_Y
from replay.compile import layers
from replay.compile.aten import Lowerer, LoweringError
from replay.compile.builder import ProgramBuilder, View
from replay.compile.job import LOSS_SLOT, CompiledJob, StateEntry
from replay.compile.optim import (
    OptimizerError,
    clip_grad_norm,
    lower_optimizer,
    schedule_table,
)
from replay.errors import SpecError

_TORCH_DIR = os.path.dirname(torch.__file__)
_HERE = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


class CompileError(SpecError):
    """A model, loss, optimizer or example that cannot be compiled; one line, naming the op,
    the module path and the user's source line where they are known."""


@dataclass(frozen=True)
class Origin:
    module: str
    source: str


def _user_frame(frames: list[traceback.FrameSummary]) -> str:
    """The innermost frame that is neither torch's nor this package's own."""
    for f in reversed(frames):
        path = os.path.abspath(f.filename)
        if path.startswith(_TORCH_DIR) or path.startswith(os.path.join(_HERE, "replay")):
            continue
        if "<frozen" in path or path.startswith(os.path.dirname(traceback.__file__)):
            continue
        return f"{f.filename}:{f.lineno} `{(f.line or '').strip()}`"
    return "<unknown source line>"


class _Probe(TorchDispatchMode):
    """Records, for each ATen op called in the forward, (module path, user source line)."""

    def __init__(self, stack: list[str]) -> None:
        super().__init__()
        self.stack = stack
        self.seen: dict[str, list[Origin]] = {}
        self.dropout: Origin | None = None
        self.forward = True

    def __torch_dispatch__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        kwargs = kwargs or {}
        if self.forward:
            name = str(func.overloadpacket.__name__)
            origin = Origin(
                self.stack[-1] if self.stack else "<loss function>",
                _user_frame(traceback.extract_stack()),
            )
            self.seen.setdefault(name, []).append(origin)
            if name in ("native_dropout", "bernoulli") and self.dropout is None:
                p = args[1] if len(args) > 1 else kwargs.get("p", 0.5)
                train = args[2] if len(args) > 2 else kwargs.get("train", True)
                if name == "bernoulli" or (p and train):
                    self.dropout = origin
        return func(*args, **kwargs)


def _module_stack_hooks(model: nn.Module, stack: list[str]) -> list[Any]:
    handles = []
    for name, mod in model.named_modules():
        label = f"{name or '<model>'} ({type(mod).__name__})"

        def pre(_m: nn.Module, _a: Any, label: str = label) -> None:
            stack.append(label)

        def post(_m: nn.Module, _a: Any, _o: Any) -> None:
            stack.pop()

        handles.append(mod.register_forward_pre_hook(pre))
        handles.append(mod.register_forward_hook(post))
    return handles


def _where(exc: BaseException) -> str:
    return _user_frame(traceback.extract_tb(exc.__traceback__))


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__


class _Step(nn.Module):
    def __init__(self, model: nn.Module, loss_fn: Callable[..., torch.Tensor]) -> None:
        super().__init__()
        self.m = model
        self.loss_fn = loss_fn

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor]:
        return (self.loss_fn(self.m(x), y),)


class _Forward(nn.Module):
    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.m = model

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor]:
        return (self.m(x),)


EVAL_X, LOGITS = "eval.x", "logits"


def compile_eval(
    model: nn.Module, x_shape: tuple[int, ...], x_dtype: torch.dtype
) -> tuple[Any, dict[str, np.ndarray]]:
    """The model's eval-mode forward over a persistent input ``eval.x`` of ``x_shape``, written
    to the persistent ``logits`` slot: (program, its constant tables). Parameters and buffers
    keep the training program's slot names, so a checkpoint's values plug in."""
    from torch._functorch.aot_autograd import aot_export_module
    from torch.nn.attention import SDPBackend, sdpa_kernel

    was_training = model.training
    model.eval()
    try:
        with torch.no_grad(), sdpa_kernel(SDPBackend.MATH):
            gm, sig = aot_export_module(
                _Forward(model), (torch.zeros(x_shape, dtype=x_dtype),), trace_joint=False
            )
    except Exception as exc:
        raise CompileError(
            f"eval capture failed: {type(exc).__name__}: {_first_line(exc)} at {_where(exc)}"
        ) from None
    finally:
        model.train(was_training)
    b = ProgramBuilder()
    tables = layers.Tables(b)
    lw = Lowerer(b, tables)
    named = dict(model.named_parameters(remove_duplicate=False))
    named.update(dict(model.named_buffers(remove_duplicate=False)))
    first: dict[int, str] = {}
    for n, t in named.items():
        first.setdefault(id(t), n)
    placeholders = {n.name: n for n in gm.graph.nodes if n.op == "placeholder"}
    inputs: dict[fx.Node, Any] = {}
    views: dict[str, View] = {}
    for ph, full in (*sig.inputs_to_parameters.items(), *sig.inputs_to_buffers.items()):
        t = named[full.removeprefix("m.")]
        nm = first[id(t)]
        if nm not in views:
            views[nm] = b.persistent(nm, tuple(t.shape))
        inputs[placeholders[ph]] = views[nm]
    inputs[placeholders[sig.user_inputs[0]]] = b.persistent(EVAL_X, x_shape)
    try:
        lw.run(gm.graph, inputs)
    except LoweringError as exc:
        raise CompileError(f"eval forward: {exc}") from None
    nodes = {n.name: n for n in gm.graph.nodes}
    out = lw.view(lw.env[nodes[sig.user_outputs[0]]])
    logits = b.persistent(LOGITS, out.shape)
    b.copy(out, out=logits, hint="logits")
    return b.build(), dict(tables.values)


@dataclass
class _ProbeResult:
    seen: dict[str, list[Origin]] = field(default_factory=dict)
    unused: set[str] = field(default_factory=set)


def _probe(
    model: nn.Module, loss_fn: Callable[..., Any], x: torch.Tensor, y: torch.Tensor
) -> _ProbeResult:
    twin = copy.deepcopy(model)
    stack: list[str] = []
    hooks = _module_stack_hooks(twin, stack)
    mode = _Probe(stack)
    try:
        with mode:
            loss = loss_fn(twin(x), y)
    except Exception as exc:
        module = stack[-1] if stack else "<loss function>"
        raise CompileError(
            f"the example batch does not fit the model: {_first_line(exc)} in module {module} "
            f"at {_where(exc)}"
        ) from None
    finally:
        for h in hooks:
            h.remove()
    if mode.dropout is not None:
        raise CompileError(
            f"dropout with p > 0 is not supported (random numbers) in module "
            f"{mode.dropout.module} at {mode.dropout.source}"
        )
    if not isinstance(loss, torch.Tensor) or loss.dim() != 0:
        raise CompileError("the loss function must return a scalar tensor")
    if loss.requires_grad:
        loss.backward()
    unused = {n for n, p in twin.named_parameters() if p.requires_grad and p.grad is None}
    return _ProbeResult(mode.seen, unused)


def _origin(node: fx.Node, graph: fx.Graph, seen: dict[str, list[Origin]]) -> str:
    target = node.target
    name = getattr(getattr(target, "overloadpacket", None), "__name__", str(target))
    k = 0
    for n in graph.nodes:
        if n is node:
            break
        if n.target is target:
            k += 1
    for key in (name, name.removesuffix("_backward_data").removesuffix("_backward")):
        hits = seen.get(key) or seen.get(key.lstrip("_"))
        if hits:
            o = hits[min(k, len(hits) - 1)]
            suffix = " (backward)" if key != name else ""
            return f"in module {o.module}{suffix} at {o.source}"
    return "in the backward pass (no forward source line)"


def compile(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    example: tuple[torch.Tensor, torch.Tensor],
    *,
    clip_grad_norm_to: float | None = None,
    lr_schedule: object | None = None,
    schedule_steps: int | None = None,
    eval_rows: int | None = None,
    name: str = "job",
) -> CompiledJob:
    """Capture ``loss_fn(model(x), y)`` + its backward + ``optimizer.step()`` as one program.

    ``C_0`` is the model's current parameters and buffers plus zero optimizer state.
    ``clip_grad_norm_to``: clip gradients to this global 2-norm before the update.
    ``lr_schedule`` + ``schedule_steps``: a ``torch.optim.lr_scheduler`` bound to
    ``optimizer`` (stepped once per step, after the update, as usual); its per-step, per-group
    learning rates become the constant table ``optim.lr_schedule`` read at row ``optim.step``.
    ``eval_rows``: also compile the eval-mode forward over that many examples (the held-out
    split), which :func:`~replay.compile.job.train` uses to report held-out accuracy.
    """
    t0 = time.perf_counter()
    if not (isinstance(example, tuple | list) and len(example) == 2):
        raise CompileError("example must be a pair (x, y) of tensors: one batch")
    x, y = (torch.as_tensor(t) for t in example)
    for label, t in (("x", x), ("y", y)):
        if t.dtype not in (torch.float32, torch.int64, torch.int32):
            raise CompileError(f"example {label} has dtype {t.dtype}; use float32 or int64")
        if t.dim() > 4:
            raise CompileError(f"example {label} has rank {t.dim()} > 4")
    for n, p in model.named_parameters():
        if p.dtype != torch.float32:
            raise CompileError(f"parameter {n} has dtype {p.dtype}; programs are float32")
    if not model.training:
        raise CompileError("the model is in eval mode; call model.train() before compiling")
    probe = _probe(model, loss_fn, x, y)

    # -- capture the joint graph (unused parameters temporarily frozen, as torch.optim skips them)
    from torch._functorch.aot_autograd import aot_export_module
    from torch.nn.attention import SDPBackend, sdpa_kernel

    frozen_now = [p for n, p in model.named_parameters() if n in probe.unused]
    for p in frozen_now:
        p.requires_grad_(False)
    try:
        with sdpa_kernel(SDPBackend.MATH):
            gm, sig = aot_export_module(
                _Step(model, loss_fn), (x, y), trace_joint=True, output_loss_index=0
            )
    except Exception as exc:
        kind = type(exc).__name__
        if "DataDependent" in kind or "GuardOnDataDependent" in kind:
            raise CompileError(
                f"data-dependent control flow ({_first_line(exc)}) at {_where(exc)}: a step "
                "must take the same ops for every batch"
            ) from None
        raise CompileError(f"capture failed: {kind}: {_first_line(exc)} at {_where(exc)}") from None
    finally:
        for p in frozen_now:
            p.requires_grad_(True)
    t_capture = time.perf_counter() - t0

    # -- slots
    b = ProgramBuilder()
    tables = layers.Tables(b)
    lw = Lowerer(b, tables)
    params = dict(model.named_parameters(remove_duplicate=False))
    buffers = dict(model.named_buffers(remove_duplicate=False))
    slot_by_id: dict[int, str] = {}
    placeholders = {n.name: n for n in gm.graph.nodes if n.op == "placeholder"}
    inputs: dict[fx.Node, Any] = {}
    slot_of: dict[str, View] = {}
    initial: dict[str, np.ndarray] = {}
    dtypes: dict[str, str] = {}

    def declare(full: str, tensor: torch.Tensor) -> View:
        nm = full.removeprefix("m.")
        if id(tensor) in slot_by_id:  # a tied weight: one slot under its first name
            return slot_of[slot_by_id[id(tensor)]]
        if tensor.dim() > 4:
            raise CompileError(f"{nm} has rank {tensor.dim()} > 4")
        view = b.persistent(nm, tuple(tensor.shape))
        slot_of[nm] = view
        initial[nm] = np.array(tensor.detach().to(torch.float32).cpu().numpy(), dtype=np.float32)
        dtypes[nm] = str(tensor.dtype).removeprefix("torch.")
        slot_by_id[id(tensor)] = nm
        return view

    for ph, full in sig.inputs_to_parameters.items():
        inputs[placeholders[ph]] = declare(full, params[full.removeprefix("m.")])
    for ph, full in sig.inputs_to_buffers.items():
        inputs[placeholders[ph]] = declare(full, buffers[full.removeprefix("m.")])
    loss_slot = b.persistent(LOSS_SLOT, ())
    initial[LOSS_SLOT] = np.zeros((), np.float32)
    ux, uy = sig.user_inputs
    inputs[placeholders[ux]] = b.load_x(tuple(x.shape))
    inputs[placeholders[uy]] = b.load_batch(BATCH_Y, tuple(y.shape), "batch.y")

    # -- lower the graph
    try:
        lw.run(gm.graph, inputs)
    except LoweringError as exc:
        where = _origin(exc.node, gm.graph, probe.seen) if exc.node is not None else ""
        raise CompileError(f"{exc} {where}".strip()) from None

    nodes = {n.name: n for n in gm.graph.nodes}
    loss_val = lw.view(lw.env[nodes[sig.user_outputs[0]]])
    b.copy(loss_val, out=loss_slot, hint="loss")
    for out_name, full in sig.buffers_to_mutate.items():
        nm = full.removeprefix("m.")
        val = lw.env[nodes[out_name]]
        dst = slot_of[nm]
        if isinstance(val, View) and val == dst:
            continue  # written in place (batch norm running statistics)
        b.copy(lw.view(val).broadcast_to(dst.shape), out=dst, hint=f"{nm}.update")
    grads: dict[str, View] = {}
    for out_name, full in sig.backward_signature.gradients_to_parameters.items():  # type: ignore[union-attr]
        nm = slot_by_id[id(params[full.removeprefix("m.")])]
        g = lw.view(lw.env[nodes[out_name]])
        # tied weights: the gradients of each use are summed (as autograd accumulates them)
        grads[nm] = g if nm not in grads else b.add(grads[nm], g, hint=f"{nm}.tied")
    # torch.optim visits parameters in group order; clip in model parameter order
    ordered = {n: grads[n] for n in slot_of if n in grads}
    if clip_grad_norm_to is not None:
        ordered = clip_grad_norm(b, ordered, float(clip_grad_norm_to))
    try:
        table = None
        if lr_schedule is not None:
            if not schedule_steps or schedule_steps < 1:
                raise OptimizerError("lr_schedule needs schedule_steps (the run's step count)")
            table = schedule_table(optimizer, lr_schedule, schedule_steps)
        initial.update(lower_optimizer(b, optimizer, slot_by_id, slot_of, ordered, table))
    except OptimizerError as exc:
        raise CompileError(str(exc)) from None
    initial.update(tables.values)
    program = b.build()

    # -- the state dict layout: every state_dict key → its slot (tied weights share one)
    entries = []
    for key, t in model.state_dict(keep_vars=True).items():
        slot = slot_by_id.get(id(t))
        if slot is None or slot not in slot_of:
            raise CompileError(f"state_dict entry {key} is neither a parameter nor a buffer")
        entries.append(StateEntry(key=key, slot=slot, dtype=dtypes[slot], shape=tuple(t.shape)))
    frozen = sorted(
        slot_by_id[id(p)]
        for n, p in params.items()
        if id(p) in slot_by_id and (not p.requires_grad or n in probe.unused)
    )
    eval_program, eval_tables = None, {}
    if eval_rows:
        eval_program, eval_tables = compile_eval(model, (eval_rows, *x.shape[1:]), x.dtype)
    return CompiledJob(
        eval_program=eval_program,
        eval_tables=eval_tables,
        name=name,
        program=program,
        initial_state=initial,
        state_dict_layout=tuple(entries),
        x_shape=tuple(x.shape),
        y_shape=tuple(y.shape),
        frozen=tuple(frozen),
        optimizer=type(optimizer).__name__,
        compile_seconds=time.perf_counter() - t0,
        capture_seconds=t_capture,
        aten_nodes=sum(1 for n in gm.graph.nodes if n.op == "call_function"),
    )


__all__ = ["CompileError", "compile"]
