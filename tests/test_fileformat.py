"""The compressed file format and the compress/decompress commands."""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from hypersparse.compress import prune
from hypersparse.compress.cli import add_commands, cmd_compress, cmd_decompress, load_source
from hypersparse.compress.fileformat import (
    CorruptFileError,
    compress_model,
    compress_state_dict,
    decode_state_dict,
    decompress,
    encode_state_dict,
    load_compressed,
)
from hypersparse.io import load_checkpoint, save_checkpoint


def lenet300(seed: int = 0) -> nn.Sequential:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Flatten(), nn.Linear(784, 300), nn.ReLU(), nn.Linear(300, 100),
                         nn.ReLU(), nn.Linear(100, 10))


def convnet(seed: int = 0) -> nn.Sequential:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Conv2d(1, 6, 5), nn.BatchNorm2d(6), nn.ReLU(), nn.MaxPool2d(2),
                         nn.Flatten(), nn.Linear(6 * 12 * 12, 10))


def assert_same_state(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert list(a) == list(b)
    for k in a:
        assert a[k].dtype == b[k].dtype and a[k].shape == b[k].shape, k
        assert torch.equal(a[k], b[k]), k


def test_pruned_mlp_round_trip_identical_outputs_and_small(tmp_path: Path) -> None:
    net = lenet300()
    prune.global_magnitude_prune(net, 0.92)
    path = tmp_path / "m.hsz"
    summary = compress_model(net, path)
    assert summary.file_bytes == os.path.getsize(path)
    assert summary.dense_bytes == 4 * sum(p.numel() for p in net.parameters())
    assert summary.ratio > 8  # 8% of the weights, 32-bit values, ~5-bit gaps
    fresh = lenet300(seed=1)
    prune.load_pruned_state_dict(fresh, decompress(path)[0])
    x = torch.rand(7, 1, 28, 28)
    assert torch.equal(fresh(x), net(x))
    assert torch.equal(fresh[1].weight_mask, net[1].weight_mask)
    # and into a plain model after dropping the masks
    plain = lenet300(seed=2)
    plain.load_state_dict(prune.dense_state_dict(decompress(path)[0]))
    assert torch.equal(plain(x), net(x))


def test_conv_bn_round_trip_and_buffers(tmp_path: Path) -> None:
    net = convnet()
    net(torch.rand(8, 1, 28, 28))  # running statistics and num_batches_tracked
    net.eval()
    prune.magnitude_prune(net[0], amount=0.5)
    prune.magnitude_prune(net[5], amount=0.95)
    path = tmp_path / "c.hsz"
    compress_model(net, path, index_bits={"conv": 4})
    sd, _ = decompress(path)
    assert_same_state(sd, prune.dense_state_dict(net.state_dict()) | {
        k: v for k, v in sd.items() if k.endswith("_mask")})
    fresh = convnet(seed=3).eval()
    prune.load_pruned_state_dict(fresh, sd)
    x = torch.rand(3, 1, 28, 28)
    assert torch.equal(fresh(x), net(x))


def test_codebook_mode_for_quantised_weights(tmp_path: Path) -> None:
    net = lenet300()
    prune.global_magnitude_prune(net, 0.9)
    prune.remove_all(net)
    with torch.no_grad():
        for i in (1, 3, 5):
            net[i].weight.copy_((net[i].weight * 40).round() / 40)  # few distinct values
    plain = compress_model(net, tmp_path / "q.hsz")
    assert {r.values for r in plain.records if r.kind == "coded"} == {"codebook"}
    sd, _ = decompress(tmp_path / "q.hsz")
    assert_same_state(sd, net.state_dict())
    raw_bits = compress_model(net, tmp_path / "r.hsz", max_codebook=1)
    assert raw_bits.file_bytes > plain.file_bytes  # the codebook + Huffman pays off


def test_shared_layer_contract_round_trip() -> None:
    # the state-dict contract of compress.cluster.SharedWeights: centroids / index / mask
    g = torch.Generator().manual_seed(0)
    mask = torch.rand(50, 40, generator=g) < 0.1
    mask[7] = False  # an empty row, and long gaps
    index = torch.randint(0, 32, (50, 40), generator=g, dtype=torch.int64).to(torch.uint8)
    index[~mask] = 0
    sd = {"fc.centroids": torch.linspace(-1, 1, 32), "fc.index": index, "fc.mask": mask,
          "fc.layer.bias": torch.randn(50, generator=g)}
    data, infos = encode_state_dict(sd, index_bits=3)
    assert [i.kind for i in infos] == ["shared", "raw"]
    back, _ = decode_state_dict(data)
    assert set(back) == set(sd)
    for k in sd:
        assert back[k].dtype == sd[k].dtype and torch.equal(back[k], sd[k]), k


def test_shared_weights_module_round_trip(tmp_path: Path) -> None:
    cluster = pytest.importorskip("hypersparse.compress.cluster")  # issue 14's module
    net = lenet300()
    prune.global_magnitude_prune(net, 0.9)
    prune.remove_all(net)
    shared = cluster.share_weights(net, bits=5)
    compress_model(shared, tmp_path / "s.hsz")
    fresh = cluster.share_weights(lenet300(seed=5), bits=5)
    load_compressed(fresh, tmp_path / "s.hsz")
    x = torch.rand(4, 1, 28, 28)
    assert torch.equal(fresh(x), shared(x))


def test_empty_and_degenerate_tensors() -> None:
    sd = {"zero": torch.zeros(6, 9), "empty": torch.zeros(0, 5), "scalar": torch.tensor(3.5),
          "ints": torch.arange(10), "flags": torch.tensor([True, False]),
          "half": torch.randn(4, 4).half(), "bf": torch.randn(3, 3).bfloat16(),
          "const": torch.full((5, 5), 0.25), "far": torch.zeros(3, 1000)}
    sd["far"][2, 999] = 1.0  # one value after a gap far beyond 2^5
    data, _ = encode_state_dict(sd)
    back, meta = decode_state_dict(data)
    assert meta == {}
    assert_same_state(back, sd)


def test_corruption_is_detected_never_a_wrong_model(tmp_path: Path) -> None:
    net = lenet300()
    prune.global_magnitude_prune(net, 0.95)
    data, _ = encode_state_dict(net.state_dict(), metadata={"k": 1})
    rng = np.random.default_rng(0)
    for cut in (0, 5, 20, len(data) // 3, len(data) - 1):
        with pytest.raises(CorruptFileError):
            decode_state_dict(data[:cut])
    for bit in rng.integers(0, 8 * len(data), 40).tolist() + [0, 8 * len(data) - 1]:
        flipped = bytearray(data)
        flipped[bit // 8] ^= 1 << (bit % 8)
        with pytest.raises(CorruptFileError):
            decode_state_dict(bytes(flipped))
    with pytest.raises(CorruptFileError, match="magic"):
        decode_state_dict(b"PK\x03\x04" + data[4:])
    with pytest.raises(FileNotFoundError):
        decompress(tmp_path / "missing.hsz")


def test_bad_arguments() -> None:
    sd = {"w": torch.randn(3, 3)}
    with pytest.raises(ValueError, match="index bits"):
        encode_state_dict(sd, index_bits=0)
    with pytest.raises(ValueError, match="linear"):
        encode_state_dict(sd, index_bits={"fc": 5})
    with pytest.raises(TypeError, match="not a tensor"):
        encode_state_dict({"w": [1, 2]})  # type: ignore[dict-item]
    with pytest.raises(ValueError, match="unsupported dtype"):
        encode_state_dict({"c": torch.zeros(2, dtype=torch.complex64)})


# ----------------------------------------------------------------- commands


def _fake_run(tmp_path: Path, net: nn.Module) -> Path:
    run = tmp_path / "run"
    (run / "checkpoints" / "model").mkdir(parents=True)
    (run / "config.json").write_text(json.dumps({"experiment": "mnist-mlp", "preset": None,
                                                 "overrides": [], "config": {"seed": 0}}))
    save_checkpoint({"model": net.state_dict(), "step": 3}, run / "checkpoints/model/best.pt")
    return run


def _parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="hypersparse")
    add_commands(parser.add_subparsers(dest="command", required=True))
    return parser.parse_args(argv)


def test_cli_compress_run_dir_and_decompress(tmp_path: Path, capsys: pytest.CaptureFixture[str]
                                             ) -> None:
    net = lenet300()
    prune.global_magnitude_prune(net, 0.9)
    run = _fake_run(tmp_path, net)
    out = tmp_path / "m.hsz"
    args = _parse(["compress", str(run), "--out", str(out)])
    assert args.func is cmd_compress and args.func(args) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed["file_bytes"] == os.path.getsize(out) and printed["lossless"]
    _, meta = decompress(out)
    assert meta["experiment"] == "mnist-mlp" and meta["stage"] == "model"
    ckpt = tmp_path / "back.pt"
    args = _parse(["decompress", str(out), "--out", str(ckpt)])
    assert args.func(args) == 0
    fresh = lenet300(seed=9)
    prune.load_pruned_state_dict(fresh, load_checkpoint(ckpt)["model"])
    x = torch.rand(5, 1, 28, 28)
    assert torch.equal(fresh(x), net(x))
    assert json.loads(capsys.readouterr().out)["out"] == str(ckpt)


def test_cli_checkpoint_file_and_errors(tmp_path: Path, capsys: pytest.CaptureFixture[str]
                                        ) -> None:
    net = convnet()
    save_checkpoint(net.state_dict(), tmp_path / "bare.pt")
    summary = compress_state_dict(load_source(tmp_path / "bare.pt")[0], tmp_path / "b.hsz")
    assert summary.file_bytes == os.path.getsize(tmp_path / "b.hsz")
    args = _parse(["decompress", str(tmp_path / "b.hsz")])
    assert cmd_decompress(args) == 0
    assert json.loads(capsys.readouterr().out)["tensors"] == len(net.state_dict())
    run = _fake_run(tmp_path, net)
    with pytest.raises(ValueError, match="stage"):
        load_source(run, stage="finetune")
    with pytest.raises(FileNotFoundError):
        load_source(tmp_path)  # a directory without config.json
    with pytest.raises(FileNotFoundError):
        load_source(tmp_path / "nope.pt")


def test_cluster_bits_is_lossy_but_keeps_sparsity(tmp_path: Path) -> None:
    pytest.importorskip("hypersparse.compress.cluster")  # issue 14's k-means
    net = lenet300()
    prune.global_magnitude_prune(net, 0.9)
    lossless = compress_model(net, tmp_path / "a.hsz")
    lossy = compress_model(net, tmp_path / "b.hsz", cluster_bits=4)
    assert lossy.file_bytes < lossless.file_bytes / 3
    sd, _ = decompress(tmp_path / "b.hsz")
    for i in (1, 3, 5):
        w = sd[f"{i}.weight"]
        assert torch.equal(w != 0, net[i].weight_mask)
        assert w[w != 0].unique().numel() <= 16


def test_cli_main_on_a_real_run(tmp_path: Path, mnist_available: bool,
                                capsys: pytest.CaptureFixture[str]) -> None:
    from hypersparse import cli
    from hypersparse.experiments.mnist_mlp import mlp
    from hypersparse.run import run_experiment

    run = run_experiment("mnist-mlp", ["train.max_steps=3"], out=tmp_path / "r", progress=False)
    out, back = tmp_path / "m.hsz", tmp_path / "m.pt"
    assert cli.main(["compress", str(run), "--out", str(out)]) == 0
    assert cli.main(["decompress", str(out), "--out", str(back)]) == 0
    capsys.readouterr()
    original, restored = mlp((300, 100)), mlp((300, 100))
    original.load_state_dict(load_checkpoint(run / "checkpoints" / "model" / "best.pt")["model"])
    restored.load_state_dict(load_checkpoint(back)["model"])
    x = torch.rand(4, 1, 28, 28)
    assert torch.equal(restored(x), original(x))
    assert cli.main(["decompress", str(tmp_path / "missing.hsz")]) == 2  # clear error, no crash
