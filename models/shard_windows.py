"""The recent readings of many machines in one array: the first block of the columnar
engine (issue 8). One :class:`ShardWindows` holds the ring buffers of every machine of a
shard, ``(capacity, 2 W, S)``, so a batch of readings of many machines is written and its
windows are read with a few numpy calls instead of one Python object per reading.

Each machine's window is exactly what :class:`models.features.RingBuffer` gives (a test
proves it), so :func:`models.features.window_features` over the returned ``(B, W, S)``
windows equals the per-reading path.
"""

from __future__ import annotations

import numpy as np


def occurrence_rank(slots: np.ndarray) -> np.ndarray:
    """For each item, how many earlier items of the batch have the same slot.

    >>> occurrence_rank(np.array([3, 1, 3, 3, 1])).tolist()
    [0, 0, 1, 2, 1]
    """
    order = np.argsort(slots, kind="stable")
    s = slots[order]
    starts = np.r_[0, np.flatnonzero(s[1:] != s[:-1]) + 1]
    run_start = np.repeat(starts, np.diff(np.r_[starts, len(s)]))
    rank = np.empty(len(slots), dtype=np.intp)
    rank[order] = np.arange(len(s)) - run_start
    return rank


class ShardWindows:
    """Ring buffers of ``window`` rows × ``n_sensors`` for up to ``capacity`` machines
    (grown on demand). Rows are written twice (at ``i`` and ``i + window``) so a window is
    a contiguous slice; until a machine has ``window`` rows, its window is padded with its
    first row.

    >>> sw = ShardWindows(window=3, n_sensors=1)
    >>> a, b = sw.add(), sw.add()
    >>> w = sw.append(np.array([a, b, a]), np.array([[1.0], [5.0], [2.0]]))
    >>> w[:, :, 0].tolist()
    [[1.0, 1.0, 1.0], [5.0, 5.0, 5.0], [1.0, 1.0, 2.0]]
    >>> sw.counts[[a, b]].tolist()
    [2, 1]
    """

    def __init__(
        self, window: int, n_sensors: int, capacity: int = 64, dtype: type = np.float64
    ) -> None:
        if window < 1 or n_sensors < 1:
            raise ValueError("window and n_sensors must be >= 1")
        self.window = window
        self.n_sensors = n_sensors
        self.dtype = np.dtype(dtype)
        self._buf = np.zeros((capacity, 2 * window, n_sensors), dtype=self.dtype)
        self.counts = np.zeros(capacity, dtype=np.int64)
        self._free: list[int] = []
        self._used = 0
        self._steps = np.arange(window)

    @property
    def nbytes(self) -> int:
        return int(self._buf.nbytes + self.counts.nbytes)

    def add(self) -> int:
        """A new, empty slot (a freed one first)."""
        if self._free:
            slot = self._free.pop()
        else:
            if self._used == len(self.counts):
                self._grow(max(1, 2 * len(self.counts)))
            slot = self._used
            self._used += 1
        self.counts[slot] = 0
        return slot

    def free(self, slot: int) -> None:
        """Forget a machine (idle expiry); its slot is reused."""
        self.counts[slot] = 0
        self._free.append(slot)

    def _grow(self, capacity: int) -> None:
        buf = np.zeros((capacity, *self._buf.shape[1:]), dtype=self.dtype)
        buf[: len(self._buf)] = self._buf
        counts = np.zeros(capacity, dtype=np.int64)
        counts[: len(self.counts)] = self.counts
        self._buf, self.counts = buf, counts

    def append(self, slots: np.ndarray, rows: np.ndarray) -> np.ndarray:
        """Append ``rows`` ``(B, S)`` to the machines in ``slots`` ``(B,)``, in batch order
        per machine; return the window after each row, ``(B, W, S)`` (a copy)."""
        slots = np.asarray(slots, dtype=np.intp)
        rows = np.asarray(rows, dtype=self.dtype)
        out = np.empty((len(slots), self.window, self.n_sensors), dtype=self.dtype)
        if not len(slots):
            return out
        rank = occurrence_rank(slots)
        w = self.window
        for r in range(int(rank.max()) + 1):  # one round per reading of the busiest machine
            idx = np.flatnonzero(rank == r)
            s = slots[idx]
            first = self.counts[s] == 0
            if first.any():
                self._buf[s[first]] = rows[idx[first], None, :]
            pos = self.counts[s] % w
            self._buf[s, pos] = rows[idx]
            self._buf[s, pos + w] = rows[idx]
            self.counts[s] += 1
            start = (pos + 1)[:, None] + self._steps
            out[idx] = self._buf[s[:, None], start]
        return out

    def last_rows(self, slots: np.ndarray) -> np.ndarray:
        """The newest row of each machine in ``slots`` (zeros before its first)."""
        slots = np.asarray(slots, dtype=np.intp)
        return self._buf[slots, (self.counts[slots] - 1) % self.window]
