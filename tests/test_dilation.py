"""Tests for :class:`hypersparse.nn.DilatedConv2d` (a convolution with a learned dilation)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from hypersparse.nn import DilatedConv2d


def _conv(m: DilatedConv2d, x: torch.Tensor, d: int) -> torch.Tensor:
    """The dense reference: ``F.conv2d`` with the layer's kernel at dilation ``d``."""
    if d == 0:  # every tap reads the centre
        return F.conv2d(x, m.weight.sum((2, 3), keepdim=True), m.conv_bias)
    return F.conv2d(x, m.weight, m.conv_bias, padding=(m.kernel_size - 1) // 2 * d, dilation=d)


def _smooth(x: torch.Tensor, width: float = 1.5) -> torch.Tensor:
    r = torch.arange(-3, 4, dtype=x.dtype)
    k = torch.exp(-0.5 * (r / width) ** 2)
    k = k / k.sum()
    c = x.shape[1]
    x = F.conv2d(F.pad(x, (3, 3, 0, 0), mode="reflect"), k.view(1, 1, 1, 7).repeat(c, 1, 1, 1),
                 groups=c)
    x = F.conv2d(F.pad(x, (0, 0, 3, 3), mode="reflect"), k.view(1, 1, 7, 1).repeat(c, 1, 1, 1),
                 groups=c)
    return x / x.std()


@pytest.mark.parametrize("d", [0, 1, 2, 3, 4])
def test_eval_equals_conv2d(d: int) -> None:
    torch.manual_seed(0)
    m = DilatedConv2d(2, 3, 9, 11, 3, dilation=float(d), max_dilation=4.0).double().eval()
    with torch.no_grad():
        m.conv_bias.normal_()
    x = torch.randn(5, 2, 9, 11, dtype=torch.float64)
    torch.testing.assert_close(m(x), _conv(m, x, d))


@settings(max_examples=25, deadline=None)
@given(cin=st.integers(1, 3), cout=st.integers(1, 3), h=st.integers(1, 8), w=st.integers(1, 8),
       k=st.sampled_from([1, 3, 5]), d=st.integers(0, 3), extra=st.floats(0.0, 2.0))
def test_eval_equals_conv2d_shapes(cin: int, cout: int, h: int, w: int, k: int, d: int,
                                   extra: float) -> None:
    g = torch.Generator().manual_seed(cin * 1000 + h * 10 + w)
    m = DilatedConv2d(cin, cout, h, w, k, dilation=float(d), max_dilation=d + extra,
                      bias=False).double().eval()
    x = torch.randn(2, cin, h, w, dtype=torch.float64, generator=g)
    torch.testing.assert_close(m(x), _conv(m, x, d))


def test_kernel_one_is_pointwise() -> None:
    m = DilatedConv2d(3, 2, 5, 5, 1, dilation=2.0).eval()
    assert m.pad == 0 and m.k == 2 * 25 * 3
    x = torch.randn(4, 3, 5, 5)
    torch.testing.assert_close(m(x), F.conv2d(x, m.weight, m.conv_bias))


def test_rounding_of_fractional_dilation_in_eval() -> None:
    m = DilatedConv2d(1, 1, 8, 8, 3, dilation=2.2, max_dilation=3.0).eval()
    x = torch.randn(2, 1, 8, 8)
    torch.testing.assert_close(m(x), _conv(m, x, 2))


def test_to_sparse_is_the_dense_conv_matrix() -> None:
    m = DilatedConv2d(1, 2, 6, 6, 3, dilation=2.0, max_dilation=2.0, bias=False).double().eval()
    w = m.to_sparse().to_dense()  # (2, 6, 6, 1, 10, 10): over the padded input
    assert w.shape == (2, 6, 6, 1, 10, 10)
    x = torch.randn(3, 1, 6, 6, dtype=torch.float64)
    y = torch.einsum("orcixy,bixy->borc", w, F.pad(x, (2, 2, 2, 2)))
    torch.testing.assert_close(y, _conv(m, x, 2))
    assert int((w != 0).sum()) <= 2 * 36 * 9


def test_training_with_tiny_sigma_matches_conv2d() -> None:
    torch.manual_seed(1)
    m = DilatedConv2d(2, 2, 7, 7, 3, dilation=2.0, max_dilation=3.0, sigma=0.05).double()
    x = torch.randn(3, 2, 7, 7, dtype=torch.float64)
    torch.testing.assert_close(m.train()(x), _conv(m, x, 2))


def _gradcheck_fn(m: DilatedConv2d, x: torch.Tensor):  # type: ignore[no-untyped-def]
    probe = torch.randn((x.shape[0], m.out_channels, m.height, m.width), dtype=x.dtype)

    def f(dilation: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        m.generator = torch.Generator().manual_seed(0)  # the same samples on every call
        with torch.nn.utils.stateless._reparametrize_module(  # type: ignore[attr-defined]
                m, {"dilation": dilation, "weight": weight}):
            return (m(x) * probe).sum()  # one scalar: one backward pass
    return f


def test_gradcheck_training_forward() -> None:
    m = DilatedConv2d(1, 2, 5, 5, 3, dilation=1.3, max_dilation=3.0, sigma=0.7,
                      local_samples=2).double().train()
    x = torch.randn(2, 1, 5, 5, dtype=torch.float64)
    d = torch.tensor(1.3, dtype=torch.float64, requires_grad=True)
    w = m.weight.detach().clone().requires_grad_(True)
    assert torch.autograd.gradcheck(_gradcheck_fn(m, x), (d, w), eps=1e-6, atol=1e-5)


@pytest.mark.parametrize("start,sign", [(2.5, -1.0), (3.5, 1.0), (2.0, -1.0), (4.0, 1.0)])
def test_dilation_gradient_points_to_target(start: float, sign: float) -> None:
    """With the target's kernel, the loss gradient moves the dilation towards the target (3)."""
    g = torch.Generator().manual_seed(0)
    kernel = torch.randn(1, 1, 3, 3, generator=g, dtype=torch.float64)
    m = DilatedConv2d(1, 1, 12, 12, 3, dilation=start, max_dilation=5.0, sigma=0.5,
                      bias=False).double().train()
    m.generator = g
    with torch.no_grad():
        m.weight.copy_(kernel)
    x = _smooth(torch.randn(16, 1, 12, 12, generator=g, dtype=torch.float64))
    target = F.conv2d(x, kernel, padding=3, dilation=3)
    grads = []
    for _ in range(4):
        m.dilation.grad = None
        F.mse_loss(m(x), target).backward()
        grads.append(float(m.dilation.grad))
    assert all(gr != 0.0 for gr in grads)
    assert all(gr * sign > 0 for gr in grads), grads


@pytest.mark.slow
def test_learns_dilation_on_toy_problem() -> None:
    g = torch.Generator().manual_seed(0)
    kernel = torch.randn(1, 1, 3, 3, generator=g)
    m = DilatedConv2d(1, 1, 10, 10, 3, dilation=1.0, max_dilation=4.0, bias=False)
    m.generator = g
    opt = torch.optim.Adam(m.parameters(), lr=0.03)
    for _ in range(100):
        x = _smooth(torch.randn(8, 1, 10, 10, generator=g))
        loss = F.mse_loss(m(x), F.conv2d(x, kernel, padding=3, dilation=3))
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert abs(float(m.dilation.detach()) - 3.0) < 0.25


def test_state_dict_round_trip() -> None:
    a = DilatedConv2d(2, 2, 6, 6, 3, dilation=1.7, max_dilation=3.0)
    b = DilatedConv2d(2, 2, 6, 6, 3, dilation=1.0, max_dilation=3.0)
    assert set(a.state_dict()) == {"dilation", "weight", "conv_bias", "sigma", "sigma_gain"}
    b.load_state_dict(a.state_dict())
    x = torch.randn(3, 2, 6, 6)
    torch.testing.assert_close(a.eval()(x), b.eval()(x))
    a.generator = torch.Generator().manual_seed(5)
    b.generator = torch.Generator().manual_seed(5)
    torch.testing.assert_close(a.train()(x), b.train()(x))


def test_dilation_is_clamped_into_range() -> None:
    m = DilatedConv2d(1, 1, 6, 6, 3, max_dilation=2.0).eval()
    with torch.no_grad():
        m.dilation.fill_(7.0)
    x = torch.randn(1, 1, 6, 6)
    torch.testing.assert_close(m(x), _conv(m, x, 2))
    assert float(m.effective_dilation()) == 2.0


def test_empty_batch_and_non_contiguous() -> None:
    m = DilatedConv2d(2, 1, 5, 6, 3, dilation=1.0, max_dilation=2.0).eval()
    assert m(torch.randn(0, 2, 5, 6)).shape == (0, 1, 5, 6)
    x = torch.randn(3, 2, 6, 5).transpose(2, 3)
    assert not x.is_contiguous()
    torch.testing.assert_close(m(x), _conv(m, x.contiguous(), 1))


@pytest.mark.parametrize("kwargs,match", [
    ({"kernel_size": 2}, "odd"),
    ({"kernel_size": 0}, "kernel_size"),
    ({"dilation": 5.0}, "dilation"),
    ({"dilation": -1.0}, "dilation"),
    ({"max_dilation": float("inf")}, "max_dilation"),
    ({"sigma": 0.0}, "sigma"),
    ({"in_channels": 0}, "in_channels"),
    ({"height": 2.5}, "height"),
])
def test_bad_arguments_raise(kwargs: dict, match: str) -> None:  # type: ignore[type-arg]
    args = {"in_channels": 1, "out_channels": 1, "height": 4, "width": 4, "kernel_size": 3,
            "dilation": 1.0, "max_dilation": 2.0}
    args.update(kwargs)
    with pytest.raises(ValueError, match=match):
        DilatedConv2d(**args)


def test_bad_input_raises() -> None:
    m = DilatedConv2d(2, 1, 4, 4, 3)
    with pytest.raises(ValueError, match="shape"):
        m(torch.randn(2, 1, 4, 4))
    with pytest.raises(ValueError, match="shape"):
        m(torch.randn(2, 4, 4))
    with pytest.raises(TypeError, match="Tensor"):
        m([[0.0]])  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="NaN"):
        m(torch.full((1, 2, 4, 4), float("nan")))


def test_learn_dilation_smoke(tmp_path) -> None:  # type: ignore[no-untyped-def]
    import json

    import hypersparse.experiments.learn_dilation  # noqa: F401
    from hypersparse.run import run_experiment

    out = run_experiment("learn-dilation", ["train.max_steps=3", "size=8", "n_val=4",
                                            "n_test=4", "train.batch_size=4"],
                         out=tmp_path / "r", progress=False)
    summary = json.loads((out / "summary.json").read_text())
    assert {"final_dilation", "target_dilation", "mse"} <= set(summary)
    assert summary["target_dilation"] == 3
    assert (out / "dilation.png").exists() and (out / "config.json").exists()


def test_learn_dilation_unknown_task_is_refused(tmp_path) -> None:  # type: ignore[no-untyped-def]
    import hypersparse.experiments.learn_dilation  # noqa: F401
    from hypersparse.run import run_experiment

    with pytest.raises(ValueError, match="task"):
        run_experiment("learn-dilation", ["task=cifar", "train.max_steps=1"],
                       out=tmp_path / "r", progress=False)
