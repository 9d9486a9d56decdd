"""Tests of the sparse hyperlayer core: sampling, normalisation, contraction, SparseLayer and
HyperLayer (issue 4)."""

from __future__ import annotations

import io
import math
import random

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import Tensor, nn

import hypersparse.functional.contract as C
from hypersparse.functional import (
    bound_means,
    bound_sigmas,
    distinct_indices,
    first_occurrence,
    linear_index,
    point_weights,
    sample_points,
    sparse_contract,
)
from hypersparse.nn import Connections, HyperLayer, SparseLayer

# ----------------------------------------------------------------------------- references


def dense_contract(
    x: Tensor, out_idx: Tensor, in_idx: Tensor, w: Tensor, m: int, batch: Tensor | None
) -> Tensor:
    b, n = x.shape
    if batch is None:
        dense = torch.zeros(m, n, dtype=x.dtype)
        dense.index_put_((out_idx, in_idx), w.to(x.dtype), accumulate=True)
        return x @ dense.T
    dense = torch.zeros(b, m, n, dtype=x.dtype)
    dense.index_put_((batch, out_idx, in_idx), w.to(x.dtype), accumulate=True)
    return torch.einsum("bmn,bn->bm", dense, x)


def naive_point_weights(
    points: Tensor, means: Tensor, sigmas: Tensor, values: Tensor, learn: list[int]
) -> Tensor:
    """Python loops: first copy of each distinct point gets sum_k v_k N_k(p) / Z_k."""
    pts = [tuple(p) for p in points.tolist()]
    seen: set[tuple[int, ...]] = set()
    first = []
    for p in pts:
        first.append(p not in seen)
        seen.add(p)
    r = means.shape[1]
    fixed = [c for c in range(r) if c not in learn]
    dens = torch.zeros(means.shape[0], len(pts), dtype=torch.float64)
    for k in range(means.shape[0]):
        for j, p in enumerate(pts):
            if not first[j] or any(p[c] != round(float(means[k, c])) for c in fixed):
                continue
            e = sum(
                ((p[c] - float(means[k, c])) / float(sigmas[k, i])) ** 2
                for i, c in enumerate(learn)
            )
            dens[k, j] = math.exp(-0.5 * e)
    z = dens.sum(1, keepdim=True)
    return (values.double().unsqueeze(1) * dens / z).sum(0)


# ----------------------------------------------------------------------------- contraction


@pytest.mark.parametrize("batched", [False, True])
def test_contract_gradcheck(batched: bool) -> None:
    g = torch.Generator().manual_seed(1)
    b, n, m, p = 3, 5, 4, 9
    x = torch.randn(b, n, dtype=torch.float64, generator=g, requires_grad=True)
    w = torch.randn(p, dtype=torch.float64, generator=g, requires_grad=True)
    oi, ii = torch.randint(0, m, (p,), generator=g), torch.randint(0, n, (p,), generator=g)
    oi[1], ii[1] = oi[0], ii[0]  # a repeated entry
    bt = torch.randint(0, b, (p,), generator=g) if batched else None
    assert torch.autograd.gradcheck(lambda x, w: sparse_contract(x, oi, ii, w, m, bt), (x, w))
    ref = dense_contract(x.detach(), oi, ii, w.detach(), m, bt)
    torch.testing.assert_close(sparse_contract(x, oi, ii, w, m, bt), ref)


@settings(max_examples=25, deadline=None)
@given(
    b=st.integers(0, 4),
    n=st.integers(1, 7),
    m=st.integers(1, 7),
    p=st.integers(0, 20),
    batched=st.booleans(),
    seed=st.integers(0, 1000),
)
def test_contract_matches_dense(b: int, n: int, m: int, p: int, batched: bool, seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(b, n, generator=g)
    w = torch.randn(p, generator=g)
    oi, ii = torch.randint(0, m, (p,), generator=g), torch.randint(0, n, (p,), generator=g)
    bt = torch.randint(0, max(b, 1), (p,), generator=g) if batched and b else None
    torch.testing.assert_close(
        sparse_contract(x, oi, ii, w, m, bt), dense_contract(x, oi, ii, w, m, bt)
    )


def test_contract_non_contiguous_and_bad_input() -> None:
    x = torch.randn(5, 4).T  # (4, 5), non-contiguous
    oi, ii, w = torch.tensor([0, 2]), torch.tensor([4, 1]), torch.tensor([1.0, -2.0])
    torch.testing.assert_close(
        sparse_contract(x, oi, ii, w, 3), dense_contract(x, oi, ii, w, 3, None)
    )
    with pytest.raises(ValueError, match="shape"):
        sparse_contract(torch.randn(5), oi, ii, w, 3)
    with pytest.raises(TypeError, match="int64"):
        sparse_contract(x, oi.int(), ii, w, 3)
    with pytest.raises(ValueError, match="equal length"):
        sparse_contract(x, oi, ii[:1], w, 3)
    for bad_out, bad_in in ((oi, torch.tensor([5, 1])), (torch.tensor([0, 3]), ii),
                            (torch.tensor([-1, 0]), ii), (oi, torch.tensor([0, -2]))):
        with pytest.raises(ValueError, match="must lie in"):
            sparse_contract(x, bad_out, bad_in, w, 3)


@pytest.mark.parametrize("gather_max", [0, 2**62])
def test_contract_weight_gradient_paths(gather_max: int, monkeypatch: pytest.MonkeyPatch) -> None:
    # large problems recompute embedding_bag for the weight gradient, small ones gather
    monkeypatch.setattr(C, "GATHER_MAX_ELEMENTS", gather_max)
    g = torch.Generator().manual_seed(2)
    x = torch.randn(4, 7, dtype=torch.float64, generator=g, requires_grad=True)
    w = torch.randn(15, dtype=torch.float64, generator=g, requires_grad=True)
    oi, ii = torch.randint(0, 5, (15,), generator=g), torch.randint(0, 7, (15,), generator=g)
    oi[3], ii[3] = oi[2], ii[2]  # a repeated entry
    assert torch.autograd.gradcheck(lambda x, w: sparse_contract(x, oi, ii, w, 5), (x, w))
    ref = dense_contract(x.detach(), oi, ii, w.detach(), 5, None)
    torch.testing.assert_close(sparse_contract(x, oi, ii, w, 5), ref)


def test_contract_grouped_entries() -> None:
    g = torch.Generator().manual_seed(4)
    x = torch.randn(3, 6, dtype=torch.float64, generator=g, requires_grad=True)
    w = torch.randn(10, dtype=torch.float64, generator=g, requires_grad=True)
    oi = torch.randint(0, 5, (10,), generator=g).sort().values
    ii = torch.randint(0, 6, (10,), generator=g)
    assert torch.autograd.gradcheck(
        lambda x, w: sparse_contract(x, oi, ii, w, 5, grouped=True), (x, w))
    torch.testing.assert_close(sparse_contract(x, oi, ii, w, 5, grouped=True),
                               sparse_contract(x, oi, ii, w, 5))
    with pytest.raises(ValueError, match="non-decreasing"):
        sparse_contract(x, oi.flip(0), ii, w, 5, grouped=True)


def test_contract_empty_and_sorted_bags() -> None:
    # no entries / an empty batch: zeros with zero gradients; unsorted outputs with repeats
    x = torch.randn(3, 4, requires_grad=True)
    w = torch.randn(0, requires_grad=True)
    e = torch.zeros(0, dtype=torch.long)
    y = sparse_contract(x, e, e, w, 2)
    y.sum().backward()
    assert y.shape == (3, 2) and not y.any() and x.grad is not None and not x.grad.any()
    x0 = torch.randn(0, 4)
    y0 = sparse_contract(x0, torch.tensor([1]), torch.tensor([2]), torch.ones(1), 2)
    assert y0.shape == (0, 2)
    oi, ii = torch.tensor([2, 0, 2, 1, 0]), torch.tensor([3, 3, 0, 1, 3])
    w = torch.tensor([1.0, 2.0, 3.0, 4.0, 5.0])
    torch.testing.assert_close(sparse_contract(x.detach(), oi, ii, w, 4),
                               dense_contract(x.detach(), oi, ii, w, 4, None))


# ----------------------------------------------------------------------------- transforms, sampling


def test_bounds_and_sigma_convention() -> None:
    raw = torch.tensor([[-50.0, 0.0], [50.0, 0.0]])
    torch.testing.assert_close(bound_means(raw, [10, 5]), torch.tensor([[0.0, 2.0], [9.0, 2.0]]))
    s = bound_sigmas(torch.tensor([0.0]), [10, 20], sigma_scale=0.1, min_sigma=0.5)
    base = torch.nn.functional.softplus(torch.tensor(2.0)) + 0.5
    torch.testing.assert_close(s, torch.stack([base * 1.0, base * 2.0]).unsqueeze(0))
    with pytest.raises(ValueError, match="sigma_scale"):
        bound_sigmas(torch.zeros(1), [3], sigma_scale=0.0)


@settings(max_examples=25, deadline=None)
@given(
    sizes=st.lists(st.integers(1, 9), min_size=1, max_size=4),
    k=st.integers(1, 5),
    g=st.integers(0, 5),
    loc=st.integers(0, 5),
    seed=st.integers(0, 1000),
    data=st.data(),
)
def test_samples_in_bounds(
    sizes: list[int], k: int, g: int, loc: int, seed: int, data: st.DataObject
) -> None:
    r = len(sizes)
    learn = data.draw(st.lists(st.integers(0, r - 1), unique=True, max_size=r))
    region = [data.draw(st.integers(1, sizes[c])) for c in learn]
    gen = torch.Generator().manual_seed(seed)
    means = torch.rand(2, k, r, generator=gen) * (torch.tensor(sizes) - 1)
    pts = sample_points(
        means, sizes, learn, global_samples=g, local_samples=loc, region=region, generator=gen
    )
    s = 2 ** len(learn) + g + loc if learn else 1
    assert pts.shape == (2, k, s, r) and pts.dtype == torch.long
    assert (pts >= 0).all() and (pts < torch.tensor(sizes)).all()
    fixed = [c for c in range(r) if c not in learn]
    if fixed:  # template columns are exactly the rounded means
        assert (pts[..., fixed] == means[..., fixed].round().long().unsqueeze(-2)).all()
    if learn and loc:  # local points lie in the region box
        loc_pts = pts[..., -loc:, :][..., learn]
        centre = means[..., learn].round().long().unsqueeze(-2)
        assert ((loc_pts - centre).abs() <= torch.tensor(region)).all()


def test_corners_are_floor_and_ceil() -> None:
    pts = sample_points(
        torch.tensor([[2.3, 7.6]]), [10, 10], [0, 1], global_samples=0, local_samples=0
    )
    assert sorted(map(tuple, pts[0].tolist())) == [(2, 7), (2, 8), (3, 7), (3, 8)]


def test_sampling_uses_torch_rng() -> None:
    means = torch.rand(4, 2) * 9
    torch.manual_seed(3)
    a = sample_points(means, [10, 10], [0, 1])
    torch.manual_seed(3)
    b = sample_points(means, [10, 10], [0, 1])
    c = sample_points(means, [10, 10], [0, 1], generator=torch.Generator().manual_seed(3))
    assert torch.equal(a, b) and torch.equal(a, c)


def test_sampling_bad_region() -> None:
    with pytest.raises(ValueError, match="region"):
        sample_points(torch.zeros(1, 2), [4, 4], [0, 1], region=5)


# ----------------------------------------------------------------------------- duplicates


@settings(max_examples=25, deadline=None)
@given(
    st.lists(
        st.tuples(st.integers(0, 2**20 - 1), st.integers(0, 2**20 - 1), st.integers(0, 2**20 - 1)),
        min_size=0,
        max_size=40,
    ),
    st.integers(0, 1000),
)
def test_duplicates_removed_exactly_high_rank(pts: list[tuple[int, int, int]], seed: int) -> None:
    rnd = random.Random(seed)
    pts = pts + [rnd.choice(pts) for _ in range(len(pts) // 2)] if pts else pts
    rnd.shuffle(pts)
    t = torch.tensor(pts, dtype=torch.long).reshape(-1, 3)
    keep = first_occurrence(linear_index(t, [2**20] * 3))
    kept = [p for p, k in zip(pts, keep.tolist()) if k]
    assert len(kept) == len(set(pts)) and set(kept) == set(pts)


def test_linear_index_distinct_where_pairing_collides() -> None:
    # Cantor-style float pairing collides for large coordinates; int64 linear indices do not.
    a = torch.tensor([[2**24, 1], [2**24 + 1, 0]])
    assert float(a[0].sum()) == float(a[1].sum())  # a sum-based float key would collide
    li = linear_index(a, [2**25, 2**25])
    assert li[0] != li[1]
    with pytest.raises(ValueError, match="int64"):
        linear_index(a, [2**32, 2**32])


def test_first_occurrence_batched() -> None:
    keys = torch.tensor([[1, 1, 2], [3, 4, 3]])
    assert first_occurrence(keys).tolist() == [[True, False, True], [True, True, False]]


@settings(max_examples=25, deadline=None)
@given(keys=st.lists(st.integers(-5, 5), max_size=30))
def test_distinct_indices_is_unique(keys: list[int]) -> None:
    k = torch.tensor(keys, dtype=torch.long)
    idx = distinct_indices(k)
    assert torch.equal(k[idx], torch.unique(k))
    assert torch.equal(torch.sort(idx).values, first_occurrence(k).nonzero().flatten())
    with pytest.raises(ValueError, match="1-D"):
        distinct_indices(k.view(1, -1))


# ----------------------------------------------------------------------------- point weights


@pytest.mark.parametrize("learn", [[0, 1], [1]])
def test_point_weights_match_naive(learn: list[int]) -> None:
    g = torch.Generator().manual_seed(0)
    sizes = [5, 6]
    means = torch.rand(3, 2, generator=g, dtype=torch.float64) * 4
    sig = torch.rand(3, len(learn), generator=g, dtype=torch.float64) + 0.3
    vals = torch.randn(3, generator=g, dtype=torch.float64)
    pts = sample_points(means, sizes, learn, generator=g).flatten(0, 1)
    keep = first_occurrence(linear_index(pts, sizes))
    w = point_weights(pts, keep, means, sig, vals, learn)
    torch.testing.assert_close(w, naive_point_weights(pts, means, sig, vals, learn))
    assert (w[~keep] == 0).all()
    torch.testing.assert_close(w.sum(), vals.sum())  # every tuple spreads exactly its value


def test_point_weights_gradcheck() -> None:
    g = torch.Generator().manual_seed(2)
    means = (torch.rand(2, 3, 2, generator=g, dtype=torch.float64) * 5).requires_grad_()
    sig = (torch.rand(2, 3, 2, generator=g, dtype=torch.float64) + 0.5).requires_grad_()
    vals = torch.randn(2, 3, generator=g, dtype=torch.float64, requires_grad=True)
    pts = sample_points(means, [6, 6], [0, 1], generator=g).flatten(1, 2)
    keep = first_occurrence(linear_index(pts, [6, 6]))
    assert torch.autograd.gradcheck(
        lambda m, s, v: point_weights(pts, keep, m, s, v, [0, 1]), (means, sig, vals)
    )


def test_point_weights_tiny_sigma_no_nan() -> None:
    pts = torch.tensor([[0, 0], [5, 5]])
    w = point_weights(
        pts, None, torch.tensor([[0.4, 0.4]]), torch.full((1, 2), 1e-4), torch.ones(1), [0, 1]
    )
    assert torch.isfinite(w).all() and w[0] == 1.0


# ----------------------------------------------------------------------------- SparseLayer


shapes = st.lists(st.integers(1, 5), min_size=1, max_size=2).map(tuple)


@settings(max_examples=25, deadline=None)
@given(
    in_shape=shapes,
    out_shape=shapes,
    k=st.integers(1, 12),
    b=st.integers(0, 3),
    bias=st.booleans(),
    seed=st.integers(0, 1000),
)
def test_eval_equals_to_sparse_dense(
    in_shape: tuple[int, ...], out_shape: tuple[int, ...], k: int, b: int, bias: bool, seed: int
) -> None:
    torch.manual_seed(seed)
    region = min(in_shape + out_shape)
    layer = SparseLayer(in_shape, out_shape, k, region=region, bias=bias).eval()
    if bias:
        nn.init.normal_(layer.bias)
    x = torch.randn((b,) + in_shape)
    w = layer.to_sparse()
    assert w.shape == out_shape + in_shape and w.is_sparse
    m, n = math.prod(out_shape), math.prod(in_shape)
    ref = x.reshape(b, n) @ w.to_dense().reshape(m, n).T
    if bias:
        ref = ref + layer.bias.reshape(1, m)
    torch.testing.assert_close(layer(x), ref.reshape((b,) + out_shape))


@pytest.mark.parametrize("in_shape,out_shape", [((6,), (5,)), ((3, 4), (2, 3)), ((2, 3, 2), (4,))])
def test_training_output_equals_dense_reference(
    in_shape: tuple[int, ...], out_shape: tuple[int, ...]
) -> None:
    layer = SparseLayer(in_shape, out_shape, 7, region=2)
    x = torch.randn((4,) + in_shape)
    conn = layer.connections(x, generator=torch.Generator().manual_seed(5))
    layer.generator = torch.Generator().manual_seed(5)
    y = layer(x)
    dense = torch.zeros(out_shape + in_shape)
    dense.index_put_(tuple(conn.indices.T), conn.weights.detach(), accumulate=True)
    m, n = math.prod(out_shape), math.prod(in_shape)
    ref = x.reshape(4, n) @ dense.reshape(m, n).T
    torch.testing.assert_close(y, ref.reshape((4,) + out_shape))
    assert conn.batch is None  # one sample set for the whole batch


def test_gradients_reach_all_parameters() -> None:
    layer = SparseLayer(8, 8, 8, bias=True)
    layer(torch.randn(5, 8)).pow(2).sum().backward()
    for name, p in layer.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name


def test_eval_is_deterministic_and_leading_dims() -> None:
    layer = SparseLayer((3, 4), 6, 10).eval()
    x = torch.randn(2, 5, 3, 4)
    y1, y2 = layer(x), layer(x)
    assert y1.shape == (2, 5, 6) and torch.equal(y1, y2)
    torch.testing.assert_close(y1.reshape(10, 6), layer(x.reshape(10, 3, 4)))


def test_state_dict_round_trip() -> None:
    a = SparseLayer(10, 7, 9, bias=True, learn_values=True)
    b = SparseLayer(10, 7, 9, bias=True, learn_values=True)
    buf = io.BytesIO()
    torch.save(a.state_dict(), buf)
    buf.seek(0)
    b.load_state_dict(torch.load(buf))
    x = torch.randn(3, 10)
    assert torch.equal(a.eval()(x), b.eval()(x))
    assert torch.equal(a.to_sparse().to_dense(), b.to_sparse().to_dense())


def test_fixed_values_and_template() -> None:
    k = 6
    template = torch.zeros(k, 2)
    template[:, 0] = torch.arange(k)  # output coordinate of tuple i is i
    layer = SparseLayer(9, k, k, template=template, learn_values=False)
    assert layer.learn == [1] and layer.raw_means.shape == (k, 1)
    assert "values" not in dict(layer.named_parameters())
    assert torch.equal(layer.fixed_values, torch.ones(k))
    x = torch.randn(2, 9)
    conn = layer.connections(x)
    # training: the distinct sampled points of tuple i all sit in output row i, sorted by row
    rows = conn.indices[:, 0]
    assert conn.grouped and bool((rows[1:] >= rows[:-1]).all())
    counts = torch.bincount(rows, minlength=k)
    assert counts.shape == (k,) and (counts >= 1).all()
    assert (counts <= layer.samples_per_tuple).all()
    # weights of each row sum to that tuple's value (1): context is exact in the fixed column
    per_row = torch.zeros(k).index_add_(0, conn.indices[:, 0], conn.weights.detach())
    torch.testing.assert_close(per_row, torch.ones(k))
    ind = layer.eval().to_sparse().indices()
    assert sorted(ind[0].tolist()) == list(range(k))


def test_k_equals_one_and_empty_batch() -> None:
    layer = SparseLayer(4, 3, 1)
    assert layer(torch.randn(0, 4)).shape == (0, 3)
    y = layer(torch.randn(2, 4))
    assert y.shape == (2, 3) and torch.isfinite(y).all()
    assert layer.eval()(torch.randn(0, 4)).shape == (0, 3)


def test_bad_input_raises() -> None:
    with pytest.raises(ValueError, match="k must"):
        SparseLayer(4, 4, 0)
    with pytest.raises(ValueError, match="region"):
        SparseLayer(4, 4, 2, region=5)
    with pytest.raises(ValueError, match="in_shape"):
        SparseLayer((4, 0), 4, 2)
    with pytest.raises(ValueError, match="template must have shape"):
        SparseLayer(4, 4, 2, template=torch.zeros(2, 3))
    with pytest.raises(TypeError, match="template"):
        SparseLayer(4, 4, 2, template=[[0, 0], [1, 1]])  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="template"):
        SparseLayer(4, 4, 2, learn_cols=[1])
    with pytest.raises(ValueError, match="normalisation"):
        SparseLayer(4, 4, 2, normalisation="chunked")
    layer = SparseLayer(4, 4, 2)
    with pytest.raises(ValueError, match="input must have shape"):
        layer(torch.randn(3, 5))
    with pytest.raises(ValueError, match="input must have shape"):
        layer(torch.randn(4))
    with pytest.raises(ValueError, match="NaN"):
        layer(torch.tensor([[1.0, float("nan"), 0.0, 0.0]]))
    with pytest.raises(ValueError, match="NaN"):
        layer(torch.tensor([[1.0, float("inf"), 0.0, 0.0]]))
    with torch.no_grad():
        layer.raw_means[0, 0] = float("nan")
    with pytest.raises(ValueError, match="tuple parameters"):
        layer(torch.randn(1, 4))


def test_repr_mentions_settings() -> None:
    r = repr(SparseLayer(4, 5, 3, learn_values=False, bias=True))
    assert "k=3" in r and "learn_values=False" in r and "bias=True" in r


def test_identity_learns_small() -> None:
    # The identity (values fixed) is the canonical task: a failing test means learning broke.
    torch.manual_seed(0)
    n = 8
    layer = SparseLayer(n, n, n, learn_values=False, sigma_scale=0.1, region=3)
    opt = torch.optim.Adam(layer.parameters(), lr=0.05)
    for _ in range(600):
        x = torch.randn(32, n)
        loss = (layer(x) - x).pow(2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    w = layer.eval().to_sparse().to_dense()
    assert torch.equal(w, torch.eye(n))


# ----------------------------------------------------------------------------- HyperLayer


class MLPHyper(HyperLayer):
    """An MLP hypernetwork (the sorting experiment's shape)."""

    def __init__(self, n: int, k: int, **kwargs: object) -> None:
        super().__init__(n, n, k, **kwargs)  # type: ignore[arg-type]
        nl = len(self.learn)
        self.net = nn.Sequential(nn.Linear(n, 16), nn.ReLU(), nn.Linear(16, k * (nl + 2)))

    def hyper(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor | None]:
        out = self.net(x).view(x.shape[0], self.k, -1)  # (B, K, R' + 2)
        return out[..., :-2], out[..., -2], out[..., -1]


def test_hyperlayer_adaptive() -> None:
    layer = MLPHyper(5, 4, region=2)
    x = torch.randn(3, 5)
    conn = layer.connections(x)
    assert conn.batch is not None and conn.batch.max() == 2
    y = layer(x)
    assert y.shape == (3, 5)
    y.pow(2).sum().backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in layer.net.parameters())
    # training output equals the per-instance dense reference of the same sample
    layer.generator = torch.Generator().manual_seed(1)
    conn = layer.connections(x, generator=torch.Generator().manual_seed(1))
    dense = torch.zeros(3, 5, 5)
    dense.index_put_(
        (conn.batch, conn.indices[:, 0], conn.indices[:, 1]), conn.weights.detach(), accumulate=True
    )
    torch.testing.assert_close(layer(x), torch.einsum("bmn,bn->bm", dense, x))
    # each instance's weights sum to its values: contexts are per instance
    per_inst = torch.zeros(3).index_add_(0, conn.batch, conn.weights.detach())
    torch.testing.assert_close(per_inst, layer.hyper(x)[2].detach().sum(1))
    # eval equals the exported per-instance sparse tensor
    layer.eval()
    w = layer.to_sparse(x)
    assert w.shape == (3, 5, 5)
    torch.testing.assert_close(layer(x), torch.einsum("bmn,bn->bm", w.to_dense(), x))


def test_hyperlayer_fixed_values_and_errors() -> None:
    class NoValues(MLPHyper):
        def hyper(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor | None]:
            m, s, _ = super().hyper(x)
            return m, s, None

    layer = NoValues(4, 3, learn_values=False, region=2)
    conn = layer.connections(torch.randn(2, 4))
    per_inst = torch.zeros(2).index_add_(0, conn.batch, conn.weights.detach())  # type: ignore[arg-type]
    torch.testing.assert_close(per_inst, torch.full((2,), 3.0))
    with pytest.raises(ValueError, match="values"):
        NoValues(4, 3, learn_values=True, region=2)(torch.randn(2, 4))
    with pytest.raises(NotImplementedError):
        HyperLayer(4, 4, 2)(torch.randn(1, 4))


def test_connections_namedtuple() -> None:
    c = SparseLayer(3, 3, 2).eval().connections(torch.zeros(1, 3))
    assert isinstance(c, Connections) and c.indices.shape == (2, 2) and c.batch is None
