"""Helpers shared by experiments (not part of the library's public API)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["accuracy", "classification_loss", "count_parameters", "batched"]


def accuracy(logits: Tensor, labels: Tensor) -> float:
    """Fraction of rows whose arg-max equals the label."""
    return float((logits.argmax(-1) == labels).float().mean())


def classification_loss(
    model: nn.Module, batch: tuple[Tensor, ...]
) -> tuple[Tensor, dict[str, float]]:
    """Cross-entropy on ``(inputs, labels)``, with the batch accuracy as a metric."""
    x, y = batch
    logits = model(x)
    return F.cross_entropy(logits, y), {"accuracy": accuracy(logits.detach(), y)}


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


@torch.no_grad()
def batched(model: nn.Module, x: Tensor, batch_size: int = 1000) -> Tensor:
    """``model(x)`` in chunks, concatenated (evaluation without a memory spike)."""
    return torch.cat([model(x[i : i + batch_size]) for i in range(0, x.shape[0], batch_size)])
