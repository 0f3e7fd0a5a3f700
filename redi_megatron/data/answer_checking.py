"""Symbolic answer equivalence (math-verify / sympy) under a per-check CPU-time budget.

The budget counts CPU time of the checking process (``ITIMER_PROF``), not wall-clock time, so a
verdict does not change with the load of the machine: a check that needs 0.3 s of CPU gets it
whether it runs alone or beside twenty other processes.
"""

import contextlib
import logging
import math
import signal

from math_verify import ExprExtractionConfig, LatexExtractionConfig, parse, verify

from redi_megatron.data.answer_extraction import BOX_MODES, final_answer

CORRECT = "correct"
INCORRECT = "incorrect"
UNVERIFIED = "unverified"  # the CPU-time budget ran out (after retries, in checker_pool)
ERROR = "error"  # the checker itself raised: a bug to report, never a verdict about the answer
GRADERS = ("package", "paper")

_EXTRACTION = (LatexExtractionConfig(boxed_match_priority=0), ExprExtractionConfig())
_PERCENT_SIGNS = ("\\%", "%")

# math-verify warns once that its own alarms are off; they are, on purpose (check_answer sets one).
logging.getLogger("math_verify").setLevel(logging.ERROR)


class CheckTimeout(BaseException):
    """Raised by the CPU timer; a BaseException so math-verify's ``except Exception`` cannot swallow it."""


def reference_text(answer) -> str:
    """Return a reference answer as text (numbers as written by Python); raise ValueError if there is none.

    AIME-style references are JSON numbers (``{"answer": 42}``); a null, empty, boolean or
    structured reference cannot be graded against.
    """
    if isinstance(answer, bool) or not isinstance(answer, (str, int, float)):
        raise ValueError(f"reference answer must be a string or a number, got {answer!r}")
    if isinstance(answer, float) and not math.isfinite(answer):
        raise ValueError(f"reference answer must be finite, got {answer!r}")
    text = str(answer).strip()
    if not text:
        raise ValueError("reference answer is empty")
    return text


def answers_match(predicted: str, reference: str) -> bool:
    """Return whether two LaTeX answers are symbolically equal (no time limit; see check_answer)."""
    reference = reference_text(reference)
    gold = _parse(reference)
    guess = _parse(predicted)
    if not gold or not guess:
        return _normalised(predicted) == _normalised(reference)
    # math-verify's own wall-clock alarms are disabled (None): the CPU timer of check_trace bounds the call.
    if verify(gold, guess, timeout_seconds=None):
        return True
    # "12.5\%" against a reference of "12.5": math-verify only reads the percent as a fraction.
    if _has_percent(predicted) != _has_percent(reference) and _without_percent(reference):
        return answers_match(_without_percent(predicted), _without_percent(reference))
    return False


def check_answer(predicted: str | None, reference, timeout_s: float = 5.0) -> str:
    """Return CORRECT, INCORRECT or UNVERIFIED (CPU-time budget spent) for one predicted answer.

    Uses SIGPROF, so it must run in the main thread of its process (see checker_pool).
    """
    if predicted is None:
        return INCORRECT
    try:
        with cpu_time_limit(timeout_s):
            return CORRECT if answers_match(predicted, reference) else INCORRECT
    except CheckTimeout:
        return UNVERIFIED


def check_trace(trace: str, reference, timeout_s: float = 5.0, require_closed_thinking: bool = True,
                boxes: str = "last", grader: str = "package") -> str:
    """Return the verdict for a full reasoning trace against a reference answer.

    ``grader="package"``: the final answer (see answer_extraction; ``boxes`` picks last box or
    joined boxes) compared by math-verify/sympy. ``grader="paper"``: the REDI paper's rule
    (paper_grading: last box after the first ``</think>``, Hendrycks normalisation, then sympy).
    The budget covers extraction and comparison.
    """
    validate_grader(grader, boxes)
    try:
        with cpu_time_limit(timeout_s):
            if grader == "paper":
                from redi_megatron.data.paper_grading import paper_correct

                correct = paper_correct(trace, reference_text(reference), require_closed_thinking)
            else:
                predicted = final_answer(trace, require_closed_thinking, boxes)
                correct = predicted is not None and answers_match(predicted, reference)
    except CheckTimeout:
        return UNVERIFIED
    return CORRECT if correct else INCORRECT


def validate_grader(grader: str, boxes: str) -> None:
    """Raise ValueError for an unknown grader or box mode, or a combination the paper's rule does not have."""
    if grader not in GRADERS:
        raise ValueError(f"grader must be one of {GRADERS}, got {grader!r}")
    if boxes not in BOX_MODES:
        raise ValueError(f"boxes must be one of {BOX_MODES}, got {boxes!r}")
    if grader == "paper" and boxes != "last":
        raise ValueError("the paper's grader reads the last box only (boxes='last')")


@contextlib.contextmanager
def cpu_time_limit(seconds: float):
    """Raise CheckTimeout inside the block once this process has used ``seconds`` of CPU time in it."""
    previous = signal.signal(signal.SIGPROF, _raise_timeout)
    signal.setitimer(signal.ITIMER_PROF, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_PROF, 0)
        signal.signal(signal.SIGPROF, previous)


def _parse(answer: str) -> list:
    """Return math-verify's parse of a bare LaTeX answer (wrapped in a box so all of it is read)."""
    return parse("\\boxed{" + answer + "}", extraction_config=_EXTRACTION, parsing_timeout=None)


def _has_percent(answer: str) -> bool:
    """Return whether the answer ends with a percent sign."""
    return answer.rstrip().endswith(_PERCENT_SIGNS)


def _without_percent(answer: str) -> str:
    """Return the answer with a trailing percent sign removed."""
    answer = answer.rstrip()
    for sign in _PERCENT_SIGNS:
        answer = answer.removesuffix(sign)
    return answer


def _normalised(answer: str) -> str:
    """Return the answer without spaces, dollars and text wrappers, for answers sympy cannot read."""
    text = answer.replace("\\text", "").replace("\\mathrm", "").replace("$", "")
    return "".join(ch for ch in text if not ch.isspace() and ch not in "{}").lower()


def _raise_timeout(signum, frame):
    raise CheckTimeout()
