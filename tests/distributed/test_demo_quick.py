"""The built-in demo runs end to end (quick mode): data, SFT, stage 2, export, grading, table."""

import os

import pytest


@pytest.mark.timeout(600)
def test_quick_demo_runs_end_to_end(tmp_path):
    from redi_megatron.demo import run_demo

    results = run_demo(str(tmp_path / "demo"), quick=True)
    assert os.path.isfile(tmp_path / "demo" / "loss_curves.png")
    rows = {row["method"]: row for row in results["results"]}
    assert {"sft", "redi"} <= set(rows)
    for row in rows.values():
        assert 0.0 <= row["accuracy"] <= 1.0
    assert os.path.isfile(tmp_path / "demo" / "results.json")
