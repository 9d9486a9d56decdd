"""Deep Compression on LeNet-300-100 and LeNet-5: run the pipeline per seed, record the summary.

Run: ``HYPERSPARSE_DATA=... PYTHONPATH=src python benchmarks/deep_compression.py
[--models lenet300 lenet5] [--seeds 0-2] [--set KEY=VALUE ...] [--out runs/deep-compression]``

Each model runs ``hypersparse run deep-compression --set model=M`` for every seed into
``<out>/<model>/seed-<s>`` (``--resume``: finished stages and seeds are not retrained, so seeds
may also be run by separate processes into the same layout and collected here). Writes
``results/deep_compression.json`` (entries keyed ``"<model> (<out dir name>)"``, merged with
the entries already there): per model and seed the run's ``summary.json``, overrides and stage
table, the mean over seeds, the issue's targets checked against the means, and the first seed's
model converted with ``to_sparse_inference`` at batch 1 and 128.
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path
from typing import Any

import torch

from harness import ROOT, write_results
from hypersparse.compress import load_compressed, to_sparse_inference
from hypersparse.data import digits
from hypersparse.experiments.common import batched
from hypersparse.experiments.deep_compression import DeepCompressionConfig, _skeleton
from hypersparse.run import parse_seeds, run_experiment

TARGETS = {  # issue 16: compression ratio, dense baseline, max error increase (points)
    "lenet300": {"min_ratio": 40.0, "min_dense_accuracy": 0.97, "max_error_increase": 0.3},
    "lenet5": {"min_ratio": 39.0, "min_dense_accuracy": 0.985, "max_error_increase": 0.3},
}
KEYS = ("dense_accuracy", "final_accuracy", "compression_ratio", "file_bytes",
        "error_increase_points", "density", "train_seconds")


@torch.no_grad()
def _deploy(model: str, run_dir: Path) -> dict[str, Any]:
    """Load ``model.hsz`` and convert it with ``to_sparse_inference`` at batch 1 and 128
    (one thread; medians on a shared machine): which layers became CSR, the measured
    speed-ups, and the largest output difference on the test set."""
    torch.set_num_threads(1)
    cfg = DeepCompressionConfig(model=model)  # type: ignore[arg-type]
    net = _skeleton(cfg, torch.device("cpu"))
    load_compressed(net, run_dir / "model.hsz")
    net.eval()
    x = digits("mnist", "test").float()
    out: dict[str, Any] = {"run": str(run_dir)}
    for batch in (1, 128):
        fast, rows = to_sparse_inference(net, batch_size=batch, repeats=200, warmup=20)
        out[f"batch_{batch}"] = {
            "layers": [r.as_dict() for r in rows],
            "max_abs_diff_test_logits": float((batched(fast, x) - batched(net, x)).abs().max()),
        }
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", nargs="+", default=["lenet300", "lenet5"])
    ap.add_argument("--seeds", default="0-2")
    ap.add_argument("--set", action="append", default=[], dest="sets", metavar="KEY=VALUE",
                    help="extra overrides, applied to every model (e.g. preset=full)")
    ap.add_argument("--model-set", action="append", default=[], metavar="MODEL:KEY=VALUE",
                    help="an override for one model only")
    ap.add_argument("--out", default=str(ROOT / "runs" / "deep-compression"))
    ap.add_argument("--collect-only", action="store_true",
                    help="do not train; collect the seeds that finished")
    args = ap.parse_args()
    seeds = parse_seeds(args.seeds)
    models: dict[str, Any] = {}
    for model in args.models:
        sets = [f"model={model}", *args.sets]
        sets += [s.split(":", 1)[1] for s in args.model_set if s.split(":", 1)[0] == model]
        out = Path(args.out) / model
        if not args.collect_only:
            for s in seeds:
                run_experiment("deep-compression", sets, seeds=[s], out=out / f"seed-{s}",
                               resume=True, progress=False)
        per_seed: dict[int, Any] = {}
        for s in seeds:
            d = out / f"seed-{s}"
            if not (d / "summary.json").exists():
                continue
            report = json.loads((d / "report.json").read_text())
            cfg = json.loads((d / "config.json").read_text())
            per_seed[s] = {
                "summary": json.loads((d / "summary.json").read_text()),
                "overrides": cfg["overrides"], "config": cfg["config"],
                "stages": [{k: v for k, v in st.items() if k != "layers"}
                           for st in report["stages"]],
                "final_layers": report["stages"][-1]["layers"],
            }
        if not per_seed:
            continue
        mean = {k: statistics.fmean(p["summary"][k] for p in per_seed.values()) for k in KEYS}
        std = {k: statistics.pstdev([p["summary"][k] for p in per_seed.values()])
               for k in KEYS}
        t = TARGETS[model]
        models[f"{model} ({out.parent.name})"] = {
            "model": model, "run_dirs": str(out), "seeds": sorted(per_seed), "mean": mean,
            "std": std, "per_seed": per_seed,
            "targets": t,
            "meets": {
                "ratio": mean["compression_ratio"] >= t["min_ratio"],
                "dense_baseline": mean["dense_accuracy"] >= t["min_dense_accuracy"],
                "error_increase": mean["error_increase_points"] <= t["max_error_increase"],
            },
        }
        models[f"{model} ({out.parent.name})"]["sparse_inference"] = _deploy(
            model, out / f"seed-{min(per_seed)}")
        print(model, json.dumps({"seeds": sorted(per_seed), **mean}, indent=1), flush=True)
    previous = ROOT / "results" / "deep_compression.json"
    if previous.exists():  # keep the entries of other run directories
        models = {**json.loads(previous.read_text()).get("models", {}), **models}
    write_results("deep_compression", {
        "note": ("the package's MNIST split: 9,000 training digits (not the paper's 60k), "
                 "1,000 validation (all selection), 5,000 test (reported only); shared 2-core "
                 "CPU, so train_seconds are wall-clock under load"),
        "models": models,
    })


if __name__ == "__main__":
    main()
