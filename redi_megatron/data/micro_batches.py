"""Micro-batches for the training loop, from a token shard: padded or packed rows with labels and completion masks."""

import logging
from pathlib import Path

import numpy as np
import torch

from redi_megatron.config import ConfigError
from redi_megatron.data.packing import packed_micro_batch
from redi_megatron.data.sampler import GlobalBatchSampler
from redi_megatron.data.token_shards import TokenShards

logger = logging.getLogger(__name__)


class ShardDataset:
    """The samples of a shard whose every row (prompt + completion) fits in seq_length.

    With ``pack_tokens`` > 0 a sample's rows together (they share one packed row) must also fit
    in pack_tokens. Over-long samples are filtered out, never truncated: a truncated trace would
    lose its answer and its end-of-turn token. ``metadata`` is the shard's (vocab_size, eos_id, ...).
    """

    def __init__(self, prefix: str | Path, seq_length: int, pack_tokens: int = 0):
        self.shards = TokenShards(prefix)
        self.kind = self.shards.kind
        self.metadata = self.shards.metadata
        row_lengths = self.shards.prompt_lengths()[:, None] + self.shards.completion_lengths()
        fits = (row_lengths <= seq_length).all(axis=1)
        self.num_too_long = int((~fits).sum())
        if pack_tokens:
            fits_row = row_lengths.sum(axis=1) <= pack_tokens
            self.num_too_long_to_pack = int((fits & ~fits_row).sum())
            fits &= fits_row
        self.indices = np.flatnonzero(fits)
        ref_path = Path(f"{prefix}.ref_logps.npy")
        self.ref_logps = np.load(ref_path) if ref_path.exists() else None
        if self.ref_logps is not None and self.ref_logps.shape != (len(self.shards), 2):
            raise ValueError(f"{ref_path} has shape {self.ref_logps.shape}; expected ({len(self.shards)}, 2)")

    def __len__(self) -> int:
        return len(self.indices)

    def rows(self, i: int) -> list[tuple[np.ndarray, np.ndarray]]:
        """Return sample i's rows as (prompt, completion): one for sft, (chosen, rejected) for pairs."""
        prompt, completions = self.shards.sample(int(self.indices[i]))
        return [(prompt, completion) for completion in completions]

    def row_ref_logps(self, i: int) -> np.ndarray | None:
        """Return sample i's reference log-probs [chosen, rejected], or None without a ref_logps file."""
        return None if self.ref_logps is None else self.ref_logps[self.indices[i]]


class MicroBatchLoader:
    """This data-parallel rank's micro-batches of each global batch, resumable from consumed_samples.

    Sample order, sharding and the epoch remainder rule are GlobalBatchSampler's.
    """

    def __init__(self, prefix: str, seq_length: int, micro_batch_size: int, global_batch_size: int,
                 dp_rank: int, dp_size: int, seed: int, consumed_samples: int = 0, pack_tokens: int = 0):
        if global_batch_size % (micro_batch_size * dp_size):
            raise ValueError(f"global_batch_size {global_batch_size} is not divisible by micro_batch_size "
                             f"{micro_batch_size} x dp_size {dp_size} = {micro_batch_size * dp_size}")
        self.dataset = ShardDataset(prefix, seq_length, pack_tokens)
        self.kind = self.dataset.kind
        logger.info("%s: %d of %d %s samples are longer than seq_length %d and were filtered out",
                    prefix, self.dataset.num_too_long, len(self.dataset.shards), self.kind, seq_length)
        if pack_tokens:
            logger.info("%s: %d more samples do not fit in one row of pack_tokens %d and were filtered out",
                        prefix, self.dataset.num_too_long_to_pack, pack_tokens)
        if not len(self.dataset):
            if pack_tokens and self.dataset.num_too_long_to_pack:
                raise ConfigError(f"{prefix}: no sample fits in data.pack_tokens={pack_tokens} "
                                  f"({self.dataset.num_too_long_to_pack} samples' rows together are longer, "
                                  f"{self.dataset.num_too_long} have a row longer than data.seq_length="
                                  f"{seq_length}); raise data.pack_tokens")
            raise ConfigError(f"{prefix}: no sample fits in data.seq_length={seq_length} "
                              f"({self.dataset.num_too_long} are longer)")
        self.seq_length = seq_length
        self.pack_tokens = pack_tokens
        self.micro_batch_size = micro_batch_size
        self.num_microbatches = global_batch_size // (micro_batch_size * dp_size)
        self.sampler = GlobalBatchSampler(len(self.dataset), global_batch_size, dp_rank, dp_size, seed)
        self.consumed_samples = consumed_samples
        self.pad_id = int(self.dataset.metadata.get("pad_id") or 0)

    @property
    def epoch(self) -> int:
        """Return the epoch of the next global batch."""
        return self.sampler.epoch(self.consumed_samples)

    def next_global_batch(self) -> list[dict[str, torch.Tensor]]:
        """Return this rank's num_microbatches micro-batches of the next global batch, and advance."""
        share = self.sampler.rank_share(self.consumed_samples)
        self.consumed_samples += self.sampler.global_batch_size
        return [self.micro_batch(share[i:i + self.micro_batch_size])
                for i in range(0, len(share), self.micro_batch_size)]

    def micro_batch(self, samples: np.ndarray) -> dict[str, torch.Tensor]:
        """Return the tensors of the given dataset samples: packed rows, or padded rows (pairs: chosen, rejected adjacent)."""
        if self.pack_tokens:
            batch = packed_micro_batch([self.dataset.rows(int(i)) for i in samples], self.pack_tokens, self.pad_id)
        else:
            batch = self.padded_micro_batch(samples)
        if self.kind == "pairs" and self.dataset.ref_logps is not None:
            ref = np.concatenate([self.dataset.row_ref_logps(int(i)) for i in samples]).astype(np.float32)
            batch["ref_logps"] = torch.from_numpy(ref)
        return batch

    def padded_micro_batch(self, samples: np.ndarray) -> dict[str, torch.Tensor]:
        """Return one row of seq_length per sequence of the given samples, right-padded."""
        rows = [row for i in samples for row in self.dataset.rows(int(i))]
        tokens = np.full((len(rows), self.seq_length), self.pad_id, np.int64)
        labels = np.full((len(rows), self.seq_length), self.pad_id, np.int64)
        loss_mask = np.zeros((len(rows), self.seq_length), np.float32)
        for r, (prompt, completion) in enumerate(rows):
            length = len(prompt) + len(completion)
            tokens[r, :len(prompt)] = prompt
            tokens[r, len(prompt):length] = completion
            labels[r, :length - 1] = tokens[r, 1:length]
            # Position t predicts token t + 1: the completion is predicted from the last prompt position.
            loss_mask[r, len(prompt) - 1:length - 1] = 1.0
        return {
            "tokens": torch.from_numpy(tokens),
            "labels": torch.from_numpy(labels),
            "loss_mask": torch.from_numpy(loss_mask),
            "position_ids": torch.arange(self.seq_length, dtype=torch.int64).expand(len(rows), -1).contiguous(),
        }

    def state_dict(self) -> dict:
        """Return the JSON-serialisable resume state."""
        return {"consumed_samples": self.consumed_samples, "epoch": self.epoch, "seed": self.sampler.seed,
                "num_samples": len(self.dataset), "global_batch_size": self.sampler.global_batch_size}

    def load_state_dict(self, state: dict) -> None:
        """Resume from state_dict(); refuses a state from a different seed or dataset."""
        for key, mine in (("seed", self.sampler.seed), ("num_samples", len(self.dataset))):
            if key in state and state[key] != mine:
                raise ValueError(f"loader state has {key}={state[key]} but this loader has {key}={mine}: "
                                 "the sample order would differ; resume with the same data and seed")
        self.consumed_samples = int(state["consumed_samples"])
