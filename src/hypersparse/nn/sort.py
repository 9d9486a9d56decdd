"""``SortLayer``: the differentiable quicksort as a module (no parameters of its own)."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from ..functional.sort import Proposal, QuicksortResult, quicksort

__all__ = ["SortLayer"]


class SortLayer(nn.Module):
    """Sort a sequence of ``n`` items by their keys; soft (sampled) in training, hard in eval.

    The layer has no parameters: it lets the gradient of a loss on the sorted items reach the
    keys (e.g. the output of a network that scores each item). ``certainty`` is a buffer so a
    schedule can change it and ``state_dict`` carries it.

    Args:
        n: sequence length (>= 2; any n, padded internally to a power of two).
        samples: candidate partitions per level in training.
        certainty: ``c`` in ``sigmoid(c * (key - pivot))``.
        proposal: ``"gumbel"`` or ``"uniform"`` random balanced candidates.
        device, dtype: of the ``certainty`` buffer.

    Shape:
        items (B, n, *F), keys (B, n) -> values (B, n, *F), keys (B, n).

    Example:
        >>> layer = SortLayer(3).eval()
        >>> keys = torch.tensor([[0.3, -1.0, 2.0]])
        >>> layer(keys[..., None], keys).keys
        tensor([[-1.0000,  0.3000,  2.0000]])
    """

    certainty: Tensor

    def __init__(
        self,
        n: int,
        samples: int = 4,
        certainty: float = 10.0,
        proposal: Proposal = "gumbel",
        *,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        if isinstance(n, bool) or not isinstance(n, int) or n < 2:
            raise ValueError(f"n must be an integer >= 2, got {n!r}")
        if isinstance(samples, bool) or not isinstance(samples, int) or samples < 1:
            raise ValueError(f"samples must be an integer >= 1, got {samples!r}")
        if not certainty > 0:
            raise ValueError(f"certainty must be > 0, got {certainty!r}")
        if proposal not in ("gumbel", "uniform"):
            raise ValueError(f"proposal must be 'gumbel' or 'uniform', got {proposal!r}")
        self.n, self.samples, self.proposal = n, samples, proposal
        c = torch.tensor(float(certainty), device=device, dtype=dtype)
        self.register_buffer("certainty", c)

    def forward(
        self, items: Tensor, keys: Tensor, *, return_levels: bool = False
    ) -> QuicksortResult:
        if keys.dim() != 2 or keys.shape[1] != self.n:
            raise ValueError(f"keys must have shape (B, {self.n}), got {tuple(keys.shape)}")
        return quicksort(items, keys, samples=self.samples, certainty=self.certainty,
                         hard=not self.training, proposal=self.proposal,
                         return_levels=return_levels)

    def extra_repr(self) -> str:
        return (f"n={self.n}, samples={self.samples}, certainty={float(self.certainty):g}, "
                f"proposal={self.proposal!r}")
