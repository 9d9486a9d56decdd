"""Huffman and relative-index coding: exact round trips, code properties, corrupt streams."""

from __future__ import annotations

import heapq

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from hypersparse.compress.huffman import (
    HuffmanError,
    canonical_codes,
    code_lengths,
    encode_varint,
    huffman_decode,
    huffman_encode,
    read_varint,
)
from hypersparse.compress.relindex import relative_indices, relative_positions


def optimal_cost(freqs: list[int]) -> int:
    """Total bits of an (unlimited) optimal prefix code: sum of merge weights."""
    heap = [f for f in freqs if f > 0]
    if len(heap) == 1:
        return heap[0]
    heapq.heapify(heap)
    cost = 0
    while len(heap) > 1:
        a, b = heapq.heappop(heap), heapq.heappop(heap)
        cost += a + b
        heapq.heappush(heap, a + b)
    return cost


def is_prefix_free(codes: np.ndarray, lengths: np.ndarray) -> bool:
    words = sorted(format(int(c), f"0{int(l)}b") for c, l in zip(codes, lengths) if l > 0)
    return all(not b.startswith(a) for a, b in zip(words, words[1:]))


@settings(max_examples=25, deadline=None)
@given(data=st.lists(st.integers(0, 300), max_size=3000), block=st.integers(1, 700))
def test_round_trip_hypothesis(data: list[int], block: int) -> None:
    enc = huffman_encode(data, block_size=block)
    dec, end = huffman_decode(enc, return_end=True)
    assert dec.tolist() == data
    assert end == len(enc)


@settings(max_examples=25, deadline=None)
@given(freqs=st.lists(st.integers(0, 10_000), min_size=2, max_size=60))
def test_lengths_optimal_prefix_free_and_kraft(freqs: list[int]) -> None:
    lengths = code_lengths(freqs, max_length=24)
    used = [f for f in freqs if f]
    if len(used) >= 2:
        assert sum(f * int(l) for f, l in zip(freqs, lengths)) == optimal_cost(freqs)
        assert float(np.sum(2.0 ** -lengths[lengths > 0])) == pytest.approx(1.0)
    codes, _ = canonical_codes(lengths)
    assert is_prefix_free(codes, lengths)


def test_length_limit_keeps_a_valid_code() -> None:
    freqs = [2**i for i in range(25)]  # Fibonacci-like skew: unlimited depth 24
    assert int(code_lengths(freqs, 24).max()) == 24
    for limit in (5, 8, 12):
        lengths = code_lengths(freqs, limit)
        assert int(lengths.max()) == limit
        assert float(np.sum(2.0 ** -lengths)) <= 1.0
        codes, _ = canonical_codes(lengths)
        assert is_prefix_free(codes, lengths)
        data = np.repeat(np.arange(25), np.minimum(freqs, 300))
        assert np.array_equal(huffman_decode(huffman_encode(data, max_length=limit)), data)
    with pytest.raises(ValueError, match="max_length"):
        code_lengths(freqs, 4)  # 25 symbols need 5 bits


@pytest.mark.parametrize("case", ["empty", "one", "single_symbol", "all_distinct", "alphabet_2_16",
                                  "large_values"])
def test_edge_cases(case: str) -> None:
    rng = np.random.default_rng(0)
    data = {
        "empty": np.zeros(0, np.int64),
        "one": np.array([7]),
        "single_symbol": np.full(1000, 3),
        "all_distinct": rng.permutation(5000),
        "alphabet_2_16": np.concatenate([np.arange(2**16), rng.integers(0, 2**16, 10_000)]),
        "large_values": np.array([2**32 - 1, 0, 2**31, 2**32 - 1]),
    }[case]
    enc = huffman_encode(data)
    assert np.array_equal(huffman_decode(enc), data)
    if case == "single_symbol":
        assert len(enc) < 8  # no bits at all: the symbol repeats
    if case == "alphabet_2_16":
        assert int(code_lengths(np.bincount(data)).max()) <= 20


def test_skewed_data_beats_fixed_width_and_matches_entropy() -> None:
    rng = np.random.default_rng(0)
    data = np.minimum(rng.geometric(0.3, 50_000) - 1, 31)  # 32-symbol alphabet (5 bits fixed)
    enc = huffman_encode(data)
    p = np.bincount(data) / data.size
    entropy = -(p[p > 0] * np.log2(p[p > 0])).sum()
    bits = 8 * len(enc) / data.size
    assert entropy <= bits < entropy + 0.1 and bits < 5


def test_tensor_input_and_offsets() -> None:
    t = torch.tensor([[1, 2], [2, 2]])
    enc = b"xx" + huffman_encode(t) + b"yy"
    dec, end = huffman_decode(enc, 2, return_end=True)
    assert dec.tolist() == [1, 2, 2, 2] and enc[end:] == b"yy"


def test_corrupt_and_bad_input() -> None:
    data = np.random.default_rng(0).integers(0, 20, 5000)
    enc = huffman_encode(data, block_size=256)
    for cut in (1, 5, len(enc) // 2, len(enc) - 1):
        with pytest.raises(HuffmanError):
            huffman_decode(enc[:cut])
    with pytest.raises(TypeError):
        huffman_encode(np.array([0.5, 1.0]))
    with pytest.raises(ValueError, match="symbols"):
        huffman_encode([-1, 2])
    with pytest.raises(ValueError, match="block_size"):
        huffman_encode([1, 2], block_size=0)
    for v in (0, 1, 127, 128, 300, 2**40):
        assert read_varint(encode_varint(v), 0) == (v, len(encode_varint(v)))


# ----------------------------------------------------------------- relative indices


def naive_relative(mask: list[bool], bits: int) -> tuple[list[int], list[bool]]:
    span = 2**bits
    gaps, filler, prev = [], [], -1
    for i, m in enumerate(mask):
        if not m:
            continue
        while i - prev - 1 > span - 1:
            gaps.append(span - 1)
            filler.append(True)
            prev += span
        gaps.append(i - prev - 1)
        filler.append(False)
        prev = i
    return gaps, filler


@settings(max_examples=25, deadline=None)
@given(mask=st.lists(st.booleans(), max_size=400), bits=st.integers(1, 6),
       sparse=st.booleans())
def test_relative_indices_match_naive(mask: list[bool], bits: int, sparse: bool) -> None:
    if sparse:  # long runs of zeros force fillers
        mask = [m and i % 37 == 0 for i, m in enumerate(mask)]
    t = torch.tensor(mask, dtype=torch.bool)
    gaps, filler = relative_indices(t, bits)
    ref_gaps, ref_filler = naive_relative(mask, bits)
    assert gaps.tolist() == ref_gaps and filler.tolist() == ref_filler
    assert int(gaps.max()) < 2**bits if gaps.numel() else True
    pos = relative_positions(gaps)
    assert pos[~filler].tolist() == [i for i, m in enumerate(mask) if m]


def test_relative_indices_edge_cases() -> None:
    empty, f = relative_indices(torch.zeros(3, 4, dtype=torch.bool), 5)
    assert empty.numel() == 0 and f.numel() == 0
    mask = torch.zeros(1000, dtype=torch.bool)
    mask[999] = True  # one gap far longer than the width
    gaps, filler = relative_indices(mask, 3)
    assert int(filler.sum()) == 999 // 8 and relative_positions(gaps)[-1] == 999
    with pytest.raises(TypeError):
        relative_indices(torch.ones(3), 5)
    with pytest.raises(ValueError, match="bits"):
        relative_indices(mask, 0)
