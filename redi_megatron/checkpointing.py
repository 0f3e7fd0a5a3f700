"""Megatron distributed checkpoints: save, find the latest complete one, and load at any layout.

Layout of a checkpoint root:
    latest_checkpointed_iteration.txt   the iteration of the newest *complete* checkpoint
    iter_0000200/                       one dist-checkpoint (model, optimizer, scheduler, RNG, data)
    hf_source/                          config.json and tokenizer files of the source HF model

A save writes ``iter_N.tmp`` and renames it to ``iter_N`` only when every rank has finished;
the tracker file is replaced atomically after that, so it never names a half-written checkpoint.
"""

import json
import os
import random
import shutil
from typing import Any, Dict, List, Optional

import numpy as np
import torch
from megatron.core import dist_checkpointing, parallel_state, tensor_parallel
from megatron.core.dist_checkpointing.mapping import ShardedObject
from megatron.core.utils import unwrap_model

TRACKER_FILE = "latest_checkpointed_iteration.txt"
HF_SOURCE_DIR = "hf_source"
_OPTIMIZER_METADATA = {"distrib_optim_sharding_type": "fully_sharded_model_space"}


class CheckpointError(RuntimeError):
    """A checkpoint that cannot be used, worded with its path."""


def iteration_dir(root: str, iteration: int) -> str:
    """Returns the directory of checkpoint ``iteration`` under ``root``."""
    return os.path.join(root, f"iter_{iteration:07d}")


def latest_iteration(root: str) -> Optional[int]:
    """Returns the iteration named by the tracker file, or None when ``root`` has no checkpoint."""
    tracker = os.path.join(root, TRACKER_FILE)
    if not os.path.isfile(tracker):
        return None
    with open(tracker, encoding="utf-8") as handle:
        text = handle.read().strip()
    try:
        iteration = int(text)
    except ValueError as error:
        raise CheckpointError(f"{tracker}: expected an iteration number, found {text!r}") from error
    if not os.path.isfile(os.path.join(iteration_dir(root, iteration), "metadata.json")):
        raise CheckpointError(f"{tracker} names iteration {iteration}, whose directory is incomplete")
    return iteration


def model_sharded_state_dict(chunks: List[torch.nn.Module]) -> Dict[str, Any]:
    """Returns the sharded state dict of the model chunks under 'model' or 'model0', 'model1', ..."""
    if len(chunks) == 1:
        return {"model": unwrap_model(chunks[0]).sharded_state_dict()}
    return {f"model{i}": unwrap_model(chunk).sharded_state_dict() for i, chunk in enumerate(chunks)}


def _layout() -> Dict[str, int]:
    return {
        "tensor": parallel_state.get_tensor_model_parallel_world_size(),
        "pipeline": parallel_state.get_pipeline_model_parallel_world_size(),
        "data": parallel_state.get_data_parallel_world_size(),
    }


def _rng_sharded_object() -> ShardedObject:
    state = {
        "python": random.getstate(),
        "numpy": np.random.get_state(),
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state() if torch.cuda.is_available() else None,
        "tracker": tensor_parallel.get_cuda_rng_tracker().get_states(),
    }
    pp, tp = _layout()["pipeline"], _layout()["tensor"]
    return ShardedObject(
        "rng_state",
        state,
        (pp, tp),
        (parallel_state.get_pipeline_model_parallel_rank(),
         parallel_state.get_tensor_model_parallel_rank()),
        replica_id=parallel_state.get_data_parallel_rank(),
    )


def _restore_rng(state: Dict[str, Any]) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if state["cuda"] is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"])
    tensor_parallel.get_cuda_rng_tracker().set_states(state["tracker"])


def staging_dir(root: str, iteration: int) -> str:
    """Returns an empty ``iter_N.tmp`` directory to save into (single writer; call on one rank)."""
    staging = iteration_dir(root, iteration) + ".tmp"
    shutil.rmtree(staging, ignore_errors=True)
    os.makedirs(staging)
    return staging


def commit_checkpoint(root: str, iteration: int) -> str:
    """Returns ``iter_N`` after renaming the complete staging dir and replacing the tracker file."""
    final = iteration_dir(root, iteration)
    shutil.rmtree(final, ignore_errors=True)
    os.replace(final + ".tmp", final)
    tracker_tmp = os.path.join(root, TRACKER_FILE + ".tmp")
    with open(tracker_tmp, "w", encoding="utf-8") as handle:
        handle.write(str(iteration))
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tracker_tmp, os.path.join(root, TRACKER_FILE))
    return final


def save_checkpoint(
    root: str,
    iteration: int,
    chunks: List[torch.nn.Module],
    optimizer=None,
    scheduler=None,
    train_state: Optional[Dict[str, Any]] = None,
) -> str:
    """Returns the directory of the complete checkpoint written for ``iteration`` (all ranks call)."""
    staging = iteration_dir(root, iteration) + ".tmp"
    rank = torch.distributed.get_rank()
    if rank == 0:
        os.makedirs(root, exist_ok=True)
        staging_dir(root, iteration)
    torch.distributed.barrier()

    state = model_sharded_state_dict(chunks)
    if optimizer is not None:
        state["optimizer"] = optimizer.sharded_state_dict(state, metadata=_OPTIMIZER_METADATA)
    if scheduler is not None:
        state["scheduler"] = scheduler.state_dict()
    state["rng_state"] = _rng_sharded_object()
    state["train_state"] = dict(train_state or {}, iteration=iteration, layout=_layout(),
                                has_optimizer=optimizer is not None)
    dist_checkpointing.save(state, staging)
    torch.distributed.barrier()

    if rank == 0:
        commit_checkpoint(root, iteration)
    torch.distributed.barrier()
    return iteration_dir(root, iteration)


def load_checkpoint(
    root: str,
    chunks: List[torch.nn.Module],
    optimizer=None,
    scheduler=None,
    weights_only: bool = False,
    iteration: Optional[int] = None,
    load_optimizer_state: bool = True,
) -> Dict[str, Any]:
    """Returns the saved train_state after loading the checkpoint into the model (and optimizer).

    Any tensor/pipeline layout can load any other: tensors are resharded by dist-checkpointing.
    ``weights_only`` loads the model alone (fine-tuning from a converted or SFT checkpoint).
    The optimizer state is loaded when ``optimizer`` is given, unless ``weights_only`` or not
    ``load_optimizer_state``; then the optimizer's main parameters are refreshed from the loaded
    weights instead. RNG states are loaded only when the layout is unchanged (they are per-rank).
    """
    if iteration is None:
        iteration = latest_iteration(root)
    if iteration is None:
        raise CheckpointError(f"no checkpoint under {root} (missing {TRACKER_FILE})")
    directory = iteration_dir(root, iteration)
    if not os.path.isdir(directory):
        raise CheckpointError(f"checkpoint directory {directory} does not exist")
    common = dist_checkpointing.load_common_state_dict(directory)
    saved_train_state = common.get("train_state", {})

    request = model_sharded_state_dict(chunks)
    load_optimizer = optimizer is not None and not weights_only and load_optimizer_state
    if load_optimizer:
        if not saved_train_state.get("has_optimizer"):
            raise CheckpointError(f"{directory} holds no optimizer state; load it with finetune=true")
        request["optimizer"] = optimizer.sharded_state_dict(
            request, is_loading=True, metadata=_OPTIMIZER_METADATA
        )
    same_layout = saved_train_state.get("layout") == _layout()
    if not weights_only and same_layout:
        request["rng_state"] = _rng_sharded_object()
    loaded = dist_checkpointing.load(request, directory)

    if len(chunks) == 1:
        unwrap_model(chunks[0]).load_state_dict(loaded["model"], strict=True)
    else:
        for i, chunk in enumerate(chunks):
            unwrap_model(chunk).load_state_dict(loaded[f"model{i}"], strict=True)
    if load_optimizer:
        optimizer.load_state_dict(loaded["optimizer"])
    elif optimizer is not None:
        # Main (fp32) parameter copies were made from the random init: refresh them.
        optimizer.reload_model_params()
    if scheduler is not None and not weights_only and "scheduler" in common:
        scheduler.load_state_dict(common["scheduler"])
    if "rng_state" in loaded:
        _restore_rng(loaded["rng_state"])
    return saved_train_state if not weights_only else {}


def write_hf_source(target_root: str, hf_config: Dict[str, Any]) -> None:
    """Writes hf_source/config.json (rank 0) unless present, so export works for runs from scratch."""
    target = os.path.join(target_root, HF_SOURCE_DIR)
    if torch.distributed.get_rank() == 0 and not os.path.isdir(target):
        os.makedirs(target)
        with open(os.path.join(target, "config.json"), "w", encoding="utf-8") as handle:
            json.dump(hf_config, handle, indent=2)


def copy_hf_source(source_root: str, target_root: str) -> None:
    """Copies the hf_source directory (config and tokenizer files) between checkpoint roots."""
    source = os.path.join(source_root, HF_SOURCE_DIR)
    target = os.path.join(target_root, HF_SOURCE_DIR)
    if os.path.isdir(source) and not os.path.isdir(target) and torch.distributed.get_rank() == 0:
        shutil.copytree(source, target)
