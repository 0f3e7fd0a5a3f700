"""Megatron dist-checkpoints of a Qwen model written and read without materialising a model.

A TP=1/PP=1 ``QwenGPTModel`` built on the meta device costs no memory but still yields the exact
``sharded_state_dict()`` a real one saves: the same keys, layer-stacked global shapes, replica
ids, SwiGLU factory and ``_extra_state`` objects. Filling that skeleton with real tensors gives
a checkpoint that ``redi_megatron.checkpointing.load_checkpoint`` reshards to any TP/PP/VPP;
asking the skeleton for one layer at a time reads any checkpoint back at TP=1, whatever layout
saved it.
"""

from typing import Any, Dict, Iterable, List

import torch
from megatron.core import dist_checkpointing
from megatron.core.dist_checkpointing.mapping import ShardedTensor, ShardedTensorFactory

from redi_megatron import runtime
from redi_megatron.checkpointing import commit_checkpoint, staging_dir, write_versions
from redi_megatron.config import ModelConfig, ParallelConfig
from redi_megatron.qwen.architecture import QwenArchitecture
from redi_megatron.qwen.model import build_model_chunks, transformer_config

CPU = runtime.Accelerators(cuda=False, transformer_engine=False, apex=False)
# The dict key a one-chunk model's tensors live under (as redi_megatron.checkpointing saves them).
MODEL_KEY = "model"


def start_single_process() -> None:
    """Initialises a one-process gloo group and TP=1/PP=1 Megatron state (once per process)."""
    runtime.init_distributed(CPU)
    runtime.init_parallel_state(ParallelConfig(), seed=0)


def skeleton(arch: QwenArchitecture, dtype: torch.dtype, padded_vocab_size: int) -> Dict[str, Any]:
    """Returns the TP=1/PP=1 sharded state dict of ``arch`` with meta tensors of ``dtype``."""
    precision = "bf16" if dtype == torch.bfloat16 else "fp32"
    config = transformer_config(arch, ParallelConfig(), ModelConfig(), CPU, precision)
    with torch.device("meta"):
        (model,) = build_model_chunks(arch, config, CPU, padded_vocab_size)
    return model.sharded_state_dict()


def fill(entry, tensor: torch.Tensor, name: str) -> None:
    """Puts ``tensor`` into a skeleton entry after checking it has the entry's shape and dtype."""
    expected = entry.data
    if tuple(tensor.shape) != tuple(expected.shape) or tensor.dtype != expected.dtype:
        raise ValueError(f"{name}: got {tuple(tensor.shape)} {tensor.dtype}, the Megatron model "
                         f"expects {tuple(expected.shape)} {expected.dtype}")
    entry.data = tensor


def write_checkpoint(root: str, iteration: int, state: Dict[str, Any],
                     train_state: Dict[str, Any]) -> str:
    """Returns the checkpoint directory after saving ``state`` and committing the tracker file.

    The save goes to ``iter_N.tmp`` and is renamed only once complete, as
    redi_megatron.checkpointing does, so an interrupted conversion never looks like a checkpoint.
    """
    staging = staging_dir(root, iteration)
    dist_checkpointing.save({MODEL_KEY: state, "train_state": train_state}, staging)
    write_versions(staging)
    return commit_checkpoint(root, iteration)


def checkpoint_vocab_and_dtype(directory: str):
    """Returns (padded vocabulary size, dtype) of the embedding stored in a dist-checkpoint."""
    metadata = dist_checkpointing.load_tensors_metadata(directory)
    embedding = metadata["embedding.word_embeddings.weight"]
    return embedding.global_shape[0], embedding.dtype


def _request_shards(entry) -> List[ShardedTensor]:
    """Returns the shards of a skeleton entry as plain ShardedTensors with empty data.

    Layer tensors carry a prepended layer axis, which Megatron's legacy (regular-grid) load path
    can only read for all layers at once; stating the layer axis in the shard's own shape and
    dropping the grid lets torch DCP read a single layer. The SwiGLU factory is expanded into
    its gate and up shards.
    """
    shards = entry.build() if isinstance(entry, ShardedTensorFactory) else [entry]
    plain = []
    for shard in shards:
        shape = (1,) * shard.prepend_axis_num + tuple(shard.local_shape)
        plain.append(ShardedTensor(
            key=shard.key, data=torch.empty(shape, dtype=shard.dtype), dtype=shard.dtype,
            local_shape=shape, global_shape=shard.global_shape, global_offset=shard.global_offset,
            axis_fragmentations=None, replica_id=shard.replica_id,
        ))
    return plain


def read_tensors(directory: str, entries: Dict[str, Any],
                 names: Iterable[str]) -> Dict[str, torch.Tensor]:
    """Returns the full TP=1 tensors ``names`` (skeleton entries) loaded from a dist-checkpoint."""
    request = {name: _request_shards(entries[name]) for name in names}
    # A partial request does not cover every tensor, so the whole-state access check must be off.
    loaded = dist_checkpointing.load({MODEL_KEY: request}, directory,
                                     validate_access_integrity=False)[MODEL_KEY]
    tensors = {}
    for name in names:
        ndim = entries[name].data.dim()
        parts = [part.reshape(part.shape[part.dim() - ndim:]) for part in loaded[name]]
        tensors[name] = torch.cat(parts) if len(parts) > 1 else parts[0]
    return tensors
