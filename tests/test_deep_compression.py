"""The deep-compression experiment: models, shifted batches, the file round trip, and a smoke
run that writes the report, the file and a model that loads back."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from hypersparse.compress import (
    SharedWeights,
    compress_model,
    load_compressed,
    magnitude_prune,
    share_weights,
)
from hypersparse.experiments.deep_compression import (
    DEFAULT_DENSITIES,
    PAPER_DENSITIES,
    DeepCompressionConfig,
    ShiftedBatches,
    _densities,
    _skeleton,
    lenet5,
    lenet300,
)
from hypersparse.run import evaluate_run, run_experiment


def test_model_sizes_match_the_paper() -> None:
    # 1,066,440 and 1,724,320 float32 bytes: the paper's "1,070 KB" and "1,720 KB"
    assert sum(p.numel() for p in lenet300().parameters()) == 266_610
    assert sum(p.numel() for p in lenet5().parameters()) == 431_080
    assert lenet5()(torch.zeros(2, 1, 28, 28)).shape == (2, 10)
    assert len(PAPER_DENSITIES["lenet300"]) == 3 and len(PAPER_DENSITIES["lenet5"]) == 4


def test_shifted_batches_are_deterministic_zero_filled_translations() -> None:
    g = torch.Generator().manual_seed(0)
    x = torch.zeros(16, 1, 12, 12)
    x[:, :, 3:9, 3:9] = torch.rand(16, 1, 6, 6, generator=g)  # a 3-pixel empty border
    y = torch.arange(16)
    src = ShiftedBatches(x, y, 8, seed=3, shift=2)
    xb, yb = src.batch(1, 0)
    xb2, _ = src.batch(1, 0)
    assert torch.equal(xb, xb2) and xb.shape == (8, 1, 12, 12)
    plain = ShiftedBatches(x, y, 8, seed=3, shift=0).batch(1, 0)
    assert torch.equal(plain[1], yb)
    for i in range(8):
        orig = x[yb[i]]
        # the content is intact (fits in the border) and equals some shift in [-2, 2]^2
        assert torch.isclose(xb[i].sum(), orig.sum())
        found = [(dy, dx) for dy in range(-2, 3) for dx in range(-2, 3)
                 if torch.equal(torch.roll(orig, (dy, dx), dims=(1, 2)), xb[i])]
        assert len(found) == 1
    assert not torch.equal(xb, plain[0])  # something moved
    with pytest.raises(ValueError, match="shift"):
        ShiftedBatches(x, y, 8, seed=0, shift=-1)


def test_densities_validation() -> None:
    cfg = DeepCompressionConfig(model="lenet5")
    assert _densities(cfg, 4) == DEFAULT_DENSITIES["lenet5"] == (0.66, 0.12, 0.06, 0.19)
    cfg.prune.densities = (0.5, 0.5)
    with pytest.raises(ValueError, match="4 fractions"):
        _densities(cfg, 4)
    cfg.prune.densities = (0.5, 0.0, 0.1, 0.1)
    with pytest.raises(ValueError, match="prune.densities"):
        _densities(cfg, 4)


@pytest.mark.parametrize("name", ["lenet300", "lenet5"])
def test_pruned_shared_file_loads_into_skeleton(name: str, tmp_path: Path) -> None:
    model = lenet300() if name == "lenet300" else lenet5()
    for m in model.modules():
        if isinstance(m, torch.nn.Linear | torch.nn.Conv2d):
            magnitude_prune(m, amount=0.8)
    shared = share_weights(model, fc_clusters=32, conv_clusters=256, max_iter=5)
    info = compress_model(shared, tmp_path / "m.hsz", index_bits={"linear": 5, "conv": 8})
    assert info.file_bytes == (tmp_path / "m.hsz").stat().st_size
    skel = _skeleton(DeepCompressionConfig(model=name), torch.device("cpu"))
    assert sum(isinstance(m, SharedWeights) for m in skel.modules()) == (3 if name ==
                                                                         "lenet300" else 4)
    load_compressed(skel, tmp_path / "m.hsz")
    x = torch.rand(4, 1, 28, 28)
    torch.testing.assert_close(skel(x), shared(x), rtol=0, atol=0)


@pytest.mark.slow
def test_smoke_run_writes_report_file_and_loadable_model(mnist_available: bool,
                                                         tmp_path: Path) -> None:
    out = run_experiment("deep-compression", ["train.max_steps=3", "prune.iterations=2"],
                         out=tmp_path / "r", progress=False)
    summary = json.loads((out / "summary.json").read_text())
    for key in ("dense_accuracy", "final_accuracy", "compression_ratio", "file_bytes"):
        assert key in summary
    hsz = out / "model.hsz"
    assert summary["file_bytes"] == hsz.stat().st_size
    assert summary["compression_ratio"] == pytest.approx(1_066_440 / summary["file_bytes"])
    assert summary["roundtrip_max_abs_diff"] == 0.0
    report = json.loads((out / "report.json").read_text())
    stages = [s["stage"] for s in report["stages"]]
    assert stages == ["dense", "prune-1", "prune-2", "share", "finetune"]
    fc1 = [s["layers"][0] for s in report["stages"]]
    assert [r["layer"] for r in fc1] == ["1"] * 5 and fc1[0]["density"] == 1.0
    assert fc1[-1]["density"] == pytest.approx(0.07, abs=1e-4)
    assert fc1[1]["density"] == pytest.approx(0.07 ** 0.5, abs=1e-4)  # geometric schedule
    md = (out / "report.md").read_text()
    assert "| finetune | 1 | 300x784 |" in md and "bits/weight" in md
    for stage in ("dense", "prune-1", "prune-2", "finetune"):
        assert (out / "checkpoints" / stage / "best.pt").exists()
    # the file loads back into a fresh model with the summary's test accuracy
    from hypersparse.data import digits

    model = _skeleton(DeepCompressionConfig(), torch.device("cpu"))
    load_compressed(model, hsz)
    test = digits("mnist", "test")
    with torch.no_grad():
        acc = float((model.eval()(test.float()).argmax(1) == test.labels).float().mean())
    assert acc == pytest.approx(summary["final_accuracy"])
    ev = evaluate_run(out, device="cpu")
    assert ev["final_accuracy"] == pytest.approx(summary["final_accuracy"])
    assert ev["file_bytes"] == summary["file_bytes"]
    # resuming a finished run retrains nothing and reproduces the summary
    run_experiment("deep-compression", ["train.max_steps=3", "prune.iterations=2"],
                   out=out, resume=True, progress=False)
    again = json.loads((out / "summary.json").read_text())
    assert again["final_accuracy"] == summary["final_accuracy"]
    assert again["file_bytes"] == summary["file_bytes"]
