"""Sparse-times-dense contraction ``y[b, m] += w * x[b, n]`` without a dense weight matrix.

The weight tensor is a list of entries ``(out_index m, in_index n, weight w)`` over flattened
``out_shape`` / ``in_shape``; it is either shared by the whole batch, or each entry belongs to
one instance (``batch[j]``). Memory is O(entries + B * (M + N)): the shared case is a weighted
``embedding_bag``, forward and weight gradient (no (P, B) intermediate above
``GATHER_MAX_ELEMENTS``); the batched case's custom backward recomputes the gathered inputs
instead of saving them.

Axis letters: B batch, P entries, M flattened output size, N flattened input size.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["sparse_contract"]

# Below this many gathered elements (P * B; 256 KB of float32, glibc's default mmap threshold)
# the weight gradient gathers its (P, B) rows: cheaper than recomputing embedding_bag through
# autograd, and too small for the allocator to return them to the kernel every step.
GATHER_MAX_ELEMENTS = 2**16


class _SharedContract(torch.autograd.Function):
    """One entry list for every instance, on the transposed input (N, B), entries grouped by
    output row. Forward: a weighted ``embedding_bag`` (bag m = the entries of output row m).
    Weight gradient: ``embedding_bag``'s own per-sample-weight gradient (one length-B dot
    product per entry; small problems gather instead, see ``GATHER_MAX_ELEMENTS``). Neither
    builds the (P, B) gathered rows of an ``index_select`` pair: at n = 256 those were ~3 MB of
    temporaries per train step, which glibc returned to the kernel and faulted back in every
    step. The input gradient (not needed by a first layer) gathers."""

    @staticmethod
    def forward(ctx: Any, x: Tensor, out_idx: Tensor, in_idx: Tensor, w: Tensor,
                out_size: int, grouped: bool) -> Tensor:
        if grouped:
            order, rows, cols, ws = None, out_idx, in_idx, w
        else:
            order = torch.argsort(out_idx)  # (P,) entries grouped by output row: the bags
            rows, cols, ws = out_idx[order], in_idx[order], w[order]
        bags = torch.searchsorted(rows, torch.arange(out_size + 1, device=rows.device))  # (M+1,)
        xt = x.T.contiguous()  # (N, B)
        yt = F.embedding_bag(cols, xt, bags, mode="sum", per_sample_weights=ws,
                             include_last_offset=True)  # (M, B)
        ctx.save_for_backward(xt, order, rows, cols, bags, ws)
        return yt.T  # (B, M)

    @staticmethod
    def backward(ctx: Any, gy: Tensor) -> Any:
        xt, order, rows, cols, bags, ws = ctx.saved_tensors
        gyt = gy.T.contiguous()  # (M, B)
        gx = gw = None
        if ctx.needs_input_grad[3]:
            if rows.numel() * xt.shape[1] <= GATHER_MAX_ELEMENTS:  # small: two gathers
                gws = (gyt.index_select(0, rows) * xt.index_select(0, cols)).sum(1)  # (P,)
            else:
                with torch.enable_grad():  # recompute the (cheap) bags for their weight grad
                    leaf = ws.detach().requires_grad_()
                    yt = F.embedding_bag(cols, xt, bags, mode="sum", per_sample_weights=leaf,
                                         include_last_offset=True)  # (M, B)
                    (gws,) = torch.autograd.grad(yt, leaf, gyt)
            gw = gws if order is None else torch.empty_like(gws).index_copy_(0, order, gws)
        if ctx.needs_input_grad[0]:
            gys = gyt.index_select(0, rows).mul_(ws.unsqueeze(1))  # (P, B)
            gx = torch.zeros_like(xt).index_add_(0, cols, gys).T  # (B, N)
        return gx, None, None, gw, None, None


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
                    batch: Tensor | None = None, *, grouped: bool = False) -> Tensor:
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
        grouped: the (shared) entries are already sorted by ``out_idx``; skips a sort. Checked
            on the CPU.

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
    for name, idx, size in (("out_idx", out_idx, out_size), ("in_idx", in_idx, x.shape[1])):
        # checked where it costs no device sync (kernels raise on CUDA for in_idx)
        if idx.numel() and idx.device.type == "cpu":
            lo, hi = (int(v) for v in torch.aminmax(idx))
            if lo < 0 or hi >= size:
                raise ValueError(f"{name} must lie in [0, {size}), got values in [{lo}, {hi}]")
    w = weights.to(x.dtype)
    if batch is None:
        if x.shape[0] == 0:  # an empty batch (embedding_bag rejects zero-width rows)
            return x.new_zeros(0, out_size) + 0 * (x.sum() + w.sum())
        if grouped and out_idx.device.type == "cpu" and bool((out_idx[1:] < out_idx[:-1]).any()):
            raise ValueError("grouped=True needs out_idx sorted in non-decreasing order")
        return _SharedContract.apply(x, out_idx, in_idx, w, out_size, grouped)
    if batch.shape != out_idx.shape:
        raise ValueError(f"batch must have shape {tuple(out_idx.shape)}, got {tuple(batch.shape)}")
    n = x.shape[1]
    return _BatchedContract.apply(x, batch * out_size + out_idx, batch * n + in_idx, w, out_size)
