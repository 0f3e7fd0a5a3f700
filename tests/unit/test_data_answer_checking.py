"""The answer checker against a hand-written table, final-answer extraction, and the CPU-budget pool."""

import time

import pytest

from redi_megatron.data.answer_checking import (CORRECT, INCORRECT, UNVERIFIED, check_answer, check_trace,
                                                reference_text)
from redi_megatron.data.answer_extraction import final_answer
from redi_megatron.data.checker_pool import CheckerPool

EQUIVALENT = [
    ("42", "42"),
    ("\\frac{1}{2}", "0.5"),
    ("\\frac12", "\\frac{1}{2}"),
    ("\\dfrac{3}{4}", "\\frac{3}{4}"),
    ("\\tfrac{6}{8}", "\\frac{3}{4}"),
    ("2/4", "\\frac{1}{2}"),
    ("-\\frac{1}{3}", "\\frac{-1}{3}"),
    ("\\sqrt{8}", "2\\sqrt{2}"),
    ("\\sqrt{12}", "2 \\sqrt 3"),
    ("\\frac{\\sqrt{2}}{2}", "\\frac{1}{\\sqrt{2}}"),
    ("\\sqrt[3]{27}", "3"),
    ("2^{10}", "1024"),
    ("10^{-2}", "0.01"),
    ("1,000", "1000"),
    ("3.0", "3"),
    ("50\\%", "50"),
    ("50\\%", "\\frac{1}{2}"),
    ("12.5\\%", "12.5"),
    ("\\pi", "\\pi"),
    ("2\\pi", "\\pi \\cdot 2"),
    ("90^\\circ", "90"),
    ("e^{0}", "1"),
    ("\\ln e", "1"),
    ("\\log_2 8", "3"),
    ("\\sin \\frac{\\pi}{6}", "\\frac{1}{2}"),
    ("x^2+2x+1", "(x+1)^2"),
    ("2(a+b)", "2a+2b"),
    ("x=5", "5"),
    ("5\\,\\text{cm}", "5"),
    ("5\\text{ cm}", "5"),
    ("(1,2]", "(1,2]"),
    ("[0, \\infty)", "[0,\\infty)"),
    ("(-\\infty, 3)", "(-\\infty,3)"),
    ("x \\in (1, 2)", "(1,2)"),
    ("(-\\infty,1)\\cup(2,\\infty)", "(-\\infty, 1) \\cup (2, +\\infty)"),
    ("\\{1,2,3\\}", "\\{3,2,1\\}"),
    ("1, 2, 3", "\\{1,2,3\\}"),
    ("(1, 2)", "(1,2)"),
    ("(3, -4)", "\\left(3,-4\\right)"),
    ("(\\frac{1}{2}, \\sqrt{4})", "(0.5, 2)"),
    ("\\left(\\frac{1}{2}\\right)", "\\frac{1}{2}"),
    ("\\begin{pmatrix}1\\\\2\\end{pmatrix}", "\\begin{pmatrix}1\\\\2\\end{pmatrix}"),
    ("2+3i", "3i+2"),
    ("\\infty", "\\infty"),
    ("-\\infty", "-\\infty"),
    ("\\frac{a}{b}", "a/b"),
    ("\\dfrac{x+1}{2}", "\\frac{1}{2}x+\\frac{1}{2}"),
    ("1.5", "\\frac{3}{2}"),
    ("0.333333333", "\\frac{1}{3}"),
    ("\\frac{7}{2}", "3\\frac{1}{2}"),
    ("\\text{B}", "B"),
    ("\\textbf{(C)}", "C"),
    ("a=2, b=3", "a=2,b=3"),
]

NOT_EQUIVALENT = [
    ("41", "42"),
    ("\\frac{1}{3}", "0.33"),
    ("\\frac{1}{2}", "\\frac{1}{3}"),
    ("\\sqrt{2}", "2"),
    ("\\sqrt{8}", "3\\sqrt{2}"),
    ("-2", "2"),
    ("2^{10}", "1000"),
    ("(1,2)", "(2,1)"),
    ("(1,2)", "[1,2]"),
    ("(1,2]", "[1,2)"),
    ("[0,\\infty)", "(0,\\infty)"),
    ("\\{1,2\\}", "\\{1,2,3\\}"),
    ("(1,2,3)", "(1,2)"),
    ("x^2+1", "(x+1)^2"),
    ("\\pi", "3.14"),
    ("\\frac{\\pi}{3}", "\\frac{\\pi}{6}"),
    ("2+3i", "2-3i"),
    ("\\infty", "-\\infty"),
    ("A", "B"),
    ("\\text{yes}", "\\text{no}"),
    ("10", "100"),
    ("0", "1"),
    ("3x", "3y"),
    ("1.5", "1.6"),
]


@pytest.mark.parametrize("predicted, reference", EQUIVALENT)
def test_equivalent_answers_match(predicted, reference):
    assert check_answer(predicted, reference) == CORRECT


@pytest.mark.parametrize("predicted, reference", NOT_EQUIVALENT)
def test_different_answers_do_not_match(predicted, reference):
    assert check_answer(predicted, reference) == INCORRECT


def test_table_is_large_enough():
    assert len(EQUIVALENT) + len(NOT_EQUIVALENT) >= 60


@pytest.mark.parametrize("trace, answer", [
    ("<think>\\boxed{1}\n</think>\nSo \\boxed{\\frac{1}{2}}.", "\\frac{1}{2}"),
    ("<think>x</think> \\boxed{1} then \\boxed{\\{1,2\\}}", "\\{1,2\\}"),
    ("<think>x</think> \\boxed{\\sqrt{\\frac{a}{b}}} and \\boxed{broken", "\\sqrt{\\frac{a}{b}}"),
    ("<think>x</think> the answer is $\\boxed 7$.", "7"),
    ("<think>x</think> \\fbox{3}", "3"),
    ("<think>never closed \\boxed{3}", None),
    ("<think>x</think> no box at all", None),
])
def test_final_answer_is_the_last_box_after_thinking(trace, answer):
    assert final_answer(trace) == answer


def test_unclosed_thinking_is_wrong_even_with_the_right_box():
    assert check_trace("<think>so \\boxed{4}", "4") == INCORRECT
    assert check_trace("<think>so</think> \\boxed{4}", "4") == CORRECT
    assert check_trace("no thinking at all \\boxed{4}", "4", require_closed_thinking=False) == CORRECT


@pytest.mark.timeout(300)
def test_pathological_inputs_time_out_without_hanging_the_pool():
    deep = "(" * 300 + "1" + ")" * 300
    items = [
        ("</think> \\boxed{0.5}", "\\frac12"),
        ("</think> \\boxed{(x+y+z+1)^{500}}", "(1+x+y+z)^{499}"),  # huge polynomial
        ("</think> \\boxed{%s}" % deep, "1"),  # deep nesting
        ("</think> \\boxed{3}", "3"),
    ]
    with CheckerPool(workers=2, timeout_s=1.0, grace_s=1.0) as pool:
        verdicts = list(pool.verdicts(items))
    assert verdicts == [CORRECT, UNVERIFIED, UNVERIFIED, CORRECT]
    assert pool.counts[UNVERIFIED] == 2
    assert pool.retried == 2  # each timed-out item ran a second time before being called unverified


def test_extraction_is_linear_in_unclosed_boxes():
    """20,000 unclosed boxes after </think>: one pass over the text (the old scan was quadratic: > 60 s)."""
    trace = "<think>x</think> \\boxed{7} " + "\\boxed{" * 20_000
    start = time.process_time()
    assert final_answer(trace) == "7"
    assert final_answer(trace.replace("\\boxed{7}", "")) is None
    assert check_trace(trace, "7") == CORRECT
    assert time.process_time() - start < 5.0  # CPU seconds, not wall-clock


def test_multi_box_answers_are_graded_as_chosen():
    trace = "<think>solve</think> The roots are $\\boxed{-2}$ and $\\boxed{1}$."
    assert final_answer(trace) == "1"
    assert final_answer(trace, boxes="joined") == "-2, 1"
    assert check_trace(trace, "\\{-2, 1\\}") == INCORRECT
    assert check_trace(trace, "\\{-2, 1\\}", boxes="joined") == CORRECT
    assert check_trace(trace, "-2, 1", boxes="joined") == CORRECT
    # A box far back in the text, not joined by "and"/","/"or", is not part of the answer.
    far = "<think>t</think> First $x = \\boxed{3}$. " + "Then a long argument follows. " * 5 + "So \\boxed{7}."
    assert final_answer(far, boxes="joined") == "7"
    assert final_answer("<think>t</think> \\boxed{5}, i.e. \\boxed{5}", boxes="joined") == "5"


@pytest.mark.parametrize("answer, text", [(42, "42"), (0.5, "0.5"), (" 7 ", "7"), ("\\frac{1}{2}", "\\frac{1}{2}")])
def test_numeric_references_are_read_as_text(answer, text):
    assert reference_text(answer) == text
    assert check_trace("<think>t</think> \\boxed{%s}" % text.strip(), answer) == CORRECT


@pytest.mark.parametrize("answer", [None, "", "  ", True, [1, 2], {"a": 1}, float("nan")])
def test_references_without_an_answer_are_refused(answer):
    with pytest.raises(ValueError):
        reference_text(answer)


@pytest.mark.timeout(120)
def test_hard_cpu_limit_stops_code_the_soft_limit_cannot_interrupt():
    """A catastrophic regex runs in C and never returns to Python's signal handlers; the kernel stops it."""
    import signal
    import subprocess
    import sys

    code = ("import re; from redi_megatron.data.checker_pool import _set_hard_cpu_limit; "
            "_set_hard_cpu_limit(1.0); re.match(r'(a+)+$', 'a' * 64 + 'b')")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, timeout=100)
    assert result.returncode == -signal.SIGXCPU
