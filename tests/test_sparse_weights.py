"""SparseWeights / SparseWeights2d: exact fan-in, zeros that survive optimizers, dense reference."""

from __future__ import annotations

import io

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from hypersparse.nn import SparseWeights, SparseWeights2d, random_fan_in_mask


@settings(max_examples=25, deadline=None)
@given(n_in=st.integers(1, 50), n_out=st.integers(1, 20), sparsity=st.floats(0.0, 0.95))
def test_linear_exact_fan_in(n_in, n_out, sparsity):
    nonzeros = round((1 - sparsity) * n_in)
    if nonzeros < 1:
        with pytest.raises(ValueError, match="sparsity"):
            SparseWeights(nn.Linear(n_in, n_out), sparsity)
        return
    layer = SparseWeights(nn.Linear(n_in, n_out), sparsity)
    assert torch.equal(layer.mask.sum(1), torch.full((n_out,), nonzeros))
    assert torch.equal(layer.module.weight != 0, layer.mask)  # weights of N(0) are never exactly 0
    assert layer.mask.dtype == torch.bool and layer.nonzeros == nonzeros


@settings(max_examples=25, deadline=None)
@given(c_in=st.integers(1, 6), c_out=st.integers(1, 6), k=st.integers(1, 4),
       sparsity=st.floats(0.0, 0.9))
def test_conv_exact_fan_in(c_in, c_out, k, sparsity):
    fan_in = c_in * k * k
    nonzeros = round((1 - sparsity) * fan_in)
    if nonzeros < 1:
        return
    layer = SparseWeights2d(nn.Conv2d(c_in, c_out, k), sparsity)
    assert layer.mask.shape == (c_out, c_in, k, k)
    assert torch.equal(layer.mask.flatten(1).sum(1), torch.full((c_out,), nonzeros))


def test_forward_matches_dense_reference():
    lin = SparseWeights(nn.Linear(30, 7), 0.6)
    x = torch.randn(5, 30)
    torch.testing.assert_close(lin(x), x @ (lin.module.weight * lin.mask).t() + lin.module.bias)
    conv = SparseWeights2d(nn.Conv2d(3, 4, 3, padding=1), 0.5)
    xi = torch.randn(2, 3, 6, 6)
    expect = F.conv2d(xi, conv.module.weight * conv.mask, conv.module.bias, padding=1)
    torch.testing.assert_close(conv(xi), expect)
    # the output does not depend on masked weights even if someone writes into them
    with torch.no_grad():
        lin.module.weight.add_(1.0)
    torch.testing.assert_close(lin(x), x @ (lin.module.weight * lin.mask).t() + lin.module.bias)


@pytest.mark.parametrize("make_opt", [
    lambda p: torch.optim.SGD(p, lr=0.1),
    lambda p: torch.optim.SGD(p, lr=0.1, momentum=0.9, weight_decay=1e-2),
    lambda p: torch.optim.SGD(p, lr=0.1, momentum=0.9, nesterov=True, weight_decay=1e-2),
    lambda p: torch.optim.Adam(p, lr=1e-2, weight_decay=1e-2),
    lambda p: torch.optim.AdamW(p, lr=1e-2, weight_decay=1e-1),
    lambda p: torch.optim.RMSprop(p, lr=1e-2, momentum=0.5, weight_decay=1e-2),
])
def test_masked_weights_stay_zero_after_optimizer_steps(make_opt):
    model = nn.Sequential(SparseWeights2d(nn.Conv2d(2, 4, 3), 0.7), nn.ReLU(), nn.Flatten(),
                          SparseWeights(nn.Linear(4 * 4 * 4, 10), 0.8))
    opt = make_opt(model.parameters())
    before = [m.module.weight.detach().clone() for m in (model[0], model[3])]
    for _ in range(15):
        loss = model(torch.randn(8, 2, 6, 6)).pow(2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    for m, w0 in zip((model[0], model[3]), before):
        w = m.module.weight
        assert torch.all(w[~m.mask] == 0)
        assert not torch.equal(w[m.mask], w0[m.mask])  # the kept weights did train
        assert torch.all(m.module.weight.grad[~m.mask] == 0)


def test_load_state_dict_rezeroes_and_round_trips():
    a = SparseWeights(nn.Linear(20, 5), 0.5, generator=torch.Generator().manual_seed(1))
    state = a.state_dict()
    assert set(state) == {"module.weight", "module.bias", "mask"}
    buf = io.BytesIO()
    torch.save(state, buf)
    buf.seek(0)
    b = SparseWeights(nn.Linear(20, 5), 0.5, generator=torch.Generator().manual_seed(2))
    b.load_state_dict(torch.load(buf))
    x = torch.randn(3, 20)
    assert torch.equal(a(x), b(x)) and torch.equal(a.mask, b.mask)
    dense = {**a.state_dict(), "module.weight": torch.ones(5, 20)}
    b.load_state_dict(dense)
    assert torch.equal(b.module.weight, b.mask.float())


def test_generator_reproducible():
    g = lambda s: torch.Generator().manual_seed(s)  # noqa: E731
    m1 = SparseWeights(nn.Linear(40, 6), 0.75, generator=g(3)).mask
    m2 = SparseWeights(nn.Linear(40, 6), 0.75, generator=g(3)).mask
    m3 = SparseWeights(nn.Linear(40, 6), 0.75, generator=g(4)).mask
    assert torch.equal(m1, m2) and not torch.equal(m1, m3)
    assert torch.equal(random_fan_in_mask(4, 9, 3, generator=g(0)).sum(1), torch.full((4,), 3))


def test_zero_sparsity_is_dense():
    lin = nn.Linear(8, 3)
    w = lin.weight.detach().clone()
    layer = SparseWeights(lin, 0.0)
    assert bool(layer.mask.all()) and torch.equal(layer.module.weight, w)


@pytest.mark.parametrize("sparsity", [1.0, -0.1, 1.5, True])
def test_bad_sparsity(sparsity):
    with pytest.raises(ValueError, match="sparsity"):
        SparseWeights(nn.Linear(10, 2), sparsity)


def test_wrong_module_type():
    with pytest.raises(TypeError, match="Linear"):
        SparseWeights(nn.Conv2d(1, 2, 3), 0.5)
    with pytest.raises(TypeError, match="Conv2d"):
        SparseWeights2d(nn.Linear(3, 2), 0.5)
    with pytest.raises(ValueError, match="nonzeros"):
        random_fan_in_mask(2, 3, 4)


def test_repr():
    assert "sparsity=0.7" in repr(SparseWeights(nn.Linear(10, 2), 0.7))
    assert "nonzeros_per_unit=3" in repr(SparseWeights(nn.Linear(10, 2), 0.7))


@pytest.mark.parametrize("make, fan_in", [
    (lambda: nn.Linear(1024, 700), 1024),
    (lambda: nn.Conv2d(32, 64, 5), 32 * 25),
])
def test_init_matches_dense_layer_of_kept_fan_in(make, fan_in):
    torch.manual_seed(0)
    sparse = SparseWeights(make(), 0.7) if fan_in == 1024 else SparseWeights2d(make(), 0.7)
    n = sparse.nonzeros
    assert n == round(0.3 * fan_in)
    kept = sparse.module.weight.detach()[sparse.mask]
    bound = 1 / n**0.5  # PyTorch's default init of a dense layer with n inputs
    assert kept.abs().max() <= bound * (1 + 1e-6)
    assert kept.abs().max() > 0.99 * bound  # fills the range (>= 200k draws)
    # uniform(-b, b) has std b / sqrt(3); the unscaled default would be 0.55x this
    assert abs(float(kept.std()) / (bound / 3**0.5) - 1) < 0.02
    assert sparse.module.bias.abs().max() <= bound * (1 + 1e-6)
    assert sparse.module.bias.abs().max() > 0.8 * bound
    torch.manual_seed(0)
    plain = SparseWeights(make(), 0.7, rescale_init=False) if fan_in == 1024 else (
        SparseWeights2d(make(), 0.7, rescale_init=False))
    assert plain.module.weight[plain.mask].abs().max() <= 1 / fan_in**0.5 * (1 + 1e-6)


def test_init_preserves_pre_activation_variance():
    # per unit: Var(w . x) = n Var(w) for x ~ N(0, 1); the dense reference has fan_in Var(w_dense)
    torch.manual_seed(1)
    dense = nn.Linear(2000, 400)
    sparse = SparseWeights(nn.Linear(2000, 400), 0.9)
    x = torch.randn(4000, 2000)
    with torch.no_grad():
        v_dense = (x @ dense.weight.t()).var()
        v_sparse = (x @ sparse.masked_weight().t()).var()
        v_plain = (x @ SparseWeights(nn.Linear(2000, 400), 0.9, rescale_init=False)
                   .masked_weight().t()).var()
    assert abs(float(v_sparse / v_dense) - 1) < 0.05
    assert abs(float(v_plain / v_dense) - 0.1) < 0.01  # what the rescale corrects


def test_rescale_is_exact_and_off_keeps_weights():
    torch.manual_seed(2)
    lin = nn.Linear(50, 8)
    w0, b0 = lin.weight.detach().clone(), lin.bias.detach().clone()
    g = torch.Generator().manual_seed(3)
    layer = SparseWeights(lin, 0.6, generator=g)  # 20 of 50 kept
    scale = (50 / 20) ** 0.5
    torch.testing.assert_close(layer.module.weight, w0 * layer.mask * scale)
    torch.testing.assert_close(layer.module.bias, b0 * scale)
    lin2 = nn.Linear(50, 8)
    with torch.no_grad():
        lin2.weight.copy_(w0)
        lin2.bias.copy_(b0)
    off = SparseWeights(lin2, 0.6, rescale_init=False, generator=torch.Generator().manual_seed(3))
    torch.testing.assert_close(off.module.weight, w0 * off.mask)
    torch.testing.assert_close(off.module.bias, b0)
    # sparsity 0 keeps everything and scales by 1
    full = SparseWeights(nn.Linear(5, 3), 0.0)
    assert full.mask.all()
    no_bias = SparseWeights2d(nn.Conv2d(2, 3, 3, bias=False), 0.5)  # no bias is fine
    assert no_bias.module.bias is None
    # loading a state_dict is not rescaled again
    clone = SparseWeights(nn.Linear(50, 8), 0.6, generator=torch.Generator().manual_seed(3))
    clone.load_state_dict(layer.state_dict())
    torch.testing.assert_close(clone.module.weight, layer.module.weight)
    assert "rescale_init=True" in repr(layer)


def test_rescale_init_must_be_bool():
    with pytest.raises(TypeError, match="rescale_init"):
        SparseWeights(nn.Linear(4, 2), 0.5, rescale_init=1)  # type: ignore[arg-type]
