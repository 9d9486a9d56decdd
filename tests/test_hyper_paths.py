"""Tests of the hyperlayer's alternative paths: the quadratic-form (GEMM) exact weights and the
reflected mean bound (issue 5)."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import hypersparse.functional.hyper as H
from hyper_contexts import context
from hypersparse.functional import (
    bound_means,
    point_weights,
    sample_points,
    unbound_means,
)
from hypersparse.nn import SparseLayer


def both_paths(pts: torch.Tensor, keep: torch.Tensor | None, means: torch.Tensor,
               sig: torch.Tensor, vals: torch.Tensor, monkeypatch: pytest.MonkeyPatch,
               grad: torch.Tensor | None = None) -> list[list[torch.Tensor]]:
    """Weights (and gradients for ``grad``) from the column path and from the GEMM path (forced:
    no accuracy check)."""
    out = []
    learn = list(range(means.shape[-1]))
    for min_pairs, err in ((2**62, 1e-8), (0, float("inf"))):
        monkeypatch.setattr(H, "GEMM_MIN_PAIRS", min_pairs)
        monkeypatch.setattr(H, "GEMM_EXPONENT_ERROR", err)
        monkeypatch.setattr(H, "GEMM_F32_BOUND", err if err == float("inf") else 256.0)
        m, s, v = (t.clone().requires_grad_() for t in (means, sig, vals))
        w = point_weights(pts, keep, m, s, v, learn)
        res = [w.detach()]
        if grad is not None:
            res += list(torch.autograd.grad(w, [m, s, v], grad))
        out.append(res)
    return out


@settings(max_examples=25, deadline=None)
@given(sizes=st.lists(st.integers(2, 60), min_size=1, max_size=3), k=st.integers(1, 20),
       batched=st.booleans(), sigma_scale=st.sampled_from([0.03, 0.1, 0.5]),
       seed=st.integers(0, 10**6))
def test_gemm_weights_equal_column_path(sizes: list[int], k: int, batched: bool,
                                        sigma_scale: float, seed: int) -> None:
    pts, keep, means, sig, vals = context(sizes, k, (2,) if batched else (), sigma_scale, seed)
    grad = torch.randn(pts.shape[:-1], dtype=torch.float64,
                       generator=torch.Generator().manual_seed(seed))
    with pytest.MonkeyPatch.context() as mp:
        col, gemm = both_paths(pts, keep, means, sig, vals, mp, grad)
    for a, b in zip(gemm, col):
        torch.testing.assert_close(a, b, atol=1e-8, rtol=1e-6)


def test_gemm_weights_float32_and_every_tuple_spreads_its_value(
        monkeypatch: pytest.MonkeyPatch) -> None:
    pts, keep, means, sig, vals = context([256, 256], 64, (), 0.05, 0, dtype=torch.float32)
    grad = torch.randn(pts.shape[:-1])
    col, gemm = both_paths(pts, keep, means, sig, vals, monkeypatch, grad)
    torch.testing.assert_close(gemm[0], col[0], atol=1e-5, rtol=1e-5)
    for a, b in zip(gemm[1:], col[1:]):
        torch.testing.assert_close(a, b, atol=1e-4, rtol=1e-3)
    assert (gemm[0][~keep] == 0).all()
    torch.testing.assert_close(gemm[0].sum(), vals.sum(), atol=1e-4, rtol=1e-5)


def test_float32_gradients_accurate_at_narrow_sigma() -> None:
    # float32 layers take the GEMM path only while its saved float32 exp matrix keeps the
    # deviations' gradient accurate: compare the default dispatch against a float64 reference
    for sigma in (20.0, 1.5):  # cells: the GEMM path, then the column path
        pts, keep, means, sig, vals = context([256, 256], 96, (), 0.05, 3)
        sig = sig * 0 + sigma
        grad = torch.randn(pts.shape[:-1], dtype=torch.float64,
                           generator=torch.Generator().manual_seed(0))
        got, ref = [], []
        for dtype, out in ((torch.float32, got), (torch.float64, ref)):
            m, s, v = (t.to(dtype).requires_grad_() for t in (means, sig, vals))
            w = point_weights(pts, keep, m, s, v, [0, 1])
            out += [w.detach(), *torch.autograd.grad(w, [m, s, v], grad.to(dtype))]
        for a, b in zip(got, ref):
            err = float((a.double() - b).abs().max() / b.abs().max())
            assert err < 1e-4, (sigma, err)


def test_gemm_gradcheck(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(H, "GEMM_MIN_PAIRS", 0)
    pts, keep, means, sig, vals = context([7, 9], 4, (2,), 0.2, 5)
    means, sig, vals = (t.requires_grad_() for t in (means, sig, vals))
    assert torch.autograd.gradcheck(
        lambda m, s, v: point_weights(pts, keep, m, s, v, [0, 1]), (means, sig, vals))


def test_gemm_edge_cases(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(H, "GEMM_MIN_PAIRS", 0)
    # k = 1, no keep mask, a tiny sigma: all weight on the nearest point, no NaN
    pts = torch.tensor([[0, 0], [5, 5], [1, 0]])
    w = point_weights(pts, None, torch.tensor([[0.4, 0.2]]), torch.full((1, 2), 0.01),
                      torch.ones(1), [0, 1])
    assert torch.isfinite(w).all() and w.tolist() == [1.0, 0.0, 0.0]
    # a context whose points all are masked out: weights 0, gradients finite
    m = torch.tensor([[1.0, 1.0]], requires_grad=True)
    w = point_weights(pts, torch.zeros(3, dtype=torch.bool), m, torch.ones(1, 2),
                      torch.ones(1), [0, 1])
    assert (w == 0).all()
    w.sum().backward()
    assert m.grad is not None and torch.isfinite(m.grad).all()


def test_gemm_path_is_taken_only_where_accurate(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[int] = []
    real = H._gemm_weights
    monkeypatch.setattr(H, "_gemm_weights", lambda *a: calls.append(1) or real(*a))
    pts, keep, means, sig, vals = context([300, 300], 300, (), 0.05, 1, dtype=torch.float32)
    sig = torch.full_like(sig, 20.0)
    point_weights(pts, keep, means, sig, vals, [0, 1])
    assert calls == [1]  # 300 x 3600 pairs, wide sigma: the GEMM
    point_weights(pts, keep, means, torch.full_like(sig, 1e-4), vals, [0, 1])
    assert calls == [1]  # sigma 1e-4 on a range of 300: float64 expansion too coarse
    point_weights(pts[:10], keep[:10], means[:5], sig[:5], vals[:5], [0, 1])
    assert calls == [1]  # a small context: the column path
    narrow = torch.full_like(sig, 2.0)  # 2 cells on a range of 300
    point_weights(pts, keep, means, narrow, vals, [0, 1])
    assert calls == [1]  # float32: the saved exp matrix would cost gradient accuracy
    point_weights(pts, keep, means.double(), narrow.double(), vals.double(), [0, 1])
    assert calls == [1, 1]  # float64 expands exactly enough
    point_weights(pts, keep, means, torch.zeros_like(sig), vals, [0, 1])
    assert calls == [1, 1]  # a zero deviation: no expansion at all


def test_auto_method_by_estimated_cost(monkeypatch: pytest.MonkeyPatch) -> None:
    import hypersparse.nn.hyper as NH

    layer = SparseLayer(256, 256, 256, sigma_scale=0.1, learn_sigmas=False)
    s = layer.tuples(torch.zeros(1, 256))[1]  # 54 cells
    p = 256 * layer.samples_per_tuple
    assert layer.method(s, p) == "chebyshev"  # wide: the low-rank transform
    s_narrow = s * 0.05  # ~2.7 cells: boxes cover ~0.8% of the index space
    assert layer.method(s_narrow, p) == "neighbours"
    assert SparseLayer(16, 16, 16).method(s[:16], 16 * 12) == "exact"  # small: always exact
    # the choice is the least estimated cost
    monkeypatch.setattr(NH, "AUTO_NS_CHEBYSHEV_GRID", 1e6)
    assert layer.method(s, p) == "exact"
    monkeypatch.setattr(NH, "AUTO_NS_EXACT", 1e6)
    assert layer.method(s, p) == "neighbours"
    monkeypatch.setattr(NH, "AUTO_NS_EXACT", 1e-6)
    assert layer.method(s_narrow, p) == "neighbours"  # float32, narrow: the column path's cost
    monkeypatch.setattr(NH, "AUTO_NS_EXACT_COLUMNS", 1e-6)
    assert layer.method(s_narrow, p) == "exact"
    # the exact pair limit counts every context of a batch: 2^25 / (256 * 3072) = 42 contexts
    batched = s.expand(64, *s.shape)  # (B, K, L), as an adaptive layer's
    assert layer.method(batched[:8], p) == "exact"
    assert layer.method(batched, p) == "neighbours"
    monkeypatch.undo()
    assert layer.method(batched, p) == "chebyshev"  # O(B (P + K) m^2): no pair limit
    # template columns are exact, which the transform does not do
    tmpl = SparseLayer(256, 256, 256, sigma_scale=0.1, learn_sigmas=False,
                       template=torch.zeros(256, 2), learn_cols=[1])
    assert tmpl.method(tmpl.tuples(torch.zeros(1, 256))[1], p) != "chebyshev"


# ----------------------------------------------------------------------------- mean bounds


@settings(max_examples=25, deadline=None)
@given(size=st.integers(1, 500), mode=st.sampled_from(["sigmoid", "reflect"]),
       seed=st.integers(0, 10**6))
def test_unbound_inverts_bound(size: int, mode: str, seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    means = torch.rand(10, 1, generator=g, dtype=torch.float64) * (size - 1)
    means = means.clamp(1e-3 * (size - 1), (1 - 1e-3) * (size - 1))
    back = bound_means(unbound_means(means, [size], mode=mode), [size], mode=mode)
    torch.testing.assert_close(back, means)


def test_reflect_bound_is_linear_and_reflected() -> None:
    raw = torch.linspace(-30, 30, 601, dtype=torch.float64, requires_grad=True)
    m = bound_means(raw.unsqueeze(-1), [101], mode="reflect").squeeze(-1)
    assert (m >= 0).all() and (m <= 100).all()
    # at 0 it agrees with the sigmoid's value and slope; the slope is 100/4 everywhere
    m0 = bound_means(torch.zeros(1, 1), [101], mode="reflect")
    assert float(m0) == 50.0
    (g,) = torch.autograd.grad(m.sum(), raw)
    kinks = ((raw.detach() * 0.25 + 0.5) % 1).abs() < 1e-9
    assert torch.allclose(g[~kinks].abs(), torch.full_like(g[~kinks], 25.0))
    # reflection: raw just past the edge maps back inside, symmetric about the edge
    edge = torch.tensor([[2.0 - 0.4], [2.0 + 0.4]])  # raw = 2 is the upper edge
    out = bound_means(edge, [101], mode="reflect").flatten()
    torch.testing.assert_close(out[0], out[1])
    # at a mean one cell from the edge the sigmoid's slope is ~1, the reflected one still 25
    slopes = {}
    for mode in ("sigmoid", "reflect"):
        raw = unbound_means(torch.tensor([[1.0]]), [101], mode=mode).requires_grad_()
        (g1,) = torch.autograd.grad(bound_means(raw, [101], mode=mode).sum(), raw)
        slopes[mode] = float(g1)
    assert slopes["sigmoid"] < 1.1 and slopes["reflect"] == pytest.approx(25.0)


def test_mean_bound_layer_option() -> None:
    layer = SparseLayer(32, 32, 32, mean_bound="reflect")
    means = layer.tuples(torch.zeros(1, 32))[0]
    assert (means >= 0).all() and (means <= 31).all()
    assert "mean_bound='reflect'" in repr(layer)
    # configuration, not state: the same keys as a sigmoid layer's (pass it again on load)
    assert layer.state_dict().keys() == SparseLayer(32, 32, 32).state_dict().keys()
    with pytest.raises(ValueError, match="mean_bound"):
        SparseLayer(4, 4, 4, mean_bound="tanh")
    with pytest.raises(ValueError, match="mean_bound"):
        bound_means(torch.zeros(1, 1), [4], mode="clamp")
    assert "mean_bound" not in repr(SparseLayer(4, 4, 4))


# ----------------------------------------------------------------------------- local box


@pytest.mark.parametrize("region", [3, 4])
def test_local_box_offset(region: int) -> None:
    # The box starts at round(mu) - region // 2: centred on round(mu) for odd regions, half a
    # cell below it for even ones (documented; the identity task measurably relies on it).
    mu = (20 + (torch.arange(200, dtype=torch.float64) + 0.5) / 200 - 0.5).unsqueeze(-1)
    pts = sample_points(mu, [64], [0], global_samples=0, local_samples=4000, region=region,
                        generator=torch.Generator().manual_seed(0))
    local = pts[:, 2:, 0].double()  # (K, 4000): after the 2 corners
    offset = float((local.mean(1) - mu.squeeze(-1)).mean())
    assert offset == pytest.approx(0.0 if region % 2 else -0.5, abs=0.03)


@pytest.mark.parametrize("region", [3, 4])
def test_local_box_alternate(region: int) -> None:
    # "alternate": odd-numbered tuples take the mirrored box (half a cell above the mean for an
    # even region), even-numbered ones the default box; odd regions stay centred.
    mu = (20 + (torch.arange(200, dtype=torch.float64) + 0.5) / 200 - 0.5)  # (K,)
    mu = mu[torch.randperm(200, generator=torch.Generator().manual_seed(1))].unsqueeze(-1)
    pts = sample_points(mu, [64], [0], global_samples=0, local_samples=4000, region=region,
                        local_box="alternate", generator=torch.Generator().manual_seed(0))
    off = pts[:, 2:, 0].double().mean(1) - mu.squeeze(-1)  # (K,)
    half = 0.0 if region % 2 else 0.5
    assert float(off[0::2].mean()) == pytest.approx(-half, abs=0.03)
    assert float(off[1::2].mean()) == pytest.approx(half, abs=0.03)
    low = sample_points(mu, [64], [0], global_samples=0, local_samples=4000, region=region,
                        generator=torch.Generator().manual_seed(0))
    assert torch.equal(pts[0::2], low[0::2])  # even tuples: the default box, same draws


def test_local_box_alternate_edges_and_batches() -> None:
    # mirrored boxes are shifted back into range at both edges; batched means alternate along K
    mu = torch.tensor([[0.0, 0.0], [0.2, 0.0], [6.9, 7.0], [7.0, 7.0]]).expand(3, 4, 2)
    pts = sample_points(mu, [8, 8], [0, 1], global_samples=0, local_samples=500,
                        local_box="alternate", generator=torch.Generator().manual_seed(0))
    assert pts.shape == (3, 4, 4 + 500, 2)
    assert bool((pts >= 0).all() and (pts < 8).all())
    local = pts[..., 4:, :]  # (3, 4, 500, 2)
    assert set(local[:, 1].flatten().tolist()) == {0, 1, 2, 3}  # box [-1, 2] shifted to [0, 3]
    assert set(local[:, 3].flatten().tolist()) == {4, 5, 6, 7}  # box [6, 9] shifted to [4, 7]


def test_local_box_rejects_unknown() -> None:
    with pytest.raises(ValueError, match="local_box"):
        sample_points(torch.zeros(2, 1), [4], [0], local_box="centre")
    with pytest.raises(ValueError, match="local_box"):
        SparseLayer(4, 4, 4, local_box="high")
    layer = SparseLayer(4, 4, 4, local_box="alternate")
    assert "local_box='alternate'" in repr(layer) and "local_box" not in repr(SparseLayer(4, 4, 4))
