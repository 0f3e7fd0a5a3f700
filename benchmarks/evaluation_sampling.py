"""Cost of evaluate's seeded sampling on the demo's model size, against transformers' own sampling and greedy.

Three paths on the same random Qwen2 (the demo's default size) and the same prompts, in one run:
(a) transformers' built-in sampling (do_sample, global RNG), (b) the evaluate library's
transformers backend (a torch.Generator per row), both with k samples per problem in one batch,
and (c) the demo's former evaluation: one greedy answer per problem, 32 problems per batch. Every
row runs to max_new_tokens (no stop token), so tokens and work are the same. Prints CPU seconds
(this process) and the ratios (b)/(a) and (b)/(c).

    python benchmarks/evaluation_sampling.py [--problems 64] [--samples 4] [--max-new-tokens 160]
"""

import argparse
import os
import sys
import tempfile
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from redi_megatron.evaluation.sampling import SamplingSettings, sample_seeds  # noqa: E402
from redi_megatron.evaluation.transformers_backend import TransformersSampler  # noqa: E402

DEMO_SIZE = dict(vocab_size=512, hidden_size=128, num_hidden_layers=4, num_attention_heads=4,
                 num_key_value_heads=2, intermediate_size=384, max_position_embeddings=512)


def _cpu_seconds(function) -> float:
    started = time.process_time()
    function()
    return time.process_time() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--problems", type=int, default=64)
    parser.add_argument("--samples", type=int, default=4)
    parser.add_argument("--max-new-tokens", type=int, default=160)
    args = parser.parse_args()
    torch.set_num_threads(1)
    from transformers import Qwen2Config, Qwen2ForCausalLM

    no_stop = DEMO_SIZE["vocab_size"]  # an id the model cannot emit: every row runs to the limit
    torch.manual_seed(0)
    prompts = [torch.randint(0, 500, (60,)).tolist() for _ in range(args.problems)]
    with tempfile.TemporaryDirectory() as directory:
        Qwen2ForCausalLM(Qwen2Config(**DEMO_SIZE)).save_pretrained(directory)
        settings = SamplingSettings(args.samples, 0.6, 0.95, args.max_new_tokens, 0)
        seeded = TransformersSampler(directory, settings, [no_stop], 0)
        model = seeded.model
        rows = torch.tensor([p for p in prompts for _ in range(args.samples)])
        builtin = _cpu_seconds(lambda: model.generate(
            input_ids=rows, attention_mask=torch.ones_like(rows), do_sample=True, temperature=0.6, top_p=0.95,
            max_new_tokens=args.max_new_tokens, eos_token_id=no_stop, pad_token_id=0))
        ours = _cpu_seconds(lambda: seeded.sample(
            prompts, [sample_seeds(0, str(i), args.samples) for i in range(args.problems)]))
        greedy_rows = torch.tensor(prompts)
        greedy = _cpu_seconds(lambda: [model.generate(
            input_ids=greedy_rows[i:i + 32], attention_mask=torch.ones_like(greedy_rows[i:i + 32]), do_sample=False,
            max_new_tokens=args.max_new_tokens, eos_token_id=no_stop, pad_token_id=0)
            for i in range(0, args.problems, 32)])
    tokens = args.problems * args.samples * args.max_new_tokens
    print(f"{args.problems} problems x {args.samples} samples x {args.max_new_tokens} tokens (CPU seconds, 1 thread)")
    print(f"(a) transformers do_sample, global RNG:   {builtin:7.1f} s  {tokens / builtin:8.0f} tokens/s")
    print(f"(b) evaluate, a generator per row:        {ours:7.1f} s  {tokens / ours:8.0f} tokens/s")
    print(f"(c) former demo: 1 greedy answer/problem: {greedy:7.1f} s")
    print(f"(b)/(a) time: {ours / builtin:.2f}   (b)/(c) time: {ours / greedy:.2f} for {args.samples}x the answers")


if __name__ == "__main__":
    main()
