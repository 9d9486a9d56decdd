"""Sparse inference: CSRLinear against a dense reference, to_sparse_inference on pruned and
shared models, freeze on trained SparseLayers."""

from __future__ import annotations

import copy
import io
import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import Tensor, nn

from hypersparse.compress import (
    CSRLinear,
    SharedWeights,
    freeze,
    magnitude_prune,
    share_weights,
    to_sparse_inference,
)
from hypersparse.nn import HyperLayer, SparseLayer


def _sparse(m: int, n: int, density: float, seed: int = 0, dtype: torch.dtype = torch.float64
            ) -> Tensor:
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(m, n, generator=g, dtype=dtype)
    return w * (torch.rand(m, n, generator=g) < density)


@settings(max_examples=25, deadline=None)
@given(m=st.integers(1, 20), n=st.integers(1, 20), b=st.integers(0, 5),
       density=st.sampled_from([0.0, 0.1, 0.5, 1.0]), bias=st.booleans(),
       seed=st.integers(0, 2**16), int64=st.booleans())
def test_csr_linear_matches_dense(m: int, n: int, b: int, density: float, bias: bool,
                                  seed: int, int64: bool) -> None:
    w = _sparse(m, n, density, seed)
    bvec = torch.randn(m, dtype=torch.float64) if bias else None
    layer = CSRLinear(w, bvec, index_dtype=torch.int64 if int64 else torch.int32)
    x = torch.randn(b, n, dtype=torch.float64)
    ref = x @ w.T + (bvec if bias else 0)
    torch.testing.assert_close(layer(x), ref, rtol=1e-12, atol=1e-12)
    assert layer.nnz == int((w != 0).sum())
    assert layer.col_indices.dtype == (torch.int64 if int64 else torch.int32)
    torch.testing.assert_close(layer.to_dense(), w)


def test_csr_linear_leading_dims_non_contiguous_and_tensor_shapes() -> None:
    w = _sparse(6, 8, 0.3)
    layer = CSRLinear(w)
    x = torch.randn(8, 3, 4, dtype=torch.float64).permute(1, 2, 0)  # (3, 4, 8) non-contiguous
    assert not x.is_contiguous()
    torch.testing.assert_close(layer(x), x @ w.T)
    assert layer(torch.randn(8, dtype=torch.float64)).shape == (6,)  # no batch dimension
    # a rank-4 weight (out (2, 3), in (4, 2)) from dense and from sparse_coo
    w4 = _sparse(6, 8, 0.4, seed=1).reshape(2, 3, 4, 2)
    for src in (w4, w4.to_sparse()):
        l4 = CSRLinear(src, torch.arange(6.0, dtype=torch.float64).reshape(2, 3),
                       in_shape=(4, 2), out_shape=(2, 3))
        x4 = torch.randn(5, 4, 2, dtype=torch.float64)
        ref = torch.einsum("abij,nij->nab", w4, x4) + torch.arange(6.0).reshape(2, 3)
        torch.testing.assert_close(l4(x4), ref.double())


def test_csr_linear_state_dict_round_trip_with_other_nnz() -> None:
    a, b = CSRLinear(_sparse(5, 7, 0.2, 0), torch.zeros(5, dtype=torch.float64)), \
        CSRLinear(_sparse(5, 7, 0.8, 1), torch.ones(5, dtype=torch.float64))
    assert a.nnz != b.nnz
    buf = io.BytesIO()
    torch.save(a.state_dict(), buf)
    buf.seek(0)
    b.load_state_dict(torch.load(buf))
    x = torch.randn(3, 7, dtype=torch.float64)
    torch.testing.assert_close(b(x), a(x))
    torch.testing.assert_close(copy.deepcopy(a)(x), a(x))


def test_csr_linear_bad_input() -> None:
    w = _sparse(3, 4, 0.5)
    with pytest.raises(TypeError, match="Tensor"):
        CSRLinear([[1.0]])  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="floating"):
        CSRLinear(torch.ones(2, 2, dtype=torch.long))
    with pytest.raises(ValueError, match="in_shape and out_shape"):
        CSRLinear(torch.zeros(2, 3, 4))
    with pytest.raises(ValueError, match="out_shape \\+ in_shape"):
        CSRLinear(w, in_shape=5, out_shape=3)
    with pytest.raises(ValueError, match="index_dtype"):
        CSRLinear(w, index_dtype=torch.int16)
    with pytest.raises(ValueError, match="bias"):
        CSRLinear(w, torch.zeros(4))
    layer = CSRLinear(w)
    with pytest.raises(ValueError, match="input must have shape"):
        layer(torch.zeros(2, 5, dtype=torch.float64))
    with pytest.raises(TypeError, match="dtype"):
        layer(torch.zeros(2, 4, dtype=torch.float32))


def _mlp() -> nn.Sequential:
    return nn.Sequential(nn.Flatten(), nn.Linear(64, 48), nn.ReLU(), nn.Linear(48, 32),
                         nn.ReLU(), nn.Linear(32, 10))


@pytest.mark.parametrize("batch", [1, 7])
def test_to_sparse_inference_keeps_outputs_of_pruned_model(batch: int) -> None:
    net = _mlp()
    magnitude_prune(net[1], amount=0.9)
    magnitude_prune(net[3], amount=0.5)
    x = torch.randn(batch, 8, 8)
    fast, rows = to_sparse_inference(net, batch_size=batch, measure=False)
    assert [type(fast[i]).__name__ for i in (1, 3, 5)] == ["CSRLinear", "CSRLinear", "Linear"]
    assert [r.replaced for r in rows] == [True, True, False] and rows[2].reason == "no zeros"
    assert rows[0].nonzeros == round(0.1 * 64 * 48) and rows[0].shape == (48, 64)
    torch.testing.assert_close(fast(x), net(x), atol=1e-5, rtol=0)
    assert isinstance(net[1], nn.Linear)  # the original is untouched (inplace=False)


def test_to_sparse_inference_measures_and_reports() -> None:
    net = _mlp()
    magnitude_prune(net[1], amount=0.95)
    fast, rows = to_sparse_inference(net, batch_size=1, repeats=3, warmup=1)
    r = rows[0]
    assert r.dense_seconds is not None and r.csr_seconds is not None and r.speedup is not None
    assert r.speedup == pytest.approx(r.dense_seconds / r.csr_seconds)
    assert r.replaced == isinstance(fast[1], CSRLinear) == (r.speedup >= 1.0)
    # an impossible bar keeps everything dense, and says why
    slow, rows = to_sparse_inference(net, batch_size=1, repeats=2, warmup=0, min_speedup=1e9)
    assert isinstance(slow[1], nn.Linear) and not rows[0].replaced
    assert "slower than needed" in rows[0].reason
    x = torch.randn(4, 64)
    torch.testing.assert_close(fast(x), net(x), atol=1e-5, rtol=0)


def test_to_sparse_inference_shared_weights_and_top_level_linear() -> None:
    net = _mlp()
    magnitude_prune(net[1], amount=0.8)
    shared = share_weights(net, bits=3)
    assert isinstance(shared[1], SharedWeights)
    fast, rows = to_sparse_inference(shared, measure=False)
    assert isinstance(fast[1], CSRLinear) and rows[0].name == "1"
    x = torch.randn(5, 64)
    torch.testing.assert_close(fast(x), shared(x), atol=1e-5, rtol=0)
    lin = nn.Linear(20, 6)
    magnitude_prune(lin, amount=0.5)
    out, rows = to_sparse_inference(lin, measure=False, inplace=True)
    assert isinstance(out, CSRLinear) and rows[0].name == ""
    xl = torch.randn(3, 20)
    torch.testing.assert_close(out(xl), lin(xl), atol=1e-5, rtol=0)


def test_to_sparse_inference_bad_input() -> None:
    with pytest.raises(TypeError, match="nn.Module"):
        to_sparse_inference("net")  # type: ignore[arg-type]
    for bad in (0, -1, 1.5, True):
        with pytest.raises(ValueError, match="batch_size"):
            to_sparse_inference(_mlp(), batch_size=bad)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="min_speedup"):
        to_sparse_inference(_mlp(), min_speedup=0)
    with pytest.raises(ValueError, match="index_dtype"):
        to_sparse_inference(_mlp(), index_dtype=torch.float32)


def _train(layer: SparseLayer, steps: int = 8) -> None:
    """A few Adam steps towards a random linear map, so means, sigmas and values move."""
    g = torch.Generator().manual_seed(0)
    target = torch.randn(math.prod(layer.out_shape), math.prod(layer.in_shape), generator=g)
    opt = torch.optim.Adam(layer.parameters(), lr=0.1)
    layer.train()
    for _ in range(steps):
        x = torch.randn(8, *layer.in_shape, generator=g)
        loss = (layer(x).flatten(1) - x.flatten(1) @ target.T).pow(2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()


@pytest.mark.parametrize("shapes", [((12,), (10,)), ((4, 5), (3, 2))])
def test_freeze_matches_eval_semantics(shapes: tuple[tuple[int, ...], tuple[int, ...]]) -> None:
    in_shape, out_shape = shapes
    layer = SparseLayer(in_shape, out_shape, k=24, bias=True)
    before = layer.to_sparse().to_dense()
    _train(layer)
    assert not torch.equal(layer.to_sparse().to_dense(), before)  # training moved it
    frozen = freeze(layer)
    layer.eval()
    x = torch.randn(9, *in_shape)
    torch.testing.assert_close(frozen(x), layer(x), atol=1e-5, rtol=0)
    # eval semantics: round(mu) indices, values v, coinciding tuples summed
    dense = layer.to_sparse().to_dense()
    torch.testing.assert_close(frozen.to_dense(), dense)
    assert frozen.nnz == int((dense != 0).sum()) and frozen.nnz <= layer.k
    assert frozen.in_shape == in_shape and frozen.out_shape == out_shape


def test_freeze_sums_coinciding_tuples_and_fixed_values() -> None:
    layer = SparseLayer(4, 3, k=3, learn_values=False)
    with torch.no_grad():
        layer.raw_means.zero_()  # every tuple at the centre: index (1, 2) after rounding
    frozen = freeze(layer)
    assert frozen.nnz == 1 and frozen.to_dense()[1, 2] == 3.0 == frozen.values.sum()
    x = torch.randn(2, 4)
    torch.testing.assert_close(frozen(x), layer.eval()(x))


def test_freeze_rejects_adaptive_and_other_modules() -> None:
    class Adaptive(HyperLayer):
        def __init__(self) -> None:
            super().__init__(6, 4, k=5)
            self.net = nn.Linear(6, 5 * 2 + 5 + 5)

        def hyper(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
            h = self.net(x)
            return h[:, :10].reshape(-1, 5, 2), h[:, 10:15], h[:, 15:]

    with pytest.raises(ValueError, match="adaptive"):
        freeze(Adaptive())
    with pytest.raises(TypeError, match="SparseLayer"):
        freeze(nn.Linear(3, 3))
