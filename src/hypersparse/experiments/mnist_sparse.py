"""``mnist-sparse``: MNIST (or Fashion-MNIST) classification with sparse hyperlayers (seed 001).

The classifier is ``standardise -> sparse(28x28 -> H1) -> ReLU -> sparse(H1 -> H2) -> ReLU ->
Linear(H2 -> 10)``. Every sparse layer is a :class:`FanInSparseLayer`: a
:class:`~hypersparse.nn.SparseLayer` whose tuples are split evenly over its output units (the
output coordinate is fixed by a template) and whose tuples learn only their *input* coordinates.
The first layer reads the image in rank-2 coordinates (row, column), so a tuple's Gaussian moves
over the image and locality helps. The adaptive variant (``adaptive=true``) replaces the first
layer by an :class:`AdaptiveFanInLayer`, whose hypernetwork shifts each unit's receptive field
per image.

Baselines trained in the same harness and budget (same data, optimiser, schedule, epochs): the
dense MLP of the same widths (:func:`hypersparse.experiments.mnist_mlp.mlp`) and a small CNN
whose hidden tensors have the same sizes (3x10x10 = 300 and 4x5x5 = 100 for the default widths).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..data import digits
from ..functional.contract import sparse_contract
from ..functional.hyper import first_occurrence, linear_index, point_weights, sample_points
from ..nn.hyper import Connections, HyperLayer, SparseLayer
from ..run import RunContext
from ..train import TensorBatches, TrainConfig, derive_seed
from .base import Experiment, register_experiment
from .common import accuracy, batched, classification_loss, count_parameters
from .mnist_mlp import mlp

__all__ = [
    "AdaptiveFanInLayer",
    "FanInSparseLayer",
    "MnistSparseConfig",
    "SparseClassifier",
    "Standardise",
    "cnn",
    "resolve_collisions",
    "sparse_nonzeros",
    "weight_gradients",
]


# ----------------------------------------------------------------------------- layers

#: training contractions of :class:`FanInSparseLayer` (see ``_PerUnitContexts.contract``)
CONTRACTS = ("coalesce", "sparse", "dense")


def _fan_in_template(out_shape: tuple[int, ...], in_rank: int, fan_in: int) -> Tensor:
    """(M * fan_in, R) index tuples: unit-major output coordinates, zeros in the input columns."""
    m = math.prod(out_shape)
    unit = torch.arange(m).repeat_interleave(fan_in)  # (K,)
    outs = []
    for size in reversed(out_shape):
        outs.append(unit % size)
        unit = unit // size
    out_cols = torch.stack(outs[::-1], dim=1).double()  # (K, len(out_shape))
    return torch.cat([out_cols, torch.zeros(m * fan_in, in_rank, dtype=torch.float64)], dim=1)


def _raw_from_index(means: Tensor, sizes: Sequence[int]) -> Tensor:
    """Inverse of :func:`~hypersparse.functional.bound_means` (clamped away from the ends)."""
    hi = torch.tensor([s - 1 for s in sizes], dtype=means.dtype).clamp_min(1)
    u = (means / hi).clamp(1e-3, 1 - 1e-3)
    return torch.logit(u)


class _PerUnitContexts(HyperLayer):
    """Training-time connections with one normalisation context per output unit.

    With the output coordinates fixed by a template, a tuple's density is zero on every point of
    another unit, and points of different units never coincide, so normalising each unit's
    tuples over that unit's points gives exactly the weights of the layer-wide context at
    ``K * fan_in * S`` instead of ``K^2 * S`` (tuple, point) pairs.

    ``context = c > 0`` (a divisor of ``fan_in``) is a cheaper approximation: chunks of ``c``
    consecutive tuples of a unit, each normalised over its own points (``K * c * S`` pairs).
    """

    fan_in: int
    context: int
    #: train with the eval connections (rounded means, raw values): fine-tunes the values of
    #: the exported sparse weights; set by :meth:`freeze_connectivity`.
    frozen: bool = False

    sigma_factor: Tensor

    def _init_sigma_factor(self) -> None:
        self.register_buffer("sigma_factor", torch.ones((), device=self._device()))

    def tuples(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """As :meth:`HyperLayer.tuples`, with the deviations times the buffer ``sigma_factor``
        (annealed by the experiment, so that training converges to the eval connections)."""
        means, sigmas, values = super().tuples(x)
        return means, sigmas * self.sigma_factor, values

    #: How shared connections are contracted in training. ``"coalesce"``: sum the weights of
    #: coinciding entries first (one sort of the Q entries), then the core's gather/scatter
    #: contraction over the U <= Q distinct ones (about 2.3x fewer on the first MNIST layer,
    #: where the sampled points of a unit's tuples overlap); ``"sparse"``: the core's
    #: contraction of all Q entries; ``"dense"``: through a dense (M, N) scratch matrix (one
    #: BLAS product; same result, O(M * N) memory, so not a sparse method: opt-in only).
    contract: str = "coalesce"

    def apply_connections(self, x: Tensor, conn: Connections) -> Tensor:
        if self.contract not in CONTRACTS:
            raise ValueError(f"contract must be one of {CONTRACTS}, got {self.contract!r}")
        if self.contract == "sparse" or conn.batch is not None or not self.training:
            return super().apply_connections(x, conn)
        no = len(self.out_shape)
        m, n = math.prod(self.out_shape), math.prod(self.in_shape)
        flat = linear_index(conn.indices[:, :no], self.out_shape) * n + linear_index(
            conn.indices[:, no:], self.in_shape)  # (Q,)
        xf = x.reshape(x.shape[0], n)  # (B, N)
        if self.contract == "coalesce":
            keys, inverse = torch.unique(flat, return_inverse=True)  # (U,), (Q,)
            w = conn.weights.new_zeros(keys.shape[0]).index_add(0, inverse, conn.weights)  # (U,)
            y = sparse_contract(xf, keys // n, keys % n, w, m)  # (B, M)
        else:
            dense = conn.weights.new_zeros(m * n).index_add(0, flat, conn.weights)  # (M*N,)
            y = xf @ dense.view(m, n).T  # (B, M)
        return y if self.bias is None else y + self.bias.reshape(1, -1)

    def freeze_connectivity(self, frozen: bool = True) -> None:
        """Use the eval connections in training too (the means then get no gradient)."""
        self.frozen = frozen

    def connections(self, x: Tensor, *, generator: torch.Generator | None = None,
                    sample: bool | None = None) -> Connections:
        sample = (self.training and not self.frozen) if sample is None else sample
        if not sample:
            return super().connections(x, generator=generator, sample=False)
        means, sigmas, values = self.tuples(x)  # (.., K, R), (.., K, R'), (.., K)
        lead = means.shape[:-2]
        f = self.context or self.fan_in
        m, r = self.k // f, len(self.sizes)
        means = means.reshape(lead + (m, f, r))  # (.., M, F, R)
        sigmas = sigmas.reshape(lead + (m, f, sigmas.shape[-1]))  # (.., M, F, R')
        values = values.reshape(lead + (m, f))  # (.., M, F)
        # (with context c < fan_in, "M" is K / c chunks of c tuples and "F" is c)
        pts = sample_points(means, self.sizes, self.learn, global_samples=self.global_samples,
                            local_samples=self.local_samples, region=self.region,
                            generator=generator or self.generator)  # (.., M, F, S, R)
        idx = pts.flatten(-3, -2)  # (.., M, F*S, R)
        keep = first_occurrence(linear_index(idx, self.sizes))  # (.., M, F*S)
        weights = point_weights(idx, keep, means, sigmas, values, self.learn, method="exact")
        if not lead:
            # repeated points carry weight exactly 0: drop them before the contraction
            flat_keep = keep.reshape(-1)  # (M*F*S,)
            return Connections(idx.reshape(-1, r)[flat_keep], weights.reshape(-1)[flat_keep],
                               None)  # (Q, R), (Q,)
        b = lead[0]
        q = idx[0].numel() // r
        batch = torch.arange(b, device=idx.device).repeat_interleave(q)  # (B*Q,)
        return Connections(idx.reshape(b * q, r), weights.reshape(b * q), batch)


def _check_context(context: int, fan_in: int) -> int:
    if not isinstance(context, int) or context < 0 or (context and fan_in % context):
        raise ValueError(f"context must be 0 (the whole unit) or a divisor of fan_in={fan_in}, "
                         f"got {context!r}")
    return 0 if context == fan_in else context


def _check_fan_in(fan_in: int) -> int:
    if not isinstance(fan_in, int) or isinstance(fan_in, bool) or fan_in < 1:
        raise ValueError(f"fan_in must be an int >= 1, got {fan_in!r}")
    return fan_in


class FanInSparseLayer(_PerUnitContexts, SparseLayer):
    """A :class:`~hypersparse.nn.SparseLayer` with exactly ``fan_in`` tuples per output unit.

    The output coordinates are fixed (tuple ``k`` belongs to unit ``k // fan_in``); the tuples
    learn where in the input to read. Normalisation contexts are per unit (exactly the layer-wide
    weights, far cheaper). At eval every unit reads ``fan_in`` input positions (fewer when two
    tuples round to the same position; they then add up).

    Args:
        in_shape: shape of one input (e.g. ``(28, 28)``: tuples move in image coordinates).
        out_shape: shape of one output.
        fan_in: tuples per output unit; ``k = prod(out_shape) * fan_in``.
        init_means: optional (K, len(in_shape)) initial input coordinates (index space).
        value_gain: values start as ``N(0, value_gain^2 / fan_in)``.
        **kwargs: the :class:`~hypersparse.nn.HyperLayer` options (samples, ``sigma_scale``,
            ``bias``, ...), except ``template``/``learn_cols``.

    Shape:
        input: (*, *in_shape); output: (*, *out_shape).

    Example:
        >>> layer = FanInSparseLayer((28, 28), 30, fan_in=8, bias=True)
        >>> layer(torch.rand(4, 28, 28)).shape, layer.k
        (torch.Size([4, 30]), 240)
    """

    def __init__(self, in_shape: int | Sequence[int], out_shape: int | Sequence[int],
                 fan_in: int, *, init_means: Tensor | None = None, value_gain: float = 1.0,
                 context: int = 0, **kwargs: Any) -> None:
        fan_in = _check_fan_in(fan_in)
        out = (out_shape,) if isinstance(out_shape, int) else tuple(out_shape)
        ins = (in_shape,) if isinstance(in_shape, int) else tuple(in_shape)
        if any(key in kwargs for key in ("template", "learn_cols")):
            raise ValueError("FanInSparseLayer fixes template and learn_cols itself")
        k = math.prod(out) * fan_in
        self.fan_in, self.context = fan_in, _check_context(context, fan_in)
        super().__init__(ins, out, k, template=_fan_in_template(out, len(ins), fan_in),
                         **kwargs)
        self.value_gain = float(value_gain)
        self._init_sigma_factor()
        self.init_tuples(init_means)

    @torch.no_grad()
    def init_tuples(self, means: Tensor | None = None) -> None:
        """Set the input coordinates (index space, (K, R'); default: keep the uniform draw) and
        re-draw the values as ``N(0, value_gain^2 / fan_in)``."""
        if means is not None:
            if means.shape != self.raw_means.shape:
                raise ValueError(f"init_means must have shape {tuple(self.raw_means.shape)}, "
                                 f"got {tuple(means.shape)}")
            raw = _raw_from_index(means.double(), self.learned_sizes)
            self.raw_means.copy_(raw.to(self.raw_means))
        if self.values is not None:
            self.values.normal_(0.0, self.value_gain / math.sqrt(self.fan_in),
                                generator=self.generator)

    def extra_repr(self) -> str:
        return f"fan_in={self.fan_in}, context={self.context}, " + super().extra_repr()


class AdaptiveFanInLayer(_PerUnitContexts, HyperLayer):
    """Adaptive variant: free tuples whose receptive fields a hypernetwork shifts per instance.

    A coarse view of the input (average-pooled by ``pool``) goes through a small MLP that emits,
    per output unit, a shift of all its tuples' raw input coordinates and a multiplicative value
    gain. The last hypernetwork layer starts at zero, so training starts from the free layer.

    Args:
        in_shape: (H, W) image shape.
        out_shape, fan_in, init_means, value_gain: as for :class:`FanInSparseLayer`.
        hyper_hidden: width of the hypernetwork's hidden layer.
        pool: average-pooling factor of the hypernetwork's view.
        **kwargs: the :class:`~hypersparse.nn.HyperLayer` options.

    Shape:
        input: (B, H, W); output: (B, *out_shape).
    """

    def __init__(self, in_shape: Sequence[int], out_shape: int | Sequence[int], fan_in: int, *,
                 init_means: Tensor | None = None, value_gain: float = 1.0,
                 context: int = 0, hyper_hidden: int = 64, pool: int = 4,
                 **kwargs: Any) -> None:
        fan_in = _check_fan_in(fan_in)
        ins = tuple(in_shape)
        if len(ins) != 2:
            raise ValueError(f"AdaptiveFanInLayer needs a 2-d in_shape (H, W), got {in_shape}")
        out = (out_shape,) if isinstance(out_shape, int) else tuple(out_shape)
        k = math.prod(out) * fan_in
        self.fan_in, self.context = fan_in, _check_context(context, fan_in)
        super().__init__(ins, out, k, template=_fan_in_template(out, 2, fan_in), **kwargs)
        factory: dict[str, Any] = {"device": kwargs.get("device"), "dtype": kwargs.get("dtype")}
        ref = FanInSparseLayer(ins, out, fan_in, init_means=init_means, value_gain=value_gain,
                               context=context, **kwargs)
        self.raw_means = nn.Parameter(ref.raw_means.detach().clone())
        self.raw_sigmas = nn.Parameter(ref.raw_sigmas.detach().clone())
        assert ref.values is not None  # learn_values is forced on below
        self.values = nn.Parameter(ref.values.detach().clone())
        if not self.learn_values:
            raise ValueError("AdaptiveFanInLayer learns its values (learn_values=True)")
        if pool < 1 or ins[0] % pool or ins[1] % pool:
            raise ValueError(f"pool must divide the image size {ins}, got {pool}")
        self.pool = pool
        self._init_sigma_factor()
        m = math.prod(out)
        view = (ins[0] // pool) * (ins[1] // pool)
        self.net = nn.Sequential(nn.Linear(view, hyper_hidden, **factory), nn.ReLU(),
                                 nn.Linear(hyper_hidden, m * 3, **factory))
        last = self.net[-1]
        assert isinstance(last, nn.Linear)
        nn.init.zeros_(last.weight)
        nn.init.zeros_(last.bias)

    def hyper(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor | None]:
        b, m, f = x.shape[0], self.k // self.fan_in, self.fan_in
        view = F.avg_pool2d(x.unsqueeze(1), self.pool).flatten(1)  # (B, h*w)
        out = self.net(view).view(b, m, 1, 3)  # (B, M, 1, 3)
        shift = out[..., :2].expand(b, m, f, 2).reshape(b, self.k, 2)  # (B, K, 2)
        gain = 1 + out[..., 2].expand(b, m, f).reshape(b, self.k)  # (B, K)
        return (self.raw_means + shift, self.raw_sigmas.expand(b, self.k),
                self.values * gain)

    def extra_repr(self) -> str:
        return (f"fan_in={self.fan_in}, context={self.context}, pool={self.pool}, "
                + super().extra_repr())


# ----------------------------------------------------------------------------- models


class Standardise(nn.Module):
    """``(x - mean) / std`` with the training set's scalar mean and std held in buffers."""

    mean: Tensor
    std: Tensor

    def __init__(self, mean: float = 0.0, std: float = 1.0) -> None:
        super().__init__()
        if not std > 0:
            raise ValueError(f"std must be > 0, got {std}")
        self.register_buffer("mean", torch.tensor(float(mean)))
        self.register_buffer("std", torch.tensor(float(std)))

    def forward(self, x: Tensor) -> Tensor:
        return (x - self.mean) / self.std

    def extra_repr(self) -> str:
        return f"mean={float(self.mean):.4f}, std={float(self.std):.4f}"


class SparseClassifier(nn.Module):
    """``standardise -> (sparse -> ReLU)* -> Linear``: hidden layers are sparse hyperlayers.

    Args:
        layers: the sparse hidden layers, the first reading (B, 28, 28) images.
        n_classes: outputs of the dense head.
        sparse_head: make the head a :class:`FanInSparseLayer` too (``head_fan_in`` inputs
            per class) instead of a dense ``nn.Linear``.

    Shape:
        input: (B, 1, 28, 28) or (B, 28, 28); output: (B, n_classes).
    """

    def __init__(self, layers: Sequence[HyperLayer], n_classes: int = 10, *,
                 sparse_head: bool = False, head_fan_in: int = 32) -> None:
        super().__init__()
        self.norm = Standardise()
        self.layers = nn.ModuleList(layers)
        width = math.prod(layers[-1].out_shape)
        self.head: nn.Module
        if sparse_head:
            self.head = FanInSparseLayer(width, n_classes, min(head_fan_in, width), bias=True,
                                         sigma_scale=0.5 / width, local_samples=4, region=3,
                                         global_samples=0)
        else:
            self.head = nn.Linear(width, n_classes)

    def forward(self, x: Tensor) -> Tensor:
        h = self.norm(x.reshape(x.shape[0], 28, 28))  # (B, 28, 28)
        for layer in self.layers:
            h = F.relu(layer(h))
        return self.head(h)

    def sparse_layers(self) -> list[HyperLayer]:
        """The sparse layers (hidden, and the head when sparse)."""
        out = [layer for layer in self.layers if isinstance(layer, HyperLayer)]
        if isinstance(self.head, HyperLayer):
            out.append(self.head)
        return out


@torch.no_grad()
def resolve_collisions(layer: FanInSparseLayer, scores: Tensor | None = None) -> int:
    """Move every tuple that rounds onto a position another tuple of its unit already holds.

    A colliding tuple adds nothing to the unit's capacity at eval (coinciding tuples add up).
    Its value is added to the holder's, so the eval function is unchanged, and it moves to the
    free position (one its unit does not read yet) with the highest ``scores`` (e.g. the
    magnitude of the loss gradient of the dense weight, as in RigL), starting at value 0. Meant
    for frozen connectivity (:meth:`FanInSparseLayer.freeze_connectivity`): afterwards every
    unit reads ``fan_in`` distinct positions (while it has that many), so the layer's eval
    non-zeros equal its tuple count.

    Args:
        layer: a (shared) fan-in layer; its ``raw_means`` and ``values`` are changed in place.
        scores: (M, N) preference of each unit for each flattened input position; default: the
            closest free positions to the unit's tuples come first (by index distance).

    Returns:
        The number of tuples moved.

    Shape:
        scores: (prod(out_shape), prod(in_shape)).

    Example:
        >>> layer = FanInSparseLayer((5, 5), 1, 3, init_means=torch.tensor(
        ...     [[2.0, 2.0], [2.1, 1.9], [0.0, 4.0]]))
        >>> resolve_collisions(layer), sparse_nonzeros([layer])
        (1, 3)
    """
    if not isinstance(layer, FanInSparseLayer):
        raise TypeError(f"layer must be a FanInSparseLayer, got {type(layer).__name__}")
    values = layer.values
    if values is None:
        raise ValueError("resolve_collisions needs learned values (learn_values=True)")
    m, n, f = math.prod(layer.out_shape), math.prod(layer.in_shape), layer.fan_in
    if scores is not None and tuple(scores.shape) != (m, n):
        raise ValueError(f"scores must have shape (M, N) = ({m}, {n}), got "
                         f"{tuple(scores.shape)}")
    if scores is not None and not bool(torch.isfinite(scores).all()):
        raise ValueError("scores must be finite (a -inf free position would tie with the "
                         "occupied ones)")
    means, _, _ = layer.tuples(torch.zeros((1,) + layer.in_shape, device=layer._device()))
    no = len(layer.out_shape)
    hi = torch.tensor(layer.in_shape, device=means.device) - 1
    pos = torch.minimum(means[:, no:].round().long().clamp_min(0), hi)  # (K, R')
    flat = linear_index(pos, layer.in_shape)  # (K,)
    unit = torch.arange(layer.k, device=flat.device) // f  # (K,)
    keys = unit * n + flat  # (K,)
    first = first_occurrence(keys)  # (K,)
    if bool(first.all()):
        return 0
    occupied = torch.zeros(m * n, dtype=torch.bool, device=flat.device)
    occupied[keys] = True
    if scores is None:  # negative distance of each position to the unit's nearest tuple
        grid = torch.stack(torch.meshgrid(*[torch.arange(s, device=flat.device)
                                            for s in layer.in_shape], indexing="ij"),
                           -1).reshape(n, -1).to(means.dtype)  # (N, R')
        d = torch.cdist(means[:, no:].reshape(m, f, -1), grid.expand(m, n, -1))  # (M, F, N)
        scores = -d.amin(1)  # (M, N)
    pref = scores.to(means).reshape(m * n).masked_fill(occupied, -math.inf)  # (M*N,)
    order = pref.view(m, n).argsort(dim=1, descending=True, stable=True)  # (M, N)
    free = (~occupied).view(m, n).sum(1)  # (M,)
    # the j-th colliding tuple of a unit takes the unit's j-th preferred free position
    dup = ~first  # (K,)
    rank = (dup.view(m, f).cumsum(1) - 1).reshape(-1)  # (K,)
    move = dup & (rank < free[unit])  # (K,)
    # merge the values of coinciding tuples into the holder (first occurrence)
    uniq, inverse = torch.unique(keys, return_inverse=True)  # (U,), (K,)
    total = values.new_zeros(uniq.shape[0]).index_add(0, inverse[move | first],
                                                      values[move | first])  # (U,)
    values.copy_(torch.where(first, total[inverse], values))
    values.masked_fill_(move, 0.0)
    target = order[unit[move], rank[move]]  # (D,)
    coords = []
    for size in reversed(layer.in_shape):
        coords.append(target % size)
        target = target // size
    new = torch.stack(coords[::-1], dim=1).double()  # (D, R')
    layer.raw_means[move] = _raw_from_index(new, layer.learned_sizes).to(layer.raw_means)
    return int(move.sum())


def sparse_nonzeros(layers: Sequence[HyperLayer], x: Tensor | None = None) -> int:
    """Total non-zeros of the layers' exported ``to_sparse()`` tensors (eval semantics).

    Adaptive layers need ``x`` (the input of each layer is computed by the caller); for them the
    count is averaged over the instances and rounded.
    """
    total = 0
    for layer in layers:
        if isinstance(layer, AdaptiveFanInLayer):
            if x is None:
                raise ValueError("adaptive layers need an input x to export")
            w = layer.to_sparse(x)
            total += round(w._nnz() / x.shape[0])
        else:
            total += int(layer.to_sparse()._nnz())
    return total


def cnn(channels: tuple[int, int] = (3, 4), n_classes: int = 10) -> nn.Sequential:
    """A small CNN whose hidden tensors are ``c1 x 10 x 10`` and ``c2 x 5 x 5`` (300 and 100
    for the default channels: the shapes of the default sparse hidden layers)."""
    c1, c2 = channels
    return nn.Sequential(
        nn.Conv2d(1, c1, 5, stride=3, padding=2), nn.ReLU(),  # (B, c1, 10, 10)
        nn.Conv2d(c1, c2, 3, stride=2, padding=1), nn.ReLU(),  # (B, c2, 5, 5)
        nn.Flatten(), nn.Linear(c2 * 25, n_classes),
    )


def dense_weights(model: nn.Module) -> int:
    """Number of weights (not biases) of the Linear/Conv layers of ``model``."""
    return sum(m.weight.numel() for m in model.modules() if isinstance(m, nn.Linear | nn.Conv2d))


# ----------------------------------------------------------------------------- experiment


@dataclass
class MnistSparseConfig:
    seed: int = 0
    dataset: Literal["mnist", "fashion"] = "mnist"
    hidden: tuple[int, ...] = (300, 100)
    fan_in: tuple[int, ...] = (64, 24)  # tuples per hidden unit, one entry per hidden layer
    sigma_scale: tuple[float, ...] = (0.02, 0.002)  # per layer; sigma ~ 2.13 * scale * size
    global_samples: int = 0
    local_samples: int = 2
    region: int = 3
    # training contraction: "coalesce" sums coinciding sampled entries before the sparse
    # contraction (same result, faster); "sparse" the core's contraction of every entry;
    # "dense" materialises W in a scratch (M, N) matrix: fastest on this CPU for this small
    # layer, same outputs, but against the library's rule, so opt-in only.
    contract: Literal["coalesce", "dense", "sparse"] = "coalesce"
    context: int = 4  # tuples per normalisation context (0: all of a unit's tuples, exact)
    init: Literal["uniform", "local", "variance"] = "local"
    init_spread: float = 3.0  # px: spread of a unit's tuples around its centre ("local")
    value_gain: float = 1.4
    mean_lr: float = 10.0  # learning-rate multipliers of the raw means / raw sigmas
    sigma_lr: float = 1.0
    sparse_head: bool = False
    sigma_final: float = 0.3  # sigmas are multiplied by a factor annealed 1 -> this (cosine)
    finetune_epochs: int = 2  # then train the values of the frozen eval connectivity
    finetune_lr: float = 0.5  # times train.lr
    # before the fine-tune stage, move tuples that round onto a position their unit already
    # reads to free positions ("gradient": largest |dL/dW| over regrow_batches training
    # batches, as in RigL; "nearest": closest to the unit's tuples; "none": keep collisions)
    regrow: Literal["gradient", "nearest", "none"] = "gradient"
    regrow_batches: int = 20
    adaptive: bool = False  # also train the adaptive variant (first layer adaptive)
    adaptive_fan_in: int = 16
    adaptive_epochs: int | None = None  # default: train.epochs
    adaptive_finetune_epochs: int | None = None  # default: finetune_epochs
    augment_shift: int = 2  # random translation of training images by up to this many px
    baselines: bool = True
    cnn_channels: tuple[int, int] = (3, 4)
    train: TrainConfig = field(default_factory=lambda: TrainConfig(
        epochs=6, batch_size=64, lr=2e-3, schedule="cosine", log_every=20))


class ShiftedBatches:
    """A :class:`TensorBatches` whose images are translated by a random integer offset in
    ``[-shift, shift]`` per image (zero fill), drawn from ``(seed, epoch, index)``."""

    def __init__(self, inner: TensorBatches, shift: int, seed: int) -> None:
        self.inner, self.shift, self.seed = inner, shift, seed

    def __len__(self) -> int:
        return len(self.inner)

    def batch(self, epoch: int, index: int) -> tuple[Tensor, ...]:
        x, y = self.inner.batch(epoch, index)
        if self.shift == 0:
            return x, y
        g = torch.Generator().manual_seed(derive_seed(self.seed, "shift", epoch, index))
        s = self.shift
        off = torch.randint(-s, s + 1, (x.shape[0], 2), generator=g)  # (B, 2)
        pad = F.pad(x, (s, s, s, s))  # (B, 1, 28 + 2s, 28 + 2s)
        rows = (torch.arange(28) + s).unsqueeze(0) - off[:, :1]  # (B, 28)
        cols = (torch.arange(28) + s).unsqueeze(0) - off[:, 1:]  # (B, 28)
        b = torch.arange(x.shape[0])[:, None, None]
        out = pad[b, 0, rows[:, :, None], cols[:, None, :]]  # (B, 28, 28)
        return out.unsqueeze(1), y  # (B, 1, 28, 28)


def _initial_means(config: MnistSparseConfig, layer: int, n_units: int, fan_in: int,
                   in_shape: tuple[int, ...], importance: Tensor,
                   g: torch.Generator) -> Tensor | None:
    """Index-space input coordinates (K, len(in_shape)) for layer ``layer``."""
    if layer > 0 or config.init == "uniform":
        return None  # the layer's own uniform draw
    h, w = in_shape
    p = importance.flatten() / importance.sum()  # (H*W,)
    if config.init == "variance":
        flat = torch.multinomial(p, n_units * fan_in, replacement=True, generator=g)
        return torch.stack([flat // w, flat % w], dim=1).double()  # (K, 2)
    centre_flat = torch.multinomial(p, n_units, replacement=True, generator=g)  # (M,)
    centre = torch.stack([centre_flat // w, centre_flat % w], dim=1).double()  # (M, 2)
    noise = torch.randn(n_units, fan_in, 2, generator=g, dtype=torch.float64)
    pts = centre.unsqueeze(1) + config.init_spread * noise  # (M, F, 2)
    hi = torch.tensor([h - 1, w - 1], dtype=torch.float64)
    return torch.minimum(pts.clamp_min(0), hi).reshape(n_units * fan_in, 2)  # (K, 2)


def build_sparse(config: MnistSparseConfig, importance: Tensor, *, adaptive: bool = False,
                 generator: torch.Generator | None = None,
                 device: torch.device | str | None = None) -> SparseClassifier:
    """The sparse classifier of ``config`` (first layer adaptive when ``adaptive``)."""
    hidden, fans, scales = config.hidden, config.fan_in, config.sigma_scale
    if not hidden or len(fans) != len(hidden) or len(scales) != len(hidden):
        raise ValueError(f"hidden, fan_in and sigma_scale need one entry per hidden layer, got "
                         f"{hidden}, {fans}, {scales}")
    g = generator or torch.Generator().manual_seed(0)
    layers: list[HyperLayer] = []
    in_shape: tuple[int, ...] = (28, 28)
    for i, (width, fan, scale) in enumerate(zip(hidden, fans, scales)):
        if adaptive and i == 0:
            fan = config.adaptive_fan_in
        opts: dict[str, Any] = dict(
            sigma_scale=scale, global_samples=config.global_samples,
            local_samples=config.local_samples, region=min(config.region, min(in_shape)),
            bias=True, value_gain=config.value_gain, context=min(config.context, fan))
        means = _initial_means(config, i, width, fan, in_shape, importance, g)
        layer: HyperLayer
        if adaptive and i == 0:
            layer = AdaptiveFanInLayer(in_shape, width, fan, init_means=means, **opts)
        else:
            layer = FanInSparseLayer(in_shape, width, fan, init_means=means, **opts)
        layer.contract = config.contract
        layers.append(layer)
        in_shape = (width,)
    return SparseClassifier(layers, 10, sparse_head=config.sparse_head).to(device)


def _param_groups(model: nn.Module, config: MnistSparseConfig) -> list[dict[str, Any]]:
    groups: dict[str, list[nn.Parameter]] = {"means": [], "sigmas": [], "other": []}
    for name, p in model.named_parameters():
        key = name.rsplit(".", 1)[-1]
        groups["means" if key == "raw_means" else "sigmas" if key == "raw_sigmas"
               else "other"].append(p)
    lr = config.train.lr
    scale = {"means": config.mean_lr, "sigmas": config.sigma_lr, "other": 1.0}
    return [{"params": ps, "lr": lr * scale[k]} for k, ps in groups.items() if ps]


def _optimizer(model: nn.Module, config: MnistSparseConfig) -> torch.optim.Optimizer:
    tc = config.train
    groups = _param_groups(model, config)
    if tc.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=tc.lr, momentum=tc.momentum,
                               weight_decay=tc.weight_decay)
    opt_cls = torch.optim.AdamW if tc.optimizer == "adamw" else torch.optim.Adam
    return opt_cls(groups, lr=tc.lr, weight_decay=tc.weight_decay)


@register_experiment("mnist-sparse",
                     help="MNIST classification with sparse hyperlayers vs dense MLP and CNN")
class MnistSparse(Experiment):
    Config = MnistSparseConfig
    # "full": the budget of the reported MNIST run (the adaptive variant is ~15x dearer per
    # step on a CPU, so it gets 4 + 1 epochs)
    presets = {"full": {"train.epochs": 30, "finetune_epochs": 5, "adaptive": True,
                        "adaptive_epochs": 4, "adaptive_finetune_epochs": 1}}

    def run(self, config: MnistSparseConfig, ctx: RunContext) -> dict[str, Any]:
        train = digits(config.dataset, "train")
        val = digits(config.dataset, "val")
        tx = train.float()  # (N, 1, 28, 28)
        mean, std = float(tx.mean()), float(tx.std())
        importance = tx[:, 0].std(0) + 1e-3  # (28, 28): where the digits vary
        inner = TensorBatches((tx, train.labels), config.train.batch_size, seed=config.seed)
        source = ShiftedBatches(inner, config.augment_shift, config.seed)
        vx, vy = val.float().to(ctx.device), val.labels.to(ctx.device)

        def validate(m: nn.Module) -> dict[str, float]:
            logits = batched(m, vx)
            return {"val_loss": float(F.cross_entropy(logits, vy)),
                    "val_accuracy": accuracy(logits, vy)}

        def train_stage(model: nn.Module, stage: str, tc: TrainConfig,
                        anneal: bool = False) -> Any:
            opt = _optimizer(model, config) if isinstance(model, SparseClassifier) else None
            callbacks = [_SigmaAnneal(config.sigma_final, tc.max_steps or tc.epochs * len(source))
                         ] if anneal and config.sigma_final != 1.0 else []
            return ctx.fit(model, classification_loss, source, config=tc, stage=stage,
                           validate=validate, select="val_accuracy", mode="max",
                           optimizer=opt, callbacks=callbacks)

        summary: dict[str, Any] = {}
        models = self._models(config, ctx, importance, mean, std)
        total_epochs = config.train.epochs + config.finetune_epochs
        for name, model in models.items():
            tc = config.train
            if name == "adaptive" and config.adaptive_epochs is not None:
                tc = replace(tc, epochs=config.adaptive_epochs)
            if name in ("mlp", "cnn"):  # the baselines get the sparse models' whole budget
                tc = replace(tc, epochs=total_epochs)
            result = train_stage(model, name, tc, anneal=isinstance(model, SparseClassifier))
            seconds = result.train_seconds
            if isinstance(model, SparseClassifier) and _finetune_epochs(config, name):
                for layer in model.sparse_layers():
                    if isinstance(layer, _PerUnitContexts):
                        layer.freeze_connectivity()
                summary[f"{name}_tuples_moved"] = _regrow(model, source, config)
                ft = replace(config.train, epochs=_finetune_epochs(config, name),
                             lr=config.train.lr * config.finetune_lr)
                seconds += train_stage(model, f"{name}-finetune", ft).train_seconds
            summary[f"{name}_train_seconds"] = seconds
        if ctx.is_main:
            self._plot_connectivity(models["sparse"], ctx)
        summary.update(self.evaluate(config, ctx, models))
        return summary

    def _models(self, config: MnistSparseConfig, ctx: RunContext, importance: Tensor,
                mean: float, std: float) -> dict[str, nn.Module]:
        g = ctx.generator("init")
        models: dict[str, nn.Module] = {
            "sparse": build_sparse(config, importance, generator=g, device=ctx.device)}
        if config.adaptive:
            models["adaptive"] = build_sparse(config, importance, adaptive=True, generator=g,
                                              device=ctx.device)
        if config.baselines:
            models["mlp"] = nn.Sequential(Standardise(), mlp(config.hidden)).to(ctx.device)
            models["cnn"] = nn.Sequential(Standardise(), cnn(config.cnn_channels)).to(ctx.device)
        for model in models.values():
            for mod in model.modules():
                if isinstance(mod, Standardise):
                    mod.mean.fill_(mean)
                    mod.std.fill_(std)
        return models

    def evaluate(self, config: MnistSparseConfig, ctx: RunContext,
                 models: dict[str, nn.Module] | None = None) -> dict[str, Any]:
        if models is None:
            train = digits(config.dataset, "train").float()
            importance = train[:, 0].std(0) + 1e-3
            models = self._models(config, ctx, importance, 0.0, 1.0)
            for name, model in models.items():
                finetuned = isinstance(model, SparseClassifier) and _finetune_epochs(config,
                                                                                     name)
                ctx.load_best(model, f"{name}-finetune" if finetuned else name)
        data = {s: digits(config.dataset, s) for s in ("val", "test")}
        acc: dict[str, dict[str, float]] = {}
        for stage, model in models.items():
            model.eval()
            acc[stage] = {s: accuracy(batched(model, d.float().to(ctx.device)),
                                      d.labels.to(ctx.device)) for s, d in data.items()}
        sparse = models["sparse"]
        assert isinstance(sparse, SparseClassifier)
        nnz = sparse_nonzeros(sparse.sparse_layers())
        head = 0 if config.sparse_head else dense_weights(sparse.head)
        dense_w = dense_weights(mlp(config.hidden))
        out: dict[str, Any] = {
            "test_accuracy": acc["sparse"]["test"],
            "val_accuracy": acc["sparse"]["val"],
            "nonzeros": nnz,
            "sparse_tuples": sum(layer.k for layer in sparse.sparse_layers()),
            "head_weights": head,
            "total_nonzero_weights": nnz + head,
            "nonzero_fraction_of_mlp": (nnz + head) / dense_w,
            "dense_mlp_weights": dense_w,
        }
        if "mlp" in models:
            out.update(dense_mlp_accuracy=acc["mlp"]["test"], dense_mlp_val=acc["mlp"]["val"],
                       dense_mlp_params=count_parameters(models["mlp"]),
                       cnn_accuracy=acc["cnn"]["test"], cnn_val=acc["cnn"]["val"],
                       cnn_params=count_parameters(models["cnn"]))
        if "adaptive" in models:
            ad = models["adaptive"]
            assert isinstance(ad, SparseClassifier)
            first = ad.layers[0]
            assert isinstance(first, AdaptiveFanInLayer)
            x = ad.norm(data["test"].float()[:256].to(ctx.device).reshape(-1, 28, 28))
            out.update(adaptive_test_accuracy=acc["adaptive"]["test"],
                       adaptive_val_accuracy=acc["adaptive"]["val"],
                       adaptive_nonzeros=_adaptive_nonzeros(ad, x),
                       adaptive_hypernet_params=count_parameters(first.net))
        out["data_source"] = data["test"].source
        return out

    def _plot_connectivity(self, model: nn.Module, ctx: RunContext, units: int = 16) -> None:
        assert isinstance(model, SparseClassifier)
        from ..plotting import figure

        layer = model.sparse_layers()[0]
        model.eval()
        w = layer.to_sparse().to_dense().cpu()  # (H1, 28, 28)
        counts = (w != 0).sum(0).float()  # (28, 28)
        strength = w.abs().sum((1, 2))  # (H1,)
        top = strength.argsort(descending=True)[:units]
        cols = 4
        rows = math.ceil(units / cols)
        fig, axes = figure(rows, cols + 2, figsize=(2.0 * (cols + 2), 2.0 * rows),
                           squeeze=False)
        for ax in axes.flat:
            ax.axis("off")
        for i, u in enumerate(top.tolist()):
            ax = axes[i // cols, i % cols]
            lim = float(w[u].abs().max()) or 1.0
            ax.imshow(w[u].numpy(), cmap="RdBu_r", vmin=-lim, vmax=lim)
            ax.set_title(f"unit {u}", fontsize=7)
        big = fig.add_subplot(1, cols + 2, (cols + 1, cols + 2))
        im = big.imshow(counts.numpy(), cmap="viridis")
        big.set_title(f"connections per pixel\n(layer 1, {int((w != 0).sum())} non-zeros)",
                      fontsize=8)
        big.axis("off")
        fig.colorbar(im, ax=big, fraction=0.046)
        fig.suptitle("learned first-layer connectivity (eval weights, strongest units)",
                     fontsize=9)
        ctx.save_figure(fig, "connectivity")


def _finetune_epochs(config: MnistSparseConfig, name: str) -> int:
    if name == "adaptive" and config.adaptive_finetune_epochs is not None:
        return config.adaptive_finetune_epochs
    return config.finetune_epochs


def _regrow(model: SparseClassifier, source: Any, config: MnistSparseConfig) -> int:
    """Resolve the collisions of the model's shared fan-in layers (``config.regrow``)."""
    layers = [la for la in model.sparse_layers() if isinstance(la, FanInSparseLayer)]
    if config.regrow == "none" or not layers:
        return 0
    scores: list[Tensor | None] = [None] * len(layers)
    if config.regrow == "gradient":
        dev = layers[0]._device()
        batches = [(x.to(dev), y.to(dev)) for x, y in (
            source.batch(0, i) for i in range(min(config.regrow_batches, len(source))))]
        scores = [g.abs() for g in weight_gradients(model, layers, batches)]
    return sum(resolve_collisions(la, sc) for la, sc in zip(layers, scores))


def weight_gradients(model: nn.Module, layers: Sequence[HyperLayer],
                     batches: Sequence[tuple[Tensor, Tensor]]) -> list[Tensor]:
    """The cross-entropy loss gradient w.r.t. each layer's *dense* weight matrix, summed over
    ``batches``: ``sum_b g_b^T h_b`` from each layer's input ``h`` and output gradient ``g``,
    without building the layer's dense weights. The model is left in train mode with no
    parameter gradients.

    Shape:
        output: one (prod(out_shape), prod(in_shape)) tensor per layer.
    """
    acc = [torch.zeros(math.prod(la.out_shape), math.prod(la.in_shape),
                       device=la._device(), dtype=la.sigma_gain.dtype) for la in layers]

    def hook(i: int) -> Any:
        def fwd(mod: nn.Module, inputs: tuple[Tensor, ...], out: Tensor) -> None:
            h = inputs[0].detach().reshape(inputs[0].shape[0], -1)  # (B, N)

            def grad(g: Tensor) -> None:
                acc[i].addmm_(g.reshape(g.shape[0], -1).T, h)  # (M, N)

            out.register_hook(grad)
        return fwd

    handles = [la.register_forward_hook(hook(i)) for i, la in enumerate(layers)]
    try:
        model.train()
        for x, y in batches:
            F.cross_entropy(model(x), y, reduction="sum").backward()
    finally:
        for h in handles:
            h.remove()
        model.zero_grad(set_to_none=True)
    return acc


class _SigmaAnneal:
    """Callback: after step ``t`` set every sparse layer's ``sigma_factor`` to
    ``final + (1 - final) * (1 + cos(pi * t / total)) / 2`` (a buffer, so resuming is exact)."""

    def __init__(self, final: float, total: int) -> None:
        self.final, self.total = final, max(total, 1)

    def __call__(self, step: int, model: nn.Module, metrics: dict[str, float]) -> bool:
        f = self.final + (1 - self.final) * 0.5 * (1 + math.cos(math.pi * min(
            step / self.total, 1.0)))
        for mod in model.modules():
            if isinstance(mod, _PerUnitContexts):
                mod.sigma_factor.fill_(f)
        return False


@torch.no_grad()
def _adaptive_nonzeros(model: SparseClassifier, x: Tensor) -> int:
    """Mean per-image non-zeros of an adaptive model's sparse layers on standardised ``x``."""
    total = 0
    h = x
    for layer in model.sparse_layers()[:len(model.layers)]:
        total += sparse_nonzeros([layer], h)
        h = F.relu(layer(h))
    if isinstance(model.head, HyperLayer):
        total += sparse_nonzeros([model.head])
    return total
