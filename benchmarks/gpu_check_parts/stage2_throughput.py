"""Section 3: Stage 2 (REDI) steps at the Qwen2.5-1.5B shape, the package against the HF + TRL-style loop.

The package runs its own training path (config -> loader with packed rows -> engine -> train_step),
bf16 on the GPU, with full recompute off and on. The peer is transformers' Qwen2ForCausalLM with
SDPA attention, fp32 weights under bf16 autocast, the REDI loss over full logits and fused AdamW,
one padded 2-row micro-batch per pair (as TRL collates pairs), on the same pairs.

MFU counts model FLOPs only (recompute excluded), per document of n tokens:
    6 * P * n + 6 * L * h * n^2
P = the parameters every token multiplies (per-layer attention and MLP weights, plus the
vocab x h output projection), L layers, h the hidden size; 6 = forward + backward, and the n^2
term is causal attention (QK^T and AV, half of the n x n scores). Peak: 989 TFLOP/s dense bf16.
"""

import os
import tempfile
import time
from typing import Dict, List

import torch

from common import HOPPER_BF16_PEAK_FLOPS, Scale, synchronize, write_pair_shards

QWEN25_15B = dict(hidden_size=1536, num_layers=28, num_attention_heads=12, num_key_value_heads=2,
                  intermediate_size=8960, vocab_size=151936, max_position_embeddings=32768,
                  rope_theta=1000000.0, tie_word_embeddings=True)
TINY = dict(hidden_size=64, num_layers=2, num_attention_heads=4, num_key_value_heads=2,
            intermediate_size=128, vocab_size=1000, max_position_embeddings=1024,
            rope_theta=10000.0, tie_word_embeddings=True)
# (prompt, chosen, rejected) tokens: a pair is 8,192 tokens, two pairs fill a 16k packed row.
GPU_LENGTHS = (256, 3072, 4608)
TINY_LENGTHS = (8, 40, 72)


def _shape(scale: Scale):
    if scale.tiny:
        return TINY, TINY_LENGTHS, 256, 4, 1
    return QWEN25_15B, GPU_LENGTHS, 16384, 8, 3


def model_flops_per_pair(arch: Dict, lengths) -> float:
    """Returns the forward+backward model FLOPs of one pair (formula in the module docstring)."""
    h, layers = arch["hidden_size"], arch["num_layers"]
    head_dim = h // arch["num_attention_heads"]
    kv = arch["num_key_value_heads"] * head_dim
    per_layer = h * (h + 2 * kv) + h * h + 3 * h * arch["intermediate_size"]
    params = layers * per_layer + arch["vocab_size"] * h
    prompt, chosen, rejected = lengths
    return sum(6.0 * params * n + 6.0 * layers * h * n * n
               for n in (prompt + chosen, prompt + rejected))


def _pairs_data(workdir: str, arch: Dict, lengths, pairs: int) -> str:
    prompt, chosen, rejected = lengths
    return write_pair_shards(os.path.join(workdir, "pairs"), pairs, arch["vocab_size"], prompt,
                             chosen, rejected)


def _package_steps(scale: Scale, recompute: bool) -> Dict:
    from redi_megatron.config import load_config
    from redi_megatron.engine import build_engine, start_runtime
    from redi_megatron.training import build_loader
    from redi_megatron.training_step import train_step

    arch, lengths, pack_tokens, pairs, steps = _shape(scale)
    data = _pairs_data(tempfile.mkdtemp(prefix="gpu_check_stage2_"), arch, lengths, pairs)
    overrides = [f"model.{key}={value}" for key, value in arch.items()] + [
        f"data.path={data}", f"data.seq_length={pack_tokens}", f"data.pack_tokens={pack_tokens}",
        f"data.global_batch_size={pairs}", "data.micro_batch_size=2",
        "loss.objective=redi", "optim.lr=1e-6", f"train.train_steps={steps + 1}",
        f"train.precision={'bf16' if scale.cuda else 'fp32'}"]
    if recompute:
        overrides.append("model.recompute=full")
    config = load_config(None, overrides)
    started = start_runtime(config)
    loader = build_loader(config, started[0])
    engine = build_engine(config, steps + 1, started)
    batches = [loader.next_global_batch() for _ in range(steps + 1)]
    train_step(engine, batches[0])
    if scale.cuda:
        torch.cuda.reset_peak_memory_stats()
    synchronize(scale.device)
    began = time.perf_counter()
    for batch in batches[1:]:
        metrics = train_step(engine, batch)
    synchronize(scale.device)
    seconds = (time.perf_counter() - began) / steps
    return {"seconds_per_step": seconds, "loss": metrics["loss"],
            "processed_tokens": metrics["processed_tokens"],
            "peak_bytes": torch.cuda.max_memory_allocated() if scale.cuda else None}


def _hf_steps(scale: Scale) -> Dict:
    from transformers import Qwen2Config, Qwen2ForCausalLM

    from hf_reference import hf_training_step, padded_pair_batches
    from redi_megatron.data.token_shards import TokenShards

    arch, lengths, _, pairs, steps = _shape(scale)
    data = _pairs_data(tempfile.mkdtemp(prefix="gpu_check_hf_"), arch, lengths, pairs)
    shards = TokenShards(data)
    examples = []
    for index in range(pairs):
        prompt, (chosen, rejected) = shards.sample(index)
        examples.append({"prompt_length": len(prompt),
                         "chosen": torch.as_tensor(list(prompt) + list(chosen)),
                         "rejected": torch.as_tensor(list(prompt) + list(rejected))})
    config = Qwen2Config(hidden_size=arch["hidden_size"], num_hidden_layers=arch["num_layers"],
                         num_attention_heads=arch["num_attention_heads"],
                         num_key_value_heads=arch["num_key_value_heads"],
                         intermediate_size=arch["intermediate_size"],
                         vocab_size=arch["vocab_size"],
                         max_position_embeddings=arch["max_position_embeddings"],
                         rope_theta=arch["rope_theta"], tie_word_embeddings=True)
    config._attn_implementation = "sdpa"
    model = Qwen2ForCausalLM(config).to(scale.device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-6, weight_decay=1e-4,
                                  fused=scale.cuda)
    micro_batches = padded_pair_batches(examples, scale.device)
    autocast = torch.bfloat16 if scale.cuda else None
    hf_training_step(model, optimizer, micro_batches, autocast)
    if scale.cuda:
        torch.cuda.reset_peak_memory_stats()
    synchronize(scale.device)
    began = time.perf_counter()
    for _ in range(steps):
        loss = hf_training_step(model, optimizer, micro_batches, autocast)
    synchronize(scale.device)
    return {"seconds_per_step": (time.perf_counter() - began) / steps, "loss": loss,
            "processed_tokens": sum(int(b["tokens"].numel()) for b in micro_batches),
            "peak_bytes": torch.cuda.max_memory_allocated() if scale.cuda else None}


VARIANTS = {
    "package": lambda scale: _package_steps(scale, recompute=False),
    "package_recompute": lambda scale: _package_steps(scale, recompute=True),
    "hf_trl_style": _hf_steps,
}


def run(scale: Scale, variant: str) -> Dict:
    """Returns one variant's step time, tokens/s and MFU on the shared batch."""
    result = VARIANTS[variant](scale)
    arch, lengths, _, pairs, _ = _shape(scale)
    tokens = pairs * (2 * lengths[0] + lengths[1] + lengths[2])
    flops = pairs * model_flops_per_pair(arch, lengths)
    result.update(variant=variant, tokens_per_step=tokens,
                  tokens_per_second=tokens / result["seconds_per_step"],
                  mfu=flops / result["seconds_per_step"] / HOPPER_BF16_PEAK_FLOPS
                  if scale.cuda else None)
    return result


def summarize(results: List[Dict]) -> List[Dict]:
    """Returns the results with each variant's speed relative to the HF loop (time ratio)."""
    peer = next((r for r in results if r.get("variant") == "hf_trl_style" and "error" not in r),
                None)
    for result in results:
        if peer and "seconds_per_step" in result:
            result["time_vs_hf"] = result["seconds_per_step"] / peer["seconds_per_step"]
    return results
