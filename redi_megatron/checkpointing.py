"""Megatron distributed checkpoints: save, find the latest complete one, and load at any layout.

Layout of a checkpoint root:
    latest_checkpointed_iteration.txt   the iteration of the newest *complete* checkpoint
    iter_0000200/                       one dist-checkpoint (model, optimizer, scheduler, RNG, data)
    hf_source/                          config.json and tokenizer files of the source HF model

A save writes ``iter_N.tmp`` and renames it to ``iter_N`` only when every rank has finished;
the tracker file is replaced atomically after that, so it never names a half-written checkpoint.

Distributed-optimizer state is saved in one of megatron-core's two supported formats (the same
ones Megatron-LM offers; both read and written by megatron-core 0.16 and 0.19):
- ``dp_reshardable`` (default): each rank writes its own optimizer buckets, in parallel and
  without communication. It reloads only under the same tensor/pipeline split of the model.
- ``fully_reshardable``: gathers each parameter's optimizer state over the data-parallel group
  (in CPU memory) and stores it in model space, so it reloads at any TP/PP/VPP/DP layout.
Non-distributed optimizers store model-space state, which reloads at any layout.
"""

import contextlib
import json
import os
import random
import shutil
from typing import Any, Dict, List, Optional

import megatron.core
import numpy as np
import torch
from megatron.core import dist_checkpointing, parallel_state, tensor_parallel
from megatron.core.dist_checkpointing.mapping import ShardedObject
from megatron.core.utils import unwrap_model

from redi_megatron.config import OPTIMIZER_FORMATS
from redi_megatron.torch_adam_state import prepare_torch_adam

TRACKER_FILE = "latest_checkpointed_iteration.txt"
HF_SOURCE_DIR = "hf_source"
VERSIONS_FILE = "versions.json"
# Megatron's own common-state file; newer megatron-core (0.19) keeps that state inside the
# torch_dist files instead, which older releases cannot read.
_COMMON_STATE_FILE = "common.pt"


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


def _model_split(chunks: List[torch.nn.Module]) -> Dict[str, Any]:
    """Returns how the model is cut into shards, which dp_reshardable optimizer state depends on."""
    config = unwrap_model(chunks[0]).config
    return {
        "tensor": config.tensor_model_parallel_size,
        "pipeline": config.pipeline_model_parallel_size,
        "virtual_pipeline": config.virtual_pipeline_model_parallel_size,
        "layers_in_first_stage": config.num_layers_in_first_pipeline_stage,
        "layers_in_last_stage": config.num_layers_in_last_pipeline_stage,
    }


def _describe(split: Dict[str, Any]) -> str:
    return ", ".join(f"{key}={value}" for key, value in split.items())


def _is_distributed(optimizer) -> bool:
    return bool(getattr(getattr(optimizer, "config", None), "use_distributed_optimizer", False))


def _optimizer_record(optimizer, chunks: List[torch.nn.Module], optimizer_format: str):
    """Returns what a checkpoint records about its optimizer state (None without an optimizer)."""
    if optimizer is None:
        return None
    distributed = _is_distributed(optimizer)
    return {"distributed": distributed, "format": optimizer_format if distributed else None,
            "model_split": _model_split(chunks)}


def _optimizer_load_metadata(directory: str, saved: Optional[Dict[str, Any]], optimizer,
                             chunks: List[torch.nn.Module]) -> Dict[str, str]:
    """Returns the sharded_state_dict metadata that reads the saved optimizer state.

    Raises CheckpointError naming both layouts when the saved state cannot be read by this run.
    """
    if saved is None:  # written before the format was recorded: no distributed optimizer state
        return {}
    distributed = _is_distributed(optimizer)
    if saved["distributed"] != distributed:
        raise CheckpointError(
            f"{directory} holds {'distributed' if saved['distributed'] else 'non-distributed'} "
            f"optimizer state but parallel.distributed_optimizer={str(distributed).lower()}; set "
            f"parallel.distributed_optimizer={str(saved['distributed']).lower()} or "
            "checkpoint.load_optimizer=false (weights only, fresh optimizer state)")
    if not distributed:
        return {}
    current = _model_split(chunks)
    if saved["format"] == "dp_reshardable" and saved["model_split"] != current:
        raise CheckpointError(
            f"{directory} holds dp_reshardable optimizer state saved at "
            f"{_describe(saved['model_split'])}; it cannot be loaded at {_describe(current)}. "
            "Load with checkpoint.load_optimizer=false (weights only, fresh optimizer state), or "
            "resume at the saved layout and save with checkpoint.optimizer_format=fully_reshardable")
    return {"distrib_optim_sharding_type": saved["format"]}


def installed_versions() -> Dict[str, str]:
    """Returns the megatron-core and torch versions of this process."""
    # str(): torch.__version__ is a TorchVersion, which weights-only unpickling refuses.
    return {"megatron_core": str(megatron.core.__version__), "torch": str(torch.__version__)}


def write_versions(directory: str) -> None:
    """Writes versions.json (megatron-core, torch) into a checkpoint directory, readable by anything."""
    with open(os.path.join(directory, VERSIONS_FILE), "w", encoding="utf-8") as handle:
        json.dump(installed_versions(), handle)


def saved_versions(directory: str) -> Dict[str, str]:
    """Returns the versions a checkpoint was written with ({} when it does not record them)."""
    path = os.path.join(directory, VERSIONS_FILE)
    if not os.path.isfile(path):
        return {}
    with open(path, encoding="utf-8") as handle:
        return json.load(handle)


def _version_mismatch(directory: str) -> Optional[str]:
    """Returns why another megatron-core's checkpoint may be unreadable here, None if same version.

    megatron-core 0.19 keeps the common state inside its torch_dist files and writes no
    common.pt; 0.16 then fails deep inside megatron (an AttributeError).
    """
    saved, installed = saved_versions(directory), installed_versions()
    no_common = not os.path.isfile(os.path.join(directory, _COMMON_STATE_FILE))
    if saved.get("megatron_core") == installed["megatron_core"] or (not saved and not no_common):
        return None
    writer = (f"megatron-core {saved['megatron_core']} (torch {saved['torch']})" if saved
              else f"another megatron-core (it has no {_COMMON_STATE_FILE}, as newer releases write)")
    return (f"{directory} was written by {writer} and cannot be read by the installed "
            f"megatron-core {installed['megatron_core']} (torch {installed['torch']}); load it "
            "with the megatron-core version that wrote it")


@contextlib.contextmanager
def _explained_by_versions(directory: str):
    """Re-raises a failed read as CheckpointError naming both versions when they differ."""
    try:
        yield
    except Exception as error:  # noqa: BLE001 - reworded only when the versions explain it
        message = _version_mismatch(directory)
        if message is None:
            raise
        raise CheckpointError(f"{message} ({type(error).__name__}: {error})") from error


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
    optimizer_format: str = "dp_reshardable",
) -> str:
    """Returns the directory of the complete checkpoint written for ``iteration`` (all ranks call).

    ``optimizer_format`` (see the module docstring) applies to a distributed optimizer only.
    """
    if optimizer_format not in OPTIMIZER_FORMATS:
        raise ValueError(f"optimizer_format={optimizer_format!r} is not one of {OPTIMIZER_FORMATS}")
    staging = iteration_dir(root, iteration) + ".tmp"
    rank = torch.distributed.get_rank()
    if rank == 0:
        os.makedirs(root, exist_ok=True)
        staging_dir(root, iteration)
    torch.distributed.barrier()

    state = model_sharded_state_dict(chunks)
    if optimizer is not None:
        state["optimizer"] = optimizer.sharded_state_dict(
            state, metadata={"distrib_optim_sharding_type": optimizer_format})
    if scheduler is not None:
        state["scheduler"] = scheduler.state_dict()
    state["rng_state"] = _rng_sharded_object()
    state["train_state"] = dict(train_state or {}, iteration=iteration, layout=_layout(),
                                has_optimizer=optimizer is not None,
                                optimizer=_optimizer_record(optimizer, chunks, optimizer_format),
                                versions=installed_versions())
    dist_checkpointing.save(state, staging)
    torch.distributed.barrier()

    if rank == 0:
        write_versions(staging)
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
    with _explained_by_versions(directory):
        common = dist_checkpointing.load_common_state_dict(directory)
    saved_train_state = common.get("train_state", {})

    request = model_sharded_state_dict(chunks)
    load_optimizer = optimizer is not None and not weights_only and load_optimizer_state
    if load_optimizer:
        if not saved_train_state.get("has_optimizer"):
            raise CheckpointError(f"{directory} holds no optimizer state; load it with finetune=true")
        metadata = _optimizer_load_metadata(directory, saved_train_state.get("optimizer"),
                                            optimizer, chunks)
        if _is_distributed(optimizer):
            prepare_torch_adam(optimizer)
        request["optimizer"] = optimizer.sharded_state_dict(request, is_loading=True,
                                                            metadata=metadata)
    same_layout = saved_train_state.get("layout") == _layout()
    if not weights_only and same_layout:
        request["rng_state"] = _rng_sharded_object()
    with _explained_by_versions(directory):
        loaded = dist_checkpointing.load(request, directory)

    if len(chunks) == 1:
        unwrap_model(chunks[0]).load_state_dict(loaded["model"], strict=True)
    else:
        for i, chunk in enumerate(chunks):
            unwrap_model(chunk).load_state_dict(loaded[f"model{i}"], strict=True)
    if load_optimizer:
        # In fp32 the distributed optimizer's main parameters are views of the model parameters.
        with torch.no_grad():
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
