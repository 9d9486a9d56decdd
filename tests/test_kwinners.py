"""k-winners: the functional op against a sort-based reference, and the KWinners modules."""

from __future__ import annotations

import io
import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from hypersparse.functional import boost, k_winners, k_winners2d, update_duty_cycles
from hypersparse.nn import KWinners, KWinners2d


def reference_k_winners(x, k, duty=None, beta=0.0, density=None, break_ties=False, relu=False):
    """Row by row with a full sort: the k-th largest boosted value is the threshold."""
    out = torch.zeros_like(x)
    n = x.shape[1]
    for i in range(x.shape[0]):
        row = x[i]
        score = row.clone()
        if duty is not None:
            d = k / n if density is None else density
            score = row * torch.exp(beta * (d - duty))
        ordered = sorted(range(n), key=lambda j: -float(score[j]))
        thr = float(score[ordered[k - 1]])
        winners = ordered[:k] if break_ties else [j for j in range(n) if float(score[j]) >= thr]
        for j in winners:
            if not relu or row[j] > 0:
                out[i, j] = row[j]
    return out


def reference_local(x, k, **kw):
    b, c, h, w = x.shape
    flat = x.permute(0, 2, 3, 1).reshape(b * h * w, c)
    return reference_k_winners(flat, k, **kw).view(b, h, w, c).permute(0, 3, 1, 2)


# --- functional ----------------------------------------------------------------------------


@pytest.mark.parametrize("k", [1, 3, 7, 8])
def test_matches_reference(k):
    x = torch.randn(5, 8)
    torch.testing.assert_close(k_winners(x, k), reference_k_winners(x, k), rtol=0, atol=0)


def test_k1_and_kn():
    x = torch.randn(4, 6)
    assert torch.equal(k_winners(x, 6), x)
    y = k_winners(x, 1)
    assert torch.equal((y != 0).sum(1), torch.ones(4, dtype=torch.long))
    assert torch.equal(y.max(1).values, x.max(1).values)


def test_ties_all_win_unless_break_ties():
    x = torch.tensor([[1.0, 2.0, 2.0, 2.0, 0.5]])
    assert (k_winners(x, 2) != 0).sum() == 3  # all three tied at the 2nd largest win
    assert torch.equal(k_winners(x, 2), reference_k_winners(x, 2))
    y = k_winners(x, 2, break_ties=True)
    assert (y != 0).sum() == 2 and set(y[y != 0].tolist()) == {2.0}


def test_relu_drops_negative_winners():
    x = torch.tensor([[-1.0, -2.0, 3.0, -0.5]])
    assert torch.equal(k_winners(x, 3), torch.tensor([[-1.0, 0.0, 3.0, -0.5]]))
    assert torch.equal(k_winners(x, 3, relu=True), torch.tensor([[0.0, 0.0, 3.0, 0.0]]))


def test_empty_batch_and_non_contiguous():
    assert k_winners(torch.randn(0, 5), 2).shape == (0, 5)
    assert k_winners2d(torch.randn(0, 2, 3, 3), 4).shape == (0, 2, 3, 3)
    x = torch.randn(6, 9).t()  # (9, 6) non-contiguous
    assert not x.is_contiguous()
    assert torch.equal(k_winners(x, 2), reference_k_winners(x.contiguous(), 2))


def test_boosting_changes_winners():
    x = torch.tensor([[1.0, 0.9, 0.1]])
    assert k_winners(x, 1).nonzero().tolist() == [[0, 0]]
    duty = torch.tensor([0.9, 0.0, 0.0])  # unit 0 was always on, unit 1 never
    y = k_winners(x, 1, duty_cycles=duty, boost_strength=2.0)
    assert y.nonzero().tolist() == [[0, 1]]
    assert y[0, 1] == 0.9  # the winner passes x, not the boosted value
    assert torch.equal(y, reference_k_winners(x, 1, duty, 2.0))
    # zero strength = no boosting
    assert torch.equal(k_winners(x, 1, duty_cycles=duty, boost_strength=0.0), k_winners(x, 1))


def test_boost_formula():
    x = torch.randn(3, 4)
    duty = torch.rand(4)
    torch.testing.assert_close(boost(x, duty, 1.5, 0.25), x * torch.exp(1.5 * (0.25 - duty)))
    x4 = torch.randn(2, 3, 2, 2)
    d3 = torch.rand(3)
    expect = x4 * torch.exp(0.7 * (0.1 - d3)).view(1, 3, 1, 1)
    torch.testing.assert_close(boost(x4, d3, 0.7, 0.1), expect)


@settings(max_examples=25, deadline=None)
@given(b=st.integers(0, 4), n=st.integers(1, 40), frac=st.floats(0.01, 1.0),
       beta=st.floats(0.0, 3.0), ties=st.booleans(), break_ties=st.booleans(),
       relu=st.booleans())
def test_hypothesis_vs_reference(b, n, frac, beta, ties, break_ties, relu):
    k = max(1, min(n, round(n * frac)))
    x = torch.randn(b, n)
    if ties:
        x = x.round()  # many exact ties
    duty = torch.rand(n)
    y = k_winners(x, k, duty_cycles=duty, boost_strength=beta, break_ties=break_ties, relu=relu)
    if break_ties:  # which tied unit wins is topk's choice: check count and threshold instead
        score = x * torch.exp(beta * (k / n - duty))
        for i in range(b):
            chosen = torch.zeros(n, dtype=torch.bool)
            chosen[torch.topk(score[i], k).indices] = True
            expect = torch.where(chosen & ((x[i] > 0) | (not relu)), x[i], 0.0)
            thr = torch.sort(score[i], descending=True).values[k - 1]
            won = y[i] != 0
            assert won.sum() <= k and bool((score[i][won] >= thr).all())
            if not ties:  # distinct values: the winner set is unique
                assert torch.equal(y[i], expect)
    else:
        assert torch.equal(y, reference_k_winners(x, k, duty, beta, relu=relu))


@settings(max_examples=25, deadline=None)
@given(b=st.integers(0, 3), c=st.integers(1, 6), h=st.integers(1, 5), w=st.integers(1, 5),
       frac=st.floats(0.01, 1.0), beta=st.floats(0.0, 2.0), local=st.booleans(),
       ties=st.booleans())
def test_2d_hypothesis_vs_reference(b, c, h, w, frac, beta, local, ties):
    pool = c if local else c * h * w
    k = max(1, min(pool, round(pool * frac)))
    x = torch.randn(b, c, h, w)
    if ties:
        x = x.round()
    duty = torch.rand(c)
    y = k_winners2d(x, k, duty_cycles=duty, boost_strength=beta, local=local)
    if local:
        expect = reference_local(x, k, duty=duty, beta=beta, density=k / c)
    else:
        # global: per-channel duty broadcast over space, then a top-k over C*H*W
        scores_duty = duty.view(c, 1, 1).expand(c, h, w).reshape(-1)
        expect = reference_k_winners(x.reshape(b, c * h * w), k, scores_duty, beta,
                                     density=k / pool).view(b, c, h, w)
    assert torch.equal(y, expect)


def test_2d_global_and_local_counts():
    x = torch.randn(3, 4, 5, 5)
    assert torch.equal((k_winners2d(x, 10) != 0).sum((1, 2, 3)), torch.full((3,), 10))
    loc = k_winners2d(x, 2, local=True)
    assert torch.equal((loc != 0).sum(1), torch.full((3, 5, 5), 2))


def test_gradient_is_one_at_winners():
    x = torch.randn(4, 10, requires_grad=True)
    y = k_winners(x, 3, duty_cycles=torch.rand(10), boost_strength=1.0)
    y.backward(torch.ones_like(y))
    assert torch.equal(x.grad, (y != 0).to(x.dtype))


def test_gradcheck():
    # well separated values so the winner set is stable under finite-difference perturbations
    x = (torch.randperm(24).double().view(3, 8) + 0.1).requires_grad_()
    duty = torch.rand(8, dtype=torch.float64)
    assert torch.autograd.gradcheck(
        lambda t: k_winners(t, 3, duty_cycles=duty, boost_strength=0.5), (x,))
    x4 = (torch.randperm(2 * 3 * 2 * 2).double().view(2, 3, 2, 2) + 0.1).requires_grad_()
    for local in (False, True):
        assert torch.autograd.gradcheck(lambda t, loc=local: k_winners2d(t, 2, local=loc), (x4,))


def test_update_duty_cycles_formula_step_by_step():
    period = 10
    duty = torch.zeros(5)
    seen = torch.zeros((), dtype=torch.long)
    ref = [0.0] * 5
    ref_seen = 0
    for _ in range(6):
        y = torch.randn(4, 5)
        update_duty_cycles(duty, y, seen, period)
        ref_seen += 4
        p = min(period, ref_seen)
        for j in range(5):
            count = float((y[:, j] > 0).sum())
            ref[j] = (ref[j] * (p - 4) + count) / p
        assert int(seen) == ref_seen
        torch.testing.assert_close(duty, torch.tensor(ref))


def test_update_duty_cycles_2d_and_large_batch():
    duty, seen = torch.zeros(3), torch.zeros((), dtype=torch.long)
    y = torch.randn(2, 3, 4, 4)
    update_duty_cycles(duty, y, seen, 1000)
    torch.testing.assert_close(duty, (y > 0).sum((0, 2, 3)).float() / 16 / 2)
    # a batch bigger than the period keeps duty within [0, 1]
    duty, seen = torch.zeros(4), torch.zeros((), dtype=torch.long)
    update_duty_cycles(duty, torch.ones(8, 4), seen, 3)
    torch.testing.assert_close(duty, torch.ones(4))


@pytest.mark.parametrize("bad", [
    dict(k=0), dict(k=9), dict(k=2.0), dict(duty_cycles=torch.zeros(7)),
])
def test_functional_bad_args(bad):
    kw = dict(k=2)
    kw.update(bad)
    with pytest.raises((ValueError, TypeError)):
        k_winners(torch.randn(2, 8), **kw)


def test_functional_bad_rank():
    with pytest.raises(ValueError, match="shape"):
        k_winners(torch.randn(8), 2)
    with pytest.raises(ValueError, match="shape"):
        k_winners2d(torch.randn(2, 8), 2)
    with pytest.raises(ValueError, match="k must be in"):
        k_winners2d(torch.randn(1, 3, 2, 2), 4, local=True)


# --- modules -------------------------------------------------------------------------------


def test_module_k_and_inference_k():
    kw = KWinners(100, 0.1, k_inference_factor=1.5)
    assert (kw.k, kw.k_inference) == (10, 15)
    x = torch.randn(6, 100)
    assert torch.equal((kw(x) != 0).sum(1), torch.full((6,), 10))
    kw.eval()
    seen, duty = kw.samples_seen.clone(), kw.duty_cycles.clone()
    assert torch.equal((kw(x) != 0).sum(1), torch.full((6,), 15))
    assert torch.equal(kw.samples_seen, seen) and torch.equal(kw.duty_cycles, duty)  # frozen


def test_module_boosts_in_eval_too():
    kw = KWinners(3, 1 / 3, k_inference_factor=1.0, boost_strength=2.0)
    kw.duty_cycles.copy_(torch.tensor([0.9, 0.0, 0.0]))
    kw.eval()
    assert kw(torch.tensor([[1.0, 0.9, 0.1]])).nonzero().tolist() == [[0, 1]]


def test_module_duty_cycles_follow_formula():
    kw = KWinners(20, 0.25, duty_cycle_period=16, boost_strength=0.0)
    ref = torch.zeros(20)
    seen = 0
    for _ in range(5):
        y = kw(torch.randn(8, 20))
        seen += 8
        p = min(16, seen)
        ref = (ref * (p - 8) + (y > 0).sum(0).float()) / p
        torch.testing.assert_close(kw.duty_cycles, ref)
    assert int(kw.samples_seen) == 40


def test_module_2d_duty_per_channel():
    kw = KWinners2d(4, 3, 3, percent_on=0.25, boost_strength=0.0)
    y = kw(torch.randn(5, 4, 3, 3))
    torch.testing.assert_close(kw.duty_cycles, (y > 0).sum((0, 2, 3)).float() / 9 / 5)
    assert kw.k == 9 and kw.duty_cycles.shape == (4,)
    loc = KWinners2d(4, 3, 3, percent_on=0.5, local=True)
    assert loc.k == 2 and torch.equal((loc(torch.randn(2, 4, 3, 3)) != 0).sum(1),
                                      torch.full((2, 3, 3), 2))


def test_epoch_decay_of_boost_strength():
    kw = KWinners(10, 0.2, boost_strength=1.5, boost_strength_factor=0.85)
    assert math.isclose(float(kw.current_boost_strength()), 1.5)
    kw.on_epoch_end()
    kw.on_epoch_end()
    assert int(kw.epoch) == 2
    assert math.isclose(float(kw.current_boost_strength()), 1.5 * 0.85**2, rel_tol=1e-6)


def test_training_loop_advances_epoch(tmp_path):
    from hypersparse.run import RunContext
    from hypersparse.train import SyntheticBatches, TrainConfig

    model = torch.nn.Sequential(torch.nn.Linear(4, 16), KWinners(16, 0.25), torch.nn.Linear(16, 1))

    def make(bs, g):
        x = torch.randn(bs, 4, generator=g)
        return x, x.sum(1, keepdim=True)

    def loss(m, batch):
        return torch.nn.functional.mse_loss(m(batch[0]), batch[1])

    ctx = RunContext(run_dir=tmp_path, config=None, progress=False)
    ctx.fit(model, loss, SyntheticBatches(make, 8, 5), config=TrainConfig(epochs=3, lr=1e-2))
    assert int(model[1].epoch) == 3 and int(model[1].samples_seen) == 3 * 5 * 8


def test_state_dict_round_trip():
    kw = KWinners2d(3, 4, 4, percent_on=0.2, boost_strength=1.0)
    for _ in range(3):
        kw(torch.randn(4, 3, 4, 4))
    kw.on_epoch_end()
    buf = io.BytesIO()
    torch.save(kw.state_dict(), buf)
    buf.seek(0)
    other = KWinners2d(3, 4, 4, percent_on=0.2, boost_strength=1.0)
    other.load_state_dict(torch.load(buf))
    assert set(kw.state_dict()) == {"duty_cycles", "samples_seen", "epoch"}
    x = torch.randn(2, 3, 4, 4)
    assert torch.equal(kw(x), other(x))
    assert torch.equal(kw.duty_cycles, other.duty_cycles)
    kw.eval(), other.eval()
    assert torch.equal(kw(x), other(x))


@pytest.mark.parametrize("kwargs", [
    dict(percent_on=0.0), dict(percent_on=1.5), dict(percent_on=-0.1),
    dict(percent_on=0.1, k_inference_factor=0.0), dict(percent_on=0.1, boost_strength=-1.0),
    dict(percent_on=0.1, boost_strength_factor=1.5), dict(percent_on=0.1, duty_cycle_period=0),
])
def test_module_bad_args(kwargs):
    with pytest.raises(ValueError):
        KWinners(10, **kwargs)
    with pytest.raises(ValueError):
        KWinners2d(2, 3, 3, **kwargs)


def test_module_bad_input():
    with pytest.raises(ValueError, match=r"\(B, 10\)"):
        KWinners(10, 0.1)(torch.randn(2, 11))
    with pytest.raises(ValueError, match=r"\(B, 10\)"):
        KWinners(10, 0.1)(torch.randn(2, 10, 1))
    with pytest.raises(ValueError, match="KWinners2d"):
        KWinners2d(2, 3, 3)(torch.randn(2, 2, 3, 4))
    with pytest.raises(ValueError, match="n must be"):
        KWinners(0, 0.1)


def test_torch_compile_fullgraph_no_graph_breaks():
    import torch._dynamo

    local = KWinners2d(4, 5, 5, 0.5, local=True, break_ties=True)
    for module, x in ((KWinners(32, 0.25), torch.randn(4, 32)),
                      (KWinners2d(4, 5, 5, 0.1), torch.randn(3, 4, 5, 5)),
                      (local, torch.randn(3, 4, 5, 5))):
        eager = type(module)(*_ctor_args(module))
        for training in (True, False):
            module.train(training)
            eager.train(training)
            torch._dynamo.reset()
            explanation = torch._dynamo.explain(module)(x)
            assert explanation.graph_break_count == 0
            compiled = torch.compile(module, fullgraph=True, backend="eager")
            eager.load_state_dict(module.state_dict())
            before = module.samples_seen.clone()
            for _ in range(2):
                assert torch.equal(compiled(x), eager(x))
            assert torch.equal(module.duty_cycles, eager.duty_cycles)
            assert torch.equal(module.samples_seen, eager.samples_seen)
            assert int(module.samples_seen - before) == (2 * x.shape[0] if training else 0)


def _ctor_args(m):
    if isinstance(m, KWinners2d):
        return (m.channels, m.height, m.width, m.percent_on, m.k_inference_factor,
                m.boost_strength, m.boost_strength_factor, m.duty_cycle_period, m.break_ties,
                m.relu, m.local)
    return (m.n, m.percent_on)
