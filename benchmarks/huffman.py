"""Huffman decode throughput against the pure-Python ``dahuffman`` package, and the size of a
pruned LeNet-300-100 in the compressed file format.

Run: ``PYTHONPATH=src python benchmarks/huffman.py`` -> ``results/huffman.json``.

Data: (a) codebook indices of a 5-bit (32-centroid) k-means-like layer drawn from a discretised
Gaussian, (b) 5-bit relative-index gaps of a 92%-sparse random mask, (c) uniform symbols over a
2^16 alphabet. Both coders decode the same symbols; bits per symbol are reported too. The size
experiment uses a randomly initialised (untrained) LeNet-300-100 pruned to 8% by magnitude, so
its values are not clustered: it measures the storage of positions + raw float32 values.
"""

from __future__ import annotations

import os
import sys
import tempfile

import dahuffman
import numpy as np
import torch

from harness import timeit, write_results
from hypersparse.compress import prune
from hypersparse.compress.fileformat import compress_model
from hypersparse.compress.huffman import huffman_decode, huffman_encode
from hypersparse.compress.relindex import relative_indices


def datasets(n: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    idx = np.clip(np.round(rng.normal(15.5, 5.0, n)), 0, 31).astype(np.int64)
    mask = torch.from_numpy(rng.random(n * 12) < 0.08)
    gaps = relative_indices(mask, 5)[0].numpy()[:n]
    uni = rng.integers(0, 2**16, n)
    return {"kmeans_indices_5bit": idx, "relindex_gaps_5bit": gaps, "uniform_2^16": uni}


def main() -> None:
    n = int(os.environ.get("HUFFMAN_BENCH_N", 1_000_000))
    n_dahuffman = min(n, 200_000)  # dahuffman decodes ~0.5M symbols/s: keep its runs short
    rows = []
    for name, sym in datasets(n).items():
        enc = huffman_encode(sym)
        assert np.array_equal(huffman_decode(enc), sym)
        ours = timeit(lambda enc=enc: huffman_decode(enc), repeats=7, warmup=1)
        t_enc = timeit(lambda sym=sym: huffman_encode(sym), repeats=3, warmup=1)
        part = sym[:n_dahuffman].tolist()
        codec = dahuffman.HuffmanCodec.from_data(part)
        denc = codec.encode(part)
        assert codec.decode(denc) == part
        theirs = timeit(lambda codec=codec, denc=denc: codec.decode(denc), repeats=3, warmup=1)
        ours_rate = n / ours["median_s"]
        theirs_rate = n_dahuffman / theirs["median_s"]
        rows.append({
            "data": name, "symbols": n, "alphabet": int(np.unique(sym).size),
            "bits_per_symbol": 8 * len(enc) / n,
            "dahuffman_bits_per_symbol": 8 * len(denc) / n_dahuffman,
            "decode_msym_per_s": ours_rate / 1e6,
            "encode_msym_per_s": n / t_enc["median_s"] / 1e6,
            "dahuffman_decode_msym_per_s": theirs_rate / 1e6,
            "dahuffman_symbols": n_dahuffman,
            "speedup_vs_dahuffman": ours_rate / theirs_rate,
        })
        print(rows[-1], file=sys.stderr)

    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(784, 300), torch.nn.ReLU(),
                              torch.nn.Linear(300, 100), torch.nn.ReLU(),
                              torch.nn.Linear(100, 10))
    prune.global_magnitude_prune(net, 0.92)
    with tempfile.TemporaryDirectory() as d:
        s = compress_model(net, os.path.join(d, "lenet300.hsz"))
        try:
            c = compress_model(net, os.path.join(d, "lenet300-k32.hsz"), cluster_bits=5)
            clustered: dict[str, object] = {"file_bytes": c.file_bytes, "ratio": c.ratio}
        except ValueError as e:  # compress.cluster (issue 14) not merged yet
            clustered = {"skipped": str(e)}
    sizes = {"model": "LeNet-300-100, random init (untrained), 92% global magnitude pruning",
             "dense_float32_bytes": s.dense_bytes,
             "lossless": {"file_bytes": s.file_bytes, "ratio": s.ratio},
             "cluster_bits_5": clustered}
    write_results("huffman", {
        "note": "timings on a shared 2-core CPU machine (other jobs running); medians; "
                "dahuffman decodes the first 200k symbols of each set, rates compare symbols/s",
        "rows": rows, "file_format": sizes,
    })


if __name__ == "__main__":
    main()
