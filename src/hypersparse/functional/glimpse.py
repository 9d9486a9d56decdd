"""Pure tensor functions of the glimpse hyperlayer (seed 000; DESIGN.md, "glimpse attention").

A glimpse is a sparse hyperlayer whose output coordinates are fixed to a ``kh x kw`` grid per
glimpse and channel and whose input (row, col) coordinates are laid evenly inside a predicted
box. Every tuple of a glimpse has a distinct fixed output coordinate, so under the core's
semantics (:func:`hypersparse.functional.point_weights`: densities are zero off a tuple's
template columns) each tuple's normalisation context is exactly its own sampled points. That
makes the weights O(K * S) instead of O(K^2 * S) and the product a gather, which is what these
functions compute.

Axis letters: B batch, G glimpses, Q grid points per glimpse (kh * kw), S samples per point,
C channels.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = [
    "glimpse_boxes",
    "box_grid",
    "sample_grid_points",
    "glimpse_point_weights",
    "gather_glimpse",
    "sample_boxes",
    "heatmap_candidates",
    "jitter_boxes",
]


def _hw(sizes: Sequence[int]) -> tuple[int, int]:
    h, w = (int(s) for s in sizes)
    if h < 1 or w < 1:
        raise ValueError(f"sizes must be two positive ints (H, W), got {tuple(sizes)}")
    return h, w


def glimpse_boxes(raw: Tensor, sizes: Sequence[int]) -> Tensor:
    """Map unbounded box parameters to boxes inside the image.

    ``raw = (cy, cx, sh, sw)``: the extents are ``sigmoid(sh) * (H - 1)`` and
    ``sigmoid(sw) * (W - 1)``; the top-left corner is ``sigmoid(cy) * (H - 1 - extent_h)`` (and
    likewise for columns), so every box lies in ``[0, H - 1] x [0, W - 1]`` in index space and
    is never inverted.

    Shape:
        raw: (..., 4); output: (..., 4) as ``(top, left, bottom, right)`` in index coordinates.

    Example:
        >>> glimpse_boxes(torch.zeros(1, 4), (11, 11))
        tensor([[2.5000, 2.5000, 7.5000, 7.5000]])
    """
    if raw.shape[-1] != 4:
        raise ValueError(
            f"raw boxes must end in 4 numbers (cy, cx, sh, sw), got {tuple(raw.shape)}")
    h, w = _hw(sizes)
    span = torch.tensor([h - 1, w - 1], dtype=raw.dtype, device=raw.device)
    ext = torch.sigmoid(raw[..., 2:]) * span  # (..., 2)
    start = torch.sigmoid(raw[..., :2]) * (span - ext)  # (..., 2)
    return torch.cat([start, start + ext], dim=-1)  # (..., 4)


def box_grid(boxes: Tensor, size: Sequence[int]) -> Tensor:
    """``kh x kw`` points laid evenly inside each box, corners included (row-major).

    A side of 1 puts its single point at the box's centre.

    Shape:
        boxes: (..., 4) as ``(top, left, bottom, right)``; output: (..., kh * kw, 2) as
        ``(row, col)`` in index coordinates.

    Example:
        >>> box_grid(torch.tensor([0.0, 0.0, 2.0, 4.0]), (2, 3)).tolist()
        [[0.0, 0.0], [0.0, 2.0], [0.0, 4.0], [2.0, 0.0], [2.0, 2.0], [2.0, 4.0]]
    """
    if boxes.shape[-1] != 4:
        raise ValueError(f"boxes must end in 4 numbers, got {tuple(boxes.shape)}")
    kh, kw = _hw(size)

    def frac(k: int) -> Tensor:
        if k == 1:
            return torch.full((1,), 0.5, dtype=boxes.dtype, device=boxes.device)
        return torch.arange(k, dtype=boxes.dtype, device=boxes.device) / (k - 1)

    top, left, bottom, right = boxes.unbind(-1)
    rows = top.unsqueeze(-1) + (bottom - top).unsqueeze(-1) * frac(kh)  # (..., kh)
    cols = left.unsqueeze(-1) + (right - left).unsqueeze(-1) * frac(kw)  # (..., kw)
    lead = rows.shape[:-1]
    grid = torch.stack(
        [rows.unsqueeze(-1).expand(*lead, kh, kw), cols.unsqueeze(-2).expand(*lead, kh, kw)], -1
    )  # (..., kh, kw, 2)
    return grid.reshape(*lead, kh * kw, 2)  # (..., Q, 2)


def sample_grid_points(means: Tensor, sizes: Sequence[int], *, global_samples: int = 2,
                       local_samples: int = 4, region: int | Sequence[int] = 4,
                       generator: torch.Generator | None = None) -> Tensor:
    """Integer (row, col) points per mean, in bounds, carrying no gradient.

    The same construction as :func:`hypersparse.functional.sample_points` for two learned
    columns (the 4 floor/ceil corners, ``global_samples`` points uniform over the image,
    ``local_samples`` uniform in a ``region`` box around the rounded mean, shifted to stay in
    bounds), specialised to (row, col) so that no template columns are materialised.

    Shape:
        means: (..., 2); output: (..., S, 2) int64 with ``S = 4 + global + local``.

    Example:
        >>> sample_grid_points(torch.tensor([[0.5, 2.0]]), (4, 4), global_samples=0,
        ...                    local_samples=0).tolist()
        [[[0, 2], [1, 2], [0, 3], [1, 3]]]
    """
    h, w = _hw(sizes)
    if means.shape[-1] != 2:
        raise ValueError(f"means must end in 2 columns (row, col), got {tuple(means.shape)}")
    if global_samples < 0 or local_samples < 0:
        raise ValueError(f"sample counts must be >= 0, got {global_samples}, {local_samples}")
    reg = (int(region), int(region)) if isinstance(region, int) else tuple(int(g) for g in region)
    if len(reg) != 2 or not (1 <= reg[0] <= h and 1 <= reg[1] <= w):
        raise ValueError(f"region must be one or two ints in [1, size], got {region}")
    mu = means.detach()
    lead = mu.shape[:-1]
    dev = mu.device
    hi = torch.tensor([h - 1, w - 1], device=dev)
    corner = torch.tensor([[0, 0], [1, 0], [0, 1], [1, 1]], device=dev)  # (4, 2)
    parts = [torch.minimum((mu.floor().long().unsqueeze(-2) + corner).clamp_(min=0), hi)]
    if global_samples:
        u = torch.rand(*lead, global_samples, 2, generator=generator, device=dev)
        parts.append(torch.minimum((u * (hi + 1)).long(), hi))  # (..., G, 2)
    if local_samples:
        rg = torch.tensor(reg, device=dev)
        base = torch.minimum(mu.round().long().clamp(min=0), hi)
        start = torch.minimum((base - rg // 2).clamp_(min=0), hi + 1 - rg)  # (..., 2)
        u = torch.rand(*lead, local_samples, 2, generator=generator, device=dev)
        parts.append(start.unsqueeze(-2) + torch.minimum((u * rg).long(), rg - 1))
    return torch.cat(parts, dim=-2)  # (..., S, 2)


def glimpse_point_weights(points: Tensor, means: Tensor, sigmas: Tensor) -> Tensor:
    """Per-tuple normalised Gaussian weights of each tuple's own sampled points.

    ``w[.., q, s] = N_q(p_qs) / sum_{distinct s'} N_q(p_qs')`` with
    ``N_q(p) = exp(-0.5 * sum_r ((p_r - mu_qr) / sigma_r)^2)`` (sigma a standard deviation);
    repeated points of a tuple count once (the later copies get weight 0). This equals
    :func:`hypersparse.functional.point_weights` for tuples whose template columns are all
    distinct (values 1). Computed in log space, so tiny sigmas pick the nearest point.

    Shape:
        points: (..., Q, S, 2) int64; means: (..., Q, 2); sigmas: broadcastable to (..., Q, 2);
        output: (..., Q, S).

    Example:
        >>> pts = torch.tensor([[[0, 0], [0, 1], [0, 1]]])
        >>> glimpse_point_weights(pts, torch.tensor([[0.0, 0.5]]), torch.ones(1, 2)).tolist()
        [[0.5, 0.5, 0.0]]
    """
    if points.shape[-1] != 2 or means.shape[-1] != 2 or points.shape[:-2] != means.shape[:-1]:
        raise ValueError(f"need points (..., Q, S, 2) and means (..., Q, 2), got "
                         f"{tuple(points.shape)} and {tuple(means.shape)}")
    key = points[..., 0] * 2**31 + points[..., 1]  # (..., Q, S)
    s = key.shape[-1]
    # S is small: compare all pairs instead of sorting; a point is kept unless an earlier one
    # equals it
    earlier = torch.ones(s, s, dtype=torch.bool, device=key.device).tril(-1)  # (S, S)
    keep = ~((key.unsqueeze(-1) == key.unsqueeze(-2)) & earlier).any(-1)  # (..., Q, S)
    d = (points.to(means.dtype) - means.unsqueeze(-2)) / sigmas.unsqueeze(-2)  # (..., Q, S, 2)
    logd = (-0.5 * (d * d).sum(-1)).masked_fill(~keep, float("-inf"))  # (..., Q, S)
    return torch.softmax(logd, dim=-1)


def gather_glimpse(x: Tensor, points: Tensor, weights: Tensor | None = None) -> Tensor:
    """``y[b, c, g, q] = sum_s w[b, g, q, s] * x[b, c, p_gqs]``: every channel read at the points.

    Differentiable w.r.t. ``x`` and ``weights`` (a gather; its backward is a scatter-add).

    Shape:
        x: (B, C, H, W); points: (B, G, Q, S, 2) int64 (row, col) in range;
        weights: (B, G, Q, S) or None (all ones); output: (B, G, C, Q).

    Example:
        >>> x = torch.arange(6.0).view(1, 1, 2, 3)
        >>> gather_glimpse(x, torch.tensor([[[[[1, 2]], [[0, 0]]]]])).tolist()
        [[[[5.0, 0.0]]]]
    """
    if x.dim() != 4 or points.dim() != 5 or points.shape[-1] != 2 or points.shape[0] != x.shape[0]:
        raise ValueError(f"need x (B, C, H, W) and points (B, G, Q, S, 2), got "
                         f"{tuple(x.shape)} and {tuple(points.shape)}")
    b, c, h, w = x.shape
    _, g, q, s, _ = points.shape
    flat = (points[..., 0] * w + points[..., 1]).reshape(b, 1, g * q * s)  # (B, 1, GQS)
    vals = x.reshape(b, c, h * w).gather(2, flat.expand(b, c, g * q * s))  # (B, C, GQS)
    vals = vals.view(b, c, g, q, s)  # (B, C, G, Q, S)
    if weights is not None:
        vals = vals * weights.unsqueeze(1).to(vals.dtype)
    return vals.sum(-1).transpose(1, 2)  # (B, G, C, Q)


def sample_boxes(x: Tensor, boxes: Tensor, size: Sequence[int], *,
                 mode: str = "bilinear") -> Tensor:
    """The dense reference: ``grid_sample(x, grid, mode, align_corners=True)`` at the
    :func:`box_grid` points of every box (a spatial-transformer glimpse).

    Shape:
        x: (B, C, H, W); boxes: (B, G, 4); output: (B, G, C, kh, kw).

    Example:
        >>> x = torch.arange(16.0).view(1, 1, 4, 4)
        >>> sample_boxes(x, torch.tensor([[[1.0, 1.0, 2.0, 2.0]]]), (2, 2)).flatten().tolist()
        [5.0, 6.0, 9.0, 10.0]
    """
    if x.dim() != 4 or boxes.dim() != 3 or boxes.shape[0] != x.shape[0]:
        raise ValueError(f"need x (B, C, H, W) and boxes (B, G, 4), got {tuple(x.shape)} and "
                         f"{tuple(boxes.shape)}")
    b, c, h, w = x.shape
    g = boxes.shape[1]
    kh, kw = _hw(size)
    mu = box_grid(boxes, (kh, kw))  # (B, G, Q, 2) as (row, col)
    scale = torch.tensor([max(w - 1, 1), max(h - 1, 1)], dtype=mu.dtype, device=mu.device)
    grid = 2 * mu.flip(-1) / scale - 1  # (B, G, Q, 2) as normalised (x, y)
    out = F.grid_sample(x, grid.reshape(b, g * kh, kw, 2).to(x.dtype), mode=mode,
                        align_corners=True)  # (B, C, G*kh, kw)
    return out.view(b, c, g, kh, kw).transpose(1, 2)  # (B, G, C, kh, kw)


def heatmap_candidates(heat: Tensor, count: int, radius: int = 1) -> tuple[Tensor, Tensor]:
    """The ``count`` best separated peaks of each heat map, each refined by a local soft-argmax.

    Peaks are picked greedily (non-maximum suppression): the highest cell, then the highest cell
    farther than ``radius`` cells (Chebyshev distance) from every earlier pick, and so on; when
    every cell is suppressed, the highest cell not yet picked. Each peak's position is the
    soft-argmax of the logits in its ``(2 radius + 1)^2`` window (cells off the map left out),
    its score the peak's logit. Candidates are sorted by score, best first (stable), so the
    first is always the map's arg-max cell, whatever ``count``. Picking carries no gradient;
    positions and scores are differentiable w.r.t. the logits.

    Args:
        heat: heat-map logits, finite.
        count: candidates per map, ``1 <= count <= h * w``.
        radius: suppression and refinement radius in cells, ``>= 0``.

    Shape:
        heat: (B, G, h, w); output: positions (B, G, count, 2) as (row, col) in cell units,
        scores (B, G, count).

    Example:
        >>> heat = torch.full((1, 1, 1, 6), -9.0)
        >>> heat[0, 0, 0, 1], heat[0, 0, 0, 4] = 1.0, 2.0
        >>> pos, score = heatmap_candidates(heat, 2, radius=0)
        >>> pos[0, 0].tolist()
        [[0.0, 4.0], [0.0, 1.0]]
    """
    if not isinstance(heat, Tensor) or heat.dim() != 4 or not heat.is_floating_point():
        raise ValueError(f"heat must be a floating (B, G, h, w) tensor, got "
                         f"{getattr(heat, 'shape', type(heat))}")
    b, g, h, w = heat.shape
    if not isinstance(count, int) or isinstance(count, bool) or not 1 <= count <= h * w:
        raise ValueError(f"count must be an int in [1, h * w = {h * w}], got {count!r}")
    if not isinstance(radius, int) or isinstance(radius, bool) or radius < 0:
        raise ValueError(f"radius must be an int >= 0, got {radius!r}")
    if not bool(torch.isfinite(heat).all()):
        raise ValueError("heat must be finite")
    dev = heat.device
    flat = heat.detach().flatten(2)  # (B, G, hw)
    rows = torch.arange(h, device=dev).repeat_interleave(w)  # (hw,)
    cols = torch.arange(w, device=dev).repeat(h)  # (hw,)
    near = torch.zeros(b, g, h * w, dtype=torch.bool, device=dev)
    taken = torch.zeros_like(near)
    peaks = []
    for _ in range(count):
        free = flat.masked_fill(near, float("-inf")).argmax(-1)  # (B, G)
        rest = flat.masked_fill(taken, float("-inf")).argmax(-1)  # (B, G)
        idx = torch.where((~near).any(-1), free, rest)  # (B, G)
        peaks.append(idx)
        taken.scatter_(-1, idx.unsqueeze(-1), True)
        dr = (rows - rows[idx].unsqueeze(-1)).abs()  # (B, G, hw)
        dc = (cols - cols[idx].unsqueeze(-1)).abs()  # (B, G, hw)
        near |= (dr <= radius) & (dc <= radius)
    peak = torch.stack(peaks, -1)  # (B, G, N)
    d = torch.arange(-radius, radius + 1, device=dev)
    side = 2 * radius + 1
    wr = rows[peak].unsqueeze(-1) + d.repeat_interleave(side)  # (B, G, N, side^2)
    wc = cols[peak].unsqueeze(-1) + d.repeat(side)  # (B, G, N, side^2)
    valid = (wr >= 0) & (wr < h) & (wc >= 0) & (wc < w)
    cell = (wr.clamp(0, h - 1) * w + wc.clamp(0, w - 1)).reshape(b, g, count * side * side)
    vals = heat.flatten(2).gather(-1, cell).view(b, g, count, side * side)  # (B, G, N, side^2)
    vals = vals.masked_fill(~valid, float("-inf"))
    p = torch.softmax(vals, -1)
    pos = torch.stack([(p * wr.to(p.dtype)).sum(-1), (p * wc.to(p.dtype)).sum(-1)], -1)
    score = heat.flatten(2).gather(-1, peak)  # (B, G, N): the peak logits
    order = score.detach().argsort(dim=-1, descending=True, stable=True)  # (B, G, N)
    pos = pos.gather(2, order.unsqueeze(-1).expand(b, g, count, 2))  # (B, G, N, 2)
    return pos, score.gather(2, order)


def jitter_boxes(boxes: Tensor, shift: float, sizes: Sequence[int], *,
                 generator: torch.Generator | None = None) -> Tensor:
    """Slide each box by a random offset, uniform in ``[-shift, shift]`` pixels per axis, and
    keep it inside the ``H x W`` image (the box keeps its size; a box that would leave the image
    stops at the border). A data augmentation: a classifier trained on jittered glimpses
    learns to read a digit the box only partly covers.

    Args:
        boxes: ``(top, left, bottom, right)`` in index coordinates, inside the image.
        shift: the largest offset in pixels, ``>= 0`` (0 returns the boxes unchanged).
        sizes: ``(H, W)`` of the image.
        generator: torch RNG for the offsets (default: the global one).

    Shape:
        boxes: (B, G, 4); output: (B, G, 4).

    Example:
        >>> b = torch.tensor([[[0.0, 0.0, 4.0, 4.0]]])
        >>> out = jitter_boxes(b, 2.0, (10, 10))
        >>> bool(((out[..., 2:] - out[..., :2]) == 4).all()), bool((out >= 0).all())
        (True, True)
    """
    if not isinstance(boxes, Tensor) or boxes.dim() != 3 or boxes.shape[-1] != 4:
        raise ValueError(f"boxes must be a (B, G, 4) tensor, got "
                         f"{getattr(boxes, 'shape', type(boxes))}")
    if not isinstance(shift, (int, float)) or isinstance(shift, bool) or not shift >= 0:
        raise ValueError(f"shift must be a number >= 0, got {shift!r}")
    h, w = _hw(sizes)
    if shift == 0:
        return boxes
    u = torch.rand(*boxes.shape[:2], 2, generator=generator, dtype=boxes.dtype,
                   device=boxes.device)  # (B, G, 2)
    d = (2 * u - 1) * shift  # (B, G, 2): (d_row, d_col)
    top_left = boxes[..., :2]
    limit = torch.tensor([h - 1, w - 1], dtype=boxes.dtype, device=boxes.device)
    # keep top_left + d >= 0 and bottom_right + d <= limit
    d = torch.maximum(torch.minimum(d, limit - boxes[..., 2:]), -top_left)
    return boxes + d.repeat(1, 1, 2)  # (B, G, 4)
