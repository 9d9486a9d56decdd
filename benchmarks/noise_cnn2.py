"""Collect a finished ``noise`` run of the CNN-2 pair into ``results/noise_cnn2.json``.

Not a timing benchmark: it reads ``RUN/seed-*/summary.json`` of a run made with

    OMP_NUM_THREADS=1 PYTHONPATH=src python -m hypersparse run noise --set preset=full \\
        --set networks=dense_cnn2,sparse_cnn2 --set forum=false --seeds 0-2 --out RUN

and, with ``--also-kif F``, re-evaluates the same sparse checkpoints (in a temporary copy of the
run) with ``boost.k_inference_factor=F`` (the paper's 1.5), to report what the eval-time k
alone changes. That second evaluation reads test images but chooses nothing: the factor used by
the experiment was selected on validation before.

    PYTHONPATH=src python benchmarks/noise_cnn2.py RUN --also-kif 1.5 [--baseline RUN0]

``--baseline RUN0`` adds the rows of a second run of the same pair made with a different
setting (e.g. without ``augment=shift``); its ratio and gap are computed against its own dense
CNN-2. Repeat it (``--baseline RUN0 --baseline RUN1``) to keep the rows of several earlier runs;
their keys get the suffixes ``_baseline``, ``_baseline2``, ... in that order.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import tempfile
from pathlib import Path
from typing import Any

from harness import write_results
from hypersparse.config import config_from_dict
from hypersparse.experiments import get_experiment
from hypersparse.run import RunContext, resolve_device

NETS = ("dense_cnn2", "sparse_cnn2")
KEYS = ("test_accuracy", "noise_score", "accuracy_at_0.5", "val_accuracy", "best_step")


def _seed_dirs(run: Path) -> list[Path]:
    dirs = sorted(run.glob("seed-*"), key=lambda p: int(p.name.split("-")[1]))
    if not dirs:
        raise SystemExit(f"{run} has no seed-* directories")
    return dirs


def _reevaluate(run: Path, kif: float) -> dict[int, dict[str, Any]]:
    out = {}
    with tempfile.TemporaryDirectory() as tmp:
        copy = Path(tmp) / "run"
        shutil.copytree(run, copy)
        for sd in _seed_dirs(copy):
            saved = json.loads((sd / "config.json").read_text())
            exp = get_experiment(saved["experiment"])()
            config = config_from_dict(type(exp).Config, saved["config"])
            config.boost.k_inference_factor = kif
            ctx = RunContext(run_dir=sd, config=config, seed=config.seed,
                             device=resolve_device("cpu"), resume=True, progress=False)
            try:
                out[config.seed] = dict(exp.evaluate(config, ctx))
            finally:
                ctx.close()
    return out


def _mean_std(xs: list[float]) -> tuple[float, float]:
    return statistics.fmean(xs), statistics.pstdev(xs)


def _read(run: Path, suffix: str = "") -> tuple[dict[int, dict[str, Any]], dict[str, Any]]:
    per_seed: dict[int, dict[str, Any]] = {}
    config: dict[str, Any] = {}
    for sd in _seed_dirs(run):
        s = json.loads((sd / "summary.json").read_text())
        config = json.loads((sd / "config.json").read_text())["config"]
        seed = int(sd.name.split("-")[1])
        per_seed[seed] = {f"{n}{suffix}/{k}": s[f"{n}/{k}"] for n in NETS for k in KEYS}
        per_seed[seed][f"ratio{suffix}"] = s["sparse_vs_dense_cnn2_noise_score_ratio"]
    return per_seed, config


def _augment(config: dict[str, Any]) -> str:
    aug = config.get("augment", "none")
    return "no augmentation" if aug == "none" else (
        f"augment={aug}, up to {config.get('augment_shift', 2)} px")


def _sparse_recipe(config: dict[str, Any]) -> str:
    """The sparse net's small-batch phase (runs before the field existed had 1 epoch)."""
    n = config.get("sparse_first_epochs", 1)
    lr = config.get("sparse_first_lr", 0.0)
    bs = config.get("first_epoch_batch_size", 4)
    parts = [f"{n} batch-{bs} epoch{'s' if n != 1 else ''}"] if bs else []
    if lr and bs:
        parts.append(f"lr {lr:g} in them")
    return "".join(f", {p}" for p in parts)


def _suffix(i: int) -> str:
    return "_baseline" if i == 0 else f"_baseline{i + 1}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("run", type=Path)
    parser.add_argument("--also-kif", type=float, default=None)
    parser.add_argument("--baseline", type=Path, action="append", default=[])
    args = parser.parse_args()
    per_seed, config = _read(args.run)
    seeds = sorted(per_seed)
    base_configs: list[dict[str, Any]] = []
    for i, path in enumerate(args.baseline):
        base, base_config = _read(path, _suffix(i))
        if sorted(base) != seeds:
            raise SystemExit(f"baseline {path} seeds {sorted(base)} differ from the run's {seeds}")
        for seed in seeds:
            per_seed[seed].update(base[seed])
        base_configs.append(base_config)
    if args.also_kif is not None:
        for seed, s in _reevaluate(args.run, args.also_kif).items():
            for k in ("test_accuracy", "noise_score", "accuracy_at_0.5", "val_accuracy"):
                per_seed[seed][f"sparse_cnn2_kif{args.also_kif:g}/{k}"] = s[f"sparse_cnn2/{k}"]
            per_seed[seed][f"ratio_kif{args.also_kif:g}"] = (
                s["sparse_cnn2/noise_score"] / per_seed[seed]["dense_cnn2/noise_score"])
    rows = []
    aug = _augment(config)
    kif = config["boost"]["k_inference_factor"]
    labels = [(f"dense CNN-2 ({aug})", "dense_cnn2", "dense_cnn2"),
              (f"sparse CNN-2 ({aug}{_sparse_recipe(config)}, k_inference_factor {kif:g})",
               "sparse_cnn2", "dense_cnn2")]
    if args.also_kif is not None:
        labels.append((f"sparse CNN-2, same checkpoints, k_inference_factor {args.also_kif:g}",
                       f"sparse_cnn2_kif{args.also_kif:g}", "dense_cnn2"))
    for i, base_config in enumerate(base_configs):
        sfx = _suffix(i)
        base_aug = _augment(base_config)
        base_kif = base_config["boost"]["k_inference_factor"]
        labels += [(f"dense CNN-2 ({base_aug})", f"dense_cnn2{sfx}", f"dense_cnn2{sfx}"),
                   (f"sparse CNN-2 ({base_aug}{_sparse_recipe(base_config)}, "
                    f"k_inference_factor {base_kif:g})", f"sparse_cnn2{sfx}", f"dense_cnn2{sfx}")]
    aggregate: dict[str, Any] = {}
    for label, key, _ in labels:
        acc = _mean_std([100 * per_seed[s][f"{key}/test_accuracy"] for s in seeds])
        val = _mean_std([100 * per_seed[s][f"{key}/val_accuracy"] for s in seeds])
        score = _mean_std([float(per_seed[s][f"{key}/noise_score"]) for s in seeds])
        at05 = _mean_std([100 * per_seed[s][f"{key}/accuracy_at_0.5"] for s in seeds])
        aggregate[key] = {"label": label, "test_accuracy_mean": acc[0],
                          "test_accuracy_std": acc[1], "val_accuracy_mean": val[0],
                          "noise_score_mean": score[0], "noise_score_std": score[1],
                          "accuracy_at_0.5_mean": at05[0]}
        rows.append([label, f"{acc[0]:.2f} +- {acc[1]:.2f}", f"{val[0]:.2f}",
                     f"{score[0]:,.0f} +- {score[1]:,.0f}", f"{at05[0]:.1f}"])
    for _, key, dense_key in labels:
        if key == dense_key:
            continue
        dense = aggregate[dense_key]
        aggregate[key]["noise_score_ratio_of_means"] = (
            aggregate[key]["noise_score_mean"] / dense["noise_score_mean"])
        aggregate[key]["accuracy_gap_points"] = (
            dense["test_accuracy_mean"] - aggregate[key]["test_accuracy_mean"])
        aggregate[key]["val_accuracy_gap_points"] = (
            dense["val_accuracy_mean"] - aggregate[key]["val_accuracy_mean"])
    epochs = config["train"]["epochs"], config["sparse_train"]["epochs"]
    write_results("noise_cnn2", {
        "run": str(args.run),
        "baseline_runs": [str(b) for b in args.baseline],
        "augment": config.get("augment", "none"),
        "augment_shift": config.get("augment_shift"),
        "sparse_first_epochs": config.get("sparse_first_epochs", 1),
        "sparse_first_lr": config.get("sparse_first_lr", 0.0),
        "seeds": seeds,
        "epochs_dense_sparse": list(epochs),
        "test_size": 5000,
        "per_seed": {str(s): per_seed[s] for s in seeds},
        "aggregate": aggregate,
        "note": "CPU, shared 2-core machine, one torch thread; mean +- population std over seeds",
        "tables": {"cnn2": {
            "columns": ["network", "test accuracy (%)", "val accuracy (%)",
                        "noise score (of 55,000)", "accuracy at p = 0.5 (%)"],
            "rows": rows,
            "note": (f"{len(seeds)} seeds, {epochs[0]} epochs, checkpoints selected on "
                     "validation; noise score = correct test predictions summed over "
                     "p = 0, 0.05, ..., 0.5; augmentation (if any) on training batches "
                     "only: the same transform and batch order for both networks, offsets "
                     "drawn per network."),
        }},
    })


if __name__ == "__main__":
    main()
