"""Cheap training-time image augmentation: pure tensor batch transforms and a batch-source wrapper.

Every transform takes a batch ``(N, C, H, W)`` and an optional torch ``generator`` and returns a
new tensor of the same shape, dtype and device; labels are never touched. Values stay inside the
input's range (shifts move pixels and fill with 0; the affine transform interpolates bilinearly
between pixels and zeros), so images in [0, 1] stay in [0, 1].

:class:`AugmentedBatches` wraps any batch source (``batch(epoch, index)``, e.g.
:class:`hypersparse.train.TensorBatches`) and transforms the first tensor of each training batch
with a generator seeded from ``(seed, epoch, index)``: a pure function of its arguments, like
the source, so a resumed run sees the same augmented batches. Only wrap training sources; the
validation and test sets are never augmented.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["random_shift", "random_affine", "AugmentedBatches", "AUGMENTATIONS", "augmentation"]

Transform = Callable[[Tensor, "torch.Generator | None"], Tensor]
AUGMENTATIONS = ("none", "shift", "affine")


def _check_images(images: Tensor) -> None:
    if not isinstance(images, Tensor):
        raise TypeError(f"images must be a Tensor, got {type(images).__name__}")
    if images.dim() != 4:
        raise ValueError(f"images must have shape (N, C, H, W), got {tuple(images.shape)}")
    if not images.is_floating_point():
        raise TypeError(f"images must be a floating-point tensor, got {images.dtype}")


def random_shift(
    images: Tensor, max_shift: int, *, generator: torch.Generator | None = None
) -> Tensor:
    """Translate every image by its own random integer offset, filling with zeros.

    The offsets ``(dy, dx)`` are drawn uniformly from ``{-max_shift, ..., max_shift}`` per image
    (on the CPU from ``generator``); content shifted past the border is dropped.

    Args:
        images: (N, C, H, W) floating-point images (not modified).
        max_shift: the largest offset in pixels, ``>= 0`` (0 returns a copy).
        generator: torch RNG for the offsets.

    Shape:
        output: (N, C, H, W), same dtype and device.

    Example:
        >>> x = torch.zeros(2, 1, 5, 5); x[:, :, 2, 2] = 1
        >>> y = random_shift(x, 1, generator=torch.Generator().manual_seed(0))
        >>> y.shape, float(y.sum())
        (torch.Size([2, 1, 5, 5]), 2.0)
    """
    _check_images(images)
    if isinstance(max_shift, bool) or not isinstance(max_shift, int) or max_shift < 0:
        raise ValueError(f"max_shift must be an int >= 0, got {max_shift!r}")
    n, c, h, w = images.shape
    if max_shift == 0 or n == 0:
        return images.clone()
    s = max_shift
    offsets = torch.randint(-s, s + 1, (2, n), generator=generator).to(images.device)  # (2, N)
    padded = F.pad(images, (s, s, s, s))  # (N, C, H+2s, W+2s)
    # Output pixel (i, j) of image b reads padded pixel (i + s - dy, j + s - dx).
    rows = torch.arange(h, device=images.device) + s - offsets[0, :, None]  # (N, H)
    cols = torch.arange(w, device=images.device) + s - offsets[1, :, None]  # (N, W)
    b = torch.arange(n, device=images.device)[:, None, None, None]  # (N, 1, 1, 1)
    ch = torch.arange(c, device=images.device)[None, :, None, None]  # (1, C, 1, 1)
    return padded[b, ch, rows[:, None, :, None], cols[:, None, None, :]]  # (N, C, H, W)


def random_affine(
    images: Tensor,
    *,
    degrees: float = 10.0,
    translate: float = 2.0,
    scale: tuple[float, float] = (0.9, 1.1),
    generator: torch.Generator | None = None,
) -> Tensor:
    """A random rotation, scaling and translation per image (bilinear, zero fill).

    Per image: angle uniform in ``[-degrees, degrees]``, scale uniform in ``scale``, and a
    translation uniform in ``[-translate, translate]`` pixels along each axis, about the centre.

    Args:
        images: (N, C, H, W) floating-point images (not modified).
        degrees: largest rotation in degrees, ``>= 0``.
        translate: largest translation in pixels, ``>= 0``.
        scale: ``(low, high)`` with ``0 < low <= high``.
        generator: torch RNG for the parameters.

    Shape:
        output: (N, C, H, W), same dtype and device.

    Example:
        >>> x = torch.rand(3, 1, 28, 28)
        >>> random_affine(x, generator=torch.Generator().manual_seed(0)).shape
        torch.Size([3, 1, 28, 28])
    """
    _check_images(images)
    if not degrees >= 0 or not translate >= 0:
        raise ValueError(f"degrees and translate must be >= 0, got {degrees}, {translate}")
    if len(scale) != 2 or not 0 < scale[0] <= scale[1]:
        raise ValueError(f"scale must be (low, high) with 0 < low <= high, got {scale}")
    n, _, h, w = images.shape
    if n == 0:
        return images.clone()
    u = torch.rand(4, n, generator=generator, dtype=torch.float64)  # (4, N)
    angle = (2 * u[0] - 1) * math.radians(degrees)
    zoom = scale[0] + (scale[1] - scale[0]) * u[1]
    # affine_grid works in [-1, 1] coordinates: one pixel is 2 / size.
    tx = (2 * u[2] - 1) * translate * 2 / w
    ty = (2 * u[3] - 1) * translate * 2 / h
    cos, sin = torch.cos(angle) / zoom, torch.sin(angle) / zoom
    # The grid maps output to input coordinates: the inverse of (rotate, zoom, translate).
    theta = torch.stack([
        torch.stack([cos, -sin * h / w, -(cos * tx - sin * ty * h / w)], dim=1),
        torch.stack([sin * w / h, cos, -(sin * tx * w / h + cos * ty)], dim=1),
    ], dim=1)  # (N, 2, 3)
    theta = theta.to(device=images.device, dtype=images.dtype)
    grid = F.affine_grid(theta, list(images.shape), align_corners=False)  # (N, H, W, 2)
    return F.grid_sample(images, grid, mode="bilinear", padding_mode="zeros",
                         align_corners=False)  # (N, C, H, W)


def augmentation(name: str, *, max_shift: int = 2, p: float = 1.0) -> Transform | None:
    """The transform called ``name`` (one of :data:`AUGMENTATIONS`); ``None`` for ``"none"``.

    ``"shift"``: :func:`random_shift` by up to ``max_shift`` pixels; ``"affine"``:
    :func:`random_affine` with rotations up to 10 degrees, scale 0.9-1.1 and translations up to
    ``max_shift`` pixels. With ``p < 1`` each image is transformed with probability ``p`` (one
    uniform draw per image from the generator, before the transform's own draws) and passed
    through unchanged otherwise, so a model also trains on unresampled images.

    Example:
        >>> aug = augmentation("affine", p=0.5)
        >>> aug(torch.rand(4, 1, 28, 28), torch.Generator().manual_seed(0)).shape
        torch.Size([4, 1, 28, 28])
    """
    if not isinstance(p, int | float) or isinstance(p, bool) or not 0 <= p <= 1:
        raise ValueError(f"p must be a number in [0, 1], got {p!r}")
    if name == "none":
        return None
    if name == "shift":
        base: Transform = lambda x, g: random_shift(x, max_shift, generator=g)  # noqa: E731
    elif name == "affine":
        base = lambda x, g: random_affine(x, translate=float(max_shift), generator=g)  # noqa: E731
    else:
        raise ValueError(f"unknown augmentation {name!r}; valid: {', '.join(AUGMENTATIONS)}")
    if p == 1:
        return base

    def sometimes(x: Tensor, g: torch.Generator | None) -> Tensor:
        keep = torch.rand(x.shape[0], generator=g) >= p  # (N,) True: left as it is
        out = base(x, g)  # every image: the draws do not depend on the mask
        return torch.where(keep.to(x.device).view(-1, *[1] * (x.dim() - 1)), x, out)

    return sometimes


def check_augment_settings(augment: str, shift: int, p: float = 1.0,
                           max_shift: int | None = None) -> None:
    """Validate experiment settings ``augment``, ``augment_shift`` (an int in ``[0,
    max_shift]``, no upper bound for ``None``) and ``augment_p``; raise ``ValueError``."""
    if augment not in AUGMENTATIONS:
        raise ValueError(f"augment must be one of {', '.join(AUGMENTATIONS)}, got {augment!r}")
    hi = "" if max_shift is None else f" and <= {max_shift}"
    if (not isinstance(shift, int) or isinstance(shift, bool) or shift < 0
            or (max_shift is not None and shift > max_shift)):
        raise ValueError(f"augment_shift must be an int >= 0{hi}, got {shift!r}")
    augmentation(augment, p=p)  # raises on a bad p


class AugmentedBatches:
    """A batch source whose first tensor (the images) is transformed; the rest pass unchanged.

    Args:
        source: any object with ``__len__`` and ``batch(epoch, index) -> tuple of tensors``.
        transform: ``transform(images, generator) -> images`` (e.g. from :func:`augmentation`).
        seed: the transform's generator for batch ``(epoch, index)`` is seeded from
            ``(seed, "augment", epoch, index)``, so batches are a pure function of their index.

    Example:
        >>> from hypersparse.train import TensorBatches
        >>> src = TensorBatches((torch.rand(8, 1, 6, 6), torch.arange(8)), 4, seed=0)
        >>> aug = AugmentedBatches(src, augmentation("shift", max_shift=1), seed=0)
        >>> [t.shape[0] for t in aug.batch(0, 1)]
        [4, 4]
    """

    def __init__(self, source: object, transform: Transform, *, seed: int = 0) -> None:
        if not hasattr(source, "batch") or not hasattr(source, "__len__"):
            raise TypeError(f"source must have batch(epoch, index) and __len__, got {source!r}")
        if not callable(transform):
            raise TypeError(f"transform must be callable, got {transform!r}")
        self.source, self.transform, self.seed = source, transform, seed

    def __len__(self) -> int:
        return len(self.source)  # type: ignore[arg-type]

    def batch(self, epoch: int, index: int) -> tuple[Tensor, ...]:
        from ..train import derive_seed

        images, *rest = self.source.batch(epoch, index)  # type: ignore[attr-defined]
        g = torch.Generator().manual_seed(derive_seed(self.seed, "augment", epoch, index))
        return (self.transform(images, g), *rest)
