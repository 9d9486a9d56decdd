"""CSR sparse inference vs dense ``nn.Linear`` (issue 16).

Run: ``PYTHONPATH=src python benchmarks/csr.py [--threads 1] [--quick]``

For each weight shape (out x in) 300x784, 1024x1024, 4096x4096, density 0.5, 0.3, 0.1, 0.05,
0.01 (uniformly random positions, Gaussian values) and batch 1 and 128, times the forward of
``nn.Linear`` (dense, MKL GEMM/GEMV) and of ``hypersparse.compress.CSRLinear`` built from the
same weight (int32 indices: ``torch.mv`` at batch 1, ``torch.sparse.mm`` otherwise), plus the
same CSR product with int64 indices, all in one process. Times are medians (harness.timeit)
after warm-up. Writes ``results/csr.json`` with per-row speed-ups and, per shape and batch, the
densities at which CSR wins and loses (by medians; the ratio of minima is recorded too, the
least preemption-sensitive estimate on a loaded machine).

The machine is shared with other jobs: timings are noisy; medians over many repeats and one
thread (``--threads``, default 1) keep them comparable, but absolute numbers will differ on a
quiet machine.
"""

from __future__ import annotations

import argparse
import functools
import os
import time
from typing import Any

import torch
from torch import nn

from harness import timeit, write_results
from hypersparse.compress import CSRLinear

SHAPES = [(300, 784), (1024, 1024), (4096, 4096)]
DENSITIES = [0.5, 0.3, 0.1, 0.05, 0.01]
BATCHES = [1, 128]


def _repeats(m: int, n: int, batch: int) -> int:
    work = m * n * batch
    return 60 if work < 2e7 else 25 if work < 3e8 else 9


@torch.no_grad()
def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--quick", action="store_true", help="only the two smaller shapes")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    g = torch.Generator().manual_seed(0)
    rows: list[dict[str, Any]] = []
    shapes = SHAPES[:2] if args.quick else SHAPES
    load_before = os.getloadavg()[0]
    t_start = time.time()
    for m, n in shapes:
        lin = nn.Linear(n, m)
        for batch in BATCHES:
            x = torch.randn(batch, n, generator=g)
            reps = _repeats(m, n, batch)
            dense = timeit(functools.partial(lin, x), repeats=reps, warmup=3)
            for d in DENSITIES:
                w = torch.randn(m, n, generator=g) * (torch.rand(m, n, generator=g) < d)
                lin.weight.copy_(w)
                csr = CSRLinear(w, lin.bias)
                csr64 = CSRLinear(w, lin.bias, index_dtype=torch.int64)
                err = float((csr(x) - lin(x)).abs().max())
                t32 = timeit(functools.partial(csr, x), repeats=reps, warmup=3)
                t64 = timeit(functools.partial(csr64, x), repeats=reps, warmup=3)
                row = {
                    "shape": [m, n], "batch": batch, "density": d, "nnz": csr.nnz,
                    "dense_median_s": dense["median_s"], "dense_iqr_s": dense["iqr_s"],
                    "dense_min_s": dense["min_s"],
                    "csr_int32_median_s": t32["median_s"], "csr_int32_iqr_s": t32["iqr_s"],
                    "csr_int32_min_s": t32["min_s"],
                    "csr_int64_median_s": t64["median_s"],
                    "speedup_int32": dense["median_s"] / t32["median_s"],
                    "speedup_int64": dense["median_s"] / t64["median_s"],
                    "speedup_int32_of_minima": dense["min_s"] / t32["min_s"],
                    "repeats": reps, "max_abs_err": err,
                }
                rows.append(row)
                print(f"{m}x{n} batch {batch:4d} density {d:5.2f}: dense "
                      f"{1e6 * dense['median_s']:9.1f} us, csr int32 "
                      f"{1e6 * t32['median_s']:9.1f} us ({row['speedup_int32']:6.2f}x), int64 "
                      f"{row['speedup_int64']:6.2f}x; minima "
                      f"{row['speedup_int32_of_minima']:6.2f}x",
                      flush=True)
    crossover = []
    for m, n in shapes:
        for batch in BATCHES:
            sel = sorted((r for r in rows if r["shape"] == [m, n] and r["batch"] == batch),
                         key=lambda r: r["density"])
            wins = [r["density"] for r in sel if r["speedup_int32"] > 1.0]
            loses = [r["density"] for r in sel if r["speedup_int32"] <= 1.0]
            crossover.append({
                "shape": [m, n], "batch": batch,
                "csr_wins_at": wins, "csr_loses_at": loses,
                "highest_winning_density": max(wins) if wins else None,
            })
    write_results("csr", {
        "note": ("shared 2-core CPU with other engineers' jobs running (load average "
                 f"{load_before:.1f} at start, {os.getloadavg()[0]:.1f} at end): medians, "
                 f"torch threads = {args.threads}; re-run on a quiet machine for absolute "
                 "numbers"),
        "seconds": time.time() - t_start,
        "rows": rows,
        "crossover": crossover,
    })


if __name__ == "__main__":
    main()
