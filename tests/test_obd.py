"""Optimal Brain Damage: Hessian diagonals against autograd, Gauss-Newton against J^T H J."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call

from hypersparse.compress import obd, prune

NAMES = ["0.weight", "2.weight"]


def tiny(seed: int = 1, arch: tuple[int, int, int] = (3, 4, 2), n: int = 64
         ) -> tuple[nn.Module, list[tuple[torch.Tensor, torch.Tensor]], torch.Tensor, torch.Tensor]:
    torch.manual_seed(seed)
    a, h, c = arch
    net = nn.Sequential(nn.Linear(a, h), nn.Tanh(), nn.Linear(h, c)).double()
    x = torch.randn(n, a, dtype=torch.double) * 2
    y = torch.randint(0, c, (n,))
    data = [(x[: n // 3], y[: n // 3]), (x[n // 3 :], y[n // 3 :])]  # unequal batches
    return net, data, x, y


def full_hessian(net: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    params = dict(net.named_parameters())
    ws = [params[n].detach() for n in NAMES]
    sizes = [w.numel() for w in ws]

    def f(flat: torch.Tensor) -> torch.Tensor:
        q = {n: p.reshape(w.shape) for n, p, w in zip(NAMES, flat.split(sizes), ws)}
        return F.cross_entropy(functional_call(net, {**params, **q}, (x,)), y)

    return torch.autograd.functional.hessian(f, torch.cat([w.reshape(-1) for w in ws]))


def flat(d: dict[str, torch.Tensor]) -> torch.Tensor:
    return torch.cat([d[n].reshape(-1) for n in NAMES])


def test_exact_equals_autograd_hessian_diagonal() -> None:
    net, data, x, y = tiny(arch=(4, 5, 3))
    H = full_hessian(net, x, y)
    for chunk in (7, 1000):
        d = obd.hessian_diagonal(net, F.cross_entropy, data, method="exact", chunk=chunk)
        assert torch.allclose(flat(d), H.diagonal(), atol=1e-6, rtol=0)
        assert d["0.weight"].shape == net[0].weight.shape


def test_gauss_newton_equals_its_exact_form() -> None:
    net, data, x, y = tiny(arch=(4, 5, 3))
    gn = obd.hessian_diagonal(net, F.cross_entropy, data, method="gauss_newton", chunk=5)
    params = dict(net.named_parameters())
    for name in NAMES:
        w0 = params[name].detach()

        def out(w: torch.Tensor, name: str = name) -> torch.Tensor:
            return functional_call(net, {**params, name: w}, (x,))

        J = torch.autograd.functional.jacobian(out, w0).reshape(x.shape[0], 3, -1)  # (B, C, P)
        p = out(w0).softmax(-1)
        Hs = (torch.diag_embed(p) - p[:, :, None] * p[:, None, :]) / x.shape[0]  # (B, C, C)
        G = torch.einsum("bcp,bcd,bdq->pq", J, Hs, J)
        assert torch.allclose(gn[name].reshape(-1), G.diagonal(), atol=1e-6, rtol=0)


def test_gauss_newton_is_the_hessian_for_a_linear_model_with_mse() -> None:
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(5, 3)).double()
    x, y = torch.randn(20, 5, dtype=torch.double), torch.randn(20, 3, dtype=torch.double)
    ex = obd.hessian_diagonal(net, F.mse_loss, [(x, y)], method="exact")
    gn = obd.hessian_diagonal(net, F.mse_loss, [(x, y)], method="gauss_newton")
    assert torch.allclose(ex["0.weight"], gn["0.weight"], atol=1e-10)
    # closed form: d^2/dW_ij^2 mean((Wx - y)^2) = 2 * mean_b x_bj^2 / C
    ref = (2 * x.square().mean(0) / 3).expand(3, 5)
    assert torch.allclose(ex["0.weight"], ref, atol=1e-10)


def test_hutchinson_within_5_percent_with_10k_probes() -> None:
    net, data, x, y = tiny(seed=1, arch=(3, 4, 2))
    H = full_hessian(net, x, y)
    d = H.diagonal()
    # this network's expected relative error with 10k probes (off-diagonal mass)
    expected = float(((H.square().sum(1) - d.square()).sum() / 10_000).sqrt() / d.norm())
    assert expected < 0.025
    est = obd.hessian_diagonal(net, F.cross_entropy, data, method="hutchinson", probes=10_000,
                               chunk=2500, generator=torch.Generator().manual_seed(0))
    err = float((flat(est) - d).norm() / d.norm())
    assert err < 0.05
    few = obd.hessian_diagonal(net, F.cross_entropy, data, method="hutchinson", probes=10,
                               generator=torch.Generator().manual_seed(0))
    assert float((flat(few) - d).norm() / d.norm()) > err  # more probes, closer


def test_saliency_and_prune_match_naive_ranking() -> None:
    net, data, x, y = tiny(arch=(4, 5, 3))
    sal = obd.obd_saliency(net, F.cross_entropy, data, method="exact")
    H = full_hessian(net, x, y)
    w = torch.cat([net[0].weight.detach().reshape(-1), net[2].weight.detach().reshape(-1)])
    ref = H.diagonal() * w.square() / 2
    assert torch.allclose(flat(sal), ref, atol=1e-8)
    obd.obd_prune(net, F.cross_entropy, data, 0.4, method="exact", scope="global")
    keep = np.ones(ref.numel(), bool)
    keep[np.argsort(ref.numpy(), kind="stable")[: round(0.4 * ref.numel())]] = False
    got = torch.cat([net[0].weight_mask.reshape(-1), net[2].weight_mask.reshape(-1)])
    np.testing.assert_array_equal(got.numpy(), keep)
    # pruned weights have zero saliency afterwards, and layer scope prunes each layer
    sal2 = obd.obd_saliency(net, F.cross_entropy, data, method="gauss_newton")
    assert bool((sal2["0.weight"][~net[0].weight_mask] == 0).all())
    net2, data2, _, _ = tiny(arch=(4, 5, 3))
    obd.obd_prune(net2, F.cross_entropy, data2, 0.5, method="gauss_newton", scope="layer")
    assert int((~net2[0].weight_mask).sum()) == 10 and int((~net2[2].weight_mask).sum()) == 8


def test_params_subset_and_conv() -> None:
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(1, 2, 3), nn.ReLU(), nn.Flatten(), nn.Linear(2 * 4 * 4, 3))
    x, y = torch.randn(6, 1, 6, 6), torch.randint(0, 3, (6,))
    ex = obd.hessian_diagonal(net, F.cross_entropy, [(x, y)], method="exact",
                              params=[(net[0], "weight")])
    gn = obd.hessian_diagonal(net, F.cross_entropy, [(x, y)], method="gauss_newton",
                              params=[(net[0], "weight")])
    assert list(ex) == ["0.weight"] and ex["0.weight"].shape == (2, 1, 3, 3)
    # ReLU network: f'' = 0 almost everywhere, so GN is the Hessian's diagonal
    assert torch.allclose(ex["0.weight"], gn["0.weight"], atol=1e-5)


def test_bad_arguments() -> None:
    net, data, _, _ = tiny()
    with pytest.raises(ValueError, match="method"):
        obd.hessian_diagonal(net, F.cross_entropy, data, method="newton")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="probes"):
        obd.hessian_diagonal(net, F.cross_entropy, data, method="hutchinson", probes=0)
    with pytest.raises(ValueError, match="at least one sample"):
        obd.hessian_diagonal(net, F.cross_entropy, [])
    with pytest.raises(ValueError, match="not part of the model"):
        obd.hessian_diagonal(net, F.cross_entropy, data, params=[(nn.Linear(2, 2), "weight")])
    with pytest.raises(ValueError, match="scope"):
        obd.obd_prune(net, F.cross_entropy, data, 0.5, scope="all")  # type: ignore[arg-type]
    assert not prune.is_pruned(net[0])
