"""Deterministic global-batch order over epochs, and each data-parallel rank's share of a batch.

The sample stream is epoch 0's permutation, then epoch 1's, ...; epoch e is shuffled by a generator
seeded with ``seed + e``. Each epoch uses only its first ``(N // G) * G`` permuted samples (G = global
batch size): the remainder, fewer than G samples, is dropped for that epoch, and because each epoch
is reshuffled a different remainder is dropped each time. Global batch k is stream positions
[kG, (k+1)G) (any ``consumed_samples`` works, so resuming mid-epoch is exact); rank r takes the
r-th contiguous 1/dp_size of it.
"""

import numpy as np


class GlobalBatchSampler:
    """Sample indices of the global batch starting at a consumed-samples position."""

    def __init__(self, num_samples: int, global_batch_size: int, dp_rank: int, dp_size: int, seed: int):
        if global_batch_size % dp_size:
            raise ValueError(f"global_batch_size {global_batch_size} is not divisible by dp_size {dp_size}")
        if num_samples < global_batch_size:
            raise ValueError(f"{num_samples} samples cannot fill one global batch of {global_batch_size}")
        if not 0 <= dp_rank < dp_size:
            raise ValueError(f"dp_rank {dp_rank} is outside [0, {dp_size})")
        self.num_samples = num_samples
        self.global_batch_size = global_batch_size
        self.dp_rank = dp_rank
        self.dp_size = dp_size
        self.seed = seed
        self.samples_per_epoch = num_samples // global_batch_size * global_batch_size
        self._permutations: dict[int, np.ndarray] = {}

    def epoch(self, consumed_samples: int) -> int:
        """Return the epoch that the next sample after consumed_samples belongs to."""
        return consumed_samples // self.samples_per_epoch

    def global_batch(self, consumed_samples: int) -> np.ndarray:
        """Return the dataset indices of the next global batch, in order."""
        positions = np.arange(consumed_samples, consumed_samples + self.global_batch_size)
        epochs = positions // self.samples_per_epoch
        indices = np.empty(self.global_batch_size, np.int64)
        for epoch in np.unique(epochs):
            at = epochs == epoch
            indices[at] = self._permutation(int(epoch))[positions[at] % self.samples_per_epoch]
        return indices

    def rank_share(self, consumed_samples: int) -> np.ndarray:
        """Return this rank's contiguous, disjoint share of the next global batch."""
        share = self.global_batch_size // self.dp_size
        return self.global_batch(consumed_samples)[self.dp_rank * share:(self.dp_rank + 1) * share]

    def _permutation(self, epoch: int) -> np.ndarray:
        if epoch not in self._permutations:
            self._permutations = {epoch: np.random.default_rng(self.seed + epoch).permutation(self.num_samples)}
        return self._permutations[epoch]
