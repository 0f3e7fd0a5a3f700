"""Building the REDI training sets (sft.jsonl, pairs.jsonl, report.json) from raw teacher rows."""

import collections
import itertools
import json
from collections.abc import Iterator
from dataclasses import asdict
from pathlib import Path

from tqdm import tqdm

from redi_megatron.data.answer_checking import CORRECT, ERROR, UNVERIFIED
from redi_megatron.data.checker_pool import CheckerPool
from redi_megatron.data.raw_traces import RawRow, read_raw_rows
from redi_megatron.data.trace_selection import (BadInput, SelectionRules, TeacherRow, drop_reason,
                                                select_traces, shipped_labels, teacher_row)

MAX_LISTED_SKIPS = 10_000
_CHUNK_ROWS = 256


def build_redi_data(input_path: str | Path, out_dir: str | Path, rules: SelectionRules = SelectionRules(),
                    reverify: bool = False, workers: int | None = None, timeout_s: float = 5.0,
                    progress: bool = True) -> dict:
    """Write sft.jsonl, pairs.jsonl and report.json under out_dir; return the report.

    Rows are streamed (the raw set does not fit in memory). With ``reverify`` the correctness of
    every usable trace comes from our checker instead of the shipped labels, and the report gives
    the agreement between the two.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    report = _Report(str(input_path), rules, reverify)
    pool = CheckerPool(workers=workers, timeout_s=timeout_s) if reverify else None
    rows = tqdm(read_raw_rows(input_path), desc="rows", unit="row", disable=not progress)
    try:
        with open(out_dir / "sft.jsonl", "w", encoding="utf-8") as sft, \
                open(out_dir / "pairs.jsonl", "w", encoding="utf-8") as pairs:
            for chunk in _chunks(rows, _CHUNK_ROWS):
                kept = _kept_rows(chunk, rules, reverify, report)
                verdicts = _our_verdicts(kept, pool) if pool else None
                for i, row in enumerate(kept):
                    correct = _correctness(row, verdicts[i] if verdicts else None, report)
                    _write_selection(row, correct, sft, pairs, report)
        if pool:
            report.checker = {**pool.settings(), "retried": pool.retried, "killed_workers": pool.killed_workers,
                              "error_messages": pool.errors}
    finally:
        if pool:
            pool.close()
    summary = report.summary()
    (out_dir / "report.json").write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")
    return summary


def _kept_rows(chunk: list[RawRow], rules: SelectionRules, reverify: bool, report: "_Report") -> list[TeacherRow]:
    """Return the rows of a chunk that are readable and pass the rules; count the others."""
    kept = []
    for raw in chunk:
        report.rows_read += 1
        try:
            row = teacher_row(raw, rules, labels_required=not reverify, answer_required=reverify)
        except BadInput as bad:
            report.skip_row(raw, bad.reason)
            continue
        if reverify:
            row.shipped_labels = _optional_labels(raw, rules)
        reason = drop_reason(row, rules)
        if reason:
            report.dropped[reason] += 1
            continue
        for generation, problem in row.trace_skips:
            report.skip_trace(raw, generation, problem)
        kept.append(row)
    return kept


def _optional_labels(raw: RawRow, rules: SelectionRules) -> list[bool] | None:
    """Return shipped labels when the row has usable ones (for the agreement audit), else None."""
    try:
        return shipped_labels(raw.record, rules.verifiers, len(raw.record["generations"]))
    except BadInput:
        return None


def _our_verdicts(rows: list[TeacherRow], pool: CheckerPool) -> list[list[str | None]]:
    """Return our checker's verdict for every usable trace of every row (None for unusable ones)."""
    items = [(trace, row.answer) for row in rows for trace in row.traces if trace is not None]
    flat = iter(list(pool.verdicts(items)))
    return [[next(flat) if trace is not None else None for trace in row.traces] for row in rows]


def _correctness(row: TeacherRow, ours: list[str | None] | None, report: "_Report") -> list[bool | None]:
    """Return per-trace correctness (None = unusable) from our verdicts or the shipped labels."""
    if ours is None:
        return [label if trace is not None else None for trace, label in zip(row.traces, row.shipped_labels)]
    for i, verdict in enumerate(ours):
        if verdict is not None:
            report.audit(verdict, row.shipped_labels[i] if row.shipped_labels else None)
    # An unverified trace (CPU budget spent after a retry) or one whose check raised is neither a
    # trustworthy positive nor negative.
    return [None if verdict in (None, UNVERIFIED, ERROR) else verdict == CORRECT for verdict in ours]


def _write_selection(row: TeacherRow, correct: list[bool | None], sft, pairs, report: "_Report") -> None:
    positive, negative = select_traces(correct)
    if positive is None:
        report.dropped["no_correct_trace"] += 1
        return
    sft.write(json.dumps({"problem": row.problem, "response": row.traces[positive]}, ensure_ascii=False) + "\n")
    report.sft_examples += 1
    if negative is None:
        report.dropped["no_incorrect_trace (sft only)"] += 1
        return
    pair = {"problem": row.problem, "chosen": row.traces[positive], "rejected": row.traces[negative]}
    pairs.write(json.dumps(pair, ensure_ascii=False) + "\n")
    report.pairs += 1


def _chunks(items, size: int) -> Iterator[list]:
    iterator = iter(items)
    while chunk := list(itertools.islice(iterator, size)):
        yield chunk


class _Report:
    """Counts of everything kept, dropped by rule, or skipped as bad input (with row numbers)."""

    def __init__(self, input_path: str, rules: SelectionRules, reverify: bool):
        self.input_path = input_path
        self.rules = rules
        self.reverify = reverify
        self.rows_read = self.sft_examples = self.pairs = 0
        self.dropped = collections.Counter()
        self.skipped_rows = collections.Counter()
        self.skipped_traces = collections.Counter()
        self.skips: list[dict] = []
        self.unlisted_skips = 0
        self.verdicts = collections.Counter()
        self.agreement = collections.Counter()
        self.checker: dict = {}

    def skip_row(self, raw: RawRow, reason: str) -> None:
        self.skipped_rows[reason] += 1
        self._list({"row": raw.row, "file": raw.file, "reason": reason})

    def skip_trace(self, raw: RawRow, generation: int, reason: str) -> None:
        self.skipped_traces[reason] += 1
        self._list({"row": raw.row, "file": raw.file, "generation": generation, "reason": reason})

    def audit(self, verdict: str, shipped: bool | None) -> None:
        self.verdicts[verdict] += 1
        if shipped is None:
            self.agreement["unlabelled"] += 1
        elif verdict in (UNVERIFIED, ERROR):
            self.agreement[verdict] += 1
        elif (verdict == CORRECT) == shipped:
            self.agreement["agree"] += 1
        else:
            self.agreement["ours_correct_shipped_incorrect" if shipped is False else "ours_incorrect_shipped_correct"] += 1

    def _list(self, skip: dict) -> None:
        if len(self.skips) < MAX_LISTED_SKIPS:
            self.skips.append(skip)
        else:
            self.unlisted_skips += 1

    def summary(self) -> dict:
        errors = sum(self.skipped_rows.values()) + sum(self.skipped_traces.values())
        summary = {
            "input": self.input_path,
            "rules": {name: list(value) if isinstance(value, tuple) else value
                      for name, value in asdict(self.rules).items()},
            "rows_read": self.rows_read,
            "sft_examples": self.sft_examples,
            "pairs": self.pairs,
            "dropped": dict(self.dropped),
            "skipped_rows": dict(self.skipped_rows),
            "skipped_traces": dict(self.skipped_traces),
            "bad_input_count": errors,
            "skips": self.skips,
            "skips_not_listed": self.unlisted_skips,
        }
        if self.reverify:
            compared = sum(self.agreement[k] for k in
                           ("agree", "ours_correct_shipped_incorrect", "ours_incorrect_shipped_correct"))
            summary["reverify"] = {
                "verdicts": dict(self.verdicts),
                "agreement": dict(self.agreement),
                "agreement_rate": self.agreement["agree"] / compared if compared else None,
                "checker": self.checker,
            }
        return summary
