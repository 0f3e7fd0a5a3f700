"""Offline reference log-probs for DPO: one forward pass of a checkpoint over every pair."""

import os

import numpy as np
import torch
from megatron.core import parallel_state
from tqdm import tqdm

from redi_megatron.checkpointing import load_checkpoint
from redi_megatron.config import ConfigError, RunConfig
from redi_megatron.engine import build_engine, start_runtime
from redi_megatron.loss_head import token_logprobs
from redi_megatron.objectives import sequence_logprob_sums
from redi_megatron.training_step import run_schedule


def _sequence_sums(engine, model, batch, output_tensor):
    logp = token_logprobs(model, output_tensor, batch["labels"], engine.config.loss,
                          engine.arch.vocab_size)
    sums, _ = sequence_logprob_sums(logp, batch["loss_mask"], batch.get("sequence_ids"),
                                    batch.get("num_sequences"))
    zero = sums.sum() * 0.0
    return zero, torch.tensor(1, dtype=torch.int, device=sums.device), {"sums": sums.detach()}


def _rank_sums(engine, micro_batch) -> torch.Tensor:
    """Returns this DP rank's per-sequence completion log-prob sums, on every pipeline stage."""
    store = run_schedule(engine, [micro_batch], _sequence_sums, forward_only=True)
    sequences = int(micro_batch.get("num_sequences", micro_batch["tokens"].shape[0]))
    sums = store[0]["sums"].double() if store else torch.zeros(sequences, dtype=torch.float64,
                                                                device=engine.device)
    torch.distributed.all_reduce(sums, group=parallel_state.get_pipeline_model_parallel_group())
    return sums


def compute_reference_logprobs(config: RunConfig) -> str:
    """Returns the path of <data.path>.ref_logps.npy written from checkpoint.load's weights.

    Rows follow the shard's pair order; pairs too long for data.seq_length (or data.pack_tokens)
    get NaN (the loader never serves them).
    """
    from redi_megatron.data.micro_batches import MicroBatchLoader

    if not config.checkpoint.load:
        raise ConfigError("checkpoint.load must name the reference (SFT) checkpoint")
    arch, accelerators = start_runtime(config)
    dp_rank = parallel_state.get_data_parallel_rank()
    dp_size = parallel_state.get_data_parallel_world_size()
    per_rank = config.data.micro_batch_size
    loader = MicroBatchLoader(config.data.path, seq_length=config.data.seq_length,
                              micro_batch_size=per_rank, global_batch_size=per_rank * dp_size,
                              dp_rank=dp_rank, dp_size=dp_size, seed=0,
                              pack_tokens=config.data.pack_tokens)
    if loader.kind != "pairs":
        raise ConfigError(f"data.path={config.data.path} holds '{loader.kind}' shards, not pairs")
    engine = build_engine(config, total_steps=1, started=(arch, accelerators))
    load_checkpoint(config.checkpoint.load, engine.chunks, weights_only=True)
    for chunk in engine.chunks:
        chunk.eval()
    dataset = loader.dataset
    result = np.full((len(dataset.shards), 2), np.nan, dtype=np.float32)
    step = per_rank * dp_size
    is_writer = torch.distributed.get_rank() == 0
    with torch.no_grad():
        for start in tqdm(range(0, len(dataset), step), disable=not is_writer, desc="reference"):
            samples = np.arange(start, start + step) % len(dataset)
            mine = samples[dp_rank * per_rank:(dp_rank + 1) * per_rank]
            sums = _rank_sums(engine, loader.micro_batch(mine))
            gathered = [torch.empty_like(sums) for _ in range(dp_size)]
            torch.distributed.all_gather(
                gathered, sums, group=parallel_state.get_data_parallel_group())
            pairs = torch.cat(gathered).view(-1, 2).cpu().numpy()
            for sample, row in zip(samples[:len(dataset) - start], pairs):
                result[dataset.indices[sample]] = row
    path = f"{config.data.path}.ref_logps.npy"
    if is_writer:
        tmp = path + ".tmp.npy"
        np.save(tmp, result)
        os.replace(tmp, path)
    torch.distributed.barrier()
    return path
