"""Low-rank factorisation: replace a layer by two thinner ones from a truncated SVD (seed 004,
"matrix decomposition").

A weight matrix ``W`` (M x N) is written ``W = U S V^T``; keeping the ``r`` largest singular
values gives the best rank-``r`` approximation (Eckart-Young) ``W_r = (U_r S_r^1/2)(S_r^1/2 V_r^T)``
which costs ``r * (M + N)`` numbers instead of ``M * N``.

- ``nn.Linear(N, M)`` becomes ``Sequential(Linear(N, r, bias=False), Linear(r, M))``.
- ``nn.Conv2d(C, O, k)`` becomes ``Sequential(Conv2d(C, r, k, bias=False), Conv2d(r, O, 1))``: a
  k x k convolution with ``r`` output channels (same stride, padding, dilation) followed by a 1x1
  convolution. The conv weight is flattened to ``(O, C*kh*kw)`` for the SVD.

The bias stays on the second factor, so at full rank the replacement reproduces the layer up to
rounding.

Rank rules (exactly one of them):

- ``rank=r``: that rank (clipped to the full rank).
- ``energy=f``: the smallest ``r`` whose kept energy ``sum_{i<r} s_i^2 / sum_i s_i^2 >= f``.
  The relative Frobenius error of the weight is then ``sqrt(1 - kept energy) <= sqrt(1 - f)``.
- ``param_fraction=p``: the largest ``r >= 1`` whose factors have at most ``p * M * N`` weights,
  i.e. ``r = max(1, floor(p * M * N / (M + N)))`` (biases are not counted: they are unchanged).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any, cast

import torch
from torch import Tensor, nn

from .cluster import base_type, bias_of, safe_deepcopy, weight_of

__all__ = [
    "choose_rank",
    "low_rank",
    "low_rank_model",
    "LowRankLayerReport",
]


def _check_fraction(name: str, value: float, *, allow_zero: bool = False) -> None:
    ok = (0.0 <= value <= 1.0) if allow_zero else (0.0 < value <= 1.0)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not ok:
        lo = "[0" if allow_zero else "(0"
        raise ValueError(f"{name} must be a number in {lo}, 1], got {value!r}")


def choose_rank(
    singular_values: Tensor,
    shape: tuple[int, int],
    *,
    rank: int | None = None,
    energy: float | None = None,
    param_fraction: float | None = None,
) -> int:
    """The rank to keep for a matrix with the given singular values (exactly one rule).

    Args:
        singular_values: ``(P,)`` non-negative, in descending order (as ``torch.linalg.svd``
            returns them), ``P = min(M, N)``.
        shape: ``(M, N)`` of the matrix.
        rank: keep this many (clipped to ``P``).
        energy: the smallest ``r`` with ``sum_{i<r} s_i^2 >= energy * sum_i s_i^2``.
        param_fraction: the largest ``r >= 1`` with ``r * (M + N) <= param_fraction * M * N``
            (clipped to ``P``).

    Returns:
        An int in ``[1, P]``.

    Example:
        >>> choose_rank(torch.tensor([3.0, 1.0, 0.0]), (3, 3), energy=0.9)
        1
    """
    rules = {"rank": rank, "energy": energy, "param_fraction": param_fraction}
    given = [k for k, v in rules.items() if v is not None]
    if len(given) != 1:
        raise ValueError(f"give exactly one of rank, energy, param_fraction; got {given or 'none'}")
    if singular_values.dim() != 1 or singular_values.numel() == 0:
        raise ValueError(f"singular_values must be a non-empty 1-d tensor, got shape "
                         f"{tuple(singular_values.shape)}")
    m, n = shape
    full = singular_values.numel()
    if full != min(m, n):
        raise ValueError(f"expected min(M, N) = {min(m, n)} singular values, got {full}")
    if rank is not None:
        if isinstance(rank, bool) or not isinstance(rank, int) or rank < 1:
            raise ValueError(f"rank must be an int >= 1, got {rank!r}")
        return min(rank, full)
    if energy is not None:
        _check_fraction("energy", energy)
        e = singular_values.double().square()
        total = e.sum()
        if total == 0:
            return 1
        kept = e.cumsum(0) / total  # (P,)
        # A small tolerance so energy=1.0 is reached despite rounding in the cumulative sum.
        r = int(torch.searchsorted(kept, torch.tensor([energy - 1e-12], dtype=kept.dtype))[0]) + 1
        return min(max(r, 1), full)
    assert param_fraction is not None
    _check_fraction("param_fraction", param_fraction)
    r = math.floor(param_fraction * m * n / (m + n) + 1e-9)
    return min(max(r, 1), full)


def _matrix(layer: nn.Module) -> Tensor:
    """The layer's weight as the ``(M, N)`` matrix that is factorised."""
    w = weight_of(layer).detach()
    return w.reshape(w.shape[0], -1)  # (O, C*kh*kw) for a conv


def _check_layer(layer: nn.Module) -> None:
    if base_type(layer) is nn.Linear:
        return
    if base_type(layer) is nn.Conv2d:
        if layer.groups != 1:
            raise ValueError(f"low_rank supports Conv2d with groups=1 only, "
                             f"got groups={layer.groups}")
        return
    raise TypeError(f"low_rank expects nn.Linear or nn.Conv2d, got {type(layer).__name__}")


def low_rank(
    layer: nn.Module,
    *,
    rank: int | None = None,
    energy: float | None = None,
    param_fraction: float | None = None,
) -> nn.Sequential:
    """Replace ``layer`` by two factors from a truncated SVD of its weight.

    Args:
        layer: an ``nn.Linear`` or an ``nn.Conv2d`` with ``groups=1``.
        rank, energy, param_fraction: the rank rule (exactly one; see :func:`choose_rank`).

    Returns:
        ``Sequential(first, second)`` on the layer's device and dtype; ``first`` has no bias,
        ``second`` carries a copy of the layer's bias.

    Shape:
        Same input and output shapes as ``layer``.

    Example:
        >>> lin = nn.Linear(20, 10)
        >>> f = low_rank(lin, rank=10)
        >>> x = torch.randn(4, 20)
        >>> torch.allclose(f(x), lin(x), atol=1e-5)
        True
    """
    _check_layer(layer)
    w = _matrix(layer)
    m, n = w.shape
    u, s, vh = torch.linalg.svd(w.double(), full_matrices=False)  # (M, P), (P,), (P, N)
    r = choose_rank(s, (m, n), rank=rank, energy=energy, param_fraction=param_fraction)
    root = s[:r].sqrt()
    weight, bias = weight_of(layer), bias_of(layer)
    left = (u[:, :r] * root).to(weight.dtype)  # (M, r)
    right = (root[:, None] * vh[:r]).to(weight.dtype)  # (r, N)
    factory: dict[str, Any] = {"device": weight.device, "dtype": weight.dtype}
    has_bias = bias is not None
    first: nn.Module
    second: nn.Module
    if base_type(layer) is nn.Linear:
        first = nn.Linear(n, r, bias=False, **factory)
        second = nn.Linear(r, m, bias=has_bias, **factory)
        first.weight.data.copy_(right)
        second.weight.data.copy_(left)
    else:
        conv = cast(Any, layer)
        first = nn.Conv2d(conv.in_channels, r, conv.kernel_size, stride=conv.stride,
                          padding=conv.padding, dilation=conv.dilation, bias=False,
                          padding_mode=conv.padding_mode, **factory)
        second = nn.Conv2d(r, m, 1, bias=has_bias, **factory)
        first.weight.data.copy_(right.reshape(r, *weight.shape[1:]))  # (r, C, kh, kw)
        second.weight.data.copy_(left.reshape(m, r, 1, 1))  # (O, r, 1, 1)
    if bias is not None:
        cast(Tensor, second.bias).data.copy_(bias.detach())
    return nn.Sequential(first, second)


@dataclass
class LowRankLayerReport:
    """One row of :func:`low_rank_model`'s report.

    ``params_*`` count weights and biases of the layer before and after; ``weight_error`` is the
    relative Frobenius error ``||W - W_r|| / ||W||`` (= ``sqrt(1 - energy_kept)``);
    ``output_error`` is ``||f(x) - g(x)|| / ||f(x)||`` over the sample given to
    :func:`low_rank_model` (``None`` without one). ``replaced`` is False when the factors would
    not have been smaller than the layer (``skip_larger=True``), in which case the layer is kept.
    """

    name: str
    kind: str
    shape: tuple[int, ...]
    rank: int
    full_rank: int
    energy_kept: float
    params_before: int
    params_after: int
    weight_error: float
    output_error: float | None
    replaced: bool

    def as_dict(self) -> dict[str, object]:
        return asdict(self)


def _params(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def _set_submodule(model: nn.Module, name: str, new: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    setattr(parent, child, new)


@torch.no_grad()
def low_rank_model(
    model: nn.Module,
    *,
    rank: int | None = None,
    energy: float | None = None,
    param_fraction: float | None = None,
    names: Sequence[str] | None = None,
    sample: Tensor | None = None,
    skip_larger: bool = True,
    inplace: bool = False,
) -> tuple[nn.Module, list[LowRankLayerReport]]:
    """Factorise every ``nn.Linear`` / ``nn.Conv2d`` (groups=1) of ``model`` with one rank rule.

    Args:
        model: the network.
        rank, energy, param_fraction: the rank rule (exactly one; see :func:`choose_rank`).
        names: only these submodules (qualified names as in ``named_modules()``); default all
            eligible layers.
        sample: an input batch for ``model``; when given, each layer's input is recorded on it
            (one forward pass of the original model) and the report holds the output error.
        skip_larger: keep a layer whose factors would have as many or more parameters.
        inplace: modify ``model`` instead of a deep copy.

    Returns:
        ``(new_model, report)`` with one :class:`LowRankLayerReport` per considered layer.

    Example:
        >>> net = nn.Sequential(nn.Linear(30, 20), nn.ReLU(), nn.Linear(20, 5))
        >>> small, rows = low_rank_model(net, energy=0.5)
        >>> [r.name for r in rows]
        ['0', '2']
    """
    choose_rank(torch.ones(1), (1, 1), rank=rank, energy=energy, param_fraction=param_fraction)
    eligible = {name: mod for name, mod in model.named_modules()
                if base_type(mod) is nn.Linear
                or (base_type(mod) is nn.Conv2d and mod.groups == 1)}
    if names is not None:
        names = list(names)
        missing = [n for n in names if n not in eligible]
        if missing:
            raise ValueError(f"names {missing} are not nn.Linear/nn.Conv2d(groups=1) submodules; "
                             f"eligible: {sorted(eligible)}")
        eligible = {n: eligible[n] for n in names}
    inputs: dict[str, Tensor] = {}
    if sample is not None:
        handles = [mod.register_forward_hook(
            lambda mod, args, out, name=name: inputs.__setitem__(name, args[0]))
            for name, mod in eligible.items()]
        try:
            was_training = model.training
            model.eval()
            model(sample)
            model.train(was_training)
        finally:
            for h in handles:
                h.remove()
    target = model if inplace else safe_deepcopy(model)
    report: list[LowRankLayerReport] = []
    for name in eligible:
        layer = target.get_submodule(name)
        w = _matrix(layer).double()
        s = torch.linalg.svdvals(w)
        new = low_rank(layer, rank=rank, energy=energy, param_fraction=param_fraction)
        r = weight_of(new[0]).shape[0]
        e = s.square()
        kept = float(e[:r].sum() / e.sum()) if e.sum() > 0 else 1.0
        before, after = _params(layer), _params(new)
        replaced = not (skip_larger and after >= before)
        out_err: float | None = None
        if name in inputs:
            x = inputs[name]
            ref = layer(x)
            approx = new(x) if replaced else ref
            out_err = float((approx - ref).norm() / ref.norm().clamp_min(1e-30))
        w_err = math.sqrt(max(0.0, 1.0 - kept)) if replaced else 0.0
        report.append(LowRankLayerReport(
            name=name, kind=base_type(layer).__name__, shape=tuple(weight_of(layer).shape), rank=r,
            full_rank=s.numel(), energy_kept=kept if replaced else 1.0, params_before=before,
            params_after=after if replaced else before, weight_error=w_err,
            output_error=out_err, replaced=replaced))
        if replaced:
            _set_submodule(target, name, new)
    return target, report
