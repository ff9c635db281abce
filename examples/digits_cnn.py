"""digits-cnn: conv + batch norm + pooling on scikit-learn's bundled 8x8 digits.

    trainproof compile --model examples/digits_cnn.py:factory --eval-rows 297 --out jobs/digits-cnn
    trainproof train --job jobs/digits-cnn --data digits --steps 300 --checkpoint-every 50 \
        --out runs/digits-cnn

Conv(1→8, 3x3, pad 1) → BatchNorm2d → ReLU → MaxPool 2 → Conv(8→16, 3x3, stride 2, pad 1)
→ BatchNorm2d → ReLU → AvgPool 2 → Linear(16 → 10); SGD (lr 0.05, momentum 0.9, nesterov,
weight decay 1e-4 on conv/linear weights only), batch 32, dataset seed 0, 297 held out.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

BATCH = 32


class DigitsCNN(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, 8, 3, padding=1)
        self.bn1 = nn.BatchNorm2d(8)
        self.pool = nn.MaxPool2d(2)
        self.conv2 = nn.Conv2d(8, 16, 3, stride=2, padding=1)
        self.bn2 = nn.BatchNorm2d(16)
        self.avg = nn.AvgPool2d(2)
        self.fc = nn.Linear(16, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.pool(F.relu(self.bn1(self.conv1(x))))  # [B, 8, 4, 4]
        x = self.avg(F.relu(self.bn2(self.conv2(x))))  # [B, 16, 1, 1]
        return self.fc(torch.flatten(x, 1))


def optimizer_for(model: nn.Module) -> torch.optim.Optimizer:
    decay = [p for n, p in model.named_parameters() if n.endswith("weight") and p.dim() > 1]
    rest = [p for n, p in model.named_parameters() if not (n.endswith("weight") and p.dim() > 1)]
    return torch.optim.SGD(
        [{"params": decay, "weight_decay": 1e-4}, {"params": rest, "weight_decay": 0.0}],
        lr=0.05,
        momentum=0.9,
        nesterov=True,
    )


def dataset(seed: int = 0) -> Any:
    import trainproof.datasets

    return trainproof.datasets.digits(BATCH, seed=seed, heldout=297, image=True)


def factory(model: nn.Module | None = None) -> tuple[Any, ...]:
    """(model, optimizer, loss, example batch). Pass ``model`` to fine-tune loaded weights."""
    torch.manual_seed(0)
    model = model or DigitsCNN()
    x, y = dataset().batch(0)
    example = (torch.from_numpy(x), torch.from_numpy(y).long())
    return model, optimizer_for(model), F.cross_entropy, example


def heldout_accuracy(model: nn.Module, data: Any = None) -> float:
    data = data or dataset()
    model.eval()
    with torch.no_grad():
        pred = model(torch.from_numpy(data.x_test)).argmax(1).numpy()
    model.train()
    return float(np.mean(pred == data.y_test.astype(np.int64)))
