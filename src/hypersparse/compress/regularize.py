"""Sparsity regularisers (seed 004): ``J~(W) = J(W) + lambda R(W)``.

Weight penalties: L1 ``sum |w|``, L2 ``sum w^2``, group lasso ``sum_g ||w_g||_2`` over rows of a
Linear or filters of a conv (``dim=0``) or input columns/channels (``dim=1``). Activation
penalty: ``sum log(1 + z^2)`` on chosen modules' outputs (collected by forward hooks), which
pushes activations to zero while penalising large ones only logarithmically.

:class:`SparsityRegularizer` attaches all of them with one call, wraps a
:func:`hypersparse.train.fit` loss function, and reports every term per layer.

Example:
    >>> net = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2))
    >>> reg = SparsityRegularizer(net, l1=1e-4, activation=1e-3, activation_modules=["1"])
    >>> _ = net(torch.randn(3, 4))
    >>> reg.penalty().shape
    torch.Size([])
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, Literal

import torch
from torch import Tensor, nn

__all__ = [
    "l1_penalty",
    "l2_penalty",
    "group_lasso_penalty",
    "activation_penalty",
    "SparsityRegularizer",
]


def l1_penalty(weight: Tensor) -> Tensor:
    """``sum |w|``."""
    return weight.abs().sum()


def l2_penalty(weight: Tensor) -> Tensor:
    """``sum w^2`` (weight decay's penalty, without the 1/2)."""
    return weight.square().sum()


def group_lasso_penalty(weight: Tensor, dim: int = 0, eps: float = 0.0) -> Tensor:
    """``sum_g sqrt(sum_{i in g} w_i^2 + eps)`` with one group per index along ``dim``.

    ``dim=0``: rows of a Linear weight / output filters of a conv; ``dim=1``: input columns /
    channels. ``eps > 0`` smooths the kink at zero; with ``eps = 0`` a group that is exactly
    zero gets the subgradient 0 (not NaN).

    Shape:
        weight: ``(U, ...)`` -> scalar.
    """
    if weight.dim() < 1:
        raise ValueError("group lasso needs a tensor of at least one dimension")
    if not -weight.dim() <= dim < weight.dim():
        raise ValueError(f"dim must be in [{-weight.dim()}, {weight.dim()}), got {dim}")
    if eps < 0:
        raise ValueError(f"eps must be >= 0, got {eps}")
    groups = weight.movedim(dim, 0).reshape(weight.shape[dim], -1)  # (G, rest)
    sq = groups.square().sum(1) + eps  # (G,)
    # sqrt'(0) is inf; where a group is exactly zero use the subgradient 0 instead of NaN.
    safe = torch.where(sq > 0, sq, torch.ones_like(sq))
    return torch.where(sq > 0, safe.sqrt(), torch.zeros_like(sq)).sum()


def activation_penalty(z: Tensor) -> Tensor:
    """``sum log(1 + z^2)`` over all entries of ``z`` (seed 004's neural-sparseness term)."""
    return torch.log1p(z.square()).sum()


class _Collect:
    """Forward hook storing this forward's activation penalty (picklable)."""

    def __init__(self, name: str, store: dict[str, Tensor], per_sample: bool) -> None:
        self.name, self.store, self.per_sample = name, store, per_sample

    def __call__(self, module: nn.Module, inputs: Any, output: Any) -> None:
        z = output[0] if isinstance(output, tuple) else output
        p = activation_penalty(z)
        if self.per_sample and z.dim() > 0 and z.shape[0] > 0:
            p = p / z.shape[0]
        self.store[self.name] = self.store.get(self.name, 0) + p


_GROUP_DIMS = {"rows": 0, "filters": 0, "columns": 1, "channels": 1}


class SparsityRegularizer:
    """L1 / L2 / group-lasso weight penalties and a ``log(1 + z^2)`` activation penalty.

    Args:
        model: the network.
        l1, l2, group_lasso: coefficients (0 disables a term).
        group: ``"rows"``/``"filters"`` (dim 0) or ``"columns"``/``"channels"`` (dim 1).
        activation: coefficient of the activation penalty.
        activation_modules: names of submodules whose outputs are penalised (e.g. the ReLUs).
        modules: names of the submodules whose ``weight`` is penalised (default: every
            Linear/Conv).
        per_sample: divide the activation penalty by the batch size (so its scale does not
            depend on the batch size).

    Use :meth:`wrap` to add :meth:`penalty` to a ``fit`` loss function, :meth:`report` to see
    each term per layer, :meth:`remove` to detach the hooks.
    """

    def __init__(self, model: nn.Module, *, l1: float = 0.0, l2: float = 0.0,
                 group_lasso: float = 0.0,
                 group: Literal["rows", "filters", "columns", "channels"] = "rows",
                 activation: float = 0.0, activation_modules: Sequence[str] = (),
                 modules: Sequence[str] | None = None, per_sample: bool = True) -> None:
        for label, v in (("l1", l1), ("l2", l2), ("group_lasso", group_lasso),
                         ("activation", activation)):
            if isinstance(v, bool) or not isinstance(v, int | float) or v < 0:
                raise ValueError(f"{label} must be a number >= 0, got {v!r}")
        if group not in _GROUP_DIMS:
            raise ValueError(f"group must be one of {sorted(_GROUP_DIMS)}, got {group!r}")
        named = dict(model.named_modules())
        if modules is None:
            modules = [n for n, m in named.items()
                       if isinstance(m, nn.Linear | nn.Conv1d | nn.Conv2d | nn.Conv3d)]
        for n in [*modules, *activation_modules]:
            if n not in named:
                raise ValueError(f"no submodule {n!r}; submodules: {sorted(named)}")
        for n in modules:
            if not isinstance(getattr(named[n], "weight", None), Tensor):
                raise ValueError(f"submodule {n!r} has no weight tensor")
        if activation > 0 and not activation_modules:
            raise ValueError("activation > 0 needs activation_modules (names of submodules)")
        self.l1, self.l2, self.group_lasso, self.activation = l1, l2, group_lasso, activation
        self.group_dim = _GROUP_DIMS[group]
        self.modules = {n: named[n] for n in modules}
        self._acts: dict[str, Tensor] = {}
        self._handles = [named[n].register_forward_hook(_Collect(n, self._acts, per_sample))
                         for n in activation_modules]

    def weight_terms(self) -> dict[str, dict[str, Tensor]]:
        """``{module: {"l1": ..., "l2": ..., "group_lasso": ...}}`` (unweighted values)."""
        out: dict[str, dict[str, Tensor]] = {}
        for n, m in self.modules.items():
            w = m.weight
            terms: dict[str, Tensor] = {}
            if self.l1:
                terms["l1"] = l1_penalty(w)
            if self.l2:
                terms["l2"] = l2_penalty(w)
            if self.group_lasso:
                terms["group_lasso"] = group_lasso_penalty(w, self.group_dim)
            out[n] = terms
        return out

    def penalty(self, clear: bool = True) -> Tensor:
        """The weighted sum of every term; the activation part covers the forwards since the
        last call (``clear=False`` keeps them)."""
        total: Tensor = torch.zeros(())
        coef = {"l1": self.l1, "l2": self.l2, "group_lasso": self.group_lasso}
        for terms in self.weight_terms().values():
            for k, v in terms.items():
                total = total.to(v.device) + coef[k] * v
        for v in self._acts.values():
            total = total.to(v.device) + self.activation * v
        if clear:
            self._acts.clear()
        return total

    def wrap(self, loss_fn: Callable[..., Any]) -> Callable[..., Any]:
        """A ``fit`` loss function returning ``loss + penalty`` with ``penalty`` as a metric."""

        def regularized(model: nn.Module, batch: tuple[Tensor, ...]) -> Any:
            self._acts.clear()
            out = loss_fn(model, batch)
            loss, extra = out if isinstance(out, tuple) else (out, {})
            pen = self.penalty()
            return loss + pen, {**extra, "penalty": float(pen.detach())}

        return regularized

    @torch.no_grad()
    def report(self) -> dict[str, dict[str, float]]:
        """Per layer: each weight term and the last activation penalty (unweighted)."""
        out = {n: {k: float(v) for k, v in t.items()} for n, t in self.weight_terms().items()}
        for n, v in self._acts.items():
            out.setdefault(n, {})["activation"] = float(v)
        return out

    def remove(self) -> None:
        """Detach the activation hooks."""
        for h in self._handles:
            h.remove()
        self._handles = []
        self._acts.clear()

    def __repr__(self) -> str:
        return (f"SparsityRegularizer(l1={self.l1}, l2={self.l2}, group_lasso={self.group_lasso},"
                f" activation={self.activation}, modules={list(self.modules)})")
