"""Neighbour-limited normalisation of hyperlayer point weights (issue 5).

Exact all-pairs normalisation evaluates every (tuple, point) pair of a context: O(K * P) with
P = K * S. Here each tuple only sees the points within a box of half-width
``max(cutoff * sigma, sqrt(R'))`` around its mean (per learned column); the points are bucketed by
spatial hashing on a grid sized by the median half-width, each tuple enumerates the grid cells
its box overlaps, and a sorted array of cell keys finds their points. Densities and normalisers are
computed in log space over the pairs found. Template columns and the batch index are part of the
cell key (they are exact-match dimensions).

What the cutoff drops: a point outside the box is more than ``cutoff`` deviations away in some
column (density below ``exp(-cutoff^2 / 2)`` of the peak), or further than ``sqrt(R')`` when
sigma is tiny, where the nearest corner is always within ``sqrt(R') / 2``; in both cases its
density is below ``exp(-3 cutoff^2 / 8)`` of the tuple's nearest corner (8e-5 for cutoff 5).

Axis letters: K tuples, P points, E evaluated (tuple, point) pairs, C (tuple, cell) pairs.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor

from .hyper import LOG_FLUSH, const

__all__ = ["neighbour_pairs", "neighbour_weights"]


def _mixed_radix(digits: Sequence[Tensor], radices: Sequence[int | Tensor]) -> Tensor:
    key = torch.zeros_like(digits[0])
    for d, r in zip(digits, radices):
        key = key * r + d
    return key


def neighbour_pairs(points: Tensor, keep: Tensor | None, means: Tensor, sigmas: Tensor,
                    sizes: Sequence[int], learn: Sequence[int], *,
                    cutoff: float = 5.0) -> tuple[Tensor, Tensor]:
    """The (tuple, point) pairs a neighbour-limited normalisation evaluates.

    Args:
        points: integer points of each context; ``keep`` marks the ones that count.
        means, sigmas: tuples in index space (means full rank, sigmas over learned columns).
        sizes: the R dimension sizes; learn: the learned columns.
        cutoff: box half-width in standard deviations.

    Shape:
        points: (..., P, R); keep: (..., P); means: (..., K, R); sigmas: (..., K, L).
        Returns two (E,) int64 tensors: flat tuple indices into ``means.reshape(-1, R)`` and
        flat point indices into ``points.reshape(-1, R)``.
    """
    r = means.shape[-1]
    lead = means.shape[:-2]
    nb = math.prod(lead)
    k, p = means.shape[-2], points.shape[-2]
    learn = list(learn)
    fixed = [c for c in range(r) if c not in learn]
    dev = means.device
    pts = points.reshape(nb * p, r)  # (B*P, R)
    if nb * k == 0 or nb * p == 0:
        empty = torch.zeros(0, dtype=torch.long, device=dev)
        return empty, empty
    if keep is not None:
        pid = keep.reshape(-1).nonzero().squeeze(1)  # (P',) kept points
    else:
        pid = torch.arange(nb * p, device=dev)
    mu = means.detach().reshape(nb * k, r)  # (B*K, R)
    sg = sigmas.detach().reshape(nb * k, len(learn))  # (B*K, L)

    half = torch.clamp(sg * cutoff, min=max(1.0, math.sqrt(len(learn))))  # (B*K, L)
    # grid: cells of the median half-width (a box spans <= 3 cells per column) in 1-2 learned
    # columns; twice that above, where 3^R' cells per tuple would cost more than their points
    grow = 1.0 if len(learn) <= 2 else 2.0
    med = half.median(0).values.tolist() if len(learn) else []
    cell = [max(1, int(grow * h)) for h in med]
    ncell = [-(-sizes[c] // h) for c, h in zip(learn, cell)]

    # keys of the kept points: (batch, fixed columns, learned cells) in mixed radix
    kp = pts.index_select(0, pid)  # (P', R)
    digits = ([pid // p] if nb > 1 else []) + [kp[:, c] for c in fixed]
    digits += [kp[:, c] // h for c, h in zip(learn, cell)]
    radices = ([nb] if nb > 1 else []) + [sizes[c] for c in fixed] + ncell
    pkey, order = torch.sort(_mixed_radix(digits, radices))  # (P',)

    # each tuple's box of cells
    mu_l = mu[:, learn]  # (B*K, L)
    h = torch.tensor(cell, device=dev, dtype=mu.dtype)
    hi_cell = torch.tensor(ncell, device=dev) - 1
    lo = ((mu_l - half) / h).floor().long().clamp_(min=0)  # (B*K, L)
    hi = torch.minimum(((mu_l + half) / h).floor().long(), hi_cell)  # (B*K, L)
    ext = hi - lo + 1  # (B*K, L)
    count = ext.prod(1)  # (B*K,)
    tup = torch.repeat_interleave(count)  # (C,) tuple of each (tuple, cell) pair
    start = torch.cumsum(count, 0) - count
    off = torch.arange(tup.shape[0], device=dev) - start.index_select(0, tup)  # (C,)
    cells = []
    for i in reversed(range(len(learn))):  # decode the mixed-radix offset, one column at a time
        e_i = ext[:, i].index_select(0, tup)  # (C,)
        cells.append(lo[:, i].index_select(0, tup) + off % e_i)
        off = off // e_i
    cells.reverse()
    fixed_t = mu.index_select(0, tup)[:, fixed].round().long() if fixed else None
    qdigits = [tup // k] if nb > 1 else []
    qdigits += [fixed_t[:, j] for j in range(len(fixed))] if fixed_t is not None else []
    qkey = _mixed_radix(qdigits + cells, radices)  # (C,)
    first = torch.searchsorted(pkey, qkey)
    last = torch.searchsorted(pkey, qkey, right=True)
    n_in = last - first  # (C,)
    pair = torch.repeat_interleave(n_in)  # (E,) the (tuple, cell) pair of each evaluated pair
    pstart = torch.cumsum(n_in, 0) - n_in
    pos = first.index_select(0, pair) + torch.arange(pair.shape[0], device=dev) \
        - pstart.index_select(0, pair)  # (E,)
    point = pid.index_select(0, order.index_select(0, pos))  # (E,)
    return tup.index_select(0, pair), point


def neighbour_weights(points: Tensor, keep: Tensor | None, means: Tensor, sigmas: Tensor,
                      values: Tensor, learn: Sequence[int], *, cutoff: float = 5.0,
                      sizes: Sequence[int] | None = None) -> Tensor:
    """:func:`hypersparse.functional.point_weights` restricted to neighbouring pairs.

    Differentiable w.r.t. ``means``, ``sigmas`` and ``values``. ``sizes`` defaults to
    ``points.max() + 1`` per column (only the grid's extent depends on it).

    Shape:
        as :func:`hypersparse.functional.point_weights`: output (..., P).
    """
    r = means.shape[-1]
    lead = means.shape[:-2]
    nb, k, p = math.prod(lead), means.shape[-2], points.shape[-2]
    learn = list(learn)
    if sizes is None:
        sizes = (points.reshape(-1, r).amax(0) + 1).tolist() if points.numel() else [1] * r
    t, q = neighbour_pairs(points, keep, means, sigmas, sizes, learn, cutoff=cutoff)
    cols = const(learn, torch.long, means.device)
    mu = means.reshape(nb * k, r).index_select(1, cols)  # (B*K, L)
    pl = points.reshape(nb * p, r).index_select(1, cols).to(means.dtype)  # (B*P, L)
    sg = sigmas.reshape(nb * k, len(learn))  # (B*K, L)
    d = (pl.index_select(0, q) - mu.index_select(0, t)) / sg.index_select(0, t)  # (E, L)
    logd = -0.5 * (d * d).sum(1)  # (E,)
    peak = torch.full((nb * k,), float("-inf"), dtype=logd.dtype, device=logd.device)
    peak = peak.scatter_reduce(0, t, logd.detach(), reduce="amax")  # (B*K,)
    rel = logd - peak.index_select(0, t)  # (E,) <= 0; differentiable w.r.t. logd
    small = rel.detach() < LOG_FLUSH  # subnormal results are slow: flush them to zero
    e = torch.exp(rel.clamp(min=LOG_FLUSH)).masked_fill(small, 0.0)  # (E,)
    z = torch.zeros(nb * k, dtype=e.dtype, device=e.device).index_add(0, t, e)  # (B*K,)
    share = e / z.index_select(0, t) * values.reshape(nb * k).to(e.dtype).index_select(0, t)
    w = torch.zeros(nb * p, dtype=e.dtype, device=e.device).index_add(0, q, share)  # (B*P,)
    return w.reshape(lead + (p,))  # (..., P)
