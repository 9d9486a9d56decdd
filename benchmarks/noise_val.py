"""Validation-only view of ``noise`` runs, for choosing settings without reading test digits.

For every run directory (a single-seed run or the ``seed-*`` directories of a multi-seed run)
and every CNN it trained, prints the validation accuracy at each epoch end (from
``metrics.jsonl``) and, for the best checkpoint, the validation accuracy and a *validation noise
score*: the paper's pixel noise (``floor(784 p)`` pixels set to the bright value, p = 0 ... 0.5)
applied to the 1,000 validation digits, correct predictions summed over the 11 levels (out of
11,000). The noise generators are seeded from ``(seed, "val-pixel-noise", level)``, so every
network of a seed sees the same noisy validation digits (and never the test set's noise).

    PYTHONPATH=src python benchmarks/noise_val.py RUN [RUN ...] [--kif 1.5]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from hypersparse.config import config_from_dict
from hypersparse.data import digits
from hypersparse.experiments import get_experiment
from hypersparse.experiments.common import accuracy, batched
from hypersparse.experiments.noise import _stages, noise_curve, pixel_noise
from hypersparse.run import RunContext, resolve_device


def _val_curve(run_dir: Path, stage: str) -> list[float]:
    out = []
    for line in (run_dir / "metrics.jsonl").read_text().splitlines():
        r = json.loads(line)
        if r.get("split") == "val" and r.get("stage") == stage and "val_accuracy" in r:
            out.append(round(100 * r["val_accuracy"], 1))
    return out


def report(run_dir: Path, kif: float | None = None) -> None:
    saved = json.loads((run_dir / "config.json").read_text())
    exp = get_experiment(saved["experiment"])()
    config = config_from_dict(type(exp).Config, saved["config"])
    if kif is not None:  # re-evaluate the same checkpoints with another eval-time k
        config.boost.k_inference_factor = kif
    ctx = RunContext(run_dir=run_dir, config=config, seed=config.seed,
                     device=resolve_device("cpu"), resume=True, progress=False)
    val = digits(config.dataset, "val")
    vx, vy = val.float(), val.labels
    try:
        for name in config.networks:
            stage = _stages(config, name)[-1][0]
            if not (run_dir / "checkpoints" / stage / "best.pt").exists():
                continue
            model = ctx.load_best(exp._model(config, ctx, name), stage=stage).eval()
            acc = accuracy(batched(model, vx, config.eval_batch_size), vy)
            correct = noise_curve(
                model, vx, vy, config.levels,
                lambda x, i, p: pixel_noise(x, p, generator=ctx.generator("val-pixel-noise", i)),
                config.eval_batch_size)
            curve = _val_curve(run_dir, stage)
            print(f"{run_dir} seed {config.seed} {name}: val {100 * acc:.1f}%, "
                  f"val noise score {sum(correct)} of {len(correct) * len(vy)}, "
                  f"val at 0.5 {100 * correct[-1] / len(vy):.1f}%; per epoch {curve}")
    finally:
        ctx.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("runs", type=Path, nargs="+")
    parser.add_argument("--kif", type=float, default=None,
                        help="evaluate with this boost.k_inference_factor instead of the run's")
    args = parser.parse_args()
    for run in args.runs:
        for sd in sorted(run.glob("seed-*")) or [run]:
            report(sd, args.kif)


if __name__ == "__main__":
    main()
