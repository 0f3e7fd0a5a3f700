"""Megatron core attention on PyTorch's fused kernels: SDPA for padded rows, varlen flash for packed ones.

``SdpaAttention`` takes the place of Megatron's ``DotProductAttention`` (the ``core_attention`` of
the local layer spec's SelfAttention) with the same constructor and forward signatures. Megatron's
local attention materialises [b, heads, s, s] scores; SDPA's flash kernels (CUDA and CPU) keep
memory linear in the sequence length. ``model.attention`` picks the implementation (see
``resolve_attention``).
"""

import inspect
import math
from typing import List, Optional

import torch
import torch.nn.functional as F
from megatron.core import tensor_parallel
from megatron.core.packed_seq_params import PackedSeqParams
from megatron.core.transformer.enums import AttnMaskType
from megatron.core.transformer.module import MegatronModule
from megatron.core.transformer.transformer_config import TransformerConfig

from redi_megatron.config import ATTENTIONS, ConfigError
from redi_megatron.runtime import Accelerators

try:
    from torch.nn.attention.varlen import varlen_attn
except ImportError:  # torch < 2.10
    varlen_attn = None

_VARLEN_PARAMETERS = inspect.signature(varlen_attn).parameters if varlen_attn else {}


def resolve_attention(choice: str, accelerators: Accelerators) -> str:
    """Returns 'te', 'sdpa' or 'local' for ``model.attention`` on this machine ('auto': TE if usable)."""
    if choice not in ATTENTIONS:
        raise ConfigError(f"model.attention='{choice}' is not one of {', '.join(ATTENTIONS)}")
    if choice == "te" and not accelerators.transformer_engine:
        raise ConfigError("model.attention=te needs Transformer Engine on a GPU; "
                          "set model.attention=sdpa (or auto)")
    if choice == "auto":
        return "te" if accelerators.transformer_engine else "sdpa"
    return choice


class SdpaAttention(MegatronModule):
    """Causal (GQA) attention through torch's scaled_dot_product_attention / varlen_attn.

    Shapes as Megatron's DotProductAttention: padded rows take query [s, b, np, hn] and key/value
    [s, b, ng, hn] (this TP rank's heads) and return [s, b, np * hn]; packed rows (THD,
    ``packed_seq_params.qkv_format == 'thd'``) take [t, np, hn] (or [t, 1, np, hn]) and return
    [t, np * hn], each document attending causally to itself only.
    """

    def __init__(
        self,
        config: TransformerConfig,
        layer_number: int,
        attn_mask_type: AttnMaskType,
        attention_type: str,
        attention_dropout: Optional[float] = None,
        softmax_scale: Optional[float] = None,
        cp_comm_type: Optional[str] = None,
        pg_collection=None,
    ):
        super().__init__(config=config)
        if config.context_parallel_size != 1:
            raise ValueError("SdpaAttention has no context parallelism; use model.attention=te")
        if config.window_size is not None or config.softmax_type != "vanilla":
            raise ValueError("SdpaAttention computes full causal softmax attention only")
        if attn_mask_type not in (AttnMaskType.causal, AttnMaskType.padding_causal):
            raise ValueError(f"SdpaAttention is causal; got attn_mask_type={attn_mask_type}")
        head_dim = config.kv_channels
        self.softmax_scale = 1.0 / math.sqrt(head_dim) if softmax_scale is None else softmax_scale
        self.dropout = config.attention_dropout if attention_dropout is None else attention_dropout

    def forward(
        self,
        query: torch.Tensor,
        key: torch.Tensor,
        value: torch.Tensor,
        attention_mask: Optional[torch.Tensor],
        attn_mask_type: Optional[AttnMaskType] = None,
        attention_bias: Optional[torch.Tensor] = None,
        packed_seq_params: Optional[PackedSeqParams] = None,
    ) -> torch.Tensor:
        """Returns the attention context: [s, b, np * hn], or [t, np * hn] for packed rows."""
        if attention_bias is not None:
            raise ValueError("SdpaAttention takes no attention_bias")
        dropout = self.dropout if self.training else 0.0
        if dropout > 0.0:
            # As Megatron's local attention: each TP rank drops its own heads' probabilities.
            with tensor_parallel.get_cuda_rng_tracker().fork():
                return self._attend(query, key, value, attention_mask, packed_seq_params, dropout)
        return self._attend(query, key, value, attention_mask, packed_seq_params, dropout)

    def _attend(self, query, key, value, attention_mask, packed_seq_params, dropout):
        if packed_seq_params is not None and packed_seq_params.qkv_format == "thd":
            return self._packed(query, key, value, packed_seq_params, dropout)
        return self._padded(query, key, value, attention_mask, dropout)

    def _padded(self, query, key, value, attention_mask, dropout):
        seq, batch = query.shape[:2]
        # [s, b, heads, hn] -> [b, heads, s, hn] as strided views; the kernels take any strides.
        q, k, v = (t.permute(1, 2, 0, 3) for t in (query, key, value))
        if attention_mask is None:
            context = self._sdpa(q, k, v, dropout, is_causal=True)
        else:
            # Megatron's mask marks the positions to drop with True and replaces the causal mask.
            context = self._sdpa(q, k, v, dropout, attn_mask=attention_mask.logical_not())
        return context.permute(2, 0, 1, 3).reshape(seq, batch, -1)

    def _packed(self, query, key, value, params: PackedSeqParams, dropout):
        q, k, v = (t.squeeze(1) if t.dim() == 4 else t for t in (query, key, value))
        # Megatron's RoPE places documents at the padded offsets when they are given; so do we.
        cu_q = params.cu_seqlens_q if params.cu_seqlens_q_padded is None else params.cu_seqlens_q_padded
        cu_kv = (params.cu_seqlens_kv if params.cu_seqlens_kv_padded is None
                 else params.cu_seqlens_kv_padded)
        if _varlen_usable(q, dropout):
            context = _varlen(q, k, v, cu_q, cu_kv, params, self.softmax_scale)
        else:
            context = self._per_document(q, k, v, cu_q.tolist(), cu_kv.tolist(), dropout)
        return context.reshape(context.shape[0], -1)

    def _per_document(self, q, k, v, cu_q: List[int], cu_kv: List[int], dropout):
        """Returns [t, np, hn]: causal SDPA over each document's [1, heads, length, hn] slice."""
        pieces = [q.new_zeros(0, *q.shape[1:])]
        for i in range(len(cu_q) - 1):
            if cu_q[i + 1] == cu_q[i]:
                continue  # an empty document has no rows (and SDPA no zero-length kernel)
            doc_q, doc_k, doc_v = (t[a:b].transpose(0, 1).unsqueeze(0) for t, a, b in (
                (q, cu_q[i], cu_q[i + 1]), (k, cu_kv[i], cu_kv[i + 1]), (v, cu_kv[i], cu_kv[i + 1])))
            pieces.append(self._sdpa(doc_q, doc_k, doc_v, dropout, is_causal=True)[0].transpose(0, 1))
        return _zero_tail(torch.cat(pieces), q.shape[0])

    def _sdpa(self, q, k, v, dropout, is_causal=False, attn_mask=None):
        """Returns [b, np, s, hn] from q [b, np, s, hn] and k/v [b, ng, s, hn]."""
        return F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask, dropout_p=dropout,
                                              is_causal=is_causal, scale=self.softmax_scale,
                                              enable_gqa=k.shape[1] != q.shape[1])


def _varlen_usable(q: torch.Tensor, dropout: float) -> bool:
    # torch's varlen_attn is flash attention: CUDA, half precision, no dropout.
    return (varlen_attn is not None and q.is_cuda and dropout == 0.0
            and q.dtype in (torch.float16, torch.bfloat16))


def _varlen(q, k, v, cu_q, cu_kv, params: PackedSeqParams, scale: float) -> torch.Tensor:
    """Returns [t, np, hn] from torch's varlen flash attention over the cu_seqlens documents."""
    if "enable_gqa" in _VARLEN_PARAMETERS:
        options = {"enable_gqa": k.shape[1] != q.shape[1]}
    else:
        options = {}
        if k.shape[1] != q.shape[1]:
            groups = q.shape[1] // k.shape[1]
            k, v = k.repeat_interleave(groups, dim=1), v.repeat_interleave(groups, dim=1)
    if "is_causal" in _VARLEN_PARAMETERS:
        options["is_causal"] = True
    else:
        options["window_size"] = (-1, 0)  # torch 2.11+: (-1, 0) is causal
    max_q = params.max_seqlen_q or int((cu_q[1:] - cu_q[:-1]).max())
    max_kv = params.max_seqlen_kv or int((cu_kv[1:] - cu_kv[:-1]).max())
    end_q, end_kv = int(cu_q[-1]), int(cu_kv[-1])
    context = varlen_attn(q[:end_q], k[:end_kv], v[:end_kv], cu_q.to(torch.int32),
                          cu_kv.to(torch.int32), int(max_q), int(max_kv), scale=scale, **options)
    return _zero_tail(context, q.shape[0])


def _zero_tail(context: torch.Tensor, tokens: int) -> torch.Tensor:
    """Returns ``context`` extended with zero rows to ``tokens`` rows (padding after the last document)."""
    tail = tokens - context.shape[0]
    if tail == 0:
        return context
    return torch.cat([context, context.new_zeros(tail, *context.shape[1:])])
