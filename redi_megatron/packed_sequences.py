"""Packed micro-batches on the model side: the THD layout, PackedSeqParams, one shape per step.

Megatron's packed format ('thd') has a batch dimension of 1: a packed micro-batch's rows
[rows, L] (redi_megatron.data.packing) are laid end to end as one sequence [1, rows * L], and
``cu_seqlens`` marks where each document starts, so attention and RoPE stay within a document
(megatron-core 0.16 and 0.19 restart the rotary positions at every cu_seqlens entry:
``rope_utils._apply_rotary_pos_emb_thd``; Transformer Engine's THD attention reads the same
PackedSeqParams). The boundaries are read off
the per-document position ids, which restart at 0 for every document and for every row's
trailing padding (a document of its own that nothing reads), so they stay right after padding
trimming cuts the sequence short.
"""

from typing import Dict, List

import torch
from megatron.core.packed_seq_params import PackedSeqParams

from redi_megatron.sequence_trimming import trim_padding

Batch = Dict[str, torch.Tensor]


def thd_micro_batches(micro_batches: List[Batch], multiple: int, same_shape: bool) -> List[Batch]:
    """Returns packed micro-batches as [1, T] sequences, each cut after its last loss position.

    The cut is rounded up to ``multiple`` (0: no cut). With ``same_shape`` (pipeline schedules
    exchange activations of one shape per step) every micro-batch gets the same row count and T.
    """
    if same_shape:
        micro_batches = equal_rows(micro_batches)
    flat = [as_one_sequence(batch) for batch in micro_batches]
    if not multiple:
        return flat
    if same_shape:
        return trim_padding(flat, multiple)
    return [trim_padding([batch], multiple)[0] for batch in flat]


def as_one_sequence(batch: Batch) -> Batch:
    """Returns the batch with every per-position [rows, L] tensor laid out as [1, rows * L]."""
    rows, length = batch["tokens"].shape
    return {key: value.reshape(1, rows * length) if value.dim() == 2 and value.shape == (rows, length)
            else value for key, value in batch.items()}


def packed_seq_params(position_ids: torch.Tensor, device: torch.device) -> PackedSeqParams:
    """Returns THD PackedSeqParams (cu_seqlens on ``device``) for [1, T] per-document position ids."""
    positions = position_ids.flatten()
    starts = (positions == 0).nonzero().flatten()
    cu_seqlens = torch.cat([starts, starts.new_tensor([positions.numel()])]).to(torch.int32)
    max_seqlen = int((cu_seqlens[1:] - cu_seqlens[:-1]).max())
    cu_seqlens = cu_seqlens.to(device)
    return PackedSeqParams(qkv_format="thd", cu_seqlens_q=cu_seqlens, cu_seqlens_kv=cu_seqlens,
                           max_seqlen_q=max_seqlen, max_seqlen_kv=max_seqlen)


def equal_rows(micro_batches: List[Batch]) -> List[Batch]:
    """Returns the micro-batches with rows of padding appended until all have the same row count."""
    most = max(batch["tokens"].shape[0] for batch in micro_batches)
    return [_append_padding_rows(batch, most - batch["tokens"].shape[0]) for batch in micro_batches]


def _append_padding_rows(batch: Batch, count: int) -> Batch:
    if not count:
        return batch
    rows, length = batch["tokens"].shape
    out = {}
    for key, value in batch.items():
        if value.dim() != 2 or value.shape != (rows, length):
            out[key] = value
            continue
        if key == "position_ids":
            padding = torch.arange(length, dtype=value.dtype).expand(count, length)
        elif key == "sequence_ids":
            padding = value.new_full((count, length), -1)
        else:
            padding = value.new_zeros((count, length))
        out[key] = torch.cat([value, padding])
    return out
