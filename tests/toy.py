"""A tiny registered experiment for testing the runner, the loop and the CLI."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from hypersparse.experiments import Experiment, register_experiment
from hypersparse.run import RunContext
from hypersparse.train import SyntheticBatches, TrainConfig


@dataclass
class ToyConfig:
    seed: int = 0
    width: int = 16
    interrupt_at: int | None = None
    crash_at: int | None = None
    dropout: float = 0.2
    noise: float = 0.01
    rng_log: str | None = None
    sparse: bool = False  # a SparseLayer first layer (sampled connections)
    fixed_sampling: bool = False  # the same sampled connections on every rank (for tests)
    train: TrainConfig = field(
        default_factory=lambda: TrainConfig(epochs=3, batch_size=8, lr=0.01, log_every=1)
    )


def _make(batch_size: int, g: torch.Generator) -> tuple[torch.Tensor, ...]:
    x = torch.randn(batch_size, 4, generator=g)
    return x, x.sum(-1, keepdim=True)


def _model(config: ToyConfig) -> nn.Module:
    torch.manual_seed(config.seed)
    if config.width == 0:  # a convex variant: input dropout + linear regression
        return nn.Sequential(nn.Dropout(config.dropout), nn.Linear(4, 1))
    if config.sparse:
        from hypersparse.nn import SparseLayer

        first: nn.Module = SparseLayer(4, config.width, k=2 * config.width)
        return nn.Sequential(first, nn.ReLU(), nn.Linear(config.width, 1))
    return nn.Sequential(
        nn.Linear(4, config.width),
        nn.ReLU(),
        nn.Dropout(config.dropout),
        nn.Linear(config.width, 1),
    )


@register_experiment("toy", help="test-only regression")
class Toy(Experiment):
    Config = ToyConfig
    presets = {"big": {"width": 64}}

    def run(self, config: ToyConfig, ctx: RunContext) -> dict[str, Any]:
        model = _model(config)
        src = SyntheticBatches(_make, config.train.batch_size, 20, seed=config.seed)
        vx, vy = _make(64, torch.Generator().manual_seed(123))

        def validate(m: nn.Module) -> dict[str, float]:
            return {"val_loss": float(F.mse_loss(m(vx), vy))}

        calls = [0]

        def loss(m: nn.Module, batch: tuple[torch.Tensor, ...]) -> torch.Tensor:
            x, y = batch
            if config.fixed_sampling:
                calls[0] += 1
                for mod in m.modules():
                    if hasattr(mod, "generator"):
                        mod.generator = torch.Generator().manual_seed(calls[0])
            noise = torch.randn_like(y)  # global RNG, reseeded per step by the loop
            if config.rng_log:
                with open(f"{config.rng_log}.rank{ctx.rank}", "a") as f:
                    f.write(f"{noise[0].item():.8f}\n")
            return F.mse_loss(m(x), y + config.noise * noise)

        def interrupt(step: int, m: nn.Module, metrics: dict[str, float]) -> None:
            if step == config.interrupt_at:
                raise KeyboardInterrupt
            if step == config.crash_at:
                raise RuntimeError("simulated crash")

        result = ctx.fit(
            model, loss, src, config=config.train, validate=validate, callbacks=[interrupt]
        )
        return {
            **self.evaluate(config, ctx, model),
            "final_train_loss": result.last_metrics["loss"],
        }

    def evaluate(
        self, config: ToyConfig, ctx: RunContext, model: nn.Module | None = None
    ) -> dict[str, Any]:
        if model is None:
            model = ctx.load_best(_model(config))
        model.eval()
        vx, vy = _make(64, torch.Generator().manual_seed(123))
        with torch.no_grad():
            return {
                "val_loss": float(F.mse_loss(model(vx), vy)),
                "width": config.width,
                "converged": True,
                "name": "toy",
            }
