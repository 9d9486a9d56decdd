"""Datasets: the IDX reader, MNIST/Fashion-MNIST under the one split rule."""

from .idx import IDXError, read_idx, write_idx
from .splits import (
    Digits,
    download_files,
    fashion_mnist,
    find_idx_dir,
    mnist,
    stratified_split,
)

__all__ = [
    "IDXError",
    "read_idx",
    "write_idx",
    "Digits",
    "download_files",
    "fashion_mnist",
    "find_idx_dir",
    "mnist",
    "stratified_split",
    "digits",
]


def digits(dataset: str, split: str, root: str | None = None) -> Digits:
    """``digits("mnist" | "fashion", split)``: the dataset switch experiments use."""
    if dataset == "mnist":
        return mnist(split, root)  # type: ignore[arg-type]
    if dataset in ("fashion", "fashion-mnist"):
        return fashion_mnist(split, root)  # type: ignore[arg-type]
    raise ValueError(f"dataset must be 'mnist' or 'fashion', got {dataset!r}")

from .cluttered import (  # noqa: E402
    ClutteredBatches,
    ClutteredImages,
    clutter,
    cluttered_set,
    default_distractors,
)

__all__ += ["ClutteredBatches", "ClutteredImages", "clutter", "cluttered_set"]
__all__ += ["default_distractors"]
from .sequences import DigitSequences, digit_sequences, sequence_images  # noqa: F401,E402
from .augment import (  # noqa: F401,E402
    AUGMENTATIONS,
    AugmentedBatches,
    augmentation,
    random_affine,
    random_shift,
)
