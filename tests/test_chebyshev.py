"""The low-rank (Chebyshev) Gauss transform for all-pairs weights at wide sigma (issue 5)."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import hypersparse.functional.chebyshev as C
import hypersparse.functional.hyper as H
from hyper_contexts import context
from hypersparse.functional import (
    chebyshev_degrees,
    chebyshev_nodes_needed,
    chebyshev_plan,
    chebyshev_weights,
    first_occurrence,
    linear_index,
    log_densities,
    point_weights,
)
from hypersparse.nn import SparseLayer


def weights_and_grads(fn, pts, keep, means, sig, vals, gw):  # type: ignore[no-untyped-def]
    m, s, v = (t.clone().requires_grad_() for t in (means, sig, vals))
    w = fn(pts, keep, m, s, v, list(range(means.shape[-1])))
    assert w is not None
    return [w.detach(), *torch.autograd.grad(w, [m, s, v], gw)]


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).abs().max() / b.abs().max().clamp_min(1e-30))


@settings(max_examples=25, deadline=None)
@given(sizes=st.lists(st.integers(2, 80), min_size=1, max_size=3), k=st.integers(1, 24),
       batched=st.booleans(), sigma_scale=st.sampled_from([0.1, 0.3, 1.0]),
       seed=st.integers(0, 10**6))
def test_matches_exact_all_pairs(sizes: list[int], k: int, batched: bool, sigma_scale: float,
                                 seed: int) -> None:
    pts, keep, means, sig, vals = context(sizes, k, (3,) if batched else (), sigma_scale, seed)
    if chebyshev_plan(pts, sig, range(len(sizes))) is None:
        return  # too many Chebyshev points for this draw (checked elsewhere)
    if chebyshev_weights(pts, keep, means, sig, vals, range(len(sizes))) is None:
        # declined: some tuple's normaliser is too small to trust (sigma far below a cell)
        z = (log_densities(pts, means, sig, range(len(sizes))).exp() * keep.unsqueeze(-2)).sum(-1)
        assert float(z.min()) < C.CHEBYSHEV_MIN_Z * 1.001
        return
    gw = torch.randn(pts.shape[:-1], dtype=torch.float64,
                     generator=torch.Generator().manual_seed(seed))
    got = weights_and_grads(chebyshev_weights, pts, keep, means, sig, vals, gw)
    want = weights_and_grads(point_weights, pts, keep, means, sig, vals, gw)
    assert rel(got[0], want[0]) < 1e-7  # weights
    # gradients are the interpolants' derivatives: by Markov's inequality their error can be up
    # to (m - 1)^2 times the values' (measured: up to ~1e-6 relative, e.g. a 2-wide column)
    for g, w in zip(got[1:], want[1:]):
        assert rel(g, w) < 1e-5
    assert (got[0][~keep] == 0).all()  # duplicates get no weight


def test_float32_within_float32_rounding() -> None:
    pts, keep, means, sig, vals = context([256, 256], 256, (), 0.15, 0)
    gw = torch.randn(pts.shape[0], dtype=torch.float64)
    want = weights_and_grads(point_weights, pts, keep, means, sig, vals, gw)
    f32 = [t.float() for t in (means, sig, vals)]
    got = weights_and_grads(chebyshev_weights, pts, keep, *f32, gw.float())
    assert got[0].dtype == torch.float32
    for g, w in zip(got, want):
        assert rel(g.double(), w) < 2e-5


def test_gradcheck() -> None:
    pts, keep, means, sig, vals = context([12, 9], 5, (2,), 0.5, 1)
    assert chebyshev_plan(pts, sig, [0, 1]) is not None

    def fn(m: torch.Tensor, s: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        w = chebyshev_weights(pts, keep, m, s, v, [0, 1])
        assert w is not None
        return w

    inputs = tuple(t.clone().requires_grad_() for t in (means, sig, vals))
    assert torch.autograd.gradcheck(fn, inputs)


def test_weights_of_unit_values_sum_to_k() -> None:
    pts, keep, means, sig, _ = context([64, 64], 16, (), 0.2, 2)
    w = chebyshev_weights(pts, keep, means, sig, torch.ones(16, dtype=torch.float64), [0, 1])
    assert w is not None
    assert float(w.sum()) == pytest.approx(16.0, rel=1e-9)  # every tuple spreads exactly 1


def test_k1_and_no_keep() -> None:
    pts = torch.cartesian_prod(torch.arange(20), torch.arange(30))  # (600, 2), all distinct
    means, sig = torch.tensor([[4.3, 17.8]]), torch.tensor([[7.0, 11.0]])
    got = chebyshev_weights(pts, None, means, sig, torch.tensor([2.0]), [0, 1])
    want = point_weights(pts, None, means, sig, torch.tensor([2.0]), [0, 1])
    assert got is not None and rel(got, want) < 1e-5


def test_not_applicable() -> None:
    pts, keep, means, sig, vals = context([256, 256], 64, (), 0.15, 3)
    learn = [0, 1]
    assert chebyshev_weights(pts, keep, means, sig * 0.02, vals, learn) is None  # narrow
    assert chebyshev_weights(pts.double(), keep, means, sig, vals, learn) is None  # float points
    assert chebyshev_weights(pts, keep, means, torch.zeros_like(sig), vals, learn) is None
    assert chebyshev_weights(pts[:0], keep[:0], means, sig, vals, learn) is None  # no points
    two = (pts.expand(2, *pts.shape), keep.expand(2, *keep.shape))  # 2 contexts, shared tuples
    assert chebyshev_weights(*two, means, sig, vals, learn) is None
    # a tuple far from every point (hand-made points): its normaliser is too small to trust
    far = means.clone()
    far[0] = torch.tensor([255.0, 255.0])
    corner = pts.clamp(max=60)
    assert chebyshev_weights(corner, first_occurrence(linear_index(corner, [256, 256])), far,
                             sig * 0.3, vals, learn) is None
    # template columns are exact, not interpolated: declined (point_weights handles them)
    assert chebyshev_weights(pts, keep, means, sig[:, 1:], vals, [1]) is None
    # a range far longer than the points (hand-made points): no table that size
    spread = torch.tensor([[0, 0], [3_000_000, 0]])
    assert chebyshev_weights(spread, None, means[:1], sig[:1] * 1e5, vals[:1], learn) is None
    # point_weights falls back to exact pairs where the transform does not apply
    w = point_weights(pts, keep, means, sig * 0.02, vals, learn, method="chebyshev")
    assert rel(w, point_weights(pts, keep, means, sig * 0.02, vals, learn)) == 0.0


@settings(max_examples=30, deadline=None)
@given(half=st.floats(1.0, 2000.0), ratio=st.floats(0.1, 12.0), log_eps=st.floats(-14, -4))
def test_node_count_meets_the_error_bound(half: float, ratio: float, log_eps: float) -> None:
    """The Bernstein-ellipse count interpolates every Gaussian of that width to eps."""
    lo, hi = 0, int(math.ceil(2 * half))
    sigma, eps = (hi - lo) / 2 / ratio, 10.0**log_eps
    m = chebyshev_nodes_needed((hi - lo) / 2, sigma, eps)
    table, nodes, dct = C._constants(lo, hi, m, torch.device("cpu"))
    mu = torch.linspace(-0.3 * hi, 1.3 * hi, 97, dtype=torch.float64)
    coef = C._coefficients(mu, torch.full_like(mu, sigma), nodes, dct)  # (97, m)
    x = torch.arange(lo, hi + 1, dtype=torch.float64)
    truth = torch.exp(-0.5 * ((x - mu.unsqueeze(-1)) / sigma) ** 2)  # (97, n)
    assert float((coef @ table.T - truth).abs().max()) <= eps * 1.01 + 1e-14 * m


def test_node_count_validation_and_limits() -> None:
    assert chebyshev_nodes_needed(0.0, 1.0, 1e-9) == 1
    with pytest.raises(ValueError, match="sigma > 0"):
        chebyshev_nodes_needed(10.0, 0.0, 1e-9)
    assert chebyshev_degrees([100.0], [float("nan")], 10) is None
    assert chebyshev_degrees([511.5, 511.5], [5.0, 5.0], 10000) is None  # over the node limit
    wide = chebyshev_degrees([511.5, 511.5], [150.0, 150.0], 10000)
    assert wide is not None and math.prod(wide) <= C.CHEBYSHEV_MAX_NODES
    # one column may not take the whole budget (its m x m transform), even for L = 1
    assert chebyshev_degrees([2047.5], [1.0], 24576) is None
    assert chebyshev_degrees([0.0, 2047.5], [1.0, 6.0], 24576) is None


def test_table_cache_stays_within_its_budget(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(C, "_CACHE", {})
    for m in range(20, 220, 4):  # an annealing sweep: a new m every few steps
        C._constants(0, 4095, m, torch.device("cpu"))
    held = sum(sum(t.numel() * t.element_size() for t in v) for v in C._CACHE.values())
    assert 0 < held <= C._CACHE_BYTES


def test_layer_chebyshev_matches_exact(monkeypatch: pytest.MonkeyPatch) -> None:
    """A training step of a wide layer: the same loss and gradients as exact all-pairs."""
    grads = {}
    calls = []
    real = C.chebyshev_weights

    def spy(*args, **kwargs):  # type: ignore[no-untyped-def]
        calls.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(H, "chebyshev_weights", spy)
    for method in ("chebyshev", "exact"):
        torch.manual_seed(0)
        layer = SparseLayer(128, 128, 128, sigma_scale=0.1, normalisation=method,
                            dtype=torch.float64)
        x = torch.randn(8, 128, dtype=torch.float64)
        loss = (layer(x) - x).pow(2).mean()
        loss.backward()
        grads[method] = [loss.detach()] + [p.grad for p in (layer.raw_means, layer.raw_sigmas,
                                                            layer.values)]
    assert calls == [1]  # the transform ran (and did not fall back) for "chebyshev" only
    for a, b in zip(grads["chebyshev"], grads["exact"]):
        assert rel(a, b) < 1e-6
    assert "chebyshev" in repr(SparseLayer(8, 8, 4, normalisation="chebyshev"))
    with pytest.raises(ValueError, match="chebyshev"):
        SparseLayer(8, 8, 4, normalisation="fourier")
