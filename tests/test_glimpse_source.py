"""Tests of the glimpse box sources (issue 9): bounded extents, the soft-argmax source, and the
glimpse's ``sigma_gain``."""

from __future__ import annotations

import io

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import Tensor

from hypersparse.functional import glimpse_boxes, sample_boxes
from hypersparse.nn import (
    BoundExtent,
    Glimpse,
    SigmaAnnealing,
    SoftArgmaxBoxes,
    Subsample,
    box_source,
    set_sigma_gain,
)


def naive_soft_argmax(heat: Tensor, stride: int, offset: float) -> Tensor:
    """Loop reference: sum_ij softmax(heat)_ij * (offset + stride i, offset + stride j)."""
    b, g, h, w = heat.shape
    out = torch.zeros(b, g, 2, dtype=heat.dtype)
    for bi in range(b):
        for gi in range(g):
            p = torch.softmax(heat[bi, gi].flatten(), 0).view(h, w)
            for i in range(h):
                for j in range(w):
                    out[bi, gi, 0] += p[i, j] * (offset + stride * i)
                    out[bi, gi, 1] += p[i, j] * (offset + stride * j)
    return out


# ----------------------------------------------------------------------------- BoundExtent


@settings(max_examples=25, deadline=None)
@given(lo=st.floats(0.0, 0.9), width=st.floats(0.0, 0.5), h=st.integers(2, 80),
       w=st.integers(2, 80), raw=st.lists(st.floats(-30, 30), min_size=8, max_size=8))
def test_bound_extent_keeps_boxes_in_bounds(lo: float, width: float, h: int, w: int,
                                            raw: list[float]) -> None:
    hi = min(lo + width, 1.0)
    if hi == 0:
        hi = 0.1
    bounded = BoundExtent(lo, hi)(torch.tensor([raw], dtype=torch.float64))  # (1, 8): G = 2
    boxes = glimpse_boxes(bounded.view(1, 2, 4), (h, w))
    ext = boxes[..., 2:] - boxes[..., :2]
    span = torch.tensor([h - 1, w - 1], dtype=torch.float64)
    # fractions are kept in [1e-6, 1 - 1e-6] so that their logits stay finite
    flo, fhi = min(lo, 1 - 1e-6), max(hi, 1e-6)
    assert bool((ext >= flo * span - 1e-6).all()) and bool((ext <= fhi * span + 1e-6).all())
    assert bool((boxes[..., :2] >= 0).all())
    assert bool((boxes[..., 2] <= h - 1 + 1e-9).all())
    assert bool((boxes[..., 3] <= w - 1 + 1e-9).all())
    # the centre columns pass through unchanged
    given_raw = torch.tensor(raw, dtype=torch.float64).view(2, 4)
    assert torch.equal(bounded.view(2, 4)[:, :2], given_raw[:, :2])


def test_bound_extent_fixed_and_bad() -> None:
    out = BoundExtent(0.3, 0.3)(torch.randn(5, 8))
    torch.testing.assert_close(torch.sigmoid(out.view(5, 2, 4)[..., 2:]),
                               torch.full((5, 2, 2), 0.3))
    for lo, hi in ((0.5, 0.4), (-0.1, 0.5), (0.2, 1.2), (0.0, 0.0), (1.0, 1.0)):
        with pytest.raises(ValueError, match="extent"):
            BoundExtent(lo, hi)


def test_dense_source_bounded() -> None:
    src = box_source((1, 40, 40), 2, downsample=4, extent=(0.3, 0.5), init_extent=0.4)
    assert isinstance(src[-1], BoundExtent)
    boxes = glimpse_boxes(src(torch.rand(3, 1, 40, 40)).view(3, 2, 4), (40, 40))
    torch.testing.assert_close(boxes[..., 2:] - boxes[..., :2], torch.full((3, 2, 2), 0.4 * 39))
    assert not isinstance(box_source((1, 40, 40))[-1], BoundExtent)  # (0, 1): unchanged source


# ----------------------------------------------------------------------------- soft-argmax


@settings(max_examples=25, deadline=None)
@given(b=st.integers(0, 3), g=st.integers(1, 3), h=st.integers(1, 7), w=st.integers(1, 7),
       stride=st.integers(1, 4), seed=st.integers(0, 2**16))
def test_soft_argmax_matches_naive(b: int, g: int, h: int, w: int, stride: int,
                                   seed: int) -> None:
    torch.manual_seed(seed)
    head = SoftArgmaxBoxes(3, g, (h * stride, w * stride), stride=stride, offset=0.5,
                           dtype=torch.float64)
    f = torch.randn(b, 3, h, w, dtype=torch.float64) * 3
    ref = naive_soft_argmax(head.heat(f), stride, 0.5)
    torch.testing.assert_close(head.centres(f), ref)
    out = head(f)
    assert out.shape == (b, 4 * g) and bool(torch.isfinite(out).all())


def test_soft_argmax_box_centred_on_peak_and_inside() -> None:
    # a one-hot heat map far from the border: the box is centred on it; near the border: clamped
    head = SoftArgmaxBoxes(1, 1, (40, 40), stride=4, extent=(0.25, 0.25), init_extent=0.25)
    with torch.no_grad():
        head.heat.weight.fill_(100.0)
        head.heat.bias.zero_()
    f = torch.zeros(2, 1, 10, 10)
    f[0, 0, 5, 3] = 1.0  # image position (20, 12)
    f[1, 0, 0, 9] = 1.0  # (0, 36): too close to the border for a box of 9.75
    boxes = glimpse_boxes(head(f).view(2, 1, 4), (40, 40))[:, 0].detach()
    ext = 0.25 * 39
    torch.testing.assert_close(boxes[0], torch.tensor([20 - ext / 2, 12 - ext / 2,
                                                       20 + ext / 2, 12 + ext / 2]),
                               atol=1e-3, rtol=0)
    assert 0 <= float(boxes[1, 0]) < 1e-2 and 39 - 1e-2 < float(boxes[1, 3]) <= 39


def test_soft_argmax_gradcheck_and_straight_through() -> None:
    torch.manual_seed(0)
    head = SoftArgmaxBoxes(2, 2, (20, 24), stride=4, extent=(0.2, 0.6), init_extent=0.3,
                           dtype=torch.float64)
    f = torch.randn(3, 2, 5, 6, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda t: glimpse_boxes(head(t).view(3, 2, 4), (20, 24)),
                                    (f,))
    # a centre pushed past the border still passes a gradient to the heat map
    with torch.no_grad():
        head.heat.weight.zero_()
        head.heat.bias.zero_()
        head.heat.weight[:, 0] = 50.0
    g = torch.zeros(1, 2, 5, 6, dtype=torch.float64)
    g[0, 0, 0, 0] = 1.0
    g[0, 0, 0, 1] = 0.9
    out = head(g)
    out[0, 0].backward()
    assert head.heat.weight.grad is not None and float(head.heat.weight.grad.abs().sum()) > 0


def test_spatial_source_initial_box_and_bad_input() -> None:
    src = box_source((1, 40, 40), 1, downsample=4, kind="spatial", extent=(0.3, 0.6),
                     init_extent=0.5)
    assert isinstance(src[0], Subsample) and isinstance(src[-1], SoftArgmaxBoxes)
    with torch.no_grad():
        src[-1].heat.weight.zero_()  # type: ignore[union-attr]
    box = glimpse_boxes(src(torch.rand(1, 1, 40, 40)).view(1, 1, 4), (40, 40))[0, 0]
    # a flat heat map: the mean cell position 18 (cells at 0, 4, ..., 36), extent 0.5 * 39
    torch.testing.assert_close(box, torch.tensor([8.25, 8.25, 27.75, 27.75]))
    with pytest.raises(ValueError, match="kind"):
        box_source((1, 40, 40), kind="conv")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="init_extent"):
        box_source((1, 40, 40), kind="spatial", extent=(0.3, 0.4), init_extent=0.5)
    with pytest.raises(ValueError, match="extent"):
        box_source((1, 40, 40), extent=(0.6, 0.4), init_extent=0.5)


@pytest.mark.parametrize("pool", ["stride", "avg"])
def test_glimpse_with_spatial_source(pool: str) -> None:
    layer = Glimpse((2, 36, 44), 6, 2, downsample=4, pool=pool, kind="spatial",
                    extent=(0.3, 0.5), init_extent=0.4, channels=(4, 8), min_sigma=0.0)
    x = torch.rand(3, 2, 36, 44)
    layer.eval()
    y, boxes = layer.forward_with_boxes(x)
    assert y.shape == (3, 2, 2, 6, 6)
    ext = boxes[..., 2:] - boxes[..., :2]
    span = torch.tensor([35.0, 43.0])
    assert bool((ext >= 0.3 * span - 1e-4).all()) and bool((ext <= 0.5 * span + 1e-4).all())
    assert bool((boxes[..., :2] >= 0).all()) and bool((boxes[..., 2] <= 35).all())
    torch.testing.assert_close(y, sample_boxes(x, boxes, (6, 6), mode="nearest"))
    frac = layer.pixels_read(x)
    glimpse_only = layer.pixels_read(x, include_source=False)
    if pool == "stride":  # the source reads a 9 x 11 subsample
        assert bool((frac <= glimpse_only + 99 / (36 * 44) + 1e-6).all())
        assert bool((frac > glimpse_only).all())
    else:
        assert torch.equal(frac, torch.ones(3))
    layer.train()
    (layer(x) * torch.randn(3, 2, 2, 6, 6)).sum().backward()
    heat = layer.source[-1].heat  # type: ignore[union-attr]
    assert float(heat.weight.grad.abs().sum()) > 0


# ----------------------------------------------------------------------------- sigma_gain


def test_sigma_gain_scales_glimpse_sigmas_and_round_trips() -> None:
    layer = Glimpse((1, 30, 30), 5, 2, downsample=3)
    base = layer.sigmas().detach().clone()
    set_sigma_gain(layer, 4.0)
    torch.testing.assert_close(layer.sigmas().detach(), 4 * base)
    anneal = SigmaAnnealing(10, end=0.5, start=4.0)
    anneal(10, layer, {})
    torch.testing.assert_close(layer.sigmas().detach(), 0.5 * base)
    buf = io.BytesIO()
    torch.save(layer.state_dict(), buf)
    other = Glimpse((1, 30, 30), 5, 2, downsample=3)
    other.load_state_dict(torch.load(io.BytesIO(buf.getvalue())))
    assert float(other.sigma_gain) == 0.5
    # a wider sigma spreads the training weights: the reading changes
    x = torch.rand(2, 1, 30, 30)
    layer.train()
    layer.generator = torch.Generator().manual_seed(0)
    narrow = layer(x)
    set_sigma_gain(layer, 20.0)
    layer.generator = torch.Generator().manual_seed(0)
    assert not torch.allclose(layer(x), narrow)


def test_source_modules_reject_bad_arguments() -> None:
    for kwargs in ({"channels": 0}, {"glimpses": 0}, {"stride": 0}, {"image": (8,)},
                   {"image": (0, 8)}):
        args = {"channels": 3, "glimpses": 1, "image": (8, 8), **kwargs}
        with pytest.raises(ValueError):
            SoftArgmaxBoxes(args.pop("channels"), args.pop("glimpses"), args.pop("image"),
                            **args)
    with pytest.raises(ValueError, match="4 G"):
        BoundExtent(0.2, 0.5)(torch.zeros(2, 6))
