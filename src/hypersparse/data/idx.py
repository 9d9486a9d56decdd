"""Reader and writer for the IDX format of MNIST and Fashion-MNIST (optionally gzipped)."""

from __future__ import annotations

import gzip
import os
import struct
from pathlib import Path
from typing import Any

import numpy as np
import torch

__all__ = ["read_idx", "write_idx", "IDXError"]

# IDX type codes -> (numpy big-endian dtype, torch dtype)
_TYPES: dict[int, tuple[np.dtype[Any], torch.dtype]] = {
    0x08: (np.dtype(">u1"), torch.uint8),
    0x09: (np.dtype(">i1"), torch.int8),
    0x0B: (np.dtype(">i2"), torch.int16),
    0x0C: (np.dtype(">i4"), torch.int32),
    0x0D: (np.dtype(">f4"), torch.float32),
    0x0E: (np.dtype(">f8"), torch.float64),
}
_CODES = {v[1]: k for k, v in _TYPES.items()}


class IDXError(ValueError):
    """A file that is not a valid IDX file (bad magic, truncated, corrupt gzip)."""


def read_idx(path: str | os.PathLike[str]) -> torch.Tensor:
    """Read an IDX file (``.gz`` or raw) into a tensor of its stored dtype and shape.

    Raises:
        FileNotFoundError: if the file does not exist.
        IDXError: naming the file, if it is corrupt, truncated or not IDX.

    Example:
        >>> images = read_idx("t10k-images-idx3-ubyte.gz")  # doctest: +SKIP
        >>> images.shape, images.dtype  # doctest: +SKIP
        (torch.Size([10000, 28, 28]), torch.uint8)
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"IDX file not found: {path}")
    try:
        with open(path, "rb") as f:
            head = f.read(2)
        opener = gzip.open if head == b"\x1f\x8b" else open
        with opener(path, "rb") as f:
            data = f.read()
    except (OSError, EOFError) as e:
        raise IDXError(f"{path}: cannot read ({e})") from e
    if len(data) < 4:
        raise IDXError(f"{path}: too short to be an IDX file ({len(data)} bytes)")
    zero, code, ndim = struct.unpack(">HBB", data[:4])
    if zero != 0 or code not in _TYPES or ndim == 0:
        raise IDXError(f"{path}: bad IDX magic {data[:4].hex()} (not an IDX file?)")
    if len(data) < 4 + 4 * ndim:
        raise IDXError(f"{path}: truncated header")
    shape = struct.unpack(">" + "I" * ndim, data[4 : 4 + 4 * ndim])
    np_dtype, _ = _TYPES[code]
    expected = int(np.prod(shape)) * np_dtype.itemsize
    body = data[4 + 4 * ndim :]
    if len(body) != expected:
        raise IDXError(
            f"{path}: header says shape {tuple(shape)} ({expected} bytes), file has {len(body)} "
            "bytes (truncated or corrupt)"
        )
    array = np.frombuffer(body, dtype=np_dtype).reshape(shape)
    return torch.from_numpy(array.astype(np_dtype.newbyteorder("="), copy=True))


def write_idx(path: str | os.PathLike[str], tensor: torch.Tensor) -> None:
    """Write ``tensor`` as IDX (gzipped when ``path`` ends in ``.gz``)."""
    if tensor.dtype not in _CODES:
        raise TypeError(f"IDX cannot store dtype {tensor.dtype}; valid: {list(_CODES)}")
    if tensor.dim() == 0 or tensor.dim() > 255:
        raise ValueError(f"IDX needs 1 to 255 dimensions, got {tensor.dim()}")
    code = _CODES[tensor.dtype]
    header = struct.pack(">HBB", 0, code, tensor.dim()) + struct.pack(
        ">" + "I" * tensor.dim(), *tensor.shape
    )
    body = tensor.detach().cpu().contiguous().numpy().astype(_TYPES[code][0]).tobytes()
    path = Path(path)
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "wb") as f:
        f.write(header + body)
