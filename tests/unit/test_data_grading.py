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


def _grade_cli(tmp_path, references, generations, *flags):
    (tmp_path / "refs.jsonl").write_text("".join(json.dumps(r) + "\n" for r in references))
    (tmp_path / "gens.jsonl").write_text("".join(json.dumps(g) + "\n" for g in generations))
    result = subprocess.run([sys.executable, str(REPO / "tools" / "grade.py"), "--generations",
                             str(tmp_path / "gens.jsonl"), "--references", str(tmp_path / "refs.jsonl"),
                             "--out", str(tmp_path / "scores.json"), "--workers", "1", *flags],
                            capture_output=True, text=True, timeout=300)
    report = json.loads((tmp_path / "scores.json").read_text()) if result.returncode in (0, 1) else None
    return result, report


def test_numeric_references_per_sample_records_and_unclosed_boxes(tmp_path):
    """AIME-style numeric answers grade like strings; k samples may come one record each; 20,000 unclosed
    boxes after </think> are graded (wrong), not timed out."""
    references = [{"id": "a1", "answer": 42, "benchmark": "aime24"}, {"id": "a2", "answer": 0.5, "benchmark": "aime24"},
                  {"id": "m1", "answer": "7", "benchmark": "math500"}]
    generations = [{"id": "a1", "sample": 0, "response": _response("42")},
                   {"id": "a1", "sample": 1, "response": _response("42")},
                   {"id": "a2", "samples": [_response("\\frac{1}{2}"), _response("0.5")]},
                   {"id": "m1", "samples": ["<think>x</think>" + "\\boxed{" * 20_000, _response("7")]}]
    result, report = _grade_cli(tmp_path, references, generations)
    assert result.returncode == 0, result.stderr
    assert report["benchmarks"]["aime24"]["pass@1"] == 1.0
    assert report["benchmarks"]["aime24"]["k"] == 2
    assert report["benchmarks"]["math500"]["pass@1"] == 0.5
    assert report["benchmarks"]["math500"]["unverified"] == 0
    assert report["grader"]["grader"] == "package" and report["grader"]["boxes"] == "last"
    assert report["retried"] == 0 and report["errors"] == 0
    assert result.stdout.startswith("grader: package")


@pytest.mark.parametrize("references, generations, message", [
    ([{"id": 1, "answer": None}], [{"id": 1, "samples": [_response("1")]}], "1 (reference answer must be"),
    ([{"id": 1}], [{"id": 1, "samples": [_response("1")]}], "no usable answer"),
    ([{"id": 1, "answer": "1"}], [{"id": 1, "samples": [_response("1")]}, {"id": 1, "samples": [_response("1")]}],
     "id '1' has sample 0 more than once"),
    ([{"id": 1, "answer": "1"}], [{"id": 1, "sample": 0, "response": "a"}, {"id": 1, "sample": 0, "response": "b"}],
     "id '1' has sample 0 more than once"),
])
def test_unusable_input_fails_loudly_naming_the_id(tmp_path, references, generations, message):
    result, _ = _grade_cli(tmp_path, references, generations)
    assert result.returncode == 2
    assert message in result.stderr


def test_paper_grader_is_recorded_and_stricter(tmp_path):
    pytest.importorskip("pylatexenc")
    references = [{"id": 1, "answer": "(3,2)"}, {"id": 2, "answer": "\\frac{1}{12}"}, {"id": 3, "answer": "\\frac12"}]
    generations = [{"id": 1, "samples": [_response("(p,q)=(3,2)")]}, {"id": 2, "samples": [_response("0.0833333333")]},
                   {"id": 3, "samples": [_response("0.5")]}]
    package, package_report = _grade_cli(tmp_path, references, generations)
    paper, paper_report = _grade_cli(tmp_path, references, generations, "--grader", "paper")
    assert package.returncode == paper.returncode == 0, package.stderr + paper.stderr
    assert package_report["benchmarks"]["all"]["pass@1"] == 1.0
    assert paper_report["benchmarks"]["all"]["pass@1"] == pytest.approx(1 / 3)
    assert paper_report["grader"]["grader"] == "paper"
    assert paper.stdout.startswith("grader: paper")
