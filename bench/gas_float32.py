"""Gas of the binary32 primitives of contracts/Float32.vy (the one-step verdict), titanoboa.

    .venv/bin/python bench/gas_float32.py [--random 200] [--seed 0]

Writes bench/results/gas_float32.json and prints a table.

Each primitive is called as an external function of Float32.vy on a set of inputs: every
special class (±0, smallest/largest subnormal, smallest normal, max finite, ±inf, NaNs),
hard cases (subnormal and overflowing results, exact ties, far-apart and cancelling adds,
long square roots of subnormals, huge and fractional ldexp exponents) and ``--random`` random
bit patterns. Gas is titanoboa's execution gas of the message (``computation.get_gas_used()``
after the call): what the EVM charges for running the code, which excludes the 21,000
transaction base and calldata gas (titanoboa runs the message without a transaction). The
baseline, measured in the same run and harness, is a trivial contract
``identity(x: uint32) -> uint32`` (and ``identity2(a, b)``): it is the dispatch + ABI
overhead that any external call pays. Target: every primitive <= 5,000 gas (median and max).

fma (a * b + c, one rounding) is also measured per case family (key ``"families"`` of its
entry): special triples (2 x ``--random`` of the 18**3 combinations of ±0, ±subnormals,
±1, ±1.5, ±max finite, ±inf, ±NaN), hand-picked hard cases (ties, sticky bits, cancellation,
gradual underflow, overflow), cancellation c = -round(a*b), exact product ties plus a tiny
c, subnormal products and sums, N(0, 1) triples (a matmul's typical terms) and random bit
patterns. Its target is <= 3,500 gas (worst case and median), baseline ``identity3(a, b, c)``.

The same run measures the one-step executor, contracts/Executor.vy (key ``"executor"`` of the
JSON, one row per opcode): ``element(desc, x, y, c)`` for every element op and FILL, and
``partial_step(desc, acc, x, y)`` for REDUCE_SUM / REDUCE_MAX / MATMUL (plus ``initial_acc``),
each with a realistic 128-byte descriptor of its opcode ([64, 128] output; R = 64) and the
same input sets as the primitive it dispatches to (reductions also get ``--random`` triples of
N(0, 1) values, the long paths of both roundings). Its baseline is a Venom-compiled
``identity_desc(desc: Bytes[128], x, y, c) -> uint32`` (the ABI cost of the 128-byte
descriptor). Targets: a MATMUL partial step <= 15,000 gas, every other call <= 5,000.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import platform
import statistics
import struct
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import boa  # noqa: E402
from rich.console import Console  # noqa: E402
from rich.table import Table  # noqa: E402

from protocol.ir import RANGED_OPS, REDUCTION_OPS, Opcode, OpDescriptor, Operand, arity  # noqa: E402

TARGET = 5000
#: fma's own target (issue 11: one MATMUL term)
FMA_TARGET = 3500
#: The issue's target for one MATMUL partial step (excluding proofs).
MATMUL_TARGET = 15000
#: v0's MATMUL partial step, acc + round(x*y) (bench/results/gas_float32.json before IR v1):
#: median 3,534, max 3,846 gas; v1's FMA step may cost at most 20 % more (issue 11).
MATMUL_V0 = {"median": 3534, "max": 3846}
FMA_STEP_LIMIT = 1.2
EXECUTOR = ROOT / "contracts" / "Executor.vy"
IDENTITY_DESC = """
# pragma version ~=0.4.3
# pragma experimental-codegen
@external
@pure
def identity_desc(desc: Bytes[128], x: uint32, y: uint32, c: uint32) -> uint32:
    return x
"""
CONTRACT = ROOT / "contracts" / "Float32.vy"
RESULT = ROOT / "bench" / "results" / "gas_float32.json"
IDENTITY = """
# pragma version ~=0.4.3
@external
@pure
def identity(x: uint32) -> uint32:
    return x

@external
@pure
def identity2(a: uint32, b: uint32) -> uint32:
    return a ^ b
"""
IDENTITY3 = """
# pragma version ~=0.4.3
@external
@pure
def identity3(a: uint32, b: uint32, c: uint32) -> uint32:
    return a ^ b ^ c
"""

SIGN = 0x80000000
POS_INF = 0x7F800000
NAN = 0x7FC00000
MAX_FINITE = 0x7F7FFFFF
MIN_SUB, MAX_SUB, MIN_NORMAL = 0x1, 0x7FFFFF, 0x800000

UNARY = ["sqrt", "neg", "abs", "round_even", "frexp_exp", "frexp_mant"]
BINARY = ["add", "sub", "mul", "div", "maximum", "minimum", "gt", "ge", "eq", "ldexp"]
TERNARY = ["select", "fma"]
ORDER = ["add", "sub", "mul", "div", "sqrt", "neg", "abs", "maximum", "minimum", "gt", "ge"]
ORDER += ["eq", "select", "round_even", "ldexp", "frexp_exp", "frexp_mant", "fma"]


def f(x: float) -> int:
    return struct.unpack("<I", struct.pack("<f", x))[0]


def specials() -> list[int]:
    mags = [0, MIN_SUB, 3, 0x400000, MAX_SUB, MIN_NORMAL, 0x00FFFFFF, f(0.5), f(1.0)]
    mags += [f(1.0) + 1, f(1.5), f(2.5), f(1.0 / 3.0), 0x4B000000, 0x4AFFFFFF, 0x7F000000]
    mags += [MAX_FINITE, POS_INF, NAN, POS_INF + 1, 0x7FFFFFFF]
    return mags + [m | SIGN for m in mags]


def hard_pairs(op: str) -> list[tuple[int, int]]:
    """Inputs that exercise the long paths of each binary primitive."""
    one = f(1.0)
    if op in ("add", "sub"):
        return [
            (one, f(2.0**-24)),  # tie
            (f(1.0 + 2.0**-23), f(2.0**-24)),  # tie, rounds up
            (MAX_FINITE, f(2.0**103)),  # rounds to inf
            (one, f(-(2.0**-40))),  # far apart, sticky
            (one, f(2.0**-30)),  # within the alignment window
            (f(1.0 + 2.0**-23), f(-1.0)),  # cancellation
            (MAX_SUB, MIN_SUB),  # subnormal carry
            (f(3.0), f(-(2.0**-149 * 7))),
        ]
    if op == "mul":
        return [
            (MIN_SUB, f(0.5)),  # 2**-150: tie to 0
            (f(2.0**-75), f(1.5 * 2.0**-75)),
            (MAX_FINITE, f(2.0)),
            (f(1.0 / 3.0), f(3.0)),
            (MAX_SUB, f(1.0 - 2.0**-24)),
            (f(0x1FFF * 2.0**-12), f(0x0801 * 2.0**-11)),
        ]
    if op == "div":
        return [
            (MIN_SUB, f(2.0)),
            (3, f(2.0)),
            (one, f(3.0)),
            (MIN_SUB, MAX_SUB),
            (MAX_SUB, MIN_SUB),
            (MIN_NORMAL, f(2.0**24)),
            (MAX_FINITE, f(0.5)),
            (f(2.0**-126 * 0.75), MAX_FINITE),
        ]
    if op == "ldexp":
        return [
            (f(1.0), f(-149.0)),
            (f(3.0), f(-150.0)),
            (MAX_SUB, f(1.0)),
            (f(1.0), f(128.0)),
            (f(1.0), f(1e30)),
            (MAX_FINITE, f(-1e30)),
            (f(1.0), f(8388607.5)),
            (f(1.0), MIN_SUB),
            (f(1.5), f(-(2.0**22))),
        ]
    return []


def hard_unary(op: str) -> list[int]:
    if op == "sqrt":
        return [MIN_SUB, 2, 3, MAX_SUB, MIN_NORMAL, MAX_FINITE, f(2.0), f(0.5), 0x3F7FFFFF]
    if op == "round_even":
        return [f(0.5), f(-0.4), f(2.5), f(8388607.5), f(4194303.75), MIN_SUB | SIGN]
    return [MIN_SUB, 3, MAX_SUB, MIN_NORMAL]


def hard_fma() -> list[tuple[int, int, int]]:
    """Long paths of fma: ties, sticky bits on both sides, cancellation, subnormals, overflow."""
    t = f(1.0 + 2.0**-12)  # t * t = 1 + 2**-11 + 2**-24: an exact tie
    return [
        (t, t, 0),
        (t, t, f(2.0**-60)),  # tie decided by c inside the alignment window
        (t, t, f(-(2.0**-80))),  # ... and by a sticky c beyond it
        (t, t | SIGN, f(2.0**-149)),
        (f(1.0 + 2.0**-23), f(1.0 + 2.0**-23), f(-(1.0 + 2.0**-22))),  # product's error
        (f(1.0 / 3.0), f(3.0), f(-1.0)),
        (f(2.0**-24), f(1.0 + 2.0**-20), f(1.0)),  # product just above half an ulp of c
        (f(1.5 * 2.0**-13), f(-1.5 * 2.0**-13), f(1.0)),  # result drops below c = 1
        (f(2.0**-100), f(2.0**-100), f(-1.0)),  # sticky product
        (MAX_FINITE, f(1.0), f(2.0**103)),  # tie at overflow
        (MAX_FINITE, f(2.0), MAX_FINITE | SIGN),
        (f(2.0**64), f(2.0**64), f(-1.0)),
        (MIN_SUB, f(0.5), MIN_SUB),  # subnormal tie
        (MIN_SUB, f(0.5), MIN_SUB | SIGN),
        (MIN_NORMAL, f(0.5), MIN_SUB | SIGN),
        (MAX_SUB, MAX_SUB, MIN_SUB),
        (MAX_SUB, f(2.0), MIN_SUB),
        (f(1.5), f(2.0), f(-3.0)),  # exact cancellation
        (f(1.1), f(1.1), f(-1.21)),
    ]


def _bits(x: np.ndarray) -> list[int]:
    with np.errstate(all="ignore"):
        return [int(v) for v in np.asarray(x, dtype=np.float32).view(np.uint32)]


def fma_families(rng: np.random.Generator, n: int) -> dict[str, list[tuple[int, int, int]]]:
    """fma inputs by case family, ``n`` per generated family."""
    small = [0, MIN_SUB, MAX_SUB, MIN_NORMAL, f(1.0), f(1.5), MAX_FINITE, POS_INF, NAN]
    small += [m | SIGN for m in small]
    triples = list(itertools.product(small, small, small))  # 5,832: a sample of 2n of them
    picks = rng.choice(len(triples), min(2 * n, len(triples)), replace=False)
    fam: dict[str, list[tuple[int, int, int]]] = {
        "specials": [triples[i] for i in sorted(picks)],
        "hard": hard_fma(),
    }
    # c = -round(a*b): the result is the product's rounding error
    a = rng.standard_normal(n).astype(np.float32) * np.float32(2.0) ** rng.integers(-20, 20, n)
    b = rng.standard_normal(n).astype(np.float32)
    prod = a.astype(np.float64) * b.astype(np.float64)
    fam["cancel"] = list(zip(_bits(a), _bits(b), _bits(-prod), strict=True))
    # exact product ties (odd 25-bit products) plus a tiny c, in and beyond the window
    p = rng.integers(1, 2**11, n) * 2 + 1
    q = (2**24 + 2 * rng.integers(0, 2**22, n) + 1) // p | 1
    c = np.ldexp(rng.choice([-1.0, 1.0], n), rng.integers(-110, -20, n))
    fam["tie_sticky"] = list(
        zip(_bits(np.ldexp(p, -12)), _bits(np.ldexp(q, -12)), _bits(c), strict=True)
    )
    # subnormal products and sums
    a = np.ldexp(rng.random(n) + 1, rng.integers(-100, -30, n))
    b = np.ldexp(rng.random(n) + 1, rng.integers(-110, -40, n))
    c = np.ldexp(rng.random(n) * rng.choice([-1.0, 1.0], n), -149 + rng.integers(0, 30, n))
    fam["subnormal"] = list(zip(_bits(a), _bits(b), _bits(c), strict=True))
    normal = rng.standard_normal(3 * n)
    fam["normal"] = list(zip(*(_bits(normal[i::3]) for i in range(3)), strict=True))
    rand = [int(x) for x in rng.integers(0, 2**32, 3 * n, dtype=np.uint64)]
    fam["random"] = list(zip(rand[0::3], rand[1::3], rand[2::3], strict=True))
    return fam


def inputs(op: str, rng: np.random.Generator, n_random: int) -> list[tuple[int, ...]]:
    if op == "fma":
        return [t for fam in fma_families(rng, n_random).values() for t in fam]
    sp = specials()
    rand = [int(x) for x in rng.integers(0, 2**32, 3 * n_random, dtype=np.uint64)]
    r1, r2, r3 = rand[:n_random], rand[n_random : 2 * n_random], rand[2 * n_random :]
    if op == "sqrt":  # random operands of the long path: positive, finite
        r1 = [x & 0x7F7FFFFF for x in r1]
    if op in UNARY:
        return [(x,) for x in sp + hard_unary(op) + r1]
    if op in BINARY:
        pairs = list(itertools.product(sp, sp)) + hard_pairs(op)
        return pairs + list(zip(r1, r2, strict=True))
    conds = [0, SIGN, f(1.0), NAN, MIN_SUB | SIGN, POS_INF]
    triples = [(c, a, b) for c in conds for a, b in zip(sp, reversed(sp), strict=True)]
    return triples + list(zip(r1, r2, r3, strict=True))


def gas_of(contract, fn: str, args: tuple) -> int:
    getattr(contract, fn)(*args)
    return contract._computation.get_gas_used()


#: The float32 primitive each opcode dispatches to (whose input set it is measured on).
PRIMITIVE = {
    Opcode.ADD: "add",
    Opcode.SUB: "sub",
    Opcode.MUL: "mul",
    Opcode.DIV: "div",
    Opcode.MAX: "maximum",
    Opcode.MIN: "minimum",
    Opcode.GT: "gt",
    Opcode.GE: "ge",
    Opcode.EQ: "eq",
    Opcode.LDEXP: "ldexp",
    Opcode.NEG: "neg",
    Opcode.ABS: "abs",
    Opcode.SQRT: "sqrt",
    Opcode.ROUND: "round_even",
    Opcode.FREXP_EXP: "frexp_exp",
    Opcode.FREXP_MANT: "frexp_mant",
    Opcode.COPY: "neg",  # the specials and random patterns of a unary op
    Opcode.SELECT: "select",
    Opcode.FMA: "fma",
    Opcode.REDUCE_SUM: "add",
    Opcode.REDUCE_MAX: "maximum",
    Opcode.MATMUL: "fma",
    Opcode.INDEX_ADD: "add",
    Opcode.GATHER: "neg",  # the table element's specials and random patterns
}
#: Element-level opcodes in protocol order; LOAD_BATCH and FREE are never executed here.
EXECUTOR_OPS = [op for op in Opcode if op not in (Opcode.LOAD_BATCH, Opcode.FREE)]


def executor_descriptor(op: Opcode) -> bytes:
    """A realistic descriptor of ``op``: output [64, 128], C-order operands, R = 64."""
    reduction = op in REDUCTION_OPS
    ranged = op in RANGED_OPS
    operands = tuple(
        Operand(
            slot=1 + k,
            strides=(128, 1),
            reduce_stride=1 if reduction or (ranged and k == 1) else 0,
        )
        for k in range(arity(op))
    )
    return OpDescriptor(
        opcode=op,
        out=7,
        shape=(64, 128),
        operands=operands,
        reduce_len=64 if ranged else 0,
        imm=f(1.0) if op == Opcode.FILL else 0,
    ).encode()


def executor_inputs(op: Opcode, rng: np.random.Generator, n_random: int) -> list[tuple]:
    """(x, y, c) for ``element``, (acc, x, y) for ``partial_step``."""
    if op == Opcode.FILL:
        return [(x, 0, 0) for x in specials()]
    base = inputs(PRIMITIVE[op], rng, n_random)
    if op == Opcode.GATHER:  # (index, table element): rows in range, past the end, NaN, -1
        rows = [f(0.0), f(5.0), f(63.0), f(64.0), f(-1.0), f(0.5), 0x7FC00000, f(1e30)]
        return [(rows[i % len(rows)], a[0], 0) for i, a in enumerate(base)]
    if op not in REDUCTION_OPS:
        return [tuple(a) + (0,) * (3 - len(a)) for a in base]
    normal = [int(v) for v in rng.standard_normal(3 * n_random).astype(np.float32).view(np.uint32)]
    typical = [tuple(normal[3 * i : 3 * i + 3]) for i in range(n_random)]
    if op == Opcode.MATMUL:  # fma's triples (x, y, acc), as (acc, x, y)
        return [(c, x, y) for x, y, c in base] + typical
    if op == Opcode.INDEX_ADD:  # indices that hit the row (0) and that don't, acc/y from add's
        hits = [f(0.0), f(-0.0), f(1.0), f(2.5), 0x7FC00000]
        return [(a, hits[i % len(hits)], x) for i, (a, x) in enumerate(base)]
    return [(acc, x, 0) for acc, x in base] + [(a, x, 0) for a, x, _ in typical]


def measure_executor(rng: np.random.Generator, n_random: int) -> tuple[dict, list[list[str]]]:
    """Gas of every executor entry point by opcode: the JSON section and the table rows."""
    ex = boa.load(str(EXECUTOR))
    ident = boa.loads(IDENTITY_DESC)
    base = [gas_of(ident, "identity_desc", (bytes(128), x, x, x)) for x in specials()]
    base_med = statistics.median(base)
    section: dict[str, object] = {}
    rows = []
    for op in EXECUTOR_OPS:
        desc = executor_descriptor(op)
        fn = "partial_step" if op in REDUCTION_OPS else "element"
        pre = (desc, 0) if op in REDUCTION_OPS else (desc,)  # partial_step's f = element 0
        samples = [(gas_of(ex, fn, (*pre, *a)), a) for a in executor_inputs(op, rng, n_random)]
        gas = [g for g, _ in samples]
        worst_gas, worst_args = max(samples)
        med = statistics.median(gas)
        target = MATMUL_TARGET if op == Opcode.MATMUL else TARGET
        entry: dict[str, object] = {
            "call": fn,
            "median": med,
            "max": worst_gas,
            "n": len(gas),
            "worst_input": [f"0x{x:08x}" for x in worst_args],
            "target": target,
            "median_minus_baseline": med - base_med,
        }
        if op in REDUCTION_OPS:
            entry["initial_acc"] = gas_of(ex, "initial_acc", (desc,))
        if op == Opcode.GATHER:
            entry["gather_row"] = gas_of(ex, "gather_row", (desc, f(5.0)))
        if op == Opcode.MATMUL:
            entry["v0_add_mul"] = MATMUL_V0
            entry["ratio_to_v0_median"] = round(med / MATMUL_V0["median"], 3)
            entry["ratio_to_v0_max"] = round(worst_gas / MATMUL_V0["max"], 3)
            entry["limit_ratio"] = FMA_STEP_LIMIT
        section[op.name] = entry
        ok = "yes" if worst_gas <= target else "NO"
        worst = ", ".join(f"0x{x:08x}" for x in worst_args)
        rows.append([op.name, fn, str(len(gas)), f"{med:g}", str(worst_gas), str(target)])
        rows[-1] += [ok, worst]
    section["baseline_identity_desc"] = {"median": base_med, "max": max(base), "n": len(base)}
    section["measured"] = (
        "titanoboa execution gas of one external call to contracts/Executor.vy (Venom), "
        "excluding the 21,000 base and calldata gas; descriptor: [64, 128] output, R = 64; "
        "inputs: the primitive's set above (x, y, c) resp. (acc, x, y), reductions plus "
        "N(0, 1) triples; baseline: identity_desc(Bytes[128], uint32 x3) -> uint32 (Venom)"
    )
    rows.append(["identity_desc (baseline)", "", str(len(base)), f"{base_med:g}", str(max(base))])
    rows[-1] += ["", "", ""]
    return section, rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--random", type=int, default=200, help="random bit patterns per primitive")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    rng = np.random.default_rng(args.seed)

    c = boa.load(str(CONTRACT))
    ident = boa.loads(IDENTITY)
    base1 = [gas_of(ident, "identity", (x,)) for x in specials()]
    base2 = [gas_of(ident, "identity2", (x, x)) for x in specials()]
    ident3 = boa.loads(IDENTITY3)
    base3 = [gas_of(ident3, "identity3", (x, x, x)) for x in specials()]
    baseline = {
        "identity": {"median": statistics.median(base1), "max": max(base1), "n": len(base1)},
        "identity2": {"median": statistics.median(base2), "max": max(base2), "n": len(base2)},
        "identity3": {"median": statistics.median(base3), "max": max(base3), "n": len(base3)},
    }

    result: dict[str, object] = {}
    rows = []
    for op in ORDER:
        if op == "fma":
            families = {
                name: [(gas_of(c, op, a), a) for a in cases]
                for name, cases in fma_families(rng, args.random).items()
            }
            samples = [s for fam in families.values() for s in fam]
        else:
            samples = [(gas_of(c, op, a), a) for a in inputs(op, rng, args.random)]
        gas = [g for g, _ in samples]
        worst_gas, worst_args = max(samples)
        med = statistics.median(gas)
        base_key = "identity" if op in UNARY else "identity3" if op == "fma" else "identity2"
        base = baseline[base_key]["median"]
        target = FMA_TARGET if op == "fma" else TARGET
        result[op] = {
            "median": med,
            "max": worst_gas,
            "n": len(gas),
            "worst_input": [f"0x{x:08x}" for x in worst_args],
            "median_ratio_vs_identity": round(med / base, 2),
        }
        ok = "yes" if worst_gas <= target else "NO"
        worst = ", ".join(f"0x{x:08x}" for x in worst_args)
        rows.append([op, str(len(gas)), f"{med:g}", str(worst_gas), f"{med / base:.2f}", ok, worst])
        if op == "fma":
            result[op]["target"] = FMA_TARGET
            result[op]["families"] = {}
            for name, fam in families.items():
                fgas = [g for g, _ in fam]
                fworst, fargs = max(fam)
                result[op]["families"][name] = {
                    "median": statistics.median(fgas),
                    "max": fworst,
                    "n": len(fgas),
                    "worst_input": [f"0x{x:08x}" for x in fargs],
                }
                ok = "yes" if fworst <= target else "NO"
                worst = ", ".join(f"0x{x:08x}" for x in fargs)
                fmed = statistics.median(fgas)
                rows.append([f"  fma: {name}", str(len(fgas)), f"{fmed:g}", str(fworst)])
                rows[-1] += [f"{fmed / base:.2f}", ok, worst]

    result["executor"], executor_rows = measure_executor(rng, args.random)
    result["target_per_primitive"] = TARGET
    result["baseline"] = baseline
    result["measured"] = (
        "titanoboa execution gas of one external call to contracts/Float32.vy "
        "(computation.get_gas_used(): excludes the 21,000 base and calldata gas); "
        "ratio = median / median of a trivial identity call (1, 2 or 3 (fma) uint32 arguments)"
    )
    result["versions"] = {"vyper": _version("vyper"), "titanoboa": _version("titanoboa")}
    result["machine"] = {"python": platform.python_version(), "cores": os.cpu_count()}
    RESULT.parent.mkdir(parents=True, exist_ok=True)
    RESULT.write_text(json.dumps(result, indent=2) + "\n")
    b1, b2 = baseline["identity"], baseline["identity2"]
    rows.append(["identity (baseline)", str(b1["n"]), f"{b1['median']:g}", str(b1["max"])])
    rows[-1] += ["1.00", "", ""]
    rows.append(["identity2 (baseline)", str(b2["n"]), f"{b2['median']:g}", str(b2["max"])])
    rows[-1] += ["1.00", "", ""]
    b3 = baseline["identity3"]
    rows.append(["identity3 (baseline)", str(b3["n"]), f"{b3['median']:g}", str(b3["max"])])
    rows[-1] += ["1.00", "", ""]
    t = Table(
        title="float32 primitives: execution gas per external call "
        f"(target <= {TARGET}; fma <= {FMA_TARGET})"
    )
    for col in ["primitive", "n", "median", "max", "median / identity", "<= target", "worst"]:
        t.add_column(col)
    for row in rows:
        t.add_row(*row)
    Console().print(t)
    t = Table(
        title="one-step executor (contracts/Executor.vy): execution gas per external call "
        f"(targets: MATMUL partial step <= {MATMUL_TARGET}, others <= {TARGET})"
    )
    for col in ["opcode", "call", "n", "median", "max", "target", "<= target", "worst"]:
        t.add_column(col)
    for row in executor_rows:
        t.add_row(*row)
    Console().print(t)
    print(f"wrote {RESULT.relative_to(ROOT)}")


def _version(dist: str) -> str:
    from importlib.metadata import version

    return version(dist)


if __name__ == "__main__":
    main()
