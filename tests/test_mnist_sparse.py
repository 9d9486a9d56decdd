"""Tests of the mnist-sparse experiment: fan-in sparse layers (per-unit contexts equal the
layer-wide normalisation), the adaptive variant, the exported non-zeros, and a smoke run."""

from __future__ import annotations

import io
import json

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from hypersparse.experiments.mnist_sparse import (
    AdaptiveFanInLayer,
    FanInSparseLayer,
    MnistSparseConfig,
    ShiftedBatches,
    SparseClassifier,
    _SigmaAnneal,
    build_sparse,
    cnn,
    sparse_nonzeros,
)
from hypersparse.nn import HyperLayer
from hypersparse.train import TensorBatches


def dense_from(layer: HyperLayer, conn: object) -> torch.Tensor:
    """The dense (out_shape + in_shape) weight tensor of shared connections (naive reference)."""
    idx, w = conn.indices, conn.weights  # type: ignore[attr-defined]
    dense = torch.zeros(layer.sizes, dtype=torch.float64)
    dense.index_put_(tuple(idx.T), w.double(), accumulate=True)
    return dense


# ----------------------------------------------------------------------------- fan-in layer


@settings(max_examples=25, deadline=None)
@given(rows=st.integers(2, 7), cols=st.integers(1, 6), units=st.integers(1, 5),
       fan=st.integers(1, 6), g=st.integers(0, 3), loc=st.integers(0, 3),
       rank2=st.booleans(), seed=st.integers(0, 1000))
def test_per_unit_contexts_equal_layer_wide(rows: int, cols: int, units: int, fan: int, g: int,
                                            loc: int, rank2: bool, seed: int) -> None:
    in_shape = (rows, cols) if rank2 else (rows * cols,)
    layer = FanInSparseLayer(in_shape, units, fan, sigma_scale=0.2, global_samples=g,
                             local_samples=loc, region=1, normalisation="exact",
                             dtype=torch.float64)
    x = torch.rand((3, *in_shape), dtype=torch.float64)
    ours = layer.connections(x, generator=torch.Generator().manual_seed(seed))
    ref = HyperLayer.connections(layer, x, generator=torch.Generator().manual_seed(seed))
    assert ours.batch is None
    torch.testing.assert_close(dense_from(layer, ours), dense_from(layer, ref))
    # every output coordinate is its tuple's unit
    assert ((ours.indices[:, 0] >= 0) & (ours.indices[:, 0] < units)).all()


@pytest.mark.parametrize("context", [0, 1, 2, 4])
def test_each_unit_distributes_exactly_its_values(context: int) -> None:
    layer = FanInSparseLayer((6, 5), 3, 4, context=context, sigma_scale=0.3, local_samples=3,
                             dtype=torch.float64)
    conn = layer.connections(torch.rand(2, 6, 5, dtype=torch.float64))
    per_unit = torch.zeros(3, dtype=torch.float64).index_add_(0, conn.indices[:, 0],
                                                              conn.weights)
    torch.testing.assert_close(per_unit, layer.values.detach().view(3, 4).sum(1))


def test_gradcheck_float64() -> None:
    layer = FanInSparseLayer((4, 5), 3, 2, sigma_scale=0.3, global_samples=1, local_samples=2,
                             bias=True, dtype=torch.float64)
    x = torch.rand(2, 4, 5, dtype=torch.float64, requires_grad=True)

    def f(x: torch.Tensor, raw_means: torch.Tensor, raw_sigmas: torch.Tensor,
          values: torch.Tensor) -> torch.Tensor:
        g = torch.Generator().manual_seed(3)  # the same sampled points at every evaluation
        conn = _connections_with(layer, x, raw_means, raw_sigmas, values, g)
        return layer.apply_connections(x, conn)  # type: ignore[arg-type]

    params = (layer.raw_means.detach().clone().requires_grad_(),
              layer.raw_sigmas.detach().clone().requires_grad_(),
              layer.values.detach().clone().requires_grad_())
    assert torch.autograd.gradcheck(f, (x, *params))


def _connections_with(layer: FanInSparseLayer, x: torch.Tensor, raw_means: torch.Tensor,
                      raw_sigmas: torch.Tensor, values: torch.Tensor,
                      g: torch.Generator) -> object:
    """``layer.connections`` with the parameters replaced by differentiable inputs."""
    saved = layer.raw_means, layer.raw_sigmas, layer.values
    try:
        del layer.raw_means, layer.raw_sigmas, layer.values
        layer.raw_means, layer.raw_sigmas, layer.values = raw_means, raw_sigmas, values
        return layer.connections(x, generator=g)
    finally:
        del layer.raw_means, layer.raw_sigmas, layer.values
        layer.raw_means, layer.raw_sigmas, layer.values = saved


def test_dense_scratch_contraction_equals_sparse() -> None:
    layer = FanInSparseLayer((7, 6), 5, 4, sigma_scale=0.3, local_samples=3, bias=True,
                             dtype=torch.float64)
    with torch.no_grad():
        layer.bias.normal_()
    x = torch.rand(3, 7, 6, dtype=torch.float64)
    conn = layer.connections(x)
    grads = []
    for mode in ("sparse", "dense"):
        layer.contract = mode
        layer.zero_grad()
        y = layer.apply_connections(x, conn)
        y.pow(2).sum().backward(retain_graph=True)
        grads.append((y.detach(), layer.values.grad.clone(), layer.raw_means.grad.clone()))
    for a, b in zip(*grads):
        torch.testing.assert_close(a, b)


def test_eval_matches_dense_reference_and_nonzeros() -> None:
    torch.manual_seed(1)
    layer = FanInSparseLayer((28, 28), 7, 5, bias=True)
    layer.eval()
    w = layer.to_sparse()
    assert w.shape == (7, 28, 28)
    x = torch.rand(4, 28, 28)
    ref = torch.einsum("mhw,bhw->bm", w.to_dense(), x) + layer.bias
    torch.testing.assert_close(layer(x), ref)
    assert sparse_nonzeros([layer]) == w._nnz() == int((w.to_dense() != 0).sum())
    assert w._nnz() <= layer.k


def test_coinciding_tuples_add_up_and_count_once() -> None:
    means = torch.tensor([[3.0, 3.0], [3.2, 2.9], [10.0, 1.0]])  # first two round alike
    layer = FanInSparseLayer((28, 28), 1, 3, init_means=means)
    assert sparse_nonzeros([layer]) == 2
    dense = layer.to_sparse().to_dense()
    v = layer.values.detach()
    torch.testing.assert_close(dense[0, 3, 3], v[0] + v[1])


def test_frozen_training_uses_eval_connections() -> None:
    layer = FanInSparseLayer((6, 6), 4, 3, sigma_scale=0.3)
    x = torch.rand(5, 6, 6)
    layer.eval()
    y_eval = layer(x)
    layer.train()
    assert not torch.allclose(layer(x), y_eval)
    layer.freeze_connectivity()
    y = layer(x)
    torch.testing.assert_close(y, y_eval)
    y.sum().backward()
    assert layer.values.grad is not None and layer.raw_means.grad is None


def test_sigma_factor_state_and_anneal() -> None:
    model = build_sparse(MnistSparseConfig(hidden=(6, 4), fan_in=(3, 2)), torch.ones(28, 28))
    anneal = _SigmaAnneal(0.25, total=10)
    anneal(10, model, {})
    first = model.layers[0]
    assert float(first.sigma_factor) == pytest.approx(0.25)
    _, s_small, _ = first.tuples(torch.zeros(1, 28, 28))
    first.sigma_factor.fill_(1.0)
    _, s_full, _ = first.tuples(torch.zeros(1, 28, 28))
    torch.testing.assert_close(s_small, 0.25 * s_full)
    first.sigma_factor.fill_(0.5)
    buf = io.BytesIO()
    torch.save(model.state_dict(), buf)
    other = build_sparse(MnistSparseConfig(hidden=(6, 4), fan_in=(3, 2)), torch.ones(28, 28),
                         generator=torch.Generator().manual_seed(9))
    buf.seek(0)
    other.load_state_dict(torch.load(buf))
    model.eval()
    other.eval()
    x = torch.rand(3, 1, 28, 28)
    torch.testing.assert_close(model(x), other(x))
    assert float(other.layers[0].sigma_factor) == 0.5


def test_empty_batch_and_k1() -> None:
    layer = FanInSparseLayer((5, 5), 1, 1)
    assert layer(torch.zeros(0, 5, 5)).shape == (0, 1)
    layer.eval()
    assert layer(torch.zeros(0, 5, 5)).shape == (0, 1)
    assert sparse_nonzeros([layer]) == 1


def test_bad_arguments() -> None:
    with pytest.raises(ValueError, match="fan_in"):
        FanInSparseLayer(10, 3, 0)
    with pytest.raises(ValueError, match="context"):
        FanInSparseLayer(10, 3, 4, context=3)
    with pytest.raises(ValueError, match="template"):
        FanInSparseLayer(10, 3, 2, template=torch.zeros(6, 2))
    with pytest.raises(ValueError, match="init_means"):
        FanInSparseLayer(10, 3, 2, init_means=torch.zeros(5, 1))
    with pytest.raises(ValueError, match="input"):
        FanInSparseLayer((4, 4), 3, 2)(torch.zeros(2, 16))
    with pytest.raises(ValueError, match="one entry per hidden layer"):
        build_sparse(MnistSparseConfig(hidden=(10, 5), fan_in=(3,)), torch.ones(28, 28))
    with pytest.raises(ValueError, match="pool"):
        AdaptiveFanInLayer((28, 28), 4, 2, pool=5)
    with pytest.raises(ValueError, match="2-d"):
        AdaptiveFanInLayer((28,), 4, 2)


# ----------------------------------------------------------------------------- adaptive


def test_adaptive_layer_starts_as_free_layer_and_adapts() -> None:
    torch.manual_seed(0)
    means = torch.rand(4 * 3, 2) * 27
    free = FanInSparseLayer((28, 28), 4, 3, init_means=means)
    torch.manual_seed(0)
    ad = AdaptiveFanInLayer((28, 28), 4, 3, init_means=means)
    with torch.no_grad():
        ad.values.copy_(free.values)
    x = torch.rand(5, 28, 28)
    free.eval()
    ad.eval()
    torch.testing.assert_close(ad(x), free(x))
    w = ad.to_sparse(x)
    assert w.shape == (5, 4, 28, 28)
    # a non-zero hypernetwork output moves receptive fields per instance
    with torch.no_grad():
        ad.net[-1].bias.normal_(0, 3.0)
        ad.net[-1].weight.normal_(0, 3.0)
    w = ad.to_sparse(x).to_dense()
    assert not torch.equal(w[0], w[1])
    ad.train()
    conn = ad.connections(x)
    assert conn.batch is not None and conn.batch.max() == 4
    y = ad(x)
    y.sum().backward()
    assert ad.raw_means.grad is not None and ad.net[0].weight.grad is not None


# ----------------------------------------------------------------------------- data and models


def test_shifted_batches_translate_deterministically() -> None:
    x = torch.zeros(8, 1, 28, 28)
    x[:, 0, 14, 14] = 1.0
    src = ShiftedBatches(TensorBatches((x, torch.zeros(8, dtype=torch.long)), 8, seed=0), 2, 0)
    a, _ = src.batch(0, 0)
    b, _ = src.batch(0, 0)
    assert torch.equal(a, b) and a.shape == (8, 1, 28, 28)
    assert (a.sum((1, 2, 3)) == 1).all()
    pos = a[:, 0].flatten(1).argmax(1)
    r, c = pos // 28, pos % 28
    assert ((r - 14).abs() <= 2).all() and ((c - 14).abs() <= 2).all()
    assert len(set(zip(r.tolist(), c.tolist()))) > 1
    none = ShiftedBatches(src.inner, 0, 0)
    assert torch.equal(none.batch(0, 0)[0], src.inner.batch(0, 0)[0])


def test_cnn_hidden_shapes() -> None:
    net = cnn((3, 4))
    x = torch.zeros(2, 1, 28, 28)
    assert net[:2](x).shape == (2, 3, 10, 10)
    assert net[:4](x).shape == (2, 4, 5, 5)
    assert net(x).shape == (2, 10)


def test_sparse_head_counts_in_nonzeros() -> None:
    cfg = MnistSparseConfig(hidden=(8, 6), fan_in=(3, 2), sparse_head=True)
    model = build_sparse(cfg, torch.ones(28, 28))
    assert isinstance(model, SparseClassifier) and len(model.sparse_layers()) == 3
    model.eval()
    total = sum(int(lay.to_sparse()._nnz()) for lay in model.sparse_layers())
    assert sparse_nonzeros(model.sparse_layers()) == total
    assert model(torch.rand(2, 1, 28, 28)).shape == (2, 10)


# ----------------------------------------------------------------------------- smoke run


@pytest.mark.slow  # loading the digit split alone takes ~50 s on a loaded machine
def test_smoke_run(tmp_path: object, mnist_available: bool) -> None:
    from pathlib import Path

    from hypersparse.experiments.mnist_sparse import MnistSparse
    from hypersparse.run import RunContext, run_experiment

    out = Path(str(tmp_path)) / "r"
    overrides = ["train.max_steps=3", "train.batch_size=16", "hidden=12,6", "fan_in=4,2",
                 "finetune_epochs=1", "adaptive=true", "adaptive_fan_in=2", "sigma_final=0.5",
                 "augment_shift=1"]
    run_experiment("mnist-sparse", overrides, out=out, progress=False)
    summary = json.loads((out / "summary.json").read_text())
    for key in ("test_accuracy", "nonzeros", "dense_mlp_accuracy", "dense_mlp_params",
                "cnn_accuracy", "adaptive_test_accuracy", "adaptive_nonzeros"):
        assert key in summary, key
    assert (out / "connectivity.png").stat().st_size > 0
    for stage in ("sparse", "sparse-finetune", "adaptive", "adaptive-finetune", "mlp", "cnn"):
        assert (out / "checkpoints" / stage / "best.pt").exists(), stage
    assert summary["dense_mlp_params"] == 784 * 12 + 12 + 12 * 6 + 6 + 6 * 10 + 10

    # nonzeros equals the non-zeros of the exported to_sparse() tensors of the best model
    from hypersparse.config import apply_overrides

    cfg = apply_overrides(MnistSparseConfig(), [o.split("=", 1) for o in overrides])
    ctx = RunContext(run_dir=out, config=cfg)
    model = build_sparse(cfg, torch.ones(28, 28))
    ctx.load_best(model, "sparse-finetune")
    model.eval()
    nnz = sum(int(layer.to_sparse()._nnz()) for layer in model.sparse_layers())
    assert summary["nonzeros"] == nnz
    again = MnistSparse().evaluate(cfg, ctx)
    assert again["nonzeros"] == nnz and again["test_accuracy"] == summary["test_accuracy"]
