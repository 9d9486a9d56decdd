"""Dictionary learning: ``min_{D, Z} sum_b 1/2 ||x_b - z_b D||^2 + alpha ||z_b||_1``, unit atoms.

Two drivers share one dictionary update, the block-coordinate descent of Mairal, Bach, Ponce &
Sapiro (JMLR 2010, Algorithm 2) on the sufficient statistics ``A = sum z^T z`` (M, M) and
``Bs = sum z^T x`` (M, N):

* **batch** (:func:`learn_dictionary` with ``batch_size=None``): alternate FISTA codes for the
  whole set (warm-started) with a dictionary update from that set's statistics;
* **online mini-batch** (:class:`OnlineDictionaryLearner`, or :func:`learn_dictionary` with a
  ``batch_size``): statistics accumulate over mini-batches with Mairal's forgetting weights,
  and every step runs one update sweep.

Atoms are rows of ``D`` (scikit-learn's layout) and are renormalised to unit l2 norm after every
update. Atoms that stop being used (their code energy ``A_jj`` is ~0, or their usage rate falls
below ``dead_threshold``) are resampled from the signals the current dictionary reconstructs
worst, so no atom stays dead. ``alpha`` follows :mod:`hypersparse.coding.ista`.

Axis letters: B batch, N signal size, M atoms.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import torch
from torch import Tensor, nn

from .ista import _check_alpha, lasso_objective, lipschitz_constant, sparse_encode

__all__ = [
    "normalize_atoms",
    "init_dictionary",
    "update_dictionary",
    "resample_atoms",
    "OnlineDictionaryLearner",
    "DictionaryResult",
    "learn_dictionary",
]


def normalize_atoms(dictionary: Tensor, eps: float = 1e-12) -> Tensor:
    """Rows scaled to unit l2 norm (rows of norm < ``eps`` are scaled by ``1/eps``).

    Shape:
        dictionary: (M, N); returns (M, N).
    """
    if dictionary.dim() != 2:
        raise ValueError(f"dictionary must be 2-D (M, N), got shape {tuple(dictionary.shape)}")
    return dictionary / dictionary.norm(dim=1, keepdim=True).clamp_min(eps)


def init_dictionary(
    x: Tensor, n_atoms: int, *, generator: torch.Generator | None = None
) -> Tensor:
    """Unit-norm atoms drawn from the data: ``n_atoms`` random rows of ``x`` (with replacement
    only if ``x`` has fewer rows), plus a little Gaussian noise so that copies and all-zero
    rows still give distinct, non-zero atoms.

    Shape:
        x: (B, N); returns (n_atoms, N).
    """
    if x.dim() != 2 or x.shape[0] == 0:
        raise ValueError(f"x must be a non-empty 2-D (B, N) tensor, got shape {tuple(x.shape)}")
    if isinstance(n_atoms, bool) or not isinstance(n_atoms, int) or n_atoms < 1:
        raise ValueError(f"n_atoms must be an int >= 1, got {n_atoms!r}")
    B = x.shape[0]
    if n_atoms <= B:
        idx = torch.randperm(B, generator=generator)[:n_atoms]
    else:
        idx = torch.randint(B, (n_atoms,), generator=generator)
    atoms = x[idx.to(x.device)]  # (M, N)
    noise = torch.randn(atoms.shape, generator=generator, dtype=x.dtype).to(x.device)
    scale = atoms.norm(dim=1).mean().clamp_min(1.0) * 0.01
    return normalize_atoms(atoms + scale * noise)


def update_dictionary(
    dictionary: Tensor, A: Tensor, Bs: Tensor, *, n_sweeps: int = 1, eps: float = 1e-10
) -> Tensor:
    """Block-coordinate descent on the atoms given ``A = Z^T Z`` and ``Bs = Z^T X``.

    For each atom j: ``d_j <- d_j + (Bs_j - A_j D) / A_jj``, then ``d_j <- d_j / ||d_j||``.
    Atoms with ``A_jj <= eps`` (unused) are left as they are.

    Shape:
        dictionary: (M, N); A: (M, M); Bs: (M, N); returns a new (M, N) tensor.
    """
    M, N = dictionary.shape
    if A.shape != (M, M) or Bs.shape != (M, N):
        raise ValueError(
            f"A must be (M, M)={(M, M)} and Bs (M, N)={(M, N)}, got {tuple(A.shape)} and "
            f"{tuple(Bs.shape)}"
        )
    D = dictionary.clone()
    diag = A.diagonal()
    active = (diag > eps).tolist()  # one sync, not one per atom
    for _ in range(n_sweeps):
        for j in range(M):
            if not active[j]:
                continue
            u = D[j] + (Bs[j] - A[j] @ D) / diag[j]  # (N,)
            D[j] = u / u.norm().clamp_min(1e-12)
    return D


def resample_atoms(
    dictionary: Tensor, dead: Tensor, x: Tensor, codes: Tensor
) -> Tensor:
    """Replace the atoms flagged in ``dead`` by the (normalised) signals of ``x`` with the
    largest reconstruction error under ``codes`` (distinct signals, worst first).

    Shape:
        dictionary: (M, N); dead: (M,) bool; x: (B, N); codes: (B, M); returns (M, N).
    """
    n_dead = int(dead.sum())
    if n_dead == 0 or x.shape[0] == 0:
        return dictionary
    residual = x - codes @ dictionary  # (B, N)
    err = residual.pow(2).sum(1)  # (B,)
    k = min(n_dead, x.shape[0])
    worst = torch.topk(err, k).indices
    D = dictionary.clone()
    idx = torch.nonzero(dead).flatten()[:k]
    D[idx] = normalize_atoms(residual[worst] + 1e-6 * x[worst])
    return D


class OnlineDictionaryLearner(nn.Module):
    """Online mini-batch dictionary learning (Mairal et al. 2010) as a module with all state in
    buffers (``dictionary``, ``A``, ``Bs``, ``usage``, ``steps``), so it checkpoints and resumes.

    Call :meth:`partial_fit` on each mini-batch; ``forward(x)`` returns codes under the current
    dictionary (FISTA, ``n_iter`` iterations at most).

    Args:
        n_features: signal size N.
        n_atoms: dictionary size M.
        alpha: l1 weight (> 0), as in :func:`hypersparse.coding.sparse_encode`.
        nonneg: non-negative codes.
        n_iter: FISTA iterations per encoding.
        tol: FISTA relative-change tolerance.
        dead_threshold: atoms used (non-zero code) by fewer than this fraction of signals, on an
            exponential average over recent batches, are resampled every ``resample_every``
            steps.
        resample_every: steps between dead-atom checks (0 disables resampling).

    Shape:
        x: (B, N) -> codes (B, M).

    Example:
        >>> learner = OnlineDictionaryLearner(16, 32, alpha=0.1)
        >>> x = torch.randn(64, 16)
        >>> learner.reset_parameters(x)
        >>> _ = learner.partial_fit(x)
        >>> learner(x).shape
        torch.Size([64, 32])
    """

    dictionary: Tensor
    A: Tensor
    Bs: Tensor
    usage: Tensor
    steps: Tensor

    def __init__(
        self,
        n_features: int,
        n_atoms: int,
        alpha: float,
        *,
        nonneg: bool = False,
        n_iter: int = 50,
        tol: float = 1e-4,
        dead_threshold: float = 1e-3,
        resample_every: int = 50,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        for name, v in (("n_features", n_features), ("n_atoms", n_atoms), ("n_iter", n_iter)):
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ValueError(f"{name} must be an int >= 1, got {v!r}")
        if resample_every < 0:
            raise ValueError(f"resample_every must be >= 0, got {resample_every}")
        self.n_features, self.n_atoms = n_features, n_atoms
        self.alpha = _check_alpha(alpha)
        self.nonneg, self.n_iter, self.tol = bool(nonneg), n_iter, float(tol)
        self.dead_threshold, self.resample_every = float(dead_threshold), resample_every
        kw: dict[str, Any] = {"device": device, "dtype": dtype}
        self.register_buffer("dictionary", torch.zeros(n_atoms, n_features, **kw))
        self.register_buffer("A", torch.zeros(n_atoms, n_atoms, **kw))
        self.register_buffer("Bs", torch.zeros(n_atoms, n_features, **kw))
        self.register_buffer("usage", torch.ones(n_atoms, **kw))
        self.register_buffer("steps", torch.zeros((), dtype=torch.long, device=device))
        self.reset_parameters()

    def reset_parameters(
        self, x: Tensor | None = None, *, generator: torch.Generator | None = None
    ) -> None:
        """Fresh unit-norm atoms (random rows of ``x`` if given, else Gaussian) and zero stats."""
        with torch.no_grad():
            if x is not None:
                self._check_x(x)
                self.dictionary.copy_(init_dictionary(x, self.n_atoms, generator=generator))
            else:
                d = torch.randn(self.dictionary.shape, generator=generator,
                                dtype=self.dictionary.dtype)
                self.dictionary.copy_(normalize_atoms(d))
            self.A.zero_()
            self.Bs.zero_()
            self.usage.fill_(1.0)
            self.steps.zero_()

    def _check_x(self, x: Tensor) -> None:
        if x.dim() != 2 or x.shape[1] != self.n_features:
            raise ValueError(
                f"x must be (B, N={self.n_features}), got shape {tuple(x.shape)}"
            )

    def forward(self, x: Tensor) -> Tensor:
        self._check_x(x)
        return sparse_encode(x, self.dictionary, self.alpha, max_iter=self.n_iter, tol=self.tol,
                             nonneg=self.nonneg, check_every=10).codes

    @torch.no_grad()
    def partial_fit(self, x: Tensor) -> Tensor:
        """One online step on the mini-batch ``x``: encode, update the statistics with Mairal's
        forgetting weights, one dictionary sweep, and (every ``resample_every`` steps) resample
        dead atoms. Returns the batch's mean objective before the update (a 0-d tensor)."""
        self._check_x(x)
        b = x.shape[0]
        if b == 0:
            raise ValueError("partial_fit needs a non-empty batch")
        codes = self.forward(x)  # (B, M)
        objective = lasso_objective(x, codes, self.dictionary, self.alpha).mean()
        t = int(self.steps)
        # weights from scikit-learn's MiniBatchDictionaryLearning (Mairal 2010, sec. 3.4.3)
        theta = b * t if t < b - 1 else b * b + t + 1 - b
        beta = (theta + 1 - b) / (theta + 1)
        self.A.mul_(beta).add_(codes.t() @ codes / b)
        self.Bs.mul_(beta).add_(codes.t() @ x / b)
        self.dictionary.copy_(update_dictionary(self.dictionary, self.A, self.Bs))
        used = (codes != 0).to(self.usage.dtype).mean(0)  # (M,)
        self.usage.mul_(0.9).add_(0.1 * used)
        self.steps.add_(1)
        if self.resample_every and int(self.steps) % self.resample_every == 0:
            dead = self.usage < self.dead_threshold
            if bool(dead.any()):
                self.dictionary.copy_(resample_atoms(self.dictionary, dead, x, codes))
                self.A[dead] = 0
                self.A[:, dead] = 0
                self.Bs[dead] = 0
                self.usage[dead] = 1.0
        return objective

    def extra_repr(self) -> str:
        return (f"n_features={self.n_features}, n_atoms={self.n_atoms}, alpha={self.alpha}, "
                f"nonneg={self.nonneg}, n_iter={self.n_iter}")


class DictionaryResult(NamedTuple):
    """What :func:`learn_dictionary` returns: the (M, N) dictionary, the (B, M) codes of the
    training signals under it, and the mean objective after each outer iteration."""

    dictionary: Tensor
    codes: Tensor
    history: list[float]


def learn_dictionary(
    x: Tensor,
    n_atoms: int,
    alpha: float,
    *,
    n_iter: int = 20,
    batch_size: int | None = None,
    nonneg: bool = False,
    encode_iter: int = 100,
    tol: float = 1e-4,
    init: Tensor | None = None,
    generator: torch.Generator | None = None,
) -> DictionaryResult:
    """Learn a dictionary for the rows of ``x``.

    Args:
        x: training signals.
        n_atoms: M.
        alpha: l1 weight (> 0).
        n_iter: outer iterations (batch) or passes over the data (online).
        batch_size: None for batch learning; else online mini-batch learning with this size.
        nonneg: non-negative codes.
        encode_iter: FISTA iterations per encoding.
        tol: FISTA relative-change tolerance.
        init: (M, N) initial atoms (normalised); default: random rows of ``x``.
        generator: torch RNG for the initial atoms and the mini-batch order.

    Shape:
        x: (B, N); returns a :class:`DictionaryResult` with dictionary (M, N), codes (B, M).

    Example:
        >>> res = learn_dictionary(torch.randn(100, 8), 12, alpha=0.2, n_iter=3)
        >>> res.dictionary.shape, len(res.history)
        (torch.Size([12, 8]), 3)
    """
    if x.dim() != 2 or x.shape[0] == 0:
        raise ValueError(f"x must be a non-empty 2-D (B, N) tensor, got shape {tuple(x.shape)}")
    alpha = _check_alpha(alpha)
    if isinstance(n_iter, bool) or not isinstance(n_iter, int) or n_iter < 1:
        raise ValueError(f"n_iter must be an int >= 1, got {n_iter!r}")
    if batch_size is not None and batch_size < 1:
        raise ValueError(f"batch_size must be >= 1 or None, got {batch_size}")
    B, N = x.shape
    if init is not None:
        if init.shape != (n_atoms, N):
            raise ValueError(f"init must have shape (M={n_atoms}, N={N}), got {tuple(init.shape)}")
        D = normalize_atoms(init.to(x))
    else:
        D = init_dictionary(x, n_atoms, generator=generator)
    history: list[float] = []
    if batch_size is not None:
        learner = OnlineDictionaryLearner(
            N, n_atoms, alpha, nonneg=nonneg, n_iter=encode_iter, tol=tol,
            device=x.device, dtype=x.dtype,
        )
        learner.dictionary.copy_(D)
        for _ in range(n_iter):
            perm = torch.randperm(B, generator=generator).to(x.device)
            for i in range(0, B - batch_size + 1 if B >= batch_size else 1, batch_size):
                learner.partial_fit(x[perm[i : i + batch_size]])
            codes = learner(x)
            history.append(float(lasso_objective(x, codes, learner.dictionary, alpha).mean()))
        return DictionaryResult(learner.dictionary.clone(), codes, history)

    codes = x.new_zeros(B, n_atoms)
    for _ in range(n_iter):
        L = lipschitz_constant(D)
        codes = sparse_encode(x, D, alpha, max_iter=encode_iter, tol=tol, init=codes,
                              nonneg=nonneg, lipschitz=L, check_every=10).codes
        A = codes.t() @ codes  # (M, M)
        Bs = codes.t() @ x  # (M, N)
        dead = A.diagonal() <= 1e-10
        D = update_dictionary(D, A, Bs)
        if bool(dead.any()):
            D = resample_atoms(D, dead, x, codes)
            codes = codes.clone()
            codes[:, dead] = 0
        history.append(float(lasso_objective(x, codes, D, alpha).mean()))
    return DictionaryResult(D, codes, history)
