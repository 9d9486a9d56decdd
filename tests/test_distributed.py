"""Multi-process training under torchrun (gloo on CPU)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import toy  # noqa: F401
from hypersparse.io import load_checkpoint
from hypersparse.run import run_experiment

pytestmark = pytest.mark.slow
HERE = Path(__file__).parent


def torchrun(args: list[str], nproc: int = 2, check: bool = True) -> subprocess.CompletedProcess:
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(HERE), str(HERE.parent / "src")]),
        "OMP_NUM_THREADS": "1",
    }
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        f"--nproc-per-node={nproc}",
        str(HERE / "ddp_entry.py"),
        "run",
        "toy",
        "--quiet",
        "--device",
        "cpu",
        *args,
    ]
    out = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    if check and out.returncode != 0:
        raise AssertionError(out.stderr[-3000:])
    return out


def _params(run_dir: Path) -> dict[str, torch.Tensor]:
    return load_checkpoint(run_dir / "checkpoints" / "model" / "last.pt")["model"]


FIXED = [
    "dropout=0",
    "noise=0",
    "train.optimizer=sgd",
    "train.momentum=0",
    "train.lr=0.05",
    "train.max_steps=5",
]


@pytest.mark.parametrize("sparse", [False, True])
def test_two_processes_match_one_on_the_same_global_batch(tmp_path: Path, sparse: bool) -> None:
    sets = [*FIXED, f"sparse={sparse}", "fixed_sampling=true"]
    one = run_experiment("toy", sets, out=tmp_path / "one", progress=False)
    torchrun([*(f"--set={a}" for a in sets), "--out", str(tmp_path / "two")])
    a, b = _params(one), _params(tmp_path / "two")
    for k in a:
        torch.testing.assert_close(a[k], b[k], atol=1e-6, rtol=0)
    init = toy._model(toy.ToyConfig(sparse=sparse)).state_dict()
    assert not all(torch.equal(a[k], init[k]) for k in a)  # it trained
    assert not (tmp_path / "two" / "seed-0").exists()
    assert json.loads((tmp_path / "two" / "summary.json").read_text())["width"] == 16


def test_sampling_differs_by_rank_and_reproduces(tmp_path: Path) -> None:
    logs = []
    for run in ("a", "b"):
        log = tmp_path / f"rng-{run}"
        torchrun(
            ["--set", "train.max_steps=4", "--set", f"rng_log={log}", "--out", str(tmp_path / run)]
        )
        logs.append([Path(f"{log}.rank{r}").read_text().split() for r in (0, 1)])
    (a0, a1), (b0, b1) = logs
    assert len(a0) == 4 and a0 != a1  # ranks draw different numbers at every step
    assert (a0, a1) == (b0, b1)  # and the same ones again for the same seed


def test_final_losses_with_sampling_on_match_one_process(tmp_path: Path) -> None:
    # Input dropout and label noise on (different on every rank); a convex model trained long
    # enough that the final training loss (averaged over the last 100 steps of 256 samples)
    # measures where training ended, not the noise of a few batches.
    sets = [
        "width=0",
        "noise=0.5",
        "train.epochs=10",
        "train.batch_size=256",
        "train.optimizer=sgd",
        "train.lr=0.1",
        "train.schedule=cosine",
        "train.log_every=100",
    ]
    one = run_experiment("toy", sets, seeds=[0, 1, 2], out=tmp_path / "one", progress=False)
    torchrun([*(f"--set={a}" for a in sets), "--seeds", "0-2", "--out", str(tmp_path / "two")])
    m1 = json.loads((one / "summary.json").read_text())["final_train_loss.mean"]
    m2 = json.loads((tmp_path / "two" / "summary.json").read_text())["final_train_loss.mean"]
    assert abs(m2 - m1) <= 0.05 * m1, (m1, m2)


def test_resume_under_ddp_continues_identically(tmp_path: Path) -> None:
    common = ["--set", "train.checkpoint_every=10"]
    torchrun([*common, "--out", str(tmp_path / "full")])
    part = tmp_path / "part"
    crashed = torchrun([*common, "--set", "crash_at=37", "--out", str(part)], check=False)
    assert crashed.returncode != 0
    assert load_checkpoint(part / "checkpoints" / "model" / "last.pt")["state"]["step"] == 30
    cfg = json.loads((part / "config.json").read_text())
    cfg["config"]["crash_at"] = None
    (part / "config.json").write_text(json.dumps(cfg))
    torchrun([*common, "--resume", "--out", str(part)])
    a, b = _params(tmp_path / "full"), _params(part)
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert (tmp_path / "full" / "metrics.jsonl").read_text() == (part / "metrics.jsonl").read_text()
