"""The mnist-sort evaluation harness: batching does not change the numbers; metrics are right."""

from __future__ import annotations

import pytest
import torch

from hypersparse.data import Digits, digit_sequences
from hypersparse.experiments.mnist_sort import (
    MnistSort,
    MnistSortConfig,
    MnistSorter,
    evaluate_sequences,
)
from hypersparse.run import resolve_config


def _toy_digits(per_class: int = 4) -> Digits:
    g = torch.Generator().manual_seed(1)
    labels = torch.arange(10).repeat_interleave(per_class)  # (40,)
    images = torch.randint(0, 256, (labels.numel(), 28, 28), generator=g, dtype=torch.uint8)
    return Digits(images, labels, torch.arange(labels.numel()), "toy")


@pytest.mark.parametrize("method", ["quicksort", "neuralsort"])
@pytest.mark.parametrize("n", [3, 5])
def test_eval_batch_does_not_change_metrics(method, n):
    seqs = digit_sequences(_toy_digits(), 23, n, generator=torch.Generator().manual_seed(0))
    model = MnistSorter(MnistSortConfig(method=method, n=n))
    cpu = torch.device("cpu")
    whole = evaluate_sequences(model, seqs, 23, cpu)
    for batch in (1, 4, 16):
        assert evaluate_sequences(model, seqs, batch, cpu) == whole
    assert model.training  # evaluation restores the mode


class _ValueKeys(MnistSorter):
    """Keys read off a lookup of image index -> number (a perfect or a reversed sorter)."""

    def __init__(self, config: MnistSortConfig, sign: float) -> None:
        super().__init__(config)
        self.sign = sign
        self.table: dict[bytes, float] = {}

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        b, n = images.shape[:2]
        flat = images.flatten(2)  # (B, n, 112 * 28)
        keys = [[self.table[flat[i, j].numpy().tobytes()] for j in range(n)] for i in range(b)]
        return self.sign * torch.tensor(keys)


def test_metrics_perfect_and_reversed():
    digits = _toy_digits()
    seqs = digit_sequences(digits, 9, 4, generator=torch.Generator().manual_seed(2))
    cfg = MnistSortConfig(method="quicksort", n=4)
    images = seqs.images().flatten(2)  # (9, 4, 112 * 28)
    for sign, exact in ((1.0, 1.0), (-1.0, None)):
        model = _ValueKeys(cfg, sign)
        for i in range(9):
            for j in range(4):
                model.table[images[i, j].numpy().tobytes()] = float(seqs.values[i, j])
        r = evaluate_sequences(model, seqs, 4, torch.device("cpu"))
        if exact is not None:
            assert r == {"exact_match": 1.0, "element_accuracy": 1.0}
        else:  # reversed order: only sequences of equal numbers could come out right
            distinct = (seqs.values[:, :, None] != seqs.values[:, None, :]).any((1, 2))
            assert r["exact_match"] == float((~distinct).float().mean())
            assert r["element_accuracy"] < 1.0


def test_defaults_validate_every_epoch_and_presets_resolve():
    cfg = MnistSortConfig()
    assert cfg.eval_batch == 16 and cfg.train.epochs * cfg.train_batches_per_epoch == 400
    full, preset = resolve_config(MnistSort, ["preset=full"])
    assert preset == "full" and full.train.lr == 1e-4
    assert full.train.epochs * full.train_batches_per_epoch == 20000
    cpu, _ = resolve_config(MnistSort, ["preset=cpu4k", "method=neuralsort"])
    assert cpu.train.epochs * cpu.train_batches_per_epoch == 4000 and cpu.method == "neuralsort"
    assert cpu.train.schedule == "cosine" and cpu.train.lr == 3e-3 and cpu.val_sequences == 1000
    with pytest.raises(ValueError, match="preset"):
        resolve_config(MnistSort, ["preset=nope"])
