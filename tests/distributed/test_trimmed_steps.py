"""A step trimmed to its longest loss-carrying position equals the fully padded step (TP=2+SP)."""

import os

import pytest

from harness import (TINY_MODEL, assert_gradients_close, full_gradients, run_spawned,
                     split_micro_batches, synthetic_batch)

PADDED = 64


def _job(rank, world_size, workdir):
    from redi_megatron.checkpointing import load_checkpoint, save_checkpoint
    from redi_megatron.config import load_config
    from redi_megatron.training_step import forward_backward

    batch = synthetic_batch("pairs", 4, PADDED, 500, seed=3)
    batch["loss_mask"][:, 40:] = 0.0  # nothing to learn past position 39
    micro_batches = split_micro_batches(batch, 0, 1, 2)
    from redi_megatron.sequence_trimming import trimmed_length

    assert trimmed_length(micro_batches, 8) == 40
    results = {}
    for multiple in (0, 8):
        from redi_megatron.engine import build_engine

        engine = build_engine(load_config(None, TINY_MODEL + [
            f"data.seq_length={PADDED}", f"data.pad_to_multiple_of={multiple}", "parallel.tensor=2",
            "parallel.sequence_parallel=true", "train.precision=fp32", "loss.objective=redi"]), 10)
        weights = os.path.join(workdir, "weights")
        if multiple == 0:
            save_checkpoint(weights, 0, engine.chunks)
        else:
            load_checkpoint(weights, engine.chunks, engine.optimizer, weights_only=True)
        metrics = forward_backward(engine, micro_batches)
        assert metrics["processed_tokens"] == 4 * (PADDED if multiple == 0 else 40)
        results[multiple] = (metrics["loss"], full_gradients(engine))
    assert results[8][0] == pytest.approx(results[0][0], rel=1e-6)
    assert_gradients_close(results[8][1], results[0][1], 1e-5, "trimmed vs padded")


@pytest.mark.timeout(300)
def test_trimmed_step_equals_padded_step(tmp_path):
    run_spawned(_job, 2, str(tmp_path), error_dir=str(tmp_path / "errors"))
