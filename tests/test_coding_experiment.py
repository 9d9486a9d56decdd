"""Smoke test of the ``sparse-coding`` experiment with a tiny budget (needs MNIST)."""

from __future__ import annotations

import json

import pytest
import torch

TINY = [
    "train.max_steps=3", "reduce_train.max_steps=3", "layer1.n_atoms=8", "layer1.n_iter=2",
    "layer1.dict_patches=300", "layer1.dict_encode_iter=5", "layer2.n_atoms=8",
    "layer2.n_iter=2", "layer2.dict_patches=300", "layer2.dict_encode_iter=5", "reduce_dim=4",
    "n_pairs=2000", "chunk_images=5000",
]


@pytest.mark.slow
def test_sparse_coding_smoke(tmp_path, mnist_available) -> None:
    from hypersparse.run import evaluate_run, run_experiment

    n = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        out = run_experiment("sparse-coding", TINY, out=tmp_path / "r", progress=False)
        summary = json.loads((out / "summary.json").read_text())
        for key in ("test_accuracy", "raw_pixels_linear_accuracy", "code_density"):
            assert 0.0 <= summary[key] <= 1.0, key
        for stage in ("raw", "layer1", "random", "reduced", "deep"):
            assert f"{stage}_linear_test_accuracy" in summary
        assert summary["layer1_features"] == 8 * 5 * 5
        assert (out / "atoms.png").exists() and (out / "config.json").exists()
        for stage in ("layer1", "layer2", "reduce", "linear-deep"):
            assert (out / "checkpoints" / stage / "best.pt").exists(), stage
        again = evaluate_run(out, device="cpu")
        assert again["test_accuracy"] == pytest.approx(summary["test_accuracy"])
        assert again["code_density"] == pytest.approx(summary["code_density"])
    finally:
        torch.set_num_threads(n)
