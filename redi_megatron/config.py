"""Typed run configuration: dataclasses loaded from YAML with dotted command-line overrides."""

import dataclasses
import os
import typing
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional

import yaml


class ConfigError(ValueError):
    """A configuration problem, worded for the user: it names the key and the fix."""


@dataclass
class ModelConfig:
    # A Hugging Face config.json (or the directory holding it); when empty, the fields below.
    hf_config: str = ""
    # Architecture fields, used when hf_config is empty (the built-in tiny default).
    hidden_size: int = 64
    num_layers: int = 2
    num_attention_heads: int = 4
    num_key_value_heads: int = 2
    intermediate_size: int = 128
    vocab_size: int = 512
    rms_norm_eps: float = 1e-6
    rope_theta: float = 10000.0
    max_position_embeddings: int = 2048
    tie_word_embeddings: bool = True
    # Applied on top of hf_config (the paper sets rope_theta 300000, max_position_embeddings 32768).
    overrides: Dict[str, Any] = field(default_factory=dict)
    # The padded vocabulary is a multiple of this times the tensor-parallel size.
    make_vocab_size_divisible_by: int = 128
    init_method_std: float = 0.02
    # Recompute transformer layers in backward ("full") to trade compute for activation memory.
    recompute: Optional[str] = None
    # Core attention: auto (Transformer Engine when usable, else sdpa), sdpa (torch's fused
    # scaled_dot_product_attention / varlen flash on the local layer spec), local (Megatron's
    # DotProductAttention, [b, heads, s, s] scores), te (the Transformer Engine layer spec).
    attention: str = "auto"


@dataclass
class ParallelConfig:
    tensor: int = 1
    pipeline: int = 1
    virtual_pipeline: Optional[int] = None
    sequence_parallel: bool = False
    context: int = 1
    distributed_optimizer: bool = False
    # Decoder layers on the first / last pipeline stage (the rest split evenly over the middle
    # stages). Both null: an even split, or an automatic uneven one (redi_megatron.pipeline_split).
    layers_in_first_stage: Optional[int] = None
    layers_in_last_stage: Optional[int] = None


@dataclass
class DataConfig:
    # Shard prefix written by tools/preprocess_data.py.
    path: str = ""
    # Samples are padded to this length; the longest of them must fit.
    seq_length: int = 256
    # Each step computes only up to its longest loss-carrying position, rounded up to this
    # multiple (0: always the full seq_length).
    pad_to_multiple_of: int = 64
    micro_batch_size: int = 1
    global_batch_size: int = 8
    seed: int = 1234
    # When > 0, each micro-batch's samples are packed whole (a pair's chosen and rejected traces
    # in one row, each its own document) into rows of this many tokens instead of one padded row
    # per sequence; attention and RoPE stay within each document. 0: padded rows.
    pack_tokens: int = 0


@dataclass
class OptimConfig:
    lr: float = 5e-5
    min_lr: float = 0.0
    weight_decay: float = 1e-4
    adam_beta1: float = 0.9
    adam_beta2: float = 0.999
    adam_eps: float = 1e-8
    clip_grad: float = 1.0
    warmup_fraction: float = 0.1


@dataclass
class LossConfig:
    objective: str = "sft"
    alpha: float = 0.8
    beta: float = 0.1
    gamma: float = 1.0
    # Fused chunked vocab-parallel cross-entropy (never materialises full logits) or the plain path.
    fused: bool = True
    chunk_size: int = 512


@dataclass
class TrainConfig:
    epochs: float = 1.0
    # When > 0, the run's length in optimizer steps (the LR schedule spans it), instead of epochs.
    train_steps: int = 0
    # When > 0, stop after this many steps (the LR schedule still spans the whole run).
    max_steps: int = 0
    precision: str = "auto"
    fp8: Optional[str] = None
    seed: int = 1234
    log_interval: int = 1
    # TensorBoard events and metrics.jsonl (one JSON dict per step) go here when set.
    log_dir: str = ""
    # Warn when chosen and rejected log-probs both fall by more than collapse_drop (nats per
    # token) within collapse_window steps: the paper's collapse signature.
    collapse_window: int = 20
    collapse_drop: float = 0.5
    # Stop with an error after this many consecutive steps skipped for a non-finite loss.
    max_skipped_steps: int = 5


@dataclass
class CheckpointConfig:
    save: str = ""
    load: str = ""
    save_interval: int = 0
    # Load weights only (a converted HF model or the SFT result): fresh optimizer, step and data.
    finetune: bool = False
    # Load the optimizer state when resuming (set False to resume under a different layout).
    load_optimizer: bool = True
    # Distributed-optimizer state format: dp_reshardable (parallel, reloads at the same TP/PP split)
    # or fully_reshardable (gathered over DP at save, reloads at any layout).
    optimizer_format: str = "dp_reshardable"


@dataclass
class RunConfig:
    model: ModelConfig = field(default_factory=ModelConfig)
    parallel: ParallelConfig = field(default_factory=ParallelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)


OBJECTIVES = ("sft", "redi", "symmetric", "simpo", "dpo")
PRECISIONS = ("auto", "fp32", "bf16")
FP8_FORMATS = (None, "hybrid", "e4m3")
ATTENTIONS = ("auto", "sdpa", "local", "te")
OPTIMIZER_FORMATS = ("dp_reshardable", "fully_reshardable")


def _field_types(cls) -> Dict[str, Any]:
    return typing.get_type_hints(cls)


def _coerce(value, annotation, key: str):
    """Returns ``value`` converted to ``annotation``, or raises ConfigError naming ``key``."""
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if origin is typing.Union:
        if value is None and type(None) in args:
            return None
        inner = [a for a in args if a is not type(None)]
        return _coerce(value, inner[0], key)
    if origin in (dict, Dict):
        if not isinstance(value, dict):
            raise ConfigError(f"{key}: expected a mapping, got {value!r}")
        return dict(value)
    if origin in (list, List):
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{key}: expected a list, got {value!r}")
        return list(value)
    if annotation is Any:
        return value
    if annotation is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"{key}: expected true or false, got {value!r}")
    if annotation is int:
        if isinstance(value, bool) or not isinstance(value, int):
            if isinstance(value, float) and value.is_integer():
                return int(value)
            raise ConfigError(f"{key}: expected an integer, got {value!r}")
        return value
    if annotation is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{key}: expected a number, got {value!r}")
        return float(value)
    if annotation is str:
        if not isinstance(value, str):
            raise ConfigError(f"{key}: expected a string, got {value!r}")
        return value
    raise ConfigError(f"{key}: unsupported type {annotation}")


def _build(cls, values: Dict[str, Any], prefix: str):
    if not isinstance(values, dict):
        raise ConfigError(f"{prefix or 'config'}: expected a mapping, got {values!r}")
    types = _field_types(cls)
    known = {f.name for f in dataclasses.fields(cls)}
    for key in values:
        if key not in known:
            where = f"{prefix}.{key}" if prefix else key
            raise ConfigError(
                f"unknown config key '{where}'; valid keys here: {', '.join(sorted(known))}"
            )
    kwargs = {}
    for name, value in values.items():
        where = f"{prefix}.{name}" if prefix else name
        annotation = types[name]
        if dataclasses.is_dataclass(annotation):
            kwargs[name] = _build(annotation, value, where)
        else:
            kwargs[name] = _coerce(value, annotation, where)
    return cls(**kwargs)


def _set_dotted(tree: Dict[str, Any], dotted: str, value) -> None:
    parts = dotted.split(".")
    node = tree
    for part in parts[:-1]:
        node = node.setdefault(part, {})
        if not isinstance(node, dict):
            raise ConfigError(f"override '{dotted}': '{part}' is not a section")
    node[parts[-1]] = value


def parse_override(text: str):
    """Returns (dotted_key, value) from 'a.b=value', the value parsed as YAML (1e-6, true, null)."""
    if "=" not in text:
        raise ConfigError(f"override '{text}' is not of the form section.key=value")
    key, raw = text.split("=", 1)
    key = key.strip()
    if not key:
        raise ConfigError(f"override '{text}' has no key")
    return key, _numeric(yaml.safe_load(raw)) if raw.strip() else ""


def load_config(path: Optional[str] = None, overrides: Optional[List[str]] = None) -> RunConfig:
    """Returns the validated RunConfig from a YAML file (or defaults) and dotted overrides."""
    tree: Dict[str, Any] = {}
    if path:
        if not os.path.isfile(path):
            raise ConfigError(f"config file not found: {path}")
        with open(path, encoding="utf-8") as handle:
            loaded = yaml.safe_load(handle)
        if loaded is not None and not isinstance(loaded, dict):
            raise ConfigError(f"{path}: the top level must be a mapping of sections")
        tree = loaded or {}
    for text in overrides or []:
        key, value = parse_override(text)
        _set_dotted(tree, key, value)
    from redi_megatron.config_env import expand_environment

    config = _build(RunConfig, expand_environment(tree), "")
    validate_config(config)
    return config


def _numeric(value):
    # YAML 1.1 reads "1e-6" as a string; a user writing optim.lr=1e-6 means the number.
    if isinstance(value, str):
        try:
            return float(value) if any(c in value for c in ".eE") else int(value)
        except ValueError:
            return value
    return value


def validate_config(config: RunConfig) -> None:
    """Raises ConfigError for impossible settings that do not need the model architecture."""
    p, d, o, loss, t = config.parallel, config.data, config.optim, config.loss, config.train
    for key, value in (("parallel.tensor", p.tensor), ("parallel.pipeline", p.pipeline),
                       ("parallel.context", p.context), ("data.micro_batch_size", d.micro_batch_size),
                       ("data.global_batch_size", d.global_batch_size),
                       ("data.seq_length", d.seq_length)):
        if value < 1:
            raise ConfigError(f"{key} must be >= 1, got {value}")
    if p.virtual_pipeline is not None:
        if p.pipeline < 2:
            raise ConfigError(
                f"parallel.virtual_pipeline={p.virtual_pipeline} needs parallel.pipeline >= 2 "
                f"(got {p.pipeline}); set parallel.virtual_pipeline=null"
            )
        if p.virtual_pipeline < 2:
            raise ConfigError(f"parallel.virtual_pipeline must be >= 2 or null, got {p.virtual_pipeline}")
    if p.sequence_parallel and p.tensor == 1:
        raise ConfigError("parallel.sequence_parallel=true needs parallel.tensor >= 2")
    if p.sequence_parallel and d.seq_length % p.tensor:
        raise ConfigError(
            f"data.seq_length={d.seq_length} must be divisible by parallel.tensor={p.tensor} "
            "with sequence parallelism"
        )
    if d.pack_tokens < 0:
        raise ConfigError(f"data.pack_tokens must be >= 0 (0 = padded rows), got {d.pack_tokens}")
    if d.pack_tokens and p.sequence_parallel and d.pack_tokens % p.tensor:
        raise ConfigError(f"data.pack_tokens={d.pack_tokens} must be divisible by "
                          f"parallel.tensor={p.tensor} with sequence parallelism")
    if d.pack_tokens and config.model.attention == "local":
        raise ConfigError(f"data.pack_tokens={d.pack_tokens} needs attention that keeps packed documents "
                          "apart (model.attention=sdpa, te or auto); Megatron's local attention has no "
                          "packed-sequence path")
    if d.pack_tokens and p.context > 1:
        raise ConfigError(f"data.pack_tokens={d.pack_tokens} with parallel.context={p.context} is not "
                          "supported (packed documents are not split for context parallelism); "
                          "set data.pack_tokens=0 or parallel.context=1")
    if d.pad_to_multiple_of < 0:
        raise ConfigError(f"data.pad_to_multiple_of must be >= 0, got {d.pad_to_multiple_of}")
    if loss.objective not in OBJECTIVES:
        raise ConfigError(f"loss.objective='{loss.objective}' is not one of {', '.join(OBJECTIVES)}")
    if not 0.0 <= loss.alpha <= 1.0:
        raise ConfigError(f"loss.alpha={loss.alpha} must lie in [0, 1]")
    if loss.chunk_size < 1:
        raise ConfigError(f"loss.chunk_size must be >= 1, got {loss.chunk_size}")
    if config.model.attention not in ATTENTIONS:
        raise ConfigError(f"model.attention='{config.model.attention}' is not one of "
                          f"{', '.join(ATTENTIONS)}")
    if t.precision not in PRECISIONS:
        raise ConfigError(f"train.precision='{t.precision}' is not one of {', '.join(PRECISIONS)}")
    if t.fp8 not in FP8_FORMATS:
        raise ConfigError(f"train.fp8='{t.fp8}' must be hybrid, e4m3 or null")
    if not 0.0 <= o.warmup_fraction < 1.0:
        raise ConfigError(f"optim.warmup_fraction={o.warmup_fraction} must lie in [0, 1)")
    if o.lr <= 0:
        raise ConfigError(f"optim.lr must be > 0, got {o.lr}")
    if t.train_steps < 0 or t.max_steps < 0:
        raise ConfigError("train.train_steps and train.max_steps must be >= 0")
    if t.epochs <= 0 and t.train_steps == 0:
        raise ConfigError("set train.epochs > 0 or train.train_steps > 0")
    if config.checkpoint.save_interval and not config.checkpoint.save:
        raise ConfigError("checkpoint.save_interval is set but checkpoint.save (a directory) is empty")
    if config.checkpoint.optimizer_format not in OPTIMIZER_FORMATS:
        raise ConfigError(f"checkpoint.optimizer_format='{config.checkpoint.optimizer_format}' is "
                          f"not one of {', '.join(OPTIMIZER_FORMATS)}")


def config_to_dict(config: RunConfig) -> Dict[str, Any]:
    """Returns the configuration as plain nested dicts (for YAML, checkpoints and logs)."""
    return dataclasses.asdict(config)
