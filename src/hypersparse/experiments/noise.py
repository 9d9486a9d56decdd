"""``noise``: robustness of sparse (k-winners) and dense CNNs to pixel noise (seed 003).

Protocol (PROTOCOLS.md, "Noise robustness"): every network is trained on the package's split
(validation selects the checkpoint, never test), then the test images get exactly
``floor(784 p)`` random pixels per image set to ``0.1307 + 2 * 0.3081`` for p = 0.0 ... 0.5; the
noise score is the number of correct predictions summed over the levels. The same noisy test
set (one torch generator per level and seed) is used for every network.

The forum's second protocol (``forum=true``): MLPs with ReLU, + dropout, + batch-norm and with
k-winners; each pixel is replaced with probability p by ``clamp(N(0, 1), 0, 1)``, p = 0.0 ... 0.8.

Summary keys are ``<network>/<key>`` with keys ``test_accuracy``, ``noise_score``,
``accuracy_at_0.5`` (and every other level ``accuracy_at_<p>``), ``val_accuracy``, ``params``.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..data import AugmentedBatches, augmentation, digits
from ..data.augment import check_augment_settings
from ..run import RunContext
from ..train import TensorBatches, TrainConfig
from .base import Experiment, register_experiment
from .common import accuracy, batched, classification_loss, count_parameters
from .numenta_nets import (
    FORUM_NETWORKS,
    MNIST_MEAN,
    MNIST_STD,
    NETWORKS,
    BoostConfig,
    build_network,
)

__all__ = ["NoiseConfig", "pixel_noise", "forum_noise", "noise_curve", "NoiseExperiment"]

NOISE_VALUE = MNIST_MEAN + 2 * MNIST_STD
PAPER_LEVELS = tuple(i / 20 for i in range(11))  # 0.0, 0.05, ..., 0.5
FORUM_LEVELS = (0.0, 0.05, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8)


def pixel_noise(
    images: Tensor,
    p: float,
    *,
    value: float = NOISE_VALUE,
    generator: torch.Generator | None = None,
) -> Tensor:
    """Set exactly ``floor(H*W*p)`` distinct random pixels of every image to ``value``.

    Args:
        images: (N, 1, H, W) in [0, 1] (not modified).
        p: fraction of pixels, in [0, 1].
        value: the bright value the paper uses (``0.1307 + 2 * 0.3081``).
        generator: torch RNG for the pixel choice.

    Shape:
        output: (N, 1, H, W).
    """
    if images.dim() != 4 or images.shape[1] != 1:
        raise ValueError(f"images must have shape (N, 1, H, W), got {tuple(images.shape)}")
    if not 0.0 <= p <= 1.0:
        raise ValueError(f"noise level p must be in [0, 1], got {p}")
    n, _, h, w = images.shape
    m = math.floor(h * w * p + 1e-9)  # guards 784 * 0.35 style float error, exact otherwise
    out = images.reshape(n, h * w).clone()  # (N, H*W)
    if m > 0:
        keys = torch.rand(n, h * w, generator=generator).to(images.device)
        idx = keys.topk(m, dim=1).indices  # (N, m) distinct pixels per image
        out.scatter_(1, idx, value)
    return out.view(n, 1, h, w)  # (N, 1, H, W)


def forum_noise(images: Tensor, p: float, *, generator: torch.Generator | None = None) -> Tensor:
    """Replace each pixel with probability ``p`` by ``clamp(N(0, 1), 0, 1)`` (seed 003's table).

    Shape:
        images: (N, 1, H, W) in [0, 1]; output: same.
    """
    if not 0.0 <= p <= 1.0:
        raise ValueError(f"noise level p must be in [0, 1], got {p}")
    hit = torch.rand(images.shape, generator=generator) < p
    noise = torch.randn(images.shape, generator=generator).clamp_(0.0, 1.0)
    return torch.where(hit.to(images.device), noise.to(images.device), images)


def noise_curve(
    model: nn.Module, images: Tensor, labels: Tensor, levels: tuple[float, ...],
    noisy: Any, batch_size: int = 1000,
) -> list[int]:
    """Correct predictions of ``model`` (in eval mode) on ``noisy(images, level_index, p)``."""
    model.eval()
    correct = []
    for i, p in enumerate(levels):
        x = noisy(images, i, p)
        logits = batched(model, x, batch_size)
        correct.append(int((logits.argmax(-1) == labels).sum()))
    return correct


@dataclass
class NoiseConfig:
    seed: int = 0
    dataset: Literal["mnist", "fashion"] = "mnist"
    networks: tuple[str, ...] = NETWORKS
    forum: bool = True
    forum_networks: tuple[str, ...] = FORUM_NETWORKS
    # Dense CNNs (paper: SGD, momentum 0.9, lr 0.01).
    train: TrainConfig = field(default_factory=lambda: TrainConfig(
        epochs=1, batch_size=64, optimizer="sgd", lr=0.01, momentum=0.9))
    # Sparse CNNs (paper: SGD without momentum, lr 0.02 for CNN-2, 0.8 lr decay per epoch).
    sparse_train: TrainConfig = field(default_factory=lambda: TrainConfig(
        epochs=1, batch_size=64, optimizer="sgd", lr=0.02, momentum=0.0, schedule="step",
        lr_decay=0.8))
    sparse_cnn1_lr: float = 0.01
    first_epoch_batch_size: int = 4  # sparse nets' first epoch (paper); 0 = no separate epoch
    # How many of the sparse nets' epochs run at first_epoch_batch_size (constant lr), before
    # the rest at sparse_train.batch_size from lr * lr_decay. The paper's one batch-4 epoch is
    # 60,000 digits (15,000 steps); on 9,000 training digits that is ~7 epochs. 1 = as before.
    sparse_first_epochs: int = 1
    # The lr of that small-batch phase; 0 = the net's own lr (sparse_train.lr / sparse_cnn1_lr).
    sparse_first_lr: float = 0.0
    forum_train: TrainConfig = field(default_factory=lambda: TrainConfig(
        epochs=1, batch_size=64, optimizer="sgd", lr=0.01, momentum=0.9))
    boost: BoostConfig = field(default_factory=BoostConfig)
    levels: tuple[float, ...] = PAPER_LEVELS
    forum_levels: tuple[float, ...] = FORUM_LEVELS
    eval_batch_size: int = 1000
    eval_limit: int = 0  # evaluate on the first N val/test images only (smoke tests); 0 = all
    # Training-batch augmentation: the same transform and batch order for every network, offsets
    # drawn per network (never applied to val/test or the noise evaluation): "none" (default),
    # "shift" (random translation by up to augment_shift pixels, zero fill) or "affine"
    # (+ rotation <= 10 deg, scale 0.9-1.1).
    augment: Literal["none", "shift", "affine"] = "none"
    augment_shift: int = 2

    def __post_init__(self) -> None:
        for n in self.networks:
            if n not in NETWORKS:
                raise ValueError(f"unknown network {n!r}; valid: {', '.join(NETWORKS)}")
        for n in self.forum_networks:
            if n not in FORUM_NETWORKS:
                raise ValueError(f"unknown forum network {n!r}; valid: {', '.join(FORUM_NETWORKS)}")
        check_augment_settings(self.augment, self.augment_shift)
        if self.eval_limit < 0:
            raise ValueError(f"eval_limit must be >= 0, got {self.eval_limit}")
        if self.first_epoch_batch_size < 0:
            raise ValueError(
                f"first_epoch_batch_size must be >= 0, got {self.first_epoch_batch_size}")
        if self.sparse_first_epochs < 1:
            raise ValueError(
                f"sparse_first_epochs must be an integer >= 1, got {self.sparse_first_epochs}")
        if not (self.sparse_first_lr >= 0.0 and math.isfinite(self.sparse_first_lr)):
            raise ValueError(
                f"sparse_first_lr must be a finite number >= 0 (0 = the net's lr), "
                f"got {self.sparse_first_lr}")
        for p in (*self.levels, *self.forum_levels):
            if not 0.0 <= p <= 1.0:
                raise ValueError(f"noise levels must be in [0, 1], got {p}")


def _stages(config: NoiseConfig, name: str) -> list[tuple[str, TrainConfig]]:
    """``(stage, train config)`` per training stage of network ``name``.

    Sparse nets (with ``first_epoch_batch_size`` > 0): a stage ``<net>-first-epoch`` of
    ``min(sparse_first_epochs, epochs)`` epochs at ``first_epoch_batch_size`` and constant lr
    (``sparse_first_lr``, or the net's lr), then the remaining epochs at the net's batch size
    with the lr starting one decay step below the net's lr (the paper's epoch 2).
    """
    if name.startswith("mlp_"):
        return [(name, config.forum_train)]
    if not name.startswith("sparse_"):
        return [(name, config.train)]
    tc = config.sparse_train
    if name == "sparse_cnn1":
        tc = dataclasses.replace(tc, lr=config.sparse_cnn1_lr)
    if not config.first_epoch_batch_size:
        return [(name, tc)]
    n_first = min(config.sparse_first_epochs, tc.epochs)
    first = dataclasses.replace(tc, epochs=n_first, max_steps=None,
                                batch_size=config.first_epoch_batch_size, schedule="constant",
                                lr=config.sparse_first_lr or tc.lr)
    if tc.epochs == n_first:
        return [(name, first)]
    decay = tc.lr_decay if tc.schedule in ("step", "exponential") else 1.0
    rest = dataclasses.replace(tc, epochs=tc.epochs - n_first, lr=tc.lr * decay)
    return [(f"{name}-first-epoch", first), (name, rest)]


@register_experiment("noise", help="k-winners sparse vs dense CNNs under pixel noise (seed 003)")
class NoiseExperiment(Experiment):
    """Train the paper's sparse/dense CNN-1/2 (and the forum's MLPs), score them under noise."""

    Config = NoiseConfig
    presets = {"full": {
        "train.epochs": 15,
        "sparse_train.epochs": 15,
        "forum_train.epochs": 10,
    }}

    def _model(self, config: NoiseConfig, ctx: RunContext, name: str) -> nn.Module:
        g = ctx.generator("mask", name)
        return build_network(name, config.boost, generator=g).to(ctx.device)

    def _names(self, config: NoiseConfig) -> list[str]:
        return list(config.networks) + (list(config.forum_networks) if config.forum else [])

    def run(self, config: NoiseConfig, ctx: RunContext) -> dict[str, Any]:
        train = digits(config.dataset, "train")
        val = digits(config.dataset, "val")
        tx, ty = train.float(), train.labels
        vx, vy = val.float().to(ctx.device), val.labels.to(ctx.device)

        def validate(m: nn.Module) -> dict[str, float]:
            logits = batched(m, vx, config.eval_batch_size)
            return {"val_loss": float(F.cross_entropy(logits, vy)),
                    "val_accuracy": accuracy(logits, vy)}

        fits: dict[str, Any] = {}
        for name in self._names(config):
            model = self._model(config, ctx, name)
            seconds = 0.0
            for stage, tc in _stages(config, name):
                source = _training_batches(config, tx, ty, tc.batch_size, stage)
                result = ctx.fit(model, classification_loss, source, config=tc, stage=stage,
                                 validate=validate, select="val_accuracy", mode="max")
                seconds += result.train_seconds
            fits[name] = (result.best_step, seconds)
        summary = self.evaluate(config, ctx)
        for name, (best_step, seconds) in fits.items():
            summary[f"{name}/best_step"] = best_step
            summary[f"{name}/train_seconds"] = seconds
        self._plot(config, ctx, summary)
        return summary

    def evaluate(self, config: NoiseConfig, ctx: RunContext) -> dict[str, Any]:
        test = digits(config.dataset, "test")
        val = digits(config.dataset, "val")
        n = config.eval_limit or None
        x, y = test.float()[:n].to(ctx.device), test.labels[:n].to(ctx.device)
        vx, vy = val.float()[:n].to(ctx.device), val.labels[:n].to(ctx.device)
        n_test = y.shape[0]

        def paper(images: Tensor, i: int, p: float) -> Tensor:
            return pixel_noise(images, p, generator=ctx.generator("pixel-noise", i))

        def forum(images: Tensor, i: int, p: float) -> Tensor:
            return forum_noise(images, p, generator=ctx.generator("forum-noise", i))

        out: dict[str, Any] = {"test_size": n_test, "data_source": test.source}
        for name in self._names(config):
            stage = _stages(config, name)[-1][0]
            model = ctx.load_best(self._model(config, ctx, name), stage=stage)
            model.eval()
            forum_net = name.startswith("mlp_")
            levels = config.forum_levels if forum_net else config.levels
            correct = noise_curve(model, x, y, levels, forum if forum_net else paper,
                                  config.eval_batch_size)
            out[f"{name}/val_accuracy"] = accuracy(batched(model, vx, config.eval_batch_size), vy)
            out[f"{name}/test_accuracy"] = correct[0] / n_test if levels[0] == 0.0 else None
            out[f"{name}/noise_score"] = sum(correct)
            for p, c in zip(levels, correct):
                out[f"{name}/accuracy_at_{p:g}"] = c / n_test
            out[f"{name}/params"] = count_parameters(model)
            out[f"{name}/nonzero_weights"] = _nonzero_weights(model)
        if "sparse_cnn2/noise_score" in out and "dense_cnn2/noise_score" in out:
            out["sparse_vs_dense_cnn2_noise_score_ratio"] = (
                out["sparse_cnn2/noise_score"] / max(out["dense_cnn2/noise_score"], 1))
        return out

    def _plot(self, config: NoiseConfig, ctx: RunContext, summary: dict[str, Any]) -> None:
        from ..plotting import figure

        groups = [("noise", config.networks, config.levels, "pixels set to a bright value")]
        if config.forum:
            groups.append(("noise_forum", config.forum_networks, config.forum_levels,
                           "pixels replaced by clamp(N(0,1),0,1)"))
        for fname, names, levels, title in groups:
            if not names:
                continue
            fig, ax = figure(figsize=(5.5, 4))
            for name in names:
                acc = [100 * summary[f"{name}/accuracy_at_{p:g}"] for p in levels]
                ax.plot(levels, acc, marker="o", ms=3,
                        label=f"{name} (score {summary[f'{name}/noise_score']})")
            ax.set(xlabel="noise level p", ylabel="test accuracy (%)",
                   title=f"{config.dataset}: {title}")
            ax.legend(fontsize=8)
            ax.grid(alpha=0.3)
            ctx.save_figure(fig, fname)


def _training_batches(
    config: NoiseConfig, tx: Tensor, ty: Tensor, batch_size: int, stage: str
) -> TensorBatches | AugmentedBatches:
    """The training batches of one stage: the same order for every network (``config.seed``),
    augmented with ``config.augment`` from a generator seeded by ``(seed, stage)``."""
    source = TensorBatches((tx, ty), batch_size, seed=config.seed)
    transform = augmentation(config.augment, max_shift=config.augment_shift)
    if transform is None:
        return source
    from ..train import derive_seed

    return AugmentedBatches(source, transform, seed=derive_seed(config.seed, "augment", stage))


def _nonzero_weights(model: nn.Module) -> int:
    return sum(int((p != 0).sum()) for n, p in model.named_parameters() if n.endswith("weight"))
