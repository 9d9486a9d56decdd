"""Relative-index coding of a sparse tensor's non-zero positions (Deep Compression, Sec. 3).

Positions are visited in row-major order; each stored entry records the number of zeros skipped
since the previous entry, in ``bits`` bits (5 for fully connected layers, 8 for convolutions in
the paper). A gap of ``2^bits`` or more does not fit: a **filler** entry (gap ``2^bits - 1``,
value zero) is inserted at the position that far ahead, as many times as needed. Trailing zeros
after the last entry are implied by the shape.

Decoding is ``positions = cumsum(gaps + 1) - 1``; fillers land on positions that are zero, so a
decoder that writes a zero value for them needs no special case.

Example:
    >>> mask = torch.zeros(20, dtype=torch.bool); mask[[1, 2, 19]] = True
    >>> gaps, filler = relative_indices(mask, bits=3)
    >>> gaps.tolist(), filler.tolist()
    ([1, 0, 7, 7, 0], [False, False, True, True, False])
    >>> relative_positions(gaps).tolist()
    [1, 2, 10, 18, 19]
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["relative_indices", "relative_positions", "DEFAULT_BITS"]

DEFAULT_BITS = {"linear": 5, "conv": 8}


def relative_indices(mask: Tensor, bits: int) -> tuple[Tensor, Tensor]:
    """Gaps between consecutive kept positions of ``mask`` (row-major), with filler entries.

    Args:
        mask: bool tensor of any shape (True = stored entry).
        bits: index width; gaps are in ``[0, 2^bits - 1]``.

    Returns:
        ``(gaps, is_filler)``: int64 ``(E,)`` and bool ``(E,)``, ``E = nnz + fillers``.

    Shape:
        mask: any -> ``(E,)``, ``(E,)``.
    """
    if not isinstance(mask, Tensor) or mask.dtype != torch.bool:
        raise TypeError(f"mask must be a bool tensor, got {getattr(mask, 'dtype', type(mask))}")
    if isinstance(bits, bool) or not isinstance(bits, int) or not 1 <= bits <= 32:
        raise ValueError(f"bits must be an int in [1, 32], got {bits!r}")
    span = 1 << bits
    pos = mask.reshape(-1).nonzero().squeeze(1)  # (nnz,)
    prev = torch.cat([pos.new_full((1,), -1), pos[:-1]])
    skipped = pos - prev - 1  # zeros between consecutive entries, (nnz,)
    fillers = torch.div(skipped, span, rounding_mode="floor")  # (nnz,)
    residual = skipped - fillers * span  # in [0, span - 1]
    counts = fillers + 1
    total = int(counts.sum())
    gaps = torch.full((total,), span - 1, dtype=torch.int64, device=mask.device)
    is_filler = torch.ones(total, dtype=torch.bool, device=mask.device)
    last = counts.cumsum(0) - 1  # index of each real entry, (nnz,)
    gaps[last] = residual
    is_filler[last] = False
    return gaps, is_filler


def relative_positions(gaps: Tensor) -> Tensor:
    """Absolute flat positions of every entry (fillers included): ``cumsum(gaps + 1) - 1``."""
    if gaps.dtype.is_floating_point or gaps.dtype == torch.bool:
        raise TypeError(f"gaps must be an integer tensor, got {gaps.dtype}")
    if gaps.numel() and int(gaps.min()) < 0:
        raise ValueError("gaps must be >= 0")
    return (gaps.reshape(-1).to(torch.int64) + 1).cumsum(0) - 1
