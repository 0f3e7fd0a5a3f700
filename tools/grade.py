"""Grade model generations against reference answers: pass@1 (mean over k samples, ± s.e.) and pass@k per benchmark.

--generations: JSONL of {"id": ..., "samples": [k responses]} ("generations" or "responses" also accepted).
--references:  JSONL of {"id": ..., "answer": ..., "benchmark": ...}.
"""

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from redi_megatron.data.checker_pool import CheckerPool  # noqa: E402
from redi_megatron.data.grading import grade, score_table  # noqa: E402

_SAMPLE_FIELDS = ("samples", "generations", "responses")


def _read_jsonl(path: str) -> list[dict]:
    with open(path, encoding="utf-8") as handle:
        return [json.loads(line) for line in handle if line.strip()]


def _generation(record: dict, line: int) -> dict:
    samples = next((record[name] for name in _SAMPLE_FIELDS if name in record), None)
    if "id" not in record or not isinstance(samples, list) or not samples:
        raise SystemExit(f"generations line {line}: needs an 'id' and a non-empty list in one of {_SAMPLE_FIELDS}")
    # A null / non-string sample is a failed generation: graded as wrong, not dropped.
    return {**record, "samples": [s if isinstance(s, str) else "" for s in samples]}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--generations", required=True)
    parser.add_argument("--references", required=True)
    parser.add_argument("--out", default=None, help="write the JSON report here")
    parser.add_argument("--workers", type=int, default=None)
    parser.add_argument("--timeout", type=float, default=5.0, help="seconds per answer check")
    parser.add_argument("--no-think-required", action="store_true",
                        help="grade the last box even when the response never closes </think> (non-reasoning models)")
    args = parser.parse_args(argv)

    generations = [_generation(r, i) for i, r in enumerate(_read_jsonl(args.generations), start=1)]
    references = {str(r["id"]): r for r in _read_jsonl(args.references)}
    with CheckerPool(args.workers, args.timeout, require_closed_thinking=not args.no_think_required) as pool:
        report = grade(generations, references, pool)
    print(score_table(report))
    if args.out:
        Path(args.out).write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    else:
        print(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
