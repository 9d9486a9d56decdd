"""Overhead of the training loop: ``hypersparse.train.fit`` vs a bare PyTorch loop.

Both train the same MLP (784-300-100-10) on the same in-memory batches for the same number of
steps in this process; the ratio is the price of per-step reseeding, logging and checkpoints.

    PYTHONPATH=src python benchmarks/loop.py
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import torch
import torch.nn.functional as F

from harness import timeit, write_results
from hypersparse.experiments.mnist_mlp import mlp
from hypersparse.run import RunContext
from hypersparse.train import TensorBatches, TrainConfig, fit

STEPS, BATCH = 200, 64


def main() -> None:
    g = torch.Generator().manual_seed(0)
    x = torch.rand(STEPS * BATCH, 1, 28, 28, generator=g)
    y = torch.randint(0, 10, (STEPS * BATCH,), generator=g)
    source = TensorBatches((x, y), BATCH, seed=0)
    config = TrainConfig(max_steps=STEPS, batch_size=BATCH, log_every=10)

    def bare() -> None:
        model = mlp((300, 100))
        opt = torch.optim.Adam(model.parameters(), lr=1e-3)
        for i in range(STEPS):
            xb, yb = source.batch(0, i)
            loss = F.cross_entropy(model(xb), yb)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()

    def loss_fn(model: torch.nn.Module, batch: tuple[torch.Tensor, ...]) -> torch.Tensor:
        return F.cross_entropy(model(batch[0]), batch[1])

    def ours() -> None:
        with tempfile.TemporaryDirectory() as d:
            ctx = RunContext(run_dir=Path(d), config=None, progress=False)
            ctx._tb = False  # time the loop, not TensorBoard's event writer
            fit(mlp((300, 100)), loss_fn, source, config=config, ctx=ctx)

    t_bare = timeit(bare, repeats=5, warmup=1)
    t_ours = timeit(ours, repeats=5, warmup=1)
    ratio = t_ours["median_s"] / t_bare["median_s"]
    write_results(
        "loop",
        {
            "steps": STEPS,
            "batch": BATCH,
            "bare": t_bare,
            "fit": t_ours,
            "ratio": ratio,
            "tables": {
                "overhead": {
                    "columns": ["loop", "ms / step (median of 5)", "ratio"],
                    "rows": [
                        ["bare PyTorch", 1e3 * t_bare["median_s"] / STEPS, 1.0],
                        ["hypersparse.train.fit", 1e3 * t_ours["median_s"] / STEPS, ratio],
                    ],
                }
            },
        },
    )
    print(f"bare {t_bare['median_s']:.3f}s  fit {t_ours['median_s']:.3f}s  ratio {ratio:.2f}")


if __name__ == "__main__":
    main()
