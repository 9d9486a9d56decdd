"""The networks of "How Can We Be So Dense?" (Ahmad & Scheinkman 2019) and the forum's MLPs.

CNN-1: conv 5x5 -> maxpool 2 -> act -> linear -> act -> linear.
CNN-2: (conv 5x5 -> maxpool 2 -> act) x 2 -> linear -> act -> linear.
Sparse nets use k-winners as the activation and a sparse-weight hidden linear layer; dense nets
use ReLU. Every network starts with the paper's input normalisation, so callers feed [0, 1]
images (noise is added in that space).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from ..nn import KWinners, KWinners2d, SparseWeights

__all__ = ["Normalize", "BoostConfig", "build_network", "NETWORKS", "FORUM_NETWORKS"]

MNIST_MEAN, MNIST_STD = 0.1307, 0.3081

NETWORKS = ("dense_cnn1", "dense_cnn2", "sparse_cnn1", "sparse_cnn2")
FORUM_NETWORKS = ("mlp_raw", "mlp_dropout", "mlp_batchnorm", "mlp_kwinners")


class Normalize(nn.Module):
    """``(x - mean) / std`` with fixed scalars."""

    def __init__(self, mean: float = MNIST_MEAN, std: float = MNIST_STD) -> None:
        super().__init__()
        self.mean, self.std = mean, std

    def forward(self, x: Tensor) -> Tensor:
        return (x - self.mean) / self.std

    def extra_repr(self) -> str:
        return f"mean={self.mean}, std={self.std}"


@dataclass
class BoostConfig:
    """k-winners settings shared by every sparse network.

    The paper's values, except ``k_inference_factor``: the paper uses 1.5 (1.5x more winners in
    eval); 1.0 was selected on validation here (docs/kwinners.md: on the 9k-digit split the
    extra eval winners are mostly units that rarely won in training, whose weights are barely
    trained, and cost about a point of clean accuracy and ~3% of the validation noise score).
    """

    boost_strength: float = 1.5
    boost_strength_factor: float = 0.85
    k_inference_factor: float = 1.0  # paper: 1.5; selected on validation (see docstring)
    duty_cycle_period: int = 1000
    weight_sparsity: float = 0.7  # fraction of zeros in the hidden linear layer (density 0.3)
    forum_hidden: int = 500
    forum_percent_on: float = 0.1


def _kw(n: int, k: int, b: BoostConfig) -> KWinners:
    return KWinners(n, k / n, k_inference_factor=b.k_inference_factor,
                    boost_strength=b.boost_strength, boost_strength_factor=b.boost_strength_factor,
                    duty_cycle_period=b.duty_cycle_period)


def _kw2d(c: int, hw: int, k: int, b: BoostConfig) -> KWinners2d:
    return KWinners2d(c, hw, hw, k / (c * hw * hw), k_inference_factor=b.k_inference_factor,
                      boost_strength=b.boost_strength,
                      boost_strength_factor=b.boost_strength_factor,
                      duty_cycle_period=b.duty_cycle_period)


def build_network(
    name: str, boost: BoostConfig | None = None, *, generator: torch.Generator | None = None
) -> nn.Sequential:
    """One of :data:`NETWORKS` or :data:`FORUM_NETWORKS` for (B, 1, 28, 28) inputs in [0, 1].

    Sizes (paper, Table 3): dense CNN-1 conv 30, hidden 1000; dense CNN-2 conv 30, 30, hidden
    1000; sparse CNN-1 conv 30 with k 400/4320, hidden 150 with k 50; sparse CNN-2 conv 32, 64
    with k 400/4608 and 300/1024, hidden 700 with k 100; sparse hidden layers keep 30% of the
    weights. Forum MLPs: 784 -> hidden -> 10 with ReLU, ReLU + dropout 0.5, batch-norm + ReLU,
    or k-winners.
    """
    b = boost or BoostConfig()
    h = b.forum_hidden
    layers: list[nn.Module] = [Normalize()]
    if name == "dense_cnn1":
        layers += [nn.Conv2d(1, 30, 5), nn.MaxPool2d(2), nn.ReLU(), nn.Flatten(),
                   nn.Linear(4320, 1000), nn.ReLU(), nn.Linear(1000, 10)]
    elif name == "dense_cnn2":
        layers += [nn.Conv2d(1, 30, 5), nn.MaxPool2d(2), nn.ReLU(),
                   nn.Conv2d(30, 30, 5), nn.MaxPool2d(2), nn.ReLU(), nn.Flatten(),
                   nn.Linear(480, 1000), nn.ReLU(), nn.Linear(1000, 10)]
    elif name == "sparse_cnn1":
        layers += [nn.Conv2d(1, 30, 5), nn.MaxPool2d(2), _kw2d(30, 12, 400, b), nn.Flatten(),
                   SparseWeights(nn.Linear(4320, 150), b.weight_sparsity, generator=generator),
                   _kw(150, 50, b), nn.Linear(150, 10)]
    elif name == "sparse_cnn2":
        layers += [nn.Conv2d(1, 32, 5), nn.MaxPool2d(2), _kw2d(32, 12, 400, b),
                   nn.Conv2d(32, 64, 5), nn.MaxPool2d(2), _kw2d(64, 4, 300, b), nn.Flatten(),
                   SparseWeights(nn.Linear(1024, 700), b.weight_sparsity, generator=generator),
                   _kw(700, 100, b), nn.Linear(700, 10)]
    elif name == "mlp_raw":
        layers += [nn.Flatten(), nn.Linear(784, h), nn.ReLU(), nn.Linear(h, 10)]
    elif name == "mlp_dropout":
        layers += [nn.Flatten(), nn.Linear(784, h), nn.ReLU(), nn.Dropout(0.5), nn.Linear(h, 10)]
    elif name == "mlp_batchnorm":
        layers += [nn.Flatten(), nn.Linear(784, h), nn.BatchNorm1d(h), nn.ReLU(),
                   nn.Linear(h, 10)]
    elif name == "mlp_kwinners":
        k = max(1, round(h * b.forum_percent_on))
        layers += [nn.Flatten(), nn.Linear(784, h), _kw(h, k, b), nn.Linear(h, 10)]
    else:
        valid = ", ".join(NETWORKS + FORUM_NETWORKS)
        raise ValueError(f"unknown network {name!r}; valid: {valid}")
    return nn.Sequential(*layers)
