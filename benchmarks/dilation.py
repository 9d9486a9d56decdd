"""``learn-dilation --set task=mnist``: run (or collect) the MNIST comparison per seed and
record it in ``results/dilation.json`` next to the synthetic task's results.

Run: ``HYPERSPARSE_DATA=... OMP_NUM_THREADS=1 PYTHONPATH=src python benchmarks/dilation.py
[--configs conv2d frozen ...] [--seeds 0-2] [--out runs/dilation-mnist]``

Each named configuration runs ``hypersparse run learn-dilation --set task=mnist [--set ...]``
for every seed into ``<out>/<name>/seed-<s>`` with ``--resume`` (finished stages are not
retrained, so this also collects runs made earlier into that layout). The synthetic task's keys
of ``results/dilation.json`` are kept; ``mnist`` gets one entry per configuration (overrides,
per-seed summaries, mean and std over seeds) and ``tables.mnist`` a table for the README
(``benchmarks/readme_tables.py`` renders it where README.md holds its marker).
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path
from typing import Any

import torch

from harness import ROOT, write_results
from hypersparse.run import parse_seeds, run_experiment

CONFIGS: dict[str, list[str]] = {
    "conv2d": [],  # the default: learned dilations vs nn.Conv2d at dilation 1
    "frozen": ["baseline=frozen"],  # vs the same DilatedConv2d net with dilations frozen at 1
    "init2": ["init_dilation=2"],  # learned dilations starting at 2 (does it come back?)
    "fashion": ["dataset=fashion"],
    "fashion-frozen": ["dataset=fashion", "baseline=frozen"],
    "epochs3": ["train.epochs=3"],
}
KEYS = ("test_accuracy", "fixed_test_accuracy", "val_accuracy", "fixed_val_accuracy",
        "learned_dilation_1", "learned_dilation_2", "train_seconds", "fixed_train_seconds",
        "params", "fixed_params")


def _stats(summaries: dict[int, dict[str, Any]]) -> tuple[dict[str, float], dict[str, float]]:
    mean, std = {}, {}
    for key in KEYS:
        vals = [float(s[key]) for s in summaries.values() if key in s]
        if vals:
            mean[key] = statistics.fmean(vals)
            std[key] = statistics.pstdev(vals) if len(vals) > 1 else 0.0
    return mean, std


def run_config(name: str, seeds: list[int], out: Path) -> dict[str, Any]:
    overrides = ["task=mnist", *CONFIGS[name]]
    summaries = {}
    for s in seeds:
        run_dir = run_experiment("learn-dilation", overrides, seeds=[s],
                                 out=out / name / f"seed-{s}", resume=True, progress=False)
        summaries[s] = json.loads((run_dir / "summary.json").read_text())
    mean, std = _stats(summaries)
    return {"command": "hypersparse run learn-dilation " + " ".join(f"--set {o}" for o in
                                                                   overrides)
            + f" --seeds {','.join(map(str, seeds))} --threads 1",
            "overrides": overrides, "seeds": {str(s): v for s, v in summaries.items()},
            "mean": mean, "std": std}


def _pct(mean: dict[str, float], std: dict[str, float], key: str) -> str:
    return f"{100 * mean[key]:.2f} ± {100 * std[key]:.2f}%"


def table(entries: dict[str, Any]) -> dict[str, Any]:
    rows = []
    for e in entries.values():
        m, sd = e["mean"], e["std"]
        dil = ", ".join(f"{m[k]:.2f}" for k in ("learned_dilation_1", "learned_dilation_2")
                        if k in m)
        base = "frozen DilatedConv2d" if "baseline=frozen" in e["overrides"] else "nn.Conv2d"
        sets = " ".join(f"`{o}`" for o in e["overrides"][1:]) or "(default)"
        rows.append([sets, len(e["seeds"]), _pct(m, sd, "test_accuracy"),
                     _pct(m, sd, "fixed_test_accuracy"), base, dil,
                     f"{m['train_seconds']:.0f} / {m['fixed_train_seconds']:.1f}"])
    return {"columns": ["task=mnist --set", "seeds", "learned-dilation test acc",
                        "dilation-1 test acc", "dilation-1 network", "learned dilations (mean)",
                        "train s (learned / dilation 1)"],
            "rows": rows,
            "note": "Mean ± std over seeds; images 16x16, each network selected on val, "
                    "test reported. MNIST: the package split here (train 9,000 / val 1,000 / "
                    "test 5,000); Fashion-MNIST: 55,000 / 5,000 / 10,000. Shared 2-core CPU, "
                    "1 thread: train seconds are indicative only."}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--configs", nargs="+", default=["conv2d", "frozen"], choices=sorted(CONFIGS))
    p.add_argument("--seeds", default="0-2")
    p.add_argument("--out", default="runs/dilation-mnist")
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    path = ROOT / "results" / "dilation.json"
    data = json.loads(path.read_text()) if path.exists() else {}
    for key in ("benchmark", "machine", "measured"):
        data.pop(key, None)
    mnist = dict(data.get("mnist", {}))
    for name in args.configs:
        mnist[name] = run_config(name, parse_seeds(args.seeds), Path(args.out))
    data["mnist"] = {k: mnist[k] for k in CONFIGS if k in mnist}
    data["tables"] = {**data.get("tables", {}), "mnist": table(data["mnist"])}
    print(write_results("dilation", data))


if __name__ == "__main__":
    main()
