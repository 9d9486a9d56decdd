"""Tests of multi-hypothesis ("candidate") glimpse training (issue 9): heat-map candidate
extraction against a loop reference, the Glimpse candidate mode, the mixture likelihood and the
experiment's ``candidates`` option."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import Tensor

from hypersparse.experiments.glimpse import (
    CandidateSchedule,
    GlimpseConfig,
    GlimpseHead,
    GlimpseNet,
    build,
    mixture_log_probs,
)
from hypersparse.functional import heatmap_candidates, sample_boxes
from hypersparse.nn import Glimpse, SoftArgmaxBoxes, box_source


def naive_candidates(heat: Tensor, count: int, radius: int) -> tuple[Tensor, Tensor]:
    """Loop reference of :func:`heatmap_candidates`: greedy NMS over cells in row-major order,
    a soft-argmax over each peak's window, sorted by peak logit (stable)."""
    b, g, h, w = heat.shape
    pos = torch.zeros(b, g, count, 2, dtype=heat.dtype)
    score = torch.zeros(b, g, count, dtype=heat.dtype)
    for bi in range(b):
        for gi in range(g):
            m = heat[bi, gi]
            picks: list[tuple[int, int]] = []
            for _ in range(count):
                best = None
                for allow_near in (False, True):
                    for i in range(h):
                        for j in range(w):
                            if (i, j) in picks:
                                continue
                            near = any(abs(i - a) <= radius and abs(j - c) <= radius
                                       for a, c in picks)
                            if near and not allow_near:
                                continue
                            if best is None or m[i, j] > m[best]:
                                best = (i, j)
                    if best is not None:
                        break
                assert best is not None
                picks.append(best)
            rows = []
            for i, j in picks:
                cells = [(a, c) for a in range(i - radius, i + radius + 1)
                         for c in range(j - radius, j + radius + 1) if 0 <= a < h and 0 <= c < w]
                p = torch.softmax(torch.stack([m[a, c] for a, c in cells]), 0)
                r = sum(pk * a for pk, (a, _) in zip(p, cells, strict=True))
                c_ = sum(pk * c for pk, (_, c) in zip(p, cells, strict=True))
                rows.append((m[i, j], r, c_))
            order = sorted(range(count), key=lambda k: -float(rows[k][0]))
            for n, k in enumerate(order):
                score[bi, gi, n] = rows[k][0]
                pos[bi, gi, n, 0], pos[bi, gi, n, 1] = rows[k][1], rows[k][2]
    return pos, score


# ----------------------------------------------------------------------------- extraction


@settings(max_examples=25, deadline=None)
@given(b=st.integers(0, 2), g=st.integers(1, 2), h=st.integers(1, 6), w=st.integers(1, 6),
       radius=st.integers(0, 3), data=st.data())
def test_candidates_match_loop_reference(b: int, g: int, h: int, w: int, radius: int,
                                         data: st.DataObject) -> None:
    count = data.draw(st.integers(1, h * w))
    seed = data.draw(st.integers(0, 2**31 - 1))
    # few distinct values: ties in the peaks and the scores are common
    heat = torch.randint(-3, 4, (b, g, h, w), generator=torch.Generator().manual_seed(seed))
    heat = heat.double()
    pos, score = heatmap_candidates(heat, count, radius)
    ref_pos, ref_score = naive_candidates(heat, count, radius)
    assert pos.shape == (b, g, count, 2) and score.shape == (b, g, count)
    torch.testing.assert_close(score, ref_score)
    torch.testing.assert_close(pos, ref_pos)


def test_candidates_first_is_argmax_for_any_count() -> None:
    heat = torch.randn(3, 2, 7, 9, generator=torch.Generator().manual_seed(0))
    first = heatmap_candidates(heat, 1, 2)
    for count in (2, 5, 63):
        pos, score = heatmap_candidates(heat, count, 2)
        torch.testing.assert_close(pos[:, :, :1], first[0])
        torch.testing.assert_close(score[:, :, 0], heat.flatten(2).amax(-1))
        assert bool((score[..., :-1] >= score[..., 1:]).all())


def test_candidates_are_separated_and_all_cells_when_count_is_full() -> None:
    heat = torch.randn(2, 1, 8, 8, generator=torch.Generator().manual_seed(1))
    _, score = heatmap_candidates(heat, 4, 1)
    # the 4 peaks are >1 cell apart: their cells (where the score sits) differ pairwise
    cells = [(heat[0, 0] == s).nonzero()[0] for s in score[0, 0]]
    for a in range(4):
        for c in range(a):
            assert int((cells[a] - cells[c]).abs().max()) > 1
    # count = h * w picks every cell once (suppression falls back to the remaining cells)
    _, score = heatmap_candidates(heat, 64, 3)
    torch.testing.assert_close(score.sort(-1).values, heat.flatten(2).sort(-1).values)


def test_candidates_radius_zero_and_non_contiguous() -> None:
    heat = torch.randn(2, 1, 5, 6, dtype=torch.float64).transpose(-1, -2)  # (2, 1, 6, 5)
    assert not heat.is_contiguous()
    pos, score = heatmap_candidates(heat, 3, 0)
    ref = naive_candidates(heat.contiguous(), 3, 0)
    torch.testing.assert_close(pos, ref[0])
    torch.testing.assert_close(score, ref[1])
    # radius 0: each position is its peak cell exactly
    assert bool((pos == pos.round()).all())


def test_candidates_gradcheck() -> None:
    heat = torch.randn(2, 2, 5, 4, dtype=torch.float64, requires_grad=True,
                       generator=torch.Generator().manual_seed(3))

    def f(t: Tensor) -> tuple[Tensor, Tensor]:
        return heatmap_candidates(t, 3, 1)

    assert torch.autograd.gradcheck(f, (heat,))


@pytest.mark.parametrize("kwargs, match", [
    ({"count": 0}, "count"), ({"count": 21}, "count"), ({"count": True}, "count"),
    ({"radius": -1}, "radius"), ({"radius": 1.5}, "radius"),
])
def test_candidates_bad_arguments_raise(kwargs: dict, match: str) -> None:
    args = {"count": 2, "radius": 1} | kwargs
    with pytest.raises(ValueError, match=match):
        heatmap_candidates(torch.zeros(1, 1, 4, 5), **args)


def test_candidates_bad_heat_raises() -> None:
    for heat in (torch.zeros(1, 4, 5), torch.zeros(1, 1, 4, 5, dtype=torch.long)):
        with pytest.raises(ValueError, match="heat"):
            heatmap_candidates(heat, 1)
    bad = torch.zeros(1, 1, 4, 5)
    bad[0, 0, 1, 1] = float("inf")
    with pytest.raises(ValueError, match="finite"):
        heatmap_candidates(bad, 1)


# ----------------------------------------------------------------------------- the source


def test_soft_argmax_candidates_boxes() -> None:
    torch.manual_seed(0)
    head = SoftArgmaxBoxes(3, 2, (41, 41), stride=4, extent=(0.3, 0.5), init_extent=0.4,
                           dtype=torch.float64)
    f = torch.randn(2, 3, 11, 11, dtype=torch.float64)
    raw, score = head.candidates(f, 4, 2)
    assert raw.shape == (2, 2, 4, 4) and score.shape == (2, 2, 4)
    pos, ref_score = heatmap_candidates(head.heat(f), 4, 2)
    torch.testing.assert_close(score, ref_score)
    # same extent as forward; centres at offset + stride * position (inside the border)
    torch.testing.assert_close(raw[..., 2:], head(f).view(2, 2, 1, 4)[..., 2:].expand(2, 2, 4, 2))
    from hypersparse.functional import glimpse_boxes

    boxes = glimpse_boxes(raw, (41, 41))
    centre = (boxes[..., :2] + boxes[..., 2:]) / 2
    ext = boxes[..., 2:] - boxes[..., :2]
    lo = ext / 2 + 1e-4 * (40 - ext)
    want = torch.minimum(torch.maximum(4 * pos, lo), 40 - lo)
    torch.testing.assert_close(centre, want)


# ----------------------------------------------------------------------------- Glimpse


def _glimpse(candidates: int | None, glimpses: int = 1) -> Glimpse:
    torch.manual_seed(0)
    layer = Glimpse((1, 40, 40), 6, glimpses, kind="spatial", downsample=4, extent=(0.3, 0.5),
                    init_extent=0.4, candidates=candidates, candidate_radius=1)
    with torch.no_grad():
        layer.source[-1].heat.weight.normal_()
    return layer


def test_glimpse_candidate_mode_reads_the_top_candidate() -> None:
    x = torch.rand(3, 1, 40, 40)
    one, five = _glimpse(1).eval(), _glimpse(5).eval()
    torch.testing.assert_close(one.boxes(x), five.boxes(x))
    boxes, logw = five.candidate_boxes(x)
    assert boxes.shape == (3, 5, 1, 4) and logw.shape == (3, 5)
    torch.testing.assert_close(logw.exp().sum(-1), torch.ones(3))
    torch.testing.assert_close(five.boxes(x), boxes[:, 0])
    # eval: one glimpse, the top candidate, read at the nearest pixels
    out = five(x)
    assert out.shape == (3, 1, 1, 6, 6)
    torch.testing.assert_close(out, sample_boxes(x, boxes[:, 0], (6, 6), mode="nearest"))
    # pixels read: one glimpse (<= 36 pixels) plus the 10x10 subsample, whatever the count
    read = five.pixels_read(x, include_source=False) * 1600
    assert bool((read <= 36).all()) and bool((read >= 1).all())
    # all candidates, in eval
    g, b2, _ = five.forward_candidates(x)
    assert g.shape == (3, 5, 1, 1, 6, 6)
    for n in range(5):
        torch.testing.assert_close(g[:, n], sample_boxes(x, b2[:, n], (6, 6), mode="nearest"))


def test_glimpse_candidates_several_glimpses_weights() -> None:
    layer = _glimpse(3, glimpses=2).eval()
    x = torch.rand(2, 1, 40, 40)
    boxes, logw = layer.candidate_boxes(x)
    assert boxes.shape == (2, 3, 2, 4)
    seq = layer.source
    with torch.no_grad():
        _, score = seq[-1].candidates(seq[:-1](x), 3, 1)  # (B, G, N)
    for bi in range(2):
        joint = torch.tensor([float(score[bi, 0, n] + score[bi, 1, n]) for n in range(3)])
        torch.testing.assert_close(logw[bi], torch.log_softmax(joint, 0))


def test_glimpse_candidates_training_reads_sampled_points_and_has_gradients() -> None:
    layer = _glimpse(3).train()
    x = torch.rand(2, 1, 40, 40)
    g, boxes, logw = layer.forward_candidates(x)
    assert g.shape == (2, 3, 1, 1, 6, 6)
    (g.sum() + logw[:, 0].sum()).backward()
    heat = layer.source[-1].heat.weight.grad
    assert heat is not None and float(heat.abs().sum()) > 0
    assert layer.raw_sigmas.grad is not None


def test_glimpse_candidates_bad_values_raise() -> None:
    for bad in (0, -1, 2.0, True):
        with pytest.raises(ValueError, match="candidates"):
            _glimpse(bad)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="candidate_radius"):
        Glimpse((1, 40, 40), 6, kind="spatial", candidates=2, candidate_radius=-1)
    with pytest.raises(ValueError, match="SoftArgmaxBoxes"):
        Glimpse((1, 40, 40), 6, kind="dense", candidates=2)
    layer = _glimpse(None)
    with pytest.raises(ValueError, match="candidates"):
        layer.candidate_boxes(torch.rand(1, 1, 40, 40))
    dense = Glimpse((1, 40, 40), 6, kind="dense")
    for call in (lambda: dense.source_features(torch.rand(1, 1, 40, 40)),
                 lambda: dense.heat_logits(torch.rand(1, 32, 20, 20)),
                 lambda: dense.peak_boxes(torch.rand(1, 32, 20, 20), 2)):
        with pytest.raises(ValueError, match="SoftArgmaxBoxes"):
            call()
    layer.candidates = 0
    with pytest.raises(ValueError, match="candidates"):
        layer.boxes(torch.rand(1, 1, 40, 40))


def test_candidate_pool_draws_lower_peaks_in_training_only() -> None:
    """With candidate_pool M, training keeps the top peak first and draws the other hypotheses
    from peaks 2..M (each reached over draws); eval and the pool-less layer are unchanged."""
    x = torch.rand(3, 1, 40, 40)
    plain, pooled = _glimpse(2), _glimpse(2)
    pooled.candidate_pool = 6
    six = _glimpse(6).eval()
    all_boxes, all_logw = six.candidate_boxes(x)  # (B, 6, 1, 4): peaks 1..6
    torch.testing.assert_close(pooled.eval().candidate_boxes(x), plain.eval().candidate_boxes(x))
    pooled.train()
    seen = set()
    for _ in range(60):
        boxes, logw = pooled.candidate_boxes(x)
        assert boxes.shape == (3, 2, 1, 4) and logw.shape == (3, 2)
        torch.testing.assert_close(boxes[:, 0], all_boxes[:, 0])  # the top peak first
        for bi in range(3):
            match = [k for k in range(1, 6) if torch.allclose(boxes[bi, 1], all_boxes[bi, k])]
            assert len(match) >= 1
            seen.add((bi, match[0]))
            # weights: the softmax of the two peaks' logits
            k = match[0]
            ref = torch.log_softmax(all_logw[bi, [0, k]], 0)
            torch.testing.assert_close(logw[bi], ref)
    assert len(seen) == 15  # every lower peak of every image was drawn
    # boxes() (one glimpse, the top peak) draws nothing, in training too
    torch.manual_seed(1)
    pooled.boxes(x)
    after = torch.rand(1)
    torch.manual_seed(1)
    torch.testing.assert_close(torch.rand(1), after)
    # a pool larger than the heat map is capped at its cells (10 x 10 here)
    pooled.candidate_pool = 500
    assert pooled.candidate_boxes(x)[0].shape == (3, 2, 1, 4)
    with pytest.raises(ValueError, match="candidate_pool"):
        Glimpse((1, 40, 40), 6, kind="spatial", candidates=2, candidate_pool=0)


def test_glimpse_candidates_state_dict_round_trip() -> None:
    a, b = _glimpse(4), _glimpse(4)
    with torch.no_grad():
        b.source[-1].heat.weight.normal_()
    b.load_state_dict(a.state_dict())
    x = torch.rand(2, 1, 40, 40)
    torch.testing.assert_close(a.eval().candidate_boxes(x), b.eval().candidate_boxes(x))
    assert "candidates=4" in repr(a)


# ----------------------------------------------------------------------------- mixture


def test_mixture_log_probs_reference_and_gradcheck() -> None:
    gen = torch.Generator().manual_seed(0)
    logits = torch.randn(3, 4, 10, dtype=torch.float64, generator=gen, requires_grad=True)
    logw = torch.log_softmax(torch.randn(3, 4, dtype=torch.float64, generator=gen), -1)
    logw.requires_grad_(True)
    out = mixture_log_probs(logits, logw)
    ref = torch.log(sum(logw[:, j, None].exp() * torch.softmax(logits[:, j], -1)
                        for j in range(4)))
    torch.testing.assert_close(out, ref)
    torch.testing.assert_close(out.exp().sum(-1), torch.ones(3, dtype=torch.float64))
    # one candidate: plain log-softmax, so cross-entropy is unchanged
    torch.testing.assert_close(mixture_log_probs(logits[:, :1], torch.zeros(3, 1,
                               dtype=torch.float64)), logits[:, 0].log_softmax(-1))
    assert torch.autograd.gradcheck(mixture_log_probs, (logits, logw))


def test_mixture_pulls_weight_to_the_candidate_that_classifies() -> None:
    # candidate 1 predicts the label, candidate 0 does not: the NLL's gradient raises w_1
    logits = torch.tensor([[[5.0, 0.0], [0.0, 5.0]]])
    score = torch.zeros(1, 2, requires_grad=True)
    loss = -mixture_log_probs(logits, torch.log_softmax(score, -1))[0, 1]
    loss.backward()
    assert score.grad is not None
    assert float(score.grad[0, 1]) < 0 < float(score.grad[0, 0])


def test_glimpsenet_training_output_is_the_mixture() -> None:
    torch.manual_seed(0)
    sampler = _glimpse(3)
    head = GlimpseHead(1, 1, 6, "mlp")  # no batch norm: per-candidate loop is comparable
    net = GlimpseNet(sampler, head).train()
    sampler.eval()  # nearest-pixel reading: deterministic
    x = torch.rand(4, 1, 40, 40)
    out = net(x)
    boxes, logw = sampler.candidate_boxes(x)
    per = torch.stack([head(sample_boxes(x, boxes[:, n], (6, 6), mode="nearest"))
                       for n in range(3)], 1)  # (B, N, 10)
    torch.testing.assert_close(out, mixture_log_probs(per, logw))
    net.eval()
    torch.testing.assert_close(net(x), per[:, 0])


def test_candidate_schedule() -> None:
    net = GlimpseNet(_glimpse(4), GlimpseHead(1, 1, 6, "mlp"))
    sched = CandidateSchedule(10, 4)
    sched(9, net, {})
    assert net.sampler.candidates == 4
    sched(10, net, {})
    assert net.sampler.candidates == 1


# ----------------------------------------------------------------------------- experiment


def _cfg(**kw: object) -> GlimpseConfig:
    return GlimpseConfig(canvas=40, size=8, downsample=2, cnn_channels=(4, 4), head_width=4,
                         **kw)  # type: ignore[arg-type]


def test_config_candidates_one_is_the_soft_argmax_path() -> None:
    model = build(_cfg(), "glimpse", torch.device("cpu"))
    assert model.sampler.candidates is None  # type: ignore[union-attr]
    x = torch.rand(3, 1, 40, 40)
    torch.manual_seed(5)
    out = model.train()(x)
    torch.manual_seed(5)
    torch.testing.assert_close(out, model.head(model.sampler(x)))  # type: ignore[operator]
    # the whole-map soft-argmax box
    raw = box_source((1, 40, 40), 1, downsample=2, kind="spatial", extent=(0.4, 0.6),
                     init_extent=0.47)
    raw.load_state_dict(model.sampler.source.state_dict())  # type: ignore[union-attr]
    from hypersparse.functional import glimpse_boxes

    torch.testing.assert_close(model.sampler.boxes(x),  # type: ignore[operator]
                               glimpse_boxes(raw(x).view(3, 1, 4), (40, 40)))
    # candidates > 1: candidate mode; eval reads one glimpse
    model = build(_cfg(candidates=3), "glimpse", torch.device("cpu")).eval()
    assert model.sampler.candidates == 3  # type: ignore[union-attr]
    assert model.sampler(x).shape == (3, 1, 1, 8, 8)  # type: ignore[operator]


def test_config_bad_candidates_raise() -> None:
    for bad in (0, -2):
        with pytest.raises(ValueError, match="candidates"):
            build(_cfg(candidates=bad), "glimpse", torch.device("cpu"))
    with pytest.raises(ValueError, match="spatial"):
        build(_cfg(candidates=2, source="dense", extent=(0.3, 0.5), init_extent=0.4),
              "glimpse", torch.device("cpu"))


def test_smoke_run_with_candidates(tmp_path: Path, mnist_available: bool) -> None:
    from hypersparse.io import load_checkpoint
    from hypersparse.run import evaluate_run, run_experiment

    out = run_experiment(
        "glimpse",
        ["train.max_steps=3", "train.batch_size=8", "canvas=36", "size=8", "downsample=2",
         "eval_digits=20", "eval_batch=20", "head_width=4", "cnn=false", "stn=false",
         "candidates=3", "candidate_radius=2", "candidate_epochs=0.001"],
        out=tmp_path / "r", progress=False, device="cpu",
    )
    for name in ("summary.json", "boxes.png", "glimpses.png", "checkpoints/glimpse/best.pt"):
        assert (out / name).exists(), name
    s = json.loads((out / "summary.json").read_text())
    assert 0 < s["glimpse_pixels_fraction"] <= 64 / 1296 + 1e-6  # one 8x8 glimpse
    assert 0 <= s["box_iou"] <= 1
    state = load_checkpoint(out / "checkpoints" / "glimpse" / "last.pt", torch.device("cpu"))
    assert "model" in state
    assert evaluate_run(out, device="cpu")["test_error"] == s["test_error"]


def test_smoke_run_with_the_localisation_options(tmp_path: Path, mnist_available: bool) -> None:
    from hypersparse.run import run_experiment

    out = run_experiment(
        "glimpse",
        ["train.max_steps=2", "train.batch_size=8", "canvas=36", "size=8", "downsample=3",
         "downsample_offset=1", "eval_digits=20", "eval_batch=20", "head_width=4",
         "cnn=false", "stn=false", "candidates=2", "candidate_radius=1", "candidate_pool=4",
         "locate_weight=0.5", "locate_pool=3", "reader=true", "reader_width=4",
         "reader_blocks=2", "reader_jitter=2"],
        out=tmp_path / "r", progress=False, device="cpu",
    )
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    train = [r for r in rows if r.get("split") == "train"]
    assert train and all("locate_loss" in r and "reader_accuracy" in r for r in train)
    s = json.loads((out / "summary.json").read_text())
    grid = 12 * 12 / 1296  # the source's 12 x 12 grid (rows/cols 1, 4, ..., 34)
    assert grid < s["pixels_read_fraction"] <= grid + 64 / 1296 + 1e-6


# ----------------------------------------------------------------------------- localisation


class BrightIsThree(torch.nn.Module):
    """A stand-in head: the brighter the glimpse, the surer it is of class 3."""

    def forward(self, g: Tensor) -> Tensor:
        logits = torch.zeros(g.shape[0], 10, dtype=g.dtype)
        logits[:, 3] = 8 * (g.flatten(1).mean(1) - 0.5)
        return logits


def _locating(**kw: object) -> GlimpseNet:
    cfg = GlimpseConfig(canvas=40, size=8, downsample=2, head_width=4, candidates=2,
                        candidate_radius=1, extent=(0.2, 0.3), init_extent=0.25,
                        locate_weight=1.0, locate_pool=4, **kw)  # type: ignore[arg-type]
    model = build(cfg, "glimpse", torch.device("cpu"))
    assert isinstance(model, GlimpseNet)
    with torch.no_grad():
        model.sampler.source[-1].heat.weight.normal_()  # type: ignore[index]
    return model


def test_locate_loss_targets_the_peak_the_head_reads_as_the_label() -> None:
    torch.manual_seed(0)
    model = _locating()
    model.head = BrightIsThree()
    x = torch.rand(5, 1, 40, 40) * 0.2
    x[:, :, 24:34, 4:14] = 1.0  # a bright patch: the head's "digit"
    y = torch.full((5,), 3)
    sampler: Glimpse = model.sampler  # type: ignore[assignment]
    f = sampler.source_features(x)
    loss = model.locate_loss(x, y, f)
    boxes, cells = sampler.peak_boxes(f, 4)  # (B, 4, 1, 4), (B, 1, 4, 2)
    bright = sampler.read(x, boxes).flatten(2).mean(-1)  # (B, 4)
    best = bright.argmax(1)
    assert len(set(best.tolist())) > 1  # the best peak is not always the top one
    heat = sampler.heat_logits(f).flatten(1)  # (B, h w)
    w_cells = sampler.source_features(x).shape[-1]
    expect = []
    for b in range(5):
        r, c = cells[b, 0, best[b]].round().long().tolist()
        logit3 = 8 * (bright[b, best[b]] - 0.5)
        p3 = torch.exp(logit3 - torch.logsumexp(torch.cat([logit3.view(1), torch.zeros(9)]), 0))
        target = torch.tensor(r * w_cells + c)
        expect.append(p3 * torch.nn.functional.cross_entropy(heat[b], target))
    torch.testing.assert_close(loss, torch.stack(expect).mean())
    # the gradient reaches the heat map (the source), and raises the target cell's logit
    loss.backward()
    assert float(sampler.source[-1].heat.weight.grad.abs().sum()) > 0  # type: ignore[index]


def test_locate_leaves_the_head_alone_and_is_logged() -> None:
    from hypersparse.experiments.glimpse import glimpse_loss

    torch.manual_seed(0)
    model = _locating().train()
    x, y = torch.rand(4, 1, 40, 40), torch.randint(0, 10, (4,))
    out = model(x, y)
    assert isinstance(out, tuple) and len(out) == 3 and out[1] is None
    out[2].backward()  # the locate loss alone
    assert all(p.grad is None for p in model.head.parameters())
    assert model.head.training
    loss, metrics = glimpse_loss(model, (x, y))
    assert "locate_loss" in metrics and metrics["locate_loss"] > 0
    # no labels (or eval): the usual outputs
    assert isinstance(model(x), Tensor)
    with_reader = _locating(reader=True, reader_width=4, reader_blocks=2)
    assert len(with_reader(x, y)) == 3 and with_reader(x, y)[1] is not None


def test_locate_scoring_does_not_touch_batch_norm_statistics() -> None:
    torch.manual_seed(0)
    model = _locating().train()
    x, y = torch.rand(4, 1, 40, 40), torch.randint(0, 10, (4,))
    sampler: Glimpse = model.sampler  # type: ignore[assignment]
    before = {k: v.clone() for k, v in model.head.state_dict().items()}
    model.locate_loss(x, y, sampler.source_features(x))
    for k, v in model.head.state_dict().items():
        assert torch.equal(v, before[k]), k
    assert model.head.training


@pytest.mark.parametrize("kw, match", [
    ({"locate_weight": -1.0}, "locate_weight"),
    ({"locate_pool": 0}, "locate_pool"),
    ({"candidates": 1}, "candidate mode"),
    ({"glimpses": 2}, "one glimpse"),
    ({"locate_weight": 0.0, "candidates": 1, "candidate_pool": 4}, "candidate_pool"),
    ({"locate_weight": 0.0, "reader_jitter": 2.0}, "reader_jitter"),
])
def test_locate_bad_settings_raise(kw: dict, match: str) -> None:
    base = {"canvas": 40, "size": 8, "downsample": 2, "head_width": 4, "candidates": 2,
            "candidate_radius": 1, "extent": (0.2, 0.3), "init_extent": 0.25,
            "locate_weight": 1.0}
    base.update(kw)
    with pytest.raises(ValueError, match=match):
        build(GlimpseConfig(**base), "glimpse", torch.device("cpu"))  # type: ignore[arg-type]
