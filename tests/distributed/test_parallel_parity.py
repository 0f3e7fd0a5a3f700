"""TP, TP+SP, PP (with virtual stages) and DP (with the distributed optimizer) equal one process.

A single-process run fixes the reference: weights (saved as a checkpoint), the gradients of the
first step and the losses of three optimizer steps, for the SFT and the REDI objectives. Two
gloo processes then run every layout from the same weights and data. Attention is model.attention's
default (SdpaAttention on CPU) everywhere but in tp2_sp_local_attention, where Megatron's local
attention must reproduce the SDPA reference.
"""

import os

import pytest
import torch

from harness import (TINY_MODEL, assert_gradients_close, full_gradients, run_spawned,
                     split_micro_batches, synthetic_batch)

SEQ_LENGTH = 32
STEPS = 3
OBJECTIVES = {
    # SFT through the unfused loss head, REDI through the fused gradient-in-forward one (chunk <
    # tokens).
    "sft": dict(kind="sft", rows=4, rows_per_micro_batch=1, extra=["loss.fused=false"]),
    "redi": dict(kind="pairs", rows=8, rows_per_micro_batch=2,
                 extra=["loss.objective=redi", "loss.alpha=0.8", "loss.fused=true",
                        "loss.chunk_size=24"]),
}
LAYOUTS = {
    "tp2": ["parallel.tensor=2"],
    "tp2_sp": ["parallel.tensor=2", "parallel.sequence_parallel=true"],
    "tp2_sp_local_attention": ["parallel.tensor=2", "parallel.sequence_parallel=true",
                               "model.attention=local"],
    "pp2": ["parallel.pipeline=2"],
    "pp2_vpp2": ["parallel.pipeline=2", "parallel.virtual_pipeline=2"],
    "dp2": [],
    "dp2_distributed_optimizer": ["parallel.distributed_optimizer=true"],
}
GRAD_RTOL = 1e-5
LOSS_RTOL = 1e-5


def _config(objective, layout_overrides):
    from redi_megatron.config import load_config

    spec = OBJECTIVES[objective]
    return load_config(None, TINY_MODEL + spec["extra"] + layout_overrides + [
        f"data.seq_length={SEQ_LENGTH}", "optim.lr=1e-3", "optim.warmup_fraction=0.0",
        "train.precision=fp32",
    ])


def _batches(objective, step, dp_rank, dp_size):
    spec = OBJECTIVES[objective]
    batch = synthetic_batch(spec["kind"], spec["rows"], SEQ_LENGTH, 500, seed=100 + step)
    return split_micro_batches(batch, dp_rank, dp_size, spec["rows_per_micro_batch"])


def _run(engine, objective, dp_rank, dp_size, with_gradients):
    from redi_megatron.training_step import forward_backward, optimizer_update, train_step

    metrics = forward_backward(engine, _batches(objective, 0, dp_rank, dp_size))
    gradients = full_gradients(engine) if with_gradients else None
    losses = [optimizer_update(engine, metrics)["loss"]]
    for step in range(1, STEPS):
        losses.append(train_step(engine, _batches(objective, step, dp_rank, dp_size))["loss"])
    return losses, gradients


def _reference(rank, world_size, workdir):
    from redi_megatron.checkpointing import save_checkpoint
    from redi_megatron.engine import build_engine

    for objective in OBJECTIVES:
        engine = build_engine(_config(objective, []), total_steps=10)
        if objective == "sft":
            save_checkpoint(os.path.join(workdir, "weights"), 0, engine.chunks)
        else:
            from redi_megatron.checkpointing import load_checkpoint
            load_checkpoint(os.path.join(workdir, "weights"), engine.chunks, engine.optimizer,
                            weights_only=True)
        losses, gradients = _run(engine, objective, 0, 1, with_gradients=True)
        torch.save({"losses": losses, "gradients": gradients},
                   os.path.join(workdir, f"reference_{objective}.pt"))


def _layouts(rank, world_size, workdir):
    from megatron.core import parallel_state

    from redi_megatron.checkpointing import load_checkpoint
    from redi_megatron.engine import build_engine

    for objective in OBJECTIVES:
        reference = torch.load(os.path.join(workdir, f"reference_{objective}.pt"))
        for layout, overrides in LAYOUTS.items():
            label = f"{objective}/{layout}"
            engine = build_engine(_config(objective, overrides), total_steps=10)
            load_checkpoint(os.path.join(workdir, "weights"), engine.chunks, engine.optimizer,
                            weights_only=True)
            dp_rank = parallel_state.get_data_parallel_rank()
            dp_size = parallel_state.get_data_parallel_world_size()
            with_gradients = "distributed_optimizer" not in layout
            losses, gradients = _run(engine, objective, dp_rank, dp_size, with_gradients)
            torch.testing.assert_close(torch.tensor(losses), torch.tensor(reference["losses"]),
                                       rtol=LOSS_RTOL, atol=0, msg=lambda m: f"{label}: {m}")
            if with_gradients:
                assert_gradients_close(gradients, reference["gradients"], GRAD_RTOL, label)
            if rank == 0:
                print(f"{label}: losses {losses} match", flush=True)
            if objective == "sft" and layout == "tp2":
                _save_trained_tp2(engine, workdir, dp_rank, dp_size)
    _reload_tp2_checkpoint(workdir)


def _eval_loss(engine, dp_rank, dp_size):
    from redi_megatron.training_step import forward_backward

    return forward_backward(engine, _batches("sft", 7, dp_rank, dp_size), forward_only=True)["loss"]


def _save_trained_tp2(engine, workdir, dp_rank, dp_size):
    from redi_megatron.checkpointing import save_checkpoint

    save_checkpoint(os.path.join(workdir, "trained_tp2"), STEPS, engine.chunks, engine.optimizer,
                    engine.scheduler)
    torch.save(_eval_loss(engine, dp_rank, dp_size), os.path.join(workdir, "trained_tp2_loss.pt"))


def _reload_tp2_checkpoint(workdir):
    """A checkpoint saved at TP=2 loads at TP=1 (DP=2) and at PP=2 with the same loss."""
    from megatron.core import parallel_state

    from redi_megatron.checkpointing import load_checkpoint
    from redi_megatron.engine import build_engine

    expected = torch.load(os.path.join(workdir, "trained_tp2_loss.pt"))
    for layout in ("dp2", "pp2"):
        engine = build_engine(_config("sft", LAYOUTS[layout]), total_steps=10)
        load_checkpoint(os.path.join(workdir, "trained_tp2"), engine.chunks, engine.optimizer,
                        weights_only=True)
        loss = _eval_loss(engine, parallel_state.get_data_parallel_rank(),
                          parallel_state.get_data_parallel_world_size())
        assert loss == pytest.approx(expected, rel=1e-6), f"TP=2 checkpoint reloaded at {layout}"


@pytest.mark.timeout(600)
def test_every_layout_matches_single_process(tmp_path):
    workdir = str(tmp_path)
    run_spawned(_reference, 1, workdir, error_dir=os.path.join(workdir, "errors_reference"))
    run_spawned(_layouts, 2, workdir, error_dir=os.path.join(workdir, "errors_layouts"))
