"""Vocab-parallel token log-probs and signed weighted cross-entropy, chunked over tokens.

Teacher traces are 16k-32k tokens long and Qwen's vocabulary has 151,936 entries, so the full fp32
logits of one sequence are ~20 GB per tensor-parallel rank, and megatron's
``vocab_parallel_cross_entropy`` keeps a softmax of the same size for backward. The autograd
functions here never hold more than one ``[chunk_size, vocab / tp]`` block of logits: the forward
keeps only one log-sum-exp per token, and the backward recomputes each chunk's logits.

``weighted_token_nll`` knows its per-token weights up front (REDI: +1/|y_w| on the chosen trace,
-alpha/|y_l| on the rejected one, 0 on prompt and padding), so it computes the gradients during the
forward pass and skips zero-weight tokens altogether: one logits matmul per chunk instead of two.

Layouts follow megatron's GPT model: hidden states ``[s, b, h]`` (``[s / tp, b, h]`` with sequence
parallelism), labels and weights ``[b, s]``, log-probs ``[b, s]``. The output weight is this rank's
vocab shard ``[vocab / tp, h]`` (rank r owns ids ``[r * vocab / tp, (r + 1) * vocab / tp)``).

Megatron pads the vocabulary with zero rows to a multiple of 128 x TP. Given the model's true
``vocab_size``, the padded rows never enter the softmax and get exactly zero gradient, so
log-probs are the Hugging Face model's whatever the TP layout.

Precision: softmax statistics and gradient accumulators are always fp32. With ``low_precision``
(default: bf16/fp16 weights on GPU) the GEMMs take the model's dtype and accumulate in fp32
(``torch.mm(..., out_dtype=torch.float32)``), with no fp32 copy of the vocab weight; the softmax
gradient is rounded to the model's dtype before the two gradient GEMMs, as a bf16 output layer's
autograd would do. Otherwise (CPU, fp32) everything is fp32.
"""

from typing import Optional, Tuple

import torch
import torch.distributed as dist
from megatron.core import parallel_state
from megatron.core.tensor_parallel import (
    copy_to_tensor_model_parallel_region,
    gather_from_sequence_parallel_region,
    vocab_parallel_cross_entropy,
)

# 512 tokens keep the fp32 logits block at 1/16 of 8k tokens' full logits (benchmarks/loss_head.py:
# peak extra memory 0.10x the unfused path on CPU) while the matmuls stay large enough to run at
# full speed; at Qwen's vocabulary the block is 512 x 151,936 / tp x 4 bytes = 311 MB / tp.
DEFAULT_CHUNK_SIZE = 512


def vocab_parallel_token_logprobs(hidden: torch.Tensor, output_weight: torch.Tensor,
                                  labels: torch.Tensor, chunk_size: int = DEFAULT_CHUNK_SIZE,
                                  sequence_parallel: bool = False,
                                  tp_group: Optional[dist.ProcessGroup] = None,
                                  vocab_size: Optional[int] = None,
                                  low_precision: Optional[bool] = None) -> torch.Tensor:
    """Returns float32 [b, s] log p(labels), differentiable in hidden and output_weight.

    ``vocab_size`` is the true vocabulary (None: every row of the weight is a real token);
    ``low_precision`` forces the model-dtype GEMMs on or off (None: on for 16-bit weights on GPU).
    Peak extra memory is one [chunk_size, vocab / tp] fp32 block, plus O(tokens) saved state.
    """
    group = _resolve_group(tp_group)
    full_hidden = _enter_tensor_parallel_region(hidden, sequence_parallel, group)
    seq, batch, width = full_hidden.shape
    flat_labels = _token_major(labels, full_hidden, output_weight, group, vocab_size)
    logp = _TokenLogprobs.apply(full_hidden.reshape(seq * batch, width), output_weight,
                                flat_labels, chunk_size, group, vocab_size, low_precision)
    return logp.view(seq, batch).t().contiguous()


def weighted_token_nll(hidden: torch.Tensor, output_weight: torch.Tensor, labels: torch.Tensor,
                       token_weights: torch.Tensor, chunk_size: int = DEFAULT_CHUNK_SIZE,
                       sequence_parallel: bool = False,
                       tp_group: Optional[dist.ProcessGroup] = None,
                       vocab_size: Optional[int] = None,
                       low_precision: Optional[bool] = None) -> torch.Tensor:
    """Returns the float32 scalar sum_t token_weights[t] * -log p(labels[t]), with gradients.

    Weights may have any sign; tokens of weight 0 are skipped and get exactly zero gradient.
    ``vocab_size`` and ``low_precision`` are as in ``vocab_parallel_token_logprobs``.
    """
    return weighted_token_nll_and_logprobs(
        hidden, output_weight, labels, token_weights, None, chunk_size, sequence_parallel,
        tp_group, vocab_size, low_precision)[0]


def weighted_token_nll_and_logprobs(hidden: torch.Tensor, output_weight: torch.Tensor,
                                    labels: torch.Tensor, token_weights: torch.Tensor,
                                    logprob_mask: Optional[torch.Tensor] = None,
                                    chunk_size: int = DEFAULT_CHUNK_SIZE,
                                    sequence_parallel: bool = False,
                                    tp_group: Optional[dist.ProcessGroup] = None,
                                    vocab_size: Optional[int] = None,
                                    low_precision: Optional[bool] = None
                                    ) -> Tuple[torch.Tensor, torch.Tensor]:
    """Returns (``weighted_token_nll``'s loss, detached float32 [b, s] log p(labels)).

    The log-probs come from the same pass as the loss (no extra matmul). They are computed where
    the weight is non-zero or ``logprob_mask`` [b, s] is true, and are 0 elsewhere; a token in the
    mask with weight 0 (e.g. REDI's rejected trace at alpha = 0) costs its logits but no gradient.
    """
    group = _resolve_group(tp_group)
    full_hidden = _enter_tensor_parallel_region(hidden, sequence_parallel, group)
    seq, batch, width = full_hidden.shape
    flat_labels = _token_major(labels, full_hidden, output_weight, group, vocab_size)
    if token_weights.shape != labels.shape:
        raise ValueError(f"token_weights has shape {tuple(token_weights.shape)}, "
                         f"labels {tuple(labels.shape)}: they must match")
    flat_weights = token_weights.t().reshape(-1).float()
    active = flat_weights != 0
    if logprob_mask is not None:
        active = active | logprob_mask.t().reshape(-1).bool()
    loss, logp = _WeightedNLL.apply(full_hidden.reshape(seq * batch, width), output_weight,
                                    flat_labels, flat_weights, active, chunk_size, group,
                                    vocab_size, low_precision, torch.is_grad_enabled())
    return loss, logp.view(seq, batch).t().contiguous()


def unfused_token_logprobs(hidden: torch.Tensor, output_weight: torch.Tensor,
                           labels: torch.Tensor, sequence_parallel: bool = False,
                           tp_group: Optional[dist.ProcessGroup] = None,
                           vocab_size: Optional[int] = None) -> torch.Tensor:
    """Returns float32 [b, s] log p(labels) through full logits and megatron's cross-entropy.

    The reference path (``loss.fused: false``): it materialises [s, b, vocab / tp] logits. Logits
    of padded ids (>= ``vocab_size``) are set to -inf, so they drop out of the softmax and their
    rows get zero gradient.
    """
    group = _resolve_group(tp_group)
    if group is not parallel_state.get_tensor_model_parallel_group():
        # vocab_parallel_cross_entropy always reduces over megatron's own TP group.
        raise ValueError("unfused_token_logprobs only supports megatron's tensor-parallel group")
    full_hidden = _enter_tensor_parallel_region(hidden, sequence_parallel, group)
    _token_major(labels, full_hidden, output_weight, group, vocab_size)
    logits = torch.matmul(full_hidden, output_weight.t())
    real = _real_rows(output_weight.shape[0], group, vocab_size)
    if real < logits.shape[-1]:
        logits[..., real:] = float("-inf")
    nll = vocab_parallel_cross_entropy(logits, labels.t().contiguous())
    return -nll.t().contiguous()


def _resolve_group(tp_group: Optional[dist.ProcessGroup]) -> dist.ProcessGroup:
    return tp_group if tp_group is not None else parallel_state.get_tensor_model_parallel_group()


def _real_rows(shard_size: int, group: dist.ProcessGroup, vocab_size: Optional[int]) -> int:
    """Returns how many of this rank's vocab rows are real ids (not padding), 0 to shard_size."""
    if vocab_size is None:
        return shard_size
    return min(max(vocab_size - group.rank() * shard_size, 0), shard_size)


def _enter_tensor_parallel_region(hidden: torch.Tensor, sequence_parallel: bool,
                                  group: dist.ProcessGroup) -> torch.Tensor:
    """Returns the full-sequence [s, b, h] hidden states whose backward reduces over TP ranks.

    Each rank's hidden gradient covers only its vocab shard: the sum over ranks is the true
    gradient, reduce-scattered back to the sequence shard with SP and all-reduced without.
    """
    if sequence_parallel:
        return gather_from_sequence_parallel_region(hidden, tensor_parallel_output_grad=True,
                                                    group=group)
    return copy_to_tensor_model_parallel_region(hidden, group=group)


def _token_major(labels: torch.Tensor, full_hidden: torch.Tensor, output_weight: torch.Tensor,
                 group: dist.ProcessGroup, vocab_size: Optional[int]) -> torch.Tensor:
    """Returns the [b, s] labels flattened in hidden-state order (s, b), after checking them."""
    seq, batch, _ = full_hidden.shape
    if labels.shape != (batch, seq):
        raise ValueError(f"labels have shape {tuple(labels.shape)} but the (gathered) hidden "
                         f"states imply [b, s] = [{batch}, {seq}]")
    padded = output_weight.shape[0] * group.size()
    if vocab_size is None:
        vocab_size = padded
    elif not 0 < vocab_size <= padded:
        raise ValueError(f"vocab_size {vocab_size} is outside (0, {padded}], the padded "
                         "vocabulary of the output weight")
    out_of_range = (labels < 0) | (labels >= vocab_size)
    count = int(out_of_range.sum())
    if count:
        raise ValueError(f"{count} label(s) outside [0, {vocab_size}), "
                         f"e.g. {int(labels[out_of_range][0])}")
    return labels.t().reshape(-1)


def _use_low_precision(weight: torch.Tensor, low_precision: Optional[bool]) -> bool:
    if low_precision is None:
        return weight.is_cuda and weight.dtype in (torch.bfloat16, torch.float16)
    return low_precision


def _mm_fp32(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Returns a @ b in float32, accumulated in fp32 whatever the (common) input dtype."""
    if a.dtype == torch.float32:
        return torch.mm(a, b)
    if a.is_cuda:
        return torch.mm(a, b, out_dtype=torch.float32)
    # CPU torch has no mm out_dtype kernel. Exact products of 16-bit inputs summed in fp32 are
    # what the GPU kernel computes, up to summation order.
    return torch.mm(a.float(), b.float())


class _VocabShard:
    """This rank's real (unpadded) vocab rows: the weight the GEMMs use, and the ids they hold."""

    def __init__(self, weight: torch.Tensor, group: dist.ProcessGroup,
                 vocab_size: Optional[int], low_precision: Optional[bool]):
        self.group = group
        self.padded_size = weight.shape[0]
        self.start = group.rank() * weight.shape[0]
        self.size = _real_rows(weight.shape[0], group, vocab_size)
        self.low_precision = _use_low_precision(weight, low_precision)
        real = weight[:self.size]
        # The fp32 path copies the shard once per call: O(vocab x h), never O(tokens x vocab).
        self.weight = real if self.low_precision else real.float()
        self._buffer: Optional[torch.Tensor] = None

    def gemm_input(self, tensor: torch.Tensor) -> torch.Tensor:
        """Returns ``tensor`` in the dtype this shard's GEMMs take."""
        return tensor.to(self.weight.dtype)

    def logits(self, hidden_rows: torch.Tensor) -> torch.Tensor:
        """Returns fp32 [rows, real vocab rows] logits (one reused buffer on the fp32 path)."""
        if self.low_precision:
            return _mm_fp32(self.gemm_input(hidden_rows), self.weight.t())
        # Reusing the block spares the CPU allocator a fresh mmap (and page faults) per chunk.
        rows = hidden_rows.shape[0]
        if self._buffer is None or self._buffer.shape[0] < rows:
            self._buffer = hidden_rows.new_empty((rows, self.size), dtype=torch.float32)
        return torch.mm(hidden_rows.float(), self.weight.t(), out=self._buffer[:rows])

    def local_targets(self, labels: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        """Returns (index into this shard, clamped to 0 where not owned; owned mask)."""
        local = labels - self.start
        owned = (local >= 0) & (local < self.size)
        return torch.where(owned, local, torch.zeros_like(local)), owned

    def all_reduce(self, tensor: torch.Tensor, op=dist.ReduceOp.SUM) -> torch.Tensor:
        if self.group.size() > 1:
            dist.all_reduce(tensor, op=op, group=self.group)
        return tensor


def _normalise(logits: torch.Tensor, labels: torch.Tensor,
               shard: _VocabShard) -> Tuple[torch.Tensor, torch.Tensor]:
    """Returns (log p(label), log-sum-exp) per row, turning ``logits`` into softmax in place."""
    local, owned = shard.local_targets(labels)
    if shard.size:
        row_max = logits.max(dim=-1).values
        target = torch.where(owned, logits.gather(-1, local.unsqueeze(-1)).squeeze(-1), 0.0)
    else:
        # A rank whose rows are all padding: it adds nothing to the max, the sum or the target.
        row_max = logits.new_full((logits.shape[0],), float("-inf"))
        target = logits.new_zeros(logits.shape[0])
    row_max = shard.all_reduce(row_max, dist.ReduceOp.MAX)
    logits.sub_(row_max.unsqueeze(-1))
    target = target - row_max
    logits.exp_()
    # Sum-exp and target logit share one all-reduce; each target is owned by exactly one rank.
    stats = shard.all_reduce(torch.stack((logits.sum(dim=-1), torch.where(owned, target, 0.0))))
    sum_exp, target = stats[0], stats[1]
    logits.div_(sum_exp.unsqueeze(-1))
    log_sum_exp = sum_exp.log()
    return target - log_sum_exp, log_sum_exp + row_max


def _accumulate_grads(probs: torch.Tensor, labels: torch.Tensor, coef: torch.Tensor,
                      hidden_rows: torch.Tensor, shard: _VocabShard,
                      grad_hidden: Optional[torch.Tensor], grad_weight: Optional[torch.Tensor],
                      rows: torch.Tensor) -> None:
    """Adds the gradients of sum_t coef[t] * -log p(label_t) to the given fp32 buffers.

    d(-log p)/d logits = softmax - onehot; ``probs`` is overwritten with coef * that.
    ``grad_weight`` covers this shard's real rows only.
    """
    local, owned = shard.local_targets(labels)
    if shard.size:
        probs[torch.arange(probs.shape[0], device=probs.device), local] -= owned.to(probs.dtype)
    probs.mul_(coef.unsqueeze(-1))
    grad_logits = shard.gemm_input(probs)
    if grad_hidden is not None:
        grad_hidden.index_copy_(0, rows, _mm_fp32(grad_logits, shard.weight))
    if grad_weight is not None:
        if shard.low_precision:
            # addmm with out_dtype into an fp32 accumulator is not accepted by every torch
            # version's dtype checks; mm + add is, at one extra pass over the [vocab, h] block.
            grad_weight.add_(_mm_fp32(grad_logits.t(), shard.gemm_input(hidden_rows)))
        else:
            grad_weight.addmm_(grad_logits.t(), hidden_rows.float())


def _weighted_pass(hidden: torch.Tensor, labels: torch.Tensor, coef: torch.Tensor,
                   active: torch.Tensor, shard: _VocabShard, chunk_size: int, need_hidden: bool,
                   need_weight: bool, log_sum_exp: Optional[torch.Tensor] = None):
    """Returns (loss, logp, grad_hidden, grad_weight) of sum_t coef[t] * -log p(label_t).

    Only the ``active`` rows (a superset of those with coef != 0) are computed, chunk by chunk:
    ``logp`` is 0 on the others and their gradient is exactly zero. The gradients are fp32
    (``grad_weight`` of the full padded shard, zero on padded rows), or None where not needed.
    Given the saved ``log_sum_exp`` the softmax is recomputed without communication and the
    returned loss and logp are 0 (not evaluated).
    """
    grad_hidden = hidden.new_zeros(hidden.shape, dtype=torch.float32) if need_hidden else None
    grad_weight = hidden.new_zeros((shard.padded_size, hidden.shape[1]),
                                   dtype=torch.float32) if need_weight else None
    real_grad_weight = grad_weight[:shard.size] if need_weight else None
    loss = hidden.new_zeros((), dtype=torch.float32)
    logp = hidden.new_zeros(hidden.shape[0], dtype=torch.float32)
    rows_to_compute = active.nonzero().squeeze(-1)
    for start in range(0, rows_to_compute.numel(), chunk_size):
        rows = rows_to_compute[start:start + chunk_size]
        hidden_rows = hidden.index_select(0, rows)
        chunk_labels, chunk_coef = labels[rows], coef[rows]
        probs = shard.logits(hidden_rows)
        if log_sum_exp is None:
            chunk_logp, _ = _normalise(probs, chunk_labels, shard)
            logp[rows] = chunk_logp
            loss -= (chunk_coef * chunk_logp).sum()
        else:
            probs.sub_(log_sum_exp[rows].unsqueeze(-1)).exp_()
        if need_hidden or need_weight:
            _accumulate_grads(probs, chunk_labels, chunk_coef, hidden_rows, shard, grad_hidden,
                              real_grad_weight, rows)
    return loss, logp, grad_hidden, grad_weight


class _TokenLogprobs(torch.autograd.Function):
    """log p(label) per token; saves only one log-sum-exp per token and recomputes in backward."""

    @staticmethod
    def forward(ctx, hidden, weight, labels, chunk_size, group, vocab_size, low_precision):
        shard = _VocabShard(weight, group, vocab_size, low_precision)
        logp = hidden.new_empty(hidden.shape[0], dtype=torch.float32)
        log_sum_exp = torch.empty_like(logp)
        for start in range(0, hidden.shape[0], chunk_size):
            end = start + chunk_size
            probs = shard.logits(hidden[start:end])
            logp[start:end], log_sum_exp[start:end] = _normalise(probs, labels[start:end], shard)
        ctx.save_for_backward(hidden, weight, labels, log_sum_exp)
        ctx.settings = chunk_size, group, vocab_size, low_precision
        return logp

    @staticmethod
    def backward(ctx, grad_logp):
        hidden, weight, labels, log_sum_exp = ctx.saved_tensors
        chunk_size, group, vocab_size, low_precision = ctx.settings
        # d log p / d logits = -(softmax - onehot): a weighted NLL with coefficients -grad.
        coef = -grad_logp.float()
        _, _, grad_hidden, grad_weight = _weighted_pass(
            hidden, labels, coef, coef != 0, _VocabShard(weight, group, vocab_size, low_precision),
            chunk_size, ctx.needs_input_grad[0], ctx.needs_input_grad[1], log_sum_exp)
        return (_cast(grad_hidden, hidden.dtype), _cast(grad_weight, weight.dtype),
                None, None, None, None, None)


class _WeightedNLL(torch.autograd.Function):
    """(sum_t w_t * -log p(label_t), log p); gradients computed in forward, scaled in backward."""

    @staticmethod
    def forward(ctx, hidden, weight, labels, token_weights, active, chunk_size, group, vocab_size,
                low_precision, with_grads):
        # needs_input_grad stays True under no_grad, hence the caller's with_grads.
        loss, logp, grad_hidden, grad_weight = _weighted_pass(
            hidden, labels, token_weights, active,
            _VocabShard(weight, group, vocab_size, low_precision), chunk_size,
            with_grads and ctx.needs_input_grad[0], with_grads and ctx.needs_input_grad[1])
        ctx.save_for_backward(_cast(grad_hidden, hidden.dtype), _cast(grad_weight, weight.dtype))
        ctx.mark_non_differentiable(logp)
        return loss, logp

    @staticmethod
    def backward(ctx, grad_loss, _grad_logp):
        grad_hidden, grad_weight = ctx.saved_tensors
        return (_scaled(grad_hidden, grad_loss), _scaled(grad_weight, grad_loss),
                None, None, None, None, None, None, None, None)


def _cast(tensor: Optional[torch.Tensor], dtype: torch.dtype) -> Optional[torch.Tensor]:
    return None if tensor is None else tensor.to(dtype)


def _scaled(grad: Optional[torch.Tensor], grad_loss: torch.Tensor) -> Optional[torch.Tensor]:
    """Returns grad x the upstream scalar (megatron's loss scale), multiplied in fp32."""
    if grad is None:
        return None
    if grad.dtype == torch.float32:
        return grad * grad_loss.float()
    # Rounding the scale itself to bf16 would change every gradient by up to 2^-9.
    return (grad.float() * grad_loss.float()).to(grad.dtype)
