"""Scaling of differentiable sorting: quicksort vs NeuralSort vs diffsort (odd-even network).

One forward + backward of sorting a batch of 32 sequences of length n (the sorted values, with
a random linear loss), for n = 4 ... 4096. Time is a median in this process; peak memory is the
``ru_maxrss`` of a fresh child minus that of a child that only builds the inputs. A method stops
growing n once one call takes longer than ``--max-seconds`` or its peak memory would pass
``--max-gib`` at the next size (both dense baselines grow as n^2 or worse).

Peak memory uses the child's ``VmHWM`` (``/proc/self/status``) rather than the harness's
``ru_maxrss``: on Linux a child inherits its parent's ``ru_maxrss`` across fork+exec, so once
this process has grown, every child reports the parent's peak. Timings use one thread (the
machine is shared; two threads on two busy cores spin).

Run: ``PYTHONPATH=src /work/venv/bin/python benchmarks/sort.py`` -> ``results/sort.json``.
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from harness import ROOT, timeit, write_results  # noqa: E402
from hypersparse.functional import neuralsort, quicksort, quicksort_tuples  # noqa: E402

SETUP = """
import torch
torch.set_num_threads(1)
torch.manual_seed(0)
B, n = {batch}, {n}
keys = torch.randn(B, n, requires_grad=True)
w = torch.randn(B, n)
"""

STEP = {
    "quicksort": """
from hypersparse.functional import quicksort
out = quicksort(keys[..., None], keys, samples={samples}, certainty=10.0).values[..., 0]
(out * w).sum().backward()
""",
    "neuralsort": """
from hypersparse.functional import neuralsort
out = (neuralsort(keys, tau=1.0) @ keys[..., None])[..., 0]
(out * w).sum().backward()
""",
    "diffsort": """
from diffsort import DiffSortNet
net = DiffSortNet("odd_even", n, steepness=10.0)
out, _ = net(keys)
(out * w).sum().backward()
""",
}


def peak_hwm(code: str, timeout: float = 900) -> int:
    """Peak resident memory (bytes) of ``python -c code`` in a fresh child, from ``VmHWM``."""
    import os
    import subprocess

    code += ("\nimport re\nprint('__HWM__', re.search(r'VmHWM:\\s+(\\d+)', "
             "open('/proc/self/status').read()).group(1))\n")
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=timeout, env=env)
    if out.returncode != 0:
        raise RuntimeError(f"benchmark child failed:\n{out.stderr[-2000:]}")
    line = [ln for ln in out.stdout.splitlines() if ln.startswith("__HWM__")][-1]
    return int(line.split()[1]) * 1024


def step_fn(method: str, keys: torch.Tensor, w: torch.Tensor, samples: int, net: Any) -> Any:
    def quick() -> None:
        out = quicksort(keys[..., None], keys, samples=samples, certainty=10.0).values[..., 0]
        (out * w).sum().backward()

    def neural() -> None:
        out = (neuralsort(keys, tau=1.0) @ keys[..., None])[..., 0]
        (out * w).sum().backward()

    def diff() -> None:
        out, _ = net(keys)
        (out * w).sum().backward()

    return {"quicksort": quick, "neuralsort": neural, "diffsort": diff}[method]


def memory_ratios(rows: list[dict[str, Any]], floor: int = 4 << 20) -> dict[str, float]:
    """NeuralSort's peak-memory increase over quicksort's per n, where both exceed ``floor``
    bytes (below that the difference of two ``VmHWM`` readings is noise)."""
    by = {(r["method"], r["n"]): r.get("peak_minus_baseline_bytes", 0) for r in rows}
    out = {}
    for (method, n), q in by.items():
        ns = by.get(("neuralsort", n), 0)
        if method == "quicksort" and q > floor and ns > floor:
            out[str(n)] = round(ns / q, 2)
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--samples", type=int, default=4)
    p.add_argument("--max-n", type=int, default=4096)
    p.add_argument("--max-seconds", type=float, default=10.0)
    p.add_argument("--max-gib", type=float, default=3.0)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--methods", default="quicksort,neuralsort,diffsort")
    args = p.parse_args()
    torch.set_num_threads(1)

    sizes = [1 << k for k in range(2, int(math.log2(args.max_n)) + 1)]
    rows: list[dict[str, Any]] = []
    for method in args.methods.split(","):
        stopped: str | None = None
        for n in sizes:
            row: dict[str, Any] = {"method": method, "n": n, "batch": args.batch}
            if method == "quicksort":
                row["tuples"] = quicksort_tuples(n, args.samples)
                row["samples"] = args.samples
            row["n_squared"] = n * n
            row["n_log2_n"] = n * int(math.log2(n))
            if stopped:
                row["skipped"] = stopped
                rows.append(row)
                continue
            torch.manual_seed(0)
            keys = torch.randn(args.batch, n, requires_grad=True)
            w = torch.randn(args.batch, n)
            net = None
            if method == "diffsort":
                from diffsort import DiffSortNet

                net = DiffSortNet("odd_even", n, steepness=10.0)
            fn = step_fn(method, keys, w, args.samples, net)
            t = timeit(fn, repeats=args.repeats, warmup=1)
            # Both children first run the method once at n=4, batch 1, so the code pages it
            # touches count in the baseline and the difference is the data.
            warm = SETUP.format(batch=1, n=4) + STEP[method].format(samples=args.samples)
            base = peak_hwm(warm + SETUP.format(batch=args.batch, n=n))
            peak = peak_hwm(warm + SETUP.format(batch=args.batch, n=n)
                            + STEP[method].format(samples=args.samples))
            row.update(time_s=t["median_s"], time_iqr_s=t["iqr_s"], peak_rss_bytes=peak,
                       baseline_rss_bytes=base, peak_minus_baseline_bytes=peak - base)
            rows.append(row)
            print(f"{method:10s} n={n:5d} {t['median_s'] * 1e3:9.2f} ms "
                  f"{(peak - base) / 2**20:9.1f} MiB", flush=True)
            growth = 16 if method == "diffsort" else 4
            if t["median_s"] > args.max_seconds:
                stopped = f"stopped: n={n} took {t['median_s']:.1f} s > {args.max_seconds} s"
            elif (peak - base) * growth > args.max_gib * 2**30:
                stopped = (f"stopped: n={n} used {(peak - base) / 2**30:.2f} GiB; the next size "
                           f"would pass {args.max_gib} GiB")

    write_results("sort", {
        "description": "one forward+backward of a differentiable sort of a (batch, n) key "
                       "vector (sorted values, linear loss); peak memory = child ru_maxrss minus "
                       "a child that only builds the inputs",
        "note": "timings taken on a shared 2-core machine with other jobs running (load average "
                "about 8), one torch thread; memory is the child's VmHWM",
        "command": "PYTHONPATH=src /work/venv/bin/python benchmarks/sort.py "
                   + " ".join(sys.argv[1:]),
        "memory_ratio_neuralsort_over_quicksort": memory_ratios(rows),
        "rows": rows,
    })


if __name__ == "__main__":
    main()
