"""Cluttered MNIST, generated on the fly (DeepMind's mnist-cluttered protocol; PROTOCOLS.md).

A canvas of zeros, ``canvas x canvas`` (100, or 60); ``distractors`` images drawn at random
with replacement from the *same split* (8 for 100, 4 for 60), of each a random ``patch x patch``
crop (8) added at a uniformly random position; then the 28x28 digit added at a uniformly random
position (so it lies fully inside the canvas); clipped to [0, 1]. Arithmetic is exact in
integers (uint8 pixels summed, clipped at 255), so every canvas is a pure function of its seed.

* Training: :class:`ClutteredBatches` draws the digits of epoch ``e`` by a permutation seeded
  from ``(seed, e)`` and the clutter of batch ``i`` from ``(seed, e, i)``.
* Evaluation: :func:`cluttered_set` gives a fixed set per split (every digit of the split once)
  from a seed fixed by ``(split, canvas, distractors, patch)``, independent of the run's seed.

A generator only ever sees one :class:`~hypersparse.data.Digits` split, so splits never mix.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

from .splits import Digits

__all__ = ["ClutteredImages", "clutter", "cluttered_set", "ClutteredBatches", "default_distractors"]

DIGIT = 28
#: Canvases built per chunk (bounds the int32 intermediate).
CHUNK = 1024


def _derive_seed(*parts: int | str) -> int:
    from ..train import derive_seed

    return derive_seed(*parts)


def default_distractors(canvas: int) -> int:
    """The protocol's distractor count: 8 on a 100x100 canvas, 4 on 60x60 (and in between);
    smaller canvases scale 8 by area."""
    return 8 if canvas >= 100 else 4 if canvas >= 60 else round(8 * (canvas / 100) ** 2)


@dataclass(frozen=True)
class ClutteredImages:
    """Cluttered canvases and where everything came from.

    Attributes:
        images: (N, 1, W, W) uint8.
        labels: (N,) int64, the label of the placed digit.
        boxes: (N, 4) int64, the digit's ``(top, left, bottom, right)`` (inclusive pixel
            indices; ``bottom - top == 27``).
        digit: (N,) int64, index of the placed digit in the source images.
        distractor: (N, D) int64, indices of the distractor source images.
    """

    images: Tensor
    labels: Tensor
    boxes: Tensor
    digit: Tensor
    distractor: Tensor

    def __len__(self) -> int:
        return self.labels.shape[0]

    def float(self) -> Tensor:
        """Images as float32 in [0, 1], shape (N, 1, W, W)."""
        return self.images.float().div_(255.0)


def _check(images: Tensor, canvas: int, distractors: int, patch: int) -> None:
    if images.dim() != 3 or tuple(images.shape[1:]) != (DIGIT, DIGIT):
        raise ValueError(f"images must have shape (N, 28, 28), got {tuple(images.shape)}")
    if images.dtype != torch.uint8:
        raise TypeError(f"images must be uint8, got {images.dtype}")
    if images.shape[0] < 1:
        raise ValueError("need at least one source image")
    if not isinstance(canvas, int) or canvas < DIGIT:
        raise ValueError(f"canvas must be an int >= {DIGIT}, got {canvas!r}")
    if not isinstance(distractors, int) or distractors < 0:
        raise ValueError(f"distractors must be an int >= 0, got {distractors!r}")
    if not isinstance(patch, int) or not 1 <= patch <= DIGIT:
        raise ValueError(f"patch must be an int in [1, {DIGIT}], got {patch!r}")


def _paste(canvas: Tensor, src: Tensor, top: Tensor, left: Tensor, width: int) -> None:
    """``canvas[n, top + r, left + c] += src[n, ..., r, c]`` for every n (scatter-add)."""
    n, p = src.shape[0], src.shape[-1]
    ar = torch.arange(p)
    rows = top.unsqueeze(-1) + ar  # (n, ..., p)
    cols = left.unsqueeze(-1) + ar  # (n, ..., p)
    flat = rows.unsqueeze(-1) * width + cols.unsqueeze(-2)  # (n, ..., p, p)
    canvas.scatter_add_(1, flat.reshape(n, -1), src.reshape(n, -1).to(canvas.dtype))


def _transformed(transform: Callable[[Tensor, torch.Generator | None], Tensor], images: Tensor,
                 generator: torch.Generator | None) -> Tensor:
    """``transform`` applied to uint8 (m, 28, 28) images through float [0, 1] and back."""
    m = images.shape[0]
    x = transform(images.unsqueeze(1).float().div_(255.0), generator)  # (m, 1, 28, 28)
    if not isinstance(x, Tensor) or tuple(x.shape) != (m, 1, DIGIT, DIGIT):
        raise ValueError(f"transform must return a tensor of shape {(m, 1, DIGIT, DIGIT)}, "
                         f"got {getattr(x, 'shape', type(x))}")
    return x.squeeze(1).mul(255.0).round_().clamp_(0, 255).to(torch.uint8)  # (m, 28, 28)


def clutter(
    images: Tensor,
    labels: Tensor,
    index: Tensor,
    *,
    canvas: int = 100,
    distractors: int = 8,
    patch: int = 8,
    generator: torch.Generator | None = None,
    transform: Callable[[Tensor, torch.Generator | None], Tensor] | None = None,
) -> ClutteredImages:
    """Place ``images[index]`` on cluttered canvases (the mnist-cluttered protocol).

    Distractor crops come from ``images`` only (one split), drawn with replacement. Random
    numbers, in this order, from ``generator``: digit positions, distractor sources, crop
    offsets, distractor positions, then whatever ``transform`` draws (digits, then distractor
    sources).

    Args:
        images: the split's digits, (N, 28, 28) uint8.
        labels: their labels, (N,).
        index: which digits to place, (n,) int64 into ``images``.
        canvas: the canvas side W.
        distractors: D, crops per canvas.
        patch: the crop side.
        transform: optional training augmentation, applied to the placed digits and, by
            separate draws, to every distractor's source image before it is cropped, so that
            the resampling's smoothing marks neither the digit nor the clutter (were the digit
            alone augmented, its blur would single it out in training and never in test).
            ``transform(x, generator)`` gets ``x`` float (m, 1, 28, 28) in [0, 1] and returns
            the same shape (e.g. :func:`~hypersparse.data.augmentation`); the result is
            rounded back to uint8. The digit box stays the 28x28 square it is pasted in.

    Shape:
        output images: (n, 1, W, W) uint8.

    Example:
        >>> imgs = torch.full((3, 28, 28), 200, dtype=torch.uint8)
        >>> out = clutter(imgs, torch.arange(3), torch.tensor([0, 2]), canvas=40, distractors=2)
        >>> out.images.shape, int(out.images.max())
        (torch.Size([2, 1, 40, 40]), 255)
    """
    _check(images, canvas, distractors, patch)
    if labels.shape != images.shape[:1]:
        raise ValueError(f"labels must have shape ({images.shape[0]},), got {tuple(labels.shape)}")
    index = torch.as_tensor(index, dtype=torch.long)
    if index.dim() != 1 or (index.numel() and not (0 <= index.min() and index.max() < len(images))):
        raise ValueError(f"index must be 1-D with values in [0, {len(images)})")
    if transform is not None and not callable(transform):
        raise TypeError(f"transform must be callable or None, got {transform!r}")
    n, d, w = index.shape[0], distractors, canvas
    g = generator
    pos = torch.randint(0, w - DIGIT + 1, (n, 2), generator=g)  # (n, 2)
    src = torch.randint(0, images.shape[0], (n, d), generator=g)  # (n, D)
    crop = torch.randint(0, DIGIT - patch + 1, (n, d, 2), generator=g)  # (n, D, 2)
    where = torch.randint(0, w - patch + 1, (n, d, 2), generator=g)  # (n, D, 2)
    placed = images[index]  # (n, 28, 28)
    sources, src_index = images, src  # distractor crops read sources[src_index]
    if transform is not None and n:
        placed = _transformed(transform, placed, g)
        if d:
            sources = _transformed(transform, images[src.flatten()], g)  # (n D, 28, 28)
            src_index = torch.arange(n * d).view(n, d)  # (n, D)
    out = torch.empty(n, 1, w, w, dtype=torch.uint8)
    ar = torch.arange(patch)
    for s in range(0, n, CHUNK):
        e = min(n, s + CHUNK)
        acc = torch.zeros(e - s, w * w, dtype=torch.int32)  # (n', W*W)
        if d:
            rows = (crop[s:e, :, 0:1] + ar).unsqueeze(-1)  # (n', D, p, 1)
            cols = (crop[s:e, :, 1:2] + ar).unsqueeze(-2)  # (n', D, 1, p)
            pieces = sources[src_index[s:e, :, None, None], rows, cols]  # (n', D, p, p)
            _paste(acc, pieces, where[s:e, :, 0], where[s:e, :, 1], w)
        _paste(acc, placed[s:e], pos[s:e, 0], pos[s:e, 1], w)
        out[s:e, 0] = acc.clamp_(max=255).to(torch.uint8).view(e - s, w, w)
    boxes = torch.cat([pos, pos + DIGIT - 1], dim=1)  # (n, 4)
    return ClutteredImages(out, labels[index], boxes, index, src)


def cluttered_set(
    digits: Digits,
    *,
    canvas: int = 100,
    distractors: int | None = None,
    patch: int = 8,
    seed: int | None = None,
) -> ClutteredImages:
    """A fixed cluttered set: every digit of ``digits`` once, in order, on its own canvas.

    The seed defaults to one derived from ``(split source, len, canvas, distractors, patch)``
    only, so the validation and test sets are the same for every run.

    Example:
        >>> from hypersparse.data import mnist
        >>> test = cluttered_set(mnist("test"), canvas=60)  # doctest: +SKIP
    """
    d = default_distractors(canvas) if distractors is None else distractors
    if seed is None:
        seed = _derive_seed("cluttered-mnist", digits.source, len(digits), int(digits.ids.sum()),
                            canvas, d, patch)
    g = torch.Generator().manual_seed(seed)
    return clutter(digits.images, digits.labels, torch.arange(len(digits)), canvas=canvas,
                   distractors=d, patch=patch, generator=g)


class ClutteredBatches:
    """Training batches generated on the fly: a :class:`~hypersparse.train.BatchSource`.

    ``batch(epoch, index)`` is a pure function of ``(seed, epoch, index)``: the digits of an
    epoch follow a permutation seeded by ``(seed, epoch)`` (each digit once per epoch), the
    clutter of each batch is seeded by ``(seed, epoch, index)``.

    Args:
        digits: one split (its images are the only source of digits and distractors).
        batch_size: canvases per batch (the last incomplete batch is dropped).
        canvas, distractors, patch: as for :func:`clutter` (distractors default by canvas).
        seed: the base seed.
        transform: optional augmentation of the placed digits and the distractors' source
            images, as for :func:`clutter`.

    Returns per batch ``(images float32 (B, 1, W, W) in [0, 1], labels (B,))``.
    """

    def __init__(self, digits: Digits, batch_size: int, *, canvas: int = 100,
                 distractors: int | None = None, patch: int = 8, seed: int = 0,
                 transform: Callable[[Tensor, torch.Generator | None], Tensor] | None = None
                 ) -> None:
        d = default_distractors(canvas) if distractors is None else distractors
        _check(digits.images, canvas, d, patch)
        if not isinstance(batch_size, int) or not 1 <= batch_size <= len(digits):
            raise ValueError(f"batch_size must be an int in [1, {len(digits)}], got {batch_size!r}")
        self.digits, self.batch_size = digits, batch_size
        if transform is not None and not callable(transform):
            raise TypeError(f"transform must be callable or None, got {transform!r}")
        self.canvas, self.distractors, self.patch, self.seed = canvas, d, patch, seed
        self.transform = transform
        self._len = len(digits) // batch_size
        self._perm_epoch: int | None = None
        self._perm = torch.arange(len(digits))

    def __len__(self) -> int:
        return self._len

    def permutation(self, epoch: int) -> Tensor:
        if self._perm_epoch != epoch:
            g = torch.Generator().manual_seed(_derive_seed(self.seed, "cluttered", epoch))
            self._perm = torch.randperm(len(self.digits), generator=g)
            self._perm_epoch = epoch
        return self._perm

    def images(self, epoch: int, index: int) -> ClutteredImages:
        """The batch with its provenance (boxes, digit and distractor indices)."""
        if not 0 <= index < self._len:
            raise IndexError(f"batch index {index} out of range [0, {self._len})")
        idx = self.permutation(epoch)[index * self.batch_size : (index + 1) * self.batch_size]
        g = torch.Generator().manual_seed(_derive_seed(self.seed, "cluttered", epoch, index))
        return clutter(self.digits.images, self.digits.labels, idx, canvas=self.canvas,
                       distractors=self.distractors, patch=self.patch, generator=g,
                       transform=self.transform)

    def batch(self, epoch: int, index: int) -> tuple[Tensor, Tensor]:
        b = self.images(epoch, index)
        return b.float(), b.labels
