"""Scoring sampled generations per benchmark: pass@1 over k samples (with standard error) and pass@k.

Input records: ``{"id", "samples": [responses]}``, optionally with ``"sample": i`` (the index of the
first response of the record, default 0), so k samples of a problem may come as one record or as k
records ``{"id", "sample": i, "response": text}``. Two records giving the same (id, sample
index) are an error (GenerationsError names the id): counting a problem twice would bias pass@1,
and silently keeping one would hide a broken generation run. References ``{id: {"answer",
"benchmark"}}`` take numbers (AIME) as well as LaTeX strings; a missing or null answer is an
error naming the ids.
"""

import math
from collections import defaultdict

from redi_megatron.data.answer_checking import CORRECT, ERROR, UNVERIFIED, reference_text
from redi_megatron.data.checker_pool import CheckerPool


class GenerationsError(ValueError):
    """The generations or references cannot be graded as given (duplicates, missing answers)."""


def pass_at_k(samples: int, correct: int, k: int) -> float:
    """Return the unbiased pass@k estimate for a problem with `correct` of `samples` right (Chen et al. 2021)."""
    if samples - correct < k:
        return 1.0
    return 1.0 - math.prod((samples - correct - i) / (samples - i) for i in range(k))


def grade(generations: list[dict], references: dict[str, dict], pool: CheckerPool) -> dict:
    """Return per-benchmark scores for generations against references {id: {answer, benchmark}}.

    Generations whose id has no reference are reported, not graded. pass@k uses k = the smallest
    number of samples any problem of the benchmark has. The report names the grader and its
    settings, and counts unverified (CPU budget spent after retries), retried and errored checks
    (with the first messages).
    Raises GenerationsError for a repeated (id, sample) or a reference without a usable answer.
    """
    samples = samples_by_id(generations)
    graded = [problem_id for problem_id in samples if problem_id in references]
    answers = reference_answers(references, graded)
    items = [(response, answers[problem_id]) for problem_id in graded for response in samples[problem_id]]
    retried_before, errors_before, listed_before = pool.retried, pool.counts[ERROR], len(pool.errors)
    verdicts = iter(list(pool.verdicts(items)))
    per_benchmark: dict[str, list[list[str]]] = defaultdict(list)
    named_in_generations = {str(g["id"]): g.get("benchmark") for g in generations}
    for problem_id in graded:
        benchmark = str(references[problem_id].get("benchmark") or named_in_generations[problem_id] or "all")
        per_benchmark[benchmark].append([next(verdicts) for _ in samples[problem_id]])
    scores = {name: _benchmark_score(problems) for name, problems in sorted(per_benchmark.items())}
    return {
        "grader": pool.settings(),
        "benchmarks": scores,
        "average_pass@1": sum(s["pass@1"] for s in scores.values()) / len(scores) if scores else None,
        "retried": pool.retried - retried_before,
        "errors": pool.counts[ERROR] - errors_before,
        "error_messages": pool.errors[listed_before:],
        "generations_without_reference": sorted(set(samples) - set(references)),
        "references_without_generations": sorted(set(references) - set(graded)),
    }


def samples_by_id(generations: list[dict]) -> dict[str, list[str]]:
    """Return {id: responses in sample order}; raise GenerationsError on a repeated (id, sample index)."""
    indexed: dict[str, dict[int, str]] = defaultdict(dict)
    for record in generations:
        problem_id = str(record["id"])
        first = record.get("sample", 0)
        if isinstance(first, bool) or not isinstance(first, int) or first < 0:
            raise GenerationsError(f"generation for id {problem_id!r}: 'sample' must be an index >= 0, got {first!r}")
        responses = record["samples"] if "samples" in record else [record["response"]]
        for offset, response in enumerate(responses):
            index = first + offset
            if index in indexed[problem_id]:
                raise GenerationsError(f"id {problem_id!r} has sample {index} more than once in the generations; "
                                       "give each of the k samples its own 'sample' index, or remove the repeat")
            # A null / non-string sample is a failed generation: graded as wrong, not dropped.
            indexed[problem_id][index] = response if isinstance(response, str) else ""
    return {problem_id: [by_index[i] for i in sorted(by_index)] for problem_id, by_index in indexed.items()}


def reference_answers(references: dict[str, dict], ids: list[str]) -> dict[str, str]:
    """Return {id: reference answer as text} for ids; raise GenerationsError naming ids without a usable answer."""
    answers, bad = {}, []
    for problem_id in ids:
        try:
            answers[problem_id] = reference_text(references[problem_id].get("answer"))
        except ValueError as error:
            bad.append(f"{problem_id} ({error})")
    if bad:
        listed = "; ".join(bad[:10]) + (f"; and {len(bad) - 10} more" if len(bad) > 10 else "")
        raise GenerationsError(f"{len(bad)} reference(s) have no usable answer: {listed}")
    return answers


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
        "errors": sum(v == ERROR for verdicts in problems for v in verdicts),
    }


def score_table(report: dict) -> str:
    """Return the report as a fixed-width text table (percentages), headed by the grader that produced it."""
    grader = report.get("grader", {})
    lines = [f"grader: {grader.get('grader', '?')} (boxes: {grader.get('boxes', '?')}, "
             f"CPU budget {grader.get('cpu_budget_s', '?')} s per check, retried {report.get('retried', 0)})",
             f"{'benchmark':<20} {'problems':>8} {'k':>4} {'pass@1':>8} {'± se':>6} {'pass@k':>8} {'unverified':>10}"]
    for name, s in report["benchmarks"].items():
        pass_k = s["pass@%d" % s["k"]]
        lines.append(f"{name:<20} {s['problems']:>8} {s['k']:>4} {100 * s['pass@1']:>8.2f} "
                     f"{100 * s['pass@1_stderr']:>6.2f} {100 * pass_k:>8.2f} {s['unverified']:>10}")
    if report["average_pass@1"] is not None:
        lines.append(f"{'average (macro)':<20} {'':>8} {'':>4} {100 * report['average_pass@1']:>8.2f}")
    return "\n".join(lines)
