from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.nn.functional as F

from hypersparse.io import load_checkpoint
from hypersparse.run import RunContext
from hypersparse.train import (
    SyntheticBatches,
    TensorBatches,
    TrainConfig,
    derive_seed,
    ema_average,
    fit,
    lr_factor,
)


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
    [("epochs", 0), ("batch_size", 0), ("lr", 0.0), ("max_steps", 0), ("log_every", 0),
     ("ema_decay", 1.0), ("ema_decay", 0.0)],
)
def test_train_config_validates(key: str, value: float) -> None:
    with pytest.raises(ValueError, match=f"train.{key}"):
        TrainConfig(**{key: value})


def test_derive_seed_is_stable() -> None:
    assert derive_seed(1, "a", 2) == derive_seed(1, "a", 2) != derive_seed(1, "a", 3)
    assert 0 <= derive_seed(0) < 2**63


def test_ema_average_follows_the_warmed_up_decay() -> None:
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.BatchNorm1d(4))
    ema = ema_average(net, 0.9)
    expected = {k: v.clone() for k, v in net.state_dict().items()}
    for n in range(30):
        with torch.no_grad():
            for p in net.parameters():
                p.add_(torch.randn_like(p))
        net(torch.randn(8, 3))  # moves the batch-norm statistics and counter
        d = min(0.9, (1 + n) / (10 + n))
        for k, v in net.state_dict().items():
            if n == 0 or not v.is_floating_point():
                expected[k] = v.clone()
            else:
                expected[k] = d * expected[k] + (1 - d) * v
        ema.update_parameters(net)
    got = ema.module.state_dict()
    assert got.keys() == expected.keys()
    for k in expected:
        torch.testing.assert_close(got[k], expected[k], msg=k)
    assert got["1.num_batches_tracked"] == 30 and not ema.module.training
    assert not any(p.requires_grad for p in ema.parameters())
    with pytest.raises(ValueError, match="decay must be in"):
        ema_average(net, 1.0)


def _net() -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(5, 16), torch.nn.ReLU(), torch.nn.Linear(16, 3))


def _ema_fit(tmp_path: Path, ema: float | None) -> tuple[torch.nn.Module, list[dict[str, Any]]]:
    model = _net()
    g = torch.Generator().manual_seed(1)
    x, vx = torch.randn(96, 5, generator=g), torch.randn(64, 5, generator=g)
    y, vy = x[:, :3].argmax(1), vx[:, :3].argmax(1)

    def loss(m: torch.nn.Module, batch: tuple[torch.Tensor, ...]) -> torch.Tensor:
        return F.cross_entropy(m(batch[0]), batch[1])

    def validate(m: torch.nn.Module) -> dict[str, float]:
        return {"val_loss": float(F.cross_entropy(m(vx), vy))}

    tmp_path.mkdir(exist_ok=True)
    ctx = RunContext(run_dir=tmp_path, config=None, progress=False)
    fit(model, loss, TensorBatches((x, y), 16, seed=0), ctx=ctx, validate=validate,
        config=TrainConfig(epochs=4, lr=0.05, ema_decay=ema))
    lines = [json.loads(s) for s in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    return model, [r for r in lines if r.get("split") == "val"]


def test_fit_with_ema_validates_the_average_and_trains_as_without(tmp_path: Path) -> None:
    _, plain_val = _ema_fit(tmp_path / "plain", None)
    avg, avg_val = _ema_fit(tmp_path / "ema", 0.8)
    # the average observes: the live model trains and validates exactly as without it
    assert [r["live_val_loss"] for r in avg_val] == [r["val_loss"] for r in plain_val]
    live = load_checkpoint(tmp_path / "ema" / "checkpoints" / "model" / "last.pt")
    ref = load_checkpoint(tmp_path / "plain" / "checkpoints" / "model" / "last.pt")
    for k, v in ref["model"].items():
        assert torch.equal(live["model"][k], v), k
    # ... while validation, the best checkpoint and the returned model are the average's
    assert [r["val_loss"] for r in avg_val] != [r["val_loss"] for r in plain_val]
    best = load_checkpoint(tmp_path / "ema" / "checkpoints" / "model" / "best.pt")
    assert best["val_loss"] == min(r["val_loss"] for r in avg_val)
    for k, v in avg.state_dict().items():
        assert torch.equal(best["model"][k], v), k
    # the last checkpoint carries the average for --resume: one update per step
    assert int(live["ema"]["n_averaged"]) == live["state"]["step"] == 24


def test_fit_refuses_to_resume_a_checkpoint_without_its_average(tmp_path: Path) -> None:
    _ema_fit(tmp_path, None)
    model = _net()
    data = TensorBatches((torch.randn(32, 5), torch.zeros(32, dtype=torch.long)), 16)
    ctx = RunContext(run_dir=tmp_path, config=None, progress=False, resume=True)
    with pytest.raises(ValueError, match="no weight average"):
        fit(model, lambda m, b: m(b[0]).sum(), data, ctx=ctx,
            config=TrainConfig(epochs=1, ema_decay=0.9))
