"""Checkpoints record the megatron-core and torch versions; an unreadable one names both versions.

megatron-core 0.19 writes no common.pt: its common state is one ShardedObject ('common_state')
inside the torch_dist files, which 0.16 cannot read (it fails with an AttributeError deep inside
megatron). The first test rebuilds that layout with the installed megatron-core: the same
model tensors, the common state as that object, no common.pt, versions.json saying 0.19.2.
The second writes a real checkpoint with another Python whose megatron-core is 0.19.x, when
REDI_NEWER_MEGATRON_PYTHON names one (CI's 3.12 stack; run with PYTHONPATH at this checkout).
"""

import json
import os
import shutil
import subprocess
import sys

import pytest

from harness import run_spawned

TINY = dict(hidden_size=64, num_layers=2, num_attention_heads=4, num_key_value_heads=2,
            intermediate_size=128, vocab_size=500)
NEWER = {"megatron_core": "0.19.2", "torch": "2.11.0"}


def _chunks():
    from redi_megatron.config import ModelConfig, ParallelConfig
    from redi_megatron.qwen import megatron_checkpoint_io as mcore_io
    from redi_megatron.qwen.architecture import architecture_from_model_config
    from redi_megatron.qwen.model import build_model_chunks, transformer_config

    mcore_io.start_single_process()
    arch = architecture_from_model_config(ModelConfig(**TINY))
    config = transformer_config(arch, ParallelConfig(), ModelConfig(), mcore_io.CPU, "fp32")
    return build_model_chunks(arch, config, mcore_io.CPU, 512)


def _write_newer_layout(root: str, iteration: int, chunks) -> None:
    """Writes iteration ``iteration`` as megatron-core 0.19 lays it out, stamped 0.19.2."""
    from megatron.core import dist_checkpointing
    from megatron.core.dist_checkpointing.mapping import ShardedObject

    from redi_megatron.checkpointing import (VERSIONS_FILE, commit_checkpoint,
                                             model_sharded_state_dict, staging_dir)

    staging = staging_dir(root, iteration)
    common = {"train_state": {"iteration": iteration, "has_optimizer": False}}
    state = dict(model_sharded_state_dict(chunks),
                 common_state=ShardedObject("common_state", common, (1,), (0,), replica_id=0))
    dist_checkpointing.save(state, staging)
    os.remove(os.path.join(staging, "common.pt"))
    with open(os.path.join(staging, VERSIONS_FILE), "w") as handle:
        json.dump(NEWER, handle)
    commit_checkpoint(root, iteration)


def _job(rank, world_size, workdir, results):
    import megatron.core
    import torch
    from packaging.version import Version

    from redi_megatron.checkpointing import (CheckpointError, installed_versions, load_checkpoint,
                                             save_checkpoint)

    chunks = _chunks()
    installed = installed_versions()
    out = {"installed": installed}
    root = os.path.join(workdir, "ckpt")
    save_checkpoint(root, 1, chunks)
    with open(os.path.join(root, "iter_0000001", "versions.json")) as handle:
        out["versions.json"] = json.load(handle)
    out["train_state versions"] = load_checkpoint(root, chunks)["versions"]

    if Version(megatron.core.__version__) < Version("0.19"):
        _write_newer_layout(root, 2, chunks)
        try:
            load_checkpoint(root, chunks)
            out["newer layout"] = "loaded"
        except CheckpointError as error:
            out["newer layout"] = str(error)
        # Without versions.json (e.g. written by Megatron-LM) the missing common.pt is named.
        os.remove(os.path.join(root, "iter_0000002", "versions.json"))
        try:
            load_checkpoint(root, chunks)
            out["unstamped newer layout"] = "loaded"
        except CheckpointError as error:
            out["unstamped newer layout"] = str(error)
    torch.save(out, results)


@pytest.mark.timeout(300)
def test_versions_recorded_and_named_when_unreadable(tmp_path):
    import torch

    results = str(tmp_path / "results.pt")
    run_spawned(_job, 1, str(tmp_path), results, error_dir=str(tmp_path / "errors"))
    out = torch.load(results)
    installed = out["installed"]
    assert installed["torch"] == torch.__version__
    assert out["versions.json"] == installed == out["train_state versions"]
    if "newer layout" not in out:
        pytest.skip(f"megatron-core {installed['megatron_core']} reads the 0.19 layout itself")
    message = out["newer layout"]
    assert "megatron-core 0.19.2 (torch 2.11.0)" in message, message
    assert f"installed megatron-core {installed['megatron_core']}" in message, message
    unstamped = out["unstamped newer layout"]
    assert "no common.pt" in unstamped and installed["megatron_core"] in unstamped, unstamped


def _load_job(rank, world_size, root, results):
    import torch

    from redi_megatron.checkpointing import CheckpointError, load_checkpoint

    try:
        load_checkpoint(root, _chunks())
        torch.save("loaded", results)
    except CheckpointError as error:
        torch.save(str(error), results)


WRITER = f"""
import sys
from redi_megatron.checkpointing import save_checkpoint
from redi_megatron.config import ModelConfig, ParallelConfig
from redi_megatron.qwen import megatron_checkpoint_io as mcore_io
from redi_megatron.qwen.architecture import architecture_from_model_config
from redi_megatron.qwen.model import build_model_chunks, transformer_config

if __name__ == "__main__":  # megatron-core 0.19's save starts a multiprocessing manager
    mcore_io.start_single_process()
    arch = architecture_from_model_config(ModelConfig(**{TINY!r}))
    config = transformer_config(arch, ParallelConfig(), ModelConfig(), mcore_io.CPU, "fp32")
    save_checkpoint(sys.argv[1], 1, build_model_chunks(arch, config, mcore_io.CPU, 512))
"""


@pytest.mark.timeout(300)
@pytest.mark.skipif(not os.environ.get("REDI_NEWER_MEGATRON_PYTHON"),
                    reason="REDI_NEWER_MEGATRON_PYTHON (a Python with megatron-core 0.19.x) unset")
def test_real_newer_checkpoint_names_both_versions(tmp_path):
    import megatron.core
    import torch

    checkout = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    root = str(tmp_path / "newer")
    script = tmp_path / "write_newer.py"
    script.write_text(WRITER)
    env = {key: value for key, value in os.environ.items()
           if key not in ("MASTER_PORT", "RANK", "WORLD_SIZE", "LOCAL_RANK")}
    env["PYTHONPATH"] = checkout
    subprocess.run([os.environ["REDI_NEWER_MEGATRON_PYTHON"], str(script), root], env=env,
                   check=True, cwd=str(tmp_path), capture_output=True)
    with open(os.path.join(root, "iter_0000001", "versions.json")) as handle:
        written = json.load(handle)
    results = str(tmp_path / "results.pt")
    run_spawned(_load_job, 1, root, results, error_dir=str(tmp_path / "errors"))
    outcome = torch.load(results)
    if written["megatron_core"] == megatron.core.__version__:
        assert outcome == "loaded"
    elif os.path.isfile(os.path.join(root, "iter_0000001", "common.pt")):
        pytest.skip(f"megatron-core {written['megatron_core']} still writes common.pt")
    else:
        assert f"megatron-core {written['megatron_core']}" in outcome, outcome
        assert f"installed megatron-core {megatron.core.__version__}" in outcome, outcome
    shutil.rmtree(root)
