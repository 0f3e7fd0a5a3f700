"""Process start-up: torch.distributed, Megatron parallel state, and optional GPU libraries."""

import datetime
import os
import tempfile
from dataclasses import dataclass
from typing import Optional

import torch

from redi_megatron.config import ConfigError, ParallelConfig
from redi_megatron.cpu_shims import apply_cpu_shims
from redi_megatron.pipeline_split import first_and_last_stage_layers
from redi_megatron.qwen.architecture import QwenArchitecture


@dataclass(frozen=True)
class Accelerators:
    """What this process can use: CUDA, Transformer Engine, apex."""

    cuda: bool
    transformer_engine: bool
    apex: bool

    @property
    def backend(self) -> str:
        return "nccl" if self.cuda else "gloo"


_LAYERS = {"te": "Transformer Engine layers", "sdpa": "local layer spec with SDPA attention",
           "local": "local layer spec with Megatron's attention"}


def describe(accelerators: Accelerators, attention: str) -> str:
    """Returns one line naming the device, backend and layer implementation in use.

    ``attention`` is the resolved ``model.attention`` (te, sdpa or local).
    """
    layers = _LAYERS[attention]
    norms = ", apex" if accelerators.apex else ""
    device = "CUDA" if accelerators.cuda else "CPU (megatron-core CUDA shims active)"
    return f"{device}, {accelerators.backend}, {layers}{norms}"


def _importable(module: str) -> bool:
    # A TE wheel without a GPU raises OSError/RuntimeError at import, not only ImportError.
    try:
        __import__(module)
        return True
    except Exception:  # noqa: BLE001 - any failure means "not usable here"
        return False


def detect_accelerators() -> Accelerators:
    """Returns which of CUDA, Transformer Engine and apex this process can use."""
    cuda = torch.cuda.is_available()
    return Accelerators(
        cuda=cuda,
        transformer_engine=cuda and _importable("transformer_engine.pytorch"),
        apex=cuda and _importable("apex.normalization"),
    )


def _launch_env():
    """Returns (rank, world_size, local_rank) from torchrun or Slurm variables (1 process if none)."""
    if "RANK" in os.environ and "WORLD_SIZE" in os.environ:
        return (int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"]),
                int(os.environ.get("LOCAL_RANK", 0)))
    if "SLURM_PROCID" in os.environ and "SLURM_NTASKS" in os.environ and "MASTER_ADDR" in os.environ:
        return (int(os.environ["SLURM_PROCID"]), int(os.environ["SLURM_NTASKS"]),
                int(os.environ.get("SLURM_LOCALID", 0)))
    return 0, 1, 0


def init_distributed(accelerators: Accelerators, timeout_minutes: int = 30) -> None:
    """Initialises the default process group (NCCL on GPU, gloo on CPU) once per process."""
    if torch.distributed.is_initialized():
        return
    rank, world_size, local_rank = _launch_env()
    if accelerators.cuda:
        torch.cuda.set_device(local_rank)
    if world_size == 1 and "MASTER_PORT" not in os.environ:
        # One process needs no rendezvous port: a file store cannot race another process for it.
        init_method = f"file://{tempfile.mkdtemp(prefix='redi_megatron_')}/store"
    else:
        if "MASTER_PORT" not in os.environ:
            raise ConfigError("MASTER_PORT is not set for a multi-process launch")
        os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
        init_method = "env://"
    torch.distributed.init_process_group(
        backend=accelerators.backend,
        init_method=init_method,
        rank=rank,
        world_size=world_size,
        timeout=datetime.timedelta(minutes=timeout_minutes),
    )


def validate_layout(arch: QwenArchitecture, parallel: ParallelConfig, world_size: int) -> None:
    """Raises ConfigError naming the numbers when the parallel layout cannot hold the model."""
    tp, pp, cp = parallel.tensor, parallel.pipeline, parallel.context
    if arch.num_attention_heads % tp:
        raise ConfigError(
            f"parallel.tensor={tp} must divide the number of attention heads "
            f"({arch.num_attention_heads})"
        )
    if arch.num_key_value_heads % tp:
        raise ConfigError(
            f"parallel.tensor={tp} must divide the number of key/value heads "
            f"({arch.num_key_value_heads})"
        )
    if arch.intermediate_size % tp:
        raise ConfigError(
            f"parallel.tensor={tp} must divide intermediate_size ({arch.intermediate_size})"
        )
    first_and_last_stage_layers(arch.num_layers, parallel)
    model_parallel = tp * pp * cp
    if world_size % model_parallel:
        raise ConfigError(
            f"world size {world_size} is not divisible by parallel.tensor x parallel.pipeline x "
            f"parallel.context = {tp} x {pp} x {cp} = {model_parallel}"
        )


def init_parallel_state(parallel: ParallelConfig, seed: int) -> None:
    """Builds Megatron's tensor/pipeline/context/data-parallel groups and seeds its RNG tracker."""
    from megatron.core import parallel_state, tensor_parallel

    apply_cpu_shims()
    if parallel_state.model_parallel_is_initialized():
        parallel_state.destroy_model_parallel()
    parallel_state.initialize_model_parallel(
        tensor_model_parallel_size=parallel.tensor,
        pipeline_model_parallel_size=parallel.pipeline,
        virtual_pipeline_model_parallel_size=parallel.virtual_pipeline,
        context_parallel_size=parallel.context,
    )
    tensor_parallel.model_parallel_cuda_manual_seed(seed)


def start(parallel: ParallelConfig, arch: QwenArchitecture, seed: int,
          accelerators: Optional[Accelerators] = None, attention: str = "auto") -> Accelerators:
    """Returns the accelerators after initialising torch.distributed and Megatron's parallel state."""
    from redi_megatron.qwen.attention import resolve_attention  # imports megatron (slow)

    accelerators = accelerators or detect_accelerators()
    resolved = resolve_attention(attention, accelerators)
    init_distributed(accelerators)
    validate_layout(arch, parallel, torch.distributed.get_world_size())
    init_parallel_state(parallel, seed)
    if torch.distributed.get_rank() == 0:
        print(f"redi_megatron: {describe(accelerators, resolved)}; world size "
              f"{torch.distributed.get_world_size()}", flush=True)
    return accelerators
