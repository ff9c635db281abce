"""Pre-batched dataset commitments over scikit-learn's bundled digits (no download).

- ``load_digits`` (1797 images of 8x8, values 0..16) → x = pixels / 16 as float32 (exact),
  y = class index as float32 (exact small integers, DESIGN §4.2).
- A held-out split: a PCG64 permutation seeded with ``seed`` puts the first ``heldout``
  examples aside.
- Batches: epoch ``e`` visits the training examples in the order of
  ``default_rng([seed, e]).permutation``, cut in ``batch_size`` batches (the incomplete tail is
  dropped); step ``t`` uses batch ``t`` of the concatenated epochs.
- Commitment: leaf ``t`` = ``tensor_root(x_t) || tensor_root(y_t)`` (64 bytes);
  ``dataset_root = MTH(leaves)`` over the batches of steps 0..N-1.
"""

from __future__ import annotations

from functools import lru_cache
from typing import Protocol

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from protocol.commitments import tensor_root
from protocol.merkle import merkle_root
from replay.errors import SpecError

DIGITS_EXAMPLES = 1797


class BatchSource(Protocol):
    """What training and replay read a dataset through (this module's Dataset,
    trainproof.datasets' array and text datasets, a bundle's paged dataset)."""

    def batch(self, step: int) -> tuple[np.ndarray, np.ndarray]: ...

    def leaf(self, step: int) -> bytes: ...

    def root(self, steps: int) -> bytes: ...


class DatasetSpec(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str = "sklearn-digits"
    seed: int = Field(default=0, ge=0)
    heldout: int = Field(default=297, ge=1, lt=DIGITS_EXAMPLES)
    batch_size: int = Field(gt=0)


@lru_cache(maxsize=1)
def _digits() -> tuple[np.ndarray, np.ndarray]:
    from sklearn.datasets import load_digits

    data = load_digits()
    x = (np.asarray(data.data, dtype=np.float64) / 16.0).astype(np.float32)
    y = np.asarray(data.target).astype(np.float32)
    return x, y


class Dataset:
    """The split and the per-step batches of one :class:`DatasetSpec`."""

    def __init__(self, spec: DatasetSpec) -> None:
        if spec.name != "sklearn-digits":
            raise SpecError(f"unknown dataset {spec.name!r}; v0 knows 'sklearn-digits'")
        self.spec = spec
        x, y = _digits()
        order = np.random.default_rng(spec.seed).permutation(len(x))
        test, train = order[: spec.heldout], order[spec.heldout :]
        self.x_test, self.y_test = np.ascontiguousarray(x[test]), np.ascontiguousarray(y[test])
        self.x_train, self.y_train = np.ascontiguousarray(x[train]), np.ascontiguousarray(y[train])
        self.per_epoch = len(train) // spec.batch_size
        if self.per_epoch == 0:
            raise SpecError(
                f"batch size {spec.batch_size} exceeds the {len(train)} training examples"
            )
        self._epoch_cache: dict[int, np.ndarray] = {}

    @property
    def input_dim(self) -> int:
        return int(self.x_train.shape[1])

    def _epoch_order(self, epoch: int) -> np.ndarray:
        if epoch not in self._epoch_cache:
            self._epoch_cache = {
                epoch: np.random.default_rng([self.spec.seed, epoch]).permutation(len(self.x_train))
            }
        return self._epoch_cache[epoch]

    def batch(self, step: int) -> tuple[np.ndarray, np.ndarray]:
        """(x [B, 64], y [B]) of step ``step`` — C-contiguous float32 copies."""
        if step < 0:
            raise SpecError(f"step {step} is negative")
        epoch, k = divmod(step, self.per_epoch)
        b = self.spec.batch_size
        idx = self._epoch_order(epoch)[k * b : (k + 1) * b]
        return np.ascontiguousarray(self.x_train[idx]), np.ascontiguousarray(self.y_train[idx])

    def leaf(self, step: int) -> bytes:
        x, y = self.batch(step)
        return tensor_root(x) + tensor_root(y)

    def root(self, steps: int) -> bytes:
        """``MTH(leaf_0 .. leaf_{steps-1})``."""
        return merkle_root([self.leaf(t) for t in range(steps)])
