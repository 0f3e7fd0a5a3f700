"""The loss head: vocabulary projection plus cross-entropy, from final hidden states to objectives.

``vocab_size`` is the model's true vocabulary (``arch.vocab_size``): Megatron pads the output
weight to a multiple of 128 x TP, and the padded rows stay out of the softmax.
"""

import torch

from redi_megatron.config import LossConfig
from redi_megatron.objectives import ObjectiveOutput, compute_objective, linear_token_weights
from redi_megatron.weighted_cross_entropy import (unfused_token_logprobs,
                                                  vocab_parallel_token_logprobs,
                                                  weighted_token_nll_and_logprobs)


def token_logprobs(model, hidden: torch.Tensor, labels: torch.Tensor, loss: LossConfig,
                   vocab_size: int) -> torch.Tensor:
    """Returns log p(labels) [b, s] in fp32 for the model's last stage output ``hidden`` [s, b, h].

    ``loss.fused`` (default) never materialises full-vocabulary logits: chunks of
    ``loss.chunk_size`` tokens are projected and normalised at a time, and recomputed in backward.
    """
    sequence_parallel = model.config.sequence_parallel
    if loss.fused:
        return vocab_parallel_token_logprobs(hidden, model.output_weight(), labels,
                                             chunk_size=loss.chunk_size,
                                             sequence_parallel=sequence_parallel,
                                             vocab_size=vocab_size)
    return unfused_token_logprobs(hidden, model.output_weight(), labels,
                                  sequence_parallel=sequence_parallel, vocab_size=vocab_size)


def objective_output(model, hidden: torch.Tensor, batch: dict, loss: LossConfig,
                     vocab_size: int) -> ObjectiveOutput:
    """Returns the objective of one micro-batch from the last stage output ``hidden`` [s, b, h].

    With ``loss.fused`` and an objective linear in the token log-probs (sft, redi, symmetric) the
    gradient is computed in the forward pass (``weighted_token_nll``: one logits GEMM per chunk,
    none in backward). simpo and dpo weigh each token by a sigmoid of its sequence's total
    log-prob, known only after the whole forward: a pass for the log-probs and one for the
    gradient are then needed anyway, which is what the autograd log-prob path does.
    """
    packing = dict(sequence_ids=batch.get("sequence_ids"), num_sequences=batch.get("num_sequences"))
    mask = batch["loss_mask"]
    weights = linear_token_weights(loss.objective, loss, mask, **packing) if loss.fused else None
    if weights is None:
        logp = token_logprobs(model, hidden, batch["labels"], loss, vocab_size)
        return compute_objective(logp, mask, loss, batch.get("ref_logps"), **packing)
    numerator, logp = weighted_token_nll_and_logprobs(
        hidden, model.output_weight(), batch["labels"], weights, logprob_mask=mask > 0,
        chunk_size=loss.chunk_size, sequence_parallel=model.config.sequence_parallel,
        vocab_size=vocab_size)
    return compute_objective(logp, mask, loss, numerator=numerator, **packing)
