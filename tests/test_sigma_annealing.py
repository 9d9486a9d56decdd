"""Shared, annealed deviations: ``sigma_gain``, ``SparseLayer(learn_sigmas=False)``,
``SigmaAnnealing`` and the identity experiment's ``anneal`` schedule."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from hypersparse.nn import HyperLayer, SigmaAnnealing, SparseLayer, set_sigma_gain


def test_fixed_sigmas_are_a_buffer_and_equal() -> None:
    layer = SparseLayer(8, 6, k=5, learn_sigmas=False, sigma_scale=0.1)
    names = {n for n, _ in layer.named_parameters()}
    assert "raw_sigmas" not in names and "raw_means" in names
    assert "raw_sigmas" in dict(layer.named_buffers())
    _, sigmas, _ = layer.tuples(torch.zeros(1, 8))
    expected = torch.tensor([6.0, 8.0]) * 0.1 * math.log1p(math.exp(2.0))
    torch.testing.assert_close(sigmas, expected.expand(5, 2))
    assert "learn_sigmas=False" in repr(layer)
    y = layer(torch.randn(3, 8))
    y.sum().backward()
    assert layer.raw_means.grad is not None and layer.raw_sigmas.grad is None


def test_sigma_gain_scales_every_deviation_and_round_trips() -> None:
    torch.manual_seed(0)
    layer = SparseLayer(10, 10, k=4)
    _, before, _ = layer.tuples(torch.zeros(1, 10))
    set_sigma_gain(layer, 0.25)
    _, after, _ = layer.tuples(torch.zeros(1, 10))
    torch.testing.assert_close(after, before * 0.25)
    other = SparseLayer(10, 10, k=4)
    other.load_state_dict(layer.state_dict())
    assert float(other.sigma_gain) == 0.25


def test_set_sigma_gain_reaches_nested_layers_only() -> None:
    model = torch.nn.Sequential(SparseLayer(4, 4, k=2), torch.nn.ReLU(), SparseLayer(4, 3, k=2))
    set_sigma_gain(model, 0.5)
    gains = [float(m.sigma_gain) for m in model.modules() if isinstance(m, HyperLayer)]
    assert gains == [0.5, 0.5]
    for bad in (0.0, -1.0, float("nan"), float("inf")):
        with pytest.raises(ValueError, match="gain"):
            set_sigma_gain(model, bad)


def test_annealing_schedule_is_geometric_then_held() -> None:
    sched = SigmaAnnealing(steps=100, end=0.01, start=1.0)
    assert sched.gain(0) == pytest.approx(1.0)
    assert sched.gain(50) == pytest.approx(0.1)
    assert sched.gain(100) == pytest.approx(0.01)
    assert sched.gain(1000) == pytest.approx(0.01)
    layer = SparseLayer(4, 4, k=2)
    assert sched(25, layer, {}) is False  # never asks the loop to stop
    assert float(layer.sigma_gain) == pytest.approx(0.01 ** 0.25)
    # increasing schedules are allowed (start < end)
    assert SigmaAnnealing(steps=10, end=2.0, start=0.5).gain(10) == pytest.approx(2.0)


@pytest.mark.parametrize("kwargs", [{"steps": 0, "end": 0.1}, {"steps": 1.5, "end": 0.1},
                                    {"steps": 10, "end": 0.0}, {"steps": 10, "end": 0.1,
                                                                "start": float("nan")}])
def test_annealing_bad_arguments(kwargs: dict) -> None:
    with pytest.raises(ValueError):
        SigmaAnnealing(**kwargs)


def test_identity_anneal_smoke(tmp_path: Path) -> None:
    from hypersparse.run import run_experiment

    run_dir = run_experiment(
        "identity", ["n=8", "sigma_schedule=anneal", "anneal_steps=4", "sigma_end=0.4",
                     "train.max_steps=6", "check_every=1"], out=tmp_path / "r", progress=False)
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["sigma_schedule"] == "anneal" and summary["n"] == 8
    state = torch.load(run_dir / "checkpoints/model/last.pt", weights_only=True)
    gain = state["model"]["sigma_gain"] if "model" in state else state["sigma_gain"]
    # after the schedule the shared deviation is sigma_end index units
    assert float(gain) * 0.1 * 8 == pytest.approx(0.4, rel=1e-5)


def test_identity_rejects_unknown_schedule(tmp_path: Path) -> None:
    from hypersparse.run import run_experiment

    with pytest.raises(ValueError, match="sigma_schedule"):
        run_experiment("identity", ["n=8", "sigma_schedule=cosine", "train.max_steps=2"],
                       out=tmp_path / "r", progress=False)


def test_checkpoint_without_sigma_gain_loads_with_gain_one() -> None:
    layer = SparseLayer(6, 6, k=3)
    old = {k: v for k, v in layer.state_dict().items() if k != "sigma_gain"}
    other = SparseLayer(6, 6, k=3)
    set_sigma_gain(other, 0.2)
    other.load_state_dict(old)  # strict: a pre-sigma_gain checkpoint
    assert float(other.sigma_gain) == 1.0
    torch.testing.assert_close(other.raw_means, layer.raw_means)


def test_annealing_start_applied_by_calling_at_step_zero() -> None:
    layer = SparseLayer(4, 4, k=2)
    sched = SigmaAnnealing(steps=10, end=1.0, start=4.0)
    sched(0, layer)
    assert float(layer.sigma_gain) == pytest.approx(4.0)


def test_identity_anneal_rejects_min_sigma(tmp_path: Path) -> None:
    from hypersparse.run import run_experiment

    with pytest.raises(ValueError, match="min_sigma"):
        run_experiment("identity", ["n=8", "sigma_schedule=anneal", "min_sigma=0.1",
                                    "train.max_steps=2"], out=tmp_path / "r", progress=False)
