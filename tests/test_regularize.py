"""Regularisers: values against naive references, gradients, hooks, the fit wrapper, report."""

from __future__ import annotations

import copy
import json

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from hypersparse.compress import prune
from hypersparse.compress.regularize import (
    SparsityRegularizer,
    activation_penalty,
    group_lasso_penalty,
    l1_penalty,
    l2_penalty,
)
from hypersparse.compress.report import format_report, sparsity_report, write_report


@settings(max_examples=25, deadline=None)
@given(shape=st.lists(st.integers(1, 5), min_size=1, max_size=4), dim=st.integers(0, 1),
       seed=st.integers(0, 999))
def test_penalties_match_naive(shape: list[int], dim: int, seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(shape, generator=g, dtype=torch.float64)
    assert torch.isclose(l1_penalty(w), torch.tensor(sum(abs(v) for v in w.reshape(-1).tolist()),
                                                     dtype=torch.float64))
    assert torch.isclose(l2_penalty(w), (w.reshape(-1) ** 2).sum())
    assert torch.isclose(activation_penalty(w),
                         torch.tensor(sum(float(torch.log(torch.tensor(1 + v * v)))
                                          for v in w.reshape(-1).tolist()), dtype=torch.float64))
    if dim < w.dim():
        naive = sum(float(w.select(dim, i).square().sum().sqrt()) for i in range(w.shape[dim]))
        assert group_lasso_penalty(w, dim).item() == pytest.approx(naive)


def test_group_lasso_gradcheck_and_zero_group() -> None:
    w = torch.randn(4, 3, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda t: group_lasso_penalty(t, 0), (w,))
    assert torch.autograd.gradcheck(lambda t: group_lasso_penalty(t, 1, eps=1e-3), (w,))
    assert torch.autograd.gradcheck(activation_penalty, (w,))
    z = torch.zeros(2, 3, dtype=torch.float64, requires_grad=True)
    group_lasso_penalty(z).backward()
    assert torch.equal(z.grad, torch.zeros(2, 3, dtype=torch.float64))  # no NaN at zero


def test_regularizer_penalty_wrap_and_report() -> None:
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(6, 5), nn.ReLU(), nn.Linear(5, 2))
    reg = SparsityRegularizer(net, l1=0.1, l2=0.01, group_lasso=0.5, group="rows",
                              activation=0.2, activation_modules=["1"])
    x, y = torch.randn(4, 6), torch.tensor([0, 1, 0, 1])
    h = torch.relu(net[0](x))
    expected = sum(0.1 * m.weight.abs().sum() + 0.01 * m.weight.square().sum()
                   + 0.5 * m.weight.norm(dim=1).sum() for m in (net[0], net[2]))
    expected = expected + 0.2 * torch.log1p(h.square()).sum() / 4

    def loss_fn(model: nn.Module, batch: tuple[torch.Tensor, ...]) -> torch.Tensor:
        return nn.functional.cross_entropy(model(batch[0]), batch[1])

    wrapped = reg.wrap(loss_fn)
    total, metrics = wrapped(net, (x, y))
    base = loss_fn(net, (x, y))
    assert torch.isclose(total, base + expected, atol=1e-6)
    assert metrics["penalty"] == pytest.approx(float(expected.detach()), rel=1e-5)
    total.backward()
    assert net[0].weight.grad is not None
    reg.penalty()  # clears the activations collected so far
    _ = net(x)
    rep = reg.report()
    assert set(rep) == {"0", "2", "1"}
    assert rep["1"]["activation"] == pytest.approx(float(torch.log1p(h.square()).sum() / 4),
                                                   rel=1e-5)
    assert rep["0"]["l1"] == pytest.approx(float(net[0].weight.abs().sum()), rel=1e-6)
    reg.remove()
    _ = net(x)
    assert "1" not in reg.report()
    copy.deepcopy(net)  # hooks removed, model still copyable


def test_l1_training_makes_weights_smaller() -> None:
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 2))
    ref = copy.deepcopy(net)
    x, y = torch.randn(64, 8), torch.randint(0, 2, (64,))
    for model, coef in ((net, 0.05), (ref, 0.0)):
        reg = SparsityRegularizer(model, l1=coef)
        opt = torch.optim.SGD(model.parameters(), lr=0.1)
        for _ in range(50):
            opt.zero_grad()
            loss = nn.functional.cross_entropy(model(x), y) + reg.penalty()
            loss.backward()
            opt.step()
    assert float(net[0].weight.abs().sum()) < 0.8 * float(ref[0].weight.abs().sum())


def test_regularizer_bad_arguments() -> None:
    net = nn.Sequential(nn.Linear(2, 2), nn.ReLU())
    with pytest.raises(ValueError, match="l1"):
        SparsityRegularizer(net, l1=-1.0)
    with pytest.raises(ValueError, match="group"):
        SparsityRegularizer(net, group="diagonals")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="no submodule 'x'"):
        SparsityRegularizer(net, activation=0.1, activation_modules=["x"])
    with pytest.raises(ValueError, match="activation_modules"):
        SparsityRegularizer(net, activation=0.1)
    with pytest.raises(ValueError, match="no weight"):
        SparsityRegularizer(net, modules=["1"])
    with pytest.raises(ValueError, match="dim"):
        group_lasso_penalty(torch.ones(2, 2), dim=2)


def test_sparsity_report(tmp_path: object) -> None:
    net = nn.Sequential(nn.Conv2d(2, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 2 * 2, 3))
    prune.structured_prune(net[0], amount=0.5)
    with torch.no_grad():
        net[3].weight[:, :4] = 0
    rows = sparsity_report(net)
    by = {r.name: r for r in rows}
    conv, lin, total = by["0.weight"], by["3.weight"], by["total"]
    assert conv.nonzeros == 2 * 2 * 9 and conv.density == pytest.approx(0.5)
    assert conv.row_density == pytest.approx(0.5) and conv.column_density == 1.0
    assert conv.kernel_density == pytest.approx(0.5) and conv.pruned_mask
    assert lin.column_density == pytest.approx(12 / 16) and lin.row_density == 1.0
    assert lin.kernel_density is None and not lin.pruned_mask
    assert total.nonzeros == conv.nonzeros + lin.nonzeros
    assert total.numel == 72 + 48
    table = format_report(rows)
    assert "0.weight" in table and "50.0%" in table
    path = tmp_path / "report.json"  # type: ignore[operator]
    write_report(rows, path)
    data = json.loads(path.read_text())
    assert data["layers"][0]["nonzeros"] == conv.nonzeros
