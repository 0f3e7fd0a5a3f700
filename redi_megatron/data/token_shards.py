"""The on-disk token format: one flat token file, a per-sample length table, and JSON metadata.

For a prefix P:
- ``P.bin``: every token of every sample, back to back (uint16 when the vocabulary fits, else uint32),
  each sample stored as its prompt followed by its completions (one for SFT; chosen then rejected
  for pairs, sharing one copy of the prompt);
- ``P.idx.npy``: int64 [num_samples, 2 + num_completions]: token offset, prompt length, then each
  completion's length (completions end with the end-of-turn token);
- ``P.json``: kind, dtype, vocabulary size, eos / pad / end-of-turn ids and how the data was made.
Both arrays are memory-mapped when read, so a loader process costs almost no memory.
"""

import json
from pathlib import Path

import numpy as np

FORMAT = "redi-token-shard-v1"
COMPLETIONS_PER_SAMPLE = {"sft": 1, "pairs": 2}


def token_dtype(vocab_size: int) -> np.dtype:
    """Return the smallest unsigned dtype that holds every token id."""
    return np.dtype(np.uint16) if vocab_size <= np.iinfo(np.uint16).max + 1 else np.dtype(np.uint32)


class ShardWriter:
    """Appends samples to ``P.bin``; ``close`` writes ``P.idx.npy`` and ``P.json``."""

    def __init__(self, prefix: str | Path, kind: str, vocab_size: int, metadata: dict):
        if kind not in COMPLETIONS_PER_SAMPLE:
            raise ValueError(f"kind must be one of {sorted(COMPLETIONS_PER_SAMPLE)}, got {kind!r}")
        self.prefix = Path(prefix)
        self.prefix.parent.mkdir(parents=True, exist_ok=True)
        self.kind = kind
        self.dtype = token_dtype(vocab_size)
        self.metadata = {**metadata, "vocab_size": vocab_size}
        self._tokens = open(f"{self.prefix}.bin", "wb")
        self._lengths: list[np.ndarray] = []
        self.num_tokens = 0

    def add(self, prompt, completions) -> None:
        """Append one sample: prompt ids and its completions (1 for sft, [chosen, rejected] for pairs)."""
        lengths = np.array([[len(prompt), *map(len, completions)]], dtype=np.int64)
        self.add_packed(np.concatenate([prompt, *completions]).astype(self.dtype, copy=False), lengths)

    def add_packed(self, tokens: np.ndarray, lengths: np.ndarray) -> None:
        """Append many samples at once: their tokens back to back and their [n, 1 + completions] lengths."""
        if lengths.shape[1] != 1 + COMPLETIONS_PER_SAMPLE[self.kind]:
            raise ValueError(f"{self.kind} samples have {COMPLETIONS_PER_SAMPLE[self.kind]} completion(s); "
                             f"got length rows of width {lengths.shape[1]}")
        if int(lengths.sum()) != len(tokens):
            raise ValueError(f"lengths sum to {int(lengths.sum())} but {len(tokens)} tokens were given")
        self._tokens.write(np.ascontiguousarray(tokens, dtype=self.dtype).tobytes())
        self._lengths.append(np.asarray(lengths, dtype=np.int64))
        self.num_tokens += len(tokens)

    def close(self) -> None:
        """Write the index and metadata; the shard is readable only after this."""
        self._tokens.close()
        width = 1 + COMPLETIONS_PER_SAMPLE[self.kind]
        lengths = np.concatenate(self._lengths) if self._lengths else np.zeros((0, width), np.int64)
        offsets = np.concatenate([[0], np.cumsum(lengths.sum(axis=1))[:-1]]).astype(np.int64)[:len(lengths)]
        np.save(f"{self.prefix}.idx.npy", np.column_stack([offsets, lengths]))
        metadata = {**self.metadata, "format": FORMAT, "kind": self.kind, "dtype": self.dtype.name,
                    "num_samples": len(lengths), "num_tokens": self.num_tokens}
        Path(f"{self.prefix}.json").write_text(json.dumps(metadata, indent=2) + "\n", encoding="utf-8")

    def __enter__(self) -> "ShardWriter":
        return self

    def __exit__(self, exc_type, *rest) -> None:
        if exc_type is None:
            self.close()
        else:
            self._tokens.close()


class TokenShards:
    """Read-only, memory-mapped view of a shard prefix."""

    def __init__(self, prefix: str | Path):
        self.prefix = Path(prefix)
        meta_path = Path(f"{self.prefix}.json")
        if not meta_path.exists():
            raise FileNotFoundError(f"{meta_path} not found: is {prefix!r} a prefix written by preprocess_data.py?")
        self.metadata = json.loads(meta_path.read_text(encoding="utf-8"))
        if self.metadata.get("format") != FORMAT:
            raise ValueError(f"{meta_path}: format {self.metadata.get('format')!r}, expected {FORMAT!r}")
        self.kind = self.metadata["kind"]
        self.index = np.load(f"{self.prefix}.idx.npy", mmap_mode="r")
        size = self.metadata["num_tokens"]
        self.tokens = (np.memmap(f"{self.prefix}.bin", dtype=self.metadata["dtype"], mode="r", shape=(size,))
                       if size else np.zeros(0, self.metadata["dtype"]))

    def __len__(self) -> int:
        return len(self.index)

    def prompt_lengths(self) -> np.ndarray:
        """Return each sample's prompt length."""
        return np.asarray(self.index[:, 1])

    def completion_lengths(self) -> np.ndarray:
        """Return [num_samples, completions] completion lengths (end-of-turn token included)."""
        return np.asarray(self.index[:, 2:])

    def sample(self, i: int) -> tuple[np.ndarray, list[np.ndarray]]:
        """Return (prompt ids, [completion ids, ...]) of sample i, as views into the memory map."""
        offset, prompt_length, *completion_lengths = (int(x) for x in self.index[i])
        prompt = self.tokens[offset:offset + prompt_length]
        completions, start = [], offset + prompt_length
        for length in completion_lengths:
            completions.append(self.tokens[start:start + length])
            start += length
        return prompt, completions
