"""Tests of the glimpse hyperlayer (issue 9): boxes, sampling, weights, the gather, nn.Glimpse."""

from __future__ import annotations

import io

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import Tensor, nn

from hypersparse.functional import (
    box_grid,
    first_occurrence,
    gather_glimpse,
    glimpse_boxes,
    glimpse_point_weights,
    jitter_boxes,
    linear_index,
    point_weights,
    sample_boxes,
    sample_grid_points,
    sample_points,
)
from hypersparse.nn import Glimpse, HyperLayer, Subsample


class FixedBoxes(nn.Module):
    """A source that returns given raw boxes (B, 4G), plus a learnable offset for gradients."""

    def __init__(self, raw: Tensor) -> None:
        super().__init__()
        self.raw = nn.Parameter(raw.clone())

    def forward(self, x: Tensor) -> Tensor:
        return self.raw[: x.shape[0]] + 0 * x.sum()


def layer_with_boxes(raw: Tensor, in_shape: tuple[int, int, int], size: int | tuple[int, int],
                     glimpses: int, **kw: object) -> Glimpse:
    return Glimpse(in_shape, size, glimpses, source=FixedBoxes(raw), **kw)  # type: ignore[arg-type]


# ----------------------------------------------------------------------------- boxes and grids


@settings(max_examples=25, deadline=None)
@given(h=st.integers(1, 120), w=st.integers(1, 120),
       raw=st.lists(st.floats(-60, 60), min_size=4, max_size=4))
def test_boxes_inside_image(h: int, w: int, raw: list[float]) -> None:
    b = glimpse_boxes(torch.tensor(raw, dtype=torch.float64), (h, w))
    top, left, bottom, right = b.tolist()
    assert 0 <= top <= bottom <= h - 1 and 0 <= left <= right <= w - 1
    grid = box_grid(b, (3, 5))
    assert grid.shape == (15, 2)
    assert (grid[:, 0] >= top - 1e-9).all() and (grid[:, 0] <= bottom + 1e-9).all()
    assert (grid[:, 1] >= left - 1e-9).all() and (grid[:, 1] <= right + 1e-9).all()


def test_box_grid_corners_and_centre() -> None:
    b = torch.tensor([[2.0, 3.0, 10.0, 7.0]])
    g = box_grid(b, (5, 3)).view(5, 3, 2)
    assert g[0, 0].tolist() == [2.0, 3.0] and g[-1, -1].tolist() == [10.0, 7.0]
    assert g[2, 1].tolist() == [6.0, 5.0]
    assert box_grid(b, (1, 1)).tolist() == [[[6.0, 5.0]]]


def test_glimpse_boxes_gradient() -> None:
    raw = torch.randn(3, 2, 4, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda r: box_grid(glimpse_boxes(r, (9, 13)), (2, 3)), (raw,))


# ----------------------------------------------------------------------------- sampling


def test_sampler_matches_core_sample_points() -> None:
    g = torch.Generator().manual_seed(0)
    mu = torch.rand(5, 7, 2, generator=g) * torch.tensor([9.0, 13.0])
    a = sample_grid_points(mu, (10, 14), global_samples=3, local_samples=5, region=(4, 3),
                           generator=torch.Generator().manual_seed(1))
    assert a.shape == (5, 7, 12, 2)
    core = sample_points(mu, [10, 14], [0, 1], global_samples=0, local_samples=0)
    assert torch.equal(a[..., :4, :], core)  # the corners are the core's, same order
    hi = torch.tensor([9, 13])
    assert (a >= 0).all() and (a <= hi).all()
    # local points lie in the region box around round(mu), shifted into bounds
    loc = a[..., 7:, :]
    start = torch.minimum((mu.round().long() - torch.tensor([2, 1])).clamp(min=0), hi + 1 -
                          torch.tensor([4, 3]))
    assert ((loc - start.unsqueeze(-2)) >= 0).all()
    assert ((loc - start.unsqueeze(-2)) < torch.tensor([4, 3])).all()


def test_sampler_bad_input() -> None:
    with pytest.raises(ValueError, match="region"):
        sample_grid_points(torch.zeros(1, 2), (3, 3), region=4)
    with pytest.raises(ValueError, match="sample counts"):
        sample_grid_points(torch.zeros(1, 2), (3, 3), local_samples=-1, region=2)
    with pytest.raises(ValueError, match="2 columns"):
        sample_grid_points(torch.zeros(1, 3), (3, 3))


# ----------------------------------------------------------------------------- weights


def naive_weights(points: Tensor, means: Tensor, sigmas: Tensor) -> Tensor:
    """Loops: per tuple, Gaussian densities of its first-seen distinct points, normalised."""
    out = torch.zeros(points.shape[:-1], dtype=torch.float64)
    for q in range(points.shape[0]):
        seen: set[tuple[int, int]] = set()
        dens = []
        for s in range(points.shape[1]):
            p = tuple(points[q, s].tolist())
            if p in seen:
                dens.append(0.0)
                continue
            seen.add(p)  # type: ignore[arg-type]
            e = sum(((p[r] - float(means[q, r])) / float(sigmas[q, r])) ** 2 for r in range(2))
            dens.append(float(torch.exp(torch.tensor(-0.5 * e, dtype=torch.float64))))
        z = sum(dens)
        out[q] = torch.tensor(dens, dtype=torch.float64) / z
    return out


@settings(max_examples=25, deadline=None)
@given(q=st.integers(1, 6), s=st.integers(1, 9), seed=st.integers(0, 1000))
def test_weights_match_naive(q: int, s: int, seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    pts = torch.randint(0, 4, (q, s, 2), generator=g)  # small range: many duplicates
    mu = torch.rand(q, 2, generator=g, dtype=torch.float64) * 3
    sig = torch.rand(q, 2, generator=g, dtype=torch.float64) + 0.3
    got = glimpse_point_weights(pts, mu, sig)
    torch.testing.assert_close(got, naive_weights(pts, mu, sig))
    torch.testing.assert_close(got.sum(-1), torch.ones(q, dtype=torch.float64))


def test_weights_gradcheck() -> None:
    g = torch.Generator().manual_seed(0)
    pts = torch.randint(0, 5, (2, 3, 6, 2), generator=g)
    pts[0, 0, 1] = pts[0, 0, 0]  # a duplicate
    mu = (torch.rand(2, 3, 2, generator=g, dtype=torch.float64) * 4).requires_grad_()
    sig = (torch.rand(2, 3, 2, generator=g, dtype=torch.float64) + 0.5).requires_grad_()
    assert torch.autograd.gradcheck(lambda m, s: glimpse_point_weights(pts, m, s), (mu, sig))


def test_tiny_sigma_picks_nearest_point() -> None:
    pts = torch.tensor([[[0, 0], [1, 0], [0, 1], [1, 1], [5, 5]]])
    w = glimpse_point_weights(pts, torch.tensor([[0.8, 0.3]]), torch.full((1, 2), 1e-4))
    assert w.tolist() == [[0.0, 1.0, 0.0, 0.0, 0.0]]


# ----------------------------------------------------------------------------- gather


def dense_gather(x: Tensor, pts: Tensor, w: Tensor) -> Tensor:
    b, c, h, wd = x.shape
    _, g, q, s, _ = pts.shape
    out = torch.zeros(b, g, c, q, dtype=x.dtype)
    for bi in range(b):
        dense = torch.zeros(g * q, h * wd, dtype=x.dtype)  # the weight matrix of instance bi
        rows = torch.arange(g * q).repeat_interleave(s)
        cols = (pts[bi, ..., 0] * wd + pts[bi, ..., 1]).reshape(-1)
        dense.index_put_((rows, cols), w[bi].reshape(-1), accumulate=True)
        out[bi] = (x[bi].reshape(c, h * wd) @ dense.T).view(c, g, q).transpose(0, 1)
    return out


def test_gather_matches_dense_and_gradcheck() -> None:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 3, 5, 4, dtype=torch.float64, generator=g).requires_grad_()
    pts = torch.stack([torch.randint(0, 5, (2, 2, 3, 4), generator=g),
                       torch.randint(0, 4, (2, 2, 3, 4), generator=g)], -1)
    w = torch.rand(2, 2, 3, 4, dtype=torch.float64, generator=g).requires_grad_()
    torch.testing.assert_close(gather_glimpse(x, pts, w), dense_gather(x, pts, w))
    assert torch.autograd.gradcheck(lambda a, b: gather_glimpse(a, pts, b), (x, w))
    xt = x.detach().transpose(2, 3).contiguous().transpose(2, 3)  # non-contiguous input
    torch.testing.assert_close(gather_glimpse(xt, pts, w), gather_glimpse(x, pts, w))


# ----------------------------------------------------------------------------- nn.Glimpse


def random_raw(b: int, g: int, seed: int = 0) -> Tensor:
    return torch.randn(b, 4 * g, generator=torch.Generator().manual_seed(seed)) * 1.5


@pytest.mark.parametrize("size,glimpses", [(5, 1), ((4, 7), 3), (1, 2)])
def test_eval_equals_grid_sample_nearest(size: int | tuple[int, int], glimpses: int) -> None:
    x = torch.rand(4, 2, 23, 31)
    layer = layer_with_boxes(random_raw(4, glimpses), (2, 23, 31), size, glimpses,
                             min_sigma=0.0)
    layer.eval()
    y, boxes = layer.forward_with_boxes(x)
    ks = (size, size) if isinstance(size, int) else size
    ref = sample_boxes(x, boxes, ks, mode="nearest")
    assert y.shape == (4, glimpses, 2, *ks)
    torch.testing.assert_close(y, ref)
    # in training, a tiny sigma gives the same reading
    with torch.no_grad():
        layer.raw_sigmas.fill_(-40.0)
    layer.train()
    torch.testing.assert_close(layer(x), ref)


def test_read_given_boxes_is_the_eval_reading() -> None:
    x = torch.rand(4, 2, 23, 31)
    layer = layer_with_boxes(random_raw(4, 3), (2, 23, 31), (4, 7), 3).eval()
    y, boxes = layer.forward_with_boxes(x)
    layer.train()  # read() reads the nearest pixel in training too
    torch.testing.assert_close(layer.read(x, boxes), y)
    torch.testing.assert_close(layer.read(x, boxes),
                               sample_boxes(x, boxes, (4, 7), mode="nearest"))
    with pytest.raises(ValueError, match="boxes must be"):
        layer.read(x, boxes[:, :2])


@settings(max_examples=30, deadline=None)
@given(h=st.integers(2, 60), w=st.integers(2, 60), shift=st.floats(0, 30),
       seed=st.integers(0, 1000))
def test_jitter_boxes_slide_inside_the_image(h: int, w: int, shift: float, seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    boxes = glimpse_boxes(torch.randn(16, 2, 4, generator=g, dtype=torch.float64), (h, w))
    out = jitter_boxes(boxes, shift, (h, w), generator=g)
    assert out.shape == boxes.shape
    torch.testing.assert_close(out[..., 2:] - out[..., :2], boxes[..., 2:] - boxes[..., :2])
    d = out[..., :2] - boxes[..., :2]
    assert bool((d.abs() <= shift + 1e-9).all())
    assert bool((out[..., :2] >= -1e-9).all())
    assert bool((out[..., 2] <= h - 1 + 1e-9).all()) and bool((out[..., 3] <= w - 1 + 1e-9).all())


def test_jitter_boxes_moves_both_ways_and_zero_is_identity() -> None:
    boxes = torch.tensor([[[40.0, 40.0, 59.0, 59.0]]]).expand(500, 1, 4)
    out = jitter_boxes(boxes, 5.0, (100, 100), generator=torch.Generator().manual_seed(0))
    d = out[:, 0, :2] - boxes[:, 0, :2]  # (500, 2)
    assert float(d.min()) < -4 and float(d.max()) > 4  # uniform over [-5, 5] per axis
    assert not torch.equal(d[:, 0], d[:, 1])  # independent axes
    assert jitter_boxes(boxes, 0.0, (100, 100)) is boxes
    with pytest.raises(ValueError, match="shift"):
        jitter_boxes(boxes, -1.0, (100, 100))
    with pytest.raises(ValueError, match="boxes"):
        jitter_boxes(boxes[0], 1.0, (100, 100))


def test_stn_reference_bilinear_is_interpolation() -> None:
    x = torch.arange(20.0).view(1, 1, 4, 5)
    out = sample_boxes(x, torch.tensor([[[0.5, 0.5, 2.5, 3.5]]]), (3, 4))
    assert out[0, 0, 0, 0, 0] == pytest.approx(3.0)  # between 0, 1, 5, 6


def test_fast_weights_equal_core_point_weights() -> None:
    torch.manual_seed(0)
    layer = layer_with_boxes(random_raw(2, 2), (2, 9, 11), (3, 2), 2, global_samples=3,
                             local_samples=4, region=3)
    x = torch.rand(2, 2, 9, 11)
    conn = layer.connections(x, generator=torch.Generator().manual_seed(3), sample=True)
    means, sigmas, values = layer.tuples(x)
    assert means.shape == (2, layer.k, 7) and sigmas.shape == (2, layer.k, 2)
    for b in range(2):
        pts = conn.indices[conn.batch == b]
        keep = first_occurrence(linear_index(pts, layer.sizes))
        ref = point_weights(pts, keep, means[b], sigmas[b], values[b], [5, 6], method="exact")
        torch.testing.assert_close(conn.weights[conn.batch == b], ref)


def test_forward_equals_core_contraction() -> None:
    layer = layer_with_boxes(random_raw(3, 2), (2, 12, 10), 4, 2)
    x = torch.rand(3, 2, 12, 10)
    layer.generator = torch.Generator().manual_seed(7)
    y = layer(x)
    conn = layer.connections(x, generator=torch.Generator().manual_seed(7))
    ref = HyperLayer.apply_connections(layer, x, conn).view_as(y)
    torch.testing.assert_close(y, ref)
    layer.eval()
    ref_eval = HyperLayer.apply_connections(layer, x, layer.connections(x)).view_as(y)
    torch.testing.assert_close(layer(x), ref_eval)
    dense = layer.to_sparse(x).to_dense()  # (B, G, C, k, k, C, H, W)
    torch.testing.assert_close(torch.einsum("bgcijdhw,bdhw->bgcij", dense, x), layer(x))


def test_gradients_reach_source_and_sigma() -> None:
    layer = Glimpse((1, 40, 40), 8, 2, downsample=2)
    x = torch.rand(5, 1, 40, 40)
    (layer(x) * torch.randn(5, 2, 1, 8, 8)).sum().backward()
    last = layer.source[-1]
    assert float(last.bias.grad.abs().sum()) > 0  # type: ignore[union-attr]
    assert float(layer.raw_sigmas.grad.abs().sum()) > 0  # type: ignore[union-attr]


@settings(max_examples=25, deadline=None)
@given(c=st.integers(1, 3), h=st.integers(12, 40), w=st.integers(12, 40), k=st.integers(1, 6),
       g=st.integers(1, 3), b=st.integers(0, 3), training=st.booleans())
def test_shapes(c: int, h: int, w: int, k: int, g: int, b: int, training: bool) -> None:
    layer = Glimpse((c, h, w), k, g, downsample=3, channels=(4,), hidden=8)
    layer.train(training)
    y, boxes = layer.forward_with_boxes(torch.rand(b, c, h, w))
    assert y.shape == (b, g, c, k, k) and boxes.shape == (b, g, 4)
    assert torch.isfinite(y).all()
    assert (boxes[..., :2] >= 0).all() and (boxes[..., 2] <= h - 1).all()
    assert (boxes[..., 3] <= w - 1).all()


def test_initial_box_and_pixels_read() -> None:
    layer = Glimpse((1, 40, 40), 10, 1, downsample=4, init_extent=0.5)
    layer.eval()
    x = torch.rand(2, 1, 40, 40)
    box = layer.boxes(x)[0, 0]
    torch.testing.assert_close(box, torch.tensor([9.75, 9.75, 29.25, 29.25]))
    frac = layer.pixels_read(x, include_source=False)
    assert torch.equal(frac, torch.full((2,), 100 / 1600))
    both = layer.pixels_read(x)
    assert bool((both > frac).all()) and bool((both <= frac + 100 / 1600).all())
    custom = layer_with_boxes(random_raw(2, 1), (1, 40, 40), 10, 1).eval()
    assert torch.equal(custom.pixels_read(x), torch.ones(2))  # unknown source: counts all


def test_state_dict_round_trip() -> None:
    a = Glimpse((1, 30, 30), 6, 2, downsample=3, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        a.raw_sigmas.fill_(0.7)
    buf = io.BytesIO()
    torch.save(a.state_dict(), buf)
    b = Glimpse((1, 30, 30), 6, 2, downsample=3, generator=torch.Generator().manual_seed(9))
    b.load_state_dict(torch.load(io.BytesIO(buf.getvalue())))
    x = torch.rand(3, 1, 30, 30)
    a.eval(), b.eval()
    torch.testing.assert_close(a(x), b(x))
    a.train(), b.train()
    a.generator, b.generator = (torch.Generator().manual_seed(1),
                                torch.Generator().manual_seed(1))
    torch.testing.assert_close(a(x), b(x))


def test_subsample() -> None:
    x = torch.arange(25.0).view(1, 1, 5, 5)
    assert Subsample(2)(x).flatten().tolist() == [0.0, 2.0, 4.0, 10.0, 12.0, 14.0, 20.0, 22.0,
                                                  24.0]
    with pytest.raises(ValueError, match="factor"):
        Subsample(0)
    assert Subsample(2, offset=1)(x).flatten().tolist() == [6.0, 8.0, 16.0, 18.0]
    assert Subsample(3, offset=1)(torch.zeros(100, 100)).shape == (33, 33)
    for bad in (-1, 2, 1.0):
        with pytest.raises(ValueError, match="offset"):
            Subsample(2, offset=bad)  # type: ignore[arg-type]


@pytest.mark.parametrize("kind", ["dense", "spatial"])
def test_source_offset_grid_is_what_pixels_read_counts(kind: str) -> None:
    """With Subsample(f, o) the source sees (and pixels_read counts) exactly rows and columns
    o, o + f, ...; the spatial heat map places cell (i, j) at (o + i f, o + j f)."""
    layer = Glimpse((1, 31, 31), 4, 1, downsample=3, offset=1, kind=kind,
                    extent=(0.3, 0.5), init_extent=0.4).eval()
    x = torch.zeros(1, 1, 31, 31)
    grid = layer.pixels_read(x) * 961 - layer.pixels_read(x, include_source=False) * 961
    assert 100 - 16 <= float(grid) <= 100  # 10 x 10 grid, less what the glimpse also reads
    # the source is blind to pixels off its grid: moving one leaves the boxes unchanged
    y = x.clone()
    y[0, 0, 0, 0] = y[0, 0, 2, 3] = 1.0
    torch.testing.assert_close(layer.boxes(y), layer.boxes(x))
    if kind == "spatial":
        head = layer.source[-1]
        assert head.offset == 1.0 and head.stride == 3
    with pytest.raises(ValueError, match="offset"):
        Glimpse((1, 31, 31), 4, 1, downsample=3, offset=1, pool="avg")


def test_bad_input_raises() -> None:
    with pytest.raises(ValueError, match="in_shape"):
        Glimpse((30, 30), 4)
    with pytest.raises(ValueError, match="size"):
        Glimpse((1, 30, 30), 0)
    with pytest.raises(ValueError, match="glimpses"):
        Glimpse((1, 30, 30), 4, 0)
    with pytest.raises(ValueError, match="init_extent"):
        Glimpse((1, 30, 30), 4, init_extent=1.0)
    with pytest.raises(ValueError, match="too small"):
        Glimpse((1, 12, 12), 4, downsample=8)
    with pytest.raises(TypeError, match="source_kwargs"):
        Glimpse((1, 30, 30), 4, source=nn.Identity(), downsample=2)
    layer = Glimpse((1, 30, 30), 4, downsample=3)
    with pytest.raises(ValueError, match="input must have shape"):
        layer(torch.rand(2, 1, 30, 31))
    with pytest.raises(TypeError, match="Tensor"):
        layer([1.0])  # type: ignore[arg-type]
    bad = Glimpse((1, 30, 30), 4, source=nn.Flatten())
    with pytest.raises(ValueError, match="raw boxes"):
        bad(torch.rand(2, 1, 30, 30))
    with pytest.raises(ValueError, match="4 numbers"):
        glimpse_boxes(torch.zeros(3), (4, 4))
    with pytest.raises(ValueError, match="points"):
        gather_glimpse(torch.zeros(1, 1, 3, 3), torch.zeros(1, 1, 1, 2, dtype=torch.long))


def test_matches_stn_reading_when_sigma_is_tiny_and_box_on_pixels() -> None:
    # a box whose grid falls exactly on pixel centres: nearest, bilinear and the hyperlayer agree
    x = torch.rand(1, 1, 21, 21)
    layer = layer_with_boxes(torch.zeros(1, 4), (1, 21, 21), 11, 1)  # box [5, 15]^2, step 1
    layer.eval()
    y, boxes = layer.forward_with_boxes(x)
    torch.testing.assert_close(boxes, torch.tensor([[[5.0, 5.0, 15.0, 15.0]]]))
    torch.testing.assert_close(y[0, 0, 0], x[0, 0, 5:16, 5:16])
    torch.testing.assert_close(sample_boxes(x, boxes, (11, 11)), y)
    torch.testing.assert_close(F.grid_sample(x, torch.zeros(1, 1, 1, 2), align_corners=True),
                               x[:, :, 10:11, 10:11])
