"""Computed tokens per pair: padded rows (full, and trimmed per step) vs. padding-free packing.

    python benchmarks/packing.py [--pairs 1024] [--steps 16] [--dp 8] [--global-batch 32]
                                 [--seq-length 19800] [--pack-tokens 39600 32768]
                                 [--micro-batch 1 2 4] [--seed 0]

Lengths are shaped like OpenR1-Math pairs (seeded, numpy default_rng): prompt ~ lognormal with
median 150 tokens (sigma 0.5, clipped to [20, 1500]); chosen trace ~ lognormal median 4,000
(sigma 0.8); rejected trace ~ lognormal median 6,000 (sigma 0.8; incorrect traces run longer);
both clipped to [100, 19,000]. A pair is kept when each trace with its prompt fits in
--seq-length (the paper's filter; what padded rows need) and both together fit in the smallest
--pack-tokens, so every line counts the same pairs.

The real loader builds each data-parallel rank's micro-batches of every global batch, and the
real step code decides the computed shape: padded rows of --seq-length; padded rows trimmed to
the step's longest loss position (data.pad_to_multiple_of=64, the default); packed rows laid out
as THD sequences and cut per micro-batch (pipeline=1) or to one shape per step (pipeline>1).
Prints computed tokens per pair and the ratio to padded (trimmed) for each setting.
"""

import argparse
import os
import sys
import tempfile
import warnings

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np  # noqa: E402

MULTIPLE = 64


def openr1_like_lengths(pairs: int, seed: int) -> np.ndarray:
    """Returns [pairs, 3] (prompt, chosen, rejected) token counts shaped like OpenR1-Math pairs."""
    rng = np.random.default_rng(seed)
    prompt = np.clip(rng.lognormal(np.log(150), 0.5, pairs), 20, 1500)
    chosen = np.clip(rng.lognormal(np.log(4000), 0.8, pairs), 100, 19000)
    rejected = np.clip(rng.lognormal(np.log(6000), 0.8, pairs), 100, 19000)
    return np.stack([prompt, chosen, rejected], axis=1).astype(np.int64)


def write_pairs(prefix: str, lengths: np.ndarray) -> None:
    from redi_megatron.data.token_shards import ShardWriter

    with ShardWriter(prefix, "pairs", vocab_size=1000, metadata={"pad_id": 0, "eos_id": 1}) as writer:
        for prompt, chosen, rejected in lengths:
            writer.add(np.full(prompt, 5), [np.full(chosen, 7), np.full(rejected, 9)])


def computed_tokens(prefix, args, pack_tokens, micro_batch, same_shape) -> tuple[int, int]:
    """Returns (computed positions, pairs) over --steps global batches on all DP ranks."""
    from redi_megatron.data.micro_batches import MicroBatchLoader
    from redi_megatron.packed_sequences import thd_micro_batches
    from redi_megatron.sequence_trimming import trim_padding

    computed = pairs = 0
    for rank in range(args.dp):
        loader = MicroBatchLoader(prefix, args.seq_length, micro_batch, args.global_batch, rank, args.dp,
                                  seed=args.seed, pack_tokens=pack_tokens)
        for _ in range(args.steps):
            batches = loader.next_global_batch()
            pairs += micro_batch * len(batches)
            if pack_tokens:
                batches = thd_micro_batches(batches, MULTIPLE, same_shape)
            elif same_shape:  # the padded rows' step trimming
                batches = trim_padding(batches, MULTIPLE)
            computed += sum(batch["tokens"].numel() for batch in batches)
    return computed, pairs


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pairs", type=int, default=1024)
    parser.add_argument("--steps", type=int, default=16)
    parser.add_argument("--dp", type=int, default=8)
    parser.add_argument("--global-batch", type=int, default=32)
    parser.add_argument("--seq-length", type=int, default=19800)
    parser.add_argument("--pack-tokens", type=int, nargs="+", default=[39600, 32768])
    parser.add_argument("--micro-batch", type=int, nargs="+", default=[1, 2, 4])
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    warnings.filterwarnings("ignore", message="Transformer Engine and Apex are not installed")

    lengths = openr1_like_lengths(args.pairs, args.seed)
    rows = lengths[:, :1] + lengths[:, 1:]
    keep = (rows <= args.seq_length).all(axis=1) & (rows.sum(axis=1) <= min(args.pack_tokens))
    lengths = lengths[keep]
    real = rows[keep].sum(axis=1).mean()
    print(f"{len(lengths)} of {args.pairs} pairs kept; mean tokens per pair (prompt twice + traces): "
          f"{real:,.0f}; chosen median {np.median(lengths[:, 1]):,.0f}, rejected median "
          f"{np.median(lengths[:, 2]):,.0f}")
    print(f"global batch {args.global_batch} pairs, dp {args.dp}, {args.steps} steps, "
          f"pad_to_multiple_of {MULTIPLE}")
    with tempfile.TemporaryDirectory() as workdir:
        prefix = os.path.join(workdir, "pairs")
        write_pairs(prefix, lengths)
        print(f"{'micro-batch':>11} {'layout':<34} {'tokens/pair':>12} {'vs trimmed':>10} {'vs real':>8}")
        for micro_batch in args.micro_batch:
            trimmed, pairs = computed_tokens(prefix, args, 0, micro_batch, True)
            full, _ = computed_tokens(prefix, args, 0, micro_batch, False)
            lines = [("padded rows", full), ("padded rows, trimmed per step", trimmed)]
            for pack in args.pack_tokens:
                for same_shape, label in ((False, "pipeline=1"), (True, "pipeline>1")):
                    packed, _ = computed_tokens(prefix, args, pack, micro_batch, same_shape)
                    lines.append((f"packed {pack}, {label}", packed))
            for label, tokens in lines:
                per_pair = tokens / pairs
                print(f"{micro_batch:>11} {label:<34} {per_pair:>12,.0f} {per_pair / (trimmed / pairs):>10.3f} "
                      f"{per_pair / real:>8.3f}")


if __name__ == "__main__":
    main()
