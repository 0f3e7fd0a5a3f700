"""The REDI authors' stack as the peer: transformers' Qwen2 (SDPA) with a TRL-style loss over full logits.

TRL computes per-token log-probs from the full [b, s, vocab] logits (log_softmax + gather), sums
them over each completion and divides by its length; REDI is then -chosen + alpha * rejected,
averaged over pairs. Rows here are padded per pair, as TRL's collator pads them.
"""

from typing import Dict, List

import torch

REDI_ALPHA = 0.8


def per_sequence_logps(model, tokens: torch.Tensor, labels: torch.Tensor,
                       loss_mask: torch.Tensor, positions: torch.Tensor = None):
    """Returns (sum of completion log-probs [b], completion lengths [b]) over full fp32 logits."""
    logits = model(input_ids=tokens, position_ids=positions).logits.float()
    logp = torch.log_softmax(logits, dim=-1).gather(-1, labels.unsqueeze(-1)).squeeze(-1)
    mask = loss_mask.to(logp.dtype)
    return (logp * mask).sum(-1), mask.sum(-1)


def redi_loss(model, batch: Dict[str, torch.Tensor], alpha: float = REDI_ALPHA) -> torch.Tensor:
    """Returns the summed REDI loss of interleaved (chosen, rejected) rows (not yet averaged)."""
    sums, lengths = per_sequence_logps(model, batch["tokens"], batch["labels"], batch["loss_mask"])
    norm = sums / lengths
    return (-norm[0::2] + alpha * norm[1::2]).sum()


def sft_loss_sum(model, batch: Dict[str, torch.Tensor]) -> torch.Tensor:
    """Returns the summed -log p over completion tokens (SFT numerator)."""
    sums, _ = per_sequence_logps(model, batch["tokens"], batch["labels"], batch["loss_mask"])
    return -sums.sum()


def padded_pair_batches(pairs: List[Dict[str, torch.Tensor]], device) -> List[Dict[str, torch.Tensor]]:
    """Returns one padded 2-row micro-batch per pair (chosen row, rejected row), as TRL collates."""
    batches = []
    for pair in pairs:
        rows = [pair["chosen"], pair["rejected"]]
        width = max(len(row) for row in rows)
        tokens = torch.zeros(2, width, dtype=torch.long)
        loss_mask = torch.zeros(2, width)
        for index, row in enumerate(rows):
            tokens[index, :len(row)] = row
            loss_mask[index, pair["prompt_length"] - 1:len(row) - 1] = 1.0
        labels = torch.roll(tokens, -1, dims=1)
        batches.append({"tokens": tokens.to(device), "labels": labels.to(device),
                        "loss_mask": loss_mask.to(device)})
    return batches


def hf_training_step(model, optimizer, micro_batches: List[Dict[str, torch.Tensor]],
                     autocast_dtype=None) -> float:
    """Returns the REDI loss of one optimizer step over ``micro_batches`` (gradient accumulation)."""
    optimizer.zero_grad(set_to_none=True)
    pairs = sum(batch["tokens"].shape[0] // 2 for batch in micro_batches)
    total = 0.0
    for batch in micro_batches:
        with torch.autocast(batch["tokens"].device.type, dtype=autocast_dtype,
                            enabled=autocast_dtype is not None):
            loss = redi_loss(model, batch) / pairs
        loss.backward()
        total += float(loss.detach())
    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    optimizer.step()
    return total
