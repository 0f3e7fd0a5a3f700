"""The trainable engine of a run: model chunks in Megatron DDP, optimizer and LR schedule."""

from dataclasses import dataclass
from typing import List, Optional, Tuple

import torch
from megatron.core.distributed import (
    DistributedDataParallel,
    DistributedDataParallelConfig,
    finalize_model_grads,
)
from megatron.core.optimizer import OptimizerConfig, get_megatron_optimizer
from megatron.core.optimizer_param_scheduler import OptimizerParamScheduler
from megatron.core.transformer.transformer_config import TransformerConfig

from redi_megatron import runtime
from redi_megatron.config import RunConfig
from redi_megatron.qwen.architecture import QwenArchitecture, architecture_from_model_config
from redi_megatron.qwen.model import build_model_chunks, transformer_config
from redi_megatron.runtime import Accelerators
from redi_megatron.sequence_trimming import sequence_multiple


@dataclass
class Engine:
    config: RunConfig
    arch: QwenArchitecture
    accelerators: Accelerators
    transformer_config: TransformerConfig
    chunks: List[DistributedDataParallel]
    optimizer: object
    scheduler: OptimizerParamScheduler
    total_steps: int

    @property
    def sequence_multiple(self) -> int:
        """The multiple a step's trimmed sequence length is rounded up to (see sequence_trimming)."""
        p = self.config.parallel
        return sequence_multiple(self.config.data.pad_to_multiple_of, p.tensor,
                                 p.sequence_parallel, p.context)

    @property
    def device(self) -> torch.device:
        return torch.device("cuda", torch.cuda.current_device()) if self.accelerators.cuda \
            else torch.device("cpu")


def wrap_in_ddp(chunks, tconfig: TransformerConfig, distributed_optimizer: bool):
    """Returns the chunks wrapped in Megatron DDP, with the schedule hooks set on ``tconfig``."""
    ddp_config = DistributedDataParallelConfig(
        grad_reduce_in_fp32=True,
        overlap_grad_reduce=False,
        use_distributed_optimizer=distributed_optimizer,
    )
    wrapped = [
        DistributedDataParallel(config=tconfig, ddp_config=ddp_config, module=chunk,
                                disable_bucketing=index > 0)
        for index, chunk in enumerate(chunks)
    ]
    tconfig.finalize_model_grads_func = finalize_model_grads
    tconfig.no_sync_func = [c.no_sync for c in wrapped] if len(wrapped) > 1 else wrapped[0].no_sync
    return wrapped


def build_optimizer(config: RunConfig, chunks, tconfig: TransformerConfig, total_steps: int):
    """Returns (Megatron AdamW optimizer, linear warmup + linear decay scheduler)."""
    o = config.optim
    optimizer = get_megatron_optimizer(
        OptimizerConfig(
            optimizer="adam",
            lr=o.lr,
            min_lr=o.min_lr,
            weight_decay=o.weight_decay,
            adam_beta1=o.adam_beta1,
            adam_beta2=o.adam_beta2,
            adam_eps=o.adam_eps,
            clip_grad=o.clip_grad,
            bf16=tconfig.bf16,
            params_dtype=tconfig.params_dtype,
            use_distributed_optimizer=config.parallel.distributed_optimizer,
        ),
        chunks,
    )
    tconfig.grad_scale_func = optimizer.scale_loss
    warmup = int(o.warmup_fraction * total_steps)
    scheduler = OptimizerParamScheduler(
        optimizer,
        init_lr=0.0,
        max_lr=o.lr,
        min_lr=o.min_lr,
        lr_warmup_steps=warmup,
        lr_decay_steps=max(total_steps, warmup + 1),
        lr_decay_style="linear",
        start_wd=o.weight_decay,
        end_wd=o.weight_decay,
        wd_incr_steps=max(total_steps, 1),
        wd_incr_style="constant",
    )
    return optimizer, scheduler


def start_runtime(config: RunConfig) -> Tuple[QwenArchitecture, Accelerators]:
    """Returns (architecture, accelerators) after starting process groups and parallel state."""
    arch = architecture_from_model_config(config.model)
    return arch, runtime.start(config.parallel, arch, config.train.seed,
                               attention=config.model.attention)


def build_engine(config: RunConfig, total_steps: int,
                 started: Optional[Tuple[QwenArchitecture, Accelerators]] = None) -> Engine:
    """Returns the engine for ``config``, starting the runtime unless ``started`` is given."""
    arch, accelerators = started or start_runtime(config)
    tconfig = transformer_config(arch, config.parallel, config.model, accelerators,
                                 config.train.precision, config.train.fp8)
    padded_vocab = arch.padded_vocab_size(config.model.make_vocab_size_divisible_by,
                                          config.parallel.tensor)
    chunks = build_model_chunks(arch, tconfig, accelerators, padded_vocab, config.model.attention)
    chunks = wrap_in_ddp(chunks, tconfig, config.parallel.distributed_optimizer)
    optimizer, scheduler = build_optimizer(config, chunks, tconfig, total_steps)
    return Engine(config, arch, accelerators, tconfig, chunks, optimizer, scheduler, total_steps)
