"""Uniform b-bit quantisation of weights, per tensor or per channel, with straight-through
fine-tuning (seed 004 "cluster & quantization"; the uniform counterpart of k-means sharing).

Scheme (affine, min/max calibrated, zero exactly representable): for a group of values ``x``
(the whole tensor, or one slice along ``axis``),

    lo = min(min(x), 0),  hi = max(max(x), 0),  scale = (hi - lo) / (2^b - 1),
    zero_point = round(-lo / scale),  q = clamp(round(x / scale) + zero_point, 0, 2^b - 1),
    x_hat = (q - zero_point) * scale.

``q`` is an integer in ``[0, 2^b)``, so every group takes at most ``2^b`` distinct values. The
range always contains 0 and 0 maps to ``q = zero_point`` exactly, so pruned (zero) weights stay
exactly zero. A group of all zeros gets ``scale = 1`` and quantises to zeros.

Straight-through fine-tuning: :class:`FakeQuantize` is a ``torch.nn.utils.parametrize``
parametrisation; the layer keeps a full-precision latent weight (``parametrizations.weight.
original``) that the optimizer updates, the forward uses its quantised value, and the backward
passes the gradient through the rounding unchanged (``d x_hat / d x := 1``; Bengio et al. 2013).
The scale is recomputed from the current latent weight at every forward.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any, cast

import torch
from torch import Tensor, nn
from torch.nn.utils import parametrize

from .cluster import base_type, safe_deepcopy, weight_of

__all__ = [
    "quantize_params",
    "quantize_tensor",
    "dequantize",
    "fake_quantize",
    "FakeQuantize",
    "quantize_model",
    "freeze_quantized",
    "quantization_report",
    "QuantLayerReport",
]


def _check_bits(bits: int) -> None:
    if isinstance(bits, bool) or not isinstance(bits, int) or not 1 <= bits <= 16:
        raise ValueError(f"bits must be an int in [1, 16], got {bits!r}")


def _check_axis(x: Tensor, axis: int | None) -> int | None:
    if axis is None:
        return None
    if isinstance(axis, bool) or not isinstance(axis, int) or not -x.dim() <= axis < x.dim():
        raise ValueError(f"axis must be None or an int in [{-x.dim()}, {x.dim()}) for a "
                         f"{x.dim()}-d tensor, got {axis!r}")
    return axis % x.dim()


def _check_input(x: Tensor) -> None:
    if not isinstance(x, Tensor) or not x.is_floating_point():
        raise TypeError(f"expected a floating tensor, got "
                        f"{x.dtype if isinstance(x, Tensor) else type(x).__name__}")


def _group_view(x: Tensor, axis: int | None) -> Tensor:
    """``x`` as ``(G, numel/G)`` rows: one row per channel along ``axis`` (or one row)."""
    if axis is None:
        return x.reshape(1, -1)  # (1, numel)
    return x.movedim(axis, 0).reshape(x.shape[axis], -1)  # (G, numel/G)


def _broadcast(v: Tensor, x: Tensor, axis: int | None) -> Tensor:
    """Per-group values ``(G,)`` shaped to broadcast against ``x``."""
    if axis is None:
        return v.reshape(())
    shape = [1] * x.dim()
    shape[axis] = -1
    return v.reshape(shape)  # (1, .., G, .., 1)


def quantize_params(x: Tensor, bits: int, axis: int | None = None) -> tuple[Tensor, Tensor]:
    """Scale and zero point of the affine b-bit grid for ``x`` (min/max calibration).

    Args:
        x: floating tensor (any shape; empty only when ``axis`` is None).
        bits: in ``[1, 16]``.
        axis: None for one grid over the whole tensor; an int for one grid per slice along
            that dim (per output channel: ``axis=0``).

    Returns:
        ``(scale, zero_point)``: ``(G,)`` each (``G = 1`` per tensor), ``scale`` in ``x``'s dtype,
        ``zero_point`` int64 in ``[0, 2^b)``.
    """
    _check_input(x)
    _check_bits(bits)
    axis = _check_axis(x, axis)
    g = _group_view(x.detach(), axis)  # (G, n)
    if g.shape[1] == 0:
        lo = hi = torch.zeros(g.shape[0], dtype=x.dtype, device=x.device)
    else:
        lo = g.amin(1).clamp_max(0)
        hi = g.amax(1).clamp_min(0)
    levels = 2**bits - 1
    span = hi - lo
    scale = torch.where(span > 0, span / levels, torch.ones_like(span))  # (G,)
    zero_point = torch.round(-lo / scale).clamp(0, levels).long()  # (G,)
    return scale, zero_point


def quantize_tensor(x: Tensor, bits: int, axis: int | None = None
                    ) -> tuple[Tensor, Tensor, Tensor]:
    """Quantise ``x`` to integers: ``(q, scale, zero_point)``.

    ``q`` has ``x``'s shape, values in ``[0, 2^b)``, dtype ``uint8`` for ``b <= 8`` else
    ``int32``; ``x ~ (q - zero_point) * scale`` (see :func:`dequantize`).

    Example:
        >>> q, s, z = quantize_tensor(torch.tensor([-1.0, 0.0, 0.5, 2.0]), 2)
        >>> q.tolist(), z.tolist()
        ([0, 1, 1, 3], [1])
    """
    scale, zero_point = quantize_params(x, bits, axis)
    axis = _check_axis(x, axis)
    s, z = _broadcast(scale, x, axis), _broadcast(zero_point, x, axis)
    q = (torch.round(x.detach() / s) + z).clamp(0, 2**bits - 1)
    return q.to(torch.uint8 if bits <= 8 else torch.int32), scale, zero_point


def dequantize(q: Tensor, scale: Tensor, zero_point: Tensor, axis: int | None = None) -> Tensor:
    """``(q - zero_point) * scale``, broadcasting per-channel parameters along ``axis``."""
    axis = _check_axis(q, axis)
    s, z = _broadcast(scale, q, axis), _broadcast(zero_point, q, axis)
    return (q.long() - z).to(scale.dtype) * s


class _FakeQuantSTE(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, x: Tensor, bits: int, axis: int | None) -> Tensor:
        q, scale, zero_point = quantize_tensor(x, bits, axis)
        return dequantize(q, scale, zero_point, axis).to(x.dtype)

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor, None, None]:
        return grad, None, None  # straight-through: the rounding is treated as the identity


def fake_quantize(x: Tensor, bits: int, axis: int | None = None) -> Tensor:
    """``x`` rounded to its b-bit grid (``dequantize(quantize_tensor(x))``), with a
    straight-through gradient (identity).

    Args:
        x: floating tensor.
        bits: in ``[1, 16]``.
        axis: None (per tensor) or the channel dim (per channel).

    Shape:
        Output: same as ``x``.

    Example:
        >>> fake_quantize(torch.tensor([-1.0, 0.0, 0.4, 2.0]), 2)
        tensor([-1.,  0.,  0.,  2.])
    """
    _check_input(x)
    _check_bits(bits)
    axis = _check_axis(x, axis)
    return _FakeQuantSTE.apply(x, bits, axis)


class FakeQuantize(nn.Module):
    """Parametrisation ``W -> fake_quantize(W, bits, axis)`` for straight-through fine-tuning.

    Register it with ``torch.nn.utils.parametrize.register_parametrization(layer, "weight",
    FakeQuantize(8, axis=0))`` or via :func:`quantize_model`.

    Args:
        bits: in ``[1, 16]``.
        axis: None for per-tensor, an int for per-channel along that dim.

    Shape:
        Input: any; output: same.
    """

    def __init__(self, bits: int, axis: int | None = None) -> None:
        super().__init__()
        _check_bits(bits)
        if axis is not None and (isinstance(axis, bool) or not isinstance(axis, int)):
            raise ValueError(f"axis must be None or an int, got {axis!r}")
        self.bits = bits
        self.axis = axis

    def forward(self, w: Tensor) -> Tensor:
        return fake_quantize(w, self.bits, self.axis)

    def extra_repr(self) -> str:
        return f"bits={self.bits}, axis={self.axis}"


_LAYERS = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)


def quantize_model(
    model: nn.Module,
    bits: int,
    *,
    per_channel: bool = True,
    names: Sequence[str] | None = None,
    inplace: bool = False,
) -> nn.Module:
    """Register a :class:`FakeQuantize` parametrisation on the weight of every Linear/Conv.

    Args:
        model: the network.
        bits: in ``[1, 16]``.
        per_channel: one grid per output channel (dim 0) instead of one per tensor.
        names: only these submodules (default: all Linear/Conv1d/2d/3d).
        inplace: modify ``model`` instead of a deep copy.

    Returns:
        The model; train it as usual (straight-through), then :func:`freeze_quantized`.

    Example:
        >>> net = quantize_model(nn.Sequential(nn.Linear(6, 3)), 2, per_channel=False)
        >>> net[0].weight.unique().numel() <= 4
        True
    """
    _check_bits(bits)
    eligible = {n: m for n, m in model.named_modules() if base_type(m) in _LAYERS}
    if names is not None:
        names = list(names)
        missing = [n for n in names if n not in eligible]
        if missing:
            raise ValueError(f"names {missing} are not Linear/Conv submodules; eligible: "
                             f"{sorted(eligible)}")
        eligible = {n: eligible[n] for n in names}
    target = model if inplace else safe_deepcopy(model)
    for name in eligible:
        layer = target.get_submodule(name) if name else target
        parametrize.register_parametrization(
            layer, "weight", FakeQuantize(bits, axis=0 if per_channel else None))
    return target


def freeze_quantized(model: nn.Module) -> nn.Module:
    """Remove every :class:`FakeQuantize` parametrisation in place, keeping the quantised values
    as plain weights (other parametrisations are left alone). Returns ``model``."""
    for mod in model.modules():
        if not parametrize.is_parametrized(mod):
            continue
        plists = cast(Any, mod).parametrizations
        for name in list(plists.keys()):
            plist = plists[name]
            if len(plist) == 1 and isinstance(plist[0], FakeQuantize):
                parametrize.remove_parametrizations(mod, name, leave_parametrized=True)
    return model


@dataclass
class QuantLayerReport:
    """Storage of one quantised weight: ``numel * bits`` for the integers plus ``64`` bits per
    group for a float32 scale and (stored as float32 for simplicity) a zero point."""

    name: str
    shape: tuple[int, ...]
    bits: int
    groups: int
    dense_bits: int
    quantized_bits: int
    max_distinct_per_group: int

    def as_dict(self) -> dict[str, object]:
        return asdict(self)


@torch.no_grad()
def quantization_report(model: nn.Module) -> list[QuantLayerReport]:
    """One :class:`QuantLayerReport` per weight carrying a :class:`FakeQuantize`."""
    rows = []
    for name, mod in model.named_modules():
        if not parametrize.is_parametrized(mod, "weight"):
            continue
        plist = cast(Any, mod).parametrizations["weight"]
        fq = [p for p in plist if isinstance(p, FakeQuantize)]
        if not fq:
            continue
        w = weight_of(mod)
        axis = None if fq[0].axis is None else fq[0].axis % w.dim()
        rows_ = _group_view(w, axis)  # (G, n)
        distinct = max(int(r.unique().numel()) for r in rows_) if rows_.numel() else 0
        g = rows_.shape[0]
        rows.append(QuantLayerReport(
            name=name, shape=tuple(w.shape), bits=fq[0].bits, groups=g,
            dense_bits=32 * w.numel(), quantized_bits=w.numel() * fq[0].bits + 64 * g,
            max_distinct_per_group=distinct))
    return rows
