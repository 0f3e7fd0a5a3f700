"""build_redi_data: the paper's selection rules on a synthetic OpenR1 file, and bad input handling."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from redi_megatron.data.redi_data_build import build_redi_data
from redi_megatron.data.trace_selection import SelectionRules

REPO = Path(__file__).resolve().parents[2]
VERIFIERS = ("llama_verification", "math_verify_reparsed_answer")


def _trace(answer: str, tag: str) -> str:
    return f"<think>\nreasoning {tag}\n</think>\n\nSo the answer is \\boxed{{{answer}}}."


def _row(problem, labels, source="olympiads", valid="yes", answer="4", traces=None):
    """A row whose generation i is labelled by both verifiers as labels[i] = (llama, math_verify)."""
    traces = traces or [_trace(answer if all(pair) else "5", f"{problem}-{i}") for i, pair in enumerate(labels)]
    return {
        "problem": problem, "answer": answer, "source": source, "problem_is_valid": valid,
        "generations": traces,
        "correctness": {"llama_verification": [pair[0] for pair in labels],
                        "math_verify_reparsed_answer": [pair[1] for pair in labels],
                        "math_verify_answer": [None] * len(labels)},
    }


RIGHT, WRONG, HALF = (True, True), (False, False), (True, False)

ROWS = [
    _row("p1", [WRONG, RIGHT, RIGHT, WRONG]),          # positive 1, negative 0
    _row("p2", [RIGHT, RIGHT]),                         # sft only
    _row("p3", [WRONG, WRONG]),                         # no correct trace
    _row("p4", [RIGHT, WRONG], source="cn_k12"),        # dropped source
    _row("p5", [RIGHT, WRONG], valid="no"),             # invalid problem
    _row("p6", [HALF, RIGHT, WRONG]),                   # verifiers disagree on 0: 0 is the negative
    _row("p7", [(True, None), RIGHT]),                  # null label is not a yes: 0 is the negative
]
EXPECTED_SFT = {"p1": 1, "p2": 0, "p6": 1, "p7": 1}
EXPECTED_PAIRS = {"p1": (1, 0), "p6": (1, 0), "p7": (1, 0)}


def _write_jsonl(path: Path, rows) -> Path:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    return path


def _read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def _check_selection(out: Path, rows=ROWS):
    by_problem = {row["problem"]: row for row in rows}
    sft = _read_jsonl(out / "sft.jsonl")
    assert {e["problem"]: e["response"] for e in sft} == {
        p: by_problem[p]["generations"][i] for p, i in EXPECTED_SFT.items()}
    pairs = _read_jsonl(out / "pairs.jsonl")
    assert {e["problem"]: (e["chosen"], e["rejected"]) for e in pairs} == {
        p: (by_problem[p]["generations"][c], by_problem[p]["generations"][r]) for p, (c, r) in EXPECTED_PAIRS.items()}


def test_selection_follows_the_paper_rules(tmp_path):
    report = build_redi_data(_write_jsonl(tmp_path / "raw.jsonl", ROWS), tmp_path / "out", progress=False)
    _check_selection(tmp_path / "out")
    assert report["dropped"] == {"no_correct_trace": 1, "source:cn_k12": 1, "problem_not_valid": 1,
                                 "no_incorrect_trace (sft only)": 1}
    assert report["bad_input_count"] == 0
    assert json.loads((tmp_path / "out" / "report.json").read_text()) == report


def test_parquet_and_saved_dataset_inputs_give_the_same_selection(tmp_path):
    import datasets

    dataset = datasets.Dataset.from_list(ROWS)
    dataset.to_parquet(str(tmp_path / "raw.parquet"))
    dataset.save_to_disk(str(tmp_path / "saved"))
    for name in ("raw.parquet", "saved"):
        build_redi_data(tmp_path / name, tmp_path / f"out-{name}", progress=False)
        _check_selection(tmp_path / f"out-{name}")


def test_drop_sources_and_verifiers_are_configurable(tmp_path):
    rules = SelectionRules(drop_sources=(), verifiers=("llama_verification",))
    report = build_redi_data(_write_jsonl(tmp_path / "raw.jsonl", ROWS), tmp_path / "out", rules, progress=False)
    pairs = {e["problem"]: e for e in _read_jsonl(tmp_path / "out" / "pairs.jsonl")}
    assert "p4" in pairs  # cn_k12 kept
    assert pairs["p6"]["chosen"] == ROWS[5]["generations"][0]  # llama alone calls generation 0 correct
    assert "source:cn_k12" not in report["dropped"]


def test_reverify_recomputes_labels_and_reports_agreement(tmp_path):
    rows = [dict(_row("p1", [WRONG, RIGHT, RIGHT, WRONG])), _row("p8", [RIGHT, WRONG], answer="\\frac{1}{2}")]
    # Shipped labels say generation 0 is right; our checker finds 0.5 == 1/2 for it, and a wrong 5 in 1.
    rows[1]["generations"] = [_trace("0.5", "a"), _trace("5", "b")]
    rows[0]["correctness"]["llama_verification"][0] = True
    rows[0]["correctness"]["math_verify_reparsed_answer"][0] = True  # a wrong shipped label
    del rows[1]["correctness"]
    report = build_redi_data(_write_jsonl(tmp_path / "raw.jsonl", rows), tmp_path / "out",
                             reverify=True, workers=1, progress=False)
    pairs = {e["problem"]: e for e in _read_jsonl(tmp_path / "out" / "pairs.jsonl")}
    assert pairs["p1"]["chosen"] == rows[0]["generations"][1]
    assert pairs["p1"]["rejected"] == rows[0]["generations"][0]
    assert pairs["p8"]["chosen"] == rows[1]["generations"][0]
    audit = report["reverify"]
    assert audit["verdicts"] == {"correct": 3, "incorrect": 3}
    assert audit["agreement"] == {"agree": 3, "ours_incorrect_shipped_correct": 1, "unlabelled": 2}
    assert audit["agreement_rate"] == pytest.approx(0.75)


def test_bad_input_is_skipped_and_counted_with_row_numbers(tmp_path):
    good = _row("p1", [WRONG, RIGHT])
    huge = _row("p9", [RIGHT, WRONG], traces=[_trace("4", "x") + "y" * 10_000_000, _trace("5", "z")])
    mixed = _row("p10", [WRONG, RIGHT, RIGHT, RIGHT, RIGHT],
                 traces=[None, 7, "   ", _trace("4", "ok"), _trace("4", "also ok")])
    missing = dict(good)
    del missing["generations"]
    lines = [
        json.dumps(good).encode(),                       # row 1: fine
        b'{"problem": "p2", "generations": [',            # row 2: malformed JSON
        json.dumps(missing).encode(),                     # row 3: missing field
        json.dumps({**good, "generations": None}).encode(),  # row 4: null generations
        json.dumps(good).encode()[:-1] + b', "x": "\xff\xfe"}',  # row 5: not UTF-8
        json.dumps(huge).encode(),                        # row 6: a 10 MB trace
        json.dumps(mixed).encode(),                       # row 7: null, non-string, empty traces
        json.dumps({**good, "problem": 3}).encode(),      # row 8: wrong type
        b"[1, 2]",                                        # row 9: not an object
    ]
    raw = tmp_path / "raw.jsonl"
    raw.write_bytes(b"\n".join(lines) + b"\n")
    report = build_redi_data(raw, tmp_path / "out", progress=False)
    listed = {(s["row"], s.get("generation"), s["reason"]) for s in report["skips"]}
    assert listed == {(2, None, "malformed_json"), (3, None, "missing_field:generations"),
                      (4, None, "missing_field:generations"), (5, None, "non_utf8"),
                      (6, 0, "trace_too_long"), (7, 0, "null_trace"), (7, 1, "non_string_trace"),
                      (7, 2, "empty_trace"), (8, None, "bad_field:problem"), (9, None, "not_an_object")}
    assert report["rows_read"] == 9 and report["bad_input_count"] == 10
    sft = {e["problem"]: e["response"] for e in _read_jsonl(tmp_path / "out" / "sft.jsonl")}
    # Unusable traces are in neither role: p9 has no usable correct trace; p10's positive is generation 3.
    assert sft == {"p1": good["generations"][1], "p10": mixed["generations"][3]}


def test_cli_strict_turns_skips_into_failure(tmp_path):
    raw = tmp_path / "raw.jsonl"
    raw.write_bytes(json.dumps(ROWS[0]).encode() + b"\nnot json\n")
    command = [sys.executable, str(REPO / "tools" / "build_redi_data.py"), "--input", str(raw)]
    lenient = subprocess.run(command + ["--out", str(tmp_path / "a")], capture_output=True, text=True)
    assert lenient.returncode == 0, lenient.stderr
    strict = subprocess.run(command + ["--out", str(tmp_path / "b"), "--strict"], capture_output=True, text=True)
    assert strict.returncode == 1
    assert json.loads((tmp_path / "b" / "report.json").read_text())["skips"] == [
        {"row": 2, "file": str(raw), "reason": "malformed_json"}]
