"""`sbatch slurm/redi_7b.sh` on a real one-node Slurm cluster (slurmctld + slurmd on localhost).

Each job runs a tiny REDI config as 2 CPU processes (sbatch --ntasks-per-node=2, gloo), submitted
from outside the repository. The uninterrupted job is the reference: a job stopped by its
time-limit signal, and one requeued with `scontrol requeue`, must save, requeue, resume and log
the same per-step losses, each step exactly once and none trained twice.
"""

import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from harness import TINY_MODEL
from shard_fixtures import write_random_shards
from slurm_cluster import (FINISHED, ROOT, cluster_logs, job_fields, start_cluster, submit,
                           wait_for)

STEPS = 20
JOB_TIMEOUT = 240


@pytest.fixture(scope="module")
def slurm():
    yield from start_cluster()


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    """Returns a directory outside the repository with the shards and the tiny config."""
    path = tmp_path_factory.mktemp("slurm_jobs")
    write_random_shards(path / "pairs", "pairs", count=4 * STEPS)
    (path / "tiny.yaml").write_text("loss:\n  objective: redi\n  alpha: 0.8\n")
    return path


class Job:
    """One submitted run: its files under ``workdir/name`` and its Slurm job id."""

    def __init__(self, slurm_env: dict, workdir: Path, name: str, steps: int = STEPS,
                 extra: tuple = ()):
        self.env, self.dir = slurm_env, workdir / name
        overrides = TINY_MODEL + [
            "data.seq_length=32", "data.micro_batch_size=2", "data.global_batch_size=4",
            "train.precision=fp32", "optim.lr=1e-3", "train.epochs=1", f"train.max_steps={steps}",
            f"train.log_dir={self.dir / 'logs'}", "checkpoint.save_interval=5", *extra,
        ]
        self.job_env = dict(slurm_env, CONFIG=str(workdir / "tiny.yaml"), SAVE_DIR=str(self.dir / "ckpt"),
                            DATA_PATH=str(workdir / "pairs"), EXTRA_ARGS=" ".join(overrides),
                            LOG_DIR=str(self.dir / "job"), PYTHON=shutil.which("python"))
        self.job_env.pop("MASTER_PORT", None)
        self.job_env.pop("GPUS_PER_NODE", None)
        self.output = self.dir / "slurm.out"
        self.id = None

    def submit(self) -> "Job":
        self.dir.mkdir(parents=True, exist_ok=True)
        self.id = submit(self.job_env, "redi_7b.sh", "--ntasks-per-node=2", "--time=10",
                         f"--output={self.output}", cwd=self.dir)
        return self

    def fields(self) -> dict:
        return job_fields(self.env, self.id)

    def text(self) -> str:
        return self.output.read_text() if self.output.exists() else ""

    def diagnose(self) -> str:
        return f"--- job {self.id} output\n{self.text()}\n--- scontrol\n{self.fields()}\n{cluster_logs()}"

    def metrics(self) -> list:
        path = self.dir / "logs" / "metrics.jsonl"
        return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []

    def wait_for_step(self, step: int) -> None:
        wait_for(lambda: len(self.metrics()) >= step, JOB_TIMEOUT, f"job {self.id} at step {step}",
                 self.diagnose)

    def wait_finished(self) -> dict:
        """Returns the job's final scontrol fields (a requeued job must run again first)."""
        return wait_for(lambda: (lambda f: f if f.get("JobState") in FINISHED else None)(self.fields()),
                        JOB_TIMEOUT, f"job {self.id} to finish", self.diagnose)

    def assert_completed(self, restarts: int) -> None:
        fields = self.wait_finished()
        assert (fields["JobState"], fields["ExitCode"], fields["Restarts"]) == \
            ("COMPLETED", "0:0", str(restarts)), self.diagnose()

    def printed_steps(self) -> list:
        """Returns the step numbers of the trainer's per-step lines, in the order printed."""
        return [int(m) for m in re.findall(r"^step (\d+)/", self.text(), re.MULTILINE)]


@pytest.fixture(scope="module")
def reference(slurm, workdir):
    """The uninterrupted job, run to completion."""
    job = Job(slurm, workdir, "reference").submit()
    job.assert_completed(restarts=0)
    return job


def _assert_same_run(job: Job, reference: Job, steps: int = STEPS) -> None:
    metrics = job.metrics()
    assert [m["step"] for m in metrics] == list(range(1, steps + 1)), job.diagnose()
    assert job.printed_steps() == list(range(1, steps + 1)), "a step was trained twice\n" + job.diagnose()
    expected = [m["loss"] for m in reference.metrics()]
    assert [m["loss"] for m in metrics] == pytest.approx(expected, rel=1e-6, abs=1e-7)
    assert (job.dir / "ckpt" / "latest_checkpointed_iteration.txt").read_text().strip() == str(steps)


def _stopped_at(job: Job) -> int:
    found = re.findall(r"the trainer saved (\d+) before the job ended", job.text())
    assert len(found) == 1, job.diagnose()
    return int(found[0])


@pytest.mark.timeout(900)
def test_uninterrupted_job_and_finished_rerun(slurm, workdir, reference):
    assert [m["step"] for m in reference.metrics()] == list(range(1, STEPS + 1)), reference.diagnose()
    assert reference.printed_steps() == list(range(1, STEPS + 1))
    assert "2 process(es)" in reference.text()
    rerun = Job(slurm, workdir, "reference").submit()
    rerun.assert_completed(restarts=0)
    assert f"the run is already complete at step {STEPS}" in rerun.text(), rerun.diagnose()
    assert len(reference.metrics()) == STEPS


@pytest.mark.timeout(900)
def test_time_limit_signal_saves_requeues_and_resumes(slurm, workdir, reference):
    job = Job(slurm, workdir, "time_limit").submit()
    job.wait_for_step(3)
    # What `#SBATCH --signal=B:TERM@300` delivers before the time limit.
    subprocess.run(["scancel", "--signal=TERM", "--batch", str(job.id)], env=slurm, check=True, timeout=60)
    job.assert_completed(restarts=1)
    stopped = _stopped_at(job)
    assert 3 <= stopped < STEPS, job.diagnose()
    assert f"resuming from {job.dir / 'ckpt'} (iteration {stopped})" in job.text()
    _assert_same_run(job, reference)


@pytest.mark.timeout(900)
def test_scontrol_requeue_saves_and_resumes(slurm, workdir, reference):
    job = Job(slurm, workdir, "requeued").submit()
    job.wait_for_step(3)
    # Every process of the job gets SIGTERM, srun and the batch shell included.
    subprocess.run(["scontrol", "requeue", str(job.id)], env=slurm, check=True, timeout=60)
    job.assert_completed(restarts=1)
    stopped = _stopped_at(job)
    assert f"resuming from {job.dir / 'ckpt'} (iteration {stopped})" in job.text()
    assert "not requeueing here" in job.text()  # Slurm requeues it, not the batch script
    _assert_same_run(job, reference)


@pytest.mark.timeout(900)
def test_scancel_saves_and_stays_cancelled(slurm, workdir):
    job = Job(slurm, workdir, "cancelled").submit()
    job.wait_for_step(3)
    subprocess.run(["scancel", str(job.id)], env=slurm, check=True, timeout=60)
    fields = job.wait_finished()
    assert (fields["JobState"], fields["Restarts"]) == ("CANCELLED", "0"), job.diagnose()
    stopped = _stopped_at(job)
    assert "not requeueing here" in job.text()
    assert (job.dir / "ckpt" / "latest_checkpointed_iteration.txt").read_text().strip() == str(stopped)
    assert [m["step"] for m in job.metrics()] == list(range(1, stopped + 1))


@pytest.mark.timeout(900)
def test_two_jobs_share_a_node(slurm, workdir):
    jobs = [Job(slurm, workdir, f"shared{i}", steps=8).submit() for i in range(2)]
    wait_for(lambda: all(j.fields().get("JobState") == "RUNNING" for j in jobs), JOB_TIMEOUT,
             "both jobs running at once", jobs[0].diagnose)
    for job in jobs:
        job.assert_completed(restarts=0)
        assert [m["step"] for m in job.metrics()] == list(range(1, 9)), job.diagnose()
    ports = {re.search(r"master \S+:(\d+)", job.text()).group(1) for job in jobs}
    assert len(ports) == 2


@pytest.mark.timeout(900)
def test_batch_that_does_not_fit_fails_once_with_the_keys(slurm, workdir):
    job = Job(slurm, workdir, "misfit", extra=("data.global_batch_size=6",)).submit()
    fields = job.wait_finished()
    assert (fields["JobState"], fields["ExitCode"]) == ("FAILED", "2:0"), job.diagnose()
    text = job.text()
    assert text.count("error: data.global_batch_size=6 is not divisible by data.micro_batch_size=2") == 1, text
    assert "Traceback" not in text


@pytest.mark.skipif(shutil.which("shellcheck") is None, reason="shellcheck not installed (CI installs it)")
def test_slurm_scripts_are_shellcheck_clean():
    scripts = sorted(str(path) for path in (ROOT / "slurm").glob("*.sh")) + [str(ROOT / ".ci" / "start_slurm.sh")]
    result = subprocess.run(["shellcheck", *scripts], cwd=ROOT, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
