"""The training step's gradient-in-forward loss head equals the autograd log-prob paths.

One process, one engine (tiny Qwen2, vocab 500 padded to 512, fp32): for sft, redi and symmetric
the step's loss, logged metrics and every parameter gradient through ``weighted_token_nll`` equal
those of the chunked autograd log-prob path and of megatron's unfused cross-entropy on the same
weights and micro-batches. A loss scale of 3 (megatron multiplies the numerator by it before
backward) checks the weighted head's backward scaling; the padded vocabulary rows get no gradient.
"""

import pytest
import torch

from harness import (TINY_MODEL, assert_gradients_close, full_gradients, run_spawned,
                     split_micro_batches, synthetic_batch)

SEQ_LENGTH = 32
VOCAB = 500
LOSS_SCALE = 3.0
OBJECTIVES = {
    "sft": dict(kind="sft", rows=4, rows_per_micro_batch=2),
    "redi": dict(kind="pairs", rows=8, rows_per_micro_batch=2),
    "symmetric": dict(kind="pairs", rows=8, rows_per_micro_batch=4),
}


def _autograd_loss(engine, model, batch, hidden):
    """The loss function before gradient-in-forward: log-probs, then the objective by autograd."""
    from redi_megatron.loss_head import token_logprobs
    from redi_megatron.objectives import compute_objective

    logp = token_logprobs(model, hidden, batch["labels"], engine.config.loss, VOCAB)
    out = compute_objective(logp, batch["loss_mask"], engine.config.loss)
    return out.numerator, out.denominator, {"stats": out.stats}


def _step(engine, micro_batches, loss_function):
    """Returns (metrics, gradients) of one forward-backward with ``loss_function``."""
    from redi_megatron.objectives import summarize_stats
    from redi_megatron.training_step import _global_stats, run_schedule

    for chunk in engine.chunks:
        chunk.zero_grad_buffer()
    store = run_schedule(engine, micro_batches, loss_function, forward_only=False)
    metrics = summarize_stats(_global_stats(store, engine.device))
    return metrics, full_gradients(engine)


def _worker(rank, world_size):
    from redi_megatron.config import load_config
    from redi_megatron.engine import build_engine
    from redi_megatron.training_step import _objective_loss

    engine = None
    for objective, spec in OBJECTIVES.items():
        config = load_config(None, TINY_MODEL + [
            f"loss.objective={objective}", "loss.alpha=0.7", "loss.chunk_size=24",
            f"data.seq_length={SEQ_LENGTH}", "train.precision=fp32"])
        if engine is None:
            engine = build_engine(config, total_steps=10)
            engine.transformer_config.grad_scale_func = lambda loss: loss * LOSS_SCALE
        engine.config = config
        batch = synthetic_batch(spec["kind"], spec["rows"], SEQ_LENGTH, VOCAB, seed=7)
        micro_batches = split_micro_batches(batch, 0, 1, spec["rows_per_micro_batch"])

        metrics, gradients = _step(engine, micro_batches, _objective_loss)
        embedding = gradients["embedding.word_embeddings.weight"]
        assert embedding.shape[0] == 512 and torch.all(embedding[VOCAB:] == 0), objective
        references = {"autograd chunked": _step(engine, micro_batches, _autograd_loss)}
        engine.config.loss.fused = False
        references["unfused"] = _step(engine, micro_batches, _autograd_loss)
        for name, (expected_metrics, expected_gradients) in references.items():
            label = f"{objective}: gradient-in-forward vs {name}"
            assert metrics.keys() == expected_metrics.keys(), label
            for key, value in expected_metrics.items():
                assert metrics[key] == pytest.approx(value, rel=1e-5, abs=1e-7), f"{label} {key}"
            assert_gradients_close(gradients, expected_gradients, 1e-5, label)


@pytest.mark.timeout(300)
def test_gradient_in_forward_equals_autograd_paths(tmp_path):
    run_spawned(_worker, 1, error_dir=str(tmp_path / "errors"))
