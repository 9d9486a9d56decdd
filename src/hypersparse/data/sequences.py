"""Sequences of multi-digit MNIST numbers for the sorting benchmark (NeuralSort's protocol).

Each number has ``num_digits`` decimal digits drawn uniformly (0-9999 for four), each digit
replaced by a random image of that digit from *one* split of the package's MNIST (so training
sequences only ever hold training images), stacked vertically into a ``(28 * num_digits) x 28``
image. A :class:`DigitSequences` holds only image indices; images are built per batch, so
10,000 sequences of 15 numbers cost a few MB, not gigabytes.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from .splits import Digits

__all__ = ["DigitSequences", "digit_sequences", "sequence_images"]


@dataclass(frozen=True)
class DigitSequences:
    """``count`` sequences of ``n`` numbers drawn from one split.

    Attributes:
        digits: the split the images come from.
        index: (count, n, num_digits) int64 indices into ``digits.images`` (most significant
            digit first, i.e. top of the stacked image).
        values: (count, n) int64 the numbers the images show.
    """

    digits: Digits
    index: Tensor
    values: Tensor

    def __len__(self) -> int:
        return self.values.shape[0]

    def images(self, start: int = 0, stop: int | None = None) -> Tensor:
        """Float images in [0, 1] of sequences ``start:stop``, shape (b, n, 1, 28 * D, 28)."""
        return sequence_images(self.digits, self.index[start:stop])


def sequence_images(digits: Digits, index: Tensor) -> Tensor:
    """Stack the digit images ``digits.images[index]`` of each number vertically.

    Shape:
        index (b, n, D) -> (b, n, 1, 28 * D, 28) float32 in [0, 1].
    """
    b, n, d = index.shape
    imgs = digits.images[index.reshape(-1)]  # (b * n * D, 28, 28)
    h, w = imgs.shape[-2:]
    imgs = imgs.reshape(b, n, 1, d * h, w)  # (b, n, 1, D*28, 28): digits stacked top to bottom
    return imgs.float().div_(255.0)


def digit_sequences(
    digits: Digits,
    count: int,
    n: int,
    *,
    num_digits: int = 4,
    generator: torch.Generator | None = None,
) -> DigitSequences:
    """Draw ``count`` sequences of ``n`` uniformly random ``num_digits``-digit numbers, each
    digit shown by a random image of that digit from ``digits`` (one split).

    Args:
        digits: one split, e.g. ``hypersparse.data.mnist("train")``; every class must occur.
        count: number of sequences (>= 0).
        n: numbers per sequence (>= 1).
        num_digits: digits per number (>= 1).
        generator: torch generator (the run seeds it).

    Shape:
        index (count, n, num_digits), values (count, n).

    Example:
        >>> seqs = digit_sequences(mnist("train"), 8, 5)  # doctest: +SKIP
        >>> seqs.images().shape  # doctest: +SKIP
        torch.Size([8, 5, 1, 112, 28])
    """
    if count < 0:
        raise ValueError(f"count must be >= 0, got {count}")
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    if num_digits < 1:
        raise ValueError(f"num_digits must be >= 1, got {num_digits}")
    labels = digits.labels
    counts = torch.bincount(labels, minlength=10)[:10]  # (10,)
    if labels.numel() == 0 or bool((counts == 0).any()):
        raise ValueError(f"every digit 0-9 must occur in the split; class counts {counts.tolist()}")
    by_class = torch.argsort(labels, stable=True)  # image indices grouped by class
    start = torch.cumsum(counts, 0) - counts  # (10,)
    numbers = torch.randint(0, 10**num_digits, (count, n), generator=generator)  # (count, n)
    powers = 10 ** torch.arange(num_digits - 1, -1, -1)  # (D,) most significant first
    digit = (numbers[..., None] // powers) % 10  # (count, n, D)
    u = torch.rand(digit.shape, generator=generator, dtype=torch.float64)
    offset = (u * counts[digit]).long().clamp_max(counts[digit] - 1)
    index = by_class[start[digit] + offset]  # (count, n, D)
    return DigitSequences(digits, index, numbers)
