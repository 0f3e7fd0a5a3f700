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
                                  tp_group: Optional[dist.ProcessGroup] = None) -> torch.Tensor:
    """Returns float32 [b, s] log p(labels), differentiable in hidden and output_weight.

    Peak extra memory is one [chunk_size, vocab / tp] fp32 block, plus O(tokens) saved state.
    """
    group = _resolve_group(tp_group)
    full_hidden = _enter_tensor_parallel_region(hidden, sequence_parallel, group)
    seq, batch, width = full_hidden.shape
    flat_labels = _token_major(labels, full_hidden, output_weight, group)
    logp = _TokenLogprobs.apply(full_hidden.reshape(seq * batch, width), output_weight,
                                flat_labels, chunk_size, group)
    return logp.view(seq, batch).t().contiguous()


def weighted_token_nll(hidden: torch.Tensor, output_weight: torch.Tensor, labels: torch.Tensor,
                       token_weights: torch.Tensor, chunk_size: int = DEFAULT_CHUNK_SIZE,
                       sequence_parallel: bool = False,
                       tp_group: Optional[dist.ProcessGroup] = None) -> torch.Tensor:
    """Returns the float32 scalar sum_t token_weights[t] * -log p(labels[t]), with gradients.

    Weights may have any sign; tokens of weight 0 are skipped and get exactly zero gradient.
    """
    group = _resolve_group(tp_group)
    full_hidden = _enter_tensor_parallel_region(hidden, sequence_parallel, group)
    seq, batch, width = full_hidden.shape
    flat_labels = _token_major(labels, full_hidden, output_weight, group)
    if token_weights.shape != labels.shape:
        raise ValueError(f"token_weights has shape {tuple(token_weights.shape)}, "
                         f"labels {tuple(labels.shape)}: they must match")
    flat_weights = token_weights.t().reshape(-1).float()
    return _WeightedNLL.apply(full_hidden.reshape(seq * batch, width), output_weight,
                              flat_labels, flat_weights, chunk_size, group,
                              torch.is_grad_enabled())


def unfused_token_logprobs(hidden: torch.Tensor, output_weight: torch.Tensor,
                           labels: torch.Tensor, sequence_parallel: bool = False,
                           tp_group: Optional[dist.ProcessGroup] = None) -> torch.Tensor:
    """Returns float32 [b, s] log p(labels) through full logits and megatron's cross-entropy.

    The reference path (``loss.fused: false``): it materialises [s, b, vocab / tp] logits.
    """
    group = _resolve_group(tp_group)
    if group is not parallel_state.get_tensor_model_parallel_group():
        # vocab_parallel_cross_entropy always reduces over megatron's own TP group.
        raise ValueError("unfused_token_logprobs only supports megatron's tensor-parallel group")
    full_hidden = _enter_tensor_parallel_region(hidden, sequence_parallel, group)
    _token_major(labels, full_hidden, output_weight, group)
    logits = torch.matmul(full_hidden, output_weight.t())
    nll = vocab_parallel_cross_entropy(logits, labels.t().contiguous())
    return -nll.t().contiguous()


def _resolve_group(tp_group: Optional[dist.ProcessGroup]) -> dist.ProcessGroup:
    return tp_group if tp_group is not None else parallel_state.get_tensor_model_parallel_group()


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
                 group: dist.ProcessGroup) -> torch.Tensor:
    """Returns the [b, s] labels flattened in hidden-state order (s, b), after checking them."""
    seq, batch, _ = full_hidden.shape
    if labels.shape != (batch, seq):
        raise ValueError(f"labels have shape {tuple(labels.shape)} but the (gathered) hidden "
                         f"states imply [b, s] = [{batch}, {seq}]")
    vocab_size = output_weight.shape[0] * group.size()
    out_of_range = (labels < 0) | (labels >= vocab_size)
    count = int(out_of_range.sum())
    if count:
        raise ValueError(f"{count} label(s) outside [0, {vocab_size}), "
                         f"e.g. {int(labels[out_of_range][0])}")
    return labels.t().reshape(-1)


class _VocabShard:
    """This rank's slice of the vocabulary: its fp32 weight and which ids it owns."""

    def __init__(self, weight: torch.Tensor, group: dist.ProcessGroup):
        # Logits are computed in fp32 (as megatron's loss does after upcasting); one fp32 copy of
        # the shard per call costs O(vocab x h), never O(tokens x vocab).
        self.weight = weight.float()
        self.group = group
        self.start = group.rank() * weight.shape[0]
        self.size = weight.shape[0]
        self._buffer: Optional[torch.Tensor] = None

    def logits(self, hidden_rows: torch.Tensor) -> torch.Tensor:
        """Returns fp32 [rows, vocab / tp] logits in one buffer that each chunk overwrites."""
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
    row_max = shard.all_reduce(logits.max(dim=-1).values, dist.ReduceOp.MAX)
    logits.sub_(row_max.unsqueeze(-1))
    target = torch.where(owned, logits.gather(-1, local.unsqueeze(-1)).squeeze(-1), 0.0)
    logits.exp_()
    # Sum-exp and target logit share one all-reduce; each target is owned by exactly one rank.
    stats = shard.all_reduce(torch.stack((logits.sum(dim=-1), target)))
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
    """
    local, owned = shard.local_targets(labels)
    probs[torch.arange(probs.shape[0], device=probs.device), local] -= owned.to(probs.dtype)
    probs.mul_(coef.unsqueeze(-1))
    if grad_hidden is not None:
        grad_hidden.index_copy_(0, rows, probs @ shard.weight)
    if grad_weight is not None:
        grad_weight.addmm_(probs.t(), hidden_rows.float())


def _weighted_pass(hidden: torch.Tensor, labels: torch.Tensor, coef: torch.Tensor,
                   shard: _VocabShard, chunk_size: int, need_hidden: bool, need_weight: bool,
                   log_sum_exp: Optional[torch.Tensor] = None):
    """Returns (loss, grad_hidden, grad_weight) of sum_t coef[t] * -log p(label_t), chunk by chunk.

    The gradients are fp32, or None where not needed. Given the saved ``log_sum_exp`` the
    softmax is recomputed without communication and the returned loss is 0 (not evaluated).
    Rows with coef 0 are skipped, so their gradient is exactly zero.
    """
    grad_hidden = hidden.new_zeros(hidden.shape, dtype=torch.float32) if need_hidden else None
    grad_weight = torch.zeros_like(shard.weight) if need_weight else None
    loss = hidden.new_zeros((), dtype=torch.float32)
    active = coef.nonzero().squeeze(-1)
    for start in range(0, active.numel(), chunk_size):
        rows = active[start:start + chunk_size]
        hidden_rows = hidden.index_select(0, rows)
        chunk_labels, chunk_coef = labels[rows], coef[rows]
        probs = shard.logits(hidden_rows)
        if log_sum_exp is None:
            logp, _ = _normalise(probs, chunk_labels, shard)
            loss -= (chunk_coef * logp).sum()
        else:
            probs.sub_(log_sum_exp[rows].unsqueeze(-1)).exp_()
        if need_hidden or need_weight:
            _accumulate_grads(probs, chunk_labels, chunk_coef, hidden_rows, shard, grad_hidden,
                              grad_weight, rows)
    return loss, grad_hidden, grad_weight


class _TokenLogprobs(torch.autograd.Function):
    """log p(label) per token; saves only one log-sum-exp per token and recomputes in backward."""

    @staticmethod
    def forward(ctx, hidden, weight, labels, chunk_size, group):
        shard = _VocabShard(weight, group)
        logp = hidden.new_empty(hidden.shape[0], dtype=torch.float32)
        log_sum_exp = torch.empty_like(logp)
        for start in range(0, hidden.shape[0], chunk_size):
            end = start + chunk_size
            probs = shard.logits(hidden[start:end])
            logp[start:end], log_sum_exp[start:end] = _normalise(probs, labels[start:end], shard)
        ctx.save_for_backward(hidden, weight, labels, log_sum_exp)
        ctx.chunk_size, ctx.group = chunk_size, group
        return logp

    @staticmethod
    def backward(ctx, grad_logp):
        hidden, weight, labels, log_sum_exp = ctx.saved_tensors
        # d log p / d logits = -(softmax - onehot): a weighted NLL with coefficients -grad.
        _, grad_hidden, grad_weight = _weighted_pass(
            hidden, labels, -grad_logp.float(), _VocabShard(weight, ctx.group), ctx.chunk_size,
            ctx.needs_input_grad[0], ctx.needs_input_grad[1], log_sum_exp)
        return (_cast(grad_hidden, hidden.dtype), _cast(grad_weight, weight.dtype),
                None, None, None)


class _WeightedNLL(torch.autograd.Function):
    """sum_t w_t * -log p(label_t); gradients are computed in forward, scaled in backward."""

    @staticmethod
    def forward(ctx, hidden, weight, labels, token_weights, chunk_size, group, with_grads):
        # needs_input_grad stays True under no_grad, hence the caller's with_grads.
        loss, grad_hidden, grad_weight = _weighted_pass(
            hidden, labels, token_weights, _VocabShard(weight, group), chunk_size,
            with_grads and ctx.needs_input_grad[0], with_grads and ctx.needs_input_grad[1])
        ctx.save_for_backward(_cast(grad_hidden, hidden.dtype), _cast(grad_weight, weight.dtype))
        return loss

    @staticmethod
    def backward(ctx, grad_loss):
        grad_hidden, grad_weight = ctx.saved_tensors
        return (_scaled(grad_hidden, grad_loss), _scaled(grad_weight, grad_loss),
                None, None, None, None, None)


def _cast(tensor: Optional[torch.Tensor], dtype: torch.dtype) -> Optional[torch.Tensor]:
    return None if tensor is None else tensor.to(dtype)


def _scaled(grad: Optional[torch.Tensor], grad_loss: torch.Tensor) -> Optional[torch.Tensor]:
    return None if grad is None else grad * grad_loss.to(grad.dtype)
