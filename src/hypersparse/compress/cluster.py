"""k-means weight sharing (Deep Compression, Han et al. 2016; seed 004 "cluster & quantization").

Per layer, the non-zero weights are clustered into ``k`` centroids by 1-d k-means; the layer then
stores a float32 **codebook** ``(k,)`` and an integer **index** per weight position. Fine-tuning
trains the centroids only: the weight is ``W = where(mask, codebook[index], 0)``, so autograd
gives each centroid the summed gradient of its members,
``dL/dc_k = sum_{i: index_i = k, mask_i} dL/dW_i``, while the indices stay fixed. Shared weights
therefore stay shared after any optimizer step.

Representation contract (what :func:`export_shared` returns and the file format serialises),
per wrapped layer with weight shape ``shape`` and ``k`` clusters:

- ``codebook``: float32 ``(k,)``, sorted ascending. Zero is **not** a centroid.
- ``index``: ``shape``, dtype :func:`index_dtype` ``(k)`` (``uint8`` for k <= 256, ``int16`` for
  k <= 32768, else ``int32``); the centroid of each position. Pruned positions hold 0 (a filler,
  never read).
- ``mask``: bool ``shape``; True where the weight is kept, False where it is pruned (the weight
  is exactly 0 there). The mask comes from the ``mask=`` argument if given, else from the
  layer's ``weight_mask`` buffer (``compress.prune``'s bool mask; ``torch.nn.utils.prune``'s
  float mask), else from the effective weight: a position is pruned iff its weight is exactly
  zero. Either way clustering a pruned layer keeps its sparsity pattern, and the zero is never
  a centroid (only kept weights are clustered).
- the layer's bias (if any) is kept in float32 and not clustered.

In a module the codebook is the Parameter ``centroids``, the index and mask are buffers, so
``state_dict`` round-trips and any optimizer trains the centroids. To load a saved state,
first call :func:`share_weights` with the same arguments on a fresh model, then
``load_state_dict``.

Deep Compression's defaults: 32 centroids (5 bits) for fully connected layers, 256 (8 bits) for
convolutions, linear initialisation (evenly spaced between the min and max weight), which it
found best because it keeps the rare large weights represented.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any, Literal, cast

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.utils import parametrize, skip_init

__all__ = [
    "kmeans1d",
    "index_dtype",
    "shared_weight",
    "SharedWeights",
    "share_weights",
    "export_shared",
    "sharing_report",
    "SharingLayerReport",
    "safe_deepcopy",
    "base_type",
    "weight_of",
    "bias_of",
]

Init = Literal["linear", "kmeans++", "random"]
_INITS = ("linear", "kmeans++", "random")


def index_dtype(k: int) -> torch.dtype:
    """The smallest integer dtype that holds indices ``0..k-1``.

    ``uint8`` up to 256, ``int16`` up to 32768, else ``int32`` (``int16`` rather than ``uint16``
    because torch supports few ops on ``uint16``).
    """
    if isinstance(k, bool) or not isinstance(k, int) or k < 1:
        raise ValueError(f"k must be an int >= 1, got {k!r}")
    if k <= 256:
        return torch.uint8
    if k <= 2**15:
        return torch.int16
    return torch.int32


def _init_centroids(x: Tensor, k: int, init: str, generator: torch.Generator | None) -> Tensor:
    if init == "linear":
        t = torch.linspace(0, 1, k, dtype=x.dtype, device=x.device)  # (k,)
        return x.min() + t * (x.max() - x.min())
    if init == "random":  # Forgy: k distinct positions drawn uniformly
        perm = torch.randperm(x.numel(), generator=generator, device="cpu")[:k].to(x.device)
        c = x[perm]
        if c.numel() < k:  # fewer points than clusters: pad with copies
            c = torch.cat([c, c[:1].expand(k - c.numel())])
        return c
    # k-means++ (Arthur & Vassilvitskii 2007): each new centre drawn with probability ~ D(x)^2.
    first = torch.randint(x.numel(), (1,), generator=generator, device="cpu").to(x.device)
    c = x[first]
    d2 = (x - c).square()
    for _ in range(k - 1):
        total = d2.sum()
        if total <= 0:  # every point already coincides with a centre
            c = torch.cat([c, c[:1]])
            continue
        j = torch.multinomial((d2 / total).cpu(), 1, generator=generator).to(x.device)
        c = torch.cat([c, x[j]])
        d2 = torch.minimum(d2, (x - x[j]).square())
    return c


def _assign(x: Tensor, centroids: Tensor) -> Tensor:
    """Nearest centroid of each value; ``centroids`` sorted ascending; ties go to the lower one."""
    mid = (centroids[1:] + centroids[:-1]) / 2  # (k-1,)
    return torch.bucketize(x, mid)


def kmeans1d(
    x: Tensor,
    k: int,
    *,
    init: Init = "linear",
    max_iter: int = 100,
    generator: torch.Generator | None = None,
) -> tuple[Tensor, Tensor]:
    """Lloyd's k-means on scalars.

    Assignment is exact nearest-centroid via ``bucketize`` on the midpoints of the sorted
    centroids (a value exactly between two centroids goes to the lower one). A cluster that
    becomes empty keeps its previous centroid. Stops when the assignment no longer changes or
    after ``max_iter`` updates.

    Args:
        x: ``(N,)`` floating values, ``N >= 1``.
        k: number of clusters, ``k >= 1`` (may exceed ``N``: some clusters are then empty).
        init: ``"linear"`` (evenly spaced between min and max; Deep Compression's choice),
            ``"kmeans++"`` or ``"random"`` (Forgy).
        max_iter: maximum number of Lloyd updates (``>= 0``; 0 keeps the initial centroids).
        generator: torch RNG for the random initialisations.

    Returns:
        ``(centroids, assignment)``: ``(k,)`` sorted ascending in ``x``'s dtype, and ``(N,)``
        int64 in ``[0, k)``.

    Shape:
        x: ``(N,)``; centroids: ``(k,)``; assignment: ``(N,)``.

    Example:
        >>> c, a = kmeans1d(torch.tensor([0.0, 0.1, 1.0, 1.1]), 2)
        >>> c.tolist(), a.tolist()
        ([0.05000000074505806, 1.0499999523162842], [0, 0, 1, 1])
    """
    if not isinstance(x, Tensor) or x.dim() != 1 or not x.is_floating_point():
        got = (x.dtype, tuple(x.shape)) if isinstance(x, Tensor) else type(x).__name__
        raise ValueError(f"x must be a 1-d floating tensor, got {got}")
    if x.numel() == 0:
        raise ValueError("x must hold at least one value")
    if not bool(torch.isfinite(x).all()):
        raise ValueError("x must be finite (found NaN or inf)")
    if isinstance(k, bool) or not isinstance(k, int) or k < 1:
        raise ValueError(f"k must be an int >= 1, got {k!r}")
    if init not in _INITS:
        raise ValueError(f"init must be one of {_INITS}, got {init!r}")
    if isinstance(max_iter, bool) or not isinstance(max_iter, int) or max_iter < 0:
        raise ValueError(f"max_iter must be an int >= 0, got {max_iter!r}")
    x = x.detach()
    centroids = _init_centroids(x, k, init, generator).sort().values
    assignment = _assign(x, centroids)
    for _ in range(max_iter):
        sums = torch.zeros(k, dtype=x.dtype, device=x.device).index_add_(0, assignment, x)
        counts = torch.bincount(assignment, minlength=k)
        centroids = torch.where(counts > 0, sums / counts.clamp_min(1).to(x.dtype), centroids)
        centroids = centroids.sort().values  # 1-d Lloyd keeps the order; sort guards ties
        new = _assign(x, centroids)
        if torch.equal(new, assignment):
            break
        assignment = new
    return centroids, assignment


class _Gather(torch.autograd.Function):
    """``where(mask, codebook[index], 0)`` with ``dL/dc_k = sum of member gradients``."""

    @staticmethod
    def forward(ctx: Any, centroids: Tensor, index: Tensor, mask: Tensor) -> Tensor:
        flat = index.reshape(-1).long()  # (P,)
        w = centroids.index_select(0, flat).reshape(index.shape)
        ctx.save_for_backward(flat, mask)
        ctx.k = centroids.shape[0]
        return torch.where(mask, w, torch.zeros((), dtype=w.dtype, device=w.device))

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor | None, None, None]:
        flat, mask = ctx.saved_tensors
        g = torch.where(mask, grad, torch.zeros((), dtype=grad.dtype, device=grad.device))
        out = torch.zeros(ctx.k, dtype=grad.dtype, device=grad.device)
        return out.index_add_(0, flat, g.reshape(-1)), None, None  # (k,)


def shared_weight(centroids: Tensor, index: Tensor, mask: Tensor | None = None) -> Tensor:
    """The weight tensor of a shared-weight layer: ``where(mask, centroids[index], 0)``.

    Differentiable in ``centroids``: the gradient of centroid ``k`` is the sum of the gradients
    of the kept positions whose index is ``k``.

    Args:
        centroids: ``(k,)`` floating codebook.
        index: integer tensor of any shape, values in ``[0, k)``.
        mask: bool tensor of ``index``'s shape; False positions are exactly zero. None keeps all.

    Shape:
        Output: ``index.shape``, ``centroids.dtype``.

    Example:
        >>> shared_weight(torch.tensor([-1.0, 2.0]), torch.tensor([[0, 1], [1, 1]]),
        ...               torch.tensor([[True, True], [False, True]]))
        tensor([[-1.,  2.],
                [ 0.,  2.]])
    """
    if centroids.dim() != 1 or not centroids.is_floating_point() or centroids.numel() == 0:
        raise ValueError(f"centroids must be a non-empty 1-d floating tensor, got "
                         f"{centroids.dtype} {tuple(centroids.shape)}")
    if index.is_floating_point() or index.is_complex() or index.dtype == torch.bool:
        raise TypeError(f"index must be an integer tensor, got {index.dtype}")
    if mask is None:
        mask = torch.ones(index.shape, dtype=torch.bool, device=index.device)
    if mask.dtype != torch.bool or mask.shape != index.shape:
        raise ValueError(f"mask must be a bool tensor of shape {tuple(index.shape)}, got "
                         f"{mask.dtype} {tuple(mask.shape)}")
    if index.numel() and (int(index.min()) < 0 or int(index.max()) >= centroids.numel()):
        raise ValueError(f"index values must lie in [0, {centroids.numel()}), got "
                         f"[{int(index.min())}, {int(index.max())}]")
    return _Gather.apply(centroids, index, mask)


def _linear(layer: nn.Module, x: Tensor, w: Tensor) -> Tensor:
    return F.linear(x, w, bias_of(layer))


def _conv(layer: nn.Module, x: Tensor, w: Tensor) -> Tensor:
    return layer._conv_forward(x, w, bias_of(layer))  # type: ignore[operator]


_FORWARD: dict[type[nn.Module], Callable[[nn.Module, Tensor, Tensor], Tensor]] = {
    nn.Linear: _linear, nn.Conv1d: _conv, nn.Conv2d: _conv, nn.Conv3d: _conv,
}


def weight_of(module: nn.Module) -> Tensor:
    """``module.weight`` typed as a Tensor (the effective weight, parametrisations applied)."""
    return cast(Tensor, module.weight)


def bias_of(module: nn.Module) -> Tensor | None:
    """``module.bias`` typed as an optional Tensor."""
    return cast("Tensor | None", getattr(module, "bias", None))


def base_type(module: nn.Module) -> type[nn.Module]:
    """The module's class, seeing through ``torch.nn.utils.parametrize`` (which swaps in a
    generated subclass such as ``ParametrizedLinear``)."""
    cls = type(module)
    if parametrize.is_parametrized(module):
        cls = cls.__bases__[0]
    return cls


def safe_deepcopy(model: nn.Module) -> nn.Module:
    """``copy.deepcopy`` that also works on modules pruned with ``torch.nn.utils.prune``
    (whose ``weight`` attribute is a non-leaf tensor that deepcopy refuses): such attributes
    are copied as detached clones; the pruning hooks recompute them at the next forward."""
    memo: dict[int, Any] = {}
    for mod in model.modules():
        for value in vars(mod).values():
            if isinstance(value, Tensor) and not value.is_leaf:
                memo[id(value)] = value.detach().clone()
    return copy.deepcopy(model, memo)


def _plain_weight(layer: nn.Module) -> Tensor:
    """The layer's effective weight, with any pruning/parametrisation applied."""
    return weight_of(layer).detach().clone()


@torch.no_grad()
def _strip(layer: nn.Module) -> nn.Module:
    """A fresh plain layer of ``layer``'s base class holding its effective weight and bias.

    Rebuilt from the constructor arguments rather than copied, so a pruning reparametrisation
    (``torch.nn.utils.prune`` hooks, ``parametrize``) on ``layer`` is baked in and left
    untouched on the original (removing a parametrisation from a deep copy would delete the
    property from the class the copy shares with the original).
    """
    cls = base_type(layer)
    w = weight_of(layer).detach()
    b = bias_of(layer)
    bias = None if b is None else b.detach()
    f: dict[str, Any] = {"device": w.device, "dtype": w.dtype, "bias": bias is not None}
    if cls is nn.Linear:
        new = skip_init(nn.Linear, layer.in_features, layer.out_features, **f)
    else:
        new = skip_init(cls, layer.in_channels, layer.out_channels, layer.kernel_size,
                        stride=layer.stride, padding=layer.padding, dilation=layer.dilation,
                        groups=layer.groups, padding_mode=layer.padding_mode, **f)
    weight_of(new).copy_(w)
    if bias is not None:
        cast(Tensor, new.bias).copy_(bias)
    return new


class SharedWeights(nn.Module):
    """A Linear/Conv layer whose weight is ``where(mask, centroids[index], 0)``.

    Build it from a trained layer with :meth:`from_layer` (runs k-means), or through
    :func:`share_weights` for a whole model. ``forward`` is the wrapped layer's own op with the
    shared weight; the bias stays a free Parameter of the wrapped layer (``layer.bias``).

    Args:
        layer: an ``nn.Linear`` or ``nn.Conv1d/2d/3d`` (its weight Parameter is removed).
        centroids: ``(k,)`` codebook.
        index: integer tensor of the weight's shape, values in ``[0, k)``.
        mask: bool tensor of the weight's shape (None: all kept).

    Shape:
        Same as ``layer``.

    Example:
        >>> lin = nn.Linear(8, 4)
        >>> sw = SharedWeights.from_layer(lin, 4)
        >>> sw.weight.unique().numel() <= 4
        True
    """

    centroids: nn.Parameter
    index: Tensor
    mask: Tensor

    def __init__(self, layer: nn.Module, centroids: Tensor, index: Tensor,
                 mask: Tensor | None = None) -> None:
        super().__init__()
        if base_type(layer) not in _FORWARD:
            raise TypeError(f"SharedWeights wraps {[t.__name__ for t in _FORWARD]}, "
                            f"got {type(layer).__name__}")
        layer = _strip(layer)
        shape = tuple(weight_of(layer).shape)
        if tuple(index.shape) != shape:
            raise ValueError(f"index must have the weight's shape {shape}, "
                             f"got {tuple(index.shape)}")
        k = centroids.numel()
        weight_dtype = weight_of(layer).dtype
        layer.register_parameter("weight", None)  # it now lives in centroids/index/mask
        self.layer = layer
        self.centroids = nn.Parameter(centroids.detach().to(weight_dtype).clone())
        self.register_buffer("index", index.detach().to(index_dtype(k)).clone())
        if mask is None:
            mask = torch.ones(shape, dtype=torch.bool, device=index.device)
        self.register_buffer("mask", mask.detach().to(torch.bool).clone())
        shared_weight(self.centroids, self.index, self.mask)  # validates ranges and shapes

    @classmethod
    def from_layer(
        cls,
        layer: nn.Module,
        k: int,
        *,
        mask: Tensor | None = None,
        init: Init = "linear",
        max_iter: int = 100,
        generator: torch.Generator | None = None,
    ) -> SharedWeights:
        """Cluster the kept (non-zero, or ``mask``-ed) weights of ``layer`` into ``k`` centroids.

        Args:
            layer: the trained layer (not modified; a pruning parametrisation or
                ``torch.nn.utils.prune`` hook on it is baked in).
            k: number of centroids.
            mask: bool, the weight's shape; True = kept. Default: the layer's ``weight_mask``
                buffer if it has one (``compress.prune``'s bool mask, or
                ``torch.nn.utils.prune``'s float one), else ``weight != 0``. Positions outside
                the mask become exactly zero.
            init, max_iter, generator: see :func:`kmeans1d`.
        """
        if base_type(layer) not in _FORWARD:
            raise TypeError(f"SharedWeights wraps {[t.__name__ for t in _FORWARD]}, "
                            f"got {type(layer).__name__}")
        w = _plain_weight(layer)
        if mask is None:
            pruning_mask = getattr(layer, "weight_mask", None)  # compress.prune / torch prune
            if isinstance(pruning_mask, Tensor) and pruning_mask.shape == w.shape:
                mask = pruning_mask.detach().to(torch.bool)
            else:
                mask = w != 0
        elif mask.shape != w.shape or mask.dtype != torch.bool:
            raise ValueError(f"mask must be a bool tensor of shape {tuple(w.shape)}, got "
                             f"{mask.dtype} {tuple(mask.shape)}")
        mask = mask.to(w.device)
        index = torch.zeros(w.shape, dtype=torch.long, device=w.device)
        kept = w[mask]  # (nnz,)
        if kept.numel() == 0:
            centroids = torch.zeros(k, dtype=w.dtype, device=w.device)
        else:
            centroids, assignment = kmeans1d(kept, k, init=init, max_iter=max_iter,
                                             generator=generator)
            index[mask] = assignment
        return cls(layer, centroids, index, mask)

    @property
    def k(self) -> int:
        return self.centroids.numel()

    @property
    def weight(self) -> Tensor:
        """The shared weight ``where(mask, centroids[index], 0)`` (differentiable in centroids)."""
        return _Gather.apply(self.centroids, self.index, self.mask)

    @property
    def bias(self) -> Tensor | None:
        return bias_of(self.layer)

    def forward(self, x: Tensor) -> Tensor:
        return _FORWARD[type(self.layer)](self.layer, x, self.weight)

    def extra_repr(self) -> str:
        kept = int(self.mask.sum())
        return f"k={self.k}, index_dtype={self.index.dtype}, kept={kept}/{self.mask.numel()}"


def _eligible(model: nn.Module) -> dict[str, nn.Module]:
    return {n: m for n, m in model.named_modules() if base_type(m) in _FORWARD and n}


def _set_submodule(model: nn.Module, name: str, new: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    setattr(parent, child, new)


def share_weights(
    model: nn.Module,
    *,
    bits: int | Mapping[str, int] | None = None,
    fc_clusters: int = 32,
    conv_clusters: int = 256,
    names: Sequence[str] | None = None,
    masks: Mapping[str, Tensor] | None = None,
    init: Init = "linear",
    max_iter: int = 100,
    generator: torch.Generator | None = None,
    inplace: bool = False,
) -> nn.Module:
    """Replace every Linear/Conv layer of ``model`` by a :class:`SharedWeights` wrapper.

    Args:
        model: the trained (possibly pruned) network. A top-level Linear/Conv (``model`` itself)
            is not replaced; wrap it with :meth:`SharedWeights.from_layer`.
        bits: ``2**bits`` centroids for every layer, or a ``{name: bits}`` mapping; overrides
            the defaults below.
        fc_clusters: centroids per ``nn.Linear`` (Deep Compression: 32, i.e. 5 bits).
        conv_clusters: centroids per convolution (Deep Compression: 256, i.e. 8 bits).
        names: only these submodules (default: every Linear/Conv1d/2d/3d).
        masks: ``{name: bool mask}`` of kept weights (default: the non-zero weights).
        init, max_iter, generator: see :func:`kmeans1d`.
        inplace: modify ``model`` instead of a deep copy.

    Returns:
        The model with shared-weight layers; fine-tune it with any optimizer over
        ``model.parameters()`` (the centroids and the biases).

    Example:
        >>> net = nn.Sequential(nn.Linear(10, 5), nn.ReLU(), nn.Linear(5, 2))
        >>> shared = share_weights(net, bits=2)
        >>> shared[0].weight.unique().numel() <= 4
        True
    """
    for label, value in (("fc_clusters", fc_clusters), ("conv_clusters", conv_clusters)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{label} must be an int >= 1, got {value!r}")
    eligible = _eligible(model)
    if names is not None:
        names = list(names)
        missing = [n for n in names if n not in eligible]
        if missing:
            raise ValueError(f"names {missing} are not Linear/Conv submodules; eligible: "
                             f"{sorted(eligible)}")
        eligible = {n: eligible[n] for n in names}
    bits_map: dict[str, int] = {}
    if isinstance(bits, Mapping):
        unknown = [n for n in bits if n not in eligible]
        if unknown:
            raise ValueError(f"bits names {unknown} are not among the layers {sorted(eligible)}")
        bits_map = dict(bits)
    elif bits is not None:
        bits_map = dict.fromkeys(eligible, bits)
    for n, b in bits_map.items():
        if isinstance(b, bool) or not isinstance(b, int) or not 1 <= b <= 16:
            raise ValueError(f"bits must be an int in [1, 16], got {b!r} for {n!r}")
    masks = dict(masks or {})
    unknown = [n for n in masks if n not in eligible]
    if unknown:
        raise ValueError(f"masks names {unknown} are not among the layers {sorted(eligible)}")
    target = model if inplace else safe_deepcopy(model)
    for name in eligible:
        layer = target.get_submodule(name)
        default = fc_clusters if base_type(layer) is nn.Linear else conv_clusters
        k = 2 ** bits_map[name] if name in bits_map else default
        new = SharedWeights.from_layer(layer, k, mask=masks.get(name), init=init,
                                       max_iter=max_iter, generator=generator)
        _set_submodule(target, name, new)
    return target


@torch.no_grad()
def export_shared(model: nn.Module) -> dict[str, dict[str, Any]]:
    """The codebook + index representation of every :class:`SharedWeights` in ``model``.

    Returns:
        ``{name: {"codebook": float32 (k,), "index": int (shape), "mask": bool (shape),
        "shape": tuple, "bias": float32 (out,) or None, "kind": "Linear"|"Conv2d"|...}}``
        (CPU tensors), the contract described in this module's docstring.
    """
    out: dict[str, dict[str, Any]] = {}
    for name, mod in model.named_modules():
        if isinstance(mod, SharedWeights):
            bias = bias_of(mod.layer)
            out[name] = {
                "codebook": mod.centroids.detach().float().cpu().clone(),
                "index": mod.index.cpu().clone(),
                "mask": mod.mask.cpu().clone(),
                "shape": tuple(mod.index.shape),
                "bias": None if bias is None else bias.detach().float().cpu().clone(),
                "kind": type(mod.layer).__name__,
            }
    return out


@dataclass
class SharingLayerReport:
    """Storage of one shared-weight layer, in bits, before any entropy coding.

    ``dense_bits = 32 * numel`` (the float32 weight); ``shared_bits = kept * index_bits +
    32 * k`` (the seed's ``n log2(k) + k b``, counting only kept positions: where they are is
    the sparse format's business, see ``mask_bits``); ``mask_bits = numel`` for a plain bitmap
    when something is pruned, else 0. Biases are excluded (unchanged float32).
    """

    name: str
    shape: tuple[int, ...]
    k: int
    index_bits: int
    kept: int
    numel: int
    dense_bits: int
    shared_bits: int
    mask_bits: int
    distinct_values: int

    def as_dict(self) -> dict[str, object]:
        return asdict(self)


@torch.no_grad()
def sharing_report(model: nn.Module) -> list[SharingLayerReport]:
    """One :class:`SharingLayerReport` per :class:`SharedWeights` in ``model``."""
    rows = []
    for name, mod in model.named_modules():
        if isinstance(mod, SharedWeights):
            kept, numel = int(mod.mask.sum()), mod.mask.numel()
            ib = max(1, math.ceil(math.log2(mod.k)))
            values = mod.weight[mod.mask]
            rows.append(SharingLayerReport(
                name=name, shape=tuple(mod.mask.shape), k=mod.k, index_bits=ib, kept=kept,
                numel=numel, dense_bits=32 * numel, shared_bits=kept * ib + 32 * mod.k,
                mask_bits=numel if kept < numel else 0,
                distinct_values=int(values.unique().numel())))
    return rows
