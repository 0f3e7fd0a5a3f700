"""Per-step trimming of right padding: compute only up to the longest position that carries loss.

Batches arrive padded to the fixed ``data.seq_length`` (19,800 tokens in the paper's stage 2)
while most traces are far shorter. Under causal attention a position can only influence the
positions after it, so every position past the last one with a non-zero loss mask can be dropped
without changing the loss or any gradient. All micro-batches of a step share one length (the
pipeline schedules exchange fixed-shape activations), rounded up to a multiple that sequence and
context parallelism (and GPU kernels) want.
"""

import math
from typing import Dict, List

import torch


def sequence_multiple(pad_to_multiple_of: int, tensor_parallel: int, sequence_parallel: bool,
                      context_parallel: int) -> int:
    """Returns the multiple a trimmed length must have for this layout."""
    multiple = max(pad_to_multiple_of, 1)
    if sequence_parallel:
        multiple = math.lcm(multiple, tensor_parallel)
    if context_parallel > 1:
        multiple = math.lcm(multiple, 2 * context_parallel)
    return multiple


def trimmed_length(micro_batches: List[Dict[str, torch.Tensor]], multiple: int) -> int:
    """Returns the length covering every loss-carrying position, rounded up, at most the padding."""
    padded = micro_batches[0]["tokens"].shape[1]
    used = 0
    for batch in micro_batches:
        positions = batch["loss_mask"].any(dim=0).nonzero()
        if positions.numel():
            used = max(used, int(positions.max()) + 1)
    return min(padded, -(-max(used, 1) // multiple) * multiple)


def trim_padding(micro_batches: List[Dict[str, torch.Tensor]],
                 multiple: int) -> List[Dict[str, torch.Tensor]]:
    """Returns the micro-batches cut to ``trimmed_length``; per-row tensors are left as they are."""
    padded = micro_batches[0]["tokens"].shape[1]
    length = trimmed_length(micro_batches, multiple)
    if length == padded:
        return micro_batches
    return [{key: value[:, :length] if value.dim() == 2 and value.shape[1] == padded else value
             for key, value in batch.items()} for batch in micro_batches]
