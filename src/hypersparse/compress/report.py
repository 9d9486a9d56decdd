"""Per-layer sparsity report: what pruning really left, as a table and as JSON.

Densities are measured on the *effective* tensors (pruning masks applied): by element, by row
(output units / filters: slices along dim 0 holding any non-zero), by column (input features /
channels: slices along dim 1) and, for convolutions, by kernel (the ``(out, in)`` 2-d kernels
holding any non-zero; "channel" connections).
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import Tensor, nn

from ..io import atomic_write_json
from .prune import get_mask, is_pruned

__all__ = ["LayerSparsity", "sparsity_report", "format_report", "write_report"]


@dataclass
class LayerSparsity:
    """One tensor's sparsity. ``*_density`` are fractions in [0, 1]; ``None`` when undefined."""

    name: str
    shape: tuple[int, ...]
    numel: int
    nonzeros: int
    density: float
    row_density: float | None
    column_density: float | None
    kernel_density: float | None
    pruned_mask: bool

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def _slice_density(nz: Tensor, dim: int) -> float | None:
    if nz.dim() <= dim or nz.shape[dim] == 0:
        return None
    return float(nz.movedim(dim, 0).reshape(nz.shape[dim], -1).any(1).float().mean())


@torch.no_grad()
def sparsity_report(model: nn.Module, *, all_params: bool = False) -> list[LayerSparsity]:
    """One :class:`LayerSparsity` per weight of ``model``'s Linear/Conv layers (or, with
    ``all_params``, per parameter of at least two dimensions), plus a ``"total"`` row.

    Example:
        >>> rows = sparsity_report(nn.Sequential(nn.Linear(4, 3)))
        >>> [r.name for r in rows], rows[0].density
        (['0.weight', 'total'], 1.0)
    """
    rows: list[LayerSparsity] = []
    for mname, m in model.named_modules():
        for pname, p in m.named_parameters(recurse=False):
            layer = pname == "weight" and isinstance(m, nn.Linear | nn.Conv1d | nn.Conv2d
                                                     | nn.Conv3d)
            if not (layer or (all_params and p.dim() >= 2)):
                continue
            w = p.detach()
            pruned = is_pruned(m, pname)
            if pruned:
                w = w * get_mask(m, pname)
            nz = w != 0
            kernel = None
            if w.dim() >= 3:
                kernel = float(nz.reshape(w.shape[0], w.shape[1], -1).any(-1).float().mean())
            n = int(nz.sum())
            rows.append(LayerSparsity(
                name=f"{mname}.{pname}" if mname else pname, shape=tuple(w.shape),
                numel=w.numel(), nonzeros=n, density=n / w.numel() if w.numel() else 0.0,
                row_density=_slice_density(nz, 0), column_density=_slice_density(nz, 1),
                kernel_density=kernel, pruned_mask=pruned))
    numel = sum(r.numel for r in rows)
    nnz = sum(r.nonzeros for r in rows)
    rows.append(LayerSparsity("total", (numel,), numel, nnz, nnz / numel if numel else 0.0,
                              None, None, None, any(r.pruned_mask for r in rows)))
    return rows


def format_report(rows: list[LayerSparsity]) -> str:
    """A fixed-width text table of :func:`sparsity_report` rows."""

    def pct(v: float | None) -> str:
        return "-" if v is None else f"{100 * v:.1f}%"

    header = ("layer", "shape", "nonzeros", "numel", "density", "rows", "cols", "kernels")
    body = [(r.name, "x".join(map(str, r.shape)), str(r.nonzeros), str(r.numel), pct(r.density),
             pct(r.row_density), pct(r.column_density), pct(r.kernel_density)) for r in rows]
    widths = [max(len(row[i]) for row in [header, *body]) for i in range(len(header))]
    lines = ["  ".join(c.ljust(w) if i < 2 else c.rjust(w)
                       for i, (c, w) in enumerate(zip(row, widths))) for row in [header, *body]]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def write_report(rows: list[LayerSparsity], path: str | os.PathLike[str]) -> None:
    """Write the rows as JSON (``{"layers": [...]}``) atomically."""
    atomic_write_json(path, {"layers": [r.as_dict() for r in rows]})
