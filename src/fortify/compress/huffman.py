"""Canonical Huffman coding of integer streams (the entropy stage of Deep Compression, Han et al. 2016).

Deep Compression codes two streams per layer with Huffman codes: the *relative indices* (gaps
between consecutive non-zero weights, ``gap = position - previous position``; gaps above 255 are
split with filler entries, as in the paper, so the alphabet stays small) and the *cluster indices*
of the non-zero weights. :func:`encode` returns the code lengths of the alphabet (enough to rebuild
a canonical code) and the packed bit stream; :func:`decode` inverts it with a lookup table.

Shapes: ``symbols (n,)`` non-negative ints -> ``(alphabet (a,) int64, lengths (a,) uint8, bits bytes)``.
"""
from __future__ import annotations

import heapq

import numpy as np

from fortify.errors import ModelFileError

MAX_LEN = 24  # decoding table size 2**MAX_LEN at most; longer codes are length-limited by merging


def code_lengths(counts: np.ndarray) -> np.ndarray:
    """Huffman code length of each symbol given its ``counts (a,)`` (>= 1 bit, even for a single symbol)."""
    a = counts.size
    if a == 1:
        return np.ones(1, dtype=np.int64)
    depth = np.zeros(a, dtype=np.int64)
    heap = [(int(c), i, [i]) for i, c in enumerate(counts)]
    heapq.heapify(heap)
    tick = a
    while len(heap) > 1:
        c1, _, s1 = heapq.heappop(heap)
        c2, _, s2 = heapq.heappop(heap)
        depth[s1 + s2] += 1
        tick += 1
        heapq.heappush(heap, (c1 + c2, tick, s1 + s2))
    if depth.max() > MAX_LEN:  # flatten: rarely needed; fall back to a balanced code for the rare tail
        depth = np.minimum(depth, MAX_LEN)
        while (2.0 ** -depth).sum() > 1.0:
            depth[np.argmax(np.where(depth < MAX_LEN, depth, -1))] += 1
    return depth


def canonical_codes(lengths: np.ndarray) -> np.ndarray:
    """Canonical Huffman codes (ints) for code ``lengths (a,)``, symbols ordered by (length, index)."""
    order = np.lexsort((np.arange(lengths.size), lengths))
    codes = np.zeros(lengths.size, dtype=np.int64)
    code, prev = 0, int(lengths[order[0]])
    for k, i in enumerate(order):
        li = int(lengths[i])
        if k:
            code = (code + 1) << (li - prev)
        codes[i] = code
        prev = li
    return codes


def encode(symbols: np.ndarray) -> tuple[np.ndarray, np.ndarray, bytes]:
    """Huffman-code ``symbols (n,)``; returns ``(alphabet, lengths, packed bits)``."""
    symbols = np.asarray(symbols, dtype=np.int64)
    if symbols.size == 0:
        return np.zeros(0, np.int64), np.zeros(0, np.uint8), b""
    alphabet, inverse, counts = np.unique(symbols, return_inverse=True, return_counts=True)
    lengths = code_lengths(counts)
    codes = canonical_codes(lengths)
    lens = lengths[inverse]
    total = int(lens.sum())
    owner = np.repeat(np.arange(symbols.size), lens)
    j = np.arange(total) - np.repeat(np.cumsum(lens) - lens, lens)
    bits = (codes[inverse][owner] >> (lens[owner] - 1 - j)) & 1
    return alphabet, lengths.astype(np.uint8), np.packbits(bits.astype(np.uint8)).tobytes()


def decode(alphabet: np.ndarray, lengths: np.ndarray, blob: bytes, count: int) -> np.ndarray:
    """Decode ``count`` symbols; ModelFileError if the stream is inconsistent."""
    if count == 0:
        return np.zeros(0, dtype=np.int64)
    lengths = lengths.astype(np.int64)
    if lengths.size != alphabet.size or lengths.size == 0 or lengths.max() > MAX_LEN or lengths.min() < 1:
        raise ModelFileError("corrupt Huffman table")
    codes = canonical_codes(lengths)
    width = int(lengths.max())
    table_sym = np.full(1 << width, -1, dtype=np.int64)
    table_len = np.zeros(1 << width, dtype=np.int64)
    for s, (c, ln) in enumerate(zip(codes, lengths)):
        lo = int(c) << (width - int(ln))
        table_sym[lo: lo + (1 << (width - int(ln)))] = s
        table_len[lo: lo + (1 << (width - int(ln)))] = ln
    bits = np.unpackbits(np.frombuffer(blob, dtype=np.uint8))
    padded = np.concatenate([bits, np.zeros(width, dtype=np.uint8)]).astype(np.int64)
    # value of the `width`-bit window starting at every bit position
    windows = np.zeros(bits.size + 1, dtype=np.int64)
    for k in range(width):
        windows = (windows << 1) | padded[k: k + bits.size + 1]
    out = np.empty(count, dtype=np.int64)
    pos, ts, tl, n_bits = 0, table_sym, table_len, bits.size
    win = windows.tolist()
    sym_l, len_l = ts.tolist(), tl.tolist()
    for k in range(count):
        if pos > n_bits:
            raise ModelFileError("truncated Huffman stream")
        w = win[pos]
        s = sym_l[w]
        if s < 0:
            raise ModelFileError("corrupt Huffman stream")
        out[k] = s
        pos += len_l[w]
    if pos > n_bits:
        raise ModelFileError("truncated Huffman stream")
    return alphabet[out]


def gaps_from_mask(mask: np.ndarray, max_gap: int = 255) -> np.ndarray:
    """Relative indices of a flat bool ``mask``: gap to the previous non-zero (first: position + 1);
    gaps above ``max_gap`` emit filler symbols ``0`` meaning "advance ``max_gap`` positions"."""
    idx = np.flatnonzero(mask)
    gaps = np.diff(np.concatenate([[-1], idx]))
    fillers = (gaps - 1) // max_gap
    out = np.zeros(int(fillers.sum()) + gaps.size, dtype=np.int64)
    ends = np.cumsum(fillers + 1) - 1
    out[ends] = gaps - fillers * max_gap
    return out


def mask_from_gaps(gaps: np.ndarray, n: int, max_gap: int = 255) -> np.ndarray:
    """Inverse of :func:`gaps_from_mask` for a mask of ``n`` entries."""
    steps = np.where(gaps == 0, max_gap, gaps)
    pos = np.cumsum(steps) - 1
    hits = pos[gaps != 0]
    if hits.size and (hits.max() >= n or hits.min() < 0):
        raise ModelFileError("corrupt relative-index stream")
    mask = np.zeros(n, dtype=bool)
    mask[hits] = True
    return mask


__all__ = ["canonical_codes", "code_lengths", "decode", "encode", "gaps_from_mask", "mask_from_gaps"]
