"""Liveness: free every ephemeral slot right after the last op that reads its value.

A program is data: where its FREE ops sit is the compiler's choice, not a protocol rule (the
validator only asks that no op reads an empty slot, that an ephemeral slot is empty when it
is written and that every ephemeral slot is empty after the last op). :func:`place_frees`
drops a program's FREE ops and emits them again at the earliest valid position:

- a value of an ephemeral slot (one write) is freed right after the last op that reads it
  before the slot is written again or the program ends; a value nobody reads is freed right
  after its write;
- when several values die at the same op, their FREEs follow that op in slot order.

The number of ops is unchanged when the input frees every value once (as
``ProgramBuilder`` does); the trace is still ``state_root(S_0) … state_root(S_L)``, FREEs
included. :func:`live_bytes` gives the bytes held at every op boundary, which the memory
bench and tests compare against.
"""

from __future__ import annotations

from collections.abc import Sequence

from protocol.ir import Opcode, OpDescriptor, Slot

BYTES_PER_ELEMENT = 4  # float32


def place_frees(slots: Sequence[Slot], ops: Sequence[OpDescriptor]) -> list[OpDescriptor]:
    """``ops`` without their FREEs, each ephemeral value freed right after its last read."""
    body = [op for op in ops if op.opcode != Opcode.FREE]
    # die_after[j]: ephemeral slots whose current value is last needed by op j
    die_after: list[list[int]] = [[] for _ in body]
    last_use: dict[int, int] = {}  # ephemeral slot holding a value -> last op reading/writing it
    for j, op in enumerate(body):
        for o in op.operands:
            if o.slot in last_use:
                last_use[o.slot] = j
        if not slots[op.out].persistent:
            if op.out in last_use:  # written again: the previous value died at its last use
                die_after[last_use[op.out]].append(op.out)
            last_use[op.out] = j
    for slot, j in last_use.items():
        die_after[j].append(slot)
    out: list[OpDescriptor] = []
    for j, op in enumerate(body):
        out.append(op)
        for slot in sorted(die_after[j]):
            out.append(OpDescriptor(opcode=Opcode.FREE, out=slot, shape=slots[slot].shape))
    return out


def live_bytes(
    slots: Sequence[Slot], ops: Sequence[OpDescriptor], rewritten: bool = False
) -> list[int]:
    """Bytes of ephemeral slot values held at each op boundary ``0 … L`` (persistent slots,
    always full, are not counted). With ``rewritten``, persistent values written so far count
    too: what an executor holds beyond ``S_0`` when it keeps ``S_0`` (a trace does)."""
    held = 0
    full: set[int] = set()
    out = [0]
    for op in ops:
        slot = slots[op.out]
        if slot.persistent and rewritten and op.out not in full:
            full.add(op.out)
            held += BYTES_PER_ELEMENT * slot.numel
        elif not slot.persistent:
            size = BYTES_PER_ELEMENT * slot.numel
            if op.opcode == Opcode.FREE:
                if op.out in full:
                    full.discard(op.out)
                    held -= size
            elif op.out not in full:
                full.add(op.out)
                held += size
        out.append(held)
    return out


def frees_at_end(slots: Sequence[Slot], ops: Sequence[OpDescriptor]) -> list[OpDescriptor]:
    """The placement before :func:`place_frees`: every ephemeral slot freed after the last op,
    in slot order (the memory bench's "before")."""
    body = [op for op in ops if op.opcode != Opcode.FREE]
    written = {op.out for op in body if not slots[op.out].persistent}
    frees = [OpDescriptor(opcode=Opcode.FREE, out=i, shape=slots[i].shape) for i in sorted(written)]
    return body + frees
