"""Pruning: bool masks, naive references, parameter identity, copies, checkpoints, shrink."""

from __future__ import annotations

import copy
import io
import math
import pickle

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from hypersparse.compress import prune as P


def mlp(seed: int = 0) -> nn.Sequential:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(12, 16), nn.ReLU(), nn.Linear(16, 8), nn.Tanh(),
                         nn.Linear(8, 3))


def size_of(obj: object) -> int:
    buf = io.BytesIO()
    torch.save(obj, buf)
    return len(buf.getvalue())


def ref_topk_keep(imp: np.ndarray, amount: float, mask: np.ndarray | None = None) -> np.ndarray:
    flat = imp.reshape(-1).astype(np.float64)
    if mask is not None:
        flat = np.where(mask.reshape(-1), flat, -np.inf)
    k = round(amount * flat.size)
    keep = np.ones(flat.size, bool)
    keep[np.argsort(flat, kind="stable")[:k]] = False
    return keep.reshape(imp.shape)


# ----------------------------------------------------------------- masks vs naive references


@settings(max_examples=25, deadline=None)
@given(rows=st.integers(1, 9), cols=st.integers(1, 9), amount=st.floats(0, 1),
       seed=st.integers(0, 10_000))
def test_magnitude_amount_matches_reference(rows: int, cols: int, amount: float, seed: int) -> None:
    torch.manual_seed(seed)
    lin = nn.Linear(cols, rows)
    w = lin.weight.detach().numpy().copy()
    P.magnitude_prune(lin, amount=amount)
    assert lin.weight_mask.dtype == torch.bool
    np.testing.assert_array_equal(lin.weight_mask.numpy(), ref_topk_keep(np.abs(w), amount))
    assert int((~lin.weight_mask).sum()) == round(amount * w.size)


def test_topk_ties_prune_earlier_first_and_respect_old_mask() -> None:
    imp = torch.tensor([1.0, 1.0, 1.0, 2.0, 0.5])
    assert P.topk_mask(imp, 0.4).tolist() == [False, True, True, True, False]
    old = torch.tensor([True, True, True, False, True])
    # the already pruned entry (importance 2) counts as least important
    assert P.topk_mask(imp, 0.4, old).tolist() == [True, True, True, False, False]


def test_threshold_and_quality_match_reference() -> None:
    lin = nn.Linear(20, 10)
    w = lin.weight.detach().clone()
    P.magnitude_prune(lin, threshold=0.1)
    assert torch.equal(lin.weight_mask, w.abs() >= 0.1)
    lin2 = nn.Linear(20, 10)
    w2 = lin2.weight.detach().clone()
    P.magnitude_prune(lin2, quality=0.7)
    thr = 0.7 * float(np.std(w2.numpy().reshape(-1), ddof=1))
    assert torch.equal(lin2.weight_mask, w2.abs() >= thr)


def test_global_magnitude_matches_reference() -> None:
    net = mlp()
    ws = [net[i].weight.detach().numpy().copy() for i in (0, 2, 4)]
    P.global_magnitude_prune(net, 0.6)
    flat = np.concatenate([np.abs(w).reshape(-1) for w in ws])
    keep = ref_topk_keep(flat, 0.6)
    got = np.concatenate([net[i].weight_mask.numpy().reshape(-1) for i in (0, 2, 4)])
    np.testing.assert_array_equal(got, keep)
    # layers end up with different sparsities (one threshold, not one fraction)
    dens = [float(net[i].weight_mask.float().mean()) for i in (0, 2, 4)]
    assert len(set(dens)) > 1


@pytest.mark.parametrize("dim", [0, 1])
def test_structured_matches_reference(dim: int) -> None:
    conv = nn.Conv2d(6, 10, 3)
    w = conv.weight.detach().numpy().copy()
    P.structured_prune(conv, amount=0.5, dim=dim)
    norms = np.linalg.norm(np.moveaxis(w, dim, 0).reshape(w.shape[dim], -1), axis=1)
    keep_units = ref_topk_keep(norms, 0.5)
    expect = np.moveaxis(np.broadcast_to(
        keep_units.reshape(-1, *([1] * (w.ndim - 1))), np.moveaxis(w, dim, 0).shape), 0, dim)
    np.testing.assert_array_equal(conv.weight_mask.numpy(), expect)
    if dim == 0:
        np.testing.assert_array_equal(conv.bias_mask.numpy(), keep_units)
    else:
        assert not P.is_pruned(conv, "bias")


def test_masks_are_cumulative_and_iterative_amount_is_total() -> None:
    lin = nn.Linear(10, 10)
    P.magnitude_prune(lin, amount=0.3)
    first = lin.weight_mask.clone()
    with torch.no_grad():
        lin.weight.copy_(torch.randn(10, 10))  # pruned entries get new (large) values
    P.magnitude_prune(lin, amount=0.5)
    assert not bool((lin.weight_mask & ~first).any())  # once pruned, stays pruned
    assert int((~lin.weight_mask).sum()) == 50


# ----------------------------------------------------------------- training behaviour


@pytest.mark.parametrize("opt_name", ["sgd", "sgd_momentum_wd", "adam", "adamw"])
def test_masked_weights_receive_no_update(opt_name: str) -> None:
    net = mlp()
    P.magnitude_prune(net[0], amount=0.7)
    P.structured_prune(net[2], amount=0.5)
    params_before = [id(p) for p in net.parameters()]
    opt = {
        "sgd": lambda ps: torch.optim.SGD(ps, lr=0.1),
        "sgd_momentum_wd": lambda ps: torch.optim.SGD(ps, lr=0.1, momentum=0.9, weight_decay=0.1),
        "adam": lambda ps: torch.optim.Adam(ps, lr=0.1),
        "adamw": lambda ps: torch.optim.AdamW(ps, lr=0.1, weight_decay=0.1),
    }[opt_name](net.parameters())
    x, y = torch.randn(32, 12), torch.randint(0, 3, (32,))
    for _ in range(3):
        opt.zero_grad()
        nn.functional.cross_entropy(net(x), y).backward()
        for m, n in ((net[0], "weight"), (net[2], "weight"), (net[2], "bias")):
            g = getattr(m, n).grad
            assert bool((g[~getattr(m, n + "_mask")] == 0).all())
        opt.step()
        for m, n in ((net[0], "weight"), (net[2], "weight"), (net[2], "bias")):
            assert bool((getattr(m, n)[~getattr(m, n + "_mask")] == 0).all())
        assert bool((net[0].weight[net[0].weight_mask] != 0).all())
    assert [id(p) for p in net.parameters()] == params_before


def test_optimizer_built_before_pruning_keeps_training_the_same_parameters() -> None:
    net = mlp()
    opt = torch.optim.SGD(net.parameters(), lr=0.5)
    before = net[0].weight
    P.magnitude_prune(net[0], amount=0.5)
    assert net[0].weight is before
    kept = net[0].weight.detach().clone()
    target = torch.zeros(8, dtype=torch.long)
    nn.functional.cross_entropy(net(torch.randn(8, 12)), target).backward()
    opt.step()
    assert not torch.equal(net[0].weight[net[0].weight_mask], kept[net[0].weight_mask])
    assert bool((net[0].weight[~net[0].weight_mask] == 0).all())


def test_forward_uses_masked_weight_even_if_entries_were_modified() -> None:
    lin = nn.Linear(5, 4)
    P.magnitude_prune(lin, amount=0.5)
    x = torch.randn(3, 5)
    with torch.no_grad():
        lin.weight.add_(1.0)  # e.g. stale momentum moved pruned entries
    expected = nn.functional.linear(x, lin.weight.detach() * lin.weight_mask, lin.bias)
    assert torch.allclose(lin(x), expected)


def test_gradient_accumulation_over_two_forwards() -> None:
    net = mlp()
    P.magnitude_prune(net[0], amount=0.5)
    x = torch.randn(4, 12)
    loss = net(x).sum() + net(x * 2).sum()  # the second forward runs the pre-hook again
    loss.backward()
    assert bool((net[0].weight.grad[~net[0].weight_mask] == 0).all())


# ----------------------------------------------------------------- copies and checkpoints


def _pruned_net() -> nn.Sequential:
    net = mlp()
    P.magnitude_prune(net[0], amount=0.8)
    P.structured_prune(net[2], amount=0.25)
    return net


@pytest.mark.parametrize("removed", [False, True])
def test_deepcopy_and_pickle(removed: bool) -> None:
    net = _pruned_net()
    if removed:
        P.remove_all(net)
    x = torch.randn(5, 12)
    for clone in (copy.deepcopy(net), pickle.loads(pickle.dumps(net))):
        assert torch.equal(clone(x), net(x))
        assert P.is_pruned(clone[0]) is (not removed)
        assert clone[0].weight is not net[0].weight
        # the copy's masks still act: its gradient of pruned entries is zero
        clone(x).sum().backward()
        if not removed:
            assert bool((clone[0].weight.grad[~clone[0].weight_mask] == 0).all())
            assert clone[0].weight_mask is not net[0].weight_mask
        # a copy can be copied again and trained
        opt = torch.optim.Adam(clone.parameters(), lr=0.1)
        opt.step()
        if not removed:
            assert bool((clone[0].weight[~clone[0].weight_mask] == 0).all())


def test_state_dict_round_trip_strict_before_and_after_remove() -> None:
    net = _pruned_net()
    x = torch.randn(5, 12)
    sd = net.state_dict()
    assert sd["0.weight_mask"].dtype == torch.uint8  # compact: packed bits
    assert sd["0.weight"].dim() == 1
    fresh = mlp(seed=1)
    P.identity(fresh[0])
    P.identity(fresh[2])
    P.identity(fresh[2], "bias")
    fresh.load_state_dict(sd, strict=True)
    assert torch.equal(fresh(x), net(x))
    assert torch.equal(fresh[0].weight_mask, net[0].weight_mask)
    # the serialised checkpoint goes through torch.save / weights_only load
    buf = io.BytesIO()
    torch.save(sd, buf)
    buf.seek(0)
    loaded = torch.load(buf, weights_only=True)
    other = mlp(seed=2)
    P.load_pruned_state_dict(other, loaded)
    assert torch.equal(other(x), net(x))
    # into an unpruned model through dense_state_dict
    plain = mlp(seed=3)
    plain.load_state_dict(P.dense_state_dict(sd), strict=True)
    assert torch.equal(plain(x), net(x))
    # after remove(): a plain state dict
    P.remove_all(net)
    sd2 = net.state_dict()
    assert set(sd2) == set(mlp().state_dict())
    plain2 = mlp(seed=4)
    plain2.load_state_dict(sd2, strict=True)
    assert torch.equal(plain2(x), net(x))
    with pytest.raises(RuntimeError):  # strict still means strict
        mlp().load_state_dict(sd, strict=True)


def test_state_dict_keeps_masks_of_kept_zero_weights() -> None:
    lin = nn.Linear(40, 40)
    P.magnitude_prune(lin, amount=0.01)
    with torch.no_grad():
        lin.weight[lin.weight_mask.nonzero()[0].tolist()[0], lin.weight_mask.nonzero()[0][1]] = 0
    sd = lin.state_dict()
    fresh = nn.Linear(40, 40)
    P.identity(fresh)
    fresh.load_state_dict(sd)
    assert torch.equal(fresh.weight_mask, lin.weight_mask)  # the kept zero stays kept


@pytest.mark.parametrize("amount", [0.0, 0.01, 0.3, 0.9, 1.0])
def test_pruned_checkpoint_not_larger(amount: float) -> None:
    net = mlp()
    dense_size = size_of(net.state_dict())
    P.global_magnitude_prune(net, amount)
    pruned_size = size_of(net.state_dict())
    assert pruned_size <= dense_size
    if amount >= 0.9:  # tiny layers: the mask entry only pays off at high sparsity
        assert pruned_size < dense_size


def test_pruned_checkpoint_smaller_on_a_big_layer() -> None:
    lin = nn.Linear(300, 300)
    dense_size = size_of(lin.state_dict())
    P.magnitude_prune(lin, amount=0.9)
    pruned_size = size_of(lin.state_dict())
    # 10% of the values + 1 bit per position: about 0.13 of the dense weight
    assert pruned_size < 0.2 * dense_size


def test_remove_makes_permanent_and_unhooks() -> None:
    lin = nn.Linear(6, 6)
    P.magnitude_prune(lin, amount=0.5)
    zeros = lin.weight == 0
    P.remove(lin)
    assert not P.is_pruned(lin)
    assert not hasattr(lin, "weight_mask")
    assert torch.equal(lin.weight == 0, zeros)
    assert len(lin._forward_pre_hooks) == len(lin._state_dict_hooks) == 0
    lin(torch.randn(2, 6)).sum().backward()
    assert bool((lin.weight.grad != 0).any(1).all())  # gradients flow everywhere again
    with pytest.raises(ValueError, match="not pruned"):
        P.remove(lin)


@settings(max_examples=25, deadline=None)
@given(shape=st.lists(st.integers(0, 19), min_size=1, max_size=3), seed=st.integers(0, 999))
def test_pack_unpack_round_trip(shape: list[int], seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    mask = torch.rand(shape, generator=g) < 0.5
    packed = P.pack_mask(mask)
    assert packed.dtype == torch.uint8
    assert packed.shape[-1] == shape[-1] // 8 + 1
    if math.prod(shape[:-1]) > 0:
        assert torch.equal(P.unpack_mask(packed), mask)


# ----------------------------------------------------------------- shrink


def test_shrink_mlp_identical_outputs() -> None:
    net = mlp().eval()
    P.structured_prune(net[0], amount=0.5)
    P.structured_prune(net[2], amount=0.25)
    small = P.shrink(net)
    assert small[0].out_features == 8 and small[2].in_features == 8
    assert small[2].out_features == 6 and small[4].in_features == 6
    x = torch.randn(10, 12)
    assert torch.allclose(small(x), net(x), atol=1e-6)
    assert not P.is_pruned(small[0]) and P.is_pruned(net[0])  # original untouched


def test_shrink_folds_nonzero_constants() -> None:
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(6, 10), nn.Sigmoid(), nn.Linear(10, 4)).eval()
    P.structured_prune(net[0], amount=0.4, prune_bias=False)  # dead units output sigmoid(b)
    small = P.shrink(net)
    assert small[0].out_features == 6
    x = torch.randn(7, 6)
    assert torch.allclose(small(x), net(x), atol=1e-6)


def test_shrink_conv_bn_flatten_linear() -> None:
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8), nn.ReLU(), nn.MaxPool2d(2),
                        nn.Conv2d(8, 6, 3), nn.ReLU(), nn.Flatten(), nn.Linear(6 * 2 * 2, 5))
    net.train()
    for _ in range(3):
        net(torch.randn(16, 3, 10, 10))  # non-trivial running statistics
    net.eval()
    P.structured_prune(net[0], amount=0.5)
    P.structured_prune(net[4], amount=0.5)
    small = P.shrink(net)
    assert small[0].out_channels == 4 and small[1].num_features == 4
    assert small[4].in_channels == 4 and small[4].out_channels == 3
    assert small[7].in_features == 12
    x = torch.randn(5, 3, 10, 10)
    assert torch.allclose(small(x), net(x), atol=1e-5)
    net.train()
    with pytest.raises(ValueError, match="eval"):
        P.shrink(net)


def test_shrink_refuses_what_it_cannot_see_through() -> None:
    net = nn.Sequential(nn.Linear(4, 6), nn.LayerNorm(6), nn.Linear(6, 2))
    P.structured_prune(net[0], amount=0.5)
    with pytest.raises(ValueError, match="LayerNorm"):
        P.shrink(net)
    with pytest.raises(TypeError):
        P.shrink(nn.Linear(3, 3))  # type: ignore[arg-type]


# ----------------------------------------------------------------- schedule


def test_cubic_schedule() -> None:
    assert P.cubic_sparsity(0, 0.9, 10, 110) == 0.0
    assert P.cubic_sparsity(10, 0.9, 10, 110, initial_sparsity=0.1) == pytest.approx(0.1)
    assert P.cubic_sparsity(60, 0.9, 10, 110) == pytest.approx(0.9 - 0.9 * 0.5**3)
    assert P.cubic_sparsity(500, 0.9, 10, 110) == pytest.approx(0.9)
    values = [P.cubic_sparsity(t, 0.8, 0, 100) for t in range(0, 101, 10)]
    assert values == sorted(values)


def test_gradual_pruning_callback_reaches_target_and_is_stateless() -> None:
    net = mlp()
    cb = P.GradualPruning(net, final_sparsity=0.8, begin_step=0, end_step=20, frequency=5)
    assert P.is_pruned(net[0])  # masks attached up front
    opt = torch.optim.SGD(net.parameters(), lr=0.05)
    x, y = torch.randn(32, 12), torch.randint(0, 3, (32,))
    seen = []
    for step in range(1, 26):
        opt.zero_grad()
        nn.functional.cross_entropy(net(x), y).backward()
        opt.step()
        cb(step, net, {})
        seen.append(P.sparsity(net))
    assert seen == sorted(seen)
    assert P.sparsity(net) == pytest.approx(0.8, abs=0.01)
    other = mlp()
    gcb = P.GradualPruning(other, final_sparsity=0.5, begin_step=0, end_step=10, scope="global")
    gcb(10)
    assert P.sparsity(other) == pytest.approx(0.5, abs=1e-3)


# ----------------------------------------------------------------- bad input


def test_bad_arguments_raise() -> None:
    lin = nn.Linear(3, 3)
    with pytest.raises(ValueError, match="exactly one"):
        P.magnitude_prune(lin, amount=0.5, threshold=0.1)
    with pytest.raises(ValueError, match="amount"):
        P.magnitude_prune(lin, amount=1.5)
    with pytest.raises(ValueError, match="threshold"):
        P.magnitude_prune(lin, threshold=-1.0)
    with pytest.raises(ValueError, match="no parameter 'wieght'"):
        P.magnitude_prune(lin, "wieght", amount=0.5)
    with pytest.raises(TypeError, match="bool"):
        P.apply_mask(lin, "weight", torch.ones(3, 3))
    with pytest.raises(ValueError, match="shape"):
        P.apply_mask(lin, "weight", torch.ones(2, 3, dtype=torch.bool))
    with pytest.raises(ValueError, match="dim"):
        P.structured_prune(lin, amount=0.5, dim=3)
    with pytest.raises(ValueError, match="begin_step"):
        P.cubic_sparsity(0, 0.5, 10, 10)
    with pytest.raises(ValueError, match="scope"):
        P.GradualPruning(lin, final_sparsity=0.5, begin_step=0, end_step=5,
                         scope="everything")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="terminator"):
        P.unpack_mask(torch.zeros(2, 3, dtype=torch.uint8))


@pytest.mark.parametrize("opt_cls", [torch.optim.Adam, torch.optim.SGD])
def test_stale_momentum_cannot_move_pruned_weights(opt_cls: type) -> None:
    net = mlp()
    opt = opt_cls(net.parameters(), lr=0.1, **({"momentum": 0.9} if opt_cls is torch.optim.SGD
                                               else {}))
    x, y = torch.randn(32, 12), torch.randint(0, 3, (32,))
    for step in range(4):
        if step == 2:  # prune mid-training: the optimizer holds momentum for every entry
            P.magnitude_prune(net[0], amount=0.6)
        opt.zero_grad()
        nn.functional.cross_entropy(net(x), y).backward()
        opt.step()
        if step >= 2:  # right after the step, before any forward
            assert bool((net[0].weight[~net[0].weight_mask] == 0).all())
    copy_ = copy.deepcopy(net)  # a copy's new parameters are tracked too (at its first forward)
    opt2 = opt_cls(copy_.parameters(), lr=0.1)
    copy_(x).sum().backward()
    with torch.no_grad():
        copy_[0].weight.add_(1.0)
    opt2.step()
    assert bool((copy_[0].weight[~copy_[0].weight_mask] == 0).all())
