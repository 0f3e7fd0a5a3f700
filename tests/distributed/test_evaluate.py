"""`redi-megatron evaluate` end to end on a converted Megatron checkpoint (CPU, subprocesses).

The model is a tiny Qwen2 with known answers (tests/unit/evaluation_fixtures.py), converted to a
Megatron checkpoint; the command exports it back on the fly and samples 4 responses per problem on
two benchmark files. Shown: the report matches tools/grade.py on the same generations; a run killed
(SIGKILL) after some problems are written and then rerun ends with the same report and generations
as an uninterrupted run, without regenerating what was written (the file only grew).
"""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from evaluation_fixtures import write_benchmarks, write_chain_model

pytestmark = pytest.mark.timeout(1200)  # subprocess start-ups dominate; slow on a loaded CI machine
ROOT = Path(__file__).resolve().parents[2]
ENV = dict(os.environ, PYTHONPATH=str(ROOT), HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1", TOKENIZERS_PARALLELISM="false")


def _evaluate_command(checkpoint: Path, benchmarks: list[Path], out: Path) -> list[str]:
    return [sys.executable, str(ROOT / "tools" / "evaluate.py"), "--model", str(checkpoint), "--benchmarks",
            *map(str, benchmarks), "--out", str(out), "--samples", "4", "--max-new-tokens", "16",
            "--seed", "5", "--batch-problems", "1", "--workers", "1", "--backend", "transformers"]


def _lines(path: Path) -> list[str]:
    return path.read_text(encoding="utf-8").splitlines(keepends=True) if path.exists() else []


def _scores(report: dict) -> dict:
    return {key: report[key] for key in ("benchmarks", "average_pass@1", "lengths")}


@pytest.fixture(scope="module")
def converted(tmp_path_factory):
    work = tmp_path_factory.mktemp("evaluate")
    write_chain_model(work / "hf")
    subprocess.run([sys.executable, str(ROOT / "tools" / "convert_hf_to_megatron.py"), "--hf", str(work / "hf"),
                    "--out", str(work / "ckpt"), "--dtype", "fp32"], check=True, env=ENV, capture_output=True)
    return work / "ckpt", write_benchmarks(work / "bench", alpha=12, beta=8)


def test_evaluate_matches_grade_py_and_a_killed_run_resumes_to_the_same_report(converted, tmp_path):
    checkpoint, benchmarks = converted
    full = tmp_path / "full"
    subprocess.run(_evaluate_command(checkpoint, benchmarks, full), check=True, env=ENV, timeout=300)
    report = json.loads((full / "report.json").read_text())
    assert report["settings"]["model"] == {"megatron_checkpoint": str(checkpoint.resolve()), "iteration": 0}
    assert {name: s["problems"] for name, s in report["benchmarks"].items()} == {"alpha": 12, "beta": 8}
    # Answers 7 and 8 are each drawn with probability 1/2, 9 and 10 never: pass@1 is neither 0 nor 1.
    assert 0.1 < report["benchmarks"]["beta"]["pass@1"] < 0.6
    assert report["lengths"]["alpha"]["truncated_share"] == 0.0

    graded = tmp_path / "grade_py.json"
    subprocess.run([sys.executable, str(ROOT / "tools" / "grade.py"), "--generations", str(full / "generations.jsonl"),
                    "--references", str(full / "references.jsonl"), "--out", str(graded), "--workers", "1"],
                   check=True, env=ENV, capture_output=True, timeout=300)
    reference = json.loads(graded.read_text())
    assert report["benchmarks"] == reference["benchmarks"]
    assert report["average_pass@1"] == reference["average_pass@1"]

    resumed = tmp_path / "resumed"
    process = subprocess.Popen(_evaluate_command(checkpoint, benchmarks, resumed), env=ENV,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    while process.poll() is None and len(_lines(resumed / "generations.jsonl")) < 2:
        time.sleep(0.005)
    process.send_signal(signal.SIGKILL)
    process.wait()
    written = _lines(resumed / "generations.jsonl")
    assert process.returncode == -signal.SIGKILL and 2 <= len(written) < 20, (process.returncode, len(written))

    subprocess.run(_evaluate_command(checkpoint, benchmarks, resumed), check=True, env=ENV, timeout=300)
    final = _lines(resumed / "generations.jsonl")
    complete = [line for line in written if line.endswith("\n")]
    assert final[:len(complete)] == complete, "problems written before the kill were rewritten"
    assert len(final) == 20
    by_id = {json.loads(line)["id"]: json.loads(line) for line in _lines(full / "generations.jsonl")}
    assert {json.loads(line)["id"]: json.loads(line) for line in final} == by_id
    assert _scores(json.loads((resumed / "report.json").read_text())) == _scores(report)


def test_slurm_script_requeues_on_sigterm_and_the_rerun_completes(converted, tmp_path):
    checkpoint, benchmarks = converted
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "scontrol").write_text('#!/usr/bin/env bash\necho "$*" >> "$FAKE_SLURM_LOG"\n')
    (bin_dir / "scontrol").chmod(0o755)
    out = tmp_path / "out"
    env = dict(ENV, PATH=f"{bin_dir}{os.pathsep}{ENV['PATH']}", SLURM_JOB_ID="4242",
               FAKE_SLURM_LOG=str(tmp_path / "log"), PYTHON=sys.executable, MODEL=str(checkpoint.parent / "hf"),
               OUT=str(out), SAMPLES="2", BENCHMARKS=" ".join(map(str, benchmarks)), MAX_NEW_TOKENS="16",
               EXTRA_ARGS="--backend transformers --batch-problems 1 --workers 1")
    job = subprocess.Popen(["bash", str(ROOT / "slurm" / "evaluate.sh")], env=env, cwd=str(tmp_path),
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    while job.poll() is None and not _lines(out / "generations.jsonl"):
        time.sleep(0.005)
    job.send_signal(signal.SIGTERM)
    assert job.wait(timeout=120) == 0
    assert (tmp_path / "log").read_text() == "requeue 4242\n"
    assert len(_lines(out / "generations.jsonl")) < 20

    subprocess.run(["bash", str(ROOT / "slurm" / "evaluate.sh")], env=env, cwd=str(tmp_path), check=True,
                   capture_output=True, timeout=300)
    report = json.loads((out / "report.json").read_text())
    assert report["settings"]["sampling"] == {"samples": 2, "temperature": 0.6, "top_p": 0.95,
                                              "max_new_tokens": 16, "seed": 0}
    assert len(_lines(out / "generations.jsonl")) == 20
