"""Uniform b-bit quantisation: levels, reference, zero preservation, STE fine-tuning."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn
from torch.nn.utils import parametrize

from hypersparse.compress import (
    FakeQuantize,
    dequantize,
    fake_quantize,
    freeze_quantized,
    quantization_report,
    quantize_model,
    quantize_params,
    quantize_tensor,
)


def _naive(x: torch.Tensor, bits: int) -> torch.Tensor:
    """Element by element in Python floats (float64), per tensor."""
    vals = x.double().flatten().tolist()
    lo, hi = min(min(vals), 0.0), max(max(vals), 0.0)
    n = 2**bits - 1
    scale = (hi - lo) / n if hi > lo else 1.0
    zp = min(max(round(-lo / scale), 0), n)
    out = [(min(max(round(v / scale) + zp, 0), n) - zp) * scale for v in vals]
    return torch.tensor(out, dtype=torch.float64).reshape(x.shape)


@settings(max_examples=25, deadline=None)
@given(shape=st.lists(st.integers(1, 6), min_size=1, max_size=3), bits=st.integers(1, 9),
       seed=st.integers(0, 10_000), shift=st.floats(-2, 2))
def test_per_tensor_matches_reference_and_levels(shape: list[int], bits: int, seed: int,
                                                 shift: float) -> None:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(shape, generator=g, dtype=torch.float64) + shift
    y = fake_quantize(x, bits)
    torch.testing.assert_close(y, _naive(x, bits), rtol=0, atol=1e-12)
    assert y.unique().numel() <= 2**bits
    scale, _ = quantize_params(x, bits)
    assert (y - x).abs().max() <= scale.max() / 2 + 1e-12  # within half a step


@settings(max_examples=25, deadline=None)
@given(c=st.integers(1, 5), n=st.integers(1, 8), bits=st.integers(1, 8), axis=st.integers(0, 2),
       seed=st.integers(0, 1000))
def test_per_channel_equals_per_slice(c: int, n: int, bits: int, axis: int, seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(3, c, n, generator=g, dtype=torch.float64)
    y = fake_quantize(x, bits, axis=axis)
    for i in range(x.shape[axis]):
        xs = x.select(axis, i)
        torch.testing.assert_close(y.select(axis, i), _naive(xs, bits), rtol=0, atol=1e-12)
        assert y.select(axis, i).unique().numel() <= 2**bits
    torch.testing.assert_close(y, fake_quantize(x, bits, axis=axis - 3))  # negative axis


def test_integer_representation_roundtrip() -> None:
    x = torch.randn(4, 6)
    for bits, dtype in ((4, torch.uint8), (8, torch.uint8), (12, torch.int32)):
        q, s, z = quantize_tensor(x, bits, axis=0)
        assert q.dtype == dtype and q.shape == x.shape and s.shape == (4,) and z.shape == (4,)
        assert int(q.min()) >= 0 and int(q.max()) <= 2**bits - 1
        torch.testing.assert_close(dequantize(q, s, z, axis=0), fake_quantize(x, bits, axis=0))


def test_zeros_stay_exactly_zero() -> None:
    x = torch.randn(50) + 0.3
    x[::3] = 0
    for bits in (1, 2, 5, 8):
        y = fake_quantize(x, bits)
        assert (y[::3] == 0).all()
    assert (fake_quantize(torch.zeros(2, 3), 4, axis=1) == 0).all()  # all-zero group: scale 1
    assert (fake_quantize(torch.full((5,), 2.0), 3) == 2.0).all()  # endpoint exact


def test_edge_cases() -> None:
    assert fake_quantize(torch.empty(0), 4).shape == (0,)  # empty
    x = torch.randn(5, 8).t()  # non-contiguous
    assert not x.is_contiguous()
    y = fake_quantize(x.contiguous(), 3, axis=1)
    torch.testing.assert_close(fake_quantize(x, 3, axis=1), y)
    torch.testing.assert_close(fake_quantize(x, 16), x, atol=1e-3, rtol=0)
    y = fake_quantize(torch.tensor([-1.0, 0.2, 3.0]), 1)  # 1 bit: two levels, one of them 0
    assert set(y.tolist()) <= {0.0, 4.0} and y.unique().numel() <= 2


def test_straight_through_gradient() -> None:
    x = torch.randn(3, 4, dtype=torch.float64, requires_grad=True)
    gout = torch.randn(3, 4, dtype=torch.float64)
    (gx,) = torch.autograd.grad(fake_quantize(x, 3, axis=0), x, gout)
    assert torch.equal(gx, gout)  # identity, not the zero a.e. derivative of rounding


def test_fine_tuning_moves_latent_weights_and_keeps_levels() -> None:
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 3))
    q = quantize_model(net, 2, per_channel=True)
    assert isinstance(net[0], nn.Linear) and not parametrize.is_parametrized(net[0])
    x, y = torch.randn(64, 8), torch.randint(0, 3, (64,))
    opt = torch.optim.SGD(q.parameters(), lr=0.5)
    latent0 = q[0].parametrizations.weight.original.detach().clone()
    losses = []
    for _ in range(30):
        opt.zero_grad()
        loss = nn.functional.cross_entropy(q(x), y)
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0]
    assert not torch.equal(latent0, q[0].parametrizations.weight.original)
    for row in q[0].weight:
        assert row.unique().numel() <= 4
    rows = {r.name: r for r in quantization_report(q)}
    assert rows["0"].bits == 2 and rows["0"].groups == 16
    assert rows["0"].max_distinct_per_group <= 4
    assert rows["0"].quantized_bits == 128 * 2 + 64 * 16 and rows["0"].dense_bits == 128 * 32
    out = q(x)
    freeze_quantized(q)
    assert not parametrize.is_parametrized(q[0])
    torch.testing.assert_close(q(x), out)
    assert q[0].weight[0].unique().numel() <= 4


def test_state_dict_roundtrip_and_names() -> None:
    net = nn.Sequential(nn.Conv2d(1, 3, 3), nn.Flatten(), nn.Linear(3 * 4 * 4, 2))
    a = quantize_model(net, 4, per_channel=False, names=["2"])
    assert not parametrize.is_parametrized(a[0]) and parametrize.is_parametrized(a[2])
    assert "bits=4, axis=None" in repr(a[2])
    b = quantize_model(nn.Sequential(nn.Conv2d(1, 3, 3), nn.Flatten(), nn.Linear(48, 2)), 4,
                       per_channel=False, names=["2"])
    b.load_state_dict(a.state_dict())
    x = torch.randn(2, 1, 6, 6)
    torch.testing.assert_close(a(x), b(x))
    c = quantize_model(net, 3)  # conv too, per output channel
    assert c[0].weight.flatten(1).unique(dim=1).shape[1] <= 2**3 * 3
    for ch in c[0].weight:
        assert ch.unique().numel() <= 8


def test_stacks_on_a_pruning_parametrisation() -> None:
    class Mask(nn.Module):
        def __init__(self, m: torch.Tensor) -> None:
            super().__init__()
            self.register_buffer("m", m)

        def forward(self, w: torch.Tensor) -> torch.Tensor:
            return w * self.m

    lin = nn.Linear(10, 6)
    keep = torch.rand(6, 10) > 0.5
    parametrize.register_parametrization(lin, "weight", Mask(keep))
    q = quantize_model(nn.Sequential(lin), 3)
    assert (q[0].weight[~keep] == 0).all()
    assert isinstance(q[0].parametrizations.weight[1], FakeQuantize)


def test_bad_arguments_raise() -> None:
    x = torch.randn(3, 4)
    for bits in (0, 17, 2.5, True):
        with pytest.raises(ValueError, match="bits must be an int in"):
            fake_quantize(x, bits)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="axis must be"):
        fake_quantize(x, 4, axis=2)
    with pytest.raises(TypeError, match="floating"):
        fake_quantize(torch.tensor([1, 2]), 4)
    with pytest.raises(ValueError, match="bits"):
        FakeQuantize(0)
    with pytest.raises(ValueError, match="names"):
        quantize_model(nn.Sequential(nn.Linear(2, 2)), 4, names=["5"])
