"""The training run: data, engine, resume, steps, checkpoints and a save on a stop request."""

import time
from typing import List

import torch
from megatron.core import parallel_state

from redi_megatron.checkpointing import (copy_hf_source, latest_iteration, load_checkpoint,
                                         save_checkpoint, write_hf_source)
from redi_megatron.config import ConfigError, RunConfig, config_to_dict
from redi_megatron.engine import build_engine, start_runtime
from redi_megatron.objectives import PAIR_OBJECTIVES
from redi_megatron.run_logging import RunLogger
from redi_megatron.stop_request import StopRequest, shield_checkpoint_writer, signals_deferred
from redi_megatron.training_step import train_step


def build_loader(config: RunConfig, arch):
    """Returns this data-parallel rank's micro-batch loader, checked against the objective."""
    from redi_megatron.data.micro_batches import MicroBatchLoader

    if not config.data.path:
        raise ConfigError("data.path is empty: set it to a shard prefix from tools/preprocess_data.py")
    data, parallel = config.data, config.parallel
    dp_size = parallel_state.get_data_parallel_world_size()
    if data.global_batch_size % (data.micro_batch_size * dp_size):
        raise ConfigError(
            f"data.global_batch_size={data.global_batch_size} is not divisible by "
            f"data.micro_batch_size={data.micro_batch_size} x {dp_size} data-parallel ranks "
            f"({torch.distributed.get_world_size()} processes / (parallel.tensor={parallel.tensor} "
            f"x parallel.pipeline={parallel.pipeline} x parallel.context={parallel.context})): "
            "change the batch sizes or the number of processes")
    loader = MicroBatchLoader(
        config.data.path,
        seq_length=config.data.seq_length,
        micro_batch_size=config.data.micro_batch_size,
        global_batch_size=config.data.global_batch_size,
        dp_rank=parallel_state.get_data_parallel_rank(),
        dp_size=parallel_state.get_data_parallel_world_size(),
        seed=config.data.seed,
        pack_tokens=config.data.pack_tokens,
    )
    wanted = "pairs" if config.loss.objective in PAIR_OBJECTIVES else "sft"
    if loader.kind != wanted:
        raise ConfigError(f"loss.objective={config.loss.objective} needs '{wanted}' shards, but "
                          f"data.path={config.data.path} holds '{loader.kind}' shards")
    vocab = loader.dataset.metadata.get("vocab_size")
    if vocab is not None and vocab > arch.vocab_size:
        raise ConfigError(f"the tokenizer's vocabulary ({vocab}) is larger than the model's "
                          f"vocab_size ({arch.vocab_size})")
    return loader


def _total_steps(config: RunConfig, num_samples: int) -> int:
    steps_per_epoch = num_samples // config.data.global_batch_size
    if steps_per_epoch == 0:
        raise ConfigError(f"data.global_batch_size={config.data.global_batch_size} exceeds the "
                          f"{num_samples} samples of {config.data.path}")
    if config.train.train_steps:
        return config.train.train_steps
    return max(1, int(config.train.epochs * steps_per_epoch))


def _resume(config: RunConfig, engine, loader) -> int:
    """Returns the step to continue from, after loading what the checkpoint settings ask for."""
    ckpt = config.checkpoint
    if ckpt.save and latest_iteration(ckpt.save) is not None:
        state = load_checkpoint(ckpt.save, engine.chunks, engine.optimizer, engine.scheduler,
                                load_optimizer_state=ckpt.load_optimizer)
    elif ckpt.load:
        state = load_checkpoint(ckpt.load, engine.chunks, engine.optimizer, engine.scheduler,
                                weights_only=ckpt.finetune,
                                load_optimizer_state=ckpt.load_optimizer)
        if ckpt.save:
            copy_hf_source(ckpt.load, ckpt.save)
    else:
        if ckpt.save:
            write_hf_source(ckpt.save, engine.arch.to_hf_config())
        return 0
    if not state:
        return 0
    loader.load_state_dict(state["loader"])
    return int(state["iteration"])


def _save(config: RunConfig, engine, loader, step: int) -> None:
    # A signal during the save is remembered, not acted on: the save always completes.
    with signals_deferred():
        save_checkpoint(config.checkpoint.save, step, engine.chunks, engine.optimizer,
                        engine.scheduler,
                        {"loader": loader.state_dict(), "config": config_to_dict(config)},
                        config.checkpoint.optimizer_format)
    if torch.distributed.get_rank() == 0:
        print(f"saved checkpoint {config.checkpoint.save} at step {step}", flush=True)


def train(config: RunConfig) -> List[dict]:
    """Returns the per-step metrics of a training run described by ``config``."""
    arch, accelerators = start_runtime(config)
    loader = build_loader(config, arch)
    total_steps = _total_steps(config, len(loader.dataset))
    last_step = min(total_steps, config.train.max_steps) if config.train.max_steps else total_steps
    saved = latest_iteration(config.checkpoint.save) if config.checkpoint.save else None
    if saved is not None and saved >= last_step:
        if torch.distributed.get_rank() == 0:
            print(f"the run is already complete at step {saved} (checkpoint.save="
                  f"{config.checkpoint.save}); nothing to train", flush=True)
        return []
    engine = build_engine(config, total_steps, (arch, accelerators))
    step = _resume(config, engine, loader)
    logger = RunLogger(config, arch, accelerators, torch.distributed.get_world_size(),
                       resumed_step=step)
    stop = StopRequest()
    if config.checkpoint.save:
        shield_checkpoint_writer()
    history, skipped_in_a_row = [], 0
    save_every = config.checkpoint.save_interval
    try:
        while step < last_step:
            started = time.perf_counter()
            metrics = train_step(engine, loader.next_global_batch())
            step += 1
            skipped_in_a_row = skipped_in_a_row + 1 if metrics["skipped"] else 0
            if skipped_in_a_row > config.train.max_skipped_steps:
                raise RuntimeError(f"{skipped_in_a_row} consecutive steps had a non-finite loss "
                                   f"(last at step {step}); stopping")
            logger.log(step, last_step, metrics, time.perf_counter() - started)
            history.append(dict(metrics, step=step))
            stopping = stop.requested_anywhere(engine.device)
            if config.checkpoint.save and (
                    stopping or step == last_step or (save_every and step % save_every == 0)):
                _save(config, engine, loader, step)
                # A request that arrived during this save needs no second one.
                stopping = stopping or stop.requested_anywhere(engine.device)
            if stopping:
                if config.checkpoint.save and step < last_step:
                    stop.acknowledge(step)
                break
    finally:
        logger.close()
    return history
