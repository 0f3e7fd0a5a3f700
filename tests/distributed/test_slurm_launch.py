"""The Slurm entry point end to end under a simulated Slurm: 1 node, 2 CPU ranks (torchrun, gloo).

A run stopped by SIGTERM (as `sbatch --signal=B:TERM@...` delivers it to the batch shell) saves,
asks to be requeued, and the rerun resumes to the same final loss as an uninterrupted run.
"""

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from harness import TINY_MODEL, free_port
from shard_fixtures import write_random_shards

ROOT = Path(__file__).resolve().parents[2]
MAX_STEPS = 30

FAKE_SRUN = """#!/usr/bin/env bash
# One node: skip srun's options and run the task as node 0.
while [[ $# -gt 0 && $1 == -* ]]; do shift; done
export SLURM_NODEID=0 SLURM_PROCID=0 SLURM_LOCALID=0
exec "$@"
"""
FAKE_SCONTROL = """#!/usr/bin/env bash
case "$1 $2" in
  "show hostnames") echo localhost ;;
  *) echo "$*" >> "$FAKE_SLURM_LOG" ;;
esac
"""


def _fake_slurm(tmp_path: Path) -> dict:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for name, text in (("srun", FAKE_SRUN), ("scontrol", FAKE_SCONTROL)):
        (bin_dir / name).write_text(text)
        (bin_dir / name).chmod(0o755)
    return {
        "PATH": f"{bin_dir}{os.pathsep}{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
        "SLURM_JOB_ID": "4242", "SLURM_JOB_NODELIST": "node[001]", "SLURM_JOB_NUM_NODES": "1",
        "SLURM_SUBMIT_DIR": str(ROOT), "FAKE_SLURM_LOG": str(tmp_path / "scontrol.log"),
        "PYTHON": sys.executable, "GPUS_PER_NODE": "2", "OMP_NUM_THREADS": "1",
    }


def _job_env(tmp_path: Path, slurm: dict, name: str, data: str) -> dict:
    overrides = TINY_MODEL + [
        "data.seq_length=32", "data.micro_batch_size=2", "data.global_batch_size=4",
        "train.precision=fp32", "optim.lr=1e-3", "train.epochs=1", f"train.max_steps={MAX_STEPS}",
        f"train.log_dir={tmp_path / name / 'logs'}", "checkpoint.save_interval=10",
    ]
    return dict(os.environ, **slurm, CONFIG=str(tmp_path / "tiny.yaml"), SAVE_DIR=str(tmp_path / name / "ckpt"),
                DATA_PATH=data, EXTRA_ARGS=" ".join(overrides), LOG_DIR=str(tmp_path / name / "ranklogs"),
                MASTER_PORT=str(free_port()))


def _metrics(tmp_path: Path, name: str) -> list[dict]:
    path = tmp_path / name / "logs" / "metrics.jsonl"
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def _run_job(env: dict, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", str(ROOT / "slurm" / "redi_7b.sh")], env=env, cwd=ROOT,
                          capture_output=True, text=True, timeout=timeout)


@pytest.mark.timeout(300)
def test_slurm_job_resumes_after_sigterm(tmp_path):
    data = write_random_shards(tmp_path / "pairs", "pairs", count=4 * MAX_STEPS)
    (tmp_path / "tiny.yaml").write_text("loss:\n  objective: redi\n  alpha: 0.8\n")
    slurm = _fake_slurm(tmp_path)

    full = _run_job(_job_env(tmp_path, slurm, "full", data))
    assert full.returncode == 0, full.stdout + full.stderr
    assert [m["step"] for m in _metrics(tmp_path, "full")] == list(range(1, MAX_STEPS + 1))
    assert list((tmp_path / "full" / "ranklogs" / "node0").rglob("stdout.log")), "per-rank logs missing"

    env = _job_env(tmp_path, slurm, "stopped", data)
    job = subprocess.Popen(["bash", str(ROOT / "slurm" / "redi_7b.sh")], env=env, cwd=ROOT,
                           stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.monotonic() + 120
        while len(_metrics(tmp_path, "stopped")) < 3:
            assert job.poll() is None, job.stdout.read()
            assert time.monotonic() < deadline, "training never reached step 3"
            time.sleep(0.05)
        job.send_signal(signal.SIGTERM)  # what `--signal=B:TERM@300` sends the batch shell
        output, _ = job.communicate(timeout=120)
    finally:
        if job.poll() is None:
            job.kill()
    assert job.returncode == 0, output
    assert "saved checkpoint" in output
    stopped_at = _metrics(tmp_path, "stopped")[-1]["step"]
    assert stopped_at < MAX_STEPS, "SIGTERM arrived after the run had finished"
    assert (tmp_path / "stopped" / "ckpt" / "latest_checkpointed_iteration.txt").read_text().strip() \
        == str(stopped_at)
    assert "requeue 4242" in (tmp_path / "scontrol.log").read_text()

    resumed = _run_job(env)
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    assert "resuming from" in resumed.stdout
    steps = [m["step"] for m in _metrics(tmp_path, "stopped")]
    assert steps == list(range(1, MAX_STEPS + 1))
    assert _metrics(tmp_path, "stopped")[-1]["loss"] == pytest.approx(_metrics(tmp_path, "full")[-1]["loss"],
                                                                      rel=1e-6)


@pytest.mark.skipif(shutil.which("shellcheck") is None, reason="shellcheck not installed (CI installs it)")
def test_slurm_scripts_are_shellcheck_clean():
    scripts = sorted(str(path) for path in (ROOT / "slurm").glob("*.sh"))
    assert scripts
    result = subprocess.run(["shellcheck", *scripts], cwd=ROOT, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
