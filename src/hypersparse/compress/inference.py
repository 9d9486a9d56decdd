"""Sparse inference: pruned ``nn.Linear`` layers and trained hyperlayers as fixed CSR products.

:class:`CSRLinear` computes ``y = W x + b`` with ``W`` stored in compressed sparse row form
(int32 indices where the backend allows, which it does on CPU: ``torch.sparse.mm``/``torch.mv``
accept int32 ``crow``/``col`` indices). :func:`to_sparse_inference` swaps a model's pruned
``nn.Linear`` layers (and :class:`~hypersparse.compress.cluster.SharedWeights` wrapping one) for
``CSRLinear`` *only where that measured faster* at the batch size you will run, and reports
every decision. :func:`freeze` turns a trained :class:`~hypersparse.nn.SparseLayer` (eval
semantics: indices ``round(mu)``, weights ``v``, coinciding tuples summed) into the same module,
so learned sparse layers deploy like pruned ones.
"""

from __future__ import annotations

import copy
import functools
import math
import statistics
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import Tensor, nn

from .cluster import SharedWeights, base_type, bias_of, weight_of
from .prune import get_mask, is_pruned

__all__ = ["CSRLinear", "InferenceLayerReport", "csr_linear", "to_sparse_inference", "freeze"]

_INDEX_DTYPES = (torch.int32, torch.int64)


def _dims(name: str, shape: int | Sequence[int]) -> tuple[int, ...]:
    dims = (shape,) if isinstance(shape, int) else tuple(shape)
    if not dims or any(not isinstance(d, int) or isinstance(d, bool) or d < 1 for d in dims):
        raise ValueError(f"{name} must be a positive int or a non-empty tuple of them, got {shape}")
    return dims


class CSRLinear(nn.Module):
    """A fixed sparse linear map ``y = W . x + b`` with ``W`` in CSR form (inference only).

    ``W`` has shape ``out_shape + in_shape`` and is stored flattened to ``(M, N)`` as three
    buffers (``crow_indices`` (M + 1,), ``col_indices`` (nnz,), ``values`` (nnz,)), so
    ``state_dict`` round-trips; ``bias`` is a buffer too (nothing here is trained). Batch 1 runs
    a sparse matrix-vector product, larger batches a sparse-dense matrix product.

    Args:
        weight: the weight, dense or ``torch.sparse_coo``/``sparse_csr``, of shape
            ``out_shape + in_shape`` (for a plain ``nn.Linear``: (M, N)). Zeros are dropped.
        bias: optional, ``out_shape`` (or (M,)).
        in_shape, out_shape: how the weight's dimensions split (default: a matrix, (N,) and
            (M,)).
        index_dtype: ``torch.int32`` (default) or ``torch.int64``; int32 needs fewer than
            2^31 non-zeros.
        device, dtype: of the buffers (default: the weight's).

    Shape:
        input: ``(*, *in_shape)``; output: ``(*, *out_shape)``.

    Example:
        >>> w = torch.tensor([[0.0, 2.0, 0.0], [1.0, 0.0, 0.0]])
        >>> layer = CSRLinear(w, torch.zeros(2))
        >>> layer(torch.tensor([[1.0, 1.0, 1.0]]))
        tensor([[2., 1.]])
    """

    crow_indices: Tensor
    col_indices: Tensor
    values: Tensor
    bias: Tensor | None

    def __init__(
        self,
        weight: Tensor,
        bias: Tensor | None = None,
        *,
        in_shape: int | Sequence[int] | None = None,
        out_shape: int | Sequence[int] | None = None,
        index_dtype: torch.dtype = torch.int32,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        if not isinstance(weight, Tensor):
            raise TypeError(f"weight must be a Tensor, got {type(weight).__name__}")
        if not weight.is_floating_point():
            raise TypeError(f"weight must be floating point, got {weight.dtype}")
        if index_dtype not in _INDEX_DTYPES:
            raise ValueError(f"index_dtype must be torch.int32 or torch.int64, got {index_dtype}")
        if in_shape is None and out_shape is None:
            if weight.dim() != 2:
                raise ValueError("a weight that is not a matrix needs in_shape and out_shape, "
                                 f"got shape {tuple(weight.shape)}")
            in_shape, out_shape = weight.shape[1], weight.shape[0]
        elif in_shape is None or out_shape is None:
            raise ValueError("give both in_shape and out_shape, or neither")
        self.in_shape, self.out_shape = _dims("in_shape", in_shape), _dims("out_shape", out_shape)
        if tuple(weight.shape) != self.out_shape + self.in_shape:
            raise ValueError(f"weight shape {tuple(weight.shape)} != out_shape + in_shape = "
                             f"{self.out_shape + self.in_shape}")
        m, n = math.prod(self.out_shape), math.prod(self.in_shape)
        w = weight.detach()
        if w.layout == torch.sparse_csr:
            w = w.to_sparse_coo()
        if w.layout == torch.sparse_coo:
            w = w.coalesce()
            flat = torch.sparse_coo_tensor(
                torch.stack([_linear(w.indices()[: len(self.out_shape)], self.out_shape),
                             _linear(w.indices()[len(self.out_shape):], self.in_shape)]),
                w.values(), (m, n)).coalesce()  # (M, N)
            rows, cols, vals = flat.indices()[0], flat.indices()[1], flat.values()
            nz = vals != 0
            rows, cols, vals = rows[nz], cols[nz], vals[nz]
        elif w.layout == torch.strided:
            w2 = w.reshape(m, n)  # (M, N)
            rows, cols = w2.nonzero(as_tuple=True)
            vals = w2[rows, cols]
        else:
            raise TypeError(f"weight layout must be strided, sparse_coo or sparse_csr, got "
                            f"{w.layout}")
        if index_dtype == torch.int32 and max(m, n, vals.numel()) >= 2**31:
            raise ValueError("int32 indices need fewer than 2^31 rows, columns and non-zeros; "
                             "pass index_dtype=torch.int64")
        device = device if device is not None else w.device
        dtype = dtype or w.dtype
        crow = torch.zeros(m + 1, dtype=torch.int64, device=rows.device)
        crow[1:] = torch.bincount(rows, minlength=m).cumsum(0)  # rows are sorted (row-major)
        self.register_buffer("crow_indices", crow.to(device=device, dtype=index_dtype))
        self.register_buffer("col_indices", cols.to(device=device, dtype=index_dtype))
        self.register_buffer("values", vals.to(device=device, dtype=dtype).clone())
        if bias is not None:
            if not isinstance(bias, Tensor) or bias.numel() != m:
                raise ValueError(f"bias must be a tensor with {m} entries (out_shape "
                                 f"{self.out_shape}), got {getattr(bias, 'shape', bias)}")
            self.register_buffer("bias", bias.detach().reshape(m).to(device=device, dtype=dtype)
                                 .clone())
        else:
            self.register_buffer("bias", None)
        self._csr: Tensor | None = None
        self._csr_key: tuple[Any, ...] | None = None

    @property
    def nnz(self) -> int:
        return self.values.numel()

    @property
    def density(self) -> float:
        return self.nnz / (math.prod(self.out_shape) * math.prod(self.in_shape))

    def weight_csr(self) -> Tensor:
        """The weight as a ``torch.sparse_csr`` (M, N) tensor sharing the buffers' memory.

        Cached (building it costs about as much as a small product at batch 1) and rebuilt when
        a buffer is replaced (``.to()``, loading a state dict with another ``nnz``); in-place
        changes to the buffers show through because the tensor is a view of them.
        """
        key = (self.crow_indices.data_ptr(), self.col_indices.data_ptr(),
               self.values.data_ptr(), self.values.numel(), self.values.dtype)
        if self._csr is None or self._csr_key != key:
            m, n = math.prod(self.out_shape), math.prod(self.in_shape)
            self._csr = torch.sparse_csr_tensor(self.crow_indices, self.col_indices,
                                                self.values, (m, n), check_invariants=False)
            self._csr_key = key
        return self._csr

    def __getstate__(self) -> dict[str, Any]:
        state = dict(super().__getstate__())
        state["_csr"], state["_csr_key"] = None, None  # a cache, rebuilt on demand
        return state

    def to_dense(self) -> Tensor:
        """The weight as a dense ``out_shape + in_shape`` tensor (for tests and plots)."""
        return self.weight_csr().to_dense().reshape(self.out_shape + self.in_shape)

    def forward(self, x: Tensor) -> Tensor:
        ni = len(self.in_shape)
        if x.dim() < ni or tuple(x.shape[x.dim() - ni:]) != self.in_shape:
            raise ValueError(f"input must have shape (*, *{self.in_shape}), got {tuple(x.shape)}")
        lead = x.shape[: x.dim() - ni]
        xf = x.reshape(-1, math.prod(self.in_shape))  # (P, N)
        y = csr_linear(xf, self.weight_csr(), self.bias)  # (P, M)
        return y.reshape(lead + self.out_shape)

    def _load_from_state_dict(self, state_dict: Any, prefix: str, *args: Any) -> None:
        # the number of non-zeros is data, not architecture: resize to the incoming buffers
        for key in ("col_indices", "values"):
            incoming = state_dict.get(prefix + key)
            current = self._buffers[key]
            if isinstance(incoming, Tensor) and current is not None and \
                    incoming.dim() == 1 and incoming.shape != current.shape:
                self._buffers[key] = current.new_empty(incoming.shape)
        super()._load_from_state_dict(state_dict, prefix, *args)

    def extra_repr(self) -> str:
        return (f"in_shape={self.in_shape}, out_shape={self.out_shape}, nnz={self.nnz}, "
                f"density={self.density:.4f}, index_dtype={self.col_indices.dtype}, "
                f"bias={self.bias is not None}")


def csr_linear(x: Tensor, weight: Tensor, bias: Tensor | None = None) -> Tensor:
    """``x @ weight.T + bias`` for a ``sparse_csr`` ``weight`` (M, N) and dense ``x`` (P, N).

    Batch 1 uses ``torch.addmv``/``torch.mv`` (a CSR matrix-vector product, the fastest path
    at batch 1); otherwise ``torch.addmm``/``torch.sparse.mm`` on ``x.T``.

    Shape:
        x: (P, N); weight: (M, N); bias: (M,); output: (P, M).
    """
    if x.dtype != weight.dtype:
        raise TypeError(f"input dtype {x.dtype} != weight dtype {weight.dtype}")
    if x.shape[0] == 1:
        if bias is None:
            return torch.mv(weight, x[0]).unsqueeze(0)  # (1, M)
        return torch.addmv(bias, weight, x[0]).unsqueeze(0)  # (1, M)
    if bias is None:
        return torch.sparse.mm(weight, x.T).T  # (P, M)
    return torch.addmm(bias.unsqueeze(1), weight, x.T).T  # (P, M)


def _linear(idx: Tensor, shape: tuple[int, ...]) -> Tensor:
    """Row-major linear index of index columns ``idx`` (R, Q) into ``shape``."""
    out = torch.zeros(idx.shape[1], dtype=torch.int64, device=idx.device)
    for r, size in enumerate(shape):
        out = out * size + idx[r]
    return out


# --------------------------------------------------------------------------- model conversion


@dataclass
class InferenceLayerReport:
    """One eligible layer's decision: timings are medians (seconds per forward at
    ``batch_size``); ``speedup = dense_seconds / csr_seconds``."""

    name: str
    shape: tuple[int, ...]
    nonzeros: int
    density: float
    batch_size: int
    dense_seconds: float | None
    csr_seconds: float | None
    speedup: float | None
    replaced: bool
    reason: str

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def _effective_weight(module: nn.Module) -> Tensor:
    w = weight_of(module).detach()
    return w * get_mask(module) if is_pruned(module) else w


def _eligible(module: nn.Module) -> bool:
    if isinstance(module, SharedWeights):
        return type(module.layer) is nn.Linear
    return base_type(module) is nn.Linear


def _median_seconds(fn: Any, repeats: int, warmup: int) -> float:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


@torch.no_grad()
def to_sparse_inference(
    model: nn.Module,
    batch_size: int = 1,
    *,
    measure: bool = True,
    min_speedup: float = 1.0,
    repeats: int = 30,
    warmup: int = 5,
    index_dtype: torch.dtype = torch.int32,
    inplace: bool = False,
) -> tuple[nn.Module, list[InferenceLayerReport]]:
    """Replace pruned ``nn.Linear`` layers by :class:`CSRLinear` where CSR is faster.

    A layer is eligible when it is an ``nn.Linear`` (possibly pruned with
    :mod:`hypersparse.compress.prune`, or wrapped by ``SharedWeights``) whose effective weight
    has at least one zero. For each, a dense ``F.linear`` and the CSR product are timed on a
    random ``(batch_size, in_features)`` input (median of ``repeats`` after ``warmup``, on this
    machine, now: timings on a busy machine are noisy); the layer is replaced when
    ``dense / csr >= min_speedup``. Outputs are unchanged up to float rounding (summation
    order differs).

    Args:
        model: a trained model (eval semantics; not modified unless ``inplace``).
        batch_size: the batch size you will run inference at (>= 1).
        measure: time each layer (default); False replaces every eligible layer unmeasured.
        min_speedup: the measured speed-up a replacement needs.
        repeats, warmup: timing runs per candidate.
        index_dtype: ``torch.int32`` (default) or ``torch.int64`` CSR indices.
        inplace: modify ``model`` instead of a deep copy.

    Returns:
        ``(model, reports)``, one :class:`InferenceLayerReport` per eligible layer (and one per
        dense Linear, ``replaced=False``, reason ``"no zeros"``). A top-level ``nn.Linear``
        ``model`` is returned as the new module itself.

    Example:
        >>> from hypersparse.compress import magnitude_prune
        >>> net = nn.Sequential(nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 10))
        >>> _ = magnitude_prune(net[0], amount=0.9)
        >>> fast, rows = to_sparse_inference(net, batch_size=1, measure=False)
        >>> type(fast[0]).__name__, rows[0].replaced, rows[1].reason
        ('CSRLinear', True, 'no zeros')
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be an nn.Module, got {type(model).__name__}")
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be an int >= 1, got {batch_size!r}")
    if not min_speedup > 0:
        raise ValueError(f"min_speedup must be > 0, got {min_speedup}")
    if repeats < 1 or warmup < 0:
        raise ValueError(f"need repeats >= 1 and warmup >= 0, got {repeats}, {warmup}")
    if index_dtype not in _INDEX_DTYPES:
        raise ValueError(f"index_dtype must be torch.int32 or torch.int64, got {index_dtype}")
    target = model if inplace else copy.deepcopy(model)
    reports: list[InferenceLayerReport] = []
    candidates = [(n, m) for n, m in target.named_modules()
                  if _eligible(m) and not n.endswith(".layer")]
    for name, layer in candidates:
        w = _effective_weight(layer)
        b = bias_of(layer)
        bias = None if b is None else b.detach()
        nnz = int((w != 0).sum())
        row = InferenceLayerReport(name, tuple(w.shape), nnz, nnz / w.numel(), batch_size,
                                   None, None, None, False, "")
        reports.append(row)
        if nnz == w.numel():
            row.reason = "no zeros"
            continue
        csr = CSRLinear(w, bias, index_dtype=index_dtype)
        if measure:
            x = torch.randn(batch_size, w.shape[1], dtype=w.dtype, device=w.device)
            row.dense_seconds = _median_seconds(
                functools.partial(nn.functional.linear, x, w, bias), repeats, warmup)
            row.csr_seconds = _median_seconds(functools.partial(csr, x), repeats, warmup)
            row.speedup = row.dense_seconds / max(row.csr_seconds, 1e-12)
            if row.speedup < min_speedup:
                row.reason = f"csr slower than needed ({row.speedup:.2f}x < {min_speedup}x)"
                continue
            row.reason = f"csr {row.speedup:.2f}x faster"
        else:
            row.reason = "measure=False"
        row.replaced = True
        if name == "":
            target = csr
        else:
            parent, _, child = name.rpartition(".")
            setattr(target.get_submodule(parent) if parent else target, child, csr)
    return target, reports


@torch.no_grad()
def freeze(layer: nn.Module, *, index_dtype: torch.dtype = torch.int32) -> CSRLinear:
    """A trained :class:`~hypersparse.nn.SparseLayer` as a fixed :class:`CSRLinear`.

    Uses the layer's eval semantics (:meth:`~hypersparse.nn.HyperLayer.to_sparse`: indices
    ``round(mu)``, weights ``v``, coinciding tuples summed) and its bias, so
    ``freeze(layer)(x) == layer.eval()(x)`` up to float rounding, for any input of shape
    ``(*, *in_shape)``. Adaptive hyperlayers (weights that depend on the input) cannot be
    frozen.

    Example:
        >>> from hypersparse.nn import SparseLayer
        >>> sl = SparseLayer(16, 8, k=12, bias=True)
        >>> frozen = freeze(sl)
        >>> x = torch.randn(3, 16)
        >>> torch.allclose(frozen(x), sl.eval()(x), atol=1e-6)
        True
    """
    from ..nn import HyperLayer, SparseLayer

    if not isinstance(layer, HyperLayer):
        raise TypeError(f"freeze takes a SparseLayer, got {type(layer).__name__}")
    w = layer.to_sparse()
    if not isinstance(layer, SparseLayer) and w.dim() != len(layer.sizes):
        raise ValueError(f"{type(layer).__name__} is adaptive (its weights depend on the input) "
                         "and cannot be frozen into one fixed matrix")
    if w.dim() != len(layer.sizes):
        raise ValueError(f"to_sparse() returned shape {tuple(w.shape)}, expected {layer.sizes}")
    return CSRLinear(w, layer.bias, in_shape=layer.in_shape, out_shape=layer.out_shape,
                     index_dtype=index_dtype)
