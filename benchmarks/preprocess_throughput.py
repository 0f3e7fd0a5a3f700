"""Prints preprocessing throughput (tokens/s/core) on a synthetic corpus.

Two numbers: tokenised-text-to-shard (token id lists, as a tokenizer returns them, packed and
written to a shard: the part preprocess_data.py owns) and end-to-end text-to-shard with a byte-level
BPE tokenizer trained here, on one worker and on all cores.
"""

import argparse
import json
import os
import random
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from redi_megatron.data.example_tokenization import TokenizationSettings, pack_samples  # noqa: E402
from redi_megatron.data.preprocessing import preprocess  # noqa: E402
from redi_megatron.data.token_shards import ShardWriter  # noqa: E402

WORDS = ("let x be the real number such that \\frac{a}{b} = 2 then we compute the sum of squares "
         "<think> </think> \\boxed{42} therefore answer is 3 + 4 = 7 and the triangle ABC has sides").split()


def _text(rng: random.Random, words: int) -> str:
    return " ".join(rng.choice(WORDS) for _ in range(words))


def tokenised_to_shard(folder: Path, samples: int, response_tokens: int) -> float:
    """Return tokens/s for packing and writing pre-tokenised samples (single process)."""
    rng = np.random.default_rng(0)
    prompts = [rng.integers(0, 150_000, 200).tolist() for _ in range(samples)]
    completions = [[rng.integers(0, 150_000, response_tokens).tolist()] for _ in range(samples)]
    start = time.perf_counter()
    with ShardWriter(folder / "ids", "sft", 151_665, {}) as writer:
        for i in range(0, samples, 256):
            writer.add_packed(*pack_samples(prompts[i:i + 256], completions[i:i + 256], [2], writer.dtype))
    return writer.num_tokens / (time.perf_counter() - start)


def text_to_shard(folder: Path, samples: int, words: int, workers: int) -> float:
    """Return tokens/s/core for preprocess() on synthetic text with a trained byte-level BPE."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    rng = random.Random(0)
    tokenizer_dir = folder / "tokenizer"
    if not tokenizer_dir.exists():
        tokenizer_dir.mkdir()
        tokenizer = Tokenizer(models.BPE())
        tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        tokenizer.decoder = decoders.ByteLevel()
        tokenizer.train_from_iterator([_text(rng, 2000) for _ in range(20)], trainers.BpeTrainer(
            vocab_size=1000, special_tokens=["<|endoftext|>", "<|im_start|>", "<|im_end|>"],
            initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False))
        tokenizer.save(str(tokenizer_dir / "tokenizer.json"))
        (tokenizer_dir / "tokenizer_config.json").write_text(json.dumps({"eos_token": "<|im_end|>"}))
        with open(folder / "sft.jsonl", "w") as handle:
            for _ in range(samples):
                handle.write(json.dumps({"problem": _text(rng, 60), "response": _text(rng, words)}) + "\n")
    settings = TokenizationSettings(str(tokenizer_dir), "sft", max_response_tokens=10 ** 9)
    start = time.perf_counter()
    report = preprocess(folder / "sft.jsonl", folder / f"text{workers}", settings, workers=workers, progress=False)
    return report["num_tokens"] / (time.perf_counter() - start) / workers


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--samples", type=int, default=4000)
    parser.add_argument("--response-words", type=int, default=1500)
    args = parser.parse_args()
    cores = os.cpu_count() or 1
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        ids = tokenised_to_shard(folder, args.samples, args.response_words)
        print(f"tokenised-text-to-shard: {ids / 1e6:.2f} M tokens/s/core (1 process)")
        for workers in sorted({1, cores}):
            rate = text_to_shard(folder, args.samples, args.response_words, workers)
            print(f"text-to-shard (byte-level BPE), {workers} worker(s): {rate / 1e6:.2f} M tokens/s/core")


if __name__ == "__main__":
    main()
