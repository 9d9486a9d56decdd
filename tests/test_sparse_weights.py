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
