"""Tests of the sorting hyperlayer (SortNet, MLPHyperLayer) and the sort-permutation experiment
(issue 6)."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from hypersparse.experiments.sort_permutation import full_batches, sort_metrics
from hypersparse.nn import HyperLayer, MLPHyperLayer, PairwiseNet, SortNet, is_permutation
from hypersparse.run import run_experiment


def dense_eval(net: SortNet, x: torch.Tensor) -> torch.Tensor:
    """Naive reference: a dense 0/1 matrix per instance from the rounded means, then bmm."""
    means, _, _ = net.tuples(x)
    idx = means.round().long().clamp(0, net.n - 1)  # (B, n, 2)
    dense = torch.zeros(x.shape[0], net.n, net.n, dtype=x.dtype)
    for b in range(x.shape[0]):
        for k in range(net.n):
            dense[b, idx[b, k, 0], idx[b, k, 1]] += 1.0
    return torch.einsum("bmn,bn->bm", dense, x)


def naive_is_permutation(rows: torch.Tensor, cols: torch.Tensor, n: int) -> list[bool]:
    return [
        sorted(r) == list(range(n)) and sorted(c) == list(range(n))
        for r, c in zip(rows.tolist(), cols.tolist())
    ]


@pytest.mark.parametrize("hypernet", ["mlp", "pairwise"])
@pytest.mark.parametrize("learn", ["output", "input", "both"])
def test_sortnet_eval_matches_dense_reference(learn: str, hypernet: str) -> None:
    torch.manual_seed(1)
    net = SortNet(5, hidden=(16,), learn=learn, hypernet=hypernet, sigma=0.5)
    with torch.no_grad():  # spread the means so rounding produces varied matrices
        [m for m in net.net.modules() if isinstance(m, torch.nn.Linear)][-1].weight.normal_(0, 2.0)
    net.eval()
    x = torch.randn(7, 5)
    with torch.no_grad():
        torch.testing.assert_close(net(x), dense_eval(net, x))
    rows, cols = net.indices(x)
    fixed = torch.arange(5).expand(7, 5)
    if learn == "output":
        assert torch.equal(cols, fixed)
    elif learn == "input":
        assert torch.equal(rows, fixed)
    assert is_permutation(rows, cols, 5).tolist() == naive_is_permutation(rows, cols, 5)


def test_sortnet_train_mode_gradients_and_shapes() -> None:
    net = SortNet(4, hidden=(8, 8), sigma=0.5)
    x = torch.randn(3, 4)
    y = net(x)
    assert y.shape == (3, 4)
    torch.nn.functional.mse_loss(y, x.sort(-1).values).backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in net.net.parameters())
    # values are fixed to 1: in training each tuple spreads total weight 1 over its samples
    conn = net.connections(x)
    per_instance = torch.zeros(3).index_add_(0, conn.batch, conn.weights)
    torch.testing.assert_close(per_instance, torch.full((3,), 4.0))


@settings(max_examples=25, deadline=None)
@given(b=st.integers(0, 4), n=st.integers(1, 8), seed=st.integers(0, 1000))
def test_pairwise_net_is_permutation_equivariant(b: int, n: int, seed: int) -> None:
    torch.manual_seed(seed)
    net = PairwiseNet(3, hidden=(8, 8), dtype=torch.float64)
    x = torch.randn(b, n, dtype=torch.float64)
    perm = torch.randperm(n)
    out = net(x).view(b, n, 3)
    out_p = net(x[:, perm]).view(b, n, 3)
    torch.testing.assert_close(out[:, perm], out_p)
    # at a tie the two elements get identical outputs
    if n >= 2 and b:
        x[:, 1] = x[:, 0]
        out = net(x).view(b, n, 3)
        torch.testing.assert_close(out[:, 0], out[:, 1])


def test_sortnet_gradcheck_float64() -> None:
    torch.manual_seed(2)
    net = SortNet(3, hidden=(8,), hypernet="pairwise", sigma=0.6, dtype=torch.float64)
    x = torch.randn(2, 3, dtype=torch.float64, requires_grad=True)

    def f(x: torch.Tensor) -> torch.Tensor:  # the same sampled points on every call
        net.generator = torch.Generator().manual_seed(0)
        return net(x)

    assert torch.autograd.gradcheck(f, (x,))


def test_fixed_sigma_is_exact_and_a_buffer() -> None:
    net = SortNet(6, hidden=(8,), sigma=0.3, sigma_scale=0.1, min_sigma=0.2)
    _, sigmas, _ = net.tuples(torch.randn(2, 6))
    torch.testing.assert_close(sigmas, torch.full((2, 6, 1), 0.3))
    net.set_sigma(0.15)
    _, sigmas, _ = net.tuples(torch.randn(2, 6))
    torch.testing.assert_close(sigmas, torch.full((2, 6, 1), 0.15))
    other = SortNet(6, hidden=(8,), sigma=1.0, sigma_scale=0.1, min_sigma=0.2)
    other.load_state_dict(net.state_dict())
    assert float(other.sigma) == pytest.approx(0.15)
    with pytest.raises(ValueError, match="sigma"):
        net.set_sigma(0.1)  # below the floor min_sigma * sigma_scale * size = 0.12
    with pytest.raises(ValueError, match="emits"):
        SortNet(3, hidden=(4,)).set_sigma(0.5)


def test_learned_sigma_uses_hypernetwork_output() -> None:
    net = SortNet(3, hidden=(4,))
    assert net.per_tuple == 2 and not net.fixed_sigma
    _, s1, _ = net.tuples(torch.randn(2, 3))
    with torch.no_grad():
        net.net[-1].bias[1::2] += 3.0  # the raw sigma slots
    _, s2, _ = net.tuples(torch.randn(2, 3))
    assert (s2 > s1).all()


def test_state_dict_round_trip_identical_outputs() -> None:
    net = SortNet(4, hidden=(8,), sigma=0.4)
    buf = io.BytesIO()
    torch.save(net.state_dict(), buf)
    other = SortNet(4, hidden=(8,), sigma=0.9)
    other.load_state_dict(torch.load(io.BytesIO(buf.getvalue())))
    x = torch.randn(5, 4)
    net.eval(), other.eval()
    assert torch.equal(net(x), other(x))
    net.train(), other.train()
    g1, g2 = torch.Generator().manual_seed(3), torch.Generator().manual_seed(3)
    c1, c2 = net.connections(x, generator=g1), other.connections(x, generator=g2)
    assert torch.equal(c1.weights, c2.weights) and torch.equal(c1.indices, c2.indices)


def test_mlp_hyperlayer_values_and_repr() -> None:
    layer = MLPHyperLayer((2, 3), 4, k=5, hidden=(), bias=True)
    # 3 learned columns (R = 1 + 2), a sigma and a value per tuple
    assert isinstance(layer, HyperLayer) and layer.per_tuple == 3 + 1 + 1
    y = layer(torch.randn(3, 2, 3))
    assert y.shape == (3, 4)
    assert "hidden=()" in repr(layer)
    assert "learn='output'" in repr(SortNet(3, hidden=(4,), sigma=0.5))


@settings(max_examples=25, deadline=None)
@given(b=st.integers(0, 5), n=st.integers(1, 7), seed=st.integers(0, 1000))
def test_is_permutation_matches_naive(b: int, n: int, seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    rows = torch.randint(0, n, (b, n), generator=g)
    cols = torch.randint(0, n, (b, n), generator=g)
    for i in range(b // 2):  # half the instances are true permutations
        rows[i], cols[i] = torch.randperm(n, generator=g), torch.randperm(n, generator=g)
    assert is_permutation(rows, cols, n).tolist() == naive_is_permutation(rows, cols, n)


def test_sort_metrics_counts() -> None:
    x = torch.tensor([[3.0, 1.0, 2.0], [0.0, 1.0, 2.0]])
    y = torch.tensor([[1.0, 2.0, 3.0], [0.0, 2.0, 2.0]])  # instance 1: column 1 read twice
    rows = torch.tensor([[2, 0, 1], [0, 1, 2]])
    cols = torch.tensor([[0, 1, 2], [0, 2, 2]])
    m = sort_metrics(y, x, rows, cols)
    assert m["exact_accuracy"] == 0.5
    assert m["element_accuracy"] == pytest.approx(5 / 6)
    assert m["not_permutation"] == 0.5


def test_bad_input_raises() -> None:
    with pytest.raises(ValueError, match="n must be"):
        SortNet(0)
    with pytest.raises(ValueError, match="learn must be"):
        SortNet(3, learn="rows")
    with pytest.raises(TypeError, match="fixes"):
        SortNet(3, learn_values=True)
    with pytest.raises(ValueError, match="hidden"):
        MLPHyperLayer(3, 3, 3, hidden=(0,))
    with pytest.raises(ValueError, match="hidden"):
        PairwiseNet(2, hidden=())
    with pytest.raises(ValueError, match="hypernet must be"):
        SortNet(3, hypernet="cnn")
    with pytest.raises(ValueError, match="shape"):
        is_permutation(torch.zeros(2, 3, dtype=torch.long), torch.zeros(2, 4, dtype=torch.long), 3)


def test_full_budget_rule() -> None:
    assert [full_batches(n) for n in (3, 4, 8, 16)] == [30_000, 30_000, 60_000, 120_000]


def test_smoke_run_writes_run_directory(tmp_path: Path) -> None:
    out = run_experiment(
        "sort-permutation",
        ["train.max_steps=12", "train.log_every=4", "val_size=64", "test_size=200",
         "plot_points=2", "plot_inputs=2"],
        out=tmp_path / "r",
        progress=False,
    )
    for name in ("config.json", "env.json", "metrics.jsonl", "summary.json", "curves.png",
                 "permutations.png", "checkpoints/model/best.pt"):
        assert (out / name).exists(), name
    summary = json.loads((out / "summary.json").read_text())
    for key in ("exact_accuracy", "element_accuracy", "not_permutation", "n", "batches"):
        assert key in summary
    assert summary["n"] == 3 and summary["batches"] == 12
    assert 0.0 <= summary["not_permutation"] <= 1.0
    # a permutation matrix with the right order is exact: exact <= 1 - not_permutation
    assert summary["exact_accuracy"] <= 1.0 - summary["not_permutation"] + 1e-9
    from hypersparse.experiments.sort_permutation import SortPermutation
    from hypersparse.run import RunContext

    exp = SortPermutation()
    cfg = exp.Config(val_size=64, test_size=200)
    again = exp.evaluate(cfg, RunContext(run_dir=out, config=cfg))
    assert again["exact_accuracy"] == summary["exact_accuracy"]
