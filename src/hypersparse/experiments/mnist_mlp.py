"""``mnist-mlp``: a dense MLP on the package's MNIST split, the reference every sparse model is
compared with in the same harness."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import nn

from ..data import digits
from ..run import RunContext
from ..train import TensorBatches, TrainConfig
from .base import Experiment, register_experiment
from .common import accuracy, classification_loss, count_parameters


@dataclass
class MnistMLPConfig:
    seed: int = 0
    dataset: Literal["mnist", "fashion"] = "mnist"
    hidden: tuple[int, ...] = (300, 100)
    train: TrainConfig = field(
        default_factory=lambda: TrainConfig(epochs=5, batch_size=64, lr=1e-3)
    )


def mlp(widths: tuple[int, ...], n_in: int = 784, n_out: int = 10) -> nn.Sequential:
    """``Flatten -> (Linear -> ReLU)* -> Linear`` with the given hidden widths."""
    layers: list[nn.Module] = [nn.Flatten()]
    for w in widths:
        layers += [nn.Linear(n_in, w), nn.ReLU()]
        n_in = w
    layers.append(nn.Linear(n_in, n_out))
    return nn.Sequential(*layers)


@register_experiment("mnist-mlp", help="dense MLP baseline on the MNIST split (LeNet-300-100)")
class MnistMLP(Experiment):
    Config = MnistMLPConfig
    presets = {"full": {"train.epochs": 30, "train.schedule": "cosine"}}

    def _model(self, config: MnistMLPConfig, ctx: RunContext) -> nn.Module:
        return mlp(config.hidden).to(ctx.device)

    def run(self, config: MnistMLPConfig, ctx: RunContext) -> dict[str, Any]:
        train = digits(config.dataset, "train")
        val = digits(config.dataset, "val")
        model = self._model(config, ctx)
        source = TensorBatches(
            (train.float(), train.labels), config.train.batch_size, seed=config.seed
        )
        vx, vy = val.float().to(ctx.device), val.labels.to(ctx.device)

        def validate(m: nn.Module) -> dict[str, float]:
            logits = m(vx)
            return {
                "val_loss": float(F.cross_entropy(logits, vy)),
                "val_accuracy": accuracy(logits, vy),
            }

        result = ctx.fit(
            model,
            classification_loss,
            source,
            config=config.train,
            validate=validate,
            select="val_accuracy",
            mode="max",
        )
        summary = self.evaluate(config, ctx, model)
        summary.update(best_step=result.best_step, train_seconds=result.train_seconds)
        return summary

    def evaluate(
        self, config: MnistMLPConfig, ctx: RunContext, model: nn.Module | None = None
    ) -> dict[str, Any]:
        if model is None:
            model = ctx.load_best(self._model(config, ctx))
        model.eval()
        out: dict[str, Any] = {}
        for split in ("val", "test"):
            data = digits(config.dataset, split)
            with torch.no_grad():
                logits = model(data.float().to(ctx.device))
            out[f"{split}_accuracy"] = accuracy(logits, data.labels.to(ctx.device))
        out["params"] = count_parameters(model)
        out["data_source"] = digits(config.dataset, "test").source
        return out
