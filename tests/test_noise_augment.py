"""Training-batch augmentation (hypersparse.data.augment) and its use in the noise experiment."""

from __future__ import annotations

import json

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from hypersparse.data import AugmentedBatches, augmentation, random_affine, random_shift
from hypersparse.experiments.noise import NoiseConfig, _training_batches
from hypersparse.train import TensorBatches, derive_seed


def _naive_shift(images: torch.Tensor, dy: int, dx: int) -> torch.Tensor:
    """Reference: out[i, j] = in[i - dy, j - dx] where that is inside the image, else 0."""
    c, h, w = images.shape
    out = torch.zeros_like(images)
    for i in range(h):
        for j in range(w):
            si, sj = i - dy, j - dx
            if 0 <= si < h and 0 <= sj < w:
                out[:, i, j] = images[:, si, sj]
    return out


@settings(max_examples=25, deadline=None)
@given(n=st.integers(0, 5), c=st.integers(1, 3), h=st.integers(1, 9), w=st.integers(1, 9),
       s=st.integers(0, 4), seed=st.integers(0, 2**31))
def test_random_shift_matches_naive_reference(n, c, h, w, s, seed):
    x = torch.rand(n, c, h, w, generator=torch.Generator().manual_seed(seed))
    y = random_shift(x, s, generator=torch.Generator().manual_seed(seed))
    assert y.shape == x.shape and y.dtype == x.dtype
    if s == 0 or n == 0:
        assert torch.equal(y, x)
        return
    # The offsets are the generator's first draw: (2, N) integers in [-s, s].
    dy, dx = torch.randint(-s, s + 1, (2, n), generator=torch.Generator().manual_seed(seed))
    for b in range(n):
        assert torch.equal(y[b], _naive_shift(x[b], int(dy[b]), int(dx[b])))


def test_random_shift_moves_each_image_and_keeps_content_inside_margin():
    x = torch.zeros(200, 1, 12, 12)
    x[:, :, 4:8, 5:7] = torch.rand(200, 1, 4, 2) + 0.5  # content 4 px from every border
    y = random_shift(x, 2, generator=torch.Generator().manual_seed(1))
    assert torch.allclose(y.sum((1, 2, 3)), x.sum((1, 2, 3)))  # nothing dropped
    moved = (y != x).flatten(1).any(1)
    assert 0.8 < moved.float().mean() < 1.0  # 1/25 of the images get offset (0, 0)
    # Every offset in [-2, 2]^2 occurs; none outside.
    rows = (y[:, 0].sum(2) > 0).float().argmax(1) - 4
    cols = (y[:, 0].sum(1) > 0).float().argmax(1) - 5
    assert set(rows.tolist()) == set(range(-2, 3)) == set(cols.tolist())


def test_random_shift_deterministic_dtype_bounds_noncontiguous():
    x = torch.rand(16, 1, 28, 28, dtype=torch.float64)
    a = random_shift(x, 2, generator=torch.Generator().manual_seed(3))
    b = random_shift(x, 2, generator=torch.Generator().manual_seed(3))
    c = random_shift(x, 2, generator=torch.Generator().manual_seed(4))
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert a.dtype == torch.float64 and a.min() >= 0 and a.max() <= 1
    xt = x.transpose(2, 3)  # non-contiguous
    assert not xt.is_contiguous()
    d = random_shift(xt, 2, generator=torch.Generator().manual_seed(3))
    e = random_shift(xt.contiguous(), 2, generator=torch.Generator().manual_seed(3))
    assert torch.equal(d, e)
    x0 = x.clone()
    random_shift(x, 2)
    assert torch.equal(x, x0)  # input untouched


def test_random_shift_bad_input():
    with pytest.raises(ValueError, match="max_shift"):
        random_shift(torch.rand(2, 1, 4, 4), -1)
    with pytest.raises(ValueError, match="max_shift"):
        random_shift(torch.rand(2, 1, 4, 4), 1.5)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"\(N, C, H, W\)"):
        random_shift(torch.rand(1, 4, 4), 1)
    with pytest.raises(TypeError, match="floating-point"):
        random_shift(torch.ones(2, 1, 4, 4, dtype=torch.long), 1)
    with pytest.raises(TypeError, match="Tensor"):
        random_shift([[1.0]], 1)  # type: ignore[arg-type]


def test_random_affine_identity_bounds_determinism():
    x = torch.rand(8, 2, 28, 28)
    ident = random_affine(x, degrees=0.0, translate=0.0, scale=(1.0, 1.0))
    assert torch.allclose(ident, x, atol=1e-5)
    a = random_affine(x, generator=torch.Generator().manual_seed(0))
    b = random_affine(x, generator=torch.Generator().manual_seed(0))
    assert torch.equal(a, b) and a.shape == x.shape and a.dtype == x.dtype
    assert not torch.allclose(a, x, atol=1e-3)
    assert a.min() >= 0 and a.max() <= 1 + 1e-6
    assert random_affine(x[:0]).shape == (0, 2, 28, 28)


def test_random_affine_translation_in_pixels():
    # A single bright pixel moved by a pure translation stays within `translate` pixels.
    x = torch.zeros(64, 1, 15, 15)
    x[:, :, 7, 7] = 1.0
    y = random_affine(x, degrees=0.0, translate=2.0, scale=(1.0, 1.0),
                      generator=torch.Generator().manual_seed(0))
    idx = torch.arange(15.0)
    mass = y[:, 0].sum((1, 2))
    cy = (y[:, 0].sum(2) * idx).sum(1) / mass - 7
    cx = (y[:, 0].sum(1) * idx).sum(1) / mass - 7
    assert torch.allclose(mass, torch.ones(64), atol=1e-5)  # bilinear: mass kept inside
    assert cy.abs().max() <= 2 + 1e-4 and cx.abs().max() <= 2 + 1e-4
    assert cy.abs().max() > 1 and cx.abs().max() > 1


def test_random_affine_bad_input():
    with pytest.raises(ValueError, match="scale"):
        random_affine(torch.rand(2, 1, 4, 4), scale=(1.1, 0.9))
    with pytest.raises(ValueError, match="degrees"):
        random_affine(torch.rand(2, 1, 4, 4), degrees=-1.0)
    with pytest.raises(ValueError, match=r"\(N, C, H, W\)"):
        random_affine(torch.rand(4, 4))


def test_augmentation_names():
    assert augmentation("none") is None
    x = torch.rand(3, 1, 8, 8)
    g = torch.Generator().manual_seed(0)
    shift = augmentation("shift", max_shift=1)
    assert shift is not None
    assert torch.equal(shift(x, g), random_shift(x, 1, generator=torch.Generator().manual_seed(0)))
    with pytest.raises(ValueError, match="unknown augmentation"):
        augmentation("flip")


def test_augmented_batches_labels_untouched_and_pure():
    x = torch.rand(40, 1, 10, 10)
    y = torch.arange(40)
    src = TensorBatches((x, y), 8, seed=5)
    aug = AugmentedBatches(src, augmentation("shift", max_shift=2), seed=9)
    assert len(aug) == len(src) == 5
    for epoch in range(2):
        for i in range(len(src)):
            (xs, ys), (xa, ya) = src.batch(epoch, i), aug.batch(epoch, i)
            assert torch.equal(ya, ys)  # labels untouched, same order
            g = torch.Generator().manual_seed(derive_seed(9, "augment", epoch, i))
            assert torch.equal(xa, random_shift(xs, 2, generator=g))
            assert torch.equal(aug.batch(epoch, i)[0], xa)  # pure function of (epoch, index)
    assert not torch.equal(aug.batch(0, 0)[0], aug.batch(1, 0)[0])
    with pytest.raises(TypeError, match="source"):
        AugmentedBatches(object(), lambda a, g: a)  # type: ignore[arg-type]


def test_noise_config_augment_off_by_default():
    cfg = NoiseConfig()
    assert cfg.augment == "none"
    tx, ty = torch.rand(32, 1, 28, 28), torch.randint(0, 10, (32,))
    plain = _training_batches(cfg, tx, ty, 8, "dense_cnn2")
    assert type(plain) is TensorBatches  # existing results reproduce bit for bit
    ref = TensorBatches((tx, ty), 8, seed=cfg.seed)
    assert all(torch.equal(a, b) for a, b in zip(plain.batch(1, 2), ref.batch(1, 2)))
    cfg = NoiseConfig(augment="shift")
    aug = _training_batches(cfg, tx, ty, 8, "dense_cnn2")
    assert isinstance(aug, AugmentedBatches)
    (xa, ya), (xr, yr) = aug.batch(1, 2), ref.batch(1, 2)
    assert torch.equal(ya, yr) and not torch.equal(xa, xr)
    with pytest.raises(ValueError, match="augment"):
        NoiseConfig(augment="flip")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="augment_shift"):
        NoiseConfig(augment_shift=-1)


@pytest.mark.slow  # ~8-20 s here: loads the split, trains 3 steps, evaluates
def test_augmentation_only_touches_training_batches(tmp_path, mnist_available, monkeypatch):
    """A spy transform sees exactly the training batches, never validation/test/noise images."""
    import hypersparse.experiments.noise as noise
    from hypersparse.run import run_experiment

    seen: list[tuple[int, ...]] = []

    def spy(name: str, *, max_shift: int = 2):  # same signature as augmentation()
        assert (name, max_shift) == ("shift", 1)
        return lambda x, g: (seen.append(tuple(x.shape)), random_shift(x, 1, generator=g))[1]

    monkeypatch.setattr(noise, "augmentation", spy)
    out = run_experiment(
        "noise",
        ["train.max_steps=3", "networks=dense_cnn2", "forum=false", "augment=shift",
         "augment_shift=1", "levels=0.0,0.5", "eval_limit=100"],
        out=tmp_path / "r", progress=False,
    )
    assert seen == [(64, 1, 28, 28)] * 3
    summary = json.loads((out / "summary.json").read_text())
    assert summary["test_size"] == 100 and 0 <= summary["dense_cnn2/test_accuracy"] <= 1
    config = json.loads((out / "config.json").read_text())["config"]
    assert config["augment"] == "shift" and config["augment_shift"] == 1


def test_augment_shift_must_be_an_int() -> None:
    with pytest.raises(ValueError, match="augment_shift"):
        NoiseConfig(augment_shift=1.5)  # type: ignore[arg-type]
