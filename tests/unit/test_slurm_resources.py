"""slurm/launch.sh's resource rules, from Slurm's variables (no cluster needed)."""

import os
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
_SLURM_VARIABLES = ("GPUS_PER_NODE", "SLURM_GPUS_ON_NODE", "SLURM_GPUS_PER_NODE", "CUDA_VISIBLE_DEVICES",
                    "SLURM_TASKS_PER_NODE", "NNODES", "SLURM_JOB_ID", "SLURM_JOB_NODELIST")


def _launch_sh(command: str, **variables: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in _SLURM_VARIABLES}
    env.update(variables, REPO_DIR=str(ROOT))
    return subprocess.run(["bash", "-c", f"source slurm/launch.sh && {command}"], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=60)


@pytest.mark.parametrize("variables,expected", [
    ({"SLURM_GPUS_ON_NODE": "4", "SLURM_TASKS_PER_NODE": "1"}, "4"),
    ({"SLURM_GPUS_PER_NODE": "h100:8"}, "8"),
    ({"CUDA_VISIBLE_DEVICES": "0,1,2"}, "3"),
    ({"SLURM_TASKS_PER_NODE": "2(x3)"}, "2"),
    ({}, "1"),
    ({"GPUS_PER_NODE": "5", "SLURM_GPUS_ON_NODE": "8"}, "5"),
])
def test_processes_per_node_come_from_the_allocation(variables, expected):
    result = _launch_sh("processes_per_node", **variables)
    assert result.stdout.strip() == expected, result.stderr


def test_nnodes_must_match_the_allocation():
    result = _launch_sh("CONFIG=x.yaml launch_job", NNODES="2", SLURM_JOB_ID="7", SLURM_JOB_NODELIST="n1",
                        SLURM_JOB_NUM_NODES="1")
    assert result.returncode == 2
    assert "NNODES=2 but the allocation has 1 node(s)" in result.stderr


def test_outside_an_allocation_it_says_so():
    result = _launch_sh("CONFIG=x.yaml launch_job")
    assert result.returncode == 2
    assert "runs inside a Slurm allocation" in result.stderr
