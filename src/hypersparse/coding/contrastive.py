"""The contrastive loss that trains the dimensionality reduction of deep sparse coding (seed 004).

For a pair of (pooled) codes ``y_i, y_j`` and a linear map ``W``, with ``d2 = ||W y_i - W y_j||^2``
and the pair label ``l_ij`` (0: similar, 1: dissimilar):

    L_ij(W) = (1 - l_ij) * 1/2 * d2 + l_ij * max(0, beta - d2)

exactly as the seed writes it: the margin ``beta`` applies to the *squared* distance and the
dissimilar term is not halved (Hadsell, Chopra & LeCun 2006 use ``1/2 max(0, m - d)^2``
instead). Similar pairs are pulled together; dissimilar pairs closer than ``sqrt(beta)`` are
pushed apart, which keeps ``W = 0`` from being a minimiser.

Axis letters: B pairs, M code size, E embedding size.
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import Tensor, nn

__all__ = ["contrastive_loss", "ContrastiveLoss", "ContrastiveProjection"]


def contrastive_loss(
    a: Tensor,
    b: Tensor,
    dissimilar: Tensor,
    beta: float,
    reduction: Literal["mean", "sum", "none"] = "mean",
) -> Tensor:
    """Seed 004's ``L_ij`` on already projected pairs ``a = W y_i``, ``b = W y_j``.

    Args:
        a, b: the two embeddings of each pair.
        dissimilar: ``l_ij`` per pair: 1 (or True) for dissimilar, 0 for similar; values in
            between interpolate the two terms.
        beta: margin on the squared distance, > 0.
        reduction: ``"mean"``, ``"sum"`` or ``"none"`` (per pair).

    Shape:
        a, b: (B, E); dissimilar: (B,); returns () or (B,).

    Example:
        >>> a, b = torch.zeros(2, 3), torch.ones(2, 3)
        >>> contrastive_loss(a, b, torch.tensor([0, 1]), beta=4.0, reduction="none")
        tensor([1.5000, 1.0000])
    """
    if a.dim() != 2 or a.shape != b.shape:
        raise ValueError(
            f"a and b must be 2-D (B, E) of one shape, got {tuple(a.shape)} and {tuple(b.shape)}"
        )
    if dissimilar.shape != (a.shape[0],):
        raise ValueError(
            f"dissimilar must have shape (B={a.shape[0]},), got {tuple(dissimilar.shape)}"
        )
    if not (isinstance(beta, int | float) and beta > 0):
        raise ValueError(f"beta must be a float > 0, got {beta!r}")
    if reduction not in ("mean", "sum", "none"):
        raise ValueError(f"reduction must be 'mean', 'sum' or 'none', got {reduction!r}")
    d2 = (a - b).pow(2).sum(1)  # (B,)
    l = dissimilar.to(d2.dtype)
    loss = (1.0 - l) * 0.5 * d2 + l * torch.relu(beta - d2)
    if reduction == "mean":
        return loss.mean()
    if reduction == "sum":
        return loss.sum()
    return loss


class ContrastiveLoss(nn.Module):
    """Module form of :func:`contrastive_loss` with a fixed ``beta``.

    Shape:
        a, b: (B, E); dissimilar: (B,); returns ().
    """

    def __init__(self, beta: float = 1.0, reduction: Literal["mean", "sum", "none"] = "mean"):
        super().__init__()
        if not (isinstance(beta, int | float) and beta > 0):
            raise ValueError(f"beta must be a float > 0, got {beta!r}")
        self.beta, self.reduction = float(beta), reduction

    def forward(self, a: Tensor, b: Tensor, dissimilar: Tensor) -> Tensor:
        return contrastive_loss(a, b, dissimilar, self.beta, self.reduction)

    def extra_repr(self) -> str:
        return f"beta={self.beta}, reduction={self.reduction!r}"


class ContrastiveProjection(nn.Module):
    """The dimensionality reduction ``A(y) = W y`` applied along the channel axis of a code map
    (a 1x1 convolution without bias), so it maps pooled code maps to reduced maps.

    Args:
        in_channels: M (code size).
        out_channels: E (reduced size).

    Shape:
        y: (B, M, H, W) -> (B, E, H, W), or (B, M) -> (B, E).

    Example:
        >>> proj = ContrastiveProjection(64, 8)
        >>> proj(torch.rand(2, 64, 5, 5)).shape
        torch.Size([2, 8, 5, 5])
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        *,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        for name, v in (("in_channels", in_channels), ("out_channels", out_channels)):
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ValueError(f"{name} must be an int >= 1, got {v!r}")
        self.in_channels, self.out_channels = in_channels, out_channels
        self.weight = nn.Parameter(torch.empty(out_channels, in_channels, device=device,
                                               dtype=dtype))
        self.reset_parameters()

    def reset_parameters(self, generator: torch.Generator | None = None) -> None:
        with torch.no_grad():
            w = torch.randn(self.weight.shape, generator=generator, dtype=self.weight.dtype)
            self.weight.copy_(w / self.in_channels**0.5)

    def forward(self, y: Tensor) -> Tensor:
        if y.dim() == 2:
            return y @ self.weight.t()  # (B, E)
        return torch.einsum("bmhw,em->behw", y, self.weight)  # (B, E, H, W)

    def extra_repr(self) -> str:
        return f"in_channels={self.in_channels}, out_channels={self.out_channels}"
