"""Random hyperlayer normalisation contexts shared by the weight-path tests."""

from __future__ import annotations

import torch

from hypersparse.functional import bound_sigmas, first_occurrence, linear_index, sample_points


def context(sizes: list[int], k: int, lead: tuple[int, ...], sigma_scale: float, seed: int,
            dtype: torch.dtype = torch.float64) -> tuple[torch.Tensor, ...]:
    """``(points, keep, means, sigmas, values)`` of K random tuples over ``sizes``, with the
    layer's sampled points (``lead``: extra context dimensions)."""
    g = torch.Generator().manual_seed(seed)
    means = torch.rand(*lead, k, len(sizes), generator=g, dtype=dtype)
    means = means * (torch.tensor(sizes, dtype=dtype) - 1)
    raw = torch.randn(*lead, k, generator=g, dtype=dtype)
    sig = bound_sigmas(raw, sizes, sigma_scale=sigma_scale)
    vals = torch.randn(*lead, k, generator=g, dtype=dtype)
    pts = sample_points(means, sizes, list(range(len(sizes))), region=[min(4, s) for s in sizes],
                        generator=g).flatten(-3, -2)
    keep = first_occurrence(linear_index(pts, sizes))
    return pts, keep, means, sig, vals
