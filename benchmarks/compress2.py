"""Compression II demo on ``mnist-mlp`` (LeNet-300-100): low-rank, k-means sharing, quantisation.

Run: ``HYPERSPARSE_DATA=/work/shared/data/mnist PYTHONPATH=src python benchmarks/compress2.py``

Trains the ``mnist-mlp`` baseline into ``runs/compress2-mlp`` if it is not there yet (seed 0,
default settings), loads its best-on-validation checkpoint, applies each compression, optionally
fine-tunes it for ``--epochs`` epochs through ``hypersparse.train.fit`` (checkpoint chosen on
validation accuracy), and reports validation and test accuracy with the storage in bits.
Writes ``results/compress2.json``. Nothing is tuned on the test split.

Storage counts weights and biases (biases always float32):
- dense / low-rank: 32 bits per parameter;
- weight sharing: ``kept * ceil(log2 k) + 32 k`` per layer (+ one bit per position for a bitmap
  of the kept positions when the layer is pruned; the relative-index format of issue 15 is the
  better encoding);
- quantisation: ``b`` bits per weight + 64 bits per channel (scale, zero point).
"""

from __future__ import annotations

import argparse
import copy
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils import prune as torch_prune

from harness import ROOT, write_results
from hypersparse.compress import (
    low_rank_model,
    quantization_report,
    quantize_model,
    share_weights,
    sharing_report,
)
from hypersparse.data import digits
from hypersparse.experiments.common import accuracy, classification_loss
from hypersparse.experiments.mnist_mlp import mlp
from hypersparse.io import load_checkpoint
from hypersparse.run import RunContext, run_experiment
from hypersparse.train import TensorBatches, TrainConfig, fit


def _bias_bits(model: nn.Module) -> int:
    return 32 * sum(p.numel() for n, p in model.named_parameters() if n.endswith("bias"))


def dense_bits(model: nn.Module) -> int:
    return 32 * sum(p.numel() for p in model.parameters())


def shared_bits(model: nn.Module) -> tuple[int, list[dict[str, Any]]]:
    rows = sharing_report(model)
    return (sum(r.shared_bits + r.mask_bits for r in rows) + _bias_bits(model),
            [r.as_dict() for r in rows])


def quant_bits(model: nn.Module) -> tuple[int, list[dict[str, Any]]]:
    rows = quantization_report(model)
    return sum(r.quantized_bits for r in rows) + _bias_bits(model), [r.as_dict() for r in rows]


def magnitude_prune(model: nn.Module, fraction: float) -> nn.Module:
    """A copy with the smallest ``fraction`` of each Linear weight masked by
    ``torch.nn.utils.prune`` (a stand-in for ``compress.prune``: the sharing code only relies on
    pruned weights being exactly zero; the torch hooks keep them zero during retraining)."""
    model = copy.deepcopy(model)
    for m in model.modules():
        if isinstance(m, nn.Linear):
            torch_prune.l1_unstructured(m, "weight", amount=fraction)
    return model


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--run", default=str(ROOT / "runs" / "compress2-mlp"))
    ap.add_argument("--epochs", type=int, default=1, help="fine-tuning epochs per method")
    ap.add_argument("--lr", type=float, default=1e-4, help="fine-tuning Adam learning rate")
    ap.add_argument("--prune", type=float, default=0.8, help="pruned fraction per layer")
    args = ap.parse_args()
    torch.set_num_threads(2)

    run = Path(args.run)
    best = run / "checkpoints" / "model" / "best.pt"
    if not best.exists():
        run_experiment("mnist-mlp", out=run, progress=False)
    base = mlp((300, 100))
    base.load_state_dict(load_checkpoint(best)["model"])
    base.eval()

    train, val, test = (digits("mnist", s) for s in ("train", "val", "test"))
    vx, vy = val.float(), val.labels
    tx, ty = test.float(), test.labels
    source = TensorBatches((train.float(), train.labels), 64, seed=0)

    @torch.no_grad()
    def evaluate(m: nn.Module) -> dict[str, float]:
        m.eval()
        return {"val_accuracy": accuracy(m(vx), vy), "test_accuracy": accuracy(m(tx), ty)}

    def validate(m: nn.Module) -> dict[str, float]:
        logits = m(vx)
        return {"val_loss": float(F.cross_entropy(logits, vy)),
                "val_accuracy": accuracy(logits, vy)}

    tmp = tempfile.TemporaryDirectory(prefix="compress2-")
    ctx = RunContext(run_dir=Path(tmp.name), config=None, progress=False)

    def finetune(m: nn.Module, stage: str, epochs: int | None = None,
                 lr: float | None = None) -> nn.Module:
        torch.manual_seed(0)
        cfg = TrainConfig(epochs=epochs or args.epochs, batch_size=64, lr=lr or args.lr)
        fit(m, classification_loss, source, config=cfg, ctx=ctx, stage=stage,
            validate=validate, select="val_accuracy", mode="max")
        return m

    rows: list[dict[str, Any]] = []
    base_bits = dense_bits(base)

    def record(method: str, m: nn.Module, bits: int, seconds: float, tuned: bool,
               layers: list[dict[str, Any]] | None = None, **extra: Any) -> None:
        row = {"method": method, "finetuned": tuned, **evaluate(m), "bits": bits,
               "kilobytes": bits / 8 / 1000, "ratio": base_bits / bits,
               "params": sum(p.numel() for p in m.parameters()),
               "compress_seconds": seconds, **extra}
        if layers is not None:
            row["layers"] = layers
        rows.append(row)
        print(f"{method:46s} ft={int(tuned)} val={row['val_accuracy']:.4f} "
              f"test={row['test_accuracy']:.4f} {row['kilobytes']:8.1f} KB  x{row['ratio']:.1f}")

    record("dense float32", base, base_bits, 0.0, False)
    # Control: the same fine-tuning without compression (the baseline is not fully converged).
    record("dense float32", finetune(copy.deepcopy(base), "dense"), base_bits, 0.0, True)

    def timed(fn: Callable[[], Any]) -> tuple[Any, float]:
        t0 = time.perf_counter()
        out = fn()
        return out, time.perf_counter() - t0

    # Low-rank (truncated SVD); output error measured on the validation images.
    # A uniform budget would cut the 100 -> 10 classifier to rank 2, so the budget row factorises
    # the two hidden layers only.
    for label, kw in (("energy=0.9", {"energy": 0.9}), ("energy=0.95", {"energy": 0.95}),
                      ("param_fraction=0.25 (hidden layers)",
                       {"param_fraction": 0.25, "names": ["1", "3"]})):
        (lr_model, report), sec = timed(lambda kw=kw: low_rank_model(base, sample=vx, **kw))
        layers = [r.as_dict() for r in report]
        record(f"low-rank {label}", lr_model, dense_bits(lr_model), sec, False, layers)
        tuned = finetune(lr_model, f"lowrank-{label.split()[0]}")
        record(f"low-rank {label}", tuned, dense_bits(tuned), sec, True)

    # k-means weight sharing (linear init), centroids fine-tuned with summed member gradients.
    for bits in (5, 3, 2):
        sm, sec = timed(lambda bits=bits: share_weights(base, bits=bits))
        b, layers = shared_bits(sm)
        record(f"k-means sharing {bits}-bit", sm, b, sec, False, layers)
        finetune(sm, f"share-{bits}")
        b, layers = shared_bits(sm)
        assert all(r["distinct_values"] <= 2**bits for r in layers)
        record(f"k-means sharing {bits}-bit", sm, b, sec, True)

    # The Deep Compression order on a pruned model: prune 80% -> retrain (2 epochs at the
    # training lr) -> share 5 bits -> fine-tune centroids. Zeros stay zero; only non-zeros are
    # clustered.
    pruned = magnitude_prune(base, args.prune)
    record(f"prune {args.prune:.0%}", pruned, dense_bits(base), 0.0, False)
    finetune(pruned, "prune-retrain", epochs=2, lr=1e-3)
    record(f"prune {args.prune:.0%} + retrain", pruned, dense_bits(base), 0.0, True)
    sm, sec = timed(lambda: share_weights(pruned, bits=5))
    b, layers = shared_bits(sm)
    kept = sum(r["kept"] for r in layers) / sum(r["numel"] for r in layers)
    record(f"prune {args.prune:.0%} + retrain + sharing 5-bit", sm, b, sec, False, layers,
           kept_fraction=kept)
    finetune(sm, "pruned-share-5")
    b, layers = shared_bits(sm)
    for r in layers:  # the sparsity pattern survived clustering and fine-tuning
        assert r["kept"] == int((pruned.get_submodule(r["name"]).weight != 0).sum())
    record(f"prune {args.prune:.0%} + retrain + sharing 5-bit", sm, b, sec, True,
           kept_fraction=kept)

    # Uniform quantisation, straight-through fine-tuning.
    for bits, per_channel in ((8, False), (8, True), (4, True), (2, True)):
        label = f"uniform {bits}-bit per-{'channel' if per_channel else 'tensor'}"
        qm, sec = timed(lambda b=bits, pc=per_channel: quantize_model(base, b, per_channel=pc))
        b, layers = quant_bits(qm)
        record(label, qm, b, sec, False, layers)
        finetune(qm, f"quant-{bits}-{per_channel}")
        b, layers = quant_bits(qm)
        record(label, qm, b, sec, True)

    tmp.cleanup()
    write_results("compress2", {
        "note": "accuracy on the package's MNIST split (train 9,000 / val 1,000 / test 5,000); "
                "fine-tuning keeps the best validation checkpoint; compress_seconds measured on "
                "a shared 2-core CPU",
        "baseline_run": str(run), "finetune_epochs": args.epochs, "finetune_lr": args.lr,
        "prune_fraction": args.prune, "command": "HYPERSPARSE_DATA=/work/shared/data/mnist "
        "PYTHONPATH=src python benchmarks/compress2.py",
        "rows": rows,
    })


if __name__ == "__main__":
    main()
