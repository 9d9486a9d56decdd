"""Differentiable sorting: a sampled quicksort (sparse) and NeuralSort (dense, the reference).

**Quicksort** (seed 000, slides 31-37): do not learn to sort, sort by a learned key. The
sequence is padded to ``N = 2^L`` and split ``L`` times. At depth ``d`` the ``2^d`` buckets of
size ``m = N / 2^d`` are each split at their median pivot (the mean of the two middle keys);
element ``i`` goes up with probability ``p_i = sigmoid(c * (key_i - pivot))``. ``S`` candidate
choice vectors are drawn per bucket, each *balanced* (exactly ``m/2`` elements go up):

* candidate 0 is the rounded offsets: the ``m/2`` elements of highest (key, position) go up. This
  equals ``round(p)`` whenever the two middle keys differ, and breaks ties by position, so
  composing the hard candidates of all levels is exactly ``torch.sort(stable=True)``;
* candidates ``1..S-1`` are random balanced choices: the top half of ``logit(p) + Gumbel`` noise
  (``proposal="gumbel"``, draws near the rounded choice, where the gradient is) or of uniform
  noise (``proposal="uniform"``).

Each candidate is a stable partition (a cumulative sum gives every element's new position),
weighted by its probability ``prod_i p_i^up (1 - p_i)^(1 - up)`` (in log space); exact
duplicates are dropped and the weights normalised. A level's output is the weighted sum of its
``S`` sparse permutations applied to the items and the keys, so the gradient reaches the keys
through the weights. Memory is ``O(B S N F)`` per level, never ``O(N^2)``.

Padding: the ``N - n`` pad slots behave as ``+inf`` keys. They rank last in every bucket, so in
every candidate they stay at positions ``n..N-1`` and are cut off at the end; they never enter
the arithmetic (no infinities reach the gradient). Buckets whose real elements all go down (more
than half padding) carry no choice and contribute nothing to the weights.

**NeuralSort** (Grover et al., 2019): ``P[i, :] = softmax(((n + 1 - 2i) s - A_s 1) / tau)`` with
``A_s[j, k] = |s_j - s_k|``, a dense ``n x n`` relaxation; here in ascending order.

Axis letters: B batch, S candidates per level, G buckets, M bucket size, N padded length, F
flattened item features.
"""

from __future__ import annotations

import math
from typing import Literal, NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = [
    "SortLevel",
    "QuicksortResult",
    "quicksort",
    "apply_sort_level",
    "neuralsort",
    "quicksort_tuples",
]

Proposal = Literal["gumbel", "uniform"]
_PROPOSALS = ("gumbel", "uniform")


class SortLevel(NamedTuple):
    """One split level of :func:`quicksort`, on the padded length ``N``.

    Attributes:
        source: (B, S, N) int64; candidate ``s`` puts input position ``source[b, s, j]`` at output
            position ``j`` (a permutation per candidate).
        weight: (B, S) candidate weights, summing to 1 (duplicates get 0).
        values: (B, N, *F) the items after this level (pad slots are zero).
        keys: (B, N) the keys after this level (pad slots are zero).
    """

    source: Tensor
    weight: Tensor
    values: Tensor
    keys: Tensor


class QuicksortResult(NamedTuple):
    """What :func:`quicksort` returns: ``values`` (B, n, *F), ``keys`` (B, n) in ascending key
    order, and the per-level permutations (empty unless ``return_levels=True``)."""

    values: Tensor
    keys: Tensor
    levels: list[SortLevel]


def quicksort_tuples(n: int, samples: int) -> int:
    """The number of (output, input, weight) tuples one sequence of length ``n`` uses in
    training: ``samples`` permutations of the padded length per level, ``O(n log n)``."""
    depth = max(1, math.ceil(math.log2(n)))
    return samples * (1 << depth) * depth


def _check_keys(keys: Tensor, name: str = "keys") -> None:
    if not isinstance(keys, Tensor):
        raise TypeError(f"{name} must be a Tensor, got {type(keys).__name__}")
    if keys.dim() != 2:
        raise ValueError(f"{name} must have shape (B, n), got {tuple(keys.shape)}")
    if not keys.is_floating_point():
        raise TypeError(f"{name} must be a floating-point tensor, got {keys.dtype}")
    if keys.shape[1] < 2:
        raise ValueError(f"sequence length n must be >= 2, got {keys.shape[1]}")
    if keys.numel() and not bool(torch.isfinite(keys).all()):
        raise ValueError("keys must be finite (found NaN or inf)")


def _mix(t: Tensor, index: Tensor, weight: Tensor | None) -> Tensor:
    """``out[b, j] = sum_s weight[b, s] * t[b, index[b, s, j]]`` for ``t`` of shape (B, N, F)."""
    b, s, n = index.shape
    f = t.shape[-1]
    if weight is None:  # one hard candidate
        return t.gather(1, index[:, 0, :, None].expand(b, n, f))  # (B, N, F)
    picked = t[:, None].expand(b, s, n, f).gather(2, index[..., None].expand(b, s, n, f))
    # picked: (B, S, N, F)
    return torch.einsum("bs,bsnf->bnf", weight.to(t.dtype), picked)  # (B, N, F)


def _level(
    x: Tensor,
    k: Tensor,
    pad: Tensor,
    depth: int,
    samples: int,
    certainty: float | Tensor,
    proposal: Proposal,
    hard: bool,
    generator: torch.Generator | None,
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """One split level. x (B, N, F), k (B, N), pad (N,) bool -> (x', k', index, weight)."""
    b, n = k.shape
    g = 1 << depth
    m = n // g
    h = m // 2
    pad_b = pad.view(g, m)  # (G, M)
    # Pads rank last (as +inf keys); candidate choices carry no gradient.
    kd = k.detach().masked_fill(pad, math.inf).view(b, g, m)  # (B, G, M)
    order = torch.sort(kd, dim=-1, stable=True).indices  # (B, G, M)
    up0 = torch.zeros(b, g, m, dtype=torch.bool, device=k.device)
    up0.scatter_(-1, order[..., h:], True)
    weight: Tensor | None = None
    if hard or samples == 1:
        up = up0[:, None]  # (B, 1, G, M)
    else:
        kb = k.view(b, g, m)  # (B, G, M)
        pivot = 0.5 * (kb.gather(-1, order[..., h - 1 : h]) + kb.gather(-1, order[..., h : h + 1]))
        z = certainty * (kb - pivot)  # (B, G, M) logit of p
        noise_shape = (b, samples - 1, g, m)
        if proposal == "gumbel":
            u = torch.rand(noise_shape, generator=generator, device=k.device, dtype=k.dtype)
            u = u.clamp(1e-12, 1.0 - 1e-7)
            scores = z.detach()[:, None] - torch.log(-torch.log(u))  # (B, S-1, G, M)
        else:
            scores = torch.rand(noise_shape, generator=generator, device=k.device, dtype=k.dtype)
        scores = scores.masked_fill(pad_b, math.inf)
        top = torch.sort(scores, dim=-1, stable=True).indices[..., h:]  # (B, S-1, G, h)
        ups = torch.zeros(noise_shape, dtype=torch.bool, device=k.device)
        ups.scatter_(-1, top, True)
        up = torch.cat([up0[:, None], ups], dim=1)  # (B, S, G, M)
        # A real element is free if its bucket has more than m/2 real elements.
        real = ~pad_b
        free = real & (real.sum(-1, keepdim=True) > h)  # (G, M)
        # log P(s) = sum_i log(1 - p_i) + sum_i up_si * z_i, as log p - log(1 - p) = z. The first
        # sum is the same for every candidate and cancels in the normalisation.
        zf = (z * free).reshape(b, n)  # (B, N)
        flat = up.reshape(b, samples, n)  # (B, S, N)
        logw = torch.einsum("bsn,bn->bs", flat.to(zf.dtype), zf)  # (B, S)
        dup = torch.zeros(b, samples, dtype=torch.bool, device=k.device)
        for s in range(samples - 1):  # a static loop over candidates, not over data
            same = (flat[:, s + 1 :] == flat[:, s : s + 1]).all(-1)  # (B, S-s-1)
            dup[:, s + 1 :] |= same
        weight = torch.softmax(logw.masked_fill(dup, -math.inf), dim=1)  # (B, S)
    cand = up.shape[1]
    upl = up.long()
    dest = torch.where(up, h + upl.cumsum(-1) - 1, (1 - upl).cumsum(-1) - 1)  # (B, S, G, M)
    dest = (dest + torch.arange(g, device=k.device)[:, None] * m).reshape(b, cand, n)  # (B, S, N)
    index = torch.empty_like(dest).scatter_(
        -1, dest, torch.arange(n, device=k.device).expand(b, cand, n)
    )  # (B, S, N)
    x_out = _mix(x, index, weight)
    k_out = _mix(k[..., None], index, weight)[..., 0]  # (B, N)
    if weight is None:
        weight = torch.ones(b, cand, dtype=k.dtype, device=k.device)
    return x_out, k_out, index, weight


def quicksort(
    items: Tensor,
    keys: Tensor,
    *,
    samples: int = 4,
    certainty: float | Tensor = 10.0,
    hard: bool = False,
    proposal: Proposal = "gumbel",
    return_levels: bool = False,
    generator: torch.Generator | None = None,
) -> QuicksortResult:
    """Sort ``items`` by ``keys`` (ascending) with a differentiable sampled quicksort.

    Args:
        items: (B, n, *F) the things to sort (vectors, images, ...); floating point unless
            ``hard``.
        keys: (B, n) finite floating-point sort keys; the gradient reaches them in soft mode.
        samples: candidate partitions per level (1 = only the rounded one, no key gradient).
        certainty: ``c`` in ``sigmoid(c * (key - pivot))`` (about 10 in training).
        hard: exact stable sort (``torch.sort(stable=True)`` order), gradient to items only.
        proposal: how the random balanced candidates are drawn: ``"gumbel"`` (top half of
            ``logit(p)`` + Gumbel noise) or ``"uniform"`` (a uniformly random half).
        return_levels: also return the per-level sparse permutations and outputs.
        generator: torch generator for the random candidates.

    Returns:
        A :class:`QuicksortResult` ``(values, keys, levels)``.

    Shape:
        items (B, n, *F), keys (B, n) -> values (B, n, *F), keys (B, n); each level's
        ``source`` is (B, S, N) and ``weight`` (B, S) with ``N = 2^ceil(log2 n)``.

    Example:
        >>> keys = torch.tensor([[3.0, 1.0, 2.0]])
        >>> quicksort(keys[..., None], keys, hard=True).keys
        tensor([[1., 2., 3.]])
    """
    _check_keys(keys)
    if not isinstance(items, Tensor):
        raise TypeError(f"items must be a Tensor, got {type(items).__name__}")
    if items.dim() < 2 or items.shape[:2] != keys.shape:
        raise ValueError(
            f"items must have shape (B, n, *F) with (B, n) = {tuple(keys.shape)}, "
            f"got {tuple(items.shape)}"
        )
    if items.device != keys.device:
        raise ValueError(f"items are on {items.device} but keys on {keys.device}")
    if not hard and not items.is_floating_point():
        raise TypeError(f"items must be floating point for a soft sort, got {items.dtype}")
    if isinstance(samples, bool) or not isinstance(samples, int) or samples < 1:
        raise ValueError(f"samples must be an integer >= 1, got {samples!r}")
    if not isinstance(certainty, Tensor) and not (math.isfinite(certainty) and certainty > 0):
        raise ValueError(f"certainty must be a finite number > 0, got {certainty!r}")
    if proposal not in _PROPOSALS:
        raise ValueError(f"proposal must be one of {_PROPOSALS}, got {proposal!r}")

    b, n = keys.shape
    feat = items.shape[2:]
    depth = math.ceil(math.log2(n))
    size = 1 << depth
    x = items.reshape(b, n, math.prod(feat))  # (B, n, F)
    k = keys
    if size > n:
        x = F.pad(x, (0, 0, 0, size - n))  # (B, N, F)
        k = F.pad(k, (0, size - n))  # (B, N)
    pad = torch.arange(size, device=keys.device) >= n  # (N,)
    levels: list[SortLevel] = []
    for d in range(depth):
        x, k, index, weight = _level(
            x, k, pad, d, samples, certainty, proposal, hard, generator
        )
        if return_levels:
            levels.append(SortLevel(index, weight, x.reshape(b, size, *feat), k))
    values = x[:, :n].reshape(b, n, *feat)  # (B, n, *F)
    return QuicksortResult(values, k[:, :n], levels)


def apply_sort_level(level: SortLevel, x: Tensor, *, reverse: bool = False) -> Tensor:
    """Apply one level's weighted permutations to ``x``, or their transpose (``reverse``),
    e.g. to carry a target back to the level's input order (the original per-level loss).

    Args:
        level: a :class:`SortLevel` from ``quicksort(..., return_levels=True)``.
        x: (B, N, *F) on the padded length.
        reverse: scatter instead of gather (the transposed weighted permutation).

    Shape:
        x (B, N, *F) -> (B, N, *F).
    """
    b, s, n = level.source.shape
    if x.dim() < 2 or x.shape[:2] != (b, n):
        raise ValueError(f"x must have shape ({b}, {n}, *F), got {tuple(x.shape)}")
    flat = x.reshape(b, n, math.prod(x.shape[2:]))  # (B, N, F)
    f = flat.shape[-1]
    if not reverse:
        return _mix(flat, level.source, level.weight).reshape(x.shape)
    src = flat[:, None] * level.weight.to(flat.dtype)[:, :, None, None]  # (B, S, N, F)
    out = torch.zeros(b, n, f, dtype=flat.dtype, device=flat.device)
    idx = level.source.reshape(b, s * n, 1).expand(b, s * n, f)  # (B, S*N, F)
    out = out.scatter_add(1, idx, src.reshape(b, s * n, f))  # (B, N, F)
    return out.reshape(x.shape)


def neuralsort(scores: Tensor, tau: float = 1.0, *, hard: bool = False) -> Tensor:
    """NeuralSort's relaxed permutation matrix (Grover et al., 2019), ascending order.

    ``P[b, i, j]`` is the weight of input ``j`` at sorted position ``i``; each row is a softmax.
    From the paper's formula: for descending order, row ``i`` (1-based) is
    ``softmax(((n + 1 - 2i) s - A_s 1) / tau)`` with ``A_s[j, k] = |s_j - s_k|``; ascending is
    the descending sort of ``-s``. Dense ``O(n^2)`` memory: the baseline quicksort avoids.

    Args:
        scores: (B, n) floating-point scores.
        tau: temperature > 0.
        hard: straight-through: one-hot of each row's arg-max forward, the soft gradient back.

    Shape:
        scores (B, n) -> (B, n, n).

    Example:
        >>> p = neuralsort(torch.tensor([[3.0, 1.0, 2.0]]), tau=0.01)
        >>> (p @ torch.tensor([3.0, 1.0, 2.0])).round()
        tensor([[1., 2., 3.]])
    """
    _check_keys(scores, "scores")
    if not (math.isfinite(tau) and tau > 0):
        raise ValueError(f"tau must be a finite number > 0, got {tau!r}")
    n = scores.shape[1]
    s = -scores[..., None]  # (B, n, 1): ascending = descending of -s
    row_sums = (s - s.transpose(1, 2)).abs().sum(-1)  # (B, n): (A_s 1)_j
    scale = (n + 1 - 2 * torch.arange(1, n + 1, device=s.device, dtype=s.dtype))  # (n,)
    logits = scale[None, :, None] * s.transpose(1, 2) - row_sums[:, None, :]  # (B, n, n)
    p = torch.softmax(logits / tau, dim=-1)
    if hard:
        one_hot = F.one_hot(p.argmax(-1), n).to(p.dtype)  # (B, n, n)
        p = one_hot - p.detach() + p
    return p
