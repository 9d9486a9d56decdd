"""All-pairs hyperlayer weights for wide deviations: a low-rank Gauss transform.

The weights ``w(p) = sum_k v_k N_k(p) / Z_k`` need, for every tuple, a sum over every point of
its context (``Z_k``) and, for every point, a sum over every tuple: O(K * P) pairs, the cost of
exact all-pairs normalisation while the deviations are wide (the start of training), where
neighbour hashing cannot prune anything. But a wide Gaussian is smooth, and each tuple's density
factors over the learned columns, ``N_k(p) = prod_r g_kr(p_r)`` with
``g_kr(x) = exp(-(x - mu_kr)^2 / (2 sigma_kr^2))``. Interpolating each factor at ``m_r``
Chebyshev points of the points' range in column r,

    g_kr(x) ~= sum_j a_krj T_j(t_r(x)),     T_j: Chebyshev polynomials, t_r: the range -> [-1, 1],

turns both sums into small matrix products: with ``C_r = T(t_r(p))`` (P, m_r) and the
coefficients ``A_r`` (K, m_r),

    Z = rowsum((A_0 @ (C_0^T diag(keep) C_rest)) * A_rest),    (K,)
    w = rowsum((C_0 @ (A_0^T diag(v / Z) A_rest)) * C_rest),   (P,)

where ``C_rest``/``A_rest`` are the row-wise Kronecker products of the other columns (just
``C_1``/``A_1`` for a matrix). That is O((P + K) * prod_r m_r) instead of O(K * P), and the
number of points ``m_r`` depends only on how wide the Gaussians are relative to the range
(``half_range / min sigma``), not on n. Autograd differentiates it (the exps are only K * m_r).

Accuracy: ``m_r`` is chosen from the Chebyshev interpolation bound for functions analytic in
a Bernstein ellipse (Trefethen, *Approximation Theory and Approximation Practice*, Thm 8.2):
on the ellipse with parameter rho, ``|g| <= exp(h^2 b^2 / (2 sigma^2))`` with ``h`` the
half-range and ``b = (rho - 1/rho) / 2``, so the error is at most
``4 exp(h^2 b^2 / (2 sigma^2)) rho^-(m-1) / (rho - 1)`` for m points (degree m - 1),
minimised over rho. The target is an
absolute error ``eps`` per factor with ``eps * P`` below ``CHEBYSHEV_TOLERANCE``, so each
``Z_k`` (which is at least ~1: a tuple's own corner points are in its context) is accurate to
about ``L * CHEBYSHEV_TOLERANCE`` relative; a context whose ``Z_k`` comes out below
``CHEBYSHEV_MIN_Z`` (only possible for hand-made points far from a tuple) is recomputed exactly.
Sums over points run in the weights' dtype, everything else in float64.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor

__all__ = ["chebyshev_nodes_needed", "chebyshev_degrees", "chebyshev_plan", "chebyshev_weights",
           "CHEBYSHEV_TOLERANCE", "CHEBYSHEV_MAX_NODES", "CHEBYSHEV_MAX_PER_COLUMN"]

#: Target bound on ``eps * P`` (eps: the absolute interpolation error of one Gaussian factor).
CHEBYSHEV_TOLERANCE = 1e-8
#: Most interpolation points the path will use: in all (the product over learned columns; the
#: core is (range + K) x this) and per column (each column's transform is m x m).
CHEBYSHEV_MAX_NODES = 2**16
CHEBYSHEV_MAX_PER_COLUMN = 256
#: Longest column range the path tables (``max(this, 4 * P)``; the table is range x m).
CHEBYSHEV_MIN_TABLE = 4096
#: Smallest normaliser the path trusts (below it, the context is recomputed exactly).
CHEBYSHEV_MIN_Z = 0.1

_RHOS = [1.0 + 0.02 * 1.15**i for i in range(40)]  # 1.02 ... ~4.4e1, geometric


def chebyshev_nodes_needed(half_range: float, sigma: float, eps: float) -> int:
    """Fewest Chebyshev points that interpolate every ``exp(-(x - mu)^2 / (2 sigma^2))`` (any
    real ``mu``) on an interval of half-length ``half_range`` to absolute error ``eps`` (the
    Bernstein-ellipse bound; see the module docstring).

    Example:
        >>> chebyshev_nodes_needed(512.0, 150.0, 1e-13)
        38
    """
    if not (sigma > 0 and eps > 0 and half_range >= 0):
        raise ValueError(f"need sigma > 0, eps > 0, half_range >= 0; got {sigma}, {eps}, "
                         f"{half_range}")
    if half_range == 0:
        return 1
    a = half_range / sigma
    best = math.inf
    for rho in _RHOS:
        b = (rho - 1 / rho) / 2
        log_bound = (a * b) ** 2 / 2 + math.log(4 / (rho - 1)) - math.log(eps)
        # m first-kind points interpolate with degree m - 1: the bound is rho^-(m - 1)
        best = min(best, 1 + math.ceil(max(log_bound, 0.0) / math.log(rho)))
    return max(int(best), 1)


def chebyshev_degrees(half_ranges: Sequence[float], sigma_mins: Sequence[float],
                      points: int) -> list[int] | None:
    """Chebyshev points per learned column for a context of ``points`` points whose column r
    spans ``2 * half_ranges[r]`` with smallest deviation ``sigma_mins[r]``; None where the path
    does not pay: more than :data:`CHEBYSHEV_MAX_NODES` points in all or
    :data:`CHEBYSHEV_MAX_PER_COLUMN` in a column (narrow deviations), or a column range longer
    than ``max(CHEBYSHEV_MIN_TABLE, 4 * points)`` (its table would outgrow the points).

    Example:
        >>> chebyshev_degrees([511.5, 511.5], [152.0, 152.0], 12288)
        [36, 36]
        >>> chebyshev_degrees([511.5, 511.5], [8.0, 8.0], 12288) is None
        True
    """
    if not all(s > 0 and math.isfinite(s) for s in sigma_mins):
        return None
    longest = max(CHEBYSHEV_MIN_TABLE, 4 * int(points))
    if any(not math.isfinite(h) or 2 * h + 1 > longest for h in half_ranges):
        return None
    eps = CHEBYSHEV_TOLERANCE / max(int(points), 1)
    ms: list[int] = []
    total = 1
    for h, s in zip(half_ranges, sigma_mins):
        m = chebyshev_nodes_needed(h, s, eps)
        ms.append(m)
        total *= m
        if m > CHEBYSHEV_MAX_PER_COLUMN or total > CHEBYSHEV_MAX_NODES:
            return None
    return ms


def chebyshev_plan(points: Tensor, sigmas: Tensor, learn: Sequence[int]
                   ) -> tuple[list[int], list[int], list[int]] | None:
    """The integer range ``(lo, hi)`` of the points and the number of Chebyshev points of each
    learned column (:func:`chebyshev_degrees`), or None where the path does not apply: float
    points, empty input, a zero sigma, or too many Chebyshev points. One host sync.

    Shape:
        points: (..., P, R) integer; sigmas: (..., K, L).
    """
    if points.is_floating_point() or points.numel() == 0 or sigmas.numel() == 0:
        return None
    cols = torch.as_tensor(list(learn), dtype=torch.long, device=points.device)
    pts = points.index_select(-1, cols).flatten(0, -2).to(torch.float64)  # (B*P, L)
    smin = sigmas.detach().flatten(0, -2).to(torch.float64).amin(0)  # (L,)
    lo, hi, smin_l = torch.stack([pts.amin(0), pts.amax(0), smin]).tolist()  # (3, L)
    ms = chebyshev_degrees([(b - a) / 2 for a, b in zip(lo, hi)], smin_l, points.shape[-2])
    return None if ms is None else ([int(a) for a in lo], [int(b) for b in hi], ms)


_CACHE: dict[tuple[int, int, int, torch.device], tuple[Tensor, Tensor, Tensor]] = {}
#: Bytes the cache of tables may hold (cleared when a new entry would pass it).
_CACHE_BYTES = 64 * 2**20


def _constants(lo: int, hi: int, m: int, device: torch.device
               ) -> tuple[Tensor, Tensor, Tensor]:
    """Cached per (range, m): the Chebyshev table ``T_j(t(i))`` at the integers i of
    ``[lo, hi]`` (hi - lo + 1, m), the m first-kind Chebyshev points of ``[lo, hi]`` (m,), and
    the discrete cosine transform (m_l, m_j) that maps values at those points to coefficients.
    All float64; callers must not modify them."""
    key = (lo, hi, m, torch.device(device))
    hit = _CACHE.get(key)
    if hit is not None:
        return hit
    grid = torch.arange(lo, hi + 1, dtype=torch.float64, device=device)
    if m == 1 or hi <= lo:
        table = torch.ones(grid.shape + (1,), dtype=torch.float64, device=device)
        nodes = torch.full((1,), (lo + hi) / 2, dtype=torch.float64, device=device)
        dct = torch.ones(1, 1, dtype=torch.float64, device=device)
    else:
        j = torch.arange(m, dtype=torch.float64, device=device)
        t = ((2 * grid - (lo + hi)) / (hi - lo)).clamp(-1.0, 1.0)
        table = torch.cos(torch.acos(t).unsqueeze(-1) * j)  # (hi - lo + 1, m)
        theta = (j + 0.5) * (math.pi / m)
        nodes = (lo + hi) / 2 + (hi - lo) / 2 * torch.cos(theta)  # (m,)
        dct = torch.cos(j.unsqueeze(-1) * theta) * (2.0 / m)  # (m_j, m_l)
        dct[0] *= 0.5
        dct = dct.transpose(0, 1).contiguous()  # (m_l, m_j)
    held = sum(sum(t.numel() * t.element_size() for t in v) for v in _CACHE.values())
    if held + table.numel() * 8 > _CACHE_BYTES:
        _CACHE.clear()
    _CACHE[key] = (table, nodes, dct)
    return table, nodes, dct


def _coefficients(mu: Tensor, sigma: Tensor, nodes: Tensor, dct: Tensor) -> Tensor:
    """Chebyshev coefficients of each tuple's factor ``exp(-(x - mu)^2 / (2 sigma^2))``,
    interpolated at the Chebyshev points ``nodes`` (a discrete cosine transform).

    Shape:
        mu, sigma: (..., K); output: (..., K, m).
    """
    g = torch.exp(-0.5 * ((nodes - mu.unsqueeze(-1)) / sigma.unsqueeze(-1)).square())  # (.., K, m)
    return g @ dct


def _row_kron(parts: list[Tensor]) -> Tensor:
    """Row-wise Kronecker product of (..., N, m_i) matrices: (..., N, prod m_i)."""
    out = parts[0]
    for p in parts[1:]:
        out = (out.unsqueeze(-1) * p.unsqueeze(-2)).flatten(-2)  # (..., N, m_a * m_b)
    return out


def chebyshev_weights(points: Tensor, keep: Tensor | None, means: Tensor, sigmas: Tensor,
                      values: Tensor, learn: Sequence[int],
                      plan: tuple[list[int], list[int], list[int]] | None = None
                      ) -> Tensor | None:
    """All-pairs weights ``w(p) = sum_k v_k N_k(p) / Z_k`` through the low-rank Gauss transform
    of the module docstring, or None where it does not apply (``plan`` is None: too narrow, or
    points not integer; contexts of points and tuples that differ; template (fixed) columns,
    i.e. ``learn`` not every column; or a normaliser below :data:`CHEBYSHEV_MIN_Z`). Two host
    syncs (the plan, the normaliser check).

    Points are integers, so each column's Chebyshev values come from a table over the integers
    of its range, and every product over the P points runs on that table instead: e.g.
    ``sum_p C_0[p] (x) u_p = T_0^T @ (u summed into the rows p_0)``. The cost is
    O(P * m_rest + (range + K) * m_0 * m_rest); nothing is O(P * m_0 * m_rest).

    Args:
        points, keep, means, sigmas, values, learn: as for
            :func:`hypersparse.functional.point_weights` (points: an integer dtype).
        plan: a :func:`chebyshev_plan` result (computed here if None).

    Shape:
        points: (..., P, R); keep: (..., P); means: (..., K, R); sigmas: (..., K, L);
        values: (..., K); output: (..., P) in ``values``' dtype.

    Example:
        >>> pts = torch.cartesian_prod(torch.arange(16), torch.arange(16))
        >>> w = chebyshev_weights(pts, None, torch.tensor([[3.2, 7.9]]),
        ...                       torch.full((1, 2), 6.0), torch.ones(1), [0, 1])
        >>> round(float(w.sum()), 6)
        1.0
    """
    learn = list(learn)
    if means.shape[:-2] != points.shape[:-2] or sorted(learn) != list(range(means.shape[-1])):
        return None  # contexts must match one to one; template columns are not interpolated
    if plan is None:
        plan = chebyshev_plan(points, sigmas, learn)
        if plan is None:
            return None
    lo, hi, ms = plan
    dev = points.device
    # Sums over points run in the weights' dtype (float32 sums of a few T_j in [-1, 1] per table
    # row, rounding ~1e-7, the weights' own); sums over tuples and the table in float64.
    pdt = torch.float64 if values.dtype == torch.float64 else torch.float32
    lead = points.shape[:-2]  # (...) contexts
    nctx, p = math.prod(lead), points.shape[-2]
    cols = torch.as_tensor(learn, dtype=torch.long, device=dev)
    idx = (points.index_select(-1, cols) - torch.as_tensor(lo, device=dev))  # (..., P, L)
    mu = means.index_select(-1, cols).to(torch.float64)  # (..., K, L)
    sig = sigmas.to(torch.float64)
    consts = [_constants(lo[i], hi[i], ms[i], dev) for i in range(len(learn))]
    coef = [_coefficients(mu[..., i], sig[..., i], consts[i][1], consts[i][2])
            for i in range(len(learn))]  # (..., K, m_i)
    c_rest = _row_kron([consts[i][0].to(pdt).index_select(0, idx[..., i].reshape(-1))
                        for i in range(1, len(learn))]) if len(learn) > 1 else \
        torch.ones(nctx * p, 1, dtype=pdt, device=dev)  # (C*P, m_rest)
    a_rest = _row_kron(coef[1:]) if len(learn) > 1 else coef[0].new_ones(
        coef[0].shape[:-1] + (1,))  # (..., K, m_rest)
    m_rest = c_rest.shape[-1]
    table0 = consts[0][0]  # (n0, m0)
    n0 = table0.shape[0]
    # the row of the (contexts * n0) table each point falls in; points that do not count go to
    # one extra row, which is dropped
    row = idx[..., 0].reshape(nctx, p)  # (C, P)
    row = (row + torch.arange(nctx, device=dev).unsqueeze(-1) * n0).reshape(-1)  # (C*P,)
    sink = row if keep is None else torch.where(keep.reshape(-1), row, nctx * n0)
    summed = c_rest.new_zeros(nctx * n0 + 1, m_rest).index_add_(0, sink, c_rest)
    summed = summed[:-1].to(torch.float64).view(lead + (n0, m_rest))  # (..., n0, m_rest)
    moments = table0.transpose(0, 1) @ summed  # (..., m0, m_rest)
    z = ((coef[0] @ moments) * a_rest).sum(-1)  # (..., K)
    if bool((z.detach() < CHEBYSHEV_MIN_Z).any()):
        return None
    c = values.to(torch.float64) / z  # (..., K)
    q = (coef[0] * c.unsqueeze(-1)).transpose(-1, -2) @ a_rest  # (..., m0, m_rest)
    grid_w = (table0 @ q).to(pdt).reshape(nctx * n0, m_rest)  # (C*n0, m_rest): per table row
    w = (grid_w.index_select(0, row) * c_rest).sum(-1).view(lead + (p,))  # (..., P)
    if keep is not None:
        w = w * keep.to(w.dtype)
    return w.to(values.dtype)
