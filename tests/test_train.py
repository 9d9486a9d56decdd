from __future__ import annotations

import pytest
import torch

from hypersparse.train import SyntheticBatches, TensorBatches, TrainConfig, derive_seed, lr_factor


def test_tensor_batches_cover_each_epoch_once_and_differ_by_epoch() -> None:
    src = TensorBatches((torch.arange(100),), batch_size=10, seed=3)
    e0 = torch.cat([src.batch(0, i)[0] for i in range(len(src))])
    e1 = torch.cat([src.batch(1, i)[0] for i in range(len(src))])
    assert sorted(e0.tolist()) == list(range(100)) and not torch.equal(e0, e1)
    assert torch.equal(
        TensorBatches((torch.arange(100),), 10, seed=3).batch(1, 4)[0], src.batch(1, 4)[0]
    )


def test_tensor_batches_shard_by_rank() -> None:
    a = TensorBatches((torch.arange(40),), 5, seed=0, rank=0, world_size=2)
    b = TensorBatches((torch.arange(40),), 5, seed=0, rank=1, world_size=2)
    both = torch.cat([a.batch(0, 0)[0], b.batch(0, 0)[0]])
    single = TensorBatches((torch.arange(40),), 10, seed=0).batch(0, 0)[0]
    assert len(a) == 4 and sorted(both.tolist()) == sorted(single.tolist())


def test_batch_sources_reject_bad_input() -> None:
    with pytest.raises(ValueError, match="differ in length"):
        TensorBatches((torch.zeros(3), torch.zeros(4)), 1)
    with pytest.raises(ValueError, match="cannot fill one batch"):
        TensorBatches((torch.zeros(3),), 4)
    with pytest.raises(IndexError):
        TensorBatches((torch.zeros(8),), 4).batch(0, 2)
    with pytest.raises(ValueError, match="batches_per_epoch"):
        SyntheticBatches(lambda b, g: (torch.zeros(b),), 4, 0)


def test_synthetic_batches_are_pure_functions() -> None:
    src = SyntheticBatches(lambda b, g: (torch.randn(b, generator=g),), 4, 10, seed=1)
    assert torch.equal(src.batch(2, 3)[0], src.batch(2, 3)[0])
    assert not torch.equal(src.batch(2, 3)[0], src.batch(2, 4)[0])


def test_lr_schedules() -> None:
    c = TrainConfig(schedule="step", lr_decay=0.5, decay_every=2)
    assert [lr_factor(c, s, 100, 10) for s in (0, 19, 20, 45)] == [1, 1, 0.5, 0.25]
    c = TrainConfig(schedule="cosine", warmup_steps=10)
    assert lr_factor(c, 0, 100, 10) == pytest.approx(0.1, rel=1e-3)
    assert lr_factor(c, 50, 100, 10) == pytest.approx(0.5)
    c = TrainConfig(schedule="exponential", lr_decay=0.5)
    assert lr_factor(c, 5, 100, 10) == pytest.approx(0.5**0.5)


@pytest.mark.parametrize(
    ("key", "value"),
    [("epochs", 0), ("batch_size", 0), ("lr", 0.0), ("max_steps", 0), ("log_every", 0)],
)
def test_train_config_validates(key: str, value: float) -> None:
    with pytest.raises(ValueError, match=f"train.{key}"):
        TrainConfig(**{key: value})


def test_derive_seed_is_stable() -> None:
    assert derive_seed(1, "a", 2) == derive_seed(1, "a", 2) != derive_seed(1, "a", 3)
    assert 0 <= derive_seed(0) < 2**63
