"""Where a glimpse run's errors come from (issue 9; numbers in docs/glimpse.md).

Not a benchmark: an analysis of finished ``hypersparse run glimpse`` runs. For the glimpse
stage's best checkpoint, on the fixed validation and test sets, it splits the images by how
much of the digit's 28x28 box the eval glimpse's box covers ("well read": at least 90%), and
counts the errors of the classifier eval uses (the reader when there is one), of the head
alone (when there is a reader), and of a same-harness CNN run's best checkpoint, image by
image. It also reports where the badly covered boxes are (distance of the box centre from the
digit's centre) and which digits they hold, and how many boxes miss the digit ("missed":
less than 70% of its box covered). ``--splits val5`` scores five more clutterings of the
validation digits (5 x the validation set), to compare localisation between runs without the
test set.

Run (one or more glimpse runs, each with the CNN run of the same seed)::

    OMP_NUM_THREADS=1 PYTHONPATH=src python benchmarks/glimpse_breakdown.py \
        RUN_DIR[:CNN_RUN_DIR] [...] [--checkpoint best|last] \
        [--out results/glimpse_breakdown.json]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import torch
from torch import nn

from hypersparse.experiments.common import batched
from hypersparse.experiments.glimpse import (
    GlimpseConfig,
    GlimpseNet,
    _fixed_set,
    build,
    val_clutterings,
)
from hypersparse.io import atomic_write_json, load_checkpoint
from hypersparse.run import config_from_dict

CPU = torch.device("cpu")


def load(run: Path, stage: str, checkpoint: str = "best") -> tuple[GlimpseConfig, nn.Module]:
    """The config and the best (or ``checkpoint="last"``: the last) checkpoint of ``stage`` of
    a glimpse run."""
    saved = json.loads((run / "config.json").read_text())
    if saved.get("experiment") != "glimpse":
        raise ValueError(f"{run} is not a glimpse run (experiment {saved.get('experiment')!r})")
    config = config_from_dict(GlimpseConfig, saved["config"])
    model = build(config, stage, CPU)
    path = run / "checkpoints" / stage / f"{checkpoint}.pt"
    model.load_state_dict(load_checkpoint(path, CPU)["model"])
    return config, model.eval()


_CNN_CACHE: dict[tuple[Any, ...], torch.Tensor] = {}


@torch.no_grad()
def cnn_wrong(cnn_run: Path, split: str, config: GlimpseConfig) -> torch.Tensor:
    """Which images of ``split`` the CNN run's best checkpoint gets wrong (cached per run and
    split, so several glimpse runs can be compared with one CNN cheaply)."""
    key = (cnn_run.resolve(), split, config.dataset, config.canvas, config.distractors)
    if key not in _CNN_CACHE:
        _, cnn = load(cnn_run, "cnn")
        data = val_clutterings(config, 5) if split == "val5" else \
            _fixed_set(config.dataset, split, config.canvas, config.distractors)
        _CNN_CACHE[key] = batched(cnn, data.float()).argmax(-1) != data.labels
    return _CNN_CACHE[key]


@torch.no_grad()
def breakdown(run: Path, cnn_run: Path | None, split: str,
              checkpoint: str = "best") -> dict[str, Any]:
    config, model = load(run, "glimpse", checkpoint)
    if not isinstance(model, GlimpseNet):
        raise TypeError("expected a GlimpseNet")
    data = val_clutterings(config, 5) if split == "val5" else \
        _fixed_set(config.dataset, split, config.canvas, config.distractors)
    x, labels = data.float(), data.labels
    read = [model.sampler.forward_with_boxes(x[i : i + 500])  # type: ignore[operator]
            for i in range(0, len(x), 500)]
    glimpses = torch.cat([g for g, _ in read])  # (N, G, C, k, k)
    boxes = torch.cat([b for _, b in read])[:, 0]  # (N, 4): the first glimpse's box
    wrong = {"eval": batched(model.classify, glimpses).argmax(-1) != labels}
    if model.reader is not None:
        wrong["head"] = batched(model.head, glimpses).argmax(-1) != labels
    if cnn_run is not None:
        wrong["cnn"] = cnn_wrong(cnn_run, split, config)
    truth = data.boxes.float()  # (N, 4): top, left, bottom, right (inclusive)
    hi = torch.minimum(boxes[:, 2:], truth[:, 2:])
    lo = torch.maximum(boxes[:, :2], truth[:, :2])
    cover = (hi - lo + 1).clamp(min=0).prod(-1) / 28**2  # fraction of the digit's box covered
    well = cover >= 0.9
    dist = ((boxes[:, :2] + boxes[:, 2:]) / 2 - (truth[:, :2] + truth[:, 2:]) / 2).norm(dim=-1)
    q = torch.tensor([0.25, 0.5, 0.75])
    out: dict[str, Any] = {
        "run": str(run), "checkpoint": checkpoint,
        "cnn_run": None if cnn_run is None else str(cnn_run), "split": split,
        "images": len(labels), "well_read": int(well.sum()),
        "missed": int((cover < 0.7).sum()),
        "box_height": float((boxes[:, 2] - boxes[:, 0]).mean()),
        "box_width": float((boxes[:, 3] - boxes[:, 1]).mean()),
        "badly_read_centre_distance_quartiles": torch.quantile(dist[~well], q).tolist()
        if (~well).any() else None,
        "badly_read_labels": torch.bincount(labels[~well], minlength=10).tolist(),
    }
    for name, w in wrong.items():
        out[f"{name}_errors"] = int(w.sum())
        out[f"{name}_errors_well_read"] = int((w & well).sum())
        out[f"{name}_errors_badly_read"] = int((w & ~well).sum())
        out[f"{name}_errors_missed"] = int((w & (cover < 0.7)).sum())
        out[f"{name}_error"] = float(w.float().mean())
        out[f"{name}_badly_read_wrong_labels"] = torch.bincount(labels[w & ~well],
                                                                minlength=10).tolist()
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("runs", nargs="+", help="RUN_DIR or RUN_DIR:CNN_RUN_DIR")
    parser.add_argument("--splits", default="val,test",
                        help="comma-separated: val, test, val5 (five more clutterings of "
                             "the validation digits)")
    parser.add_argument("--checkpoint", choices=("best", "last"), default="best",
                        help="the glimpse stage's checkpoint to read (the CNN's: always best)")
    parser.add_argument("--out", default=None, help="write the results as JSON here")
    args = parser.parse_args()
    results = []
    for spec in args.runs:
        run, _, cnn = spec.partition(":")
        for split in args.splits.split(","):
            r = breakdown(Path(run), Path(cnn) if cnn else None, split, args.checkpoint)
            results.append(r)
            print(json.dumps(r))
    if args.out:
        command = "python benchmarks/glimpse_breakdown.py " + " ".join(sys.argv[1:])
        atomic_write_json(args.out, {"command": command, "results": results})


if __name__ == "__main__":
    main()
