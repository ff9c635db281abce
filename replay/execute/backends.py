"""Pick an interpreter backend by name: ``numpy`` (the reference) or ``torch``."""

from __future__ import annotations

from collections import OrderedDict
from typing import Literal, Protocol

import numpy as np

from protocol.ir import Program
from replay.errors import ExecutionError
from replay.execute.numpy_backend import NumpyExecutor

BackendName = Literal["torch", "numpy"]
Batch = tuple[np.ndarray, np.ndarray]


class Executor(Protocol):
    """What training, replay and tracing need from a backend."""

    name: str
    program: Program

    def set_state(self, values: dict[str, np.ndarray]) -> None: ...

    def get_state(self) -> dict[str, np.ndarray]: ...

    def slot_array(self, i: int, copy: bool = True) -> np.ndarray | None: ...

    def run_op(self, j: int, batch: Batch | None) -> None: ...

    def run_step(self, batch: Batch | None) -> None: ...


def make_executor(program: Program, backend: str = "torch", device: str = "cpu") -> Executor:
    """An executor for ``program``; the numpy reference runs on the CPU only."""
    check_device(device)
    if backend == "numpy":
        if device != "cpu":
            raise ExecutionError(f"the numpy backend runs on the cpu, not {device!r}")
        return NumpyExecutor(program)
    if backend == "torch":
        from replay.execute.torch_backend import TorchExecutor

        return TorchExecutor(program, device)
    raise ExecutionError(f"unknown backend {backend!r}; choose 'torch' or 'numpy'")


def check_device(device: str) -> None:
    """Refuse a device other than ``cpu``, ``cuda`` or ``cuda:N`` in one line."""
    import re

    if not re.fullmatch(r"cpu|cuda(:\d+)?", device):
        raise ExecutionError(f"unknown --device {device!r}: choose cpu or cuda (cuda:N for GPU N)")


#: compiled executors kept for :func:`fresh_executor`, newest last (program kept alive so its
#: id stays its own)
_TEMPLATES: OrderedDict[tuple[int, str, str], tuple[Program, Executor]] = OrderedDict()
_TEMPLATE_LIMIT = 8


def fresh_executor(program: Program, backend: str = "torch", device: str = "cpu") -> Executor:
    """An empty executor for ``program``, sharing the compiled kernels of an earlier one for
    the same program object (a torch executor compiles every op; a dispute trace needs a
    fresh executor per step it replays, and again when it re-executes)."""
    key = (id(program), backend, device)
    hit = _TEMPLATES.get(key)
    if hit is None or hit[0] is not program:
        hit = (program, make_executor(program, backend, device))
        _TEMPLATES[key] = hit
        while len(_TEMPLATES) > _TEMPLATE_LIMIT:
            _TEMPLATES.popitem(last=False)
    _TEMPLATES.move_to_end(key)
    template = hit[1]
    clone = getattr(template, "clone", None)
    return clone() if clone is not None else make_executor(program, backend, device)
