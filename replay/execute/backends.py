"""Pick an interpreter backend by name: ``numpy`` (the reference) or ``torch``."""

from __future__ import annotations

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

    def slot_array(self, i: int) -> np.ndarray | None: ...

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
