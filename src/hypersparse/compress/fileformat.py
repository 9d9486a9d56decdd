"""The compressed model file (``.hsz``): Deep Compression's storage, byte-exact and code-free.

A model's state dict is stored record by record. Weights (floating tensors of two or more
dimensions) are coded: their non-zero positions as relative indices (gaps, Huffman-coded; see
:mod:`.relindex`), their values through a codebook (Huffman-coded indices) or raw; for every
tensor the encoder tries the sparse and the dense layout and every value mode that applies and
keeps the smallest. k-means-shared layers (``<layer>.centroids`` / ``.index`` / ``.mask``, the
contract of :mod:`hypersparse.compress.cluster`) are one record: the codebook plus the coded
index of each kept position. Everything else (biases, BatchNorm statistics, integer buffers) is
stored raw. Reading parses bytes only (no pickle): a file can never execute code.

Lossless by default: the decompressed state dict equals the input bit for bit (codebooks are
built from the exact distinct values). ``cluster_bits`` clusters unshared weights first (lossy).

Layout (little-endian)::

    magic      8 bytes   b"\\x89HSPZ\\r\\n\\x1a"
    version    u16       1
    flags      u16       0
    meta_len   u32       then meta_len bytes of UTF-8 JSON (free-form metadata)
    n_records  u32
    records    n_records times:
        name_len u16, name (UTF-8)         state-dict key (a shared layer: its prefix)
        kind     u8                        0 raw, 1 coded, 2 shared layer, 3 derived mask
        dtype    u8                        see DTYPES
        ndim     u8, ndim * u32            shape
        raw:     u64 nbytes, the tensor's bytes (row-major)
        coded:   u8 layout (0 dense, 1 sparse), u8 values (0 raw, 1 codebook)
                 sparse:   u8 bits, u64 len, Huffman stream of gaps
                 codebook: u32 K, K values (dtype), u64 len, Huffman stream of indices
                           (sparse layout: index K marks a filler)
                 raw:      u64 count, count values (dtype; fillers are zeros)
        shared:  u8 index dtype, u32 k, k centroids (dtype), u8 layout
                 sparse: u8 bits, u64 len, gap stream; then u64 len, index stream with
                 symbol k for fillers; dense: u64 len, stream over all positions, k = pruned
        derived: u16 len, source key (UTF-8): the bool mask equals ``source != 0``
    crc32      u32       of every byte before it

The size a compression reports is the size of this file on disk, everything included.
"""

from __future__ import annotations

import json
import os
import struct
import zlib
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from ..io import atomic_write_bytes
from .huffman import HuffmanError, huffman_decode, huffman_encode
from .prune import MASK_SUFFIX, unpack_mask
from .relindex import DEFAULT_BITS, relative_indices, relative_positions

__all__ = [
    "MAGIC",
    "VERSION",
    "CorruptFileError",
    "RecordInfo",
    "CompressionSummary",
    "encode_state_dict",
    "decode_state_dict",
    "compress_state_dict",
    "compress_model",
    "decompress",
    "load_compressed",
]

MAGIC = b"\x89HSPZ\r\n\x1a"
VERSION = 1
RAW, CODED, SHARED, DERIVED = 0, 1, 2, 3
DENSE, SPARSE = 0, 1
VALUES_RAW, VALUES_CODEBOOK = 0, 1
MAX_CODEBOOK = 1 << 16

DTYPES: dict[int, torch.dtype] = {
    1: torch.float32, 2: torch.float64, 3: torch.float16, 4: torch.bfloat16, 5: torch.int8,
    6: torch.uint8, 7: torch.int16, 8: torch.int32, 9: torch.int64, 10: torch.bool,
}
_CODES = {v: k for k, v in DTYPES.items()}


class CorruptFileError(ValueError):
    """The file is not a compressed model, is truncated, or fails its checksum."""


@dataclass
class RecordInfo:
    """What one record holds and costs (``bytes`` includes the record's header)."""

    name: str
    kind: str
    shape: tuple[int, ...]
    nonzeros: int
    layout: str
    values: str
    bytes: int


@dataclass
class CompressionSummary:
    """Sizes of a compressed file. ``file_bytes`` is the file on disk; ``dense_bytes`` the
    tensors' raw storage (float32 weights: 4 bytes each)."""

    file_bytes: int
    dense_bytes: int
    ratio: float
    records: list[RecordInfo] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


# --------------------------------------------------------------------------- bytes helpers


def _tensor_bytes(t: Tensor) -> bytes:
    t = t.detach().cpu().contiguous().reshape(-1)
    if t.numel() == 0:
        return b""
    return t.view(torch.uint8).numpy().tobytes()


def _bytes_tensor(raw: bytes | memoryview, dtype: torch.dtype, shape: tuple[int, ...]) -> Tensor:
    n = int(np.prod(shape)) if shape else 1
    itemsize = torch.empty((), dtype=dtype).element_size()
    if len(raw) != n * itemsize:
        raise CorruptFileError(f"{len(raw)} bytes for {n} values of {dtype}")
    if n == 0:
        return torch.zeros(shape, dtype=dtype)
    return torch.frombuffer(bytearray(raw), dtype=torch.uint8).view(dtype).reshape(shape).clone()


class _Reader:
    def __init__(self, buf: memoryview) -> None:
        self.buf, self.pos = buf, 0

    def take(self, n: int) -> memoryview:
        if n < 0 or self.pos + n > len(self.buf):
            raise CorruptFileError(f"truncated record: need {n} bytes at offset {self.pos}")
        out = self.buf[self.pos : self.pos + n]
        self.pos += n
        return out

    def unpack(self, fmt: str) -> tuple[Any, ...]:
        return struct.unpack(fmt, self.take(struct.calcsize(fmt)))

    def stream(self) -> np.ndarray:
        (n,) = self.unpack("<Q")
        raw = self.take(n)
        try:
            out, end = huffman_decode(raw, return_end=True)
        except HuffmanError as e:
            raise CorruptFileError(f"bad Huffman stream: {e}") from e
        if end != n:
            raise CorruptFileError("Huffman stream length mismatch")
        return out


def _stream(symbols: np.ndarray) -> bytes:
    data = huffman_encode(symbols)
    return struct.pack("<Q", len(data)) + data


def _bits_for(shape: tuple[int, ...], bits: Mapping[str, int]) -> int:
    return bits["linear"] if len(shape) <= 2 else bits["conv"]


# --------------------------------------------------------------------------- encoders


def _encode_gaps(mask: Tensor, bits: int) -> tuple[bytes, Tensor]:
    gaps, filler = relative_indices(mask, bits)
    return struct.pack("<B", bits) + _stream(gaps.numpy()), filler


def _coded_candidates(t: Tensor, bits: int, max_codebook: int) -> list[tuple[bytes, str, str]]:
    flat = t.reshape(-1)
    itemsize = t.element_size()
    cands: list[tuple[bytes, str, str]] = []
    mask = flat != 0
    gap_bytes, filler = _encode_gaps(mask, bits)
    entries = torch.zeros(filler.numel(), dtype=t.dtype)
    entries[~filler] = flat[mask]  # (E,) values of the stored entries, fillers zero
    for layout, values in ((DENSE, flat), (SPARSE, entries)):
        head = struct.pack("<BB", layout, VALUES_RAW) + (gap_bytes if layout == SPARSE else b"")
        cands.append((head + struct.pack("<Q", values.numel()) + _tensor_bytes(values),
                      "dense" if layout == DENSE else "sparse", "raw"))
        pool = values if layout == DENSE else flat[mask]
        book = torch.unique(pool)  # sorted distinct values (bit-exact)
        if book.numel() == 0 or book.numel() > max_codebook:
            continue
        if book.numel() * itemsize > values.numel() * itemsize // 2 and values.numel() > 64:
            continue  # a codebook this large never pays off
        sym = torch.searchsorted(book, values)
        if layout == SPARSE:
            sym[filler] = book.numel()  # fillers
        head = struct.pack("<BB", layout, VALUES_CODEBOOK) + (gap_bytes if layout == SPARSE
                                                             else b"")
        cands.append((head + struct.pack("<I", book.numel()) + _tensor_bytes(book)
                      + _stream(sym.numpy()), "dense" if layout == DENSE else "sparse",
                      "codebook"))
    return cands


def _encode_shared(centroids: Tensor, index: Tensor, mask: Tensor, bits: int
                   ) -> tuple[bytes, str]:
    k = centroids.numel()
    head = struct.pack("<BI", _CODES[index.dtype], k) + _tensor_bytes(centroids)
    idx = index.reshape(-1).to(torch.int64)
    m = mask.reshape(-1)
    dense = head + struct.pack("<B", DENSE) + _stream(torch.where(m, idx, k).numpy())
    gap_bytes, filler = _encode_gaps(m, bits)
    sym = torch.full((filler.numel(),), k, dtype=torch.int64)
    sym[~filler] = idx[m]
    sparse = head + struct.pack("<B", SPARSE) + gap_bytes + _stream(sym.numpy())
    return (sparse, "sparse") if len(sparse) < len(dense) else (dense, "dense")


def _shared_groups(sd: Mapping[str, Tensor]) -> dict[str, tuple[str, str, str]]:
    groups = {}
    for key in sd:
        if key.endswith("centroids"):
            prefix = key[: -len("centroids")]
            ik, mk = prefix + "index", prefix + "mask"
            if ik in sd and mk in sd and sd[mk].dtype == torch.bool and \
                    not sd[ik].dtype.is_floating_point and sd[key].dim() == 1 and \
                    sd[ik].shape == sd[mk].shape and sd[key].is_floating_point():
                groups[prefix.rstrip(".")] = (key, ik, mk)
    return groups


def _header(name: str, kind: int, dtype: torch.dtype, shape: tuple[int, ...]) -> bytes:
    raw = name.encode("utf-8")
    if len(raw) >= 1 << 16:
        raise ValueError(f"state-dict key too long: {name[:50]}...")
    if dtype not in _CODES:
        raise ValueError(f"{name}: unsupported dtype {dtype}; supported: "
                         f"{sorted(str(d) for d in _CODES)}")
    return (struct.pack("<H", len(raw)) + raw + struct.pack("<BBB", kind, _CODES[dtype],
            len(shape)) + struct.pack(f"<{len(shape)}I", *shape))


def _is_weight(t: Tensor) -> bool:
    return t.is_floating_point() and t.dim() >= 2 and t.numel() > 0


def _expand_compact(state_dict: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """Pruned entries in :mod:`.prune`'s compact form -> dense tensor + bool mask."""
    sd = dict(state_dict)
    for mkey, mask in state_dict.items():
        key = mkey[: -len(MASK_SUFFIX)]
        if not (mkey.endswith(MASK_SUFFIX) and isinstance(mask, Tensor)
                and mask.dtype == torch.uint8 and key in sd):
            continue
        values = sd[key]
        full = unpack_mask(mask)
        if values.dim() == 1 and values.numel() == int(full.sum()) and values.shape != full.shape:
            dense = torch.zeros(full.shape, dtype=values.dtype)
            dense[full] = values
            sd[key] = dense
        sd[mkey] = full
    return sd


def _cluster(t: Tensor, cluster_bits: int) -> Tensor:
    try:
        from .cluster import kmeans1d  # issue 14's module
    except ImportError as e:  # pragma: no cover - depends on the merge state
        raise ValueError("cluster_bits needs hypersparse.compress.cluster (k-means)") from e
    out = torch.zeros_like(t)
    mask = t != 0
    if bool(mask.any()):
        c, a = kmeans1d(t[mask].float(), 1 << cluster_bits)
        out[mask] = c[a].to(t.dtype)
    return out


def encode_state_dict(
    state_dict: Mapping[str, Tensor],
    *,
    metadata: Mapping[str, Any] | None = None,
    index_bits: Mapping[str, int] | int | None = None,
    max_codebook: int = MAX_CODEBOOK,
    cluster_bits: int | None = None,
) -> tuple[bytes, list[RecordInfo]]:
    """Encode a state dict into the file format's bytes (see the module docstring).

    Args:
        state_dict: name -> tensor. A pruned model's compact entries (``*_mask``) are expanded
            first (:func:`hypersparse.compress.prune.dense_state_dict`): the zeros carry the
            sparsity.
        metadata: JSON-serialisable information stored in the header (experiment, config, ...).
        index_bits: relative-index width, an int or ``{"linear": 5, "conv": 8}`` (the paper's):
            "linear" applies to 2-d weights, "conv" to higher ranks.
        max_codebook: largest codebook tried for unshared weights (lossless distinct values).
        cluster_bits: if set, unshared weights are first clustered into ``2^cluster_bits``
            k-means centroids (lossy; needs :mod:`hypersparse.compress.cluster`).

    Returns:
        ``(bytes, records)``.
    """
    bits: dict[str, Any] = dict(DEFAULT_BITS)
    if isinstance(index_bits, Mapping):
        unknown = set(index_bits) - set(bits)
        if unknown:
            raise ValueError(f"index_bits keys must be 'linear'/'conv', got {sorted(unknown)}")
        bits.update(index_bits)
    elif index_bits is not None:
        bits = {"linear": index_bits, "conv": index_bits}
    for v in bits.values():
        if isinstance(v, bool) or not isinstance(v, int) or not 1 <= v <= 16:
            raise ValueError(f"index bits must be ints in [1, 16], got {v!r}")
    if cluster_bits is not None and not (isinstance(cluster_bits, int)
                                         and 1 <= cluster_bits <= 16):
        raise ValueError(f"cluster_bits must be an int in [1, 16] or None, got {cluster_bits!r}")
    sd = _expand_compact(state_dict)
    for k, val in sd.items():
        if not isinstance(val, Tensor):
            raise TypeError(f"state_dict[{k!r}] is a {type(val).__name__}, not a tensor")
    meta = json.dumps(dict(metadata or {}), sort_keys=True).encode("utf-8")
    groups = _shared_groups(sd)
    grouped = {k for keys in groups.values() for k in keys}
    if cluster_bits is not None:
        sd = {k: _cluster(v.detach().cpu(), cluster_bits) if _is_weight(v) and k not in grouped
              else v for k, v in sd.items()}
    records: list[bytes] = []
    infos: list[RecordInfo] = []
    done: set[str] = set()
    for key in sd:
        if key in done:
            continue
        if key in grouped:
            prefix = next(p for p, ks in groups.items() if key in ks)
            ck, ik, mk = groups[prefix]
            done.update((ck, ik, mk))
            c, i, m = (sd[x].detach().cpu() for x in (ck, ik, mk))
            shape = tuple(i.shape)
            body, layout = _encode_shared(c, i, m, _bits_for(shape, bits))
            rec = _header(prefix, SHARED, c.dtype, shape) + body
            infos.append(RecordInfo(prefix, "shared", shape, int(m.sum()), layout, "codebook",
                                    len(rec)))
            records.append(rec)
            continue
        done.add(key)
        t = sd[key].detach().cpu()
        shape = tuple(t.shape)
        source = key[: -len(MASK_SUFFIX)] if key.endswith(MASK_SUFFIX) else None
        if t.dtype == torch.bool and source in sd and sd[source].shape == t.shape and \
                bool(torch.equal(sd[source].detach().cpu() != 0, t)):
            raw = source.encode("utf-8")
            rec = _header(key, DERIVED, t.dtype, shape) + struct.pack("<H", len(raw)) + raw
            infos.append(RecordInfo(key, "derived", shape, int(t.sum()), "none", "none",
                                    len(rec)))
        elif _is_weight(t):
            cands = _coded_candidates(t, _bits_for(shape, bits), max_codebook)
            body, layout, values = min(cands, key=lambda c: len(c[0]))
            rec = _header(key, CODED, t.dtype, shape) + body
            infos.append(RecordInfo(key, "coded", shape, int((t != 0).sum()), layout, values,
                                    len(rec)))
        else:
            data = _tensor_bytes(t)
            rec = _header(key, RAW, t.dtype, shape) + struct.pack("<Q", len(data)) + data
            infos.append(RecordInfo(key, "raw", shape, int((t != 0).sum()), "dense", "raw",
                                    len(rec)))
        records.append(rec)
    out = bytearray(MAGIC + struct.pack("<HHI", VERSION, 0, len(meta)) + meta)
    out += struct.pack("<I", len(records))
    for rec in records:
        out += rec
    out += struct.pack("<I", zlib.crc32(out) & 0xFFFFFFFF)
    return bytes(out), infos


# --------------------------------------------------------------------------- decoders


def _decode_gaps(r: _Reader) -> Tensor:
    (bits,) = r.unpack("<B")
    if not 1 <= bits <= 32:
        raise CorruptFileError(f"bad index width {bits}")
    gaps = torch.from_numpy(r.stream())
    if gaps.numel() and int(gaps.max()) >= 1 << bits:
        raise CorruptFileError("gap exceeds the index width")
    return relative_positions(gaps)


def _check_positions(pos: Tensor, numel: int, name: str) -> None:
    if pos.numel() and int(pos[-1]) >= numel:
        raise CorruptFileError(f"{name}: positions run past the tensor ({numel} entries)")


Refs = dict[str, tuple[str, tuple[int, ...]]]


def _decode_record(r: _Reader) -> tuple[dict[str, Tensor], Refs]:
    (name_len,) = r.unpack("<H")
    try:
        name = bytes(r.take(name_len)).decode("utf-8")
    except UnicodeDecodeError as e:
        raise CorruptFileError("record name is not UTF-8") from e
    kind, code, ndim = r.unpack("<BBB")
    if code not in DTYPES or kind not in (RAW, CODED, SHARED, DERIVED):
        raise CorruptFileError(f"{name}: unknown record kind {kind} or dtype code {code}")
    dtype = DTYPES[code]
    shape = tuple(r.unpack(f"<{ndim}I"))
    numel = int(np.prod(shape)) if shape else 1
    itemsize = torch.empty((), dtype=dtype).element_size()
    if kind == RAW:
        (nbytes,) = r.unpack("<Q")
        return {name: _bytes_tensor(r.take(nbytes), dtype, shape)}, {}
    if kind == DERIVED:
        (n,) = r.unpack("<H")
        try:
            source = bytes(r.take(n)).decode("utf-8")
        except UnicodeDecodeError as e:
            raise CorruptFileError(f"{name}: source key is not UTF-8") from e
        return {}, {name: (source, shape)}
    if kind == CODED:
        layout, mode = r.unpack("<BB")
        if layout not in (DENSE, SPARSE) or mode not in (VALUES_RAW, VALUES_CODEBOOK):
            raise CorruptFileError(f"{name}: bad layout {layout} / value mode {mode}")
        pos = _decode_gaps(r) if layout == SPARSE else None
        count = pos.numel() if pos is not None else numel
        if mode == VALUES_RAW:
            (n,) = r.unpack("<Q")
            if n != count:
                raise CorruptFileError(f"{name}: {n} values for {count} entries")
            values = _bytes_tensor(r.take(n * itemsize), dtype, (n,))
        else:
            (k,) = r.unpack("<I")
            book = _bytes_tensor(r.take(k * itemsize), dtype, (k,))
            sym = torch.from_numpy(r.stream())
            if sym.numel() != count or (sym.numel() and int(sym.max()) > k - (pos is None)):
                raise CorruptFileError(f"{name}: index stream does not match the codebook")
            values = torch.cat([book, torch.zeros(1, dtype=dtype)])[sym]
        if pos is None:
            return {name: values.reshape(shape)}, {}
        _check_positions(pos, numel, name)
        out = torch.zeros(numel, dtype=dtype)
        out[pos] = values
        return {name: out.reshape(shape)}, {}
    # shared layer
    icode, k = r.unpack("<BI")
    if icode not in DTYPES:
        raise CorruptFileError(f"{name}: bad index dtype code {icode}")
    centroids = _bytes_tensor(r.take(k * itemsize), dtype, (k,))
    (layout,) = r.unpack("<B")
    if layout == SPARSE:
        pos = _decode_gaps(r)
        _check_positions(pos, numel, name)
        sym = torch.from_numpy(r.stream())
        if sym.numel() != pos.numel():
            raise CorruptFileError(f"{name}: index stream does not match the positions")
        full = torch.full((numel,), k, dtype=torch.int64)
        full[pos] = sym
    elif layout == DENSE:
        full = torch.from_numpy(r.stream())
        if full.numel() != numel:
            raise CorruptFileError(f"{name}: index stream has {full.numel()} entries, "
                                   f"expected {numel}")
    else:
        raise CorruptFileError(f"{name}: bad layout {layout}")
    if full.numel() and (int(full.min()) < 0 or int(full.max()) > k):
        raise CorruptFileError(f"{name}: index out of range")
    mask = full != k
    index = torch.where(mask, full, 0).to(DTYPES[icode]).reshape(shape)
    prefix = f"{name}." if name else ""
    return {prefix + "centroids": centroids, prefix + "index": index,
            prefix + "mask": mask.reshape(shape)}, {}


def decode_state_dict(data: bytes | bytearray | memoryview) -> tuple[dict[str, Tensor],
                                                                     dict[str, Any]]:
    """Parse the file format's bytes into ``(state_dict, metadata)``.

    Raises:
        CorruptFileError: bad magic, unsupported version, checksum mismatch (any truncation or
            bit flip), or inconsistent records.
    """
    buf = memoryview(bytes(data))
    if len(buf) < len(MAGIC) + 16:
        raise CorruptFileError(f"file too short ({len(buf)} bytes) to be a compressed model")
    if bytes(buf[: len(MAGIC)]) != MAGIC:
        raise CorruptFileError("not a hypersparse compressed model (bad magic bytes)")
    (crc,) = struct.unpack("<I", buf[-4:])
    if zlib.crc32(buf[:-4]) & 0xFFFFFFFF != crc:
        raise CorruptFileError("checksum mismatch: the file is truncated or corrupt")
    r = _Reader(buf[:-4])
    r.take(len(MAGIC))
    version, _flags, meta_len = r.unpack("<HHI")
    if version != VERSION:
        raise CorruptFileError(f"unsupported format version {version} (this reader: {VERSION})")
    try:
        metadata = json.loads(bytes(r.take(meta_len)).decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise CorruptFileError(f"bad metadata: {e}") from e
    (n_records,) = r.unpack("<I")
    sd: dict[str, Tensor] = {}
    derived: dict[str, tuple[str, tuple[int, ...]]] = {}
    for _ in range(n_records):
        entries, refs = _decode_record(r)
        for k, v in entries.items():
            if k in sd or k in derived:
                raise CorruptFileError(f"duplicate key {k!r}")
            sd[k] = v
        derived.update(refs)
    if r.pos != len(r.buf):
        raise CorruptFileError(f"{len(r.buf) - r.pos} unexpected bytes after the records")
    for k, (src, shape) in derived.items():
        if src not in sd or tuple(sd[src].shape) != shape:
            raise CorruptFileError(f"{k}: derived from missing or mis-shaped {src!r}")
        sd[k] = sd[src] != 0
    return sd, metadata


# --------------------------------------------------------------------------- file API


def compress_state_dict(state_dict: Mapping[str, Tensor], path: str | os.PathLike[str],
                        **kwargs: Any) -> CompressionSummary:
    """Write ``state_dict`` to ``path`` (atomically) and report the real file size.

    ``kwargs`` as :func:`encode_state_dict`. ``dense_bytes`` counts the input tensors' storage.
    """
    data, infos = encode_state_dict(state_dict, **kwargs)
    atomic_write_bytes(path, data)
    size = os.path.getsize(path)
    shapes = {i.name: i for i in infos}
    sd = _expand_compact(state_dict)
    dense = sum(v.numel() * v.element_size() for k, v in sd.items()
                if not (k in shapes and shapes[k].kind == "derived"))
    return CompressionSummary(size, dense, dense / size if size else 0.0, infos)


def compress_model(model: nn.Module, path: str | os.PathLike[str], **kwargs: Any
                   ) -> CompressionSummary:
    """:func:`compress_state_dict` of ``model.state_dict()``.

    Pruning masks that equal ``weight != 0`` cost a few bytes (a reference to the weight).

    Example:
        >>> import tempfile
        >>> net = nn.Sequential(nn.Linear(4, 3))
        >>> with tempfile.TemporaryDirectory() as d:
        ...     s = compress_model(net, d + "/m.hsz")
        ...     sd, meta = decompress(d + "/m.hsz")
        >>> torch.equal(sd["0.weight"], net[0].weight.detach())
        True
    """
    return compress_state_dict(model.state_dict(), path, **kwargs)


def decompress(path: str | os.PathLike[str]) -> tuple[dict[str, Tensor], dict[str, Any]]:
    """Read a compressed file: ``(state_dict, metadata)``."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"compressed model not found: {path}")
    return decode_state_dict(path.read_bytes())


def load_compressed(model: nn.Module, path: str | os.PathLike[str], strict: bool = True
                    ) -> dict[str, Any]:
    """Load a compressed file into ``model`` (same architecture); returns its metadata."""
    sd, meta = decompress(path)
    model.load_state_dict(sd, strict=strict)
    return meta
