"""The sparse nets' small-batch phase in the noise experiment (``sparse_first_epochs``/``_lr``)."""

from __future__ import annotations

import json
import math

import pytest

from hypersparse.experiments.noise import NoiseConfig, _stages


def test_default_is_the_single_paper_epoch():
    cfg = NoiseConfig()
    cfg.sparse_train.epochs = 15
    (s1, first), (s2, rest) = _stages(cfg, "sparse_cnn2")
    assert (s1, s2) == ("sparse_cnn2-first-epoch", "sparse_cnn2")
    assert (first.epochs, first.batch_size, first.lr, first.schedule) == (1, 4, 0.02, "constant")
    assert first.max_steps is None
    assert (rest.epochs, rest.batch_size) == (14, 64)
    assert math.isclose(rest.lr, 0.02 * 0.8)


@pytest.mark.parametrize("n", [2, 3, 7, 14])
def test_first_epochs_split_the_schedule(n):
    cfg = NoiseConfig(sparse_first_epochs=n)
    cfg.sparse_train.epochs = 15
    (s1, first), (s2, rest) = _stages(cfg, "sparse_cnn2")
    assert (s1, s2) == ("sparse_cnn2-first-epoch", "sparse_cnn2")
    assert (first.epochs, first.batch_size, first.lr, first.schedule) == (n, 4, 0.02, "constant")
    # The total number of epochs is unchanged; the batch-64 phase starts one decay step down.
    assert first.epochs + rest.epochs == 15
    assert (rest.batch_size, rest.momentum, rest.schedule) == (64, 0.0, "step")
    assert math.isclose(rest.lr, 0.02 * 0.8)
    # CNN-1 keeps its own lr in both phases; dense nets are untouched.
    (_, c1), (_, r1) = _stages(cfg, "sparse_cnn1")
    assert (c1.epochs, c1.lr) == (n, 0.01) and math.isclose(r1.lr, 0.01 * 0.8)
    [(name, dense)] = _stages(cfg, "dense_cnn2")
    assert (name, dense.epochs, dense.batch_size, dense.lr, dense.momentum) == (
        "dense_cnn2", 1, 64, 0.01, 0.9)


def test_first_epochs_capped_at_the_schedule_and_first_lr():
    cfg = NoiseConfig(sparse_first_epochs=7, sparse_first_lr=0.005)
    cfg.sparse_train.epochs = 5
    [(stage, only)] = _stages(cfg, "sparse_cnn2")  # every epoch is small-batch
    assert (stage, only.epochs, only.batch_size, only.lr) == ("sparse_cnn2", 5, 4, 0.005)
    cfg.sparse_train.epochs = 9
    (_, first), (_, rest) = _stages(cfg, "sparse_cnn2")
    assert (first.epochs, first.lr, rest.epochs) == (7, 0.005, 2)
    assert math.isclose(rest.lr, 0.02 * 0.8)  # the batch-64 phase keeps the net's lr
    (_, c1), _ = _stages(cfg, "sparse_cnn1")
    assert c1.lr == 0.005  # sparse_first_lr applies to both sparse nets
    cfg.first_epoch_batch_size = 0  # no separate phase at all: sparse_first_epochs is unused
    [(stage, tc)] = _stages(cfg, "sparse_cnn2")
    assert (stage, tc.epochs, tc.batch_size, tc.lr) == ("sparse_cnn2", 9, 64, 0.02)


@pytest.mark.parametrize("bad", [
    {"sparse_first_epochs": 0}, {"sparse_first_epochs": -3},
    {"sparse_first_lr": -0.01}, {"sparse_first_lr": float("nan")},
    {"sparse_first_lr": float("inf")},
])
def test_bad_first_phase_settings_raise(bad):
    key = next(iter(bad))
    with pytest.raises(ValueError, match=key):
        NoiseConfig(**bad)


@pytest.mark.slow  # ~5-16 s here: loads the split, trains 7 steps of sparse CNN-2, evaluates
def test_run_honours_first_epochs_and_first_lr(tmp_path, mnist_available, monkeypatch):
    """Through the CLI overrides: 2 small-batch epochs at the given lr, then the batch-64 stage.

    The training split is cut to 64 digits (and validation to 100) so an epoch is 2 steps.
    """
    import dataclasses

    import hypersparse.experiments.noise as noise
    from hypersparse.run import run_experiment

    real_digits = noise.digits

    def small_digits(dataset: str, split: str):
        d = real_digits(dataset, split)
        n = {"train": 64, "val": 100}.get(split, len(d))
        return dataclasses.replace(d, images=d.images[:n], labels=d.labels[:n], ids=d.ids[:n])

    monkeypatch.setattr(noise, "digits", small_digits)
    out = run_experiment(
        "noise",
        ["networks=sparse_cnn2", "forum=false", "sparse_train.epochs=3",
         "sparse_train.max_steps=3", "sparse_train.log_every=1",
         "first_epoch_batch_size=32",  # 2 steps per epoch of the 64 training digits
         "sparse_first_epochs=2", "sparse_first_lr=0.005", "levels=0.0,0.5", "eval_limit=100"],
        out=tmp_path / "r", progress=False,
    )
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    first = [r for r in records if r.get("stage") == "sparse_cnn2-first-epoch"]
    rest = [r for r in records if r.get("stage") == "sparse_cnn2"]
    # One validation per epoch end: two epochs of two steps each in the small-batch stage.
    assert [r["step"] for r in first if r.get("split") == "val"] == [2, 4]
    assert [r["step"] for r in first if r.get("split") == "train"] == [1, 2, 3, 4]
    assert {r["lr"] for r in first if r.get("split") == "train"} == {0.005}
    train_rest = [r for r in rest if r.get("split") == "train"]
    assert [r["step"] for r in train_rest] == [1, 2, 3]
    assert math.isclose(train_rest[0]["lr"], 0.02 * 0.8)
    assert (out / "checkpoints" / "sparse_cnn2" / "best.pt").exists()
    summary = json.loads((out / "summary.json").read_text())
    assert summary["test_size"] == 100 and 0 <= summary["sparse_cnn2/test_accuracy"] <= 1
    config = json.loads((out / "config.json").read_text())["config"]
    assert (config["sparse_first_epochs"], config["sparse_first_lr"]) == (2, 0.005)
