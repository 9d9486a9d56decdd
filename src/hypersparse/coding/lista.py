"""LISTA: learned ISTA (Gregor & LeCun, ICML 2010).

ISTA's iteration ``z <- soft(z - (z D D^T - x D^T) / L, alpha / L)`` is
``z <- soft(x W_e^T + z S^T, theta)`` with ``W_e = D / L``, ``S = I - D D^T / L`` and
``theta = alpha / L``. LISTA unrolls ``T`` such steps (from ``z = 0``) and learns ``W_e``, ``S``
and the per-atom thresholds ``theta``, either shared by all steps (the paper's tied form) or one
set per step (untied). Initialised with :meth:`LISTA.from_dictionary`, ``LISTA(x)`` equals ``T``
ISTA iterations exactly; training (e.g. on :func:`lista_loss`, the lasso objective itself, or on
the squared distance to optimal codes as in the paper) makes those ``T`` steps worth many more.

Axis letters: B batch, N signal size, M atoms, T unrolled steps.
"""

from __future__ import annotations

from typing import Any, Literal

import torch
from torch import Tensor, nn

from .ista import _check_alpha, _check_xd, lasso_objective, lipschitz_constant, soft_threshold

__all__ = ["LISTA", "lista_loss"]


class LISTA(nn.Module):
    """``T`` unrolled, learned ISTA steps.

    Args:
        n_features: signal size N.
        n_atoms: code size M.
        n_steps: T >= 1.
        shared: one ``(W_e, S, theta)`` for all steps (tied, as in the paper) instead of one per
            step.
        nonneg: non-negative codes (``relu(v - theta)`` instead of soft thresholding).

    Shape:
        x: (B, N) -> codes (B, M). Parameters: ``weight_e`` (T', M, N), ``weight_s`` (T', M, M),
        ``threshold`` (T', M) with ``T' = 1`` if shared else ``T``.

    Example:
        >>> D = torch.nn.functional.normalize(torch.randn(32, 16), dim=1)
        >>> net = LISTA.from_dictionary(D, alpha=0.1, n_steps=4)
        >>> net(torch.randn(8, 16)).shape
        torch.Size([8, 32])
    """

    def __init__(
        self,
        n_features: int,
        n_atoms: int,
        n_steps: int = 16,
        *,
        shared: bool = False,
        nonneg: bool = False,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        for name, v in (("n_features", n_features), ("n_atoms", n_atoms), ("n_steps", n_steps)):
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ValueError(f"{name} must be an int >= 1, got {v!r}")
        self.n_features, self.n_atoms, self.n_steps = n_features, n_atoms, n_steps
        self.shared, self.nonneg = bool(shared), bool(nonneg)
        t = 1 if shared else n_steps
        kw: dict[str, Any] = {"device": device, "dtype": dtype}
        self.weight_e = nn.Parameter(torch.empty(t, n_atoms, n_features, **kw))
        self.weight_s = nn.Parameter(torch.empty(t, n_atoms, n_atoms, **kw))
        self.threshold = nn.Parameter(torch.empty(t, n_atoms, **kw))
        self.reset_parameters()

    def reset_parameters(self, generator: torch.Generator | None = None) -> None:
        """ISTA initialisation from a random unit-norm dictionary and alpha = 0.1."""
        d = torch.randn(self.n_atoms, self.n_features, generator=generator,
                        dtype=self.weight_e.dtype)
        d = d / d.norm(dim=1, keepdim=True).clamp_min(1e-12)
        self.init_from_dictionary(d.to(self.weight_e.device), 0.1)

    @torch.no_grad()
    def init_from_dictionary(self, dictionary: Tensor, alpha: float) -> None:
        """Set ``W_e = D / L``, ``S = I - D D^T / L``, ``theta = alpha / L`` (ISTA's step)."""
        alpha = _check_alpha(alpha)
        if dictionary.shape != (self.n_atoms, self.n_features):
            raise ValueError(
                f"dictionary must have shape (M={self.n_atoms}, N={self.n_features}), got "
                f"{tuple(dictionary.shape)}"
            )
        D = dictionary.detach().to(self.weight_e)
        L = lipschitz_constant(D)
        eye = torch.eye(self.n_atoms, dtype=D.dtype, device=D.device)
        self.weight_e.copy_((D / L).expand_as(self.weight_e))
        self.weight_s.copy_((eye - D @ D.t() / L).expand_as(self.weight_s))
        self.threshold.copy_((alpha / L).expand_as(self.threshold))

    @classmethod
    def from_dictionary(
        cls,
        dictionary: Tensor,
        alpha: float,
        n_steps: int = 16,
        *,
        shared: bool = False,
        nonneg: bool = False,
    ) -> LISTA:
        """A LISTA whose output equals ``n_steps`` ISTA iterations on ``dictionary``."""
        if dictionary.dim() != 2:
            raise ValueError(f"dictionary must be 2-D (M, N), got shape {tuple(dictionary.shape)}")
        M, N = dictionary.shape
        net = cls(N, M, n_steps, shared=shared, nonneg=nonneg, device=dictionary.device,
                  dtype=dictionary.dtype)
        net.init_from_dictionary(dictionary, alpha)
        return net

    def forward(self, x: Tensor) -> Tensor:
        if x.dim() != 2 or x.shape[1] != self.n_features:
            raise ValueError(f"x must be (B, N={self.n_features}), got shape {tuple(x.shape)}")
        z = x.new_zeros(x.shape[0], self.n_atoms)  # (B, M)
        for k in range(self.n_steps):
            i = 0 if self.shared else k
            v = x @ self.weight_e[i].t() + z @ self.weight_s[i].t()  # (B, M)
            z = soft_threshold(v, self.threshold[i], self.nonneg)
        return z

    def extra_repr(self) -> str:
        return (f"n_features={self.n_features}, n_atoms={self.n_atoms}, n_steps={self.n_steps}, "
                f"shared={self.shared}, nonneg={self.nonneg}")


def lista_loss(
    codes: Tensor,
    x: Tensor,
    dictionary: Tensor,
    alpha: float,
    *,
    target: Tensor | None = None,
    kind: Literal["objective", "regression"] = "objective",
) -> Tensor:
    """A training loss for an encoder's ``codes``.

    ``"objective"``: the mean lasso objective ``1/2 ||x - z D||^2 + alpha ||z||_1`` (needs no
    solver; what the encoder should minimise). ``"regression"``: Gregor & LeCun's
    ``1/2 ||z - z*||^2`` to optimal codes ``target``, averaged over the batch.

    Shape:
        codes: (B, M); x: (B, N); dictionary: (M, N); target: (B, M); returns a 0-d tensor.
    """
    _check_xd(x, dictionary)
    if kind == "objective":
        return lasso_objective(x, codes, dictionary, alpha).mean()
    if kind == "regression":
        if target is None or target.shape != codes.shape:
            raise ValueError(
                f"kind='regression' needs target codes of shape {tuple(codes.shape)}, got "
                f"{None if target is None else tuple(target.shape)}"
            )
        return 0.5 * (codes - target).pow(2).sum(1).mean()
    raise ValueError(f"kind must be 'objective' or 'regression', got {kind!r}")
