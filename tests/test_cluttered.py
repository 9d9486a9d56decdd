"""Tests of the cluttered-MNIST generator (issue 9, PROTOCOLS.md "Cluttered MNIST")."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import Tensor

from hypersparse.data import (
    ClutteredBatches,
    Digits,
    augmentation,
    clutter,
    cluttered_set,
    default_distractors,
)


def fake_digits(n: int = 40, seed: int = 0, value: int | None = None) -> Digits:
    g = torch.Generator().manual_seed(seed)
    if value is None:
        images = torch.randint(0, 256, (n, 28, 28), generator=g, dtype=torch.uint8)
        images[torch.rand(n, 28, 28, generator=g) < 0.7] = 0
    else:
        images = torch.full((n, 28, 28), value, dtype=torch.uint8)
    labels = torch.randint(0, 10, (n,), generator=g)
    return Digits(images, labels, torch.arange(n) + 1000 * seed, f"fake-{seed}")


def naive_clutter(images: Tensor, index: Tensor, canvas: int, d: int, patch: int,
                  g: torch.Generator) -> tuple[Tensor, Tensor]:
    """Python loops over the protocol, drawing random numbers in the documented order."""
    n = index.shape[0]
    pos = torch.randint(0, canvas - 27, (n, 2), generator=g)
    src = torch.randint(0, images.shape[0], (n, d), generator=g)
    crop = torch.randint(0, 28 - patch + 1, (n, d, 2), generator=g)
    where = torch.randint(0, canvas - patch + 1, (n, d, 2), generator=g)
    out = torch.zeros(n, canvas, canvas, dtype=torch.float64)
    for i in range(n):
        for j in range(d):
            cy, cx = crop[i, j].tolist()
            y, x = where[i, j].tolist()
            piece = images[src[i, j], cy : cy + patch, cx : cx + patch].double() / 255
            out[i, y : y + patch, x : x + patch] += piece
            out[i] = out[i].clamp(max=1.0)
        y, x = pos[i].tolist()
        out[i, y : y + 28, x : x + 28] += images[index[i]].double() / 255
        out[i] = out[i].clamp(0.0, 1.0)
    return out, pos


@pytest.mark.parametrize("canvas,d", [(60, 4), (100, 8), (28, 0), (40, 3)])
def test_matches_naive_protocol(canvas: int, d: int) -> None:
    digits = fake_digits()
    index = torch.tensor([3, 0, 7, 7, 39])
    got = clutter(digits.images, digits.labels, index, canvas=canvas, distractors=d,
                  generator=torch.Generator().manual_seed(5))
    ref, pos = naive_clutter(digits.images, index, canvas, d, 8, torch.Generator().manual_seed(5))
    assert got.images.dtype == torch.uint8 and got.images.shape == (5, 1, canvas, canvas)
    torch.testing.assert_close(got.images[:, 0].double() / 255, ref, atol=1e-12, rtol=0)
    assert torch.equal(got.boxes[:, :2], pos) and torch.equal(got.labels, digits.labels[index])


@settings(max_examples=25, deadline=None)
@given(canvas=st.integers(28, 70), d=st.integers(0, 6), patch=st.integers(1, 28),
       seed=st.integers(0, 2**31 - 1))
def test_digit_fully_inside_canvas(canvas: int, d: int, patch: int, seed: int) -> None:
    digits = fake_digits(12)
    index = torch.arange(12)
    out = clutter(digits.images, digits.labels, index, canvas=canvas, distractors=d,
                  patch=patch, generator=torch.Generator().manual_seed(seed))
    b = out.boxes
    assert (b[:, :2] >= 0).all() and (b[:, 2:] <= canvas - 1).all()
    assert ((b[:, 2:] - b[:, :2]) == 27).all()
    for i in range(12):
        t, left = b[i, :2].tolist()
        region = out.images[i, 0, t : t + 28, left : left + 28]
        # the clipped sum is at least the digit everywhere in its box
        assert (region >= digits.images[i]).all()
    assert out.distractor.shape == (12, d)


def test_values_clipped_and_every_pixel_from_the_split() -> None:
    # a split whose pixels are all 3: every canvas pixel is a (clipped) sum of 3s, and 255 too
    split = fake_digits(10, value=3)
    out = clutter(split.images, split.labels, torch.arange(10), canvas=40, distractors=30,
                  generator=torch.Generator().manual_seed(0))
    assert (out.images.int() % 3 == 0).all()
    saturated = fake_digits(10, value=200)
    out = clutter(saturated.images, saturated.labels, torch.arange(10), canvas=30,
                  distractors=8, generator=torch.Generator().manual_seed(0))
    assert int(out.images.max()) == 255


def test_batches_deterministic_per_seed_and_epoch() -> None:
    digits = fake_digits(40)
    a = ClutteredBatches(digits, 8, canvas=40, seed=3)
    b = ClutteredBatches(digits, 8, canvas=40, seed=3)
    xa, ya = a.batch(1, 2)
    a.batch(0, 0)  # a different epoch in between must not change anything
    xb, yb = b.batch(1, 2)
    assert torch.equal(xa, xb) and torch.equal(ya, yb)
    assert torch.equal(a.batch(1, 2)[0], xa)
    assert not torch.equal(a.batch(2, 2)[0], xa)
    assert not torch.equal(ClutteredBatches(digits, 8, canvas=40, seed=4).batch(1, 2)[0], xa)
    assert xa.dtype == torch.float32 and 0 <= float(xa.min()) and float(xa.max()) <= 1


def test_transform_applies_to_digit_and_distractor_sources() -> None:
    # a deterministic transform (draws nothing) must give exactly the canvases of the plain
    # generator run on transformed source images: the digit and every distractor transformed
    digits = fake_digits(30)
    flip = lambda x, g: x.flip(-1).roll(2, -2)  # noqa: E731
    pre = flip(digits.images.unsqueeze(1).float() / 255, None).squeeze(1).mul(255).round()
    pre = pre.to(torch.uint8)  # (N, 28, 28)
    idx = torch.tensor([3, 0, 7, 7, 29])
    got = clutter(digits.images, digits.labels, idx, canvas=45, distractors=5,
                  generator=torch.Generator().manual_seed(4), transform=flip)
    want = clutter(pre, digits.labels, idx, canvas=45, distractors=5,
                   generator=torch.Generator().manual_seed(4))
    plain = clutter(digits.images, digits.labels, idx, canvas=45, distractors=5,
                    generator=torch.Generator().manual_seed(4))
    assert torch.equal(got.images, want.images) and torch.equal(got.boxes, plain.boxes)
    assert torch.equal(got.distractor, plain.distractor)
    assert not torch.equal(got.images, plain.images)


def test_transform_resamples_the_clutter_too() -> None:
    # 200-valued 10x10 squares at rows/cols 9..18 of every source image; a random affine
    # changes the clutter outside the digit's box as well as the digit (no blur shortcut)
    digits = fake_digits(12, value=0)
    images = digits.images.clone()
    images[:, 9:19, 9:19] = 200
    digits = Digits(images, digits.labels, digits.ids, digits.source)
    aff = augmentation("affine")
    plain = ClutteredBatches(digits, 6, canvas=50, distractors=12, seed=1).images(0, 1)
    moved = ClutteredBatches(digits, 6, canvas=50, distractors=12, seed=1,
                             transform=aff).images(0, 1)
    inside = torch.zeros_like(plain.images, dtype=torch.bool)
    for i, (t, l, b, r) in enumerate(plain.boxes.tolist()):
        inside[i, 0, t:b + 1, l:r + 1] = True
    assert not torch.equal(plain.images[~inside], moved.images[~inside])
    assert not torch.equal(plain.images[inside], moved.images[inside])
    # without distractors: nothing outside the box, and the digit lies inside it
    one = ClutteredBatches(digits, 6, canvas=50, distractors=0, seed=1,
                           transform=aff).images(0, 1)
    assert int(one.images[~inside].max()) == 0 and int(one.images.max()) > 0


def test_identity_transform_and_real_augmentation_are_deterministic() -> None:
    digits = fake_digits(40)
    base = ClutteredBatches(digits, 8, canvas=40, seed=2).batch(1, 3)[0]
    same = ClutteredBatches(digits, 8, canvas=40, seed=2, transform=lambda x, g: x).batch(1, 3)[0]
    assert torch.equal(base, same)  # uint8 -> [0, 1] -> uint8 round-trips exactly
    aff = augmentation("affine")
    a = ClutteredBatches(digits, 8, canvas=40, seed=2, transform=aff).batch(1, 3)[0]
    b = ClutteredBatches(digits, 8, canvas=40, seed=2, transform=aff).batch(1, 3)[0]
    assert torch.equal(a, b) and not torch.equal(a, base)
    assert 0 <= float(a.min()) and float(a.max()) <= 1


def test_augmentation_with_probability() -> None:
    x = torch.rand(64, 1, 28, 28)
    g = lambda: torch.Generator().manual_seed(5)  # noqa: E731
    assert torch.equal(augmentation("affine", p=0.0)(x, g()), x)  # type: ignore[misc]
    full = augmentation("affine")(x, g())  # type: ignore[misc]
    half = augmentation("affine", p=0.5)(x, g())  # type: ignore[misc]
    kept = (half == x).flatten(1).all(1)  # (64,)
    moved = (half != x).flatten(1).any(1)
    assert 16 <= int(kept.sum()) <= 48 and torch.equal(kept, ~moved)
    assert torch.equal(half, augmentation("affine", p=0.5)(x, g()))  # type: ignore[misc]
    assert not torch.equal(full, x)
    for bad in (-0.1, 1.5, True, "0.5"):
        with pytest.raises(ValueError, match="p must be"):
            augmentation("affine", p=bad)  # type: ignore[arg-type]


def test_bad_transform_raises() -> None:
    d = fake_digits(8)
    with pytest.raises(TypeError, match="transform"):
        ClutteredBatches(d, 4, canvas=40, transform=3)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="transform"):
        clutter(d.images, d.labels, torch.arange(2), canvas=40, transform="affine")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="shape"):
        clutter(d.images, d.labels, torch.arange(2), canvas=40, transform=lambda x, g: x[:, :, :5])
    with pytest.raises(ValueError, match="tensor"):
        clutter(d.images, d.labels, torch.arange(2), canvas=40, transform=lambda x, g: None)


def test_each_digit_once_per_epoch() -> None:
    digits = fake_digits(40)
    src = ClutteredBatches(digits, 8, canvas=40, seed=0)
    assert len(src) == 5
    seen = torch.cat([src.images(0, i).digit for i in range(len(src))])
    assert torch.equal(seen.sort().values, torch.arange(40))
    other = torch.cat([src.images(1, i).digit for i in range(len(src))])
    assert not torch.equal(seen, other)


def test_splits_never_mixed() -> None:
    train, test = fake_digits(30, seed=0, value=3), fake_digits(30, seed=1, value=5)
    for split, mult in ((train, 3), (test, 5)):
        x = ClutteredBatches(split, 10, canvas=60, distractors=20, seed=0).images(0, 0).images
        assert (x.int() % mult == 0).all()
        fixed = cluttered_set(split, canvas=60, distractors=20)
        assert (fixed.images.int() % mult == 0).all()
        assert (fixed.distractor < len(split)).all() and (fixed.distractor >= 0).all()


def test_fixed_sets_independent_of_run_and_distinct_per_split() -> None:
    a, b = fake_digits(20, seed=0), fake_digits(20, seed=1)
    s1, s2 = cluttered_set(a, canvas=40), cluttered_set(a, canvas=40)
    assert torch.equal(s1.images, s2.images) and torch.equal(s1.labels, a.labels)
    assert torch.equal(s1.digit, torch.arange(20))
    assert not torch.equal(cluttered_set(b, canvas=40).boxes, s1.boxes)
    assert not torch.equal(cluttered_set(a, canvas=40, seed=1).images, s1.images)


def test_default_distractors() -> None:
    assert default_distractors(100) == 8 and default_distractors(60) == 4
    assert ClutteredBatches(fake_digits(), 4, canvas=100).distractors == 8


def test_empty_index() -> None:
    d = fake_digits(5)
    out = clutter(d.images, d.labels, torch.zeros(0, dtype=torch.long), canvas=30)
    assert out.images.shape == (0, 1, 30, 30) and len(out) == 0


def test_bad_input_raises() -> None:
    d = fake_digits(5)
    with pytest.raises(ValueError, match="canvas"):
        clutter(d.images, d.labels, torch.arange(2), canvas=20)
    with pytest.raises(ValueError, match="patch"):
        clutter(d.images, d.labels, torch.arange(2), canvas=40, patch=0)
    with pytest.raises(ValueError, match="distractors"):
        clutter(d.images, d.labels, torch.arange(2), canvas=40, distractors=-1)
    with pytest.raises(ValueError, match="index"):
        clutter(d.images, d.labels, torch.tensor([5]), canvas=40)
    with pytest.raises(TypeError, match="uint8"):
        clutter(d.images.float(), d.labels, torch.arange(2), canvas=40)
    with pytest.raises(ValueError, match=r"\(N, 28, 28\)"):
        clutter(d.images[:, :20], d.labels, torch.arange(2), canvas=40)
    with pytest.raises(ValueError, match="batch_size"):
        ClutteredBatches(d, 6)
    with pytest.raises(IndexError):
        ClutteredBatches(d, 2, canvas=40).batch(0, 2)


def test_real_split(mnist_available: bool) -> None:
    from hypersparse.data import mnist

    val = mnist("val")
    s = cluttered_set(val, canvas=60)
    assert s.images.shape == (len(val), 1, 60, 60) and torch.equal(s.labels, val.labels)
    assert s.distractor.shape == (len(val), 4)
