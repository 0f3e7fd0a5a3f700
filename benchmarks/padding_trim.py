"""Step time with per-step padding trimming vs. always computing the full padded length.

    python benchmarks/padding_trim.py [--seq-length 1024] [--used 0.25 0.5 1.0] [--steps 3]

Rows are padded to --seq-length; in each case the completions end at a random position up to
`used x seq-length`, as teacher traces of mixed lengths do. Prints the best step time of each
path and their ratio (one process, gloo; CPU fp32 by default, CUDA bf16 when available).
"""

import argparse
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import torch  # noqa: E402


def _batches(rows, seq_length, used, vocab, seed):
    generator = torch.Generator().manual_seed(seed)
    tokens = torch.randint(0, vocab, (rows, seq_length), generator=generator)
    loss_mask = torch.zeros(rows, seq_length)
    for row in range(rows):
        end = int(torch.randint(max(8, int(used * seq_length) // 2), int(used * seq_length),
                                (1,), generator=generator))
        loss_mask[row, 4:end - 1] = 1.0
    batch = {"tokens": tokens, "labels": torch.roll(tokens, -1, 1), "loss_mask": loss_mask,
             "position_ids": torch.arange(seq_length).expand(rows, seq_length).clone()}
    return [{k: v[i:i + 2] for k, v in batch.items()} for i in range(0, rows, 2)]


def _best_step_time(engine, batches, steps):
    from redi_megatron.training_step import forward_backward

    best = float("inf")
    for _ in range(steps):
        started = time.perf_counter()
        forward_backward(engine, batches)
        best = min(best, time.perf_counter() - started)
    return best


def main():
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seq-length", type=int, default=1024)
    parser.add_argument("--used", type=float, nargs="+", default=[0.25, 0.5, 1.0])
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--hidden", type=int, default=256)
    parser.add_argument("--layers", type=int, default=4)
    args = parser.parse_args()
    from redi_megatron.config import load_config
    from redi_megatron.engine import build_engine

    model = [f"model.hidden_size={args.hidden}", f"model.num_layers={args.layers}",
             "model.num_attention_heads=4", "model.num_key_value_heads=2",
             f"model.intermediate_size={3 * args.hidden}", "model.vocab_size=8192",
             f"model.max_position_embeddings={args.seq_length}", f"data.seq_length={args.seq_length}"]
    engine = build_engine(load_config(None, model), total_steps=10)
    print(f"{'used':>6} {'padded s':>10} {'trimmed s':>10} {'trimmed/padded':>15}")
    for used in args.used:
        batches = _batches(8, args.seq_length, used, 8192, seed=0)
        engine.config.data.pad_to_multiple_of = 0
        padded = _best_step_time(engine, batches, args.steps)
        engine.config.data.pad_to_multiple_of = 64
        trimmed = _best_step_time(engine, batches, args.steps)
        print(f"{used:>6.2f} {padded:>10.3f} {trimmed:>10.3f} {trimmed / padded:>15.2f}")


if __name__ == "__main__":
    main()
