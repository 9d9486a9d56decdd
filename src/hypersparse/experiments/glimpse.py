"""``glimpse``: glimpse attention on cluttered MNIST (seed 000), against a plain CNN and a
spatial-transformer glimpse trained in the same harness, on the same data and budget.

Three stages, all through ``ctx.fit`` with the same :class:`TrainConfig` and batches:

* ``glimpse``: :class:`~hypersparse.nn.Glimpse` (a source net on a subsampled image predicts one
  box per glimpse; a k x k sparse hyperlayer reads it) -> a small CNN head -> logits;
* ``cnn``: a plain CNN on the full image;
* ``stn``: the same source net and head, the glimpse read by ``grid_sample`` (bilinear).

With ``candidates > 1`` the glimpse stage trains on the mixture likelihood of the top heat-map
peaks (multi-hypothesis training, see :class:`GlimpseNet`) and evaluates one glimpse, the top
peak's. With ``reader=true`` (the ``full`` preset) a second classifier learns from the detached
top glimpse and classifies at eval, while the head only trains the box. Cross-entropy on
logits (the 2019 code's softmax-before-cross-entropy is not copied).
The best checkpoint of each stage is chosen on the fixed validation set; test error is reported
at it.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field, fields
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..data import (
    ClutteredBatches,
    ClutteredImages,
    augmentation,
    cluttered_set,
    default_distractors,
    digits,
)
from ..data.augment import check_augment_settings
from ..functional.glimpse import jitter_boxes, sample_boxes
from ..nn.glimpse import Glimpse, box_source
from ..nn.hyper import SigmaAnnealing, set_sigma_gain
from ..run import RunContext
from ..train import TrainConfig, make_optimizer
from .base import Experiment, register_experiment
from .common import accuracy, classification_loss, count_parameters


@dataclass
class GlimpseConfig:
    seed: int = 0
    dataset: Literal["mnist", "fashion"] = "mnist"
    canvas: int = 60
    distractors: int | None = None  # None: 8 on 100x100, 4 on 60x60
    glimpses: int = 1
    size: int = 20
    downsample: int = 4
    downsample_offset: int = 0  # the source reads rows/cols offset, offset + downsample, ...
    pool: Literal["stride", "avg"] = "stride"
    head: Literal["cnn", "mlp"] = "cnn"
    head_width: int = 32
    head_blocks: int = 2  # cnn head: conv blocks (widths w, 2w, 4w, ...), each pooled by 2
    head_norm: bool = False  # batch norm on the head's hidden layer (Linear -> BN -> ReLU)
    # reader: a second cnn head of reader_blocks blocks (width reader_width) that learns from
    # the detached top glimpse and classifies at eval; the head then only trains the box
    reader: bool = False
    reader_blocks: int = 3
    reader_width: int = 32
    # reader_jitter > 0 (needs reader): the reader learns from the top box slid by up to this
    # many pixels per axis (uniform), read as the sampler's eval reads it, so it learns to read
    # a digit the box only partly covers; 0: from the top glimpse as the head saw it
    reader_jitter: float = 0.0
    # reader_dropout p (needs reader): dropout with probability p on the reader's 128-wide
    # hidden layer in training (the head keeps none); dropout draws come after the sampler's
    # points in each step and the reader's input is detached, so the box trains exactly as
    # without it
    reader_dropout: float = 0.0
    # reader_norm (needs reader): batch norm on the reader's hidden layer (Linear -> BN ->
    # ReLU), which keeps its units from dying; the box trains exactly as without it
    reader_norm: bool = False
    cnn_channels: tuple[int, ...] = (32, 64, 64, 128)
    # training-time augmentation of the placed digit and the distractors' source images (never
    # val or test), for every stage alike (glimpse, CNN, STN): "affine" rotates up to 10 deg,
    # scales 0.9-1.1 and shifts up to augment_shift px inside the 28x28 square; "shift" shifts
    # augment_p: the probability that an image (digit or distractor source) is transformed
    augment: Literal["none", "shift", "affine"] = "none"
    augment_shift: int = 2
    augment_p: float = 1.0
    global_samples: int = 2
    local_samples: int = 4
    sigma_scale: float = 0.01
    # the box: extent within ``extent`` (fractions of the image; 0.4-0.6 of 60 is 24-35 px,
    # about a 28 px digit), starting at init_extent; ``source``: heat-map soft-argmax
    # ("spatial") or the flatten + linear box regressor ("dense")
    init_extent: float = 0.47
    extent: tuple[float, float] = (0.4, 0.6)
    source: Literal["dense", "spatial"] = "spatial"
    source_channels: tuple[int, ...] = (16, 32)  # the source's conv widths (5x5 each)
    # sigma_gain of the hyperlayer glimpse, annealed geometrically from sigma_start to sigma_end
    # over anneal_epochs (None: the whole training), so that training reads nearly what eval's
    # nearest pixel reads
    sigma_start: float = 1.0
    sigma_end: float = 0.1
    anneal_epochs: float | None = None
    source_lr: float = 1.0  # learning-rate multiplier of the box source (and sigmas)
    # multi-hypothesis training (spatial source only): candidates > 1 reads, in training, the
    # `candidates` separated heat-map peaks (each refined by a local soft-argmax in a window
    # of radius `candidate_radius` cells) and trains on the mixture likelihood
    # -log sum_j w_j p(y | glimpse_j), w = softmax of the peak logits; eval reads one glimpse,
    # the top peak. candidate_epochs: after this many epochs train on the top peak alone
    # (None: the mixture throughout). candidates=1: the whole-map soft-argmax box (as before).
    candidates: int = 1
    candidate_radius: int = 3
    # candidate_pool M > candidates (needs candidates > 1): in training, hypotheses 2..N are
    # random picks among the heat map's peaks 2..M (exploration; eval unchanged). None: 2..N
    candidate_pool: int | None = None
    # locate_weight > 0 (candidates > 1, one glimpse): a hard-EM localisation loss; the head
    # scores the locate_pool best peaks by p(label | glimpse), the best becomes the heat map's
    # target cell (see GlimpseNet)
    locate_weight: float = 0.0
    locate_pool: int = 6
    candidate_epochs: float | None = None
    glimpse: bool = True  # False: the baselines alone (same seed: the same CNN/STN as a full run)
    cnn: bool = True
    stn: bool = True
    eval_batch: int = 500
    eval_digits: int | None = None  # cap the fixed val/test sets (smoke tests); None: all
    # checkpoints are selected on the fixed validation set plus val_clutterings - 1 more
    # clutterings of the same validation digits (fixed seeds 1001, 1002, ...; every stage
    # alike): 1,000 validation images move the selected epoch by chance, and more clutterings
    # average the clutter's share of that noise out (the digits' share stays)
    val_clutterings: int = 1
    train: TrainConfig = field(
        default_factory=lambda: TrainConfig(epochs=3, batch_size=64, lr=1e-3)
    )

    def __post_init__(self) -> None:
        # at most 4: the ink's margin in the 28x28 square
        check_augment_settings(self.augment, self.augment_shift, self.augment_p, max_shift=4)
        if isinstance(self.val_clutterings, bool) or not isinstance(self.val_clutterings, int) \
                or self.val_clutterings < 1:
            raise ValueError(f"val_clutterings must be an int >= 1, got {self.val_clutterings!r}")


# ----------------------------------------------------------------------------- models


def conv_block(c_in: int, c_out: int, pool: bool) -> list[nn.Module]:
    layers: list[nn.Module] = [nn.Conv2d(c_in, c_out, 3, padding=1), nn.BatchNorm2d(c_out),
                               nn.ReLU()]
    return layers + [nn.MaxPool2d(2)] if pool else layers


class GlimpseHead(nn.Module):
    """Classifier over G glimpses (B, G, C, k, k).

    ``cnn``: a shared per-glimpse CNN of ``blocks`` 3x3 conv blocks with batch norm, widths
    ``w, 2w, 4w, ...``, each followed by a 2x2 max pool; features concatenated ->
    Linear(128) [-> BatchNorm1d] -> ReLU [-> Dropout(dropout)] -> Linear(10). ``mlp``: the
    2019 head, Linear(k*k*C*G, 32) [-> BatchNorm1d] -> ReLU [-> Dropout(dropout)] ->
    Linear(10). ``norm=True`` adds the batch norm on the hidden layer.
    """

    def __init__(self, glimpses: int, channels: int, size: int, kind: str = "cnn",
                 width: int = 32, blocks: int = 2, dropout: float = 0.0,
                 norm: bool = False) -> None:
        super().__init__()
        if not isinstance(norm, bool):
            raise ValueError(f"norm must be a bool, got {norm!r}")
        if (not isinstance(dropout, (int, float)) or isinstance(dropout, bool)
                or not 0 <= dropout < 1):
            raise ValueError(f"dropout must be a number in [0, 1), got {dropout!r}")
        # no module when 0: a model without dropout keeps its structure and state_dict keys
        drop: list[nn.Module] = [nn.Dropout(float(dropout))] if dropout > 0 else []

        def bn(width: int) -> list[nn.Module]:
            return [nn.BatchNorm1d(width)] if norm else []

        self.kind = kind
        if kind == "mlp":
            self.features: nn.Module = nn.Identity()
            n = glimpses * channels * size * size
            self.classify = nn.Sequential(nn.Linear(n, 32), *bn(32), nn.ReLU(), *drop,
                                          nn.Linear(32, 10))
        elif kind == "cnn":
            if not isinstance(blocks, int) or blocks < 1 or size >> blocks < 1:
                raise ValueError(f"head_blocks / reader_blocks must be an int in "
                                 f"[1, log2(size)] = [1, {size.bit_length() - 1}], "
                                 f"got {blocks!r}")
            layers: list[nn.Module] = []
            c = channels
            for i in range(blocks):
                layers += conv_block(c, width << i, True)
                c = width << i
            self.features = nn.Sequential(*layers)
            n = glimpses * c * (size >> blocks) ** 2
            self.classify = nn.Sequential(nn.Linear(n, 128), *bn(128), nn.ReLU(), *drop,
                                          nn.Linear(128, 10))
        else:
            raise ValueError(f"head must be 'cnn' or 'mlp', got {kind!r}")

    def forward(self, g: Tensor) -> Tensor:
        b = g.shape[0]
        f = self.features(g.flatten(0, 1))  # (B*G, ...)
        return self.classify(f.reshape(b, -1))  # (B, 10)


class STNGlimpse(nn.Module):
    """The spatial-transformer baseline: the same box source, the glimpse read by
    ``grid_sample(mode="bilinear", align_corners=True)`` (4 pixels per grid point)."""

    def __init__(self, in_shape: tuple[int, int, int], size: int, glimpses: int,
                 **source_kwargs: Any) -> None:
        super().__init__()
        self.in_shape, self.size, self.glimpses = in_shape, size, glimpses
        self.source = box_source(in_shape, glimpses, **source_kwargs)

    def boxes(self, x: Tensor) -> Tensor:
        from ..functional.glimpse import glimpse_boxes

        raw = self.source(x).view(x.shape[0], self.glimpses, 4)  # (B, G, 4)
        return glimpse_boxes(raw, self.in_shape[1:])

    def forward_with_boxes(self, x: Tensor) -> tuple[Tensor, Tensor]:
        boxes = self.boxes(x)
        return self.read(x, boxes), boxes

    def read(self, x: Tensor, boxes: Tensor) -> Tensor:
        """The glimpses (B, G, C, k, k) of given boxes (B, G, 4)."""
        return sample_boxes(x, boxes, (self.size, self.size))

    def forward(self, x: Tensor) -> Tensor:
        return self.forward_with_boxes(x)[0]


class GlimpseNet(nn.Module):
    """``head(sampler(x))``: a glimpse sampler (hyperlayer or STN) and its classifier.

    When the sampler is a :class:`Glimpse` in candidate mode (``candidates`` an int), training
    returns the mixture's log-probabilities ``log sum_j w_j softmax(head(glimpse_j))`` over its
    candidates (normalised, so cross-entropy on them is the mixture's negative log-likelihood);
    eval returns the logits of the top candidate's glimpse.

    With a ``reader`` (a second classifier), the reader learns from the *detached* glimpse of the
    top candidate (the one eval reads), so it never changes where the sampler looks: ``head``
    trains the box (its gradient flows into the sampler), ``reader`` classifies. Training then
    returns ``(head output, reader logits)``; eval returns the reader's logits. With
    ``reader_jitter > 0`` the reader learns instead from the top box slid at random by up to
    that many pixels (:func:`~hypersparse.functional.jitter_boxes`), read by ``sampler.read``.

    With ``locate_weight > 0`` (candidate mode, one glimpse) and labels passed to ``forward``,
    the heat map also learns where the digit is from the class alone (a hard-EM step): the
    head, in eval mode and without gradient, reads the ``locate_pool`` best separated peaks;
    the peak whose glimpse gives the label the highest probability becomes the target of a
    cross-entropy over all heat-map cells, weighted by that probability (so clutter that no
    peak reads as the label teaches little). Training then returns ``(head output, reader
    logits or None, locate loss)``.
    """

    def __init__(self, sampler: nn.Module, head: nn.Module, reader: nn.Module | None = None,
                 reader_jitter: float = 0.0, locate_weight: float = 0.0,
                 locate_pool: int = 6) -> None:
        super().__init__()
        for name, v in (("reader_jitter", reader_jitter), ("locate_weight", locate_weight)):
            if not isinstance(v, (int, float)) or isinstance(v, bool) or not v >= 0:
                raise ValueError(f"{name} must be a number >= 0, got {v!r}")
        if not isinstance(locate_pool, int) or isinstance(locate_pool, bool) or locate_pool < 1:
            raise ValueError(f"locate_pool must be an int >= 1, got {locate_pool!r}")
        if locate_weight > 0 and (getattr(sampler, "candidates", None) is None or
                                  getattr(sampler, "glimpses", 0) != 1):
            raise ValueError("locate_weight > 0 needs a Glimpse in candidate mode with one "
                             "glimpse (candidates > 1, glimpses = 1)")
        self.sampler, self.head, self.reader = sampler, head, reader
        self.reader_jitter = float(reader_jitter)
        self.locate_weight, self.locate_pool = float(locate_weight), locate_pool

    def extra_repr(self) -> str:
        parts = [f"reader_jitter={self.reader_jitter}"] if self.reader is not None else []
        if self.locate_weight > 0:
            parts.append(f"locate_weight={self.locate_weight}, locate_pool={self.locate_pool}")
        return ", ".join(parts)

    def classify(self, glimpses: Tensor) -> Tensor:
        """Logits of the glimpses (B, G, C, k, k) at eval: the reader's if there is one."""
        return self.head(glimpses) if self.reader is None else self.reader(glimpses)

    def forward(self, x: Tensor, labels: Tensor | None = None
                ) -> Tensor | tuple[Tensor, Tensor] | tuple[Tensor, Tensor | None, Tensor]:
        if not self.training:
            return self.classify(self.sampler(x))
        locate: Tensor | None = None
        if getattr(self.sampler, "candidates", None) is not None:
            sampler: Glimpse = self.sampler  # type: ignore[assignment]
            features = sampler.source_features(x)  # (B, C', h, w)
            glimpses, boxes, logw = sampler.forward_candidates(x, features=features)
            b, n = logw.shape  # glimpses: (B, N, G, C, k, k)
            logits = self.head(glimpses.flatten(0, 1)).view(b, n, -1)  # (B, N, 10)
            out, top = mixture_log_probs(logits, logw), glimpses[:, 0]  # top: (B, G, C, k, k)
            top_boxes = boxes[:, 0]  # (B, G, 4)
            if self.locate_weight > 0 and labels is not None:
                locate = self.locate_weight * self.locate_loss(x, labels, features)
        else:
            plain: Glimpse | STNGlimpse = self.sampler  # type: ignore[assignment]
            top, top_boxes = plain.forward_with_boxes(x)  # (B, G, C, k, k), (B, G, 4)
            out = self.head(top)
        read: Tensor | None = None
        if self.reader is not None:
            if self.reader_jitter > 0:
                # drawn after the sampler's points, so the sampler's random stream is unchanged
                moved = jitter_boxes(top_boxes.detach(), self.reader_jitter, x.shape[-2:])
                with torch.no_grad():
                    reading: Glimpse | STNGlimpse = self.sampler  # type: ignore[assignment]
                    top = reading.read(x, moved)  # (B, G, C, k, k)
            read = self.reader(top.detach())
        if locate is not None:
            return out, read, locate
        return out if read is None else (out, read)

    def locate_loss(self, x: Tensor, labels: Tensor, features: Tensor) -> Tensor:
        """The hard-EM localisation loss described in the class docstring, before
        ``locate_weight`` (``forward`` returns it times the weight, and that is what
        ``glimpse_loss`` adds and logs). The target is the cell nearest the best peak's refined
        (windowed soft-argmax) position, i.e. where its box was centred.

        Shape: x (B, C, H, W), labels (B,), features (B, C', h, w); output: a scalar.
        """
        sampler: Glimpse = self.sampler  # type: ignore[assignment]
        heat = sampler.heat_logits(features)  # (B, 1, h, w)
        b, _, h, w = heat.shape
        m = min(self.locate_pool, h * w)
        with torch.no_grad():
            boxes, cells = sampler.peak_boxes(features, m)  # (B, M, 1, 4), (B, 1, M, 2)
            glimpses = sampler.read(x, boxes)  # (B, M, 1, C, k, k)
            was = self.head.training
            self.head.eval()  # batch norm: running statistics, left untouched
            try:
                logp = self.head(glimpses.flatten(0, 1)).log_softmax(-1).view(b, m, -1)
            finally:
                self.head.train(was)
            right = logp.gather(2, labels.view(b, 1, 1).expand(b, m, 1)).squeeze(2)  # (B, M)
            best = right.argmax(1)  # (B,)
            weight = right.gather(1, best.view(b, 1)).squeeze(1).exp()  # (B,): its p(label)
            cell = cells[:, 0].gather(1, best.view(b, 1, 1).expand(b, 1, 2)).squeeze(1)
            cell = cell.round().long()  # (B, 2): the target cell (row, col)
            target = cell[:, 0].clamp(0, h - 1) * w + cell[:, 1].clamp(0, w - 1)  # (B,)
        ce = F.cross_entropy(heat.flatten(1), target, reduction="none")  # (B,)
        return (weight * ce).mean()


def glimpse_loss(model: nn.Module, batch: tuple[Tensor, ...]
                 ) -> tuple[Tensor, dict[str, float]]:
    """Cross-entropy of the glimpse stage: of the head's output, plus of the reader's logits
    when the model has a reader (training returns both), plus the weighted localisation loss
    when it has one; the batch accuracies (and the localisation loss) as metrics."""
    x, y = batch
    out = model(x, y) if isinstance(model, GlimpseNet) else model(x)
    if not isinstance(out, tuple):
        return F.cross_entropy(out, y), {"accuracy": accuracy(out.detach(), y)}
    head, reader, *rest = out
    loss = F.cross_entropy(head, y)
    metrics = {"accuracy": accuracy(head.detach(), y)}
    if reader is not None:
        loss = loss + F.cross_entropy(reader, y)
        metrics["reader_accuracy"] = accuracy(reader.detach(), y)
    if rest:
        loss = loss + rest[0]
        metrics["locate_loss"] = float(rest[0].detach())
    return loss, metrics


def mixture_log_probs(logits: Tensor, log_weights: Tensor) -> Tensor:
    """``log sum_j exp(log_weights_j) softmax(logits_j)``: class log-probabilities of a mixture.

    Shape: logits (B, N, K), log_weights (B, N) (normalised); output (B, K).
    """
    return torch.logsumexp(log_weights.unsqueeze(-1) + logits.log_softmax(-1), 1)  # (B, K)


class CandidateSchedule:
    """Training callback: multi-hypothesis training for ``steps`` steps, then the top candidate
    alone (sets the glimpse's ``candidates`` from the step, so a resumed run continues it)."""

    def __init__(self, steps: int, count: int) -> None:
        self.steps, self.count = steps, count

    def __call__(self, step: int, model: nn.Module, metrics: dict[str, float] | None = None
                 ) -> bool:
        for m in model.modules():
            if isinstance(m, Glimpse) and m.candidates is not None:
                m.candidates = self.count if step < self.steps else 1
        return False


def plain_cnn(canvas: int, channels: tuple[int, ...] = (32, 64, 64, 128)) -> nn.Sequential:
    """The full-image baseline: [conv3x3 -> BN -> ReLU -> maxpool2] per width -> Linear(128)
    -> ReLU -> Linear(10)."""
    layers: list[nn.Module] = []
    c, s = 1, canvas
    for ch in channels:
        layers += conv_block(c, ch, True)
        c, s = ch, s // 2
    return nn.Sequential(*layers, nn.Flatten(), nn.Linear(c * s * s, 128), nn.ReLU(),
                         nn.Linear(128, 10))


def _source_kwargs(config: GlimpseConfig) -> dict[str, Any]:
    return {"downsample": config.downsample, "offset": config.downsample_offset,
            "pool": config.pool,
            "init_extent": config.init_extent, "extent": tuple(config.extent),
            "kind": config.source, "channels": tuple(config.source_channels)}


def build(config: GlimpseConfig, kind: str, device: torch.device) -> nn.Module:
    """The model of one stage: ``glimpse``, ``stn`` or ``cnn`` (seeded by ``config.seed``)."""
    torch.manual_seed(config.seed)
    in_shape = (1, config.canvas, config.canvas)
    g = torch.Generator().manual_seed(config.seed)
    for name in ("head_norm", "reader_norm"):
        if not isinstance(getattr(config, name), bool):
            raise ValueError(f"{name} must be a bool, got {getattr(config, name)!r}")
    d = config.reader_dropout
    if not isinstance(d, (int, float)) or isinstance(d, bool) or not 0 <= d < 1:
        raise ValueError(f"reader_dropout must be a number in [0, 1), got {d!r}")
    head = GlimpseHead(config.glimpses, 1, config.size, config.head, config.head_width,
                       config.head_blocks, norm=config.head_norm)
    reader = None
    if config.reader:
        # its own RNG stream: the sampler and head start (and, the reader's input being
        # detached, train) exactly as without a reader
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(config.seed + 1)
            reader = GlimpseHead(config.glimpses, 1, config.size, "cnn", config.reader_width,
                                 config.reader_blocks, config.reader_dropout,
                                 config.reader_norm)
    if config.reader_jitter and not config.reader:
        raise ValueError(f"reader_jitter={config.reader_jitter} needs reader=true")
    if config.reader_dropout and not config.reader:
        raise ValueError(f"reader_dropout={config.reader_dropout} needs reader=true")
    if config.reader_norm and not config.reader:
        raise ValueError("reader_norm=true needs reader=true")
    if kind == "glimpse":
        if not isinstance(config.candidates, int) or config.candidates < 1:
            raise ValueError(f"candidates must be an int >= 1, got {config.candidates!r}")
        if config.candidate_pool is not None and config.candidates < 2:
            raise ValueError(f"candidate_pool={config.candidate_pool} needs candidates > 1, "
                             f"got candidates={config.candidates}")
        if config.candidates > 1 and config.source != "spatial":
            raise ValueError(f"candidates > 1 needs source='spatial', got {config.source!r}")
        sampler = Glimpse(
            in_shape, config.size, config.glimpses, global_samples=config.global_samples,
            local_samples=config.local_samples, sigma_scale=config.sigma_scale, generator=g,
            candidates=config.candidates if config.candidates > 1 else None,
            candidate_radius=config.candidate_radius, candidate_pool=config.candidate_pool,
            **_source_kwargs(config))
        # sample from the global RNG, which fit() seeds per step: resumed runs stay bit-exact
        sampler.generator = None
        set_sigma_gain(sampler, config.sigma_start)  # SigmaAnnealing moves it after each step
        model: nn.Module = GlimpseNet(sampler, head, reader, config.reader_jitter,
                                      config.locate_weight, config.locate_pool)
    elif kind == "stn":
        model = GlimpseNet(STNGlimpse(in_shape, config.size, config.glimpses, generator=g,
                                      **_source_kwargs(config)), head, reader,
                           config.reader_jitter)
    elif kind == "cnn":
        model = plain_cnn(config.canvas, config.cnn_channels)
    else:
        raise ValueError(f"kind must be 'glimpse', 'stn' or 'cnn', got {kind!r}")
    return model.to(device)


# ----------------------------------------------------------------------------- evaluation


@torch.no_grad()
def _predict(model: nn.Module, x: Tensor, device: torch.device, batch: int) -> dict[str, Tensor]:
    """Logits, and for glimpse models the boxes and the pixel fractions, over ``x`` in chunks."""
    model.eval()
    out: dict[str, list[Tensor]] = {"logits": [], "boxes": [], "read": [], "glimpse_read": []}
    for i in range(0, x.shape[0], batch):
        xb = x[i : i + batch].to(device)
        if isinstance(model, GlimpseNet):
            sampler: Glimpse | STNGlimpse = model.sampler  # type: ignore[assignment]
            glimpses, boxes = sampler.forward_with_boxes(xb)
            out["logits"].append(model.classify(glimpses))
            out["boxes"].append(boxes)
            if isinstance(sampler, Glimpse):
                out["read"].append(sampler.pixels_read(xb))
                out["glimpse_read"].append(sampler.pixels_read(xb, include_source=False))
        else:
            out["logits"].append(model(xb))
    return {k: torch.cat(v) for k, v in out.items() if v}


def box_iou(boxes: Tensor, truth: Tensor) -> Tensor:
    """IoU of each predicted box (B, 4) with the digit's box (B, 4), pixel areas inclusive."""
    t = truth.to(boxes.dtype)
    hi = torch.minimum(boxes[:, 2:], t[:, 2:])
    lo = torch.maximum(boxes[:, :2], t[:, :2])
    inter = (hi - lo + 1).clamp(min=0).prod(-1)
    area = (boxes[:, 2:] - boxes[:, :2] + 1).prod(-1) + (t[:, 2:] - t[:, :2] + 1).prod(-1)
    return inter / (area - inter)


def _optimizer(model: nn.Module, config: GlimpseConfig) -> torch.optim.Optimizer:
    """The configured optimiser; the box source (and sigmas) at ``source_lr`` times the rate,
    since Adam moves a box's raw parameters by at most ~lr per step."""
    sampler = getattr(model, "sampler", None)
    if sampler is None or config.source_lr == 1.0:
        return make_optimizer(model.parameters(), config.train)
    fast = {id(p) for p in sampler.parameters()}
    groups = [{"params": [p for p in model.parameters() if id(p) in fast],
               "lr": config.train.lr * config.source_lr},
              {"params": [p for p in model.parameters() if id(p) not in fast]}]
    return make_optimizer(groups, config.train)


@functools.lru_cache(maxsize=4)
def _fixed_set(dataset: str, split: str, canvas: int, distractors: int | None) -> ClutteredImages:
    return cluttered_set(digits(dataset, split), canvas=canvas, distractors=distractors)


def val_clutterings(config: GlimpseConfig, count: int,
                    limit: int | None = None) -> ClutteredImages:
    """``count`` more clutterings of the validation digits (fixed seeds 1001, 1002, ...): a
    larger validation set, never the test digits, for selecting checkpoints and for comparing
    localisation between runs. ``limit``: the first ``limit`` images of each cluttering."""
    if isinstance(count, bool) or not isinstance(count, int) or count < 1:
        raise ValueError(f"count must be an int >= 1, got {count!r}")
    val = digits(config.dataset, "val")
    sets = [cluttered_set(val, canvas=config.canvas, distractors=config.distractors,
                          seed=1000 + i) for i in range(1, count + 1)]
    return _concat([d if limit is None else _head(d, limit) for d in sets])


_FIELDS = tuple(f.name for f in fields(ClutteredImages))


def _head(data: ClutteredImages, n: int) -> ClutteredImages:
    return ClutteredImages(*(getattr(data, f)[:n] for f in _FIELDS))


def _concat(sets: list[ClutteredImages]) -> ClutteredImages:
    return ClutteredImages(*(torch.cat([getattr(d, f) for d in sets]) for f in _FIELDS))


def _error(logits: Tensor, labels: Tensor) -> float:
    return float((logits.argmax(-1) != labels.to(logits.device)).float().mean())


# ----------------------------------------------------------------------------- experiment


@register_experiment("glimpse", help="glimpse attention (sparse hyperlayer) on cluttered MNIST "
                     "vs a plain CNN and a spatial transformer")
class GlimpseExperiment(Experiment):
    Config = GlimpseConfig
    presets = {
        # 100x100: multi-hypothesis training (2 heat-map peaks) makes the box localise; the
        # reader classifies the top glimpse (1.1-1.6 points better than the head, 2 seeds);
        # the source reads every 3rd row and column (33 x 33 from offset 1; 18% of the pixels
        # read in all), which localises better than every 4th (docs/glimpse.md, session 8)
        "full": {"canvas": 100, "distractors": 8, "glimpses": 1, "size": 32,
                 "extent": (0.25, 0.4), "init_extent": 0.3, "sigma_scale": 0.006,
                 "candidates": 2, "candidate_radius": 2, "reader": True,
                 "downsample": 3, "downsample_offset": 1,
                 "train.epochs": 30, "train.schedule": "cosine"},
        # 8 glimpses of 12x12 with the `full` preset's recipe (2 candidates in training, the
        # reader, the source on every 3rd pixel); the n-th peaks of all 8 heat maps form
        # hypothesis n
        "full8": {"canvas": 100, "distractors": 8, "glimpses": 8, "size": 12,
                  "extent": (0.1, 0.3), "init_extent": 0.2, "sigma_scale": 0.006,
                  "candidates": 2, "candidate_radius": 2, "reader": True,
                  "downsample": 3, "downsample_offset": 1,
                  "train.epochs": 30, "train.schedule": "cosine"},
        # the 60x60 recipe measured in docs/glimpse.md
        "c60": {"train.epochs": 20, "train.schedule": "cosine"},
    }

    def _sets(self, config: GlimpseConfig) -> dict[str, ClutteredImages]:
        sets = {s: _fixed_set(config.dataset, s, config.canvas, config.distractors)
                for s in ("val", "test")}
        n = config.eval_digits
        if n is None:
            return sets
        return {s: _head(d, n) for s, d in sets.items()}

    def _stages(self, config: GlimpseConfig) -> list[str]:
        stages = [s for s, on in (("glimpse", config.glimpse), ("cnn", config.cnn),
                                  ("stn", config.stn)) if on]
        if not stages:
            raise ValueError("glimpse, cnn and stn are all false: nothing to train")
        return stages

    def run(self, config: GlimpseConfig, ctx: RunContext) -> dict[str, Any]:
        if config.size < 4 and config.head == "cnn":
            raise ValueError(f"size must be >= 4 for the cnn head, got {config.size}")
        train = ClutteredBatches(digits(config.dataset, "train"), config.train.batch_size,
                                 canvas=config.canvas, distractors=config.distractors,
                                 patch=8, seed=config.seed,
                                 transform=augmentation(config.augment,
                                                        max_shift=config.augment_shift,
                                                        p=config.augment_p))
        val = self._sets(config)["val"]
        n_val = len(val)
        if config.val_clutterings > 1:
            more = val_clutterings(config, config.val_clutterings - 1,
                                   limit=config.eval_digits)
            val = _concat([val, more])
        vx, vy = val.float(), val.labels  # (V, 1, canvas, canvas), (V,): the fixed set first

        def validate(m: nn.Module) -> dict[str, float]:
            logits = _predict(m, vx, ctx.device, config.eval_batch)["logits"]
            out = {"val_loss": float(F.cross_entropy(logits, vy.to(logits.device))),
                   "val_error": _error(logits, vy)}
            if len(vy) > n_val:  # the fixed set's error alone, comparable with 1 cluttering
                out["val_fixed_error"] = _error(logits[:n_val], vy[:n_val])
            return out

        models, seconds = {}, {}
        for stage in self._stages(config):
            model = build(config, stage, ctx.device)
            callbacks: list[Any] = []
            if config.anneal_epochs is not None and not config.anneal_epochs > 0:
                raise ValueError(f"anneal_epochs must be > 0 or None, got {config.anneal_epochs}")
            if stage == "glimpse" and config.sigma_start != config.sigma_end:
                total = config.train.max_steps or config.train.epochs * len(train)
                steps = total if config.anneal_epochs is None else round(
                    config.anneal_epochs * len(train))
                steps = max(1, steps)
                anneal = SigmaAnnealing(steps, end=config.sigma_end, start=config.sigma_start)
                callbacks.append(anneal)
            if stage == "glimpse" and config.candidate_epochs is not None:
                if not config.candidate_epochs > 0:
                    raise ValueError(f"candidate_epochs must be > 0 or None, got "
                                     f"{config.candidate_epochs}")
                steps = max(1, round(config.candidate_epochs * len(train)))
                callbacks.append(CandidateSchedule(steps, config.candidates))
            loss = classification_loss if stage == "cnn" else glimpse_loss
            result = ctx.fit(model, loss, train, config=config.train,
                             stage=stage, validate=validate, select="val_error", mode="min",
                             optimizer=_optimizer(model, config), callbacks=callbacks)
            models[stage] = model
            seconds[stage] = result.train_seconds / max(result.epochs_done, 1e-9)
        summary = self.evaluate(config, ctx, models)
        summary["seconds_per_epoch"] = seconds.get("glimpse")
        for stage in ("cnn", "stn"):
            if stage in seconds:
                summary[f"{stage}_seconds_per_epoch"] = seconds[stage]
        if "glimpse" in models:
            self._plot(config, ctx, models["glimpse"], models.get("stn"))
        return summary

    def evaluate(self, config: GlimpseConfig, ctx: RunContext,
                 models: dict[str, nn.Module] | None = None) -> dict[str, Any]:
        if models is None:
            models = {s: ctx.load_best(build(config, s, ctx.device), stage=s)
                      for s in self._stages(config)}
        sets = self._sets(config)
        out: dict[str, Any] = {
            "canvas": config.canvas,
            "distractors": default_distractors(config.canvas)
            if config.distractors is None else config.distractors,
            "train_digits": len(digits(config.dataset, "train")),
            "test_images": len(sets["test"]),
            "data_source": digits(config.dataset, "test").source,
        }
        for stage, model in models.items():
            prefix = "" if stage == "glimpse" else f"{stage}_"
            for split, data in sets.items():
                pred = _predict(model, data.float(), ctx.device, config.eval_batch)
                out[f"{prefix}{split}_error"] = _error(pred["logits"], data.labels)
                if split == "test" and "boxes" in pred:
                    iou = box_iou(pred["boxes"][:, 0], data.boxes.to(pred["boxes"].device))
                    out[f"{prefix}box_iou"] = float(iou.mean())
                if split == "test" and "read" in pred:
                    out["pixels_read_fraction"] = float(pred["read"].mean())
                    out["glimpse_pixels_fraction"] = float(pred["glimpse_read"].mean())
            out[f"{prefix}params"] = count_parameters(model)
        for stage in ("cnn", "stn"):
            out.setdefault(f"{stage}_test_error", None)
        for key in ("test_error", "val_error", "pixels_read_fraction", "params"):
            out.setdefault(key, None)  # glimpse=false: the baselines alone
        return out

    def _plot(self, config: GlimpseConfig, ctx: RunContext, model: nn.Module,
              stn: nn.Module | None) -> None:
        from matplotlib.patches import Rectangle

        from ..plotting import figure

        test = self._sets(config)["test"]
        n = 8
        x = test.float()[:n]
        pred = _predict(model, x, ctx.device, n)
        model.eval()
        with torch.no_grad():
            glimpses, _ = model.sampler.forward_with_boxes(x.to(ctx.device))  # type: ignore
        stn_boxes = _predict(stn, x, ctx.device, n)["boxes"] if stn is not None else None
        fig, axes = figure(1, n, figsize=(2.2 * n, 2.6), squeeze=False)
        for i, ax in enumerate(axes[0]):
            ax.imshow(x[i, 0], cmap="gray", vmin=0, vmax=1)
            t = test.boxes[i].tolist()
            ax.add_patch(Rectangle((t[1] - 0.5, t[0] - 0.5), 28, 28, fill=False, ec="lime",
                                   ls=":", lw=1))
            for j, b in enumerate(pred["boxes"][i].tolist()):
                ax.add_patch(Rectangle((b[1], b[0]), b[3] - b[1], b[2] - b[0], fill=False,
                                       ec="red", lw=1.2, label="glimpse" if j == 0 else None))
            if stn_boxes is not None:
                for b in stn_boxes[i].tolist():
                    ax.add_patch(Rectangle((b[1], b[0]), b[3] - b[1], b[2] - b[0], fill=False,
                                           ec="cyan", lw=0.8, ls="--"))
            guess = int(pred["logits"][i].argmax())
            ax.set_title(f"label {int(test.labels[i])}, pred {guess}", fontsize=8)
            ax.axis("off")
        fig.suptitle("test images: digit box (green), hyperlayer glimpse (red), STN (cyan)",
                     fontsize=9)
        ctx.save_figure(fig, "boxes")

        g = config.glimpses
        cols = min(g, 8)
        fig, axes = figure(n, cols, figsize=(1.4 * cols, 1.4 * n), squeeze=False)
        for i in range(n):
            for j in range(cols):
                axes[i][j].imshow(glimpses[i, j, 0].cpu(), cmap="gray", vmin=0, vmax=1)
                axes[i][j].axis("off")
        fig.suptitle(f"eval glimpses ({config.size}x{config.size})", fontsize=9)
        ctx.save_figure(fig, "glimpses")

