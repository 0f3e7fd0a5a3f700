"""The evaluation report: the package's grading (pass@1 ± s.e., pass@k, as tools/grade.py) plus response lengths.

pass@1 of a benchmark is the mean over problems of each problem's fraction of correct samples; its
standard error is the sample standard deviation of those per-problem fractions over sqrt(problems)
(it measures problem-to-problem spread, sampling noise included). pass@k is Chen et al.'s (2021)
unbiased estimator with k = the number of samples. A response that never closes its thinking
(no ``</think>``) is graded wrong.
"""

from collections import defaultdict

from redi_megatron.config import ConfigError
from redi_megatron.data.answer_extraction import END_OF_THINKING
from redi_megatron.data.checker_pool import CheckerPool
from redi_megatron.data.grading import grade, score_table
from redi_megatron.evaluation.benchmarks import Problem

def checker_pool(grader: str, workers: int | None, timeout_s: float, boxes: str = "last") -> CheckerPool:
    """Return a checker pool grading with the package's checker or the paper's rule."""
    try:
        return CheckerPool(workers, timeout_s, grader=grader, boxes=boxes)
    except ValueError as error:
        raise ConfigError(f"--grader {grader} --boxes {boxes}: {error}") from None


def build_report(records: list[dict], problems: list[Problem], pool: CheckerPool) -> dict:
    """Return grade()'s report for the records, with per-benchmark response-length statistics under 'lengths'."""
    references = {p.id: p.reference() for p in problems}
    report = grade(records, references, pool)
    report["lengths"] = length_statistics(records, references)
    return report


def length_statistics(records: list[dict], references: dict[str, dict]) -> dict:
    """Return per benchmark: samples, mean and max tokens, share truncated, share with thinking left open."""
    per_benchmark = defaultdict(lambda: {"tokens": [], "truncated": 0, "open": 0})
    for record in records:
        if record["id"] not in references:
            continue
        stats = per_benchmark[references[record["id"]]["benchmark"]]
        stats["tokens"].extend(record["num_tokens"])
        stats["truncated"] += sum(record["truncated"])
        stats["open"] += sum(END_OF_THINKING not in sample for sample in record["samples"])
    out = {}
    for name, stats in sorted(per_benchmark.items()):
        count = len(stats["tokens"])
        out[name] = {"samples": count, "mean_tokens": sum(stats["tokens"]) / count, "max_tokens": max(stats["tokens"]),
                     "truncated_share": stats["truncated"] / count, "unclosed_thinking_share": stats["open"] / count}
    return out


def report_text(report: dict, model_name: str = "model") -> str:
    """Return the score table, the length table and the paper-style row (pass@1 per benchmark and average)."""
    lines = [score_table(report), "",
             f"{'benchmark':<20} {'samples':>8} {'mean tokens':>11} {'max':>7} {'truncated':>9} {'no </think>':>11}"]
    for name, s in report["lengths"].items():
        lines.append(f"{name:<20} {s['samples']:>8} {s['mean_tokens']:>11.1f} {s['max_tokens']:>7} "
                     f"{100 * s['truncated_share']:>8.1f}% {100 * s['unclosed_thinking_share']:>10.1f}%")
    names = list(report["benchmarks"])
    if names:
        lines += ["", "| Model | " + " | ".join(names) + " | Avg |", "|---" * (len(names) + 2) + "|",
                  f"| {model_name} | " + " | ".join(f"{100 * report['benchmarks'][n]['pass@1']:.1f}" for n in names)
                  + f" | {100 * report['average_pass@1']:.1f} |"]
    return "\n".join(lines)
