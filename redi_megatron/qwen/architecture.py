"""Qwen2-family architecture arguments, read from a Hugging Face config.json."""

import json
import os
from dataclasses import asdict, dataclass, replace
from typing import Any, Dict

from redi_megatron.config import ConfigError, ModelConfig

QWEN2_ARCHITECTURES = ("Qwen2ForCausalLM",)
_OVERRIDABLE = ("rope_theta", "max_position_embeddings", "rms_norm_eps", "vocab_size")


@dataclass(frozen=True)
class QwenArchitecture:
    hidden_size: int
    num_layers: int
    num_attention_heads: int
    num_key_value_heads: int
    intermediate_size: int
    vocab_size: int
    rms_norm_eps: float
    rope_theta: float
    max_position_embeddings: int
    tie_word_embeddings: bool
    init_method_std: float = 0.02

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_attention_heads

    def padded_vocab_size(self, divisible_by: int, tensor_parallel: int) -> int:
        """Returns the vocabulary rounded up to a multiple of divisible_by * tensor_parallel."""
        multiple = divisible_by * tensor_parallel
        return -(-self.vocab_size // multiple) * multiple

    def to_hf_config(self) -> Dict[str, Any]:
        """Returns a Hugging Face Qwen2 config dict describing this architecture."""
        return {
            "architectures": ["Qwen2ForCausalLM"],
            "model_type": "qwen2",
            "hidden_size": self.hidden_size,
            "num_hidden_layers": self.num_layers,
            "num_attention_heads": self.num_attention_heads,
            "num_key_value_heads": self.num_key_value_heads,
            "intermediate_size": self.intermediate_size,
            "vocab_size": self.vocab_size,
            "rms_norm_eps": self.rms_norm_eps,
            "rope_theta": self.rope_theta,
            "max_position_embeddings": self.max_position_embeddings,
            "tie_word_embeddings": self.tie_word_embeddings,
            "initializer_range": self.init_method_std,
            "hidden_act": "silu",
            "use_sliding_window": False,
            "attention_dropout": 0.0,
            "torch_dtype": "float32",
        }

    def as_dict(self) -> Dict[str, Any]:
        return asdict(self)


def read_hf_config(path: str) -> Dict[str, Any]:
    """Returns the parsed config.json at ``path`` (a file or the directory holding it)."""
    file = os.path.join(path, "config.json") if os.path.isdir(path) else path
    if not os.path.isfile(file):
        raise ConfigError(f"model.hf_config: no config.json at {path}")
    with open(file, encoding="utf-8") as handle:
        return json.load(handle)


def architecture_from_hf_config(hf: Dict[str, Any], source: str = "config.json") -> QwenArchitecture:
    """Returns the architecture of a Qwen2/Qwen2.5 config dict; raises ConfigError otherwise."""
    architectures = hf.get("architectures") or []
    model_type = hf.get("model_type")
    if model_type != "qwen2" or (architectures and architectures[0] not in QWEN2_ARCHITECTURES):
        raise ConfigError(
            f"{source}: model_type={model_type!r}, architectures={architectures!r} is not a "
            "Qwen2/Qwen2.5 causal LM (expected model_type 'qwen2', Qwen2ForCausalLM)"
        )
    if hf.get("use_sliding_window"):
        raise ConfigError(f"{source}: use_sliding_window=true is not supported")
    if hf.get("hidden_act", "silu") != "silu":
        raise ConfigError(f"{source}: hidden_act={hf.get('hidden_act')!r}, only 'silu' is supported")
    required = ("hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size",
                "vocab_size")
    for key in required:
        if key not in hf:
            raise ConfigError(f"{source}: missing key '{key}'")
    heads = hf["num_attention_heads"]
    # transformers 5 nests RoPE settings under rope_parameters; 4.x keeps rope_theta at the top.
    rope = hf.get("rope_parameters") or {}
    rope_type = rope.get("rope_type", "default")
    if rope_type != "default" or hf.get("rope_scaling"):
        raise ConfigError(f"{source}: RoPE scaling ({rope_type}, rope_scaling="
                          f"{hf.get('rope_scaling')}) is not supported")
    return QwenArchitecture(
        hidden_size=hf["hidden_size"],
        num_layers=hf["num_hidden_layers"],
        num_attention_heads=heads,
        num_key_value_heads=hf.get("num_key_value_heads") or heads,
        intermediate_size=hf["intermediate_size"],
        vocab_size=hf["vocab_size"],
        rms_norm_eps=float(hf.get("rms_norm_eps", 1e-6)),
        rope_theta=float(hf.get("rope_theta", rope.get("rope_theta", 10000.0))),
        max_position_embeddings=hf.get("max_position_embeddings", 32768),
        tie_word_embeddings=bool(hf.get("tie_word_embeddings", False)),
        init_method_std=float(hf.get("initializer_range", 0.02)),
    )


def architecture_from_model_config(model: ModelConfig) -> QwenArchitecture:
    """Returns the architecture named by the run config, with its overrides applied."""
    if model.hf_config:
        arch = architecture_from_hf_config(read_hf_config(model.hf_config), model.hf_config)
    else:
        arch = QwenArchitecture(
            hidden_size=model.hidden_size,
            num_layers=model.num_layers,
            num_attention_heads=model.num_attention_heads,
            num_key_value_heads=model.num_key_value_heads,
            intermediate_size=model.intermediate_size,
            vocab_size=model.vocab_size,
            rms_norm_eps=model.rms_norm_eps,
            rope_theta=model.rope_theta,
            max_position_embeddings=model.max_position_embeddings,
            tie_word_embeddings=model.tie_word_embeddings,
            init_method_std=model.init_method_std,
        )
    for key in model.overrides:
        if key not in _OVERRIDABLE:
            raise ConfigError(
                f"model.overrides.{key} cannot be overridden; allowed: {', '.join(_OVERRIDABLE)}"
            )
    return replace(arch, **model.overrides) if model.overrides else arch
