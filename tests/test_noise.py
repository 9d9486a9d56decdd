"""The noise experiment: noise injection, the paper's networks, and a smoke run."""

from __future__ import annotations

import json
import math

import pytest
import torch

from hypersparse.experiments.noise import (
    FORUM_LEVELS,
    NOISE_VALUE,
    PAPER_LEVELS,
    NoiseConfig,
    forum_noise,
    pixel_noise,
)
from hypersparse.experiments.numenta_nets import (
    FORUM_NETWORKS,
    NETWORKS,
    BoostConfig,
    build_network,
)
from hypersparse.nn import KWinners, KWinners2d, SparseWeights


@pytest.mark.parametrize("p", PAPER_LEVELS + (0.35, 0.8, 1.0))
def test_pixel_noise_sets_exactly_floor_784p(p):
    images = torch.zeros(7, 1, 28, 28)
    out = pixel_noise(images, p, generator=torch.Generator().manual_seed(0))
    expect = math.floor(784 * p + 1e-9)
    assert torch.equal((out != 0).flatten(1).sum(1), torch.full((7,), expect))
    assert torch.all((out == 0) | (out == NOISE_VALUE))
    assert torch.equal(images, torch.zeros(7, 1, 28, 28))  # input untouched


def test_pixel_noise_levels_and_value():
    assert PAPER_LEVELS[0] == 0.0 and PAPER_LEVELS[-1] == 0.5 and len(PAPER_LEVELS) == 11
    assert [math.floor(784 * p + 1e-9) for p in PAPER_LEVELS] == [
        (784 * i) // 20 for i in range(11)]
    assert math.isclose(NOISE_VALUE, 0.1307 + 2 * 0.3081)


def test_pixel_noise_keeps_other_pixels_and_is_reproducible():
    images = torch.rand(4, 1, 28, 28)
    a = pixel_noise(images, 0.1, generator=torch.Generator().manual_seed(5))
    b = pixel_noise(images, 0.1, generator=torch.Generator().manual_seed(5))
    c = pixel_noise(images, 0.1, generator=torch.Generator().manual_seed(6))
    assert torch.equal(a, b) and not torch.equal(a, c)
    changed = a != images
    assert torch.equal(a[~changed], images[~changed])
    assert torch.equal(pixel_noise(images, 0.0), images)


def test_pixel_noise_bad_args():
    with pytest.raises(ValueError, match="N, 1, H, W"):
        pixel_noise(torch.zeros(3, 28, 28), 0.1)
    with pytest.raises(ValueError, match="noise level"):
        pixel_noise(torch.zeros(3, 1, 28, 28), 1.2)
    with pytest.raises(ValueError, match="noise level"):
        forum_noise(torch.zeros(3, 1, 28, 28), -0.1)


def test_forum_noise():
    images = torch.full((50, 1, 28, 28), 0.5)
    assert torch.equal(forum_noise(images, 0.0), images)
    full = forum_noise(images, 1.0, generator=torch.Generator().manual_seed(0))
    assert full.min() >= 0 and full.max() <= 1 and (full == 0).float().mean() > 0.4
    half = forum_noise(images, 0.3, generator=torch.Generator().manual_seed(0))
    frac = float((half != 0.5).float().mean())
    assert abs(frac - 0.3) < 0.01
    assert FORUM_LEVELS[-1] == 0.8


@pytest.mark.parametrize("name", NETWORKS + FORUM_NETWORKS)
def test_networks_shapes(name):
    net = build_network(name)
    net.eval()
    assert net(torch.rand(3, 1, 28, 28)).shape == (3, 10)


def test_sparse_cnn2_matches_the_paper():
    net = build_network("sparse_cnn2")
    kws = [m for m in net.modules() if isinstance(m, KWinners | KWinners2d)]
    assert [(m.k, m.pool) for m in kws] == [(400, 4608), (300, 1024), (100, 700)]
    assert [m.k_inference for m in kws] == [400, 300, 100]  # k_inference_factor 1.0 (val)
    paper = build_network("sparse_cnn2", BoostConfig(k_inference_factor=1.5))
    kws15 = [m for m in paper.modules() if isinstance(m, KWinners | KWinners2d)]
    assert [m.k_inference for m in kws15] == [600, 450, 150]
    sw = [m for m in net.modules() if isinstance(m, SparseWeights)]
    assert len(sw) == 1 and sw[0].nonzeros == round(0.3 * 1024)
    assert all(m.boost_strength == 1.5 and m.boost_strength_factor == 0.85 for m in kws)
    cnn1 = build_network("sparse_cnn1")
    kws1 = [m for m in cnn1.modules() if isinstance(m, KWinners | KWinners2d)]
    assert [(m.k, m.pool) for m in kws1] == [(400, 4320), (50, 150)]
    with pytest.raises(ValueError, match="unknown network"):
        build_network("resnet")


def test_config_validation():
    with pytest.raises(ValueError, match="unknown network"):
        NoiseConfig(networks=("dense_cnn3",))
    with pytest.raises(ValueError, match="noise levels"):
        NoiseConfig(levels=(0.0, 1.5))


@pytest.mark.slow  # ~15-50 s here: loading the split and evaluating four networks
def test_smoke_run(tmp_path, mnist_available):
    from hypersparse.run import evaluate_run, run_experiment

    out = run_experiment(
        "noise",
        ["train.max_steps=3", "sparse_train.max_steps=3", "forum_train.max_steps=3",
         "first_epoch_batch_size=0", "networks=dense_cnn2,sparse_cnn2",
         "forum_networks=mlp_raw,mlp_kwinners", "levels=0.0,0.25,0.5", "forum_levels=0.0,0.8",
         "eval_limit=200"],
        out=tmp_path / "r", progress=False,
    )
    for f in ("config.json", "env.json", "metrics.jsonl", "summary.json", "noise.png",
              "noise_forum.png", "checkpoints/sparse_cnn2/best.pt"):
        assert (out / f).exists(), f
    summary = json.loads((out / "summary.json").read_text())
    assert summary["test_size"] == 200
    for net in ("dense_cnn2", "sparse_cnn2", "mlp_raw", "mlp_kwinners"):
        assert 0 <= summary[f"{net}/test_accuracy"] <= 1
        assert summary[f"{net}/noise_score"] <= 3 * summary["test_size"]
    assert "sparse_cnn2/accuracy_at_0.5" in summary and "mlp_raw/accuracy_at_0.8" in summary
    assert summary["sparse_cnn2/nonzero_weights"] < summary["sparse_cnn2/params"]
    again = evaluate_run(out)
    assert again["sparse_cnn2/noise_score"] == summary["sparse_cnn2/noise_score"]


def test_training_stages_follow_the_paper():
    from hypersparse.experiments.noise import _stages

    cfg = NoiseConfig()
    cfg.sparse_train.epochs = 5
    (s1, first), (s2, rest) = _stages(cfg, "sparse_cnn2")
    assert (s1, s2) == ("sparse_cnn2-first-epoch", "sparse_cnn2")
    assert (first.epochs, first.batch_size, first.lr) == (1, 4, 0.02)
    assert (rest.epochs, rest.batch_size, rest.momentum) == (4, 64, 0.0)
    assert math.isclose(rest.lr, 0.02 * 0.8) and rest.lr_decay == 0.8
    (_, c1), _ = _stages(cfg, "sparse_cnn1")
    assert c1.lr == 0.01
    [(name, dense)] = _stages(cfg, "dense_cnn2")
    assert (name, dense.optimizer, dense.momentum, dense.lr) == ("dense_cnn2", "sgd", 0.9, 0.01)
    cfg.first_epoch_batch_size = 0
    assert [s for s, _ in _stages(cfg, "sparse_cnn2")] == ["sparse_cnn2"]
