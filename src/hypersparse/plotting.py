"""Plots the runner draws for every run. matplotlib is imported lazily, never by the core."""

from __future__ import annotations

from collections import defaultdict
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .run import RunContext

__all__ = ["figure", "plot_training_curves"]


def figure(*args: Any, **kwargs: Any) -> tuple[Any, Any]:
    """``plt.subplots`` on the non-interactive Agg backend."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    return plt.subplots(*args, **kwargs)


def plot_training_curves(ctx: RunContext) -> None:
    """``curves.png``: training loss per stage and every validation metric over steps."""
    records = ctx.metrics()
    train: dict[str, list[tuple[int, float]]] = defaultdict(list)
    val: dict[str, list[tuple[int, float]]] = defaultdict(list)
    for r in records:
        stage = r.get("stage", "model")
        if r.get("split") == "train" and isinstance(r.get("loss"), int | float):
            train[stage].append((r["step"], r["loss"]))
        elif r.get("split") == "val":
            for k, v in r.items():
                if k not in ("stage", "split", "step", "epoch") and isinstance(v, int | float):
                    val[f"{stage}/{k}"].append((r["step"], v))
    if not train and not val:
        return
    ncols = 2 if val else 1
    fig, axes = figure(1, ncols, figsize=(5.5 * ncols, 3.8), squeeze=False)
    ax = axes[0][0]
    for stage, pts in train.items():
        ax.plot(*zip(*pts), label=stage)
    ax.set(xlabel="step", ylabel="training loss", title="training loss")
    if train and all(v > 0 for pts in train.values() for _, v in pts):
        ax.set_yscale("log")
    if len(train) > 1:
        ax.legend(fontsize=8)
    if val:
        ax = axes[0][1]
        for key, pts in val.items():
            ax.plot(*zip(*pts), marker="o", ms=3, label=key)
        ax.set(xlabel="step", title="validation")
        ax.legend(fontsize=8)
    ctx.save_figure(fig, "curves")
