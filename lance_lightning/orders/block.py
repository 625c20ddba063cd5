"""``shuffle="block"``: the locality-aware order (shuffled blocks, dealt per rank, rows mixed
within windows), read in range scans."""

from __future__ import annotations

from collections import OrderedDict

import numpy as np

from .base import EpochOrder, rng

DEFAULT_BLOCK_SIZE = 4096
"""Rows of one block: large enough that a range scan of it runs near the speed of a sequential scan
(4,096 rows: ~1M rows/s, 16,384: ~1.5M here)."""
DEFAULT_WINDOW_BLOCKS = 8
"""Blocks whose rows are mixed together."""
_WINDOW_CACHE = 8  # window permutations kept per order (a rank walks its windows in turn)


def window_rows(block_size: int, window_blocks: int, batch_size: int) -> int:
    """Rows in one shuffle window: ``block_size * window_blocks`` rounded up to whole batches."""
    return -(-block_size * window_blocks // batch_size) * batch_size


class BlockOrder(EpochOrder):
    """The locality-aware order: shuffled blocks, dealt to streams, rows mixed within windows.

    1. The rows are cut into blocks of ``block_size`` consecutive rows; the blocks are shuffled.
    2. The shuffled blocks are dealt round-robin to ``streams`` streams (one per rank).
    3. Each stream is cut into windows of :func:`window_rows` rows (about ``window_blocks``
       blocks, in whole batches); rows are shuffled within each window.
    4. The streams are interleaved batch by batch, so that under the global-step rule of
       :func:`~lance_lightning.sharding.rank_batch_bounds` rank ``r`` reads stream ``r``: each of its windows
       is a few contiguous runs of the table, read with range scans. Rows the streams hold
       beyond their common length come last, stream after stream.

    What it costs in randomness: a batch holds rows of one window only (about
    ``window_blocks`` blocks), not of the whole split; block membership and the order of the
    blocks change every epoch. Memory: one entry per block, plus the windows in use.
    """

    name = "block"
    contiguous = True
    settings = ("block_size", "window_blocks")

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
        # Checked where the values come in (options, LanceBatchSampler): here only internal misuse.
        assert min(block_size, window_blocks, streams, batch_size) >= 1, (block_size, window_blocks, streams)
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

    @classmethod
    def create(
        cls,
        num_rows: int,
        *,
        seed: int,
        epoch: int,
        block_size: int,
        window_blocks: int,
        streams: int,
        batch_size: int,
        **_: object,
    ) -> BlockOrder:
        return cls(
            num_rows,
            seed=seed,
            epoch=epoch,
            block_size=block_size,
            window_blocks=window_blocks,
            streams=streams,
            batch_size=batch_size,
        )

    @classmethod
    def group_batches(cls, batch_size: int, *, block_size: int, window_blocks: int) -> int:
        """A window's batches: its rows are a few contiguous runs of the table."""
        return window_rows(block_size, window_blocks, batch_size) // batch_size

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
