"""The MNIST sorting benchmark's cost, and its results table (``results/mnist_sort.json``).

Two commands:

``profile``: one training step of ``mnist-sort`` (one torch thread), split into data (building
the batch's sequence images), key CNN forward, sort loss, backward and optimiser step, per method
and ``n``; the key CNN in the default and in the channels-last memory format; and the cost of one
validation pass (``val_sequences`` sequences) and of the final test pass (10,000 sequences).
Writes ``profile`` in the results file.

``collect DIR...``: reads run directories written by ``hypersparse run mnist-sort`` (one seed or
``--seeds``), and writes their summaries, the command that produced each and a README table
(``tables.results``, rendered by ``benchmarks/readme_tables.py``) into the results file. Numbers
are copied from ``summary.json``, never typed in. Rows already in the results file whose
directories are not given stay; a collected row replaces one with the same method, n, steps,
learning rate, schedule, batch size and sort settings (``certainty=1`` etc.: a variant).

Usage::

    PYTHONPATH=src /work/venv/bin/python benchmarks/mnist_sort.py profile
    PYTHONPATH=src /work/venv/bin/python benchmarks/mnist_sort.py collect runs/msort-*
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

import torch

from harness import RESULTS, machine, timeit, write_results
from hypersparse.data import digits
from hypersparse.data.sequences import digit_sequences, sequence_images
from hypersparse.experiments.mnist_sort import (
    METHODS,
    MnistSortConfig,
    MnistSorter,
    evaluate_sequences,
    sort_loss,
)

TOPIC = "mnist_sort"
NOTE_SHARED = ("Timed on a 2-core machine shared with other engineers' jobs (one torch thread): "
               "treat timings as noisy upper bounds.")


def _load() -> dict[str, Any]:
    path = RESULTS / f"{TOPIC}.json"
    return json.loads(path.read_text()) if path.exists() else {}


def _step_parts(method: str, n: int, batch: int, repeats: int) -> dict[str, Any]:
    cfg = MnistSortConfig(method=method, n=n)
    torch.manual_seed(0)
    model = MnistSorter(cfg)
    net = None
    if method == "diffsort":
        from diffsort import DiffSortNet

        net = DiffSortNet("odd_even", n, steepness=cfg.steepness, distribution=cfg.distribution)
    opt = torch.optim.Adam(model.parameters(), 1e-3)
    train = digits("mnist", "train")
    g = torch.Generator().manual_seed(0)

    def step() -> list[float]:
        t = [time.perf_counter()]
        seqs = digit_sequences(train, batch, n, generator=g)
        images = sequence_images(train, seqs.index)  # (B, n, 1, 112, 28)
        t.append(time.perf_counter())
        keys = model(images)
        t.append(time.perf_counter())
        loss = sort_loss(model, keys, seqs.values, cfg, net)
        t.append(time.perf_counter())
        opt.zero_grad(set_to_none=True)
        loss.backward()
        t.append(time.perf_counter())
        opt.step()
        t.append(time.perf_counter())
        return [b - a for a, b in zip(t, t[1:])]

    for _ in range(2):
        step()
    parts = torch.tensor([step() for _ in range(repeats)]).median(0).values.tolist()
    names = ("data_s", "forward_s", "loss_s", "backward_s", "optimizer_s")
    row: dict[str, Any] = {"method": method, "n": n, "batch": batch, "repeats": repeats}
    row.update(dict(zip(names, parts)))
    row["step_s"] = sum(parts)
    return row


def _channels_last(n: int, batch: int) -> dict[str, Any]:
    cfg = MnistSortConfig(method="neuralsort", n=n)
    x = torch.rand(batch * n, 1, 112, 28)
    out: dict[str, Any] = {"images": batch * n}
    formats = (("contiguous", torch.contiguous_format), ("channels_last", torch.channels_last))
    for name, fmt in formats:
        net = MnistSorter(cfg).keynet.to(memory_format=fmt)
        xi = x.contiguous(memory_format=fmt)

        def fb(net: torch.nn.Module = net, xi: torch.Tensor = xi) -> None:
            net(xi).sum().backward()

        out[f"{name}_fwd_bwd_s"] = timeit(fb, repeats=8, warmup=2)["median_s"]
    return out


def _eval_cost(n: int, sequences: int, batch: int) -> dict[str, Any]:
    """Seconds for one hard-sort evaluation pass, ``batch`` sequences per forward."""
    cfg = MnistSortConfig(method="neuralsort", n=n)
    model = MnistSorter(cfg)
    seqs = digit_sequences(digits("mnist", "val"), sequences, n,
                           generator=torch.Generator().manual_seed(0))
    t = timeit(lambda: evaluate_sequences(model, seqs, batch, torch.device("cpu")),
               repeats=2, warmup=0)
    return {"n": n, "sequences": sequences, "eval_batch": batch, "seconds": t["median_s"]}


def profile_eval(n: int, sequences: int) -> None:
    """Only the evaluation batching comparison (``profile.evaluation_batching``)."""
    torch.set_num_threads(1)
    rows = [_eval_cost(n, sequences, b) for b in (500, 16)]
    for e in rows:
        print("eval", e)
    data = _load()
    data.setdefault("profile", {})["evaluation_batching"] = rows
    write_results(TOPIC, data)


def profile(ns: list[int], batch: int, repeats: int) -> None:
    torch.set_num_threads(1)
    steps = [_step_parts(m, n, batch, repeats) for n in ns for m in METHODS]
    for r in steps:
        print(f"n={r['n']:>2} {r['method']:<10} step {r['step_s'] * 1e3:7.1f} ms "
              f"(data {r['data_s'] * 1e3:.1f}, fwd {r['forward_s'] * 1e3:.1f}, "
              f"loss {r['loss_s'] * 1e3:.1f}, bwd {r['backward_s'] * 1e3:.1f}, "
              f"opt {r['optimizer_s'] * 1e3:.1f})")
    layout = _channels_last(3, batch)
    print("key CNN fwd+bwd, 48 images:", layout)
    # 500 sequences per batch was the default before; 16 is now.
    evals = [_eval_cost(n, 500 if n < 10 else 100, b) for n in ns for b in (500, 16)]
    for e in evals:
        print("eval", e)
    data = _load()
    data["profile"] = {
        "steps": steps,
        "memory_format": layout,
        "evaluation": evals,
        "threads": 1,
        "machine": machine(),
        "note": NOTE_SHARED,
    }
    write_results(TOPIC, data)


def _run_dirs(path: Path) -> list[Path]:
    """The seed directories of a run (itself if it ran one seed)."""
    if (path / "config.json").exists():
        return [path]
    return sorted(p for p in path.glob("seed-*") if (p / "summary.json").exists())


def _command(cfg: dict[str, Any], seeds: list[int], out: str) -> str:
    sets = " ".join(f"--set {o}" for o in cfg.get("overrides", []))
    if cfg.get("preset"):
        sets = f"--set preset={cfg['preset']} " + sets
    seed_arg = f"{seeds[0]}-{seeds[-1]}" if len(seeds) > 1 else str(seeds[0])
    return (f"PYTHONPATH=src python -m hypersparse run mnist-sort {sets} --seeds {seed_arg} "
            f"--threads 1 --out {out}")


def _mean_std(values: list[float]) -> tuple[float, float]:
    t = torch.tensor(values, dtype=torch.float64)
    return float(t.mean()), float(t.std(unbiased=False)) if len(values) > 1 else 0.0


def collect(paths: list[Path]) -> None:
    rows = []
    for path in paths:
        seeds = _run_dirs(path)
        if not seeds:
            print(f"skipping {path}: no finished run", file=sys.stderr)
            continue
        summaries = [json.loads((p / "summary.json").read_text()) for p in seeds]
        cfg = json.loads((seeds[0] / "config.json").read_text())
        c = cfg["config"]
        steps = c["train"]["max_steps"] or c["train"]["epochs"] * c["train_batches_per_epoch"]
        seed_ids = [c_["config"]["seed"] for c_ in
                    (json.loads((p / "config.json").read_text()) for p in seeds)]
        em = _mean_std([s["exact_match"] for s in summaries])
        ea = _mean_std([s["element_accuracy"] for s in summaries])
        variant = " ".join(o for o in cfg.get("overrides", [])
                           if o.split("=")[0] in _SORT_SETTINGS)
        rows.append({
            "method": c["method"], "variant": variant, "n": c["n"], "steps": steps,
            "seeds": seed_ids,
            "lr": c["train"]["lr"], "schedule": c["train"]["schedule"],
            "batch_size": c["train"]["batch_size"],
            "exact_match": [s["exact_match"] for s in summaries],
            "element_accuracy": [s["element_accuracy"] for s in summaries],
            "exact_match_mean": em[0], "exact_match_std": em[1],
            "element_accuracy_mean": ea[0], "element_accuracy_std": ea[1],
            "best_step": [s.get("best_step") for s in summaries],
            "train_seconds": [s.get("train_seconds") for s in summaries],
            "test_sequences": summaries[0]["test_sequences"],
            "train_digits": summaries[0]["train_digits"],
            "command": _command(cfg, seed_ids, str(path)),
        })
    data = _load()
    # rows already in the results whose run directories were not given stay (a new row replaces
    # an old one with the same method, n and training recipe)
    new = {_key(r) for r in rows}
    rows += [r for r in data.get("runs", []) if _key(r) not in new]
    order = {m: i for i, m in enumerate(METHODS)}
    rows.sort(key=lambda r: (r["n"], r["steps"], order.get(r["method"], 9)))
    data["runs"] = rows
    data["tables"] = {"results": _table(rows)}
    write_results(TOPIC, data)
    print(json.dumps(data["tables"], indent=1))


#: Settings of the sorts themselves: a run that sets one is a variant of its method.
_SORT_SETTINGS = ("samples", "certainty", "proposal", "quicksort_loss", "level_loss", "tau",
                  "steepness", "distribution")


def _key(row: dict[str, Any]) -> tuple[Any, ...]:
    return (row["method"], row.get("variant", ""), row["n"], row["steps"], row["lr"],
            row["schedule"], row["batch_size"])


def _fmt(mean: float, std: float, k: int) -> str:
    return f"{mean:.3f} ± {std:.3f}" if k > 1 else f"{mean:.4f}"


def _counts(rows: list[dict[str, Any]], key: str) -> str:
    """The distinct values of ``key`` over the rows, as text (one value when all agree)."""
    return " / ".join(f"{v:,}" for v in sorted({int(r[key]) for r in rows}))


def _table(rows: list[dict[str, Any]]) -> dict[str, Any]:
    names = {"quicksort": "quicksort", "neuralsort": "NeuralSort", "diffsort": "diffsort"}
    out = []
    for r in rows:
        k = len(r["seeds"])
        name = names.get(r["method"], r["method"])
        if r.get("variant"):
            name += f" (`{r['variant']}`)"
        out.append([r["n"], r["steps"], name, k,
                    _fmt(r["exact_match_mean"], r["exact_match_std"], k),
                    _fmt(r["element_accuracy_mean"], r["element_accuracy_std"], k)])
    return {
        "columns": ["n", "steps", "method", "seeds", "exact match", "element-wise"],
        "rows": out,
        "note": (f"Mean ± std (population) over seeds; {_counts(rows, 'test_sequences')} test "
                 f"sequences per seed; {_counts(rows, 'train_digits')} training digits (the "
                 "paper: 55,000). Commands in results/mnist_sort.json."),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("profile", help="time a training step and the evaluation passes")
    p.add_argument("--n", type=int, nargs="+", default=[3, 5, 15])
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--repeats", type=int, default=10)
    p.add_argument("--eval-only", action="store_true",
                   help="only compare evaluation batch sizes (500 vs 16 sequences) at n[0]")
    c = sub.add_parser("collect", help="gather run summaries into results/mnist_sort.json")
    c.add_argument("dirs", type=Path, nargs="+")
    args = parser.parse_args()
    if args.cmd == "profile" and args.eval_only:
        profile_eval(args.n[0], 500)
    elif args.cmd == "profile":
        profile(args.n, args.batch, args.repeats)
    else:
        collect(args.dirs)
    return 0


if __name__ == "__main__":
    sys.exit(main())
