"""An MLP hypernetwork over a :class:`~hypersparse.nn.HyperLayer`, and the sorting layer built on
it (seed 001, "Learning the 3-by-3 sorting transformation").

:class:`MLPHyperLayer` maps each (flattened) input instance through an MLP to the raw tuple
parameters of its own sparse weight tensor. :class:`SortNet` is an ``n -> n`` adaptive layer
with n tuples and values fixed to 1, so that every instance's eval weight matrix is a 0/1 matrix
that should be the permutation sorting that instance. Three parametrisations:

- ``learn="output"`` (default): a template fixes tuple j's input column to j; the hypernetwork
  emits the output row of every input element, i.e. its rank. A rank is a sum of comparisons,
  monotone in the element, so moving a tuple between rows passes through the right
  intermediate rows; this learned far better than the other two.
- ``learn="input"``: a template fixes tuple i's output row to i; the hypernetwork emits the
  input column read by each output row (an arg-sort). Moving a tuple from column 0 to column 2
  crosses column 1, a poor local optimum the MSE loss rarely escapes.
- ``learn="both"``: the hypernetwork emits row and column of every tuple (as in the 2019 code).

With one coordinate fixed by the template, the eval matrix has one entry per fixed row (or
column), so it is a permutation iff the learned coordinates are distinct (:func:`is_permutation`).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor, nn

from .hyper import HyperLayer

__all__ = ["MLPHyperLayer", "PairwiseNet", "SortNet", "is_permutation"]

_LEARN = ("input", "output", "both")
_HYPERNETS = ("mlp", "pairwise")


class PairwiseNet(nn.Module):
    """A permutation-equivariant hypernetwork over a vector: element k gets
    ``psi(sum_{j != k} phi(x_k - x_j))``, with ``phi`` and ``psi`` small MLPs.

    Swapping two inputs swaps their outputs, so at a tie ``x_a = x_b`` the two elements get
    identical tuples: the decision boundary of every pair sits exactly at the tie, which a plain
    MLP only approximates (its offsets cost the MSE loss almost nothing; see
    docs/sort_permutation.md). A rank is ``sum_j step(x_k - x_j)``, exactly this form.

    Args:
        out: outputs per element.
        hidden: widths of ``phi``'s hidden layers; ``psi`` has one hidden layer of the last width.

    Shape:
        input: (B, n); output: (B, n * out), element-major.

    Example:
        >>> PairwiseNet(3, hidden=(16,))(torch.randn(2, 5)).shape
        torch.Size([2, 15])
    """

    def __init__(self, out: int, hidden: Sequence[int] = (64, 64), *,
                 device: torch.device | str | None = None, dtype: torch.dtype | None = None
                 ) -> None:
        super().__init__()
        factory: dict[str, Any] = {"device": device, "dtype": dtype}
        self.out = int(out)
        widths = [int(h) for h in hidden]
        if not widths or any(h < 1 for h in widths):
            raise ValueError(f"hidden must be non-empty positive widths, got {tuple(hidden)}")
        layers: list[nn.Module] = []
        n_in = 1
        for h in widths:
            layers += [nn.Linear(n_in, h, **factory), nn.ReLU()]
            n_in = h
        self.phi = nn.Sequential(*layers)
        self.psi = nn.Sequential(nn.Linear(n_in, n_in, **factory), nn.ReLU(),
                                 nn.Linear(n_in, out, **factory))

    def forward(self, x: Tensor) -> Tensor:
        b, n = x.shape
        d = (x.unsqueeze(2) - x.unsqueeze(1)).unsqueeze(-1)  # (B, n, n, 1)
        off = ~torch.eye(n, dtype=torch.bool, device=x.device)
        h = (self.phi(d) * off.unsqueeze(-1).to(x.dtype)).sum(2)  # (B, n, H)
        return self.psi(h).reshape(b, n * self.out)  # (B, n * out)



class MLPHyperLayer(HyperLayer):
    """A :class:`HyperLayer` whose hypernetwork is an MLP on the flattened input.

    The MLP (``Linear -> ReLU`` per hidden width, then ``Linear``) emits, per tuple, the raw
    means of the learned columns, one raw sigma (unless ``sigma`` fixes it) and (if
    ``learn_values``) a value. The final layer is initialised small, so every tuple starts near
    the centre of its learned columns, whatever the input.

    A fixed ``sigma`` is a standard deviation in index units, the same for every tuple and
    learned column; it lives in the buffer ``sigma`` (so a schedule that changes it with
    :meth:`set_sigma` is checkpointed with the model). On the sorting task a fixed, annealed
    deviation learned far better than a hypernetwork-emitted one, which hedges between
    columns instead of committing (docs/sort_permutation.md).

    Args:
        in_shape, out_shape, k: as for :class:`HyperLayer`.
        hidden: widths of the hidden layers (may be empty: a linear hypernetwork).
        sigma: fix every deviation to this value (index units, > 0); None: emitted per tuple.
        **kwargs: the remaining :class:`HyperLayer` arguments (``template``, ``learn_cols``,
            ``learn_values``, sample counts, ``sigma_scale``, ``device``, ``dtype``, ...).

    Shape:
        input: (B, *in_shape); output: (B, *out_shape).

    Example:
        >>> layer = MLPHyperLayer(5, 5, k=5, hidden=(16,), learn_values=False)
        >>> layer(torch.randn(8, 5)).shape
        torch.Size([8, 5])
    """

    sigma: Tensor
    net: nn.Module

    def __init__(self, in_shape: int | Sequence[int], out_shape: int | Sequence[int], k: int,
                 *, hidden: Sequence[int] = (64, 64), sigma: float | None = None,
                 **kwargs: Any) -> None:
        super().__init__(in_shape, out_shape, k, **kwargs)
        widths = [int(h) for h in hidden]
        if any(h < 1 for h in widths):
            raise ValueError(f"hidden widths must be positive ints, got {tuple(hidden)}")
        self.hidden = tuple(widths)
        factory: dict[str, Any] = {"device": kwargs.get("device"), "dtype": kwargs.get("dtype")}
        self.fixed_sigma = sigma is not None
        self.register_buffer("sigma", torch.tensor(
            float("nan") if sigma is None else 1.0, dtype=factory["dtype"] or torch.float32,
            device=factory["device"]))
        if sigma is not None:
            self.set_sigma(sigma)
        self.per_tuple = len(self.learn) + int(not self.fixed_sigma) + int(self.learn_values)
        layers: list[nn.Module] = []
        n_in = math.prod(self.in_shape)
        for h in widths:
            layers += [nn.Linear(n_in, h, **factory), nn.ReLU()]
            n_in = h
        layers.append(nn.Linear(n_in, k * self.per_tuple, **factory))
        self.net = nn.Sequential(*layers)
        self.reset_parameters()

    @torch.no_grad()
    def reset_parameters(self) -> None:
        """Default ``nn.Linear`` init for hidden layers; the output layer scaled by 0.1."""
        linears = [m for m in self.net.modules() if isinstance(m, nn.Linear)]
        for m in linears:
            m.reset_parameters()
        last = linears[-1]
        last.weight.mul_(0.1)
        last.bias.zero_()
        if self.bias is not None:
            self.bias.zero_()

    @torch.no_grad()
    def set_sigma(self, sigma: float) -> None:
        """Set the fixed deviation (index units); only for layers built with ``sigma=``."""
        if not self.fixed_sigma:
            raise ValueError("this layer emits its sigmas; build it with sigma=... to fix them")
        sizes = self.learned_sizes
        if len(set(sizes)) > 1:
            raise ValueError(f"a fixed sigma needs learned columns of equal size, got {sizes}")
        floor = self.min_sigma * self.sigma_scale * sizes[0]
        if not math.isfinite(sigma) or sigma <= floor:
            raise ValueError(f"sigma must be a finite float > min_sigma * sigma_scale * size "
                             f"= {floor:.4g}, got {sigma}")
        self.sigma.fill_(float(sigma))

    def _raw_sigma(self) -> Tensor:
        # invert bound_sigmas: sigma = (softplus(raw + 2) + min_sigma) * sigma_scale * size
        base = self.sigma / (self.sigma_scale * self.learned_sizes[0]) - self.min_sigma
        base = base.clamp_min(1e-6)
        return torch.log(torch.expm1(base)) - 2.0

    def hyper(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor | None]:
        out = self.net(x.flatten(1)).view(x.shape[0], self.k, self.per_tuple)  # (B, K, R'+..)
        nl = len(self.learn)
        if self.fixed_sigma:
            raw_sigmas = self._raw_sigma().expand(x.shape[0], self.k)  # (B, K)
        else:
            raw_sigmas = out[..., nl]  # (B, K)
        values = out[..., -1] if self.learn_values else None
        return out[..., :nl], raw_sigmas, values

    def extra_repr(self) -> str:
        s = super().extra_repr() + f", hidden={self.hidden}"
        return s + (f", sigma={float(self.sigma):.4g}" if self.fixed_sigma else "")


class SortNet(MLPHyperLayer):
    """An adaptive ``n -> n`` hyperlayer meant to emit, per input, the permutation sorting it.

    n tuples, values fixed to 1 (``learn_values=False``), no bias. In eval, :meth:`indices`
    gives each instance's emitted (row, column) pairs and the output is
    ``y[b, row] = sum x[b, column]``.

    Args:
        n: the vector length.
        hidden: the hypernetwork's hidden widths.
        hypernet: ``"mlp"`` (an MLP on the whole vector, as in seed 001) or ``"pairwise"``
            (:class:`PairwiseNet`, permutation-equivariant).
        learn: ``"output"`` (columns fixed to ``0..n-1`` by a template, rows learned),
            ``"input"`` (rows fixed, columns learned) or ``"both"`` (both learned).
        **kwargs: ``sigma`` (see :class:`MLPHyperLayer`), sample counts, ``region``,
            ``sigma_scale``, ``min_sigma``, ``device``, ``dtype`` (see :class:`HyperLayer`).

    Shape:
        input: (B, n); output: (B, n).

    Example:
        >>> net = SortNet(3, hidden=(32, 32), sigma=0.5).eval()
        >>> rows, cols = net.indices(torch.randn(4, 3))
        >>> rows.shape, cols.shape
        (torch.Size([4, 3]), torch.Size([4, 3]))
    """

    def __init__(self, n: int, *, hidden: Sequence[int] = (64, 64), learn: str = "output",
                 hypernet: str = "mlp", **kwargs: Any) -> None:
        if not isinstance(n, int) or isinstance(n, bool) or n < 1:
            raise ValueError(f"n must be an int >= 1, got {n!r}")
        if learn not in _LEARN:
            raise ValueError(f"learn must be one of {_LEARN}, got {learn!r}")
        if hypernet not in _HYPERNETS:
            raise ValueError(f"hypernet must be one of {_HYPERNETS}, got {hypernet!r}")
        for bad in ("learn_values", "template", "learn_cols", "bias"):
            if bad in kwargs:
                raise TypeError(f"SortNet fixes {bad!r}; use MLPHyperLayer to set it")
        if learn == "input":
            template = torch.zeros(n, 2, dtype=torch.float64)
            template[:, 0] = torch.arange(n, dtype=torch.float64)
            kwargs.update(template=template, learn_cols=[1])
        elif learn == "output":
            template = torch.zeros(n, 2, dtype=torch.float64)
            template[:, 1] = torch.arange(n, dtype=torch.float64)
            kwargs.update(template=template, learn_cols=[0])
        self.n, self.learn_mode, self.hypernet = n, learn, hypernet
        super().__init__(n, n, n, hidden=hidden, learn_values=False, **kwargs)
        if hypernet == "pairwise":
            self.net = PairwiseNet(self.per_tuple, hidden, device=kwargs.get("device"),
                                   dtype=kwargs.get("dtype"))
            self.reset_parameters()

    @torch.no_grad()
    def indices(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """The eval-mode (rounded) output rows and input columns of the n tuples per instance.

        Shape:
            x: (B, n); output: two (B, n) int64 tensors, tuple order.
        """
        conn = self.connections(x, sample=False)
        idx = conn.indices.view(x.shape[0], self.n, 2)  # (B, n, 2)
        return idx[..., 0], idx[..., 1]

    def extra_repr(self) -> str:
        return (f"n={self.n}, learn={self.learn_mode!r}, hypernet={self.hypernet!r}, "
                + super().extra_repr())


def is_permutation(rows: Tensor, cols: Tensor, n: int) -> Tensor:
    """Whether each instance's n (row, column) pairs form an n x n permutation matrix (every row
    and every column used exactly once).

    Shape:
        rows, cols: (B, n) int64 in ``[0, n)``; output: (B,) bool.

    Example:
        >>> is_permutation(torch.tensor([[0, 1, 2]]), torch.tensor([[2, 2, 0]]), 3)
        tensor([False])
    """
    if rows.shape != cols.shape or rows.dim() != 2 or rows.shape[1] != n:
        raise ValueError(f"rows and cols must both have shape (B, {n}), "
                         f"got {tuple(rows.shape)} and {tuple(cols.shape)}")
    full = torch.arange(n, device=rows.device)
    return (rows.sort(-1).values == full).all(-1) & (cols.sort(-1).values == full).all(-1)
