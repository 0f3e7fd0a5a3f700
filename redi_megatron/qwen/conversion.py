"""Hugging Face Qwen2 directory <-> Megatron dist-checkpoint conversion, streamed group by group.

HF -> Megatron reads one tensor group (embedding, a decoder layer, final norm + head) at a time
and places it into a meta-device skeleton of a TP=1/PP=1 model; the checkpoint keeps global
shapes, so the training loop loads it at any layout. The requested TP/PP only validates the
target layout and sets the vocabulary padding. Megatron -> HF reads one group at a time at TP=1
from any saved layout and appends it to safetensors shards as it goes.

All checks on the source (architecture, missing shards or tensors, shapes, layout) run before
anything is written, and the output becomes visible only when complete.
"""

import os
import shutil
import time
from typing import Any, Callable, Dict, Iterable, Optional

import torch

from redi_megatron.checkpointing import HF_SOURCE_DIR, TRACKER_FILE, iteration_dir, latest_iteration
from redi_megatron.config import ConfigError, ParallelConfig
from redi_megatron.qwen import state_dict_mapping as mapping
from redi_megatron.qwen.architecture import (QwenArchitecture, architecture_from_hf_config,
                                             read_hf_config)
from redi_megatron.qwen.hf_checkpoint_io import (CheckpointFormatError, SafetensorsReader,
                                                 ShardedSafetensorsWriter, TensorSpec,
                                                 copy_tokenizer_files, dtype_name, write_json)
from redi_megatron.pipeline_split import layers_per_stage
from redi_megatron.runtime import validate_layout

OVERRIDABLE = ("rope_theta", "max_position_embeddings")
DEFAULT_MAX_SHARD_BYTES = 5 * 1024**3
# Tensors some Qwen2 exports carry that the model recomputes or shares.
_IGNORED_HF_TENSORS = ("rotary_emb.inv_freq",)

Progress = Callable[[str], None]


def source_config(hf_dir: str, overrides: Optional[Dict[str, Any]] = None) -> Dict[str, Any]:
    """Returns the config.json of ``hf_dir`` with overrides applied and rope_theta at top level.

    transformers 5 writes rope_theta inside ``rope_parameters``; older versions at top level.
    Both are set so that either reader (and redi_megatron.qwen.architecture) sees the same value.
    """
    config = read_hf_config(hf_dir)
    rope = config.get("rope_parameters") or {}
    if rope.get("rope_type", "default") != "default" or config.get("rope_scaling"):
        raise ConfigError(f"{hf_dir}/config.json: RoPE scaling ({rope or config['rope_scaling']}) "
                          "is not supported; only default RoPE converts exactly")
    if "rope_theta" in rope:
        config.setdefault("rope_theta", rope["rope_theta"])
    for key, value in (overrides or {}).items():
        if key not in OVERRIDABLE:
            raise ConfigError(f"override '{key}' is not allowed; allowed: {', '.join(OVERRIDABLE)}")
        config[key] = value
    if "rope_parameters" in config:
        config["rope_parameters"] = dict(rope, rope_theta=config.get("rope_theta", 10000.0))
    return config


def check_source_tensors(reader: SafetensorsReader, arch: QwenArchitecture) -> None:
    """Raises CheckpointFormatError naming the first missing, misshapen or unknown HF tensor."""
    expected = {}
    for group in mapping.tensor_groups(arch):
        expected.update(mapping.hf_shapes(arch, group))
    for name, shape in expected.items():
        if name not in reader.entries:
            raise CheckpointFormatError(f"{reader.directory}: tensor {name} is missing")
        if reader.entries[name].shape != shape:
            raise CheckpointFormatError(
                f"{reader.directory}: tensor {name} has shape {reader.entries[name].shape}, "
                f"config.json implies {shape}")
    unknown = [name for name in reader.entries if name not in expected
               and not name.endswith(_IGNORED_HF_TENSORS)
               and not (name == mapping.HF_LM_HEAD and arch.tie_word_embeddings)]
    if unknown:
        raise CheckpointFormatError(f"{reader.directory}: tensors not part of a Qwen2 model: "
                                    f"{', '.join(sorted(unknown)[:5])}")


def _refuse_existing_checkpoint(out_root: str) -> None:
    if os.path.exists(os.path.join(out_root, TRACKER_FILE)):
        raise ConfigError(f"{out_root} already holds a checkpoint; choose an empty --out")


def _write_hf_source(hf_dir: str, out_root: str, config: Dict[str, Any]) -> None:
    target = os.path.join(out_root, HF_SOURCE_DIR)
    shutil.rmtree(target, ignore_errors=True)
    os.makedirs(target)
    copy_tokenizer_files(hf_dir, target)
    write_json(os.path.join(target, "config.json"), config)


def convert_hf_to_megatron(
    hf_dir: str,
    out_root: str,
    parallel: ParallelConfig,
    dtype: Optional[torch.dtype] = None,
    overrides: Optional[Dict[str, Any]] = None,
    make_vocab_size_divisible_by: int = 128,
    progress: Progress = print,
) -> str:
    """Returns the dist-checkpoint directory written under ``out_root`` from an HF Qwen2 model.

    ``dtype`` defaults to the dtype of the source embedding. The vocabulary is zero-padded to
    the multiple ``parallel.tensor`` needs; other layouts load it too (dist-checkpointing pads
    or trims the vocabulary rows on load).
    """
    config = source_config(hf_dir, overrides)
    arch = architecture_from_hf_config(config, os.path.join(hf_dir, "config.json"))
    validate_layout(arch, parallel, parallel.tensor * parallel.pipeline * parallel.context)
    reader = SafetensorsReader(hf_dir)
    check_source_tensors(reader, arch)
    _refuse_existing_checkpoint(out_root)
    dtype = dtype or reader.entries[mapping.HF_EMBEDDING].dtype
    padded_vocab = arch.padded_vocab_size(make_vocab_size_divisible_by, parallel.tensor)

    from redi_megatron.qwen import megatron_checkpoint_io as mcore_io  # imports megatron (slow)

    mcore_io.start_single_process()
    state = mcore_io.skeleton(arch, dtype, padded_vocab)
    started = time.time()
    for group in mapping.tensor_groups(arch):
        hf = {name: reader.read(name).to(dtype) for name in mapping.hf_shapes(arch, group)}
        for name, tensor in mapping.megatron_group(arch, group, hf, padded_vocab).items():
            mcore_io.fill(state[name], tensor, name)
        progress(f"[hf->megatron] {group}: {len(hf)} tensors read ({time.time() - started:.1f}s)")

    os.makedirs(out_root, exist_ok=True)
    _write_hf_source(hf_dir, out_root, config)
    train_state = {
        "iteration": 0,
        "has_optimizer": False,
        "converted_from": os.path.abspath(hf_dir),
        "target_layout": {"tensor": parallel.tensor, "pipeline": parallel.pipeline,
                          "virtual_pipeline": parallel.virtual_pipeline,
                          "layers_per_stage": layers_per_stage(arch.num_layers, parallel)},
        "padded_vocab_size": padded_vocab,
    }
    directory = mcore_io.write_checkpoint(out_root, 0, state, train_state)
    progress(f"[hf->megatron] saved {directory} ({time.time() - started:.1f}s)")
    return directory


def _hf_specs(arch: QwenArchitecture, dtype: torch.dtype) -> Iterable[TensorSpec]:
    for group in mapping.tensor_groups(arch):
        for name, shape in mapping.hf_shapes(arch, group).items():
            yield TensorSpec(name, dtype, shape)


def _exported_config(config: Dict[str, Any], dtype: torch.dtype) -> Dict[str, Any]:
    # transformers 5 reads "dtype", older versions and vLLM's config parsing "torch_dtype".
    return dict(config, dtype=dtype_name(dtype), torch_dtype=dtype_name(dtype))


def _write_generation_config(out_dir: str, config: Dict[str, Any]) -> None:
    path = os.path.join(out_dir, "generation_config.json")
    if not os.path.isfile(path):
        write_json(path, {"_from_model_config": True, "bos_token_id": config.get("bos_token_id"),
                          "eos_token_id": config.get("eos_token_id")})


def convert_megatron_to_hf(
    ckpt_root: str,
    out_dir: str,
    iteration: Optional[int] = None,
    max_shard_bytes: int = DEFAULT_MAX_SHARD_BYTES,
    progress: Progress = print,
) -> str:
    """Returns ``out_dir`` after exporting a checkpoint of ``ckpt_root`` as an HF Qwen2 directory.

    The checkpoint may have been saved at any TP/PP layout; the tensors keep its dtype and the
    vocabulary padding is removed. ``hf_source/`` under the root supplies config and tokenizer.
    """
    source = os.path.join(ckpt_root, HF_SOURCE_DIR)
    config = read_hf_config(source)
    arch = architecture_from_hf_config(config, os.path.join(source, "config.json"))
    if iteration is None:
        iteration = latest_iteration(ckpt_root)
        if iteration is None:
            raise ConfigError(f"{ckpt_root}: no {TRACKER_FILE}; pass --iteration or a checkpoint root")
    directory = iteration_dir(ckpt_root, iteration)
    if not os.path.isfile(os.path.join(directory, "metadata.json")):
        raise ConfigError(f"{directory} is not a complete dist-checkpoint")
    if os.path.exists(out_dir) and os.listdir(out_dir):
        raise ConfigError(f"{out_dir} exists and is not empty; choose a new --out")

    from redi_megatron.qwen import megatron_checkpoint_io as mcore_io  # imports megatron (slow)

    mcore_io.start_single_process()
    padded_vocab, dtype = mcore_io.checkpoint_vocab_and_dtype(directory)
    state = mcore_io.skeleton(arch, dtype, padded_vocab)
    staging = out_dir.rstrip("/") + ".tmp"
    shutil.rmtree(staging, ignore_errors=True)
    os.makedirs(staging)
    writer = ShardedSafetensorsWriter(staging, list(_hf_specs(arch, dtype)), max_shard_bytes)
    started = time.time()
    for group in mapping.tensor_groups(arch):
        mcore = mcore_io.read_tensors(directory, state, mapping.megatron_names(arch, group))
        for name, tensor in mapping.hf_group(arch, group, mcore).items():
            writer.write(name, tensor)
        progress(f"[megatron->hf] {group}: {len(mcore)} tensors ({time.time() - started:.1f}s)")
    writer.close()
    copy_tokenizer_files(source, staging)
    write_json(os.path.join(staging, "config.json"), _exported_config(config, dtype))
    _write_generation_config(staging, config)
    if os.path.isdir(out_dir):
        os.rmdir(out_dir)
    os.replace(staging, out_dir)
    progress(f"[megatron->hf] wrote {out_dir} from {directory} ({time.time() - started:.1f}s)")
    return out_dir
