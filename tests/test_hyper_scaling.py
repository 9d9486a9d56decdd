"""Tests of the scaled hyperlayer: neighbour-limited normalisation, the 2^20 -> 2^20 layer and
the identity experiment (issue 5)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from hypersparse.functional import (
    bound_sigmas,
    first_occurrence,
    linear_index,
    log_densities,
    neighbour_pairs,
    point_weights,
    sample_points,
)
from hypersparse.nn import SparseLayer

SRC = Path(__file__).resolve().parent.parent / "src"


def random_context(sizes: list[int], learn: list[int], k: int, lead: tuple[int, ...],
                   sigma_scale: float, seed: int) -> tuple[torch.Tensor, ...]:
    g = torch.Generator().manual_seed(seed)
    r = len(sizes)
    means = torch.rand(*lead, k, r, generator=g, dtype=torch.float64)
    means = means * (torch.tensor(sizes, dtype=torch.float64) - 1)
    fixed = [c for c in range(r) if c not in learn]
    means[..., fixed] = means[..., fixed].round()
    raw = torch.randn(*lead, k, generator=g, dtype=torch.float64) * 2
    sig = bound_sigmas(raw, [sizes[c] for c in learn], sigma_scale=sigma_scale)
    vals = torch.randn(*lead, k, generator=g, dtype=torch.float64)
    region = [min(4, sizes[c]) for c in learn]
    pts = sample_points(means, sizes, learn, region=region, generator=g).flatten(-3, -2)
    keep = first_occurrence(linear_index(pts, sizes))
    return pts, keep, means, sig, vals


@settings(max_examples=25, deadline=None)
@given(sizes=st.lists(st.integers(2, 40), min_size=2, max_size=3), k=st.integers(1, 24),
       batched=st.booleans(), templated=st.booleans(),
       sigma_scale=st.sampled_from([0.002, 0.02, 0.2]), seed=st.integers(0, 10**6))
def test_neighbour_weights_equal_exact(sizes: list[int], k: int, batched: bool, templated: bool,
                                       sigma_scale: float, seed: int) -> None:
    r = len(sizes)
    learn = list(range(1, r)) if templated else list(range(r))
    lead = (3,) if batched else ()
    pts, keep, means, sig, vals = random_context(sizes, learn, k, lead, sigma_scale, seed)
    exact = point_weights(pts, keep, means, sig, vals, learn)
    near = point_weights(pts, keep, means, sig, vals, learn, method="neighbours", sizes=sizes)
    torch.testing.assert_close(near, exact, atol=1e-5, rtol=0)


def test_neighbour_gradients_match_exact() -> None:
    pts, keep, means, sig, vals = random_context([30, 30], [0, 1], 12, (), 0.02, 1)
    grads = []
    for method in ("exact", "neighbours"):
        m, s, v = (t.clone().requires_grad_() for t in (means, sig, vals))
        w = point_weights(pts, keep, m, s, v, [0, 1], method=method, sizes=[30, 30])
        (w * torch.linspace(-1, 1, w.shape[0], dtype=w.dtype)).sum().backward()
        grads.append([m.grad, s.grad, v.grad])
    for a, b in zip(*grads):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-4)


def test_neighbour_gradcheck() -> None:
    pts, keep, means, sig, vals = random_context([12, 12], [0, 1], 4, (), 0.05, 3)
    means, sig, vals = (t.requires_grad_() for t in (means, sig, vals))
    assert torch.autograd.gradcheck(
        lambda m, s, v: point_weights(pts, keep, m, s, v, [0, 1], method="neighbours",
                                      sizes=[12, 12]), (means, sig, vals))


@pytest.mark.parametrize("sigma_scale", [0.001, 0.01, 0.05])
def test_dropped_weight_below_1e3_of_each_tuple(sigma_scale: float) -> None:
    sizes = [128, 128]
    pts, keep, means, sig, vals = random_context(sizes, [0, 1], 128, (), sigma_scale, 7)
    logd = log_densities(pts, means, sig, [0, 1]).masked_fill(~keep, float("-inf"))
    dens = torch.exp(logd - logd.amax(1, keepdim=True))  # (K, P), each tuple's peak = 1
    t, q = neighbour_pairs(pts, keep, means, sig, sizes, [0, 1])
    kept = torch.zeros_like(dens)
    kept[t, q] = dens[t, q]
    dropped = 1 - kept.sum(1) / dens.sum(1)
    assert (dropped < 1e-3).all(), dropped.max()
    assert len(t) < dens.numel()  # and it does skip pairs


def test_auto_method() -> None:
    small = SparseLayer(16, 16, 16)
    sig = torch.ones(16, 2)
    assert small.method(sig, small.samples_per_tuple * 16) == "exact"
    big = SparseLayer(512, 512, 512, sigma_scale=0.001)
    s = big.tuples(torch.zeros(1, 512))[1]
    assert big.method(s, big.samples_per_tuple * 512) == "neighbours"
    wide = SparseLayer(512, 512, 512, sigma_scale=0.5)
    s = wide.tuples(torch.zeros(1, 512))[1]
    assert wide.method(s, wide.samples_per_tuple * 512) == "chebyshev"
    # both give the same layer output for the same sample
    x = torch.randn(2, 512)
    a = SparseLayer(512, 512, 512, sigma_scale=0.001, normalisation="exact")
    b = SparseLayer(512, 512, 512, sigma_scale=0.001, normalisation="neighbours")
    b.load_state_dict(a.state_dict())
    a.generator = torch.Generator().manual_seed(0)
    b.generator = torch.Generator().manual_seed(0)
    torch.testing.assert_close(a(x), b(x), atol=1e-4, rtol=1e-4)


@pytest.mark.slow
def test_2e20_layer_under_1gb() -> None:
    code = textwrap.dedent("""
        import re, torch
        from hypersparse.nn import SparseLayer
        torch.manual_seed(0)
        layer = SparseLayer((1024, 1024), (1024, 1024), 2**16, sigma_scale=0.001)
        x = torch.randn(4, 1024, 1024)
        y = layer(x)
        y.pow(2).mean().backward()
        assert y.shape == (4, 1024, 1024) and layer.raw_means.grad.abs().sum() > 0
        # VmHWM is this process's own peak (ru_maxrss is inherited from the parent on Linux)
        print(re.search(r"VmHWM:\\s+(\\d+)", open("/proc/self/status").read()).group(1))
    """)
    env = {**os.environ, "PYTHONPATH": str(SRC), "OMP_NUM_THREADS": "1"}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env,
                         timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    peak_kib = int(out.stdout.split()[-1])
    assert peak_kib * 1024 < 2**30, f"peak RSS {peak_kib / 1024:.0f} MiB"


def test_identity_smoke(tmp_path: Path) -> None:
    from hypersparse.run import run_experiment

    run_dir = run_experiment("identity", ["train.max_steps=3", "n=8", "check_every=1"],
                             out=tmp_path / "r", progress=False)
    for name in ("config.json", "env.json", "metrics.jsonl", "summary.json", "curves.png",
                 "identity.png", "checkpoints/model/best.pt", "checkpoints/model/last.pt"):
        assert (run_dir / name).exists(), name
    summary = json.loads((run_dir / "summary.json").read_text())
    assert {"exact_identity", "batches_to_identity", "seconds_to_identity", "n"} <= set(summary)
    assert summary["n"] == 8 and summary["steps"] <= 3
    assert isinstance(summary["exact_identity"], bool)
    if summary["exact_identity"]:
        assert summary["batches_to_identity"] is not None
    from hypersparse.run import evaluate_run

    ev = evaluate_run(run_dir, device="cpu")
    assert ev["exact_identity"] == summary["exact_identity"]
