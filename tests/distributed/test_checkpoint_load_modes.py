"""Loading weights without optimizer state refreshes the optimizer's fp32 main parameters.

In bf16 the optimizer keeps fp32 copies made from the random init; if a load does not refresh
them, the first update overwrites the loaded weights with those stale copies.
"""

import os

import pytest
import torch

from harness import TINY_MODEL, run_spawned
from shard_fixtures import write_random_shards


def _job(rank, world_size, workdir, data):
    from megatron.core.utils import unwrap_model

    from redi_megatron.checkpointing import load_checkpoint
    from redi_megatron.config import load_config
    from redi_megatron.engine import build_engine
    from redi_megatron.training import train

    overrides = TINY_MODEL + [f"data.path={data}", "data.seq_length=32", "data.micro_batch_size=2",
                              "data.global_batch_size=4", "train.precision=bf16", "optim.lr=1e-2",
                              "optim.weight_decay=0.0"]
    saved = os.path.join(workdir, "trained")
    train(load_config(None, overrides + ["train.max_steps=2", f"checkpoint.save={saved}"]))

    for mode in ("resume_without_optimizer_state", "weights_only"):
        engine = build_engine(load_config(None, overrides), total_steps=10)
        model = unwrap_model(engine.chunks[0])
        initial = {k: v.detach().clone() for k, v in model.named_parameters()}
        if mode == "weights_only":
            load_checkpoint(saved, engine.chunks, engine.optimizer, weights_only=True)
        else:
            load_checkpoint(saved, engine.chunks, engine.optimizer, engine.scheduler,
                            load_optimizer_state=False)
        loaded = {k: v.detach().clone() for k, v in model.named_parameters()}
        assert any(not torch.equal(initial[k], loaded[k]) for k in loaded), mode
        # A zero-gradient Adam step leaves the weights where they are, if the main copies are fresh.
        for chunk in engine.chunks:
            chunk.zero_grad_buffer()
        engine.optimizer.step()
        for name, param in model.named_parameters():
            torch.testing.assert_close(param.detach(), loaded[name], rtol=0, atol=0,
                                       msg=lambda m: f"{mode}: {name} moved: {m}")


@pytest.mark.timeout(300)
def test_loading_without_optimizer_state_refreshes_main_parameters(tmp_path):
    data = write_random_shards(tmp_path / "sft", "sft", count=16)
    run_spawned(_job, 1, str(tmp_path), data, error_dir=str(tmp_path / "errors"))
