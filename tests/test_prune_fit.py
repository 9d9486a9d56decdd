"""Gradual pruning inside the training loop: sparsity reached, checkpoints, bit-exact resume."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from hypersparse.compress import prune
from hypersparse.io import load_checkpoint
from hypersparse.run import RunContext
from hypersparse.train import TensorBatches, TrainConfig, fit


def _setup(seed: int = 0) -> tuple[nn.Module, prune.GradualPruning, TensorBatches]:
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(10, 32), nn.ReLU(), nn.Linear(32, 4))
    cb = prune.GradualPruning(model, final_sparsity=0.8, begin_step=2, end_step=16, frequency=2)
    g = torch.Generator().manual_seed(1)
    x = torch.randn(256, 10, generator=g)
    y = (x[:, :4].argmax(1)).long()
    return model, cb, TensorBatches((x, y), batch_size=32, seed=0)


def _loss(model: nn.Module, batch: tuple[torch.Tensor, ...]) -> torch.Tensor:
    return F.cross_entropy(model(batch[0]), batch[1])


class _Interrupt:
    def __init__(self, at: int) -> None:
        self.at = at

    def __call__(self, step: int, model: nn.Module, metrics: dict[str, float]) -> bool:
        if step == self.at:
            raise KeyboardInterrupt
        return False


def test_gradual_pruning_in_fit_resumes_bit_exactly(tmp_path: Path) -> None:
    config = TrainConfig(max_steps=20, batch_size=32, lr=1e-2, checkpoint_every=4, log_every=5)
    model, cb, data = _setup()
    fit(model, _loss, data, config=config, callbacks=[cb],
        ctx=RunContext(run_dir=tmp_path / "a", config=None, progress=False))
    assert prune.sparsity(model) == pytest.approx(0.8, abs=0.01)
    for m in (model[0], model[2]):
        assert bool((m.weight[~m.weight_mask] == 0).all())

    model_b, cb_b, data_b = _setup()
    with pytest.raises(KeyboardInterrupt):
        fit(model_b, _loss, data_b, config=config, callbacks=[cb_b, _Interrupt(11)],
            ctx=RunContext(run_dir=tmp_path / "b", config=None, progress=False))
    # a fresh process: new model, the same callback (attaches masks), --resume
    model_c, cb_c, data_c = _setup(seed=123)
    fit(model_c, _loss, data_c, config=config, callbacks=[cb_c],
        ctx=RunContext(run_dir=tmp_path / "b", config=None, progress=False, resume=True))
    for (k, a), (k2, c) in zip(model.state_dict().items(), model_c.state_dict().items()):
        assert k == k2 and torch.equal(a, c), k
    # the checkpoint holds the compact form and is smaller than the model's dense weights
    ckpt = load_checkpoint(tmp_path / "a" / "checkpoints" / "model" / "last.pt")
    sd = ckpt["model"]
    assert sd["0.weight_mask"].dtype == torch.uint8 and sd["0.weight"].dim() == 1
