"""The sparse hyperlayer's pure tensor functions (seeds 000-002; DESIGN.md, "The adaptive sparse
hyperlayer").

A weight tensor of shape ``out_shape + in_shape`` (rank R) is K continuous index tuples: a mean
in index space, a per-dimension standard deviation and a value per tuple. In training each tuple
samples integer points (its floor/ceil corners, G global and L local uniform points); every point
sampled in a context (the whole layer, or one instance of an adaptive layer) gets the weight

    w(p) = sum_k v_k * N_k(p) / Z_k,    N_k(p) = exp(-0.5 * sum_r ((p_r - mu_kr) / sigma_kr)^2),

with ``Z_k`` the sum of ``N_k`` over the distinct points of the context. Only the ``learn``
columns are Gaussian; the other (template) columns are exact: ``N_k(p) = 0`` unless ``p`` equals
``round(mu_k)`` there. **Convention: sigma is a standard deviation.**

Axis letters: B batch, K tuples, S samples per tuple, P points in a context (K*S), R tuple rank,
R' learned columns (written ``L`` in shape comments).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from .chebyshev import chebyshev_weights

__all__ = [
    "bound_means",
    "unbound_means",
    "MEAN_BOUNDS",
    "LOCAL_BOXES",
    "check_local_box",
    "check_mean_bound",
    "bound_sigmas",
    "sample_points",
    "linear_index",
    "distinct_indices",
    "first_occurrence",
    "log_densities",
    "point_weights",
    "MAX_LINEAR",
]

#: Largest number of addressable index tuples (B * prod(sizes) must stay below int64's range).
MAX_LINEAR = 2**62


def _check_sizes(sizes: Sequence[int]) -> list[int]:
    sizes = [int(s) for s in sizes]
    if not sizes or any(s < 1 for s in sizes):
        raise ValueError(f"sizes must be a non-empty sequence of positive ints, got {sizes}")
    if math.prod(sizes) >= MAX_LINEAR:
        raise ValueError(f"prod(sizes) = {math.prod(sizes)} exceeds the int64 index range")
    return sizes


_CONSTS: dict[tuple[tuple[int, ...], torch.dtype, torch.device], Tensor] = {}


def const(values: Sequence[int], dtype: torch.dtype, device: torch.device) -> Tensor:
    """A cached small constant tensor (index lists, sizes): saves a host-to-tensor copy per call.
    Callers must not modify it in place."""
    key = (tuple(int(v) for v in values), dtype, torch.device(device))
    t = _CONSTS.get(key)
    if t is None:
        if len(_CONSTS) > 4096:
            _CONSTS.clear()
        t = _CONSTS[key] = torch.tensor(key[0], dtype=dtype, device=device)
    return t


def _size_tensor(sizes: Sequence[int], like: Tensor) -> Tensor:
    return const(sizes, like.dtype, like.device)


MEAN_BOUNDS = ("sigmoid", "reflect")


LOCAL_BOXES = ("low", "alternate")


def check_local_box(local_box: str) -> None:
    """Raise ``ValueError`` unless ``local_box`` names a local box (:func:`sample_points`)."""
    if local_box not in LOCAL_BOXES:
        raise ValueError(f"local_box must be one of {LOCAL_BOXES}, got {local_box!r}")


def check_mean_bound(mode: str) -> None:
    """Raise ValueError unless ``mode`` is one of :data:`MEAN_BOUNDS`."""
    if mode not in MEAN_BOUNDS:
        raise ValueError(f"mean_bound must be one of {MEAN_BOUNDS}, got {mode!r}")


def bound_means(raw: Tensor, sizes: Sequence[int], *, mode: str = "sigmoid") -> Tensor:
    """Map unbounded raw means into index space ``[0, size - 1]`` per column.

    ``mode="sigmoid"`` (the paper's): ``sigmoid(raw) * (size - 1)``. Its slope vanishes near the
    edges, so a mean that drifts there barely moves again. ``mode="reflect"``: a triangle wave
    ``tri(raw / 4 + 1/2) * (size - 1)`` with ``tri(u) = 1 - |(u mod 2) - 1|``, i.e. linear with
    the sigmoid's slope at 0 and reflected at both edges: every mean moves equally fast
    wherever it is (docs/hyperlayer.md measures the difference on the identity task).

    Shape:
        raw: (..., L) with ``L == len(sizes)``; output: same.

    Example:
        >>> bound_means(torch.zeros(1, 2), [5, 11])
        tensor([[2., 5.]])
        >>> bound_means(torch.tensor([[-2.0, 3.0]]), [5, 5], mode="reflect")
        tensor([[0., 3.]])
    """
    sizes = _check_sizes(sizes)
    check_mean_bound(mode)
    if raw.shape[-1] != len(sizes):
        raise ValueError(f"raw means must end in {len(sizes)} columns, got {tuple(raw.shape)}")
    if mode == "sigmoid":
        unit = torch.sigmoid(raw)
    else:
        unit = 1 - (torch.remainder(raw * 0.25 + 0.5, 2.0) - 1).abs()
    return unit * (_size_tensor(sizes, raw) - 1)


def unbound_means(means: Tensor, sizes: Sequence[int], *, mode: str = "sigmoid",
                  eps: float = 1e-3) -> Tensor:
    """Raw means that :func:`bound_means` maps to ``means`` (index space, clamped into
    ``[eps, 1 - eps]`` of each column's range first, so the sigmoid's inverse stays finite).

    Args:
        means: index-space means.
        sizes: the size of each column.
        mode: ``"sigmoid"`` or ``"reflect"``, as for :func:`bound_means`.
        eps: the clamp, as a fraction of each column's range.

    Shape:
        means: (..., L) with ``L == len(sizes)``; output: same.

    Example:
        >>> m = torch.tensor([[1.0, 7.5]])
        >>> torch.allclose(bound_means(unbound_means(m, [5, 11]), [5, 11]), m)
        True
    """
    sizes = _check_sizes(sizes)
    check_mean_bound(mode)
    if means.shape[-1] != len(sizes):
        raise ValueError(f"means must end in {len(sizes)} columns, got {tuple(means.shape)}")
    span = (_size_tensor(sizes, means) - 1).clamp(min=1)
    unit = (means / span).clamp(eps, 1 - eps)
    return torch.logit(unit) if mode == "sigmoid" else (unit - 0.5) * 4


def bound_sigmas(raw: Tensor, sizes: Sequence[int], *, sigma_scale: float = 0.1,
                 min_sigma: float = 0.0) -> Tensor:
    """Per-column standard deviations ``(softplus(raw + 2) + min_sigma) * sigma_scale * size``.

    One raw scalar per tuple; the deviation is relative to each column's size, so a tuple covers
    the same fraction of every dimension.

    Shape:
        raw: (..., K); output: (..., K, L) with ``L == len(sizes)``.

    Example:
        >>> bound_sigmas(torch.full((1,), -2.0), [10], sigma_scale=0.1).round(decimals=3)
        tensor([[0.6930]])
    """
    sizes = _check_sizes(sizes)
    if not sigma_scale > 0 or not min_sigma >= 0:
        raise ValueError(f"need sigma_scale > 0 and min_sigma >= 0, got {sigma_scale}, {min_sigma}")
    base = F.softplus(raw + 2.0) + min_sigma  # (..., K)
    return base.unsqueeze(-1) * (_size_tensor(sizes, raw) * sigma_scale)  # (..., K, L)


_CORNERS: dict[tuple[int, torch.device], Tensor] = {}


def _corner_offsets(n: int, device: torch.device) -> Tensor:
    key = (n, device)
    if key not in _CORNERS:
        bits = torch.arange(2**n, device=device).unsqueeze(-1) >> torch.arange(n, device=device)
        _CORNERS[key] = bits & 1  # (2^L, L)
    return _CORNERS[key]


def sample_points(means: Tensor, sizes: Sequence[int], learn: Sequence[int], *,
                  global_samples: int = 4, local_samples: int = 4,
                  region: int | Sequence[int] = 4, local_box: str = "low",
                  generator: torch.Generator | None = None) -> Tensor:
    """Integer points per tuple, in bounds, carrying no gradient.

    Per tuple: the ``2^L`` corners ``floor(mu) + {0, 1}`` over the learned columns (clamped into
    range), ``global_samples`` points uniform over the learned columns' whole range and
    ``local_samples`` points uniform in a ``region`` box starting at ``round(mu) - region // 2``
    (shifted to stay in bounds). For an even region that box's centre lies half a cell below
    ``mu`` on average (``local_box="low"``, the default); with ``local_box="alternate"`` the
    odd-numbered tuples (along K) take the mirrored box, starting one cell higher, so half the
    tuples are biased down and half up: every tuple keeps a constant push, but a chain of tuples
    feels none on the whole (what the identity task needs at n >= 128: docs/hyperlayer.md).
    Odd regions are centred on ``round(mu)`` either way. Template columns are ``round(mu)``.
    Random numbers come from ``generator`` (default: the global torch RNG).

    Args:
        means: tuple means in index space (see :func:`bound_means`).
        sizes: the size of each of the R dimensions.
        learn: the learned columns (the others are fixed by a template).
        global_samples, local_samples: G and L.
        region: the local box's side, one int for all learned columns or one per column.
        local_box: ``"low"`` or ``"alternate"`` (above).

    Shape:
        means: (..., K, R); output: (..., K, S, R) int64 with ``S = 2^L + G + L``.

    Example:
        >>> pts = sample_points(torch.tensor([[1.5, 2.0]]), [4, 4], [0, 1])
        >>> pts.shape, bool((pts >= 0).all() and (pts < 4).all())
        (torch.Size([1, 12, 2]), True)
    """
    sizes = _check_sizes(sizes)
    r = len(sizes)
    if means.shape[-1] != r:
        raise ValueError(f"means must end in R={r} columns, got {tuple(means.shape)}")
    learn = list(learn)
    if len(set(learn)) != len(learn) or any(not 0 <= c < r for c in learn):
        raise ValueError(f"learn must be distinct columns in [0, {r}), got {learn}")
    if global_samples < 0 or local_samples < 0:
        raise ValueError(f"sample counts must be >= 0, got {global_samples}, {local_samples}")
    check_local_box(local_box)
    regions = [int(region)] * len(learn) if isinstance(region, int) else [int(g) for g in region]
    if len(regions) != len(learn):
        raise ValueError(f"region needs one entry per learned column ({len(learn)}), got {region}")
    for c, g in zip(learn, regions):
        if not 1 <= g <= sizes[c]:
            raise ValueError(f"region {g} must be in [1, {sizes[c]}] (size of dimension {c})")

    mu = means.detach()
    lead = mu.shape[:-1]  # (..., K)
    nl = len(learn)
    size_all = const(sizes, torch.long, mu.device)
    base = mu.round().long().clamp_(min=0)
    base = torch.minimum(base, size_all - 1)  # (..., K, R)
    if nl == 0:
        return base.unsqueeze(-2)  # (..., K, 1, R)
    cols = const(learn, torch.long, mu.device)
    size_l = size_all[cols]  # (L,)
    mu_l = mu.index_select(-1, cols)  # (..., K, L)
    parts = []
    floor = mu_l.floor().long()
    corners = floor.unsqueeze(-2) + _corner_offsets(nl, mu.device)  # (..., K, 2^L, L)
    parts.append(torch.minimum(corners.clamp_(min=0), size_l - 1))
    if global_samples:
        u = torch.rand(*lead, global_samples, nl, generator=generator, device=mu.device,
                       dtype=torch.float64)
        parts.append((u * size_l).long())  # (..., K, G, L)
    if local_samples:
        reg = const(regions, torch.long, mu.device)
        start = base.index_select(-1, cols) - reg // 2  # (..., K, L)
        if local_box == "alternate":
            odd = torch.arange(lead[-1], device=mu.device) % 2  # (K,)
            start = start + odd.unsqueeze(-1) * (1 - reg % 2)  # mirrored box, even regions only
        start = start.clamp_(min=0)
        start = torch.minimum(start, size_l - reg)  # (..., K, L)
        u = torch.rand(*lead, local_samples, nl, generator=generator, device=mu.device,
                       dtype=torch.float64)
        parts.append(start.unsqueeze(-2) + (u * reg).long())  # (..., K, L_local, L)
    learned = torch.cat(parts, dim=-2)  # (..., K, S, L)
    s = learned.shape[-2]
    out = base.unsqueeze(-2).expand(*lead, s, r).clone()  # (..., K, S, R)
    out[..., cols] = learned
    return out


def linear_index(points: Tensor, sizes: Sequence[int]) -> Tensor:
    """C-order linear index of integer points (exact in int64; no float pairing function).

    Shape:
        points: (..., R) int64; output: (...) int64.

    Example:
        >>> linear_index(torch.tensor([[1, 2], [0, 3]]), [4, 5])
        tensor([7, 3])
    """
    sizes = _check_sizes(sizes)
    if points.shape[-1] != len(sizes):
        raise ValueError(f"points must end in R={len(sizes)} columns, got {tuple(points.shape)}")
    strides = [math.prod(sizes[i + 1:]) for i in range(len(sizes))]
    st = const(strides, torch.long, points.device)
    return (points.long() * st).sum(-1)


def first_occurrence(keys: Tensor) -> Tensor:
    """Boolean mask keeping exactly one copy of each distinct value along the last dimension.

    Exact (sort-based) duplicate detection on integer keys.

    Shape:
        keys: (..., P) int64; output: (..., P) bool.

    Example:
        >>> first_occurrence(torch.tensor([5, 3, 5, 3, 1])).tolist()
        [True, True, False, False, True]
    """
    if keys.shape[-1] == 0:
        return torch.zeros_like(keys, dtype=torch.bool)
    order, first = _sorted_firsts(keys)
    return torch.zeros_like(first).scatter_(-1, order, first)


def distinct_indices(keys: Tensor) -> Tensor:
    """Indices of the first copy of each distinct value, in increasing order of value.

    ``keys[distinct_indices(keys)]`` is ``torch.unique(keys)``; a shared hyperlayer uses it to
    keep each sampled point once, grouped by output index.

    Shape:
        keys: (P,) int64; output: (P',) int64, P' the number of distinct values.

    Example:
        >>> distinct_indices(torch.tensor([5, 3, 5, 3, 1])).tolist()
        [4, 1, 0]
    """
    if keys.dim() != 1:
        raise ValueError(f"keys must be 1-D, got shape {tuple(keys.shape)}")
    order, first = _sorted_firsts(keys)
    return order[first]


def _sorted_firsts(keys: Tensor) -> tuple[Tensor, Tensor]:
    """The stable sorting permutation of ``keys`` (last dim) and, in sorted order, which
    entries start a run of equal values."""
    sorted_keys, order = torch.sort(keys, dim=-1, stable=True)
    first = torch.ones_like(sorted_keys, dtype=torch.bool)
    first[..., 1:] = sorted_keys[..., 1:] != sorted_keys[..., :-1]
    return order, first


def _fixed_mask(points: Tensor, means: Tensor, fixed: Sequence[int]) -> Tensor | None:
    if not fixed:
        return None
    fc = const(fixed, torch.long, means.device)
    pf = points.index_select(-1, fc).long().unsqueeze(-3)  # (..., 1, P, F)
    mf = means.detach().index_select(-1, fc).round().long().unsqueeze(-2)  # (..., K, 1, F)
    return (pf == mf).all(-1)  # (..., K, P)


def _scaled_diff(points: Tensor, means: Tensor, sigmas: Tensor, learn: Sequence[int]) -> Tensor:
    cols = const(learn, torch.long, means.device)
    pts = points.index_select(-1, cols).to(means.dtype)
    d = pts.unsqueeze(-3) - means.index_select(-1, cols).unsqueeze(-2)  # (..., K, P, L)
    return d / sigmas.unsqueeze(-2)


def log_densities(points: Tensor, means: Tensor, sigmas: Tensor, learn: Sequence[int]) -> Tensor:
    """All-pairs unnormalised log densities ``log N_k(p)`` (``-inf`` off a tuple's template).

    Shape:
        points: (..., P, R) int or float; means: (..., K, R); sigmas: (..., K, L);
        output: (..., K, P).
    """
    d = _scaled_diff(points, means, sigmas, learn)  # (..., K, P, L)
    logd = -0.5 * (d * d).sum(-1)  # (..., K, P)
    mask = _fixed_mask(points, means, [c for c in range(means.shape[-1]) if c not in learn])
    return logd if mask is None else logd.masked_fill(~mask, float("-inf"))


def point_weights(points: Tensor, keep: Tensor | None, means: Tensor, sigmas: Tensor,
                  values: Tensor, learn: Sequence[int], *, method: str = "exact",
                  cutoff: float = 5.0, sizes: Sequence[int] | None = None) -> Tensor:
    """Weights ``w(p) = sum_k v_k N_k(p) / Z_k`` of the points of each context.

    Each tuple is normalised over every distinct point of its context (``keep`` marks one copy of
    each; the others get weight 0 and do not count in ``Z``). Computed in log space, so tiny
    sigmas do not underflow. ``method="exact"`` evaluates all (point, tuple) pairs, O(K * P);
    ``"neighbours"`` only the pairs within ``cutoff`` standard deviations in every learned column
    (spatial hashing; see :func:`hypersparse.functional.neighbour_weights`); ``"chebyshev"`` all
    pairs through a low-rank Gauss transform, O((P + K) * m^L) for m Chebyshev points per column,
    for wide sigmas and integer points without template columns, and exact pairs where it does
    not apply (see :func:`hypersparse.functional.chebyshev_weights`).

    Args:
        points: integer points of each context (e.g. :func:`sample_points` flattened over K, S).
        keep: which points count (``None``: all; they must then be distinct).
        means: tuple means in index space (full rank R, template columns included).
        sigmas: standard deviations over the learned columns.
        values: tuple values.
        learn: the learned columns.
        sizes: the R dimension sizes (used by ``"neighbours"`` for its grid; default: the
            points' extent).

    Shape:
        points: (..., P, R); keep: (..., P); means: (..., K, R); sigmas: (..., K, L);
        values: (..., K); output: (..., P).

    Example:
        >>> pts = torch.tensor([[0, 0], [0, 1]])
        >>> w = point_weights(pts, None, torch.tensor([[0.0, 0.0]]), torch.ones(1, 2),
        ...                   torch.ones(1), [0, 1])
        >>> w.sum().item()
        1.0
    """
    if method == "neighbours":
        from .neighbours import neighbour_weights

        return neighbour_weights(points, keep, means, sigmas, values, learn, cutoff=cutoff,
                                 sizes=sizes)
    if method not in ("exact", "chebyshev"):
        raise ValueError(f"method must be 'exact', 'neighbours' or 'chebyshev', got {method!r}")
    learn = list(learn)
    mask = _fixed_mask(points, means, [c for c in range(means.shape[-1]) if c not in learn])
    if method == "chebyshev" and mask is None:
        w = chebyshev_weights(points, keep, means, sigmas, values, learn)
        if w is not None:
            return w
        # the transform does not apply (narrow sigmas, float points): exact all-pairs
    if mask is None and means.shape[-2] * points.shape[-2] > GEMM_MIN_PAIRS:
        frame = _gemm_frame(points, means, sigmas, learn)
        if frame is not None:
            return _gemm_weights(points, keep, means, sigmas, values, learn, frame)
    if keep is not None:
        mask = keep.unsqueeze(-2) if mask is None else mask & keep.unsqueeze(-2)  # (..., K, P)
    return _exact_weights(points, means, sigmas, values, learn, mask)


#: The quadratic-form (GEMM) path expands the exponent around the centre of the index range, so
#: its rounding grows with ``bound = max(1 / sigma^2) * max|x - centre|^2`` (x: points and means).
#: float64 layers use it while float64 rounding of the exponent, ~1.1e-16 * 4 * L * bound, stays
#: below ``GEMM_EXPONENT_ERROR``; float32 layers while ``bound <= GEMM_F32_BOUND``: their saved
#: float32 ``exp`` matrix enters the backward moments, whose cancellation magnifies its rounding
#: to ~6e-8 * bound relative error in the deviations' gradient (~1.5e-5 at the bound; sigma >= 8
#: cells at n = 256, i.e. the wide-sigma regime where ``normalisation="auto"`` runs exact pairs).
GEMM_EXPONENT_ERROR = 1e-8
GEMM_F32_BOUND = 256.0
#: ... for contexts of more (tuple, point) pairs than this (below, the column path is as fast).
GEMM_MIN_PAIRS = 2**16


def _gemm_frame(points: Tensor, means: Tensor, sigmas: Tensor,
                learn: list[int]) -> Tensor | None:
    """The centre (L,) of the GEMM path's coordinates, or None where the path does not apply:
    off the CPU (float64 products are slow on most GPUs, where the elementwise path is fast
    anyway), other dtypes, empty or degenerate input, or beyond the accuracy bound. Costs two
    host syncs per call (fine on the CPU, its only device)."""
    if points.device.type != "cpu" or sigmas.dtype not in (torch.float32, torch.float64):
        return None
    if points.numel() == 0 or sigmas.numel() == 0:
        return None
    cols = const(learn, torch.long, points.device)
    pts = points.index_select(-1, cols).flatten(0, -2).to(torch.float64)  # (B*P, L)
    mu = means.detach().index_select(-1, cols).flatten(0, -2).to(torch.float64)  # (B*K, L)
    lo = torch.minimum(pts.amin(0), mu.amin(0))  # (L,)
    hi = torch.maximum(pts.amax(0), mu.amax(0))
    stats = torch.stack([((hi - lo) / 2).max(), sigmas.detach().amin().to(torch.float64)])
    half, smin = stats.tolist()
    if not smin > 0 or not math.isfinite(half):
        return None
    bound = half * half / (smin * smin)
    if sigmas.dtype == torch.float64:
        ok = 1.1e-16 * 4 * len(learn) * bound <= GEMM_EXPONENT_ERROR
    else:
        ok = bound <= GEMM_F32_BOUND
    return (lo + hi) / 2 if ok else None


def _gemm_weights(points: Tensor, keep: Tensor | None, means: Tensor, sigmas: Tensor,
                  values: Tensor, learn: list[int], centre: Tensor) -> Tensor:
    """All-pairs weights with the exponent as one matrix product: ``log N_k(p) =
    sum_r -1/2 s_kr p_r^2 + s_kr mu_kr p_r - 1/2 s_kr mu_kr^2`` with ``s = 1 / sigma^2``, i.e.
    (K, D) tuple features times (D, P) point features, in float64 on coordinates centred on
    ``centre`` (:func:`_gemm_frame` checks the accuracy bound)."""
    cols = const(learn, torch.long, means.device)
    pts = points.index_select(-1, cols).to(torch.float64) - centre  # (..., P, L)
    mu = means.index_select(-1, cols).to(torch.float64) - centre  # (..., K, L)
    s = sigmas.to(torch.float64).pow(-2)  # (..., K, L)
    sm = s * mu
    ones = torch.ones_like(mu[..., :1])  # (..., K, 1)
    const_term = -0.5 * (sm * mu).sum(-1, keepdim=True)  # (..., K, 1)
    tfeat = torch.cat([-0.5 * s, sm, const_term, ones], -1)  # (..., K, D)
    pt = pts.transpose(-1, -2)  # (..., L, P)
    bias = pt.new_zeros(pt.shape[:-2] + (1, pt.shape[-1]))  # (..., 1, P)
    if keep is not None:
        bias.masked_fill_(~keep.unsqueeze(-2), _MASKED)
    grad_feat = torch.cat([pt.square(), pt], -2)  # (..., 2L, P)
    feat = torch.cat([grad_feat, torch.ones_like(bias), bias], -2)  # (..., D, P)
    return _GemmWeights.apply(tfeat, feat, grad_feat, values.to(means.dtype))


_MASKED = -1e30  # exponent bias of the points that do not count (finite: no inf * 0 in a GEMM)


class _GemmWeights(torch.autograd.Function):
    """``w_p = sum_k v_k exp(x_kp) / Z_k`` with ``x = T F`` (float64 product; ``exp`` and the
    backward product in the layer's dtype). Backward needs only one more product with
    ``E = exp(x - max)``:
    ``gv_k = (E gw)_k / Z_k`` and ``dT_k = v_k / Z_k (E (gw * G^T) - gv_k E G^T)_k`` where ``G``
    are the point features that tuple features multiply (the bias rows get no gradient)."""

    @staticmethod
    def forward(ctx: Any, tfeat: Tensor, feat: Tensor, grad_feat: Tensor,
                values: Tensor) -> Tensor:
        x = (tfeat @ feat).to(values.dtype)  # (..., K, P)
        near = x.amax(-1, keepdim=True)  # (..., K, 1)
        e = torch.threshold_(x.sub_(near), LOG_FLUSH, float("-inf")).exp_()  # (..., K, P)
        z = e.sum(-1)  # (..., K)
        live = (z > 0) & (near.squeeze(-1) > _MASKED / 2)  # tuples with a point in context
        c = torch.where(live, values / z.clamp_min(torch.finfo(z.dtype).tiny),
                        torch.zeros_like(values))  # (..., K)
        ctx.save_for_backward(e, grad_feat, c, z, live)
        return (c.unsqueeze(-2) @ e).squeeze(-2)  # (..., P)

    @staticmethod
    def backward(ctx: Any, gw: Tensor) -> Any:
        e, grad_feat, c, z, live = ctx.saved_tensors
        dt = e.dtype
        g = grad_feat.to(dt)  # (..., 2L, P)
        gwd = gw.to(dt).unsqueeze(-2)  # (..., 1, P)
        rhs = torch.cat([gwd, g, g * gwd], -2)  # (..., 1 + 4L, P)
        r = (rhs @ e.to(dt).transpose(-1, -2)).transpose(-1, -2)  # (..., K, 1 + 4L)
        r = r.to(torch.float64)
        d = g.shape[-2]
        z64 = z.to(torch.float64).clamp_min(torch.finfo(z.dtype).tiny)
        gv = torch.where(live, r[..., 0] / z64, torch.zeros_like(z64))  # (..., K)
        gt = r[..., 1 + d:] - gv.unsqueeze(-1) * r[..., 1:1 + d]  # (..., K, 2L)
        gt = gt * c.to(torch.float64).unsqueeze(-1)
        # tuple features: [-s/2 (L), s mu (L), const, bias-one]; const and bias get no use
        zero = gt.new_zeros(gt.shape[:-1] + (2,))
        return torch.cat([gt, zero], -1), None, None, gv.to(c.dtype)


def _exact_weights(points: Tensor, means: Tensor, sigmas: Tensor, values: Tensor,
                   learn: list[int], mask: Tensor | None) -> Tensor:
    cols = const(learn, torch.long, means.device)
    mu = means.index_select(-1, cols)  # (..., K, L)
    pts = points.index_select(-1, cols).to(means.dtype)  # (..., P, L)
    # a tuple with no point in its context (only possible for hand-made points) gets weight 0
    return _ExactWeights.apply(pts, mu, sigmas, values.to(means.dtype), mask)


#: Normalised densities below exp(-60) (~1e-26 of a tuple's total) are set to exactly zero:
#: computing and multiplying subnormal floats is 10x slower on CPUs (measured on exp).
LOG_FLUSH = -60.0


def _exp_flush(x: Tensor) -> Tensor:
    """``exp(x)`` in place, with results below ``exp(LOG_FLUSH)`` flushed to zero."""
    small = x < LOG_FLUSH
    return x.clamp_(min=LOG_FLUSH).exp_().masked_fill_(small, 0.0)


def _scaled_column(pts_t: Tensor, mu_t: Tensor, inv_t: Tensor, i: int) -> Tensor:
    """``(p_i - mu_ki) / sigma_ki`` for one learned column: (..., K, P), contiguous.

    Takes column-major copies (``pts_t`` (..., L, P), ``mu_t`` and ``inv_t`` (..., L, K)): a
    broadcast over a strided column view is ~3x slower than over a contiguous row."""
    return (pts_t[..., i, :].unsqueeze(-2) - mu_t[..., i, :].unsqueeze(-1)).mul_(
        inv_t[..., i, :].unsqueeze(-1))


class _ExactWeights(torch.autograd.Function):
    """All-pairs weights with a hand-written backward.

    Works column by column on contiguous (K, P) tensors (a (K, P, L) layout with L = 2 is 4x
    slower), keeps every exp argument in [LOG_FLUSH, 0] (exp of very negative floats takes a
    10x slower path) and recomputes the scaled differences in backward instead of saving them.
    With ``A_kp = N_k(p) / Z_k``, ``w_p = sum_k v_k A_kp`` and ``d = (p - mu) / sigma``:
    ``dv_k = sum_p A_kp gw_p``, ``dlogN_kp = v_k A_kp (gw_p - dv_k)``,
    ``dmu_kr = sum_p dlogN_kp d_kpr / sigma_kr``, ``dsigma_kr = sum_p dlogN_kp d_kpr^2 / sigma_kr``.
    """

    @staticmethod
    def forward(ctx: Any, pts: Tensor, mu: Tensor, sigmas: Tensor, values: Tensor,
                mask: Tensor | None) -> Tensor:
        inv_t = sigmas.reciprocal().transpose(-1, -2).contiguous()  # (..., L, K)
        pts_t = pts.transpose(-1, -2).contiguous()  # (..., L, P)
        mu_t = mu.transpose(-1, -2).contiguous()  # (..., L, K)
        sq: Tensor | None = None
        for i in range(mu.shape[-1]):
            t = _scaled_column(pts_t, mu_t, inv_t, i)  # (..., K, P)
            sq = t.mul_(t) if sq is None else sq.addcmul_(t, t)
        assert sq is not None
        if mask is not None:
            sq.masked_fill_(~mask, float("inf"))
        # x = log N_k(p) - max_p log N_k(p) <= 0; a tuple with an empty context gets weight 0
        near = sq.amin(-1, keepdim=True).clamp_max(torch.finfo(sq.dtype).max)  # (..., K, 1)
        x = sq.sub_(near).mul_(-0.5)
        a = torch.threshold_(x, LOG_FLUSH, float("-inf")).exp_()  # (..., K, P)
        a.div_(a.sum(-1, keepdim=True).clamp_min(torch.finfo(a.dtype).tiny))
        ctx.save_for_backward(pts_t, mu_t, inv_t, values, a)
        return (values.unsqueeze(-2) @ a).squeeze(-2)  # (..., P)

    @staticmethod
    def backward(ctx: Any, gw: Tensor) -> Any:
        pts_t, mu_t, inv_t, values, a = ctx.saved_tensors
        gv = (a @ gw.unsqueeze(-1)).squeeze(-1)  # (..., K)
        g = (gw.unsqueeze(-2) - gv.unsqueeze(-1)).mul_(a).mul_(values.unsqueeze(-1))  # (..., K, P)
        gmu, gsig = [], []
        for i in range(mu_t.shape[-2]):
            t = _scaled_column(pts_t, mu_t, inv_t, i)  # (..., K, P)
            gt = t.mul_(g)  # g * d
            gmu.append(gt.sum(-1))
            gsig.append((gt.mul_(_scaled_column(pts_t, mu_t, inv_t, i))).sum(-1))
        inv = inv_t.transpose(-1, -2)  # (..., K, L)
        gm = torch.stack(gmu, -1).mul_(inv)  # (..., K, L)
        gs = torch.stack(gsig, -1).mul_(inv)
        return None, gm, gs, gv, None
