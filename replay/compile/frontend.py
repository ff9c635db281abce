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
import itertools
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
from replay.compile.job import LOSS_SLOT, CompiledJob, Segment, StateEntry, segment_outputs
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
    def __init__(
        self, model: nn.Module, loss_fn: Callable[..., torch.Tensor], micro_batches: int = 1
    ) -> None:
        super().__init__()
        self.m = model
        self.loss_fn = loss_fn
        self.micro_batches = micro_batches

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor]:
        loss = self.loss_fn(self.m(x), y)
        if self.micro_batches > 1:  # gradient accumulation: each micro-batch's loss / N
            loss = loss / self.micro_batches
        return (loss,)


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
    micro_batches: int = 1,
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
    ``micro_batches`` N: the example is the whole step's batch; the step is gradient
    accumulation over N equal micro-batches of its rows (forward + backward of each, loss /
    N, gradients summed in micro-batch order), then clipping and the update once
    (docs/protocol.md §3.14). N = 1 is the plain step.
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
    n_micro = _check_micro_batches(micro_batches, x, y)
    mx, my = (x, y) if n_micro == 1 else (x[: x.shape[0] // n_micro], y[: y.shape[0] // n_micro])
    probe = _probe(model, loss_fn, mx, my)

    # -- capture the joint graph (unused parameters temporarily frozen, as torch.optim skips them)
    from torch._functorch.aot_autograd import aot_export_module
    from torch.nn.attention import SDPBackend, sdpa_kernel

    frozen_now = [p for n, p in model.named_parameters() if n in probe.unused]
    for p in frozen_now:
        p.requires_grad_(False)
    try:
        with sdpa_kernel(SDPBackend.MATH):
            gm, sig = aot_export_module(
                _Step(model, loss_fn, n_micro), (mx, my), trace_joint=True, output_loss_index=0
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

    nodes = {n.name: n for n in gm.graph.nodes}
    marks: list[int] = []
    if n_micro == 1:
        _lower(lw, gm, inputs, probe)
        loss_val = lw.view(lw.env[nodes[sig.user_outputs[0]]])
        b.copy(loss_val, out=loss_slot, hint="loss")
        for out_name, full in sig.buffers_to_mutate.items():
            nm = full.removeprefix("m.")
            val = lw.env[nodes[out_name]]
            dst = slot_of[nm]
            if isinstance(val, View) and val == dst:
                continue  # written in place (batch norm running statistics)
            b.copy(lw.view(val).broadcast_to(dst.shape), out=dst, hint=f"{nm}.update")
        grads = _parameter_grads(b, lw, sig, nodes, slot_by_id, params)
    else:
        grads, marks = _lower_micro_batches(
            b, tables, gm, sig, probe, inputs, placeholders, slot_of, slot_by_id, params,
            loss_slot, n_micro,
        )  # fmt: skip
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
    segments: tuple[Segment, ...] = ()
    if marks:
        at = b.positions
        segments = tuple(
            Segment(start=at[a], stop=at[z], outputs=segment_outputs(program, at[a], at[z]))
            for a, z in itertools.pairwise(marks)
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
        micro_batches=n_micro,
        segments=segments,
    )


def _check_micro_batches(micro_batches: int, x: torch.Tensor, y: torch.Tensor) -> int:
    """N, when the example batch splits into N equal micro-batches of rows (else one line)."""
    if isinstance(micro_batches, bool) or not isinstance(micro_batches, int) or micro_batches < 1:
        raise CompileError(f"micro_batches must be a positive integer, not {micro_batches!r}")
    if micro_batches == 1:
        return 1
    rows = x.shape[0] if x.dim() else 0
    if x.dim() == 0 or y.dim() == 0 or y.shape[0] != rows:
        raise CompileError(
            f"micro_batches={micro_batches} splits the batch by rows, but x {list(x.shape)} "
            f"and y {list(y.shape)} do not share a leading batch dimension"
        )
    if rows % micro_batches:
        raise CompileError(
            f"the example batch has {rows} rows, which micro_batches={micro_batches} does not "
            "divide: choose a micro-batch count that divides the batch size"
        )
    return micro_batches


def _rows(v: View, m: int, n: int) -> View:
    """Micro-batch ``m`` of ``n``: rows ``m·B/n .. (m+1)·B/n`` of a batch view."""
    per = v.shape[0] // n
    return View(v.slot, (per, *v.shape[1:]), v.strides, v.offset + m * per * v.strides[0])


def _lower(
    lw: Lowerer, gm: fx.GraphModule, inputs: dict[fx.Node, Any], probe: _ProbeResult
) -> None:
    """Lower the joint graph from ``inputs``; a failure is one CompileError line naming
    the user's source line."""
    try:
        lw.run(gm.graph, inputs)
    except LoweringError as exc:
        where = _origin(exc.node, gm.graph, probe.seen) if exc.node is not None else ""
        raise CompileError(f"{exc} {where}".strip()) from None


def _parameter_grads(
    b: ProgramBuilder,
    lw: Lowerer,
    sig: Any,
    nodes: dict[str, fx.Node],
    slot_by_id: dict[int, str],
    params: dict[str, nn.Parameter],
) -> dict[str, View]:
    """Each parameter slot's gradient from a lowered joint graph; tied weights: the
    gradients of each use are summed (as autograd accumulates them)."""
    grads: dict[str, View] = {}
    for out_name, full in sig.backward_signature.gradients_to_parameters.items():
        nm = slot_by_id[id(params[full.removeprefix("m.")])]
        g = lw.view(lw.env[nodes[out_name]])
        grads[nm] = g if nm not in grads else b.add(grads[nm], g, hint=f"{nm}.tied")
    return grads


def _lower_micro_batches(
    b: ProgramBuilder,
    tables: layers.Tables,
    gm: fx.GraphModule,
    sig: Any,
    probe: _ProbeResult,
    inputs: dict[fx.Node, Any],
    placeholders: dict[str, fx.Node],
    slot_of: dict[str, View],
    slot_by_id: dict[int, str],
    params: dict[str, nn.Parameter],
    loss_slot: View,
    n: int,
) -> tuple[dict[str, View], list[int]]:
    """Gradient accumulation over ``n`` micro-batches: segment ``m`` lowers the joint graph
    of rows ``m·B/n ..`` from the same parameters and the buffers segment ``m - 1`` wrote
    (the last segment writes the persistent buffers); then the tail's first ops sum the
    losses and each parameter's gradients in micro-batch order. Returns (the summed
    gradients, the segment marks: one per micro-batch and the tail's)."""
    nodes = {nd.name: nd for nd in gm.graph.nodes}
    ux, uy = sig.user_inputs
    x_all, y_all = inputs[placeholders[ux]], inputs[placeholders[uy]]
    buffer_ph = {
        placeholders[ph]: full.removeprefix("m.") for ph, full in sig.inputs_to_buffers.items()
    }
    current: dict[str, View] = {nm: slot_of[nm] for nm in buffer_ph.values()}
    mutated = {out: full.removeprefix("m.") for out, full in sig.buffers_to_mutate.items()}
    losses: list[View] = []
    per_micro: list[dict[str, View]] = []
    marks: list[int] = []
    for m in range(n):
        marks.append(b.segment())
        last = m == n - 1
        lw = Lowerer(b, tables)
        given = dict(inputs)
        given[placeholders[ux]] = _rows(x_all, m, n)
        given[placeholders[uy]] = _rows(y_all, m, n)
        for ph, nm in buffer_ph.items():
            given[ph] = current[nm]
        _lower(lw, gm, given, probe)
        losses.append(lw.view(lw.env[nodes[sig.user_outputs[0]]]))
        for out_name, nm in mutated.items():
            val, was = lw.env[nodes[out_name]], current[nm]
            dst = slot_of[nm]
            if isinstance(val, View) and val == was:  # written in place (batch norm)
                new = b.retarget(marks[-1], was.slot, dst if last else None, f"{nm}.mb{m}")
                current[nm] = was if new is None else new
            elif last:
                b.copy(lw.view(val).broadcast_to(dst.shape), out=dst, hint=f"{nm}.update")
            else:
                current[nm] = lw.view(val).broadcast_to(dst.shape)
        per_micro.append(_parameter_grads(b, lw, sig, nodes, slot_by_id, params))
    marks.append(b.segment())
    acc = losses[0]
    for k, loss in enumerate(losses[1:], start=2):
        acc = b.add(acc, loss, out=loss_slot if k == n else None, hint="loss.sum")
    summed: dict[str, View] = {}
    for nm in per_micro[0]:
        g = per_micro[0][nm]
        for grads in per_micro[1:]:
            g = b.add(g, grads[nm], hint=f"{nm}.grad_sum")
        summed[nm] = g
    return summed, marks


__all__ = ["CompileError", "compile"]
