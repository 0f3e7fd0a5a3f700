"""Section 2: the loss head at 16k and 32k tokens x 151,936 vocab, bf16: peak extra memory and time.

Forward + backward of the REDI-weighted token NLL (signed weights, none zero) on [tokens, 1, h]
hidden states and a [vocab, h] weight, along three paths:
  package   the head the training loop runs for sft/redi/symmetric (gradient in the forward pass:
            weighted_token_nll_and_logprobs, GEMMs in bf16 with fp32 accumulation)
  megatron  full logits, then Megatron's vocab_parallel_cross_entropy (the unfused path)
  liger     Liger's fused linear cross-entropy, when liger-kernel is installed (it takes one
            weight per token only as a mean, so it runs the unweighted loss: memory/time peer)
Each (case, path) is measured after freeing the previous one; an out-of-memory is reported as such.
"""

from typing import Dict, List

import torch

from common import PeakMemory, Scale, gib, median_seconds, start_single_process

VOCAB = 151936


def _cases(scale: Scale):
    if scale.tiny:
        return [(128, 32, 1000), (256, 48, 1000)]
    return [(tokens, hidden, VOCAB) for hidden in (1536, 3584) for tokens in (16384, 32768)]


def _inputs(tokens: int, hidden: int, vocab: int, dtype, device):
    generator = torch.Generator().manual_seed(0)
    states = torch.randn(tokens, 1, hidden, generator=generator).to(device, dtype)
    weight = (torch.randn(vocab, hidden, generator=generator) * 0.02).to(device, dtype)
    labels = torch.randint(0, vocab, (1, tokens), generator=generator).to(device)
    signs = torch.randint(0, 2, (1, tokens), generator=generator) * 2 - 1
    weights = ((torch.rand(1, tokens, generator=generator) * 0.9 + 0.1) * signs / tokens)
    return states.requires_grad_(), weight.requires_grad_(), labels, weights.to(device)


def _step(path: str, states, weight, labels, weights, vocab: int):
    from redi_megatron.weighted_cross_entropy import (unfused_token_logprobs,
                                                      weighted_token_nll_and_logprobs)

    states.grad = weight.grad = None
    if path == "package":
        loss, _ = weighted_token_nll_and_logprobs(states, weight, labels, weights,
                                                  vocab_size=vocab)
    elif path == "megatron":
        loss = -(weights * unfused_token_logprobs(states, weight, labels)).sum()
    else:
        from liger_kernel.transformers import LigerFusedLinearCrossEntropyLoss

        loss = LigerFusedLinearCrossEntropyLoss()(weight, states.view(-1, states.shape[-1]),
                                                  labels.view(-1))
    loss.backward()


def _paths() -> List[str]:
    try:
        import liger_kernel.transformers  # noqa: F401
        return ["package", "megatron", "liger"]
    except Exception:  # noqa: BLE001 - optional peer
        return ["package", "megatron"]


def run(scale: Scale) -> Dict:
    """Returns per (tokens, hidden, path): peak extra memory, median fwd+bwd time, ratios."""
    start_single_process()
    dtype = torch.float32 if scale.device.type == "cpu" else torch.bfloat16
    rows = []
    for tokens, hidden, vocab in _cases(scale):
        measured = {}
        for path in _paths():
            try:
                inputs = _inputs(tokens, hidden, vocab, dtype, scale.device)
                with PeakMemory(scale.device) as memory:
                    _step(path, *inputs, vocab)
                seconds = median_seconds(lambda: _step(path, *inputs, vocab), scale.device,
                                         repeats=1 if scale.tiny else 3, warmup=0)
                measured[path] = {"extra_bytes": memory.extra_bytes, "seconds": seconds}
            except torch.cuda.OutOfMemoryError:
                measured[path] = {"extra_bytes": None, "seconds": None, "oom": True}
            finally:
                inputs = None
                if scale.cuda:
                    torch.cuda.empty_cache()
        base = measured["megatron"]
        for path, result in measured.items():
            ratio_time = (result["seconds"] / base["seconds"]
                          if result.get("seconds") and base.get("seconds") else None)
            ratio_memory = (result["extra_bytes"] / base["extra_bytes"]
                            if result.get("extra_bytes") and base.get("extra_bytes") else None)
            rows.append({"tokens": tokens, "hidden": hidden, "vocab": vocab, "path": path,
                         "dtype": str(dtype)[6:], **result, "time_vs_megatron": ratio_time,
                         "memory_vs_megatron": ratio_memory})
    return {"rows": rows}


def render(result: Dict) -> List[List[str]]:
    """Returns table rows for the report."""
    def fmt(value, pattern):
        return "n/a" if value is None else pattern.format(value)

    return [[f"{r['tokens']}x{r['vocab']} h={r['hidden']} {r['dtype']}", r["path"],
             "OOM" if r.get("oom") else gib(r["extra_bytes"]), fmt(r["seconds"], "{:.3f} s"),
             fmt(r["memory_vs_megatron"], "{:.2f}x"), fmt(r["time_vs_megatron"], "{:.2f}x")]
            for r in result["rows"]]
