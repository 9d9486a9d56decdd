"""Optimal Brain Damage (LeCun, Denker & Solla 1990; seed 004).

Around a trained minimum the loss change from deleting weight ``k`` is, to second order and
ignoring off-diagonal terms, ``s_k = h_kk * w_k^2 / 2`` (the *saliency*). The diagonal Hessian
``h_kk`` of the mean loss over ``data`` comes from one of three estimators:

- ``"exact"``: the true diagonal of the Hessian, one Hessian-vector product per chunk of
  coordinates (batched double backward). Exact but costs O(parameters) backward passes: for
  small models.
- ``"gauss_newton"``: the exact diagonal of the generalised Gauss-Newton matrix
  ``G = sum_b J_b^T H_b J_b`` (``J_b`` the Jacobian of sample ``b``'s output, ``H_b`` the Hessian
  of its loss in the output), computed by a second-order backward pass: ``H_b = S_b S_b^T`` is
  factored and its columns are back-propagated per sample, ``diag G = sum_{b,c} (J_b^T s_bc)^2``.
  Positive semi-definite for convex losses (what LeCun et al. approximate by dropping the
  ``f''`` term); costs ``outputs`` backward passes per sample.
- ``"hutchinson"``: ``E[z * Hz]`` over Rademacher probes ``z`` (Bekas et al. 2007); unbiased
  for the true diagonal, variance ``sum_{j != k} h_kj^2 / probes``.

``loss_fn(output, target)`` must return the **mean** loss over the batch (like
``F.cross_entropy``); batches are weighted by their size, so the result is the Hessian of the
mean loss over all samples.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from typing import Any, Literal

import torch
from torch import Tensor, nn
from torch.func import functional_call, grad, hessian, vjp, vmap

from .prune import Target, _targets, apply_mask, get_mask, global_prune, is_pruned, topk_mask

__all__ = ["hessian_diagonal", "obd_saliency", "obd_prune"]

Method = Literal["exact", "gauss_newton", "hutchinson"]
LossFn = Callable[[Tensor, Tensor], Tensor]


def _named_targets(model: nn.Module, params: Sequence[Target] | None) -> list[tuple[str, Target]]:
    tlist = _targets(model) if params is None else _targets(params)
    names = {id(m): n for n, m in model.named_modules()}
    out = []
    for m, n in tlist:
        if id(m) not in names:
            raise ValueError(f"{type(m).__name__}.{n} is not part of the model")
        out.append((f"{names[id(m)]}.{n}" if names[id(m)] else n, (m, n)))
    return out


def _batches(data: Iterable[tuple[Tensor, Tensor]]) -> list[tuple[Tensor, Tensor]]:
    batches = [(x, y) for x, y in data]
    if not batches or sum(int(x.shape[0]) for x, _ in batches) == 0:
        raise ValueError("data must hold at least one sample")
    return batches


def _hvp_diag(model: nn.Module, loss_fn: LossFn, batches: list[tuple[Tensor, Tensor]],
              names: list[str], method: str, probes: int, chunk: int,
              generator: torch.Generator | None) -> list[Tensor]:
    total = sum(int(x.shape[0]) for x, _ in batches)
    fixed = {k: v.detach() for k, v in model.named_parameters()}
    fixed.update(dict(model.named_buffers()))
    primal = {k: fixed[k] for k in names}
    sizes = [primal[k].numel() for k in names]
    n = sum(sizes)
    ref = primal[names[0]]
    out = torch.zeros(n, dtype=ref.dtype, device=ref.device)
    if method == "hutchinson":
        z_all = torch.randint(0, 2, (probes, n), generator=generator,
                              dtype=torch.int8).to(ref.device, ref.dtype) * 2 - 1  # (P, n)

    def unflatten(v: Tensor) -> dict[str, Tensor]:
        return {k: t.reshape(primal[k].shape) for k, t in zip(names, v.split(sizes))}

    for x, y in batches:
        weight = x.shape[0] / total

        def f(q: dict[str, Tensor], x: Tensor = x, y: Tensor = y, weight: float = weight
              ) -> Tensor:
            return loss_fn(functional_call(model, {**fixed, **q}, (x,)), y) * weight

        # reverse-over-reverse: double backward covers more ops than forward-mode AD
        pull = vjp(grad(f), primal)[1]

        def hvp(v: Tensor, pull: Callable[..., Any] = pull) -> Tensor:
            hv = pull(unflatten(v))[0]
            return torch.cat([hv[k].reshape(-1) for k in names])  # (n,)

        if method == "exact":
            for start in range(0, n, chunk):
                stop = min(n, start + chunk)
                eye = torch.zeros(stop - start, n, dtype=ref.dtype, device=ref.device)
                rows = torch.arange(stop - start, device=ref.device)
                eye[rows, rows + start] = 1  # (c, n) basis vectors
                out[start:stop] += vmap(hvp)(eye)[rows, rows + start]
        else:
            for start in range(0, probes, chunk):
                z = z_all[start : start + chunk]  # (c, n)
                out += (z * vmap(hvp)(z)).sum(0) / probes
    return list(out.split(sizes))


def _gauss_newton_diag(model: nn.Module, loss_fn: LossFn, batches: list[tuple[Tensor, Tensor]],
                       names: list[str], chunk: int) -> list[Tensor]:
    total = sum(int(x.shape[0]) for x, _ in batches)
    all_params = {k: v.detach() for k, v in model.named_parameters()}
    all_params.update({k: v for k, v in model.named_buffers()})
    out = {k: torch.zeros_like(all_params[k]) for k in names}

    def sample_out(p: dict[str, Tensor], x: Tensor) -> Tensor:
        return functional_call(model, p, (x.unsqueeze(0),)).squeeze(0)  # (C,)

    def sample_loss(o: Tensor, y: Tensor) -> Tensor:
        return loss_fn(o.unsqueeze(0), y.unsqueeze(0))

    def per_sample(x: Tensor, y: Tensor) -> dict[str, Tensor]:
        def f(q: dict[str, Tensor]) -> Tensor:
            return sample_out({**all_params, **q}, x).reshape(-1)

        o, pull = vjp(f, {k: all_params[k] for k in names})[:2]
        h = hessian(lambda oo: sample_loss(oo.reshape(o.shape), y))(o)  # (C, C)
        h = (h + h.T) / 2
        evals, evecs = torch.linalg.eigh(h)
        s = evecs * evals.clamp_min(0).sqrt()  # (C, C), H = S S^T
        cols = vmap(pull)(s.T)[0]  # {name: (C, *shape)}
        return {k: v.square().sum(0) for k, v in cols.items()}

    was_training = model.training
    model.eval()
    try:
        for x, y in batches:
            for start in range(0, x.shape[0], chunk):
                xs, ys = x[start : start + chunk], y[start : start + chunk]
                parts = vmap(per_sample)(xs, ys)
                for k in names:
                    out[k] += parts[k].sum(0) / total
    finally:
        model.train(was_training)
    return [out[k] for k in names]


def hessian_diagonal(
    model: nn.Module,
    loss_fn: LossFn,
    data: Iterable[tuple[Tensor, Tensor]],
    *,
    method: Method = "exact",
    params: Sequence[Target] | None = None,
    probes: int = 1000,
    chunk: int = 256,
    generator: torch.Generator | None = None,
) -> dict[str, Tensor]:
    """The diagonal of the Hessian (or Gauss-Newton matrix) of the mean loss over ``data``.

    Args:
        model: the network; its forward takes ``x`` of each batch.
        loss_fn: ``loss_fn(output, target) -> mean loss`` (e.g. ``F.cross_entropy``).
        data: ``(x, y)`` batches (a list, or a DataLoader-like iterable).
        method: ``"exact"``, ``"gauss_newton"`` or ``"hutchinson"`` (see the module docstring).
        params: ``(module, name)`` pairs (default: every Linear/Conv weight of ``model``).
        probes: Rademacher probes for ``"hutchinson"``.
        chunk: Hessian rows (exact), probes (Hutchinson) or samples (Gauss-Newton) per batched
            backward pass; trades memory for speed.
        generator: torch RNG for the probes.

    Returns:
        ``{"<module>.<param>": diagonal}``, each of the parameter's shape. The diagonal ignores
        pruning masks (it is the Hessian at the current, already-masked weights).

    Example:
        >>> net = nn.Sequential(nn.Linear(3, 2))
        >>> d = hessian_diagonal(net, nn.functional.cross_entropy,
        ...                      [(torch.randn(4, 3), torch.tensor([0, 1, 0, 1]))])
        >>> d["0.weight"].shape
        torch.Size([2, 3])
    """
    if method not in ("exact", "gauss_newton", "hutchinson"):
        raise ValueError(f"method must be 'exact', 'gauss_newton' or 'hutchinson', got {method!r}")
    for label, v in (("probes", probes), ("chunk", chunk)):
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            raise ValueError(f"{label} must be an int >= 1, got {v!r}")
    named = _named_targets(model, params)
    if not named:
        raise ValueError("no parameters to differentiate (no Linear/Conv weights; pass params=)")
    batches = _batches(data)
    names = [n for n, _ in named]
    if method == "gauss_newton":
        diags = _gauss_newton_diag(model, loss_fn, batches, names, chunk)
    else:
        diags = _hvp_diag(model, loss_fn, batches, names, method, probes, chunk, generator)
    return {n: d.reshape(getattr(m, p).shape).detach()
            for (n, (m, p)), d in zip(named, diags)}


def obd_saliency(
    model: nn.Module,
    loss_fn: LossFn,
    data: Iterable[tuple[Tensor, Tensor]],
    *,
    method: Method = "gauss_newton",
    params: Sequence[Target] | None = None,
    probes: int = 1000,
    chunk: int = 256,
    generator: torch.Generator | None = None,
) -> dict[str, Tensor]:
    """OBD saliencies ``h_kk * w_k^2 / 2`` per parameter (arguments as :func:`hessian_diagonal`).

    Pruned entries have saliency 0 (their weight is 0).
    """
    diag = hessian_diagonal(model, loss_fn, data, method=method, params=params, probes=probes,
                            chunk=chunk, generator=generator)
    named = dict(_named_targets(model, params))
    return {n: d * getattr(*named[n]).detach().square() / 2 for n, d in diag.items()}


def obd_prune(
    model: nn.Module,
    loss_fn: LossFn,
    data: Iterable[tuple[Tensor, Tensor]],
    amount: float,
    *,
    scope: Literal["layer", "global"] = "global",
    method: Method = "gauss_newton",
    params: Sequence[Target] | None = None,
    probes: int = 1000,
    chunk: int = 256,
    generator: torch.Generator | None = None,
) -> dict[str, Tensor]:
    """Prune the ``amount`` fraction of weights with the lowest OBD saliency.

    With ``method="hutchinson"`` a saliency can be negative (an estimate); the lowest go first.
    Returns the saliencies used.
    """
    sal = obd_saliency(model, loss_fn, data, method=method, params=params, probes=probes,
                       chunk=chunk, generator=generator)
    named = _named_targets(model, params)
    if scope == "global":
        global_prune([t for _, t in named], [sal[n] for n, _ in named], amount)
    elif scope == "layer":
        for n, (m, p) in named:
            current = get_mask(m, p) if is_pruned(m, p) else None
            apply_mask(m, p, topk_mask(sal[n], amount, current))
    else:
        raise ValueError(f"scope must be 'layer' or 'global', got {scope!r}")
    return sal
