"""Tiny-budget smoke run of the ``glimpse`` experiment (issue 9)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from torch import Tensor

from hypersparse.experiments.glimpse import GlimpseConfig, GlimpseHead, box_iou, build
from hypersparse.functional import jitter_boxes


@pytest.mark.slow
def test_smoke_run(tmp_path: Path, mnist_available: bool) -> None:
    from hypersparse.run import evaluate_run, run_experiment

    out = run_experiment(
        "glimpse",
        ["train.max_steps=2", "train.batch_size=8", "canvas=36", "size=8", "downsample=2",
         "eval_digits=40", "eval_batch=20", "cnn_channels=[8,8]", "head_width=4"],
        out=tmp_path / "r", progress=False, device="cpu",
    )
    for name in ("config.json", "summary.json", "metrics.jsonl", "boxes.png", "glimpses.png",
                 "checkpoints/glimpse/best.pt", "checkpoints/cnn/best.pt",
                 "checkpoints/stn/best.pt"):
        assert (out / name).exists(), name
    s = json.loads((out / "summary.json").read_text())
    for key in ("test_error", "val_error", "cnn_test_error", "stn_test_error",
                "pixels_read_fraction", "params", "seconds_per_epoch"):
        assert isinstance(s[key], float | int), key
    assert s["test_images"] == 40 and s["distractors"] == 1
    # glimpse 8x8 on 36x36 plus an 18x18 subsample: at most (64 + 324) / 1296 of the pixels
    assert 0 < s["glimpse_pixels_fraction"] <= 64 / 1296 + 1e-6
    assert s["pixels_read_fraction"] <= (64 + 324) / 1296 + 1e-6
    again = evaluate_run(out, device="cpu")
    assert again["test_error"] == s["test_error"]


def test_baselines_alone(tmp_path: Path, mnist_available: bool) -> None:
    from hypersparse.run import run_experiment

    args = ["train.max_steps=2", "train.batch_size=8", "canvas=36", "size=8", "downsample=2",
            "eval_digits=20", "eval_batch=20", "cnn_channels=[4,4]", "head_width=4"]
    full = run_experiment("glimpse", args + ["stn=false"], out=tmp_path / "full",
                          progress=False, device="cpu")
    alone = run_experiment("glimpse", args + ["glimpse=false", "stn=false"],
                           out=tmp_path / "alone", progress=False, device="cpu")
    assert not (alone / "checkpoints" / "glimpse").exists()
    s = json.loads((alone / "summary.json").read_text())
    assert s["test_error"] is None and s["seconds_per_epoch"] is None and s["params"] is None
    # the CNN stage does not depend on the stages before it: the same trained weights
    from hypersparse.io import load_checkpoint

    f = json.loads((full / "summary.json").read_text())
    assert s["cnn_test_error"] == f["cnn_test_error"]
    a, b = (load_checkpoint(d / "checkpoints" / "cnn" / "last.pt", torch.device("cpu"))["model"]
            for d in (full, alone))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    with pytest.raises(ValueError, match="nothing to train"):
        run_experiment("glimpse", args + ["glimpse=false", "cnn=false", "stn=false"],
                       out=tmp_path / "none", progress=False, device="cpu")


def test_models_and_iou() -> None:
    cfg = GlimpseConfig(canvas=40, size=8, downsample=2, cnn_channels=(4, 4), head_width=4)
    x = torch.rand(3, 1, 40, 40)
    for kind in ("glimpse", "stn", "cnn"):
        assert build(cfg, kind, torch.device("cpu"))(x).shape == (3, 10)
    head = GlimpseHead(8, 1, 12, "mlp")
    assert head(torch.rand(2, 8, 1, 12, 12)).shape == (2, 10)
    b = torch.tensor([[0.0, 0.0, 27.0, 27.0], [0.0, 0.0, 13.0, 27.0]])
    t = torch.tensor([[0, 0, 27, 27], [0, 0, 27, 27]])
    torch.testing.assert_close(box_iou(b, t), torch.tensor([1.0, 0.5]))


@pytest.mark.parametrize("blocks", [1, 2, 3])
def test_cnn_head_blocks(blocks: int) -> None:
    head = GlimpseHead(2, 1, 16, "cnn", width=4, blocks=blocks)
    convs = [m for m in head.features if isinstance(m, torch.nn.Conv2d)]
    assert [c.out_channels for c in convs] == [4 << i for i in range(blocks)]
    # 2 glimpses x the last width x (16 / 2^blocks)^2 features reach the classifier
    assert head.classify[0].in_features == 2 * (4 << (blocks - 1)) * (16 >> blocks) ** 2
    assert head(torch.rand(3, 2, 1, 16, 16)).shape == (3, 10)


@pytest.mark.parametrize("blocks", [0, 5, 2.0])
def test_cnn_head_bad_blocks_raise(blocks: object) -> None:
    with pytest.raises(ValueError, match="head_blocks"):
        GlimpseHead(1, 1, 16, "cnn", blocks=blocks)  # type: ignore[arg-type]


def test_sources_build() -> None:
    x = torch.rand(2, 1, 40, 40)
    for source, extent in (("dense", (0.0, 1.0)), ("dense", (0.3, 0.5)), ("spatial", (0.3, 0.5))):
        cfg = GlimpseConfig(canvas=40, size=8, downsample=2, cnn_channels=(4, 4), head_width=4,
                            source=source, extent=extent, init_extent=0.4)  # type: ignore[arg-type]
        for kind in ("glimpse", "stn"):
            model = build(cfg, kind, torch.device("cpu")).eval()
            boxes = model.sampler.boxes(x)  # type: ignore[operator]
            ext = (boxes[..., 2:] - boxes[..., :2]) / 39
            assert bool((ext >= extent[0] - 1e-5).all()) and bool((ext <= extent[1] + 1e-5).all())


def test_sigma_annealing_in_run(tmp_path: Path, mnist_available: bool) -> None:
    from hypersparse.io import load_checkpoint
    from hypersparse.run import run_experiment

    out = run_experiment(
        "glimpse",
        ["train.max_steps=4", "train.batch_size=8", "canvas=36", "size=8", "downsample=2",
         "eval_digits=20", "eval_batch=20", "head_width=4", "cnn=false", "stn=false",
         "sigma_start=2.0", "sigma_end=0.5", "anneal_epochs=null"],
        out=tmp_path / "r", progress=False, device="cpu",
    )
    state = load_checkpoint(out / "checkpoints" / "glimpse" / "last.pt", torch.device("cpu"))
    gain = state["model"]["sampler.sigma_gain"]
    assert float(gain) == pytest.approx(0.5)  # annealed over all 4 steps


# ----------------------------------------------------------------------------- the reader


def _reader_cfg(**kw: object) -> GlimpseConfig:
    return GlimpseConfig(canvas=40, size=8, downsample=2, cnn_channels=(4, 4), head_width=4,
                         reader_width=4, reader_blocks=2, **kw)  # type: ignore[arg-type]


@pytest.mark.parametrize("candidates,jitter,dropout,norm",
                         [(1, 0.0, 0.0, False), (2, 0.0, 0.0, False), (1, 3.0, 0.0, False),
                          (2, 3.0, 0.0, False), (2, 0.0, 0.5, False), (1, 3.0, 0.5, False),
                          (2, 0.0, 0.0, True), (2, 3.0, 0.5, True)])
def test_reader_does_not_change_the_sampler_or_head(candidates: int, jitter: float,
                                                    dropout: float, norm: bool) -> None:
    """The reader learns from the detached top glimpse (jittered or not, with dropout and
    batch norm or not): with and without it, the sampler and the head start and train
    identically; the reader trains, and eval uses it."""
    from hypersparse.experiments.glimpse import glimpse_loss

    x, y = torch.rand(6, 1, 40, 40), torch.randint(0, 10, (6,))
    runs = []
    for reader in (False, True):
        model = build(_reader_cfg(reader=reader, candidates=candidates,
                                  reader_jitter=jitter if reader else 0.0,
                                  reader_dropout=dropout if reader else 0.0,
                                  reader_norm=norm and reader), "glimpse",
                      torch.device("cpu"))
        start = {k: v.clone() for k, v in model.state_dict().items()}
        opt = torch.optim.Adam(model.parameters(), 1e-2)
        model.train()
        for step in range(3):
            torch.manual_seed(step)  # the sampler's random points, as fit() seeds them
            loss, metrics = glimpse_loss(model, (x, y))
            opt.zero_grad()
            loss.backward()
            opt.step()
        assert ("reader_accuracy" in metrics) == reader
        runs.append((model, start))
    (plain, start0), (read, start1) = runs
    for k, v in plain.state_dict().items():  # sampler and head: the same start, the same end
        assert torch.equal(start0[k], start1[k]) and torch.equal(v, read.state_dict()[k]), k
    assert read.reader is not None and plain.reader is None
    moved = [k for k, v in read.reader.state_dict().items()
             if not torch.equal(v, start1[f"reader.{k}"])]
    assert moved  # the reader trained
    read.eval()
    glimpses = read.sampler(x)  # type: ignore[operator]
    torch.testing.assert_close(read(x), read.reader(glimpses))
    assert not torch.allclose(read(x), read.head(glimpses))


def test_reader_jitter_moves_what_the_reader_reads(monkeypatch: pytest.MonkeyPatch) -> None:
    """With reader_jitter the reader sees the top box slid by at most that many pixels, read
    at the nearest pixels; without it, the top glimpse itself."""
    import hypersparse.experiments.glimpse as mod

    calls: list[tuple[Tensor, Tensor]] = []

    def spy(boxes: Tensor, shift: float, sizes: object) -> Tensor:
        out = jitter_boxes(boxes, shift, sizes)  # type: ignore[arg-type]
        calls.append((boxes, out))
        return out

    monkeypatch.setattr(mod, "jitter_boxes", spy)
    x = torch.rand(8, 1, 40, 40)
    for jitter in (0.0, 3.0):
        model = build(_reader_cfg(reader=True, reader_jitter=jitter), "glimpse",
                      torch.device("cpu")).train()
        assert model.reader is not None
        seen: list[Tensor] = []
        hook = model.reader.register_forward_pre_hook(lambda m, a, seen=seen: seen.append(a[0]))
        model(x)
        hook.remove()
        if jitter == 0:
            assert not calls  # the top glimpse as the head saw it
            continue
        (before, after), = calls
        d = after - before
        assert float(d.abs().max()) <= 3.0 and float(d.abs().max()) > 0
        torch.testing.assert_close(seen[0], model.sampler.read(x, after))  # type: ignore[operator]
        model.eval()
        _, top = model.sampler.forward_with_boxes(x)  # type: ignore[operator]
        torch.testing.assert_close(before, top)
    with pytest.raises(ValueError, match="reader_jitter"):
        build(_reader_cfg(reader=True, reader_jitter=-1.0), "glimpse", torch.device("cpu"))


def test_reader_dropout() -> None:
    """Dropout on the reader's hidden layer in training only; the head has none; 0 keeps the
    module list (and state_dict keys) as before; bad values raise."""
    model = build(_reader_cfg(reader=True, reader_dropout=0.5), "glimpse", torch.device("cpu"))
    plain = build(_reader_cfg(reader=True), "glimpse", torch.device("cpu"))
    assert model.reader is not None and plain.reader is not None
    drops = [m for m in model.reader.modules() if isinstance(m, torch.nn.Dropout)]
    assert [d.p for d in drops] == [0.5]
    assert not any(isinstance(m, torch.nn.Dropout) for m in model.head.modules())
    assert not any(isinstance(m, torch.nn.Dropout) for m in plain.modules())
    g = torch.rand(4, 1, 1, 8, 8)
    model.reader.train()
    torch.manual_seed(0)
    a = model.reader(g)
    assert not torch.equal(a, model.reader(g))  # a fresh mask per call
    model.reader.eval()
    torch.testing.assert_close(model.reader(g), model.reader(g))
    # the same weights without dropout: eval outputs equal (Dropout is the identity in eval)
    remap = {k.replace("classify.3.", "classify.2."): v
             for k, v in model.reader.state_dict().items()}
    plain.reader.load_state_dict(remap)
    torch.testing.assert_close(plain.reader.eval()(g), model.reader(g))
    for bad in (1.0, -0.1, "0.5", True):
        with pytest.raises(ValueError, match="reader_dropout"):
            build(_reader_cfg(reader=True, reader_dropout=bad), "glimpse", torch.device("cpu"))
    with pytest.raises(ValueError, match="reader_dropout"):
        build(_reader_cfg(reader=False, reader_dropout=0.5), "glimpse", torch.device("cpu"))
    with pytest.raises(ValueError, match="dropout"):
        GlimpseHead(1, 1, 8, "cnn", dropout=1.0)
    with pytest.raises(ValueError, match="norm"):
        GlimpseHead(1, 1, 8, "cnn", norm=None)  # type: ignore[arg-type]


def test_reader_norm() -> None:
    """Batch norm between the reader's hidden Linear and its ReLU, nowhere else; eval uses its
    running statistics; a non-bool or a reader-less config raises."""
    model = build(_reader_cfg(reader=True, reader_norm=True), "glimpse", torch.device("cpu"))
    assert model.reader is not None
    kinds = [type(m) for m in model.reader.classify]
    assert kinds == [torch.nn.Linear, torch.nn.BatchNorm1d, torch.nn.ReLU, torch.nn.Linear]
    assert not any(isinstance(m, torch.nn.BatchNorm1d) for m in model.head.modules())
    bn = model.reader.classify[1]
    g = torch.rand(6, 1, 1, 8, 8)
    model.reader.train()(g)
    assert int(bn.num_batches_tracked) == 1 and not torch.equal(bn.running_mean,
                                                               torch.zeros(128))
    model.reader.eval()
    h = model.reader.classify[0](model.reader.features(g.flatten(0, 1)).flatten(1))
    expect = (h - bn.running_mean) / torch.sqrt(bn.running_var + bn.eps) * bn.weight + bn.bias
    torch.testing.assert_close(model.reader.classify[1](h), expect)
    # hidden units are centred per batch in training: about half of them fire on each input
    model.reader.train()
    big = torch.rand(64, 1, 1, 8, 8)
    hidden = model.reader.classify[:3](model.reader.features(big.flatten(0, 1)).flatten(1))
    assert 0.3 < float((hidden > 0).float().mean()) < 0.7
    with pytest.raises(ValueError, match="reader_norm"):
        build(_reader_cfg(reader=True, reader_norm=1), "glimpse", torch.device("cpu"))
    with pytest.raises(ValueError, match="reader_norm"):
        build(_reader_cfg(reader=False, reader_norm=True), "glimpse", torch.device("cpu"))


@pytest.mark.parametrize("kind", ["cnn", "mlp"])
def test_head_norm(kind: str) -> None:
    model = build(GlimpseConfig(canvas=40, size=8, downsample=2, head_width=4, head=kind,
                                head_norm=True), "glimpse", torch.device("cpu"))
    kinds = [type(m) for m in model.head.classify]
    assert kinds == [torch.nn.Linear, torch.nn.BatchNorm1d, torch.nn.ReLU, torch.nn.Linear]
    assert model.eval()(torch.rand(2, 1, 40, 40)).shape == (2, 10)
    with pytest.raises(ValueError, match="head_norm"):
        build(GlimpseConfig(canvas=40, size=8, downsample=2, head_width=4,
                            head_norm="yes"), "glimpse", torch.device("cpu"))  # type: ignore[arg-type]


def test_reader_gets_no_gradient_into_the_sampler() -> None:
    model = build(_reader_cfg(reader=True, candidates=2), "glimpse", torch.device("cpu")).train()
    x = torch.rand(4, 1, 40, 40)
    _, reader_logits = model(x)
    reader_logits.sum().backward()
    assert all(p.grad is None for p in model.sampler.parameters())
    assert all(p.grad is None for p in model.head.parameters())
    assert all(p.grad is not None for p in model.reader.parameters())  # type: ignore[union-attr]


def test_smoke_run_with_reader(tmp_path: Path, mnist_available: bool) -> None:
    from hypersparse.run import evaluate_run, run_experiment

    out = run_experiment(
        "glimpse",
        ["train.max_steps=2", "train.batch_size=8", "canvas=36", "size=8", "downsample=2",
         "eval_digits=20", "eval_batch=20", "head_width=4", "cnn=false", "reader=true",
         "reader_width=4", "reader_blocks=2", "candidates=2", "candidate_radius=1"],
        out=tmp_path / "r", progress=False, device="cpu",
    )
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert any("reader_accuracy" in r for r in rows if r.get("stage") == "glimpse")
    assert any("reader_accuracy" in r for r in rows if r.get("stage") == "stn")
    s = json.loads((out / "summary.json").read_text())
    assert isinstance(s["test_error"], float) and isinstance(s["stn_test_error"], float)
    assert evaluate_run(out, device="cpu")["test_error"] == s["test_error"]


def test_source_channels() -> None:
    for source, extent in (("dense", (0.0, 1.0)), ("spatial", (0.3, 0.5))):
        cfg = GlimpseConfig(canvas=40, size=8, downsample=2, head_width=4, source=source,
                            extent=extent, init_extent=0.4,  # type: ignore[arg-type]
                            source_channels=(3, 5, 7))
        for kind in ("glimpse", "stn"):
            model = build(cfg, kind, torch.device("cpu"))
            convs = [m for m in model.sampler.source.modules()  # type: ignore[union-attr]
                     if isinstance(m, torch.nn.Conv2d) and m.kernel_size == (5, 5)]
            assert [c.out_channels for c in convs] == [3, 5, 7]
            assert model.eval()(torch.rand(2, 1, 40, 40)).shape == (2, 10)


def test_bad_reader_blocks_raise() -> None:
    with pytest.raises(ValueError, match="reader_blocks"):
        build(GlimpseConfig(canvas=40, size=8, downsample=2, head_width=4, reader=True,
                            reader_blocks=4), "glimpse", torch.device("cpu"))


def test_augment_reaches_training_and_bad_values_raise(tmp_path: Path,
                                                       mnist_available: bool) -> None:
    from hypersparse.io import load_checkpoint
    from hypersparse.run import run_experiment

    args = ["train.max_steps=1", "train.batch_size=8", "canvas=36", "size=8", "downsample=2",
            "eval_digits=10", "eval_batch=10", "cnn_channels=[4,4]", "glimpse=false",
            "stn=false"]
    weights = {}
    for aug in ("none", "affine"):
        out = run_experiment("glimpse", args + [f"augment={aug}"], out=tmp_path / aug,
                             progress=False, device="cpu")
        assert json.loads((out / "config.json").read_text())["config"]["augment"] == aug
        weights[aug] = load_checkpoint(out / "checkpoints" / "cnn" / "last.pt",
                                       torch.device("cpu"))["model"]
    # same seed and initialisation: only the augmented digits can change the first step
    assert any(not torch.equal(weights["none"][k], weights["affine"][k]) for k in weights["none"])
    for bad, match in (("augment=rotate", "augment must be one of"),
                       ("augment_shift=5", "augment_shift"),
                       ("augment_p=2", "p must be")):
        with pytest.raises(ValueError, match=match):
            run_experiment("glimpse", args + [bad], out=tmp_path / "bad", progress=False,
                           device="cpu")


@pytest.mark.parametrize("preset,glimpses,size", [("full", 1, 32), ("full8", 8, 12)])
def test_presets_build_train_and_read(preset: str, glimpses: int, size: int) -> None:
    """Both 100x100 presets resolve, train on the candidate mixture (2 hypotheses) with a
    reader, and read one set of G k x k glimpses at eval, inside the image."""
    from hypersparse.experiments.glimpse import GlimpseExperiment
    from hypersparse.run import resolve_config

    config, _ = resolve_config(GlimpseExperiment, [f"preset={preset}"])
    assert (config.canvas, config.glimpses, config.size) == (100, glimpses, size)
    assert config.candidates == 2 and config.reader and config.downsample == 3
    model = build(config, "glimpse", torch.device("cpu"))
    x = torch.rand(3, 1, 100, 100)
    head_out, read = model.train()(x)
    assert head_out.shape == read.shape == (3, 10)
    # the mixture's class log-probabilities are normalised
    torch.testing.assert_close(head_out.exp().sum(-1), torch.ones(3))
    read_g, boxes = model.sampler.forward_with_boxes(x)
    assert read_g.shape == (3, glimpses, 1, size, size) and boxes.shape == (3, glimpses, 4)
    assert bool((boxes >= 0).all() and (boxes <= 99).all())
    assert model.eval()(x).shape == (3, 10)
    # source: every 3rd row and column from 1 (33 x 33); glimpses: at most G k k pixels
    assert bool((model.sampler.pixels_read(x) <= (33 * 33 + glimpses * size * size) / 1e4).all())


def test_val_clutterings_select_on_more_validation_images(tmp_path: Path,
                                                          mnist_available: bool) -> None:
    """val_clutterings=3 validates on the fixed set plus 2 more clutterings of the same
    validation digits (never test digits); the fixed set's error is logged on its own and
    equals a 1-cluttering run's (same seed: same training), and training is unchanged."""
    from hypersparse.experiments.glimpse import _fixed_set, val_clutterings
    from hypersparse.io import load_checkpoint
    from hypersparse.run import run_experiment

    args = ["train.max_steps=2", "train.batch_size=8", "canvas=36", "size=8", "downsample=2",
            "eval_digits=12", "eval_batch=12", "head_width=4", "cnn=false", "stn=false"]
    one = run_experiment("glimpse", args, out=tmp_path / "one", progress=False, device="cpu")
    three = run_experiment("glimpse", args + ["val_clutterings=3"], out=tmp_path / "three",
                           progress=False, device="cpu")

    def vals(run: Path) -> list[dict[str, float]]:
        rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
        return [r for r in rows if r.get("split") == "val"]

    v1, v3 = vals(one), vals(three)
    assert len(v1) == len(v3) >= 1 and "val_fixed_error" not in v1[0]
    assert [r["val_error"] for r in v1] == [r["val_fixed_error"] for r in v3]
    a, b = (load_checkpoint(r / "checkpoints" / "glimpse" / "last.pt",
                            torch.device("cpu"))["model"] for r in (one, three))
    assert all(torch.equal(a[k], b[k]) for k in a)
    s1, s3 = (json.loads((r / "summary.json").read_text()) for r in (one, three))
    assert s1["val_error"] == s3["val_error"]  # the summary reports the fixed set
    # the extra clutterings: the validation digits again, on new canvases
    config = GlimpseConfig(canvas=36)
    fixed = _fixed_set(config.dataset, "val", 36, None)
    more = val_clutterings(config, 2, limit=12)
    assert len(more) == 24
    assert torch.equal(more.labels, fixed.labels[:12].repeat(2))
    assert torch.equal(more.digit, fixed.digit[:12].repeat(2))
    assert not torch.equal(more.images[:12], fixed.images[:12])
    assert not torch.equal(more.images[:12], more.images[12:])
    with pytest.raises(ValueError, match="count must be"):
        val_clutterings(config, 0)
    for bad in ("val_clutterings=0", "val_clutterings=true", "val_clutterings=1.5"):
        with pytest.raises((ValueError, TypeError), match="val_clutterings"):
            run_experiment("glimpse", args + [bad], out=tmp_path / "bad", progress=False,
                           device="cpu")
