"""Tests for ``learn-dilation --set task=mnist``: the learned-dilation classifier and its
fixed-dilation twin (issue 7)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from hypersparse.experiments.learn_dilation import (
    LearnDilation,
    LearnDilationConfig,
    _copy_weights,
    _dilations,
    dilation_cnn,
)
from hypersparse.nn import DilatedConv2d
from hypersparse.run import RunContext, evaluate_run, run_experiment


def _pair(channels: tuple[int, ...], size: int, k: int = 3,
          dilation: float = 1.0) -> tuple[nn.Sequential, nn.Sequential]:
    learned = dilation_cnn(channels, size, k, dilation=dilation, max_dilation=3.0).double()
    fixed = dilation_cnn(channels, size, k, learned=False).double()
    with torch.no_grad():  # non-zero biases, so that copying them is checked too
        for m in learned.modules():
            if isinstance(m, DilatedConv2d) and m.conv_bias is not None:
                m.conv_bias.normal_()
    _copy_weights(learned, fixed)
    return learned.eval(), fixed.eval()


@settings(max_examples=25, deadline=None)
@given(channels=st.lists(st.integers(1, 3), min_size=1, max_size=2).map(tuple),
       size=st.integers(4, 9), k=st.sampled_from([1, 3, 5]), batch=st.integers(0, 3))
def test_conv2d_baseline_is_the_learned_net_at_dilation_one(channels: tuple[int, ...],
                                                            size: int, k: int,
                                                            batch: int) -> None:
    learned, fixed = _pair(channels, size, k)
    x = torch.rand(batch, 1, size, size, dtype=torch.float64)
    with torch.no_grad():
        torch.testing.assert_close(learned(x), fixed(x))
    assert _dilations(learned) == [1.0] * len(channels)


def test_conv2d_baseline_differs_at_dilation_two() -> None:
    learned, fixed = _pair((3, 4), 12, dilation=2.0)
    x = torch.rand(4, 1, 12, 12, dtype=torch.float64)
    with torch.no_grad():
        assert (learned(x) - fixed(x)).abs().max() > 1e-3


def test_dilation_cnn_shapes_and_parameters() -> None:
    net = dilation_cnn((4, 8), 16)
    convs = [m for m in net.modules() if isinstance(m, DilatedConv2d)]
    assert [c.height for c in convs] == [16, 8] and [c.in_channels for c in convs] == [1, 4]
    assert net.eval()(torch.rand(2, 1, 16, 16)).shape == (2, 10)
    fixed = dilation_cnn((4, 8), 16, learned=False)
    n = sum(p.numel() for p in net.parameters())
    assert n == sum(p.numel() for p in fixed.parameters()) + 2  # one dilation per conv layer
    odd = dilation_cnn((2,), 7, learned=False)  # floor pooling: 7 -> 3
    assert odd(torch.rand(1, 1, 7, 7)).shape == (1, 10)


def test_networks_start_equal_and_frozen_baseline_does_not_learn(tmp_path: Path) -> None:
    exp = LearnDilation()
    for baseline in ("conv2d", "frozen"):
        config = LearnDilationConfig(task="mnist", size=8, conv_channels=(2, 3),
                                     baseline=baseline, init_dilation=1.0)
        ctx = RunContext(run_dir=tmp_path, config=config)
        learned, fixed = exp._networks(config, ctx)
        learned.eval()
        fixed.eval()
        x = torch.rand(3, 1, 8, 8)
        with torch.no_grad():
            torch.testing.assert_close(learned(x), fixed(x))
        if baseline == "frozen":
            dil = [m.dilation for m in fixed.modules() if isinstance(m, DilatedConv2d)]
            assert len(dil) == 2 and all(not d.requires_grad and float(d) == 1.0 for d in dil)
            fixed.train()
            fixed(x).square().sum().backward()
            assert all(d.grad is None for d in dil)


def test_learned_dilation_gets_a_gradient() -> None:
    net = dilation_cnn((2,), 8, sigma=0.5)
    x = torch.rand(4, 1, 8, 8)
    nn.functional.cross_entropy(net(x), torch.tensor([0, 1, 2, 3])).backward()
    conv = net[0]
    assert isinstance(conv, DilatedConv2d)
    assert conv.dilation.grad is not None and float(conv.dilation.grad.abs()) > 0


@pytest.mark.parametrize("overrides, match", [
    (["conv_channels=0,2"], "conv_channels"),
    (["size=3"], "size"),
    (["init_dilation=6"], "init_dilation"),
    (["eval_batch=0"], "eval_batch"),
])
def test_bad_mnist_config_raises(tmp_path: Path, overrides: list[str], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        run_experiment("learn-dilation", ["task=mnist", "train.max_steps=1", *overrides],
                       out=tmp_path / "r", progress=False)


def test_learn_dilation_mnist_smoke(tmp_path: Path, mnist_available: bool) -> None:
    out = run_experiment("learn-dilation", ["task=mnist", "train.max_steps=3", "size=8",
                                            "conv_channels=2,2", "train.batch_size=8",
                                            "train.val_every=2", "eval_batch=500"],
                         out=tmp_path / "r", progress=False)
    summary = json.loads((out / "summary.json").read_text())
    keys = {"test_accuracy", "fixed_test_accuracy", "learned_dilations", "val_accuracy",
            "fixed_val_accuracy", "params", "fixed_params", "train_seconds",
            "fixed_train_seconds"}
    assert keys <= set(summary)
    assert len(summary["learned_dilations"]) == 2
    assert summary["params"] == summary["fixed_params"] + 2
    assert all(0.0 <= summary[k] <= 1.0 for k in keys if "accuracy" in k)
    for name in ("dilation.png", "config.json", "metrics.jsonl", "summary.json"):
        assert (out / name).exists(), name
    for stage in ("learned", "fixed"):
        assert (out / "checkpoints" / stage / "best.pt").exists()
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert any(r.get("stage") == "learned" and "dilation_2" in r for r in rows)
    # evaluate() reloads both best checkpoints and reproduces the summary
    again = evaluate_run(out, device="cpu")
    for key in ("test_accuracy", "fixed_test_accuracy", "learned_dilations"):
        assert again[key] == summary[key], key
