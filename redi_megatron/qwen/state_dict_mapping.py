"""Hugging Face Qwen2 tensors <-> Megatron GPTModel (TP=1, local spec) tensors, group by group.

Conversion streams one *tensor group* at a time: the embedding, each decoder layer, and the
final norm with the output projection. Each function here maps one group in one direction and
touches only the tensors of that group, so no more than a layer is ever held twice.

Layouts that differ between the two:
- Megatron fuses Q, K and V into ``linear_qkv`` interleaved per query group:
  [q heads of group 0, k_0, v_0, q heads of group 1, k_1, v_1, ...] (weight rows and bias).
  Hugging Face's grouped-query attention serves query head h with key/value head h // (H / G),
  which is the same grouping.
- Megatron fuses the SwiGLU gate and up projections into ``linear_fc1`` as [gate; up].
- Megatron's vocabulary is padded to a multiple the tensor-parallel split needs; the padding
  rows are zero and are dropped again on export.
- Tied models have no ``lm_head.weight`` in Hugging Face and no ``output_layer.weight`` in
  Megatron (the last stage reuses the embedding).
"""

from typing import Dict, List, Tuple

import torch

from redi_megatron.qwen.architecture import QwenArchitecture

EMBEDDING_GROUP = "embedding"
FINAL_GROUP = "final"
_LAYER_PREFIX = "layer."

_HF_LAYER = "model.layers.{i}."
_MCORE_LAYER = "decoder.layers.{i}."
# Tensors copied as they are: (Hugging Face suffix, Megatron suffix) within one layer.
_LAYER_RENAMES = (
    ("input_layernorm.weight", "input_layernorm.weight"),
    ("self_attn.o_proj.weight", "self_attention.linear_proj.weight"),
    ("post_attention_layernorm.weight", "pre_mlp_layernorm.weight"),
    ("mlp.down_proj.weight", "mlp.linear_fc2.weight"),
)
HF_EMBEDDING = "model.embed_tokens.weight"
HF_FINAL_NORM = "model.norm.weight"
HF_LM_HEAD = "lm_head.weight"
MCORE_EMBEDDING = "embedding.word_embeddings.weight"
MCORE_FINAL_NORM = "decoder.final_layernorm.weight"
MCORE_OUTPUT = "output_layer.weight"


def tensor_groups(arch: QwenArchitecture) -> List[str]:
    """Returns the group names in conversion order: embedding, layer.0 .. layer.N-1, final."""
    return [EMBEDDING_GROUP] + [f"{_LAYER_PREFIX}{i}" for i in range(arch.num_layers)] + [FINAL_GROUP]


def layer_index(group: str) -> int:
    """Returns the decoder layer number of a 'layer.N' group."""
    return int(group[len(_LAYER_PREFIX):])


def hf_shapes(arch: QwenArchitecture, group: str) -> Dict[str, Tuple[int, ...]]:
    """Returns the Hugging Face tensor names of ``group`` with the shapes the config implies."""
    h, d = arch.hidden_size, arch.head_dim
    if group == EMBEDDING_GROUP:
        return {HF_EMBEDDING: (arch.vocab_size, h)}
    if group == FINAL_GROUP:
        shapes = {HF_FINAL_NORM: (h,)}
        if not arch.tie_word_embeddings:
            shapes[HF_LM_HEAD] = (arch.vocab_size, h)
        return shapes
    prefix = _HF_LAYER.format(i=layer_index(group))
    q_rows, kv_rows = arch.num_attention_heads * d, arch.num_key_value_heads * d
    f = arch.intermediate_size
    shapes = {
        "input_layernorm.weight": (h,),
        "self_attn.q_proj.weight": (q_rows, h),
        "self_attn.q_proj.bias": (q_rows,),
        "self_attn.k_proj.weight": (kv_rows, h),
        "self_attn.k_proj.bias": (kv_rows,),
        "self_attn.v_proj.weight": (kv_rows, h),
        "self_attn.v_proj.bias": (kv_rows,),
        "self_attn.o_proj.weight": (h, q_rows),
        "post_attention_layernorm.weight": (h,),
        "mlp.gate_proj.weight": (f, h),
        "mlp.up_proj.weight": (f, h),
        "mlp.down_proj.weight": (h, f),
    }
    return {prefix + name: shape for name, shape in shapes.items()}


def interleave_qkv(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                   arch: QwenArchitecture) -> torch.Tensor:
    """Returns Megatron's fused QKV (weight or bias) from Hugging Face's separate Q, K, V."""
    groups, d = arch.num_key_value_heads, arch.head_dim
    per_group = arch.num_attention_heads // groups
    rest = q.shape[1:]
    fused = torch.cat(
        [q.reshape(groups, per_group * d, *rest), k.reshape(groups, d, *rest),
         v.reshape(groups, d, *rest)],
        dim=1,
    )
    return fused.reshape(-1, *rest)


def split_qkv(qkv: torch.Tensor, arch: QwenArchitecture) -> Tuple[torch.Tensor, ...]:
    """Returns Hugging Face's (Q, K, V) from Megatron's per-group interleaved fused QKV."""
    groups, d = arch.num_key_value_heads, arch.head_dim
    per_group = arch.num_attention_heads // groups
    rest = qkv.shape[1:]
    q, k, v = qkv.reshape(groups, (per_group + 2) * d, *rest).split([per_group * d, d, d], dim=1)
    return (q.reshape(-1, *rest).contiguous(), k.reshape(-1, *rest).contiguous(),
            v.reshape(-1, *rest).contiguous())


def pad_vocab(weight: torch.Tensor, padded_vocab_size: int) -> torch.Tensor:
    """Returns ``weight`` [vocab, h] with zero rows appended up to ``padded_vocab_size``."""
    padding = padded_vocab_size - weight.shape[0]
    if padding < 0:
        raise ValueError(f"vocabulary {weight.shape[0]} is larger than the padded {padded_vocab_size}")
    return torch.cat([weight, weight.new_zeros(padding, weight.shape[1])]) if padding else weight


def megatron_group(arch: QwenArchitecture, group: str, hf: Dict[str, torch.Tensor],
                   padded_vocab_size: int) -> Dict[str, torch.Tensor]:
    """Returns the Megatron tensors of ``group`` built from its Hugging Face tensors ``hf``."""
    if group == EMBEDDING_GROUP:
        return {MCORE_EMBEDDING: pad_vocab(hf[HF_EMBEDDING], padded_vocab_size)}
    if group == FINAL_GROUP:
        tensors = {MCORE_FINAL_NORM: hf[HF_FINAL_NORM]}
        if not arch.tie_word_embeddings:
            tensors[MCORE_OUTPUT] = pad_vocab(hf[HF_LM_HEAD], padded_vocab_size)
        return tensors
    i = layer_index(group)
    src, dst = _HF_LAYER.format(i=i), _MCORE_LAYER.format(i=i)
    tensors = {dst + theirs: hf[src + ours] for ours, theirs in _LAYER_RENAMES}
    for kind in ("weight", "bias"):
        tensors[f"{dst}self_attention.linear_qkv.{kind}"] = interleave_qkv(
            hf[f"{src}self_attn.q_proj.{kind}"], hf[f"{src}self_attn.k_proj.{kind}"],
            hf[f"{src}self_attn.v_proj.{kind}"], arch)
    tensors[f"{dst}mlp.linear_fc1.weight"] = torch.cat(
        [hf[f"{src}mlp.gate_proj.weight"], hf[f"{src}mlp.up_proj.weight"]])
    return tensors


def megatron_names(arch: QwenArchitecture, group: str) -> List[str]:
    """Returns the Megatron state-dict names of ``group`` (TP=1, PP=1, local spec)."""
    if group == EMBEDDING_GROUP:
        return [MCORE_EMBEDDING]
    if group == FINAL_GROUP:
        return [MCORE_FINAL_NORM] + ([] if arch.tie_word_embeddings else [MCORE_OUTPUT])
    dst = _MCORE_LAYER.format(i=layer_index(group))
    return [dst + theirs for _, theirs in _LAYER_RENAMES] + [
        f"{dst}self_attention.linear_qkv.weight", f"{dst}self_attention.linear_qkv.bias",
        f"{dst}mlp.linear_fc1.weight"]


def hf_group(arch: QwenArchitecture, group: str,
             mcore: Dict[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
    """Returns the Hugging Face tensors of ``group`` from its Megatron tensors, vocab unpadded."""
    vocab = arch.vocab_size
    if group == EMBEDDING_GROUP:
        return {HF_EMBEDDING: mcore[MCORE_EMBEDDING][:vocab].contiguous()}
    if group == FINAL_GROUP:
        tensors = {HF_FINAL_NORM: mcore[MCORE_FINAL_NORM]}
        if not arch.tie_word_embeddings:
            tensors[HF_LM_HEAD] = mcore[MCORE_OUTPUT][:vocab].contiguous()
        return tensors
    i = layer_index(group)
    src, dst = _MCORE_LAYER.format(i=i), _HF_LAYER.format(i=i)
    tensors = {}
    for kind in ("weight", "bias"):
        q, k, v = split_qkv(mcore[f"{src}self_attention.linear_qkv.{kind}"], arch)
        tensors.update({f"{dst}self_attn.q_proj.{kind}": q, f"{dst}self_attn.k_proj.{kind}": k,
                        f"{dst}self_attn.v_proj.{kind}": v})
    gate, up = mcore[f"{src}mlp.linear_fc1.weight"].chunk(2)
    tensors[f"{dst}mlp.gate_proj.weight"] = gate.contiguous()
    tensors[f"{dst}mlp.up_proj.weight"] = up.contiguous()
    tensors.update({dst + ours: mcore[src + theirs] for ours, theirs in _LAYER_RENAMES})
    # Hugging Face's own order within a layer, so exported shards read like theirs.
    return {name: tensors[name] for name in hf_shapes(arch, group)}
