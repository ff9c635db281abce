"""A small graph builder that emits IR ops: views with affine index maps, one slot per value.

Every value the builder returns is a :class:`View` of a slot: a shape, element strides and an
offset into the slot's flat C-order data. Transposes, broadcasts and contiguous reshapes are
free (they only change the view); every op writes a fresh ephemeral slot, unless ``out=`` names
a persistent slot to (over)write. :meth:`ProgramBuilder.build` frees every ephemeral value right
after the last op that reads it (:func:`replay.compile.liveness.place_frees`) and validates
the program.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from protocol.ir import (
    BATCH_X,
    MAX_RANK,
    Opcode,
    OpDescriptor,
    Operand,
    Program,
    Slot,
    contiguous_strides,
    float32_bits,
    validate_program,
)
from replay.compile.liveness import place_frees
from replay.errors import SpecError


@dataclass(frozen=True)
class View:
    """Elements ``offset + Σ i_k·strides[k]`` of slot ``slot``, for ``i`` in ``shape``."""

    slot: int
    shape: tuple[int, ...]
    strides: tuple[int, ...]
    offset: int = 0

    @property
    def rank(self) -> int:
        return len(self.shape)

    @property
    def T(self) -> View:
        """The last two dimensions swapped."""
        if self.rank < 2:
            raise SpecError(f"cannot transpose a rank-{self.rank} view")
        shape = (*self.shape[:-2], self.shape[-1], self.shape[-2])
        strides = (*self.strides[:-2], self.strides[-1], self.strides[-2])
        return View(self.slot, shape, strides, self.offset)

    def broadcast_to(self, shape: Sequence[int]) -> View:
        """numpy broadcasting: new leading dims and size-1 dims get stride 0."""
        shape = tuple(shape)
        if len(shape) < self.rank:
            raise SpecError(f"cannot broadcast shape {self.shape} to {shape}")
        pad = len(shape) - self.rank
        strides = [0] * pad
        for d_self, s, d in zip(self.shape, self.strides, shape[pad:], strict=True):
            if d_self == d:
                strides.append(s if d != 1 else 0)
            elif d_self == 1:
                strides.append(0)
            else:
                raise SpecError(f"cannot broadcast shape {self.shape} to {shape}")
        return View(self.slot, shape, tuple(strides), self.offset)

    def reshape(self, shape: Sequence[int]) -> View:
        """A new shape over the same elements; only for contiguous views."""
        shape = tuple(shape)
        if _numel(shape) != _numel(self.shape):
            raise SpecError(f"cannot reshape {self.shape} to {shape}")
        if self.strides != contiguous_strides(self.shape):
            raise SpecError("reshape needs a contiguous view; COPY it first")
        return View(self.slot, shape, contiguous_strides(shape), self.offset)

    def unsqueeze(self, axis: int) -> View:
        shape = list(self.shape)
        strides = list(self.strides)
        shape.insert(axis, 1)
        strides.insert(axis, 0)
        return View(self.slot, tuple(shape), tuple(strides), self.offset)


def _numel(shape: Sequence[int]) -> int:
    n = 1
    for d in shape:
        n *= d
    return n


def broadcast_shapes(*shapes: tuple[int, ...]) -> tuple[int, ...]:
    rank = max(len(s) for s in shapes)
    out = []
    for k in range(rank):
        dims = {s[k - rank + len(s)] for s in shapes if k - rank + len(s) >= 0} - {1}
        if len(dims) > 1:
            raise SpecError(f"shapes {list(shapes)} do not broadcast")
        out.append(dims.pop() if dims else 1)
    return tuple(out)


class ProgramBuilder:
    """Emits ops; values are :class:`View` objects. Call :meth:`build` once at the end."""

    def __init__(self) -> None:
        self.slots: list[Slot] = []
        self.ops: list[OpDescriptor] = []
        self._consts: dict[int, View] = {}
        self._names: set[str] = set()
        self._counter = 0
        #: after :meth:`build`: the program index of each op the builder emitted (FREEs sit
        #: between them), so marks taken with :meth:`segment` map onto the program
        self.positions: list[int] = []
        self._segments = 0

    # ------------------------------------------------------------------ segments
    def segment(self) -> int:
        """Start a new segment of the program here (a micro-batch's forward + backward, or
        the tail after them): later :meth:`const` calls FILL their own scalars instead of
        reading an earlier segment's, so that a segment reads nothing ephemeral from another
        but the values it is given. Returns the mark (the number of ops emitted so far);
        ``positions[mark]`` is its program index after :meth:`build` (``len(ops)`` at the end).
        """
        self._consts = {}
        self._segments += 1
        return len(self.ops)

    def retarget(self, start: int, slot: int, to: View | None, hint: str) -> View | None:
        """Redirect an in-place write: the one op from index ``start`` on that writes ``slot``
        writes ``to`` (a fresh ephemeral slot of the same shape when None) instead, and the
        ops after it read the new slot where they read ``slot``. Returns the new value's view,
        or None when no op from ``start`` on writes ``slot``."""
        shape = self.slots[slot].shape
        new: int | None = None
        for j in range(start, len(self.ops)):
            op = self.ops[j]
            if new is not None:
                if op.out == slot:
                    raise SpecError(
                        f"slot {self.slots[slot].name!r} is written twice in one segment"
                    )
                if any(o.slot == slot for o in op.operands):
                    self.ops[j] = op.model_copy(
                        update={
                            "operands": tuple(
                                o.model_copy(update={"slot": new}) if o.slot == slot else o
                                for o in op.operands
                            )
                        }
                    )
            elif op.out == slot:
                new = self._ephemeral(hint, shape) if to is None else self._target(to, hint, shape)
                self.ops[j] = op.model_copy(update={"out": new})
        return None if new is None else View(new, shape, contiguous_strides(shape))

    # ------------------------------------------------------------------ slots
    def _add_slot(self, name: str, shape: Sequence[int], kind: str) -> int:
        if name in self._names:
            raise SpecError(f"slot name {name!r} is already used")
        if len(tuple(shape)) > MAX_RANK:
            raise SpecError(f"slot {name!r} has rank {len(tuple(shape))} > {MAX_RANK}")
        self._names.add(name)
        self.slots.append(Slot(name=name, shape=tuple(shape), kind=kind))  # type: ignore[arg-type]
        return len(self.slots) - 1

    def persistent(self, name: str, shape: Sequence[int]) -> View:
        """Declare a persistent slot (part of every checkpoint)."""
        shape = tuple(shape)
        return View(self._add_slot(name, shape, "persistent"), shape, contiguous_strides(shape))

    def _ephemeral(self, hint: str, shape: tuple[int, ...]) -> int:
        self._counter += 1
        return self._add_slot(f"{hint}#{self._counter}", shape, "ephemeral")

    def _target(self, out: View | None, hint: str, shape: tuple[int, ...]) -> int:
        if out is None:
            return self._ephemeral(hint, shape)
        slot = self.slots[out.slot]
        if (
            out.offset != 0
            or out.shape != slot.shape
            or out.strides != contiguous_strides(slot.shape)
        ):
            raise SpecError(f"out= must be the whole slot {slot.name!r}")
        if shape != slot.shape:
            raise SpecError(f"result shape {shape} does not match slot {slot.name!r} {slot.shape}")
        return out.slot

    def _emit(
        self,
        opcode: Opcode,
        shape: tuple[int, ...],
        operands: Sequence[Operand],
        *,
        out: View | None,
        hint: str,
        reduce_len: int = 0,
        imm: int = 0,
    ) -> View:
        slot = self._target(out, hint, shape)
        self.ops.append(
            OpDescriptor(
                opcode=opcode,
                out=slot,
                shape=shape,
                operands=tuple(operands),
                reduce_len=reduce_len,
                imm=imm,
            )
        )
        return View(slot, shape, contiguous_strides(shape))

    # ------------------------------------------------------------------ elementwise
    def elementwise(
        self, opcode: Opcode, *inputs: View, out: View | None = None, hint: str | None = None
    ) -> View:
        shape = broadcast_shapes(*(v.shape for v in inputs))
        operands = []
        for v in inputs:
            b = v.broadcast_to(shape)
            operands.append(Operand(slot=b.slot, offset=b.offset, strides=b.strides))
        return self._emit(opcode, shape, operands, out=out, hint=hint or opcode.name.lower())

    def add(self, a: View, b: View, out: View | None = None, hint: str | None = None) -> View:
        return self.elementwise(Opcode.ADD, a, b, out=out, hint=hint)

    def sub(self, a: View, b: View, out: View | None = None, hint: str | None = None) -> View:
        return self.elementwise(Opcode.SUB, a, b, out=out, hint=hint)

    def mul(self, a: View, b: View, out: View | None = None, hint: str | None = None) -> View:
        return self.elementwise(Opcode.MUL, a, b, out=out, hint=hint)

    def div(self, a: View, b: View, out: View | None = None, hint: str | None = None) -> View:
        return self.elementwise(Opcode.DIV, a, b, out=out, hint=hint)

    def maximum(self, a: View, b: View, hint: str | None = None) -> View:
        return self.elementwise(Opcode.MAX, a, b, hint=hint)

    def minimum(self, a: View, b: View, hint: str | None = None) -> View:
        return self.elementwise(Opcode.MIN, a, b, hint=hint)

    def gt(self, a: View, b: View, hint: str | None = None) -> View:
        return self.elementwise(Opcode.GT, a, b, hint=hint)

    def ge(self, a: View, b: View, hint: str | None = None) -> View:
        return self.elementwise(Opcode.GE, a, b, hint=hint)

    def eq(self, a: View, b: View, hint: str | None = None) -> View:
        return self.elementwise(Opcode.EQ, a, b, hint=hint)

    def ldexp(self, x: View, n: View, hint: str | None = None) -> View:
        return self.elementwise(Opcode.LDEXP, x, n, hint=hint)

    def neg(self, x: View, hint: str | None = None) -> View:
        return self.elementwise(Opcode.NEG, x, hint=hint)

    def abs(self, x: View, hint: str | None = None) -> View:
        return self.elementwise(Opcode.ABS, x, hint=hint)

    def sqrt(self, x: View, hint: str | None = None) -> View:
        return self.elementwise(Opcode.SQRT, x, hint=hint)

    def round(self, x: View, hint: str | None = None) -> View:
        return self.elementwise(Opcode.ROUND, x, hint=hint)

    def frexp_exp(self, x: View, hint: str | None = None) -> View:
        return self.elementwise(Opcode.FREXP_EXP, x, hint=hint)

    def frexp_mant(self, x: View, hint: str | None = None) -> View:
        return self.elementwise(Opcode.FREXP_MANT, x, hint=hint)

    def copy(self, x: View, out: View | None = None, hint: str | None = None) -> View:
        return self.elementwise(Opcode.COPY, x, out=out, hint=hint)

    def select(self, c: View, a: View, b: View, hint: str | None = None) -> View:
        return self.elementwise(Opcode.SELECT, c, a, b, hint=hint)

    # ------------------------------------------------------------------ constants, data
    def const(self, value: float) -> View:
        """A scalar (rank-0) slot holding float32(``value``), filled once per step."""
        bits = float32_bits(value)
        if bits not in self._consts:
            name = f"const:0x{bits:08x}" + (f"@{self._segments}" if self._segments else "")
            slot = self._add_slot(name, (), "ephemeral")
            self.ops.append(OpDescriptor(opcode=Opcode.FILL, out=slot, shape=(), imm=bits))
            self._consts[bits] = View(slot, (), ())
        return self._consts[bits]

    def fill(self, value: float, shape: Sequence[int], hint: str = "fill") -> View:
        shape = tuple(shape)
        return self._emit(Opcode.FILL, shape, (), out=None, hint=hint, imm=float32_bits(value))

    def load_batch(self, which: int, shape: Sequence[int], name: str) -> View:
        shape = tuple(shape)
        slot = self._add_slot(name, shape, "ephemeral")
        self.ops.append(OpDescriptor(opcode=Opcode.LOAD_BATCH, out=slot, shape=shape, imm=which))
        return View(slot, shape, contiguous_strides(shape))

    def load_x(self, shape: Sequence[int]) -> View:
        return self.load_batch(BATCH_X, shape, "batch.x")

    # ------------------------------------------------------------------ reductions
    def _reduce(self, opcode: Opcode, x: View, axis: int, out: View | None, hint: str) -> View:
        axis = axis % x.rank
        shape = x.shape[:axis] + x.shape[axis + 1 :]
        strides = x.strides[:axis] + x.strides[axis + 1 :]
        operand = Operand(
            slot=x.slot, offset=x.offset, strides=strides, reduce_stride=x.strides[axis]
        )
        return self._emit(opcode, shape, [operand], out=out, hint=hint, reduce_len=x.shape[axis])

    def reduce_sum(self, x: View, axis: int, out: View | None = None, hint: str = "sum") -> View:
        """Sequential sum over ``axis`` (acc_0 = +0.0)."""
        return self._reduce(Opcode.REDUCE_SUM, x, axis, out, hint)

    def reduce_max(self, x: View, axis: int, hint: str = "rmax") -> View:
        """Sequential IEEE maximum over ``axis`` (acc_0 = -inf)."""
        return self._reduce(Opcode.REDUCE_MAX, x, axis, None, hint)

    def matmul(self, a: View, b: View, out: View | None = None, hint: str = "matmul") -> View:
        """``a[M,K] @ b[K,N]``: acc_{r+1} = acc_r + round(a[i,r]·b[r,j]), r = 0..K-1."""
        if a.rank != 2 or b.rank != 2 or a.shape[1] != b.shape[0]:
            raise SpecError(f"matmul shapes {a.shape} @ {b.shape} do not match")
        (m, k), n = a.shape, b.shape[1]
        oa = Operand(
            slot=a.slot, offset=a.offset, strides=(a.strides[0], 0), reduce_stride=a.strides[1]
        )
        ob = Operand(
            slot=b.slot, offset=b.offset, strides=(0, b.strides[1]), reduce_stride=b.strides[0]
        )
        return self._emit(Opcode.MATMUL, (m, n), [oa, ob], out=out, hint=hint, reduce_len=k)

    def batched_matmul(self, a: View, b: View, out: View | None = None, hint: str = "bmm") -> View:
        """``a[..., M, K] @ b[..., K, N]`` with numpy-broadcast batch dims (output rank ≤ 4).

        One MATMUL: acc_0 = +0, acc_{r+1} = fma(a[.., i, r], b[.., r, j], acc_r), r = 0..K-1;
        the batch dims are output dims with the operands' own strides (0 where broadcast).
        """
        if a.rank < 2 or b.rank < 2 or a.shape[-1] != b.shape[-2]:
            raise SpecError(f"batched matmul shapes {a.shape} @ {b.shape} do not match")
        batch = broadcast_shapes(a.shape[:-2], b.shape[:-2])
        m, k, n = a.shape[-2], a.shape[-1], b.shape[-1]
        shape = (*batch, m, n)
        if len(shape) > MAX_RANK:
            raise SpecError(f"batched matmul output rank {len(shape)} > {MAX_RANK}")
        ab = View(a.slot, a.shape[:-2], a.strides[:-2], a.offset).broadcast_to(batch)
        bb = View(b.slot, b.shape[:-2], b.strides[:-2], b.offset).broadcast_to(batch)
        oa = Operand(
            slot=a.slot,
            offset=a.offset,
            strides=(*ab.strides, a.strides[-2], 0),
            reduce_stride=a.strides[-1],
        )
        ob = Operand(
            slot=b.slot,
            offset=b.offset,
            strides=(*bb.strides, 0, b.strides[-1]),
            reduce_stride=b.strides[-2],
        )
        return self._emit(Opcode.MATMUL, shape, [oa, ob], out=out, hint=hint, reduce_len=k)

    def fma(
        self, a: View, b: View, c: View, out: View | None = None, hint: str | None = None
    ) -> View:
        """``a·b + c`` rounded once (FMA), numpy-broadcast."""
        return self.elementwise(Opcode.FMA, a, b, c, out=out, hint=hint)

    def gather(
        self,
        index: View,
        table: View,
        rows: int,
        row_stride: int,
        out: View | None = None,
        hint: str = "gather",
    ) -> View:
        """GATHER: element ``f`` is ``table[f]`` moved by ``row·row_stride`` elements, where
        ``row = index[f]`` if that is an integral float in ``[0, rows)``, else ``+0.0``.

        ``index`` and ``table`` are views broadcast to one output shape; ``table`` gives each
        output element's position in row 0 of its slot.
        """
        shape = broadcast_shapes(index.shape, table.shape)
        i = index.broadcast_to(shape)
        t = table.broadcast_to(shape)
        oi = Operand(slot=i.slot, offset=i.offset, strides=i.strides)
        ot = Operand(slot=t.slot, offset=t.offset, strides=t.strides, reduce_stride=row_stride)
        return self._emit(Opcode.GATHER, shape, [oi, ot], out=out, hint=hint, reduce_len=rows)

    def index_add(
        self,
        index: View,
        values: View,
        shape: Sequence[int],
        out: View | None = None,
        hint: str = "index_add",
    ) -> View:
        """INDEX_ADD over the last axis of ``index``/``values`` (both broadcast to
        ``(*shape, R)``): output element ``f`` with first index ``i_0`` is the sequential sum
        (from +0.0, in r order) of ``values[f, r]`` over the ``r`` with ``index[f, r] == i_0``.
        """
        shape = tuple(shape)
        if not shape:
            raise SpecError("INDEX_ADD needs an output of rank >= 1 (its first index is the row)")
        r = max(index.shape[-1] if index.rank else 1, values.shape[-1] if values.rank else 1)
        full = (*shape, r)
        i = index.broadcast_to(full)
        v = values.broadcast_to(full)
        oi = Operand(
            slot=i.slot, offset=i.offset, strides=i.strides[:-1], reduce_stride=i.strides[-1]
        )
        ov = Operand(
            slot=v.slot, offset=v.offset, strides=v.strides[:-1], reduce_stride=v.strides[-1]
        )
        return self._emit(Opcode.INDEX_ADD, shape, [oi, ov], out=out, hint=hint, reduce_len=r)

    # ------------------------------------------------------------------ finish
    def build(self) -> Program:
        """Free each ephemeral value right after its last read (``replay.compile.liveness``),
        validate, return the program."""
        ops = place_frees(self.slots, self.ops)
        self.positions = [j for j, op in enumerate(ops) if op.opcode != Opcode.FREE]
        self.positions.append(len(ops))
        program = Program(slots=tuple(self.slots), ops=tuple(ops))
        validate_program(program)
        return program
