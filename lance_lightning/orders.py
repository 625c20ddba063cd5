"""Epoch orders that are evaluated where they are read, never held whole.

An epoch order is a permutation of a split's positions ``0..n-1``. Holding it as an array costs
8 bytes a row in every rank (800 MB for a 100M-row split); the objects here answer
``order.positions(indices)`` for just the slice a rank is about to read:

* :class:`SequentialOrder`: the identity.
* :class:`UniformOrder`: a keyed Feistel permutation of ``[0, 2**bits)`` with cycle walking,
  so it is a bijection on ``[0, n)`` computed in O(batch) time and memory; the keys come from
  ``(seed, epoch)`` alone.
* :class:`BlockOrder`: shuffled blocks of consecutive rows, dealt to one stream per rank, rows
  mixed within windows of a stream; holds one entry per block and the windows in use.

All are pure functions of their arguments, the same in every process.
"""

from __future__ import annotations

from collections import OrderedDict

import numpy as np

FEISTEL_ROUNDS = 4
"""Four rounds with a keyed mixing function: the Luby-Rackoff bound for a pseudo-random permutation."""
_WINDOW_CACHE = 8  # window permutations kept per order (a rank walks its windows in turn)


def seed_sequence(seed: int, epoch: int, *stream: int) -> np.random.SeedSequence:
    """Entropy from (seed, epoch, stream...) only: never global state."""
    return np.random.SeedSequence([seed & 0xFFFFFFFF, seed >> 32, epoch, *stream])


def rng(seed: int, epoch: int, *stream: int) -> np.random.Generator:
    return np.random.default_rng(seed_sequence(seed, epoch, *stream))


class SequentialOrder:
    """Table order."""

    nbytes = 0

    def __init__(self, num_rows: int) -> None:
        self.num_rows = num_rows

    def positions(self, indices: np.ndarray) -> np.ndarray:
        return np.asarray(indices, dtype=np.int64)


class UniformOrder:
    """A uniformly shuffled order, position ``i`` of the epoch computed on its own.

    A balanced Feistel network over ``2 * half`` bits (the smallest even bit width covering
    ``num_rows``) is a permutation of that power of two; values ``>= num_rows`` are fed back
    in (cycle walking) until they land inside, which keeps it a permutation of
    ``[0, num_rows)``. The round function is a 64-bit multiply-xorshift mix of the right
    half with a per-round key.
    """

    def __init__(self, num_rows: int, *, seed: int, epoch: int) -> None:
        self.num_rows = num_rows
        bits = max(2, int(num_rows - 1).bit_length() if num_rows > 1 else 2)
        self.half = (bits + 1) // 2
        self.mask = np.uint64((1 << self.half) - 1)
        self.keys = seed_sequence(seed, epoch, 0).generate_state(FEISTEL_ROUNDS, dtype=np.uint64)
        self.nbytes = self.keys.nbytes

    def _round(self, right: np.ndarray, key: np.uint64) -> np.ndarray:
        z = (right ^ key) * np.uint64(0x9E3779B97F4A7C15)
        z ^= z >> np.uint64(29)
        z *= np.uint64(0xBF58476D1CE4E5B9)
        z ^= z >> np.uint64(32)
        return z & self.mask

    def _permute(self, x: np.ndarray) -> np.ndarray:
        half = np.uint64(self.half)
        left, right = x >> half, x & self.mask
        for key in self.keys:
            left, right = right, left ^ self._round(right, key)
        return (left << half) | right

    def positions(self, indices: np.ndarray) -> np.ndarray:
        x = np.asarray(indices, dtype=np.uint64)
        if self.num_rows <= 1:
            return x.astype(np.int64)
        with np.errstate(over="ignore"):
            y = self._permute(x)
            outside = y >= np.uint64(self.num_rows)
            while outside.any():
                y[outside] = self._permute(y[outside])
                outside = y >= np.uint64(self.num_rows)
        return y.astype(np.int64)


def window_rows(block_size: int, window_blocks: int, batch_size: int) -> int:
    """Rows in one shuffle window: ``block_size * window_blocks`` rounded up to whole batches."""
    return -(-block_size * window_blocks // batch_size) * batch_size


class BlockOrder:
    """The locality-aware order: shuffled blocks, dealt to streams, rows mixed within windows.

    1. The rows are cut into blocks of ``block_size`` consecutive rows; the blocks are shuffled.
    2. The shuffled blocks are dealt round-robin to ``streams`` streams (one per rank).
    3. Each stream is cut into windows of :func:`window_rows` rows (about ``window_blocks``
       blocks, in whole batches); rows are shuffled within each window.
    4. The streams are interleaved batch by batch, so that under the global-step rule of
       :func:`~.sharding.rank_batch_bounds` rank ``r`` reads stream ``r``: each of its windows
       is a few contiguous runs of the table, read with range scans. Rows the streams hold
       beyond their common length come last, stream after stream.

    What it costs in randomness: a batch holds rows of one window only (about
    ``window_blocks`` blocks), not of the whole split; block membership and the order of the
    blocks change every epoch. Memory: one entry per block, plus the windows in use.
    """

    def __init__(
        self,
        num_rows: int,
        *,
        seed: int,
        epoch: int,
        block_size: int,
        window_blocks: int,
        streams: int = 1,
        batch_size: int = 1,
    ) -> None:
        if block_size < 1 or window_blocks < 1 or streams < 1 or batch_size < 1:
            raise ValueError(
                "block shuffle needs block_size, window_blocks, streams and batch_size >= 1, got "
                f"block_size={block_size}, window_blocks={window_blocks}, streams={streams}, batch_size={batch_size}"
            )
        self.num_rows, self.seed, self.epoch = num_rows, seed, epoch
        self.streams, self.batch_size = streams, batch_size
        self.window = window_rows(block_size, window_blocks, batch_size)
        starts = rng(seed, epoch).permutation(-(-num_rows // block_size)).astype(np.int64) * block_size
        self.block_starts = [starts[s::streams] for s in range(streams)]
        self.block_ends = [np.cumsum(np.minimum(block_size, num_rows - b)) for b in self.block_starts]
        self.block_firsts = [np.r_[0, e[:-1]].astype(np.int64) for e in self.block_ends]  # in stream rows
        lengths = np.array([int(e[-1]) if len(e) else 0 for e in self.block_ends], dtype=np.int64)
        self.stream_rows = lengths
        self.steps = int(lengths.min()) // batch_size if streams > 1 else 0
        self.head = self.steps * streams * batch_size
        tails = lengths - self.steps * batch_size
        self.tail_starts = np.concatenate([[0], np.cumsum(tails)[:-1]]).astype(np.int64)
        self._windows: OrderedDict[tuple[int, int], np.ndarray] = OrderedDict()

    @property
    def nbytes(self) -> int:
        """Bytes held: the block tables and the cached window permutations."""
        arrays = [*self.block_starts, *self.block_ends, *self.block_firsts, *self._windows.values()]
        return sum(a.nbytes for a in arrays)

    def _window_perm(self, stream: int, window: int) -> np.ndarray:
        key = (stream, window)
        perm = self._windows.get(key)
        if perm is None:
            size = min(self.window, int(self.stream_rows[stream]) - window * self.window)
            perm = rng(self.seed, self.epoch, 1, stream, window).permutation(size)
            self._windows[key] = perm
            if len(self._windows) > _WINDOW_CACHE:
                self._windows.popitem(last=False)
        else:
            self._windows.move_to_end(key)
        return perm

    def _stream_positions(self, stream: int, index: np.ndarray) -> np.ndarray:
        """Positions in the split of rows ``index`` of ``stream`` (after mixing)."""
        window = index // self.window
        mixed = np.empty_like(index)
        for w in np.unique(window).tolist():
            at = window == w
            mixed[at] = w * self.window + self._window_perm(stream, w)[index[at] - w * self.window]
        block = np.searchsorted(self.block_ends[stream], mixed, side="right")
        return self.block_starts[stream][block] + (mixed - self.block_firsts[stream][block])

    def positions(self, indices: np.ndarray) -> np.ndarray:
        g = np.asarray(indices, dtype=np.int64)
        if self.streams == 1:
            return self._stream_positions(0, g) if len(g) else g
        step_rows = self.streams * self.batch_size
        in_head = g < self.head
        stream = np.where(in_head, (g % step_rows) // self.batch_size, 0)
        index = np.where(in_head, (g // step_rows) * self.batch_size + g % self.batch_size, 0)
        tail = g[~in_head] - self.head
        tail_stream = np.searchsorted(self.tail_starts, tail, side="right") - 1
        stream[~in_head] = tail_stream
        index[~in_head] = self.steps * self.batch_size + tail - self.tail_starts[tail_stream]
        out = np.empty_like(g)
        for s in np.unique(stream).tolist():
            at = stream == s
            out[at] = self._stream_positions(s, index[at])
        return out


EpochOrder = SequentialOrder | UniformOrder | BlockOrder
