"""Batched lasso sparse encoders: ISTA and FISTA (Beck & Teboulle 2009).

Every encoder here solves, independently for each row ``x_b`` of a batch,

    min_z  F(z) = 1/2 ||x_b - z D||_2^2 + alpha ||z||_1          (optionally s.t. z >= 0)

with the dictionary ``D`` holding one atom per **row** (scikit-learn's layout; the seed writes
``X ~ V Y`` with atoms as columns of ``V``, i.e. ``V = D^T``, ``Y = Z^T``).

**Alpha convention.** ``alpha`` here is exactly scikit-learn's ``sparse_encode(X, D, alpha=...)``
(``lasso_cd`` and ``lasso_lars``) and ``dict_learning``'s alpha: ``sparse_encode`` calls
``Lasso(alpha=alpha / n_features)``, whose objective ``1/(2 n_features) ||x - D^T z||^2 +
alpha/n_features ||z||_1`` is ``F(z) / n_features``. To match a plain ``Lasso(alpha=a)`` fitted
on ``D^T`` (design matrix with ``n_features`` rows), use ``alpha = a * n_features``.

Axis letters: B batch, N signal size (flattened input), M atoms (code size).
"""

from __future__ import annotations

import math
from typing import Literal, NamedTuple

import torch
from torch import Tensor

__all__ = [
    "SparseCode",
    "soft_threshold",
    "lasso_objective",
    "lasso_duality_gap",
    "lipschitz_constant",
    "sparse_encode",
    "ista",
    "fista",
]


class SparseCode(NamedTuple):
    """What :func:`sparse_encode` returns: the codes, the iterations run, and whether the
    relative-change criterion was met (always False when ``tol == 0``)."""

    codes: Tensor
    n_iter: int
    converged: bool


def soft_threshold(x: Tensor, threshold: float | Tensor, nonneg: bool = False) -> Tensor:
    """The proximal operator of ``threshold * ||.||_1`` (plus the indicator of ``z >= 0``).

    ``sign(x) * max(|x| - t, 0)``, computed as ``x - clamp(x, -t, t)`` (one fused op, and the
    gradient is 1 outside the dead zone, 0 inside). With ``nonneg``: ``max(x - t, 0)``.

    Args:
        x: any tensor.
        threshold: a non-negative scalar, or a tensor broadcastable to ``x``.
        nonneg: project onto the non-negative orthant as well.

    Example:
        >>> soft_threshold(torch.tensor([-2.0, 0.5, 3.0]), 1.0)
        tensor([-1.,  0.,  2.])
    """
    if nonneg:
        return torch.relu(x - threshold)
    if isinstance(threshold, Tensor):
        return x - torch.maximum(torch.minimum(x, threshold), -threshold)
    return x - x.clamp(-threshold, threshold)


def _check_codes(x: Tensor, codes: Tensor, dictionary: Tensor, alpha: float) -> float:
    """Validate ``x``, ``dictionary`` and ``alpha`` and that ``codes`` is (B, M); return alpha."""
    _check_xd(x, dictionary)
    alpha = _check_alpha(alpha)
    if codes.shape != (x.shape[0], dictionary.shape[0]):
        raise ValueError(
            f"codes must have shape (B={x.shape[0]}, M={dictionary.shape[0]}), got "
            f"{tuple(codes.shape)}"
        )
    return alpha


def _check_xd(x: Tensor, dictionary: Tensor) -> None:
    if not isinstance(x, Tensor) or not isinstance(dictionary, Tensor):
        raise TypeError(
            f"x and dictionary must be tensors, got {type(x).__name__} and "
            f"{type(dictionary).__name__}"
        )
    if dictionary.dim() != 2:
        raise ValueError(
            f"dictionary must be 2-D (n_atoms M, n_features N), got shape {tuple(dictionary.shape)}"
        )
    if x.dim() != 2 or x.shape[1] != dictionary.shape[1]:
        raise ValueError(
            f"x must be 2-D (batch B, n_features N={dictionary.shape[1]}) to match the dictionary "
            f"{tuple(dictionary.shape)}, got shape {tuple(x.shape)}"
        )
    if not x.is_floating_point() or x.dtype != dictionary.dtype:
        raise TypeError(
            f"x and dictionary must share one floating dtype, got {x.dtype} and {dictionary.dtype}"
        )
    if x.device != dictionary.device:
        raise ValueError(f"x is on {x.device} but the dictionary is on {dictionary.device}")


def _check_alpha(alpha: float) -> float:
    if isinstance(alpha, bool) or not isinstance(alpha, int | float):
        raise TypeError(f"alpha must be a positive float, got {alpha!r}")
    if not (math.isfinite(alpha) and alpha > 0):
        raise ValueError(f"alpha must be a finite float > 0, got {alpha}")
    return float(alpha)


def lasso_objective(x: Tensor, codes: Tensor, dictionary: Tensor, alpha: float) -> Tensor:
    """Per-row objective ``1/2 ||x - codes @ D||^2 + alpha ||codes||_1``.

    Shape:
        x: (B, N); codes: (B, M); dictionary: (M, N); returns (B,).

    Example:
        >>> D = torch.eye(2)
        >>> lasso_objective(torch.ones(1, 2), torch.zeros(1, 2), D, 0.5)
        tensor([1.])
    """
    alpha = _check_codes(x, codes, dictionary, alpha)
    residual = x - codes @ dictionary  # (B, N)
    return 0.5 * residual.pow(2).sum(1) + alpha * codes.abs().sum(1)


def _gap(x: Tensor, codes: Tensor, dictionary: Tensor, alpha: float, nonneg: bool
         ) -> tuple[Tensor, Tensor]:
    """(duality gap, primal objective) per row; see :func:`lasso_duality_gap`."""
    r = torch.addmm(x, codes, dictionary, beta=1, alpha=-1)  # x - z D   (B, N)
    c = r @ dictionary.t()  # (B, M): the dual constraint is |c| <= alpha (c <= alpha if nonneg)
    worst = c.amax(1) if nonneg else c.abs().amax(1)  # (B,)
    s = (alpha / worst.clamp_min(torch.finfo(x.dtype).tiny)).clamp_max(1.0)  # (B,)
    rr = torch.linalg.vecdot(r, r)  # (B,)
    primal = 0.5 * rr + alpha * codes.abs().sum(1)
    # dual at nu = s r: 1/2||x||^2 - 1/2||x - nu||^2 = s <x, r> - s^2 ||r||^2 / 2
    dual = s * torch.linalg.vecdot(x, r) - 0.5 * s * s * rr
    return primal - dual, primal


def lasso_duality_gap(
    x: Tensor, codes: Tensor, dictionary: Tensor, alpha: float, *, nonneg: bool = False
) -> Tensor:
    """Per-row duality gap of the lasso at ``codes``: an upper bound on ``F(codes) - min F``.

    The dual point is the scaled residual ``nu = s (x - z D)`` with the largest ``s <= 1`` that
    keeps ``||nu D^T||_inf <= alpha`` (``max(nu D^T) <= alpha`` with ``nonneg``), the choice
    scikit-learn's coordinate descent stops on; the dual objective is
    ``1/2 ||x||^2 - 1/2 ||x - nu||^2``. Zero exactly at the optimum.

    Shape:
        x: (B, N); codes: (B, M); dictionary: (M, N); returns (B,).

    Example:
        >>> lasso_duality_gap(torch.tensor([[2.0, 0.5]]), torch.tensor([[1.0, 0.0]]),
        ...                   torch.eye(2), 1.0)
        tensor([0.])
    """
    alpha = _check_codes(x, codes, dictionary, alpha)
    return _gap(x, codes, dictionary, alpha, nonneg)[0]


def lipschitz_constant(dictionary: Tensor) -> Tensor:
    """``||D||_2^2``: the Lipschitz constant of the smooth part's gradient ``(zD - x) D^T``.

    Shape:
        dictionary: (M, N); returns a 0-d tensor.
    """
    if dictionary.dim() != 2:
        raise ValueError(f"dictionary must be 2-D (M, N), got shape {tuple(dictionary.shape)}")
    if dictionary.numel() == 0:
        return dictionary.new_zeros(())
    return torch.linalg.matrix_norm(dictionary.detach(), ord=2).pow(2)


def sparse_encode(
    x: Tensor,
    dictionary: Tensor,
    alpha: float,
    *,
    max_iter: int = 100,
    tol: float = 1e-4,
    init: Tensor | None = None,
    nonneg: bool = False,
    accelerated: bool = True,
    restart: bool = True,
    lipschitz: float | Tensor | None = None,
    check_every: int = 1,
    stop: Literal["change", "gap"] = "change",
) -> SparseCode:
    """Solve the lasso for every row of ``x`` with (F)ISTA; see the module docstring.

    The step is ``1 / L`` with ``L = ||D||_2^2`` (:func:`lipschitz_constant`) unless
    ``lipschitz`` is given. The gradient is formed as ``z G - x D^T`` with the Gram matrix
    ``G = D D^T`` when ``M < 2N`` and as ``(z D - x) D^T`` otherwise (fewer flops for
    overcomplete dictionaries). Iteration stops when the largest per-row relative change
    ``||z_k - z_{k-1}|| / ||z_k||`` is at most ``tol`` (checked every ``check_every``
    iterations, since each check synchronises) or after ``max_iter`` iterations. With
    ``stop="gap"`` it stops instead when every row's duality gap
    (:func:`lasso_duality_gap`) is at most ``tol`` times its objective: a certificate that each
    row's objective is within a relative ``tol`` of its optimum (each check costs about one
    iteration).

    Without autograd (no input requires grad, or under ``torch.no_grad()``) the iterations run
    block by block of rows in preallocated buffers with in-place updates (same arithmetic, the
    work stays in cache: 1.8x faster in float64 at 10,000 x 256 codes), and each row stops as
    soon as it meets the criterion (at a check), so ``n_iter`` is the largest count over rows.
    With autograd all rows run until every row meets it.

    FISTA (``accelerated=True``) keeps one momentum sequence per row; with ``restart`` it resets
    a row's momentum when its update direction turns against the last step (the gradient
    restart of O'Donoghue & Candes 2015), which keeps the objective from oscillating. The ops are
    ordinary differentiable torch ops, so gradients flow to ``x`` and ``dictionary`` through the
    unrolled iterations when they require grad.

    Args:
        x: signals, one per row.
        dictionary: atoms, one per row (not necessarily unit-norm).
        alpha: the l1 weight, > 0 (scikit-learn's ``sparse_encode`` convention).
        max_iter: iterations at most (0 returns ``init`` or zeros).
        tol: relative-change tolerance; 0 runs exactly ``max_iter`` iterations.
        init: warm start codes (defaults to zeros).
        nonneg: constrain codes to be >= 0.
        accelerated: FISTA if True, ISTA if False.
        restart: adaptive momentum restart (FISTA only).
        lipschitz: a precomputed ``||D||_2^2`` (or any larger value).
        check_every: iterations between convergence checks.
        stop: ``"change"`` (relative change of the codes) or ``"gap"`` (relative duality gap).

    Shape:
        x: (B, N); dictionary: (M, N); init: (B, M); codes: (B, M).

    Example:
        >>> D = torch.eye(3)
        >>> sparse_encode(torch.tensor([[2.0, 0.5, -1.5]]), D, 1.0).codes
        tensor([[ 1.0000,  0.0000, -0.5000]])
    """
    _check_xd(x, dictionary)
    alpha = _check_alpha(alpha)
    if isinstance(max_iter, bool) or not isinstance(max_iter, int) or max_iter < 0:
        raise ValueError(f"max_iter must be an int >= 0, got {max_iter!r}")
    if not (isinstance(tol, int | float) and tol >= 0):
        raise ValueError(f"tol must be a float >= 0, got {tol!r}")
    if isinstance(check_every, bool) or not isinstance(check_every, int) or check_every < 1:
        raise ValueError(f"check_every must be an int >= 1, got {check_every!r}")
    if stop not in ("change", "gap"):
        raise ValueError(f"stop must be 'change' or 'gap', got {stop!r}")
    B, N = x.shape
    M = dictionary.shape[0]
    if init is not None:
        if init.shape != (B, M):
            raise ValueError(f"init must have shape (B={B}, M={M}), got {tuple(init.shape)}")
        if init.dtype != x.dtype or init.device != x.device:
            raise TypeError(f"init must match x's dtype/device ({x.dtype}, {x.device})")
        z = init.clamp_min(0) if nonneg else init
    else:
        z = x.new_zeros(B, M)
    if max_iter == 0 or B == 0 or M == 0:
        return SparseCode(z.clone(), 0, False)

    L = float(lipschitz_constant(dictionary) if lipschitz is None else lipschitz)
    if not L > 0:
        raise ValueError(f"the dictionary's Lipschitz constant must be > 0, got {L}")
    step, thr = 1.0 / L, alpha / L
    use_gram = M < 2 * N
    needs_grad = torch.is_grad_enabled() and (
        x.requires_grad or dictionary.requires_grad or (init is not None and init.requires_grad)
    )
    if not needs_grad:
        return _encode_inplace(x, dictionary, z, step, thr, nonneg=nonneg,
                               accelerated=accelerated, restart=restart, max_iter=max_iter,
                               tol=tol, check_every=check_every, use_gram=use_gram,
                               gap_alpha=alpha if stop == "gap" else None)
    DT = dictionary.t()  # (N, M)
    if use_gram:
        # v = y - step * (y G - x D^T) = y S + c with S = I - step * G: one (B, M)x(M, M) product
        S = torch.eye(M, dtype=x.dtype, device=x.device) - step * (dictionary @ DT)  # (M, M)
        c = step * (x @ DT)  # (B, M)

        def gradient_step(v: Tensor) -> Tensor:
            return torch.addmm(c, v, S)  # (B, M)
    else:
        # two thin products: r = v D - x (B, N), then v - step * r D^T (B, M)

        def gradient_step(v: Tensor) -> Tensor:
            return torch.addmm(v, torch.addmm(x, v, dictionary, beta=-1), DT, alpha=-step)

    y = z
    t_rows = x.new_ones(B, 1) if restart else None  # per-row momentum sequence (restart)
    t = 1.0  # the shared sequence without restart: plain floats, no sync
    converged = False
    k = 0
    while k < max_iter:
        k += 1
        z_new = soft_threshold(gradient_step(y), thr, nonneg)
        if accelerated:
            delta = z_new - z  # (B, M)
            if t_rows is not None:
                # restart rows whose step points uphill: <y - z_new, z_new - z> > 0
                bad = torch.linalg.vecdot(y - z_new, delta).unsqueeze(1) > 0  # (B, 1)
                t_rows = torch.where(bad, 1.0, t_rows)
                t_next = 0.5 * (1.0 + torch.sqrt(1.0 + 4.0 * t_rows * t_rows))
                y = torch.addcmul(z_new, (t_rows - 1.0) / t_next, delta)
                t_rows = t_next
            else:
                t_new = 0.5 * (1.0 + math.sqrt(1.0 + 4.0 * t * t))
                y = torch.add(z_new, delta, alpha=(t - 1.0) / t_new)
                t = t_new
        else:
            y = z_new
        if tol > 0 and k % check_every == 0:
            with torch.no_grad():
                if stop == "gap":
                    gap, primal = _gap(x, z_new, dictionary, alpha, nonneg)
                    done = bool((gap <= tol * primal).all())
                else:
                    change = (z_new - z).norm(dim=1)
                    scale = z_new.norm(dim=1).clamp_min(torch.finfo(x.dtype).tiny)
                    done = bool((change <= tol * scale).all())
            z = z_new
            if done:
                converged = True
                break
        else:
            z = z_new
    return SparseCode(z, k, converged)


#: rows per block of the in-place (no-grad) path: its (block, M) work buffers stay in cache
_BLOCK_ELEMENTS = 1 << 16


@torch.no_grad()
def _encode_inplace(
    x: Tensor,
    dictionary: Tensor,
    z0: Tensor,
    step: float,
    thr: float,
    *,
    nonneg: bool,
    accelerated: bool,
    restart: bool,
    max_iter: int,
    tol: float,
    check_every: int,
    use_gram: bool,
    gap_alpha: float | None,
) -> SparseCode:
    """:func:`sparse_encode` without autograd: the same iterations, computed block by block of
    rows in preallocated buffers (``out=`` matmuls, in-place prox and momentum), so that each
    iteration's element-wise work stays in cache. At each check, the rows that meet ``tol`` (on
    the relative duality gap when ``gap_alpha`` is given, else on the relative change) are
    written out and dropped from their block, which goes on with the others; ``n_iter`` is the
    largest count any row ran."""
    B, N = x.shape
    M = dictionary.shape[0]
    codes = torch.empty(B, M, dtype=x.dtype, device=x.device)
    # cache-sized blocks pay off on CPUs; elsewhere one block avoids serial small launches
    block = max(1, min(B, _BLOCK_ELEMENTS // M)) if x.device.type == "cpu" else max(B, 1)
    DT = dictionary.t()  # (N, M)
    S = None
    if use_gram:
        S = torch.eye(M, dtype=x.dtype, device=x.device) - step * (dictionary @ DT)  # (M, M)
    tiny = torch.finfo(x.dtype).tiny
    n_iter, all_converged = 0, True
    for start in range(0, B, block):
        xb = x[start:start + block]  # (b, N)
        b = xb.shape[0]
        rows = torch.arange(start, start + b, device=x.device)  # output row of each block row
        z = z0[start:start + block].clone()  # (b, M)
        y = z.clone() if accelerated else z
        c = torch.mm(xb, DT).mul_(step) if S is not None else None  # (b, M)
        t_rows = x.new_ones(b) if accelerated and restart else None
        t = 1.0
        converged = False
        # work buffers: the new iterate (then swapped into z), prox scratch, step, residual
        v, tmp, delta = torch.empty_like(z), torch.empty_like(z), torch.empty_like(z)
        r = torch.empty(b, N, dtype=x.dtype, device=x.device)
        k = 0
        while k < max_iter:
            k += 1
            if S is not None and c is not None:
                torch.addmm(c, y, S, out=v)  # y S + c
            else:
                torch.addmm(xb, y, dictionary, beta=-1, out=r)  # y D - x   (b, N)
                torch.addmm(y, r, DT, alpha=-step, out=v)  # y - step r D^T   (b, M)
            if nonneg:
                v.sub_(thr).clamp_(min=0)
            else:
                torch.clamp(v, -thr, thr, out=tmp)
                v.sub_(tmp)
            check = tol > 0 and k % check_every == 0
            if accelerated or (check and gap_alpha is None):
                torch.sub(v, z, out=delta)  # z_new - z
            if accelerated:
                if t_rows is not None:
                    y.sub_(v)  # y - z_new; restart rows where <y - z_new, z_new - z> > 0
                    bad = torch.linalg.vecdot(y, delta) > 0  # (b,)
                    t_rows.masked_fill_(bad, 1.0)
                    t_next = torch.sqrt(t_rows * t_rows * 4.0 + 1.0).add_(1.0).mul_(0.5)
                    coef = t_rows.sub_(1.0).div_(t_next).unsqueeze(1)  # (b, 1)
                    torch.addcmul(v, coef, delta, out=y)
                    t_rows = t_next
                else:
                    t_new = 0.5 * (1.0 + math.sqrt(1.0 + 4.0 * t * t))
                    torch.add(v, delta, alpha=(t - 1.0) / t_new, out=y)
                    t = t_new
            z, v = v, z
            if not accelerated:
                y = z
            if check:
                if gap_alpha is not None:
                    gap, primal = _gap(xb, z, dictionary, gap_alpha, nonneg)
                    done = gap <= primal.mul_(tol)  # (b,)
                else:
                    change = torch.linalg.vector_norm(delta, dim=1)
                    done = change <= torch.linalg.vector_norm(z, dim=1).clamp_min_(tiny).mul_(tol)
                n_done = int(done.sum())
                if n_done == b:
                    converged = True
                    break
                if n_done:  # write the finished rows out and go on with the rest
                    codes.index_copy_(0, rows[done], z[done])
                    keep = (~done).nonzero().squeeze(1)  # (b',)
                    rows, xb, z = rows[keep], xb[keep], z[keep]
                    y = y[keep] if accelerated else z
                    c = c[keep] if c is not None else None
                    t_rows = t_rows[keep] if t_rows is not None else None
                    b = rows.shape[0]
                    v, tmp, delta = torch.empty_like(z), torch.empty_like(z), torch.empty_like(z)
                    r = torch.empty(b, N, dtype=x.dtype, device=x.device)
        codes.index_copy_(0, rows, z)
        n_iter = max(n_iter, k)
        all_converged = all_converged and converged
    return SparseCode(codes, n_iter, all_converged)


def ista(
    x: Tensor,
    dictionary: Tensor,
    alpha: float,
    *,
    max_iter: int = 100,
    tol: float = 1e-4,
    init: Tensor | None = None,
    nonneg: bool = False,
    lipschitz: float | Tensor | None = None,
) -> Tensor:
    """ISTA codes: :func:`sparse_encode` with ``accelerated=False`` (objective non-increasing).

    Shape:
        x: (B, N); dictionary: (M, N); returns (B, M).

    Example:
        >>> ista(torch.tensor([[2.0, -0.5]]), torch.eye(2), 1.0)
        tensor([[1., 0.]])
    """
    return sparse_encode(
        x, dictionary, alpha, max_iter=max_iter, tol=tol, init=init, nonneg=nonneg,
        accelerated=False, lipschitz=lipschitz,
    ).codes


def fista(
    x: Tensor,
    dictionary: Tensor,
    alpha: float,
    *,
    max_iter: int = 100,
    tol: float = 1e-4,
    init: Tensor | None = None,
    nonneg: bool = False,
    restart: bool = True,
    lipschitz: float | Tensor | None = None,
) -> Tensor:
    """FISTA codes (with adaptive restart): :func:`sparse_encode` with ``accelerated=True``.

    Shape:
        x: (B, N); dictionary: (M, N); returns (B, M).

    Example:
        >>> fista(torch.tensor([[2.0, -0.5]]), torch.eye(2), 1.0)
        tensor([[1., 0.]])
    """
    return sparse_encode(
        x, dictionary, alpha, max_iter=max_iter, tol=tol, init=init, nonneg=nonneg,
        accelerated=True, restart=restart, lipschitz=lipschitz,
    ).codes
