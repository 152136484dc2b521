"""Sparse target distributions: sorted int32 token ids with float16 weights summing to 1.

A batch of targets travels between Ray workers and the driver as one `TargetBatch` (three
flat arrays) rather than thousands of small arrays, so serialising a shard's worth of
targets costs a few memory copies instead of one pickle per text.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass
class TargetBatch:
    """Targets of n texts, packed: text i owns `ids[offsets[i]:offsets[i+1]]` and the same slice of `w`."""

    ids: np.ndarray
    """int32; each text's ids strictly increasing."""
    w: np.ndarray
    """float16; each text's weights sum to 1 (an empty slice for an empty target)."""
    offsets: np.ndarray
    """int64, length n + 1."""

    @classmethod
    def pack(cls, ids: np.ndarray, weights: np.ndarray, lengths: np.ndarray) -> "TargetBatch":
        """Pack per-text segments of (strictly increasing ids, positive weights), normalising each to sum 1.

        Normalisation is in float64, then weights are stored as float16. Weights that round to
        zero in float16 (below 6e-8) are dropped, so a reader never meets `0 * log 0`; the
        stored weights still sum to 1 within 1e-3, since float16 rounding moves each weight by
        at most 2^-11 of itself.
        """
        ids = np.asarray(ids, dtype=np.int64)
        weights = np.asarray(weights, dtype=np.float64)
        lengths = np.asarray(lengths, dtype=np.int64)
        assert ids.shape == weights.shape and ids.ndim == 1 and lengths.sum() == ids.size
        owner = np.repeat(np.arange(len(lengths)), lengths)
        assert np.all((np.diff(ids) > 0) | (np.diff(owner) > 0)), "ids must increase within each text"
        assert np.all(weights > 0), "target weights must be positive"
        totals = np.bincount(owner, weights=weights, minlength=len(lengths))
        w16 = (weights / totals[owner]).astype(np.float16)
        keep = w16 > 0
        kept_lengths = np.bincount(owner[keep], minlength=len(lengths))
        offsets = np.zeros(len(lengths) + 1, dtype=np.int64)
        np.cumsum(kept_lengths, out=offsets[1:])
        return cls(ids[keep].astype(np.int32), w16[keep], offsets)

    @classmethod
    def concat(cls, batches: list["TargetBatch"]) -> "TargetBatch":
        """One batch holding the texts of `batches` in order."""
        lengths = np.concatenate([np.diff(b.offsets) for b in batches]) if batches else np.zeros(0, np.int64)
        offsets = np.zeros(len(lengths) + 1, dtype=np.int64)
        np.cumsum(lengths, out=offsets[1:])
        ids = np.concatenate([b.ids for b in batches]) if batches else np.zeros(0, np.int32)
        w = np.concatenate([b.w for b in batches]) if batches else np.zeros(0, np.float16)
        return cls(ids, w, offsets)

    def select(self, rows: np.ndarray) -> "TargetBatch":
        """The targets of texts `rows`, in that order."""
        rows = np.asarray(rows, dtype=np.int64)
        lengths = np.diff(self.offsets)[rows]
        offsets = np.zeros(len(rows) + 1, dtype=np.int64)
        np.cumsum(lengths, out=offsets[1:])
        gather = np.repeat(self.offsets[rows] - offsets[:-1], lengths) + np.arange(offsets[-1])
        return TargetBatch(self.ids[gather], self.w[gather], offsets)

    def __len__(self) -> int:
        return len(self.offsets) - 1

    def __getitem__(self, i: int) -> tuple[np.ndarray, np.ndarray]:
        a, b = self.offsets[i], self.offsets[i + 1]
        return self.ids[a:b], self.w[a:b]

    @property
    def empty_count(self) -> int:
        """Texts whose target has no ids."""
        return int(np.count_nonzero(np.diff(self.offsets) == 0))

    def samples(self, keys: list[str], texts: list[str]) -> list[dict]:
        """WebDataset samples (see `t2t.data.shards`) pairing each target with its key and text."""
        assert len(keys) == len(texts) == len(self), (len(keys), len(texts), len(self))
        return [{"__key__": k, "txt": t, "ids.npy": self[i][0], "w.npy": self[i][1]}
                for i, (k, t) in enumerate(zip(keys, texts))]
