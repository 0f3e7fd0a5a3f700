"""Tiny random token shards in the preprocess_data format, for training tests."""

import numpy as np

from redi_megatron.data.token_shards import ShardWriter

EOS = 1
PAD = 0


def write_random_shards(prefix, kind: str, count: int, vocab: int = 500, seed: int = 0) -> str:
    """Returns the prefix of ``count`` random samples (prompt 3-8 tokens, completions 4-20)."""
    rng = np.random.default_rng(seed)
    with ShardWriter(prefix, kind, vocab_size=vocab, metadata={"pad_id": PAD, "eos_id": EOS}) as writer:
        for _ in range(count):
            prompt = rng.integers(2, vocab, size=int(rng.integers(3, 9)))
            completions = [np.append(rng.integers(2, vocab, size=int(rng.integers(4, 21))), EOS)
                           for _ in range(1 if kind == "sft" else 2)]
            writer.add(prompt, completions)
    return str(prefix)
