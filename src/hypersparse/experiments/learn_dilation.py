"""``learn-dilation``: learn the dilation of a convolution through its index tuples (seed 000,
"compression/prior"; issue 7).

Synthetic task: inputs are smooth random images (white noise blurred by a Gaussian of
``smooth`` pixels and standardised, so that neighbouring pixels correlate as in natural images);
the target is a fixed random ``k x k`` convolution at dilation ``target_dilation``. The model is
one :class:`~hypersparse.nn.DilatedConv2d` whose dilation starts at ``init_dilation`` and whose
kernel is learned with it. The summary reports the learned dilation of the best-on-validation
model, the target and the test MSE (fresh images, never seen in training or selection).
The MNIST classifier (``task=mnist``) is not implemented yet.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..nn.dilation import DilatedConv2d
from ..run import RunContext
from ..train import SyntheticBatches, TrainConfig
from .base import Experiment, register_experiment

__all__ = ["LearnDilationConfig", "smooth_images"]


@dataclass
class LearnDilationConfig:
    seed: int = 0
    task: Literal["synthetic", "mnist"] = "synthetic"
    channels: int = 1
    size: int = 16
    kernel_size: int = 3
    target_dilation: int = 3
    init_dilation: float = 1.0
    max_dilation: float = 5.0
    sigma: float = 0.5
    local_samples: int = 4
    smooth: float = 1.5
    n_val: int = 256
    n_test: int = 512
    train: TrainConfig = field(default_factory=lambda: TrainConfig(
        epochs=1, batch_size=32, lr=0.02, log_every=10, val_every=50))
    batches_per_epoch: int = 400


def smooth_images(n: int, channels: int, size: int, width: float,
                  generator: torch.Generator) -> Tensor:
    """(n, channels, size, size) Gaussian-blurred white noise, standardised per image.

    ``width`` is the blur's standard deviation in pixels (0: white noise).
    """
    x = torch.randn(n, channels, size, size, generator=generator)
    if width > 0:
        r = int(3 * width + 0.5)
        t = torch.arange(-r, r + 1, dtype=x.dtype)
        k = torch.exp(-0.5 * (t / width) ** 2)
        k = (k / k.sum()).view(1, 1, -1)  # (1, 1, 2r+1)
        c = channels
        x = F.conv2d(F.pad(x, (r, r, 0, 0), mode="circular"),
                     k.view(1, 1, 1, -1).expand(c, 1, 1, 2 * r + 1), groups=c)
        x = F.conv2d(F.pad(x, (0, 0, r, r), mode="circular"),
                     k.view(1, 1, -1, 1).expand(c, 1, 2 * r + 1, 1), groups=c)
    std = x.flatten(1).std(1).clamp_min(1e-6).view(-1, 1, 1, 1)
    return x / std


@register_experiment("learn-dilation",
                     help="learn a convolution's dilation through its sparse index tuples")
class LearnDilation(Experiment):
    Config = LearnDilationConfig
    presets = {"full": {"train.epochs": 3, "size": 28}}

    def _check(self, config: LearnDilationConfig) -> None:
        if config.task != "synthetic":
            raise ValueError(f"task={config.task!r} is not implemented yet; only 'synthetic' is")
        if not 0 <= config.target_dilation <= config.max_dilation:
            raise ValueError(f"target_dilation must be in [0, max_dilation="
                             f"{config.max_dilation}], got {config.target_dilation}")

    def _target(self, config: LearnDilationConfig, ctx: RunContext) -> Tensor:
        c, k = config.channels, config.kernel_size
        return torch.randn(c, c, k, k, generator=ctx.generator("target"))

    def _model(self, config: LearnDilationConfig, ctx: RunContext) -> DilatedConv2d:
        c, s = config.channels, config.size
        return DilatedConv2d(c, c, s, s, config.kernel_size, dilation=config.init_dilation,
                             max_dilation=config.max_dilation, sigma=config.sigma,
                             local_samples=config.local_samples, bias=False).to(ctx.device)

    def _data(self, config: LearnDilationConfig, kernel: Tensor, n: int,
              g: torch.Generator) -> tuple[Tensor, Tensor]:
        x = smooth_images(n, config.channels, config.size, config.smooth, g)
        d = config.target_dilation
        if d == 0:
            return x, F.conv2d(x, kernel.sum((2, 3), keepdim=True))
        return x, F.conv2d(x, kernel, padding=(config.kernel_size - 1) // 2 * d, dilation=d)

    def run(self, config: LearnDilationConfig, ctx: RunContext) -> dict[str, Any]:
        self._check(config)
        kernel = self._target(config, ctx)
        model = self._model(config, ctx)
        with torch.no_grad():
            model.weight.copy_(torch.randn(model.weight.shape, generator=ctx.generator("init"))
                               * 0.1)
        source = SyntheticBatches(lambda b, g: self._data(config, kernel, b, g),
                                  config.train.batch_size, config.batches_per_epoch,
                                  seed=config.seed)
        vx, vy = (t.to(ctx.device) for t in self._data(config, kernel, config.n_val,
                                                        ctx.generator("val")))

        def loss_fn(m: nn.Module, batch: tuple[Tensor, ...]) -> tuple[Tensor, dict[str, float]]:
            assert isinstance(m, DilatedConv2d)
            x, y = batch
            return F.mse_loss(m(x), y), {"dilation": float(m.effective_dilation().detach())}

        def validate(m: nn.Module) -> dict[str, float]:
            assert isinstance(m, DilatedConv2d)
            return {"val_mse": float(F.mse_loss(m(vx), vy)),
                    "dilation": float(m.effective_dilation())}

        result = ctx.fit(model, loss_fn, source, config=config.train, stage="synthetic",
                         validate=validate, select="val_mse", mode="min")
        if ctx.is_main:
            self._plot(config, ctx)
        summary = self.evaluate(config, ctx, model)
        summary.update(train_seconds=result.train_seconds, best_step=result.best_step)
        return summary

    def evaluate(self, config: LearnDilationConfig, ctx: RunContext,
                 model: DilatedConv2d | None = None) -> dict[str, Any]:
        self._check(config)
        kernel = self._target(config, ctx)
        if model is None:
            model = self._model(config, ctx)
            ctx.load_best(model, "synthetic")
        model.eval()
        tx, ty = self._data(config, kernel, config.n_test, ctx.generator("test"))
        with torch.no_grad():
            mse = float(F.mse_loss(model(tx.to(ctx.device)), ty.to(ctx.device)))
            zero = float(ty.pow(2).mean())
        return {"final_dilation": float(model.effective_dilation().detach()),
                "target_dilation": config.target_dilation,
                "mse": mse,
                "mse_of_zero_prediction": zero,
                "init_dilation": config.init_dilation}

    def _plot(self, config: LearnDilationConfig, ctx: RunContext) -> None:
        from ..plotting import figure

        rows = [r for r in ctx.metrics() if r.get("stage") == "synthetic"
                and r.get("split") == "train" and "dilation" in r]
        fig, (ax, bx) = figure(1, 2, figsize=(9, 3.2))
        steps = [r["step"] for r in rows]
        ax.plot(steps, [r["dilation"] for r in rows], label="learned")
        ax.axhline(config.target_dilation, color="k", ls="--", lw=1, label="target")
        ax.set_xlabel("step")
        ax.set_ylabel("dilation")
        ax.legend()
        bx.semilogy(steps, [r["loss"] for r in rows])
        bx.set_xlabel("step")
        bx.set_ylabel("train MSE")
        fig.suptitle(f"learned dilation (seed {config.seed}, sigma {config.sigma})", fontsize=9)
        ctx.save_figure(fig, "dilation")
