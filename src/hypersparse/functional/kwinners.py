"""k-winners-take-all with boosting (Ahmad & Scheinkman 2019, "How Can We Be So Dense?").

Winners are chosen on *detached* boosted values ``x * exp(beta * (target_density - duty))`` and
the original ``x`` passes at the winners, zero elsewhere; the gradient is therefore 1 at the
winners and 0 elsewhere, as for a ReLU. No custom ``autograd.Function`` is needed: the selection
is a boolean mask built without gradient and ``x * mask`` routes the gradient, which also keeps
the op traceable by ``torch.compile`` without graph breaks.

Axis letters: B batch, N units, C channels, H height, W width.
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["k_winners", "k_winners2d", "boost", "update_duty_cycles"]


def _check_k(k: int, n: int) -> None:
    if isinstance(k, bool) or not isinstance(k, int):
        raise TypeError(f"k must be an int, got {type(k).__name__}")
    if not 1 <= k <= n:
        raise ValueError(f"k must be in [1, {n}], got {k}")


def boost(
    x: Tensor, duty_cycles: Tensor, boost_strength: float | Tensor, target_density: float
) -> Tensor:
    """Boosted values ``x * exp(boost_strength * (target_density - duty_cycles))``.

    Units that were active less often than ``target_density`` get a factor above 1.

    Args:
        x: activations, (B, N) or (B, C, H, W).
        duty_cycles: (N,) for 2-D ``x``, (C,) for 4-D ``x`` (broadcast over H and W).
        boost_strength: beta >= 0 (a float or a 0-d tensor).
        target_density: the expected fraction of active units, usually ``k / n``.

    Shape:
        output: same as ``x``.
    """
    factor = torch.exp((target_density - duty_cycles) * boost_strength)
    if x.dim() == 4:
        factor = factor.view(1, -1, 1, 1)  # (1, C, 1, 1)
    return x * factor


def _winner_mask(scores: Tensor, k: int, dim: int, break_ties: bool) -> Tensor:
    """Boolean mask of the ``k`` largest ``scores`` along ``dim`` (all ties at the k-th value win
    unless ``break_ties``)."""
    top = torch.topk(scores, k, dim=dim, sorted=False)
    if break_ties:
        return torch.zeros_like(scores, dtype=torch.bool).scatter_(dim, top.indices, True)
    threshold = top.values.amin(dim=dim, keepdim=True)
    return scores >= threshold


def _select(x: Tensor, scores: Tensor, k: int, dim: int, break_ties: bool, relu: bool) -> Tensor:
    with torch.no_grad():
        mask = _winner_mask(scores.detach(), k, dim, break_ties)
        if relu:
            mask &= x.detach() > 0
    # x * mask (not torch.where): ~4x faster on CPU, same values and gradient for finite x
    return x * mask


def _check_duty(duty_cycles: Tensor | None, size: int, what: str) -> None:
    if duty_cycles is None:
        return
    if not isinstance(duty_cycles, Tensor) or duty_cycles.shape != (size,):
        shape = tuple(duty_cycles.shape) if isinstance(duty_cycles, Tensor) else duty_cycles
        raise ValueError(f"duty_cycles must have shape ({size},) (one per {what}), got {shape}")


def k_winners(
    x: Tensor,
    k: int,
    *,
    duty_cycles: Tensor | None = None,
    boost_strength: float | Tensor = 0.0,
    target_density: float | None = None,
    break_ties: bool = False,
    relu: bool = False,
) -> Tensor:
    """Keep the ``k`` units of each row with the largest boosted value; zero the rest.

    Args:
        x: activations.
        k: winners per row, in [1, N].
        duty_cycles: per-unit running activity; None disables boosting.
        boost_strength: beta in ``x * exp(beta * (target_density - duty))``.
        target_density: defaults to ``k / N``.
        break_ties: exactly ``k`` winners per row (ties broken by ``torch.topk``); otherwise
            every unit whose boosted value is at least the k-th largest wins.
        relu: additionally zero winners with ``x <= 0``.

    Shape:
        x: (B, N); duty_cycles: (N,); output: (B, N).

    Example:
        >>> k_winners(torch.tensor([[1.0, 3.0, 2.0, 0.5]]), 2)
        tensor([[0., 3., 2., 0.]])
    """
    if not isinstance(x, Tensor):
        raise TypeError(f"x must be a Tensor, got {type(x).__name__}")
    if x.dim() != 2:
        raise ValueError(f"k_winners expects x of shape (B, N), got {tuple(x.shape)}")
    n = x.shape[1]
    _check_k(k, n)
    _check_duty(duty_cycles, n, "unit")
    scores = x
    if duty_cycles is not None:
        density = k / n if target_density is None else target_density
        scores = boost(x.detach(), duty_cycles, boost_strength, density)
    return _select(x, scores, k, 1, break_ties, relu)


def k_winners2d(
    x: Tensor,
    k: int,
    *,
    duty_cycles: Tensor | None = None,
    boost_strength: float | Tensor = 0.0,
    target_density: float | None = None,
    local: bool = False,
    break_ties: bool = False,
    relu: bool = False,
) -> Tensor:
    """k-winners over feature maps: global (top ``k`` of C*H*W per sample) or local (top ``k``
    channels at every spatial location). Duty cycles and boosting are per channel.

    Args:
        x: activations.
        k: winners per sample (global, in [1, C*H*W]) or per location (local, in [1, C]).
        duty_cycles: per-channel running activity; None disables boosting.
        boost_strength: beta.
        target_density: defaults to ``k / (C*H*W)`` (global) or ``k / C`` (local).
        local: choose winners among channels at each (h, w) instead of over the whole sample.
        break_ties, relu: as in :func:`k_winners`.

    Shape:
        x: (B, C, H, W); duty_cycles: (C,); output: (B, C, H, W).

    Example:
        >>> k_winners2d(torch.arange(8.0).view(1, 2, 2, 2), 3).flatten().tolist()
        [0.0, 0.0, 0.0, 0.0, 0.0, 5.0, 6.0, 7.0]
    """
    if not isinstance(x, Tensor):
        raise TypeError(f"x must be a Tensor, got {type(x).__name__}")
    if x.dim() != 4:
        raise ValueError(f"k_winners2d expects x of shape (B, C, H, W), got {tuple(x.shape)}")
    b, c, h, w = x.shape
    pool = c if local else c * h * w
    _check_k(k, pool)
    _check_duty(duty_cycles, c, "channel")
    scores = x
    if duty_cycles is not None:
        density = k / pool if target_density is None else target_density
        scores = boost(x.detach(), duty_cycles, boost_strength, density)
    if local:
        return _select(x, scores, k, 1, break_ties, relu)
    out = _select(x.reshape(b, c * h * w), scores.reshape(b, c * h * w), k, 1, break_ties, relu)
    return out.view(b, c, h, w)  # (B, C, H, W)


@torch.no_grad()
def update_duty_cycles(
    duty_cycles: Tensor, y: Tensor, samples_seen: Tensor, period: int
) -> None:
    """Update running duty cycles in place from a batch of outputs ``y`` (active = ``y > 0``).

    ``samples_seen += B``; ``P = min(period, samples_seen)``;
    ``duty = (duty * (P - B) + count) / P`` where ``count`` is the number of active samples per
    unit (per channel for 4-D ``y``, counted over batch and space and divided by H*W). When a
    batch is larger than ``period``, ``P`` is raised to ``B`` so duty stays in [0, 1].

    Args:
        duty_cycles: (N,) or (C,) float buffer, updated in place.
        y: outputs of the layer, (B, N) or (B, C, H, W).
        samples_seen: 0-d integer buffer, updated in place.
        period: the averaging window in samples.
    """
    b = y.shape[0]
    if y.dim() == 4:
        count = (y > 0).sum(dim=(0, 2, 3)).to(duty_cycles.dtype) / (y.shape[2] * y.shape[3])
    else:
        count = (y > 0).sum(dim=0).to(duty_cycles.dtype)
    samples_seen.add_(b)
    p = torch.clamp(samples_seen, max=period).clamp(min=max(b, 1)).to(duty_cycles.dtype)
    duty_cycles.mul_(p - b).add_(count).div_(p)
