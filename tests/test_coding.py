"""Tests for hypersparse.coding: encoders against scikit-learn, dictionary learning, LISTA,
the contrastive loss and the patch pipeline."""

from __future__ import annotations

import importlib

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch.autograd import gradcheck

from hypersparse.coding import (
    LISTA,
    ContrastiveLoss,
    ContrastiveProjection,
    OnlineDictionaryLearner,
    SparseCodingLayer,
    contrastive_loss,
    extract_patches,
    fista,
    fista_momentum,
    ista,
    lasso_duality_gap,
    lasso_objective,
    learn_dictionary,
    lipschitz_constant,
    lista_loss,
    local_max_pool,
    normalize_atoms,
    soft_threshold,
    sparse_encode,
    spatial_pairs,
    update_dictionary,
)

sklearn = pytest.importorskip("sklearn")
from sklearn.decomposition import sparse_encode as sk_sparse_encode  # noqa: E402
from sklearn.linear_model import Lasso  # noqa: E402


@pytest.fixture(autouse=True)
def _one_thread():
    # tiny problems: thread start-up dominates, and the machine is shared
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def _problem(b: int = 6, m: int = 20, n: int = 10, seed: int = 0, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    D = normalize_atoms(torch.randn(m, n, generator=g, dtype=dtype))
    x = torch.randn(b, n, generator=g, dtype=dtype)
    return x, D


# ---------------------------------------------------------------- soft threshold / objective


def test_soft_threshold_matches_formula() -> None:
    x = torch.linspace(-3, 3, 61, dtype=torch.float64)
    want = torch.sign(x) * torch.clamp(x.abs() - 1.2, min=0)
    torch.testing.assert_close(soft_threshold(x, 1.2), want)
    torch.testing.assert_close(soft_threshold(x, 1.2, nonneg=True), torch.clamp(x - 1.2, min=0))
    t = torch.full_like(x, 1.2)
    torch.testing.assert_close(soft_threshold(x, t), want)


def test_lasso_objective_formula() -> None:
    x, D = _problem()
    z = torch.randn(x.shape[0], D.shape[0], dtype=torch.float64)
    want = torch.stack([0.5 * ((x[i] - D.t() @ z[i]) ** 2).sum() + 0.3 * z[i].abs().sum()
                        for i in range(x.shape[0])])
    torch.testing.assert_close(lasso_objective(x, z, D, 0.3), want)


def test_lipschitz_is_largest_gram_eigenvalue() -> None:
    _, D = _problem(m=30, n=12)
    want = torch.linalg.eigvalsh(D @ D.t())[-1]
    torch.testing.assert_close(lipschitz_constant(D), want)


# ---------------------------------------------------------------- ISTA / FISTA vs scikit-learn


@pytest.mark.parametrize("algorithm", ["lasso_cd", "lasso_lars"])
@pytest.mark.parametrize("nonneg", [False, True])
@pytest.mark.parametrize("m", [8, 20])  # M < 2N (Gram path) and M >= 2N (residual path)
def test_fista_matches_sklearn_sparse_encode(algorithm: str, nonneg: bool, m: int) -> None:
    # sparse_encode(alpha) minimises 1/2||x - zD||^2 + alpha ||z||_1 per row: same alpha here
    x, D = _problem(m=m, n=10)
    alpha = 0.3
    if nonneg and algorithm == "lasso_lars":
        pytest.skip("checked with lasso_cd")
    want = sk_sparse_encode(x.numpy(), D.numpy(), algorithm=algorithm, alpha=alpha,
                            positive=nonneg, max_iter=10000)
    got = fista(x, D, alpha, max_iter=5000, tol=1e-10, nonneg=nonneg)
    # sklearn's lasso_cd stops on a duality gap of 1e-8 (scaled), so codes agree to ~1e-6
    torch.testing.assert_close(got, torch.from_numpy(want), atol=1e-5, rtol=0)
    f_got = lasso_objective(x, got, D, alpha)
    f_want = lasso_objective(x, torch.from_numpy(want), D, alpha)
    assert torch.all(f_got <= f_want * (1 + 1e-9) + 1e-12)


def test_ista_matches_plain_lasso_with_scaled_alpha() -> None:
    # Lasso(a) on design D^T minimises 1/(2N)||x - D^T z||^2 + a||z||_1 = F(z; alpha=a N) / N
    x, D = _problem(b=3, m=15, n=10)
    a = 0.02
    z = ista(x, D, a * D.shape[1], max_iter=50000, tol=1e-14)
    for i in range(x.shape[0]):
        las = Lasso(alpha=a, fit_intercept=False, tol=1e-14, max_iter=100000)
        las.fit(D.t().numpy(), x[i].numpy())
        torch.testing.assert_close(z[i], torch.from_numpy(las.coef_), atol=1e-6, rtol=0)


def test_ista_objective_decreases_monotonically() -> None:
    x, D = _problem(b=16, m=40, n=12, seed=3)
    alpha = 0.1
    L = lipschitz_constant(D)
    z = torch.zeros(x.shape[0], D.shape[0], dtype=torch.float64)
    prev = lasso_objective(x, z, D, alpha)
    for _ in range(60):
        z = ista(x, D, alpha, max_iter=1, tol=0.0, init=z, lipschitz=L)
        cur = lasso_objective(x, z, D, alpha)
        assert torch.all(cur <= prev + 1e-12), (cur - prev).max()
        prev = cur


def test_fista_faster_than_ista_and_converges() -> None:
    x, D = _problem(b=32, m=40, n=12, seed=1)
    alpha = 0.1
    best = lasso_objective(x, fista(x, D, alpha, max_iter=5000, tol=1e-14), D, alpha).sum()
    f_ista = lasso_objective(x, ista(x, D, alpha, max_iter=30, tol=0.0), D, alpha).sum()
    f_fista = lasso_objective(x, fista(x, D, alpha, max_iter=30, tol=0.0), D, alpha).sum()
    assert f_fista - best < f_ista - best


def test_stopping_warm_start_and_n_iter() -> None:
    x, D = _problem(b=8, m=20, n=10)
    r = sparse_encode(x, D, 0.2, max_iter=10000, tol=1e-8)
    assert r.converged and 0 < r.n_iter < 10000
    warm = sparse_encode(x, D, 0.2, max_iter=10000, tol=1e-8, init=r.codes)
    assert warm.converged and warm.n_iter < r.n_iter
    fixed = sparse_encode(x, D, 0.2, max_iter=7, tol=0.0)
    assert fixed.n_iter == 7 and not fixed.converged


def test_nonneg_codes_are_nonneg_and_zero_alpha_edge() -> None:
    x, D = _problem()
    z = fista(x, D, 0.05, nonneg=True, max_iter=200)
    assert (z >= 0).all() and (z > 0).any()
    # a huge alpha zeroes every code
    assert (fista(x, D, 1e6, max_iter=5) == 0).all()


def test_empty_batch_and_noncontiguous() -> None:
    x, D = _problem(b=5, m=20, n=10)
    assert fista(x[:0], D, 0.1).shape == (0, 20)
    xt = x.t().contiguous().t()  # same values, non-contiguous
    assert not xt.is_contiguous()
    torch.testing.assert_close(fista(xt, D, 0.1, tol=0.0, max_iter=50),
                               fista(x, D, 0.1, tol=0.0, max_iter=50))
    Dt = D.t().contiguous().t()
    torch.testing.assert_close(fista(x, Dt, 0.1, tol=0.0, max_iter=50),
                               fista(x, D, 0.1, tol=0.0, max_iter=50))


def test_single_atom_closed_form() -> None:
    # M = 1, unit atom d: z = soft(<x, d>, alpha)
    x, D = _problem(b=9, m=1, n=6)
    want = soft_threshold(x @ D[0], 0.4).unsqueeze(1)
    torch.testing.assert_close(fista(x, D, 0.4, max_iter=100, tol=0.0), want)


@settings(max_examples=25, deadline=None)
@given(b=st.integers(0, 6), m=st.integers(1, 12), n=st.integers(1, 8),
       accelerated=st.booleans(), seed=st.integers(0, 1000))
def test_shapes_and_optimality_conditions(b: int, m: int, n: int, accelerated: bool,
                                          seed: int) -> None:
    x, D = _problem(b=b, m=m, n=n, seed=seed)
    r = sparse_encode(x, D, 0.2, max_iter=20000, tol=1e-11, accelerated=accelerated)
    assert r.codes.shape == (b, m)
    # KKT: |g_j| <= alpha where z_j = 0, g_j = -alpha sign(z_j) elsewhere, g = (zD - x) D^T
    g = (r.codes @ D - x) @ D.t()
    active = r.codes != 0
    # (1e-4: ill-conditioned draws converge slowly; the relative-change stop comes first)
    assert torch.all(g[~active].abs() <= 0.2 + 1e-4)
    torch.testing.assert_close(g[active], -0.2 * r.codes[active].sign(), atol=1e-4, rtol=0)


def test_gradcheck_through_unrolled_fista() -> None:
    x, D = _problem(b=3, m=6, n=4)
    x.requires_grad_(True)
    D.requires_grad_(True)
    assert gradcheck(lambda a, d: fista(a, d, 0.1, max_iter=5, tol=0.0, lipschitz=4.0), (x, D))


@pytest.mark.parametrize(
    "kwargs, err",
    [
        ({"alpha": 0.0}, ValueError),
        ({"alpha": -1.0}, ValueError),
        ({"alpha": float("nan")}, ValueError),
        ({"alpha": "1"}, TypeError),
        ({"max_iter": -1}, ValueError),
        ({"tol": -1.0}, ValueError),
        ({"check_every": 0}, ValueError),
    ],
)
def test_bad_arguments_raise(kwargs: dict, err: type) -> None:
    x, D = _problem()
    args = {"alpha": 0.1, **kwargs}
    alpha = args.pop("alpha")
    with pytest.raises(err):
        sparse_encode(x, D, alpha, **args)


def test_bad_shapes_raise() -> None:
    x, D = _problem()
    with pytest.raises(ValueError, match="n_features"):
        fista(x[:, :5], D, 0.1)
    with pytest.raises(ValueError, match="2-D"):
        fista(x, D[0], 0.1)
    with pytest.raises(ValueError, match="2-D"):
        fista(x[0], D, 0.1)
    with pytest.raises(TypeError, match="dtype"):
        fista(x.float(), D, 0.1)
    with pytest.raises(ValueError, match="init"):
        fista(x, D, 0.1, init=torch.zeros(2, 2, dtype=torch.float64))
    with pytest.raises(ValueError, match="codes"):
        lasso_objective(x, torch.zeros(3, 3, dtype=torch.float64), D, 0.1)


# ---------------------------------------------------------------- dictionary learning


def _sparse_signals(b: int, m: int, n: int, k: int, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    D = normalize_atoms(torch.randn(m, n, generator=g))
    Z = torch.zeros(b, m)
    idx = torch.rand(b, m, generator=g).argsort(1)[:, :k]
    Z.scatter_(1, idx, torch.randn(b, k, generator=g).abs() + 0.5)
    return Z @ D + 0.01 * torch.randn(b, n, generator=g), D


def test_update_dictionary_keeps_unit_norm_and_reduces_error() -> None:
    x, _ = _sparse_signals(200, 16, 8, 2)
    g = torch.Generator().manual_seed(1)
    D0 = normalize_atoms(torch.randn(16, 8, generator=g))
    z = fista(x, D0, 0.1)
    A, Bs = z.t() @ z, z.t() @ x
    D1 = update_dictionary(D0, A, Bs, n_sweeps=3)
    torch.testing.assert_close(D1.norm(dim=1), torch.ones(16))
    err0 = (x - z @ D0).pow(2).sum()
    err1 = (x - z @ D1).pow(2).sum()
    assert err1 < err0


@pytest.mark.parametrize("batch_size", [None, 32])
def test_learn_dictionary_unit_norm_and_objective_drops(batch_size: int | None) -> None:
    x, _ = _sparse_signals(400, 24, 10, 2, seed=2)
    g = torch.Generator().manual_seed(0)
    res = learn_dictionary(x, 24, 0.05, n_iter=8, batch_size=batch_size, generator=g,
                           encode_iter=100)
    torch.testing.assert_close(res.dictionary.norm(dim=1), torch.ones(24))
    assert res.history[-1] < res.history[0]
    assert res.codes.shape == (400, 24)
    # learnt atoms beat the random-row initial ones on the lasso objective
    g = torch.Generator().manual_seed(0)
    from hypersparse.coding import init_dictionary

    D0 = init_dictionary(x, 24, generator=g)
    f0 = lasso_objective(x, fista(x, D0, 0.05, max_iter=200), D0, 0.05).mean()
    f1 = lasso_objective(x, fista(x, res.dictionary, 0.05, max_iter=200), res.dictionary,
                         0.05).mean()
    assert f1 < f0


def test_online_learner_resamples_dead_atoms_and_state_dict_roundtrip() -> None:
    x, _ = _sparse_signals(256, 12, 8, 2, seed=4)
    learner = OnlineDictionaryLearner(8, 12, 0.05, resample_every=1, dead_threshold=0.5,
                                      n_iter=50)
    with torch.no_grad():
        learner.dictionary[0] = -learner.dictionary[1]  # make sure something is rarely used
        learner.dictionary.copy_(normalize_atoms(learner.dictionary))
    learner.usage.zero_()  # every atom looks dead -> all resampled from the worst signals
    before = learner.dictionary.clone()
    learner.partial_fit(x[:64])
    assert not torch.allclose(before, learner.dictionary)
    torch.testing.assert_close(learner.dictionary.norm(dim=1), torch.ones(12))
    for i in range(1, 4):
        learner.partial_fit(x[64 * i : 64 * (i + 1)])
    clone = OnlineDictionaryLearner(8, 12, 0.05, resample_every=1, dead_threshold=0.5, n_iter=50)
    clone.load_state_dict(learner.state_dict())
    torch.testing.assert_close(clone(x), learner(x))
    assert int(clone.steps) == 4
    a, b = learner.partial_fit(x[:64]), clone.partial_fit(x[:64])
    torch.testing.assert_close(a, b)
    torch.testing.assert_close(learner.dictionary, clone.dictionary)


def test_dictionary_bad_input_raises() -> None:
    with pytest.raises(ValueError):
        learn_dictionary(torch.randn(10, 4), 5, alpha=0.0)
    with pytest.raises(ValueError):
        learn_dictionary(torch.randn(10), 5, alpha=0.1)
    with pytest.raises(ValueError):
        OnlineDictionaryLearner(4, 0, 0.1)
    with pytest.raises(ValueError):
        OnlineDictionaryLearner(4, 5, 0.1).partial_fit(torch.randn(3, 5))


# ---------------------------------------------------------------- LISTA


@pytest.mark.parametrize("shared", [False, True])
@pytest.mark.parametrize("nonneg", [False, True])
def test_lista_initialised_equals_ista(shared: bool, nonneg: bool) -> None:
    x, D = _problem(b=7, m=20, n=10)
    net = LISTA.from_dictionary(D, 0.2, n_steps=9, shared=shared, nonneg=nonneg)
    want = ista(x, D, 0.2, max_iter=9, tol=0.0, nonneg=nonneg)
    torch.testing.assert_close(net(x), want)


def test_lista_training_beats_ista_same_steps() -> None:
    x, D = _sparse_signals(512, 32, 16, 3, seed=5)
    alpha = 0.1
    net = LISTA.from_dictionary(D, alpha, n_steps=4)
    opt = torch.optim.Adam(net.parameters(), lr=1e-3)
    with torch.no_grad():
        before = float(lista_loss(net(x), x, D, alpha))
    for _ in range(60):
        opt.zero_grad()
        lista_loss(net(x), x, D, alpha).backward()
        opt.step()
    with torch.no_grad():
        after = float(lista_loss(net(x), x, D, alpha))
    assert after < before


def test_lista_gradcheck_and_state_dict() -> None:
    x, D = _problem(b=3, m=5, n=4)
    net = LISTA.from_dictionary(D, 0.1, n_steps=3)
    x.requires_grad_(True)
    assert gradcheck(lambda a, we, ws, th: _lista_functional(net, a, we, ws, th),
                     (x, net.weight_e.detach().clone().requires_grad_(True),
                      net.weight_s.detach().clone().requires_grad_(True),
                      net.threshold.detach().clone().requires_grad_(True)))
    other = LISTA(4, 5, 3, dtype=torch.float64)
    other.load_state_dict(net.state_dict())
    torch.testing.assert_close(other(x), net(x))
    assert "n_steps=3" in repr(net)


def _lista_functional(net, x, we, ws, th):
    return torch.func.functional_call(net, {"weight_e": we, "weight_s": ws, "threshold": th},
                                      (x,))


def test_lista_regression_loss_and_bad_input() -> None:
    z = torch.ones(2, 3)
    t = torch.zeros(2, 3)
    D = torch.eye(3)
    assert float(lista_loss(z, torch.zeros(2, 3), D, 0.1, target=t, kind="regression")) == 1.5
    with pytest.raises(ValueError, match="target"):
        lista_loss(z, torch.zeros(2, 3), D, 0.1, kind="regression")
    with pytest.raises(ValueError, match="kind"):
        lista_loss(z, torch.zeros(2, 3), D, 0.1, kind="bogus")  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        LISTA(4, 5, 0)
    with pytest.raises(ValueError):
        LISTA(4, 5, 2)(torch.zeros(2, 3))
    with pytest.raises(ValueError):
        LISTA(4, 5, 2).init_from_dictionary(torch.eye(4), 0.1)


# ---------------------------------------------------------------- contrastive loss


def test_contrastive_loss_matches_seed_formula() -> None:
    g = torch.Generator().manual_seed(0)
    W = torch.randn(3, 7, generator=g, dtype=torch.float64)
    yi = torch.randn(11, 7, generator=g, dtype=torch.float64)
    yj = torch.randn(11, 7, generator=g, dtype=torch.float64)
    l = (torch.rand(11, generator=g) > 0.5).double()
    beta = 5.0
    want = []
    for k in range(11):
        d2 = float(((W @ yi[k] - W @ yj[k]) ** 2).sum())
        want.append((1 - l[k]) * 0.5 * d2 + l[k] * max(0.0, beta - d2))
    got = contrastive_loss(yi @ W.t(), yj @ W.t(), l, beta, reduction="none")
    torch.testing.assert_close(got, torch.tensor(want, dtype=torch.float64))
    torch.testing.assert_close(contrastive_loss(yi @ W.t(), yj @ W.t(), l, beta),
                               got.mean())
    torch.testing.assert_close(ContrastiveLoss(beta, "sum")(yi @ W.t(), yj @ W.t(), l), got.sum())
    # a dissimilar pair further apart than the margin costs nothing
    far = contrastive_loss(torch.zeros(1, 2), torch.full((1, 2), 10.0), torch.ones(1), 1.0)
    assert float(far) == 0.0


def test_contrastive_gradcheck_and_projection() -> None:
    g = torch.Generator().manual_seed(0)
    a = torch.randn(6, 3, generator=g, dtype=torch.float64, requires_grad=True)
    b = torch.randn(6, 3, generator=g, dtype=torch.float64, requires_grad=True)
    l = torch.tensor([0, 1, 0, 1, 1, 0], dtype=torch.float64)
    assert gradcheck(lambda u, v: contrastive_loss(u, v, l, 50.0), (a, b))
    proj = ContrastiveProjection(5, 2, dtype=torch.float64)
    y = torch.randn(2, 5, 3, 4, dtype=torch.float64)
    out = proj(y)
    assert out.shape == (2, 2, 3, 4)
    torch.testing.assert_close(out[1, :, 2, 3], proj.weight @ y[1, :, 2, 3])
    torch.testing.assert_close(proj(y[:, :, 0, 0]), out[:, :, 0, 0])


def test_contrastive_bad_input() -> None:
    a = torch.zeros(4, 3)
    with pytest.raises(ValueError, match="beta"):
        contrastive_loss(a, a, torch.zeros(4), 0.0)
    with pytest.raises(ValueError, match="dissimilar"):
        contrastive_loss(a, a, torch.zeros(3), 1.0)
    with pytest.raises(ValueError, match="shape"):
        contrastive_loss(a, a[:, :2], torch.zeros(4), 1.0)
    with pytest.raises(ValueError, match="reduction"):
        contrastive_loss(a, a, torch.zeros(4), 1.0, reduction="max")  # type: ignore[arg-type]


# ---------------------------------------------------------------- pipeline


def test_extract_patches_matches_loops() -> None:
    x = torch.randn(2, 3, 7, 6)
    p = extract_patches(x, 3, 2)
    assert p.shape == (2, 3 * 2, 27)
    k = 0
    for i in range(0, 5, 2):
        for j in range(0, 4, 2):
            torch.testing.assert_close(p[1, k], x[1, :, i : i + 3, j : j + 3].reshape(-1))
            k += 1
    with pytest.raises(ValueError):
        extract_patches(x, 8)
    with pytest.raises(ValueError):
        extract_patches(x[0], 2)


def test_local_max_pool_reference() -> None:
    y = torch.randn(2, 4, 6, 6)
    z = local_max_pool(y, 4, 2)
    assert z.shape == (2, 4, 2, 2)
    torch.testing.assert_close(z[1, 3, 1, 0], y[1, 3, 2:6, 0:4].max())
    za = local_max_pool(y, 4, 2, absolute=True)
    torch.testing.assert_close(za[0, 1, 0, 1], y[0, 1, 0:4, 2:6].abs().max())
    torch.testing.assert_close(local_max_pool(y, 100)[..., 0, 0], y.amax(dim=(2, 3)))


def test_sparse_coding_layer_matches_direct_encoding() -> None:
    layer = SparseCodingLayer(2, 10, 3, stride=2, alpha=0.05, n_iter=20, chunk=7,
                              dtype=torch.float64)
    x = torch.rand(3, 2, 9, 8, dtype=torch.float64)
    out = layer(x)
    assert out.shape == (3, 10, 4, 3)
    patches = extract_patches(x, 3, 2).reshape(-1, 18)
    want = fista(patches, layer.dictionary, 0.05, max_iter=20, tol=0.0, nonneg=True)
    torch.testing.assert_close(out.permute(0, 2, 3, 1).reshape(-1, 10), want)
    assert (out >= 0).all()
    other = SparseCodingLayer(2, 10, 3, stride=2, alpha=0.05, n_iter=20, dtype=torch.float64)
    other.load_state_dict(layer.state_dict())
    torch.testing.assert_close(other(x), out)
    with pytest.raises(ValueError):
        layer(torch.rand(3, 1, 9, 8, dtype=torch.float64))
    with pytest.raises(ValueError):
        layer.set_dictionary(torch.zeros(3, 3))
    with pytest.raises(ValueError):
        SparseCodingLayer(1, 4, 3, alpha=0.0)


@pytest.mark.parametrize("labels", [False, True])
def test_spatial_pairs(labels: bool) -> None:
    g = torch.Generator().manual_seed(0)
    lab = torch.arange(20) % 3 if labels else None
    i, j, l = spatial_pairs(20, 4, 5, 400, radius=1, labels=lab, generator=g)
    cells = 20
    bi, bj = i // cells, j // cells
    hi, hj = (i % cells) // 5, (j % cells) // 5
    wi, wj = i % 5, j % 5
    sim = l == 0
    assert sim.sum() == 200
    assert torch.all(bi[sim] == bj[sim])
    assert torch.all(i[sim] != j[sim])
    assert torch.all((hi[sim] - hj[sim]).abs() <= 1) and torch.all((wi[sim] - wj[sim]).abs() <= 1)
    assert torch.all(bi[~sim] != bj[~sim])
    if labels:
        assert torch.all(lab[bi[~sim]] != lab[bj[~sim]])
    assert i.max() < 20 * cells and j.max() < 20 * cells
    # a 1x2 grid still gives distinct similar cells
    i, j, l = spatial_pairs(3, 1, 2, 10, radius=3, generator=g)
    assert torch.all(i[l == 0] != j[l == 0])
    with pytest.raises(ValueError):
        spatial_pairs(1, 2, 2, 10)



# ---------------------------------------------------------------- in-place (no-grad) encoder path


def _naive_fista(x, D, alpha, k, *, accelerated=True, restart=True, nonneg=False):
    """Textbook (F)ISTA, one row at a time (the reference for both encoder paths)."""
    L = float(torch.linalg.matrix_norm(D, ord=2) ** 2)
    out = []
    for row in x:
        z = torch.zeros(D.shape[0], dtype=x.dtype)
        y, t = z.clone(), 1.0
        for _ in range(k):
            v = y - (y @ D - row) @ D.t() / L
            z_new = torch.clamp(v - alpha / L, min=0) if nonneg else (
                torch.sign(v) * torch.clamp(v.abs() - alpha / L, min=0))
            if accelerated:
                if restart and float((y - z_new) @ (z_new - z)) > 0:
                    t = 1.0
                t_next = (1 + (1 + 4 * t * t) ** 0.5) / 2
                y = z_new + (t - 1) / t_next * (z_new - z)
                t = t_next
            else:
                y = z_new
            z = z_new
        out.append(z)
    return torch.stack(out)


@settings(max_examples=25, deadline=None)
@given(b=st.integers(1, 9), m=st.integers(1, 24), n=st.integers(1, 8),
       block=st.sampled_from([1, 7, 64, 1 << 16]), accelerated=st.booleans(),
       restart=st.booleans(), nonneg=st.booleans())
def test_inplace_path_matches_naive_and_autograd_path(
    b: int, m: int, n: int, block: int, accelerated: bool, restart: bool, nonneg: bool
) -> None:
    ista_mod = importlib.import_module("hypersparse.coding.ista")  # the package attr is ista()

    x, D = _problem(b=b, m=m, n=n, seed=b * 100 + m)
    want = _naive_fista(x, D, 0.2, 12, accelerated=accelerated, restart=restart, nonneg=nonneg)
    old = ista_mod._BLOCK_ELEMENTS
    ista_mod._BLOCK_ELEMENTS = block  # rows per block = block // m: many blocks, or one
    try:
        fast = sparse_encode(x, D, 0.2, max_iter=12, tol=0.0, accelerated=accelerated,
                             restart=restart, nonneg=nonneg)
    finally:
        ista_mod._BLOCK_ELEMENTS = old
    xg = x.clone().requires_grad_(True)  # requires grad: the autograd path
    slow = sparse_encode(xg, D, 0.2, max_iter=12, tol=0.0, accelerated=accelerated,
                         restart=restart, nonneg=nonneg)
    assert slow.codes.requires_grad and not fast.codes.requires_grad
    torch.testing.assert_close(fast.codes, want, atol=1e-10, rtol=0)
    torch.testing.assert_close(slow.codes.detach(), want, atol=1e-10, rtol=0)
    assert fast.n_iter == 12


def test_inplace_path_warm_start_noncontiguous_and_blockwise_stopping() -> None:
    ista_mod = importlib.import_module("hypersparse.coding.ista")  # the package attr is ista()

    x, D = _problem(b=40, m=30, n=12, seed=3)
    xt = x.t().contiguous().t()  # non-contiguous view with the same values
    assert not xt.is_contiguous()
    init = fista(x, D, 0.2, max_iter=5, tol=0.0)
    ref = torch.from_numpy(sk_sparse_encode(x.numpy(), D.numpy(), algorithm="lasso_lars",
                                            alpha=0.2))  # the exact lasso solution
    old = ista_mod._BLOCK_ELEMENTS
    ista_mod._BLOCK_ELEMENTS = 30 * 8  # blocks of 8 rows, each stopping on its own
    try:
        r = sparse_encode(xt, D, 0.2, max_iter=2000, tol=1e-9, init=init, check_every=3)
    finally:
        ista_mod._BLOCK_ELEMENTS = old
    assert r.converged and r.n_iter < 2000 and r.n_iter % 3 == 0
    torch.testing.assert_close(r.codes, ref, atol=1e-5, rtol=0)
    r1 = sparse_encode(x, D, 0.2, max_iter=2000, tol=1e-9, init=init, check_every=3)
    assert r1.converged and r1.n_iter >= r.n_iter  # one block waits for its slowest row
    torch.testing.assert_close(r1.codes, ref, atol=1e-5, rtol=0)
    assert init.equal(fista(x, D, 0.2, max_iter=5, tol=0.0))  # warm start not modified
    # no_grad on inputs that require grad takes the in-place path too
    with torch.no_grad():
        z = fista(x.clone().requires_grad_(True), D, 0.2, max_iter=3, tol=0.0)
    assert not z.requires_grad


# ---------------------------------------------------------------- LISTA variants


def test_fista_momentum_schedule() -> None:
    b = fista_momentum(6, dtype=torch.float64)
    t, want = 1.0, [0.0]
    for _ in range(5):
        t_next = (1 + (1 + 4 * t * t) ** 0.5) / 2
        want.append((t - 1) / t_next)
        t = t_next
    torch.testing.assert_close(b, torch.tensor(want, dtype=torch.float64))
    assert fista_momentum(0).shape == (0,)
    with pytest.raises(ValueError, match="n_steps"):
        fista_momentum(-1)


@pytest.mark.parametrize("shared", [False, True])
@pytest.mark.parametrize("coupled", [False, True])
@pytest.mark.parametrize("momentum", [False, True])
def test_lista_variants_initialised_equal_ista_or_fista(shared: bool, coupled: bool,
                                                        momentum: bool) -> None:
    x, D = _problem(b=7, m=20, n=10)
    net = LISTA.from_dictionary(D, 0.2, n_steps=9, shared=shared, coupled=coupled,
                                momentum=momentum)
    want = _naive_fista(x, D, 0.2, 9, accelerated=momentum, restart=False)
    torch.testing.assert_close(net(x), want)
    n_params = sum(p.numel() for p in net.parameters())
    t = 1 if shared else 9
    assert n_params == t * (20 * 10 + 20 + (0 if coupled else 400)) + (9 if momentum else 0)
    assert ("dictionary" in dict(net.named_buffers())) == coupled
    assert f"coupled={coupled}" in repr(net) and f"momentum={momentum}" in repr(net)


@pytest.mark.parametrize("coupled", [False, True])
def test_lista_momentum_coupled_gradcheck_and_state_dict(coupled: bool) -> None:
    x, D = _problem(b=3, m=5, n=4)
    net = LISTA.from_dictionary(D, 0.1, n_steps=3, momentum=True, coupled=coupled)
    with torch.no_grad():
        net.momentum.add_(0.3)  # non-zero at every step, so each gradient path is exercised
    names = [n for n, _ in net.named_parameters()]
    params = tuple(p.detach().clone().requires_grad_(True) for p in net.parameters())

    def f(a, *ps):
        return torch.func.functional_call(net, dict(zip(names, ps, strict=True)), (a,))

    assert gradcheck(f, (x.clone().requires_grad_(True), *params))
    other = LISTA(4, 5, 3, momentum=True, coupled=coupled, dtype=torch.float64)
    other.load_state_dict(net.state_dict())
    torch.testing.assert_close(other(x), net(x))
    with pytest.raises(RuntimeError):
        LISTA(4, 5, 3, dtype=torch.float64).load_state_dict(net.state_dict())


def test_lista_coupled_momentum_training_beats_fista_same_steps() -> None:
    x, D = _sparse_signals(512, 32, 16, 3, seed=5)
    alpha = 0.1
    net = LISTA.from_dictionary(D, alpha, n_steps=4, coupled=True, momentum=True)
    with torch.no_grad():
        before = float(lista_loss(net(x), x, D, alpha))
    torch.testing.assert_close(before, float(lasso_objective(
        x, fista(x, D, alpha, max_iter=4, tol=0.0, restart=False), D, alpha).mean()))
    opt = torch.optim.Adam(net.parameters(), lr=1e-3)
    for _ in range(60):
        opt.zero_grad()
        lista_loss(net(x), x, D, alpha).backward()
        opt.step()
    with torch.no_grad():
        after = float(lista_loss(net(x), x, D, alpha))
    assert after < before


# ---------------------------------------------------------------- duality gap / stop="gap"


def _naive_gap(x, z, D, alpha, nonneg=False):
    out = []
    for row, code in zip(x, z, strict=True):
        r = row - D.t() @ code
        c = D @ r
        worst = float(c.max()) if nonneg else float(c.abs().max())
        s = min(1.0, alpha / worst) if worst > 0 else 1.0
        nu = s * r
        primal = 0.5 * float(r @ r) + alpha * float(code.abs().sum())
        dual = 0.5 * float(row @ row) - 0.5 * float((row - nu) @ (row - nu))
        out.append(primal - dual)
    return torch.tensor(out, dtype=x.dtype)


@pytest.mark.parametrize("nonneg", [False, True])
def test_duality_gap_matches_naive_and_bounds_suboptimality(nonneg: bool) -> None:
    x, D = _problem(b=8, m=20, n=10, seed=4)
    alpha = 0.3
    z_opt = torch.from_numpy(sk_sparse_encode(x.numpy(), D.numpy(), algorithm="lasso_cd",
                                              alpha=alpha, positive=nonneg, max_iter=10000))
    f_opt = lasso_objective(x, z_opt, D, alpha)
    for k in (0, 1, 3, 10):
        z = fista(x, D, alpha, max_iter=k, tol=0.0, nonneg=nonneg)
        gap = lasso_duality_gap(x, z, D, alpha, nonneg=nonneg)
        torch.testing.assert_close(gap, _naive_gap(x, z, D, alpha, nonneg))
        assert torch.all(gap >= lasso_objective(x, z, D, alpha) - f_opt - 1e-9)
    assert float(lasso_duality_gap(x, z_opt, D, alpha, nonneg=nonneg).max()) < 1e-6
    with pytest.raises(ValueError, match="codes"):
        lasso_duality_gap(x, z_opt[:, :3], D, alpha)


@pytest.mark.parametrize("requires_grad", [False, True])  # in-place path / autograd path
@pytest.mark.parametrize("accelerated", [False, True])
def test_stop_on_duality_gap_certifies_each_row(requires_grad: bool, accelerated: bool) -> None:
    x, D = _problem(b=30, m=24, n=10, seed=6)
    alpha = 0.2
    z_opt = torch.from_numpy(sk_sparse_encode(x.numpy(), D.numpy(), algorithm="lasso_lars",
                                              alpha=alpha))
    f_opt = lasso_objective(x, z_opt, D, alpha)
    tol = 1e-6 if accelerated else 1e-4  # ISTA: ~5,500 iterations for 1e-6 here
    r = sparse_encode(x.clone().requires_grad_(requires_grad), D, alpha, max_iter=5000,
                      tol=tol, stop="gap", check_every=2, accelerated=accelerated)
    assert r.converged and 0 < r.n_iter < 5000
    f = lasso_objective(x, r.codes.detach(), D, alpha)
    assert torch.all(f - f_opt <= tol * f + 1e-12)
    # looser tolerance, fewer iterations
    assert sparse_encode(x, D, alpha, tol=tol * 100, stop="gap", accelerated=accelerated,
                         max_iter=5000).n_iter < r.n_iter
    with pytest.raises(ValueError, match="stop"):
        sparse_encode(x, D, alpha, stop="never")  # type: ignore[arg-type]
