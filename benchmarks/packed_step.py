"""Step time of padded rows vs. packed rows (data.pack_tokens) on the same global batches.

    python benchmarks/packed_step.py [--objective redi] [--seq-length 256] [--pack-tokens 1024 2048]
                                     [--micro-batch 16] [--steps 4] [--hidden 128] [--layers 4]

Defaults are the built-in demo's shape (redi_megatron.demo: prompts ~60 tokens, traces up to ~160,
rows of 256, a 4-layer hidden-128 Qwen2, 16 pairs per micro-batch). Lengths are seeded: prompt
uniform in [40, 80], traces uniform in [40, 170]. One process, SDPA attention, CPU fp32 (CUDA bf16
when available); the same engine weights and global batches for each layout. Prints the best
forward+backward time of each and its ratio to padded rows (trimmed per step, the default).
"""

import argparse
import os
import sys
import tempfile
import time
import warnings

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np  # noqa: E402


def _write_shards(prefix, kind, samples, seed):
    from redi_megatron.data.token_shards import ShardWriter

    rng = np.random.default_rng(seed)
    completions = 1 if kind == "sft" else 2
    with ShardWriter(prefix, kind, vocab_size=512, metadata={"pad_id": 0, "eos_id": 1}) as writer:
        for _ in range(samples):
            writer.add(rng.integers(2, 512, int(rng.integers(40, 81))),
                       [rng.integers(2, 512, int(rng.integers(40, 171))) for _ in range(completions)])
    return str(prefix)


def _best_step(args, data, pack_tokens, weights):
    from redi_megatron.checkpointing import load_checkpoint, save_checkpoint
    from redi_megatron.config import load_config
    from redi_megatron.engine import build_engine
    from redi_megatron.training import build_loader
    from redi_megatron.training_step import forward_backward

    config = load_config(None, [
        f"model.hidden_size={args.hidden}", f"model.num_layers={args.layers}", "model.num_attention_heads=4",
        "model.num_key_value_heads=2", f"model.intermediate_size={3 * args.hidden}", "model.vocab_size=512",
        "model.attention=sdpa", f"data.path={data}", f"data.seq_length={args.seq_length}",
        f"data.micro_batch_size={args.micro_batch}", f"data.global_batch_size={args.micro_batch}",
        f"data.pack_tokens={pack_tokens}", f"loss.objective={args.objective}"])
    engine = build_engine(config, total_steps=10)
    if os.path.exists(weights):
        load_checkpoint(weights, engine.chunks, engine.optimizer, weights_only=True)
    else:
        save_checkpoint(weights, 0, engine.chunks)
    loader = build_loader(config, engine.arch)
    best, losses, computed = float("inf"), [], 0
    for _ in range(args.steps):
        batches = loader.next_global_batch()
        started = time.perf_counter()
        metrics = forward_backward(engine, batches)
        best = min(best, time.perf_counter() - started)
        losses.append(metrics["loss"])
        computed += metrics["processed_tokens"]
    return best, losses, computed / args.steps


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--objective", default="redi")
    parser.add_argument("--seq-length", type=int, default=256)
    parser.add_argument("--pack-tokens", type=int, nargs="+", default=[1024, 2048])
    parser.add_argument("--micro-batch", type=int, default=16)
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--hidden", type=int, default=128)
    parser.add_argument("--layers", type=int, default=4)
    args = parser.parse_args()
    warnings.filterwarnings("ignore")
    kind = "sft" if args.objective == "sft" else "pairs"
    with tempfile.TemporaryDirectory() as workdir:
        data = _write_shards(os.path.join(workdir, kind), kind, args.micro_batch * args.steps, seed=0)
        weights = os.path.join(workdir, "weights")
        padded, padded_losses, padded_tokens = _best_step(args, data, 0, weights)
        print(f"{'layout':<22} {'best step s':>11} {'positions':>10} {'vs padded':>9}")
        print(f"{'padded rows (trimmed)':<22} {padded:>11.3f} {padded_tokens:>10,.0f} {1.0:>9.3f}")
        for pack_tokens in args.pack_tokens:
            packed, losses, tokens = _best_step(args, data, pack_tokens, weights)
            assert np.allclose(losses, padded_losses, rtol=1e-5), (losses, padded_losses)
            print(f"{f'packed {pack_tokens}':<22} {packed:>11.3f} {tokens:>10,.0f} {packed / padded:>9.3f}")


if __name__ == "__main__":
    main()
