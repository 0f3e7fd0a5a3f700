"""A real one-node Slurm cluster on localhost for tests (.ci/start_slurm.sh), and job helpers."""

import os
import re
import shutil
import subprocess
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
CLUSTER_DIR = Path(os.environ.get("REDI_SLURM_DIR", "/tmp/redi-slurm"))
FINISHED = {"COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "OUT_OF_MEMORY",
            "BOOT_FAIL", "DEADLINE", "PREEMPTED"}
_TOOLS = ("slurmctld", "slurmd", "munged", "sbatch")


def _running(pidfile: Path) -> bool:
    try:
        os.kill(int(pidfile.read_text()), 0)
        return True
    except (OSError, ValueError):
        return False


def start_cluster():
    """Yields the environment that points Slurm's commands at the test cluster (started if needed).

    Skips only when Slurm or munge is not installed; a cluster that fails to start fails the test.
    """
    missing = [tool for tool in _TOOLS if shutil.which(tool) is None]
    if missing:
        pytest.skip(f"SLURM TESTS SKIPPED: {', '.join(missing)} not installed "
                    "(apt-get install -y slurm-wlm munge; .ci/run installs them)")
    started_here = not _running(CLUSTER_DIR / "slurmctld.pid")
    result = subprocess.run(["bash", str(ROOT / ".ci" / "start_slurm.sh"), str(CLUSTER_DIR)],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, f"Slurm did not start:\n{result.stdout}{result.stderr}"
    yield dict(os.environ, SLURM_CONF=str(CLUSTER_DIR / "slurm.conf"))
    if started_here:
        subprocess.run(["bash", str(ROOT / ".ci" / "start_slurm.sh"), "--stop", str(CLUSTER_DIR)],
                       timeout=60)


def submit(env: dict, script: str, *sbatch_args: str, cwd: Path) -> int:
    """Returns the id of the job that `sbatch [args] slurm/<script>` submitted from ``cwd``."""
    result = subprocess.run(["sbatch", "--parsable", *sbatch_args, str(ROOT / "slurm" / script)],
                            env=env, cwd=cwd, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr
    return int(result.stdout.strip().split(";")[0])


def job_fields(env: dict, job: int) -> dict:
    """Returns `scontrol show job` as a dict of its Key=Value fields."""
    text = subprocess.run(["scontrol", "-o", "show", "job", str(job)], env=env, capture_output=True,
                          text=True, timeout=60).stdout
    return dict(re.findall(r"(\w+)=(\S*)", text))


def wait_for(condition, timeout: float, what: str, diagnose=lambda: ""):
    """Returns condition()'s first truthy value, polled until ``timeout`` seconds have passed."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.2)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}\n{diagnose()}")


def cluster_logs(lines: int = 40) -> str:
    """Returns the tails of slurmctld's and slurmd's logs (for failure messages)."""
    parts = []
    for name in ("slurmctld.log", "slurmd.log"):
        path = CLUSTER_DIR / name
        if path.exists():
            parts.append(f"--- {path}\n" + "\n".join(path.read_text().splitlines()[-lines:]))
    return "\n".join(parts)
