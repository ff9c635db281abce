"""exp, log, tanh, GELU lowered into IR primitives: documented ulp bounds and special values."""

from __future__ import annotations

import numpy as np
import pytest

from protocol.ir import ELEMENTWISE_OPS, REDUCTION_OPS, Opcode
from replay.compile.accuracy import FUNCTIONS, evaluate, float32_sweep, measure, ulps, unary_program


@pytest.mark.parametrize("name", sorted(FUNCTIONS))
def test_error_within_documented_ulps(name: str) -> None:
    """A strided sweep over every float32 bit pattern of the range (bench/ sweeps denser)."""
    fn = FUNCTIONS[name]
    x = float32_sweep(fn.lo, fn.hi, stride=20011, phase=7)
    rng = np.random.default_rng(0)
    x = np.concatenate([x, rng.uniform(max(fn.lo, -5), min(fn.hi, 5), 50_000).astype(np.float32)])
    m = measure(fn, x)
    assert m.points > 100_000
    assert m.max_ulps <= fn.max_ulps, m


def test_programs_use_primitives_only() -> None:
    allowed = ELEMENTWISE_OPS | REDUCTION_OPS | {Opcode.FILL, Opcode.FREE}
    for fn in FUNCTIONS.values():
        assert {op.opcode for op in unary_program(fn, 4).ops} <= allowed


def _bits(x: np.ndarray) -> list[int]:
    return [int(v) for v in np.asarray(x, dtype=np.float32).view(np.uint32)]


INF, NAN = np.inf, np.nan


def test_exp_special_values() -> None:
    x = np.array([0.0, -0.0, INF, -INF, NAN, 88.72, 88.73, -103.97, -104.0, 1.0, -87.0], np.float32)
    y = evaluate(FUNCTIONS["exp"], x)
    assert y[0] == 1.0 and y[1] == 1.0
    assert y[2] == INF and y[3] == 0.0 and _bits(y[4:5]) == [0x7FC00000]
    assert np.isfinite(y[5]) and y[6] == INF
    assert y[7] > 0 and y[8] == 0.0  # exp(-103.97) is the smallest subnormal; exp(-104) rounds to 0
    assert ulps(y[9:], np.exp(x[9:].astype(np.float64))).max() <= 1.0


def test_log_special_values() -> None:
    x = np.array([0.0, -0.0, -1.0, INF, -INF, NAN, 1.0, 1.4e-45, 3.4028235e38, 0.5], np.float32)
    y = evaluate(FUNCTIONS["log"], x)
    assert y[0] == -INF and y[1] == -INF
    assert _bits(y[2:3]) == [0x7FC00000] and y[3] == INF
    assert _bits(y[4:6]) == [0x7FC00000, 0x7FC00000]
    assert _bits(y[6:7]) == [0]  # log(1) = +0
    assert ulps(y[7:], np.log(x[7:].astype(np.float64))).max() <= 1.0


def test_tanh_special_values() -> None:
    x = np.array([0.0, -0.0, INF, -INF, NAN, 50.0, -50.0, 1e-30, -1e-30], np.float32)
    y = evaluate(FUNCTIONS["tanh"], x)
    assert _bits(y[:2]) == [0, 0x80000000]  # tanh(±0) = ±0
    assert list(y[2:4]) == [1.0, -1.0] and _bits(y[4:5]) == [0x7FC00000]
    assert list(y[5:7]) == [1.0, -1.0]
    assert list(y[7:]) == [np.float32(1e-30), np.float32(-1e-30)]


def test_gelu_tails() -> None:
    x = np.array([-200.0, -20.0, 200.0, 0.0, INF, -INF, NAN], np.float32)
    y = evaluate(FUNCTIONS["gelu"], x)
    assert y[0] == 0.0 and abs(y[1]) < 1e-37 and y[2] == 200.0 and y[3] == 0.0
    # gelu(-inf) = -inf / (1 + inf) is NaN, as 0.5·x·(1 + tanh u) is in torch's own formula
    assert y[4] == INF and np.isnan(y[5]) and np.isnan(y[6])
