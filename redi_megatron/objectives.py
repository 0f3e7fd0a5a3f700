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
A sequence is a row, or with packed rows a span named by the micro-batch's ``sequence_ids``.
For sft, redi and symmetric the numerator is linear in the token log-probs with weights known
before the forward (``linear_token_weights``), which lets the loss head compute its gradient in
the forward pass.
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
                          sequence_ids: Optional[torch.Tensor] = None,
                          num_sequences=None):
    """Returns (sum of completion log-probs [n], completion length [n]) from [b, s] inputs.

    Without ``sequence_ids`` the sequences are the rows (n = b). With them (packed rows),
    ``sequence_ids[r, t]`` is the index in 0..n-1 of the sequence whose label sits at (r, t), -1
    where none, and ``num_sequences`` is n (default: the largest id + 1).
    """
    mask = loss_mask.to(token_logprobs.dtype)
    if sequence_ids is None:
        return (token_logprobs * mask).sum(dim=-1), mask.sum(dim=-1)
    orphans = int(((sequence_ids < 0) & (loss_mask > 0)).sum())
    if orphans:
        raise ValueError(f"{orphans} completion token(s) have sequence id -1")
    count = int(num_sequences) if num_sequences is not None else int(sequence_ids.max()) + 1
    ids = sequence_ids.clamp(min=0).reshape(-1)
    sums = token_logprobs.new_zeros(count).index_add(0, ids, (token_logprobs * mask).reshape(-1))
    lengths = mask.new_zeros(count).index_add(0, ids, mask.reshape(-1))
    return sums, lengths


def linear_token_weights(objective: str, loss: LossConfig, loss_mask: torch.Tensor,
                         sequence_ids: Optional[torch.Tensor] = None,
                         num_sequences=None) -> Optional[torch.Tensor]:
    """Returns float32 [b, s] weights w with numerator = sum_t w_t * -log p_t, or None.

    sft: 1 per completion token; redi: +1/|y_w| on chosen, -alpha/|y_l| on rejected tokens;
    symmetric: redi with alpha = 1. None for simpo and dpo: their per-token coefficients depend on
    the per-sequence log-probs through a sigmoid, so they are unknown until the forward is done.
    Sequences are as in ``sequence_logprob_sums`` (pair order: chosen 2i, rejected 2i+1).
    """
    mask = loss_mask.float()
    if objective == "sft":
        return mask
    if objective not in ("redi", "symmetric"):
        return None
    _, lengths = sequence_logprob_sums(mask, loss_mask, sequence_ids, num_sequences)
    _check_lengths(lengths)
    _check_even(lengths.numel())
    scale = torch.ones_like(lengths)
    scale[1::2] = -(loss.alpha if objective == "redi" else 1.0)
    per_sequence = scale / lengths
    if sequence_ids is None:
        return mask * per_sequence.unsqueeze(-1)
    return mask * per_sequence[sequence_ids.clamp(min=0)]


def _check_lengths(lengths: torch.Tensor) -> None:
    empty = (lengths <= 0).nonzero().flatten()
    if empty.numel():
        raise ValueError(
            f"rows {empty.tolist()} of the micro-batch have no completion tokens (empty after "
            "truncation?); filter them in preprocessing"
        )


def _check_even(sequences: int) -> None:
    if sequences % 2:
        raise ValueError(f"a pair micro-batch needs an even number of sequences, got {sequences}")


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
                      ref_logp: Optional[torch.Tensor] = None,
                      sequence_ids: Optional[torch.Tensor] = None, num_sequences=None,
                      numerator: Optional[torch.Tensor] = None) -> ObjectiveOutput:
    """Returns the loss numerator, denominator and statistics of one micro-batch.

    ``numerator``, when given, is the loss numerator the loss head already computed with its
    gradient (sum_t w_t * -log p_t with ``linear_token_weights``); ``token_logprobs`` are then
    detached and only feed the statistics.
    """
    logp, lengths = sequence_logprob_sums(token_logprobs.float(), loss_mask, sequence_ids,
                                          num_sequences)
    _check_lengths(lengths)
    norm = (logp / lengths).detach()
    tokens = lengths.sum().detach()
    stats = torch.zeros(len(STAT_NAMES), dtype=torch.float64, device=logp.device)
    if loss.objective == "sft":
        own_numerator = -logp.sum()
        denominator = lengths.sum().to(torch.int)
        stats[2] = norm.sum()
        stats[4] = norm.numel()
    else:
        _check_even(logp.numel())
        losses = pair_losses(loss.objective, logp, lengths, loss, ref_logp)
        own_numerator = losses.sum()
        denominator = torch.tensor(losses.numel(), dtype=torch.int, device=logp.device)
        stats[2] = norm[0::2].sum()
        stats[3] = norm[1::2].sum()
        stats[4] = losses.numel()
        stats[5] = losses.numel()
        stats[6] = (norm[0::2] > norm[1::2]).sum()
    numerator = own_numerator if numerator is None else numerator
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
