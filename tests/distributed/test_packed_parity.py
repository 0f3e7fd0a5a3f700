"""Packed rows equal padded rows: loss, logged metrics and gradients, SFT and REDI, every layout.

The reference is one process on padded rows through Megatron's local attention. The same
weights and the same global batches (the real loader, the same shards and seed) then run packed
(data.pack_tokens, THD through the SDPA attention's per-document path) at TP=1 in one process and
at TP=2+SP, PP=2 and DP=2 in two: the same losses and metrics over two optimizer steps and the
same per-tensor gradients of the first (fp32, relative error <= 1e-5).
"""

import os

import pytest
import torch

from harness import TINY_MODEL, assert_gradients_close, full_gradients, run_spawned
from shard_fixtures import write_random_shards

# Row budgets under which some micro-batches fill one row and others two (documents <= 29 tokens).
PACK_TOKENS = {"sft": 40, "redi": 72}
OBJECTIVES = {
    # SFT through the unfused loss head, REDI through the fused chunked one (chunk < tokens).
    "sft": ["data.micro_batch_size=2", "data.global_batch_size=8", "loss.fused=false"],
    "redi": ["data.micro_batch_size=2", "data.global_batch_size=4", "loss.objective=redi",
             "loss.alpha=0.8", "loss.fused=true", "loss.chunk_size=24"],
}
PACKED_LAYOUTS = {
    "tp2_sp": ["parallel.tensor=2", "parallel.sequence_parallel=true"],
    "pp2": ["parallel.pipeline=2"],
    "dp2": [],
}
RTOL = 1e-5
COMPUTE_DEPENDENT = ("processed_tokens",)  # the positions computed: what packing changes


def _config(workdir, objective, overrides):
    from redi_megatron.config import load_config

    kind = "sft" if objective == "sft" else "pairs"
    return load_config(None, TINY_MODEL + OBJECTIVES[objective] + overrides + [
        f"data.path={os.path.join(workdir, kind)}", "data.seq_length=32", "data.pad_to_multiple_of=8",
        "optim.lr=1e-3", "optim.warmup_fraction=0.0", "train.precision=fp32",
    ])


def _run(config, workdir, save_weights=False):
    """Returns (metrics of two steps, first-step gradients, rows per micro-batch of step 1)."""
    from redi_megatron.checkpointing import load_checkpoint, save_checkpoint
    from redi_megatron.engine import build_engine
    from redi_megatron.training import build_loader
    from redi_megatron.training_step import forward_backward, optimizer_update, train_step

    engine = build_engine(config, total_steps=10)
    weights = os.path.join(workdir, "weights")
    if save_weights:
        save_checkpoint(weights, 0, engine.chunks)
    else:
        load_checkpoint(weights, engine.chunks, engine.optimizer, weights_only=True)
    loader = build_loader(config, engine.arch)
    first = loader.next_global_batch()
    metrics = forward_backward(engine, first)
    gradients = full_gradients(engine)
    history = [optimizer_update(engine, metrics), train_step(engine, loader.next_global_batch())]
    return history, gradients, [batch["tokens"].shape[0] for batch in first]


def _assert_same(label, got, want):
    history, gradients, _ = got
    ref_history, ref_gradients, _ = want
    for step, (metrics, reference) in enumerate(zip(history, ref_history, strict=True)):
        assert metrics.keys() == reference.keys(), label
        for key, value in reference.items():
            if key not in COMPUTE_DEPENDENT:
                assert metrics[key] == pytest.approx(value, rel=RTOL, abs=1e-7), \
                    f"{label}: step {step + 1} {key} {metrics[key]} != padded {value}"
    assert_gradients_close(gradients, ref_gradients, RTOL, label)
    worst = max(float((gradients[k] - g).norm() / g.norm().clamp_min(1e-30)) for k, g in ref_gradients.items())
    if torch.distributed.get_rank() == 0:
        print(f"{label}: losses {[m['loss'] for m in history]}, worst gradient relative error {worst:.1e}",
              flush=True)


def _reference(rank, world_size, workdir):
    for objective in OBJECTIVES:
        padded = _run(_config(workdir, objective, ["model.attention=local"]), workdir,
                      save_weights=objective == "sft")
        torch.save(padded, os.path.join(workdir, f"padded_{objective}.pt"))
        packed = _run(_config(workdir, objective, [f"data.pack_tokens={PACK_TOKENS[objective]}",
                                                   "model.attention=sdpa"]), workdir)
        _assert_same(f"{objective}/tp1", packed, padded)
        assert sum(packed[2]) < sum(padded[2]), "packing puts several sequences in a row"


def _layouts(rank, world_size, workdir):
    for objective in OBJECTIVES:
        padded = torch.load(os.path.join(workdir, f"padded_{objective}.pt"))
        for layout, overrides in PACKED_LAYOUTS.items():
            packed = _run(_config(workdir, objective, overrides + [
                f"data.pack_tokens={PACK_TOKENS[objective]}", "model.attention=sdpa"]), workdir)
            if layout == "pp2":  # micro-batches of different row counts share one shape
                assert len(set(packed[2])) > 1, "the test data should give unequal row counts"
            _assert_same(f"{objective}/{layout}", packed, padded)


@pytest.mark.timeout(900)
def test_packed_rows_equal_padded_rows_at_every_layout(tmp_path):
    workdir = str(tmp_path)
    for kind in ("sft", "pairs"):
        write_random_shards(tmp_path / kind, kind, count=32)
    run_spawned(_reference, 1, workdir, error_dir=os.path.join(workdir, "errors_reference"))
    run_spawned(_layouts, 2, workdir, error_dir=os.path.join(workdir, "errors_layouts"))
