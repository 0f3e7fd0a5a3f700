"""Grading: pass@1 with standard error and pass@k per benchmark, through the checker pool and the CLI."""

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

from redi_megatron.data.grading import pass_at_k

REPO = Path(__file__).resolve().parents[2]


def _response(answer: str, closed: bool = True) -> str:
    return f"<think>\nwork\n{'</think>' if closed else ''}\n\nFinal: \\boxed{{{answer}}}"


def test_pass_at_k_estimator():
    assert pass_at_k(4, 0, 1) == 0.0 and pass_at_k(4, 4, 4) == 1.0
    assert pass_at_k(4, 1, 1) == pytest.approx(0.25)
    assert pass_at_k(4, 1, 4) == 1.0
    assert pass_at_k(5, 2, 2) == pytest.approx(1 - math.comb(3, 2) / math.comb(5, 2))


def test_grade_cli_scores_per_benchmark(tmp_path):
    references = [{"id": 1, "answer": "\\frac{1}{2}", "benchmark": "math500"},
                  {"id": 2, "answer": "(1,2]", "benchmark": "math500"},
                  {"id": 3, "answer": "42", "benchmark": "aime24"}]
    generations = [
        {"id": 1, "samples": [_response("0.5"), _response("1/2"), _response("2"), _response("\\dfrac12")]},
        {"id": 2, "samples": [_response("(1,2)"), _response("(1,2]", closed=False), _response("x"), None]},
        {"id": 3, "samples": [_response("42"), _response("42"), _response("42"), _response("42.0")]},
        {"id": 9, "samples": [_response("1")]},
    ]
    (tmp_path / "refs.jsonl").write_text("".join(json.dumps(r) + "\n" for r in references))
    (tmp_path / "gens.jsonl").write_text("".join(json.dumps(g) + "\n" for g in generations))
    result = subprocess.run([sys.executable, str(REPO / "tools" / "grade.py"), "--generations",
                             str(tmp_path / "gens.jsonl"), "--references", str(tmp_path / "refs.jsonl"),
                             "--out", str(tmp_path / "scores.json"), "--workers", "2"],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert "math500" in result.stdout and "pass@1" in result.stdout
    report = json.loads((tmp_path / "scores.json").read_text())
    math500 = report["benchmarks"]["math500"]
    assert math500["pass@1"] == pytest.approx(0.375)  # (3/4 + 0/4) / 2
    assert math500["pass@1_stderr"] == pytest.approx(0.375)  # std([0.75, 0], ddof=1) / sqrt(2)
    assert math500["pass@4"] == pytest.approx(0.5)
    assert report["benchmarks"]["aime24"]["pass@1"] == 1.0
    assert report["average_pass@1"] == pytest.approx((0.375 + 1.0) / 2)
    assert report["generations_without_reference"] == ["9"]
