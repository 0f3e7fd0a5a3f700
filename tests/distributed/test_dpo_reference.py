"""Offline reference log-probs: DPO against its own reference starts at exactly log 2."""

import math
import os

import numpy as np
import pytest

from harness import TINY_MODEL, run_spawned
from shard_fixtures import write_random_shards


def _job(rank, world_size, workdir, sft, pairs, results, packing):
    import shutil

    import torch

    from redi_megatron.config import load_config
    from redi_megatron.reference_logprobs import compute_reference_logprobs
    from redi_megatron.training import train

    common = TINY_MODEL + ["data.seq_length=32", "data.micro_batch_size=2", "train.precision=fp32",
                           "parallel.pipeline=2"] + packing
    sft_dir = os.path.join(workdir, "sft")
    train(load_config(None, common + [f"data.path={sft}", "data.global_batch_size=4",
                                      "train.max_steps=2", "optim.lr=1e-3",
                                      f"checkpoint.save={sft_dir}"]))
    if packing:  # the padded rows' reference, for the test to compare with the packed one
        compute_reference_logprobs(load_config(None, common + [
            f"data.path={pairs}", f"checkpoint.load={sft_dir}", "data.pack_tokens=0"]))
        if rank == 0:
            shutil.copy(f"{pairs}.ref_logps.npy", f"{pairs}.padded_ref_logps.npy")
    compute_reference_logprobs(load_config(None, common + [
        f"data.path={pairs}", f"checkpoint.load={sft_dir}"]))
    dpo = train(load_config(None, common + [
        f"data.path={pairs}", "data.global_batch_size=4", "train.max_steps=2",
        "loss.objective=dpo", "loss.beta=0.5", "optim.lr=1e-3",
        f"checkpoint.load={sft_dir}", "checkpoint.finetune=true"]))
    torch.save(dpo, results)


@pytest.mark.timeout(300)
@pytest.mark.parametrize("packing", [[], ["data.pack_tokens=64"]], ids=["padded", "packed"])
def test_dpo_from_its_own_reference_starts_at_log_two(tmp_path, packing):
    import torch

    sft = write_random_shards(tmp_path / "sft", "sft", count=16)
    pairs = write_random_shards(tmp_path / "pairs", "pairs", count=10, seed=1)
    results = str(tmp_path / "dpo.pt")
    run_spawned(_job, 2, str(tmp_path), sft, pairs, results, packing, error_dir=str(tmp_path / "errors"))
    reference = np.load(f"{pairs}.ref_logps.npy")
    if packing:
        np.testing.assert_allclose(reference, np.load(f"{pairs}.padded_ref_logps.npy"), rtol=1e-5)
    assert reference.shape == (10, 2) and np.isfinite(reference).all()
    assert (reference < 0).all()
    dpo = torch.load(results)
    assert dpo[0]["loss"] == pytest.approx(math.log(2.0), abs=1e-5)
    assert dpo[0]["margin"] != 0.0
