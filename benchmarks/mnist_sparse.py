"""Training-step time of the ``mnist-sparse`` classifier, per training contraction.

One step = forward, backward and Adam on a batch of 64 MNIST-sized images (random pixels: the
cost does not depend on the values), default config (fan-in (64, 24), context 4). The modes are
timed interleaved (round robin, several rounds, the median of all steps of a mode), so a load
change on a shared machine hits all modes alike. Also: the fine-tune step (frozen eval
connectivity), the adaptive variant's step and where the structure step's time goes (torch
profiler, self CPU time by op).

    PYTHONPATH=src OMP_NUM_THREADS=1 python benchmarks/mnist_sparse.py
"""

from __future__ import annotations

import os
import statistics
import time
from collections import defaultdict
from typing import Any

import torch
import torch.nn.functional as F

from harness import write_results
from hypersparse.experiments.mnist_sparse import (
    FanInSparseLayer,
    MnistSparseConfig,
    _optimizer,
    build_sparse,
)


def make_step(contract: str, *, frozen: bool = False, adaptive: bool = False) -> Any:
    torch.manual_seed(0)
    config = MnistSparseConfig(contract=contract)  # type: ignore[arg-type]
    model = build_sparse(config, torch.rand(28, 28) + 0.1, adaptive=adaptive)
    if frozen:
        for layer in model.sparse_layers():
            if isinstance(layer, FanInSparseLayer):
                layer.freeze_connectivity()
    opt = _optimizer(model, config)
    model.train()
    g = torch.Generator().manual_seed(1)
    x, y = torch.rand(64, 1, 28, 28, generator=g), torch.randint(0, 10, (64,), generator=g)

    def step() -> None:
        loss = F.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()

    return step


def interleaved(steps: dict[str, Any], rounds: int, per_round: int) -> dict[str, dict[str, float]]:
    times: dict[str, list[float]] = defaultdict(list)
    for fn in steps.values():
        for _ in range(3):
            fn()
    for _ in range(rounds):
        for name, fn in steps.items():
            for _ in range(per_round):
                t0 = time.perf_counter()
                fn()
                times[name].append(time.perf_counter() - t0)
    return {k: {"median_s": statistics.median(v), "min_s": min(v), "repeats": len(v)}
            for k, v in times.items()}


#: the step's parts: custom autograd Functions of the core (forward and backward) and the
#: Adam step; the rest is sampling, duplicate removal, coalescing and the small ops around them
PARTS = {"point weights (_ExactWeights)": ("_ExactWeights", "_ExactWeightsBackward"),
         "contraction (_SharedContract)": ("_SharedContract", "_SharedContractBackward"),
         "optimizer": ("Optimizer.step#Adam.step",)}


def profile_step(step: Any, n: int = 10) -> dict[str, Any]:
    from torch.profiler import ProfilerActivity, profile

    step()
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(n):
            step()
    events = prof.key_averages()
    rows = sorted(events, key=lambda e: -e.self_cpu_time_total)
    total = sum(e.self_cpu_time_total for e in rows)
    by_key = {e.key: e.cpu_time_total for e in events}
    parts = {part: round(sum(by_key.get(k, 0.0) for k in keys) / total, 4)
             for part, keys in PARTS.items()}
    return {
        "total_ms_per_step": round(total / 1e3 / n, 2),
        "fraction_by_part": parts,
        "top_ops": [{"op": e.key, "self_cpu_fraction": round(e.self_cpu_time_total / total, 4),
                     "self_ms_per_step": round(e.self_cpu_time_total / 1e3 / n, 3)}
                    for e in rows[:12]],
    }


def main() -> None:
    load_before = os.getloadavg()
    steps = {
        "structure, contract=sparse (core)": make_step("sparse"),
        "structure, contract=coalesce (default)": make_step("coalesce"),
        "structure, contract=dense (scratch, opt-in)": make_step("dense"),
        "fine-tune (frozen), contract=sparse": make_step("sparse", frozen=True),
        "fine-tune (frozen), contract=coalesce": make_step("coalesce", frozen=True),
    }
    rows = interleaved(steps, rounds=5, per_round=10)
    adaptive = interleaved({"adaptive (first layer fan-in 16), coalesce": make_step(
        "coalesce", adaptive=True)}, rounds=1, per_round=5)
    rows.update(adaptive)
    prof = {mode: profile_step(make_step(mode)) for mode in ("sparse", "coalesce")}
    load_after = os.getloadavg()
    for name, r in rows.items():
        print(f"{name:48s} {r['median_s'] * 1e3:8.1f} ms/step (min {r['min_s'] * 1e3:.1f})")
    for mode, p in prof.items():
        print(mode, p["total_ms_per_step"], "ms/step profiled;", p["fraction_by_part"])
    write_results("mnist_sparse", {
        "what": "mnist-sparse training step (batch 64, forward+backward+Adam), default config",
        "threads": torch.get_num_threads(),
        "load_average_before": load_before,
        "load_average_after": load_after,
        "note": "shared 2-core machine (other engineers' jobs running): compare modes within "
                "this file (interleaved), not absolute times across files",
        "steps": rows,
        "profile_top_ops": prof,
    })


if __name__ == "__main__":
    main()
