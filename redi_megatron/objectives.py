"""Training objectives as functions of per-sequence completion log-prob sums and lengths.

Every objective returns a (numerator, denominator) pair whose global ratio is the loss: the
numerator is summed over micro-batches and data-parallel ranks and the gradient is divided once
by the global denominator (Megatron's ``calculate_per_token_loss``). That makes the loss and its
gradient identical whatever the split into micro-batches, data-parallel, tensor or pipeline ranks.

- sft: mean over all completion tokens of the batch of -log p (Stage 1; denominator = tokens).
- redi: per pair, -logp_w/|y_w| + alpha * logp_l/|y_l| (Eq. 5; denominator = pairs).
- symmetric: redi with alpha = 1.
- simpo: -log sigmoid(beta * (logp_w/|y_w| - logp_l/|y_l|) - gamma).
- dpo: -log sigmoid(beta * ((logp_w - ref_w) - (logp_l - ref_l))), ref = offline reference sums.

Pair sequences are interleaved: sequence 2i is the chosen trace of pair i, 2i+1 the rejected one.
Sequences are padded rows (one per row) or documents of packed rows, told apart per position
by the micro-batch's ``sequence_ids`` (see redi_megatron.data.packing).
"""

from dataclasses import dataclass
from typing import Optional

import torch
import torch.nn.functional as F

from redi_megatron.config import LossConfig

PAIR_OBJECTIVES = ("redi", "symmetric", "simpo", "dpo")

# Order of the per-micro-batch statistics vector (all sums, reduced over micro-batches and ranks).
STAT_NAMES = (
    "loss_numerator",
    "loss_denominator",
    "chosen_logp_norm_sum",
    "rejected_logp_norm_sum",
    "chosen_count",
    "pair_count",
    "correct_pairs",
    "completion_tokens",
    "processed_tokens",
)


@dataclass
class ObjectiveOutput:
    numerator: torch.Tensor  # scalar, differentiable
    denominator: torch.Tensor  # scalar int tensor
    stats: torch.Tensor  # float64 [len(STAT_NAMES)], detached


def sequence_logprob_sums(token_logprobs: torch.Tensor, loss_mask: torch.Tensor,
                          sequence_ids: Optional[torch.Tensor] = None, num_sequences=None):
    """Returns (sum of completion log-probs [n], completion length [n]) from [b, s] inputs.

    Without ``sequence_ids`` each row is one sequence (n = b). With them, position t adds to
    sequence ``sequence_ids[t]`` (-1: to none) and n is ``num_sequences`` (default: the largest id + 1).
    """
    mask = loss_mask.to(token_logprobs.dtype)
    if sequence_ids is None:
        return (token_logprobs * mask).sum(dim=-1), mask.sum(dim=-1)
    ids = sequence_ids.flatten()
    if num_sequences is None:
        num_sequences = int(ids.max()) + 1
    keep = (ids >= 0).nonzero().flatten()
    ids = ids.index_select(0, keep)
    zeros = token_logprobs.new_zeros(int(num_sequences))
    sums = zeros.index_add(0, ids, (token_logprobs * mask).flatten().index_select(0, keep))
    lengths = zeros.index_add(0, ids, mask.flatten().index_select(0, keep))
    return sums, lengths


def _check_lengths(lengths: torch.Tensor) -> None:
    empty = (lengths <= 0).nonzero().flatten()
    if empty.numel():
        raise ValueError(
            f"rows {empty.tolist()} of the micro-batch have no completion tokens (empty after "
            "truncation?); filter them in preprocessing"
        )


def pair_losses(objective: str, logp: torch.Tensor, lengths: torch.Tensor, loss: LossConfig,
                ref_logp: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Returns the per-pair losses [n] from interleaved per-sequence sums [2n]."""
    logp_w, logp_l = logp[0::2], logp[1::2]
    norm_w, norm_l = logp_w / lengths[0::2], logp_l / lengths[1::2]
    if objective == "redi":
        return -norm_w + loss.alpha * norm_l
    if objective == "symmetric":
        return -norm_w + norm_l
    if objective == "simpo":
        return -F.logsigmoid(loss.beta * (norm_w - norm_l) - loss.gamma)
    if objective == "dpo":
        if ref_logp is None:
            raise ValueError(
                "loss.objective=dpo needs reference log-probs: run tools/compute_reference_logps.py "
                "to write <data>.ref_logps.npy beside the pair shards"
            )
        ratio_w = logp_w - ref_logp[0::2].to(logp.dtype)
        ratio_l = logp_l - ref_logp[1::2].to(logp.dtype)
        return -F.logsigmoid(loss.beta * (ratio_w - ratio_l))
    raise ValueError(f"loss.objective={objective!r} is not a pair objective")


def compute_objective(token_logprobs: torch.Tensor, loss_mask: torch.Tensor, loss: LossConfig,
                      ref_logp: Optional[torch.Tensor] = None, sequence_ids: Optional[torch.Tensor] = None,
                      num_sequences=None) -> ObjectiveOutput:
    """Returns the loss numerator, denominator and statistics of one micro-batch."""
    logp, lengths = sequence_logprob_sums(token_logprobs.float(), loss_mask, sequence_ids, num_sequences)
    _check_lengths(lengths)
    norm = (logp / lengths).detach()
    tokens = lengths.sum().detach()
    stats = torch.zeros(len(STAT_NAMES), dtype=torch.float64, device=logp.device)
    if loss.objective == "sft":
        numerator = -logp.sum()
        denominator = lengths.sum().to(torch.int)
        stats[2] = norm.sum()
        stats[4] = norm.numel()
    else:
        if logp.numel() % 2:
            raise ValueError(f"a pair micro-batch needs an even number of rows, got {logp.numel()}")
        losses = pair_losses(loss.objective, logp, lengths, loss, ref_logp)
        numerator = losses.sum()
        denominator = torch.tensor(losses.numel(), dtype=torch.int, device=logp.device)
        stats[2] = norm[0::2].sum()
        stats[3] = norm[1::2].sum()
        stats[4] = losses.numel()
        stats[5] = losses.numel()
        stats[6] = (norm[0::2] > norm[1::2]).sum()
    stats[0] = numerator.detach()
    stats[1] = denominator
    stats[7] = tokens
    # Every position the model ran on (after padding trimming), for tokens/s and MFU.
    stats[8] = token_logprobs.numel()
    return ObjectiveOutput(numerator=numerator, denominator=denominator, stats=stats)


def summarize_stats(stats: torch.Tensor) -> dict:
    """Returns the logged metrics from a globally summed statistics vector."""
    s = dict(zip(STAT_NAMES, stats.tolist()))
    metrics = {
        "loss": s["loss_numerator"] / max(s["loss_denominator"], 1.0),
        "logp_chosen": s["chosen_logp_norm_sum"] / max(s["chosen_count"], 1.0),
        "completion_tokens": s["completion_tokens"],
        "processed_tokens": s["processed_tokens"],
        "rows": s["chosen_count"] + s["pair_count"],
    }
    if s["pair_count"]:
        metrics["logp_rejected"] = s["rejected_logp_norm_sum"] / s["pair_count"]
        metrics["margin"] = metrics["logp_chosen"] - metrics["logp_rejected"]
        metrics["pair_accuracy"] = s["correct_pairs"] / s["pair_count"]
    return metrics
