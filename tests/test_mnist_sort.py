"""Tests of the digit-sequence builder and the mnist-sort experiment."""

from __future__ import annotations

import json

import pytest
import torch

from hypersparse.data import Digits, digit_sequences, mnist, sequence_images
from hypersparse.experiments.mnist_sort import (
    KeyNet,
    MnistSortConfig,
    MnistSorter,
    predicted_order,
    sort_loss,
)


def _toy_digits(per_class: int = 3) -> Digits:
    labels = torch.arange(10).repeat_interleave(per_class)  # (30,)
    images = (labels[:, None, None] * 25 + torch.zeros(1, 28, 28)).to(torch.uint8)  # (30, 28, 28)
    ids = torch.arange(labels.numel()) + 1000
    return Digits(images, labels, ids, "toy")


def test_sequences_show_their_numbers():
    d = _toy_digits()
    seqs = digit_sequences(d, 6, 5, generator=torch.Generator().manual_seed(0))
    assert seqs.index.shape == (6, 5, 4) and seqs.values.shape == (6, 5)
    assert int(seqs.values.min()) >= 0 and int(seqs.values.max()) <= 9999
    # every digit image is of the digit it stands for, most significant first
    powers = torch.tensor([1000, 100, 10, 1])
    assert torch.equal(d.labels[seqs.index], (seqs.values[..., None] // powers) % 10)
    imgs = seqs.images()
    assert imgs.shape == (6, 5, 1, 112, 28) and imgs.dtype == torch.float32
    # the stacked image's k-th 28-row block is the k-th digit (toy images are constant)
    blocks = imgs[:, :, 0, ::28, 0] * 255 / 25  # (6, 5, 4)
    assert torch.allclose(blocks, d.labels[seqs.index].float())
    assert torch.equal(sequence_images(d, seqs.index[:2]), imgs[:2])


def test_sequence_builder_bad_input():
    d = _toy_digits()
    with pytest.raises(ValueError, match="n must be"):
        digit_sequences(d, 3, 0)
    with pytest.raises(ValueError, match="count"):
        digit_sequences(d, -1, 3)
    missing = Digits(d.images[:27], d.labels[:27], d.ids[:27], "toy")  # no 9s
    with pytest.raises(ValueError, match="every digit"):
        digit_sequences(missing, 3, 3)


def test_sequences_use_only_their_split(mnist_available):
    train, test = mnist("train"), mnist("test")
    g = torch.Generator().manual_seed(0)
    tr = digit_sequences(train, 200, 5, generator=g)
    te = digit_sequences(test, 200, 5, generator=g)
    tr_ids, te_ids = train.ids[tr.index].unique(), test.ids[te.index].unique()
    assert not set(tr_ids.tolist()) & set(test.ids.tolist())
    assert not set(te_ids.tolist()) & set(train.ids.tolist())
    assert set(te_ids.tolist()) <= set(test.ids.tolist())


def test_key_cnn_shapes():
    net = KeyNet()
    assert net(torch.zeros(7, 1, 112, 28)).shape == (7,)
    model = MnistSorter(MnistSortConfig(n=3))
    assert model(torch.zeros(2, 3, 1, 112, 28)).shape == (2, 3)
    assert model.sorter is not None and model.sorter.n == 3
    assert MnistSorter(MnistSortConfig(method="neuralsort")).sorter is None


@pytest.mark.parametrize("method", ["quicksort", "neuralsort", "diffsort"])
def test_losses_prefer_the_right_order(method):
    # Keys in the true order must have a lower loss than keys in the reverse order.
    cfg = MnistSortConfig(method=method, n=5, certainty=10.0)
    model = MnistSorter(cfg)
    net = None
    if method == "diffsort":
        from diffsort import DiffSortNet

        net = DiffSortNet("odd_even", 5, steepness=cfg.steepness)
    values = torch.tensor([[30, 10, 50, 20, 40]])
    good = values.float() / 10
    torch.manual_seed(0)
    lo = sort_loss(model, good, values, cfg, net)
    hi = sort_loss(model, -good, values, cfg, net)
    assert float(lo) < float(hi)
    assert torch.equal(predicted_order(model, good), torch.tensor([[1, 3, 0, 4, 2]]))


@pytest.mark.parametrize("method", ["quicksort", "neuralsort", "diffsort"])
def test_smoke_run(method, tmp_path, mnist_available):
    from hypersparse.run import run_experiment

    extra = ["quicksort_loss=mse", "level_loss=true"] if method == "quicksort" else []
    out = run_experiment(
        "mnist-sort",
        [f"method={method}", "n=3", "train.max_steps=2", "train.batch_size=2",
         "train_batches_per_epoch=2", "val_sequences=4", "test_sequences=6", "eval_batch=4",
         *extra],
        out=tmp_path / "r", progress=False,
    )
    for name in ("config.json", "env.json", "metrics.jsonl", "summary.json"):
        assert (out / name).exists()
    summary = json.loads((out / "summary.json").read_text())
    assert summary["method"] == method and summary["n"] == 3
    assert 0.0 <= summary["exact_match"] <= summary["element_accuracy"] <= 1.0
    assert summary["test_sequences"] == 6
    assert (out / "checkpoints" / "model" / "best.pt").exists()
