"""Scoring sampled generations per benchmark: pass@1 over k samples (with standard error) and pass@k."""

import math
from collections import defaultdict

from redi_megatron.data.answer_checking import CORRECT, UNVERIFIED
from redi_megatron.data.checker_pool import CheckerPool


def pass_at_k(samples: int, correct: int, k: int) -> float:
    """Return the unbiased pass@k estimate for a problem with `correct` of `samples` right (Chen et al. 2021)."""
    if samples - correct < k:
        return 1.0
    return 1.0 - math.prod((samples - correct - i) / (samples - i) for i in range(k))


def grade(generations: list[dict], references: dict[str, dict], pool: CheckerPool) -> dict:
    """Return per-benchmark scores for generations [{id, samples}] against references {id: {answer, benchmark}}.

    Generations whose id has no reference are reported, not graded. pass@k uses k = the smallest
    number of samples any problem of the benchmark has.
    """
    graded = [g for g in generations if str(g["id"]) in references]
    items = [(sample, references[str(g["id"])]["answer"]) for g in graded for sample in g["samples"]]
    verdicts = iter(list(pool.verdicts(items)))
    per_benchmark: dict[str, list[list[str]]] = defaultdict(list)
    for g in graded:
        benchmark = str(references[str(g["id"])].get("benchmark") or g.get("benchmark") or "all")
        per_benchmark[benchmark].append([next(verdicts) for _ in g["samples"]])
    scores = {name: _benchmark_score(problems) for name, problems in sorted(per_benchmark.items())}
    graded_ids = {str(g["id"]) for g in graded}
    return {
        "benchmarks": scores,
        "average_pass@1": sum(s["pass@1"] for s in scores.values()) / len(scores) if scores else None,
        "generations_without_reference": sorted({str(g["id"]) for g in generations} - set(references)),
        "references_without_generations": sorted(set(references) - graded_ids),
    }


def _benchmark_score(problems: list[list[str]]) -> dict:
    """Return pass@1 (mean over problems of the fraction of correct samples), its standard error, pass@k."""
    k = min(len(verdicts) for verdicts in problems)
    per_problem = [sum(v == CORRECT for v in verdicts) / len(verdicts) for verdicts in problems]
    mean = sum(per_problem) / len(per_problem)
    variance = sum((p - mean) ** 2 for p in per_problem) / (len(per_problem) - 1) if len(per_problem) > 1 else 0.0
    return {
        "problems": len(problems),
        "k": k,
        "pass@1": mean,
        "pass@1_stderr": math.sqrt(variance / len(per_problem)),
        f"pass@{k}": sum(pass_at_k(len(v), sum(x == CORRECT for x in v), k) for v in problems) / len(problems),
        "unverified": sum(v == UNVERIFIED for verdicts in problems for v in verdicts),
    }


def score_table(report: dict) -> str:
    """Return the report as a fixed-width text table (percentages)."""
    lines = [f"{'benchmark':<20} {'problems':>8} {'k':>4} {'pass@1':>8} {'± se':>6} {'pass@k':>8} {'unverified':>10}"]
    for name, s in report["benchmarks"].items():
        pass_k = s["pass@%d" % s["k"]]
        lines.append(f"{name:<20} {s['problems']:>8} {s['k']:>4} {100 * s['pass@1']:>8.2f} "
                     f"{100 * s['pass@1_stderr']:>6.2f} {100 * pass_k:>8.2f} {s['unverified']:>10}")
    if report["average_pass@1"] is not None:
        lines.append(f"{'average (macro)':<20} {'':>8} {'':>4} {100 * report['average_pass@1']:>8.2f}")
    return "\n".join(lines)
