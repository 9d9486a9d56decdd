"""``sort-permutation``: an adaptive hyperlayer learns, per input, the permutation sorting it
(seed 001, "Learning the 3-by-3 sorting transformation"; issue 6).

An MLP hypernetwork sees a vector of n reals and emits n index tuples with values fixed to 1
(:class:`~hypersparse.nn.SortNet`); the loss is the MSE between the layer's output and the sorted
input. Evaluation is in eval mode (indices ``round(mu)``, no sampling) on 10,000 fresh standard
normal vectors drawn from a generator fixed by n alone (the same set for every seed):
``exact_accuracy`` (the output equals the sorted input exactly), ``element_accuracy`` (fraction
of positions equal), ``not_permutation`` (fraction of inputs whose emitted index tuples are not
a permutation matrix). The tuple deviation is fixed and annealed geometrically from
``sigma_start * n`` to ``sigma_end`` (index units) over the first ``sigma_anneal`` of training.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..nn.sortnet import SortNet, is_permutation
from ..run import RunContext
from ..train import SyntheticBatches, TrainConfig, derive_seed
from .base import Experiment, register_experiment
from .common import count_parameters

__all__ = ["SortPermutationConfig", "SortPermutation", "full_batches", "sort_metrics"]

#: Batches of 128 in the 2019 runs (issue 6): 30k for n = 4, 60k for n = 8, 120k for n = 16.
FULL_BATCHES = {4: 30_000, 8: 60_000, 16: 120_000}
#: Synthetic batches per "epoch": validation and checkpoints happen at every epoch end.
STEPS_PER_EPOCH = 500


def full_batches(n: int) -> int:
    """The original budget for n: 30k batches up to n = 4, doubling per doubling of n."""
    return 30_000 * 2 ** max(0, math.ceil(math.log2(max(n, 1) / 4)))


@dataclass
class SortPermutationConfig:
    seed: int = 0
    n: int = 3
    learn: Literal["output", "input", "both"] = "output"
    #: "pairwise": permutation-equivariant PairwiseNet; "mlp": a plain MLP on the vector
    hypernet: Literal["pairwise", "mlp"] = "pairwise"
    hidden: tuple[int, ...] = (32, 32)
    #: learn the deviations with the hypernetwork instead of the fixed schedule below
    learned_sigma: bool = False
    #: the deviation starts at sigma_start * n index units (reaching every row) ...
    sigma_start: float = 0.15
    #: ... and ends at sigma_end index units
    sigma_end: float = 0.1
    sigma_anneal: float = 0.6
    global_samples: int = 4
    local_samples: int = 4
    #: "full": train.max_steps = the original budget for n (30k/60k/120k for n = 4/8/16)
    budget: Literal["default", "full"] = "default"
    val_size: int = 2_000
    test_size: int = 10_000
    plot_inputs: int = 4
    plot_points: int = 5
    train: TrainConfig = field(
        default_factory=lambda: TrainConfig(
            epochs=8,
            batch_size=128,
            lr=2e-3,
            schedule="cosine",
            grad_clip=1.0,
            log_every=100,
        )
    )


def sort_metrics(y: Tensor, x: Tensor, rows: Tensor, cols: Tensor) -> dict[str, float]:
    """Exact, element and not-a-permutation rates of outputs ``y`` for inputs ``x``.

    Shape:
        y, x, rows, cols: (B, n).
    """
    target = x.sort(-1).values  # (B, n)
    equal = y == target
    perm = is_permutation(rows, cols, x.shape[1])
    return {
        "exact_accuracy": float(equal.all(-1).float().mean()),
        "element_accuracy": float(equal.float().mean()),
        "not_permutation": float((~perm).float().mean()),
        "mse": float(F.mse_loss(y, target)),
    }


def _vectors(n: int, size: int, split: str) -> Tensor:
    # fixed by (n, split) alone, so every seed and config is scored on the same vectors
    g = torch.Generator().manual_seed(derive_seed("sort-permutation", split, n))
    return torch.randn(size, n, generator=g)


def _sigma_at(config: SortPermutationConfig, step: int, total: int) -> float:
    frac = min(1.0, step / max(1.0, config.sigma_anneal * total))
    start = config.sigma_start * config.n
    return start * (config.sigma_end / start) ** frac


@register_experiment("sort-permutation", help="adaptive hyperlayer learns sorting permutations")
class SortPermutation(Experiment):
    """Learn to sort n reals with one adaptive sparse hyperlayer (seed 001)."""

    Config = SortPermutationConfig
    presets = {"full": {"budget": "full", "hidden": (64, 64)}}

    def _model(self, config: SortPermutationConfig, ctx: RunContext) -> SortNet:
        return SortNet(
            config.n,
            hidden=config.hidden,
            learn=config.learn,
            hypernet=config.hypernet,
            sigma=None if config.learned_sigma else config.sigma_start * config.n,
            global_samples=config.global_samples,
            local_samples=config.local_samples,
            device=ctx.device,
        )

    @staticmethod
    def _steps(config: SortPermutationConfig) -> int:
        if config.train.max_steps is not None:
            return config.train.max_steps
        if config.budget == "full":
            return full_batches(config.n)
        return config.train.epochs * STEPS_PER_EPOCH

    def _evaluate_on(self, model: SortNet, x: Tensor) -> dict[str, float]:
        was = model.training
        model.eval()
        with torch.no_grad():
            ys, rs, cs = [], [], []
            for xb in x.split(5000):
                ys.append(model(xb))
                r, c = model.indices(xb)
                rs.append(r)
                cs.append(c)
        model.train(was)
        return sort_metrics(torch.cat(ys), x, torch.cat(rs), torch.cat(cs))

    def run(self, config: SortPermutationConfig, ctx: RunContext) -> dict[str, Any]:
        if config.n < 2:
            raise ValueError(f"n must be >= 2, got {config.n}")
        if not 0 < config.sigma_end <= config.sigma_start * config.n:
            raise ValueError("need 0 < sigma_end <= sigma_start * n, got "
                             f"{config.sigma_end}, {config.sigma_start} * {config.n}")
        n, total = config.n, self._steps(config)
        train_cfg = config.train
        if train_cfg.max_steps is None:
            from dataclasses import replace

            train_cfg = replace(train_cfg, max_steps=total)
        model = self._model(config, ctx)
        per_epoch = STEPS_PER_EPOCH

        def make(b: int, g: torch.Generator) -> tuple[Tensor, Tensor]:
            x = torch.randn(b, n, generator=g)
            return x, x.sort(-1).values

        source = SyntheticBatches(make, train_cfg.batch_size, per_epoch, seed=config.seed)
        val_x = _vectors(n, config.val_size, "val").to(ctx.device)
        plot_x = _vectors(n, config.plot_inputs, "plot").to(ctx.device)
        plot_steps = sorted({round(total * (i / max(1, config.plot_points - 1)) ** 2)
                             for i in range(config.plot_points)})
        snapshots: list[tuple[int, Tensor, Tensor, Tensor]] = []

        def snapshot(step: int, m: SortNet) -> None:
            snapshots.append((step, *_soft_matrices(m, plot_x)))

        def loss_fn(m: nn.Module, batch: tuple[Tensor, ...]) -> tuple[Tensor, dict[str, float]]:
            x, t = batch
            return F.mse_loss(m(x), t), {}

        def callback(step: int, m: nn.Module, metrics: dict[str, float]) -> None:
            if not config.learned_sigma:
                model.set_sigma(_sigma_at(config, step, total))
            if step in plot_steps:
                snapshot(step, model)

        if 0 in plot_steps and not ctx.resume:
            snapshot(0, model)
        if not config.learned_sigma:
            model.set_sigma(_sigma_at(config, 0, total))
        result = ctx.fit(
            model,
            loss_fn,
            source,
            config=train_cfg,
            validate=lambda m: {f"val_{k}": v for k, v in self._evaluate_on(model, val_x).items()},
            select="val_exact_accuracy",
            mode="max",
            callbacks=[callback],
        )
        if snapshots:
            _plot_snapshots(ctx, snapshots, plot_x)
        summary = self.evaluate(config, ctx, model)
        summary.update(
            batches=result.steps,
            best_step=result.best_step,
            val_exact_accuracy=result.best,
            train_seconds=result.train_seconds,
        )
        return summary

    def evaluate(
        self, config: SortPermutationConfig, ctx: RunContext, model: SortNet | None = None
    ) -> dict[str, Any]:
        if model is None:
            model = self._model(config, ctx)
            ctx.load_best(model)
        x = _vectors(config.n, config.test_size, "test").to(ctx.device)
        out: dict[str, Any] = self._evaluate_on(model, x)
        out.update(n=config.n, learn=config.learn, hypernet=config.hypernet,
                   test_vectors=config.test_size, params=count_parameters(model),
                   batches=self._steps(config))
        return out


@torch.no_grad()
def _soft_matrices(model: SortNet, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Training-mode weight matrices (one fixed sample), tuple means and deviations."""
    was = model.training
    model.train()
    conn = model.connections(x, generator=torch.Generator().manual_seed(0))
    n = model.n
    dense = torch.zeros(x.shape[0], n, n)
    batch = conn.batch if conn.batch is not None else torch.zeros_like(conn.indices[:, 0])
    dense.index_put_((batch.cpu(), conn.indices[:, 0].cpu(), conn.indices[:, 1].cpu()),
                     conn.weights.float().cpu(), accumulate=True)
    means, sigmas, _ = model.tuples(x)
    model.train(was)
    return dense, means.float().cpu(), sigmas[..., 0].float().cpu()


def _plot_snapshots(ctx: RunContext, snaps: list[tuple[int, Tensor, Tensor, Tensor]],
                    x: Tensor) -> None:
    """``permutations.png``: per fixed input (rows) and training step (columns), the sampled
    weight matrix, the tuple means (dots) and one deviation (circles), as in seed 001."""
    from matplotlib.patches import Circle

    from ..plotting import figure

    b, n = x.shape
    fig, axes = figure(b, len(snaps), figsize=(2.2 * len(snaps), 2.2 * b), squeeze=False)
    for j, (step, dense, means, sigmas) in enumerate(snaps):
        for i in range(b):
            ax = axes[i][j]
            ax.imshow(dense[i].numpy(), cmap="Greys", vmin=0, vmax=1)
            for k in range(n):
                r, c = float(means[i, k, 0]), float(means[i, k, 1])
                ax.add_patch(Circle((c, r), float(sigmas[i, k]), fill=True, alpha=0.2,
                                    color="tab:red"))
                ax.plot(c, r, "o", color="tab:red", ms=3)
            ax.set_xlim(-0.5, n - 0.5)
            ax.set_ylim(n - 0.5, -0.5)
            ax.set_xticks([])
            ax.set_yticks([])
            if i == 0:
                ax.set_title(f"step {step}", fontsize=8)
            if j == 0:
                ax.set_ylabel(" ".join(f"{v:.2f}" for v in x[i, : min(n, 4)].tolist()),
                              fontsize=6)
    ctx.save_figure(fig, "permutations")
