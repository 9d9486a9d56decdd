"""A/B of the hyperlayer train step between two checkouts, in the same machine state.

Run ``python benchmarks/hyperlayer_ab.py DIR`` for each checkout DIR (e.g. a ``git worktree`` of
an older commit, then this one), alternating a few times. Prints the median CPU time of one
train step (one thread) for the layer states of ``benchmarks/hyperlayer.py``, as imported from
DIR. Absolute timings drift with other jobs on a shared machine; an interleaved A/B does not.
"""

from __future__ import annotations

import importlib
import sys
import time


def main() -> None:
    src = sys.argv[1]
    sys.path.insert(0, src + "/benchmarks")
    sys.path.insert(0, src + "/src")
    import torch

    torch.set_num_threads(1)
    bench = importlib.import_module("hyperlayer")
    for n, state in [(64, "init"), (64, "sigma1"), (256, "init"), (256, "sigma1"),
                     (256, "converged"), (1024, "init")]:
        step, _ = bench.train_step(bench.make(n, state))
        for _ in range(5 if n < 1024 else 2):
            step()
        times = []
        for _ in range(40 if n < 1024 else 10):
            t = time.process_time()
            step()
            times.append(time.process_time() - t)
        times.sort()
        print(src, n, state, f"{1e3 * times[len(times) // 2]:.3f} ms", flush=True)


if __name__ == "__main__":
    main()
