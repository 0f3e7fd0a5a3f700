"""A run stopped after step k and resumed gives the same losses as an uninterrupted run."""

import os

import pytest

from harness import TINY_MODEL, run_spawned
from shard_fixtures import write_random_shards


def _config(data, save, extra):
    from redi_megatron.config import load_config

    return load_config(None, TINY_MODEL + [
        f"data.path={data}", "data.seq_length=32", "data.micro_batch_size=2",
        "data.global_batch_size=4", "train.precision=fp32", "optim.lr=1e-3", "train.epochs=1",
        f"checkpoint.save={save}", "checkpoint.save_interval=2",
    ] + extra)


def _runs(rank, world_size, workdir, objective_overrides, data, results):
    import torch

    from redi_megatron.training import train

    full = train(_config(data, os.path.join(workdir, "full"), objective_overrides + ["train.max_steps=4"]))
    interrupted = os.path.join(workdir, "interrupted")
    first = train(_config(data, interrupted, objective_overrides + ["train.max_steps=2"]))
    second = train(_config(data, interrupted, objective_overrides + ["train.max_steps=4"]))
    torch.save({"full": full, "first": first, "second": second}, results)


@pytest.mark.timeout(300)
@pytest.mark.parametrize("kind,objective", [
    ("sft", []), ("pairs", ["loss.objective=redi"]),
    ("pairs", ["loss.objective=redi", "data.pack_tokens=64", "model.attention=sdpa"]),
], ids=["sft", "redi", "redi_packed"])
def test_resume_continues_exactly(tmp_path, kind, objective):
    import torch

    data = write_random_shards(tmp_path / kind, kind, count=24)
    results = str(tmp_path / "results.pt")
    run_spawned(_runs, 2, str(tmp_path), objective + ["parallel.tensor=2"], data, results,
                error_dir=str(tmp_path / "errors"))
    runs = torch.load(results)
    assert [m["step"] for m in runs["first"]] == [1, 2]
    assert [m["step"] for m in runs["second"]] == [3, 4]
    full = [m["loss"] for m in runs["full"]]
    resumed = [m["loss"] for m in runs["first"] + runs["second"]]
    assert full == pytest.approx(resumed, rel=1e-6, abs=0)
    assert full[2] != full[3]
    assert os.path.isfile(tmp_path / "interrupted" / "iter_0000002" / "metadata.json")
    lrs = [m["lr"] for m in runs["full"]]
    assert lrs == pytest.approx([m["lr"] for m in runs["first"] + runs["second"]])
