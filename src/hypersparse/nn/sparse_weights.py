"""Fixed random sparse weights with an exact fan-in per output unit (Ahmad & Scheinkman 2019).

The wrapper keeps the wrapped layer's ``weight`` parameter (same ``state_dict`` keys under
``module.``) and a boolean ``mask`` buffer of the weight's shape. Masked weights are zeroed once
at construction and every forward multiplies the mask in, so their gradient is exactly zero:
plain SGD, SGD with momentum (the momentum buffer stays zero) and Adam/AdamW with weight decay
(the decay of a zero weight is zero) all leave them at zero, with no call after the step. A
``load_state_dict`` with non-zero masked weights is re-zeroed by a post-load hook.

Initialisation for the kept fan-in. PyTorch initialises ``nn.Linear``/``nn.Conv2d`` weights and
biases uniform in ``+-1/sqrt(fan_in)`` (``kaiming_uniform_(a=sqrt(5))``), i.e. weight variance
``1 / (3 fan_in)``. A unit that keeps only ``n = nonzeros`` of its ``fan_in`` inputs then has a
pre-activation variance ``n / (3 fan_in) * E[x^2]``: a factor ``n / fan_in`` (0.3 at density 0.3)
below the dense layer's ``E[x^2] / 3``. With ``rescale_init=True`` (the default) the kept weights
and the bias are multiplied once by ``sqrt(fan_in / n)``; a uniform ``+-1/sqrt(fan_in)`` scaled
by that is exactly uniform ``+-1/sqrt(n)``, the default init of a dense layer with ``n`` inputs,
so the variance no longer depends on the sparsity. (Any init whose scale is proportional to
``1/sqrt(fan_in)`` is corrected the same way.)
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["SparseWeights", "SparseWeights2d", "random_fan_in_mask"]


def random_fan_in_mask(
    out_features: int, fan_in: int, nonzeros: int, *, generator: torch.Generator | None = None,
    device: torch.device | str | None = None,
) -> Tensor:
    """A bool mask (out_features, fan_in) with exactly ``nonzeros`` True entries per row, each
    row an independent uniform choice.

    Example:
        >>> random_fan_in_mask(3, 10, 4).sum(1).tolist()
        [4, 4, 4]
    """
    if not 0 <= nonzeros <= fan_in:
        raise ValueError(f"nonzeros must be in [0, {fan_in}], got {nonzeros}")
    keys = torch.rand(out_features, fan_in, generator=generator)
    idx = keys.argsort(dim=1)[:, :nonzeros]  # (out_features, nonzeros)
    mask = torch.zeros(out_features, fan_in, dtype=torch.bool).scatter_(1, idx, True)
    return mask.to(device) if device is not None else mask


class _SparseWeightsBase(nn.Module):
    mask: Tensor
    module: nn.Linear | nn.Conv2d
    kinds: tuple[type[nn.Module], ...] = ()

    def __init__(
        self, module: nn.Module, sparsity: float, *, rescale_init: bool = True,
        generator: torch.Generator | None = None,
    ) -> None:
        super().__init__()
        if not isinstance(module, self.kinds) or not isinstance(module, nn.Linear | nn.Conv2d):
            valid = ", ".join(k.__name__ for k in self.kinds)
            raise TypeError(f"{type(self).__name__} wraps {valid}, got {type(module).__name__}")
        if isinstance(sparsity, bool) or not isinstance(sparsity, float | int) or not (
            0.0 <= sparsity < 1.0
        ):
            raise ValueError(f"sparsity (fraction of zeros) must be in [0, 1), got {sparsity!r}")
        if not isinstance(rescale_init, bool):
            raise TypeError(f"rescale_init must be a bool, got {rescale_init!r}")
        weight = module.weight
        out_units = weight.shape[0]
        fan_in = weight[0].numel()
        nonzeros = round((1.0 - sparsity) * fan_in)
        if nonzeros < 1:
            raise ValueError(
                f"sparsity {sparsity} leaves round((1 - sparsity) * {fan_in}) = 0 weights per unit"
            )
        self.module = module
        self.sparsity = float(sparsity)
        self.nonzeros = nonzeros
        self.rescale_init = rescale_init
        mask = random_fan_in_mask(out_units, fan_in, nonzeros, generator=generator)
        self.register_buffer("mask", mask.view(weight.shape).to(weight.device))  # weight's shape
        self.rezero_weights()
        if rescale_init:
            self._rescale_for_fan_in(fan_in)
        self.register_load_state_dict_post_hook(_rezero_after_load)

    @torch.no_grad()
    def rezero_weights(self) -> None:
        """Zero the masked weights in place (done at construction and after loading)."""
        self.module.weight.mul_(self.mask)

    @torch.no_grad()
    def _rescale_for_fan_in(self, fan_in: int) -> None:
        # uniform +-1/sqrt(fan_in) times sqrt(fan_in / n) is uniform +-1/sqrt(n)
        scale = (fan_in / self.nonzeros) ** 0.5
        self.module.weight.mul_(scale)
        if self.module.bias is not None:
            self.module.bias.mul_(scale)

    def masked_weight(self) -> Tensor:
        """The weight the forward uses: ``module.weight * mask``."""
        return self.module.weight * self.mask

    def extra_repr(self) -> str:
        return (f"sparsity={self.sparsity}, nonzeros_per_unit={self.nonzeros}, "
                f"rescale_init={self.rescale_init}")


def _rezero_after_load(module: nn.Module, incompatible_keys: Any) -> None:
    assert isinstance(module, _SparseWeightsBase)
    module.rezero_weights()


class SparseWeights(_SparseWeightsBase):
    """A linear layer whose every output unit reads exactly ``round((1 - sparsity) * in_features)``
    inputs, chosen at random once (torch RNG; pass ``generator=`` to control it).

    Args:
        module: the ``nn.Linear`` to sparsify (its masked weights are zeroed in place).
        sparsity: fraction of zero weights per output unit, in [0, 1).
        rescale_init: multiply the kept weights and the bias by ``sqrt(in_features / nonzeros)``
            once, so a default-initialised layer starts with the init of a dense layer of the
            kept fan-in (see the module docstring); False keeps the wrapped values (e.g. a
            trained layer).
        generator: RNG for the mask.

    Shape:
        input: (B, in_features); output: (B, out_features).

    Example:
        >>> layer = SparseWeights(nn.Linear(100, 10), sparsity=0.7)
        >>> (layer.module.weight != 0).sum(1).tolist() == [30] * 10
        True
    """

    kinds = (nn.Linear,)

    def forward(self, x: Tensor) -> Tensor:
        return F.linear(x, self.masked_weight(), self.module.bias)


class SparseWeights2d(_SparseWeightsBase):
    """A conv layer whose every output channel reads exactly
    ``round((1 - sparsity) * in_channels * kh * kw)`` inputs, chosen at random once.

    Args:
        module: the ``nn.Conv2d`` to sparsify (its masked weights are zeroed in place).
        sparsity: fraction of zero weights per output channel, in [0, 1).
        rescale_init: multiply the kept weights and the bias by ``sqrt(fan_in / nonzeros)``
            once (``fan_in = in_channels * kh * kw``), as in :class:`SparseWeights`.
        generator: RNG for the mask.

    Shape:
        input: (B, in_channels, H, W); output: the wrapped conv's.

    Example:
        >>> layer = SparseWeights2d(nn.Conv2d(4, 8, 3), sparsity=0.5)
        >>> (layer.module.weight != 0).flatten(1).sum(1).tolist() == [18] * 8
        True
    """

    kinds = (nn.Conv2d,)

    def forward(self, x: Tensor) -> Tensor:
        conv = self.module
        assert isinstance(conv, nn.Conv2d)  # checked in __init__
        return conv._conv_forward(x, self.masked_weight(), conv.bias)
