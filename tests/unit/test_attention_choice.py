"""model.attention: validated at load, resolved per machine, and wired into the layer spec."""

import pytest

from redi_megatron.config import ConfigError, ModelConfig, ParallelConfig, load_config
from redi_megatron.runtime import Accelerators

CPU = Accelerators(cuda=False, transformer_engine=False, apex=False)
GPU_WITH_TE = Accelerators(cuda=True, transformer_engine=True, apex=False)


def test_unknown_attention_is_a_config_error():
    with pytest.raises(ConfigError, match="model.attention='flash' is not one of auto, sdpa"):
        load_config(None, ["model.attention=flash"])


def test_auto_is_transformer_engine_when_usable_else_sdpa():
    from redi_megatron.qwen.attention import resolve_attention

    assert resolve_attention("auto", CPU) == "sdpa"
    assert resolve_attention("auto", GPU_WITH_TE) == "te"
    assert resolve_attention("local", GPU_WITH_TE) == "local"
    with pytest.raises(ConfigError, match="model.attention=te needs Transformer Engine"):
        resolve_attention("te", CPU)


@pytest.mark.parametrize("attention,expected", [("sdpa", "SdpaAttention"),
                                                ("local", "DotProductAttention")])
def test_local_layer_spec_core_attention(attention, expected):
    from redi_megatron.qwen.architecture import architecture_from_model_config
    from redi_megatron.qwen.megatron_checkpoint_io import start_single_process
    from redi_megatron.qwen.model import layer_spec, transformer_config

    start_single_process()  # the spec asks Megatron's pipeline state how many layers to build
    model = ModelConfig(attention=attention)
    config = transformer_config(architecture_from_model_config(model), ParallelConfig(), model, CPU)
    assert config.transformer_impl == "local"
    spec = layer_spec(config, CPU, attention).layer_specs[0]
    assert spec.submodules.self_attention.submodules.core_attention.__name__ == expected
