"""k-means weight sharing: k-means itself, centroid gradients, sharing under optimisers, masks,
state_dict and the exported codebook + index contract."""

from __future__ import annotations

import copy

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn
from torch.nn.utils import parametrize
from torch.nn.utils import prune as torch_prune

from hypersparse.compress import (
    SharedWeights,
    export_shared,
    index_dtype,
    kmeans1d,
    share_weights,
    shared_weight,
    sharing_report,
)


def _naive_assign(x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
    """Nearest centroid by brute force; ties to the lower index (c sorted)."""
    d = (x[:, None] - c[None, :]).abs()  # (N, k)
    return d.argmin(1)


def _naive_kmeans(x: torch.Tensor, c: torch.Tensor, iters: int) -> torch.Tensor:
    for _ in range(iters):
        a = _naive_assign(x, c)
        c = torch.stack([x[a == j].mean() if (a == j).any() else c[j] for j in range(len(c))])
        c = c.sort().values
    return c


def test_kmeans_linear_init_matches_naive_lloyd() -> None:
    x = torch.randn(300, dtype=torch.float64)
    c, a = kmeans1d(x, 5, max_iter=200)
    init = torch.linspace(x.min().item(), x.max().item(), 5, dtype=torch.float64)
    torch.testing.assert_close(c, _naive_kmeans(x, init, 200))
    assert torch.equal(a, _naive_assign(x, c))
    # Lloyd's fixed point: every centroid is the mean of its members.
    for j in range(5):
        assert torch.isclose(x[a == j].mean(), c[j])


def test_kmeans_zero_iterations_is_linear_init() -> None:
    x = torch.tensor([-1.0, 0.3, 2.0])
    c, a = kmeans1d(x, 4, max_iter=0)
    torch.testing.assert_close(c, torch.tensor([-1.0, 0.0, 1.0, 2.0]))
    assert a.tolist() == [0, 1, 3]


def test_kmeans_separates_obvious_clusters_with_every_init() -> None:
    g = torch.Generator().manual_seed(1)
    x = torch.cat([torch.randn(50, generator=g) * 0.01 + m for m in (-5.0, 0.0, 7.0)])
    for init in ("linear", "kmeans++", "random"):
        c, a = kmeans1d(x, 3, init=init, generator=torch.Generator().manual_seed(0))
        torch.testing.assert_close(c, torch.tensor([-5.0, 0.0, 7.0]), atol=0.01, rtol=0)
        assert a.tolist() == [0] * 50 + [1] * 50 + [2] * 50


def test_kmeans_edge_cases() -> None:
    c, a = kmeans1d(torch.tensor([3.0, 1.0, 2.0]), 1)  # k = 1: the mean
    assert c.tolist() == [2.0] and a.tolist() == [0, 0, 0]
    c, a = kmeans1d(torch.tensor([1.0, 2.0]), 5)  # k > N: empty clusters allowed
    assert c.shape == (5,) and set(c[a].tolist()) == {1.0, 2.0}
    c, a = kmeans1d(torch.full((4,), 0.5), 3, init="kmeans++")  # all equal (ties)
    assert (c[a] == 0.5).all()
    # an exact tie at the midpoint goes to the lower centroid: 0.5 between 0 and 1
    c, a = kmeans1d(torch.tensor([0.0, 0.5, 1.0]), 2, max_iter=0)
    assert c.tolist() == [0.0, 1.0] and a.tolist() == [0, 0, 1]


@settings(max_examples=25, deadline=None)
@given(n=st.integers(1, 60), k=st.integers(1, 9), seed=st.integers(0, 1000),
       init=st.sampled_from(["linear", "kmeans++", "random"]))
def test_kmeans_properties(n: int, k: int, seed: int, init: str) -> None:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, generator=g).round(decimals=1)  # ties on purpose
    c, a = kmeans1d(x, k, init=init, generator=g)  # type: ignore[arg-type]
    assert c.shape == (k,) and a.shape == (n,) and a.dtype == torch.int64
    assert (c[1:] >= c[:-1]).all()
    # nearest centroid (up to float rounding at exact midpoints, which the rounded data hits)
    d = (x[:, None] - c[None, :]).abs()  # (N, k)
    assert ((x - c[a]).abs() <= d.min(1).values + 1e-6).all()
    assert x.min() <= c[a].min() and c[a].max() <= x.max()


def test_index_dtype() -> None:
    assert index_dtype(1) == torch.uint8 and index_dtype(256) == torch.uint8
    assert index_dtype(257) == torch.int16 and index_dtype(2**15) == torch.int16
    assert index_dtype(2**15 + 1) == torch.int32
    with pytest.raises(ValueError, match="k must be"):
        index_dtype(0)


def test_shared_weight_gradcheck() -> None:
    c = torch.randn(4, dtype=torch.float64, requires_grad=True)
    idx = torch.randint(0, 4, (3, 5), dtype=torch.uint8)
    mask = torch.rand(3, 5) > 0.3
    assert torch.autograd.gradcheck(lambda c: shared_weight(c, idx, mask), (c,))
    assert torch.autograd.gradgradcheck(lambda c: shared_weight(c, idx, mask).square(), (c,))


def test_centroid_gradient_is_sum_of_member_gradients() -> None:
    lin = nn.Linear(7, 5)
    with torch.no_grad():
        lin.weight[0, :3] = 0  # three pruned positions
    sw = SharedWeights.from_layer(lin, 4)
    x = torch.randn(6, 7)
    # Reference: the dense layer with the same weight; its weight gradient summed per cluster.
    dense = nn.Linear(7, 5)
    with torch.no_grad():
        dense.weight.copy_(sw.weight)
        dense.bias.copy_(lin.bias)
    (sw(x).sin().sum()).backward()
    (dense(x).sin().sum()).backward()
    gw = dense.weight.grad
    assert gw is not None and sw.centroids.grad is not None
    expected = torch.stack([gw[(sw.index.long() == j) & sw.mask].sum() for j in range(4)])
    torch.testing.assert_close(sw.centroids.grad, expected)
    assert gw[0, :3].abs().sum() > 0  # the pruned positions do have a dense gradient ...
    assert not sw.mask[0, :3].any()  # ... which the mask keeps out of the centroids


def test_shared_weights_stay_shared_after_optimizer_steps() -> None:
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(10, 16), nn.ReLU(), nn.Linear(16, 3))
    shared = share_weights(net, bits=3)
    before = {n: m.index.clone() for n, m in shared.named_modules() if isinstance(m, SharedWeights)}
    opt = torch.optim.Adam(shared.parameters(), lr=0.05)
    x, y = torch.randn(32, 10), torch.randint(0, 3, (32,))
    c0 = shared[0].centroids.detach().clone()
    for _ in range(5):
        opt.zero_grad()
        nn.functional.cross_entropy(shared(x), y).backward()
        opt.step()
    assert not torch.equal(c0, shared[0].centroids)  # the centroids moved
    for name, mod in shared.named_modules():
        if isinstance(mod, SharedWeights):
            assert torch.equal(mod.index, before[name])  # indices fixed
            w = mod.weight.detach()
            assert w.unique().numel() <= 8
            for j in range(8):  # every member equals its centroid
                members = w[mod.index.long() == j]
                assert (members == mod.centroids[j]).all()
    names = {n for n, _ in shared.named_parameters()}
    assert names == {"0.centroids", "0.layer.bias", "2.centroids", "2.layer.bias"}


@pytest.mark.parametrize("how", ["zeros", "mask", "torch_prune", "parametrize"])
def test_pruned_weights_stay_zero(how: str) -> None:
    torch.manual_seed(0)
    conv = nn.Conv2d(3, 6, 3)
    keep = torch.rand(conv.weight.shape) > 0.6
    mask = None
    if how == "zeros":
        with torch.no_grad():
            conv.weight.mul_(keep)
    elif how == "mask":
        mask = keep
    elif how == "torch_prune":
        torch_prune.custom_from_mask(conv, "weight", keep)
    else:
        class Mask(nn.Module):
            def __init__(self, m: torch.Tensor) -> None:
                super().__init__()
                self.register_buffer("m", m)

            def forward(self, w: torch.Tensor) -> torch.Tensor:
                return w * self.m

        parametrize.register_parametrization(conv, "weight", Mask(keep))
    sw = SharedWeights.from_layer(conv, 16, mask=mask)
    assert torch.equal(sw.mask, keep)
    assert (sw.weight[~keep] == 0).all() and (sw.weight[keep] != 0).all()
    assert not (sw.centroids == 0).any()  # zero is not a centroid
    opt = torch.optim.SGD(sw.parameters(), lr=0.5)
    for _ in range(3):
        opt.zero_grad()
        sw(torch.randn(2, 3, 8, 8)).square().sum().backward()
        opt.step()
    assert (sw.weight[~keep] == 0).all()
    assert set(dict(sw.named_buffers())) == {"index", "mask"}  # no leftover prune state
    # only kept weights were clustered: the centroids lie within their range
    kept = (conv.weight.detach() * keep)[keep]
    c = SharedWeights.from_layer(conv, 16, mask=mask).centroids.detach()
    assert kept.min() <= c.min() and c.max() <= kept.max()


def test_fully_pruned_layer() -> None:
    lin = nn.Linear(4, 3)
    with torch.no_grad():
        lin.weight.zero_()
    sw = SharedWeights.from_layer(lin, 4)
    assert not sw.mask.any() and (sw.weight == 0).all()
    torch.testing.assert_close(sw(torch.randn(2, 4)), lin.bias.expand(2, 3))


def test_forward_matches_dense_reference_conv_and_linear() -> None:
    for layer, x in ((nn.Linear(9, 4), torch.randn(5, 9)),
                     (nn.Conv2d(2, 3, 3, padding=1, stride=2), torch.randn(2, 2, 7, 7)),
                     (nn.Conv1d(2, 3, 3), torch.randn(2, 2, 9))):
        sw = SharedWeights.from_layer(layer, 8)
        dense = copy.deepcopy(layer)
        with torch.no_grad():
            dense.weight.copy_(sw.weight)
        torch.testing.assert_close(sw(x), dense(x))
        assert sw.weight.unique().numel() <= 8


def test_state_dict_roundtrip_and_export() -> None:
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 6 * 6, 5))
    with torch.no_grad():
        net[3].weight[:, ::2] = 0
    a = share_weights(net)  # defaults: 256 for conv, 32 for fc
    assert a[0].k == 256 and a[3].k == 32
    with torch.no_grad():
        a[3].centroids.add_(0.01)
    b = share_weights(nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(), nn.Flatten(),
                                    nn.Linear(4 * 6 * 6, 5)))
    b.load_state_dict(a.state_dict())
    x = torch.randn(2, 1, 8, 8)
    torch.testing.assert_close(a(x), b(x))
    assert a.state_dict()["3.index"].dtype == torch.uint8
    ex = export_shared(a)
    assert set(ex) == {"0", "3"}
    e = ex["3"]
    assert e["codebook"].dtype == torch.float32 and e["codebook"].shape == (32,)
    assert e["index"].dtype == torch.uint8 and e["shape"] == (5, 144)
    assert (e["index"][~e["mask"]] == 0).all() and not e["mask"][:, ::2].any()
    w = torch.where(e["mask"], e["codebook"][e["index"].long()], torch.zeros(()))
    torch.testing.assert_close(w, a[3].weight.detach())
    rows = {r.name: r for r in sharing_report(a)}
    r = rows["3"]
    assert r.index_bits == 5 and r.kept == int(e["mask"].sum()) and r.numel == 720
    assert r.shared_bits == r.kept * 5 + 32 * 32 and r.dense_bits == 720 * 32
    assert r.distinct_values <= 32 and r.mask_bits == 720 and rows["0"].mask_bits == 0


def test_share_weights_options() -> None:
    net = nn.Sequential(nn.Linear(6, 6), nn.ReLU(), nn.Linear(6, 2))
    out = share_weights(net, bits={"0": 1}, names=["0"])
    assert isinstance(out[0], SharedWeights) and out[0].k == 2 and isinstance(out[2], nn.Linear)
    assert isinstance(net[0], nn.Linear)  # not in place
    same = share_weights(net, fc_clusters=3, inplace=True)
    assert same is net and net[2].k == 3
    assert "k=3" in repr(net[2])


def test_bad_arguments_raise() -> None:
    with pytest.raises(ValueError, match="1-d floating"):
        kmeans1d(torch.tensor([1, 2]), 2)
    with pytest.raises(ValueError, match="at least one"):
        kmeans1d(torch.empty(0), 2)
    with pytest.raises(ValueError, match="k must be"):
        kmeans1d(torch.randn(4), 0)
    with pytest.raises(ValueError, match="init must be one of"):
        kmeans1d(torch.randn(4), 2, init="kmeans")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="finite"):
        kmeans1d(torch.tensor([1.0, float("nan")]), 2)
    with pytest.raises(ValueError, match=r"index values must lie in \[0, 2\)"):
        shared_weight(torch.randn(2), torch.tensor([0, 2]))
    with pytest.raises(TypeError, match="integer"):
        shared_weight(torch.randn(2), torch.tensor([0.0]))
    with pytest.raises(ValueError, match="mask must be"):
        shared_weight(torch.randn(2), torch.tensor([0, 1]), torch.tensor([1, 0]))
    with pytest.raises(TypeError, match="SharedWeights wraps"):
        SharedWeights.from_layer(nn.ReLU(), 2)
    with pytest.raises(ValueError, match="mask must be"):
        SharedWeights.from_layer(nn.Linear(2, 2), 2, mask=torch.ones(3, dtype=torch.bool))
    net = nn.Sequential(nn.Linear(2, 2))
    with pytest.raises(ValueError, match="bits must be"):
        share_weights(net, bits=0)
    with pytest.raises(ValueError, match="names"):
        share_weights(net, names=["1"])
    with pytest.raises(ValueError, match="fc_clusters"):
        share_weights(net, fc_clusters=0)
    with pytest.raises(ValueError, match="masks names"):
        share_weights(net, masks={"x": torch.ones(2, 2, dtype=torch.bool)})


def test_share_weights_on_pruned_model_leaves_original_intact() -> None:
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(6, 8), nn.ReLU(), nn.Linear(8, 2))
    torch_prune.l1_unstructured(net[0], "weight", amount=0.5)
    keep = net[0].weight_mask.bool().clone()
    x = torch.randn(3, 6)
    ref = net(x)
    shared = share_weights(net, bits=2)  # deep copy of a torch.prune-pruned model
    torch.testing.assert_close(net(x), ref)  # original untouched and still pruned
    assert hasattr(net[0], "weight_orig")
    assert torch.equal(shared[0].mask, keep) and (shared[0].weight[~keep] == 0).all()


def test_interop_with_compress_prune() -> None:
    prune = pytest.importorskip("hypersparse.compress.prune")  # the `compress` branch's module
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(12, 10), nn.ReLU(), nn.Linear(10, 3))
    prune.magnitude_prune(net[0], amount=0.7)
    keep = prune.get_mask(net[0]).clone()
    shared = share_weights(net, bits=3)
    assert torch.equal(shared[0].mask, keep) and (shared[0].weight[~keep] == 0).all()
    assert not (shared[0].centroids == 0).any()
    assert (shared[0].weight[keep] != 0).all()
