"""benchmarks/gpu_check.py --cpu --tiny: every section of the prepared GPU check runs on CPU and passes.

The GPU run is one prepared call on a lent machine; this dry run keeps its code paths from rotting
between such calls (the correctness section compares against transformers and Megatron here too).
"""

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.timeout(900)
def test_gpu_check_dry_run_passes_on_cpu(tmp_path):
    out = tmp_path / "gpu_check.json"
    completed = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "gpu_check.py"), "--cpu", "--tiny",
         "--out", str(out), "--part-timeout", "600"],
        capture_output=True, text=True, timeout=880)
    assert completed.returncode == 0, completed.stdout[-4000:] + completed.stderr[-4000:]
    results = json.loads(out.read_text())
    parts = results["parts"]
    assert set(parts) == {"correctness", "loss_head", "stage2:package",
                          "stage2:package_recompute", "stage2:hf_trl_style"}
    checks = {row["check"]: row for row in parts["correctness"]["rows"]}
    assert all(row["passed"] for row in checks.values()), checks
    assert len(checks) == 12
    assert {row["path"] for row in parts["loss_head"]["rows"]} >= {"package", "megatron"}
    for variant in ("package", "package_recompute", "hf_trl_style"):
        assert parts[f"stage2:{variant}"]["tokens_per_second"] > 0
    # The same REDI loss on the same pairs, whichever loop computed it: recompute changes nothing.
    assert parts["stage2:package"]["loss"] == pytest.approx(
        parts["stage2:package_recompute"]["loss"], rel=1e-6)
    assert "| check |" in completed.stdout
