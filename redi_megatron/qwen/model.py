"""Megatron-Core GPTModel for the Qwen2 family, whose last stage returns final hidden states.

GPTModel is deprecated in megatron-core 0.19 in favour of HybridModel but still built and fixed
there; it is kept because its layer specs and checkpoint keys are what both supported releases
(0.16.1 on Python 3.11, 0.19.x on Python 3.12) share. Its per-construction deprecation log line
is dropped (``_DeprecationFilter``); the run prints one start-up line instead.
"""

import inspect
import logging
from typing import List, Optional

import torch
import torch.nn.functional as F
from megatron.core import parallel_state
from megatron.core.models.gpt import GPTModel, gpt_model
from megatron.core.models.gpt.gpt_layer_specs import (
    get_gpt_layer_local_spec,
    get_gpt_layer_with_transformer_engine_spec,
)
from megatron.core.transformer.transformer_block import (
    TransformerBlockSubmodules,
    get_num_layers_to_build,
)
from megatron.core.transformer.transformer_config import TransformerConfig

from redi_megatron.config import ConfigError, ModelConfig, ParallelConfig
from redi_megatron.pipeline_split import first_and_last_stage_layers
from redi_megatron.qwen.architecture import QwenArchitecture
from redi_megatron.qwen.attention import SdpaAttention, resolve_attention
from redi_megatron.runtime import Accelerators


class QwenRMSNorm(torch.nn.RMSNorm):
    """torch RMSNorm that marks its weight for TP all-reduce under sequence parallelism.

    Megatron's WrappedTorchNorm refuses sequence_parallel; with SP each TP rank sees a different
    slice of the sequence, so the norm weight's gradient must be summed over TP ranks, which
    finalize_model_grads does for parameters carrying ``sequence_parallel=True``.
    """

    def __init__(self, config: TransformerConfig, hidden_size: int, eps: float = 1e-6, **unused):
        super().__init__(hidden_size, eps=eps, dtype=config.params_dtype)
        setattr(self.weight, "sequence_parallel", config.sequence_parallel)


class _DeprecationFilter(logging.Filter):
    """Drops megatron-core 0.19's "GPTModel IS DEPRECATED" record (see the module docstring)."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "GPTModel IS DEPRECATED" not in record.getMessage()


logging.getLogger(gpt_model.__name__).addFilter(_DeprecationFilter())


def _final_hidden_states(hidden_states, **unused):
    """Returns the decoder's output unchanged: the loss head does the vocabulary projection."""
    return hidden_states


# megatron-core 0.19 takes the post-process step as a public forward argument; 0.16 has only the
# private _postprocess method to override.
HAS_OUTPUT_PROCESSOR = "output_processor" in inspect.signature(GPTModel.forward).parameters


class QwenGPTModel(GPTModel):
    """GPTModel whose post-process stage returns [s, b, h] hidden states after the final norm.

    The vocabulary projection belongs to the loss head (redi_megatron.loss_head), which can
    then fuse it with the cross-entropy and never hold full-vocabulary logits.
    """

    if HAS_OUTPUT_PROCESSOR:
        def forward(self, *args, **kwargs):
            kwargs.setdefault("output_processor", _final_hidden_states)
            return super().forward(*args, **kwargs)
    else:
        def _postprocess(self, hidden_states, **unused):
            return hidden_states

    def output_weight(self) -> torch.Tensor:
        """Returns this TP rank's [vocab/tp, hidden] shard of the output projection."""
        if self.share_embeddings_and_output_weights:
            return self.shared_embedding_or_output_weight()
        return self.output_layer.weight


def resolve_precision(precision: str, accelerators: Accelerators) -> torch.dtype:
    """Returns the parameter dtype: bf16 on GPU and fp32 on CPU for 'auto'."""
    if precision == "auto":
        return torch.bfloat16 if accelerators.cuda else torch.float32
    return torch.bfloat16 if precision == "bf16" else torch.float32


def transformer_config(
    arch: QwenArchitecture,
    parallel: ParallelConfig,
    model: ModelConfig,
    accelerators: Accelerators,
    precision: str = "auto",
    fp8: Optional[str] = None,
) -> TransformerConfig:
    """Returns Megatron's TransformerConfig for this architecture, layout and hardware."""
    dtype = resolve_precision(precision, accelerators)
    use_te = resolve_attention(model.attention, accelerators) == "te"
    if fp8 and not use_te:
        raise ConfigError(f"train.fp8={fp8} needs Transformer Engine on a GPU; set train.fp8=null")
    if parallel.context > 1 and not use_te:
        # Megatron's local attention asserts context_parallel_size == 1.
        raise ConfigError(f"parallel.context={parallel.context} needs Transformer Engine on a GPU "
                          "(Megatron's local attention has no context parallelism); set it to 1")
    fused = accelerators.cuda
    first_stage_layers, last_stage_layers = first_and_last_stage_layers(arch.num_layers, parallel)
    return TransformerConfig(
        num_layers=arch.num_layers,
        hidden_size=arch.hidden_size,
        num_attention_heads=arch.num_attention_heads,
        num_query_groups=arch.num_key_value_heads,
        ffn_hidden_size=arch.intermediate_size,
        kv_channels=arch.head_dim,
        normalization="RMSNorm",
        layernorm_epsilon=arch.rms_norm_eps,
        gated_linear_unit=True,
        activation_func=F.silu,
        add_bias_linear=False,
        add_qkv_bias=True,
        hidden_dropout=0.0,
        attention_dropout=0.0,
        init_method_std=arch.init_method_std,
        tensor_model_parallel_size=parallel.tensor,
        pipeline_model_parallel_size=parallel.pipeline,
        virtual_pipeline_model_parallel_size=parallel.virtual_pipeline,
        sequence_parallel=parallel.sequence_parallel,
        context_parallel_size=parallel.context,
        params_dtype=dtype,
        pipeline_dtype=dtype,
        bf16=dtype == torch.bfloat16,
        calculate_per_token_loss=True,
        # Batched p2p posts send_prev before send_next; with PP=2 both peers are the same rank, so
        # under virtual stages a forward activation can match a backward-grad receive. The
        # unbatched path orders by rank parity and uses a second group for 2-rank pipelines.
        batch_p2p_comm=False,
        use_cpu_initialization=not accelerators.cuda,
        transformer_impl="transformer_engine" if use_te else "local",
        fp8=fp8,
        gradient_accumulation_fusion=False,
        bias_activation_fusion=fused,
        bias_dropout_fusion=fused,
        masked_softmax_fusion=fused,
        apply_rope_fusion=False,
        persist_layer_norm=False,
        recompute_granularity=model.recompute,
        recompute_method="uniform" if model.recompute == "full" else None,
        recompute_num_layers=1 if model.recompute == "full" else None,
        num_layers_in_first_pipeline_stage=first_stage_layers,
        num_layers_in_last_pipeline_stage=last_stage_layers,
    )


def layer_spec(config: TransformerConfig, accelerators: Accelerators, attention: str = "auto",
               vp_stage: Optional[int] = None):
    """Returns the decoder block spec: Transformer Engine's, or Megatron's local one (``attention``)."""
    attention = resolve_attention(attention, accelerators)
    if attention == "te":
        # A dense layer without QK norm or MLA. RMSNorm and the QKV bias are no arguments: TE's
        # fused LayerNorm-linear modules take them from TransformerConfig. The arguments are bound
        # against the installed release by tests/distributed/test_megatron_api_signatures.py.
        layer = get_gpt_layer_with_transformer_engine_spec(
            num_experts=None, qk_layernorm=False, multi_latent_attention=False)
        from megatron.core.extensions.transformer_engine import TENorm

        final_norm = TENorm
    else:
        layer = get_gpt_layer_local_spec(normalization="RMSNorm")
        layer.submodules.input_layernorm = QwenRMSNorm
        layer.submodules.pre_mlp_layernorm = QwenRMSNorm
        if attention == "sdpa":
            layer.submodules.self_attention.submodules.core_attention = SdpaAttention
        final_norm = QwenRMSNorm
    return TransformerBlockSubmodules(
        layer_specs=[layer] * get_num_layers_to_build(config, vp_stage=vp_stage),
        layer_norm=final_norm)


def build_model_chunk(
    arch: QwenArchitecture,
    config: TransformerConfig,
    accelerators: Accelerators,
    padded_vocab_size: int,
    vp_stage: Optional[int] = None,
    attention: str = "auto",
) -> QwenGPTModel:
    """Returns this rank's QwenGPTModel for pipeline chunk ``vp_stage`` (None without virtual stages)."""
    pre_process = parallel_state.is_pipeline_first_stage(ignore_virtual=False, vp_stage=vp_stage)
    post_process = parallel_state.is_pipeline_last_stage(ignore_virtual=False, vp_stage=vp_stage)
    model = QwenGPTModel(
        config=config,
        transformer_layer_spec=layer_spec(config, accelerators, attention, vp_stage),
        vocab_size=padded_vocab_size,
        max_sequence_length=arch.max_position_embeddings,
        pre_process=pre_process,
        post_process=post_process,
        share_embeddings_and_output_weights=arch.tie_word_embeddings,
        position_embedding_type="rope",
        rotary_base=int(arch.rope_theta),
        parallel_output=True,
        vp_stage=vp_stage,
    )
    if accelerators.cuda:
        model.cuda(torch.cuda.current_device())
    return model


def build_model_chunks(
    arch: QwenArchitecture,
    config: TransformerConfig,
    accelerators: Accelerators,
    padded_vocab_size: int,
    attention: str = "auto",
) -> List[QwenGPTModel]:
    """Returns this rank's model chunks: one, or one per virtual pipeline stage.

    ``attention`` is ``model.attention`` (redi_megatron.qwen.attention.resolve_attention).
    """
    virtual = config.virtual_pipeline_model_parallel_size
    stages = range(virtual) if virtual else [None]
    return [build_model_chunk(arch, config, accelerators, padded_vocab_size, vp, attention)
            for vp in stages]
