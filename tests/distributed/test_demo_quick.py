"""The built-in demo runs end to end (quick mode) and gives the same table whatever the thread count."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def _demo_in_subprocess(out: Path, threads: int) -> dict:
    """Return results.json of a quick demo run in a fresh process whose environment asks for ``threads``."""
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads),
               PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])))
    code = f"from redi_megatron.demo import run_demo; run_demo({str(out)!r}, quick=True)"
    result = subprocess.run([sys.executable, "-c", code], env=env, cwd=str(ROOT), capture_output=True, text=True)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return json.loads((out / "results.json").read_text())


def _step_metrics(out: Path, run: str) -> list[dict]:
    """Return the per-step values that depend on the arithmetic (not on timing) of one training run."""
    lines = (out / "logs" / run / "metrics.jsonl").read_text().splitlines()
    keep = ("loss", "logp_chosen", "logp_rejected", "grad_norm")
    return [{key: value for key, value in json.loads(line).items() if key in keep} for line in lines]


@pytest.mark.timeout(1800)
def test_quick_demo_runs_end_to_end_with_the_same_table_on_1_and_2_threads(tmp_path):
    one = _demo_in_subprocess(tmp_path / "one", threads=1)
    two = _demo_in_subprocess(tmp_path / "two", threads=2)
    assert os.path.isfile(tmp_path / "one" / "loss_curves.png")
    rows = {row["method"]: row for row in one["results"]}
    assert {"sft", "redi"} <= set(rows)
    for row in rows.values():
        assert 0.0 <= row["accuracy"] <= 1.0
    assert (tmp_path / "one" / "results.txt").read_text() == (tmp_path / "two" / "results.txt").read_text()
    assert one["results"] == two["results"]  # exact floats: accuracy, log-prob trends
    for run in rows:
        assert _step_metrics(tmp_path / "one", run) == _step_metrics(tmp_path / "two", run)
    for run in rows:
        assert (tmp_path / "one" / "eval" / run / "generations.jsonl").read_text() == \
            (tmp_path / "two" / "eval" / run / "generations.jsonl").read_text()
