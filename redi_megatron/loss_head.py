"""Per-token log-probs from final hidden states: the vocabulary projection plus cross-entropy."""

import torch
from megatron.core import tensor_parallel

from redi_megatron.config import LossConfig


def unfused_token_logprobs(hidden, output_weight, labels, chunk_size=None, sequence_parallel=False,
                           tp_group=None):
    """Returns log p(labels) [b, s] through full vocab-parallel logits (the reference path)."""
    from megatron.core.tensor_parallel import (
        copy_to_tensor_model_parallel_region,
        gather_from_sequence_parallel_region,
    )

    if sequence_parallel:
        hidden = gather_from_sequence_parallel_region(hidden, group=tp_group)
    else:
        hidden = copy_to_tensor_model_parallel_region(hidden, group=tp_group)
    logits = torch.matmul(hidden, output_weight.t()).float()
    nll = tensor_parallel.vocab_parallel_cross_entropy(logits, labels.t().contiguous())
    return -nll.t()


def token_logprobs(model, hidden: torch.Tensor, labels: torch.Tensor, loss: LossConfig):
    """Returns log p(labels) [b, s] in fp32 for the model's last stage output ``hidden`` [s, b, h]."""
    return unfused_token_logprobs(
        hidden, model.output_weight(), labels, chunk_size=loss.chunk_size,
        sequence_parallel=model.config.sequence_parallel,
    )
