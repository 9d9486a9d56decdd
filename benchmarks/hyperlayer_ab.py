"""A/B of the hyperlayer train step between checkouts, in the same machine state.

``python benchmarks/hyperlayer_ab.py DIR [DIR ...] [--rounds R]`` times the train step of the
layer states of ``benchmarks/hyperlayer.py`` as imported from each checkout DIR (e.g. a ``git
worktree`` of an older commit, and this one), alternating the checkouts for R rounds. Every
(DIR, n, state) runs in a fresh child process, as the README's table does: glibc's allocator
state left by earlier steps changes later timings (docs/hyperlayer.md). Prints, per row, the
median CPU time of one step (one thread) and the page faults per step. Absolute timings drift
with other jobs on a shared machine; an interleaved A/B does not.
"""

from __future__ import annotations

import os
import resource
import subprocess
import sys
import time

STATES = [(64, "init"), (64, "converged"), (256, "init"), (256, "sigma1"), (256, "converged"),
          (1024, "init"), (1024, "converged")]


def child(src: str, n: int, state: str) -> None:
    sys.path.insert(0, src + "/benchmarks")
    sys.path.insert(0, src + "/src")
    import torch

    torch.set_num_threads(1)
    import hyperlayer

    step, _ = hyperlayer.train_step(hyperlayer.make(n, state))
    reps = 60 if n <= 256 else 15
    for _ in range(10 if n <= 256 else 3):
        step()
    times = []
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(reps):
        t = time.process_time()
        step()
        times.append(time.process_time() - t)
    faults = (resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before) / reps
    times.sort()
    print(f"{src} n={n} {state}: {1e3 * times[len(times) // 2]:.3f} ms CPU, "
          f"{faults:.0f} page faults per step", flush=True)


def main() -> None:
    if sys.argv[1] == "--child":
        child(sys.argv[2], int(sys.argv[3]), sys.argv[4])
        return
    args = sys.argv[1:]
    rounds = 2
    if "--rounds" in args:
        i = args.index("--rounds")
        rounds = int(args[i + 1])
        del args[i:i + 2]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    for _ in range(rounds):
        for n, state in STATES:
            for src in args:
                subprocess.run([sys.executable, __file__, "--child", src, str(n), state],
                               env=env, check=True)


if __name__ == "__main__":
    main()
