"""Glimpse attention: an adaptive sparse hyperlayer that learns where to look (seed 000).

:class:`Glimpse` is a :class:`~hypersparse.nn.HyperLayer` over ``in_shape = (C, H, W)`` with
``out_shape = (G, C, kh, kw)``. A template fixes the output coordinates (glimpse, channel, grid
row, grid column) and the input channel; only the input (row, col) are learned. A small source
network looks at a subsampled image and emits one box per glimpse; the ``kh x kw`` means are laid
evenly inside it (:func:`~hypersparse.functional.box_grid`), with one learned sigma per glimpse.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any, Literal

import torch
from torch import Tensor, nn

from ..functional.glimpse import (
    box_grid,
    gather_glimpse,
    glimpse_boxes,
    glimpse_point_weights,
    heatmap_candidates,
    sample_grid_points,
)
from ..functional.hyper import bound_sigmas
from .hyper import Connections, HyperLayer

__all__ = ["BoundExtent", "Glimpse", "SoftArgmaxBoxes", "Subsample", "box_source"]


class Subsample(nn.Module):
    """Keep every ``factor``-th row and column, starting at ``offset``:
    ``x[..., offset::factor, offset::factor]``.

    Unlike average pooling this reads only about ``1 / factor^2`` of the pixels.

    Shape:
        input: (*, H, W); output: (*, ceil((H - offset) / factor), ceil((W - offset) / factor)).

    Example:
        >>> Subsample(3, offset=1)(torch.zeros(1, 100, 100)).shape
        torch.Size([1, 33, 33])
    """

    def __init__(self, factor: int, offset: int = 0) -> None:
        super().__init__()
        if not isinstance(factor, int) or isinstance(factor, bool) or factor < 1:
            raise ValueError(f"factor must be an int >= 1, got {factor!r}")
        if not isinstance(offset, int) or isinstance(offset, bool) or not 0 <= offset < factor:
            raise ValueError(f"offset must be an int in [0, factor = {factor}), got {offset!r}")
        self.factor, self.offset = factor, offset

    def forward(self, x: Tensor) -> Tensor:
        if x.shape[-1] <= self.offset or x.shape[-2] <= self.offset:
            raise ValueError(f"input {tuple(x.shape)} is too small for offset={self.offset}")
        return x[..., self.offset :: self.factor, self.offset :: self.factor]

    def extra_repr(self) -> str:
        return f"factor={self.factor}, offset={self.offset}"


def _check_extent(extent: Sequence[float], init_extent: float) -> tuple[float, float]:
    ext = tuple(float(e) for e in extent)
    if len(ext) != 2 or not 0 <= ext[0] <= ext[1] <= 1 or ext[1] == 0 or ext[0] == 1:
        raise ValueError(f"extent must be (lo, hi) with 0 <= lo <= hi <= 1, hi > 0, lo < 1; "
                         f"got {tuple(extent)}")
    if not 0 < init_extent < 1 or not ext[0] <= init_extent <= ext[1]:
        raise ValueError(f"init_extent must be in (0, 1) and in extent {ext}, got {init_extent}")
    return ext[0], ext[1]


def _logit(p: float) -> float:
    return math.log(p / (1 - p))


class BoundExtent(nn.Module):
    """Keep the extents of raw boxes within ``[lo, hi]`` of the image.

    Maps raw ``(cy, cx, sh, sw)`` (as read by :func:`~hypersparse.functional.glimpse_boxes`,
    whose extent is ``sigmoid(sh) (H - 1)``) to ``(cy, cx, logit(lo + (hi - lo) sigmoid(sh)),
    ...)``, so the extent fraction is ``lo + (hi - lo) sigmoid(sh)`` (kept in ``[1e-6, 1 - 1e-6]``
    so that its logit is finite); ``lo == hi`` fixes it.

    Shape:
        input: (B, 4 G); output: (B, 4 G).

    Example:
        >>> BoundExtent(0.25, 0.25)(torch.zeros(1, 4)).sigmoid()[0, 2:].tolist()
        [0.25, 0.25]
    """

    def __init__(self, lo: float, hi: float) -> None:
        super().__init__()
        _check_extent((lo, hi), (lo + hi) / 2 if 0 < lo + hi < 2 else 0.5)
        self.lo, self.hi = float(lo), float(hi)

    def forward(self, raw: Tensor) -> Tensor:
        if raw.dim() != 2 or raw.shape[1] % 4:
            raise ValueError(f"raw boxes must be (B, 4 G), got {tuple(raw.shape)}")
        b = raw.shape[0]
        r = raw.reshape(b, raw.shape[1] // 4, 4)  # (B, G, 4)
        frac = self.lo + (self.hi - self.lo) * torch.sigmoid(r[..., 2:])  # (B, G, 2)
        frac = frac.clamp(1e-6, 1 - 1e-6)
        return torch.cat([r[..., :2], torch.logit(frac)], -1).reshape(raw.shape)  # (B, 4G)

    def extra_repr(self) -> str:
        return f"lo={self.lo}, hi={self.hi}"


class SoftArgmaxBoxes(nn.Module):
    """Boxes from feature maps: a heat map per glimpse, its soft-argmax as the box centre.

    A 1x1 convolution turns (B, C, h, w) features into G heat maps; the softmax-weighted mean
    position of each (in image index coordinates, cell ``(i, j)`` at ``(offset + i stride,
    offset + j stride)``) is the box centre. The extent fraction is ``lo + (hi - lo)
    sigmoid(z)``, ``z`` a linear function of the features' spatial mean and max (starting at
    ``init_extent``). The output is raw ``(cy, cx, sh, sw)`` for
    :func:`~hypersparse.functional.glimpse_boxes` with that centre and extent; a centre too close
    to the border for the box is clamped (the box touches the border) with a straight-through
    gradient. Unlike a flatten + linear regressor this is translation-equivariant: a detector
    that fires on the digit anywhere puts the box on it.

    Args:
        channels: C of the features.
        glimpses: G.
        image: (H, W) of the image the boxes index.
        stride, offset: where feature cell (i, j) lies in the image.
        extent: (lo, hi) bounds of the extent fraction; init_extent: its initial value.

    Shape:
        input: (B, C, h, w); output: (B, 4 G).

    Example:
        >>> head = SoftArgmaxBoxes(3, 1, (11, 11), stride=2, extent=(0.4, 0.4), init_extent=0.4)
        >>> glimpse_boxes(head(torch.zeros(1, 3, 6, 6)).view(1, 1, 4), (11, 11)).tolist()
        [[[3.0, 3.0, 7.0, 7.0]]]
    """

    def __init__(self, channels: int, glimpses: int, image: Sequence[int], *, stride: int = 1,
                 offset: float = 0.0, extent: Sequence[float] = (0.0, 1.0),
                 init_extent: float = 0.5, device: torch.device | str | None = None,
                 dtype: torch.dtype | None = None) -> None:
        super().__init__()
        factory: dict[str, Any] = {"device": device, "dtype": dtype}
        for name, v in (("channels", channels), ("glimpses", glimpses), ("stride", stride)):
            if not isinstance(v, int) or isinstance(v, bool) or v < 1:
                raise ValueError(f"{name} must be an int >= 1, got {v!r}")
        if len(image) != 2 or any(int(s) < 1 for s in image):
            raise ValueError(f"image must be (height, width) with sizes >= 1, got {image}")
        self.lo, self.hi = _check_extent(extent, init_extent)
        h, w = (int(s) for s in image)
        self.image, self.stride, self.offset, self.glimpses = (h, w), stride, offset, glimpses
        self.heat = nn.Conv2d(channels, glimpses, 1, **factory)
        self.extent = nn.Linear(2 * channels, 2 * glimpses, **factory)
        with torch.no_grad():
            self.extent.weight.zero_()
            width = self.hi - self.lo
            u = 0.5 if width == 0 else min(max((init_extent - self.lo) / width, 1e-3), 1 - 1e-3)
            self.extent.bias.fill_(_logit(u))

    def centres(self, f: Tensor) -> Tensor:
        """Soft-argmax positions (B, G, 2) as (row, col) in image index coordinates."""
        b, _, h, w = f.shape
        p = torch.softmax(self.heat(f).flatten(2), -1).view(b, self.glimpses, h, w)  # (B,G,h,w)
        rows = self.offset + self.stride * torch.arange(h, dtype=f.dtype, device=f.device)
        cols = self.offset + self.stride * torch.arange(w, dtype=f.dtype, device=f.device)
        return torch.stack([(p.sum(-1) * rows).sum(-1), (p.sum(-2) * cols).sum(-1)], -1)

    def _frac(self, f: Tensor) -> Tensor:
        """Extent fractions (B, G, 2) from the pooled features."""
        b = f.shape[0]
        pooled = torch.cat([f.mean((2, 3)), f.amax((2, 3))], 1)  # (B, 2C)
        z = self.extent(pooled).view(b, self.glimpses, 2)  # (B, G, 2)
        return (self.lo + (self.hi - self.lo) * torch.sigmoid(z)).clamp(1e-4, 1 - 1e-4)

    def _raw(self, centres: Tensor, frac: Tensor) -> Tensor:
        """Raw ``(cy, cx, sh, sw)`` (..., 4) of boxes with these centres (..., 2) (image index
        coordinates) and extent fractions (..., 2), clamped at the border (straight-through)."""
        span = torch.tensor([self.image[0] - 1, self.image[1] - 1], dtype=frac.dtype,
                            device=frac.device)
        ext = frac * span  # (..., 2)
        free = (span - ext).clamp(min=1e-6)
        u = (centres - ext / 2) / free  # (..., 2): corner fraction of the free range
        u = u + (u.clamp(1e-4, 1 - 1e-4) - u).detach()  # straight-through clamp
        return torch.cat([torch.logit(u), torch.logit(frac)], -1)

    def forward(self, f: Tensor) -> Tensor:
        b = f.shape[0]
        return self._raw(self.centres(f), self._frac(f)).reshape(b, 4 * self.glimpses)

    def candidates(self, f: Tensor, count: int, radius: int = 1) -> tuple[Tensor, Tensor]:
        """``count`` candidate boxes per glimpse: the separated peaks of its heat map, each
        centred at the local soft-argmax of its window (:func:`~hypersparse.functional.
        heatmap_candidates`), with the extent of :meth:`forward`; and their scores (the peak
        logits), best first (the first is the heat map's arg-max cell for every ``count``).

        Shape:
            f: (B, C, h, w); output: raw boxes (B, G, count, 4), scores (B, G, count).
        """
        raw, score, _ = self.peaks(f, count, radius)
        return raw, score

    def peaks(self, f: Tensor, count: int, radius: int = 1) -> tuple[Tensor, Tensor, Tensor]:
        """:meth:`candidates` plus the peaks' refined positions in heat-map cells
        (B, G, count, 2)."""
        pos, score = heatmap_candidates(self.heat(f), count, radius)  # (B,G,N,2), (B,G,N)
        centres = self.offset + self.stride * pos  # (B, G, N, 2)
        frac = self._frac(f).unsqueeze(2).expand_as(centres)  # (B, G, N, 2)
        return self._raw(centres, frac), score, pos

    def extra_repr(self) -> str:
        return (f"glimpses={self.glimpses}, image={self.image}, stride={self.stride}, "
                f"offset={self.offset}, extent=({self.lo}, {self.hi})")


def box_source(
    in_shape: Sequence[int],
    glimpses: int = 1,
    *,
    downsample: int = 4,
    offset: int = 0,
    pool: Literal["stride", "avg"] = "stride",
    channels: Sequence[int] = (16, 32),
    hidden: int = 64,
    init_extent: float = 0.9,
    extent: Sequence[float] = (0.0, 1.0),
    kind: Literal["dense", "spatial"] = "dense",
    generator: torch.Generator | None = None,
    device: torch.device | str | None = None,
    dtype: torch.dtype | None = None,
) -> nn.Sequential:
    """The default hypernetwork of :class:`Glimpse`: image -> raw boxes ``(cy, cx, sh, sw)``.

    ``kind="dense"``: ``Subsample(downsample, offset)`` (or ``AvgPool2d``) -> [Conv5x5 -> ReLU ->
    MaxPool2] per entry of ``channels`` -> Linear(hidden) -> ReLU -> Linear(4 * glimpses)
    (-> :class:`BoundExtent` unless ``extent == (0, 1)``). The last layer starts with zero
    weights and a bias giving boxes of ``init_extent`` times the image, centred for one glimpse,
    at random positions (torch RNG, ``generator``) for several.

    ``kind="spatial"``: the same subsampling -> [Conv5x5 -> ReLU] per entry of ``channels`` (no
    pooling) -> :class:`SoftArgmaxBoxes` (a heat map per glimpse; its soft-argmax is the box
    centre; the extent from pooled features, within ``extent``).

    Args:
        downsample: the source reads every ``downsample``-th row and column (``pool="stride"``)
            from ``offset`` on, or averages ``downsample x downsample`` blocks (``"avg"``,
            ``offset`` must be 0).
        extent: (lo, hi): the box extent, as a fraction of the image, stays in this range.

    Shape:
        input: (B, C, H, W); output: (B, 4 * glimpses).
    """
    c, h, w = (int(s) for s in in_shape)
    lo, hi = _check_extent(extent, init_extent)
    if pool not in ("stride", "avg"):
        raise ValueError(f"pool must be 'stride' or 'avg', got {pool!r}")
    if kind not in ("dense", "spatial"):
        raise ValueError(f"kind must be 'dense' or 'spatial', got {kind!r}")
    factory: dict[str, Any] = {"device": device, "dtype": dtype}
    if pool == "avg" and offset != 0:
        raise ValueError(f"offset needs pool='stride', got offset={offset!r} with pool='avg'")
    layers: list[nn.Module] = [
        Subsample(downsample, offset) if pool == "stride"
        else nn.AvgPool2d(downsample, ceil_mode=True)
    ]
    if kind == "spatial":
        for ch in channels:
            layers += [nn.Conv2d(c, ch, 5, padding=2, **factory), nn.ReLU()]
            c = ch
        at = float(offset) if pool == "stride" else (downsample - 1) / 2
        layers.append(SoftArgmaxBoxes(c, glimpses, (h, w), stride=downsample, offset=at,
                                      extent=(lo, hi), init_extent=init_extent, **factory))
        return nn.Sequential(*layers)
    h, w = math.ceil((h - offset) / downsample), math.ceil((w - offset) / downsample)
    for ch in channels:
        layers += [nn.Conv2d(c, ch, 5, padding=2, **factory), nn.ReLU(), nn.MaxPool2d(2)]
        c, h, w = ch, h // 2, w // 2
    if h < 1 or w < 1:
        raise ValueError(f"in_shape {tuple(in_shape)} is too small for downsample={downsample} "
                         f"and {len(channels)} pooling stages")
    last = nn.Linear(hidden, 4 * glimpses, **factory)
    bounded = (lo, hi) != (0.0, 1.0)
    width = hi - lo
    u = 0.5 if width == 0 else min(max((init_extent - lo) / width, 1e-3), 1 - 1e-3)
    with torch.no_grad():
        last.weight.zero_()
        bias = last.bias.view(glimpses, 4)  # (G, 4)
        bias[:, 2:] = _logit(u) if bounded else _logit(init_extent)
        if glimpses > 1:
            g = torch.rand(glimpses, 2, generator=generator, dtype=torch.float64)
            bias[:, :2] = torch.logit(g.clamp(0.1, 0.9)).to(bias.dtype)
        else:
            bias[:, :2] = 0.0
    layers += [nn.Flatten(), nn.Linear(c * h * w, hidden, **factory), nn.ReLU(), last]
    if bounded:
        layers.append(BoundExtent(lo, hi))
    return nn.Sequential(*layers)


class Glimpse(HyperLayer):
    """``G`` learned ``kh x kw`` glimpses of an image: a templated adaptive hyperlayer.

    Tuple ``(g, c, i, j, c, row, col)`` connects input pixel (c, row, col) to output
    (g, c, i, j); the first five columns are fixed by the template, (row, col) is the
    ``(i, j)``-th point of a ``kh x kw`` grid laid evenly inside glimpse ``g``'s box, which the
    ``source`` network predicts from the input. Values are fixed to 1; there is one learned
    sigma per glimpse (``bound_sigmas`` of the core, relative to H and W).

    Training samples, per grid point, its 4 floor/ceil corners plus ``global_samples`` and
    ``local_samples`` random points (shared by the channels) and normalises each tuple over its
    own distinct points, exactly the core's semantics for tuples with distinct template columns
    (see :mod:`hypersparse.functional.glimpse`); the product is a gather, O(B * K * S). Eval
    reads the pixel nearest to each mean (``round(mu)``, weight 1), i.e.
    ``grid_sample(mode="nearest", align_corners=True)`` over the box.

    Args:
        in_shape: ``(C, H, W)``.
        size: the glimpse side ``k`` or ``(kh, kw)``.
        glimpses: G.
        source: maps (B, C, H, W) to (B, 4 * G) raw boxes ``(cy, cx, sh, sw)`` (see
            :func:`~hypersparse.functional.glimpse_boxes`); default :func:`box_source` with
            ``source_kwargs``.
        global_samples, local_samples, region, sigma_scale, min_sigma: as for
            :class:`~hypersparse.nn.HyperLayer`.
        candidates: None (default): each glimpse's box is the source's output (for the
            spatial source, the soft-argmax of the whole heat map). An int ``N >= 1`` needs a
            source ending in :class:`SoftArgmaxBoxes` and selects *candidate mode*: the box is
            the top-scoring of ``N`` separated heat-map peaks, each centred at the soft-argmax
            of its ``(2 candidate_radius + 1)^2``-cell window (:meth:`candidate_boxes`);
            :meth:`forward_candidates` reads all ``N`` (multi-hypothesis training), while
            :meth:`forward` and :meth:`boxes` use the top one only. May be reassigned (e.g.
            annealed) between steps.
        candidate_radius: suppression and refinement radius of the candidates, in heat-map
            cells.
        candidate_pool: None (default), or an int ``M``: in training, hypotheses ``2..N``
            are drawn at random (uniformly, without replacement, per glimpse) from peaks
            ``2..M`` rather than being peaks ``2..N``, so a digit ranked below the ``N``-th peak
            still gets compared with the top one (exploration at the cost of ``N``
            hypotheses). The first hypothesis is always the top peak; eval is unchanged.
        generator: RNG for sampling, for the candidate draws and for the default source's
            initial boxes.
        device, dtype: of the parameters and buffers.

    Shape:
        input: (B, C, H, W); output: (B, G, C, kh, kw).

    Example:
        >>> layer = Glimpse((1, 60, 60), 12, glimpses=2)
        >>> layer(torch.rand(3, 1, 60, 60)).shape
        torch.Size([3, 2, 1, 12, 12])
    """

    def __init__(
        self,
        in_shape: Sequence[int],
        size: int | Sequence[int],
        glimpses: int = 1,
        *,
        source: nn.Module | None = None,
        global_samples: int = 2,
        local_samples: int = 4,
        region: int | Sequence[int] | None = None,
        sigma_scale: float = 0.01,
        min_sigma: float = 0.05,
        candidates: int | None = None,
        candidate_radius: int = 3,
        candidate_pool: int | None = None,
        generator: torch.Generator | None = None,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
        **source_kwargs: Any,
    ) -> None:
        shape = tuple(in_shape) if not isinstance(in_shape, int) else (in_shape,)
        if len(shape) != 3 or any(not isinstance(s, int) or s < 1 for s in shape):
            raise ValueError(f"in_shape must be (C, H, W) of positive ints, got {in_shape}")
        ks = (size, size) if isinstance(size, int) else tuple(size)
        if len(ks) != 2 or any(not isinstance(s, int) or isinstance(s, bool) or s < 1
                               for s in ks):
            raise ValueError(f"size must be an int >= 1 or (kh, kw), got {size!r}")
        if not isinstance(glimpses, int) or isinstance(glimpses, bool) or glimpses < 1:
            raise ValueError(f"glimpses must be an int >= 1, got {glimpses!r}")
        c, h, w = shape
        kh, kw = ks
        out_shape = (glimpses, c, kh, kw)
        grid = torch.stack(torch.meshgrid(*(torch.arange(s) for s in out_shape), indexing="ij"),
                           -1).reshape(-1, 4)  # (K, 4): g, c, i, j
        template = torch.cat([grid, grid[:, 1:2], torch.zeros(grid.shape[0], 2, dtype=torch.long)],
                             dim=1).double()  # (K, 7)
        super().__init__(
            shape, out_shape, grid.shape[0], global_samples=global_samples,
            local_samples=local_samples, region=region, sigma_scale=sigma_scale,
            min_sigma=min_sigma, learn_values=False, template=template, learn_cols=(5, 6),
            normalisation="exact", device=device, dtype=dtype,
        )
        self.size, self.glimpses = (kh, kw), glimpses
        self.generator = generator
        factory: dict[str, Any] = {"device": device, "dtype": dtype}
        if source is None:
            source = box_source(shape, glimpses, generator=generator, **factory, **source_kwargs)
        elif source_kwargs:
            raise TypeError(f"source_kwargs {sorted(source_kwargs)} need the default source")
        self.source = source
        self.raw_sigmas = nn.Parameter(torch.zeros(glimpses, **factory))
        if not isinstance(candidate_radius, int) or isinstance(candidate_radius, bool) or \
                candidate_radius < 0:
            raise ValueError(f"candidate_radius must be an int >= 0, got {candidate_radius!r}")
        self.candidate_radius = candidate_radius
        if candidate_pool is not None and (not isinstance(candidate_pool, int) or
                                           isinstance(candidate_pool, bool) or
                                           candidate_pool < 1):
            raise ValueError(f"candidate_pool must be None or an int >= 1, got "
                             f"{candidate_pool!r}")
        self.candidate_pool = candidate_pool
        self.candidates = candidates
        self._candidate_count()  # validates

    # ------------------------------------------------------------------ the hypernetwork
    def boxes(self, x: Tensor) -> Tensor:
        """Glimpse boxes ``(top, left, bottom, right)`` in index coordinates, inside the image.

        Shape: x (B, C, H, W); output (B, G, 4).
        """
        if self.candidates is not None:
            return self.candidate_boxes(x, explore=False)[0][:, 0]  # (B, G, 4): the top one
        raw = self.source(x)
        if raw.shape != (x.shape[0], 4 * self.glimpses):
            raise ValueError(f"source must return (B, {4 * self.glimpses}) raw boxes, got "
                             f"{tuple(raw.shape)}")
        return glimpse_boxes(raw.view(x.shape[0], self.glimpses, 4), self.in_shape[1:])  # (B,G,4)

    def _candidate_count(self) -> int | None:
        n = self.candidates
        if n is None:
            return None
        if not isinstance(n, int) or isinstance(n, bool) or n < 1:
            raise ValueError(f"candidates must be None or an int >= 1, got {n!r}")
        try:
            self._spatial()
        except ValueError as e:
            raise ValueError(f"candidates: {e}") from None
        return n

    def _spatial(self) -> tuple[nn.Sequential, SoftArgmaxBoxes]:
        if not isinstance(self.source, nn.Sequential) or \
                not isinstance(self.source[-1], SoftArgmaxBoxes):
            raise ValueError("this needs a source ending in SoftArgmaxBoxes (e.g. "
                             f"box_source(kind='spatial')), got {type(self.source).__name__}")
        body: nn.Sequential = self.source[:-1]  # type: ignore[assignment]
        return body, self.source[-1]

    def source_features(self, x: Tensor) -> Tensor:
        """The spatial source's features before its :class:`SoftArgmaxBoxes` (reusable by
        :meth:`candidate_boxes`, :meth:`heat_logits` and :meth:`peak_boxes`).

        Shape: x (B, C, H, W); output (B, C', h, w).
        """
        return self._spatial()[0](self._check(x))

    def heat_logits(self, features: Tensor) -> Tensor:
        """The heat-map logits (B, G, h, w) of the spatial source, from :meth:`source_features`."""
        return self._spatial()[1].heat(features)

    def peak_boxes(self, features: Tensor, count: int) -> tuple[Tensor, Tensor]:
        """The boxes of the ``count`` best separated heat-map peaks, best first, and the peaks'
        refined positions in heat-map cells (as :meth:`candidate_boxes` in eval, any count).

        Shape: features (B, C', h, w); output: boxes (B, count, G, 4), cells (B, G, count, 2).
        """
        raw, _, cells = self._spatial()[1].peaks(features, count, self.candidate_radius)
        return glimpse_boxes(raw.transpose(1, 2), self.in_shape[1:]), cells  # (B,N,G,4)

    def candidate_boxes(self, x: Tensor, *, features: Tensor | None = None,
                        explore: bool = True) -> tuple[Tensor, Tensor]:
        """The ``candidates`` boxes per glimpse, best first, and their log mixture weights.

        Hypothesis ``n`` takes the ``n``-th best candidate of every glimpse; its weight is the
        softmax over hypotheses of the candidates' scores (peak logits) summed over glimpses
        (for one glimpse: the heat map's softmax at the peaks, renormalised over them). The
        first hypothesis, the arg-max cells, does not depend on ``candidates``. In training
        with a ``candidate_pool`` M > N and ``explore``, hypotheses ``2..N`` are random picks
        among peaks ``2..M`` (M capped at the heat map's cells) instead.

        Shape:
            x: (B, C, H, W); features: as :meth:`source_features` (computed when None);
            output: boxes (B, N, G, 4), log weights (B, N).
        """
        n = self._candidate_count()
        if n is None:
            raise ValueError("candidate_boxes needs candidates set to an int >= 1")
        body, last = self._spatial()
        pool = self.candidate_pool
        f = body(x) if features is None else features
        m = n
        if explore and self.training and pool is not None and n > 1:
            m = max(n, min(pool, f.shape[-2] * f.shape[-1]))
        raw, score = last.candidates(f, m, self.candidate_radius)  # (B, G, M, 4)
        if m > n:
            b, g = score.shape[:2]
            u = torch.rand(b, g, m - 1, generator=self.generator, device=score.device)
            pick = u.argsort(-1)[..., : n - 1] + 1  # (B, G, N - 1): peaks 2..M, at random
            pick = torch.cat([torch.zeros_like(pick[..., :1]), pick], -1)  # (B, G, N)
            raw = raw.gather(2, pick.unsqueeze(-1).expand(b, g, n, 4))  # (B, G, N, 4)
            score = score.gather(2, pick)  # (B, G, N)
        boxes = glimpse_boxes(raw.transpose(1, 2), self.in_shape[1:])  # (B, N, G, 4)
        return boxes, torch.log_softmax(score.sum(1), -1)  # (B, N)

    def forward_candidates(self, x: Tensor, *, features: Tensor | None = None
                           ) -> tuple[Tensor, Tensor, Tensor]:
        """All candidate glimpses (sampled in training, nearest pixel in eval).

        Shape:
            x: (B, C, H, W); features: as :meth:`source_features` (computed when None);
            output: glimpses (B, N, G, C, kh, kw), boxes (B, N, G, 4), log weights (B, N).
        """
        x = self._check(x)
        boxes, logw = self.candidate_boxes(x, features=features)
        b, n = boxes.shape[:2]
        flat = boxes.reshape(b, n * self.glimpses, 4)  # (B, N G, 4)
        pts, weights = self._points(self._means(flat), self.training)
        out = gather_glimpse(x, pts, weights)  # (B, N G, C, Q)
        return out.reshape(b, n, *self.out_shape), boxes, logw

    def sigmas(self) -> Tensor:
        """Per-glimpse standard deviations over (row, col), shape (G, 2), times the
        ``sigma_gain`` buffer (see :class:`~hypersparse.nn.SigmaAnnealing`)."""
        return bound_sigmas(self.raw_sigmas, self.in_shape[1:], sigma_scale=self.sigma_scale,
                            min_sigma=self.min_sigma) * self.sigma_gain  # (G, 2)

    def hyper(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor | None]:
        raise NotImplementedError("Glimpse computes its means in index space; see tuples()")

    def tuples(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Index-space means (B, K, 7), deviations (B, K, 2) and values (B, K) (all ones)."""
        mu = self._means(self.boxes(x))  # (B, G, Q, 2)
        b, (g, c, kh, kw) = x.shape[0], self.out_shape
        mu = mu.unsqueeze(2).expand(b, g, c, kh * kw, 2).reshape(b, self.k, 2)  # (B, K, 2)
        t = self.template
        assert t is not None
        full = t.to(mu.dtype).expand(b, self.k, 7)
        means = torch.cat([full[..., :5], mu], dim=-1)  # (B, K, 7)
        sig = self.sigmas().unsqueeze(1).expand(g, c * kh * kw, 2).reshape(self.k, 2)  # (K, 2)
        return means, sig.expand(b, self.k, 2), self.fixed_values.expand(b, self.k)

    def _means(self, boxes: Tensor) -> Tensor:
        return box_grid(boxes, self.size)  # (B, G, Q, 2)

    # ------------------------------------------------------------------ reading
    def _points(self, means: Tensor, sample: bool) -> tuple[Tensor, Tensor | None]:
        """Integer points (B, G, Q, S, 2) and their weights (B, G, Q, S) (None in eval)."""
        h, w = self.in_shape[1:]
        if not sample:
            hi = torch.tensor([h - 1, w - 1], device=means.device)
            idx = torch.minimum(means.detach().round().long().clamp(min=0), hi)  # (B, G, Q, 2)
            return idx.unsqueeze(-2), None  # (B, G, Q, 1, 2)
        pts = sample_grid_points(means, (h, w), global_samples=self.global_samples,
                                 local_samples=self.local_samples, region=self.region,
                                 generator=self.generator)  # (B, G, Q, S, 2)
        reps = means.shape[1] // self.glimpses  # candidates read as extra glimpses
        sig = self.sigmas().repeat(reps, 1).view(1, reps * self.glimpses, 1, 2)  # (1, NG, 1, 2)
        return pts, glimpse_point_weights(pts, means, sig)

    def forward_with_boxes(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """The glimpses (B, G, C, kh, kw) and the boxes (B, G, 4) that produced them."""
        x = self._check(x)
        boxes = self.boxes(x)
        pts, weights = self._points(self._means(boxes), self.training)
        out = gather_glimpse(x, pts, weights)  # (B, G, C, Q)
        return out.reshape(x.shape[0], *self.out_shape), boxes

    def forward(self, x: Tensor) -> Tensor:
        return self.forward_with_boxes(x)[0]

    def read(self, x: Tensor, boxes: Tensor) -> Tensor:
        """The glimpses of given boxes, read as eval reads them (the pixel nearest to each grid
        point), in training too; e.g. to train a classifier on jittered boxes. Several sets of
        boxes per image (``N``) are read in one gather.

        Shape:
            x: (B, C, H, W); boxes: (B, G, 4) or (B, N, G, 4), inside the image;
            output: (B, G, C, kh, kw) or (B, N, G, C, kh, kw).
        """
        x = self._check(x)
        b = x.shape[0]
        if boxes.dim() not in (3, 4) or boxes.shape[0] != b or \
                tuple(boxes.shape[-2:]) != (self.glimpses, 4):
            raise ValueError(f"boxes must be (B, G, 4) or (B, N, G, 4) with B = {b}, "
                             f"G = {self.glimpses}, got {tuple(boxes.shape)}")
        flat = boxes.reshape(b, -1, 4)  # (B, N G, 4)
        pts, _ = self._points(self._means(flat), False)  # (B, N G, Q, 1, 2)
        out = gather_glimpse(x, pts)  # (B, N G, C, Q)
        return out.reshape(*boxes.shape[:-1], *self.out_shape[1:])

    def connections(self, x: Tensor, *, generator: torch.Generator | None = None,
                    sample: bool | None = None) -> Connections:
        """The weight tensor as entries over ``out_shape + in_shape`` (see the base class);
        built by the O(K * S) glimpse path rather than the all-pairs one."""
        x = self._check(x)
        sample = self.training if sample is None else sample
        if generator is not None:
            self.generator, old = generator, self.generator
        try:
            pts, weights = self._points(self._means(self.boxes(x)), sample)
        finally:
            if generator is not None:
                self.generator = old
        b, (g, c, kh, kw) = x.shape[0], self.out_shape
        s = pts.shape[-2]
        if weights is None:
            weights = torch.ones(pts.shape[:-1], device=x.device, dtype=x.dtype)
        pts = pts.unsqueeze(2).expand(b, g, c, kh * kw, s, 2)  # (B, G, C, Q, S, 2)
        fixed = self.template[:, :5].long().view(1, g, c, kh * kw, 1, 5)  # type: ignore[index]
        idx = torch.cat([fixed.expand(b, g, c, kh * kw, s, 5), pts], -1)  # (B, G, C, Q, S, 7)
        w = weights.unsqueeze(2).expand(b, g, c, kh * kw, s)  # (B, G, C, Q, S)
        n = g * c * kh * kw * s
        batch = torch.arange(b, device=x.device).repeat_interleave(n)  # (B*n,)
        return Connections(idx.reshape(b * n, 7), w.reshape(b * n), batch)

    @torch.no_grad()
    def pixels_read(self, x: Tensor, *, include_source: bool = True) -> Tensor:
        """Fraction of the H x W pixel positions read in eval, per instance; shape (B,).

        The glimpses read their distinct rounded means; with ``include_source`` the pixels the
        source network reads are added: every ``f``-th row and column from ``o`` on when it
        starts with :class:`Subsample` (``f``, ``o``), else all of them (e.g. average pooling
        reads everything).
        """
        x = self._check(x)
        pts, _ = self._points(self._means(self.boxes(x)), False)  # (B, G, Q, 1, 2)
        h, w = self.in_shape[1:]
        flat = (pts[..., 0] * w + pts[..., 1]).reshape(x.shape[0], -1)  # (B, GQ)
        seen = torch.zeros(x.shape[0], h, w, dtype=torch.bool, device=x.device)
        seen.view(x.shape[0], h * w).scatter_(1, flat, True)
        if include_source:
            first = self.source[0] if isinstance(self.source, nn.Sequential) else None
            if isinstance(first, Subsample):
                seen[:, first.offset :: first.factor, first.offset :: first.factor] = True
            else:
                seen[:] = True
        return seen.flatten(1).sum(1).to(x.dtype) / (h * w)

    def _check(self, x: Tensor) -> Tensor:
        if not isinstance(x, Tensor):
            raise TypeError(f"input must be a Tensor, got {type(x).__name__}")
        if x.dim() != 4 or tuple(x.shape[1:]) != self.in_shape:
            raise ValueError(f"input must have shape (B, *{self.in_shape}), got {tuple(x.shape)}")
        return x

    def extra_repr(self) -> str:
        return (f"in_shape={self.in_shape}, size={self.size}, glimpses={self.glimpses}, "
                f"global_samples={self.global_samples}, local_samples={self.local_samples}, "
                f"region={self.region}, sigma_scale={self.sigma_scale}, "
                f"min_sigma={self.min_sigma}, candidates={self.candidates}, "
                f"candidate_radius={self.candidate_radius}, "
                f"candidate_pool={self.candidate_pool}")
