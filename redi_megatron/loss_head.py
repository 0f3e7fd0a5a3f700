"""Per-token log-probs from final hidden states: the vocabulary projection plus cross-entropy."""

import torch

from redi_megatron.config import LossConfig
from redi_megatron.weighted_cross_entropy import (unfused_token_logprobs,
                                                  vocab_parallel_token_logprobs)


def token_logprobs(model, hidden: torch.Tensor, labels: torch.Tensor, loss: LossConfig):
    """Returns log p(labels) [b, s] in fp32 for the model's last stage output ``hidden`` [s, b, h].

    ``loss.fused`` (default) never materialises full-vocabulary logits: chunks of
    ``loss.chunk_size`` tokens are projected and normalised at a time, and recomputed in backward.
    """
    sequence_parallel = model.config.sequence_parallel
    if loss.fused:
        return vocab_parallel_token_logprobs(hidden, model.output_weight(), labels,
                                             chunk_size=loss.chunk_size,
                                             sequence_parallel=sequence_parallel)
    return unfused_token_logprobs(hidden, model.output_weight(), labels,
                                  sequence_parallel=sequence_parallel)
