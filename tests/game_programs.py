"""Training programs beyond the MLP, for tests that replay a step op by op (dispute games).

:func:`mixed_train_program` is ONE SGD training step of a small CNN on the digits dataset
(replay/data/dataset.py, ``x`` ``[B, 64]`` = pixels/16, ``y`` the class), using every lowered layer
kind a dispute test wants to target (docs/protocol.md §3.13):

1. ``tokens = ROUND(x·16)`` ∈ 0..16 (exact), embedding GATHER into ``emb.weight`` ``[17, 4]``
   → ``[B, 64, 4]``, read as an NCHW ``[B, 4, 8, 8]`` view (channels last, no copy);
2. ``conv`` 3x3, padding 1, stride 1, 4 → 8 channels: im2col GATHER (padding = index -1),
   MATMUL (FMA chain), bias ADD; ReLU (MAX with +0);
3. 2x2 max pool: window GATHER + REDUCE_MAX → ``[B, 8, 4, 4]`` = ``[B, 128]``;
4. layer norm over the 128 features (REDUCE_SUMs, affine FMA);
5. linear head 128 → 10 (MATMUL + ADD) and softmax cross-entropy (replay/compile/compiler.py's
   ``_softmax_xent``, loss into the persistent slot ``loss``);
6. backward through all of it (embedding gradient by INDEX_ADD) and plain SGD
   ``w ← FMA(g, -lr, w)`` for every parameter.

Op indices move when ``ProgramBuilder.build`` changes where FREEs go: look ops up by their
output slot's name with :func:`ops_named` (every slot is named ``<hint>#<n>``) rather than
hard-coding indices.
"""

from __future__ import annotations

import numpy as np

from protocol.ir import BATCH_Y, Opcode, Program, validate_program
from replay.compile import layers
from replay.compile.builder import ProgramBuilder, View
from replay.compile.compiler import CLASS_IDS, LOSS, _softmax_xent

VOCAB = 17  # pixel intensities 0..16
EMBED = 4
CONV_OUT = 8
CLASSES = 10
LR = 0.1
INIT_SEED = 0

PARAMS = ("emb.weight", "conv.weight", "conv.bias", "ln.weight", "ln.bias", "fc.weight", "fc.bias")


def _build_mixed(batch: int) -> tuple[ProgramBuilder, layers.Tables]:
    b = ProgramBuilder()
    tables = layers.Tables(b)
    p: dict[str, View] = {
        "emb.weight": b.persistent("emb.weight", (VOCAB, EMBED)),
        "conv.weight": b.persistent("conv.weight", (CONV_OUT, EMBED, 3, 3)),
        "conv.bias": b.persistent("conv.bias", (CONV_OUT,)),
        "ln.weight": b.persistent("ln.weight", (CONV_OUT * 16,)),
        "ln.bias": b.persistent("ln.bias", (CONV_OUT * 16,)),
        "fc.weight": b.persistent("fc.weight", (CONV_OUT * 16, CLASSES)),
        "fc.bias": b.persistent("fc.bias", (CLASSES,)),
    }
    class_ids = b.persistent(CLASS_IDS, (CLASSES,))
    loss = b.persistent(LOSS, ())
    x = b.load_x((batch, 64))
    y = b.load_batch(BATCH_Y, (batch,), "batch.y")
    # forward
    tokens = b.round(b.mul(x, b.const(16.0), hint="tok"), hint="tok")
    h0, emb_ctx = layers.embedding(b, tokens, p["emb.weight"])  # [B, 64, E]
    img = layers.permute(h0.reshape((batch, 8, 8, EMBED)), (0, 3, 1, 2))  # NCHW view
    z, conv_ctx = layers.conv2d(b, tables, img, p["conv.weight"], p["conv.bias"], 1, 1)
    zero = b.const(0.0)
    a = b.maximum(z, zero, hint="relu")
    pooled, pool_ctx = layers.max_pool2d(b, tables, a, 2, 2)  # [B, 8, 4, 4]
    flat = pooled.reshape((batch, CONV_OUT * 16))
    h, ln_ctx = layers.layer_norm(b, flat, p["ln.weight"], p["ln.bias"], eps=1e-5)
    logits = b.add(b.matmul(h, p["fc.weight"], hint="fc.mm"), p["fc.bias"], hint="fc.z")
    dlogits = _softmax_xent(b, logits, y, class_ids, loss, batch)
    # backward
    g: dict[str, View] = {}
    g["fc.weight"] = b.matmul(h.T, dlogits, hint="fc.dW")
    g["fc.bias"] = b.reduce_sum(dlogits, axis=0, hint="fc.db")
    dh = b.matmul(dlogits, p["fc.weight"].T, hint="fc.dx")
    dflat, dlnw, dlnb = layers.layer_norm_backward(b, ln_ctx, dh)
    assert dlnw is not None and dlnb is not None
    g["ln.weight"], g["ln.bias"] = dlnw, dlnb
    dpool = dflat.reshape((batch, CONV_OUT, 4, 4))
    da = layers.max_pool2d_backward(b, tables, pool_ctx, dpool)
    dz = b.mul(da, b.gt(z, zero, hint="relu'"), hint="drelu")
    dimg, dconvw, dconvb = layers.conv2d_backward(b, tables, conv_ctx, dz)
    assert dconvb is not None
    g["conv.weight"], g["conv.bias"] = dconvw, dconvb
    dh0 = layers.permute(dimg, (0, 2, 3, 1)).reshape((batch, 64, EMBED))
    g["emb.weight"] = layers.embedding_backward(b, emb_ctx, dh0)
    # plain SGD, each parameter written once
    neg_lr = b.const(-LR)
    for name in PARAMS:
        b.fma(g[name], neg_lr, p[name], out=p[name], hint=f"sgd.{name}")
    return b, tables


def mixed_initial_params(seed: int = INIT_SEED) -> dict[str, np.ndarray]:
    """torch-style init: embedding N(0, 1), conv / linear U(±1/√fan_in), layer norm (1, 0)."""
    rng = np.random.default_rng(seed)
    conv_bound = 1.0 / np.sqrt(EMBED * 9)
    fc_bound = 1.0 / np.sqrt(CONV_OUT * 16)
    f32 = np.float32
    return {
        "emb.weight": rng.standard_normal((VOCAB, EMBED)).astype(f32),
        "conv.weight": rng.uniform(-conv_bound, conv_bound, (CONV_OUT, EMBED, 3, 3)).astype(f32),
        "conv.bias": rng.uniform(-conv_bound, conv_bound, (CONV_OUT,)).astype(f32),
        "ln.weight": np.ones(CONV_OUT * 16, f32),
        "ln.bias": np.zeros(CONV_OUT * 16, f32),
        "fc.weight": rng.uniform(-fc_bound, fc_bound, (CONV_OUT * 16, CLASSES)).astype(f32),
        "fc.bias": rng.uniform(-fc_bound, fc_bound, (CLASSES,)).astype(f32),
    }


def mixed_train_program(batch: int = 16) -> tuple[Program, dict[str, np.ndarray]]:
    """(the one-step training program, its C_0): parameters, ``class_ids``, ``loss`` = 0 and
    the constant index tables (``table:*``, never written)."""
    b, tables = _build_mixed(batch)
    program = b.build()
    validate_program(program)
    state: dict[str, np.ndarray] = dict(mixed_initial_params())
    state[CLASS_IDS] = np.arange(CLASSES, dtype=np.float32)
    state[LOSS] = np.zeros((), np.float32)
    state.update(tables.values)
    return program, state


def ops_named(program: Program, hint: str, opcode: Opcode | None = None) -> list[int]:
    """Indices of the ops whose output slot was created with ``hint`` (``<hint>#<n>``), or is
    the persistent slot named ``hint``; optionally only those with ``opcode``."""
    out = []
    for j, op in enumerate(program.ops):
        name = program.slots[op.out].name
        if (name == hint or name.split("#")[0] == hint) and op.opcode != Opcode.FREE:
            if opcode is None or op.opcode == opcode:
                out.append(j)
    return out


def mixed_targets(program: Program) -> dict[str, int]:
    """One op of each kind a dispute test targets, by role."""
    return {
        "embedding_gather": ops_named(program, "emb", Opcode.GATHER)[0],
        "conv_im2col_gather": ops_named(program, "conv.im2col", Opcode.GATHER)[0],
        "conv_matmul": ops_named(program, "conv.mm", Opcode.MATMUL)[0],
        "conv_dx_gather": ops_named(program, "conv.gcols", Opcode.GATHER)[0],
        "conv_dW_matmul": ops_named(program, "conv.dW", Opcode.MATMUL)[0],
        "pool_reduce_max": ops_named(program, "pool.max", Opcode.REDUCE_MAX)[0],
        "pool_window_gather": ops_named(program, "pool.win", Opcode.GATHER)[0],
        "layernorm_sum": ops_named(program, "ln.sum", Opcode.REDUCE_SUM)[0],
        "layernorm_sumsq": ops_named(program, "ln.ssq", Opcode.REDUCE_SUM)[0],
        "embedding_index_add": ops_named(program, "emb.grad", Opcode.INDEX_ADD)[0],
        "fc_matmul": ops_named(program, "fc.mm", Opcode.MATMUL)[0],
    }
