"""Low-rank factorisation: exactness at full rank, the documented rank rules, the report."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from hypersparse.compress import choose_rank, low_rank, low_rank_model


def _ref_truncated(w: torch.Tensor, r: int) -> torch.Tensor:
    u, s, vh = torch.linalg.svd(w.double(), full_matrices=False)
    return (u[:, :r] * s[:r]) @ vh[:r]


@settings(max_examples=25, deadline=None)
@given(m=st.integers(1, 12), n=st.integers(1, 12), bias=st.booleans(), b=st.integers(0, 3))
def test_linear_full_rank_reproduces_output(m: int, n: int, bias: bool, b: int) -> None:
    lin = nn.Linear(n, m, bias=bias, dtype=torch.float64)
    f = low_rank(lin, rank=min(m, n))
    x = torch.randn(b, n, dtype=torch.float64)
    assert f(x).shape == (b, m)
    torch.testing.assert_close(f(x), lin(x), rtol=1e-10, atol=1e-10)
    assert f[0].bias is None and (f[1].bias is not None) == bias


@settings(max_examples=25, deadline=None)
@given(c=st.integers(1, 4), o=st.integers(1, 6), k=st.sampled_from([1, 3]),
       stride=st.integers(1, 2), padding=st.integers(0, 1), dilation=st.integers(1, 2))
def test_conv_full_rank_reproduces_output(c: int, o: int, k: int, stride: int, padding: int,
                                          dilation: int) -> None:
    conv = nn.Conv2d(c, o, k, stride=stride, padding=padding, dilation=dilation,
                     dtype=torch.float64)
    f = low_rank(conv, rank=min(o, c * k * k))
    x = torch.randn(2, c, 7, 6, dtype=torch.float64)
    torch.testing.assert_close(f(x), conv(x), rtol=1e-10, atol=1e-10)
    assert f[0].kernel_size == (k, k) and f[1].kernel_size == (1, 1)
    assert f[0].out_channels == min(o, c * k * k)


def test_truncation_matches_svd_reference() -> None:
    lin = nn.Linear(20, 15, dtype=torch.float64)
    f = low_rank(lin, rank=4)
    w_r = f[1].weight @ f[0].weight  # (15, 20)
    torch.testing.assert_close(w_r, _ref_truncated(lin.weight.detach(), 4))
    assert f[0].weight.shape == (4, 20) and f[1].weight.shape == (15, 4)
    torch.testing.assert_close(f[1].bias, lin.bias)


def test_conv_truncation_matches_svd_reference() -> None:
    conv = nn.Conv2d(3, 8, 3, padding=1, dtype=torch.float64)
    f = low_rank(conv, rank=2)
    w_r = f[1].weight.reshape(8, 2) @ f[0].weight.reshape(2, 27)  # (8, 27)
    torch.testing.assert_close(w_r, _ref_truncated(conv.weight.detach().reshape(8, 27), 2))


def test_energy_rule_picks_documented_rank() -> None:
    s = torch.tensor([4.0, 2.0, 1.0, 1.0])  # energies 16, 4, 1, 1 of 22
    assert choose_rank(s, (4, 4), energy=16 / 22) == 1
    assert choose_rank(s, (4, 4), energy=16 / 22 + 1e-6) == 2
    assert choose_rank(s, (4, 4), energy=0.9) == 2  # 20/22 = 0.909
    assert choose_rank(s, (4, 4), energy=0.95) == 3  # 21/22 = 0.955
    assert choose_rank(s, (4, 4), energy=1.0) == 4
    assert choose_rank(torch.zeros(3), (3, 5), energy=0.5) == 1


def test_budget_rule_picks_documented_rank() -> None:
    s = torch.ones(10)
    # r * (10 + 30) <= p * 300  ->  r = floor(7.5 p)
    assert choose_rank(s, (10, 30), param_fraction=1.0) == 7
    assert choose_rank(s, (10, 30), param_fraction=0.5) == 3
    assert choose_rank(s, (10, 30), param_fraction=0.01) == 1  # at least 1
    assert choose_rank(s, (10, 30), rank=99) == 10


@settings(max_examples=25, deadline=None)
@given(m=st.integers(2, 10), n=st.integers(2, 10), f=st.floats(0.05, 1.0))
def test_energy_rule_bounds_weight_error(m: int, n: int, f: float) -> None:
    lin = nn.Linear(n, m, dtype=torch.float64)
    g = low_rank(lin, energy=f)
    r = g[0].weight.shape[0]
    s = torch.linalg.svdvals(lin.weight.detach())
    kept = (s[:r].square().sum() / s.square().sum()).item()
    assert kept >= f - 1e-9
    if r > 1:  # minimal: one less would not reach the energy
        assert (s[: r - 1].square().sum() / s.square().sum()).item() < f
    err = (g[1].weight @ g[0].weight - lin.weight).norm() / lin.weight.norm()
    assert err.item() == pytest.approx(math.sqrt(max(0.0, 1 - kept)), abs=1e-7)


def test_model_report_and_replacement() -> None:
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(1, 6, 3), nn.ReLU(), nn.Flatten(), nn.Linear(6 * 6 * 6, 40),
                        nn.ReLU(), nn.Linear(40, 10))
    x = torch.randn(5, 1, 8, 8)
    small, rows = low_rank_model(net, param_fraction=0.3, sample=x)
    assert [r.name for r in rows] == ["0", "3", "5"]
    assert isinstance(net[3], nn.Linear)  # not in place
    for row in rows:
        assert row.output_error is not None and row.params_after <= row.params_before
        if row.replaced:
            assert isinstance(small.get_submodule(row.name), nn.Sequential)
            assert 0 < row.weight_error < 1
    lin = [r for r in rows if r.name == "3"][0]
    assert lin.rank == math.floor(0.3 * 40 * 216 / 256) and lin.replaced
    assert lin.params_after == lin.rank * (216 + 40) + 40
    # The conv's (6, 9) matrix is replaced only if its factors are smaller.
    conv = [r for r in rows if r.name == "0"][0]
    assert conv.replaced == (conv.rank * (6 + 9) + 6 < 6 * 9 + 6)
    assert small(x).shape == (5, 10)
    # The reported output error of the big layer equals a direct measurement.
    h = net[2](net[1](net[0](x)))
    ref = net[3](h)
    err = (small[3](h) - ref).norm() / ref.norm()
    assert lin.output_error == pytest.approx(err.item(), rel=1e-5)


def test_model_full_rank_identical_and_skip() -> None:
    net = nn.Sequential(nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 3))
    x = torch.randn(4, 8)
    same, rows = low_rank_model(net, energy=1.0, sample=x, skip_larger=False)
    torch.testing.assert_close(same(x), net(x), rtol=1e-5, atol=1e-5)
    kept, rows = low_rank_model(net, energy=1.0, sample=x)  # full rank is larger: kept dense
    assert not any(r.replaced for r in rows)
    assert all(isinstance(m, nn.Linear) for m in (kept[0], kept[2]))
    assert all(r.output_error == 0.0 for r in rows)


def test_model_names_and_inplace() -> None:
    net = nn.Sequential(nn.Linear(30, 30), nn.ReLU(), nn.Linear(30, 3))
    out, rows = low_rank_model(net, rank=2, names=["0"], inplace=True)
    assert out is net and isinstance(net[0], nn.Sequential) and isinstance(net[2], nn.Linear)
    assert [r.name for r in rows] == ["0"] and rows[0].output_error is None


def test_state_dict_roundtrip() -> None:
    net = nn.Sequential(nn.Linear(12, 12), nn.ReLU(), nn.Linear(12, 2))
    a, _ = low_rank_model(net, rank=3)
    b, _ = low_rank_model(nn.Sequential(nn.Linear(12, 12), nn.ReLU(), nn.Linear(12, 2)), rank=3)
    b.load_state_dict(a.state_dict())
    x = torch.randn(3, 12)
    torch.testing.assert_close(a(x), b(x))


def test_noncontiguous_weight() -> None:
    lin = nn.Linear(6, 9, dtype=torch.float64)
    lin.weight = nn.Parameter(torch.randn(6, 9, dtype=torch.float64).t())  # non-contiguous
    assert not lin.weight.is_contiguous()
    x = torch.randn(2, 6, dtype=torch.float64)
    torch.testing.assert_close(low_rank(lin, rank=6)(x), lin(x))


def test_bad_arguments_raise() -> None:
    s = torch.ones(3)
    with pytest.raises(ValueError, match="exactly one"):
        choose_rank(s, (3, 3))
    with pytest.raises(ValueError, match="exactly one"):
        choose_rank(s, (3, 3), rank=1, energy=0.5)
    with pytest.raises(ValueError, match="energy"):
        choose_rank(s, (3, 3), energy=1.5)
    with pytest.raises(ValueError, match="energy"):
        choose_rank(s, (3, 3), energy=0.0)
    with pytest.raises(ValueError, match="param_fraction"):
        choose_rank(s, (3, 3), param_fraction=-0.1)
    with pytest.raises(ValueError, match="rank"):
        choose_rank(s, (3, 3), rank=0)
    with pytest.raises(ValueError, match="singular values"):
        choose_rank(s, (4, 5), rank=1)
    with pytest.raises(TypeError, match="Linear or nn.Conv2d"):
        low_rank(nn.Conv1d(2, 2, 3), rank=1)
    with pytest.raises(ValueError, match="groups"):
        low_rank(nn.Conv2d(4, 4, 3, groups=2), rank=1)
    with pytest.raises(ValueError, match="names"):
        low_rank_model(nn.Sequential(nn.Linear(2, 2)), rank=1, names=["nope"])
    with pytest.raises(ValueError, match="exactly one"):
        low_rank_model(nn.Sequential(nn.Linear(2, 2)))
