"""Which epoch a glimpse run's checkpoint selection picks (issue 9; numbers in docs/glimpse.md).

Not a benchmark: an analysis of finished ``hypersparse run glimpse`` runs trained with
``--set val_clutterings=N`` (N > 1). Their ``metrics.jsonl`` logs, at every epoch of the
glimpse stage, the error on the whole selection set (``val_error``: the fixed validation set
plus N - 1 more clutterings of the same validation digits) and on the fixed set alone
(``val_fixed_error``, what a run with one cluttering selects on: the training is the same).
For each run this reports the epoch each of the two picks (the first best, as ``fit`` keeps
it), both validation errors there, the last epoch's, and the test error of the run's best
checkpoint (its ``summary.json``). ``--test-last`` also scores the last checkpoint on the
test set, for context only: the protocol reports the selected checkpoint.

Run::

    OMP_NUM_THREADS=1 PYTHONPATH=src python benchmarks/glimpse_selection.py RUN_DIR [...] \
        [--test-last] [--out results/glimpse_selection.json]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import torch

from hypersparse.io import atomic_write_json


def epochs(run: Path, stage: str = "glimpse") -> list[dict[str, float]]:
    """The stage's validation rows of ``run``, one per epoch, in order."""
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()
            if line.strip()]
    val = [r for r in rows if r.get("stage") == stage and r.get("split") == "val"]
    if not val or "val_fixed_error" not in val[0]:
        raise ValueError(f"{run}: no {stage} validation rows with val_fixed_error (was it run "
                         "with --set val_clutterings=N, N > 1?)")
    return val


def pick(val: list[dict[str, float]], key: str) -> int:
    """0-based index of the first row with the smallest ``key``."""
    return min(range(len(val)), key=lambda i: (val[i][key], i))


@torch.no_grad()
def test_error_last(run: Path) -> float:
    sys.path.insert(0, str(Path(__file__).parent))
    from glimpse_breakdown import load
    from hypersparse.experiments.common import batched
    from hypersparse.experiments.glimpse import _fixed_set

    config, model = load(run, "glimpse", "last")
    data = _fixed_set(config.dataset, "test", config.canvas, config.distractors)
    wrong = batched(model, data.float()).argmax(-1) != data.labels
    return float(wrong.float().mean())


def report(run: Path, test_last: bool = False) -> dict[str, Any]:
    val = epochs(run)
    summary = json.loads((run / "summary.json").read_text())
    picks = {key: pick(val, key) for key in ("val_error", "val_fixed_error")}
    out: dict[str, Any] = {
        "run": run.name,
        "epochs": len(val),
        "selected_epoch": picks["val_error"] + 1,
        "selected_val_error": val[picks["val_error"]]["val_error"],
        "selected_val_fixed_error": val[picks["val_error"]]["val_fixed_error"],
        "fixed_only_epoch": picks["val_fixed_error"] + 1,
        "fixed_only_val_fixed_error": val[picks["val_fixed_error"]]["val_fixed_error"],
        "fixed_only_val_error": val[picks["val_fixed_error"]]["val_error"],
        "last_val_error": val[-1]["val_error"],
        "last_val_fixed_error": val[-1]["val_fixed_error"],
        "test_error": summary["test_error"],
    }
    if test_last:
        out["test_error_last"] = test_error_last(run)
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("runs", nargs="+", type=Path)
    parser.add_argument("--test-last", action="store_true",
                        help="also score the last checkpoint on the test set (context only)")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    torch.set_num_threads(1)
    try:
        rows = [report(run, args.test_last) for run in args.runs]
    except (OSError, ValueError) as e:
        parser.error(str(e))
    for r in rows:
        print(json.dumps(r))
    if args.out is not None:
        atomic_write_json(args.out, {"note": __doc__.split("\n\n")[0], "runs": rows})
    return 0


if __name__ == "__main__":
    sys.exit(main())
