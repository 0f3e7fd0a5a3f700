"""Symbolic answer equivalence (math-verify / sympy) with a hard per-call time limit."""

import logging
import signal

from math_verify import ExprExtractionConfig, LatexExtractionConfig, parse, verify

from redi_megatron.data.answer_extraction import final_answer

CORRECT = "correct"
INCORRECT = "incorrect"
UNVERIFIED = "unverified"

_EXTRACTION = (LatexExtractionConfig(boxed_match_priority=0), ExprExtractionConfig())
_PERCENT_SIGNS = ("\\%", "%")

# math-verify warns once that its own alarms are off; they are, on purpose (check_answer sets one).
logging.getLogger("math_verify").setLevel(logging.ERROR)


class CheckTimeout(BaseException):
    """Raised by the alarm; a BaseException so math-verify's ``except Exception`` cannot swallow it."""


def answers_match(predicted: str, reference: str) -> bool:
    """Return whether two LaTeX answers are symbolically equal (no time limit; see check_answer)."""
    gold = _parse(reference)
    guess = _parse(predicted)
    if not gold or not guess:
        return _normalised(predicted) == _normalised(reference)
    # math-verify's own alarms are disabled (None): the single alarm in check_answer bounds the whole call.
    if verify(gold, guess, timeout_seconds=None):
        return True
    # "12.5\%" against a reference of "12.5": math-verify only reads the percent as a fraction.
    if _has_percent(predicted) != _has_percent(reference):
        return answers_match(_without_percent(predicted), _without_percent(reference))
    return False


def check_answer(predicted: str | None, reference: str, timeout_s: float = 5.0) -> str:
    """Return CORRECT, INCORRECT or UNVERIFIED (time limit hit) for one predicted answer.

    Uses SIGALRM, so it must run in the main thread of its process (see checker_pool).
    """
    if predicted is None:
        return INCORRECT
    previous = signal.signal(signal.SIGALRM, _raise_timeout)
    signal.setitimer(signal.ITIMER_REAL, timeout_s)
    try:
        return CORRECT if answers_match(predicted, reference) else INCORRECT
    except CheckTimeout:
        return UNVERIFIED
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def check_trace(trace: str, reference: str, timeout_s: float = 5.0, require_closed_thinking: bool = True) -> str:
    """Return the verdict for a full reasoning trace against a reference answer."""
    return check_answer(final_answer(trace, require_closed_thinking), reference, timeout_s)


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
