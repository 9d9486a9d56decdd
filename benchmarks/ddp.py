"""Data-parallel scaling: training samples/s of ``mnist-mlp`` with 1 and 2 processes.

Both use the same global batch and the same total number of threads (2 threads in one process,
or 1 thread in each of 2 processes under ``torchrun``, gloo backend). The figure is steps x
global batch / the loop's own step time (``train_seconds`` in the summary), so start-up and
evaluation are excluded.

    PYTHONPATH=src python benchmarks/ddp.py
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

from harness import ROOT, write_results

STEPS, BATCH = 300, 256


def run(nproc: int, threads: int, out: Path) -> float:
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "PYTHONPATH": str(ROOT / "src")}
    sets = [
        f"--set=train.max_steps={STEPS}",
        f"--set=train.batch_size={BATCH}",
        "--set=train.log_every=50",
    ]
    if nproc == 1:
        cmd = [sys.executable, "-m", "hypersparse"]
    else:
        cmd = [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--standalone",
            f"--nproc-per-node={nproc}",
            "-m",
            "hypersparse",
        ]
    cmd += ["run", "mnist-mlp", "--quiet", "--device", "cpu", "--out", str(out), *sets]
    subprocess.run(cmd, env=env, check=True, capture_output=True, timeout=1800)
    summary = json.loads((out / "summary.json").read_text())
    return STEPS * BATCH / summary["train_seconds"]


def main() -> None:
    rows = []
    with tempfile.TemporaryDirectory() as d:
        base = None
        for nproc, threads in ((1, 2), (2, 1), (1, 1)):
            rate = run(nproc, threads, Path(d) / f"p{nproc}t{threads}")
            base = base or rate
            rows.append([nproc, threads, rate, rate / base])
            print(f"{nproc} process(es) x {threads} thread(s): {rate:,.0f} samples/s")
    write_results(
        "ddp",
        {
            "steps": STEPS,
            "global_batch": BATCH,
            "rows": rows,
            "tables": {
                "scaling": {
                    "columns": ["processes", "threads each", "samples/s", "vs 1 x 2 threads"],
                    "rows": rows,
                }
            },
        },
    )


if __name__ == "__main__":
    main()
