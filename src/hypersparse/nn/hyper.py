"""Sparse hyperlayers: weight tensors learned as K continuous index tuples (seeds 000-002).

:class:`HyperLayer` is the adaptive base class: a subclass implements :meth:`HyperLayer.hyper`,
mapping the input to raw tuple parameters per instance. :class:`SparseLayer` is the
free-parameter special case (one weight tensor for the whole batch). Both contract
``y = W . x`` over ``in_shape`` without ever building the dense ``out_shape + in_shape`` tensor.

Training samples integer points around each tuple and spreads its value over them
(:mod:`hypersparse.functional.hyper`); eval rounds the means: indices ``round(mu)``, weights
``v``, deterministic and exportable with :meth:`HyperLayer.to_sparse`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any, NamedTuple

import torch
from torch import Tensor, nn

from ..functional.chebyshev import chebyshev_degrees
from ..functional.contract import sparse_contract
from ..functional.hyper import (
    GEMM_F32_BOUND,
    MAX_LINEAR,
    bound_means,
    bound_sigmas,
    check_local_box,
    check_mean_bound,
    const,
    distinct_indices,
    first_occurrence,
    linear_index,
    point_weights,
    sample_points,
    unbound_means,
)

__all__ = ["Connections", "HyperLayer", "SigmaAnnealing", "SparseLayer", "set_sigma_gain"]

_METHODS = ("auto", "exact", "neighbours", "chebyshev")
#: ``normalisation="auto"`` uses exact all-pairs up to this many (tuple, point) pairs per context.
AUTO_EXACT_PAIRS = 2**16
#: ... and never above this many pairs in all contexts of a batch together (memory: the exact
#: path holds a few (B, K, P) tensors).
AUTO_EXACT_MAX_PAIRS = 2**25
#: Above ``AUTO_EXACT_PAIRS`` on the CPU, "auto" takes the method of least estimated time, in ns
#: (fitted to train steps of n x n layers, K = n = 256 and 1024, one thread; docs/hyperlayer.md):
#: exact pairs cost ``AUTO_NS_EXACT`` per pair as a float64 GEMM (``AUTO_NS_EXACT_COLUMNS`` on
#: the column path: template columns, or a float32 layer beyond the GEMM's accuracy bound),
#: neighbour hashing ``AUTO_NS_NEIGHBOUR`` per pair inside the boxes, and the Chebyshev
#: transform ``AUTO_NS_CHEBYSHEV_GRID`` per (range + K) x m^L core entry and per K x m^2
#: transform entry, plus ``AUTO_NS_CHEBYSHEV_POINT`` per point x m^(L-1).
AUTO_NS_EXACT = 5.0
AUTO_NS_EXACT_COLUMNS = 20.0
AUTO_NS_NEIGHBOUR = 90.0
AUTO_NS_CHEBYSHEV_GRID = 0.4
AUTO_NS_CHEBYSHEV_POINT = 2.5
#: On other devices (no GEMM path, no measured costs) "auto" keeps the cover rule: exact pairs
#: while the neighbour boxes cover more than this fraction of the index space.
AUTO_EXACT_COVER_OTHER = 0.25


class Connections(NamedTuple):
    """A sparse weight tensor as a list of entries.

    ``indices`` (Q, R) int64 index tuples into ``out_shape + in_shape``, ``weights`` (Q,), and
    ``batch`` (Q,) int64 (the instance of each entry) or ``None`` when shared by the batch.
    Entries may repeat (they add up). ``grouped``: the entries are sorted by their flattened
    output index (the contraction then skips its own sort).
    """

    indices: Tensor
    weights: Tensor
    batch: Tensor | None
    grouped: bool = False


def _shape(name: str, shape: int | Sequence[int]) -> tuple[int, ...]:
    dims = (shape,) if isinstance(shape, int) else tuple(shape)
    if not dims or any(not isinstance(d, int) or isinstance(d, bool) or d < 1 for d in dims):
        raise ValueError(f"{name} must be a positive int or a non-empty tuple of them, got {shape}")
    return dims


class HyperLayer(nn.Module):
    """Adaptive sparse hyperlayer: ``y[b] = W(x[b]) . x[b]`` with W given by K index tuples.

    Subclasses implement :meth:`hyper` (``x -> raw means, raw sigmas, values``). Returning tensors
    without a batch dimension makes the weight tensor shared by the batch (one sample set, as in
    :class:`SparseLayer`); with a batch dimension every instance gets its own tuples, samples
    and normalisation context. For full control (e.g. means computed directly in index space)
    override :meth:`tuples` instead.

    Args:
        in_shape: shape of one input instance (rank >= 1).
        out_shape: shape of one output instance.
        k: number of continuous index tuples K.
        global_samples: G, points per tuple uniform over the learned columns' range.
        local_samples: L, points per tuple uniform in a ``region`` box around the rounded mean.
        region: side of the local box (one int, or one per learned column; default
            ``min(4, size)``); larger than a learned dimension is an error.
        local_box: ``"low"`` (an even box half a cell below the mean on average) or
            ``"alternate"`` (odd-numbered tuples take the mirrored box, half a cell above; no
            net drift along a chain of tuples): see :func:`~hypersparse.functional.sample_points`.
        sigma_scale: standard deviations are ``(softplus(raw + 2) + min_sigma) * sigma_scale *
            size`` per learned column.
        min_sigma: floor of the size-relative deviation factor.
        learn_values: take values from :meth:`hyper`; if False every tuple has value
            ``fixed_values`` (a buffer of ones; ``hyper`` may return None for values).
        bias: add a learned bias of shape ``out_shape``.
        template: (K, R) index-space tuples; the columns not in ``learn_cols`` are fixed to
            ``round(template)`` (e.g. output coordinates), the others are ignored.
        learn_cols: the learned columns (default: all without a template, the input columns
            with one). :meth:`hyper` returns raw means for these columns only, in this order.
        normalisation: ``"exact"`` (all (point, tuple) pairs), ``"neighbours"`` (pairs within
            ``cutoff`` deviations, via spatial hashing), ``"chebyshev"`` (all pairs through a
            low-rank Gauss transform while sigma is wide, exact pairs otherwise) or ``"auto"``
            (picks one by layer size and sigma; see :meth:`method`).
        cutoff: the neighbour radius in standard deviations.
        mean_bound: how raw means map into index space
            (:func:`~hypersparse.functional.bound_means`): ``"sigmoid"`` (the paper's) or
            ``"reflect"`` (linear, reflected at the edges: means near an edge stay as mobile as
            the others).
        device, dtype: of the parameters and buffers.

    Shape:
        input: (B, *in_shape) for adaptive layers, (*, *in_shape) for shared ones;
        output: the same leading dimensions followed by ``out_shape``.

    Every deviation is multiplied by the scalar buffer ``sigma_gain`` (1 at construction), which
    :class:`SigmaAnnealing` or :func:`set_sigma_gain` change during training; the gain scales the
    ``min_sigma`` floor too.
    """

    template: Tensor | None
    fixed_values: Tensor
    sigma_gain: Tensor

    def __init__(
        self,
        in_shape: int | Sequence[int],
        out_shape: int | Sequence[int],
        k: int,
        *,
        global_samples: int = 4,
        local_samples: int = 4,
        region: int | Sequence[int] | None = None,
        local_box: str = "low",
        sigma_scale: float = 0.1,
        min_sigma: float = 0.0,
        learn_values: bool = True,
        bias: bool = False,
        template: Tensor | None = None,
        learn_cols: Sequence[int] | None = None,
        normalisation: str = "auto",
        cutoff: float = 5.0,
        mean_bound: str = "sigmoid",
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        factory: dict[str, Any] = {"device": device, "dtype": dtype}
        self.in_shape = _shape("in_shape", in_shape)
        self.out_shape = _shape("out_shape", out_shape)
        self.sizes = self.out_shape + self.in_shape
        if math.prod(self.sizes) >= MAX_LINEAR:
            raise ValueError(f"out_shape + in_shape = {self.sizes} has too many index tuples")
        r = len(self.sizes)
        if not isinstance(k, int) or isinstance(k, bool) or k < 1:
            raise ValueError(f"k must be an int >= 1, got {k!r}")
        self.k = k
        if global_samples < 0 or local_samples < 0:
            raise ValueError(f"sample counts must be >= 0, got {global_samples}, {local_samples}")
        self.global_samples, self.local_samples = int(global_samples), int(local_samples)
        if not sigma_scale > 0 or not math.isfinite(sigma_scale):
            raise ValueError(f"sigma_scale must be a finite float > 0, got {sigma_scale}")
        if not min_sigma >= 0:
            raise ValueError(f"min_sigma must be >= 0, got {min_sigma}")
        self.sigma_scale, self.min_sigma = float(sigma_scale), float(min_sigma)
        if normalisation not in _METHODS:
            raise ValueError(f"normalisation must be one of {_METHODS}, got {normalisation!r}")
        if not cutoff > 0:
            raise ValueError(f"cutoff must be > 0, got {cutoff}")
        self.normalisation, self.cutoff = normalisation, float(cutoff)
        check_mean_bound(mean_bound)
        self.mean_bound = mean_bound
        check_local_box(local_box)
        self.local_box = local_box

        if learn_cols is None:
            learn_cols = range(r) if template is None else range(len(self.out_shape), r)
        self.learn = [int(c) for c in learn_cols]
        if len(set(self.learn)) != len(self.learn) or any(not 0 <= c < r for c in self.learn):
            raise ValueError(f"learn_cols must be distinct columns in [0, {r}), got {learn_cols}")
        self.fixed = [c for c in range(r) if c not in self.learn]
        if template is None:
            if self.fixed:
                raise ValueError(f"columns {self.fixed} are not learned, so a template is needed")
            self.register_buffer("template", None)
        else:
            if not isinstance(template, Tensor):
                raise TypeError(f"template must be a Tensor, got {type(template).__name__}")
            if template.shape != (k, r):
                raise ValueError(f"template must have shape (k, R) = ({k}, {r}), "
                                 f"got {tuple(template.shape)}")
            t = template.detach().to(device=device, dtype=dtype or torch.get_default_dtype())
            fixed_vals = t[:, self.fixed]
            hi = torch.tensor([self.sizes[c] - 1 for c in self.fixed], dtype=t.dtype)
            if not torch.isfinite(fixed_vals).all() or (fixed_vals.round() < 0).any() or (
                    fixed_vals.round() > hi.to(t.device)).any():
                raise ValueError("template's fixed columns must be finite indices within "
                                 f"{[self.sizes[c] for c in self.fixed]}")
            self.register_buffer("template", t.clone())
        if region is None:
            regions = [min(4, self.sizes[c]) for c in self.learn]
        elif isinstance(region, int):
            regions = [region] * len(self.learn)
        else:
            regions = [int(g) for g in region]
        if len(regions) != len(self.learn):
            raise ValueError(f"region needs one entry per learned column ({len(self.learn)}), "
                             f"got {region}")
        for c, g in zip(self.learn, regions):
            if not 1 <= g <= self.sizes[c]:
                raise ValueError(f"region {g} must be in [1, {self.sizes[c]}] "
                                 f"(the size of dimension {c})")
        self.region = regions
        self.learn_values = learn_values
        if not learn_values:
            self.register_buffer("fixed_values", torch.ones(k, **factory))
        self.bias = nn.Parameter(torch.zeros(self.out_shape, **factory)) if bias else None
        # multiplies every deviation; annealing schedules set it (a buffer: checkpointed)
        self.register_buffer("sigma_gain", torch.ones((), **factory))
        self.generator: torch.Generator | None = None

    def _load_from_state_dict(self, state_dict: Any, prefix: str, *args: Any,
                              **kwargs: Any) -> None:
        # checkpoints written before ``sigma_gain`` existed load with the neutral gain 1
        if prefix + "sigma_gain" not in state_dict:
            state_dict[prefix + "sigma_gain"] = torch.ones_like(self.sigma_gain)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    # ------------------------------------------------------------------ extension points
    def hyper(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor | None]:
        """Raw tuple parameters for input ``x`` (shape (B, *in_shape)).

        Returns:
            ``(raw_means, raw_sigmas, values)`` of shapes (B, K, R'), (B, K), (B, K) (adaptive)
            or (K, R'), (K,), (K,) (shared), where R' = ``len(learn_cols)``. ``raw_means`` are
            unbounded (mapped by :func:`bound_means` with ``mean_bound``); ``values`` may be None
            when ``learn_values=False``.
        """
        raise NotImplementedError(f"{type(self).__name__} must implement hyper(x)")

    @property
    def learned_sizes(self) -> list[int]:
        return [self.sizes[c] for c in self.learn]

    @property
    def samples_per_tuple(self) -> int:
        """S = 2^R' corners + G + L."""
        return 2 ** len(self.learn) + self.global_samples + self.local_samples

    def tuples(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Index-space means (.., K, R), deviations (.., K, R') and values (.., K) for ``x``."""
        raw_means, raw_sigmas, values = self.hyper(x)
        lead = raw_means.shape[:-2]
        nl = len(self.learn)
        if raw_means.shape[-2:] != (self.k, nl) or raw_sigmas.shape != lead + (self.k,):
            raise ValueError(
                f"hyper() must return raw means (..., {self.k}, {nl}) and raw sigmas "
                f"(..., {self.k}), got {tuple(raw_means.shape)} and {tuple(raw_sigmas.shape)}")
        if self.learn_values:
            if values is None or values.shape != lead + (self.k,):
                got = None if values is None else tuple(values.shape)
                raise ValueError(f"hyper() must return values (..., {self.k}), got {got}")
        else:
            values = self.fixed_values.expand(lead + (self.k,))
        learned = bound_means(raw_means, self.learned_sizes, mode=self.mean_bound)  # (.., K, R')
        sigmas = bound_sigmas(raw_sigmas, self.learned_sizes, sigma_scale=self.sigma_scale,
                              min_sigma=self.min_sigma) * self.sigma_gain  # (.., K, R')
        if self.template is None:
            means = learned
        else:
            full = self.template.to(learned.dtype).expand(lead + self.template.shape)
            means = full.index_copy(-1, const(self.learn, torch.long, full.device), learned)
        return means, sigmas, values

    # ------------------------------------------------------------------ core
    def method(self, sigmas: Tensor, points_per_context: int) -> str:
        """The normalisation ``"auto"`` resolves to: exact all-pairs for contexts of at most
        ``AUTO_EXACT_PAIRS`` pairs; above that, on the CPU, whichever of exact pairs (at most
        ``AUTO_EXACT_MAX_PAIRS`` over the batch), neighbour hashing and the Chebyshev transform
        (layers without template columns, at most ``CHEBYSHEV_MAX_NODES`` interpolation points)
        has the least estimated time (the ``AUTO_NS_*`` costs); on other devices exact pairs
        while the neighbour boxes cover over ``AUTO_EXACT_COVER_OTHER`` of the index space,
        neighbours otherwise. One host sync."""
        if self.normalisation != "auto":
            return self.normalisation
        k, p = self.k, points_per_context
        if k * p <= AUTO_EXACT_PAIRS:
            return "exact"
        contexts = math.prod(sigmas.shape[:-2])  # B for an adaptive layer, 1 for a shared one
        s = sigmas.detach()
        half = (s * self.cutoff).clamp(min=max(1.0, math.sqrt(len(self.learn))))
        size = const(self.learned_sizes, half.dtype, half.device)
        cover_t = ((2 * half + 1) / size).clamp(max=1.0).prod(-1).mean()
        stats = torch.cat([cover_t.reshape(1).to(torch.float64),
                           s.flatten(0, -2).amin(0).to(torch.float64)]).tolist()
        cover, smin = stats[0], stats[1:]
        pairs = k * p * contexts
        if s.device.type != "cpu":
            if pairs > AUTO_EXACT_MAX_PAIRS:
                return "neighbours"
            return "exact" if cover > AUTO_EXACT_COVER_OTHER else "neighbours"
        costs = {"neighbours": AUTO_NS_NEIGHBOUR * pairs * cover}
        halves = [(n - 1) / 2 for n in self.learned_sizes]
        if pairs <= AUTO_EXACT_MAX_PAIRS:
            bound = max(h / sm for h, sm in zip(halves, smin)) ** 2 if min(smin) > 0 else math.inf
            # template columns or a float32 layer beyond the accuracy bound: the column path
            gemm = len(self.learn) == len(self.sizes) and (
                s.dtype == torch.float64 or bound <= GEMM_F32_BOUND)
            costs["exact"] = (AUTO_NS_EXACT if gemm else AUTO_NS_EXACT_COLUMNS) * pairs
        if len(self.learn) == len(self.sizes):
            ms = chebyshev_degrees(halves, smin, p)
            if ms is not None:
                core, rest = math.prod(ms), math.prod(ms[1:])
                costs["chebyshev"] = contexts * AUTO_NS_CHEBYSHEV_GRID * (
                    (self.learned_sizes[0] + k) * core + k * sum(m * m for m in ms)
                ) + contexts * AUTO_NS_CHEBYSHEV_POINT * p * rest
        return min(costs, key=costs.__getitem__)

    def connections(self, x: Tensor, *, generator: torch.Generator | None = None,
                    sample: bool | None = None) -> Connections:
        """The sparse weight tensor for input ``x`` (shape (B, *in_shape)).

        ``sample`` (default: ``self.training``) chooses between the training construction
        (sampled points with normalised weights) and the eval one (rounded means, values).
        """
        means, sigmas, values = self.tuples(x)
        _check_finite("tuple parameters", means.sum() + sigmas.sum() + values.sum())
        shared = means.dim() == 2
        r = len(self.sizes)
        sample = self.training if sample is None else sample
        if not sample:
            hi = const([s - 1 for s in self.sizes], torch.long, means.device)
            idx = torch.minimum(means.detach().round().long().clamp(min=0), hi)  # (.., K, R)
            weights = values
        else:
            pts = sample_points(means, self.sizes, self.learn,
                                global_samples=self.global_samples,
                                local_samples=self.local_samples, region=self.region,
                                local_box=self.local_box,
                                generator=generator or self.generator)  # (.., K, S, R)
            idx = pts.flatten(-3, -2)  # (.., P, R)
            keep: Tensor | None = None
            if shared:  # one context: keep each distinct point once, in index order
                first = distinct_indices(linear_index(idx, self.sizes))  # (P',)
                idx = idx.index_select(0, first)  # (P', R) sorted by output index
            else:
                keep = first_occurrence(linear_index(idx, self.sizes))  # (.., P)
            weights = point_weights(idx, keep, means, sigmas, values, self.learn,
                                    method=self.method(sigmas, idx.shape[-2]), cutoff=self.cutoff,
                                    sizes=self.sizes)
        if shared:  # sampled points are distinct and sorted by index: grouped by output
            return Connections(idx, weights, None, grouped=sample)
        b, p = idx.shape[0], idx.shape[1]
        batch = torch.arange(b, device=idx.device).repeat_interleave(p)  # (B*P,)
        return Connections(idx.reshape(b * p, r), weights.reshape(b * p), batch)

    def forward(self, x: Tensor) -> Tensor:
        xb, lead = self._check_input(x)
        return self.apply_connections(xb, self.connections(xb)).reshape(lead + self.out_shape)

    def apply_connections(self, x: Tensor, conn: Connections) -> Tensor:
        """``y = W . x`` for ``x`` of shape (B, *in_shape), ``W`` given as :class:`Connections`;
        returns (B, M) (flattened outputs) plus the bias."""
        no = len(self.out_shape)
        out_idx = linear_index(conn.indices[:, :no], self.out_shape)  # (Q,)
        in_idx = linear_index(conn.indices[:, no:], self.in_shape)  # (Q,)
        xf = x.reshape(x.shape[0], math.prod(self.in_shape))  # (B, N)
        y = sparse_contract(xf, out_idx, in_idx, conn.weights, math.prod(self.out_shape),
                            conn.batch, grouped=conn.grouped)  # (B, M)
        if self.bias is not None:
            y = y + self.bias.reshape(1, -1)
        return y

    def _check_input(self, x: Tensor) -> tuple[Tensor, tuple[int, ...]]:
        if not isinstance(x, Tensor):
            raise TypeError(f"input must be a Tensor, got {type(x).__name__}")
        ni = len(self.in_shape)
        if x.dim() < ni + 1 or tuple(x.shape[-ni:]) != self.in_shape:
            raise ValueError(f"input must have shape (B, *{self.in_shape}), got {tuple(x.shape)}")
        lead = tuple(x.shape[:-ni])
        _check_finite("input", x.sum())
        return x.reshape((-1,) + self.in_shape), lead  # (B, *in_shape)

    @torch.no_grad()
    def to_sparse(self, x: Tensor | None = None) -> Tensor:
        """The current weight tensor with eval semantics (indices ``round(mu)``, weights ``v``),
        coalesced (coinciding tuples add up) as a ``torch.sparse_coo`` tensor.

        Shape: ``out_shape + in_shape`` for shared layers; ``(B,) + out_shape + in_shape`` for
        adaptive ones, which need the input ``x`` (B, *in_shape).
        """
        if x is None:
            x = torch.zeros((1,) + self.in_shape, device=self._device())
        else:
            x, _ = self._check_input(x)
        conn = self.connections(x, sample=False)
        if conn.batch is None:
            return torch.sparse_coo_tensor(conn.indices.T, conn.weights, self.sizes,
                                           check_invariants=True).coalesce()
        ind = torch.cat([conn.batch.unsqueeze(1), conn.indices], dim=1).T  # (1 + R, Q)
        return torch.sparse_coo_tensor(ind, conn.weights, (x.shape[0],) + self.sizes,
                                       check_invariants=True).coalesce()

    def _device(self) -> torch.device:
        for t in list(self.parameters()) + list(self.buffers()):
            return t.device
        return torch.device("cpu")

    def extra_repr(self) -> str:
        s = (f"in_shape={self.in_shape}, out_shape={self.out_shape}, k={self.k}, "
             f"learn_cols={self.learn}, global_samples={self.global_samples}, "
             f"local_samples={self.local_samples}, region={self.region}, "
             f"sigma_scale={self.sigma_scale}, min_sigma={self.min_sigma}, "
             f"normalisation={self.normalisation!r}")
        if not self.learn_values:
            s += ", learn_values=False"
        if self.mean_bound != "sigmoid":
            s += f", mean_bound={self.mean_bound!r}"
        if self.local_box != "low":
            s += f", local_box={self.local_box!r}"
        if self.bias is not None:
            s += ", bias=True"
        return s


def _check_finite(what: str, reduced: Tensor) -> None:
    # one reduced sum per forward: a single cheap synchronising check instead of a full scan
    if not bool(torch.isfinite(reduced)):
        raise ValueError(f"{what} contain NaN or inf")


class SparseLayer(HyperLayer):
    """A sparse layer with free parameters: K index tuples shared by the whole batch.

    One sample set per forward serves every instance (the prototype learned as well per batch as
    with per-instance samples, at 20x less time). Parameters: ``raw_means`` (K, R'),
    ``raw_sigmas`` (K,), ``values`` (K,) (a buffer of ones when ``learn_values=False``).
    With ``learn_sigmas=False`` ``raw_sigmas`` is a buffer of zeros: every deviation is
    ``softplus(2) * sigma_scale * size * sigma_gain``, the same for all tuples, and only a
    schedule (:class:`SigmaAnnealing`) changes it. Other arguments as for :class:`HyperLayer`.

    Example:
        >>> layer = SparseLayer(32, 32, k=32, learn_values=False)
        >>> layer(torch.randn(8, 32)).shape
        torch.Size([8, 32])
        >>> layer.to_sparse().shape
        torch.Size([32, 32])
    """

    def __init__(self, in_shape: int | Sequence[int], out_shape: int | Sequence[int], k: int, *,
                 learn_sigmas: bool = True, **kwargs: Any) -> None:
        super().__init__(in_shape, out_shape, k, **kwargs)
        factory = {"device": kwargs.get("device"), "dtype": kwargs.get("dtype")}
        self.raw_means = nn.Parameter(torch.empty(k, len(self.learn), **factory))
        self.learn_sigmas = bool(learn_sigmas)
        if self.learn_sigmas:
            self.raw_sigmas = nn.Parameter(torch.empty(k, **factory))
        else:
            self.register_buffer("raw_sigmas", torch.empty(k, **factory))
        self.values = nn.Parameter(torch.empty(k, **factory)) if self.learn_values else None
        self.reset_parameters()

    @torch.no_grad()
    def reset_parameters(self) -> None:
        """Means uniform over index space, raw sigmas 0, values N(0, min(1, M/K))."""
        u = torch.rand(self.raw_means.shape, generator=self.generator, dtype=torch.float64)
        span = torch.tensor(self.learned_sizes, dtype=torch.float64) - 1  # (R',)
        self.raw_means.copy_(unbound_means(u * span, self.learned_sizes, mode=self.mean_bound))
        self.raw_sigmas.zero_()
        if self.values is not None:
            std = min(1.0, math.sqrt(math.prod(self.out_shape) / self.k))
            self.values.normal_(0.0, std, generator=self.generator)
        if self.bias is not None:
            self.bias.zero_()

    def hyper(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor | None]:
        return self.raw_means, self.raw_sigmas, self.values

    def extra_repr(self) -> str:
        return super().extra_repr() + ("" if self.learn_sigmas else ", learn_sigmas=False")


def set_sigma_gain(module: nn.Module, gain: float) -> None:
    """Set ``sigma_gain`` of every :class:`HyperLayer` in ``module`` (itself included)."""
    if not math.isfinite(gain) or gain <= 0:
        raise ValueError(f"gain must be a finite float > 0, got {gain}")
    for m in module.modules():
        if isinstance(m, HyperLayer):
            m.sigma_gain.fill_(gain)


class SigmaAnnealing:
    """Training callback: anneal every hyperlayer's deviations geometrically.

    ``sigma_gain`` goes from ``start`` to ``end`` over ``steps`` steps (``start * (end /
    start) ** (t / steps)``) and is then held at ``end``. With all deviations equal (e.g.
    :class:`SparseLayer` with ``learn_sigmas=False``) this is deterministic annealing: the
    tuples settle jointly while the Gaussians are wide and commit to single indices as they
    shrink, instead of a few tuples hedging with wide deviations over several targets (see
    docs/hyperlayer.md). The gain is a buffer, so a resumed run continues the schedule (an
    interrupt that lands between a step and its callbacks resumes one step late).

    :func:`hypersparse.train.fit` calls callbacks *after* each step, so the first step runs at
    the layers' current gain: call ``anneal(0, model)`` before training when ``start != 1``.

    Args:
        steps: length of the annealing (> 0).
        end: the final gain (> 0).
        start: the initial gain (> 0).

    Example:
        >>> layer = SparseLayer(8, 8, k=8, learn_sigmas=False)
        >>> anneal = SigmaAnnealing(steps=100, end=0.1)
        >>> _ = anneal(50, layer, {})          # as called by hypersparse.train.fit after step 50
        >>> round(float(layer.sigma_gain), 4)
        0.3162
    """

    def __init__(self, steps: int, end: float, start: float = 1.0) -> None:
        if not isinstance(steps, int) or isinstance(steps, bool) or steps < 1:
            raise ValueError(f"steps must be an int >= 1, got {steps!r}")
        for name, v in (("end", end), ("start", start)):
            if not math.isfinite(v) or v <= 0:
                raise ValueError(f"{name} must be a finite float > 0, got {v}")
        self.steps, self.end, self.start = steps, float(end), float(start)

    def gain(self, step: int) -> float:
        """The gain used after ``step`` completed steps."""
        return self.start * (self.end / self.start) ** min(max(step, 0) / self.steps, 1.0)

    def __call__(self, step: int, model: nn.Module, metrics: dict[str, float] | None = None
                 ) -> bool:
        set_sigma_gain(model, self.gain(step))
        return False

    def __repr__(self) -> str:
        return f"SigmaAnnealing(steps={self.steps}, end={self.end}, start={self.start})"
