"""Sparse-times-dense contraction ``y[b, m] += w * x[b, n]`` without a dense weight matrix.

The weight tensor is a list of entries ``(out_index m, in_index n, weight w)`` over flattened
``out_shape`` / ``in_shape``; it is either shared by the whole batch, or each entry belongs to
one instance (``batch[j]``). Memory is O(entries + B * (M + N)); the custom backward recomputes
the gathered inputs instead of saving a (B, P) intermediate.

Axis letters: B batch, P entries, M flattened output size, N flattened input size.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

__all__ = ["sparse_contract"]


class _SharedContract(torch.autograd.Function):
    """One entry list for every instance. Works on the transposed input (N, B): gathering and
    scatter-adding whole rows of B floats is 2x faster than column gathers on (B, N)."""

    @staticmethod
    def forward(ctx: Any, x: Tensor, out_idx: Tensor, in_idx: Tensor, w: Tensor,
                out_size: int) -> Tensor:
        xt = x.T.contiguous()  # (N, B)
        src = xt.index_select(0, in_idx).mul_(w.unsqueeze(1))  # (P, B)
        yt = x.new_zeros(out_size, x.shape[0]).index_add_(0, out_idx, src)  # (M, B)
        ctx.save_for_backward(xt, out_idx, in_idx, w)
        return yt.T  # (B, M)

    @staticmethod
    def backward(ctx: Any, gy: Tensor) -> Any:
        xt, out_idx, in_idx, w = ctx.saved_tensors
        gys = gy.T.contiguous().index_select(0, out_idx)  # (P, B)
        gx = gw = None
        if ctx.needs_input_grad[3]:
            gw = (gys * xt.index_select(0, in_idx)).sum(1)  # (P,)
        if ctx.needs_input_grad[0]:
            gx = torch.zeros_like(xt).index_add_(0, in_idx, gys.mul_(w.unsqueeze(1))).T  # (B, N)
        return gx, None, None, gw, None


class _BatchedContract(torch.autograd.Function):
    """Entries that each belong to one instance, as flat indices into (B*M) and (B*N)."""

    @staticmethod
    def forward(ctx: Any, x: Tensor, flat_out: Tensor, flat_in: Tensor, w: Tensor,
                out_size: int) -> Tensor:
        b = x.shape[0]
        xf = x.reshape(-1)  # (B*N,)
        y = x.new_zeros(b * out_size).index_add_(0, flat_out, xf.index_select(0, flat_in) * w)
        ctx.save_for_backward(x, flat_out, flat_in, w)
        return y.view(b, out_size)  # (B, M)

    @staticmethod
    def backward(ctx: Any, gy: Tensor) -> Any:
        x, flat_out, flat_in, w = ctx.saved_tensors
        gys = gy.reshape(-1).index_select(0, flat_out)  # (P,)
        gx = gw = None
        if ctx.needs_input_grad[0]:
            gx = torch.zeros(x.numel(), dtype=x.dtype, device=x.device)
            gx = gx.index_add_(0, flat_in, gys * w).view_as(x)
        if ctx.needs_input_grad[3]:
            gw = gys * x.reshape(-1).index_select(0, flat_in)
        return gx, None, None, gw, None


def sparse_contract(x: Tensor, out_idx: Tensor, in_idx: Tensor, weights: Tensor, out_size: int,
                    batch: Tensor | None = None) -> Tensor:
    """``y[b, out_idx[j]] += weights[j] * x[b, in_idx[j]]`` for every entry j.

    Duplicate entries add up (like an uncoalesced sparse tensor). Differentiable w.r.t. ``x``
    and ``weights``; the indices carry no gradient.

    Args:
        x: the flattened input.
        out_idx: flattened output index of each entry, in ``[0, out_size)``.
        in_idx: flattened input index of each entry, in ``[0, N)``.
        weights: the weight of each entry.
        out_size: M, the flattened output size.
        batch: ``None`` when the entries are shared by all instances, else the instance of each
            entry (in ``[0, B)``).

    Shape:
        x: (B, N); out_idx, in_idx, weights, batch: (P,); output: (B, M).

    Example:
        >>> x = torch.tensor([[1.0, 2.0, 3.0]])
        >>> out_idx, in_idx = torch.tensor([0, 1]), torch.tensor([2, 0])
        >>> sparse_contract(x, out_idx, in_idx, torch.tensor([1.0, 5.0]), 2)
        tensor([[3., 5.]])
    """
    if x.dim() != 2:
        raise ValueError(f"x must have shape (B, N), got {tuple(x.shape)}")
    if out_idx.dim() != 1 or in_idx.shape != out_idx.shape or weights.shape != out_idx.shape:
        raise ValueError(
            "out_idx, in_idx and weights must be 1-D of equal length, got "
            f"{tuple(out_idx.shape)}, {tuple(in_idx.shape)}, {tuple(weights.shape)}"
        )
    if out_idx.dtype != torch.long or in_idx.dtype != torch.long:
        raise TypeError(f"indices must be int64, got {out_idx.dtype} and {in_idx.dtype}")
    if out_size < 0:
        raise ValueError(f"out_size must be >= 0, got {out_size}")
    w = weights.to(x.dtype)
    if batch is None:
        return _SharedContract.apply(x, out_idx, in_idx, w, out_size)
    if batch.shape != out_idx.shape:
        raise ValueError(f"batch must have shape {tuple(out_idx.shape)}, got {tuple(batch.shape)}")
    n = x.shape[1]
    return _BatchedContract.apply(x, batch * out_size + out_idx, batch * n + in_idx, w, out_size)
