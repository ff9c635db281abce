"""Named examples: a model spec and a dataset spec that train together."""

from __future__ import annotations

from dataclasses import dataclass

from replay.compile.spec import AdamW, Linear, MLPSpec, ReLU
from replay.data.dataset import DatasetSpec
from replay.errors import SpecError


@dataclass(frozen=True)
class Example:
    name: str
    model: MLPSpec
    dataset: DatasetSpec
    #: Steps after which the example reaches its documented held-out accuracy.
    recommended_steps: int


DIGITS_MLP = Example(
    name="digits-mlp",
    model=MLPSpec(
        input_dim=64,
        num_classes=10,
        layers=(Linear(out_features=128), ReLU(), Linear(out_features=10)),
        optimizer=AdamW(lr=3e-3, beta1=0.9, beta2=0.999, eps=1e-8, weight_decay=0.01),
        batch_size=64,
        init_seed=0,
    ),
    dataset=DatasetSpec(seed=0, heldout=297, batch_size=64),
    recommended_steps=300,
)

EXAMPLES: dict[str, Example] = {DIGITS_MLP.name: DIGITS_MLP}


def get_example(name: str) -> Example:
    try:
        return EXAMPLES[name]
    except KeyError:
        raise SpecError(f"unknown example {name!r}; known: {sorted(EXAMPLES)}") from None
