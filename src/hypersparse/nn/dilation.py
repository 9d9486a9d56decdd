"""A source network with a prior: a convolution whose dilation is one learned scalar (seed 000,
"compression/prior").

:class:`DilatedConv2d` is a :class:`~hypersparse.nn.HyperLayer` whose index tuples are not free:
a tiny source network (the dilation ``d`` and a ``k x k`` kernel shared over positions) builds
the rank-6 tuples ``(out channel, out row, out col, in channel, in row, in col)`` of a
convolution at every output position,

    in_row = out_row + P + (i - (k - 1) / 2) * d,   in_col = out_col + P + (j - (k - 1) / 2) * d,

over an input zero-padded by ``P = (k - 1) / 2 * max_dilation`` on each side, so every tuple is
in bounds for any ``d`` in ``[0, max_dilation]``. Only the two input-position columns are
continuous (Gaussian, deviation ``sigma`` in pixels); the others come from a template. The
gradient of the loss reaches ``d`` through the tuples' means.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..functional.hyper import first_occurrence, linear_index, point_weights, sample_points
from .hyper import Connections, HyperLayer, _check_finite

__all__ = ["DilatedConv2d"]


def _positive_int(name: str, value: Any) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ValueError(f"{name} must be an int >= 1, got {value!r}")
    return value


class DilatedConv2d(HyperLayer):
    """A ``k x k`` 2D convolution ("same" size, stride 1) with a learned scalar dilation.

    Parameters: ``dilation`` (a scalar, used clamped to ``[0, max_dilation]``), ``weight``
    (C_out, C_in, k, k) and optionally ``bias`` (C_out,). Training samples integer input
    positions around every tuple (its floor/ceil corners and ``local_samples`` points in a
    ``region`` box) and spreads the kernel value over them by a normalised Gaussian of deviation
    ``sigma`` pixels; the normalisation context of a tuple is the ``k * k`` tuples of its
    (output position, input channel), which gives exactly the layer-wide weights (template
    columns are exact, so tuples of other groups put zero density on these points). Eval rounds
    the input positions: for an integer dilation ``d`` the layer equals
    ``F.conv2d(x, weight, bias, padding=(k - 1) // 2 * d, dilation=d)``.

    Args:
        in_channels, out_channels: C_in and C_out.
        height, width: the spatial size of the input (and output).
        kernel_size: k, odd.
        dilation: the initial dilation, in ``[0, max_dilation]``.
        max_dilation: the largest dilation the padding allows.
        sigma: the deviation of each tuple's Gaussian, in pixels (a buffer; may be annealed).
        local_samples: L, random points per tuple in the ``region`` box (besides the 4 corners).
        region: side of the local box (default 4).
        bias: add a learned bias per output channel.
        device, dtype: of the parameters and buffers.

    Shape:
        input: (B, C_in, H, W); output: (B, C_out, H, W).

    Example:
        >>> conv = DilatedConv2d(1, 2, 8, 8, kernel_size=3, dilation=2.0)
        >>> conv.eval()(torch.randn(4, 1, 8, 8)).shape
        torch.Size([4, 2, 8, 8])
    """

    template: Tensor
    sigma: Tensor
    offsets: Tensor

    def __init__(self, in_channels: int, out_channels: int, height: int, width: int,
                 kernel_size: int = 3, *, dilation: float = 1.0, max_dilation: float = 4.0,
                 sigma: float = 0.5, local_samples: int = 4, region: int = 4,
                 bias: bool = True, device: torch.device | str | None = None,
                 dtype: torch.dtype | None = None) -> None:
        cin, cout = _positive_int("in_channels", in_channels), _positive_int(
            "out_channels", out_channels)
        h, w = _positive_int("height", height), _positive_int("width", width)
        k = _positive_int("kernel_size", kernel_size)
        if k % 2 == 0:
            raise ValueError(f"kernel_size must be odd (a centred 'same' kernel), got {k}")
        if not math.isfinite(max_dilation) or max_dilation < 0:
            raise ValueError(f"max_dilation must be a finite float >= 0, got {max_dilation}")
        if not 0 <= dilation <= max_dilation:
            raise ValueError(f"dilation must be in [0, max_dilation={max_dilation}], "
                             f"got {dilation}")
        if not sigma > 0 or not math.isfinite(sigma):
            raise ValueError(f"sigma must be a finite float > 0, got {sigma}")
        pad = math.ceil((k - 1) / 2 * max_dilation)
        ks = cout * h * w * cin * k * k
        template = self._template(cout, h, w, cin, k, pad, device)
        super().__init__((cin, h + 2 * pad, w + 2 * pad), (cout, h, w), ks, global_samples=0,
                         local_samples=local_samples, region=min(region, h + 2 * pad,
                                                                 w + 2 * pad),
                         learn_values=False, bias=False, template=template,
                         learn_cols=(4, 5), normalisation="exact", device=device, dtype=dtype)
        # the template is a pure function of the shapes: keep it out of the state_dict
        self.register_buffer("template", self.template, persistent=False)
        del self.fixed_values  # the values come from ``weight``
        factory: dict[str, Any] = {"device": device, "dtype": dtype}
        self.in_channels, self.out_channels, self.kernel_size = cin, cout, k
        self.height, self.width, self.pad = h, w, pad
        self.max_dilation = float(max_dilation)
        c = (k - 1) / 2
        offs = torch.arange(k, dtype=torch.float64) - c  # (k,)
        grid = torch.stack(torch.meshgrid(offs, offs, indexing="ij"), -1).reshape(k * k, 2)
        self.register_buffer("offsets", grid.to(device=device, dtype=self.template.dtype),
                             persistent=False)  # (k*k, 2)
        self.dilation = nn.Parameter(torch.tensor(float(dilation), **factory))
        self.weight = nn.Parameter(torch.empty(cout, cin, k, k, **factory))
        self.register_buffer("sigma", torch.tensor(float(sigma), **factory))
        self.conv_bias = nn.Parameter(torch.zeros(cout, **factory)) if bias else None
        self.reset_parameters()

    @staticmethod
    def _template(cout: int, h: int, w: int, cin: int, k: int, pad: int,
                  device: torch.device | str | None) -> Tensor:
        """(K, 6) tuples in (o, r, c, ci, i, j) C-order; in row/col hold the kernel centre."""
        grids = torch.meshgrid(*(torch.arange(n, device=device) for n in (cout, h, w, cin)),
                               indexing="ij")
        t = torch.stack([g.reshape(-1) for g in grids], -1)  # (C_out*H*W*C_in, 4)
        t = t.repeat_interleave(k * k, dim=0).double()  # (K, 4)
        centre = t[:, 1:3] + pad  # (K, 2)
        return torch.cat([t, centre], dim=1)  # (K, 6)

    @torch.no_grad()
    def reset_parameters(self) -> None:
        """Kernel as ``nn.Conv2d`` (Kaiming uniform, ``a = sqrt(5)``), bias zero."""
        nn.init.kaiming_uniform_(self.weight, a=math.sqrt(5), generator=self.generator)
        if self.conv_bias is not None:
            self.conv_bias.zero_()

    def effective_dilation(self) -> Tensor:
        """The dilation in use: the parameter clamped to ``[0, max_dilation]``."""
        return self.dilation.clamp(0.0, self.max_dilation)

    def tuples(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Index-space means (K, 6), deviations (K, 2) and values (K,), shared by the batch."""
        kk = self.kernel_size ** 2
        groups = self.k // kk
        shift = self.offsets.to(self.dilation.dtype) * self.effective_dilation()  # (k*k, 2)
        centre = self.template.to(shift.dtype).view(groups, kk, 6)  # (G, k*k, 6)
        pos = centre[..., 4:] + shift  # (G, k*k, 2)
        means = torch.cat([centre[..., :4], pos], -1).view(self.k, 6)  # (K, 6)
        sigmas = self.sigma.to(shift.dtype).expand(self.k, 2)  # (K, 2)
        # kernel value of tuple (o, r, c, ci, i, j) is weight[o, ci, i, j]
        values = self.weight.view(self.out_channels, 1, self.in_channels, kk).expand(
            self.out_channels, self.height * self.width, self.in_channels, kk)  # (O, HW, I, k*k)
        return means, sigmas, values.reshape(self.k)

    def connections(self, x: Tensor, *, generator: torch.Generator | None = None,
                    sample: bool | None = None) -> Connections:
        sample = self.training if sample is None else sample
        if not sample:
            return super().connections(x, generator=generator, sample=False)
        means, sigmas, values = self.tuples(x)
        _check_finite("tuple parameters", means.sum() + values.sum())
        kk = self.kernel_size ** 2
        groups = self.k // kk
        means = means.view(groups, kk, 6)  # (G, k*k, 6)
        sigmas = sigmas.view(groups, kk, 2)  # (G, k*k, 2)
        values = values.view(groups, kk)  # (G, k*k)
        pts = sample_points(means, self.sizes, self.learn, global_samples=0,
                            local_samples=self.local_samples, region=self.region,
                            generator=generator or self.generator)  # (G, k*k, S, 6)
        idx = pts.flatten(-3, -2)  # (G, k*k*S, 6)
        keep = first_occurrence(linear_index(idx, self.sizes))  # (G, k*k*S)
        weights = point_weights(idx, keep, means, sigmas, values, self.learn, method="exact")
        flat_keep = keep.reshape(-1)  # (G*k*k*S,)
        return Connections(idx.reshape(-1, 6)[flat_keep], weights.reshape(-1)[flat_keep], None)

    def forward(self, x: Tensor) -> Tensor:
        if not isinstance(x, Tensor):
            raise TypeError(f"input must be a Tensor, got {type(x).__name__}")
        want = (self.in_channels, self.height, self.width)
        if x.dim() != 4 or tuple(x.shape[1:]) != want:
            raise ValueError(f"input must have shape (B, *{want}), got {tuple(x.shape)}")
        _check_finite("input", x.sum())
        xp = F.pad(x, (self.pad,) * 4)  # (B, C_in, H + 2P, W + 2P)
        y = self.apply_connections(xp, self.connections(xp))  # (B, C_out*H*W)
        y = y.view(x.shape[0], self.out_channels, self.height, self.width)  # (B, O, H, W)
        return y if self.conv_bias is None else y + self.conv_bias.view(1, -1, 1, 1)

    def extra_repr(self) -> str:
        return (f"{self.in_channels}, {self.out_channels}, size=({self.height}, {self.width}), "
                f"kernel_size={self.kernel_size}, max_dilation={self.max_dilation}, "
                f"pad={self.pad}, sigma={float(self.sigma):.3g}, "
                f"local_samples={self.local_samples}, region={self.region}")
