"""Tests of the mnist-sparse collision resolution (re-growing colliding tuples), the dense-weight
gradient scores and the coalesced training contraction."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from hypersparse.experiments.mnist_sparse import (
    FanInSparseLayer,
    MnistSparseConfig,
    build_sparse,
    resolve_collisions,
    sparse_nonzeros,
    weight_gradients,
)
from hypersparse.nn import SparseLayer


def _rounded(layer: FanInSparseLayer) -> torch.Tensor:
    """(K, R') rounded input coordinates of the tuples (the eval positions)."""
    means, _, _ = layer.tuples(torch.zeros((1,) + layer.in_shape))
    return means[:, len(layer.out_shape):].round().long()


@pytest.mark.parametrize("context", [0, 2])
@pytest.mark.parametrize("frozen", [False, True])
def test_coalesced_contraction_equals_sparse(context: int, frozen: bool) -> None:
    layer = FanInSparseLayer((7, 6), 5, 4, sigma_scale=0.3, local_samples=3, bias=True,
                             context=context, dtype=torch.float64)
    layer.freeze_connectivity(frozen)
    with torch.no_grad():
        layer.bias.normal_()
    x = torch.rand(3, 7, 6, dtype=torch.float64)
    conn = layer.connections(x)
    outs = []
    for mode in ("sparse", "coalesce", "dense"):
        layer.contract = mode
        layer.zero_grad()
        y = layer.apply_connections(x, conn)
        y.pow(2).sum().backward(retain_graph=True)
        grads = [p.grad.clone() for p in (layer.values, layer.raw_means) if p.grad is not None]
        outs.append((y.detach(), *grads))
    assert len(outs[0]) == (2 if frozen else 3)
    for other in outs[1:]:
        for a, b in zip(outs[0], other):
            torch.testing.assert_close(a, b)


def test_bad_contract_raises() -> None:
    layer = FanInSparseLayer((4, 4), 2, 2)
    layer.contract = "csr"
    with pytest.raises(ValueError, match="contract"):
        layer(torch.rand(2, 4, 4))


def test_resolve_collisions_moves_to_best_scored_free_positions() -> None:
    # unit 0: tuples 0, 1 and 2 round to (1, 1); unit 1: no collision
    means = torch.tensor([[1.0, 1.0], [1.2, 0.9], [0.8, 1.1], [3.0, 0.0],
                          [0.0, 0.0], [2.0, 2.0], [3.0, 3.0], [1.0, 3.0]])
    layer = FanInSparseLayer((4, 4), 2, 4, init_means=means, dtype=torch.float64)
    x = torch.rand(5, 4, 4, dtype=torch.float64)
    layer.eval()
    y0 = layer(x)
    v0 = layer.values.detach().clone()
    scores = torch.zeros(2, 16, dtype=torch.float64)
    scores[0, 5] = 9.0  # (1, 1): occupied, must be skipped
    scores[0, 14] = 3.0  # (3, 2)
    scores[0, 7] = 2.0  # (1, 3)
    scores[0, 12] = 5.0  # (3, 0): occupied by tuple 3
    scores[1, 1] = 7.0  # unit 1 has no collision: nothing moves there
    assert resolve_collisions(layer, scores) == 2
    torch.testing.assert_close(layer(x), y0)  # the eval function is unchanged
    pos = _rounded(layer)
    assert pos[1].tolist() == [3, 2] and pos[2].tolist() == [1, 3]
    assert pos[0].tolist() == [1, 1] and pos[3].tolist() == [3, 0]
    torch.testing.assert_close(_rounded(layer)[4:], means[4:].long())
    v = layer.values.detach()
    torch.testing.assert_close(v[0], v0[0] + v0[1] + v0[2])
    assert v[1] == 0 and v[2] == 0
    torch.testing.assert_close(v[3:], v0[3:])
    assert sparse_nonzeros([layer]) == layer.k
    assert resolve_collisions(layer, scores) == 0  # idempotent


def test_nearest_default_scores() -> None:
    means = torch.tensor([[5.0, 5.0], [5.1, 4.9]])
    layer = FanInSparseLayer((12, 12), 1, 2, init_means=means)
    assert resolve_collisions(layer) == 1
    moved = _rounded(layer)[1]
    assert (moved - torch.tensor([5, 5])).abs().max() == 1  # a free neighbour of (5, 5)


@settings(max_examples=25, deadline=None)
@given(n=st.integers(1, 12), units=st.integers(1, 4), fan=st.integers(1, 8),
       seed=st.integers(0, 1000), use_scores=st.booleans())
def test_resolve_collisions_property(n: int, units: int, fan: int, seed: int,
                                     use_scores: bool) -> None:
    g = torch.Generator().manual_seed(seed)
    means = torch.randint(0, n, (units * fan, 1), generator=g).double()  # many collisions
    layer = FanInSparseLayer(n, units, fan, init_means=means, bias=True, dtype=torch.float64)
    x = torch.rand(3, n, dtype=torch.float64)
    layer.eval()
    y0 = layer(x)
    distinct_before = sparse_nonzeros([layer])
    scores = torch.rand(units, n, generator=g, dtype=torch.float64) if use_scores else None
    moved = resolve_collisions(layer, scores)
    torch.testing.assert_close(layer(x), y0)
    # every unit now reads min(fan, n) distinct positions
    assert sparse_nonzeros([layer]) == units * min(fan, n)
    assert moved == units * min(fan, n) - distinct_before


def test_resolve_collisions_bad_input() -> None:
    layer = FanInSparseLayer((4, 4), 2, 3)
    with pytest.raises(ValueError, match="scores"):
        resolve_collisions(layer, torch.zeros(2, 15))
    with pytest.raises(ValueError, match="finite"):
        resolve_collisions(layer, torch.full((2, 16), float("-inf")))
    with pytest.raises(TypeError, match="FanInSparseLayer"):
        resolve_collisions(SparseLayer(4, 4, 3), None)  # type: ignore[arg-type]


def test_weight_gradients_match_dense_reference() -> None:
    torch.manual_seed(0)
    model = build_sparse(MnistSparseConfig(hidden=(6, 5), fan_in=(4, 3)), torch.ones(28, 28))
    layers = model.sparse_layers()
    for layer in layers:
        layer.freeze_connectivity()  # type: ignore[operator]
    batches = [(torch.rand(4, 1, 28, 28), torch.randint(0, 10, (4,))) for _ in range(2)]
    got = weight_gradients(model, layers, batches)
    assert model.training and all(p.grad is None for p in model.parameters())
    model.eval()
    dense = [la.to_sparse().to_dense().reshape(la.out_shape[0], -1).requires_grad_()
             for la in layers]
    for x, y in batches:
        h = model.norm(x).reshape(4, -1)  # (B, 784)
        for la, w in zip(layers, dense):
            h = torch.relu(h @ w.T + la.bias)  # (B, M)
        torch.nn.functional.cross_entropy(model.head(h), y, reduction="sum").backward()
    for g, w in zip(got, dense):
        torch.testing.assert_close(g, w.grad)


def test_smoke_run_regrow(tmp_path: object, mnist_available: bool) -> None:
    import json
    from pathlib import Path

    from hypersparse.experiments.mnist_sparse import MnistSparse
    from hypersparse.run import RunContext, run_experiment

    out = Path(str(tmp_path)) / "r"
    overrides = ["train.max_steps=3", "train.batch_size=16", "hidden=12,6", "fan_in=8,3",
                 "finetune_epochs=1", "regrow=gradient", "regrow_batches=2", "baselines=false",
                 "adaptive=true", "adaptive_fan_in=2", "adaptive_finetune_epochs=0"]
    run_experiment("mnist-sparse", overrides, out=out, progress=False)
    summary = json.loads((out / "summary.json").read_text())
    # every tuple of the fine-tuned model reads its own position: non-zeros == tuples
    assert summary["nonzeros"] == summary["sparse_tuples"] == 12 * 8 + 6 * 3
    assert summary["sparse_tuples_moved"] >= 0 and "adaptive_test_accuracy" in summary
    assert (out / "checkpoints" / "adaptive" / "best.pt").exists()
    assert not (out / "checkpoints" / "adaptive-finetune").exists()
    from hypersparse.config import apply_overrides

    cfg = apply_overrides(MnistSparseConfig(), [o.split("=", 1) for o in overrides])
    again = MnistSparse().evaluate(cfg, RunContext(run_dir=out, config=cfg))
    assert again["nonzeros"] == summary["nonzeros"]
    assert again["adaptive_test_accuracy"] == summary["adaptive_test_accuracy"]


def test_resolve_collisions_needs_values() -> None:
    layer = FanInSparseLayer((4, 4), 2, 3, learn_values=False)
    with pytest.raises(ValueError, match="learn_values"):
        resolve_collisions(layer)
