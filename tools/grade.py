"""Grade model generations against reference answers: pass@1 (mean over k samples, ± s.e.) and pass@k per benchmark.

--generations: JSONL of {"id": ..., "samples": [k responses]} ("generations" or "responses" also accepted),
               or one record per sample: {"id": ..., "sample": i, "response": "..."}.
--references:  JSONL of {"id": ..., "answer": ..., "benchmark": ...} (answer: LaTeX string or number).
--grader package (default): math-verify/sympy on the last box after </think>.
--grader paper: the REDI paper's rule (rllm's math reward), for numbers to put beside its Table 3.

Exit status: 0 graded; 1 some checks raised (counted under "errors", see "error_messages");
2 bad input (a repeated (id, sample), a reference without an answer, a malformed line).
"""

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from redi_megatron.data.answer_checking import GRADERS  # noqa: E402
from redi_megatron.data.answer_extraction import BOX_MODES  # noqa: E402
from redi_megatron.data.checker_pool import CheckerPool  # noqa: E402
from redi_megatron.data.grading import GenerationsError, grade, score_table  # noqa: E402

_SAMPLE_FIELDS = ("samples", "generations", "responses")


def _read_jsonl(path: str) -> list[dict]:
    with open(path, encoding="utf-8") as handle:
        return [json.loads(line) for line in handle if line.strip()]


def _generation(record: dict, line: int) -> dict:
    if not isinstance(record, dict):
        raise GenerationsError(f"generations line {line}: not a JSON object")
    samples = next((record[name] for name in _SAMPLE_FIELDS if name in record), None)
    if samples is None and "response" in record:
        samples = [record["response"]]
    if "id" not in record or not isinstance(samples, list) or not samples:
        raise GenerationsError(f"generations line {line}: needs an 'id' and a 'response' or a non-empty list "
                               f"in one of {_SAMPLE_FIELDS}")
    return {**record, "samples": samples}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--generations", required=True)
    parser.add_argument("--references", required=True)
    parser.add_argument("--out", default=None, help="write the JSON report here")
    parser.add_argument("--workers", type=int, default=None)
    parser.add_argument("--timeout", type=float, default=5.0,
                        help="CPU seconds per answer check (not wall-clock: verdicts do not depend on load)")
    parser.add_argument("--retries", type=int, default=1, help="re-runs of a check that ran out of CPU budget")
    parser.add_argument("--grader", choices=GRADERS, default="package",
                        help="package: math-verify/sympy; paper: the REDI paper's rule (rllm's math reward)")
    parser.add_argument("--boxes", choices=BOX_MODES, default="last",
                        help="last: the last box only (the paper's rule); joined: the trailing boxes joined by "
                             "and/or/commas as one answer (\\boxed{-2} and \\boxed{1} -> -2, 1; package grader)")
    parser.add_argument("--no-think-required", action="store_true",
                        help="grade the last box even when the response never closes </think> (non-reasoning models)")
    args = parser.parse_args(argv)
    if args.grader == "paper" and args.boxes != "last":
        parser.error("--grader paper reads the last box only; drop --boxes")

    try:
        generations = [_generation(r, i) for i, r in enumerate(_read_jsonl(args.generations), start=1)]
        references = {str(r["id"]): r for r in _read_jsonl(args.references)}
        with CheckerPool(args.workers, args.timeout, require_closed_thinking=not args.no_think_required,
                         grader=args.grader, boxes=args.boxes, retries=args.retries) as pool:
            report = grade(generations, references, pool)
    except (GenerationsError, KeyError, json.JSONDecodeError) as error:
        print(f"grade.py: {error}", file=sys.stderr)
        return 2
    print(score_table(report))
    if args.out:
        Path(args.out).write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    else:
        print(json.dumps(report, indent=2))
    if report["errors"]:
        print(f"grade.py: {report['errors']} check(s) raised, first: {report['error_messages'][:1]}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
