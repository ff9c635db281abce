"""Model specifications (pydantic) that the compiler turns into one-step training programs."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class Linear(_Frozen):
    """``z = a @ W + b`` with ``W`` of shape [in, out_features]."""

    kind: Literal["linear"] = "linear"
    out_features: int = Field(gt=0, le=65536)


class ReLU(_Frozen):
    kind: Literal["relu"] = "relu"


class GELU(_Frozen):
    """GELU, tanh form: 0.5·x·(1 + tanh(sqrt(2/π)·(x + 0.044715·x³)))."""

    kind: Literal["gelu"] = "gelu"


Layer = Annotated[Linear | ReLU | GELU, Field(discriminator="kind")]


class SGD(_Frozen):
    """SGD with momentum: v = μ·v + (g + wd·w); w = w - lr·v."""

    kind: Literal["sgd"] = "sgd"
    lr: float = Field(gt=0)
    momentum: float = Field(default=0.9, ge=0, lt=1)
    weight_decay: float = Field(default=0.0, ge=0)


class AdamW(_Frozen):
    """AdamW with bias correction through running powers of the betas (state slots)."""

    kind: Literal["adamw"] = "adamw"
    lr: float = Field(gt=0)
    beta1: float = Field(default=0.9, ge=0, lt=1)
    beta2: float = Field(default=0.999, ge=0, lt=1)
    eps: float = Field(default=1e-8, gt=0)
    weight_decay: float = Field(default=0.01, ge=0)


Optimizer = Annotated[SGD | AdamW, Field(discriminator="kind")]


class MLPSpec(_Frozen):
    """An MLP classifier trained with softmax cross-entropy (mean over the batch)."""

    input_dim: int = Field(gt=0, le=65536)
    num_classes: int = Field(ge=2, le=65536)
    layers: tuple[Layer, ...] = Field(min_length=1)
    optimizer: Optimizer
    batch_size: int = Field(gt=0, le=65536)
    init_seed: int = Field(default=0, ge=0)

    @model_validator(mode="after")
    def _layers_make_sense(self) -> MLPSpec:
        if not isinstance(self.layers[-1], Linear):
            raise ValueError("the last layer must be linear (it produces the logits)")
        if self.layers[-1].out_features != self.num_classes:
            raise ValueError(
                f"the last linear layer has {self.layers[-1].out_features} outputs but there "
                f"are {self.num_classes} classes"
            )
        if not isinstance(self.layers[0], Linear):
            raise ValueError("the first layer must be linear")
        for prev, layer in zip(self.layers, self.layers[1:], strict=False):
            if not isinstance(prev, Linear) and not isinstance(layer, Linear):
                raise ValueError("two activations in a row; put a linear layer between them")
        return self
