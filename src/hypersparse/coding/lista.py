"""LISTA: learned ISTA (Gregor & LeCun, ICML 2010).

ISTA's iteration ``z <- soft(z - (z D D^T - x D^T) / L, alpha / L)`` is
``z <- soft(x W_e^T + z S^T, theta)`` with ``W_e = D / L``, ``S = I - D D^T / L`` and
``theta = alpha / L``. LISTA unrolls ``T`` such steps (from ``z = 0``) and learns ``W_e``, ``S``
and the per-atom thresholds ``theta``, either shared by all steps (the paper's tied form) or one
set per step (untied). Initialised with :meth:`LISTA.from_dictionary`, ``LISTA(x)`` equals ``T``
ISTA iterations exactly; training (e.g. on :func:`lista_loss`, the lasso objective itself, or on
the squared distance to optimal codes as in the paper) makes those ``T`` steps worth many more.

With ``momentum=True`` each step also carries a learned scalar momentum ``beta_k`` (learned
FISTA): ``y = z_k + beta_k (z_k - z_{k-1})``, ``z_{k+1} = soft(x W_e^T + y S^T, theta)``.
Initialised with ``from_dictionary(..., momentum=True)``, ``beta_k`` follows FISTA's schedule
``(t_k - 1) / t_{k+1}`` (Beck & Teboulle 2009) and the untrained net equals ``T`` FISTA
iterations without restart, a much stronger starting point than ISTA for the same ``T``.

With ``coupled=True`` the two matrices are tied through the dictionary (LISTA-CP, Chen et al.,
NeurIPS 2018: ``S_k = I - W_k D^T``, the coupling their convergence analysis shows a converging
LISTA must have): ``z_{k+1} = soft(y - (y D - x) W_k^T, theta_k)`` with a learned ``W_k`` (M, N)
and the fixed dictionary ``D`` kept in a buffer. Five times fewer parameters than ``W_e, S``
at M = 4N, and each step costs two thin (B, M)x(M, N) products instead of a (B, M)x(M, M) one.

Axis letters: B batch, N signal size, M atoms, T unrolled steps.
"""

from __future__ import annotations

import math
from typing import Any, Literal

import torch
from torch import Tensor, nn

from .ista import _check_alpha, _check_xd, lasso_objective, lipschitz_constant, soft_threshold

__all__ = ["LISTA", "lista_loss", "fista_momentum"]


def fista_momentum(n_steps: int, *, dtype: torch.dtype | None = None,
                   device: torch.device | str | None = None) -> Tensor:
    """FISTA's momentum weights ``beta_k = (t_k - 1) / t_{k+1}``, ``t_1 = 1``,
    ``t_{k+1} = (1 + sqrt(1 + 4 t_k^2)) / 2``, for steps ``k = 0 .. n_steps - 1`` (the weight
    step ``k`` puts on ``z_k - z_{k-1}``; ``beta_0 = 0``).

    Shape:
        returns (n_steps,).

    Example:
        >>> fista_momentum(3)
        tensor([0.0000, 0.0000, 0.2818])
    """
    if isinstance(n_steps, bool) or not isinstance(n_steps, int) or n_steps < 0:
        raise ValueError(f"n_steps must be an int >= 0, got {n_steps!r}")
    betas, t = [], 1.0
    for k in range(n_steps):
        t_next = 0.5 * (1.0 + math.sqrt(1.0 + 4.0 * t * t))
        # step 0 starts from z_0 = z_{-1} = 0; FISTA's first extrapolation is at step 1
        betas.append(0.0 if k == 0 else (t - 1.0) / t_next)
        if k > 0:
            t = t_next
    return torch.tensor(betas, dtype=dtype, device=device)


class LISTA(nn.Module):
    """``T`` unrolled, learned ISTA steps.

    Args:
        n_features: signal size N.
        n_atoms: code size M.
        n_steps: T >= 1.
        shared: one ``(W_e, S, theta)`` for all steps (tied, as in the paper) instead of one per
            step.
        nonneg: non-negative codes (``relu(v - theta)`` instead of soft thresholding).
        momentum: add one learned momentum scalar per step (learned FISTA; see the module
            docstring). Off: the paper's LISTA.
        coupled: LISTA-CP weight coupling ``S_k = I - W_k D^T`` (see the module docstring):
            learn ``weight_e`` = ``W_k`` only; ``D`` is the buffer ``dictionary``.

    Shape:
        x: (B, N) -> codes (B, M). Parameters: ``weight_e`` (T', M, N), ``weight_s`` (T', M, M),
        ``threshold`` (T', M) with ``T' = 1`` if shared else ``T``; with ``momentum``, also
        ``momentum`` (T,) (one per step even when shared). With ``coupled``, no ``weight_s``
        but a buffer ``dictionary`` (M, N).

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
        momentum: bool = False,
        coupled: bool = False,
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
        self.weight_s: nn.Parameter | None = None
        self.dictionary: Tensor | None
        if coupled:
            self.register_buffer("dictionary", torch.empty(n_atoms, n_features, **kw))
        else:
            self.dictionary = None
            self.weight_s = nn.Parameter(torch.empty(t, n_atoms, n_atoms, **kw))
        self.threshold = nn.Parameter(torch.empty(t, n_atoms, **kw))
        self.momentum: nn.Parameter | None = (
            nn.Parameter(torch.empty(n_steps, **kw)) if momentum else None
        )
        self.reset_parameters()

    def reset_parameters(self, generator: torch.Generator | None = None) -> None:
        """ISTA initialisation from a random unit-norm dictionary and alpha = 0.1."""
        d = torch.randn(self.n_atoms, self.n_features, generator=generator,
                        dtype=self.weight_e.dtype)
        d = d / d.norm(dim=1, keepdim=True).clamp_min(1e-12)
        self.init_from_dictionary(d.to(self.weight_e.device), 0.1)

    @torch.no_grad()
    def init_from_dictionary(self, dictionary: Tensor, alpha: float) -> None:
        """Set ``W_e = D / L``, ``S = I - D D^T / L``, ``theta = alpha / L`` (ISTA's step) and,
        with momentum, ``beta_k`` to FISTA's schedule (:func:`fista_momentum`); coupled: also
        store ``D`` in the ``dictionary`` buffer."""
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
        if self.weight_s is not None:
            self.weight_s.copy_((eye - D @ D.t() / L).expand_as(self.weight_s))
        if self.dictionary is not None:
            self.dictionary.copy_(D)
        self.threshold.copy_((alpha / L).expand_as(self.threshold))
        if self.momentum is not None:
            self.momentum.copy_(fista_momentum(self.n_steps, dtype=D.dtype, device=D.device))

    @classmethod
    def from_dictionary(
        cls,
        dictionary: Tensor,
        alpha: float,
        n_steps: int = 16,
        *,
        shared: bool = False,
        nonneg: bool = False,
        momentum: bool = False,
        coupled: bool = False,
    ) -> LISTA:
        """A LISTA whose output equals ``n_steps`` ISTA iterations on ``dictionary`` (FISTA
        iterations without restart when ``momentum``)."""
        if dictionary.dim() != 2:
            raise ValueError(f"dictionary must be 2-D (M, N), got shape {tuple(dictionary.shape)}")
        M, N = dictionary.shape
        net = cls(N, M, n_steps, shared=shared, nonneg=nonneg, momentum=momentum,
                  coupled=coupled, device=dictionary.device, dtype=dictionary.dtype)
        net.init_from_dictionary(dictionary, alpha)
        return net

    def forward(self, x: Tensor) -> Tensor:
        if x.dim() != 2 or x.shape[1] != self.n_features:
            raise ValueError(f"x must be (B, N={self.n_features}), got shape {tuple(x.shape)}")
        z = x.new_zeros(x.shape[0], self.n_atoms)  # (B, M)
        z_prev = z
        for k in range(self.n_steps):
            i = 0 if self.shared else k
            y = z if self.momentum is None or k == 0 else torch.lerp(z, z_prev, -self.momentum[k])
            if self.dictionary is not None:  # coupled: y - (y D - x) W^T
                r = torch.addmm(x, y, self.dictionary, beta=-1)  # (B, N)
                v = torch.addmm(y, r, self.weight_e[i].t(), alpha=-1)  # (B, M)
            else:
                assert self.weight_s is not None  # not coupled: set in __init__
                v = torch.addmm(x @ self.weight_e[i].t(), y, self.weight_s[i].t())  # (B, M)
            z_prev, z = z, soft_threshold(v, self.threshold[i], self.nonneg)
        return z

    def extra_repr(self) -> str:
        return (f"n_features={self.n_features}, n_atoms={self.n_atoms}, n_steps={self.n_steps}, "
                f"shared={self.shared}, nonneg={self.nonneg}, "
                f"momentum={self.momentum is not None}, coupled={self.dictionary is not None}")


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
