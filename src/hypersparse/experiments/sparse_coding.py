"""``sparse-coding``: deep sparse coding features on MNIST / Fashion-MNIST (seed 004).

Pipeline (every stage fitted on the train split only; every choice selected on val):

1. layer 1: a dictionary of ``C p^2`` atoms learned online on random training patches; every
   patch of every image is FISTA-coded (non-negative) -> code map (B, M1, 12, 12);
2. local spatial max pooling (4x4 windows, the seed's ``max(y_i1..y_i16)``) -> (B, M1, 5, 5);
3. dimensionality reduction ``W y`` per cell (M1 -> E) trained with seed 004's contrastive
   loss on unsupervised spatial pairs (neighbouring cells of one image similar, cells of two
   images dissimilar) -> (B, E, 5, 5);
4. layer 2: a second dictionary on 3x3xE patches of the reduced map, FISTA codes, max pooling;
5. a linear (softmax) classifier.

The same linear classifier, trained by the same loop with the same settings, reads the raw
pixels, the pooled layer-1 codes, a random projection of them, the contrastive projection, and
the layer-2 codes, so every stage's contribution is measured in one harness.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..coding import (
    ContrastiveProjection,
    SparseCodingLayer,
    contrastive_loss,
    extract_patches,
    learn_dictionary,
    local_max_pool,
    spatial_pairs,
)
from ..data import digits
from ..io import load_checkpoint, save_checkpoint
from ..run import RunContext
from ..train import TensorBatches, TrainConfig
from .base import Experiment, register_experiment
from .common import accuracy


@dataclass
class LayerConfig:
    """One sparse coding layer: dictionary size, patches, lasso weight, encoder and pooling."""

    n_atoms: int = 64
    patch_size: int = 6
    stride: int = 2
    alpha: float = 0.3
    n_iter: int = 15
    pool_size: int = 4
    pool_stride: int = 2
    dict_patches: int = 30000
    dict_epochs: int = 1
    dict_batch: int = 256
    dict_encode_iter: int = 30


@dataclass
class SparseCodingConfig:
    seed: int = 0
    dataset: Literal["mnist", "fashion"] = "mnist"
    layer1: LayerConfig = field(default_factory=LayerConfig)
    layer2: LayerConfig = field(default_factory=lambda: LayerConfig(
        n_atoms=128, patch_size=3, stride=1, alpha=0.5, n_iter=15, pool_size=2, pool_stride=1,
        dict_patches=30000, dict_epochs=1, dict_batch=256,
    ))
    reduce_dim: int = 24
    beta_per_dim: float = 2.0
    pairs: Literal["spatial", "label"] = "spatial"
    n_pairs: int = 100000
    chunk_images: int = 500
    reduce_train: TrainConfig = field(
        default_factory=lambda: TrainConfig(epochs=2, batch_size=512, lr=3e-3, log_every=20)
    )
    train: TrainConfig = field(
        default_factory=lambda: TrainConfig(epochs=15, batch_size=128, lr=1e-3, log_every=50)
    )


class LinearClassifier(nn.Module):
    """Standardise features with train-split statistics (buffers), then one linear layer."""

    mean: Tensor
    std: Tensor

    def __init__(self, n_features: int, n_classes: int = 10) -> None:
        super().__init__()
        self.register_buffer("mean", torch.zeros(n_features))
        self.register_buffer("std", torch.ones(n_features))
        self.linear = nn.Linear(n_features, n_classes)

    @torch.no_grad()
    def fit_scaler(self, x: Tensor) -> None:
        self.mean.copy_(x.mean(0))
        self.std.copy_(x.std(0).clamp_min(1e-3))

    def forward(self, x: Tensor) -> Tensor:
        return self.linear((x - self.mean) / self.std)


def _layer(cfg: LayerConfig, in_channels: int) -> SparseCodingLayer:
    return SparseCodingLayer(in_channels, cfg.n_atoms, cfg.patch_size, stride=cfg.stride,
                             alpha=cfg.alpha, n_iter=cfg.n_iter, nonneg=True, chunk=8192)


@torch.no_grad()
def _encode(layer: SparseCodingLayer, cfg: LayerConfig, x: Tensor, chunk: int) -> tuple[Tensor,
                                                                                         float]:
    """Pooled codes of ``x`` (in chunks of images) and the codes' density before pooling."""
    pooled, nonzero, total = [], 0, 0
    for i in range(0, x.shape[0], chunk):
        codes = layer(x[i : i + chunk])  # (b, M, H', W')
        nonzero += int((codes != 0).sum())
        total += codes.numel()
        pooled.append(local_max_pool(codes, cfg.pool_size, cfg.pool_stride))
    return torch.cat(pooled), nonzero / max(total, 1)


def _fit_dictionary(layer: SparseCodingLayer, cfg: LayerConfig, x: Tensor, ctx: RunContext,
                    name: str, extra: dict[str, Any] | None = None) -> None:
    """Learn (or on resume, reload) the layer's dictionary from random training patches."""
    path = ctx.run_dir / "checkpoints" / name / "best.pt"
    if ctx.resume and path.exists():
        layer.load_state_dict(load_checkpoint(path)["model"])
        return
    g = ctx.generator("patches", name)
    patches = extract_patches(x, cfg.patch_size, cfg.stride)  # (B, P, N)
    flat = patches.reshape(-1, patches.shape[-1])  # (B*P, N)
    pick = torch.randperm(flat.shape[0], generator=g)[: cfg.dict_patches]
    res = learn_dictionary(flat[pick], cfg.n_atoms, cfg.alpha, n_iter=cfg.dict_epochs,
                           batch_size=cfg.dict_batch, nonneg=True, encode_iter=cfg.dict_encode_iter,
                           generator=g)
    layer.set_dictionary(res.dictionary)
    for step, value in enumerate(res.history, 1):
        ctx.log({"stage": name, "split": "train", "step": step, "dict_objective": value})
    if ctx.is_main:
        save_checkpoint({"model": layer.state_dict(), "history": res.history, **(extra or {})},
                        path)


@register_experiment("sparse-coding", help="deep sparse coding features + linear classifier")
class SparseCoding(Experiment):
    """Deep sparse coding (seed 004): codes -> local max pooling -> contrastive reduction ->
    second coding layer -> linear classifier, with every stage's linear accuracy."""

    Config = SparseCodingConfig
    presets = {
        "full": {
            "layer1.n_atoms": 128, "layer1.n_iter": 30, "layer1.dict_patches": 100000,
            "layer1.dict_epochs": 3, "layer2.n_atoms": 256, "layer2.n_iter": 30,
            "layer2.dict_epochs": 3, "reduce_dim": 32, "reduce_train.epochs": 5,
            "train.epochs": 40, "train.schedule": "cosine",
        }
    }

    # ------------------------------------------------------------------ stages
    def _features(self, config: SparseCodingConfig, ctx: RunContext, images: dict[str, Tensor],
                  reduce: ContrastiveProjection | None, fit: bool, train_labels: Tensor | None
                  ) -> tuple[dict[str, dict[str, Tensor]], dict[str, float]]:
        """Features of every split at every stage (fitting dictionaries and the reduction on the
        train split when ``fit``)."""
        l1c, l2c = config.layer1, config.layer2
        layer1 = _layer(l1c, images["val"].shape[1])
        if fit:
            _fit_dictionary(layer1, l1c, images["train"], ctx, "layer1")
        else:
            layer1.load_state_dict(load_checkpoint(ctx.run_dir / "checkpoints/layer1/best.pt")
                                   ["model"])
        self.layer1 = layer1
        pooled1, density1 = {}, {}
        for split, x in images.items():
            pooled1[split], density1[split] = _encode(layer1, l1c, x, config.chunk_images)
        # contrastive reduction on pooled cells
        m1 = l1c.n_atoms
        if reduce is None:
            scale = pooled1["train"].pow(2).mean().sqrt().clamp_min(1e-6)
            reduce = ContrastiveProjection(m1, config.reduce_dim)
            with torch.no_grad():
                reduce.weight.copy_(torch.randn(reduce.weight.shape, generator=ctx.generator(
                    "reduce-init")) / m1**0.5)
            assert train_labels is not None
            self._train_reduction(config, ctx, reduce, pooled1, float(scale), train_labels)
        reduce.eval()
        rand = ContrastiveProjection(m1, config.reduce_dim)
        with torch.no_grad():
            rand.weight.copy_(torch.randn(rand.weight.shape, generator=ctx.generator("random-proj"))
                              / m1**0.5)
        reduced: dict[str, Tensor] = {}
        randomised: dict[str, Tensor] = {}
        with torch.no_grad():
            for split, p in pooled1.items():
                reduced[split] = reduce(p)  # (B, E, h, w)
                randomised[split] = rand(p)
        # layer 2 on the reduced map, rescaled to unit RMS (train statistics, kept in the
        # layer-2 checkpoint so evaluation needs no training images)
        layer2 = _layer(l2c, config.reduce_dim)
        l2_path = ctx.run_dir / "checkpoints" / "layer2" / "best.pt"
        if fit:
            rms = float(reduced["train"].pow(2).mean().sqrt().clamp_min(1e-6))
            _fit_dictionary(layer2, l2c, reduced["train"] / rms, ctx, "layer2", {"rms": rms})
        else:
            ckpt = load_checkpoint(l2_path)
            layer2.load_state_dict(ckpt["model"])
            rms = float(ckpt["rms"])
        scaled = {s: r / rms for s, r in reduced.items()}
        pooled2, density2 = {}, {}
        for split, r in scaled.items():
            pooled2[split], density2[split] = _encode(layer2, l2c, r, config.chunk_images)
        feats = {
            "raw": {s: x.flatten(1) for s, x in images.items()},
            "layer1": {s: p.flatten(1) for s, p in pooled1.items()},
            "random": {s: p.flatten(1) for s, p in randomised.items()},
            "reduced": {s: p.flatten(1) for s, p in reduced.items()},
            "deep": {s: p.flatten(1) for s, p in pooled2.items()},
        }
        densities = {f"code_density_layer1_{s}": d for s, d in density1.items()}
        densities.update({f"code_density_layer2_{s}": d for s, d in density2.items()})
        return feats, densities

    def _train_reduction(self, config: SparseCodingConfig, ctx: RunContext,
                         reduce: ContrastiveProjection, pooled: dict[str, Tensor], scale: float,
                         train_labels: Tensor) -> None:
        """Fit ``W`` with the contrastive loss on pairs of pooled cells (train split)."""
        beta = config.beta_per_dim * config.reduce_dim

        def cells(p: Tensor) -> Tensor:
            return (p / scale).permute(0, 2, 3, 1).reshape(-1, p.shape[1])  # (B*h*w, M)

        tr, va = cells(pooled["train"]), cells(pooled["val"])
        b, _, h, w = pooled["train"].shape
        labels = train_labels if config.pairs == "label" else None
        i, j, l = spatial_pairs(b, h, w, config.n_pairs, labels=labels,
                                generator=ctx.generator("pairs"))
        vb = pooled["val"].shape[0]
        vi, vj, vl = spatial_pairs(vb, h, w, 20000, generator=ctx.generator("val-pairs"))
        source = TensorBatches((i, j, l), config.reduce_train.batch_size, seed=config.seed)

        def loss_fn(model: nn.Module, batch: tuple[Tensor, ...]) -> Tensor:
            bi, bj, bl = batch
            return contrastive_loss(model(tr[bi]), model(tr[bj]), bl, beta)

        def validate(model: nn.Module) -> dict[str, float]:
            return {"val_loss": float(contrastive_loss(model(va[vi]), model(va[vj]), vl, beta))}

        reduce.train()
        ctx.fit(reduce, loss_fn, source, config=config.reduce_train, stage="reduce",
                validate=validate, select="val_loss", mode="min")
        # fold the input scaling into W, so reduce() applies to unscaled pooled codes
        with torch.no_grad():
            reduce.weight.div_(scale)
        if ctx.is_main:
            save_checkpoint({"model": reduce.state_dict()},
                            ctx.run_dir / "checkpoints" / "reduce" / "scaled.pt")

    def _classify(self, config: SparseCodingConfig, ctx: RunContext, name: str,
                  feats: dict[str, Tensor], labels: dict[str, Tensor]) -> LinearClassifier:
        model = LinearClassifier(feats["train"].shape[1])
        model.fit_scaler(feats["train"])
        source = TensorBatches((feats["train"], labels["train"]), config.train.batch_size,
                               seed=config.seed)
        vx, vy = feats["val"], labels["val"]

        def loss_fn(m: nn.Module, batch: tuple[Tensor, ...]) -> tuple[Tensor, dict[str, float]]:
            x, y = batch
            logits = m(x)
            return F.cross_entropy(logits, y), {"accuracy": accuracy(logits.detach(), y)}

        def validate(m: nn.Module) -> dict[str, float]:
            logits = m(vx)
            return {"val_loss": float(F.cross_entropy(logits, vy)),
                    "val_accuracy": accuracy(logits, vy)}

        ctx.fit(model, loss_fn, source, config=config.train, stage=f"linear-{name}",
                validate=validate, select="val_accuracy", mode="max")
        return model

    # ------------------------------------------------------------------ entry points
    def run(self, config: SparseCodingConfig, ctx: RunContext) -> dict[str, Any]:
        data = {s: digits(config.dataset, s) for s in ("train", "val", "test")}
        images = {s: d.float() for s, d in data.items()}
        labels = {s: d.labels for s, d in data.items()}
        feats, densities = self._features(config, ctx, images, None, True, labels["train"])
        summary: dict[str, Any] = {}
        for name, f in feats.items():
            model = self._classify(config, ctx, name, f, labels)
            model.eval()
            with torch.no_grad():
                for split in ("val", "test"):
                    summary[f"{name}_linear_{split}_accuracy"] = accuracy(model(f[split]),
                                                                          labels[split])
            summary[f"{name}_features"] = f["train"].shape[1]
        summary["test_accuracy"] = summary["deep_linear_test_accuracy"]
        summary["raw_pixels_linear_accuracy"] = summary["raw_linear_test_accuracy"]
        summary["code_density"] = densities["code_density_layer1_test"]
        summary.update(densities)
        summary["data_source"] = data["test"].source
        self._plot_atoms(ctx, self.layer1, config.layer1)
        return summary

    def evaluate(self, config: SparseCodingConfig, ctx: RunContext) -> dict[str, Any]:
        data = {s: digits(config.dataset, s) for s in ("val", "test")}
        images = {s: d.float() for s, d in data.items()}
        labels = {s: d.labels for s, d in data.items()}
        reduce = ContrastiveProjection(config.layer1.n_atoms, config.reduce_dim)
        reduce.load_state_dict(load_checkpoint(ctx.run_dir / "checkpoints/reduce/scaled.pt")
                               ["model"])
        feats, densities = self._features(config, ctx, images, reduce, False, None)
        out: dict[str, Any] = {}
        for name, f in feats.items():
            model = ctx.load_best(LinearClassifier(f["val"].shape[1]), f"linear-{name}")
            model.eval()
            with torch.no_grad():
                for split in ("val", "test"):
                    out[f"{name}_linear_{split}_accuracy"] = accuracy(model(f[split]),
                                                                      labels[split])
        out["test_accuracy"] = out["deep_linear_test_accuracy"]
        out["raw_pixels_linear_accuracy"] = out["raw_linear_test_accuracy"]
        out["code_density"] = densities["code_density_layer1_test"]
        return out

    def _plot_atoms(self, ctx: RunContext, layer: SparseCodingLayer, cfg: LayerConfig) -> None:
        from ..plotting import figure

        atoms = layer.dictionary.reshape(-1, cfg.patch_size, cfg.patch_size)  # (M, p, p)
        n = atoms.shape[0]
        cols = min(16, n)
        rows = (n + cols - 1) // cols
        fig, axes = figure(rows, cols, figsize=(cols * 0.7, rows * 0.7), squeeze=False)
        for k, ax in enumerate(axes.flat):
            ax.axis("off")
            if k < n:
                a = atoms[k]
                ax.imshow(a.cpu().numpy(), cmap="gray", vmin=float(a.min()), vmax=float(a.max()))
        fig.suptitle(f"layer-1 atoms ({n} of {cfg.patch_size}x{cfg.patch_size})", fontsize=9)
        ctx.save_figure(fig, "atoms")
