"""The shared benchmark harness: medians after warm-up, same-process baselines, subprocess peaks.

Usage from a benchmark script in this directory::

    from harness import timeit, peak_rss, write_results
    t = timeit(lambda: f(x), repeats=20, warmup=3)          # {"median_s", "min_s", ...}
    mem = peak_rss("import torch; ...")                       # bytes, measured in a subprocess
    write_results("topic", {"rows": [...]})                  # -> results/topic.json (atomic)

Timings are medians over ``repeats`` runs after ``warmup`` runs, measured in the same process as
their baseline so ratios compare like with like. Peak memory is ``ru_maxrss`` of a fresh child
process, so it includes the interpreter and torch (report it against a baseline child too).
"""

from __future__ import annotations

import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "results"

__all__ = ["timeit", "peak_rss", "write_results", "machine", "ROOT", "RESULTS"]


def timeit(
    fn: Callable[[], Any], *, repeats: int = 20, warmup: int = 3, min_time: float = 0.0
) -> dict[str, float]:
    """Time ``fn()``: ``warmup`` untimed calls, then ``repeats`` timed ones (at least ``min_time``
    seconds in total). Returns median, min, mean and interquartile range in seconds."""
    for _ in range(warmup):
        fn()
    times: list[float] = []
    start = time.perf_counter()
    while len(times) < repeats or time.perf_counter() - start < min_time:
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        fn()
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
    q = statistics.quantiles(times, n=4) if len(times) > 1 else [times[0]] * 3
    return {
        "median_s": statistics.median(times),
        "min_s": min(times),
        "mean_s": statistics.fmean(times),
        "iqr_s": q[2] - q[0],
        "repeats": len(times),
    }


def peak_rss(code: str, *, timeout: float = 600, env: dict[str, str] | None = None) -> int:
    """Peak resident memory in bytes of ``code`` run by a fresh Python child.

    The child reports its own high-water mark (``VmHWM`` from ``/proc/self/status``; else
    ``ru_maxrss``) on its last line, so this process and its other children do not contaminate
    the figure.
    """
    # VmHWM is this process's own peak; ru_maxrss can carry a large parent's figure over fork.
    wrapper = (
        code
        + "\nimport resource\n"
        + "try:\n"
        + "    _hwm = [l for l in open('/proc/self/status') if l.startswith('VmHWM')]\n"
        + "    print('__RSS__', int(_hwm[0].split()[1]))\n"
        + "except (OSError, IndexError):\n"
        + "    print('__RSS__', resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)\n"
    )
    with tempfile.NamedTemporaryFile("w", suffix=".py", delete=False) as f:
        f.write(wrapper)
        path = f.name
    try:
        out = subprocess.run(
            [sys.executable, path],
            capture_output=True,
            text=True,
            timeout=timeout,
            env={
                **os.environ,
                **(env or {}),
                "PYTHONPATH": os.pathsep.join(
                    [str(ROOT / "src"), os.environ.get("PYTHONPATH", "")]
                ),
            },
        )
    finally:
        os.unlink(path)
    if out.returncode != 0:
        raise RuntimeError(f"benchmark child failed:\n{out.stderr[-2000:]}")
    line = [ln for ln in out.stdout.splitlines() if ln.startswith("__RSS__")][-1]
    kib = int(line.split()[1])
    return kib * 1024 if sys.platform != "darwin" else kib


def machine() -> dict[str, Any]:
    """What the numbers were measured on."""
    return {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "cpu_count": os.cpu_count(),
        "processor": platform.processor() or platform.machine(),
        "cuda": torch.cuda.get_device_name() if torch.cuda.is_available() else None,
    }


def write_results(name: str, data: dict[str, Any]) -> Path:
    """Write ``results/<name>.json`` atomically with the machine description attached."""
    RESULTS.mkdir(exist_ok=True)
    path = RESULTS / f"{name}.json"
    payload = {
        "benchmark": name,
        "machine": machine(),
        "measured": time.strftime("%Y-%m-%d"),
        **data,
    }
    fd, tmp = tempfile.mkstemp(dir=RESULTS, suffix=".tmp")
    with os.fdopen(fd, "w") as f:
        json.dump(payload, f, indent=2)
        f.write("\n")
    os.replace(tmp, path)
    return path
