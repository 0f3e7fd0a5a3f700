"""Build sft.jsonl / pairs.jsonl / report.json from raw OpenR1-Math-Raw style teacher data."""

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from redi_megatron.data.redi_data_build import build_redi_data  # noqa: E402
from redi_megatron.data.trace_selection import DEFAULT_DROP_SOURCES, DEFAULT_VERIFIERS, SelectionRules  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--input", required=True, help="JSONL / Parquet file, or a datasets.save_to_disk folder")
    parser.add_argument("--out", required=True, help="output folder")
    parser.add_argument("--drop-sources", nargs="*", default=list(DEFAULT_DROP_SOURCES),
                        help="sources to drop (default: cn_k12); pass the flag with no value to keep all")
    parser.add_argument("--verifiers", nargs="+", default=list(DEFAULT_VERIFIERS),
                        help="correctness.* columns that must all be True for a trace to be correct")
    parser.add_argument("--max-trace-chars", type=int, default=SelectionRules.max_trace_chars)
    parser.add_argument("--reverify", action="store_true",
                        help="recompute correctness with our checker and report agreement with the shipped labels")
    parser.add_argument("--workers", type=int, default=None, help="checker processes (default: all cores)")
    parser.add_argument("--timeout", type=float, default=5.0,
                        help="CPU seconds per answer check (not wall-clock: the selection does not depend on load)")
    parser.add_argument("--strict", action="store_true", help="exit non-zero if any row or trace was skipped")
    args = parser.parse_args(argv)

    rules = SelectionRules(tuple(args.drop_sources), tuple(args.verifiers), args.max_trace_chars)
    report = build_redi_data(args.input, args.out, rules, reverify=args.reverify,
                             workers=args.workers, timeout_s=args.timeout)
    headline = {key: report[key] for key in ("rows_read", "sft_examples", "pairs", "dropped",
                                             "skipped_rows", "skipped_traces")}
    print(json.dumps(headline, indent=2))
    if args.strict and report["bad_input_count"]:
        print(f"--strict: {report['bad_input_count']} bad rows/traces skipped; see {args.out}/report.json",
              file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
