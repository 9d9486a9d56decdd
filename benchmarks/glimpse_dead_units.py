"""How many of a glimpse run's hidden units are alive (issue 9; numbers in docs/glimpse.md).

Not a benchmark: an analysis of finished ``hypersparse run glimpse`` runs. For the glimpse
stage's checkpoint (``best.pt``, or ``last.pt`` with ``--checkpoint last``) it reads the fixed
validation set's eval glimpses and, for the head and (when there is one) the reader, counts
the units of the 128-wide hidden layer (after its ReLU) that fire on at least one validation
image ("alive"), and the mean fraction that fire per image. A unit that never fires gets no
gradient and stays dead: it is capacity the classifier does not have.

Run::

    OMP_NUM_THREADS=1 PYTHONPATH=src python benchmarks/glimpse_dead_units.py \
        RUN_DIR [...] [--checkpoint best|last] [--out results/glimpse_dead_units.json]
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
from pathlib import Path
from typing import Any

import torch
from torch import nn

from hypersparse.experiments.glimpse import (
    GlimpseConfig,
    GlimpseHead,
    GlimpseNet,
    _fixed_set,
    build,
)
from hypersparse.io import atomic_write_json, load_checkpoint
from hypersparse.run import config_from_dict

CPU = torch.device("cpu")


def load(run: Path, checkpoint: str) -> tuple[GlimpseConfig, GlimpseNet]:
    saved = json.loads((run / "config.json").read_text())
    if saved.get("experiment") != "glimpse":
        raise ValueError(f"{run} is not a glimpse run (experiment {saved.get('experiment')!r})")
    config = config_from_dict(GlimpseConfig, saved["config"])
    model = build(config, "glimpse", CPU)
    if not isinstance(model, GlimpseNet):
        raise ValueError(f"{run}: the glimpse stage is not a GlimpseNet")
    path = run / "checkpoints" / "glimpse" / f"{checkpoint}.pt"
    model.load_state_dict(load_checkpoint(path, CPU)["model"])
    return config, model.eval()


@torch.no_grad()
def hidden(net: GlimpseHead, glimpses: torch.Tensor) -> torch.Tensor:
    """The hidden layer after its ReLU, (B, 128), of a cnn head at eval."""
    if net.kind != "cnn":
        raise ValueError(f"only cnn heads have the 128-wide hidden layer, got {net.kind!r}")
    b = glimpses.shape[0]
    f = net.features(glimpses.flatten(0, 1)).reshape(b, -1)  # (B, G * C' * s * s)
    layers = list(net.classify)
    relu = next(i for i, m in enumerate(layers) if isinstance(m, nn.ReLU))
    return nn.Sequential(*layers[: relu + 1])(f)  # (B, 128)


@torch.no_grad()
def units(run: Path, checkpoint: str, batch: int = 500) -> dict[str, Any]:
    config, model = load(run, checkpoint)
    val = _fixed_set(config.dataset, "val", config.canvas, config.distractors)
    x, y = val.float(), val.labels
    nets: dict[str, GlimpseHead] = {"head": model.head}  # type: ignore[dict-item]
    if model.reader is not None:
        nets["reader"] = model.reader  # type: ignore[assignment]
    acts: dict[str, list[torch.Tensor]] = {k: [] for k in nets}
    logits: dict[str, list[torch.Tensor]] = {k: [] for k in nets}
    for i in range(0, x.shape[0], batch):
        g = model.sampler(x[i : i + batch])  # (b, G, C, k, k)
        for name, net in nets.items():
            acts[name].append(hidden(net, g))
            logits[name].append(net(g))
    out: dict[str, Any] = {"run": str(run), "checkpoint": checkpoint, "seed": config.seed,
                           "reader_dropout": config.reader_dropout,
                           "reader_norm": config.reader_norm}
    for name in nets:
        h = torch.cat(acts[name])  # (N, 128)
        wrong = torch.cat(logits[name]).argmax(-1) != y
        out[name] = {"units": h.shape[1], "alive": int((h > 0).any(0).sum()),
                     "firing_per_image": float((h > 0).float().mean(1).mean()),
                     "val_error": float(wrong.float().mean())}
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="+", type=Path)
    parser.add_argument("--checkpoint", choices=("best", "last"), default="best")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args(argv)
    rows = [units(run, args.checkpoint) for run in args.runs]
    for r in rows:
        parts = [f"{k}: {r[k]['alive']}/{r[k]['units']} alive, "
                 f"{r[k]['firing_per_image']:.1%} firing, val {r[k]['val_error']:.2%}"
                 for k in ("head", "reader") if k in r]
        print(f"{r['run']} ({r['checkpoint']}): " + "; ".join(parts))
    if args.out is not None:
        command = "python benchmarks/glimpse_dead_units.py " + shlex.join(
            sys.argv[1:] if argv is None else argv)
        atomic_write_json(args.out, {"command": command, "runs": rows})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
