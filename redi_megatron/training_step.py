"""One optimizer step through Megatron's pipeline schedules, with globally reduced statistics."""

import math
from functools import partial
from typing import Callable, Dict, List, Tuple

import torch
from megatron.core import parallel_state
from megatron.core.pipeline_parallel import get_forward_backward_func
from megatron.core.utils import unwrap_model

from redi_megatron.loss_head import objective_output
from redi_megatron.objectives import STAT_NAMES, summarize_stats
from redi_megatron.packed_sequences import packed_seq_params, thd_micro_batches
from redi_megatron.sequence_trimming import trim_padding


LossFunction = Callable[..., Tuple[torch.Tensor, torch.Tensor, dict]]


def _to_device(batch: Dict[str, torch.Tensor], device: torch.device) -> Dict[str, torch.Tensor]:
    return {key: value.to(device, non_blocking=True) for key, value in batch.items()}


def _objective_loss(engine, model, batch, output_tensor):
    out = objective_output(model, output_tensor, batch, engine.config.loss, engine.arch.vocab_size)
    return out.numerator, out.denominator, {"stats": out.stats}


def _forward_step(engine, loss_function: LossFunction, data_iterator, model):
    batch = next(data_iterator)
    packed = None
    if engine.config.data.pack_tokens:
        packed = packed_seq_params(batch["position_ids"], engine.device)
    batch = _to_device(batch, engine.device)
    hidden = model(batch["tokens"], batch["position_ids"], None, packed_seq_params=packed)
    return hidden, partial(loss_function, engine, unwrap_model(model), batch)


def run_schedule(engine, micro_batches: List[Dict[str, torch.Tensor]],
                 loss_function: LossFunction, forward_only: bool) -> List[dict]:
    """Returns Megatron's per-micro-batch outputs (last stage only) of one pipeline schedule run.

    ``loss_function(engine, model, batch, hidden)`` runs on the last stage and returns
    (numerator, denominator, outputs) as Megatron's ``calculate_per_token_loss`` expects.
    """
    multiple = engine.sequence_multiple if engine.config.data.pad_to_multiple_of else 0
    if engine.config.data.pack_tokens:
        micro_batches = thd_micro_batches(micro_batches, multiple,
                                          same_shape=engine.config.parallel.pipeline > 1)
    elif multiple:
        micro_batches = trim_padding(micro_batches, multiple)
    tokens = micro_batches[0]["tokens"]
    chunks = engine.chunks
    iterators = [iter(micro_batches) for _ in chunks] if len(chunks) > 1 else iter(micro_batches)
    return get_forward_backward_func()(
        forward_step_func=partial(_forward_step, engine, loss_function),
        data_iterator=iterators,
        model=chunks,
        num_microbatches=len(micro_batches),
        seq_length=tokens.shape[1],
        micro_batch_size=tokens.shape[0],
        forward_only=forward_only,
    )


def _global_stats(forward_data_store: List[dict], device: torch.device) -> torch.Tensor:
    """Returns the statistics summed over micro-batches and data-parallel ranks, on every rank."""
    stats = torch.zeros(len(STAT_NAMES), dtype=torch.float64, device=device)
    for item in forward_data_store:
        stats += item["stats"].to(device)
    # Only the last pipeline stage holds statistics: the PP sum shares them with earlier stages.
    torch.distributed.all_reduce(
        stats, group=parallel_state.get_data_parallel_group(with_context_parallel=True))
    torch.distributed.all_reduce(stats, group=parallel_state.get_pipeline_model_parallel_group())
    return stats


def forward_backward(engine, micro_batches: List[Dict[str, torch.Tensor]],
                     forward_only: bool = False) -> dict:
    """Returns the global metrics of one forward and backward pass; gradients are left in the buffers.

    ``micro_batches`` is this rank's share of the global batch. Gradients are already reduced over
    data-parallel ranks and divided by the global loss denominator when this returns.
    """
    for chunk in engine.chunks:
        chunk.zero_grad_buffer()
    engine.optimizer.zero_grad()
    forward_data_store = run_schedule(engine, micro_batches, _objective_loss, forward_only)
    metrics = summarize_stats(_global_stats(forward_data_store, engine.device))
    metrics["lr"] = engine.optimizer.param_groups[0]["lr"]
    return metrics


def optimizer_update(engine, metrics: dict) -> dict:
    """Returns ``metrics`` with grad_norm and skipped, after the optimizer and LR schedule step.

    A step whose loss is NaN/inf does not update the weights and is reported as skipped.
    """
    if not math.isfinite(metrics["loss"]):
        return dict(metrics, skipped=True, grad_norm=float("nan"))
    updated, grad_norm, _ = engine.optimizer.step()
    engine.scheduler.step(increment=1)
    return dict(metrics, skipped=not updated,
                grad_norm=float(grad_norm) if grad_norm is not None else 0.0)


def train_step(engine, micro_batches: List[Dict[str, torch.Tensor]]) -> dict:
    """Returns the metrics of one full training step (forward, backward, update)."""
    return optimizer_update(engine, forward_backward(engine, micro_batches))
