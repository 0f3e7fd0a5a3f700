"""Distributed-optimizer checkpoints: exact resume at DP=2, reload at TP=2 and at PP=2.

Reference: an uninterrupted DP=2 run of 4 steps. A run stopped after step 2 and resumed (same
layout, or DP=1 for dp_reshardable, which reshards along DP) must give its losses to rtol 1e-6. A fully_reshardable checkpoint resumed at TP=2 or PP=2
(optimizer state resharded) must continue with steps 3-4 close to it (the reductions differ
between layouts, hence 1e-5). A dp_reshardable checkpoint refuses a resharded optimizer load with
a CheckpointError naming both layouts and reloads its weights with checkpoint.load_optimizer=false:
step 3 (computed before any update) matches, step 4 differs (fresh Adam moments).
"""

import os

import pytest

from harness import TINY_MODEL, run_spawned
from shard_fixtures import write_random_shards


def _config(data, extra):
    from redi_megatron.config import load_config

    return load_config(None, TINY_MODEL + [
        f"data.path={data}", "data.seq_length=32", "data.micro_batch_size=2",
        "data.global_batch_size=4", "train.precision=fp32", "optim.lr=1e-3", "train.epochs=1",
        "parallel.distributed_optimizer=true",
    ] + extra)


def _losses(history):
    return [m["loss"] for m in history]


def _job(rank, world_size, workdir, data, results):
    import torch

    from redi_megatron.checkpointing import CheckpointError
    from redi_megatron.training import train

    def run(name, extra):
        save = os.path.join(workdir, name)
        return _losses(train(_config(data, [f"checkpoint.save={save}"] + extra)))

    out = {"full": _losses(train(_config(data, ["train.max_steps=4"])))}
    for fmt in ("dp_reshardable", "fully_reshardable"):
        # The step-2 checkpoint under ``fmt`` stays the latest there: later runs load it from
        # checkpoint.load and save elsewhere.
        saved = [f"checkpoint.optimizer_format={fmt}"]
        out[fmt] = (run(fmt, saved + ["train.max_steps=2"])
                    + run(f"{fmt} resumed", saved + [f"checkpoint.load={workdir}/{fmt}",
                                                     "train.max_steps=4"]))

    source = os.path.join(workdir, "fully_reshardable")
    for layout in ("parallel.tensor=2", "parallel.pipeline=2"):
        out[f"fully_reshardable {layout}"] = run(
            f"from_full_{layout}", [layout, f"checkpoint.load={source}", "train.max_steps=4"])

    source = os.path.join(workdir, "dp_reshardable")
    try:
        run("refused", ["parallel.tensor=2", f"checkpoint.load={source}", "train.max_steps=4"])
        out["refusal"] = None
    except CheckpointError as error:
        out["refusal"] = str(error)
    for layout in ("parallel.tensor=2", "parallel.pipeline=2"):
        out[f"dp_reshardable weights {layout}"] = run(
            f"from_dp_{layout}", [layout, f"checkpoint.load={source}",
                                  "checkpoint.load_optimizer=false", "train.max_steps=4"])
    if rank == 0:
        torch.save(out, results)


def _at_dp1(rank, world_size, workdir, data, results):
    import torch

    from redi_megatron.training import train

    source = os.path.join(workdir, "dp_reshardable")
    history = train(_config(data, [f"checkpoint.load={source}", "train.max_steps=4",
                                   f"checkpoint.save={os.path.join(workdir, 'dp1')}"]))
    torch.save(_losses(history), results)


@pytest.mark.timeout(600)
def test_distributed_optimizer_checkpoints(tmp_path):
    import torch

    data = write_random_shards(tmp_path / "sft", "sft", count=24)
    results = str(tmp_path / "results.pt")
    run_spawned(_job, 2, str(tmp_path), data, results, error_dir=str(tmp_path / "errors"))
    out = torch.load(results)
    run_spawned(_at_dp1, 1, str(tmp_path), data, results, error_dir=str(tmp_path / "errors"))
    out["dp_reshardable at DP=1"] = torch.load(results)
    full = out["full"]
    assert len(full) == 4 and full[2] != full[3]
    for fmt in ("dp_reshardable", "fully_reshardable"):
        assert out[fmt] == pytest.approx(full, rel=1e-6, abs=0), fmt
    assert out["dp_reshardable at DP=1"] == pytest.approx(full[2:], rel=1e-6, abs=0)
    for layout in ("parallel.tensor=2", "parallel.pipeline=2"):
        assert out[f"fully_reshardable {layout}"] == pytest.approx(full[2:], rel=1e-5, abs=0), layout
        weights_only = out[f"dp_reshardable weights {layout}"]
        assert weights_only[0] == pytest.approx(full[2], rel=1e-5, abs=0), layout
        assert weights_only[1] != pytest.approx(full[3], rel=1e-5, abs=0), layout
    refusal = out["refusal"]
    assert refusal is not None, "a dp_reshardable optimizer state loaded at another TP"
    assert "tensor=1" in refusal and "tensor=2" in refusal
    assert "checkpoint.load_optimizer=false" in refusal
