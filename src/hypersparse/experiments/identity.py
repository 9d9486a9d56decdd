"""``identity``: learn the n x n identity with a SparseLayer of K = n tuples, values fixed to 1
(seed 001). Stops as soon as the rounded means are exactly the identity."""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from ..nn.hyper import SigmaAnnealing, SparseLayer
from ..run import RunContext
from ..train import SyntheticBatches, TrainConfig
from .base import Experiment, register_experiment


@dataclass
class IdentityConfig:
    seed: int = 0
    n: int = 32
    k: int | None = None  # tuples; default n
    sigma_scale: float = 0.07
    min_sigma: float = 0.0
    global_samples: int = 4
    local_samples: int = 4
    region: int = 4
    local_box: str = "low"  # or "alternate": half the tuples' boxes mirrored (no net drift)
    normalisation: str = "auto"
    mean_bound: str = "sigmoid"  # or "reflect": linear, reflected at the edges (the presets)
    # "learned": every tuple learns its deviation (sigma_scale sets the start);
    # "anneal": one shared deviation, annealed geometrically from sigma_start * n to sigma_end
    # (index units) over anneal_steps batches (deterministic annealing; the presets for n >= 64)
    sigma_schedule: str = "learned"
    sigma_start: float = 0.1
    sigma_end: float = 0.3
    anneal_steps: int = 3000
    check_every: int = 10  # batches between exact-identity checks
    eval_batch: int = 256
    train: TrainConfig = field(default_factory=lambda: TrainConfig(
        max_steps=5000, batch_size=64, lr=0.03, log_every=25))


_SOFTPLUS_2 = math.log1p(math.exp(2.0))  # a deviation of softplus(raw + 2) at raw = 0


def make_layer(config: IdentityConfig, device: torch.device | str = "cpu") -> SparseLayer:
    n = config.n
    if config.sigma_schedule not in ("learned", "anneal"):
        raise ValueError(f"sigma_schedule must be 'learned' or 'anneal', "
                         f"got {config.sigma_schedule!r}")
    anneal = config.sigma_schedule == "anneal"
    if anneal and config.min_sigma:
        raise ValueError(f"min_sigma={config.min_sigma} is not supported with "
                         "sigma_schedule='anneal' (one shared, annealed deviation): leave it 0")
    if anneal and not (config.sigma_start > 0 and config.sigma_end > 0 and config.anneal_steps > 0):
        raise ValueError("annealing needs sigma_start > 0, sigma_end > 0 and anneal_steps > 0, "
                         f"got {config.sigma_start}, {config.sigma_end}, {config.anneal_steps}")
    # annealed: raw sigmas fixed at 0, so sigma_scale * softplus(2) * n = sigma_start * n
    scale = config.sigma_start / _SOFTPLUS_2 if anneal else config.sigma_scale
    return SparseLayer(n, n, config.k or n, learn_values=False, sigma_scale=scale,
                       min_sigma=config.min_sigma, learn_sigmas=not anneal,
                       global_samples=config.global_samples,
                       local_samples=config.local_samples, region=min(config.region, n),
                       normalisation=config.normalisation, mean_bound=config.mean_bound,
                       local_box=config.local_box, device=device)


def annealing(config: IdentityConfig) -> SigmaAnnealing | None:
    """The sigma schedule of ``sigma_schedule="anneal"`` (None for learned deviations)."""
    if config.sigma_schedule != "anneal":
        return None
    return SigmaAnnealing(config.anneal_steps, end=config.sigma_end / (config.sigma_start
                                                                        * config.n))


@torch.no_grad()
def identity_report(layer: SparseLayer, x: Tensor) -> dict[str, Any]:
    """``exact_identity``: every rounded mean on the diagonal, every row covered, and eval
    MSE below 1e-4 on ``x``."""
    was = layer.training
    layer.eval()
    idx = layer.connections(x[:1], sample=False).indices  # (K, 2)
    mse = float((layer(x) - x).pow(2).mean())
    layer.train(was)
    on_diag = bool((idx[:, 0] == idx[:, 1]).all())
    rows = int(torch.unique(idx[:, 0]).numel())
    return {"exact_identity": on_diag and rows == layer.out_shape[0] and mse < 1e-4,
            "on_diagonal": int((idx[:, 0] == idx[:, 1]).sum()), "rows_covered": rows,
            "eval_mse": mse}


@register_experiment("identity", help="learn the n x n identity with K=n sparse tuples (seed 001)")
class Identity(Experiment):
    Config = IdentityConfig
    # n >= 64: deterministic annealing of one shared deviation (docs/hyperlayer.md)
    presets = {
        "n64": {"n": 64, "sigma_schedule": "anneal", "sigma_start": 0.1, "anneal_steps": 4000,
                "train.max_steps": 10000, "train.lr": 0.03, "train.schedule": "cosine"},
        # reflected bound, 40,000 annealing batches (docs/hyperlayer.md, "exact n = 256")
        "n256": {"n": 256, "sigma_schedule": "anneal", "sigma_start": 0.1,
                 "anneal_steps": 40000, "train.max_steps": 50000, "train.lr": 0.0075,
                 "train.schedule": "cosine", "mean_bound": "reflect", "check_every": 50},
    }
    presets["full"] = dict(presets["n64"])

    def run(self, config: IdentityConfig, ctx: RunContext) -> dict[str, Any]:
        n = config.n
        layer = make_layer(config, ctx.device)
        tc = config.train
        source = SyntheticBatches(lambda b, g: (torch.randn(b, n, generator=g),),
                                  tc.batch_size, batches_per_epoch=tc.max_steps or 1000,
                                  seed=config.seed)
        x_eval = torch.randn(config.eval_batch, n, generator=ctx.generator("eval")).to(ctx.device)

        def loss_fn(model: nn.Module, batch: tuple[Tensor, ...]) -> Tensor:
            (x,) = batch
            return (model(x) - x).pow(2).mean()

        snap_steps = {0, 50, 200, 500, 1000, 2000, 5000, 10000, 20000, 50000}
        snaps: list[tuple[int, Tensor, Tensor]] = []
        found: dict[str, Any] = {}
        cpu_start = time.process_time()
        check_cpu = [0.0]

        def snapshot(step: int, model: SparseLayer) -> None:
            with torch.no_grad():
                means, sigmas, _ = model.tuples(x_eval[:1])
            snaps.append((step, means.cpu().clone(), sigmas.cpu().clone()))

        def callback(step: int, model: Any, metrics: dict[str, float]) -> bool:
            t0 = time.process_time()
            if step in snap_steps:
                snapshot(step, model)
            stop = False
            if step % config.check_every == 0:
                rep = identity_report(model, x_eval)
                if rep["exact_identity"]:
                    found.update(step=step, cpu=t0 - cpu_start - check_cpu[0])
                    stop = True
            check_cpu[0] += time.process_time() - t0
            return stop

        snapshot(0, layer)
        anneal = annealing(config)
        if anneal is not None:
            anneal(0, layer)  # the first step's gain (a resumed run's checkpoint overrides it)
        callbacks = [callback] if anneal is None else [anneal, callback]
        result = ctx.fit(layer, loss_fn, source, config=tc, callbacks=callbacks)
        if not snaps or snaps[-1][0] != result.steps:
            snapshot(result.steps, layer)
        rep = identity_report(layer, x_eval)
        self._plot(ctx, snaps, n)
        # seconds_to_identity: fit's own training time (the step loop, without our checks)
        return {
            "exact_identity": rep["exact_identity"],
            "batches_to_identity": found.get("step"),
            "seconds_to_identity": result.train_seconds if found else None,
            # CPU time of this process until identity, without our checks: robust to other jobs
            # sharing the machine (wall-clock seconds_to_identity is not)
            "cpu_seconds_to_identity": found.get("cpu"),
            "n": n,
            "k": config.k or n,
            "steps": result.steps,
            "train_seconds": result.train_seconds,
            "ms_per_step": 1000 * result.train_seconds / max(result.steps, 1),
            "eval_mse": rep["eval_mse"],
            "on_diagonal": rep["on_diagonal"],
            "rows_covered": rep["rows_covered"],
            "normalisation": config.normalisation,
            "sigma_schedule": config.sigma_schedule,
        }

    def evaluate(self, config: IdentityConfig, ctx: RunContext) -> dict[str, Any]:
        layer = make_layer(config, ctx.device)
        ctx.load_best(layer)
        x_eval = torch.randn(config.eval_batch, config.n,
                             generator=ctx.generator("eval")).to(ctx.device)
        return {**identity_report(layer, x_eval), "n": config.n}

    @staticmethod
    def _plot(ctx: RunContext, snaps: list[tuple[int, Tensor, Tensor]], n: int) -> None:
        from matplotlib.patches import Ellipse

        from ..plotting import figure

        picks = snaps if len(snaps) <= 5 else [snaps[i] for i in
                                               (0, len(snaps) // 4, len(snaps) // 2,
                                                3 * len(snaps) // 4, len(snaps) - 1)]
        losses = [(r["step"], r["loss"]) for r in ctx.metrics()
                  if r.get("split") == "train" and "loss" in r]
        fig, axes = figure(1, len(picks) + 1, figsize=(3.2 * (len(picks) + 1), 3.3),
                           squeeze=False)
        for ax, (step, means, sigmas) in zip(axes[0], picks):
            ax.imshow(torch.eye(n).tolist(), cmap="Greys", alpha=0.25,
                      extent=(-0.5, n - 0.5, n - 0.5, -0.5))
            for (r, c), (sr, sc) in zip(means.tolist(), sigmas.tolist()):
                ax.add_patch(Ellipse((c, r), 2 * sc, 2 * sr, alpha=0.15, color="C0"))
            ax.scatter(means[:, 1].tolist(), means[:, 0].tolist(), s=6, color="C3")
            ax.set(xlim=(-0.5, n - 0.5), ylim=(n - 0.5, -0.5), title=f"after {step} batches",
                   xticks=[], yticks=[])
        ax = axes[0][-1]
        if losses:
            ax.plot(*zip(*losses))
            ax.set_yscale("log")
        ax.set(xlabel="batch", ylabel="training MSE", title="loss")
        ctx.save_figure(fig, "identity")
