"""Tests of the differentiable quicksort, NeuralSort and SortLayer."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from hypersparse.functional import apply_sort_level, neuralsort, quicksort, quicksort_tuples
from hypersparse.nn import SortLayer


def _gather(x: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    return x[torch.arange(x.shape[0])[:, None], idx]


# ----------------------------------------------------------------------------- hard sort


@settings(max_examples=25, deadline=None)
@given(
    b=st.integers(0, 4),
    n=st.integers(2, 40),
    levels=st.integers(1, 6),
    feat=st.sampled_from([(), (3,), (2, 3)]),
    seed=st.integers(0, 2**16),
)
def test_hard_equals_stable_torch_sort(b, n, levels, feat, seed):
    g = torch.Generator().manual_seed(seed)
    keys = torch.randint(0, levels, (b, n), generator=g).float()  # many ties
    items = torch.randn(b, n, *feat, generator=g)
    ref_keys, ref_idx = torch.sort(keys, dim=1, stable=True)
    out = quicksort(items, keys, hard=True)
    assert torch.equal(out.keys, ref_keys)
    assert torch.equal(out.values, _gather(items, ref_idx))


def test_hard_sort_integer_items_and_layer_eval():
    keys = torch.tensor([[2.0, 2.0, 1.0, 2.0, 0.0], [1.0, 1.0, 1.0, 1.0, 1.0]])
    items = torch.arange(10).view(2, 5)
    out = quicksort(items, keys, hard=True)
    assert out.values.tolist() == [[4, 2, 0, 1, 3], [5, 6, 7, 8, 9]]
    layer = SortLayer(5).eval()
    assert torch.equal(layer(items.float(), keys).values, out.values.float())


def test_non_contiguous_inputs():
    keys = torch.randn(7, 3).t()  # (3, 7) non-contiguous
    items = torch.randn(7, 3, 4).transpose(0, 1)  # (3, 7, 4) non-contiguous
    assert not keys.is_contiguous() and not items.is_contiguous()
    ref_keys, ref_idx = torch.sort(keys, dim=1, stable=True)
    out = quicksort(items, keys, hard=True)
    assert torch.equal(out.values, _gather(items, ref_idx))
    soft = quicksort(items, keys, samples=3, certainty=1e6)
    assert torch.allclose(soft.values, _gather(items, ref_idx))


# ----------------------------------------------------------------------------- soft sort


def test_soft_converges_to_true_sort_as_certainty_grows():
    g = torch.Generator().manual_seed(0)
    keys = torch.randn(32, 13, generator=g)
    items = torch.randn(32, 13, 2, generator=g)
    target = _gather(items, torch.sort(keys, dim=1, stable=True).indices)
    errors = []
    for c in (1.0, 10.0, 100.0, 1e4, 1e7):
        gen = torch.Generator().manual_seed(1)
        out = quicksort(items, keys, samples=6, certainty=c, generator=gen)
        errors.append(float((out.values - target).abs().mean()))
    assert errors[0] > 0.1
    assert errors[-1] < 1e-6
    assert all(a >= b - 1e-3 for a, b in zip(errors, errors[1:])), errors


@pytest.mark.parametrize("proposal", ["gumbel", "uniform"])
@pytest.mark.parametrize("n", [2, 3, 5])
def test_gradcheck_keys_and_items(proposal, n):
    g = torch.Generator().manual_seed(n)
    keys = torch.randn(2, n, dtype=torch.float64, generator=g).requires_grad_()
    items = torch.randn(2, n, 2, dtype=torch.float64, generator=g).requires_grad_()

    def f(items, keys):
        out = quicksort(items, keys, samples=5, certainty=2.0, proposal=proposal,
                        generator=torch.Generator().manual_seed(7))
        return out.values, out.keys

    assert torch.autograd.gradcheck(f, (items, keys))


def test_gradient_reaches_keys_and_learns_an_order():
    # Free keys, learned through the sort alone: the soft-sorted items must come out in order.
    g = torch.Generator().manual_seed(0)
    n = 8
    target_rank = torch.randperm(n, generator=g).float()[None]  # (1, n)
    items = target_rank[..., None] / (n - 1)  # (1, n, 1)
    keys = torch.nn.Parameter(torch.randn(1, n, generator=g) * 0.01)
    opt = torch.optim.Adam([keys], lr=0.05)
    want = (torch.arange(n).float() / (n - 1))[None, :, None]
    first = None
    for _ in range(100):
        out = quicksort(items, keys, samples=8, certainty=10.0, generator=g)
        loss = (out.values - want).pow(2).mean()
        if first is None:
            first = float(loss.detach())
            loss.backward()
            assert keys.grad is not None and keys.grad.abs().sum() > 0
        else:
            loss.backward()
        opt.step()
        opt.zero_grad()
    assert float(loss.detach()) < 0.05 * first
    hard = quicksort(items, keys.detach(), hard=True).values
    assert torch.equal(hard, want)


def test_weights_normalised_duplicates_dropped_and_pads_stay():
    g = torch.Generator().manual_seed(3)
    keys = torch.randn(4, 5, generator=g)
    items = torch.randn(4, 5, 2, generator=g)
    out = quicksort(items, keys, samples=16, certainty=100.0, return_levels=True, generator=g)
    assert len(out.levels) == 3
    for lvl in out.levels:
        assert lvl.source.shape == (4, 16, 8) and lvl.weight.shape == (4, 16)
        assert torch.allclose(lvl.weight.sum(1), torch.ones(4))
        # each candidate is a permutation, and pad slots 5..7 never move
        assert torch.equal(lvl.source.sort(-1).values, torch.arange(8).expand(4, 16, 8))
        assert torch.equal(lvl.source[..., 5:], torch.arange(5, 8).expand(4, 16, 3))
        assert torch.equal(lvl.values[:, 5:], torch.zeros(4, 3, 2))
        # duplicates (identical permutations) carry weight once
        for b in range(4):
            seen: dict[tuple[int, ...], int] = {}
            for s in range(16):
                key = tuple(lvl.source[b, s].tolist())
                if key in seen:
                    assert lvl.weight[b, s] == 0
                seen.setdefault(key, s)


def test_apply_sort_level_forward_and_reverse_are_transposes():
    g = torch.Generator().manual_seed(4)
    keys = torch.randn(3, 6, dtype=torch.float64, generator=g)
    items = torch.randn(3, 6, 2, dtype=torch.float64, generator=g)
    out = quicksort(items, keys, samples=4, certainty=1.0, return_levels=True, generator=g)
    lvl = out.levels[0]
    x = torch.nn.functional.pad(items, (0, 0, 0, 2))  # (3, 8, 2)
    assert torch.allclose(apply_sort_level(lvl, x), lvl.values)
    y = torch.randn(3, 8, 2, dtype=torch.float64, generator=g)
    lhs = (apply_sort_level(lvl, x) * y).sum()
    rhs = (x * apply_sort_level(lvl, y, reverse=True)).sum()
    assert torch.allclose(lhs, rhs)
    with pytest.raises(ValueError, match="x must have shape"):
        apply_sort_level(lvl, torch.zeros(3, 6, 2))


def test_no_dense_n_by_n_tensor_on_the_quicksort_path():
    n = 1024
    keys = torch.randn(1, n, requires_grad=True)
    items = torch.randn(1, n, 1)
    largest = 0

    def pack(t: torch.Tensor) -> torch.Tensor:
        nonlocal largest
        largest = max(largest, t.numel())
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = quicksort(items, keys, samples=4)
        out.values.sum().backward()
    assert 0 < largest <= 4 * n  # O(S n), far from n^2
    assert quicksort_tuples(n, 4) == 4 * n * 10 < n * n


def test_generator_makes_candidates_reproducible():
    keys, items = torch.randn(2, 9), torch.randn(2, 9, 3)
    a = quicksort(items, keys, samples=4, certainty=1.0, generator=torch.Generator().manual_seed(5))
    b = quicksort(items, keys, samples=4, certainty=1.0, generator=torch.Generator().manual_seed(5))
    assert torch.equal(a.values, b.values)


def test_empty_batch():
    out = quicksort(torch.zeros(0, 5, 3), torch.zeros(0, 5), samples=3)
    assert out.values.shape == (0, 5, 3) and out.keys.shape == (0, 5)


# ----------------------------------------------------------------------------- NeuralSort


def _neuralsort_reference(s: torch.Tensor, tau: float) -> torch.Tensor:
    """The paper's formula (descending), written out loop by loop."""
    n = s.shape[0]
    p = torch.empty(n, n, dtype=s.dtype)
    a1 = torch.stack([sum(abs(s[j] - s[k]) for k in range(n)) for j in range(n)])
    for i in range(1, n + 1):
        p[i - 1] = torch.softmax(((n + 1 - 2 * i) * s - a1) / tau, dim=0)
    return p


def test_neuralsort_matches_the_formula_and_sorts():
    s = torch.randn(3, 6, dtype=torch.float64)
    p = neuralsort(s, tau=0.5)
    for b in range(3):
        ref = _neuralsort_reference(-s[b], 0.5)  # ascending = descending of -s
        assert torch.allclose(p[b], ref)
    assert torch.allclose(p.sum(-1), torch.ones(3, 6, dtype=torch.float64))
    hard = neuralsort(s, tau=1e-4)
    assert torch.allclose(hard @ s[..., None], torch.sort(s, dim=1).values[..., None])
    st_ = neuralsort(s, tau=1.0, hard=True)
    assert torch.equal(st_.argmax(-1), torch.sort(s, dim=1).indices)
    assert set(st_.detach().unique().tolist()) <= {0.0, 1.0}


def test_neuralsort_gradcheck():
    s = torch.randn(2, 5, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda x: neuralsort(x, tau=0.7), (s,))


# ----------------------------------------------------------------------------- SortLayer


def test_sort_layer_train_eval_state_dict_and_repr():
    layer = SortLayer(6, samples=3, certainty=5.0)
    assert "n=6" in repr(layer) and "certainty=5" in repr(layer)
    keys = torch.randn(2, 6)
    items = torch.randn(2, 6, 1, 4, 4)
    layer.train()
    torch.manual_seed(0)
    soft = layer(items, keys).values
    assert soft.shape == items.shape
    layer.eval()
    ref = _gather(items, torch.sort(keys, dim=1, stable=True).indices)
    assert torch.equal(layer(items, keys).values, ref)
    other = SortLayer(6, samples=3, certainty=1.0)
    other.load_state_dict(layer.state_dict())
    assert float(other.certainty) == 5.0
    other.train()
    torch.manual_seed(0)
    assert torch.equal(other(items, keys).values, soft)
    assert len(list(layer.parameters())) == 0


# ----------------------------------------------------------------------------- bad input


@pytest.mark.parametrize(
    ("items", "keys", "kwargs", "err", "match"),
    [
        (torch.zeros(2, 1), torch.zeros(2, 1), {}, ValueError, "n must be >= 2"),
        (torch.zeros(2, 3), torch.tensor([[0.0, math.nan, 1.0]] * 2), {}, ValueError, "finite"),
        (torch.zeros(2, 3), torch.tensor([[0.0, math.inf, 1.0]] * 2), {}, ValueError, "finite"),
        (torch.zeros(2, 4), torch.zeros(2, 3), {}, ValueError, "items must have shape"),
        (torch.zeros(3, 3), torch.zeros(2, 3), {}, ValueError, "items must have shape"),
        (torch.zeros(3), torch.zeros(3), {}, ValueError, r"keys must have shape \(B, n\)"),
        (torch.zeros(2, 3), torch.zeros(2, 3, dtype=torch.long), {}, TypeError, "floating"),
        (torch.zeros(2, 3, dtype=torch.long), torch.zeros(2, 3), {}, TypeError, "soft sort"),
        (torch.zeros(2, 3), torch.zeros(2, 3), {"samples": 0}, ValueError, "samples"),
        (torch.zeros(2, 3), torch.zeros(2, 3), {"certainty": -1.0}, ValueError, "certainty"),
        (torch.zeros(2, 3), torch.zeros(2, 3), {"proposal": "x"}, ValueError, "proposal"),
        ([[0.0]], torch.zeros(2, 3), {}, TypeError, "items must be a Tensor"),
    ],
)
def test_bad_input_raises(items, keys, kwargs, err, match):
    with pytest.raises(err, match=match):
        quicksort(items, keys, **kwargs)


def test_bad_layer_and_neuralsort_input_raises():
    with pytest.raises(ValueError, match="n must be an integer >= 2"):
        SortLayer(1)
    with pytest.raises(ValueError, match="samples"):
        SortLayer(4, samples=0)
    with pytest.raises(ValueError, match=r"keys must have shape \(B, 4\)"):
        SortLayer(4)(torch.zeros(2, 5), torch.zeros(2, 5))
    with pytest.raises(ValueError, match="tau"):
        neuralsort(torch.zeros(2, 3), tau=0.0)
    with pytest.raises(ValueError, match="finite"):
        neuralsort(torch.tensor([[1.0, math.nan]]))
